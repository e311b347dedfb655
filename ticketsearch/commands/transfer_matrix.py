"""``ticketsearch transfer-matrix``: every source × target × method × density × seed, with references."""

from __future__ import annotations

import argparse

from .base import Command, register_command
from .flags import add_run_flags, add_training_flags


def _list(text: str, conv: type = str) -> tuple:
    from ..core.errors import ConfigError

    items = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        return tuple(conv(t) for t in items)
    except ValueError:
        raise ConfigError(
            f"expected a comma-separated list of {conv.__name__} values, got {text!r}"
        ) from None


@register_command("transfer-matrix")
class TransferMatrix(Command):
    help = "transfer tickets between every pair of datasets and compare with the targets' own"
    description = (
        "For every source × target × method × density × seed: the source's ticket trained on the target "
        "from the source init and from a fresh one, beside the target's own ticket, a random mask with the "
        "same layer densities and the dense target. Writes results.jsonl, summary.csv, summary.md and a "
        "heatmap per method into --out; resumable (finished cells are never recomputed)."
    )

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--datasets", required=True, help="comma-separated, e.g. mnist,fashion_mnist")
        parser.add_argument(
            "--methods", default="imp,snip,supermask", help="comma-separated (default: %(default)s)"
        )
        parser.add_argument(
            "--densities", default="0.21,0.07,0.036", help="fractions kept (default: %(default)s)"
        )
        parser.add_argument(
            "--seeds", default="0,1", help="comma-separated replicate seeds (default: %(default)s)"
        )
        parser.add_argument("--model", default=None, help="one model for all datasets (default: the first's)")
        parser.add_argument("--resize", type=int, default=0, help="resample images of every dataset to N×N")
        parser.add_argument(
            "--out", default=None, help="output folder (default: ROOT/transfer_matrix_<hash>)"
        )
        parser.add_argument(
            "--report", action="store_true", help="only rebuild the reports from results.jsonl"
        )
        add_training_flags(parser)
        add_run_flags(parser)

    def run(self, ns: argparse.Namespace) -> int:
        import dataclasses
        from pathlib import Path

        from ..core.hparams import TrainingHparams, dataclass_from_args
        from ..core.io import read_jsonl
        from ..data import DATASETS
        from ..models import training_recipe
        from ..transfer.matrix import MatrixSpec, run_matrix, write_reports
        from .flags import run_options

        datasets = _list(ns.datasets)
        for d in datasets:
            DATASETS.entry(d)
        model = ns.model or DATASETS.get(datasets[0]).default_model
        given = {f.name for f in dataclasses.fields(TrainingHparams) if getattr(ns, f.name, None) is not None}
        training = dataclass_from_args(TrainingHparams, ns, training_recipe(model)) if given else None
        spec = MatrixSpec(
            datasets=datasets,
            methods=_list(ns.methods),
            densities=_list(ns.densities, float),
            seeds=_list(ns.seeds, int),
            model=model,
            resize=ns.resize,
            training=training,
        )
        spec.validate()
        out = Path(ns.out) if ns.out else Path(ns.root) / f"transfer_matrix_{spec.hash()}"
        if ns.report:
            write_reports(read_jsonl(out / "results.jsonl"), out)
        else:
            run_matrix(spec, out, opts=run_options(ns))
        print(f"matrix: {out}")
        print((out / "summary.md").read_text(encoding="utf-8"))
        return 0
