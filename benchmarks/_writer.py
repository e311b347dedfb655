"""The one way a benchmark writes its result: ``results/<benchmark>/<variant>.{json,md}`` with provenance.

Every benchmark script makes a :class:`ResultWriter` when it starts (that starts the wall clock) and calls
:meth:`ResultWriter.write` once at the end. The JSON is the script's payload plus a ``provenance`` block;
the markdown is the script's text plus a "Provenance" table. Both are written atomically.

Provenance recorded for every result (keys of ``provenance``, see :data:`PROVENANCE_KEYS`):

* ``benchmark``, ``variant``;
* ``git_commit``, ``git_dirty`` (tracked files modified outside ``benchmarks/results`` and
  ``benchmarks/runs``) and ``git_dirty_files``; ``None`` where the tree is not a git checkout;
* ``command`` (the exact command line, ``sys.orig_argv``) and ``cwd``;
* ``versions``: python, torch, numpy, ticketsearch;
* ``device``: CPU model name (``/proc/cpuinfo``), logical core count, cores this process may use, torch
  threads, CUDA device name (``None`` without CUDA), platform;
* ``date_utc`` (start), ``finished_utc``, ``wall_s`` (this process, start to write);
* ``forced_dirty`` and ``code_dirty_files``: only on a result written with ``--force-dirty``.

A number measured with uncommitted changes to the code it measures cannot be traced to any commit, so the
writer refuses, in one line and before the benchmark runs, while files under ``ticketsearch/`` or
``benchmarks/`` (tracked or not; results and run folders excepted) differ from HEAD, unless forced
(``--force-dirty`` from :func:`add_output_args`, or ``TICKETSEARCH_FORCE_DIRTY=1``). A forced result says
so at the top of its markdown and in ``provenance``.

This module imports only the standard library and ``ticketsearch.core.io`` at import time (torch and
numpy are imported when a result is written, to record them).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ticketsearch.core.io import atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

PROVENANCE_KEYS = (
    "benchmark",
    "variant",
    "git_commit",
    "git_dirty",
    "git_dirty_files",
    "command",
    "cwd",
    "versions",
    "device",
    "date_utc",
    "finished_utc",
    "wall_s",
)
VERSION_KEYS = ("python", "torch", "numpy", "ticketsearch")
DEVICE_KEYS = ("cpu_model", "cpu_count", "cpus_usable", "torch_threads", "cuda_device", "platform")
# paths whose changes do not make a result's code dirty: the results themselves and resumable run folders
_NOT_CODE = ("benchmarks/results", "benchmarks/runs")
# the code a benchmark measures: uncommitted changes here make its numbers untraceable
CODE_PATHS = ("ticketsearch", "benchmarks")
FORCE_ENV = "TICKETSEARCH_FORCE_DIRTY"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def md_table(head: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; ``|`` inside a cell is escaped."""

    def cell(c: Any) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cell(h) for h in head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _git(*args: str) -> str | None:
    try:
        p = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout if p.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """HEAD's commit and whether tracked code differs from it (results and run folders excepted)."""
    top = _git("rev-parse", "--show-toplevel")
    head = _git("rev-parse", "HEAD")
    if top is None or head is None or Path(top.strip()).resolve() != REPO:  # a copy, or inside another repo
        return {"git_commit": None, "git_dirty": None, "git_dirty_files": None}
    excludes = [f":(exclude){p}" for p in _NOT_CODE]
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *excludes)
    if status is None:
        return {"git_commit": head.strip(), "git_dirty": None, "git_dirty_files": None}
    files = [line[3:] for line in status.splitlines() if line.strip()]
    return {"git_commit": head.strip(), "git_dirty": bool(files), "git_dirty_files": files[:100]}


def code_dirty_files() -> list[str] | None:
    """Files under :data:`CODE_PATHS` that differ from HEAD, untracked ones included (``None`` outside the
    project's own checkout: nothing to compare with)."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != REPO:
        return None
    excludes = [f":(exclude){p}" for p in _NOT_CODE]
    status = _git("status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS, *excludes)
    if status is None:
        return None
    return [line[3:] for line in status.splitlines() if line.strip()]


def _forced_by_env() -> bool:
    return os.environ.get(FORCE_ENV, "").strip().lower() in ("1", "true", "yes")


def command_line() -> str:
    """The command as it was typed: interpreter, its options (``-m benchmarks.x``) and the arguments."""
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return shlex.join(argv)


def versions() -> dict[str, str | None]:
    from importlib import metadata

    def dist(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "numpy"):
        try:  # the version actually imported (an editable or shadowing install may differ from metadata)
            out[name] = getattr(importlib.import_module(name), "__version__", None) or dist(name)
        except ImportError:
            out[name] = None
    import ticketsearch

    out["ticketsearch"] = getattr(ticketsearch, "__version__", None) or dist("ticketsearch")
    return out


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def device_info() -> dict[str, Any]:
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    threads = cuda = None
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        threads = torch.get_num_threads()
        try:
            if torch.cuda.is_available():
                cuda = torch.cuda.get_device_name()
        except Exception:  # a broken driver must not lose the result
            cuda = None
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch_threads": threads,
        "cuda_device": cuda,
        "platform": platform.platform(),
    }


def _utc(t: _dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def add_output_args(ap: argparse.ArgumentParser, variant_help: str) -> None:
    """``--variant`` (default: derived from the other arguments by the script) and ``--results-dir``."""
    ap.add_argument("--variant", default=None, help=variant_help)
    ap.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS,
        help="root of the results tree (default benchmarks/results); writes <root>/<benchmark>/<variant>.*",
    )
    ap.add_argument(
        "--force-dirty",
        action="store_true",
        help="write the result although ticketsearch/ or benchmarks/ have uncommitted changes (the result "
        f"says so; also ${FORCE_ENV}=1)",
    )


class ResultWriter:
    """One benchmark result: ``<results_dir>/<benchmark>/<variant>.{json,md}``. The clock starts here."""

    def __init__(
        self,
        benchmark: str,
        variant: str = "default",
        *,
        results_dir: Path | str | None = None,
        force_dirty: bool = False,
    ):
        """Refuses (one ``error:`` line, exit 2) while the measured code has uncommitted changes, unless
        ``force_dirty`` or ``$TICKETSEARCH_FORCE_DIRTY=1``: checked here, before the benchmark spends its
        time, not when it writes."""
        for what, name in (("benchmark", benchmark), ("variant", variant)):
            if not _NAME.match(name):
                raise ValueError(f"{what} name {name!r}: use letters, digits and _ . + - (no slashes)")
        dirty = code_dirty_files() or []
        self.forced_dirty = bool(dirty) and (force_dirty or _forced_by_env())
        self.code_dirty_files = dirty
        if dirty and not self.forced_dirty:
            shown = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
            print(
                f"error: {benchmark}/{variant}: uncommitted changes to the code it measures ({shown}); commit "
                f"them first, or pass --force-dirty (or {FORCE_ENV}=1) to write a result marked dirty",
                file=sys.stderr,
            )
            raise SystemExit(2)
        self.benchmark = benchmark
        self.variant = variant
        self.dir = Path(results_dir if results_dir is not None else RESULTS) / benchmark
        self.started = _dt.datetime.now(_dt.timezone.utc)
        self._t0 = time.perf_counter()
        # the code that runs is the code at the start: commits made while a long benchmark runs are not it
        self._git = git_state()

    @property
    def json_path(self) -> Path:
        return self.dir / f"{self.variant}.json"

    @property
    def md_path(self) -> Path:
        return self.dir / f"{self.variant}.md"

    @property
    def partial_path(self) -> Path:
        """Where a long benchmark may keep its rows so far (removed by :meth:`write`)."""
        return self.dir / f"{self.variant}.partial.json"

    def write_partial(self, obj: Any) -> Path:
        return atomic_write_json(self.partial_path, obj)

    def provenance(self) -> dict[str, Any]:
        finished = _dt.datetime.now(_dt.timezone.utc)
        return {
            "benchmark": self.benchmark,
            "variant": self.variant,
            **self._git,
            "command": command_line(),
            "cwd": os.getcwd(),
            "versions": versions(),
            "device": device_info(),
            "date_utc": _utc(self.started),
            "finished_utc": _utc(finished),
            "wall_s": round(time.perf_counter() - self._t0, 3),
            **(
                {"forced_dirty": True, "code_dirty_files": self.code_dirty_files[:100]}
                if self.forced_dirty
                else {}
            ),
        }

    def write(self, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
        """Write the JSON (``payload`` + ``provenance``) and the markdown (``markdown`` + provenance)."""
        if "provenance" in payload:
            raise ValueError("payload must not carry its own 'provenance' key: the writer adds it")
        prov = self.provenance()
        j = atomic_write_json(self.json_path, {**payload, "provenance": prov})
        head = ""
        if self.forced_dirty:
            files = ", ".join(f"`{f}`" for f in self.code_dirty_files[:10])
            more = f" and {len(self.code_dirty_files) - 10} more" if len(self.code_dirty_files) > 10 else ""
            head = (
                f"> **Dirty: measured with uncommitted changes** to {files}{more} (written with --force-dirty); "
                "no commit holds the code that produced these numbers.\n\n"
            )
        m = atomic_write_text(self.md_path, head + markdown.rstrip() + "\n\n" + provenance_markdown(prov))
        try:
            self.partial_path.unlink()
        except FileNotFoundError:
            pass
        return j, m


def provenance_markdown(prov: dict[str, Any]) -> str:
    """The "Provenance" section appended to every result's markdown."""
    commit = prov.get("git_commit")
    if commit is None:
        git = "unknown (not a git checkout)"
    else:
        dirty = prov.get("git_dirty")
        n = len(prov.get("git_dirty_files") or [])
        state = {True: f"dirty: {n} tracked file(s) modified", False: "clean", None: "state unknown"}[dirty]
        git = f"`{commit[:12]}` ({state})"
    v = prov["versions"]
    d = prov["device"]
    cores = f"{d['cpu_count']} logical cores"
    if d.get("cpus_usable") not in (None, d["cpu_count"]):
        cores += f", {d['cpus_usable']} usable"
    threads = "" if d.get("torch_threads") is None else f", {d['torch_threads']} torch thread(s)"
    rows = [
        ["result", f"`{prov['benchmark']}/{prov['variant']}`"],
        ["command", f"`{prov['command']}` (in `{prov['cwd']}`)"],
        ["git commit", git + (" — **forced: uncommitted code changes**" if prov.get("forced_dirty") else "")],
        ["date (UTC)", f"{prov['date_utc']} → {prov['finished_utc']}"],
        ["wall time", f"{prov['wall_s']:.1f} s"],
        ["versions", ", ".join(f"{k} {v.get(k) or '?'}" for k in VERSION_KEYS)],
        ["CPU", f"{d.get('cpu_model') or '?'} ({cores}{threads})"],
        ["CUDA device", d.get("cuda_device") or "none"],
        ["platform", d.get("platform") or "?"],
    ]
    return "## Provenance\n\n" + md_table(["", ""], rows) + "\n"
