"""Ticket export for small devices: file formats, verification, the sparse CPU path, fine-tuning, CLI.

Oracles: the dense masked model (``create_model`` + ``apply_mask``, the project's reference) for every
output; the mask and the fp32/fp16-rounded weights for every round trip; ``torch.optim``-free counts of
kept weights for the optimizer state. Bad files go through ``ticketsearch.cli.main`` and must give one
``error:`` line, exit code 2, and no output file.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clitools import assert_one_line_error, run_cli

from ticketsearch.cli import main
from ticketsearch.core import select
from ticketsearch.core.errors import ConfigError, DataError
from ticketsearch.core.hparams import TrainingHparams
from ticketsearch.core.mask import Mask
from ticketsearch.export import (
    FORMATS,
    SparseLinear,
    export_ticket,
    finetune,
    kept_model,
    load_ticket,
    path_summary,
    read_ticket,
)
from ticketsearch.export.container import HEADER_KEY, checksum
from ticketsearch.export.csr import narrowest_uint
from ticketsearch.export.inference import BATCHES
from ticketsearch.models import create_model
from ticketsearch.sparse import apply_mask, prunable_parameters

HAS_ONNX = (
    importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("onnxruntime") is not None
)
SAFE_FORMATS = [f for f in FORMATS if f != "onnx"]


# -- helpers ---------------------------------------------------------------------------------------------
def make_ticket(model: str, shape: tuple[int, ...], classes: int, density: float, *, seed: int = 0):
    """A trained-looking masked model (random weights, a random layerwise mask) and its mask."""
    torch.manual_seed(seed)
    m = create_model(model, shape, classes)
    g = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(p.shape, generator=g) for n, p in prunable_parameters(m).items()}
    mask = select(scores, density, scope="layerwise")
    with torch.no_grad():  # non-trivial biases and BatchNorm statistics, so dense tensors are exercised too
        for name, t in m.state_dict().items():
            if t.is_floating_point() and name not in mask:
                t.copy_(
                    torch.rand(t.shape, generator=g) + 0.5
                    if "var" in name
                    else torch.randn(t.shape, generator=g)
                )
    apply_mask(m, mask)
    meta = {"model": model, "input_shape": list(shape), "num_classes": classes, "source": {"run": "test"}}
    return m.eval(), mask, meta


def dense_oracle(m: torch.nn.Module, mask: Mask, model: str, shape, classes, dtype: str) -> torch.nn.Module:
    """The dense masked model, with weights rounded to the stored dtype."""
    ref = create_model(model, shape, classes)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    if dtype == "fp16":
        state = {k: v.half().float() if v.is_floating_point() else v for k, v in state.items()}
    ref.load_state_dict(state)
    return apply_mask(ref, mask).eval()


def rewrite(path: Path, edit, *, fix_checksum: bool) -> None:
    """Edit a ticket's header (and tensors) in place; optionally recompute its checksum like a liar would."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), framework="np") as f:
        header = json.loads(f.metadata()[HEADER_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    edit(header, tensors)
    if fix_checksum:
        header["sha256"] = checksum(header, tensors)
    save_file(tensors, str(path), metadata={HEADER_KEY: json.dumps(header)})


@pytest.fixture(scope="module")
def lenet5_ticket():
    return make_ticket("lenet5", (1, 16, 16), 10, 0.1)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A real `find` run on digits (seconds): a run directory to export from."""
    root = tmp_path_factory.mktemp("runs")
    code = main(
        ["find", "--method", "random", "--dataset", "digits", "--density", "0.1", "--budget", "1ep"]
        + ["--root", str(root), "--no-progress"]
    )
    assert code == 0
    (run,) = root.glob("random_*")
    return run


# -- round trips -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("fmt", SAFE_FORMATS)
def test_round_trip_weights_and_outputs(tmp_path, lenet5_ticket, fmt, dtype):
    m, mask, meta = lenet5_ticket
    res = export_ticket(
        m.state_dict(), mask, format=fmt, dtype=dtype, out=tmp_path / "t.ticket", metadata=meta
    )
    t = read_ticket(res.path)
    assert t.header["encoding"] == fmt and t.dtype == dtype and t.model_name == "lenet5"
    assert t.input_shape == (1, 16, 16) and t.num_classes == 10 and t.header["source"] == {"run": "test"}
    assert abs(t.density - mask.density) < 1e-12 and t.num_kept == mask.num_kept
    tdt = torch.float32 if dtype == "fp32" else torch.float16
    for name, tensor in m.state_dict().items():
        if name in mask:
            assert torch.equal(t.masks[name], mask[name])
            assert t.values[name].dtype == tdt
            assert torch.equal(t.weight(name), (tensor * mask[name]).to(tdt).float())
        else:
            want = tensor.to(tdt) if tensor.is_floating_point() else tensor
            assert torch.equal(t.dense[name], want), name
    ref = dense_oracle(m, mask, "lenet5", (1, 16, 16), 10, dtype)
    x = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(x)
        for policy in ("auto", "sparse", "dense"):
            got = load_ticket(res.path, policy=policy)(x)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        if dtype == "fp16":  # and close to the fp32 model: fp16 rounding only
            torch.testing.assert_close(load_ticket(res.path)(x), m(x), rtol=2e-2, atol=2e-2)


def test_batchnorm_and_non_prunable_tensors_round_trip(tmp_path):
    m, mask, meta = make_ticket("resnet20", (3, 8, 8), 4, 0.05)
    res = export_ticket(
        m.state_dict(), mask, format="auto", dtype="fp16", out=tmp_path / "r.ticket", metadata=meta
    )
    t = read_ticket(res.path)
    assert any("running_var" in n for n in t.dense) and any("num_batches_tracked" in n for n in t.dense)
    ref = dense_oracle(m, mask, "resnet20", (3, 8, 8), 4, "fp16")
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(load_ticket(res.path, policy="sparse")(x), ref(x), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAS_ONNX, reason="onnx and onnxruntime not installed")
def test_onnx_export_runs_in_onnxruntime_and_is_verified(tmp_path, lenet5_ticket):
    import onnxruntime as ort

    from ticketsearch.export import verify_onnx

    m, mask, meta = lenet5_ticket
    res = export_ticket(m.state_dict(), mask, format="onnx", out=tmp_path / "t.onnx", metadata=meta)
    header = verify_onnx(res.path)
    assert header["model"] == "lenet5" and header["num_kept"] == mask.num_kept
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 1, 16, 16)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(
            got, dense_oracle(m, mask, "lenet5", (1, 16, 16), 10, "fp32")(x).numpy(), atol=1e-4
        )
    data = bytearray(res.path.read_bytes())
    data[-200] ^= 0xFF  # inside the graph's tensors or metadata
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError):
        verify_onnx(bad)
    with pytest.raises(ConfigError, match="fp32"):
        export_ticket(
            m.state_dict(), mask, format="onnx", dtype="fp16", out=tmp_path / "h.onnx", metadata=meta
        )
    with pytest.raises(ConfigError, match="ONNX"):
        load_ticket(res.path)


def test_sizes_shrink_with_density_and_dtype(tmp_path):
    sizes = {}
    for d in (0.5, 0.05):
        m, mask, meta = make_ticket("lenet_300_100", (1, 28, 28), 10, d)
        for fmt in ("dense", "bitmask", "csr", "auto"):
            for dtype in ("fp32", "fp16"):
                r = export_ticket(
                    m.state_dict(),
                    mask,
                    format=fmt,
                    dtype=dtype,
                    out=tmp_path / f"{fmt}{dtype}{d}",
                    metadata=meta,
                )
                sizes[d, fmt, dtype] = r.ratio
    for d in (0.5, 0.05):
        for dtype in ("fp32", "fp16"):
            assert sizes[d, "auto", dtype] <= min(sizes[d, "bitmask", dtype], sizes[d, "csr", dtype]) * 1.001
            assert sizes[d, "auto", dtype] < sizes[d, "dense", dtype]
    assert sizes[0.05, "auto", "fp32"] <= 0.08 and sizes[0.05, "auto", "fp16"] <= 0.04  # the targets
    assert sizes[0.5, "bitmask", "fp32"] < sizes[0.5, "csr", "fp32"]  # dense-ish: a bitmask beats indices


@pytest.mark.parametrize(
    "coding,counts,indices,needle",
    [
        ("absolute", [2, 0], [1, 1], "increasing"),  # a repeated column
        ("absolute", [1, 1], [0, 5], "outside"),  # beyond the 3 columns
        ("delta", [2, 0], [1, 0], "gap of 0"),
        ("delta", [1, 0], [0, 1], "add up"),  # counts say 1, two stored
        ("delta", [4, 0], [0, 1, 1, 1], "at most 3"),  # more kept in a row than it has
        ("sideways", [1, 0], [0], "coding"),
    ],
)
def test_crafted_csr_indices_are_refused(coding, counts, indices, needle):
    from ticketsearch.export import csr

    stored = {"row_counts": np.array(counts, np.uint8), "indices": np.array(indices, np.uint8)}
    blobs = {k: {"dtype": "uint8", "shape": [len(v)], "codec": "raw"} for k, v in stored.items()}
    with pytest.raises(DataError, match=needle):
        csr.decode_index(stored, {"index_coding": coding, "blobs": blobs}, (2, 3), what="t")
    good = {"row_counts": np.array([2, 1], np.uint8), "indices": np.array([0, 2, 1], np.uint8)}
    gblobs = {k: {"dtype": "uint8", "shape": [len(v)], "codec": "raw"} for k, v in good.items()}
    got = csr.decode_index(good, {"index_coding": "delta", "blobs": gblobs}, (2, 3), what="t")
    assert got.tolist() == [True, False, True, False, True, False]  # row 0: columns 0, 0+2; row 1: column 1


def test_narrowest_index_types():
    assert narrowest_uint(255) == np.uint8 and narrowest_uint(256) == np.uint16
    assert narrowest_uint(65535) == np.uint16 and narrowest_uint(65536) == np.uint32


# -- the sparse CPU path ---------------------------------------------------------------------------------
@pytest.mark.parametrize("density", [0.001, 0.01, 0.05, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("shape", [(7, 13), (1, 1), (33, 1), (1, 257), (300, 784), (10, 100)])
def test_sparse_linear_equals_dense_masked(shape, density):
    g = torch.Generator().manual_seed(hash((shape, density)) % 2**31)
    w = torch.randn(shape, generator=g)
    n = w.numel()
    keep = torch.zeros(n, dtype=torch.bool)
    keep[torch.randperm(n, generator=g)[: max(0, math.floor(density * n + 0.5))]] = True
    w = w * keep.reshape(shape)
    b = torch.randn(shape[0], generator=g)
    for bias in (b, None):
        layers = [SparseLinear(w, bias, {k: p for k in BATCHES}) for p in ("csr", "dense")]
        for rows in (1, 2, 3, 8, 23, 64, 100):
            x = torch.randn(rows, shape[1], generator=g)
            want = F.linear(x, w, bias)
            for layer in layers:  # fp32 sums of up to 784 products: summation order moves the last bits
                torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=2e-6 * shape[1])
        x3 = torch.randn(2, 5, shape[1], generator=g)
        torch.testing.assert_close(layers[0](x3), F.linear(x3, w, bias), rtol=1e-5, atol=2e-6 * shape[1])


@pytest.mark.parametrize("density", [0.001, 0.02, 0.3, 1.0])
def test_loaded_model_equals_dense_masked_model_odd_shapes(tmp_path, density):
    """mlp_digits on (1, 5, 7) inputs with 3 classes: odd layer shapes, every policy, traced and eager."""
    m, mask, meta = make_ticket("mlp_digits", (1, 5, 7), 3, density)
    res = export_ticket(m.state_dict(), mask, format="auto", out=tmp_path / "o.ticket", metadata=meta)
    ref = dense_oracle(m, mask, "mlp_digits", (1, 5, 7), 3, "fp32")
    with torch.no_grad():
        for policy in ("auto", "threshold", "sparse", "dense"):
            for trace in (True, False):
                model = load_ticket(res.path, policy=policy, trace=trace)
                for rows in (1, 4, 64):
                    x = torch.randn(rows, 1, 5, 7)
                    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    assert set(path_summary(load_ticket(res.path, policy="sparse"))) == {"layers.0", "layers.1", "fc"}


def test_load_leaves_the_global_rng_alone(tmp_path, lenet5_ticket):
    m, mask, meta = lenet5_ticket
    res = export_ticket(m.state_dict(), mask, format="csr", out=tmp_path / "t", metadata=meta)
    torch.manual_seed(123)
    a = torch.rand(3)
    torch.manual_seed(123)
    load_ticket(res.path)
    assert torch.equal(torch.rand(3), a)


# -- fine-tuning -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_finetune_trains_only_kept_weights_with_kept_size_state(tmp_path, optimizer):
    m, mask, meta = make_ticket("mlp_digits", (1, 8, 8), 10, 0.2)
    src = export_ticket(
        m.state_dict(), mask, format="auto", dtype="fp32", out=tmp_path / "in", metadata=meta
    ).path
    hp = TrainingHparams(
        optimizer=optimizer,
        lr=3e-3 if optimizer == "adam" else 0.05,
        momentum=0.9 if optimizer == "sgd" else 0.0,
        batch_size=32,
        budget="30it",
    )
    res = finetune(src, "digits", out=tmp_path / "out", hparams=hp)
    before, after = read_ticket(src), read_ticket(tmp_path / "out")
    changed = 0
    for name in mask:
        assert torch.equal(after.masks[name], mask[name])  # same positions kept
        w = after.weight(name)
        assert bool((w[~mask[name]] == 0).all())  # every pruned weight exactly zero
        changed += int((after.values[name] != before.values[name]).sum())
    assert changed > 0.5 * mask.num_kept  # the kept weights trained (digits has always-zero pixels)
    biases = sum(t.numel() for n, t in m.state_dict().items() if n not in mask)
    assert res.kept_weights == mask.num_kept and res.trainable_numel == mask.num_kept + biases
    per_param = 2 if optimizer == "adam" else 1  # Adam: exp_avg, exp_avg_sq; SGD: the momentum buffer
    assert res.optimizer_state_numel == per_param * (mask.num_kept + biases)
    assert res.optimizer_state_numel < per_param * mask.num_total / 4  # a dense optimizer's is ~5× larger
    assert after.header["source"]["finetuned_from_sha256"] == before.header["sha256"]
    assert math.isfinite(res.test_acc_after) and res.iterations == 30


def test_kept_model_parameters_are_the_kept_values(lenet5_ticket, tmp_path):
    m, mask, meta = lenet5_ticket
    t = read_ticket(
        export_ticket(m.state_dict(), mask, format="bitmask", out=tmp_path / "t", metadata=meta).path
    )
    km = kept_model(t).eval()
    sizes = {n: p.numel() for n, p in km.named_parameters() if n.endswith(".kept")}
    assert sizes == {n.replace(".weight", ".kept"): int(mask[n].sum()) for n in mask}
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(km(x), dense_oracle(m, mask, "lenet5", (1, 16, 16), 10, "fp32")(x))


def test_finetune_refuses_a_dataset_of_another_shape(tmp_path, lenet5_ticket):
    m, mask, meta = lenet5_ticket
    src = export_ticket(m.state_dict(), mask, format="csr", out=tmp_path / "t", metadata=meta).path
    with pytest.raises(ConfigError, match="resize 16"):
        finetune(src, "digits", out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


# -- bad input through the CLI ---------------------------------------------------------------------------
def _flip_last_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x01
    p.write_bytes(bytes(data))


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _shape_lie(h, t):
    h["layers"]["fc.weight"]["shape"] = [10, 499]


def _density_lie(h, t):
    h["layers"]["fc.weight"]["density"] = 0.5


def _total_density_lie(h, t):
    h["density"] = 0.5


def _kept_lie(h, t):
    h["layers"]["conv1.weight"]["num_kept"] += 1


def _classes_lie(h, t):
    h["num_classes"] = 11


def _input_lie(h, t):
    h["input_shape"] = [3, 16, 16]


def _bomb(h, t):
    rec = h["layers"]["fc1.weight"]["blobs"]["values"]
    rec["shape"] = [rec["shape"][0] * 1000]


def _extra_tensor(h, t):
    t["payload"] = np.zeros(3, dtype=np.uint8)


BAD_FILES = [
    ("checksum", lambda p: _flip_last_byte(p), ["checksum"]),
    ("truncated", lambda p: _truncate(p), ["truncated"]),
    ("empty", lambda p: p.write_bytes(b""), ["truncated"]),
    ("header edited", lambda p: rewrite(p, _density_lie, fix_checksum=False), ["checksum"]),
    ("shape lie", lambda p: rewrite(p, _shape_lie, fix_checksum=True), ["fc.weight", "499"]),
    ("layer density lie", lambda p: rewrite(p, _density_lie, fix_checksum=True), ["density 0.5"]),
    ("total density lie", lambda p: rewrite(p, _total_density_lie, fix_checksum=True), ["density 0.5"]),
    ("kept count lie", lambda p: rewrite(p, _kept_lie, fix_checksum=True), ["conv1.weight", "kept"]),
    ("class count lie", lambda p: rewrite(p, _classes_lie, fix_checksum=True), ["fc.weight", "11 classes"]),
    ("input shape lie", lambda p: rewrite(p, _input_lie, fix_checksum=True), ["conv1.weight", "(3, 16, 16)"]),
    ("decompression bomb", lambda p: rewrite(p, _bomb, fix_checksum=True), ["fc1.weight"]),
    ("undeclared tensor", lambda p: rewrite(p, _extra_tensor, fix_checksum=True), ["payload"]),
]


@pytest.mark.parametrize("case,damage,needles", BAD_FILES, ids=[c for c, _, _ in BAD_FILES])
def test_a_damaged_or_lying_ticket_is_refused(tmp_path, capsys, lenet5_ticket, case, damage, needles):
    m, mask, meta = lenet5_ticket
    fmt = "csr" if case == "decompression bomb" else "auto"
    path = export_ticket(m.state_dict(), mask, format=fmt, out=tmp_path / "t.ticket", metadata=meta).path
    damage(path)
    out = tmp_path / "new.ticket"
    r = run_cli(capsys, "finetune", "--ticket", str(path), "--dataset", "digits", "--out", str(out))
    assert_one_line_error(r, str(path), *needles)
    assert not out.exists()
    with pytest.raises(DataError):
        load_ticket(path)


def test_a_mask_file_is_not_a_ticket(tmp_path, capsys, lenet5_ticket):
    _, mask, _ = lenet5_ticket
    p = mask.save(tmp_path / "mask.safetensors", model="lenet5")
    r = run_cli(capsys, "finetune", "--ticket", str(p), "--dataset", "digits", "--out", str(tmp_path / "o"))
    assert_one_line_error(r, "not a ticket")


def test_fp16_overflow_is_refused(tmp_path, lenet5_ticket):
    m, mask, meta = lenet5_ticket
    state = {k: v.clone() for k, v in m.state_dict().items()}
    state["fc.weight"][mask["fc.weight"]] = 1e6
    with pytest.raises(ConfigError, match="fp16"):
        export_ticket(state, mask, format="auto", dtype="fp16", out=tmp_path / "x", metadata=meta)
    assert not (tmp_path / "x").exists()


# -- the commands ----------------------------------------------------------------------------------------
def test_export_command_from_a_run_then_load_and_finetune(tmp_path, capsys, digits_run):
    level = next(digits_run.glob("replicate_0/level_*"))
    ref = create_model("mlp_digits", (1, 8, 8), 10)
    from ticketsearch.experiments.rundir import load_state

    ref.load_state_dict(load_state(level / "model_final.safetensors"))
    apply_mask(ref, Mask.load(level / "mask.safetensors")).eval()
    x = torch.randn(7, 1, 8, 8)
    for fmt in ("auto", "dense", "bitmask", "csr") + (("onnx",) if HAS_ONNX else ()):
        out = tmp_path / f"t.{fmt}"
        r = run_cli(capsys, "export", "--run", str(digits_run), "--format", fmt, "--out", str(out), "--json")
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout)
        assert summary["bytes"] == out.stat().st_size and summary["format"] == fmt
        if fmt != "onnx":
            t = read_ticket(out)
            assert t.header["source"]["run"] == str(digits_run.resolve())
            assert t.header["source"]["level"] == int(level.name.split("_")[1])
            with torch.no_grad():
                torch.testing.assert_close(load_ticket(out)(x), ref(x), rtol=1e-5, atol=1e-5)
    r = run_cli(
        capsys,
        "export",
        "--mask",
        str(level / "mask.safetensors"),
        "--weights",
        str(level / "model_final.safetensors"),
        "--format",
        "csr",
        "--dtype",
        "fp16",
        "--out",
        str(tmp_path / "m"),
    )
    assert r.returncode == 0 and "wrote" in r.stdout, r.stderr
    r = run_cli(
        capsys,
        "finetune",
        "--ticket",
        str(tmp_path / "t.auto"),
        "--dataset",
        "digits",
        "--budget",
        "20it",
        "--out",
        str(tmp_path / "ft"),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["iterations"] == 20 and read_ticket(tmp_path / "ft").dtype == "fp32"


def test_export_command_bad_input(tmp_path, capsys, digits_run):
    level = next(digits_run.glob("replicate_0/level_*"))
    mask, weights = str(level / "mask.safetensors"), str(level / "model_final.safetensors")
    out = tmp_path / "never"
    cases = [
        (["--run", str(digits_run), "--weights", weights, "--format", "auto"], ["--weights", "--mask"]),
        (["--mask", mask, "--format", "auto"], ["--weights"]),
        (["--mask", mask, "--weights", weights, "--level", "1", "--format", "auto"], ["--level"]),
        (["--run", str(tmp_path / "nope"), "--format", "auto"], ["nope"]),
        (["--run", str(digits_run), "--level", "7", "--format", "auto"], ["level 7"]),
        (["--run", mask, "--format", "auto"], ["is a file"]),
        (["--mask", mask, "--weights", str(tmp_path / "none.st"), "--format", "auto"], ["none.st"]),
        (["--mask", mask, "--weights", mask, "--format", "auto"], ["weights do not fit"]),
        (["--run", str(digits_run), "--format", "zip"], ["zip"]),
        (["--run", str(digits_run), "--format", "auto", "--dtype", "int8"], ["int8"]),
    ]
    if HAS_ONNX:
        cases.append((["--run", str(digits_run), "--format", "onnx", "--dtype", "fp16"], ["fp32"]))
    for args, needles in cases:
        r = run_cli(capsys, "export", *args, "--out", str(out))
        assert_one_line_error(r, *needles)
        assert not out.exists(), args
