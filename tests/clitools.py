"""Running the CLI in-process and checking the one-line error contract (shared by the bad-input tests)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ticketsearch.cli import main


def run_cli(capsys, *args: str) -> subprocess.CompletedProcess:
    """``ticketsearch ARGS`` without a new interpreter (start-up would dominate these short checks)."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse exits itself
        code = exc.code if isinstance(exc.code, int) else 2
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, exactly one ``error:`` line on stderr naming every needle, no traceback, no usage dump."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr and "usage:" not in r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def nothing_left(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*")] if root.exists() else []
