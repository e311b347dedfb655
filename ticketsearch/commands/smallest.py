"""``ticketsearch smallest``: the lowest density whose ticket stays within a tolerance of dense."""

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


@register_command("smallest")
class Smallest(Command):
    help = "find the smallest ticket within a tolerance of the dense network"
    description = (
        "The lowest density whose ticket (mean over --seeds) stays within --tolerance points of validation "
        "accuracy of the dense network trained the same way. IMP walks its levels, then bisects below the "
        "last good one; other methods bisect on log-density. Test accuracy is reported, never used to "
        "choose. Writes result.json, report.md and curve.png into --out."
    )

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--method", default="imp", help="any method (see `list methods`)")
        parser.add_argument(
            "--tolerance", type=float, default=0.5, help="points of validation accuracy (default 0.5)"
        )
        parser.add_argument(
            "--seeds", type=int, default=2, help="replicates per density, from --seed (default 2)"
        )
        parser.add_argument(
            "--min-density", type=float, default=1e-3, help="the lowest density tried (default 1e-3)"
        )
        parser.add_argument(
            "--bisect-precision",
            type=float,
            default=0.1,
            help="stop bisecting when good/bad ≤ 1 + this (default 0.1; --precision is the training "
            "arithmetic, fp32 | bf16)",
        )
        parser.add_argument(
            "--max-probes", type=int, default=12, help="bisection probes at most (default 12)"
        )
        parser.add_argument(
            "--out", default=None, help="report folder (default: ROOT/smallest_<method>_<hash>)"
        )
        add_model_flags(parser)
        add_training_flags(parser)
        add_pruning_flags(parser)
        add_run_flags(parser)

    def run(self, ns: argparse.Namespace) -> int:
        from pathlib import Path

        from ..core.errors import ConfigError
        from ..core.hparams import stable_hash
        from ..smallest import check_tolerance, smallest

        check_tolerance(ns.tolerance)
        if ns.seeds < 1:
            raise ConfigError(f"--seeds must be ≥ 1, got {ns.seeds}")
        hp = resolve_hparams(ns, method=ns.method)
        seeds = [ns.seed + i for i in range(ns.seeds)]
        key = stable_hash(
            {
                "hp": hp.to_dict(),
                "seeds": seeds,
                "tol": ns.tolerance,
                "min": ns.min_density,
                "precision": ns.bisect_precision,
            }
        )
        out = Path(ns.out) if ns.out else Path(ns.root) / f"smallest_{ns.method}_{key}"
        r = smallest(
            hp,
            seeds=seeds,
            tolerance=ns.tolerance,
            opts=run_options(ns),
            min_density=ns.min_density,
            precision=ns.bisect_precision,
            max_probes=ns.max_probes,
            out_dir=out,
        )
        print(f"smallest: {out}")
        print((out / "report.md").read_text(encoding="utf-8"))
        return 0 if r.answer is not None else 1
