"""``ticketsearch finetune``: train the kept weights of an exported ticket on CPU and write a new ticket."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .base import Command, register_command
from .flags import add_training_flags


@register_command("finetune")
class Finetune(Command):
    help = "fine-tune the kept weights of an exported ticket on CPU"
    description = (
        "Train only the weights a ticket file keeps (written by `export`; pruned weights stay exactly zero, "
        "optimizer state is the size of the kept weights) on --dataset, on CPU, and write a new ticket to "
        "--out (same format and dtype unless given). Training defaults: the model's recipe for 1 epoch at a "
        "constant learning rate."
    )

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        from ..export.ticket import FORMATS, VALUE_DTYPES

        parser.add_argument("--ticket", required=True, help="a ticket file written by `export`")
        parser.add_argument("--dataset", required=True, help="dataset name (see `list datasets`)")
        parser.add_argument("--out", required=True, help="the new ticket file (replaced atomically)")
        parser.add_argument(
            "--format",
            default=None,
            choices=tuple(f for f in FORMATS if f != "onnx"),
            help="the new ticket's format (default: the source ticket's)",
        )
        parser.add_argument(
            "--dtype", default=None, choices=tuple(VALUE_DTYPES), help="stored values (default: the source's)"
        )
        g = parser.add_argument_group("data and run")
        g.add_argument("--seed", type=int, default=0, help="data order and validation split, in [0, 2^63-1]")
        g.add_argument(
            "--data-root", default=None, help="where datasets live (default: $TICKETSEARCH_DATA, else ./data)"
        )
        g.add_argument("--download", action="store_true", help="download missing MNIST files (torchvision)")
        g.add_argument("--val-size", type=float, default=None, help="held-out validation: fraction or count")
        g.add_argument(
            "--resize", type=int, default=0, help="resample images to N×N (the ticket's input size)"
        )
        g.add_argument("--json", action="store_true", help="print the summary as JSON")
        add_training_flags(parser)

    def run(self, ns: argparse.Namespace) -> int:
        from ..core.hparams import TrainingHparams, dataclass_from_args, parse_duration
        from ..export.finetune import default_hparams, finetune
        from ..export.ticket import read_ticket

        ticket = read_ticket(Path(ns.ticket).expanduser())
        hp = dataclass_from_args(TrainingHparams, ns, default_hparams(ticket.model_name))
        for name in ("budget", "warmup", "eval_every"):
            parse_duration(getattr(hp, name), name=f"--{name.replace('_', '-')}")
        res = finetune(
            Path(ns.ticket).expanduser(),
            ns.dataset,
            out=Path(ns.out).expanduser(),
            hparams=hp,
            seed=ns.seed,
            data_root=ns.data_root,
            download=ns.download,
            val_size=ns.val_size,
            resize=ns.resize,
            format=ns.format,
            dtype=ns.dtype,
        )
        assert res.export is not None
        summary = {
            "path": str(res.export.path),
            "bytes": res.export.bytes,
            "format": res.export.format,
            "dtype": res.export.dtype,
            "iterations": res.iterations,
            "seconds": res.train_seconds,
            "seconds_per_epoch": res.seconds_per_epoch,
            "test_acc_before": res.test_acc_before,
            "test_acc_after": res.test_acc_after,
            "kept_weights": res.kept_weights,
            "optimizer_state_numel": res.optimizer_state_numel,
        }
        if ns.json:
            print(json.dumps(summary, indent=2))
            return 0
        print(
            f"fine-tuned {res.kept_weights:,} kept weights for {res.iterations} iterations "
            f"({res.train_seconds:.1f} s, {res.seconds_per_epoch:.1f} s/epoch); test accuracy "
            f"{res.test_acc_before:.4f} -> {res.test_acc_after:.4f}; optimizer state {res.optimizer_state_numel:,} "
            f"numbers"
        )
        print(
            f"wrote {res.export.path}: {res.export.bytes:,} bytes ({res.export.format}, {res.export.dtype})"
        )
        return 0
