"""Result rows as a pasteable table (or JSON): one row per level."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..methods import LevelRow

__all__ = ["format_table", "emit"]


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _short_path(p: str) -> str:
    """Relative to the working directory when below it: tables stay pasteable."""
    try:
        return str(Path(p).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def format_table(rows: Sequence[LevelRow]) -> str:
    """Density, test accuracy (final and at early stop), early-stop iteration, controls, mask path."""
    head = ["level", "density", "test acc", "es iter", "es test acc"]
    controls = sorted({c for r in rows for c in r.controls})
    head += [f"{c} acc" for c in controls]
    then_train = any(r.then_train is not None for r in rows)
    if then_train:
        head.append("then-train acc")
    head.append("mask")
    lines = []
    for r in rows:
        cells = [
            str(r.level),
            f"{r.density:.4f}",
            _fmt(r.test_acc, ".4f"),
            _fmt(r.es_iteration, "d"),
            _fmt(r.es_test_acc, ".4f"),
        ]
        cells += [_fmt(r.controls.get(c, {}).get("test_acc"), ".4f") for c in controls]
        if then_train:
            cells.append(_fmt((r.then_train or {}).get("test_acc"), ".4f"))
        cells.append(_short_path(r.mask))
        lines.append(cells)
    widths = [max(len(h), *(len(row[i]) for row in lines)) if lines else len(h) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in lines]
    if rows and not rows[-1].weights_trained:
        out.append("(supermask: test acc is with the untrained weights)")
    return "\n".join(out)


def emit(summary: Any, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2, default=str))
    else:
        print(f"run: {summary.run_dir}/replicate_{summary.seed}")
        print(format_table(summary.rows))
