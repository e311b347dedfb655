"""``ticketsearch bench``: a suite of methods against full IMP, with sanity checks, tables and plots."""

from __future__ import annotations

import argparse

from .base import Command, register_command


@register_command("bench")
class Bench(Command):
    help = "run a benchmark suite (every method against IMP) and write its report"
    description = (
        "Run every cell of --suite (a built-in name, see `list suites`, or a JSON/TOML spec file) as a cached, "
        "resumable run, then write results.jsonl, summary.csv, report.md and PNG plots into --out. "
        "--report DIR rebuilds the report from DIR/results.jsonl without training."
    )

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--suite", default="smoke", help="smoke | quick | paper | cifar | a .json/.toml file"
        )
        parser.add_argument("--methods", default=None, help="comma-separated subset of the suite's methods")
        parser.add_argument("--seeds", type=int, default=None, help="replicates (default: the suite's)")
        parser.add_argument("--workers", type=int, default=1, help="processes running cells (default 1)")
        parser.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
        parser.add_argument(
            "--root", default="runs", help="where the cells' run directories go (default ./runs)"
        )
        parser.add_argument("--data-root", default=None, help="where datasets live")
        parser.add_argument("--out", default=None, help="report folder (default: ROOT/bench_<suite>)")
        parser.add_argument("--report", default=None, metavar="DIR", help="only rebuild the report of DIR")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(self, ns: argparse.Namespace) -> int:
        import json
        import sys
        from pathlib import Path

        from ..bench import load_suite, read_records, run_suite, write_report
        from ..bench.spec import suite_from_dict
        from ..core.errors import ConfigError

        if ns.report:
            out = Path(ns.report)
            if not (out / "results.jsonl").is_file():
                raise ConfigError(f"'{out}' holds no results.jsonl to report on")
            suite_file = out / "suite.json"
            suite = None
            if suite_file.is_file():
                suite = _suite_from_saved(json.loads(suite_file.read_text(encoding="utf-8")), suite_from_dict)
            records = read_records(out / "results.jsonl", warn=lambda m: print(m, file=sys.stderr))
            write_report(records, out, suite)
        else:
            if ns.workers < 1:
                raise ConfigError(f"--workers must be ≥ 1, got {ns.workers}")
            from ..experiments.runner import resolve_device

            resolve_device(ns.device)
            methods = [m.strip() for m in ns.methods.split(",") if m.strip()] if ns.methods else None
            suite = load_suite(ns.suite).with_overrides(methods=methods, seeds=ns.seeds)
            suite.validate()
            out = Path(ns.out) if ns.out else Path(ns.root) / f"bench_{suite.name}"
            records = run_suite(
                suite,
                out,
                root=Path(ns.root),
                data_root=ns.data_root,
                device=ns.device,
                workers=ns.workers,
                progress=False if ns.no_progress else "auto",
            )
            write_report(records, out, suite)
        print(f"report: {out / 'report.md'}")
        return 0


def _suite_from_saved(d: dict, suite_from_dict) -> object:  # type: ignore[no-untyped-def]
    """suite.json holds the dataclass form (variants, not methods): map it back."""
    d = dict(d)
    d["methods"] = [
        {
            "name": v["name"],
            "method": v["method"],
            "pruning": v["pruning"],
            "args": v["args"],
            "then_train": v["then_train"],
        }
        for v in d.pop("variants")
    ]
    d["seeds"] = list(d["seeds"])
    return suite_from_dict(d, source="suite.json")
