"""``ticketsearch train --mask FILE``: train the weights a mask keeps, from its own init or a fresh one."""

from __future__ import annotations

import argparse
from pathlib import Path

from .base import Command, register_command
from .find import add_world_flags, torchrun_world
from .flags import add_model_flags, add_run_flags, add_training_flags, resolve_hparams, run_options
from .table import emit


@register_command("train")
class Train(Command):
    help = "train a given ticket (mask file) from its init"
    description = "Train the weights kept by a mask file."

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--mask", required=True, help="a mask.safetensors written by `find`")
        parser.add_argument(
            "--init-from",
            dest="init_from",
            default="source",
            choices=("source", "fresh"),
            help="the mask's own init, or a fresh one (drawn from a seed derived from --seed, so never the "
            "ticket's own)",
        )
        add_model_flags(parser)
        add_training_flags(parser)
        add_run_flags(parser)
        add_world_flags(parser)

    def run(self, ns: argparse.Namespace) -> int:
        from ..core.mask import Mask
        from ..experiments.runner import RunSummary, train_mask

        with torchrun_world(ns) as world:

            def train() -> RunSummary:
                meta = Mask.load(ns.mask).metadata
                ns.model = ns.model or meta.get("model")
                ns.dataset = ns.dataset or meta.get("dataset")
                hp = resolve_hparams(ns)
                opts = run_options(ns, world=world)
                return train_mask(Path(ns.mask), hp, seed=ns.seed, init=ns.init_from, opts=opts)

            summary = world.agree(train)  # an error every rank met is printed once, by rank 0
            if world.is_main:
                emit(summary, as_json=ns.json)
        return 0
