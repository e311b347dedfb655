"""The CLI end to end on digits, and every bad input: one line on stderr, exit code 2, nothing half-written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ticketsearch", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


FAST = ["--dataset", "digits", "--budget", "2ep", "--no-progress", "--device", "cpu"]


def test_help_everywhere(capsys):
    from ticketsearch.cli import main

    for args in ([], ["find"], ["train"], ["list"]):
        with pytest.raises(SystemExit) as e:
            main([*args, "--help"])
        assert e.value.code == 0 and "usage" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["find", "--help"])
    assert "fraction of weights KEPT" in capsys.readouterr().out
    r = cli("--help")  # and once through a real interpreter: `python -m ticketsearch`
    assert r.returncode == 0 and "find" in r.stdout


def test_list(capsys):
    assert "lenet_300_100" in cli_inprocess(capsys, "list", "models").stdout
    ds = cli_inprocess(capsys, "list", "datasets").stdout
    assert "digits" in ds and "mnist" in ds
    methods = cli_inprocess(capsys, "list", "methods").stdout
    for m in ("imp", "snip", "grasp", "synflow", "magnitude", "random"):
        assert m in methods
    assert "built-in" in methods


def test_find_imp_table_and_train_mask(tmp_path):
    r = cli("find", "--method", "imp", "--rounds", "2", "--root", str(tmp_path), *FAST)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].split()[:5] == ["level", "density", "test", "acc", "es"]
    rows = [ln.split() for ln in lines[3:]]
    assert [row[0] for row in rows] == ["0", "1", "2"]
    assert float(rows[1][1]) == pytest.approx(0.8, abs=0.01)
    mask = rows[2][-1]
    assert Path(mask).is_file()
    t = cli(
        "train", "--mask", mask, "--root", str(tmp_path / "t"), "--budget", "2ep", "--no-progress", "--json"
    )
    assert t.returncode == 0, t.stderr
    assert json.loads(t.stdout)["rows"][0]["density"] == pytest.approx(float(rows[2][1]), abs=1e-4)


def test_sparsity_flag_equals_density(tmp_path):
    a = cli("find", "--method", "magnitude", "--sparsity", "0.75", "--json", "--root", str(tmp_path), *FAST)
    b = cli("find", "--method", "magnitude", "--density", "0.25", "--json", "--root", str(tmp_path), *FAST)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert json.loads(a.stdout)["run_dir"] == json.loads(b.stdout)["run_dir"]


def cli_inprocess(capsys, *args: str) -> subprocess.CompletedProcess:
    """The same entry point without a new interpreter (start-up dominates these short checks)."""
    from ticketsearch.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--method", "snp"], ["'snp'", "did you mean 'snip'"]),
        (["--model", "lenet300"], ["unknown model 'lenet300'", "lenet_300_100"]),
        (["--dataset", "mnits"], ["unknown dataset 'mnits'", "mnist"]),
        (["--density", "0"], ["density", "(0, 1]"]),
        (["--density", "1.5"], ["density", "1.5"]),
        (["--sparsity", "1"], ["sparsity", "[0, 1)"]),
        (["--budget", "3 epochs"], ["budget", "'3 epochs'"]),
        (["--optimizer", "rmsprop"], ["optimizer 'rmsprop'", "sgd"]),
        (["--device", "tpu"], ["device 'tpu'"]),
    ],
)
def test_bad_flags(tmp_path, capsys, args, needles):
    base = ["find", "--dataset", "digits", "--no-progress", "--root", str(tmp_path)]
    _one_line_error(cli_inprocess(capsys, *base, *args), *needles)
    assert not list(tmp_path.rglob("*.tmp"))


def test_missing_mnist_lists_where_it_looked(tmp_path, capsys):
    r = cli_inprocess(
        capsys,
        "find",
        "--dataset",
        "mnist",
        "--data-root",
        str(tmp_path / "empty"),
        "--root",
        str(tmp_path / "runs"),
        "--no-progress",
    )
    _one_line_error(r, "empty")


def test_unwritable_root(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_error(
        cli_inprocess(capsys, "find", "--root", str(blocker / "sub"), *FAST), "not writable", "--root"
    )


def test_mask_that_does_not_fit(tmp_path):
    r = cli("find", "--method", "magnitude", "--density", "0.5", "--json", "--root", str(tmp_path), *FAST)
    mask = json.loads(r.stdout)["rows"][-1]["mask"]
    bad = cli(
        "train", "--mask", mask, "--model", "lenet_300_100", "--root", str(tmp_path / "t"), "--no-progress"
    )
    _one_line_error(
        bad, "mask does not fit", "'layers.0.weight' has shape [128, 64] in the mask, [300, 64] in the model"
    )
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(Path(mask).read_bytes()[:40])
    _one_line_error(
        cli("train", "--mask", str(corrupt), "--root", str(tmp_path / "c")), "corrupt.safetensors"
    )


def test_nan_loss_keeps_earlier_levels(tmp_path, capsys):
    """A level that diverges after earlier levels finished leaves those levels intact, byte for byte."""
    import torch

    from ticketsearch.experiments.rundir import load_state, save_state

    args = ["find", "--method", "imp", "--rounds", "2", "--root", str(tmp_path), "--json", *FAST]
    first = cli_inprocess(capsys, *args)
    assert first.returncode == 0, first.stderr
    rep = Path(json.loads(first.stdout)["run_dir"]) / "replicate_0"
    import shutil

    shutil.rmtree(rep / "level_2")
    # level 2 restarts from init ⊙ mask: a NaN init makes exactly that level diverge
    init = load_state(rep / "init.safetensors")
    save_state(rep / "init.safetensors", {k: torch.full_like(v, float("nan")) for k, v in init.items()})
    before = {p: p.read_bytes() for p in rep.glob("level_[01]/**/*") if p.is_file()}
    r = cli_inprocess(capsys, *args)
    _one_line_error(r, "diverged", "--lr")
    assert before == {p: p.read_bytes() for p in rep.glob("level_[01]/**/*") if p.is_file()}
    assert (rep / "level_0" / "result.json").is_file() and (rep / "level_1" / "result.json").is_file()
    assert not (rep / "level_2" / "result.json").exists() and not list(tmp_path.rglob("*.tmp"))


def test_nan_loss_in_the_first_level_leaves_nothing(tmp_path):
    r = cli(
        "find",
        "--method",
        "imp",
        "--rounds",
        "1",
        "--optimizer",
        "sgd",
        "--lr",
        "1e12",
        "--root",
        str(tmp_path),
        *FAST,
    )
    _one_line_error(r, "diverged", "--lr")
    assert [p for p in tmp_path.rglob("*")] == []  # no started run directory either
