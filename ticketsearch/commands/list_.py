"""``ticketsearch list methods|models|datasets|controls``: what is registered, and where it came from."""

from __future__ import annotations

import argparse

from .base import Command, register_command


@register_command("list")
class List(Command):
    help = "list methods, models, datasets or controls"
    description = (
        "List what is registered: built-ins and plugins (methods show their kind and default scope)."
    )

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("what", choices=("methods", "models", "datasets", "controls", "suites"))

    def run(self, ns: argparse.Namespace) -> int:
        if ns.what == "methods":
            from ..methods import list_methods

            print(f"{'method':<22} {'kind':<10} {'scope':<10} {'source':<24} description")
            for m in list_methods():
                print(f"{m.name:<22} {m.kind:<10} {m.scope:<10} {m.source:<24} {m.error or m.description}")
        elif ns.what == "models":
            from ..models import MODELS, ModelSource

            for e in MODELS.entries():  # a source is a family: shown as the names it takes
                name = e.obj.usage if isinstance(e.obj, ModelSource) else e.name
                print(f"{name:<16} {e.description}")
        elif ns.what == "datasets":
            from ..data import DATASETS

            for e in DATASETS.entries():
                dm = getattr(e.obj, "default_model", "")
                print(f"{e.name:<15} {('model: ' + dm) if dm else '':<24} {e.description}")
        elif ns.what == "suites":
            from ..bench import list_suites, load_suite

            for name in list_suites():
                print(f"{name:<8} {load_suite(name).description}")
        else:
            from ..experiments.controls import CONTROLS

            for e in CONTROLS.entries():
                print(f"{e.name:<14} {e.description}")
        return 0
