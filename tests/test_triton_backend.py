"""``--backend``: what ``auto`` picks, the self-check that guards it, and that the choice is recorded
but does not name the run (it changes how, not what, a run computes)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from nets import digits_hparams, one_thread  # noqa: F401  (one_thread: autouse fixture)

from ticketsearch.core.errors import ConfigError
from ticketsearch.sparse import KERNELS, Kernel, layers, resolve_backend, self_check
from ticketsearch.sparse.kernels import MASKED, find_kernel
from ticketsearch.sparse.layers import _CHECKED

TRITON = find_kernel(MASKED, "triton")
TRITON_HERE = TRITON.available(build=False) and TRITON.supports("cpu", torch.float32)


def test_auto_is_inplace_on_cpu_and_names_are_checked():
    assert resolve_backend("auto", "cpu") == "inplace"
    assert resolve_backend("reference", "cpu") == "reference"
    with pytest.raises(ConfigError, match=r"unknown backend 'tritn' \(choose from: auto, inplace, reference"):
        resolve_backend("tritn", "cpu")


def test_auto_on_cuda_needs_a_passing_self_check():
    """Where CUDA is missing the check fails (it cannot launch), so auto falls back to the default."""
    gated = layers.AUTO_TRITON_ON_CUDA
    want = "triton" if gated and torch.cuda.is_available() and TRITON.available(build=False) else "inplace"
    assert resolve_backend("auto", "cuda") == want
    if not torch.cuda.is_available():
        assert self_check("triton", "cuda") is not None  # the reason is kept, and the check runs once
        assert ("triton", "cuda") in _CHECKED


def test_auto_keeps_inplace_on_cuda_until_a_gpu_log_is_committed(monkeypatch):
    """``auto`` picks Triton on CUDA only behind AUTO_TRITON_ON_CUDA, and that switch is on only when a GPU
    run of tests/gpu is committed (a log whose pytest summary says passed, none failed)."""
    monkeypatch.setattr(layers, "self_check", lambda name, dev: None)  # as if Triton ran and agreed here
    fake = SimpleNamespace(
        name="triton", supports=lambda dev, dtype: True, available=lambda build=False: True
    )
    monkeypatch.setitem(layers._MASKED_KERNELS, "triton", fake)
    assert resolve_backend("auto", "cuda") == ("triton" if layers.AUTO_TRITON_ON_CUDA else "inplace")
    monkeypatch.setattr(layers, "AUTO_TRITON_ON_CUDA", False)
    assert resolve_backend("auto", "cuda") == "inplace"
    monkeypatch.setattr(layers, "AUTO_TRITON_ON_CUDA", True)
    assert resolve_backend("auto", "cuda") == "triton"
    monkeypatch.undo()
    logs = sorted((Path(__file__).resolve().parents[1] / "benchmarks/gpu_logs").glob("gpu_tests*.log"))
    passed = [p for p in logs if re.search(r"\d+ passed", p.read_text()) and " failed" not in p.read_text()]
    assert layers.AUTO_TRITON_ON_CUDA == bool(passed), (
        "AUTO_TRITON_ON_CUDA must be on exactly when a passing tests/gpu log from a GPU is committed"
    )


def test_self_check_catches_a_wrong_kernel():
    def off_by_a_bit(layer, x):
        """Reference output plus 1e-2: imports fine, computes wrong."""
        return find_kernel(MASKED, "reference").forward(layer, x) + 1e-2

    KERNELS.register_kernel(Kernel(name="off_by_a_bit", op=MASKED, description="wrong", forward=off_by_a_bit))
    try:
        reason = self_check("off_by_a_bit", "cpu")
        assert reason is not None and "disagrees with the reference" in reason
        assert self_check("reference", "cpu") is None
        assert self_check("inplace", "cpu") is None
    finally:
        KERNELS.unregister("masked/off_by_a_bit")


@pytest.mark.skipif(not TRITON_HERE, reason="needs Triton on CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize("name", ["triton", "triton_bits"])
def test_triton_kernels_pass_the_self_check(name):
    assert self_check(name, "cuda" if torch.cuda.is_available() else "cpu") is None


def test_backend_is_recorded_not_hashed(tmp_path):
    from ticketsearch.experiments.runner import RunOptions, run_find

    hp = digits_hparams(training=dict(optimizer="adam", lr=3e-3, batch_size=64, budget="1ep"), rounds=1)
    runs = {}
    for backend in ("reference", "inplace"):
        opts = RunOptions(root=tmp_path / backend, device="cpu", backend=backend, progress=False)
        runs[backend] = run_find(hp, seed=0, opts=opts)
    ref, inp = runs["reference"], runs["inplace"]
    assert ref.run_dir.name == inp.run_dir.name  # the same run identity
    for row_r, row_i in zip(ref.rows, inp.rows):
        res_r = json.loads((ref.run_dir / "replicate_0" / f"level_{row_r.level}" / "result.json").read_text())
        assert res_r["backend"] == "reference" and row_i.result["backend"] == "inplace"
        assert row_r.test_acc == pytest.approx(
            row_i.test_acc, abs=0.01
        )  # same computation, fp rounding aside
