"""What a study found: the best trials as a table, every trial as CSV, Optuna's matplotlib plots.

Any machine that can reach the storage builds the report: everything comes from the shared records
(values, parameters, the user attributes each trial stored: run directory, density, test accuracy).
Files are written atomically; a plot that Optuna cannot draw yet (importances need two parameters and a
few finished trials) is skipped with the reason in ``report.md``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.io import atomic_write_bytes, atomic_write_text
from ..core.provenance import stale_section

__all__ = [
    "best_trials",
    "trial_record",
    "params_text",
    "format_best",
    "write_report",
    "report_dir_name",
    "MIN_TRIALS_FOR_IMPORTANCE",
]

MIN_TRIALS_FOR_IMPORTANCE = 4  # fANOVA on fewer finished trials says nothing


def _is_pareto(study: Any) -> bool:
    return len(study.directions) > 1


def best_trials(study: Any, *, pareto: bool | None = None, k: int = 5) -> list[Any]:
    """Single objective: the ``k`` best complete trials (highest accuracy first, then the earlier);
    ``pareto``: the Pareto front, densest last."""
    from optuna.trial import TrialState

    pareto = _is_pareto(study) if pareto is None else pareto
    if pareto:
        return sorted(study.best_trials, key=lambda t: (-(t.values[1]), t.number))
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return sorted(done, key=lambda t: (-t.values[0], t.number))[:k]


def _param_value(t: Any, name: str) -> Any:
    """A parameter as the run saw it: durations with their unit (``rewind`` 2 → ``2ep``)."""
    hp = t.user_attrs.get("hparams") or {}
    for part in ("training", "pruning", "method_hparams"):
        if name in (hp.get(part) or {}):
            return hp[part][name]
    return t.params[name]


def params_text(t: Any) -> str:
    out = []
    for name in sorted(t.params):
        v = _param_value(t, name)
        out.append(f"{name}={v:.4g}" if isinstance(v, float) else f"{name}={v}")
    return ", ".join(out)


def trial_record(t: Any) -> dict[str, Any]:
    """One trial as a flat record (the CSV row, the JSON output)."""
    ua = t.user_attrs
    duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
    return {
        "number": t.number,
        "state": t.state.name,
        "val_acc": t.values[0] if t.values else None,
        "density": ua.get("density"),
        "test_acc": ua.get("test_acc"),
        "level": ua.get("level"),
        "params": {n: _param_value(t, n) for n in sorted(t.params)},
        "run_dir": ua.get("run_dir"),
        "duration_s": duration,
        "retry_of": t.system_attrs.get("failed_trial"),
        "pruned_at_step": max(t.intermediate_values)
        if t.state.name == "PRUNED" and t.intermediate_values
        else None,
        "diverged": ua.get("diverged"),
        "error": ua.get("error"),
    }


def _short_path(p: str | None) -> str:
    """Relative to the working directory when below it, so tables stay pasteable."""
    if not p:
        return "-"
    try:
        return str(Path(p).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _fmt(v: Any, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def format_best(study: Any) -> str:
    """The best trials (or the Pareto front) as a pasteable table, with the study's counts."""
    from optuna.trial import TrialState

    pareto = _is_pareto(study)
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state == s for t in trials) for s in TrialState}
    head = (
        f"study {study.study_name}: {counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} "
        f"pruned, {counts[TrialState.FAIL]} failed"
        + (f", {counts[TrialState.RUNNING]} running" if counts[TrialState.RUNNING] else "")
    )
    best = best_trials(study, pareto=pareto)
    if not best:
        return head + "\n(no complete trial yet)"
    title = "Pareto front (val_acc up, density down):" if pareto else "best trials (val_acc):"
    cols = ["trial", "val acc", "test acc", "density", "params", "run"]
    rows = [
        [
            str(t.number),
            _fmt(t.values[0]),
            _fmt(t.user_attrs.get("test_acc")),
            _fmt(t.user_attrs.get("density")),
            params_text(t),
            _short_path(t.user_attrs.get("run_dir")),
        ]
        for t in best
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = [
        head,
        title,
        "  ".join(c.ljust(w) for c, w in zip(cols, widths)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    stale = stale_trials(study)
    if stale:
        lines.append(
            f"{len(stale)} trial(s) reused cached results made by other code (rerun with --rerun-stale): "
            + "; ".join(f"trial {e['cell'].split()[-1]}: {e['reason']}" for e in stale[:5])
            + (" ..." if len(stale) > 5 else "")
        )
    return "\n".join(lines)


def stale_trials(study: Any) -> list[dict[str, Any]]:
    """``{"cell": "trial N", "reason"}`` for every trial whose run reused levels other code made."""
    out = []
    for t in study.get_trials(deepcopy=False):
        reused = t.user_attrs.get("stale") or []
        if reused:
            out.append(
                {
                    "cell": f"trial {t.number}",
                    "reason": f"reused {len(reused)} level(s): {reused[0]['reason']}",
                }
            )
    return out


def report_dir_name(study_name: str) -> str:
    """A folder name for a study's report: its name with anything but ``[A-Za-z0-9._-]`` replaced."""
    return "study_" + re.sub(r"[^A-Za-z0-9._-]", "_", study_name)


def _csv(study: Any) -> str:
    records = [trial_record(t) for t in study.get_trials(deepcopy=False)]
    params = sorted({p for r in records for p in r["params"]})
    cols = [
        "number",
        "state",
        "val_acc",
        "density",
        "test_acc",
        "level",
        *[f"param_{p}" for p in params],
        "duration_s",
        "retry_of",
        "pruned_at_step",
        "run_dir",
        "diverged",
        "error",
    ]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in records:
        flat = {**r, **{f"param_{p}": r["params"].get(p) for p in params}}
        w.writerow(["" if flat.get(c) is None else flat[c] for c in cols])
    return buf.getvalue()


def _save(ax: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    panels = len(ax.flat) if hasattr(ax, "flat") else 1  # a slice plot has one panel per parameter
    fig = ax.flat[0].figure if hasattr(ax, "flat") else ax.figure
    fig.set_size_inches(max(fig.get_figwidth(), 7, 4.5 * panels), max(fig.get_figheight(), 4.5))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _plots(study: Any, out: Path) -> tuple[list[str], list[str]]:
    """Optuna's matplotlib plots that apply; returns (written file names, skipped with why)."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    pareto = _is_pareto(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    params = sorted({p for t in complete for p in t.params})
    written: list[str] = []
    skipped: list[str] = []

    def val(t: Any) -> float:
        return t.values[0]

    jobs: list[tuple[str, Any, str | None]] = []
    if pareto:
        jobs.append(
            (
                "history.png",
                lambda: ovm.plot_optimization_history(study, target=val, target_name="val_acc"),
                None,
            )
        )
        jobs.append(
            (
                "pareto_front.png",
                lambda: ovm.plot_pareto_front(study, target_names=["val_acc", "density"]),
                None,
            )
        )
    else:
        jobs.append(
            ("history.png", lambda: ovm.plot_optimization_history(study, target_name="val_acc"), None)
        )
        if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
            jobs.append(("intermediate.png", lambda: ovm.plot_intermediate_values(study), None))
    if params:  # the objective against each parameter: where the good values lie
        jobs.append(
            (
                "slice.png",
                lambda: ovm.plot_slice(study, target=val if pareto else None, target_name="val_acc"),
                None,
            )
        )
    why = None
    if len(params) < 2:
        why = f"parameter importances need ≥ 2 parameters (this study has {len(params)})"
    elif len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        why = f"parameter importances need ≥ {MIN_TRIALS_FOR_IMPORTANCE} complete trials ({len(complete)} so far)"
    jobs.append(
        (
            "importances.png",
            lambda: ovm.plot_param_importances(study, target=val if pareto else None, target_name="val_acc"),
            why,
        )
    )
    for name, draw, reason in jobs:
        if reason is not None:
            skipped.append(f"{name}: {reason}")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw()
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # too few distinct values, ...
            skipped.append(f"{name}: {exc}")
            continue
        _save(ax, out / name)
        written.append(name)
    return written, skipped


def write_report(study: Any, out: Path) -> dict[str, Any]:
    """``trials.csv`` (every trial), ``report.md`` (the best trials and the plots) and the PNGs in ``out``."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise ConfigError(
            f"study '{study.study_name}' has no complete trial yet; run trials first (--n-trials N)"
        )
    out = Path(out)
    atomic_write_text(out / "trials.csv", _csv(study))
    written, skipped = _plots(study, out)
    attrs = study.user_attrs.get("ticketsearch") or {}
    lines = [
        f"# Study `{study.study_name}`",
        "",
        f"method `{(attrs.get('identity') or {}).get('method', '?')}`, objectives: "
        f"{', '.join(attrs.get('objectives') or ['val_acc'])}",
        "",
        "```",
        format_best(study),
        "```",
        "",
        "All trials: [trials.csv](trials.csv).",
        "",
        *[f"![{n}]({n})" for n in written],
        *([""] + [f"- not drawn: {s}" for s in skipped] if skipped else []),
    ]
    if attrs.get("identity"):
        lines += ["", "Settings (shared by every trial before the search):", "", "```json"]
        lines += [json.dumps(attrs["identity"], indent=2, sort_keys=True), "```"]
    lines += stale_section(stale_trials(study), what="study")
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return {"out": str(out), "files": ["trials.csv", "report.md", *written], "skipped": skipped}
