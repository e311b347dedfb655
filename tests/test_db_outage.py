"""Shared studies and bench queues ride out a database that goes away (``--db-wait``).

Real components: a throw-away PostgreSQL server restarted (``pg_ctl restart -m fast``), crashed and started
again (``stop -m immediate``), its sessions ended (``pg_terminate_backend``) while cells train; an SQLite
file locked by another connection past its busy timeout. Commands run as separate processes, two per
queue or study, as two machines would. The oracle is the database: every item COMPLETE exactly once, no
trial failed (no worker was declared dead for the outage), and stderr never holds a traceback. Past the
bound: one ``error:`` line, exit 2, and the rerun finishes.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pgserver
import pytest
from clitools import run_cli
from procs import finish

from ticketsearch.bench import load_suite
from ticketsearch.bench.queue import default_name, items_of

optuna = pytest.importorskip("optuna")

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
postgres_server = pgserver.postgres_server  # a server these tests may take away (this module's own)


def _suite(tmp_path: Path, methods: list[str], budget: str, name: str) -> tuple[Path, object]:
    """A digits suite of ``methods`` at density 0.3 plus the dense cell, cells of ``budget`` each."""
    spec = {
        "name": name,
        "datasets": [{"dataset": "digits", "model": "mlp_digits", "training": {"budget": budget}}],
        "methods": methods,
        "densities": [0.3],
        "seeds": 1,
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path, load_suite(str(path))


def _bench(machine: Path, url: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "ticketsearch", "bench", "--no-progress", "--storage", url,
        "--root", str(machine / "runs"), "--out", str(machine / "out"), *extra,
    ]  # fmt: skip


def _start(cmds: list[list[str]]) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(c, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in cmds
    ]


def _sql(server: pgserver.PgServer, query: str, *params: object) -> int:
    """A count from the server (0 while it or Optuna's tables are not there)."""
    import psycopg

    try:
        with psycopg.connect(
            host=str(server.sock), port=server.port, user="postgres", dbname="postgres"
        ) as c:
            return int(c.execute(query, params).fetchone()[0])
    except psycopg.Error:
        return 0


def _running(server: pgserver.PgServer, study: str) -> int:
    """RUNNING trials of ``study``."""
    return _sql(
        server,
        "SELECT count(*) FROM trials t JOIN studies s ON t.study_id = s.study_id "
        "WHERE s.study_name = %s AND t.state = 'RUNNING'",
        study,
    )


def _clients(server: pgserver.PgServer) -> int:
    """Client sessions on the server besides the one asking (the commands' connections)."""
    return _sql(
        server,
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )


def _wait_for(predicate, timeout: float, what: str, procs: list[subprocess.Popen]) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"a command exited ({p.returncode}) early: {p.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _study(url: str, name: str):
    from ticketsearch.studies.storage import quiet

    quiet()
    return optuna.load_study(study_name=name, storage=url)


def _exactly_once_no_failure(url: str, suite) -> list:
    trials = _study(url, default_name(suite)).get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    assert states == {"COMPLETE": len(items_of(suite))}, states  # nothing failed: nobody declared dead
    assert Counter(t.user_attrs["item"] for t in trials) == Counter(items_of(suite))
    assert all(isinstance(t.user_attrs["record"], dict) for t in trials)
    return trials


def _clean(err: str) -> None:
    assert "Traceback" not in err and "error:" not in err, err


# -- PostgreSQL ----------------------------------------------------------------------------------------------
def test_two_commands_ride_out_a_postgres_restart(postgres_server, tmp_path):
    """The operator's report: ``pg_ctl restart -m fast`` while two commands run a suite. Both finish,
    every cell once, nobody is declared dead, no traceback."""
    spec, suite = _suite(tmp_path, ["snip"], "60ep", "restart")  # a cell for each command
    url = postgres_server.url
    args = ("--suite", str(spec), "--heartbeat", "1", "--db-wait", "30")
    procs = _start([_bench(tmp_path / m, url, *args) for m in ("a", "b")])
    try:
        # a cell running on each: both commands are past their first connection, which is deliberately not
        # waited for (a server missing at start is more often a typo), so the restart tests riding it out
        _wait_for(lambda: _running(postgres_server, default_name(suite)) >= 2, 120, "a cell on each", procs)
        postgres_server.restart("fast")
        results = finish(procs, 240)
    finally:
        for p in procs:
            p.kill()
    for code, _, err in results:
        assert code == 0, err
        assert "Traceback" not in err, err
    _exactly_once_no_failure(url, suite)


@pytest.mark.slow  # a crash, a restart and ended sessions, each mid-cell: ~40 s
def test_a_queue_rides_out_a_crash_a_restart_and_ended_sessions(postgres_server, tmp_path):
    spec, suite = _suite(tmp_path, ["snip", "random", "magnitude", "synflow", "grasp"], "40ep", "outages")
    url = postgres_server.url
    args = ("--suite", str(spec), "--heartbeat", "1", "--db-wait", "30")
    procs = _start([_bench(tmp_path / m, url, *args) for m in ("a", "b")])
    both = lambda: _running(postgres_server, default_name(suite)) >= 2  # noqa: E731  (a cell on each)
    try:
        _wait_for(both, 120, "a running cell", procs)
        postgres_server.stop("immediate")  # a crash: every session gone, recovery at the next start
        time.sleep(4)  # longer than the grace period (2 s): every heartbeat lapses
        postgres_server.start()
        time.sleep(1.5)  # a heartbeat (1 s) later both are connected again
        _wait_for(both, 60, "a cell on each command", procs)
        postgres_server.restart("fast")
        time.sleep(1.5)
        _wait_for(lambda: both() and _clients(postgres_server) >= 2, 60, "a cell on each, connected", procs)
        ended = postgres_server.terminate_backends()
        assert ended >= 2  # both commands' connections (pooled ones included)
        results = finish(procs, 300)
    finally:
        for p in procs:
            p.kill()
    for code, _, err in results:
        assert code == 0, err
        assert "Traceback" not in err, err
    assert any("is back after" in err for _, _, err in results)  # the crash was seen and waited out
    _exactly_once_no_failure(url, suite)


def _lost_line(err: str, url_shown: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err, err
    line = errors[0]
    assert re.fullmatch(
        rf"error: lost the database at {re.escape(url_shown)} for \d+ s \(.+\); rerun the same command to resume",
        line,
    ), line
    assert lines[-1] == line, err  # the last word
    return line


@pytest.mark.slow  # a cell, a wait past the bound and a rerun: ~15 s quiet (the SQLite case below is default)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_past_the_bound_one_line_exit_2_and_the_rerun_finishes(postgres_server, tmp_path, workers):
    spec, suite = _suite(tmp_path, ["snip"], "20ep", f"bound{workers}")
    url = postgres_server.url.replace("postgres@", "postgres:hunter2@")  # trust auth: the password is unused
    cmd = _bench(
        tmp_path, url, "--suite", str(spec), "--heartbeat", "1", "--db-wait", "3", "--workers", workers
    )
    (p,) = _start([cmd])
    try:
        _wait_for(lambda: _running(postgres_server, default_name(suite)) >= 1, 120, "a running cell", [p])
        postgres_server.stop("fast")
        t0 = time.monotonic()
        ((code, _, err),) = finish([p], 120)
        waited = time.monotonic() - t0
    finally:
        p.kill()
        postgres_server.start()
    assert code == 2, err
    _lost_line(err, postgres_server.url.replace("postgres@", "postgres:***@"))
    assert "hunter2" not in err
    assert waited < 60, waited  # bounded: the cell's end plus --db-wait, not a hang
    r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    trials = _study(url, default_name(suite)).get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert Counter(t.user_attrs["item"] for t in complete) == Counter(items_of(suite))
    # the trials the lost command held were failed (stale) and retried, as a dead worker's are
    assert {t.state.name for t in trials} <= {"COMPLETE", "FAIL"}
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]


def _study_cmd(root: Path, url: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "ticketsearch", "study", "--root", str(root), "--no-progress", "--method", "snip",
        "--storage", url, "--heartbeat", "1", "--db-wait", "30", "--pruner", "none", "--json", *extra,
    ]  # fmt: skip


@pytest.mark.slow  # two study commands through a restart, a crash and ended sessions: ~40 s
def test_two_study_commands_ride_out_restarts(postgres_server, tmp_path):
    url = postgres_server.url
    cmd = _study_cmd(tmp_path / "runs", url, "--n-trials", "6", "--budget", "40ep", "--study-name", "outage")
    procs = _start([cmd, cmd])
    both = lambda: _running(postgres_server, "outage") >= 2  # noqa: E731  (a trial on each)
    try:
        _wait_for(both, 120, "a running trial", procs)
        postgres_server.restart("fast")
        time.sleep(1.5)  # a heartbeat (1 s) later both are connected again
        _wait_for(both, 60, "a trial on each command", procs)
        postgres_server.stop("immediate")
        time.sleep(4)
        postgres_server.start()
        time.sleep(1.5)
        _wait_for(lambda: both() and _clients(postgres_server) >= 2, 60, "a trial on each, connected", procs)
        assert postgres_server.terminate_backends() >= 2
        results = finish(procs, 300)
    finally:
        for p in procs:
            p.kill()
    for code, _, err in results:
        assert code == 0, err
        assert "Traceback" not in err, err
    study = _study(url, "outage")
    states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    assert set(states) == {"COMPLETE"} and states["COMPLETE"] >= 6, states
    ran = [n for _, so, _ in results for n in json.loads(so)["ran"]]
    assert sorted(ran) == sorted(t.number for t in study.trials)  # each trial run by one command, once


# -- SQLite --------------------------------------------------------------------------------------------------
def _hold_lock(path: Path, seconds: float, taken: threading.Event) -> None:
    """Another connection holds an exclusive lock on the SQLite file for ``seconds``."""
    con = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        con.execute("BEGIN EXCLUSIVE")
        taken.set()
        time.sleep(seconds)
        con.execute("ROLLBACK")
    finally:
        con.close()


def test_a_locked_sqlite_file_is_waited_for_then_one_line(tmp_path, capsys):
    """Locked past the busy timeout (1 s here) but not past --db-wait: the command goes on; locked past
    --db-wait: one line, exit 2, nothing half-written; released: the rerun finishes."""
    db = tmp_path / "q.db"
    url = f"sqlite:///{db}?timeout=1"
    spec, _ = _suite(tmp_path, ["snip"], "2ep", "tiny")
    base = [
        "bench",
        "--no-progress",
        "--storage",
        url,
        "--root",
        str(tmp_path / "runs"),
        "--suite",
        str(spec),
    ]
    out = tmp_path / "out"
    sqlite3.connect(db).close()  # the file exists: a lock can be taken on it
    taken = threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(db, 2.5, taken))
    holder.start()
    taken.wait(10)
    r = run_cli(capsys, *base, "--out", str(out), "--db-wait", "30")
    holder.join()
    assert r.returncode == 0, r.stderr
    assert "database is locked" in r.stderr and "is back after" in r.stderr, r.stderr
    _clean(r.stderr)
    # past the bound
    taken = threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(db, 6, taken))
    holder.start()
    taken.wait(10)
    t0 = time.monotonic()
    other = tmp_path / "other"
    r = run_cli(capsys, *base, "--out", str(other), "--db-wait", "2", "--seeds", "2")  # another queue
    waited = time.monotonic() - t0
    holder.join()
    assert r.returncode == 2, r.stderr
    line = _lost_line(r.stderr, f"sqlite:///{db}?timeout=1")
    assert "(database is locked)" in line and re.search(r" for [23] s ", line), line
    assert waited < 5.5, (waited, line)
    assert not other.exists()  # nothing half-written
    r = run_cli(capsys, *base, "--out", str(other), "--db-wait", "2", "--seeds", "2")
    assert r.returncode == 0, r.stderr
