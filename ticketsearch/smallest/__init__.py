"""How small can a ticket get? The lowest density whose ticket stays within a tolerance of the dense network.

Decisions use validation accuracy only (mean over seeds); test accuracy is reported beside it and never used
to choose, so the answer is not fitted to the test set. Each method walks itself (``Method.smallest``, given
a :class:`~ticketsearch.methods.SmallestSearch`): IMP walks its levels until the first level that falls out
of tolerance, then bisects (on log-density) between that level and the last good one by pruning the good
level's trained weights further; by default a method bisects on log-density between the dense network
(``Method.dense_baseline``) and ``min_density``. Every probe is an ordinary cached run, so a repeated
search is free and no density is tried twice.

Under ``--pattern N:M`` no ticket is denser than N/M: the search is capped there (the default walk tries N/M
first and bisects below it; IMP counts only the levels that obey the pattern), and a ``min_density`` not
below N/M is refused. The dense network it is measured against is still the dense network.
"""

from __future__ import annotations

import dataclasses
import io
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, EmptyLayerError
from ..core.hparams import PruningHparams, RunHparams, TrainingHparams, check_seed, finite
from ..core.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..core.pattern import parse_pattern
from ..core.provenance import collect_stale, stale_section
from ..experiments.runner import RunOptions, run_find, train_mask

__all__ = ["Probe", "SmallestResult", "bisect_log_density", "smallest", "check_tolerance", "within_tolerance"]


@dataclass
class Probe:
    """One density tried: per-seed validation and test accuracy, and what it cost."""

    density: float  # asked for
    kept: float  # the tickets' mean density (exact counts, IMP's layer rule)
    val: list[float]
    test: list[float]
    iterations: int = 0
    wall_time: float = 0.0
    runs: list[str] = field(default_factory=list)
    source: str = ""  # "level k", "bisect", "dense"

    @property
    def val_mean(self) -> float:
        return statistics.fmean(self.val)

    @property
    def test_mean(self) -> float:
        return statistics.fmean(self.test)

    def spread(self, xs: list[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else 0.0


@dataclass
class SmallestResult:
    method: str
    tolerance: float
    dense: Probe
    answer: Probe | None  # None: not even the first probe is within tolerance
    probes: list[Probe]
    note: str = ""
    # finished levels this search reused that other code made (core.provenance.collect_stale entries)
    stale: list[dict[str, Any]] = field(default_factory=list)

    def cost(self) -> dict[str, Any]:
        ps = [self.dense, *self.probes]
        return {
            "runs": sum(len(p.runs) for p in ps),
            "iterations": sum(p.iterations for p in ps),
            "wall_time": sum(p.wall_time for p in ps),
        }

    def to_dict(self) -> dict[str, Any]:
        def pd(p: Probe | None) -> dict[str, Any] | None:
            if p is None:
                return None
            return {
                **dataclasses.asdict(p),
                "val_mean": p.val_mean,
                "val_std": p.spread(p.val),
                "test_mean": p.test_mean,
                "test_std": p.spread(p.test),
            }

        return {
            "method": self.method,
            "tolerance_points": self.tolerance,
            "dense": pd(self.dense),
            "answer": pd(self.answer),
            "probes": [pd(p) for p in self.probes],
            "cost": self.cost(),
            "note": self.note,
            "stale_reuses": self.stale,
        }


def check_tolerance(tolerance: float) -> float:
    t = finite("tolerance", tolerance)
    if t < 0:
        raise ConfigError(f"tolerance must be ≥ 0 (points of validation accuracy), got {tolerance!r}")
    return t


def within_tolerance(dense: Probe, tolerance_points: float) -> Callable[[Probe], bool]:
    """The decision rule: a probe's mean *validation* accuracy within the tolerance of the dense network's.
    Test accuracy never enters it."""
    threshold = dense.val_mean - check_tolerance(tolerance_points) / 100.0

    def accept(p: Probe) -> bool:
        return p.val_mean >= threshold

    return accept


def bisect_log_density(
    evaluate: Callable[[float], Probe],
    accept: Callable[[Probe], bool],
    *,
    good: float,
    bad: float,
    precision: float,
    max_probes: int,
) -> tuple[float, list[Probe]]:
    """Bisect on log-density between an accepted ``good`` and a rejected ``bad`` density until
    ``good / bad ≤ 1 + precision``; returns the last accepted density and the probes made."""
    probes: list[Probe] = []
    while good / bad > 1 + precision and len(probes) < max_probes:
        mid = math.sqrt(good * bad)
        p = evaluate(mid)
        probes.append(p)
        if accept(p):
            good = mid
        else:
            bad = mid
    return good, probes


def _row_probe(rows: list[Any], density: float, source: str) -> Probe:
    """A probe from one ticket level per seed (the rows of ``run_find``/``train_mask``)."""
    return Probe(
        density=density,
        kept=statistics.fmean(r["density"] for r in rows),
        val=[_val(r) for r in rows],
        test=[r["test_acc"] for r in rows],
        iterations=sum(int(r.get("iterations") or 0) for r in rows),
        wall_time=sum(float(r.get("wall_time") or 0.0) for r in rows),
        runs=[str(Path(r["mask"]).parent) for r in rows],
        source=source,
    )


def _val(row: Any) -> float:
    v = row.get("val_acc")
    if v is None:
        raise ConfigError("the runs hold no validation accuracy: smallest needs --val-size > 0")
    return float(v)


def smallest(
    hp: RunHparams,
    *,
    seeds: list[int],
    tolerance: float,
    opts: RunOptions,
    min_density: float = 1e-3,
    precision: float = 0.1,
    max_probes: int = 12,
    out_dir: Path | None = None,
    dense_training: TrainingHparams | None = None,
) -> SmallestResult:
    """The smallest ticket of ``hp.pruning.method`` within ``tolerance`` points of the dense network; the
    result lists the cached levels it reused that other code made (``stale``), and ``opts.rerun_stale``
    recomputes them instead. ``out_dir``: where the report goes.

    ``dense_training``: how the dense reference trains its weights when ``hp.training`` trains something
    else (a supermask's scores); default the model's recipe.

    Bisection assumes accuracy falls as density falls. Supermasks break that: at k near 1 the mask keeps
    almost every random weight and the accuracy drops again, so a supermask's search can end with no answer
    even where some k is within tolerance; the curve in the report shows it."""
    from ..methods import get_method

    check_tolerance(tolerance)
    if not seeds:
        raise ConfigError("give at least one seed")
    for s in seeds:
        check_seed(s)
    if not 0 < min_density < 1:
        raise ConfigError(f"min_density must be in (0, 1), got {min_density!r}")
    if not precision > 0:
        raise ConfigError(f"precision must be > 0, got {precision!r}")
    method = get_method(hp.pruning.method)
    method.validate(method.canonical(hp))
    cap = parse_pattern(hp.pruning.pattern).max_density  # N/M: no N:M ticket is denser
    if min_density >= cap:
        raise ConfigError(
            f"min_density {min_density:g} is not below {cap:g}, the most pattern {hp.pruning.pattern} keeps: "
            "nothing to search"
        )
    quiet = dataclasses.replace(opts, controls=(), baseline=False, then_train=False)
    with collect_stale() as stale:
        dense_hp = method.dense_baseline(hp, dense_training)
        dense = _row_probe([run_find(dense_hp, seed=s, opts=quiet).rows[0] for s in seeds], 1.0, "dense")
        search = _Search(
            hp,
            seeds,
            quiet,
            within_tolerance(dense, tolerance),
            min_density,
            precision,
            max_probes,
            out_dir,
            max_density=cap,
        )
        answer, probes, note = method.smallest(search)  # IMP walks its levels; the rest bisect on density
    result = SmallestResult(method.name, tolerance, dense, answer, probes, note, stale=list(stale))
    if out_dir is not None:
        write_report(result, out_dir)
    return result


@dataclass
class _Search:
    """The :class:`~ticketsearch.methods.SmallestSearch` a method walks: cached runs, probes, the decision."""

    hp: RunHparams
    seeds: list[int]
    opts: RunOptions
    accept_rule: Callable[[Probe], bool]
    min_density: float
    precision: float
    max_probes: int
    out_dir: Path | None
    max_density: float = 1.0  # N/M under an N:M pattern

    def runs(self, hp: RunHparams) -> list[Any]:
        return [run_find(hp, seed=s, opts=self.opts) for s in self.seeds]

    def train_masks(self, mask_paths: Any) -> list[Any]:
        train_hp = self.hp.replace(pruning=PruningHparams(method="train"))
        return [
            train_mask(Path(p), train_hp, seed=s, opts=self.opts).rows[0]
            for s, p in zip(self.seeds, mask_paths)
        ]

    def probe(self, rows: Any, density: float, source: str) -> Probe:
        return _row_probe(list(rows), density, source)

    def accept(self, probe: Probe) -> bool:
        return self.accept_rule(probe)

    def bisect(
        self, evaluate: Callable[[float], Probe], *, good: float, bad: float
    ) -> tuple[float, list[Probe]]:
        return bisect_log_density(
            evaluate,
            self.accept_rule,
            good=good,
            bad=bad,
            precision=self.precision,
            max_probes=self.max_probes,
        )

    def load_state(self, path: Path) -> Any:
        from ..experiments.rundir import load_state

        return load_state(path)

    def bisect_densities(self) -> tuple[Probe | None, list[Probe], str]:
        """Bisect on log-density between dense and ``min_density``, one run per density (each the method's
        ticket at that density), never a density twice; a density where a layer empties is out of tolerance."""
        from ..methods import get_method

        method = get_method(self.hp.pruning.method)
        tried: dict[float, Probe] = {}

        def evaluate(d: float) -> Probe:
            if d in tried:  # never twice
                return tried[d]
            try:
                rows = [method.ticket_for(r.rows, d) for r in self.runs(_at(self.hp, d))]
                tried[d] = _row_probe(rows, d, "bisect")
            except EmptyLayerError:  # the method disconnects the network here: out of tolerance by definition
                zeros = [0.0] * len(self.seeds)
                tried[d] = Probe(
                    density=d, kept=d, val=zeros, test=list(zeros), source="collapsed (a layer emptied)"
                )
            return tried[d]

        first = evaluate(self.min_density)
        if self.accept(first):
            return first, [first], f"already within tolerance at min_density {self.min_density}"
        probes = [first]
        top = self.max_density
        if top < 1.0:  # N:M: the densest ticket the pattern allows must pass before anything below it can
            probes.append(evaluate(top))
            if not self.accept(probes[-1]):
                return (
                    None,
                    probes,
                    f"even density {top:g}, the most pattern {self.hp.pruning.pattern} keeps, is out of tolerance",
                )
        good, more = self.bisect(evaluate, good=top, bad=self.min_density)
        answer = tried.get(good)
        note = "" if answer is not None else "no density below 1 is within tolerance"
        return answer, [*probes, *more], note


def _at(hp: RunHparams, density: float) -> RunHparams:
    return hp.replace(pruning=dataclasses.replace(hp.pruning, density=density))


# -- report ---------------------------------------------------------------------------------------------------
def write_report(result: SmallestResult, out_dir: Path) -> None:
    """result.json, report.md and curve.png: accuracy vs density, tolerance band, the answer marked."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "result.json", result.to_dict())
    d = result.to_dict()
    lines = [
        f"# Smallest ticket: {result.method}",
        "",
        f"Tolerance: {result.tolerance} points of validation accuracy below the dense network "
        f"({100 * result.dense.val_mean:.2f}% val, {100 * result.dense.test_mean:.2f}% test). Decided on "
        "validation; test reported only.",
        "",
    ]
    if result.answer is None:
        lines.append(f"**No ticket within tolerance.** {result.note}")
    else:
        a = d["answer"]
        lines.append(
            f"**Answer: {100 * a['kept']:.2f}% of the weights** — val {100 * a['val_mean']:.2f} ± "
            f"{100 * a['val_std']:.2f}%, test {100 * a['test_mean']:.2f} ± {100 * a['test_std']:.2f}%. {result.note}"
        )
    c = d["cost"]
    lines += [
        "",
        f"Cost: {c['runs']} runs, {c['iterations']} training iterations, {c['wall_time']:.1f} s.",
        "",
        "| density kept | from | val acc | test acc | within tolerance |",
        "|---|---|---|---|---|",
    ]
    threshold = result.dense.val_mean - result.tolerance / 100
    for p in sorted(result.probes, key=lambda q: -q.kept):
        ok = "yes" if p.val_mean >= threshold else "no"
        lines.append(
            f"| {100 * p.kept:.3f}% | {p.source} | {100 * p.val_mean:.2f} ± {100 * p.spread(p.val):.2f} | "
            f"{100 * p.test_mean:.2f} ± {100 * p.spread(p.test):.2f} | {ok} |"
        )
    lines += stale_section(result.stale, what="search")
    atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")
    _plot(result, out_dir / "curve.png")


def _plot(result: SmallestResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ps = sorted(result.probes, key=lambda q: q.kept)
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [100 * p.kept for p in ps]
    ax.errorbar(
        x,
        [100 * p.val_mean for p in ps],
        yerr=[100 * p.spread(p.val) for p in ps],
        fmt="o-",
        label="validation",
    )
    ax.errorbar(
        x,
        [100 * p.test_mean for p in ps],
        yerr=[100 * p.spread(p.test) for p in ps],
        fmt="s--",
        alpha=0.6,
        label="test (not used to choose)",
    )
    dv = 100 * result.dense.val_mean
    ax.axhspan(
        dv - result.tolerance,
        dv,
        color="tab:green",
        alpha=0.15,
        label=f"within {result.tolerance} pt of dense",
    )
    ax.axhline(dv, color="tab:green", lw=1)
    if result.answer is not None:
        ax.axvline(
            100 * result.answer.kept, color="tab:red", ls=":", label=f"answer {100 * result.answer.kept:.2f}%"
        )
    ax.set_xscale("log")
    ax.set_xlabel("weights kept (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{result.method}: smallest ticket within {result.tolerance} pt of dense")
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
