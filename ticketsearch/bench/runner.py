"""Run a suite: every cell a normal run directory, so a killed suite resumes and no cell is recomputed.

A cell is (dataset, model, method variant, density, seed), plus one dense cell per dataset and seed.
Cells, then the suite's smallest-ticket searches, run in this process or in ``workers`` processes (threads
per worker set so workers × threads ≤ cores); only this process appends to ``results.jsonl`` (one record
per finished cell) and ``smallest.jsonl`` (one per search). A cell that fails
with a user-level error (a NaN loss, a mask that empties a layer) is recorded as failed with its error and
the suite goes on; a worker killed mid-cell is replaced and its cell retried (its run resumes from the
last checkpoint). A cell recorded as failed is not done: the next run of the suite retries it, and the
newest record of a key is the one that counts (:func:`latest_records`).

The suite's data are checked before anything is queued or recorded (:func:`check_data`). Each record holds
the provenance of the code that ran the cell and the cached levels it reused that other code made
(``stale``); ``rerun_stale`` recomputes those.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import DataError, TicketsearchError
from ..core.io import append_jsonl, atomic_write_json
from ..core.provenance import collect_stale, current, stale_reason
from ..training import progress_bar
from .spec import VARIANT_CONTROLS, DatasetEntry, Suite, Variant

__all__ = [
    "Cell",
    "cells_of",
    "run_cell",
    "run_suite",
    "read_records",
    "smallest_keys",
    "smallest_search",
    "latest_records",
    "stale_records",
    "check_data",
    "suite_command",
    "write_command",
    "read_command",
    "DENSE",
]

DENSE = "dense"


@dataclass(frozen=True)
class Cell:
    dataset: str
    model: str
    variant: str
    density: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.model}|{self.variant}|{self.density:g}|{self.seed}"


def _layer_density(mask_path: Path) -> dict[str, float]:
    """The fraction of each layer's weights the ticket's mask keeps."""
    from ..core.mask import Mask

    return {n: round(d, 6) for n, d in Mask.load(mask_path).layer_density().items()}


def _metric(rows: Any, ticket: Any, name: str) -> Any:
    """Field ``name`` of the ticket's result, else of the latest level before it that has one: what a
    search found (cs's emergent density, in the level that searched) belongs to the ticket it made."""
    if name in ticket:
        return ticket[name]
    before = [r for r in rows if r["level"] < ticket["level"] and name in r]
    return before[-1][name] if before else None


def cells_of(suite: Suite) -> list[Cell]:
    """Dense first (the reference every plot draws), then every variant × density × seed per dataset."""
    out = []
    for d in suite.datasets:
        for seed in suite.seeds:
            out.append(Cell(d.dataset, d.model, DENSE, 1.0, seed))
        for v in suite.variants:
            for p in suite.densities_of(v):
                for seed in suite.seeds:
                    out.append(Cell(d.dataset, d.model, v.name, p, seed))
    return out


def total_cost(row: Any, cost: dict[str, Any], *, includes_training: bool) -> dict[str, float]:
    """What the cell's reported accuracy cost in all, so methods compare on one axis (the frontier's
    Pareto plot): training steps (backward passes over a batch) and wall seconds of the search plus the
    ticket's own training, unless the method's find cost already counts it or the reported weights are
    untrained (a supermask: its ``iterations`` are the search's); with a then-train, its whole cost too
    (``then_train_steps``, ``then_train_wall_time``)."""
    steps = float(cost.get("backward", cost.get("backward_passes")) or 0)
    wall = float(cost.get("wall_time") or 0.0)
    if not includes_training and row.get("weights_trained", True) is not False:
        steps += float(row.get("iterations") or 0)
        wall += float(row.get("wall_time") or 0.0)
    out = {"steps": steps, "wall_time": wall}
    then = row.get("then_train")
    if then:
        out["then_train_steps"] = steps + float(then.get("iterations") or 0)
        out["then_train_wall_time"] = wall + float(then.get("wall_time") or 0.0)
    return out


def _entry(suite: Suite, cell: Cell) -> DatasetEntry:
    return next(d for d in suite.datasets if (d.dataset, d.model) == (cell.dataset, cell.model))


def _evaluated(training: Any, evaluate: str) -> Any:
    """A training under the suite's evaluation protocol (``Suite.evaluate``): "end" evaluates once, at the
    end of its budget (no evaluation at iteration 0, none between, so no checkpoint between either)."""
    if evaluate == "end":
        return dataclasses.replace(training, eval_start=False, eval_every=training.budget)
    return training


def _hparams(entry: DatasetEntry, variant: Variant | None, density: float, evaluate: str = "") -> Any:
    from ..core.hparams import DatasetHparams, RunHparams
    from ..methods import dense_hparams, get_method
    from ..models import model_hparams, training_recipe

    weights = _evaluated(dataclasses.replace(training_recipe(entry.model), **entry.training), evaluate)
    base = RunHparams(
        model=model_hparams(entry.model),
        dataset=DatasetHparams(dataset=entry.dataset, resize=entry.resize),
        training=weights,
    )
    if variant is None:  # the dense network, trained with the weights' recipe
        return dense_hparams(base), weights
    training = weights
    own = get_method(variant.method).recipe(entry.model, entry.dataset)
    if own is not None:  # learned methods train scores with their own recipe
        training = dataclasses.replace(own, budget=entry.score_budget) if entry.score_budget else own
    if variant.training:  # the variant's own budget or optimizer, on whatever it trains
        training = dataclasses.replace(training, **variant.training)
    training = _evaluated(training, evaluate)  # after any budget change: "end" is the final budget's end
    method = get_method(variant.method)
    hp = base.replace(
        training=training,
        pruning=method.default_pruning(method=variant.method, density=density),
        method_args=tuple(sorted(variant.args.items())),
    )
    return method.with_hparams(hp, **variant.pruning), weights  # shared fields or the method's own


def run_cell(
    suite: Suite,
    cell: Cell,
    *,
    root: Path,
    data_root: str | None,
    device: str,
    rerun_stale: bool = False,
) -> dict[str, Any]:
    """Train one cell (or read it from its cached run) and return its record; user errors become a failed
    record, never an exception. ``stale`` lists the cached levels it reused that other code made
    (``rerun_stale``: recomputed instead)."""
    with collect_stale() as stale:
        record = _run_cell(
            suite, cell, root=root, data_root=data_root, device=device, rerun_stale=rerun_stale
        )
    record["stale"] = [{"path": e["path"], "reason": e["reason"]} for e in stale]
    return record


def _run_cell(
    suite: Suite, cell: Cell, *, root: Path, data_root: str | None, device: str, rerun_stale: bool
) -> dict[str, Any]:
    from ..experiments.runner import RunOptions, run_find
    from ..methods import get_method

    entry = _entry(suite, cell)
    variant = None if cell.variant == DENSE else next(v for v in suite.variants if v.name == cell.variant)
    from ..training.loop import time_split

    record: dict[str, Any] = {"key": cell.key, **dataclasses.asdict(cell)}
    t0 = time.perf_counter()
    clock0 = time_split()
    try:
        hp, weights = _hparams(entry, variant, 1.0 if variant is None else cell.density, suite.evaluate)
        strategy = get_method(hp.pruning.method)
        label = "dense" if variant is None else strategy.kind  # a display label in the record, nothing more
        checks_of = strategy.sanity_checks if variant is not None and suite.sanity else ()
        # the reinit and shuffle checks are the runner's controls of the same names; a variant may ask for
        # controls itself (IMP's reinit control, which the sanity checks leave out for the reference)
        asked = variant.controls if variant is not None else ()
        controls = tuple(c for c, check in VARIANT_CONTROLS.items() if check in checks_of or c in asked)
        opts = RunOptions(
            root=root,
            data_root=data_root,
            device=device,
            progress=False,
            controls=controls,
            then_train=bool(variant and variant.then_train),
            then_train_hp=weights,
            rerun_stale=rerun_stale,
        )
        summary = run_find(hp, seed=cell.seed, opts=opts)
        row = summary.rows[0] if variant is None else strategy.ticket_for(summary.rows, cell.density)
        cost = row.get("cost_to_find") or {}
        record.update(
            status="ok",
            method=hp.pruning.method,
            kind=label,
            density_kept=row["density"],
            test_acc=row.get("test_acc"),
            val_acc=row.get("val_acc"),
            es_test_acc=row.get("es_test_acc"),
            es_iteration=row.get("es_iteration"),
            weights_trained=row.get("weights_trained", True) is not False,
            then_train_acc=(row.get("then_train") or {}).get("test_acc"),
            cost_to_find={
                k: cost.get(k)
                for k in (
                    "wall_time",
                    "forward",
                    "backward",
                    "forward_passes",
                    "backward_passes",
                    "fraction_of_dense_training",
                )
                if k in cost
            },
            train_iterations=row.get("iterations"),
            train_wall_time=row.get("wall_time"),
            total_cost=total_cost(row, cost, includes_training=strategy.find_cost_includes_training),
            run=str(Path(row["mask"]).parent),
            hparams=hp.to_dict(),
            # where the ticket keeps its weights: a global selection can starve one layer (SNIP on a
            # transformer's qkv projection), which no accuracy table shows
            layer_density=_layer_density(Path(row["mask"])),
        )
        if variant is not None and variant.metrics:  # what the report's tables leave out, kept by name
            record["metrics"] = {m: _metric(summary.rows, row, m) for m in variant.metrics}
        checks = {}
        checks_es = {}
        controls = row.get("controls") or {}
        for control, check in VARIANT_CONTROLS.items():
            if control in controls:
                checks[check] = controls[control].get("test_acc")
                checks_es[check] = controls[control].get("es_test_acc")
        if "invert" in checks_of:
            inv = strategy.inverted(hp)
            quiet = dataclasses.replace(opts, controls=())
            checks["invert"] = run_find(inv, seed=cell.seed, opts=quiet).rows[-1].get("test_acc")
        record["sanity"] = checks
        if checks_es:  # the controls' accuracy at their early-stopping iteration, beside es_test_acc
            record["sanity_es"] = checks_es
    except TicketsearchError as exc:
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    record["wall_time"] = time.perf_counter() - t0
    clock1 = time_split()
    # what this cell computed here (a cell served from its cached run computes almost nothing)
    record["time_split"] = {k: clock1[k] - clock0[k] for k in clock1}
    return record


def read_records(path: Path, *, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The records of ``results.jsonl``; a line that is not a JSON object is reported with its number and
    skipped (its cell counts as not done, so it runs again from its cached run), never dropped silently."""
    out: list[dict[str, Any]] = []
    if not path.is_file():
        return out
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if not isinstance(rec, dict) or "key" not in rec:
            if warn is not None:
                warn(f"warning: {path} line {i} is not a valid record; skipped (its cell will run again)")
            continue
        out.append(rec)
    return out


def latest_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per key, the newest (a failed cell retried, a stale one recomputed), in first-seen order."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        out.pop(r["key"], None)  # the newest record takes the key's place at the end
        out[r["key"]] = r
    return list(out.values())


def record_stale(rec: dict[str, Any]) -> str | None:
    """Why a cell's record is not the current code's result (``None`` when it is): the cell ran under other
    code, or it reused cached levels that other code made."""
    prov = rec.get("provenance")
    why = stale_reason(prov if isinstance(prov, dict) else None)
    if why is not None:
        return f"cell {why}"
    reused = rec.get("stale") or []
    if reused:
        return f"reused {len(reused)} level(s): {reused[0].get('reason')}"
    return None


def stale_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``{"cell", "reason"}`` for every ok record (newest per key) that other code made."""
    out = []
    for r in latest_records(records):
        why = record_stale(r) if r.get("status") == "ok" else None
        if why is not None:
            out.append({"cell": r["key"], "reason": why})
    return out


def check_data(suite: Suite, data_root: str | None) -> None:
    """Every data set of the suite is readable under ``data_root``, before any cell is queued or recorded:
    else one DataError naming the files, how to get them, and the suite's ``requires`` sentence."""
    from ..data import load_dataset

    seen = set()
    for d in suite.datasets:
        if d.dataset in seen:
            continue
        seen.add(d.dataset)
        try:
            load_dataset(d.dataset, root=data_root, seed=0, device="cpu")
        except DataError as exc:
            needs = f" (it needs {d.requires})" if d.requires else ""
            raise DataError(f"suite '{suite.name}' cannot run{needs}: {exc}; nothing was queued") from None


def _provenance() -> dict[str, Any]:
    """The code running the suite (``core.provenance``), the machine and the command line."""
    import platform

    import torch

    return {
        **current(),
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"cpu ({os.cpu_count()} cores)",
        "command": " ".join(getattr(sys, "orig_argv", None) or sys.argv),
    }


COMMAND_FILE = "command.json"


def suite_command(
    suite: str,
    *,
    root: str | Path,
    out: str | Path,
    data_root: str | None = None,
    workers: int = 1,
    device: str = "cpu",
    methods: list[str] | None = None,
    seeds: int | None = None,
    datasets: list[str] | None = None,
) -> str:
    """The one ``bench`` command that reproduces a suite's folder: the suite as it was named (a built-in
    name or a spec file's path) and every flag that changes what runs or where it goes, in a fixed order,
    so a record's header can say how it was made and a reader can make it again."""
    import shlex

    argv = ["python", "-m", "ticketsearch", "bench", "--suite", suite, "--root", str(root), "--out", str(out)]
    if data_root is not None:
        argv += ["--data-root", str(data_root)]
    if device != "cpu":
        argv += ["--device", device]
    argv += ["--workers", str(workers)]
    if methods:
        argv += ["--methods", ",".join(methods)]
    if seeds is not None:
        argv += ["--seeds", str(seeds)]
    if datasets:
        argv += ["--datasets", ",".join(datasets)]
    return shlex.join(argv)


def write_command(out_dir: Path, command: str) -> None:
    """``command.json``: the command that reproduces ``out_dir`` (the last one that ran into it), for the
    report's header. Only the rebuilt command, never the command line as typed: a ``--storage`` URL may
    carry a password."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / COMMAND_FILE, {"command": command})


def read_command(out_dir: Path) -> str | None:
    """The reproducing command recorded in ``out_dir`` (None for a folder made before it was recorded, or
    whose ``command.json`` is unreadable: the report then prints no command rather than failing)."""
    try:
        data = json.loads((out_dir / COMMAND_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    command = data.get("command") if isinstance(data, dict) else None
    return command if isinstance(command, str) and command else None


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


@dataclass(frozen=True)
class _Search:
    """A smallest-ticket search as a pool item (``key`` from :func:`smallest_keys`)."""

    key: str
    out_dir: str


def _work(args: tuple[Suite, Cell | _Search, str, str | None, str, bool]) -> dict[str, Any]:
    suite, item, root, data_root, device, rerun_stale = args
    if isinstance(item, _Search):
        return smallest_search(
            suite, item.key, Path(item.out_dir), root=Path(root), data_root=data_root, device=device,
            rerun_stale=rerun_stale,
        )  # fmt: skip
    return run_cell(suite, item, root=Path(root), data_root=data_root, device=device, rerun_stale=rerun_stale)


def run_suite(
    suite: Suite,
    out_dir: Path,
    *,
    root: Path,
    data_root: str | None = None,
    device: str = "cpu",
    workers: int = 1,
    progress: bool | str = "auto",
    rerun_stale: bool = False,
    command: str | None = None,
) -> list[dict[str, Any]]:
    """Run every cell not yet recorded as done in ``out_dir/results.jsonl``; returns the newest record of
    every key. Done: recorded ``ok`` (a failed cell runs again) and, with ``rerun_stale``, made by the
    code running now (a stale cell runs again, recomputing the levels other code made). The suite's data
    are checked first: a missing file is one DataError and nothing is written. ``command``: the one
    command that reproduces this folder (:func:`suite_command`), kept in ``command.json`` for the report.

    ``timing.json`` states this invocation's wall time and how much of the workers' time went to training
    steps, so the suite's overhead (start-up, data, evaluation, scoring, writing) is measured, not guessed.
    """
    t_start = time.perf_counter()
    suite.validate()
    check_data(suite, data_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "suite.json", suite.saved())
    if command is not None:
        write_command(out_dir, command)
    results = out_dir / "results.jsonl"
    warn = lambda m: print(m, file=sys.stderr)  # noqa: E731
    done = {
        r["key"]
        for r in latest_records(read_records(results, warn=warn))
        if r.get("status") == "ok" and not (rerun_stale and record_stale(r) is not None)
    }
    todo = [c for c in cells_of(suite) if c.key not in done]
    # the smallest-ticket searches queue behind the cells: in the pool, one starts as soon as a worker is
    # free (a search that extends a run a cell is still training waits on that run's lock)
    searches = _searches_todo(suite, out_dir, rerun_stale)
    items: list[Cell | _Search] = [*todo, *(_Search(k, str(out_dir)) for k in searches)]
    n_searches = len(smallest_keys(suite))
    total = len(cells_of(suite)) + n_searches
    prov = _provenance()
    bar = progress_bar(
        total,
        initial=total - len(items),
        enabled=progress,
        desc="cells+searches" if n_searches else "cells",
        unit="item",
        leave=True,
    )

    fresh: list[dict[str, Any]] = []
    searched: list[dict[str, Any]] = []

    def record(item: Cell | _Search, rec: dict[str, Any]) -> None:
        if isinstance(item, _Search):
            searched.append(rec)
            append_jsonl(out_dir / "smallest.jsonl", {**rec, "provenance": prov})
        else:
            fresh.append(rec)
            append_jsonl(results, {**rec, "provenance": prov})
        if bar is not None:
            bar.update(1)

    try:
        if workers <= 1:
            for item in items:
                record(item, _work((suite, item, str(root), data_root, device, rerun_stale)))
        elif items:
            _run_pool(
                suite, items, workers, record, root=root, data_root=data_root, device=device,
                rerun_stale=rerun_stale,
            )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    if items:
        write_timing(
            out_dir / "timing.json",
            fresh,
            workers=max(1, min(workers, len(items))),
            cells_wall=time.perf_counter() - t_start,
            smallest_wall=0.0,
            smallest_split=sum_splits(rec.get("time_split") for rec in searched),
            # the searches ran among the cells, on the same worker(s): their time is inside cells_wall
            # (records made before say searches_in_pool only when they did; else smallest_wall holds them)
            extra={"searches_run": len(searched), "searches_in_pool": True},
        )
    return latest_records(read_records(results, warn=warn))


def _searches_todo(suite: Suite, out_dir: Path, rerun_stale: bool) -> list[str]:
    """The suite's smallest-ticket searches not yet recorded as done in ``out_dir/smallest.jsonl``
    (failed, or with ``rerun_stale`` stale, ones run again), in run order."""
    done = {
        r["key"]
        for r in latest_records(read_records(out_dir / "smallest.jsonl"))
        if r.get("status") == "ok" and not (rerun_stale and record_stale(r) is not None)
    }
    return [k for k in smallest_keys(suite) if k not in done]


def write_timing(
    path: Path,
    records: list[dict[str, Any]],
    *,
    workers: int,
    cells_wall: float,
    smallest_wall: float,
    smallest_split: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Where one invocation's time went (``extra``: fields the caller adds, written with the rest). The cells ran on ``workers`` processes, so their capacity is
    ``workers × wall``; everything in it that was not a training step (process start, data loading,
    evaluation, scoring, writing, idle workers at the end) counts as outside, the smallest-ticket
    searches (one process) likewise. A kernel's first build on this machine (``kernel_build_s``: once per
    machine, cached after) is stated and left out of the capacity the fractions are taken of, so a rerun
    on a machine that has built it measures the same suite the same way."""

    def total(key: str) -> float:
        return sum((r.get("time_split") or {}).get(key, 0.0) for r in records) + smallest_split.get(key, 0.0)

    steps_all, evals_all, build = total("steps"), total("eval"), total("build")
    capacity = workers * cells_wall + smallest_wall - build
    out = {
        "cells_run": len(records),
        "workers": workers,
        "cells_wall_s": round(cells_wall, 3),
        "smallest_wall_s": round(smallest_wall, 3),
        "wall_s": round(cells_wall + smallest_wall, 3),
        "kernel_build_s": round(build, 3),
        "worker_seconds": round(capacity, 3),
        "training_step_s": round(steps_all, 3),
        "evaluation_s": round(evals_all, 3),
        "outside_steps_fraction": round(1.0 - steps_all / capacity, 4) if capacity > 0 else None,
        "evaluation_fraction": round(evals_all / capacity, 4) if capacity > 0 else None,
        **(extra or {}),
    }
    atomic_write_json(path, out)
    return out


def sum_splits(splits: Iterable[Mapping[str, float] | None]) -> dict[str, float]:
    """Per-process step clocks (``time_split`` dicts) added up key by key; a missing one adds nothing."""
    out: dict[str, float] = {}
    for split in splits:
        for k, v in (split or {}).items():
            out[k] = out.get(k, 0.0) + float(v)
    return out


def smallest_keys(suite: Suite) -> list[str]:
    """``dataset/model|variant`` of every smallest-ticket search the suite asks for, in run order."""
    if suite.smallest is None:
        return []
    return [f"{e.dataset}/{e.model}|{name}" for e in suite.datasets for name in suite.smallest.variants]


def smallest_search(
    suite: Suite,
    key: str,
    out_dir: Path,
    *,
    root: Path,
    data_root: str | None,
    device: str,
    rerun_stale: bool = False,
) -> dict[str, Any]:
    """One smallest-ticket search (``key`` from :func:`smallest_keys`) and its record; a user error is a
    failed record. Its curve and report go to ``out_dir/smallest/<key>/``."""
    from ..experiments.runner import RunOptions
    from ..smallest import smallest
    from ..training.loop import time_split

    spec = suite.smallest
    assert spec is not None
    ds, name = key.split("|")
    entry = next(e for e in suite.datasets if f"{e.dataset}/{e.model}" == ds)
    variant = next(v for v in suite.variants if v.name == name)
    opts = RunOptions(root=root, data_root=data_root, device=device, progress=False, rerun_stale=rerun_stale)
    hp, weights = _hparams(entry, variant, min(suite.densities_of(variant)), suite.evaluate)
    rec: dict[str, Any] = {"key": key, "dataset": entry.dataset, "model": entry.model, "variant": name}
    clock0 = time_split()
    try:
        r = smallest(
            hp,
            seeds=list(suite.seeds),
            tolerance=spec.tolerance,
            opts=opts,
            min_density=spec.min_density,
            precision=spec.precision,
            out_dir=out_dir / "smallest" / key.replace("/", "_").replace("|", "_"),
            dense_training=weights,
        )
        rec.update(status="ok", **r.to_dict())
        rec["stale"] = rec.pop("stale_reuses", [])
    except TicketsearchError as exc:
        rec.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    clock1 = time_split()
    rec["time_split"] = {k: clock1[k] - clock0[k] for k in clock1}  # for timing.json
    return rec


def record_identity(item: Cell | str) -> dict[str, Any]:
    """The fields a record of a cell, or of the smallest search ``key``, starts with (a failed record has
    nothing else to say)."""
    if isinstance(item, Cell):
        return {"key": item.key, **dataclasses.asdict(item)}
    ds, variant = item.split("|")
    dataset, model = ds.rsplit("/", 1)
    return {"key": item, "dataset": dataset, "model": model, "variant": variant}


def _run_pool(
    suite: Suite,
    todo: list[Cell | _Search],
    workers: int,
    record: Callable[[Cell | _Search, dict[str, Any]], None],
    *,
    root: Path,
    data_root: str | None,
    device: str,
    rerun_stale: bool = False,
) -> None:
    """Cells and searches in ``workers`` processes, in ``todo``'s order; ``record(item, its record)`` as
    each finishes. A worker that dies (kill -9) is replaced and its items retried."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // workers)
    pending = list(todo)
    attempts: dict[str, int] = {}
    while pending:
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(threads,),
        ) as pool:
            futures = {
                pool.submit(_work, (suite, c, str(root), data_root, device, rerun_stale)): c for c in pending
            }
            pending = []
            broken = False
            while futures:
                finished, _ = wait(futures, return_when=FIRST_COMPLETED)
                for f in finished:
                    item = futures.pop(f)
                    try:
                        record(item, f.result())
                    except BrokenProcessPool:
                        broken = True
                        attempts[item.key] = attempts.get(item.key, 0) + 1
                        if attempts[item.key] >= 3:
                            record(
                                item,
                                {
                                    **record_identity(item if isinstance(item, Cell) else item.key),
                                    "status": "failed",
                                    "error": "its worker died 3 times",
                                },
                            )
                        else:
                            pending.append(item)
                if broken:  # the pool is unusable: every item not finished goes to a new pool
                    pending += list(futures.values())
                    futures = {}
        if pending:
            print(f"a worker died; retrying {len(pending)} item(s) in a new pool", file=sys.stderr)
