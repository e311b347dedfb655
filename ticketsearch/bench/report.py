"""The suite's answer as a reader wants it: tables (mean ± std over seeds, best per density in bold), cost,
sanity checks, published anchors, and plots — rebuilt from ``results.jsonl`` alone (``bench --report``)."""

from __future__ import annotations

import io
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..core.io import atomic_write_bytes, atomic_write_csv, atomic_write_text
from ..core.provenance import stale_section
from .runner import DENSE, cells_of, latest_records, smallest_keys, stale_records
from .spec import Suite, Variant

__all__ = ["aggregate", "write_report", "SURVIVE_POINTS"]

# a sanity check "leaves the ticket's accuracy intact" when it moves it by less than this (points), or by
# less than the spread over seeds
SURVIVE_POINTS = 0.5


def _ms(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset/model, variant, density): n, accuracy mean/std, density kept, cost, checks."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r.get("status") == "ok":
            groups[(f"{r['dataset']}/{r['model']}", r["variant"], float(r["density"]))].append(r)
    rows = []
    for (ds, variant, density), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2])):
        acc, acc_sd = _ms([r["test_acc"] for r in rs])
        row: dict[str, Any] = {
            "dataset": ds,
            "variant": variant,
            "density": density,
            "n": len(rs),
            "acc_mean": acc,
            "acc_std": acc_sd,
            "density_kept": statistics.fmean(r["density_kept"] for r in rs),
            "find_wall_s": _mean_of(rs, lambda r: (r.get("cost_to_find") or {}).get("wall_time")),
            "find_backward": _mean_of(
                rs,
                lambda r: (
                    (r.get("cost_to_find") or {}).get("backward")
                    or (r.get("cost_to_find") or {}).get("backward_passes")
                ),
            ),
            "train_iterations": _mean_of(rs, lambda r: r.get("train_iterations")),
            "then_train_mean": _mean_of(rs, lambda r: r.get("then_train_acc")),
            "method": rs[0].get("method"),
            # the whole cost of the reported accuracy (search + the ticket's training), and of a then-train
            "total_steps": _mean_of(rs, lambda r: (r.get("total_cost") or {}).get("steps")),
            "total_wall_s": _mean_of(rs, lambda r: (r.get("total_cost") or {}).get("wall_time")),
            "then_total_steps": _mean_of(rs, lambda r: (r.get("total_cost") or {}).get("then_train_steps")),
        }
        for check in ("reinit", "shuffle", "invert"):
            vals = [r["sanity"][check] for r in rs if (r.get("sanity") or {}).get(check) is not None]
            row[f"{check}_mean"] = statistics.fmean(vals) if vals else None
        rows.append(row)
    return rows


def _in_order(records: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """``records`` in the suite's run order of their keys (others after, as they came), so that a report
    does not reorder its rows when a retried cell or search finishes in another order."""
    rank = {k: i for i, k in enumerate(keys)}
    return sorted(records, key=lambda r: rank.get(r.get("key", ""), len(rank)))


def _mean_of(rs: list[dict[str, Any]], f: Any) -> float | None:
    vals = [f(r) for r in rs]
    vals = [v for v in vals if v is not None]
    return statistics.fmean(vals) if vals else None


def _pct(m: float | None, s: float | None = None) -> str:
    if m is None:
        return "-"
    return f"{100 * m:.2f}" if s is None else f"{100 * m:.2f} ± {100 * s:.2f}"


def write_report(records: list[dict[str, Any]], out_dir: Path, suite: Suite | None = None) -> None:
    """summary.csv, report.md and the plots, from the records alone (the newest record of each cell: a
    failed cell retried, a stale one recomputed); cells whose numbers other code made are listed."""
    records = latest_records(records)
    rows = aggregate(records)
    atomic_write_csv(out_dir / "summary.csv", rows)
    lines = [f"# Benchmark report: {suite.name if suite else out_dir.name}", ""]
    if suite is not None and suite.description:
        lines += [suite.description, ""]
    from .runner import read_command  # the command that reproduces this folder, recorded when it ran

    command = read_command(out_dir)
    if command is not None:
        lines += [f"Reproduce: `{command}`", ""]
    lines += [
        "Test accuracy (%), mean ± std over seeds; **bold**: the best method at each density (dense excluded). "
        "Each density column holds the tickets nearest that density (IMP: its level nearest it). Supermask: "
        "untrained weights under the mask (then-trained in the cost table).",
        "",
    ]
    for ds in sorted({r["dataset"] for r in rows}):
        lines += _dataset_section(ds, [r for r in rows if r["dataset"] == ds], out_dir)
    for ds in sorted({r["dataset"] for r in rows}):
        lines += _answer_section(ds, [r for r in rows if r["dataset"] == ds], out_dir)
    if suite is not None:
        for ds in sorted({r["dataset"] for r in rows}):
            lines += _pattern_section(ds, [r for r in rows if r["dataset"] == ds], suite)
    if suite is not None and suite.anchors:
        lines += _anchors(rows, suite)
    small = _smallest_records(out_dir)
    if small:
        lines += _smallest_section(_in_order(small, smallest_keys(suite) if suite is not None else []))
    lines += _timing_section(out_dir)
    failed = _in_order(
        [r for r in records if r.get("status") == "failed"],
        [c.key for c in cells_of(suite)] if suite is not None else [],
    )
    if failed:
        lines += ["## Failed cells", "", "| cell | error |", "|---|---|"]
        lines += [f"| `{r['key']}` | {str(r.get('error', '')).replace('|', '/')} |" for r in failed]
        lines.append("")
    stale = stale_records(records)
    stale += [
        {
            "cell": f"smallest {r['key']}",
            "reason": f"reused {len(r['stale'])} level(s): {r['stale'][0]['reason']}",
        }
        for r in small
        if r.get("stale")
    ]
    lines += stale_section(stale, what="report")
    atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")


def _dataset_section(ds: str, rows: list[dict[str, Any]], out_dir: Path) -> list[str]:
    densities = sorted({r["density"] for r in rows if r["variant"] != DENSE}, reverse=True)
    variants = sorted({r["variant"] for r in rows if r["variant"] != DENSE})
    by = {(r["variant"], r["density"]): r for r in rows}
    best = {}
    for d in densities:
        cands = [by[(v, d)] for v in variants if (v, d) in by]
        if cands:
            best[d] = max(cands, key=lambda r: r["acc_mean"])["variant"]
    dense = by.get((DENSE, 1.0))
    out = [f"## {ds}", ""]
    if dense is not None:
        out += [
            f"Dense network, same budget: {_pct(dense['acc_mean'], dense['acc_std'])}% (n = {dense['n']}).",
            "",
        ]
    out.append("| method | " + " | ".join(f"{100 * d:g}%" for d in densities) + " |")
    out.append("|---|" + "---|" * len(densities))
    for v in variants:
        cells = []
        for d in densities:
            r = by.get((v, d))
            text = "-" if r is None else _pct(r["acc_mean"], r["acc_std"])
            cells.append(f"**{text}**" if r is not None and best.get(d) == v else text)
        out.append(f"| {v} | " + " | ".join(cells) + " |")
    out += ["", "Cost to find (mean per ticket) and training iterations:", ""]
    out += [
        "| method | density | kept | find wall (s) | find backward passes | train iterations | then-train acc |"
    ]
    out += ["|---|---|---|---|---|---|---|"]
    for v in variants:
        for d in densities:
            r = by.get((v, d))
            if r is None:
                continue
            out.append(
                f"| {v} | {100 * d:g}% | {100 * r['density_kept']:.2f}% | {_num(r['find_wall_s'], '.2f')} | "
                f"{_num(r['find_backward'], '.0f')} | {_num(r['train_iterations'], '.0f')} | "
                f"{_pct(r['then_train_mean'])} |"
            )
    sanity = [r for r in rows if any(r.get(f"{c}_mean") is not None for c in ("reinit", "shuffle", "invert"))]
    if sanity:
        out += [
            "",
            "Sanity checks (Frankle et al. 2021): Δ = check − ticket, in points. A check the ticket *survives* "
            f"(|Δ| < {SURVIVE_POINTS} pt or within the seed spread) shows the method's ticket carries no more than "
            "per-layer densities (shuffle, reinit) or that its ranking does not matter (invert).",
            "",
            "| method | density | ticket | reinit Δ | shuffle Δ | invert Δ |",
            "|---|---|---|---|---|---|",
        ]
        for r in sorted(sanity, key=lambda r: (r["variant"], -r["density"])):
            cells = [_delta(r, c) for c in ("reinit", "shuffle", "invert")]
            out.append(
                f"| {r['variant']} | {100 * r['density']:g}% | {_pct(r['acc_mean'])} | "
                + " | ".join(cells)
                + " |"
            )
    slug = ds.replace("/", "_")
    _plot_accuracy(ds, rows, densities, variants, out_dir / f"accuracy_{slug}.png")
    _plot_cost(ds, rows, out_dir / f"cost_{slug}.png")
    if sanity:
        _plot_sanity(ds, sanity, out_dir / f"sanity_{slug}.png")
    out += ["", f"![accuracy vs density](accuracy_{slug}.png) ![accuracy vs cost](cost_{slug}.png)", ""]
    if sanity:
        out += [f"![sanity checks](sanity_{slug}.png)", ""]
    return out


# the frontier's question: a method other than the reference within this many points of it ...
CLOSE_POINTS = 0.5
# ... for at most this fraction of its training steps
CHEAP_FRACTION = 0.2


_PATTERN_FIELDS = ("pattern", "allow_dense_layers")  # the second matters only under a pattern


def pattern_groups(suite: Suite) -> list[tuple[Variant, list[Variant]]]:
    """(an unstructured variant, the variants equal to it but for ``--pattern``): what a pattern costs
    is read against the same method, knobs and training, unstructured."""
    groups: dict[str, list[Variant]] = defaultdict(list)
    for v in suite.variants:
        pruning = {k: x for k, x in v.pruning.items() if k not in _PATTERN_FIELDS}
        key = json.dumps([v.method, pruning, v.args, v.then_train, v.training, v.controls], sort_keys=True)
        groups[key].append(v)
    out = []
    for vs in groups.values():
        base = [v for v in vs if v.pruning.get("pattern", "unstructured") == "unstructured"]
        patterned = [v for v in vs if v.pruning.get("pattern", "unstructured") != "unstructured"]
        if len(base) == 1 and patterned:
            out.append((base[0], patterned))
    return out


def _pattern_section(ds: str, rows: list[dict[str, Any]], suite: Suite) -> list[str]:
    """Each patterned variant's accuracy and its cost against the same method unstructured, per density
    (a learned mask's untrained weights and, when the suite trains them after, its trained ticket)."""
    groups = pattern_groups(suite)
    if not groups:
        return []
    at = {(r["variant"], r["density"]): r for r in rows}
    densities = sorted({d for v in suite.variants for d in suite.densities_of(v)}, reverse=True)
    head = " | ".join(f"{100 * d:g}% | Δ" for d in densities)
    out = [
        f"## {ds}: what a pattern costs",
        "",
        "Test accuracy (%) of each patterned ticket and Δ, its difference in points from the same method, "
        "knobs and training unstructured at the same density (mean over seeds).",
        "",
        f"| method | pattern | {head} |",
        "|---|---|" + "---|---|" * len(densities),
    ]
    for base, patterned in groups:
        fields = [("acc_mean", "")] + ([("then_train_mean", " (then trained)")] if base.then_train else [])
        for key, label in fields:
            for v in [base, *patterned]:
                cols = []
                for d in densities:
                    r, b = at.get((v.name, d)), at.get((base.name, d))
                    acc = r.get(key) if r is not None else None
                    ref = b.get(key) if b is not None else None
                    delta = "" if v is base or acc is None or ref is None else f"{100 * (acc - ref):+.2f}"
                    cols.append(f"{_pct(acc)} | {delta}")
                pattern = v.pruning.get("pattern", "unstructured")
                out.append(f"| {base.name}{label} | {pattern} | " + " | ".join(cols) + " |")
    return out + [""]


def _answer_section(ds: str, rows: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """Which method wins at each density and at what cost, against the dense network and the reference.

    The reference is the method whose level 0 is the suite's dense network (the dense cells' method: IMP),
    so no method is named here. Cost is each cell's whole cost (``total_cost``: the search and the
    ticket's own training) in training steps, relative to one dense training of the same budget. Written
    only when the records carry that cost (suites run since it was recorded)."""
    dense = next((r for r in rows if r["variant"] == DENSE), None)
    if dense is None or not dense.get("total_steps"):
        return []
    ref_method, unit = dense.get("method"), float(dense["total_steps"])
    cells = [r for r in rows if r["variant"] != DENSE and r.get("total_steps") is not None]
    if not cells:
        return []
    densities = sorted({r["density"] for r in cells}, reverse=True)
    out = [
        f"## {ds}: who wins, at what cost",
        "",
        f"Cost: the whole training a cell's accuracy took (the search plus the ticket's own training, in steps), "
        f"in units of one dense training ({unit:,.0f} steps); the reference is the method that trained the "
        f"dense network (`{ref_method}`: its variants are marked ★). Wall seconds are as measured, cached "
        "cells included (their machine load may differ).",
        "",
        "| method | density | test acc | Δ vs best ★ (pt) | cost (× dense) | cost (× best ★) | wall (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    answers: list[str] = []
    for d in densities:
        at = [r for r in cells if r["density"] == d]
        refs = [r for r in at if r.get("method") == ref_method]
        best_ref = max(refs, key=lambda r: r["acc_mean"], default=None)
        for r in sorted(at, key=lambda r: -r["acc_mean"]):
            star = " ★" if r.get("method") == ref_method else ""
            delta = "-" if best_ref is None else f"{100 * (r['acc_mean'] - best_ref['acc_mean']):+.2f}"
            rel = "-" if best_ref is None else f"{r['total_steps'] / best_ref['total_steps']:.2f}"
            out.append(
                f"| {r['variant']}{star} | {100 * d:g}% | {_pct(r['acc_mean'], r['acc_std'])} | {delta} | "
                f"{r['total_steps'] / unit:.2f} | {rel} | {_num(r['total_wall_s'], '.0f')} |"
            )
        best = max(at, key=lambda r: r["acc_mean"])
        line = (
            f"- **{100 * d:g}%**: the best ticket is {best['variant']} ({_pct(best['acc_mean'])}%, "
            f"{best['total_steps'] / unit:.1f}× a dense training)"
        )
        if best_ref is not None:
            others = [r for r in at if r.get("method") != ref_method]
            cheap = [r for r in others if r["total_steps"] <= CHEAP_FRACTION * best_ref["total_steps"]]
            top = max(others, key=lambda r: r["acc_mean"], default=None)
            if top is not None:
                gap = 100 * (top["acc_mean"] - best_ref["acc_mean"])
                line += (
                    f"; the best other method, {top['variant']}, is {gap:+.2f} pt from {best_ref['variant']} "
                    f"for {top['total_steps'] / best_ref['total_steps']:.0%} of its cost"
                )
            close = [r for r in cheap if 100 * (best_ref["acc_mean"] - r["acc_mean"]) <= CLOSE_POINTS]
            line += (
                f"; within {CLOSE_POINTS} pt of {best_ref['variant']} for ≤ {CHEAP_FRACTION:.0%} of its cost: "
                + (", ".join(f"{r['variant']} ({_pct(r['acc_mean'])}%)" for r in close) or "**none**")
            )
        answers.append(line + ".")
    near_dense = [
        r
        for r in cells
        if r.get("method") != ref_method and 100 * (dense["acc_mean"] - r["acc_mean"]) <= CLOSE_POINTS
    ]
    lowest = min(near_dense, key=lambda r: (r["density"], -r["acc_mean"]), default=None)
    answers.append(
        f"- Dense reaches {_pct(dense['acc_mean'])}%. The sparsest ticket within {CLOSE_POINTS} pt of it "
        f"found without `{ref_method}`: "
        + (
            f"{lowest['variant']} at {100 * lowest['density']:g}% ({_pct(lowest['acc_mean'])}%)."
            if lowest is not None
            else "none at these densities."
        )
    )
    slug = ds.replace("/", "_")
    _plot_pareto(ds, cells, densities, unit, ref_method, out_dir / f"pareto_{slug}.png")
    return out + ["", *answers, "", f"![accuracy against cost](pareto_{slug}.png)", ""]


def _pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both cost (lower) and accuracy (higher), by cost."""
    front: list[tuple[float, float]] = []
    for c, a in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or a > front[-1][1]:
            front.append((c, a))
    return front


def _plot_pareto(
    ds: str, cells: list[dict[str, Any]], densities: list[float], unit: float, ref: Any, path: Path
) -> None:
    plt = _fig()
    n = len(densities)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.2), squeeze=False, sharey=False)
    variants = sorted({r["variant"] for r in cells})
    colors = {v: plt.get_cmap("tab20")(i % 20) for i, v in enumerate(variants)}
    for ax, d in zip(axes[0], densities):
        at = [r for r in cells if r["density"] == d]
        pts = []
        for r in at:
            x, y = r["total_steps"] / unit, 100 * r["acc_mean"]
            marker = "*" if r.get("method") == ref else "o"
            ax.scatter(
                [x],
                [y],
                color=colors[r["variant"]],
                marker=marker,
                s=70 if marker == "*" else 30,
                label=r["variant"],
            )
            pts.append((x, y))
            if r.get("then_total_steps") and r.get("then_train_mean") is not None:
                tx, ty = r["then_total_steps"] / unit, 100 * r["then_train_mean"]
                ax.scatter([tx], [ty], color=colors[r["variant"]], marker="x", s=40)
                pts.append((tx, ty))
        front = _pareto_front(pts)
        ax.plot([p[0] for p in front], [p[1] for p in front], color="0.4", lw=1, ls="--", zorder=0)
        lo = max(min(p[1] for p in pts), max(p[1] for p in pts) - 15)
        ax.set_ylim(lo - 0.5, max(p[1] for p in pts) + 0.5)
        ax.set_xscale("log")
        ax.set_title(f"{100 * d:g}% kept")
        ax.set_xlabel("cost (dense trainings, log)")
    axes[0][0].set_ylabel("test accuracy (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7, bbox_to_anchor=(0.5, -0.2)
    )
    fig.suptitle(
        f"{ds}: accuracy against cost (★ reference, × then-trained, dashed: Pareto front; "
        "axes cut 15 pt under the best)",
        fontsize=9,
    )
    _save(fig, path)


def _smallest_records(out_dir: Path) -> list[dict[str, Any]]:
    from .runner import read_records

    latest = {
        r["key"]: r for r in read_records(out_dir / "smallest.jsonl")
    }  # a retried search: its last record
    return list(latest.values())


def _smallest_section(records: list[dict[str, Any]]) -> list[str]:
    out = [
        "## Smallest tickets",
        "",
        "The lowest density whose ticket stays within the tolerance of the dense network's validation accuracy "
        "(mean over the suite's seeds; `ticketsearch smallest`). Test accuracy reported, never used to choose.",
        "",
        "| dataset | method | tolerance (pt) | smallest density | val acc | test acc | dense val | cost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if r.get("status") != "ok":
            out.append(
                f"| {r['dataset']}/{r['model']} | {r['variant']} | - | failed: {r.get('error', '')} | | | | |"
            )
            continue
        a, d, c = r["answer"], r["dense"], r["cost"]
        ans = "none" if a is None else f"**{100 * a['kept']:.2f}%**"
        val = "-" if a is None else _pct(a["val_mean"], a["val_std"])
        test = "-" if a is None else _pct(a["test_mean"], a["test_std"])
        out.append(
            f"| {r['dataset']}/{r['model']} | {r['variant']} | {r['tolerance_points']} | {ans} | {val} | {test} | "
            f"{_pct(d['val_mean'])} | {c['runs']} runs, {c['iterations']:,} it |"
        )
    return out + [""]


def _num(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _delta(r: dict[str, Any], check: str) -> str:
    m = r.get(f"{check}_mean")
    if m is None:
        return "-"
    d = 100 * (m - r["acc_mean"])
    survives = abs(d) < max(SURVIVE_POINTS, 100 * r["acc_std"])
    return f"{d:+.2f} ({'survives' if survives else 'hurts' if d < 0 else 'helps'})"


def _anchors(rows: list[dict[str, Any]], suite: Suite) -> list[str]:
    out = [
        "## Published numbers beside ours",
        "",
        "| dataset | method | density | paper | ours | source |",
        "|---|---|---|---|---|---|",
    ]
    for a in suite.anchors:
        mine = [r for r in rows if r["dataset"].split("/")[0] == a.dataset and r["variant"] == a.variant]
        near = min(mine, key=lambda r: abs(math.log(r["density"]) - math.log(a.density)), default=None)
        ours = (
            "-"
            if near is None
            else f"{_pct(near['acc_mean'], near['acc_std'])} at {100 * near['density_kept']:.1f}%"
        )
        out.append(
            f"| {a.dataset} | {a.variant} | {100 * a.density:g}% | {100 * a.accuracy:.2f} | {ours} | {a.source} |"
        )
    return out + [""]


def _timing_section(out_dir: Path) -> list[str]:
    """The last invocation's time budget (``timing.json``, written by the runner), if there is one."""
    path = out_dir / "timing.json"
    try:
        t = json.loads(path.read_text(encoding="utf-8"))
        if t.get("queue"):  # bench --storage: this machine's share of a queue, searches among its items
            ran = (
                f"Last invocation on this machine (queue `{t['queue']}`): {t['cells_run']} cells and "
                f"{t.get('searches_run', 0)} smallest-ticket searches on {t['workers']} worker(s), wall time "
                f"{t['wall_s'] / 60:.1f} min. "
            )
        elif t.get("searches_in_pool"):  # the searches shared the workers with the cells
            ran = (
                f"Last invocation: {t['cells_run']} cells and {t['searches_run']} smallest-ticket searches on "
                f"{t['workers']} worker(s); wall time {t['wall_s'] / 60:.1f} min. "
            )
        else:
            ran = (
                f"Last invocation: {t['cells_run']} cells on {t['workers']} worker(s) in {t['cells_wall_s']:.0f} s, "
                f"smallest-ticket searches {t['smallest_wall_s']:.0f} s; wall time {t['wall_s'] / 60:.1f} min. "
            )
        out = [
            "## Where the time went",
            "",
            ran
            + f"Of the {t['worker_seconds']:.0f} worker-seconds, training steps took {t['training_step_s']:.0f} s; "
            f"**{100 * t['outside_steps_fraction']:.1f}% went to anything else** (evaluation "
            f"{100 * t['evaluation_fraction']:.1f}%, plus start-up, data, scoring, writing and workers idle "
            "at the end). Cells read from cached runs compute nothing, so this is meaningful for a fresh run."
            + (
                f" Building compiled kernels on first use took {t['kernel_build_s']:.0f} s more (once per "
                "machine), left out of those worker-seconds."
                if t.get("kernel_build_s")
                else ""
            ),
            "",
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return out


def _fig() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    plt = _fig()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _percent_ticks(ax: Any, values: list[float]) -> None:
    """Ticks at the densities measured, labelled in plain percent (not 4×10¹)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.xaxis.set_major_locator(FixedLocator(values))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.3g}%"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _plot_accuracy(
    ds: str, rows: list[dict[str, Any]], densities: list[float], variants: list[str], path: Path
) -> None:
    plt = _fig()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in variants:
        rs = sorted((r for r in rows if r["variant"] == v), key=lambda r: r["density_kept"])
        if not rs:
            continue
        style = {"lw": 2.5, "color": "black"} if v == "imp" else {}
        ax.errorbar(
            [100 * r["density_kept"] for r in rs],
            [100 * r["acc_mean"] for r in rs],
            yerr=[100 * r["acc_std"] for r in rs],
            marker="o",
            capsize=3,
            label=v,
            **style,
        )
    dense = [r for r in rows if r["variant"] == DENSE]
    if dense:
        ax.axhline(100 * dense[0]["acc_mean"], color="gray", ls="--", label="dense")
    lo, off = _y_floor([r for r in rows if r["variant"] in variants or r["variant"] == DENSE])
    if lo is not None:
        ax.set_ylim(bottom=lo)
    if off:
        ax.text(
            0.01,
            0.01,
            "below the axis: " + ", ".join(off),
            transform=ax.transAxes,
            fontsize=7,
            va="bottom",
        )
    ax.set_xscale("log")
    _percent_ticks(ax, [100 * d for d in densities])
    ax.invert_xaxis()
    ax.set_xlabel("weights kept (%, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{ds}: accuracy vs density")
    ax.legend(fontsize=8, ncol=2)
    _save(fig, path)


def _y_floor(rows: list[dict[str, Any]], span: float = 25.0) -> tuple[float | None, list[str]]:
    """A lower y-limit ``span`` points under the best accuracy, so a method that collapsed to chance does not
    squash the differences that matter into a few pixels; the points it hides are named, not dropped
    silently (``(variant, density)`` list). ``None`` when every point fits."""
    accs = [100 * r["acc_mean"] for r in rows if r.get("acc_mean") is not None]
    if not accs or max(accs) - min(accs) <= span:
        return None, []
    lo = max(accs) - span
    off = [
        f"{r['variant']} at {100 * r['density_kept']:.3g}% ({100 * r['acc_mean']:.1f}%)"
        for r in rows
        if r.get("acc_mean") is not None and 100 * r["acc_mean"] < lo
    ]
    return lo, off


def _plot_cost(ds: str, rows: list[dict[str, Any]], path: Path) -> None:
    plt = _fig()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in sorted({r["variant"] for r in rows if r["variant"] != DENSE}):
        rs = [r for r in rows if r["variant"] == v and r["find_wall_s"] is not None]
        if rs:
            ax.scatter([max(r["find_wall_s"], 1e-3) for r in rs], [100 * r["acc_mean"] for r in rs], label=v)
    ax.set_xscale("log")
    ax.set_xlabel("cost to find the ticket (wall seconds, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{ds}: accuracy vs cost to find")
    ax.legend(fontsize=8, ncol=2)
    _save(fig, path)


def _plot_sanity(ds: str, rows: list[dict[str, Any]], path: Path) -> None:
    plt = _fig()
    labels, deltas = [], {c: [] for c in ("reinit", "shuffle", "invert")}
    for r in sorted(rows, key=lambda r: (r["variant"], -r["density"])):
        labels.append(f"{r['variant']}\n{100 * r['density']:g}%")
        for c in deltas:
            m = r.get(f"{c}_mean")
            deltas[c].append(float("nan") if m is None else 100 * (m - r["acc_mean"]))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels) + 2), 4.5))
    width = 0.27
    for i, (c, vals) in enumerate(deltas.items()):
        ax.bar([j + (i - 1) * width for j in range(len(labels))], vals, width, label=c)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=45, ha="right")
    ax.set_ylabel("check − ticket (accuracy points)")
    ax.set_title(f"{ds}: sanity checks (Frankle et al. 2021)")
    ax.legend(fontsize=8)
    _save(fig, path)
