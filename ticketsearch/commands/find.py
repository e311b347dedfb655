"""``ticketsearch find``: find a ticket with a method, train it, write a resumable run directory."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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


def add_world_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of a run under ``torchrun`` (find and train); without torchrun they change nothing."""
    g = parser.add_argument_group("many processes (torchrun --nproc-per-node N -m ticketsearch ...)")
    g.add_argument(
        "--dist-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long a process waits for the others (a collective, the rendezvous) before the run stops "
        "with one line; a rank that dies or hangs ends the run within this time (default: 300)",
    )


@contextmanager
def torchrun_world(ns: argparse.Namespace) -> Iterator[Any]:
    """The torchrun world of this process (one process outside torchrun): NCCL when the run is on CUDA,
    gloo on CPU."""
    import torch

    from ..training.distributed import open_world

    device = str(ns.device)
    cuda = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
    with open_world(cuda=cuda, timeout=ns.dist_timeout) as world:
        yield world


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
        add_world_flags(parser)

    def run(self, ns: argparse.Namespace) -> int:
        from ..experiments.runner import RunSummary, run_find

        with torchrun_world(ns) as world:

            def find() -> RunSummary:
                if ns.from_study is not None:
                    import sys

                    from ..studies import fill_from_study

                    note = fill_from_study(ns)
                    if world.is_main:
                        print(note, file=sys.stderr)
                elif ns.study_name is not None:
                    from ..core.errors import ConfigError

                    raise ConfigError("--study-name needs --from-study URL")
                hp = resolve_hparams(ns, method=ns.method or "imp")
                controls = tuple(c.strip() for c in ns.controls.split(",") if c.strip())
                opts = run_options(
                    ns, controls=controls, then_train=ns.then_train, baseline=ns.baseline, world=world
                )
                return run_find(hp, seed=ns.seed, opts=opts)

            summary = world.agree(find)  # an error every rank met is printed once, by rank 0
            if world.is_main:
                emit(summary, as_json=ns.json)
        return 0
