"""The cost of ``bench --storage``: the smoke suite as a queue on PostgreSQL, against the plain local suite.

Five ways to run the ``smoke`` suite (5 cells and 1 smallest-ticket search on digits) on this machine,
each from a fresh ``--root`` and as a user would type it (a new interpreter), one torch thread per worker
(what ``--workers 2`` gives its workers on 2 cores; on a shared machine, two threads per process make wall
times swing with the other load):

* ``local``: ``bench --suite smoke`` (1 worker, no database); ``local_2workers``: with ``--workers 2``;
* ``pg_1worker``: ``bench --suite smoke --storage postgresql://...`` (1 worker);
* ``pg_2workers``: the same with ``--workers 2`` (one command, two worker processes);
* ``pg_2machines``: two such commands at once, 1 worker each, own ``--root`` and ``--out`` (two machines
  sharing one database, here on one CPU).

Every round runs the four in turn (interleaved, so a change in the machine's load hits all of them), each
PostgreSQL run on its own study. From the database: the queue's overhead per item, i.e. the time a worker
spends taking an item (stale-trial check, the list of waiting trials, heartbeat, the compare-and-set to
RUNNING, the duplicate check) and storing its result (the record and the COMPLETE state), i.e. the loop
iteration's wall time minus the item's own. For the ``smoke`` and the ``quick`` suite (369 cells + 15
searches) it also times, in one process, opening a new queue, one take and reading the records back.

The PostgreSQL server is a throw-away one (``tests/pgserver.py``: a fresh cluster on a unix socket, as the
``postgres`` user when run as root), or ``--storage URL`` for your own. From the repository root:

    python -m benchmarks.bench_queue                  # 3 rounds, about 3 minutes on 2 quiet cores

Results: ``benchmarks/results/bench_queue/<variant>.{json,md}``, variant ``postgres`` (``--variant``).
Run it on a quiet machine: the load average at the start and the end is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from ._writer import REPO, ResultWriter, add_output_args, md_table

MODES = ("local", "local_2workers", "pg_1worker", "pg_2workers", "pg_2machines")
LOCAL = ("local", "local_2workers")


def _cmd(machine: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "ticketsearch", "bench", "--suite", "smoke", "--no-progress",
        "--root", str(machine / "runs"), "--out", str(machine / "out"), *extra,
    ]  # fmt: skip


def _run(cmds: list[list[str]], threads: int | None = None) -> float:
    """Wall time of ``cmds`` started together, until the last one ends (``threads``: torch threads of
    each, else torch's default)."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in cmds
    ]
    for p in procs:
        out, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(p.args)} failed ({p.returncode}):\n{err[-3000:]}")
    return time.perf_counter() - t0


def _overheads(url: str, name: str) -> list[dict[str, float]]:
    """Per item: take (start of the loop iteration to the item's start), store (the item's end to
    COMPLETE) and the item's own time, from what the workers stored on the trials."""
    import optuna

    from ticketsearch.studies.storage import quiet

    quiet()
    out = []
    for t in optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False):
        if t.state.name != "COMPLETE":
            continue
        take = t.user_attrs["take"]
        total = t.datetime_complete.timestamp() - take["start"] - t.values[0]
        out.append(
            {
                "take_s": take["take_s"],
                "store_s": total - take["take_s"],
                "total_s": total,
                "item_s": t.values[0],
            }
        )
    return out


def _fixed_costs(url: str, suite_name: str, runs: int = 3) -> dict[str, Any]:
    """The queue's costs outside the items, in this process: opening a new queue (connect, create the
    study, enqueue every item), one take with every item waiting, and reading the records back
    (``collect``, what every command does at the end; here none is stored yet)."""
    from ticketsearch.bench import load_suite
    from ticketsearch.bench.queue import _take, collect, items_of, open_queue

    suite = load_suite(suite_name)
    opens, takes, collects = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        q = open_queue(suite, url, study_name=f"bq_{suite_name}_{uuid.uuid4().hex[:8]}", heartbeat=60)
        opens.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        assert _take(q) is not None
        takes.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        collect(q)
        collects.append(time.perf_counter() - t0)
    med = statistics.median
    return {
        "items": len(items_of(suite)),
        "open_s": med(opens),
        "take_s": med(takes),
        "collect_s": med(collects),
    }


def _ms(xs: list[float]) -> str:
    return f"{1000 * statistics.median(xs):.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--storage", default=None, help="a PostgreSQL URL (default: a throw-away server)")
    add_output_args(ap, "result name (default: postgres)")
    args = ap.parse_args()
    out = ResultWriter(
        "bench_queue", args.variant or "postgres", results_dir=args.results_dir, force_dirty=args.force_dirty
    )
    load_start = os.getloadavg()
    if args.storage:
        server: Any = contextlib.nullcontext(args.storage)
    else:
        from tests.pgserver import throwaway_postgres  # the tests' throw-away server, one definition

        server = throwaway_postgres()
    walls: dict[str, list[float]] = {m: [] for m in MODES}
    loads: dict[str, list[float]] = {m: [] for m in MODES}  # 1-minute load average after each run
    over: dict[str, list[dict[str, float]]] = {m: [] for m in MODES if m not in LOCAL}
    with server as url, tempfile.TemporaryDirectory(prefix="bench_queue-") as tmp:
        for r in range(args.rounds):
            for mode in MODES:
                base = Path(tmp) / f"{mode}_{r}"
                name = f"bq_{mode}_{r}_{uuid.uuid4().hex[:8]}"
                q = ("--storage", url, "--study-name", name)
                cmds = {
                    "local": [_cmd(base)],
                    "local_2workers": [_cmd(base, "--workers", "2")],
                    "pg_1worker": [_cmd(base, *q)],
                    "pg_2workers": [_cmd(base, *q, "--workers", "2")],
                    "pg_2machines": [_cmd(base / "a", *q), _cmd(base / "b", *q)],
                }[mode]
                walls[mode].append(_run(cmds, threads=1))
                loads[mode].append(os.getloadavg()[0])
                if mode not in LOCAL:
                    over[mode] += _overheads(url, name)
                print(f"round {r}: {mode} {walls[mode][-1]:.1f} s", file=sys.stderr, flush=True)
        fixed = {n: _fixed_costs(url, n) for n in ("smoke", "quick")}
    load_end = os.getloadavg()

    med = statistics.median
    rows = [
        [m, f"{med(walls[m]):.1f}", ", ".join(f"{w:.1f}" for w in walls[m]),
         f"{med(walls[m]) / med(walls['local']):.2f}×", ", ".join(f"{x:.1f}" for x in loads[m])]
        for m in MODES
    ]  # fmt: skip
    orows = [
        [m, len(o), _ms([x["take_s"] for x in o]), _ms([x["store_s"] for x in o]), _ms([x["total_s"] for x in o]),
         f"{1000 * max(x['total_s'] for x in o):.0f}", _ms([x["item_s"] for x in o])]
        for m, o in over.items()
    ]  # fmt: skip
    frows = [
        [n, f["items"], f"{1000 * f['open_s']:.0f}", f"{1000 * f['take_s']:.0f}", f"{1000 * f['collect_s']:.0f}"]
        for n, f in fixed.items()
    ]  # fmt: skip
    all_over = [x for o in over.values() for x in o]
    per_item = med([x["total_s"] for x in all_over])
    items_s = med([x["item_s"] for x in all_over])
    where = "a throw-away local server (unix socket, fsync off)" if not args.storage else "at --storage"
    md = f"""# bench --storage: the smoke suite as a queue on PostgreSQL

`python -m benchmarks.bench_queue`: the `smoke` suite (5 cells + 1 smallest-ticket search on digits), each
run from a fresh `--root` as a new command, one torch thread per worker, {args.rounds} rounds interleaved; PostgreSQL
{where}. Load average at the start {load_start[0]:.2f}, at the end {load_end[0]:.2f} (a 2-core machine
shared with other work: wall times move with its load, the per-item costs below much less).

## Wall time of the suite (s)

{md_table(["mode", "median", "rounds", "vs local", "load average after each"], rows)}

`local`: `bench --suite smoke`, `local_2workers` with `--workers 2` (the process pool, no database);
`pg_1worker`: `bench --suite smoke --storage URL`; `pg_2workers`: the same with `--workers 2`;
`pg_2machines`: two commands at once, 1 worker each (two machines on one database, here one 2-core CPU).

## The queue's overhead per item (ms, median over items and rounds)

{md_table(["mode", "items", "take", "store", "total", "max total", "item itself"], orows)}

take: from the start of a worker's loop iteration to the item's start (stale-trial check, the waiting
trials, heartbeat, compare-and-set to RUNNING, worker note, duplicate check); store: from the item's end to
COMPLETE (the record and its time split as trial attributes, the state). Median over every item:
**{1000 * per_item:.0f} ms** of queue per item, against a median item of {items_s:.2f} s here.

## Fixed costs of a queue (ms, median of 3, measured in one process)

{md_table(["suite", "items", "open a new queue", "take (all waiting)", "collect the records"], frows)}

Opening a new queue: connect, create the study, enqueue every item (once, by the process that creates it;
a joining process checks the spec and reads the trials). A take reads the waiting trials once per pass
and walks that list. Collect: every trial read back, as every command does at the end to write
`results.jsonl` (here no record is stored yet).
"""
    payload = {
        "rounds": args.rounds,
        "wall_s": walls,
        "wall_median_s": {m: med(w) for m, w in walls.items()},
        "loadavg_after_each_run": loads,
        "overhead_per_item_s": over,
        "overhead_median_s": per_item,
        "item_median_s": items_s,
        "fixed_costs_s": fixed,
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "storage": "throw-away local PostgreSQL" if not args.storage else "given",
    }
    j, m = out.write(payload, md)
    print(f"wrote {j} and {m}")


if __name__ == "__main__":
    main()
