"""``ticketsearch bench``: a suite of methods against full IMP, with sanity checks, tables and plots."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .base import Command, register_command
from .flags import add_db_wait_flag, db_wait_of

if TYPE_CHECKING:
    from ..bench.spec import Suite


@register_command("bench")
class Bench(Command):
    help = "run a benchmark suite (every method against IMP) and write its report"
    description = (
        "Run every cell of --suite (a built-in name, see `list suites`, or a JSON/TOML spec file) as a cached, "
        "resumable run, then write results.jsonl, summary.csv, report.md and PNG plots into --out. "
        "--report DIR rebuilds the report from DIR/results.jsonl without training. With --storage URL the "
        "cells are a queue on a shared database (SQLite or PostgreSQL): run the same command on any number "
        "of machines, each takes the next unfinished cell; --storage URL --report DIR writes the records and "
        "the report from the database on any machine."
    )

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        from ..bench.spec import list_suites  # the package's suite files: cheap, no torch

        parser.add_argument(
            "--suite", default="smoke", help=" | ".join([*list_suites(), "a .json/.toml file"])
        )
        parser.add_argument("--methods", default=None, help="comma-separated subset of the suite's methods")
        parser.add_argument(
            "--datasets",
            default=None,
            help="comma-separated subset of the suite's datasets (e.g. mnist); the records fill the same --out",
        )
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
        from .flags import add_rerun_stale_flag

        add_rerun_stale_flag(parser)
        parser.add_argument(
            "--storage",
            default=None,
            metavar="URL",
            help="run the cells as a queue on this database (e.g. postgresql://user:pw@host/db), shared by "
            "every machine running the same command",
        )
        parser.add_argument(
            "--study-name",
            default=None,
            help="the queue's study in --storage (default: bench_<suite>_<hash of its spec>)",
        )
        parser.add_argument(
            "--heartbeat",
            type=int,
            default=None,
            help="with --storage: seconds between a worker's heartbeats; a cell without one for twice "
            "that is retried by another worker (default 60)",
        )
        add_db_wait_flag(parser, needs="with --storage: ")

    def run(self, ns: argparse.Namespace) -> int:
        import sys
        from pathlib import Path

        from ..bench import load_suite, read_records, run_suite, write_report
        from ..bench.spec import suite_from_saved
        from ..core.errors import ConfigError

        given = (("--study-name", ns.study_name), ("--heartbeat", ns.heartbeat), ("--db-wait", ns.db_wait))
        for flag, value in given:
            if value is not None and ns.storage is None:
                raise ConfigError(f"{flag} needs --storage URL (it names or tunes a shared queue)")
        heartbeat = 60 if ns.heartbeat is None else ns.heartbeat
        if heartbeat < 1:
            raise ConfigError(f"--heartbeat must be a whole number of seconds ≥ 1, got {heartbeat}")
        if ns.rerun_stale and (ns.report or ns.storage):
            raise ConfigError(
                "--rerun-stale recomputes cells of a local run; it does not apply to --report or --storage "
                "(run the suite locally with --rerun-stale, or start a new queue with --study-name)"
            )
        db_wait = db_wait_of(ns)
        if ns.report and ns.storage:
            from ..bench.queue import report_queue

            out = Path(ns.report)
            suite, records = report_queue(
                ns.storage, study_name=ns.study_name, suite_hint=_suite_hint(ns), out_dir=out, db_wait=db_wait
            )
            write_report(records, out, suite)
        elif ns.report:
            import json

            out = Path(ns.report)
            if not (out / "results.jsonl").is_file():
                raise ConfigError(f"'{out}' holds no results.jsonl to report on")
            suite_file = out / "suite.json"
            saved = None
            if suite_file.is_file():
                saved = suite_from_saved(json.loads(suite_file.read_text(encoding="utf-8")))
            records = read_records(out / "results.jsonl", warn=lambda m: print(m, file=sys.stderr))
            write_report(records, out, saved)
        else:
            if ns.workers < 1:
                raise ConfigError(f"--workers must be ≥ 1, got {ns.workers}")
            from ..experiments.runner import resolve_device

            resolve_device(ns.device)
            methods = [m.strip() for m in ns.methods.split(",") if m.strip()] if ns.methods else None
            datasets = [d.strip() for d in ns.datasets.split(",") if d.strip()] if ns.datasets else None
            suite = load_suite(ns.suite).with_overrides(methods=methods, seeds=ns.seeds, datasets=datasets)
            suite.validate()
            out = Path(ns.out) if ns.out else Path(ns.root) / f"bench_{suite.name}"
            from ..bench.runner import suite_command

            command = suite_command(
                ns.suite,
                root=ns.root,
                out=out,
                data_root=ns.data_root,
                workers=ns.workers,
                device=ns.device,
                methods=methods,
                seeds=ns.seeds,
                datasets=datasets,
            )
            if ns.storage:
                from ..bench.runner import check_data

                check_data(suite, ns.data_root)  # before anything is queued (run_suite checks its own)
                from ..bench.queue import run_queue

                records = run_queue(
                    suite,
                    ns.storage,
                    study_name=ns.study_name,
                    out_dir=out,
                    root=Path(ns.root),
                    data_root=ns.data_root,
                    device=ns.device,
                    workers=ns.workers,
                    heartbeat=heartbeat,
                    progress=False if ns.no_progress else "auto",
                    db_wait=db_wait,
                )
                from ..bench.runner import write_command

                write_command(out, command)  # the same cells, run locally: no database needed to reproduce
            else:
                records = run_suite(
                    suite,
                    out,
                    root=Path(ns.root),
                    data_root=ns.data_root,
                    device=ns.device,
                    workers=ns.workers,
                    progress=False if ns.no_progress else "auto",
                    rerun_stale=ns.rerun_stale,
                    command=command,
                )
            write_report(records, out, suite)
        print(f"report: {out / 'report.md'}")
        return 0


def _suite_hint(ns: argparse.Namespace) -> Suite | None:
    """The suite the flags name, to find its queue when --study-name is not given (None if they name
    none: the storage's only queue is used then)."""
    from ..bench import load_suite
    from ..core.errors import TicketsearchError

    try:
        methods = [m.strip() for m in ns.methods.split(",") if m.strip()] if ns.methods else None
        datasets = [d.strip() for d in ns.datasets.split(",") if d.strip()] if ns.datasets else None
        return load_suite(ns.suite).with_overrides(methods=methods, seeds=ns.seeds, datasets=datasets)
    except TicketsearchError:
        return None
