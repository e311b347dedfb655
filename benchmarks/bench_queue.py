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

``--restart``: the queue through database outages instead (variant ``restart``). Two commands (two
machines) run a 4-cell digits suite on a throw-away server that is taken away while a cell trains — shut
down (``pg_ctl stop -m fast``) or crashed (``-m immediate``) for ``--down`` seconds, longer than a cell, so
the cell ends while the database is away and its record waits — then started again. Measured: the time from
the server's return (``pg_ctl start -w`` returned: it accepts connections) to the first record stored
after it (the trial's COMPLETE time), whether both commands exit 0, every cell COMPLETE exactly once and
no trial failed (nobody was declared dead), and what the commands said. One round also ends every
session mid-cell (``pg_terminate_backend``), which costs no wait at all (connections are checked before
use). ``python -m benchmarks.bench_queue --restart`` takes about 3 minutes on 2 quiet cores.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
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


RESTART_SUITE = {
    "name": "restart",
    "datasets": [{"dataset": "digits", "model": "mlp_digits", "training": {"budget": "10ep"}}],
    "methods": ["snip", "random", "magnitude"],
    "densities": [0.3],
    "seeds": 1,
}


def _pg_count(server: Any, query: str, *params: object) -> int:
    import psycopg

    try:
        with psycopg.connect(
            host=str(server.sock), port=server.port, user="postgres", dbname="postgres"
        ) as c:
            return int(c.execute(query, params).fetchone()[0])
    except psycopg.Error:
        return 0


def _restart_round(server: Any, tmp: Path, event: str, down: float, r: int) -> dict[str, Any]:
    """Two commands on a fresh queue; ``event`` once both train a cell; returns what
    was measured (times in s)."""
    import json

    import optuna

    from ticketsearch.bench import load_suite
    from ticketsearch.bench.queue import items_of
    from ticketsearch.studies.storage import quiet

    name = f"rs_{event}_{r}_{uuid.uuid4().hex[:6]}"
    spec = tmp / f"{name}.json"
    spec.write_text(json.dumps(RESTART_SUITE))
    args = ("--suite", str(spec), "--storage", server.url, "--study-name", name, "--heartbeat", "1")
    cmds = [[*_cmd(tmp / name / m, *args)] for m in ("a", "b")]
    for c in cmds:  # the suite is given by file: drop _cmd's smoke
        i = c.index("--suite")
        del c[i : i + 2]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    procs = [
        subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in cmds
    ]
    running = (
        "SELECT count(*) FROM trials t JOIN studies s ON t.study_id = s.study_id "
        "WHERE s.study_name = %s AND t.state = 'RUNNING'"
    )
    clients = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
    while not (_pg_count(server, clients) >= 2 and _pg_count(server, running, name) >= 2):
        if any(p.poll() is not None for p in procs) or time.time() - t0 > 300:
            raise SystemExit(f"{event}: a command ended before a cell ran: {procs[0].stderr.read()[-2000:]}")
        time.sleep(0.05)
    t_event = time.time()
    if event == "terminate":
        server.terminate_backends()
        t_back = time.time()
    else:
        server.stop("immediate" if event == "crash" else "fast")
        time.sleep(down)
        server.start()
        t_back = time.time()
    outs = [p.communicate(timeout=900) for p in procs]
    codes = [p.returncode for p in procs]
    quiet()
    trials = optuna.load_study(study_name=name, storage=server.url).get_trials(deepcopy=False)
    done = sorted(t.datetime_complete.timestamp() for t in trials if t.datetime_complete is not None)
    after = [d for d in done if d >= t_back]
    # the records that waited for the database: cells that ended while it was away (the cell's end is its
    # take's start + the take + the cell's own time, all stored on the trial), stored after its return
    waited = sorted(
        t.datetime_complete.timestamp()
        for t in trials
        if t.state.name == "COMPLETE"
        and t.datetime_complete.timestamp() >= t_back
        and t.user_attrs["take"]["start"] + t.user_attrs["take"]["take_s"] + t.values[0] < t_back
    )
    complete = [t.user_attrs.get("item") for t in trials if t.state.name == "COMPLETE"]
    backs = [float(m) for _, err in outs for m in re.findall(r"is back after ([0-9.]+) s", err)]
    return {
        "event": event,
        "down_s": None if event == "terminate" else down,
        "exit_codes": codes,
        "exactly_once": sorted(complete) == sorted(items_of(load_suite(str(spec)))),
        "failed_trials": sum(t.state.name == "FAIL" for t in trials),
        "traceback": any("Traceback" in err for _, err in outs),
        "outage_s": t_back - t_event,
        "first_record_after_return_s": (after[0] - t_back) if after else None,
        "waiting_records": len(waited),
        "first_waiting_record_after_return_s": (waited[0] - t_back) if waited else None,
        "records_during_outage": sum(t_event <= d < t_back for d in done),
        "back_after_s": backs,
        "wall_s": time.time() - t0,
    }


def restart_main(args: argparse.Namespace) -> None:
    """``--restart``: the queue through outages (see the module's docstring)."""
    from tests.pgserver import controllable_postgres

    out = ResultWriter(
        "bench_queue", args.variant or "restart", results_dir=args.results_dir, force_dirty=args.force_dirty
    )
    load_start = os.getloadavg()
    events = [e for _ in range(args.rounds) for e in ("fast", "crash")] + ["terminate"]
    rounds = []
    with controllable_postgres() as server, tempfile.TemporaryDirectory(prefix="bench_queue-") as tmp:
        for r, event in enumerate(events):
            rounds.append(_restart_round(server, Path(tmp), event, args.down, r))
            x = rounds[-1]
            print(
                f"{event}: first waiting record {x['first_waiting_record_after_return_s']} s after the return "
                f"({x['waiting_records']} waited), exit {x['exit_codes']}",
                file=sys.stderr,
                flush=True,
            )
    load_end = os.getloadavg()
    med = statistics.median
    key = "first_waiting_record_after_return_s"
    lat = {e: [x[key] for x in rounds if x["event"] == e and x[key] is not None] for e in ("fast", "crash")}
    ok = all(
        x["exit_codes"] == [0, 0] and x["exactly_once"] and not x["failed_trials"] and not x["traceback"]
        for x in rounds
    )
    rows = [
        [x["event"], x["down_s"] if x["down_s"] is not None else "–", f"{x['outage_s']:.1f}",
         "–" if x[key] is None else f"{x[key]:.2f}", x["waiting_records"],
         "–" if x["first_record_after_return_s"] is None else f"{x['first_record_after_return_s']:.2f}",
         x["records_during_outage"], ", ".join(f"{b:.1f}" for b in x["back_after_s"]) or "–",
         " ".join(map(str, x["exit_codes"])), "yes" if x["exactly_once"] else "NO", x["failed_trials"],
         f"{x['wall_s']:.0f}"]
        for x in rounds
    ]  # fmt: skip
    summary = {e: {"median_s": med(v), "max_s": max(v), "n": len(v)} for e, v in lat.items() if v}
    heads = "; ".join(
        f"{'pg_ctl stop -m fast' if e == 'fast' else 'crash (-m immediate)'}: median {v['median_s']:.2f} s, "
        f"max {v['max_s']:.2f} s over {v['n']} rounds"
        for e, v in summary.items()
    )
    md = f"""# bench --storage through database outages

`python -m benchmarks.bench_queue --restart`: two commands (two machines: own `--root` and `--out`, one
thread each) run a 4-cell digits suite (dense, SNIP, random, magnitude at density 0.3, 10 epochs) as a
queue on a throw-away PostgreSQL server (unix socket, fsync off), `--heartbeat 1`, `--db-wait` 300 (the
default). Once both commands train a cell, the server is shut down (`fast`: `pg_ctl stop
-m fast`) or crashed (`crash`: `-m immediate`) for {args.down:g} s — longer than a cell, so the cell in flight
ends while the database is away and its record waits — and started again; `terminate` ends every session
(`pg_terminate_backend`) instead. Load average at the start {load_start[0]:.2f}, at the end {load_end[0]:.2f}.

**Time from the server's return (`pg_ctl start -w` returned) to the first record stored of a cell that
ended while the database was away: {heads}.** Every
round: both commands exit 0, every cell COMPLETE exactly once, no trial failed (nobody declared dead for
the outage), no traceback: **{"yes" if ok else "NO"}**.

{md_table(["event", "down (s)", "outage (s)", "first waiting record stored after return (s)", "waiting records", "first record of any cell after return (s)", "records during outage", "'back after' said (s)", "exit codes", "exactly once", "failed trials", "wall (s)"], rows)}

outage: from the event to the server's return (stop, {args.down:g} s, start; crash recovery included).
waiting records: cells that ended while the database was away (their records waited for it); the first
record of any cell after the return also counts cells still training at the return (then the time is
their training's, not the queue's).
'back after': what each command that saw the outage printed (`the database at URL is back after N s`,
from its first failed call). A worker's retry pause grows from 0.1 s by 1.5× to 1 s (±20%), so after an
outage of seconds a waiting record is stored about a second after the return, plus the time to reconnect
and write on a loaded machine; `terminate` costs a retry of the calls that were in flight (idle pooled
connections are checked before use and replaced without an error).
"""
    payload = {
        "rounds": rounds,
        "first_waiting_record_after_return_s": summary,
        "all_ok": ok,
        "down_s": args.down,
        "suite": RESTART_SUITE,
        "loadavg_start": load_start,
        "loadavg_end": load_end,
    }
    j, m = out.write(payload, md)
    print(f"wrote {j} and {m}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--storage", default=None, help="a PostgreSQL URL (default: a throw-away server)")
    ap.add_argument(
        "--restart",
        action="store_true",
        help="measure the queue through database outages instead (variant restart; a throw-away server)",
    )
    ap.add_argument("--down", type=float, default=15.0, help="with --restart: seconds the server stays down")
    add_output_args(ap, "result name (default: postgres, or restart)")
    args = ap.parse_args()
    if args.restart:
        if args.storage:
            raise SystemExit(
                "--restart takes the server away: it needs its own throw-away server, not --storage"
            )
        restart_main(args)
        return
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
