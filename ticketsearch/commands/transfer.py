"""``ticketsearch transfer``: train a ticket found on one dataset on another."""

from __future__ import annotations

import argparse

from .base import Command, register_command
from .flags import add_model_flags, add_run_flags, add_training_flags, resolve_hparams, run_options
from .table import emit


@register_command("transfer")
class Transfer(Command):
    help = "train a ticket found on one dataset on another"
    description = (
        "Train the ticket in --mask FILE (or the last finished level of --from-run DIR) on --dataset, from the "
        "source's own init (--init-from source, bit for bit) or a fresh one. Supermasks are evaluated with "
        "their frozen weights; --then-train also trains them. Writes root/transfer_<hash>/ with the source's "
        "metadata and result beside the target's metrics."
    )

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        src = parser.add_mutually_exclusive_group(required=True)
        src.add_argument("--mask", help="a mask.safetensors written by `find` (or `train`)")
        src.add_argument("--from-run", dest="from_run", help="a run or replicate directory written by `find`")
        parser.add_argument(
            "--level", type=int, default=None, help="with --from-run: the level (default: the last)"
        )
        parser.add_argument(
            "--init-from",
            dest="init_from",
            default="source",
            choices=("source", "fresh"),
            help="the state the source ticket trained from (its init or rewind point), or a fresh init",
        )
        parser.add_argument(
            "--then-train",
            action="store_true",
            help="supermasks: also train the kept weights from their init",
        )
        parser.add_argument(
            "--rewind-iter",
            dest="rewind_iter",
            default=None,
            help="start from the source's rewind point at this iteration (the source run must have been found "
            "with the same --rewind-iter: it stores that one state)",
        )
        add_model_flags(parser)
        add_training_flags(parser)
        add_run_flags(parser)

    def run(self, ns: argparse.Namespace) -> int:
        from pathlib import Path

        from ..core.errors import ConfigError
        from ..core.mask import Mask
        from ..transfer import resolve_source, transfer

        if ns.dataset is None:
            raise ConfigError("transfer needs the target --dataset (see `list datasets`)")
        path = resolve_source(ns.mask or ns.from_run, level=ns.level, seed=None)
        if ns.mask and ns.level is not None:
            raise ConfigError("--level goes with --from-run DIR, not with --mask")
        meta = Mask.load(path).metadata
        ns.model = ns.model or meta.get("model")
        hp = resolve_hparams(ns)
        opts = run_options(ns, then_train=ns.then_train)
        summary = transfer(Path(path), hp, seed=ns.seed, init=ns.init_from, opts=opts, rewind=ns.rewind_iter)
        emit(summary, as_json=ns.json)
        return 0
