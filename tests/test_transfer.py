"""Transferred tickets: found on one dataset, trained (or evaluated) on another, in another process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ticketsearch.core import Mask
from ticketsearch.core.errors import DataError, MaskMismatchError
from ticketsearch.experiments.rundir import load_state

REPO = Path(__file__).resolve().parents[1]
FAST = ["--no-progress", "--device", "cpu", "--json"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ticketsearch", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def digits_ticket(tmp_path_factory) -> dict:
    """An IMP ticket found on digits resampled to MNIST's 28×28 (two levels, seconds)."""
    root = tmp_path_factory.mktemp("src")
    r = cli(
        "find",
        "--method",
        "imp",
        "--rounds",
        "2",
        "--budget",
        "2ep",
        "--resize",
        "28",
        "--root",
        str(root),
        *FAST,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _transfer(src: str, root: Path, data_root: Path, *extra: str) -> subprocess.CompletedProcess:
    return cli(
        "transfer", *src.split(), "--dataset", "mnist", "--data-root", str(data_root), "--budget", "60it",
        "--eval-every", "30it", "--root", str(root), *FAST, *extra,
    )  # fmt: skip


def test_transfer_from_source_init_bit_for_bit(tmp_path, digits_ticket, shared_datasets):
    mask_path = digits_ticket["rows"][-1]["mask"]
    r = _transfer(f"--mask {mask_path}", tmp_path, shared_datasets)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    row = out["rows"][0]
    assert row["iterations"] == 60 and 0.1 < row["test_acc"] <= 1.0
    # the transferred ticket is the source mask, and starts from the source's stored init, bit for bit
    src = Mask.load(mask_path)
    dst = Mask.load(row["mask"])
    assert dst.equals(src) and dst.metadata["dataset"] == "mnist"
    level = Path(row["mask"]).parent
    init = load_state(level / "init.safetensors")
    source_init = load_state(Path(mask_path).parent / src.metadata["init"])
    assert init.keys() == source_init.keys() and all(torch.equal(init[k], source_init[k]) for k in init)
    # the source's metadata and own result travel with the run
    record = json.loads((Path(out["run_dir"]) / "source.json").read_text())
    assert record == row["source"]
    assert (record["model"], record["dataset"], record["method"]) == ("mlp_digits", "digits", "imp")
    assert record["hparams_hash"] == src.metadata["hparams_hash"] and record["resize"] == 28
    assert record["result"]["test_acc"] == digits_ticket["rows"][-1]["test_acc"]
    # --from-run picks the same (last) level: the same run, found in the cache
    again = _transfer(f"--from-run {digits_ticket['run_dir']}", tmp_path, shared_datasets)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["run_dir"] == out["run_dir"]


def test_transfer_fresh_init_is_another_run(tmp_path, digits_ticket, shared_datasets):
    mask_path = digits_ticket["rows"][-1]["mask"]
    a = json.loads(_transfer(f"--mask {mask_path}", tmp_path, shared_datasets).stdout)
    r = _transfer(f"--mask {mask_path}", tmp_path, shared_datasets, "--init-from", "fresh")
    assert r.returncode == 0, r.stderr
    b = json.loads(r.stdout)
    assert a["run_dir"] != b["run_dir"]
    ia = load_state(Path(a["rows"][0]["mask"]).parent / "init.safetensors")
    ib = load_state(Path(b["rows"][0]["mask"]).parent / "init.safetensors")
    assert not torch.equal(ia["layers.0.weight"], ib["layers.0.weight"])


def test_supermask_transfers_untrained_then_trained(tmp_path, shared_datasets):
    r = cli(
        "find",
        "--method",
        "supermask",
        "--density",
        "0.5",
        "--budget",
        "2ep",
        "--resize",
        "28",
        "--root",
        str(tmp_path),
        *FAST,
    )
    assert r.returncode == 0, r.stderr
    mask = json.loads(r.stdout)["rows"][-1]["mask"]
    t = _transfer(f"--mask {mask}", tmp_path, shared_datasets, "--then-train")
    assert t.returncode == 0, t.stderr
    row = json.loads(t.stdout)["rows"][0]
    assert row["weights_trained"] is False and 0 < row["test_acc"] < 1
    assert row["then_train"]["iterations"] == 60
    # the untrained accuracy is that of the source's frozen weights under the mask, on the target's test set
    from ticketsearch.data import load_dataset
    from ticketsearch.models import create_model
    from ticketsearch.sparse import apply_mask
    from ticketsearch.training import evaluate

    model = create_model("mlp_digits", (1, 28, 28), 10)
    model.load_state_dict(load_state(Path(mask).parent / "init.safetensors"))
    apply_mask(model, Mask.load(mask))
    data = load_dataset("mnist", root=shared_datasets, seed=0)
    assert row["test_acc"] == evaluate(model, data.x_test, data.y_test)["acc"]


def test_a_mask_that_does_not_fit_names_layer_shapes_and_option(tmp_path, capsys):
    from ticketsearch.cli import main

    r = cli("find", "--method", "magnitude", "--budget", "1ep", "--root", str(tmp_path / "src"), *FAST)
    mask = json.loads(r.stdout)["rows"][-1]["mask"]
    root = tmp_path / "runs"
    code = main(["transfer", "--mask", mask, "--dataset", "mnist1d", "--root", str(root), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: mask does not fit"), err
    assert "'layers.0.weight' has shape [128, 64] in the mask, [128, 40] in the model" in err
    assert not root.exists() or not any(root.rglob("*"))


def test_digits_native_to_mnist_suggests_resize(tmp_path, shared_datasets, capsys):
    from ticketsearch.cli import main

    r = cli("find", "--method", "magnitude", "--budget", "1ep", "--root", str(tmp_path / "src"), *FAST)
    mask = json.loads(r.stdout)["rows"][-1]["mask"]
    args = ["transfer", "--mask", mask, "--dataset", "mnist", "--data-root", str(shared_datasets)]
    code = main([*args, "--root", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "transfer with --resize 8, or find the source with --resize 28" in err, err


@pytest.mark.parametrize("lie", ["model", "shapes", "density", "layer_density", "not_safetensors"])
def test_a_lying_or_broken_mask_file_is_refused(tmp_path, lie, capsys):
    from ticketsearch.cli import main

    r = cli("find", "--method", "magnitude", "--budget", "1ep", "--root", str(tmp_path / "src"), *FAST)
    mask = Path(json.loads(r.stdout)["rows"][-1]["mask"])
    side = mask.with_suffix(".json")
    meta = json.loads(side.read_text())
    if lie == "model":
        meta["model"] = "lenet_300_100"
    elif lie == "shapes":
        meta["shapes"]["fc.weight"] = [10, 300]
    elif lie == "density":
        meta["density"] = 0.01
    elif lie == "layer_density":
        meta["layer_density"]["fc.weight"] = 1.0
    else:
        mask.write_bytes(b"not a safetensors file at all")
    side.write_text(json.dumps(meta))
    with pytest.raises(DataError):
        Mask.load(mask)
    root = tmp_path / "runs"
    code = main(
        ["transfer", "--mask", str(mask), "--dataset", "digits", "--root", str(root), "--no-progress"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert str(mask.name) in err
    assert not root.exists()


def test_another_class_count_gets_a_new_dense_output_layer():
    """The adapter keeps every hidden layer's mask and init; the output layer is the target's own."""
    from ticketsearch.core import select
    from ticketsearch.core.hparams import RunHparams
    from ticketsearch.models import create_model
    from ticketsearch.sparse import prunable_parameters, prunable_shapes
    from ticketsearch.transfer import adapt_to_target

    torch.manual_seed(0)
    src_model = create_model("mlp_digits", (1, 8, 8), 10)
    mask = select({n: torch.rand(p.shape) for n, p in prunable_parameters(src_model).items()}, 0.3)
    src_state = {k: v.clone() for k, v in src_model.state_dict().items()}
    target = create_model("mlp_digits", (1, 8, 8), 5)
    run = SimpleNamespace(
        shapes=prunable_shapes(target),
        model=target,
        hp=RunHparams(),
        data=SimpleNamespace(input_shape=(1, 8, 8)),
    )
    new_mask, state, notes = adapt_to_target(mask, run, src_state)
    assert new_mask["fc.weight"].shape == target.fc.weight.shape and bool(new_mask["fc.weight"].all())
    assert target.fc.weight.shape[0] == 5
    for n in ("layers.0.weight", "layers.1.weight"):
        assert torch.equal(new_mask[n], mask[n]) and torch.equal(state[n], src_state[n])
    assert torch.equal(state["fc.weight"], target.state_dict()["fc.weight"])
    assert torch.equal(state["fc.bias"], target.state_dict()["fc.bias"])
    assert "10 classes, the target 5" in notes["output_layer"]
    # a hidden layer that differs is refused, naming it
    other = create_model("mlp_digits", (1, 28, 28), 10)
    run.shapes, run.model = prunable_shapes(other), other
    with pytest.raises(MaskMismatchError, match="layers.0.weight"):
        adapt_to_target(mask, run, src_state)


def test_rewind_iter_starts_from_the_sources_rewind_point(tmp_path, shared_datasets, capsys):
    from ticketsearch.cli import main

    r = cli("find", "--method", "imp", "--rounds", "1", "--budget", "2ep", "--rewind-iter", "20", "--resize", "28", "--root", str(tmp_path / "src"), *FAST)  # fmt: skip
    assert r.returncode == 0, r.stderr
    mask = json.loads(r.stdout)["rows"][-1]["mask"]
    t = _transfer(f"--mask {mask}", tmp_path, shared_datasets, "--rewind-iter", "20")
    assert t.returncode == 0, t.stderr
    start = load_state(Path(json.loads(t.stdout)["rows"][0]["mask"]).parent / "init.safetensors")
    rewind = load_state(Path(mask).parents[1] / "rewind.safetensors")
    assert all(torch.equal(start[k], rewind[k]) for k in rewind)
    base = [
        "transfer",
        "--mask",
        mask,
        "--dataset",
        "digits",
        "--resize",
        "28",
        "--root",
        str(tmp_path / "x"),
    ]
    for extra, needle in [(["--rewind-iter", "30"], "stored its rewind point at 20it"), (["--rewind-iter", "20", "--init-from", "fresh"], "--init-from source")]:  # fmt: skip
        code = main([*base, *extra, "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and err.count("\n") == 1, err
