"""Structured tickets: the ``nm`` and ``bsr`` encodings, the N:M and block kernels, and ``load_ticket``'s use.

Oracles: ``F.linear`` on the zero-filled dense weight (then ``relu``) for the kernels; the mask and weights
that went in for the codecs (bit-exact); the dense masked model (``create_model`` + ``apply_mask``) for
whole tickets; hand-fed timings for the choice rule; a fresh process with ``TICKETSEARCH_NO_EXT=1`` for the
fallback. Masks come from ``core.select(..., pattern=...)`` on random scores, the same rule ``find`` uses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clitools import assert_one_line_error, run_cli
from nets import one_thread  # noqa: F401  (autouse fixture)

from ticketsearch.core import select
from ticketsearch.core.errors import ConfigError, DataError
from ticketsearch.core.mask import Mask
from ticketsearch.core.pattern import parse_pattern
from ticketsearch.export import export_ticket, load_ticket, path_summary, read_ticket
from ticketsearch.export import inference as inf
from ticketsearch.export.container import read_container, write_container
from ticketsearch.models import create_model
from ticketsearch.sparse import apply_mask, prunable_parameters
from ticketsearch.sparse.kernels import KERNELS, kernels
from ticketsearch.sparse.kernels import compiled_structured as cs
from ticketsearch.sparse.kernels.base import SPMM

REASON = cs.structured_unavailable_reason(build=True)
needs_ext = pytest.mark.skipif(REASON is not None, reason=f"structured kernels unavailable: {REASON}")
LENET = {"model": "lenet_300_100", "input_shape": [1, 28, 28], "num_classes": 10}


def structured_weight(shape, pattern: str, density: float, seed: int) -> torch.Tensor:
    """A random weight kept by ``select`` under ``pattern`` at ``density`` (random scores)."""
    g = torch.Generator().manual_seed(seed)
    mask = select({"w": torch.rand(shape, generator=g)}, density, scope="layerwise", pattern=pattern)["w"]
    return torch.randn(shape, generator=g) * mask


def tol(fan_in: int) -> dict[str, float]:
    # fp32 sums in another order than MKL: the last bits move
    return {"rtol": 1e-5, "atol": 3e-6 * max(1, fan_in)}


def check_layer(make, w: torch.Tensor, g: torch.Generator) -> None:
    """``make(bias, relu).forward(x)`` equals F.linear (then relu) for several batch sizes."""
    b = torch.randn(w.shape[0], generator=g)
    for bias in (b, None):
        for relu in (False, True):
            layer = make(bias, relu)
            for rows in (0, 1, 2, 9, 64, 65):
                x = torch.randn(rows, w.shape[1], generator=g)
                want = F.linear(x, w, bias)
                want = want.relu() if relu else want
                got = layer.forward(x)
                assert got.shape == want.shape
                torch.testing.assert_close(got, want, **tol(w.shape[1]))


# -- the N:M kernel against F.linear ---------------------------------------------------------------------
NM_CASES = [
    # (rows, cols, pattern, density): odd row counts, rows of 1, rows whose slot count is not a multiple
    # of 16 (the scalar tail), M = 4 and 8, N = 1, 2, 4, densities at and below N/M
    (7, 12, "2:4", 0.5),
    (33, 64, "2:4", 0.5),
    (33, 64, "2:4", 0.2),
    (300, 784, "2:4", 0.5),
    (1, 36, "2:4", 0.25),
    (13, 100, "1:4", 0.25),
    (13, 100, "1:4", 0.1),
    (9, 40, "1:8", 0.125),
    (31, 136, "2:8", 0.25),
    (31, 136, "2:8", 0.1),
    (17, 64, "4:8", 0.5),
    (17, 64, "4:8", 0.3),
    (5, 48, "3:8", 0.375),  # 16 slots are not whole groups: the portable loop
    (5, 96, "1:16", 0.0625),  # a window of 256 inputs: the portable loop
]


@needs_ext
@pytest.mark.parametrize(("rows", "cols", "pattern", "density"), NM_CASES)
def test_nm_linear_equals_dense(rows, cols, pattern, density):
    seed = hash((rows, cols, pattern, density)) % 2**31
    w = structured_weight((rows, cols), pattern, density, seed)
    pat = parse_pattern(pattern)
    packed = cs.to_nm(w, pat.n, pat.m)
    assert packed.vals.shape == (rows, cols // pat.m * pat.n) and packed.idx.dtype == torch.uint8
    assert torch.equal(cs.nm_dense(packed), w)  # the slots hold exactly the weight
    check_layer(lambda b, r: cs.nm_linear(packed, b, r), w, torch.Generator().manual_seed(seed))


@needs_ext
def test_nm_linear_keeps_nan_and_takes_non_contiguous_input():
    w = structured_weight((6, 32), "2:4", 0.5, 3)
    layer = cs.nm_linear(cs.to_nm(w, 2, 4), None, True)
    x = torch.randn(32, 3).t()  # (3, 32), not contiguous
    torch.testing.assert_close(layer.forward(x), F.linear(x, w).relu(), **tol(32))
    y = layer.forward(torch.full((1, 32), float("nan")))
    assert torch.isnan(y).all()  # relu(NaN) is NaN, as torch.relu


def test_to_nm_refuses_what_is_not_n_m():
    w = torch.zeros(3, 8)
    w[1, 4:7] = 1.0  # three in the second group of row 1
    with pytest.raises(ValueError, match=r"breaks 2:4: row 1, inputs 4..7 hold 3 nonzeros"):
        cs.to_nm(w, 2, 4)
    with pytest.raises(ValueError, match="multiple of 4"):
        cs.to_nm(torch.zeros(2, 6), 2, 4)


@needs_ext
def test_nm_kernel_refuses_malformed_slots():
    w = cs.to_nm(structured_weight((4, 8), "2:4", 0.5, 0), 2, 4)
    with pytest.raises(RuntimeError, match="in-group index 4 out of range"):
        cs.nm_linear(cs.NmWeight(w.vals, w.idx + 4, 2, 4, 8), None)
    with pytest.raises(RuntimeError, match="vals and idx must be"):
        cs.nm_linear(cs.NmWeight(w.vals[:, :2].contiguous(), w.idx, 2, 4, 8), None)
    with pytest.raises(RuntimeError, match=r"input must be \(batch, 8\)"):
        cs.nm_linear(w, None).forward(torch.zeros(1, 9))


# -- the block kernel against F.linear -------------------------------------------------------------------
BSR_CASES = [
    (12, 20, "block:4x4", 0.4),
    (300, 784, "block:4x4", 0.5),
    (300, 784, "block:4x4", 0.1),
    (6, 32, "block:2x8", 0.5),
    (26, 48, "block:2x8", 0.25),
    (16, 13, "block:8x1", 0.3),
    (40, 7, "block:8x1", 0.2),
    (16, 32, "block:8x8", 0.5),
    (32, 48, "block:16x16", 0.34),
    (9, 15, "block:3x5", 0.4),  # neither dimension divides 16: the portable loop
    (8, 48, "block:1x16", 0.3),
    (12, 64, "block:12x4", 0.5),  # three vectors per block: the portable loop
]


@pytest.mark.parametrize(("rows", "cols", "pattern", "density"), BSR_CASES)
def test_bsr_linear_equals_dense(rows, cols, pattern, density):
    seed = hash((rows, cols, pattern, density)) % 2**31
    w = structured_weight((rows, cols), pattern, density, seed)
    pat = parse_pattern(pattern)
    packed = cs.to_bsr(w, pat.r, pat.c)
    assert packed.vals.shape == (packed.blocks, pat.r, pat.c)
    assert torch.equal(cs.bsr_dense(packed), w)
    g = torch.Generator().manual_seed(seed)
    check_layer(lambda b, r: cs.TorchBsrLinear(packed, b, r), w, g)  # the pure-PyTorch fallback
    if REASON is None:
        check_layer(lambda b, r: cs.bsr_linear(packed, b, r), w, g)


@needs_ext
def test_bsr_kernel_refuses_malformed_blocks():
    w = cs.to_bsr(structured_weight((8, 8), "block:4x4", 0.5, 0), 4, 4)
    bad = cs.BsrWeight(w.rowptr, w.cols + 2, w.vals, 4, 4, 8)
    with pytest.raises(RuntimeError, match="block column index out of range"):
        cs.bsr_linear(bad, None)
    short = cs.BsrWeight(w.rowptr, w.cols[:0], w.vals[:0], 4, 4, 8)
    with pytest.raises(RuntimeError, match="rowptr does not span"):
        cs.bsr_linear(short, None)
    with pytest.raises(ValueError, match="do not tile"):
        cs.to_bsr(torch.zeros(6, 8), 4, 4)


def test_registered_as_spmm_kernels():
    names = [k.name for k in kernels(SPMM)]
    assert names[:3] == ["compiled", "nm", "bsr"] and "semi_structured" in names
    for name in ("nm", "bsr"):
        k = KERNELS.get(f"spmm/{name}")
        assert k.devices == ("cpu",) and k.dtypes == (torch.float32,)
        assert k.unavailable_reason(build=False) == cs.structured_unavailable_reason(build=False)
    k = KERNELS.get("spmm/semi_structured")
    assert k.devices == ("cuda",) and k.dtypes == (torch.float16, torch.bfloat16)
    if not torch.cuda.is_available():
        assert k.unavailable_reason() == "no CUDA device"


# -- the codecs ------------------------------------------------------------------------------------------
def lenet_ticket(tmp_path, pattern: str, density: float, *, fmt: str = "auto", name: str = "t.ticket"):
    """A LeNet-300-100 under ``pattern`` (random scores, random biases), its mask and the exported file."""
    torch.manual_seed(0)
    model = create_model("lenet_300_100", (1, 28, 28), 10)
    g = torch.Generator().manual_seed(1)
    scores = {n: torch.rand(p.shape, generator=g) for n, p in prunable_parameters(model).items()}
    mask = select(scores, density, scope="layerwise", pattern=pattern, allow_dense_layers=True)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n not in mask:
                p.copy_(torch.randn(p.shape, generator=g))
    apply_mask(model, mask)
    result = export_ticket(model.state_dict(), mask, format=fmt, out=tmp_path / name, metadata=LENET)
    return model.eval(), mask, result


@pytest.mark.parametrize(
    ("pattern", "density", "encoding", "bits"),
    [("2:4", 0.5, "nm", 2), ("2:4", 0.3, "nm", 2), ("1:4", 0.25, "nm", 2), ("4:8", 0.5, "nm", 8),
     ("1:8", 0.1, "nm", 8), ("block:4x4", 0.5, "bsr", None), ("block:2x2", 0.2, "bsr", None)],
)  # fmt: skip
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_codec_round_trips_bit_exactly(tmp_path, pattern, density, encoding, bits, dtype):
    model, mask, result = lenet_ticket(tmp_path, pattern, density, fmt="auto")
    if dtype == "fp16":
        result = export_ticket(
            model.state_dict(), mask, dtype="fp16", out=tmp_path / "h.ticket", metadata=LENET
        )
    assert result.bytes == result.path.stat().st_size  # the size reported is the file's
    t = read_ticket(result.path)
    assert t.header["pattern"] == pattern and t.pattern == parse_pattern(pattern)
    exempt = set(t.dense_layers)
    state = model.state_dict()
    for name, m in mask.items():
        rec = t.header["layers"][name]
        if name not in exempt:
            assert rec["encoding"] == encoding
        assert result.layers[name]["encoding"] == rec["encoding"]
        assert torch.equal(t.masks[name], m)
        want = state[name] if dtype == "fp32" else state[name].half()
        assert torch.equal(t.weight(name, want.dtype), want)  # bit-exact, zeros where pruned
        if rec["encoding"] == "nm":
            assert rec["index_bits"] == bits and (rec["n"], rec["m"]) == (t.pattern.n, t.pattern.m)
            groups_full = bool((m.reshape(m.shape[0], -1, t.pattern.m).sum(-1) == t.pattern.n).all())
            assert ("slot_kept" in rec["blobs"]) == (not groups_full)  # only below N/M
        if rec["encoding"] == "bsr":
            assert rec["block"] == [t.pattern.r, t.pattern.c]
    if pattern.startswith("block:4x4"):
        assert exempt == {"fc.weight"}  # 10 outputs are not a multiple of 4: kept dense, stored as before
    for n, v in t.dense.items():
        assert torch.equal(v, state[n] if dtype == "fp32" else state[n].half())


def test_two_four_stores_two_bit_indices(tmp_path):
    _, mask, result = lenet_ticket(tmp_path, "2:4", 0.5)
    header, stored = read_container(result.path)
    rec = header["layers"]["layers.0.weight"]
    slots = 300 * 784 // 2
    assert rec["blobs"]["indices"]["dtype"] == "uint8" and rec["blobs"]["indices"]["shape"] == [slots // 4]
    assert "slot_kept" not in rec["blobs"]  # every group keeps 2
    # at exactly 2:4 the file is no bigger than the bitmask one (both are ~the values)
    bm = export_ticket(
        {k: v for k, v in read_ticket(result.path).state_dict().items()},
        mask,
        format="bitmask",
        out=tmp_path / "b.ticket",
        metadata=LENET,
    )
    assert result.bytes <= bm.bytes * 1.01


def test_a_ticket_re_exported_stays_packed(tmp_path):
    """What ``finetune`` does with its result: ``ticket.mask()`` carries the pattern, so it is written packed."""
    _, _, result = lenet_ticket(tmp_path, "block:4x4", 0.5)
    t = read_ticket(result.path)
    again = export_ticket(t.state_dict(), t.mask(), out=tmp_path / "again.ticket", metadata=LENET)
    assert again.layers["layers.0.weight"]["encoding"] == "bsr"
    t2 = read_ticket(again.path)
    assert t2.header["pattern"] == "block:4x4" and t2.dense_layers == ["fc.weight"]


def test_unstructured_tickets_keep_their_header(tmp_path):
    _, _, result = lenet_ticket(tmp_path, "unstructured", 0.2)
    header, _ = read_container(result.path)
    assert "pattern" not in header and "dense_layers" not in header
    assert {r["encoding"] for r in header["layers"].values()} <= {"bitmask", "csr"}


def test_explicit_formats_ignore_the_pattern(tmp_path):
    _, mask, result = lenet_ticket(tmp_path, "2:4", 0.5, fmt="csr")
    t = read_ticket(result.path)
    assert {r["encoding"] for r in t.header["layers"].values()} == {"csr"} and t.header["pattern"] == "2:4"
    for n in mask:
        assert torch.equal(t.masks[n], mask[n])


def test_a_mask_that_breaks_its_claimed_pattern_is_refused_in_one_line(tmp_path):
    model = create_model("lenet_300_100", (1, 28, 28), 10)
    shapes = {n: p.shape for n, p in prunable_parameters(model).items()}
    tensors = {n: (torch.arange(s[1]) % 4 < 2).expand(s).clone() for n, s in shapes.items()}  # 2:4
    tensors["layers.1.weight"][5, 6] = True  # row 5 keeps 3 of its inputs 4..7
    lying = Mask(tensors, {"pattern": "2:4"})
    with pytest.raises(DataError) as e:
        export_ticket(model.state_dict(), lying, format="auto", out=tmp_path / "x.ticket", metadata=LENET)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("the mask claims pattern 2:4, but layer 'layers.1.weight'")
    assert "row 5, columns 4..7 keep 3 of 4" in msg
    assert not (tmp_path / "x.ticket").exists()
    # metadata may state the pattern too; a bad spelling is a ConfigError naming it
    with pytest.raises(ConfigError, match="unknown pattern '2x4'"):
        export_ticket(
            model.state_dict(), Mask(tensors), out=tmp_path / "x.ticket", metadata={**LENET, "pattern": "2x4"}
        )


def test_cli_refuses_a_lying_sidecar_in_one_line(tmp_path, capsys):
    model = create_model("lenet_300_100", (1, 28, 28), 10)
    shapes = {n: p.shape for n, p in prunable_parameters(model).items()}
    mask = Mask({n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()}, {**LENET})
    mask.save(tmp_path / "mask.safetensors")
    side = tmp_path / "mask.json"
    meta = json.loads(side.read_text())
    meta["pattern"] = "2:4"
    side.write_text(json.dumps(meta))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    r = run_cli(
        capsys, "export", "--mask", str(tmp_path / "mask.safetensors"), "--weights", str(tmp_path / "w.safetensors"),
        "--format", "auto", "--out", str(tmp_path / "t.ticket"),
    )  # fmt: skip
    assert_one_line_error(r, "pattern", "2:4")
    assert not (tmp_path / "t.ticket").exists()


def test_cli_exports_a_pattern_mask_packed(tmp_path, capsys):
    """`export --mask` of a mask whose sidecar says 2:4: every layer stored nm, the size reported."""
    model, mask, _ = lenet_ticket(tmp_path, "2:4", 0.5)
    mask.save(tmp_path / "mask.safetensors", **LENET)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    r = run_cli(
        capsys, "export", "--mask", str(tmp_path / "mask.safetensors"), "--weights", str(tmp_path / "w.safetensors"),
        "--format", "auto", "--out", str(tmp_path / "cli.ticket"), "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert {v["encoding"] for v in summary["layers"].values()} == {"nm"}
    assert summary["bytes"] == (tmp_path / "cli.ticket").stat().st_size


def rewrite(path, edit) -> None:
    """Re-write a ticket after ``edit(header, tensors)`` with a valid checksum: a lie, not damage."""
    header, stored = read_container(path)
    edit(header, stored)
    header.pop("sha256")
    header.pop("format")
    write_container(path, header, stored)


def test_reading_checks_the_pattern_claim(tmp_path):
    _, _, result = lenet_ticket(tmp_path, "unstructured", 0.5, fmt="bitmask")
    rewrite(result.path, lambda h, s: h.update(pattern="2:4"))
    with pytest.raises(
        DataError, match=r"the header claims pattern 2:4, but layer '[a-z.0-9]+' breaks pattern 2:4: row "
    ):
        read_ticket(result.path)
    rewrite(result.path, lambda h, s: h.update(pattern="2x4"))
    with pytest.raises(DataError, match="'2x4' is not a structured pattern"):
        read_ticket(result.path)


def _nm_blobs(path):
    header, stored = read_container(path)
    rec = header["layers"]["layers.1.weight"]
    return header, stored, rec


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda rec, s: rec.update(m=7), "cannot hold 2:7"),
        (lambda rec, s: rec.update(index_bits=8), "stores 2-bit indices"),
        (lambda rec, s: rec.update(n=0), "N:M needs integers"),
    ],
)
def test_reading_checks_the_nm_layout(tmp_path, edit, needle):
    _, _, result = lenet_ticket(tmp_path, "2:4", 0.5)
    rewrite(result.path, lambda h, s: edit(h["layers"]["layers.1.weight"], s))
    with pytest.raises(DataError, match=needle):
        read_ticket(result.path)


def test_reading_checks_nm_indices(tmp_path):
    """Indices that repeat within a group (uint8 storage, 4:8) and a kept slot after an unused one."""
    _, _, result = lenet_ticket(tmp_path, "4:8", 0.3)
    header, stored = read_container(result.path)
    rec = header["layers"]["layers.0.weight"]
    assert rec["index_bits"] == 8 and "slot_kept" in rec["blobs"]
    from ticketsearch.export.container import unpack_blob

    idx = np.array(unpack_blob(stored["layers.0.weight:indices"], rec["blobs"]["indices"], what="t"))
    kept = np.unpackbits(
        unpack_blob(stored["layers.0.weight:slot_kept"], rec["blobs"]["slot_kept"], what="t"),
        bitorder="little",
    )[: idx.size].astype(bool)
    i = int(np.nonzero(kept[0::4] & kept[1::4])[0][0]) * 4  # a group with two kept slots
    idx[i + 1] = idx[i]

    def put(h, s):
        s["layers.0.weight:indices"] = idx
        h["layers"]["layers.0.weight"]["blobs"]["indices"] = {
            "dtype": "uint8", "shape": [idx.size], "codec": "raw", "stored_bytes": idx.size,
        }  # fmt: skip

    rewrite(result.path, put)
    with pytest.raises(DataError, match="not strictly ascending"):
        read_ticket(result.path)


# -- load_ticket -----------------------------------------------------------------------------------------
@needs_ext
@pytest.mark.parametrize(
    ("pattern", "density", "policy"),
    [("2:4", 0.5, "nm"), ("2:4", 0.5, "auto"), ("2:4", 0.3, "nm"), ("1:4", 0.25, "nm"),
     ("block:4x4", 0.5, "bsr"), ("block:2x2", 0.25, "bsr"), ("block:4x4", 0.25, "auto")],
)  # fmt: skip
def test_loaded_structured_lenet_equals_dense_masked_model(tmp_path, pattern, density, policy):
    ref, _, result = lenet_ticket(tmp_path, pattern, density)
    kind = "nm" if "block" not in pattern else "bsr"
    for trace in (True, False):
        model = load_ticket(result.path, policy=policy, trace=trace)
        with torch.no_grad():
            for rows in (1, 3, 64):
                x = torch.randn(rows, 1, 28, 28)
                torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    summary = path_summary(model)
    if policy != "auto":
        exempt = set(read_ticket(result.path).dense_layers)
        for name, rec in summary.items():
            want = "dense" if f"{name}.weight" in exempt else kind
            assert set(rec["paths"].values()) == {want}, (name, rec)


@needs_ext
def test_forcing_a_structured_path_on_an_unstructured_ticket_keeps_dense(tmp_path):
    _, _, result = lenet_ticket(tmp_path, "unstructured", 0.5)
    for policy in ("nm", "bsr"):
        summary = path_summary(load_ticket(result.path, policy=policy))
        assert {p for v in summary.values() for p in v["paths"].values()} == {"dense"}


def test_cuda_load_is_refused_in_one_line_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present (tests/gpu covers it)")
    _, _, result = lenet_ticket(tmp_path, "2:4", 0.5)
    with pytest.raises(ConfigError, match="no CUDA device"):
        load_ticket(result.path, device="cuda", dtype=torch.float16)
    with pytest.raises(ConfigError, match="computes in float32"):
        load_ticket(result.path, dtype=torch.float16)


# -- the choice: a structured kernel only where it beats dense by the margin ------------------------------
@pytest.mark.parametrize("pattern", ["2:4", "block:4x4"])
def test_choose_paths_takes_the_structured_kernel_only_with_the_margin(monkeypatch, pattern):
    pat = parse_pattern(pattern)
    w = structured_weight((32, 64), pattern, 0.5, 0)
    kind = "nm" if pat.kind == "nm" else "bsr"
    for fake, want in [
        ({"dense": 1.0, "csr": 2.0, "compiled": 2.0, kind: 0.95}, "dense"),  # faster, within the margin
        ({"dense": 1.0, "csr": 2.0, "compiled": 2.0, kind: inf.MARGIN}, kind),
        ({"dense": 1.0, "csr": 2.0, "compiled": 0.5, kind: 0.6}, "compiled"),  # the fastest sparse one
        ({"dense": 1.0, "csr": 2.0, "compiled": 0.6, kind: 0.5}, kind),
    ]:
        seen: list[set[str]] = []

        def fake_time(fns, fake=fake, seen=seen):
            seen.append(set(fns))
            return {k: fake[k] for k in fns}

        monkeypatch.setattr(inf, "_time", fake_time)
        got = inf.choose_paths(w, None, "auto", compiled=True, pattern=pat, structured=True)
        assert got == {b: want for b in inf.BATCHES}
        assert seen[0] == {"dense", "csr", "compiled", kind}  # every candidate, interleaved
        if want != "dense":  # the winner again, against dense alone
            assert seen[1] == {"dense", want} and len(seen) == 2 * len(inf.BATCHES)
    # no pattern, or a pattern this shape cannot hold: never a candidate
    monkeypatch.setattr(inf, "_time", lambda fns: {k: (0.1 if k in ("nm", "bsr") else 1.0) for k in fns})
    assert set(inf.choose_paths(w, None, "auto", compiled=False, structured=True).values()) == {"dense"}
    odd = structured_weight((30, 64), "2:4", 0.5, 1)
    assert inf.structured_path(odd, parse_pattern("block:4x4")) is None
    assert inf.structured_path(odd, parse_pattern("2:4"), structured=False) is None  # N:M needs the kernel
    assert inf.structured_path(odd, parse_pattern("2:4"), structured=True) == "nm"


def test_a_sparse_winner_must_win_twice(monkeypatch):
    """One flattering timing (a load spike during dense) is not enough: the confirmation decides."""
    pat = parse_pattern("2:4")
    w = structured_weight((32, 64), "2:4", 0.5, 0)
    answers = iter(
        [{"dense": 1.0, "csr": 2.0, "compiled": 2.0, "nm": 0.5}, {"dense": 1.0, "nm": 0.97}]
        * len(inf.BATCHES)
    )
    monkeypatch.setattr(inf, "_time", lambda fns: next(answers))
    assert inf.choose_paths(w, None, "auto", compiled=True, pattern=pat, structured=True) == {
        b: "dense" for b in inf.BATCHES
    }


# -- without the extension -------------------------------------------------------------------------------
def test_fallback_when_the_extension_is_disabled(tmp_path):
    """TICKETSEARCH_NO_EXT=1 in a fresh process: nothing is built, auto never picks nm, forcing it is one
    clear error, block tickets run torch's BSR, and every output still equals the dense masked model."""
    _, _, nm_t = lenet_ticket(tmp_path, "2:4", 0.5, name="nm.ticket")
    _, _, bs_t = lenet_ticket(tmp_path, "block:4x4", 0.25, name="bsr.ticket")
    code = textwrap.dedent(
        f"""
        import torch
        from ticketsearch.core.errors import ConfigError
        from ticketsearch.export import load_ticket, path_summary
        from ticketsearch.export.inference import structured_available
        from ticketsearch.export.ticket import read_ticket
        from ticketsearch.sparse import apply_mask
        from ticketsearch.sparse.kernels import KERNELS
        torch.set_num_threads(1)
        assert not structured_available()
        assert KERNELS.get("spmm/nm").unavailable_reason() == "disabled by TICKETSEARCH_NO_EXT"
        for path, policies in (({str(nm_t.path)!r}, ("auto",)), ({str(bs_t.path)!r}, ("auto", "bsr"))):
            t = read_ticket(path)
            ref = apply_mask(t.build(), t.mask()).eval()
            for policy in policies:
                m = load_ticket(path, policy=policy)
                paths = {{p for v in path_summary(m).values() for p in v["paths"].values()}}
                assert "nm" not in paths and "compiled" not in paths, paths
                if policy == "bsr":
                    assert "bsr" in paths, paths
                with torch.no_grad():
                    for rows in (1, 64):
                        x = torch.randn(rows, 1, 28, 28)
                        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)
        try:
            load_ticket({str(nm_t.path)!r}, policy="nm")
        except ConfigError as e:
            print("ERR", e)
        """
    )
    env = {**os.environ, "TICKETSEARCH_NO_EXT": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (
        "ERR policy 'nm': the compiled N:M kernel is unavailable here (disabled by TICKETSEARCH_NO_EXT)"
        in p.stdout
    )
