"""``ticketsearch study``: Optuna studies over each method's own search space, on SQLite and PostgreSQL.

Real components throughout: Optuna on an SQLite file, a throw-away PostgreSQL server (started as the
``postgres`` user when the tests run as root), worker processes killed with SIGKILL.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pgserver
import pytest
from procs import finish

from ticketsearch.cli import main
from ticketsearch.core.errors import ConfigError
from ticketsearch.core.hparams import (
    DatasetHparams,
    ModelHparams,
    PruningHparams,
    RunHparams,
    TrainingHparams,
)
from ticketsearch.experiments.runner import RunOptions, prepare, run_find

optuna = pytest.importorskip("optuna")

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def load(url: str, name: str):
    from ticketsearch.studies.storage import quiet

    quiet()
    return optuna.load_study(study_name=name, storage=url)


def states(study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def study_cmd(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ticketsearch", "study", "--root", str(root), "--no-progress", *extra]


# -- the search spaces --------------------------------------------------------------------------------------------
EXPECTED_PARAMS = {
    "imp": {"lr", "rate", "rewind"},
    "snip": {"lr", "score_batches"},
    "grasp": {"lr", "score_batches"},
    "synflow": {"lr", "rounds"},
    "magnitude": {"lr"},
    "random": {"lr"},
    "supermask": {"density", "lr"},
    "supermask-bernoulli": {"lr"},
    "early-bird": {"eb_eps", "eb_every"},
    # --arg knobs (a scorer's own space through Scorer.search_space; inner_lr sets ProsPr's knob lr)
    "prospr": {"lr", "score_batches", "steps", "inner_lr"},
    "gmp": {"lr", "start", "end"},
    "rigl": {"lr", "alpha", "every"},
    "cs": {"lr", "l1", "s0", "final_temp"},
}
KNOB_OF_PARAM = {"inner_lr": "lr"}


def _base(method: str) -> RunHparams:
    from ticketsearch.methods import get_method

    recipe = get_method(method).recipe("mlp_digits", "digits")
    training = recipe or TrainingHparams(optimizer="adam", lr=3e-3, batch_size=32, budget="20ep")
    return RunHparams(
        model=ModelHparams("mlp_digits"),
        dataset=DatasetHparams("digits"),
        training=training,
        pruning=PruningHparams(method=method, density=0.2),
    )


@pytest.mark.parametrize("method", sorted(EXPECTED_PARAMS))
def test_every_builtin_method_declares_a_space_of_valid_hparams(method):
    from ticketsearch.methods import get_method
    from ticketsearch.studies.storage import quiet

    quiet()
    m = get_method(method)
    for pareto in (False, True):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
        for _ in range(6):
            trial = study.ask()
            hp = m.search_space(trial, _base(method), density=(0.01, 0.9) if pareto else None)
            _, canonical = prepare(hp, RunOptions())  # validates every value
            want = EXPECTED_PARAMS[method] | ({"density"} if pareto else set())
            assert set(trial.params) == want
            for name, value in trial.params.items():  # what was drawn is what the run gets
                knobs = dict(hp.method_args)
                if KNOB_OF_PARAM.get(name, name) in knobs and name != "lr":
                    assert knobs[KNOB_OF_PARAM.get(name, name)] == pytest.approx(value)
                    continue
                own = m.own(hp)  # a method's own hyperparameter, or a shared PruningHparams field
                where = hp.training if name == "lr" else own if name in m.own_fields() else hp.pruning
                field = getattr(where, name)
                if name in ("rewind", "eb_every"):
                    assert field in (f"{value}ep", "0it") and (value > 0) == (field != "0it")
                else:
                    assert field == pytest.approx(value)
            if "density" not in want:
                assert hp.pruning.density == 0.2
            study.tell(trial, 0.5)


def test_a_method_without_a_space_says_so():
    from ticketsearch.methods import Method

    class Fixed(Method):
        name = "fixed"

        def run_levels(self, run):  # pragma: no cover
            return []

    trial = optuna.create_study().ask()
    with pytest.raises(ConfigError, match="method 'fixed' declares no search space"):
        Fixed().search_space(trial, _base("snip"))


def test_flags_pin_their_parameters():
    from ticketsearch.methods import get_method
    from ticketsearch.studies import StudySpec
    from ticketsearch.studies.study import trial_hparams

    spec = StudySpec(hp=_base("imp"), pinned={"lr": 0.01, "rewind": "2ep"})
    trial = optuna.create_study().ask()
    hp = trial_hparams(get_method("imp"), trial, spec)
    assert hp.training.lr == 0.01 and get_method("imp").own(hp).rewind == "2ep"
    assert set(trial.params) == {"rate"}  # pinned values are not searched


def test_a_pruned_run_stops_cleanly_and_resumes(tmp_path):
    """The hook gets every evaluation of a level; TrialPruned from it leaves a run that resumes."""
    hp = _base("snip").replace(
        training=TrainingHparams(optimizer="adam", lr=3e-3, batch_size=32, budget="4ep")
    )
    seen = []

    def stop_at_third(level: Path, record: dict) -> None:
        seen.append((level.name, record["iteration"]))
        if len(seen) == 3:
            raise optuna.TrialPruned("enough")

    with pytest.raises(optuna.TrialPruned):
        run_find(hp, opts=RunOptions(root=tmp_path, device="cpu", progress=False, on_eval=stop_at_third))
    level = next(tmp_path.glob("snip_*/replicate_0/level_1"))
    assert [s[0] for s in seen] == ["level_1"] * 3 and seen[0][1] == 0
    assert not (level / "result.json").exists() and (level / "checkpoint.pt").exists()
    resumed = run_find(hp, opts=RunOptions(root=tmp_path, device="cpu", progress=False))
    fresh = run_find(hp, opts=RunOptions(root=tmp_path / "fresh", device="cpu", progress=False))
    assert resumed.rows[0]["val_acc"] == fresh.rows[0]["val_acc"]
    assert resumed.rows[0]["test_acc"] == fresh.rows[0]["test_acc"]


# -- SQLite ----------------------------------------------------------------------------------------------------------
def test_sqlite_study_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs"
    args = ["study", "--method", "snip", "--budget", "2ep", "--root", str(root), "--no-progress"]
    code, out, err = cli(capsys, *args, "--n-trials", "4", "--study-name", "s1", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert len(record["ran"]) == 4 and record["best"][0]["val_acc"] > 0.5
    url = f"sqlite:///{root / 'studies.db'}"
    study = load(url, "s1")
    assert states(study) == {"COMPLETE": 4}
    for t in study.trials:
        run_dir = Path(t.user_attrs["run_dir"])
        assert run_dir.is_absolute() and (run_dir / "replicate_0" / "level_1" / "result.json").is_file()
        assert t.value == json.loads((run_dir / "replicate_0/level_1/result.json").read_text())["val_acc"]
        assert sorted(t.intermediate_values) == [4, 5]  # level 1 of a 2-epoch run: evaluations 1 and 2
    # rerunning resumes: the study is complete, nothing runs again
    code, out, err = cli(capsys, *args, "--n-trials", "4", "--study-name", "s1")
    assert code == 0 and "4 complete" in out and "trial " not in err
    # asking for more adds only the difference; --report writes the CSV, report and plots
    code, out, err = cli(capsys, *args, "--n-trials", "5", "--study-name", "s1", "--report")
    assert code == 0, err
    assert states(load(url, "s1")) == {"COMPLETE": 5}
    out_dir = root / "study_s1"
    rows = list(csv.DictReader((out_dir / "trials.csv").open()))
    assert len(rows) == 5 and {"param_lr", "param_score_batches", "run_dir", "val_acc"} <= set(rows[0])
    for png in ("history.png", "intermediate.png", "slice.png", "importances.png"):
        assert (out_dir / png).read_bytes()[:4] == b"\x89PNG"
    assert "best trials" in out and "report:" in out
    # find --from-study reuses the best trial: its own run directory, nothing retrained
    best = max(load(url, "s1").trials, key=lambda t: t.value)
    runs_before = sorted(root.glob("snip_*"))
    code, out, err = cli(
        capsys, "find", "--from-study", url, "--study-name", "s1", "--root", str(root), "--no-progress"
    )
    assert code == 0, err
    assert f"trial {best.number}" in err
    assert f"run: {best.user_attrs['run_dir']}/replicate_0" in out
    assert sorted(root.glob("snip_*")) == runs_before
    # the same name asked as a Pareto study, or with other settings: one line, exit 2
    one_line_error(
        *cli(capsys, *args, "--n-trials", "2", "--study-name", "s1", "--pareto")[::2],
        "optimises accuracy alone",
    )
    one_line_error(
        *cli(capsys, *args[:4], "3ep", *args[5:], "--n-trials", "2", "--study-name", "s1")[::2],
        "was made with other settings",
        "budget",
    )


def test_pareto_study_and_its_front(tmp_path, capsys):
    root = tmp_path / "runs"
    code, out, err = cli(
        capsys, "study", "--method", "magnitude", "--pareto", "--n-trials", "5", "--budget", "1ep",
        "--density-range", "0.05,0.8", "--root", str(root), "--no-progress", "--report",
    )  # fmt: skip
    assert code == 0, err
    assert "Pareto front" in out
    out_dir = next(root.glob("study_magnitude_digits_*"))
    assert (out_dir / "pareto_front.png").is_file() and (out_dir / "history.png").is_file()
    url = f"sqlite:///{root / 'studies.db'}"
    study = load(url, out_dir.name.removeprefix("study_"))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert all(0.05 <= t.params["density"] <= 0.8 for t in study.trials)
    one_line_error(*cli(capsys, "find", "--from-study", url, "--root", str(root))[::2], "give --density")
    code, out, err = cli(
        capsys, "find", "--from-study", url, "--density", "0.3", "--root", str(root), "--no-progress"
    )
    assert code == 0 and "from study" in err


def test_a_trial_the_pruner_stops_is_pruned(tmp_path):
    from ticketsearch.studies import StudySpec, run_study

    spec = StudySpec(hp=_base("snip").replace(training=TrainingHparams(optimizer="adam", lr=3e-3, batch_size=32, budget="3ep")), n_trials=5, pinned={"score_batches": 1})  # fmt: skip
    opts = RunOptions(root=tmp_path, device="cpu", progress=False)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    run_study(spec, opts, storage=url, study_name="p", progress=False)
    study = load(url, "p")
    study.enqueue_trial({"lr": 3.1e-4})  # near the lowest lr of the space: far behind after one epoch
    run_study(dataclasses_replace(spec, n_trials=6), opts, storage=url, study_name="p", progress=False)
    last = load(url, "p").trials[-1]
    assert last.params["lr"] == 3.1e-4 and last.state.name == "PRUNED", last.intermediate_values
    run_dir = Path(last.user_attrs["run_dir"])
    assert not (run_dir / "replicate_0/level_1/result.json").exists()  # stopped, resumable


def dataclasses_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited ({proc.returncode}) before {what}: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _running_trial(url: str, name: str, pid: int):
    """The trial worker ``pid`` is running, once it has stored its run directory."""
    if url.startswith("sqlite:///") and not list(
        Path(url.removeprefix("sqlite:///")).parent.glob("*/replicate_*/level_*/checkpoint.pt")
    ):
        # opening the database before the worker has finished creating its tables would race it (both
        # would create them: "table ... already exists"); a checkpoint on disk means the trial is running
        return None
    try:
        study = load(url, name)
    except KeyError:  # the worker has not created the study yet
        return None
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if (t.user_attrs.get("worker") or {}).get("pid") == pid and t.user_attrs.get("run_dir"):
            return t
    return None


def _kill_mid_trial(url: str, name: str, proc: subprocess.Popen):
    """SIGKILL ``proc`` once its trial has written a checkpoint; returns the trial as it was then. The
    checkpoint is watched on disk (cheap), so the kill lands early in the trial, not after it."""
    try:
        trial = _wait_for(lambda: _running_trial(url, name, proc.pid), 180, "a running trial", proc)
        level = Path(trial.user_attrs["run_dir"]) / "replicate_0"
        _wait_for(lambda: list(level.glob("level_*/checkpoint.pt")), 120, "a checkpoint", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return trial


def test_sqlite_study_resumes_after_the_process_is_killed(tmp_path):
    root = tmp_path / "runs"
    url = f"sqlite:///{root / 'studies.db'}"
    cmd = study_cmd(
        root, "--method", "snip", "--n-trials", "1", "--budget", "60ep", "--study-name", "k", "--json"
    )
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = _kill_mid_trial(url, "k", first)
    assert states(load(url, "k")).get("RUNNING") == 1
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"trial {killed.number} of a dead worker on this machine" in r.stderr
    study = load(url, "k")
    assert states(study) == {"FAIL": 1, "COMPLETE": 1}
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number)
    assert retry.state.name == "COMPLETE" and retry.params == killed.params
    assert retry.user_attrs["run_dir"] == killed.user_attrs["run_dir"]  # resumed where it was killed
    assert retry.number in json.loads(r.stdout)["ran"]


# -- bad input ---------------------------------------------------------------------------------------------------
BAD = [
    (["--method", "nope", "--n-trials", "2"], ["unknown method 'nope'"]),
    (["--method", "snip", "--n-trials", "0"], ["--n-trials", "got 0"]),
    (["--method", "snip"], ["--n-trials N"]),
    (["--n-trials", "2"], ["--method is required"]),
    (["--method", "snip", "--n-trials", "2", "--rate", "0.3"], ["--rate does not apply to method 'snip'"]),
    (["--method", "snip", "--n-trials", "2", "--arg", "nope=1"], ["unknown method argument 'nope'"]),
    (["--method", "snip", "--n-trials", "2", "--pruner", "bogus"], ["unknown pruner 'bogus'", "median"]),
    (["--method", "snip", "--n-trials", "2", "--pareto", "--density", "0.1"], ["give one of them"]),
    (
        ["--method", "snip", "--n-trials", "2", "--pareto", "--pruner", "median"],
        ["does not apply to --pareto"],
    ),
    (["--method", "snip", "--n-trials", "2", "--pareto", "--density-range", "0.5,0.1"], ["--density-range"]),
    (["--method", "snip", "--n-trials", "2", "--density-range", "x"], ["LOW,HIGH"]),
    (["--method", "snip", "--n-trials", "2", "--heartbeat", "0"], ["--heartbeat"]),
    (["--method", "snip", "--n-trials", "2", "--storage", "nonsense"], ["malformed storage URL 'nonsense'"]),
    (["--method", "snip", "--n-trials", "2", "--storage", "foo://x/y"], ["unknown database 'foo'"]),
    (
        ["--method", "snip", "--n-trials", "2", "--storage", "sqlite:////no/such/dir/s.db"],
        ["'/no/such/dir' does not exist"],
    ),
    (
        ["--method", "snip", "--n-trials", "2", "--storage", "postgresql://bob:hunter2@127.0.0.1:1/db"],
        ["cannot reach storage 'postgresql://bob:***@127.0.0.1:1/db'"],
    ),
    (
        ["--method", "snip", "--n-trials", "2", "--storage", "postgresql://bob:hun@ter2@127.0.0.1:1/db"],
        ["cannot reach storage 'postgresql://bob:***@127.0.0.1:1/db'"],
    ),
    (["--report"], ["no studies under"]),
]


@pytest.mark.parametrize("args,needles", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_study_input(tmp_path, capsys, args, needles):
    root = tmp_path / "runs"
    line = one_line_error(*cli(capsys, "study", "--root", str(root), "--budget", "1ep", *args)[::2], *needles)
    assert "hunter2" not in line and "ter2" not in line
    assert not root.exists() or not any(root.iterdir())  # validated before anything was created


def test_bad_from_study_input(tmp_path, capsys):
    root = tmp_path / "runs"
    one_line_error(
        *cli(capsys, "find", "--study-name", "x", "--root", str(root))[::2], "--study-name needs --from-study"
    )
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    one_line_error(
        *cli(capsys, "find", "--from-study", missing, "--root", str(root))[::2], "no study database"
    )
    assert not (tmp_path / "none.db").exists() and not root.exists()


def test_import_ticketsearch_loads_neither_optuna_nor_sqlalchemy():
    code = (
        "import sys, ticketsearch, ticketsearch.commands, ticketsearch.studies, ticketsearch.methods\n"
        "from ticketsearch.cli import build_parser; build_parser()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('optuna', 'sqlalchemy'))\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# -- PostgreSQL ----------------------------------------------------------------------------------------------------
postgres_url = pgserver.postgres_url  # the throw-away server fixture (shared with test_bench_queue.py)


def test_two_workers_share_one_postgres_study(postgres_url, tmp_path):
    root = tmp_path / "runs"
    cmd = study_cmd(root, "--method", "snip", "--n-trials", "6", "--budget", "3ep", "--storage", postgres_url, "--study-name", "two", "--json")  # fmt: skip
    procs = [
        subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = finish(procs, 300)
    for code, _, err in results:
        assert code == 0, err
    ran = [json.loads(so)["ran"] for _, so, _ in results]
    study = load(postgres_url, "two")
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == sum(len(r) for r in ran) >= 6  # two at the finish line may both start one more
    assert sorted(n for r in ran for n in r) == sorted(t.number for t in trials)  # each trial run once
    assert all(ran), f"both workers ran trials: {ran}"
    assert set(states(study)) <= {"COMPLETE", "PRUNED"}  # none left RUNNING
    for t in trials:
        rd = Path(t.user_attrs["run_dir"])
        assert rd.is_dir() and (rd / "hparams.json").is_file()
        if t.state.name == "COMPLETE":
            assert (rd / "replicate_0/level_1/result.json").is_file()


@pytest.mark.slow  # two worker processes, a heartbeat timeout and a resumed trial: ~20 s
def test_a_killed_postgres_worker_s_trial_is_retried_by_the_other(postgres_url, tmp_path):
    root = tmp_path / "runs"
    cmd = study_cmd(root, "--method", "snip", "--n-trials", "2", "--budget", "12ep", "--storage", postgres_url, "--study-name", "kill", "--heartbeat", "1", "--json")  # fmt: skip
    victim = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    other = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = _kill_mid_trial(postgres_url, "kill", victim)
    ((code, so, se),) = finish([other], 400)
    assert code == 0, se
    study = load(postgres_url, "kill")
    assert states(study).get("RUNNING", 0) == 0 and states(study).get("WAITING", 0) == 0
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert [t.number for t in failed] == [killed.number]
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number)
    assert retry.state.name == "COMPLETE" and retry.number in json.loads(so)["ran"]
    assert retry.params == killed.params and retry.user_attrs["run_dir"] == killed.user_attrs["run_dir"]
    assert retry.user_attrs["worker"]["pid"] == other.pid
    assert states(study).get("COMPLETE", 0) + states(study).get("PRUNED", 0) >= 2
