"""Helpers for tests that run the CLI in real processes: collect several at once, find a pool's workers."""

from __future__ import annotations

import subprocess
from pathlib import Path


def finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
    """(returncode, stdout, stderr) of each process; one that outlives ``timeout`` is killed, not waited on
    forever (its code then says so)."""
    out = []
    for p in procs:
        try:
            so, se = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            so, se = p.communicate()
        out.append((p.returncode, so, se))
    return out


def spawned_children(pid: int) -> list[int]:
    """Worker processes of ``pid``'s process pool (spawned interpreters), not multiprocessing's resource
    tracker."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and "spawn_main" in cmdline:
            out.append(int(proc.name))
    return out
