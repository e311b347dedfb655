"""The transfer matrix: every source × target × method × density × seed, each beside its references.

A cell trains the source's ticket on the target from the source's init and from a fresh one, and sets it
beside (a) the target's own ticket from the same method, (b) a layerwise shuffle of the transferred mask
(the same per-layer densities) on the same init, and (c) the dense target network. Source tickets are
found once and serve as every other dataset's "own" ticket; every piece is an ordinary cached run, so a
killed matrix resumes and a finished cell is never recomputed. ``results.jsonl`` gets one record per
finished cell; ``summary.csv``, ``summary.md`` and one heatmap per method (transferred minus own) are
rebuilt from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.hparams import (
    DatasetHparams,
    PruningHparams,
    RunHparams,
    TrainingHparams,
    check_seed,
    stable_hash,
)
from ..core.io import append_jsonl, atomic_write_csv, atomic_write_text, read_jsonl
from ..core.mask import Mask
from ..core.provenance import collect_stale, current, stale_reason, stale_section
from ..core.select import check_density
from ..experiments.runner import RunOptions, run_find
from ..training import progress_bar
from . import transfer

__all__ = ["MatrixSpec", "run_matrix", "write_reports", "cell_key"]

# the numbers a cell reports, and how the tables name them
COLUMNS = {
    "transfer_source_init": "transferred (source init)",
    "transfer_fresh_init": "transferred (fresh init)",
    "random_mask": "random mask, same layer densities",
    "own_ticket": "target's own ticket",
    "dense": "dense target",
}


@dataclass(frozen=True)
class MatrixSpec:
    """What the matrix covers; its hash names the output folder."""

    datasets: tuple[str, ...]
    methods: tuple[str, ...]
    densities: tuple[float, ...]
    seeds: tuple[int, ...]
    model: str
    resize: int = 0
    # how weights train (None: the model's recipe); learned methods keep their score recipe, with its budget
    training: TrainingHparams | None = None
    method_args: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> None:
        from ..data import DATASETS
        from ..methods import get_method
        from ..models import MODELS

        if len(self.datasets) < 2:
            raise ConfigError(f"a transfer matrix needs at least two datasets, got {list(self.datasets)}")
        if not self.methods or not self.densities or not self.seeds:
            raise ConfigError("give at least one method, one density and one seed")
        shapes = {}
        for d in self.datasets:
            spec = DATASETS.get(d)
            shape = tuple(spec.input_shape)
            if self.resize and len(shape) == 3:
                shape = (shape[0], self.resize, self.resize)
            shapes[d] = shape
        if len(set(shapes.values())) > 1:
            listed = ", ".join(f"{d} {list(s)}" for d, s in shapes.items())
            raise ConfigError(
                f"the datasets' inputs differ ({listed}): one mask cannot fit all; pass --resize N"
            )
        MODELS.entry(self.model)
        for m in self.methods:
            get_method(m)
        for p in self.densities:
            check_density(p, name="--densities")
        for s in self.seeds:
            check_seed(s)
        if self.training is not None:
            self.training.validate()

    def hash(self) -> str:
        d = asdict(self)
        if d["training"] is not None and d["training"]["eval_start"]:  # added later: its default unhashed
            del d["training"]["eval_start"]
        return stable_hash(d)


def cell_key(cell: dict[str, Any]) -> str:
    return "|".join(str(cell[k]) for k in ("method", "source", "target", "density", "seed"))


def _hparams(spec: MatrixSpec, dataset: str, method: str, density: float) -> RunHparams:
    from ..methods import get_method
    from ..models import model_hparams, training_recipe

    strategy = get_method(method)
    own = strategy.recipe(spec.model, dataset)  # learned methods train scores with their own recipe
    if own is not None:
        training = dataclasses.replace(own, budget=spec.training.budget) if spec.training else own
    else:
        training = spec.training or training_recipe(spec.model)
    return RunHparams(
        model=model_hparams(spec.model),
        dataset=DatasetHparams(dataset=dataset, resize=spec.resize),
        training=training,
        pruning=strategy.default_pruning(method=method, density=density),
        method_args=tuple(sorted(spec.method_args.get(method, {}).items())),
    )


def _target_hparams(spec: MatrixSpec, dataset: str) -> RunHparams:
    """How every ticket is trained on a target: the model's recipe, or the matrix's training flags."""
    from ..models import model_hparams, training_recipe

    return RunHparams(
        model=model_hparams(spec.model),
        dataset=DatasetHparams(dataset=dataset, resize=spec.resize),
        training=spec.training or training_recipe(spec.model),
        pruning=PruningHparams(method="transfer"),
    )


class _Tickets:
    """Source tickets, found once per (dataset, method, seed) and density, reused by every cell."""

    def __init__(self, spec: MatrixSpec, opts: RunOptions) -> None:
        self.spec, self.opts = spec, opts
        self._rows: dict[tuple[str, str, int, float], Any] = {}

    def ticket(self, dataset: str, method: str, seed: int, density: float) -> Any:
        from ..methods import get_method

        strategy = get_method(method)
        # a method whose levels serve every density runs once, to the lowest one asked
        target = min(self.spec.densities) if strategy.levels_serve_densities else density
        key = (dataset, method, seed, target)
        if key not in self._rows:
            opts = RunOptions(**{**self.opts.__dict__, "controls": (), "baseline": False})
            self._rows[key] = run_find(
                _hparams(self.spec, dataset, method, target), seed=seed, opts=opts
            ).rows
        return strategy.ticket_for(self._rows[key], density)

    def dense(self, dataset: str, seed: int) -> Any:
        from ..methods import dense_hparams

        key = (dataset, "dense", seed, 1.0)
        if key not in self._rows:  # level 0 of the dense run: the dense network
            hp = dense_hparams(_target_hparams(self.spec, dataset))  # trained as every target ticket is
            self._rows[key] = run_find(hp, seed=seed, opts=self.opts).rows
        return self._rows[key][0]


def _shuffled_ticket(mask_path: Path, seed: int, out_dir: Path) -> Path:
    """The random-mask control: the ticket shuffled within each layer, pointing at the ticket's init."""
    mask = Mask.load(mask_path)
    shuffled = mask.shuffled(seed)
    name = f"{stable_hash({'mask': str(Path(mask_path).resolve()), 'seed': seed})}"
    path = out_dir / "random_masks" / name / "mask.safetensors"
    if not path.is_file():
        init = (Path(mask_path).parent / str(mask.metadata["init"])).resolve()
        rel = os.path.relpath(init, path.parent)
        shuffled.save(path, **{**mask.metadata, "init": rel, "control": "layerwise_shuffle"})
    return path


def iter_cells(spec: MatrixSpec) -> Iterator[dict[str, Any]]:
    for method in spec.methods:
        for density in spec.densities:
            for seed in spec.seeds:
                for source in spec.datasets:
                    for target in spec.datasets:
                        if source != target:
                            yield {
                                "method": method,
                                "source": source,
                                "target": target,
                                "density": density,
                                "seed": seed,
                            }


def _acc(row: Any) -> float | None:
    """The accuracy a cell compares: final test accuracy (supermasks: with their untrained weights)."""
    return None if row is None else row.get("test_acc")


def run_matrix(
    spec: MatrixSpec,
    out_dir: Path,
    *,
    opts: RunOptions,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Fill every cell not yet in ``out_dir/results.jsonl``; returns all records; rebuilds the reports."""
    spec.validate()
    out_dir.mkdir(parents=True, exist_ok=True)
    with _locked(out_dir / ".matrix.lock"):
        return _run_matrix(spec, out_dir, opts=opts, progress=progress)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer per matrix folder (results.jsonl is appended); a second waits and then skips done cells."""
    import fcntl
    import sys

    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"matrix '{path.parent}' is in use by another process; waiting for it", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _run_matrix(
    spec: MatrixSpec,
    out_dir: Path,
    *,
    opts: RunOptions,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    spec_path = out_dir / "spec.json"
    if not spec_path.is_file():
        atomic_write_text(spec_path, json.dumps(asdict(spec), indent=2, sort_keys=True, default=str) + "\n")
    results = out_dir / "results.jsonl"
    done = {
        cell_key(r)
        for r in latest(read_jsonl(results))
        if not (opts.rerun_stale and record_stale(r) is not None)
    }
    cells = list(iter_cells(spec))
    tickets = _Tickets(spec, opts)
    bar = progress_bar(
        len(cells),
        initial=len([c for c in cells if cell_key(c) in done]),
        enabled=opts.progress,
        desc="cells",
        unit="cell",
        leave=True,
    )
    try:
        for cell in cells:
            if cell_key(cell) in done:
                continue
            t0 = time.perf_counter()
            with collect_stale() as reused:
                src = tickets.ticket(cell["source"], cell["method"], cell["seed"], cell["density"])
                own = tickets.ticket(cell["target"], cell["method"], cell["seed"], cell["density"])
                dense = tickets.dense(cell["target"], cell["seed"])
                hp = _target_hparams(spec, cell["target"])
                mask_path = Path(src["mask"])
                topts = RunOptions(
                    **{**opts.__dict__, "controls": (), "baseline": False, "then_train": False}
                )
                by_source = transfer(mask_path, hp, seed=cell["seed"], init="source", opts=topts).rows[0]
                by_fresh = transfer(mask_path, hp, seed=cell["seed"], init="fresh", opts=topts).rows[0]
                shuffled = _shuffled_ticket(mask_path, cell["seed"], out_dir)
                rnd = transfer(shuffled, hp, seed=cell["seed"], init="source", opts=topts).rows[0]
            stale = [{"path": e["path"], "reason": e["reason"]} for e in reused]
            for row in (src, own, dense):  # tickets found for an earlier cell of this call count too
                why = stale_reason(row.get("provenance"))
                path = str(Path(row["mask"]).parent)
                if why is not None and all(e["path"] != path for e in stale):
                    stale.append({"path": path, "reason": why})
            record = {
                **cell,
                "source_density": src["density"],
                "own_density": own["density"],
                "transfer_source_init": _acc(by_source),
                "transfer_fresh_init": _acc(by_fresh),
                "random_mask": _acc(rnd),
                "own_ticket": _acc(own),
                "dense": _acc(dense),
                "source_acc": _acc(src),
                "weights_trained": by_source.get("weights_trained", True),
                "runs": {
                    "source": str(Path(src["mask"]).parent),
                    "own": str(Path(own["mask"]).parent),
                    "transfer_source_init": str(Path(by_source["mask"]).parent),
                    "transfer_fresh_init": str(Path(by_fresh["mask"]).parent),
                    "random_mask": str(Path(rnd["mask"]).parent),
                },
                "wall_time": time.perf_counter() - t0,
                "provenance": current(),
                "stale": stale,
            }
            append_jsonl(results, record)
            done.add(cell_key(cell))
            if bar is not None:
                bar.update(1)
            if progress is not None:
                progress(len(done), len(cells))
    finally:
        if bar is not None:
            bar.close()
    records = latest(read_jsonl(results))
    write_reports(records, out_dir)
    return records


def latest(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest record of each cell (a stale cell recomputed by ``--rerun-stale`` is appended again)."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        out.pop(cell_key(r), None)
        out[cell_key(r)] = r
    return list(out.values())


def record_stale(rec: dict[str, Any]) -> str | None:
    """Why a cell's numbers are not the running code's (``None`` when they are): the cell ran under other
    code, or it reused runs that other code made."""
    prov = rec.get("provenance")
    why = stale_reason(prov if isinstance(prov, dict) else None)
    if why is not None:
        return f"cell {why}"
    reused = rec.get("stale") or []
    return f"reused {len(reused)} run(s): {reused[0].get('reason')}" if reused else None


# -- reports ------------------------------------------------------------------------------------------------
def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (method, source, target, density)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["method"], r["source"], r["target"], r["density"]), []).append(r)
    out = []
    for (method, source, target, density), rs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], -kv[0][3], kv[0][1], kv[0][2])
    ):
        row: dict[str, Any] = {
            "method": method,
            "source": source,
            "target": target,
            "density": density,
            "seeds": len(rs),
        }
        row["density_kept"] = statistics.fmean(r["source_density"] for r in rs)
        for col in COLUMNS:
            xs = [r[col] for r in rs if r.get(col) is not None]
            row[f"{col}_mean"], row[f"{col}_std"] = _mean_std(xs) if xs else (None, None)
        diffs = [r["transfer_source_init"] - r["own_ticket"] for r in rs if r.get("own_ticket") is not None]
        row["minus_own_mean"], row["minus_own_std"] = _mean_std(diffs) if diffs else (None, None)
        out.append(row)
    return out


def _pct(m: float | None, s: float | None) -> str:
    return "-" if m is None else f"{100 * m:.2f} ± {100 * (s or 0):.2f}"


def write_reports(records: list[dict[str, Any]], out_dir: Path) -> None:
    """summary.csv, summary.md and heatmaps_<method>.png from the records (no training); the cells whose
    numbers other code made are listed."""
    records = latest(records)
    rows = summarise(records)
    atomic_write_csv(out_dir / "summary.csv", rows)
    lines = [
        "# Transfer matrix",
        "",
        "Test accuracy (%), mean ± std over seeds. Supermasks: untrained weights under the mask. "
        '"minus own": transferred (source init) minus the target\'s own ticket, in points.',
        "",
        "| method | density | source → target | " + " | ".join(COLUMNS.values()) + " | minus own |",
        "|---|---|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    for r in rows:
        cells = [_pct(r[f"{c}_mean"], r[f"{c}_std"]) for c in COLUMNS]
        diff = (
            "-"
            if r["minus_own_mean"] is None
            else f"{100 * r['minus_own_mean']:+.2f} ± {100 * r['minus_own_std']:.2f}"
        )
        lines.append(
            f"| {r['method']} | {100 * r['density_kept']:.1f}% | {r['source']} → {r['target']} | "
            + " | ".join(cells)
            + f" | {diff} |"
        )
    stale = [{"cell": cell_key(r), "reason": record_stale(r)} for r in records if record_stale(r) is not None]
    lines += stale_section(stale, what="matrix")
    atomic_write_text(out_dir / "summary.md", "\n".join(lines) + "\n")
    for method in sorted({r["method"] for r in rows}):
        _heatmap([r for r in rows if r["method"] == method], method, out_dir / f"heatmap_{method}.png")


def _heatmap(rows: list[dict[str, Any]], method: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["source"] for r in rows} | {r["target"] for r in rows})
    densities = sorted({r["density"] for r in rows}, reverse=True)
    fig, axes = plt.subplots(
        1,
        len(densities),
        figsize=(3.6 * len(densities) + 1.5, 3.8),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    vmax = max([abs(100 * r["minus_own_mean"]) for r in rows if r["minus_own_mean"] is not None] + [0.5])
    im = None
    for ax, density in zip(axes[0], densities):
        grid = [[float("nan")] * len(datasets) for _ in datasets]
        kept = density
        for r in rows:
            if r["density"] == density and r["minus_own_mean"] is not None:
                grid[datasets.index(r["source"])][datasets.index(r["target"])] = 100 * r["minus_own_mean"]
                kept = r["density_kept"]
        im = ax.imshow(grid, cmap="RdBu", vmin=-vmax, vmax=vmax)
        for i in range(len(datasets)):
            for j in range(len(datasets)):
                v = grid[i][j]
                dark = not math.isnan(v) and abs(v) > 0.6 * vmax  # white on the deep colours
                text = "—" if math.isnan(v) else f"{v:+.2f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
        ax.set_xticks(range(len(datasets)), datasets, rotation=30, ha="right")
        ax.set_xlabel("target")
        if ax is axes[0][0]:  # shared rows: one set of source labels, on the left
            ax.set_yticks(range(len(datasets)), datasets)
            ax.set_ylabel("source")
        ax.set_title(f"{100 * kept:.1f}% of weights kept")
    fig.suptitle(f"{method}: transferred ticket minus the target's own (accuracy points)")
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="points")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    from ..core.io import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())
