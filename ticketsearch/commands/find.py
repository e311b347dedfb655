"""``ticketsearch find``: find a ticket with a method, train it, write a resumable run directory."""

from __future__ import annotations

import argparse

from .base import Command, register_command
from .flags import (
    add_model_flags,
    add_pruning_flags,
    add_run_flags,
    add_training_flags,
    resolve_hparams,
    run_options,
)
from .table import emit


@register_command("find")
class Find(Command):
    help = "find a ticket and train it"
    description = (
        "Find a ticket with --method, train it from its init, write a resumable run directory "
        "root/<method>_<hash>/replicate_<seed>/level_<k>/, and print one row per level."
    )

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--method",
            default=None,
            help="imp (default) | snip | grasp | synflow | magnitude | random | supermask | ... (see `list "
            "methods`)",
        )
        parser.add_argument(
            "--from-study",
            default=None,
            metavar="URL",
            help="take every flag not given from the best trial of an Optuna study (`ticketsearch study`)",
        )
        parser.add_argument("--study-name", default=None, help="with --from-study: which study in URL")
        add_model_flags(parser)
        add_training_flags(parser)
        add_pruning_flags(parser)
        parser.add_argument(
            "--controls", default="", help="comma-separated controls per level: reinit, random_mask"
        )
        parser.add_argument(
            "--then-train",
            action="store_true",
            help="learned supermasks: also train the kept weights from their init",
        )
        parser.add_argument(
            "--baseline", action="store_true", help="one-shot/learned methods: also train the dense network"
        )
        add_run_flags(parser)

    def run(self, ns: argparse.Namespace) -> int:
        from ..experiments.runner import run_find

        if ns.from_study is not None:
            import sys

            from ..studies import fill_from_study

            print(fill_from_study(ns), file=sys.stderr)
        elif ns.study_name is not None:
            from ..core.errors import ConfigError

            raise ConfigError("--study-name needs --from-study URL")
        hp = resolve_hparams(ns, method=ns.method or "imp")
        controls = tuple(c.strip() for c in ns.controls.split(",") if c.strip())
        opts = run_options(ns, controls=controls, then_train=ns.then_train, baseline=ns.baseline)
        emit(run_find(hp, seed=ns.seed, opts=opts), as_json=ns.json)
        return 0
