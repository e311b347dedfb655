"""``ticketsearch study``: tune a method with Optuna over its own search space; ``--report`` summarises."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from .base import Command, register_command
from .flags import (
    add_db_wait_flag,
    add_model_flags,
    add_pruning_flags,
    add_run_flags,
    add_training_flags,
    db_wait_of,
    resolve_hparams,
    run_options,
)


def _pinned(ns: argparse.Namespace, hp: Any) -> dict[str, Any]:
    """Parameters fixed by a flag given on the command line: their values as resolved into ``hp``."""
    from ..core.hparams import PruningHparams, TrainingHparams

    out = {
        f.name: getattr(hp.training, f.name)
        for f in dataclasses.fields(TrainingHparams)
        if getattr(ns, f.name) is not None
    }
    given = {"density": ns.density is not None or ns.sparsity is not None}
    for f in dataclasses.fields(PruningHparams):
        if f.name != "method" and given.get(f.name, getattr(ns, f.name, None) is not None):
            out[f.name] = getattr(hp.pruning, f.name)
    from ..methods import get_method
    from .flags import own_hparam_values

    method = get_method(hp.pruning.method)
    own = method.own(hp)
    for name in own_hparam_values(ns):  # the method's own fields whose flag was given
        if name in method.own_fields():
            out[name] = getattr(own, name)
    return out


def _range(text: str) -> tuple[float, float]:
    from ..core.errors import ConfigError

    parts = [p.strip() for p in str(text).split(",")]
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--density-range must be LOW,HIGH (e.g. 0.01,0.9), got {text!r}") from None
    return lo, hi


@register_command("study")
class Study(Command):
    help = "tune a method with Optuna (its own search space), on SQLite or a shared PostgreSQL database"
    description = (
        "Run Optuna trials of --method until the study holds --n-trials finished ones. Each trial draws "
        "the method's own search space (flags you give are fixed, not searched), runs like `find` into a "
        "resumable run directory and scores validation accuracy at --density (IMP: the level nearest it); "
        "--pareto maximises accuracy and minimises density (NSGA-II). Rerunning resumes the study; "
        "processes on one --storage URL share it, and a dead worker's trial is retried. --report prints "
        "the best trials and writes trials.csv, report.md and plots."
    )

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--method", default=None, help="the method to tune (see `list methods`)")
        g = parser.add_argument_group("study")
        g.add_argument("--n-trials", type=int, default=None, help="finished trials the study should hold")
        g.add_argument(
            "--storage",
            default=None,
            help="SQLAlchemy URL, e.g. postgresql://user:pw@host/db (default: sqlite:///ROOT/studies.db)",
        )
        g.add_argument(
            "--study-name", default=None, help="default: method, dataset and a hash of the settings"
        )
        g.add_argument(
            "--pareto",
            action="store_true",
            help="maximise accuracy and minimise density (NSGA-II); not with --density",
        )
        g.add_argument(
            "--density-range",
            default="0.01,0.9",
            help="LOW,HIGH: where --pareto (and edge-popup's k) searches the density (default: %(default)s)",
        )
        g.add_argument(
            "--pruner",
            default=None,
            help="median | hyperband | none: stop poor trials early (default: median; none with --pareto)",
        )
        g.add_argument(
            "--heartbeat",
            type=int,
            default=60,
            help="seconds between a worker's heartbeats; a trial silent for twice this is retried (default 60)",
        )
        add_db_wait_flag(g)
        g.add_argument(
            "--report", action="store_true", help="print the best trials; write trials.csv, report.md, plots"
        )
        g.add_argument("--out", default=None, help="report folder (default: ROOT/study_<name>)")
        add_model_flags(parser)
        add_training_flags(parser)
        add_pruning_flags(parser)
        add_run_flags(parser)

    def run(self, ns: argparse.Namespace) -> int:
        from ..core.errors import ConfigError

        db_wait_of(ns)  # a bad --db-wait is refused before anything else
        if ns.n_trials is None and not ns.report:
            raise ConfigError("give --n-trials N to run trials, or --report to report on a study")
        if ns.n_trials is not None and ns.method is None:
            raise ConfigError("--method is required to run trials (see `ticketsearch list methods`)")
        spec = self._spec(ns) if ns.method is not None else None
        if ns.n_trials is not None:
            return self._run(ns, spec)
        return self._report_only(ns, spec)

    def _spec(self, ns: argparse.Namespace) -> Any:
        from ..core.errors import ConfigError
        from ..studies import StudySpec

        if ns.pareto and (ns.density is not None or ns.sparsity is not None):
            raise ConfigError("--density fixes the density and --pareto searches it: give one of them")
        hp = resolve_hparams(ns, method=ns.method)
        pruner = ns.pruner if ns.pruner is not None else ("none" if ns.pareto else "median")
        return StudySpec(
            hp=hp,
            n_trials=ns.n_trials if ns.n_trials is not None else 1,
            seed=ns.seed,
            pareto=ns.pareto,
            density_range=_range(ns.density_range),
            pinned=_pinned(ns, hp),
            pruner=pruner,
            heartbeat=ns.heartbeat,
            db_wait=db_wait_of(ns),
        )

    def _run(self, ns: argparse.Namespace, spec: Any) -> int:
        from ..studies import run_study

        outcome = run_study(
            spec,
            run_options(ns),
            storage=ns.storage,
            study_name=ns.study_name,
            progress=False if ns.no_progress else "auto",
        )
        self._emit(ns, outcome.study, outcome.to_dict())
        return 0

    def _report_only(self, ns: argparse.Namespace, spec: Any) -> int:
        from ..core.errors import ConfigError
        from ..studies import load_study
        from ..studies.storage import DEFAULT_DB, default_url

        url = ns.storage
        if url is None:
            if not (Path(ns.root).expanduser() / DEFAULT_DB).is_file():
                raise ConfigError(
                    f"no studies under '{ns.root}' yet (no {DEFAULT_DB}); run trials first (--n-trials N)"
                )
            url = default_url(ns.root)
        name = ns.study_name or (spec.default_name() if spec is not None else None)
        study = load_study(url, name, db_wait=db_wait_of(ns))
        self._emit(ns, study, {"study": study.study_name})
        return 0

    def _emit(self, ns: argparse.Namespace, study: Any, record: dict[str, Any]) -> None:
        import json

        from ..studies import format_best, trial_record, write_report
        from ..studies.report import best_trials, report_dir_name

        if ns.report:
            out = Path(ns.out) if ns.out else Path(ns.root) / report_dir_name(study.study_name)
            record["report"] = write_report(study, out)
        if ns.json:
            record.setdefault("best", [trial_record(t) for t in best_trials(study)])
            print(json.dumps(record, indent=2, default=str))
            return
        print(format_best(study))
        if ns.report:
            print(f"report: {record['report']['out']} ({', '.join(record['report']['files'])})")
