"""``bench --storage URL``: a suite's cells as a queue on a shared database, so many machines run one suite.

The engine is Optuna's RDB storage (SQLite, or a PostgreSQL server every machine can reach), not a lock
server of our own: one Optuna study per suite spec, one enqueued trial per *item* (every cell, then every
smallest-ticket search), in the suite's order. The study is named from the suite's name and a hash of its
spec (``bench_<suite>_<hash>``), so a changed spec never mixes its cells with an old one; a ``--study-name``
that exists with another spec is refused.

Which process fills the queue is decided by the database: ``create_study`` succeeds for exactly one of
the processes that start together, and only that one enqueues; the others wait until it says the queue is
full. A worker takes the next waiting trial by switching it to RUNNING, the compare-and-set ``Study.ask``
uses (it succeeds for one process only), records Optuna's heartbeat while the item runs, and stores the
item's record — the dict :func:`~ticketsearch.bench.runner.run_cell` returns — as the trial's ``record``
user attribute before completing it (the trial's value is the item's own time). A trial whose worker dies
(no heartbeat for twice ``heartbeat`` seconds; at once for a worker process of this command, or on SQLite
for any process gone from this machine) is marked failed and enqueued again by Optuna's retry callback, up
to 3 times, and its cell resumes from its run directory where that directory is shared.

No cell is recorded twice. Duplicates can only come from topping the queue up (a process joins a queue
whose filler died, or whose items used up their retries, and enqueues what has no live trial; two may do
it at once); from then on a worker that takes a trial while an older live trial (waiting, running or
complete) holds its item closes its own as a duplicate (PRUNED, ``duplicate_of``) without running it, the
same rule on every machine. A worker whose trial was given up as stale while it still ran (a pause longer
than the grace period) cannot complete it; its result is dropped and the retry records the cell.

The smallest-ticket searches are queue items too, enqueued after the cells, so workers take them once
every cell has been taken and they run in parallel with the last cells; a search reuses the cached runs of
the machine it runs on and retrains what it needs otherwise (same hparams, same result on CPU). Every
command returns once the whole queue is finished, then writes ``results.jsonl``, ``smallest.jsonl`` and
``suite.json`` into its ``--out`` from the shared records (its cells' run directories stay on its own
``--root``); ``bench --storage URL --report OUT`` does the same on any machine without training.

A database that goes away (a restart, a crash, a session the server ended, an SQLite file locked past its
busy timeout) is waited for: every call goes through the storage's one retry (``--db-wait`` seconds, see
:mod:`ticketsearch.studies.storage`), the cell in flight keeps training, its record is stored when the
database is back, and nobody's trial is declared dead for the outage. Past the bound the command stops
with one line (a worker process hands it to its command, which says it once) and the trials it held
are retried by whoever comes next, as a dead worker's are.

optuna and SQLAlchemy are imported inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.hparams import stable_hash
from ..core.io import atomic_write_json, atomic_write_text
from ..studies.storage import DatabaseLost, _say
from .runner import (
    Cell,
    cells_of,
    record_identity,
    run_cell,
    smallest_keys,
    smallest_search,
    sum_splits,
    write_timing,
)
from .spec import Suite, suite_from_saved

__all__ = [
    "QUEUE_ATTR",
    "Queue",
    "items_of",
    "spec_hash",
    "default_name",
    "open_queue",
    "work",
    "collect",
    "run_queue",
    "report_queue",
]

QUEUE_ATTR = "ticketsearch_bench"  # study user attribute: the suite, its hash, the number of items
_FULL_ATTR = "ticketsearch_bench_queued"  # set by the process that filled the queue once it has
_TOPUP_ATTR = "ticketsearch_bench_topped_up"  # set before a top-up: duplicates may exist from then on
_STUDY_ATTR = "ticketsearch"  # what `ticketsearch study` stores on its studies
_MAX_DEATHS = 3  # a worker process of this command replaced this many times per worker slot at most


def items_of(suite: Suite) -> list[str]:
    """The queue's items in run order: ``cell:<cell key>`` for every cell, then ``smallest:<key>``."""
    return [f"cell:{c.key}" for c in cells_of(suite)] + [f"smallest:{k}" for k in smallest_keys(suite)]


def spec_hash(suite: Suite) -> str:
    return stable_hash(suite.saved(), 10)


def default_name(suite: Suite) -> str:
    """One study per spec: the same suite with other methods, seeds or budgets is another queue."""
    return f"bench_{suite.name}_{spec_hash(suite)}"


@dataclass
class Queue:
    """An open queue: the storage (heartbeat on), the study and what it runs."""

    url: str  # as given (may hold a password: never printed)
    shown: str  # printable
    name: str
    suite: Suite
    storage: Any  # optuna.storages.RDBStorage
    study: Any  # optuna.Study
    heartbeat: int
    local: bool  # SQLite: every worker is on this machine
    items: list[str] = field(default_factory=list)
    db_wait: float = 300.0  # seconds a storage call waits for a lost database
    _sid: int | None = None
    _waiting: list[Any] = field(default_factory=list)  # this worker's snapshot of the WAITING trials

    @property
    def study_id(self) -> int:
        if self._sid is None:
            self._sid = int(self.storage.get_study_id_from_name(self.name))
        return self._sid

    def trials(self, states: tuple[Any, ...] | None = None) -> list[Any]:
        return list(self.storage.get_all_trials(self.study_id, deepcopy=False, states=states))


# -- opening ------------------------------------------------------------------------------------------------------
def _differences(stored: dict[str, Any], mine: dict[str, Any]) -> list[str]:
    return [k for k in sorted(set(stored) | set(mine)) if stored.get(k) != mine.get(k)]


def _not_a_queue(attrs: dict[str, Any], name: str, shown: str) -> ConfigError:
    what = "an Optuna study of `ticketsearch study`" if _STUDY_ATTR in attrs else "not a bench queue"
    return ConfigError(f"study '{name}' in '{shown}' is {what}; use another --study-name")


def _check_identity(attrs: dict[str, Any], suite: Suite, name: str, shown: str) -> None:
    """The stored queue is this suite's (the same spec hash), or a one-line error saying what differs."""
    ident = attrs.get(QUEUE_ATTR)
    if not isinstance(ident, dict):
        raise _not_a_queue(attrs, name, shown)
    if ident.get("spec") != spec_hash(suite):
        stored = ident.get("suite") or {}
        diff = _differences(stored, json.loads(json.dumps(suite.saved())))
        raise ConfigError(
            f"study '{name}' in '{shown}' queues suite '{stored.get('name', '?')}' with another spec "
            f"(spec {ident.get('spec')}, this command's {spec_hash(suite)}; they differ in: "
            f"{', '.join(diff) or 'nothing stored'}); run the same suite and flags, or use another --study-name"
        )


def _wait_for_attr(
    storage: Any, sid: int, key: str, *, patience: float, progress: Callable[[], int] = lambda: 0
) -> Any:
    """The study attribute ``key`` once the process that created the study has set it; None when that
    process made no progress (``progress()`` unchanged) for ``patience`` seconds: it died, or the study
    was never a queue."""
    last, since = progress(), time.monotonic()
    while True:
        attrs = storage.get_study_user_attrs(sid)
        if key in attrs or (key == QUEUE_ATTR and _STUDY_ATTR in attrs):
            return attrs.get(key)
        now = progress()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > patience:
            return None
        time.sleep(0.1)


def _enqueue(study: Any, items: list[str]) -> None:
    for item in items:
        study.enqueue_trial({"item": item}, user_attrs={"item": item})


def _live(trials: list[Any]) -> set[str]:
    """Items that have a trial waiting, running or complete (a closed duplicate or a failed one is not)."""
    from optuna.trial import TrialState

    live = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
    return {
        t.user_attrs.get("item") for t in trials if t.state in live and "duplicate_of" not in t.user_attrs
    }


def _connect(
    url: str, heartbeat: int | None, db_wait: float, *, wait_first: bool = False
) -> tuple[Any, str, bool]:
    from ..studies.storage import open_storage, safe_url

    rdb = open_storage(url, heartbeat=heartbeat, db_wait=db_wait, wait_first=wait_first)
    return rdb, safe_url(url), rdb.engine.url.get_backend_name() == "sqlite"


def open_queue(
    suite: Suite,
    url: str,
    *,
    study_name: str | None,
    heartbeat: int,
    patience: float = 30.0,
    db_wait: float = 300.0,
) -> Queue:
    """Create the suite's queue, or join it after checking it holds the same spec and top it up with
    every item that has no live trial (the items of a filler that died, or whose retries were used up).
    A study of another spec is refused before anything is written."""
    import optuna

    from .. import __version__

    rdb, shown, local = _connect(url, heartbeat, db_wait)
    name = study_name or default_name(suite)
    items = items_of(suite)
    try:
        study = optuna.create_study(storage=rdb, study_name=name, direction="minimize")
    except optuna.exceptions.DuplicatedStudyError:
        study = None
    ident = {
        "suite": json.loads(json.dumps(suite.saved())),
        "spec": spec_hash(suite),
        "items": len(items),
        "version": __version__,
    }
    if study is not None:  # this process won the creation: it alone fills the queue
        study.set_user_attr(QUEUE_ATTR, ident)
        _enqueue(study, items)
        study.set_user_attr(_FULL_ATTR, True)
        return Queue(url, shown, name, suite, rdb, study, heartbeat, local, items, db_wait)
    sid = rdb.get_study_id_from_name(name)
    _wait_for_attr(rdb, sid, QUEUE_ATTR, patience=min(patience, 10.0))
    attrs = rdb.get_study_user_attrs(sid)
    if not attrs and not rdb.get_all_trials(sid, deepcopy=False):
        # an empty study without a word: its creator died before naming it (or it is a bare study
        # made for this); adopt it, the top-up below fills it
        rdb.set_study_user_attr(sid, QUEUE_ATTR, ident)
        attrs = rdb.get_study_user_attrs(sid)
    _check_identity(attrs, suite, name, shown)
    study = optuna.load_study(study_name=name, storage=rdb)
    q = Queue(url, shown, name, suite, rdb, study, heartbeat, local, items, db_wait)
    _wait_for_attr(rdb, sid, _FULL_ATTR, patience=patience, progress=lambda: len(q.trials()))
    missing = [i for i in items if i not in _live(q.trials())]
    if missing:
        _top_up(q, missing)
        _say(f"queue '{name}': enqueued {len(missing)} item(s) that had no live trial")
    return q


def _top_up(q: Queue, items: list[str]) -> None:
    """Enqueue ``items`` again. Two processes may do it at once, so takers check for duplicates from
    now on (the flag is set first: a taker that sees a topped-up trial also sees the flag)."""
    q.study.set_user_attr(_TOPUP_ATTR, True)
    _enqueue(q.study, items)


def _attach(suite: Suite, url: str, name: str, heartbeat: int, db_wait: float) -> Queue:
    """A queue another process of this command opened (a worker process joining it: the database was
    there a moment ago, so a first connection that fails is waited for like a lost one)."""
    import optuna

    rdb, shown, local = _connect(url, heartbeat, db_wait, wait_first=True)
    study = optuna.load_study(study_name=name, storage=rdb)
    return Queue(url, shown, name, suite, rdb, study, heartbeat, local, items_of(suite), db_wait)


# -- working ------------------------------------------------------------------------------------------------------
def _take(q: Queue) -> tuple[Any, int] | None:
    """The lowest-numbered WAITING trial this process could switch to RUNNING (the database lets one
    process do that), or None when none is left. The worker walks its snapshot of the waiting trials
    (a trial another worker took fails the switch) and reads a new one when it is used up, so a take
    costs a few small queries, not a read of the whole study. Once the queue was topped up, a trial
    whose item an older live trial holds is closed as a duplicate instead of run."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from ..studies.study import worker_id

    known = set(q.items)
    for fresh in (False, True):
        if fresh or not q._waiting:
            q._waiting = sorted(q.trials(states=(TrialState.WAITING,)), key=lambda t: t.number)
        while q._waiting:
            t = q._waiting.pop(0)
            tid = q.storage.get_trial_id_from_study_id_trial_number(q.study_id, t.number)
            q.storage.record_heartbeat(tid)  # first: a RUNNING trial without a heartbeat never goes stale
            try:
                if not q.storage.set_trial_state_values(tid, state=TrialState.RUNNING):
                    continue  # another worker took it first
            except UpdateFinishedTrialError:
                continue
            q.storage.set_trial_user_attr(tid, "worker", worker_id())
            item = t.user_attrs.get("item")
            if item not in known:  # not ours (someone ran another objective on this study)
                q.storage.set_trial_user_attr(
                    tid, "error", f"not an item of suite '{q.suite.name}': {item!r}"
                )
                q.storage.set_trial_state_values(tid, state=TrialState.FAIL)
                continue
            older = _older(q, t) if _TOPUP_ATTR in q.storage.get_study_user_attrs(q.study_id) else []
            if older:
                q.storage.set_trial_user_attr(tid, "duplicate_of", min(older))
                q.storage.set_trial_state_values(tid, state=TrialState.PRUNED)
                continue
            return t, tid
        if fresh:
            break
    return None


def _older(q: Queue, t: Any) -> list[int]:
    """Numbers of the live trials that hold ``t``'s item before it (or have completed it)."""
    from optuna.trial import TrialState

    live = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
    return [
        u.number
        for u in q.trials(states=live)
        if u.user_attrs.get("item") == t.user_attrs.get("item")
        and u.number != t.number
        and "duplicate_of" not in u.user_attrs
        and (u.number < t.number or u.state == TrialState.COMPLETE)
    ]


def _jsonable(rec: dict[str, Any]) -> dict[str, Any]:
    """The record as the database will give it back (numpy/torch scalars as numbers, paths as text)."""

    def default(o: Any) -> Any:
        return o.item() if hasattr(o, "item") else str(o)

    return json.loads(json.dumps(rec, default=default))


def work(
    q: Queue,
    *,
    root: Path,
    out_dir: Path,
    data_root: str | None,
    device: str,
    on_item: Callable[[], None] | None = None,
) -> list[int]:
    """Take and run items until the whole queue is finished — waiting for items running elsewhere, since
    one whose worker dies comes back — and return the numbers of the trials this process completed."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from ..studies.storage import Heartbeat
    from ..studies.study import _recover
    from ..training.loop import time_split
    from .runner import _provenance

    prov = _provenance()
    cells = {f"cell:{c.key}": c for c in cells_of(q.suite)}
    ran: list[int] = []
    while True:
        t0, wall0 = time.perf_counter(), time.time()
        _recover(q.study, q.storage, q.local)  # dead workers' trials: failed, enqueued again
        taken = _take(q)
        if taken is None:
            if not q.trials(states=(TrialState.WAITING, TrialState.RUNNING)):
                return ran
            time.sleep(min(1.0, q.heartbeat / 2))
            continue
        trial, tid = taken
        item = trial.user_attrs["item"]
        # the queue's own cost: taking the item (here) and storing its result (datetime_complete minus
        # the item's time, the trial's value), measured from this wall-clock start
        q.storage.set_trial_user_attr(tid, "take", {"start": wall0, "take_s": time.perf_counter() - t0})
        with Heartbeat(q.storage, tid, q.heartbeat, now=False):  # _take beat it a moment ago
            t1, clock0 = time.perf_counter(), time_split()
            try:
                if item in cells:
                    rec = run_cell(q.suite, cells[item], root=root, data_root=data_root, device=device)
                    rec = {**rec, "provenance": prov}
                else:
                    key = item.split(":", 1)[1]
                    rec = smallest_search(
                        q.suite, key, out_dir, root=root, data_root=data_root, device=device
                    )
            except BaseException as exc:
                _abandon(q, tid, trial.number, exc)
                raise
            item_s, clock1 = time.perf_counter() - t1, time_split()
            try:
                q.storage.set_trial_user_attr(tid, "record", _jsonable(rec))
                q.storage.set_trial_user_attr(tid, "time_split", {k: clock1[k] - clock0[k] for k in clock1})
                q.storage.set_trial_state_values(tid, state=TrialState.COMPLETE, values=[item_s])
            except UpdateFinishedTrialError:
                _say(
                    f"{item}: trial {trial.number} was given up as stale while it ran (no heartbeat for "
                    f"{2 * q.heartbeat} s); its result is dropped here and its retry records the cell"
                )
                continue
        ran.append(trial.number)
        if on_item is not None:
            on_item()


def _abandon(q: Queue, tid: int, number: int, exc: BaseException) -> None:
    """This process stops while running trial ``number``: failed, and enqueued again when it was
    interrupted (Ctrl-C, SIGTERM); a bug keeps its error on the failed trial and is not retried."""
    from optuna.trial import TrialState

    from ..studies.storage import retry_callback

    try:
        with q.storage.no_wait():  # on its way out: a database that is away is not waited for
            if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                q.storage.set_trial_user_attr(tid, "error", f"{type(exc).__name__}: {exc}")
            q.storage.set_trial_state_values(tid, state=TrialState.FAIL)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                retry_callback()(q.study, q.storage.get_trial(tid))
    except Exception:  # noqa: BLE001 - the database may be what failed; the stale heartbeat then retries it
        pass


def _finished(q: Queue) -> int:
    from optuna.trial import TrialState

    return len({t.user_attrs.get("item") for t in q.trials(states=(TrialState.COMPLETE,))})


# -- results ------------------------------------------------------------------------------------------------------
def collect(q: Queue) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(cell records, smallest-search records, unfinished items) from the shared database, in the
    suite's order. An item whose trials all failed (its worker died on every retry, or a bug) gets a
    failed record, as the local runner writes one."""
    from optuna.trial import TrialState

    by_item: dict[str, list[Any]] = {}
    for t in q.trials():
        by_item.setdefault(t.user_attrs.get("item"), []).append(t)
    cells = {f"cell:{c.key}": c for c in cells_of(q.suite)}
    out_cells: list[dict[str, Any]] = []
    out_small: list[dict[str, Any]] = []
    pending: list[str] = []
    for item in q.items:
        ts = sorted(by_item.get(item, []), key=lambda t: t.number)
        done = [
            t for t in ts if t.state == TrialState.COMPLETE and isinstance(t.user_attrs.get("record"), dict)
        ]
        failed = [t for t in ts if t.state == TrialState.FAIL]
        if done:
            rec = done[0].user_attrs["record"]
        elif failed and not any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in ts):
            errors = [t.user_attrs["error"] for t in failed if t.user_attrs.get("error")]
            rec = _failed_record(
                item, cells, errors[-1] if errors else f"its worker died {len(failed)} times"
            )
        else:
            pending.append(item)
            continue
        (out_cells if item in cells else out_small).append(rec)
    return out_cells, out_small, pending


def _failed_record(item: str, cells: dict[str, Cell], error: str) -> dict[str, Any]:
    what = cells[item] if item in cells else item.split(":", 1)[1]
    return {**record_identity(what), "status": "failed", "error": error}


def _jsonl(records: list[dict[str, Any]]) -> str:
    """One JSON line per record, as ``append_jsonl`` writes them (records from the database are plain JSON)."""
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)


def write_records(
    out_dir: Path, suite: Suite, cells: list[dict[str, Any]], small: list[dict[str, Any]]
) -> None:
    """``results.jsonl``, ``smallest.jsonl`` and ``suite.json`` of ``out_dir`` from the shared records,
    written whole and atomically (this folder's copy of what the database holds)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "suite.json", suite.saved())
    atomic_write_text(out_dir / "results.jsonl", _jsonl(cells))
    if suite.smallest is not None and suite.smallest.variants:
        atomic_write_text(out_dir / "smallest.jsonl", _jsonl(small))


# -- the command ----------------------------------------------------------------------------------------------------
def run_queue(
    suite: Suite,
    url: str,
    *,
    study_name: str | None,
    out_dir: Path,
    root: Path,
    data_root: str | None = None,
    device: str = "cpu",
    workers: int = 1,
    heartbeat: int = 60,
    progress: bool | str = "auto",
    db_wait: float = 300.0,
) -> list[dict[str, Any]]:
    """Join (or create) the suite's queue on ``url``, work on it with ``workers`` processes until every
    item is finished, and write ``out_dir``'s records from the database; returns the cell records.
    A database that goes away is waited for ``db_wait`` seconds per storage call (cells keep training
    meanwhile), then :class:`~ticketsearch.studies.storage.DatabaseLost` (one line: rerun to resume).

    ``timing.json`` covers the items this command's processes ran (the smallest-ticket searches among
    them: their training steps count, their wall time is inside the workers')."""
    from ..training import progress_bar

    t_start, since = time.perf_counter(), time.time()
    q = open_queue(suite, url, study_name=study_name, heartbeat=heartbeat, db_wait=db_wait)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "suite.json", suite.saved())
    bar = progress_bar(
        len(q.items), initial=_finished(q), enabled=progress, desc=f"queue {q.name}", unit="item", leave=True
    )

    def refresh() -> None:  # reads every finished record: only when a bar shows it, and never waits
        if bar is not None:
            with contextlib.suppress(DatabaseLost), q.storage.no_wait():
                bar.n = _finished(q)
                bar.refresh()

    kw: dict[str, Any] = {"root": root, "out_dir": out_dir, "data_root": data_root, "device": device}
    try:
        if workers <= 1:
            pids = [os.getpid()]
            work(q, on_item=refresh, **kw)
        else:
            pids = _run_workers(q, workers, refresh, **kw)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t_start
    cells, small, pending = collect(q)
    write_records(out_dir, suite, cells, small)
    _write_timing(q, out_dir, pids=pids, since=since, workers=workers, wall=wall)
    if pending:  # only when every worker of this command stopped early (each waits for the others)
        _say(f"warning: {len(pending)} item(s) of queue '{q.name}' are not finished; rerun to finish them")
    return cells


def _write_timing(
    q: Queue, out_dir: Path, *, pids: list[int], since: float, workers: int, wall: float
) -> None:
    from optuna.trial import TrialState

    from ..studies.study import worker_id

    me = worker_id()
    mine = [
        t
        for t in q.trials(states=(TrialState.COMPLETE,))
        if isinstance(w := t.user_attrs.get("worker"), dict)
        and w.get("pid") in pids
        and (w.get("host"), w.get("boot")) == (me["host"], me["boot"])
        and float(w.get("since") or 0) >= since
        and isinstance(t.user_attrs.get("record"), dict)
    ]
    if not mine:
        return
    cell_records = [t.user_attrs["record"] for t in mine if t.user_attrs.get("item", "").startswith("cell:")]
    write_timing(
        out_dir / "timing.json",
        cell_records,
        workers=workers,
        cells_wall=wall,
        smallest_wall=0.0,
        smallest_split=sum_splits(
            t.user_attrs.get("time_split")
            for t in mine
            if not t.user_attrs.get("item", "").startswith("cell:")
        ),
        # the searches ran inside the workers' time, beside the cells: say so, and how many
        extra={"queue": q.name, "searches_run": len(mine) - len(cell_records)},
    )


_LOST_EXIT = 75  # a worker process that lost the database (EX_TEMPFAIL): its command says it, once


def _worker_main(
    suite: Suite,
    url: str,
    name: str,
    heartbeat: int,
    threads: int,
    kw: dict[str, Any],
    db_wait: float = 300.0,
    lost: Any = None,
) -> None:
    """A worker process of ``run_queue``: one line and exit code 2 on a user-level error, like the CLI;
    a lost database is handed to the command (``lost``, a pipe's sending end) to say once for all its
    workers."""
    import torch

    from ..core.errors import TicketsearchError

    torch.set_num_threads(threads)
    try:  # a worker shows no bar: its lines need no process-shared lock (one left when it is terminated)
        import threading

        from tqdm.auto import tqdm

        tqdm.set_lock(threading.RLock())
    except ImportError:  # pragma: no cover
        pass
    try:
        work(_attach(suite, url, name, heartbeat, db_wait), **kw)
    except DatabaseLost as exc:
        if lost is None:
            raise
        lost.send(str(exc))
        sys.exit(_LOST_EXIT)
    except TicketsearchError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def _requeue_dead(q: Queue, pid: int) -> list[int]:
    """The RUNNING trials of a dead worker process of this command: failed and enqueued again now
    (its death is certain, no need to wait for its heartbeat to go stale)."""
    from optuna.trial import TrialState

    from ..studies.study import _fail_and_retry, worker_id

    me = worker_id()
    numbers = [
        t.number
        for t in q.trials(states=(TrialState.RUNNING,))
        if isinstance(w := t.user_attrs.get("worker"), dict)
        and w.get("pid") == pid
        and (w.get("host"), w.get("boot")) == (me["host"], me["boot"])
    ]
    return _fail_and_retry(q.study, q.storage, numbers)


def _run_workers(q: Queue, workers: int, refresh: Callable[[], None], **kw: Any) -> list[int]:
    """``workers`` spawned processes on the queue; one killed by a signal has its item retried at once
    and is replaced (at most 3 times per worker). Returns every worker's pid."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    lost, lost_w = ctx.Pipe(duplex=False)  # a pipe, not a queue: no semaphore to leak when workers are killed

    def start() -> Any:
        args = (q.suite, q.url, q.name, q.heartbeat, threads, kw, q.db_wait, lost_w)
        p = ctx.Process(target=_worker_main, args=args)
        p.start()
        return p

    procs = [start() for _ in range(workers)]
    pids = [p.pid for p in procs]
    replaced, errors, shown = 0, 0, time.monotonic()
    try:
        while procs:
            time.sleep(0.5)
            if time.monotonic() - shown > 2.0:
                refresh()
                shown = time.monotonic()
            for p in [p for p in procs if p.exitcode is not None]:
                procs.remove(p)
                if p.exitcode == 0:
                    continue
                if p.exitcode == _LOST_EXIT and lost.poll():  # the others would meet it too
                    error = DatabaseLost(lost.recv())
                    q.storage.give_up(error)
                    raise error
                retried = _requeue_dead(q, p.pid)
                if p.exitcode < 0 and replaced < _MAX_DEATHS * workers:
                    replaced += 1
                    _say(
                        f"a worker died (signal {-p.exitcode}); trial(s) {retried or 'none'} enqueued again, "
                        "starting another worker"
                    )
                    procs.append(start())
                    pids.append(procs[-1].pid)
                else:
                    errors += 1
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()
            with contextlib.suppress(DatabaseLost), q.storage.no_wait():
                _requeue_dead(q, p.pid)
    if errors and collect(q)[2]:
        raise ConfigError(
            f"{errors} worker process(es) stopped with an error (see above) and the queue is not finished; "
            "rerun the command to finish it"
        )
    return pids


def report_queue(
    url: str, *, study_name: str | None, suite_hint: Suite | None, out_dir: Path, db_wait: float = 300.0
) -> tuple[Suite, list[dict[str, Any]]]:
    """The report's inputs from the database alone (any machine, no training): the queue named
    ``study_name``, else the one of ``suite_hint``'s spec, else the storage's only queue. Writes
    ``out_dir``'s records; returns the suite and the cell records."""
    import optuna

    from ..studies.storage import check_url, safe_url

    parsed = check_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).expanduser().is_file():  # opening it would create an empty one
            raise ConfigError(f"no database at '{parsed.database}' (storage '{safe_url(url)}')")
    rdb, shown, local = _connect(url, None, db_wait)
    studies = {s.study_name: s.user_attrs for s in rdb.get_all_studies()}
    queues = {n: a[QUEUE_ATTR] for n, a in studies.items() if isinstance(a.get(QUEUE_ATTR), dict)}
    listed = ", ".join(sorted(queues)[:10]) or "none"
    if study_name is not None:
        if study_name not in studies:
            raise ConfigError(f"no study '{study_name}' in storage '{shown}' (bench queues: {listed})")
        if study_name not in queues:
            raise _not_a_queue(studies[study_name], study_name, shown)
        name = study_name
    elif suite_hint is not None and default_name(suite_hint) in queues:
        name = default_name(suite_hint)
    elif len(queues) == 1:
        name = next(iter(queues))
    else:
        raise ConfigError(
            f"storage '{shown}' holds {len(queues)} bench queues ({listed}); choose one with --study-name"
        )
    suite = suite_from_saved(queues[name]["suite"], source=f"study '{name}'")
    study = optuna.load_study(study_name=name, storage=rdb)
    q = Queue(url, shown, name, suite, rdb, study, 0, local, items_of(suite), db_wait)
    cells, small, pending = collect(q)
    write_records(out_dir, suite, cells, small)
    if pending:
        _say(
            f"warning: {len(pending)} of {len(q.items)} item(s) of queue '{name}' are not finished yet; the "
            f"report covers the {len(q.items) - len(pending)} that are"
        )
    return suite, cells
