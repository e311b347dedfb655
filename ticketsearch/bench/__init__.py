"""The benchmark suite: every method against full IMP on equal terms, with sanity checks, tables and plots.

``load_suite`` reads a suite (built-in name or JSON/TOML file), ``run_suite`` runs its cells as ordinary
cached run directories (resumable, in worker processes), ``write_report`` rebuilds the report from the
records. See ``ticketsearch bench --help``.
"""

from __future__ import annotations

from .report import aggregate, write_report
from .runner import Cell, cells_of, read_records, run_cell, run_suite
from .spec import Suite, list_suites, load_suite

__all__ = [
    "Suite",
    "Cell",
    "load_suite",
    "list_suites",
    "cells_of",
    "run_cell",
    "run_suite",
    "read_records",
    "aggregate",
    "write_report",
]
