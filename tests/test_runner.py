"""Run directories, resume after a kill, controls, `train --mask`: end to end on digits (CPU, seconds)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from nets import digits_hparams

from ticketsearch.core import ConfigError, Mask
from ticketsearch.core.hparams import (
    DatasetHparams,
    ModelHparams,
    PruningHparams,
    RunHparams,
    TrainingHparams,
)
from ticketsearch.experiments.rundir import load_state
from ticketsearch.experiments.runner import RunOptions, run_find, train_mask

REPO = Path(__file__).resolve().parents[1]


def _hp(**pruning) -> RunHparams:
    training = dict(optimizer="adam", lr=3e-3, batch_size=32, budget="4ep", eval_every="1ep")
    return digits_hparams(training=training, **{"rounds": 2, **pruning})


def _opts(root: Path, **kw) -> RunOptions:
    return RunOptions(root=root, device="cpu", progress=False, **kw)


def test_imp_levels_shrink_reset_is_bitwise_and_finished_levels_are_kept(tmp_path):
    s = run_find(_hp(), seed=0, opts=_opts(tmp_path))
    rep = s.run_dir / "replicate_0"
    masks = [Mask.load(rep / f"level_{k}" / "mask.safetensors") for k in range(3)]
    for a, b in zip(masks, masks[1:]):
        assert b.is_subset_of(a) and b.num_kept < a.num_kept
    # layerwise 20% / output 10% of the remaining, by hand
    assert masks[1].layer_counts()["fc.weight"] == 640 - 64
    assert [r["level"] for r in s.rows] == [0, 1, 2]
    # the first recorded evaluation of level 2 equals an evaluation of init ⊙ mask, computed independently
    from ticketsearch.data import load_dataset
    from ticketsearch.models import create_model
    from ticketsearch.sparse import apply_mask
    from ticketsearch.training import evaluate

    init = load_state(rep / "init.safetensors")
    model = create_model("mlp_digits", (1, 8, 8), 10)
    model.load_state_dict(init)
    apply_mask(model, masks[2])
    data = load_dataset("digits", seed=0)
    first = json.loads((rep / "level_2" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["iteration"] == 0
    assert first["test_acc"] == evaluate(model, data.x_test, data.y_test)["acc"]
    # finished levels are never recomputed: a second call only reads
    mtimes = {p: p.stat().st_mtime_ns for p in rep.rglob("*") if p.is_file()}
    s2 = run_find(_hp(), seed=0, opts=_opts(tmp_path))
    assert s2.rows == s.rows
    assert mtimes == {p: p.stat().st_mtime_ns for p in rep.rglob("*") if p.is_file()}
    assert not list(rep.rglob("checkpoint.pt")) and not list(rep.rglob("*.tmp"))


def test_rewind_uses_stored_iteration(tmp_path):
    s = run_find(_hp(rewind="10it"), seed=0, opts=_opts(tmp_path))
    rep = s.run_dir / "replicate_0"
    rewind = load_state(rep / "rewind.safetensors")
    init = load_state(rep / "init.safetensors")
    assert any(not torch.equal(rewind[k], init[k]) for k in init)
    # the ticket's recorded init is the rewind point: `train --mask` retrains the very same level
    level_1 = rep / "level_1" / "mask.safetensors"
    assert Mask.load(level_1).metadata["init"] == "../rewind.safetensors"
    t = train_mask(
        level_1, _hp().replace(pruning=PruningHparams(method="train")), seed=0, opts=_opts(tmp_path / "t")
    )
    assert (
        t.rows[0]["test_acc"] == s.rows[1]["test_acc"]
        and t.rows[0]["es_iteration"] == s.rows[1]["es_iteration"]
    )
    with pytest.raises(ConfigError, match="past the training budget"):
        run_find(_hp(rewind="100ep"), seed=0, opts=_opts(tmp_path / "x"))


def test_controls_recorded(tmp_path):
    s = run_find(_hp(rounds=1), seed=0, opts=_opts(tmp_path, controls=("reinit", "random_mask")))
    row = s.rows[1]
    assert set(row["controls"]) == {"reinit", "random_mask"}
    lvl = s.run_dir / "replicate_0" / "level_1"
    ticket = Mask.load(lvl / "mask.safetensors")
    rnd = Mask.load(lvl / "control_random_mask" / "mask.safetensors")
    assert rnd.layer_counts() == ticket.layer_counts() and not rnd.equals(ticket)
    reinit_init = load_state(lvl / "control_reinit" / "init.safetensors")
    init = load_state(s.run_dir / "replicate_0" / "init.safetensors")
    assert not torch.equal(reinit_init["fc.weight"], init["fc.weight"])


def test_hash_separates_runs_and_seeds_share_dir(tmp_path):
    a = run_find(_hp(rounds=1), seed=0, opts=_opts(tmp_path))
    b = run_find(_hp(rounds=1), seed=1, opts=_opts(tmp_path))
    c = run_find(_hp(rounds=1, rate=0.5), seed=0, opts=_opts(tmp_path))
    assert a.run_dir == b.run_dir != c.run_dir
    assert json.loads((a.run_dir / "hparams.json").read_text())["pruning"]["rate"] == 0.2


def test_train_mask_from_source_init_reproduces_level(tmp_path):
    s = run_find(_hp(rounds=1), seed=0, opts=_opts(tmp_path))
    mask_file = s.run_dir / "replicate_0" / "level_1" / "mask.safetensors"
    t = train_mask(
        mask_file,
        _hp(rounds=1).replace(pruning=PruningHparams(method="train")),
        seed=0,
        opts=_opts(tmp_path / "t"),
    )
    # same init, same mask, same data order and hparams → the very same training run
    assert t.rows[0]["test_acc"] == s.rows[1]["test_acc"]
    assert t.rows[0]["es_iteration"] == s.rows[1]["es_iteration"]
    # the new ticket's metadata points at the init it really trained from (the source run's)
    tmask = Path(t.rows[0]["mask"])
    used = load_state(tmask.parent / Mask.load(tmask).metadata["init"])
    source = load_state(s.run_dir / "replicate_0" / "init.safetensors")
    assert all(torch.equal(used[k], source[k]) for k in source)
    f = train_mask(
        mask_file,
        _hp().replace(pruning=PruningHparams(method="train")),
        seed=0,
        init="fresh",
        opts=_opts(tmp_path / "f"),
    )
    assert f.rows[0]["density"] == pytest.approx(Mask.load(mask_file).density)
    # a fresh init is a different init, even with the seed that made the ticket (the reinit control)
    fmask = Path(f.rows[0]["mask"])
    fresh = load_state(fmask.parent / Mask.load(fmask).metadata["init"])
    assert not any(torch.equal(fresh[k], source[k]) for k in source if k.endswith("weight"))
    assert Mask.load(fmask).equals(Mask.load(mask_file))


def _run_cli(args, root, **kw):
    cmd = [
        sys.executable,
        "-m",
        "ticketsearch",
        "find",
        "--dataset",
        "digits",
        "--no-progress",
        "--root",
        str(root),
        *args,
    ]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize(
    "args,where",
    [
        # a process killed by SIGKILL (MethodConformance kills every strategy mid-level in the default
        # suite, by an exception): IMP's level and the supermask's are kept for `make test-all`
        pytest.param(
            ["--method", "imp", "--rounds", "2", "--budget", "15ep"], "level_1", marks=pytest.mark.slow
        ),
        pytest.param(
            ["--method", "supermask", "--density", "0.5", "--budget", "15ep", "--arg", "kernel=torch"],
            "level_1",
            marks=pytest.mark.slow,
        ),
        # killed inside a control, after level 1 finished: the resumed run shuffles the mask it reads back
        # from disk, the uninterrupted one the mask it built in memory; both must give the same control
        (
            ["--method", "imp", "--rounds", "1", "--budget", "15ep", "--controls", "reinit,random_mask"],
            "level_1/control_reinit",
        ),
        # killed mid-search: the queue of drawn masks is rebuilt from the draws before the checkpoint
        (
            [
                "--method",
                "early-bird",
                "--density",
                "0.2",
                "--eb-every",
                "5it",
                "--eb-eps",
                "0.01",
                "--budget",
                "15ep",
            ],
            "level_0",
        ),
    ],
    ids=["imp", "supermask", "imp-controls", "early-bird"],
)
def test_killed_run_resumes_to_identical_result(tmp_path, args, where):
    args = [*args, "--device", "cpu", "--json"]
    ref = _run_cli(args, tmp_path / "ref")
    out_ref, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    # start again in a fresh root, kill -9 once the level (or control) has a checkpoint mid-training
    root = tmp_path / "killed"
    p = _run_cli(args, root)
    deadline = time.time() + 240
    while time.time() < deadline:
        if list(root.glob(f"*/replicate_0/{where}/checkpoint.pt")):
            break
        if p.poll() is not None:
            pytest.fail("run finished before it could be killed")
        time.sleep(0.01)
    else:
        pytest.fail("no checkpoint appeared")
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not list(root.glob(f"*/replicate_0/{where}/result.json"))
    q = _run_cli(args, root)
    out, err = q.communicate(timeout=300)
    assert q.returncode == 0, err
    a_dir = Path(json.loads(out_ref)["run_dir"]) / "replicate_0"
    b_dir = Path(json.loads(out)["run_dir"]) / "replicate_0"
    levels = sorted(p.name for p in a_dir.glob("level_*"))
    assert levels == sorted(p.name for p in b_dir.glob("level_*"))
    subdirs = sorted(str(p.relative_to(a_dir)) for p in a_dir.glob("level_*/**/mask.safetensors"))
    assert subdirs == sorted(str(p.relative_to(b_dir)) for p in b_dir.glob("level_*/**/mask.safetensors"))
    for name in {str(Path(s).parent) for s in subdirs}:
        la, lb = a_dir / name, b_dir / name
        assert Mask.load(la / "mask.safetensors").equals(Mask.load(lb / "mask.safetensors"))
        assert (la / "metrics.jsonl").read_text() == (lb / "metrics.jsonl").read_text()
        fa, fb = load_state(la / "model_final.safetensors"), load_state(lb / "model_final.safetensors")
        assert all(torch.equal(fa[n], fb[n]) for n in fa)


def test_supermask_then_train_resumes_on_a_bn_model(tmp_path):
    """A finished supermask level on a net with BatchNorm (made non-affine by the method) can get
    --then-train in a later call: the fresh model is given the structure of the stored init."""
    hp = RunHparams(
        model=ModelHparams(model="resnet20"),
        dataset=DatasetHparams(dataset="digits"),
        training=TrainingHparams(
            optimizer="sgd",
            lr=0.1,
            momentum=0.9,
            batch_size=128,
            budget="5it",
            eval_every="5it",
            schedule="cosine",
        ),
        pruning=PruningHparams(method="supermask", density=0.5),
    )
    first = run_find(hp, seed=0, opts=_opts(tmp_path))
    assert "then_train" not in first.rows[0]
    short = TrainingHparams(optimizer="adam", lr=1e-3, batch_size=128, budget="5it", eval_every="5it")
    again = run_find(hp, seed=0, opts=_opts(tmp_path, then_train=True, then_train_hp=short))
    assert again.rows[0]["test_acc"] == first.rows[0]["test_acc"]  # the finished level is reused
    assert again.rows[0]["then_train"]["iterations"] > 0


def test_train_mask_identity_is_the_mask_and_its_init(tmp_path):
    """Two tickets from replicates 0 and 1 of one run, trained into one root, are two runs, not one cached."""
    s0 = run_find(_hp(rounds=1), seed=0, opts=_opts(tmp_path))
    s1 = run_find(_hp(rounds=1), seed=1, opts=_opts(tmp_path))
    m0, m1 = Path(s0.rows[1]["mask"]), Path(s1.rows[1]["mask"])
    assert Mask.load(m0).layer_counts() == Mask.load(m1).layer_counts()  # same counts, different masks
    train_hp = _hp(rounds=1).replace(pruning=PruningHparams(method="train"))
    t0 = train_mask(m0, train_hp, seed=0, opts=_opts(tmp_path / "t"))
    t1 = train_mask(m1, train_hp, seed=0, opts=_opts(tmp_path / "t"))
    assert t0.run_dir != t1.run_dir
    # each reproduces its own source level (same mask, same init, same data order)
    assert t0.rows[0]["test_acc"] == s0.rows[1]["test_acc"]
    assert Mask.load(t1.rows[0]["mask"]).equals(Mask.load(m1))
    # the same ticket from a fresh init is yet another run
    f0 = train_mask(m0, train_hp, seed=0, init="fresh", opts=_opts(tmp_path / "t"))
    assert f0.run_dir not in (t0.run_dir, t1.run_dir)


def test_two_identical_runs_at_once_share_the_work(tmp_path):
    """Two identical runs started while a third process holds the replicate: each says who holds it and
    waits; then one trains and the other reuses its finished levels, so every metrics.jsonl holds each
    evaluation once, and both report what an undisturbed run reports."""
    import fcntl

    args = ["--method", "imp", "--rounds", "1", "--budget", "6ep", "--device", "cpu", "--json"]
    ref = _run_cli(args, tmp_path / "ref")
    out_ref, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    name = Path(json.loads(out_ref)["run_dir"]).name
    root = tmp_path / "shared"
    (root / name).mkdir(parents=True)
    with open(root / name / ".replicate_0.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        a, b = _run_cli(args, root), _run_cli(args, root)
        for p in (a, b):
            line = p.stderr.readline()  # blocks until the process reports the wait
            assert "is in use by" in line and "waiting" in line, line
        fcntl.flock(held, fcntl.LOCK_UN)
    outs = [p.communicate(timeout=300) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    acc = [r["test_acc"] for r in json.loads(out_ref)["rows"]]
    for out, _ in outs:
        assert [r["test_acc"] for r in json.loads(out)["rows"]] == acc
    for metrics in root.glob("*/replicate_0/level_*/metrics.jsonl"):
        its = [json.loads(line)["iteration"] for line in metrics.read_text().splitlines()]
        assert its == sorted(set(its)), metrics
