"""Every bad value a user can type: one ``error:`` line naming it, exit code 2, and nothing left in the root.

Table-driven, so the next flag gets the same treatment by adding a row: (arguments after ``find`` on
digits, words the one line must contain).
"""

from __future__ import annotations

import pytest
from clitools import assert_one_line_error, nothing_left, run_cli

FIND = ["find", "--dataset", "digits", "--no-progress", "--device", "cpu", "--budget", "1ep"]

CASES = [
    # values accepted silently before
    (["--output-rate", "nan"], ["output_rate", "nan"]),
    (["--grad-clip", "nan"], ["grad_clip", "nan"]),
    (["--grad-clip", "-1"], ["grad_clip", "≥ 0", "-1"]),
    (["--gamma", "nan"], ["gamma", "nan"]),
    (["--weight-decay", "nan"], ["weight_decay", "nan"]),
    (["--label-smoothing", "1.5"], ["label_smoothing", "[0, 1)", "1.5"]),
    (["--label-smoothing", "-0.1"], ["label_smoothing", "-0.1"]),
    (["--val-size", "10.5"], ["val_size", "whole count", "10.5"]),
    (["--arg", "foo=1"], ["unknown method argument 'foo'", "imp", "allowed: none"]),
    (
        ["--method", "grasp", "--arg", "temprature=1"],
        ["'temprature'", "allowed: chunk_size, invert, temperature"],
    ),
    (["--rounds", "-3"], ["rounds", "-3"]),
    # tracebacks before
    (["--label-smoothing", "2"], ["label_smoothing", "2"]),
    (["--lr", "1e39"], ["lr", "float32", "1e+39"]),
    (["--gamma", "1e300"], ["gamma", "float32", "1e+300"]),
    (["--seed", str(2**63)], ["seed", "2^63 - 1", str(2**63)]),
    (["--seed", "-1"], ["seed", "-1"]),
    # a mask that empties layers is refused, with the density that keeps one weight per layer
    (["--method", "random", "--density", "1e-9"], ["keeps no weight", "--allow-empty-layers", "0.000782"]),
    (
        ["--method", "snip", "--density", "1e-9"],
        ["keeps no weight", "global selection", "--allow-empty-layers"],
    ),
    (["--method", "supermask", "--density", "1e-9"], ["keeps no weight", "--allow-empty-layers", "0.000782"]),
    # argparse's own errors: one line and the subcommand's --help, not the 23-line usage
    (["--density", "abc"], ["--density", "'abc'", "ticketsearch find --help"]),
    (["--no-such-flag"], ["--no-such-flag", "ticketsearch find --help"]),
    # a flag the method does not read
    (["--method", "snip", "--rate", "0.5"], ["--rate", "does not apply", "'snip'"]),
    (["--method", "supermask", "--rewind-iter", "5"], ["--rewind-iter", "does not apply"]),
    # every other value, checked before anything is created
    (["--lr", "nan"], ["lr", "nan"]),
    (["--lr", "0"], ["lr", "positive"]),
    (["--batch-size", "0"], ["batch_size", "0"]),
    (["--schedule", "linear"], ["schedule", "'linear'", "cosine"]),
    (["--milestones", "5 epochs"], ["milestone", "'5 epochs'"]),
    (["--eval-every", "0it"], ["eval_every", "'0it'"]),
    (["--method", "snip", "--scope", "local"], ["scope", "'local'", "global"]),
    (["--method", "snip", "--distribution", "normal"], ["distribution", "'normal'", "erk"]),
    (["--method", "snip", "--score-batches", "0"], ["score_batches", "0"]),
    (["--min-layer-density", "2"], ["min_layer_density", "2"]),
    (["--method", "supermask", "--arg", "kernel=gpu"], ["kernel", "'gpu'"]),
    (["--method", "supermask", "--arg", "scale_fan=maybe"], ["scale_fan", "boolean"]),
    (["--controls", "shuffle_all"], ["control 'shuffle_all'", "random_mask"]),
    (["--init", "xavier"], ["init 'xavier'", "kaiming_normal"]),
    (["--method", "snp"], ["'snp'", "did you mean 'snip'"]),
    (["--rate", "1.5"], ["rate", "(0, 1)", "1.5"]),
    (["--rewind-iter", "1000ep"], ["rewind point", "past the training budget"]),
    (["--data-root", "~nosuchuser_ts/data", "--dataset", "mnist"], ["~nosuchuser_ts"]),
    (["--resize", "-1"], ["resize", "-1"]),
    (["--method", "supermask", "--controls", "reinit"], ["--controls", "learned", "supermask"]),
    (["--method", "snip", "--then-train"], ["--then-train", "learned", "'snip'"]),
    (["--retrain", "prune"], ["retrain", "'prune'", "lr-rewind"]),
    (["--precision", "fp16"], ["precision", "'fp16'", "fp32, bf16"]),
    (["--retrain", "rewind"], ["--retrain rewind", "--rewind-iter"]),
    (["--retrain", "finetune", "--rewind-iter", "5"], ["finetune", "drop --rewind-iter"]),
    (["--method", "early-bird", "--eb-eps", "2"], ["eb_eps", "(0, 1)", "2"]),
    (["--method", "early-bird", "--eb-every", "0it"], ["eb_every", "'0it'"]),
    (
        ["--method", "early-bird", "--arg", "structure=channel"],
        ["structure=channel", "BatchNorm", "mlp_digits"],
    ),
    (["--method", "early-bird", "--arg", "structure=slab"], ["structure", "'slab'", "channel"]),
    (["--method", "gmp", "--arg", "start=0.8", "--arg", "end=0.5"], ["gmp", "start < end", "start=0.8"]),
    (["--method", "gmp", "--arg", "end=1.5"], ["gmp", "end=1.5"]),
    (["--method", "gmp", "--arg", "every=-2"], ["every", "-2"]),
    (["--method", "gem-miner", "--arg", "every=0ep"], ["every", "'0ep'", "5ep"]),
    (["--method", "gem-miner", "--arg", "every=soon"], ["every", "soon"]),
    (["--method", "gem-miner", "--arg", "l2=-1"], ["l2", "≥ 0", "-1"]),
    (["--method", "gem-miner", "--arg", "select=mode"], ["select", "topk", "'mode'"]),
    (["--method", "gem-miner", "--arg", "retrain=maybe"], ["retrain", "boolean"]),
    (["--method", "gem-miner", "--then-train"], ["--then-train", "gem-miner"]),
    (["--method", "gmp", "--arg", "start=soon"], ["start", "'soon'"]),
    (["--method", "rigl", "--arg", "every=0"], ["rigl", "every", "0"]),
    (["--method", "set", "--arg", "alpha=1.5"], ["set", "alpha", "[0, 1]", "1.5"]),
    (["--method", "rigl", "--arg", "end=0"], ["rigl", "end", "(0, 1]"]),
    (["--method", "snip", "--eb-eps", "0.2"], ["--eb-eps", "does not apply", "'snip'"]),
    (["--method", "prospr", "--arg", "lr=0"], ["prospr lr", "positive", "got 0"]),
    (["--method", "prospr", "--arg", "steps=-2"], ["prospr steps", "≥ 0", "-2"]),
    (["--method", "prospr", "--arg", "momentum=1"], ["prospr momentum", "[0, 1)", "got 1"]),
    (["--method", "prospr", "--arg", "first_order=maybe"], ["first_order", "'maybe'", "boolean"]),
    (
        ["--method", "prospr", "--arg", "inner_lr=0.5"],
        ["'inner_lr'", "allowed: first_order, invert, lr, momentum, steps"],
    ),
    (["--method", "force", "--arg", "chunk_size=-1"], ["force chunk_size", "≥ 0", "-1"]),
    (["--method", "force", "--rounds", "-1"], ["rounds", "-1"]),
    (["--method", "force", "--arg", "steps=3"], ["'steps'", "allowed: chunk_size, invert"]),
    (
        ["--method", "random", "--distribution", "smart_ratio"],
        ["distribution", "'smart_ratio'", "smart-ratio"],
    ),
    (
        ["--method", "random", "--distribution", "smart-ratio", "--density", "1e-9"],
        ["keeps no weight", "layerwise selection", "--allow-empty-layers"],
    ),
    (["--resize", "2000"], ["resize", "[0, 1024]", "2000"]),
    (["--dataset", "mnist1d", "--resize", "8"], ["resize", "image datasets", "mnist1d"]),
    (["--backend", "tritn"], ["backend 'tritn'", "auto", "inplace", "triton_bits"]),
    # sparsity patterns (issue #22)
    (["--pattern", "2-4"], ["pattern", "'2-4'", "block:RxC"]),
    (["--method", "magnitude", "--pattern", "2:4", "--density", "0.6"], ["density 0.6", "2:4", "0.5"]),
    (["--pattern", "1:3", "--rounds", "1"], ["1:3", "fc.weight [10, 64]", "--allow-dense-layers"]),  # IMP
    (
        ["--method", "early-bird", "--arg", "structure=channel", "--pattern", "2:4"],
        ["--pattern 2:4", "structure=channel"],
    ),
    (["--method", "supermask-bernoulli", "--pattern", "2:4"], ["select=threshold", "--arg select=topk"]),
    (
        ["--method", "magnitude", "--pattern", "1:3", "--density", "0.3"],
        ["1:3", "layers.0.weight [128, 64]", "fc.weight [10, 64]", "multiple of 3", "--allow-dense-layers"],
    ),
    # torchrun (checked in one process too: a bad value is bad before any process group exists)
    (["--dist-timeout", "0"], ["--dist-timeout", "positive", "got 0"]),
    (["--dist-timeout", "nan"], ["--dist-timeout", "positive", "nan"]),
    (["--dist-timeout", "abc"], ["--dist-timeout", "'abc'", "ticketsearch find --help"]),
]


@pytest.mark.parametrize("args,needles", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_find_input(tmp_path, capsys, args, needles):
    root = tmp_path / "runs"
    r = run_cli(capsys, *FIND, "--root", str(root), *args)
    assert_one_line_error(r, *needles)
    assert nothing_left(root) == []


def test_bad_root_path(tmp_path, capsys):
    r = run_cli(capsys, *FIND, "--root", "~nosuchuser_ts/runs")
    assert_one_line_error(r, "~nosuchuser_ts")


def test_train_mask_without_init_names_the_right_flag(tmp_path, capsys):
    from ticketsearch.core import Mask

    m = Mask.ones({"layers.0.weight": (128, 64), "layers.1.weight": (128, 128), "fc.weight": (10, 128)})
    path = m.save(tmp_path / "m.safetensors", model="mlp_digits", dataset="digits")
    root = tmp_path / "runs"
    r = run_cli(capsys, "train", "--mask", str(path), "--root", str(root), "--no-progress", "--budget", "1ep")
    assert_one_line_error(r, "records no init", "--init-from fresh")
    assert nothing_left(root) == []


def test_train_bad_choice_is_one_line(tmp_path, capsys):
    r = run_cli(capsys, "train", "--mask", "x.safetensors", "--init-from", "other")
    assert_one_line_error(r, "--init-from", "'other'", "ticketsearch train --help")


def test_allow_empty_layers_is_honoured(tmp_path, capsys):
    """Asked for, an empty layer is accepted and recorded."""
    import json

    root = tmp_path / "runs"
    r = run_cli(
        capsys,
        *FIND,
        "--root",
        str(root),
        "--method",
        "random",
        "--density",
        "5e-4",
        "--allow-empty-layers",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)["rows"][-1]
    from ticketsearch.core import Mask

    mask = Mask.load(row["mask"])
    assert mask.metadata["empty_layers"] and 0 in mask.layer_counts().values()


def _ticket(tmp_path, capsys):
    import json

    r = run_cli(
        capsys, *FIND, "--root", str(tmp_path / "src"), "--method", "magnitude", "--density", "0.5", "--json"
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["rows"][-1]["mask"]


@pytest.mark.parametrize("case", ["init_is_the_mask", "init_missing", "init_misshaped", "sidecar_is_a_list"])
def test_train_mask_with_a_damaged_sidecar(tmp_path, capsys, case):
    import json
    import shutil
    from pathlib import Path

    import torch

    from ticketsearch.experiments.rundir import save_state

    src = Path(_ticket(tmp_path, capsys))
    work = tmp_path / "ticket"
    work.mkdir()
    mask = work / "mask.safetensors"
    shutil.copy(src, mask)
    meta = json.loads(src.with_suffix(".json").read_text())
    if case == "init_is_the_mask":
        meta["init"] = "mask.safetensors"
    elif case == "init_missing":
        meta["init"] = "nowhere.safetensors"
    elif case == "init_misshaped":
        save_state(work / "other.safetensors", {"layers.0.weight": torch.zeros(3, 3)})
        meta["init"] = "other.safetensors"
    (work / "mask.json").write_text(json.dumps([meta] if case == "sidecar_is_a_list" else meta))
    root = tmp_path / "runs"
    r = run_cli(capsys, "train", "--mask", str(mask), "--root", str(root), "--no-progress", "--budget", "1ep")
    needles = {
        "init_is_the_mask": ["mask.safetensors", "does not fit"],
        "init_missing": ["nowhere.safetensors", "missing", "--init-from fresh"],
        "init_misshaped": ["other.safetensors", "does not fit", "fc.weight"],
        "sidecar_is_a_list": ["mask.json", "JSON array", "expected an object"],
    }[case]
    assert_one_line_error(r, *needles)
    assert nothing_left(root) == []


# `bench --storage URL` (the suite as a queue on a shared database): checked before the database, the run
# directories or the output folder are touched; a password is never printed
BENCH = ["bench", "--suite", "smoke", "--no-progress"]
BENCH_CASES = [
    (["--storage", "nonsense"], ["malformed storage URL 'nonsense'"]),
    (["--storage", "foo://x/y"], ["unknown database 'foo'"]),
    (["--storage", "sqlite:////no/such/dir/q.db"], ["'/no/such/dir' does not exist"]),
    (
        ["--storage", "postgresql://bob:hunter2@127.0.0.1:1/db"],
        ["cannot reach storage 'postgresql://bob:***@127.0.0.1:1/db'"],
    ),
    (["--storage", "sqlite:///{tmp}/q.db", "--workers", "0"], ["--workers", "got 0"]),
    (["--storage", "sqlite:///{tmp}/q.db", "--heartbeat", "0"], ["--heartbeat", "got 0"]),
    (["--study-name", "x"], ["--study-name needs --storage"]),
    (["--heartbeat", "5"], ["--heartbeat needs --storage"]),
    (["--storage", "sqlite:///{tmp}/q.db", "--db-wait", "-1"], ["--db-wait", "≥ 0", "'-1'"]),
    (["--storage", "sqlite:///{tmp}/q.db", "--db-wait", "soon"], ["--db-wait", "seconds", "'soon'"]),
    (["--storage", "sqlite:///{tmp}/q.db", "--db-wait", "nan"], ["--db-wait", "'nan'"]),
    (["--storage", "sqlite:///{tmp}/q.db", "--db-wait", "inf"], ["--db-wait", "'inf'"]),
    (["--db-wait", "30"], ["--db-wait needs --storage"]),
    (["--storage", "sqlite:///{tmp}/q.db", "--report", "{tmp}/out"], ["no database at", "q.db"]),
    # --rerun-stale recomputes a local suite's cells; a report or a shared queue has none to recompute
    (["--rerun-stale", "--report", "{tmp}/out"], ["--rerun-stale", "--report"]),
    (["--rerun-stale", "--storage", "sqlite:///{tmp}/q.db"], ["--rerun-stale", "--storage"]),
    # a suite whose data are missing: one line naming the files and how to get them, nothing queued
    (
        ["--suite", "cifar", "--data-root", "{tmp}/nodata"],
        ["suite 'cifar'", "CIFAR-10 python batches", "data_batch_1", "--download"],
    ),
    (
        ["--suite", "cifar", "--data-root", "{tmp}/nodata", "--storage", "sqlite:///{tmp}/q.db"],
        ["suite 'cifar'", "data_batch_1", "nothing was queued"],
    ),
]


@pytest.mark.parametrize("args,needles", BENCH_CASES, ids=[" ".join(a) for a, _ in BENCH_CASES])
def test_bad_bench_queue_input(tmp_path, capsys, args, needles):
    root, out = tmp_path / "runs", tmp_path / "out"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = run_cli(capsys, *BENCH, "--root", str(root), "--out", str(out), *args)
    line = assert_one_line_error(r, *needles)
    assert "hunter2" not in line
    assert nothing_left(root) == [] and nothing_left(out) == [] and not (tmp_path / "q.db").exists()


# `study`: the same --db-wait rule, checked before the database or the root is touched
STUDY = ["study", "--method", "snip", "--n-trials", "2", "--budget", "1ep", "--no-progress"]
STUDY_CASES = [
    (["--db-wait", "-5"], ["--db-wait", "≥ 0", "'-5'"]),
    (["--db-wait", "5m"], ["--db-wait", "'5m'"]),
    (["--db-wait", "nan", "--storage", "sqlite:///{tmp}/s.db"], ["--db-wait", "'nan'"]),
    (["--db-wait", "-1", "--report"], ["--db-wait", "'-1'"]),
]


@pytest.mark.parametrize("args,needles", STUDY_CASES, ids=[" ".join(a) for a, _ in STUDY_CASES])
def test_bad_study_db_wait(tmp_path, capsys, args, needles):
    root = tmp_path / "runs"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert_one_line_error(run_cli(capsys, *STUDY, "--root", str(root), *args), *needles)
    assert nothing_left(root) == [] and not (tmp_path / "s.db").exists()


@pytest.mark.parametrize(
    "env,needles",
    [
        ({"WORLD_SIZE": "two", "RANK": "0"}, ["WORLD_SIZE='two'", "not an integer", "torchrun"]),
        ({"WORLD_SIZE": "2", "RANK": "5"}, ["WORLD_SIZE=2, RANK=5", "0 <= RANK < WORLD_SIZE"]),
    ],
)
def test_bad_torchrun_environment(tmp_path, capsys, monkeypatch, env, needles):
    """Variables torchrun (or a hand-written srun script) set wrongly: one line, before any rendezvous."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    root = tmp_path / "runs"
    r = run_cli(capsys, *FIND, "--root", str(root))
    assert_one_line_error(r, *needles)
    assert nothing_left(root) == []
