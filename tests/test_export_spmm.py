"""The compiled sparse inference kernels (``sparse/kernels/compiled_spmm``) and how ``load_ticket`` uses them.

Oracles: ``F.linear`` / ``F.conv2d`` on the zero-filled dense weight (then ``relu``), and the dense masked
model (``create_model`` + ``apply_mask``) for whole tickets. The path choice is checked against hand-fed
timings (the rule, not the machine's speed), and the fallback without the extension in a process where
``TICKETSEARCH_NO_EXT=1``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from nets import one_thread  # noqa: F401  (autouse fixture)

from ticketsearch.core import select
from ticketsearch.core.errors import ConfigError
from ticketsearch.export import export_ticket, load_ticket, path_summary
from ticketsearch.export import inference as inf
from ticketsearch.models import create_model
from ticketsearch.sparse import apply_mask, prunable_parameters
from ticketsearch.sparse.kernels import KERNELS, compiled_spmm, kernels
from ticketsearch.sparse.kernels.base import SPMM

REASON = compiled_spmm.spmm_unavailable_reason(build=True)
needs_ext = pytest.mark.skipif(REASON is not None, reason=f"compiled spmm kernel unavailable: {REASON}")
DENSITIES = [0.001, 0.01, 0.05, 0.2, 0.5, 1.0]


def pruned(shape, density: float, g: torch.Generator) -> torch.Tensor:
    """A random weight with exactly round(density · numel) entries kept (at least none, at most all)."""
    w = torch.randn(shape, generator=g)
    n = w.numel()
    keep = torch.zeros(n, dtype=torch.bool)
    keep[torch.randperm(n, generator=g)[: math.floor(density * n + 0.5)]] = True
    return w * keep.reshape(shape)


def tol(fan_in: int) -> dict[str, float]:
    # fp32 sums of up to fan_in products in another order than MKL/oneDNN: the last bits move
    return {"rtol": 1e-5, "atol": 3e-6 * max(1, fan_in)}


# -- the kernels against F.linear / F.conv2d -------------------------------------------------------------
@needs_ext
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (33, 1), (1, 257), (300, 784), (10, 100), (70, 65)])
def test_linear_equals_dense(shape, density):
    g = torch.Generator().manual_seed(hash((shape, density)) % 2**31)
    w = pruned(shape, density, g)
    b = torch.randn(shape[0], generator=g)
    packed = compiled_spmm.to_csr(w)
    assert packed.nnz == int((w != 0).sum())
    for bias in (b, None):
        for relu in (False, True):
            layer = compiled_spmm.linear_chain([packed], [bias], [relu])
            for rows in (0, 1, 2, 3, 8, 9, 17, 33, 64, 65, 100):
                x = torch.randn(rows, shape[1], generator=g)
                want = F.linear(x, w, bias)
                want = want.relu() if relu else want
                got = layer.forward(x)
                assert got.shape == want.shape
                torch.testing.assert_close(got, want, **tol(shape[1]))


@needs_ext
def test_linear_takes_non_contiguous_input_and_keeps_nan():
    g = torch.Generator().manual_seed(1)
    w = pruned((5, 9), 0.5, g)
    layer = compiled_spmm.linear_chain([compiled_spmm.to_csr(w)], [None], [True])
    x = torch.randn(9, 4, generator=g).t()  # (4, 9), not contiguous
    torch.testing.assert_close(layer.forward(x), F.linear(x, w).relu(), **tol(9))
    row = w[w.abs().sum(1) > 0].shape[0]
    assert row > 0
    x = torch.full((1, 9), float("nan"))
    y = layer.forward(x)  # relu(NaN) is NaN, as torch.relu: a NaN input is not hidden
    assert torch.isnan(y[0, (w != 0).any(1)]).all()


@needs_ext
@pytest.mark.parametrize("density", [0.001, 0.05, 0.3, 1.0])
def test_chain_equals_layer_by_layer(density):
    g = torch.Generator().manual_seed(int(density * 1000))
    widths = [37, 300, 1, 100, 10]
    ws = [pruned((o, i), density, g) for i, o in zip(widths[:-1], widths[1:])]
    bs = [torch.randn(w.shape[0], generator=g) if k % 2 == 0 else None for k, w in enumerate(ws)]
    relus = [True, False, True, False]
    chain = compiled_spmm.linear_chain([compiled_spmm.to_csr(w) for w in ws], bs, relus)
    for rows in (0, 1, 2, 7, 64, 130):
        x = torch.randn(rows, widths[0], generator=g)
        want = x
        for w, b, r in zip(ws, bs, relus):
            want = F.linear(want, w, b)
            want = want.relu() if r else want
        torch.testing.assert_close(chain.forward(x), want, rtol=1e-4, atol=1e-4)


@needs_ext
@pytest.mark.parametrize("density", [0.001, 0.02, 0.2, 1.0])
@pytest.mark.parametrize(
    ("cin", "cout", "k", "pad", "hw"),
    [(3, 5, (3, 3), (1, 1), (7, 9)), (4, 6, (5, 5), (0, 0), (8, 8)), (2, 3, (3, 1), (2, 0), (5, 4)),
     (1, 1, (1, 1), (0, 0), (1, 1)), (16, 8, (3, 3), (1, 1), (2, 3)), (6, 4, (2, 3), (1, 2), (6, 5))],
)  # fmt: skip
def test_conv2d_equals_dense(cin, cout, k, pad, hw, density):
    g = torch.Generator().manual_seed(hash((cin, cout, k, pad, hw, density)) % 2**31)
    w = pruned((cout, cin, *k), density, g)
    b = torch.randn(cout, generator=g)
    packed = compiled_spmm.to_csr(w)
    for bias in (b, None):
        for relu in (False, True):
            for batch in (1, 3):
                x = torch.randn(batch, cin, *hw, generator=g)
                want = F.conv2d(x, w, bias, padding=pad)
                want = want.relu() if relu else want
                got = compiled_spmm.conv2d(
                    packed, bias, x, in_channels=cin, kernel_size=k, padding=pad, relu=relu
                )
                torch.testing.assert_close(got, want, **tol(cin * k[0] * k[1]))


@needs_ext
def test_kernels_refuse_malformed_csr():
    w = compiled_spmm.to_csr(torch.eye(4))
    bad_cols = compiled_spmm.CsrWeight(w.rowptr, w.cols + 10, w.vals, 4)
    with pytest.raises(RuntimeError, match="column index out of range"):
        compiled_spmm.linear_chain([bad_cols], [None], [False])
    with pytest.raises(RuntimeError, match="out of range"):
        compiled_spmm.conv2d(
            bad_cols, None, torch.zeros(1, 4, 3, 3), in_channels=4, kernel_size=(1, 1), padding=(0, 0)
        )
    short = compiled_spmm.CsrWeight(w.rowptr, w.cols[:2], w.vals[:2], 4)
    with pytest.raises(RuntimeError, match="rowptr"):
        compiled_spmm.linear_chain([short], [None], [False])
    with pytest.raises(RuntimeError, match="takes 4 features"):
        compiled_spmm.linear_chain([w, compiled_spmm.to_csr(torch.ones(2, 4)), w], [None] * 3, [False] * 3)
    with pytest.raises(RuntimeError, match=r"input must be \(batch, 4\)"):
        compiled_spmm.linear_chain([w], [None], [False]).forward(torch.zeros(2, 5))


def test_registered_as_the_spmm_kernel():
    k = kernels(SPMM)[0]  # the highest priority: the CSR kernel; the structured ones follow (test_export_nm)
    assert KERNELS.get("spmm/compiled") is k and k.devices == ("cpu",) and k.dtypes == (torch.float32,)
    assert k.unavailable_reason(build=False) == compiled_spmm.spmm_unavailable_reason(build=False)


# -- load_ticket: every path equals the dense masked model -----------------------------------------------
def ticket(tmp_path, model: str, shape, classes: int, density: float):
    torch.manual_seed(0)
    m = create_model(model, shape, classes)
    g = torch.Generator().manual_seed(0)
    mask = select(
        {n: torch.rand(p.shape, generator=g) for n, p in prunable_parameters(m).items()},
        density,
        scope="layerwise",
    )
    with torch.no_grad():  # biases that matter
        for n, p in m.named_parameters():
            if n not in mask:
                p.copy_(torch.randn(p.shape, generator=g))
    apply_mask(m, mask)
    meta = {"model": model, "input_shape": list(shape), "num_classes": classes, "source": {"run": "test"}}
    path = export_ticket(m.state_dict(), mask, format="auto", out=tmp_path / "t.ticket", metadata=meta).path
    return m.eval(), path


@needs_ext
@pytest.mark.parametrize(
    ("model", "shape", "classes"),
    [("conv2", (3, 6, 5), 3), ("lenet5", (1, 16, 16), 4), ("mlp_digits", (1, 5, 7), 3)],
)
@pytest.mark.parametrize("density", [0.001, 0.05, 0.4, 1.0])
def test_loaded_ticket_equals_dense_masked_model_on_every_path(tmp_path, model, shape, classes, density):
    ref, path = ticket(tmp_path, model, shape, classes, density)
    with torch.no_grad():
        for policy in ("compiled", "auto", "threshold", "csr", "dense"):
            for trace in (True, False):
                loaded = load_ticket(path, policy=policy, trace=trace)
                for rows in (1, 5, 64):
                    x = torch.randn(rows, *shape)
                    torch.testing.assert_close(loaded(x), ref(x), rtol=1e-4, atol=1e-4)
    summary = path_summary(load_ticket(path, policy="compiled"))
    prunable = {n.removesuffix(".weight") for n in prunable_parameters(ref)}
    assert set(summary) == prunable  # every prunable layer of these nets is stride-1: all run compiled
    assert all(p == "compiled" for v in summary.values() for p in v["paths"].values())


@needs_ext
def test_traced_mlp_is_one_chain_call_with_relu_fused(tmp_path):
    ref, path = ticket(tmp_path, "lenet_300_100", (1, 28, 28), 10, 0.05)
    model = load_ticket(path, policy="compiled")
    calls = [n.target for n in model.graph.nodes if n.op == "call_function"]
    assert calls == [inf.run_chain]  # flatten is a method; three layers and two ReLUs: one call
    (chain,) = [v for v in vars(model).values() if isinstance(v, inf.LinearChain)]
    assert chain.relus == [True, True, False]
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-4)
        # a layer switched to another path splits the chain where it is and still computes the same
        chain.layers[1].paths = {b: "dense" for b in inf.BATCHES}
        chain.layers[1].__dict__["_p"] = (0, 0, 0)
        chain.invalidate()
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-4)
    assert [s[0] for s in chain._plan(0)] == ["layer", "layer", "layer"]


@needs_ext
def test_conv_relu_is_fused_and_maxpool_stays(tmp_path):
    ref, path = ticket(tmp_path, "conv2", (3, 6, 6), 3, 0.2)
    model = load_ticket(path, policy="compiled")
    convs = [n for n in model.graph.nodes if n.target is inf.sparse_conv]
    assert len(convs) == 2 and all(n.args[2] is True for n in convs)  # each conv's ReLU runs in the kernel
    assert not any(
        n.op == "call_module" and isinstance(model.get_submodule(n.target), nn.ReLU)
        for n in model.graph.nodes
    )


# -- the choice: dense unless a sparse path measured at most MARGIN of dense -----------------------------
def test_pick_takes_a_sparse_path_only_with_the_margin():
    m = inf.MARGIN
    assert inf._pick({"dense": 1.0, "csr": m + 1e-9, "compiled": 2.0}) == "dense"
    assert inf._pick({"dense": 1.0, "csr": m, "compiled": 0.95}) == "csr"
    assert inf._pick({"dense": 1.0, "csr": 0.5, "compiled": 0.4}) == "compiled"
    assert inf._pick({"dense": 1.0}) == "dense"


def test_choose_paths_uses_the_measurement(monkeypatch):
    w = pruned((30, 40), 0.05, torch.Generator().manual_seed(0))
    conv = nn.Conv2d(4, 5, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(pruned(conv.weight.shape, 0.05, torch.Generator().manual_seed(1)))
    for fake, want in [
        ({"dense": 1.0, "csr": 0.95, "compiled": 0.92}, "dense"),  # faster, but within the margin
        ({"dense": 1.0, "csr": 0.5, "compiled": 2.0}, "csr"),
        ({"dense": 1.0, "csr": 0.5, "compiled": 0.3}, "compiled"),
    ]:
        monkeypatch.setattr(inf, "_time", lambda fns, fake=fake: {k: fake[k] for k in fns})
        assert inf.choose_paths(w, None, "auto", compiled=True) == {b: want for b in inf.BATCHES}
        got = inf.choose_conv_paths(conv, (4, 6, 6), "auto", compiled=True)
        assert got == {b: want if want != "csr" else "dense" for b in inf.BATCHES}  # no torch sparse conv
    # without the extension, with a stride, or too dense to measure: dense, never timed
    monkeypatch.setattr(inf, "_time", lambda fns: pytest.fail("timed"))
    assert set(inf.choose_conv_paths(conv, (4, 6, 6), "auto", compiled=False).values()) == {"dense"}
    strided = nn.Conv2d(4, 5, 3, stride=2)
    assert set(inf.choose_conv_paths(strided, (4, 6, 6), "compiled", compiled=True).values()) == {"dense"}
    assert set(inf.choose_paths(torch.ones(3, 4), None, "auto", compiled=True).values()) == {"dense"}


# -- without the extension -------------------------------------------------------------------------------
def test_fallback_when_the_extension_is_disabled(tmp_path):
    """A fresh process with TICKETSEARCH_NO_EXT=1: nothing is built, auto never picks compiled, outputs
    still equal the dense masked model, and asking for the compiled path is one clear error."""
    _, path = ticket(tmp_path, "conv2", (3, 6, 6), 3, 0.05)
    code = textwrap.dedent(
        f"""
        import torch
        from ticketsearch.core.errors import ConfigError
        from ticketsearch.export import load_ticket, path_summary
        from ticketsearch.export.inference import compiled_available
        from ticketsearch.export.ticket import read_ticket
        from ticketsearch.sparse import apply_mask
        from ticketsearch.sparse.kernels import KERNELS
        torch.set_num_threads(1)
        assert not compiled_available()
        assert KERNELS.get("spmm/compiled").unavailable_reason() == "disabled by TICKETSEARCH_NO_EXT"
        t = read_ticket({str(path)!r})
        ref = apply_mask(t.build(), t.mask()).eval()
        for policy in ("auto", "threshold"):
            m = load_ticket({str(path)!r}, policy=policy)
            assert all(p != "compiled" for v in path_summary(m).values() for p in v["paths"].values())
            x = torch.randn(2, 3, 6, 6)
            with torch.no_grad():
                torch.testing.assert_close(m(x), ref(x), rtol=1e-4, atol=1e-4)
        try:
            load_ticket({str(path)!r}, policy="compiled")
        except ConfigError as e:
            print("ERR", e)
        """
    )
    env = {**os.environ, "TICKETSEARCH_NO_EXT": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "ERR policy 'compiled': the compiled sparse kernel is unavailable here" in p.stdout
    assert "TICKETSEARCH_NO_EXT" in p.stdout


def test_bad_policy_is_a_config_error(tmp_path):
    _, path = ticket(tmp_path, "mlp_digits", (1, 5, 7), 3, 0.1)
    with pytest.raises(ConfigError, match="policy 'fastest' is not one of: auto, threshold, dense"):
        load_ticket(path, policy="fastest")
