"""Which code produced a result: package version, git commit and dirty state, torch version, device.

Runs are cached by hyperparameters alone (a finished level is never recomputed), so a result read back
from a run directory may have been made by older code. Every level's ``result.json`` therefore carries a
``provenance`` block (written by ``experiments.rundir.LevelDir.write_result``), and whatever reuses a
result can tell whether the code that made it is the code running now (:func:`stale_reason`).

The code's identity is the package's own git checkout when it runs from one (an editable install): HEAD's
commit, whether tracked or untracked files under ``ticketsearch/`` differ from it, and a digest of that
difference (so two runs of the same uncommitted edit agree). Outside a checkout (a wheel) it is the
package version. The torch version and the device are recorded beside it, not part of the identity.

Computed once per process (the git calls cost ~20 ms); :func:`current` is cached. Provenance never enters
a run's hash: the same hyperparameters name the same run whatever code made it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "current",
    "for_device",
    "code_identity",
    "stale_reason",
    "describe",
    "note_reuse",
    "collect_stale",
    "stale_section",
]

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../ticketsearch
CHECKOUT = PACKAGE_DIR.parent


def _git(*args: str) -> str | None:
    try:
        p = subprocess.run(
            ["git", "-C", str(CHECKOUT), *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout if p.returncode == 0 else None


def _git_state() -> dict[str, Any]:
    """HEAD and the dirty state of ``ticketsearch/`` in the package's own checkout (``None`` outside one:
    a wheel installed inside some other repository must not report that repository's commit)."""
    none: dict[str, Any] = {"git_commit": None, "git_dirty": None, "dirty_digest": None}
    top = _git("rev-parse", "--show-toplevel")
    head = _git("rev-parse", "HEAD")
    if top is None or head is None or Path(top.strip()).resolve() != CHECKOUT:
        return none
    status = _git("status", "--porcelain", "--untracked-files=all", "--", "ticketsearch")
    if status is None:
        return {**none, "git_commit": head.strip()}
    dirty = [line[3:] for line in status.splitlines() if line.strip()]
    digest = None
    if dirty:
        h = hashlib.sha256((_git("diff", "HEAD", "--", "ticketsearch") or "").encode())
        for line in status.splitlines():
            if line.startswith("??"):  # untracked files: their content, not only their names
                path = CHECKOUT / line[3:]
                h.update(line[3:].encode())
                with contextlib.suppress(OSError):
                    h.update(path.read_bytes() if path.is_file() else b"")
        digest = h.hexdigest()[:16]
    return {"git_commit": head.strip(), "git_dirty": bool(dirty), "dirty_digest": digest}


@functools.lru_cache(maxsize=1)
def current() -> dict[str, Any]:
    """This process's code: ``ticketsearch`` version, ``git_commit``, ``git_dirty``, ``dirty_digest`` and
    ``torch`` version (cached: the code does not change under a running process)."""
    import torch

    from .. import __version__

    return {"ticketsearch": __version__, **_git_state(), "torch": str(torch.__version__)}


def for_device(device: Any = None) -> dict[str, Any]:
    """:func:`current` plus the device a result was computed on (``cpu`` or ``cuda:0 (<GPU name>)``)."""
    out = dict(current())
    out["device"] = _device_name(device)
    return out


def _device_name(device: Any) -> str | None:
    if device is None:
        return None
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            idx = dev.index if dev.index is not None else torch.cuda.current_device()
            return f"cuda:{idx} ({torch.cuda.get_device_name(idx)})"
        except Exception:  # a broken driver must not lose the result
            return str(dev)
    return str(dev)


def code_identity(prov: dict[str, Any] | None) -> tuple[Any, ...] | None:
    """What must match for two results to come from the same code (``None``: unknown)."""
    if not prov:
        return None
    if prov.get("git_commit"):
        return ("git", prov["git_commit"], bool(prov.get("git_dirty")), prov.get("dirty_digest"))
    if prov.get("ticketsearch"):
        return ("version", prov["ticketsearch"])
    return None


def stale_reason(recorded: dict[str, Any] | None, now: dict[str, Any] | None = None) -> str | None:
    """Why a result recorded with ``recorded`` provenance was not made by the code running now (``now``,
    default :func:`current`), or ``None`` when it was.

    Stale: no provenance (made before it was recorded), another commit, another uncommitted edit (or a
    clean tree against a dirty one), a result made outside a checkout while this code runs from one, or,
    outside a git checkout, another package version.
    """
    now = current() if now is None else now
    if not recorded:
        return "no provenance (made before results recorded their code)"
    if now.get("git_commit"):  # a checkout: only the same commit (and the same edit, if any) is current
        same = recorded.get("git_commit") and code_identity(recorded) == code_identity(now)
    else:  # an installed package: its version is all we know of it
        same = recorded.get("ticketsearch") == now.get("ticketsearch") and not recorded.get("git_dirty")
    return None if same else f"made by {describe(recorded)}"


def describe(prov: dict[str, Any] | None) -> str:
    """One short line naming the code of ``prov``: ``ticketsearch 0.1.0 @ 1a2b3c4d5e6f (dirty), torch 2.5``."""
    if not prov:
        return "unknown code (no provenance)"
    out = f"ticketsearch {prov.get('ticketsearch') or '?'}"
    if prov.get("git_commit"):
        out += f" @ {str(prov['git_commit'])[:12]}"
        if prov.get("git_dirty"):
            out += f" with uncommitted changes ({prov.get('dirty_digest') or '?'})"
    out += f", torch {prov.get('torch') or '?'}"
    if prov.get("device"):
        out += f", {prov['device']}"
    return out


# -- reuses of stale results, collected per call ---------------------------------------------------------
_LOCAL = threading.local()


def note_reuse(path: Path | str, result: dict[str, Any]) -> None:
    """Called when a finished level's result is read back instead of recomputed: a stale one is added to
    every :func:`collect_stale` block open in this thread."""
    stacks: list[list[dict[str, Any]]] = getattr(_LOCAL, "stacks", [])
    if not stacks:
        return
    prov = result.get("provenance")
    why = stale_reason(prov if isinstance(prov, dict) else None)
    if why is None:
        return
    entry = {"path": str(path), "reason": why, "provenance": prov if isinstance(prov, dict) else None}
    for found in stacks:
        if all(e["path"] != entry["path"] for e in found):
            found.append(entry)


@contextlib.contextmanager
def collect_stale() -> Iterator[list[dict[str, Any]]]:
    """Collect the stale results reused inside the block: ``[{"path", "reason", "provenance"}, ...]``,
    one entry per level folder, so a report can say which cells came from other code."""
    found: list[dict[str, Any]] = []
    stacks = getattr(_LOCAL, "stacks", None)
    if stacks is None:
        stacks = _LOCAL.stacks = []
    stacks.append(found)
    try:
        yield found
    finally:
        stacks.remove(found)


def stale_section(entries: list[dict[str, Any]], *, what: str, limit: int = 20) -> list[str]:
    """Markdown lines for a report: the reused results other code made, grouped by that code (nothing when
    there are none). ``entries`` are :func:`collect_stale` entries, each with ``path`` or ``cell``."""
    if not entries:
        return []
    groups: dict[str, list[str]] = {}
    for e in entries:
        groups.setdefault(e.get("reason") or "made by other code", []).append(str(e.get("cell") or e["path"]))
    lines = [
        "",
        "## Reused results made by other code",
        "",
        f"This {what} reused {len(entries)} cached result(s) that the code running now did not make "
        f"({describe(current())}). Their numbers are those of the code named below; rerun with "
        "`--rerun-stale` to recompute them.",
        "",
    ]
    for reason, names in groups.items():
        shown = ", ".join(f"`{n}`" for n in names[:limit])
        more = f" and {len(names) - limit} more" if len(names) > limit else ""
        lines.append(f"- {reason}: {len(names)} — {shown}{more}")
    return lines
