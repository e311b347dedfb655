"""``bench --storage URL``: a suite's cells as a queue on a shared database (Optuna's RDB storage).

Real components: a throw-away PostgreSQL server (``pgserver``), SQLite files, separate ``bench`` processes
standing in for machines (each its own ``--root`` and ``--out``), workers killed with SIGKILL. The oracle
for "exactly once" is the database itself: one COMPLETE trial per item, its record in every machine's
``results.jsonl``; the oracle for the report is the local ``bench --report`` of the same records.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pgserver
import pytest
from clitools import assert_one_line_error, nothing_left, run_cli
from procs import finish, spawned_children

from ticketsearch.bench import cells_of, load_suite, read_records
from ticketsearch.bench.queue import QUEUE_ATTR, _take, _top_up, default_name, items_of, open_queue

optuna = pytest.importorskip("optuna")

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
postgres_url = pgserver.postgres_url  # the throw-away server fixture (shared with test_studies.py)

# one cell long enough to be killed in the middle of (a dense and a SNIP cell on digits, 40 epochs)
SLOW = {
    "name": "slow",
    "datasets": [{"dataset": "digits", "model": "mlp_digits", "training": {"budget": "40ep"}}],
    "methods": ["snip"],
    "densities": [0.3],
    "seeds": 1,
}


def _bench(machine: Path, url: str, *extra: str) -> list[str]:
    """One machine's command: its own run directories and output folder, the shared queue."""
    return [
        sys.executable, "-m", "ticketsearch", "bench", "--no-progress", "--storage", url,
        "--root", str(machine / "runs"), "--out", str(machine / "out"), *extra,
    ]  # fmt: skip


def _study(url: str, name: str):
    from ticketsearch.studies.storage import quiet

    quiet()
    return optuna.load_study(study_name=name, storage=url)


def _exactly_once(url: str, suite, name: str | None = None) -> list:
    """Every item of ``suite`` has exactly one COMPLETE trial carrying its record; nothing is left
    waiting or running. Returns the trials."""
    trials = _study(url, name or default_name(suite)).get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    assert states["RUNNING"] == 0 and states["WAITING"] == 0, states
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert Counter(t.user_attrs["item"] for t in complete) == Counter(items_of(suite))
    assert all(isinstance(t.user_attrs["record"], dict) for t in complete)
    return trials


def _without_timing(md: str) -> str:
    """The report less what is machine-local: its "Where the time went" section (this command's workers)
    and its "Reproduce:" line (this machine's --root and --out)."""
    md = re.sub(r"^Reproduce: `[^\n]*`\n\n", "", md, flags=re.M)
    head, sep, rest = md.partition("## Where the time went")
    return head + (rest[rest.find("\n## ") :] if sep and "\n## " in rest else "")


def test_two_machines_run_the_smoke_suite_once_and_any_machine_reports_it(postgres_url, tmp_path):
    suite = load_suite("smoke")
    a, b = tmp_path / "a", tmp_path / "b"
    procs = [  # two machines: their own run directories and output folders, one database
        subprocess.Popen(
            _bench(m, postgres_url),
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for m in (a, b)
    ]
    for code, _, err in finish(procs, 300):
        assert code == 0, err
    trials = _exactly_once(postgres_url, suite)
    assert not [t for t in trials if t.state.name != "COMPLETE"]  # no failure, no duplicate
    # every machine's results.jsonl is the database's records: each cell once, in the suite's order
    recs = {t.user_attrs["item"]: t.user_attrs["record"] for t in trials}
    keys = [c.key for c in cells_of(suite)]
    for m in (a, b):
        got = read_records(m / "out" / "results.jsonl")
        assert [r["key"] for r in got] == keys and all(r["status"] == "ok" for r in got)
        assert got == [recs[f"cell:{k}"] for k in keys]
        (small,) = read_records(m / "out" / "smallest.jsonl")
        assert small == recs["smallest:digits/mlp_digits|snip"] and small["status"] == "ok"
    # each cell ran in the run directories of the machine whose worker took it
    roots = {procs[0].pid: a, procs[1].pid: b}
    for t in trials:
        rec = t.user_attrs["record"]
        if "run" in rec:
            machine = roots.get(t.user_attrs["worker"]["pid"])
            assert machine is not None, t.user_attrs["worker"]
            assert Path(rec["run"]).is_relative_to(machine / "runs"), (rec["run"], machine)
    # each machine's timing.json counts what its own worker ran
    timings = [json.loads(t.read_text()) for m in (a, b) if (t := m / "out" / "timing.json").is_file()]
    assert sum(t["cells_run"] + t["searches_run"] for t in timings) == len(items_of(suite))
    # the report from the database (any machine, no training) is the local report of the same records
    c = tmp_path / "c"
    r = subprocess.run(
        [sys.executable, "-m", "ticketsearch", "bench", "--storage", postgres_url, "--report", str(c)],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    local = tmp_path / "local"
    local.mkdir()
    for name in ("results.jsonl", "smallest.jsonl", "suite.json"):
        shutil.copy(a / "out" / name, local / name)
    assert run_cli_report(local) == 0
    assert (c / "results.jsonl").read_bytes() == (a / "out" / "results.jsonl").read_bytes()
    assert (c / "report.md").read_text() == (local / "report.md").read_text()
    assert (c / "summary.csv").read_text() == (local / "summary.csv").read_text()
    assert _without_timing((a / "out" / "report.md").read_text()) == (c / "report.md").read_text()
    assert "## Where the time went" in (a / "out" / "report.md").read_text()
    assert f"--root {a / 'runs'} --out {a / 'out'} --workers 1`" in (a / "out" / "report.md").read_text()


def run_cli_report(folder: Path) -> int:
    from ticketsearch.cli import main

    return main(["bench", "--report", str(folder)])


def _running_item(url: str, name: str, pid: int, root: Path, proc: subprocess.Popen):
    """The trial worker ``pid`` runs, once its cell has written a checkpoint (mid-cell)."""
    if proc.poll() is not None:
        raise AssertionError(f"worker exited ({proc.returncode}) early: {proc.stderr.read()}")
    if not list(root.glob("*/replicate_*/level_*/checkpoint.pt")):
        return None
    try:
        study = _study(url, name)
    except KeyError:
        return None
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if (t.user_attrs.get("worker") or {}).get("pid") == pid:
            return t
    return None


def _wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _slow_suite(tmp_path: Path) -> tuple[Path, object]:
    path = tmp_path / "slow.json"
    path.write_text(json.dumps(SLOW))
    return path, load_suite(str(path))


def _retried(trials, killed_number: int):
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert [t.number for t in failed] == [killed_number]
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == killed_number)
    assert retry.state.name == "COMPLETE"
    return retry


@pytest.mark.slow  # the same retry as a killed worker process, which the default suite covers
def test_a_killed_machine_s_cell_is_retried_by_the_other_on_postgres(postgres_url, tmp_path):
    spec, suite = _slow_suite(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    args = ("--suite", str(spec), "--heartbeat", "1")
    victim = subprocess.Popen(_bench(a, postgres_url, *args), cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        killed = _wait_for(
            lambda: _running_item(postgres_url, default_name(suite), victim.pid, a / "runs", victim),
            180,
            "a cell",
        )
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    other = subprocess.Popen(_bench(b, postgres_url, *args), cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    ((code, _, err),) = finish([other], 300)
    assert code == 0, err
    trials = _exactly_once(postgres_url, suite)
    retry = _retried(trials, killed.number)  # stale heartbeat (2 s): failed, enqueued again, run by the other
    assert retry.user_attrs["item"] == killed.user_attrs["item"]
    assert retry.user_attrs["worker"]["pid"] == other.pid
    assert [r["key"] for r in read_records(b / "out" / "results.jsonl")] == [c.key for c in cells_of(suite)]


def test_a_killed_worker_process_is_replaced_and_its_cell_retried_at_once(postgres_url, tmp_path):
    """``--workers 2``: the command sees its worker die and retries its cell without waiting for the
    heartbeat to go stale (60 s by default: the test would time out)."""
    spec, suite = _slow_suite(tmp_path)
    a = tmp_path / "a"
    args = (
        "--suite",
        str(spec),
        "--workers",
        "2",
        "--study-name",
        "replaced",
    )  # its own queue in the module's server
    p = subprocess.Popen(_bench(a, postgres_url, *args), cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    children: list[int] = []

    def child_running():
        children[:] = spawned_children(p.pid)
        for pid in children:
            t = _running_item(postgres_url, "replaced", pid, a / "runs", p)
            if t is not None:
                return t
        return None

    killed = _wait_for(child_running, 180, "a worker's cell")
    os.kill(killed.user_attrs["worker"]["pid"], signal.SIGKILL)
    ((code, _, err),) = finish([p], 100)
    assert code == 0, err
    assert "a worker died (signal 9)" in err
    trials = _exactly_once(postgres_url, suite, "replaced")
    retry = _retried(trials, killed.number)
    assert retry.user_attrs["worker"]["pid"] != killed.user_attrs["worker"]["pid"]
    # it resumed the dead worker's run directory (same root): the record points at the same run
    assert Path(retry.user_attrs["record"]["run"]).is_relative_to(a / "runs")


@pytest.mark.slow  # 13 s; the SQLite queue itself is tested in the default suite
def test_sqlite_rerun_after_a_kill_retries_the_cell_and_resumes_it(tmp_path):
    spec, suite = _slow_suite(tmp_path)
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    cmd = _bench(tmp_path, url, "--suite", str(spec))
    first = subprocess.Popen(
        cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        killed = _wait_for(
            lambda: _running_item(url, default_name(suite), first.pid, tmp_path / "runs", first),
            180,
            "a cell",
        )
        level = next((tmp_path / "runs").glob("*/replicate_*/level_*/checkpoint.pt")).parent
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"trial {killed.number} of a dead worker on this machine" in r.stderr  # at once, no heartbeat wait
    trials = _exactly_once(url, suite)
    retry = _retried(trials, killed.number)
    assert str(level).startswith(retry.user_attrs["record"]["run"].rsplit("/replicate_", 1)[0])
    assert (level / "result.json").is_file() and not (level / "checkpoint.pt").exists()


# -- the queue's rules, without training ------------------------------------------------------------------------
def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'q.db'}"


@pytest.mark.parametrize("younger_first", [False, True])
def test_a_duplicated_item_runs_once_the_older_trial_wins(tmp_path, younger_first):
    """Two trials for one item (a filler died and another process topped the queue up): whoever takes
    the younger one closes it as a duplicate, whether the older one is still waiting or already taken."""
    suite = load_suite("smoke")
    q = open_queue(suite, _sqlite(tmp_path), study_name=None, heartbeat=60)
    first = items_of(suite)[0]
    _top_up(q, [first])  # as a process joining a queue whose filler died does: numbered last
    if younger_first:  # this worker's snapshot of the waiting trials, youngest first
        q._waiting = sorted(q.trials(states=(optuna.trial.TrialState.WAITING,)), key=lambda t: -t.number)
    taken = []
    while (got := _take(q)) is not None:
        taken.append(got[0].user_attrs["item"])
    assert Counter(taken) == Counter(items_of(suite))
    trials = q.trials()
    dup = trials[-1]
    assert dup.state.name == "PRUNED" and dup.user_attrs["duplicate_of"] == 0
    assert trials[0].state.name == "RUNNING" and trials[0].user_attrs["item"] == first
    assert Counter(t.state.name for t in trials) == {"RUNNING": len(items_of(suite)), "PRUNED": 1}


@pytest.mark.parametrize("died", ["after_two_items", "before_naming_it"])
def test_joining_a_queue_whose_filler_died_tops_it_up(tmp_path, died):
    from ticketsearch.bench.queue import _enqueue

    suite = load_suite("smoke")
    url = _sqlite(tmp_path)
    q = open_queue(suite, url, study_name=None, heartbeat=60)
    items = items_of(suite)
    # the filler "died" after creating the study: with its identity and two items, or with nothing
    study = optuna.create_study(storage=q.storage, study_name="half", direction="minimize")
    if died == "after_two_items":
        study.set_user_attr(QUEUE_ATTR, q.study.user_attrs[QUEUE_ATTR])
        _enqueue(study, items[:2])
    joined = open_queue(suite, url, study_name="half", heartbeat=60, patience=0.5)
    assert Counter(t.user_attrs["item"] for t in joined.trials()) == Counter(items)
    assert joined.study.user_attrs[QUEUE_ATTR]["spec"] == q.study.user_attrs[QUEUE_ATTR]["spec"]


def test_bench_queue_bad_input(tmp_path, capsys):
    url = _sqlite(tmp_path)
    open_queue(load_suite("smoke"), url, study_name="mine", heartbeat=60)
    from ticketsearch.studies.storage import open_storage

    other = optuna.create_study(storage=open_storage(url, heartbeat=None), study_name="tuning")
    other.set_user_attr("ticketsearch", {"identity": {}})
    before = len(_study(url, "mine").trials)
    root, out = tmp_path / "runs", tmp_path / "out"
    base = ["bench", "--no-progress", "--root", str(root), "--out", str(out), "--storage", url]
    cases = [
        (
            ["--study-name", "mine", "--methods", "imp"],
            ["study 'mine'", "another spec", "smallest, variants"],
        ),
        (["--study-name", "mine", "--seeds", "2"], ["another spec", "differ in: seeds"]),
        (["--study-name", "tuning"], ["'tuning'", "Optuna study of `ticketsearch study`"]),
    ]
    for args, needles in cases:
        assert_one_line_error(run_cli(capsys, *base, *args), *needles)
        assert nothing_left(root) == [] and nothing_left(out) == []
    assert len(_study(url, "mine").trials) == before  # nothing enqueued
    # reports: a queue that is not there, a study that is not a queue, two queues and no name
    report = ["bench", "--storage", url, "--report", str(out)]
    assert_one_line_error(run_cli(capsys, *report, "--study-name", "nope"), "no study 'nope'", "mine")
    assert_one_line_error(
        run_cli(capsys, *report, "--study-name", "tuning"), "Optuna study of `ticketsearch study`"
    )
    open_queue(load_suite("smoke").with_overrides(seeds=2), url, study_name=None, heartbeat=60)
    assert_one_line_error(
        run_cli(capsys, *report, "--suite", "quick"), "holds 2 bench queues", "--study-name"
    )
    assert nothing_left(out) == []
