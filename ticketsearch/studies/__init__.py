"""Optuna studies over a method's own search space (``ticketsearch study``), on any SQLAlchemy storage.

A study tunes one method: each trial draws its values from ``Method.search_space`` (declared beside the
method's code), runs through :func:`~ticketsearch.experiments.runner.run_find` into an ordinary run
directory, and scores the ticket's validation accuracy (or accuracy and density, ``pareto``). Storage is
``sqlite:///<root>/studies.db`` by default, or any SQLAlchemy URL: several processes or machines on one
PostgreSQL URL share a study, and a dead worker's trial is retried from its run directory.

Importing this package is cheap: optuna and SQLAlchemy are imported inside the functions that use them,
so ``import ticketsearch`` never loads them.
"""

from __future__ import annotations

from .best import choose_trial, fill_from_study
from .report import best_trials, format_best, trial_record, write_report
from .storage import DatabaseLost, default_url, open_storage, safe_url
from .study import PRUNERS, StudyOutcome, StudySpec, load_study, pick_row, run_study, validate_spec

__all__ = [
    "PRUNERS",
    "StudySpec",
    "StudyOutcome",
    "run_study",
    "validate_spec",
    "load_study",
    "pick_row",
    "best_trials",
    "format_best",
    "trial_record",
    "write_report",
    "choose_trial",
    "fill_from_study",
    "DatabaseLost",
    "default_url",
    "open_storage",
    "safe_url",
]
