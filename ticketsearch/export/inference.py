"""``load_ticket``: a ticket file as a runnable CPU inference model whose sparse layers take the fastest path.

The model is the registered architecture (``create_model`` by name) with the ticket's weights. Each
prunable Linear becomes a :class:`SparseLinear` and each prunable stride-1 Conv2d a :class:`SparseConv2d`,
which run, per batch size, one of :data:`PATHS`:

- ``dense``: the dense op (MKL / oneDNN) on the zero-filled weight — the default, and always correct;
- ``csr``: ``torch.sparse`` CSR (``addmv`` for one row, ``addmm`` for more; Linear only);
- ``compiled``: the C++ kernels of :mod:`ticketsearch.sparse.kernels.compiled_spmm` (Linear, and the only
  sparse convolution: one multiply-add over the zero-padded input plane per kept weight), when the
  extension builds here;
- ``nm``: for a Linear of a ticket made under an ``N:M`` pattern, the N:M kernel of
  :mod:`ticketsearch.sparse.kernels.compiled_structured` (kept values + one-byte in-group indices; at
  batch 1 it reads about half a 2:4 layer's dense bytes and picks inputs by register permutes), when the
  extension builds here;
- ``bsr``: for a Linear of a ticket made under ``block:RxC``, the block-sparse kernel of the same module
  (torch's own BSR tensors where the extension does not build).

The model is then traced with torch.fx into one flat forward (:func:`trace_flat`): at batch 1 a LeNet layer
takes a few microseconds, the same order as a Python module call, so the traced forward calls the sparse
layers as plain functions, fuses a following ReLU into the layer's call, and runs a run of consecutive
``compiled`` Linear layers as ONE kernel call (:class:`LinearChain`). ``trace=False`` keeps the eager
module tree (no chains; same paths).

Which path wins depends on the layer's shape and density, the batch size, the CPU and its thread count,
so the default (``policy="auto"``) measures it at load time on the layer's real input shape (found by
one dense forward): per layer, batches of 1, 8 and 64, all candidate paths interleaved, the median of
several calls after warm-up, and a sparse path is taken only where it takes at most :data:`MARGIN` of the
dense time, twice: the winner is timed again against dense alone and must win by the margin again (``nm``
and ``bsr`` are candidates only for the layers the ticket's pattern covers). Dense is the default of every
layer and every batch size, so a layer is never switched to a path that measured slower than dense,
whatever the noise: the worst case is a layer that measured ≥ 10% faster at load time, twice, and runs at
dense speed later. A batch of B rows uses the decision of the nearest
measured size (log scale). That costs a few milliseconds per Linear and up to about a second per large
convolution (batch 64). ``policy="threshold"`` skips the measurement and applies fixed density limits
measured once on a 2-core x86 CPU (AVX-512, MKL, 1 thread; see :data:`THRESHOLDS`); ``"dense"``,
``"csr"`` (alias ``"sparse"``), ``"compiled"``, ``"nm"`` and ``"bsr"`` force a path where the layer supports
it (tests use them to check each path against the dense masked model).

On CUDA (``device="cuda"``, fp16/bf16), none of this runs: the model moves to the GPU and each Linear
whose layer obeys 2:4 becomes a ``torch.sparse`` semi-structured weight (the sparse tensor cores,
:mod:`ticketsearch.sparse.kernels.semi_structured`) where the library takes its shape.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import ConfigError
from ..core.pattern import Pattern
from ..sparse.kernels import compiled_spmm, compiled_structured, semi_structured
from .ticket import Ticket, read_ticket

__all__ = [
    "POLICIES",
    "PATHS",
    "THRESHOLDS",
    "SparseLinear",
    "SparseConv2d",
    "LinearChain",
    "load_ticket",
    "sparsify_ticket_model",
    "path_summary",
    "compiled_available",
    "structured_available",
    "structured_path",
    "to_semi_structured",
]

POLICIES = ("auto", "threshold", "dense", "csr", "sparse", "compiled", "nm", "bsr")
PATHS = ("dense", "csr", "compiled", "nm", "bsr")
BATCHES = (1, 8, 64)  # measured batch sizes; a batch uses the nearest one on a log scale
# policy="threshold": density limits per batch size. torch CSR (used without the compiled kernel) needs
# a layer of >= MIN_NUMEL weights: one-row CSR addmv beats the dense matvec of a 300×784 layer at 5% (7.3
# vs 13 µs) but never a 100×300 one (fixed overhead ≈ 4 µs). The compiled kernel costs ~1 µs per call:
# at one row it beats dense up to ~10-20% density on LeNet layers, at 64 rows up to ~30%; its 3×3 convs
# win up to ~20% at 32×32 but only ~10% at 8×8 (short rows). Measured with torch 2.14 / MKL, 1 thread.
THRESHOLDS = {1: 0.05, 8: 0.1, 64: 0.25}
COMPILED_THRESHOLDS = {1: 0.1, 8: 0.15, 64: 0.25}
CONV_THRESHOLDS = {1: 0.1, 8: 0.1, 64: 0.1}
MIN_NUMEL = 65536
MARGIN = 0.9  # a sparse path must take at most 90% of the dense time to be chosen
MAX_MEASURED_DENSITY = 0.5  # above this no sparse path came close: not measured

_CODES = {"dense": 0, "csr": 1, "compiled": 2, "nm": 3, "bsr": 4}


def compiled_available(*, build: bool = True) -> bool:
    """Whether the compiled sparse kernels run here (``build=True`` may compile them once, ~1 minute)."""
    return compiled_spmm.spmm_extension(build=build) is not None


def structured_available(*, build: bool = True) -> bool:
    """Whether the compiled N:M and block kernels run here (``build=True`` may compile them once)."""
    return compiled_structured.structured_extension(build=build) is not None


def _bucket(n: int) -> int:
    return 0 if n <= 2 else 1 if n <= 22 else 2


class _CpuFp32Only:
    """Stands in for a compiled layer after ``.to()`` moved or cast it where the kernel cannot run."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(
            "the compiled sparse path runs float32 on the CPU; load with policy='dense' or 'csr'"
        )


_CPU_FP32_ONLY = _CpuFp32Only()


# -- layers ----------------------------------------------------------------------------------------------
def sparse_linear(layer: SparseLinear, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """``layer``'s forward (then ReLU) as a plain function: what the traced model calls, no module call."""
    d = layer.__dict__
    if x.dim() != 2:
        y = sparse_linear(layer, x.reshape(-1, d["in_features"]), relu)
        return y.reshape(*x.shape[:-1], d["out_features"])
    n = x.shape[0]
    path = d["_p"][_bucket(n)]
    if path >= 2 and n > 0:  # a compiled object per path, with and without the fused ReLU
        return d["_ko"][path][relu].forward(x)
    b = d["_b"]
    if path == 0 or n == 0:
        w = d["_w"] if d["_w"] is not None else layer.dense_weight()
        if n == 1 and b is not None:  # addmv: ~25% less than F.linear's addmm for one row
            y = torch.addmv(b, w, x.view(-1)).view(1, -1)
        else:
            y = F.linear(x, w, b)
    else:
        c = d["_c"]
        if n == 1:
            v = x.view(-1)
            y = (torch.addmv(b, c, v) if b is not None else torch.mv(c, v)).view(1, -1)
        else:
            xt = x.t()
            y = (torch.addmm(d["_bcol"], c, xt) if b is not None else c @ xt).t()
    return torch.relu_(y) if relu else y


class SparseLinear(nn.Module):
    """An inference-only Linear with a fixed (pruned) weight: dense, CSR or compiled per batch size.

    ``paths`` maps each of :data:`BATCHES` to one of :data:`PATHS`; a batch of B rows takes the path of
    the nearest measured size (B ≤ 2 → 1, B ≤ 22 → 8, else 64). Only the representations some batch size
    uses are kept (a layer that never runs dense holds no dense weight). The forward is kept lean — plain
    attributes, no per-call arithmetic — because at batch 1 a LeNet layer's matmul takes a few
    microseconds, the same order as Python's dispatch. Not differentiable through the sparse paths:
    fine-tune with :func:`ticketsearch.export.finetune` instead.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        paths: dict[int, str],
        *,
        pattern: Pattern | None = None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.pattern = pattern
        self.paths = {b: paths[b] for b in BATCHES}
        self.nnz = int((weight != 0).sum())
        self.density = self.nnz / weight.numel() if weight.numel() else 1.0
        used = set(self.paths.values())
        self.register_buffer("bias", bias.detach().clone() if bias is not None else None)
        self.register_buffer("weight", weight.detach().clone() if "dense" in used else None)
        self.csr: torch.Tensor | None = None
        self.packed: compiled_spmm.CsrWeight | None = None
        if "csr" in used:
            with warnings.catch_warnings():  # "sparse CSR support is in beta": we test the ops we use
                warnings.simplefilter("ignore")
                self.csr = weight.detach().to_sparse_csr()
        if "compiled" in used:
            self.packed = compiled_spmm.to_csr(weight)
        self.nm: compiled_structured.NmWeight | None = None
        self.bsr: compiled_structured.BsrWeight | None = None
        if "nm" in used or "bsr" in used:
            kind = "nm" if "nm" in used else "bsr"
            if pattern is None or pattern.kind != {"nm": "nm", "bsr": "block"}[kind]:
                raise ValueError(
                    f"the {kind} path needs the layer's {'N:M' if kind == 'nm' else 'block'} pattern"
                )
            if kind == "nm":
                self.nm = compiled_structured.to_nm(weight, pattern.n, pattern.m)
            else:
                self.bsr = compiled_structured.to_bsr(weight, pattern.r, pattern.c)
        self.chains: list[LinearChain] = []  # traced chains holding compiled copies of this layer
        self._refresh()

    def _refresh(self) -> None:
        """Plain-attribute copies of what the forward reads (nn.Module's __getattr__ is slow per call)."""
        d = self.__dict__
        d["_w"], d["_b"], d["_c"] = self._buffers["weight"], self._buffers["bias"], self.csr
        d["_bcol"] = self._buffers["bias"][:, None] if self._buffers["bias"] is not None else None
        d["_p"] = tuple(_CODES[self.paths[b]] for b in BATCHES)
        d["_k"] = d["_kr"] = _CPU_FP32_ONLY
        p, b = self.packed, self._buffers["bias"]
        cpu_b = b is None or (b.dtype == torch.float32 and b.device.type == "cpu")
        if p is not None and p.vals.dtype == torch.float32 and p.vals.device.type == "cpu" and cpu_b:
            d["_k"] = compiled_spmm.linear_chain([p], [b], [False])
            d["_kr"] = compiled_spmm.linear_chain([p], [b], [True])
        ko: list[tuple[Any, Any]] = [(_CPU_FP32_ONLY, _CPU_FP32_ONLY)] * len(PATHS)
        ko[2] = (d["_k"], d["_kr"])
        nmw, bsw = self.nm, self.bsr
        if nmw is not None and nmw.vals.dtype == torch.float32 and nmw.vals.device.type == "cpu" and cpu_b:
            ko[3] = tuple(compiled_structured.nm_linear(nmw, b, r) for r in (False, True))  # type: ignore[assignment]
        if bsw is not None and bsw.vals.dtype == torch.float32 and bsw.vals.device.type == "cpu" and cpu_b:
            ko[4] = tuple(compiled_structured.bsr_linear(bsw, b, r) for r in (False, True))  # type: ignore[assignment]
        d["_ko"] = tuple(ko)
        for chain in self.chains:
            chain.invalidate()

    def dense_weight(self) -> torch.Tensor:
        """The zero-filled weight, from whichever representation this layer holds."""
        if self._buffers["weight"] is not None:
            return self._buffers["weight"]
        if self.csr is not None:
            return self.csr.to_dense()
        if self.nm is not None:
            return compiled_structured.nm_dense(self.nm)
        if self.bsr is not None:
            return compiled_structured.bsr_dense(self.bsr)
        assert self.packed is not None
        return _unpack(self.packed, (self.out_features, self.in_features))

    def extra_repr(self) -> str:
        p = ", ".join(f"B≈{b}: {v}" for b, v in self.paths.items())
        return f"in={self.in_features}, out={self.out_features}, density={self.density:.4f}, paths=({p})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_linear(self, x)

    def _apply(self, fn, recurse=True):  # keep the sparse copies and the plain attributes beside the buffers
        out = super()._apply(fn, recurse)
        if self.csr is not None:
            self.csr = fn(self.csr)
        if self.packed is not None:
            p = self.packed
            self.packed = compiled_spmm.CsrWeight(fn(p.rowptr), fn(p.cols), fn(p.vals), p.in_features)
        if self.nm is not None:
            w = self.nm
            self.nm = compiled_structured.NmWeight(fn(w.vals), fn(w.idx), w.n, w.m, w.in_features)
        if self.bsr is not None:
            s = self.bsr
            self.bsr = compiled_structured.BsrWeight(
                fn(s.rowptr), fn(s.cols), fn(s.vals), s.r, s.c, s.in_features
            )
        self._refresh()
        return out


def _unpack(p: compiled_spmm.CsrWeight, shape: Sequence[int]) -> torch.Tensor:
    w = torch.zeros(shape[0], p.in_features, dtype=p.vals.dtype, device=p.vals.device)
    rows = torch.repeat_interleave(torch.arange(shape[0], device=p.vals.device), p.rowptr.diff().long())
    w[rows, p.cols.long()] = p.vals
    return w.reshape(tuple(shape))


def sparse_conv(layer: SparseConv2d, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """``layer``'s forward (then ReLU) as a plain function."""
    d = layer.__dict__
    if x.dim() == 3:
        return sparse_conv(layer, x.unsqueeze(0), relu).squeeze(0)
    n = x.shape[0]
    if d["_p"][_bucket(n)] == 2 and n > 0:
        return compiled_spmm.conv2d(
            d["_pk"], d["_b"], x, in_channels=d["in_channels"], kernel_size=d["kernel_size"],
            padding=d["padding"], relu=relu,
        )  # fmt: skip
    w = d["_w"] if d["_w"] is not None else layer.dense_weight()
    y = F.conv2d(x, w, d["_b"], 1, d["padding"])
    return torch.relu_(y) if relu else y


class SparseConv2d(nn.Module):
    """An inference-only stride-1, zero-padded Conv2d with a fixed (pruned) weight: dense (oneDNN on the
    zero-filled weight) or the compiled sparse convolution, per batch size (as :class:`SparseLinear`)."""

    def __init__(self, conv: nn.Conv2d, paths: dict[int, str]) -> None:
        super().__init__()
        if not compiled_spmm.conv_supported(conv):
            raise ValueError("SparseConv2d takes stride-1, dilation-1, ungrouped, zero-padded convolutions")
        weight = conv.weight.detach()
        self.in_channels, self.out_channels = int(conv.in_channels), int(conv.out_channels)
        self.kernel_size = (int(conv.kernel_size[0]), int(conv.kernel_size[1]))
        self.padding = (int(conv.padding[0]), int(conv.padding[1]))  # type: ignore[index]  # not 'same': checked
        self.paths = {b: paths[b] for b in BATCHES}
        self.nnz = int((weight != 0).sum())
        self.density = self.nnz / weight.numel() if weight.numel() else 1.0
        used = set(self.paths.values())
        bias = conv.bias.detach().clone() if conv.bias is not None else None
        self.register_buffer("bias", bias)
        self.register_buffer("weight", weight.clone() if "dense" in used else None)
        self.packed = compiled_spmm.to_csr(weight) if "compiled" in used else None
        self.weight_shape = tuple(weight.shape)
        self._refresh()

    def _refresh(self) -> None:
        d = self.__dict__
        d["_w"], d["_b"], d["_pk"] = self._buffers["weight"], self._buffers["bias"], self.packed
        d["_p"] = tuple(_CODES[self.paths[b]] for b in BATCHES)

    def dense_weight(self) -> torch.Tensor:
        if self._buffers["weight"] is not None:
            return self._buffers["weight"]
        assert self.packed is not None
        return _unpack(self.packed, self.weight_shape)

    def extra_repr(self) -> str:
        p = ", ".join(f"B≈{b}: {v}" for b, v in self.paths.items())
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, padding={self.padding}, "
            f"density={self.density:.4f}, paths=({p})"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_conv(self, x)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        if self.packed is not None:
            p = self.packed
            self.packed = compiled_spmm.CsrWeight(fn(p.rowptr), fn(p.cols), fn(p.vals), p.in_features)
        self._refresh()
        return out


class LinearChain(nn.Module):
    """Consecutive :class:`SparseLinear` layers (each feeding only the next, ReLU after some), as the
    traced forward calls them: per batch size, each run of layers whose path is ``compiled`` is ONE call
    of the compiled chain (at batch 1 that saves a call and an output allocation per layer, at larger
    batches the transposes between layers); the other layers run as :func:`sparse_linear`."""

    def __init__(self, layers: Sequence[SparseLinear], relus: Sequence[bool]) -> None:
        super().__init__()
        self.__dict__["layers"] = list(layers)  # not submodules: the model owns them
        self.relus = [bool(r) for r in relus]
        self._plans: list[list[tuple[Any, ...]]] | None = None
        for layer in self.layers:
            layer.chains.append(self)

    def extra_repr(self) -> str:
        return f"{len(self.layers)} layers, relu after: {self.relus}"

    def invalidate(self) -> None:
        self._plans = None

    def _plan(self, bucket: int) -> list[tuple[Any, ...]]:
        steps: list[tuple[Any, ...]] = []
        i = 0
        while i < len(self.layers):
            j = i
            while j < len(self.layers) and self.layers[j].__dict__["_p"][bucket] == 2:
                j += 1
            if j - i >= 2:
                packed = [self.layers[k].packed for k in range(i, j)]
                biases = [self.layers[k]._buffers["bias"] for k in range(i, j)]
                steps.append(("chain", compiled_spmm.linear_chain(packed, biases, self.relus[i:j])))
                i = j
            else:
                steps.append(("layer", self.layers[i], self.relus[i]))
                i += 1
        return steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The forward without ``nn.Module.__call__`` (what the traced model calls)."""
        if self._plans is None:
            self._plans = [self._plan(b) for b in range(len(BATCHES))]
        if x.dim() != 2 or x.shape[0] == 0:
            for layer, relu in zip(self.layers, self.relus):
                x = sparse_linear(layer, x, relu)
            return x
        for step in self._plans[_bucket(x.shape[0])]:
            x = step[1].forward(x) if step[0] == "chain" else sparse_linear(step[1], x, step[2])
        return x


def run_chain(chain: LinearChain, x: torch.Tensor) -> torch.Tensor:
    return chain.run(x)


# -- choosing the path ----------------------------------------------------------------------------------
def _time(
    fns: dict[str, Callable[[], Any]], repeats: int = 15, warmup: int = 3, budget_s: float = 0.3
) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved (so load drift hits all alike). Slow
    calls get fewer repeats (at least 3) so that one measurement takes about ``budget_s``."""
    first = {}
    for k, f in fns.items():
        t0 = time.perf_counter()
        f()
        first[k] = time.perf_counter() - t0
    per_round = max(sum(first.values()), 1e-9)
    repeats = max(3, min(repeats, int(budget_s / per_round)))
    warmup = min(warmup, max(0, repeats // 3))
    for _ in range(warmup):
        for f in fns.values():
            f()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            samples[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def _pick(times: dict[str, float]) -> str:
    """Dense unless the fastest sparse path takes at most MARGIN of the dense time."""
    best = min((k for k in times if k != "dense"), key=times.__getitem__, default=None)
    return best if best is not None and times[best] <= MARGIN * times["dense"] else "dense"


def _measure(fns: dict[str, Callable[[], Any]]) -> str:
    """The path :func:`_pick` takes on one interleaved timing of ``fns``, confirmed: a sparse winner is timed
    again against dense alone and kept only if it wins by the margin a second time. On a loaded machine one
    timing can flatter a path that only ties dense (seen: an N:M layer at batch 64 chosen at 0.9× that ran
    at 1.0×); two independent flukes in a row are much rarer, and a layer that truly wins pays one more
    timing."""
    best = _pick(_time(fns))
    if best == "dense":
        return best
    return _pick(_time({"dense": fns["dense"], best: fns[best]}))


def _forced(policy: str, candidates: Sequence[str]) -> dict[int, str]:
    path = "csr" if policy == "sparse" else policy
    return {b: path if path in candidates else "dense" for b in BATCHES}


def structured_path(
    weight: torch.Tensor, pattern: Pattern | None, *, structured: bool | None = None
) -> str | None:
    """``"nm"`` or ``"bsr"`` when this Linear weight can run the structured kernel of ``pattern`` here,
    else None (no pattern, a shape it does not tile, not fp32, or — for N:M — no extension: torch has no
    N:M format on the CPU; blocks fall back to torch's BSR)."""
    if pattern is None or not pattern.structured or weight.dtype != torch.float32 or weight.dim() != 2:
        return None
    if not pattern.fits(weight.shape):
        return None
    if pattern.kind == "nm":
        if structured is None:
            structured = structured_available()
        return "nm" if structured else None
    return "bsr"


@torch.no_grad()
def choose_paths(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    policy: str,
    *,
    compiled: bool | None = None,
    pattern: Pattern | None = None,
    structured: bool | None = None,
) -> dict[int, str]:
    """Per measured batch size, the path of this Linear layer under ``policy`` (``pattern``: the one the
    layer obeys, which adds its structured kernel to the candidates)."""
    if compiled is None:
        compiled = compiled_available()
    candidates = ["dense", "csr"] + (["compiled"] if compiled and weight.dtype == torch.float32 else [])
    special = structured_path(weight, pattern, structured=structured) if policy not in ("dense",) else None
    if special is not None:
        candidates.append(special)
    density = float((weight != 0).sum()) / max(1, weight.numel())
    if policy == "dense" or weight.numel() == 0:
        return {b: "dense" for b in BATCHES}
    if policy in ("sparse", "csr", "compiled", "nm", "bsr"):
        return _forced(policy, candidates)
    if policy == "threshold":
        if "compiled" in candidates:
            return {b: "compiled" if density <= COMPILED_THRESHOLDS[b] else "dense" for b in BATCHES}
        big = weight.numel() >= MIN_NUMEL
        return {b: "csr" if big and density <= THRESHOLDS[b] else "dense" for b in BATCHES}
    if density > MAX_MEASURED_DENSITY:
        return {b: "dense" for b in BATCHES}
    probes = {p: SparseLinear(weight, bias, {b: p for b in BATCHES}, pattern=pattern) for p in candidates}
    g = torch.Generator().manual_seed(0)
    out = {}
    for b in BATCHES:
        x = torch.randn(b, weight.shape[1], generator=g, dtype=weight.dtype)
        out[b] = _measure({p: partial(layer, x) for p, layer in probes.items()})
    return out


@torch.no_grad()
def choose_conv_paths(
    conv: nn.Conv2d, input_shape: Sequence[int] | None, policy: str, *, compiled: bool | None = None
) -> dict[int, str]:
    """Per measured batch size, ``"dense"`` or ``"compiled"`` for this convolution under ``policy``
    (``input_shape``: its (C, H, W) input, needed to time it; None: never measured, dense)."""
    if compiled is None:
        compiled = compiled_available()
    weight = conv.weight.detach()
    ok = compiled and weight.dtype == torch.float32 and compiled_spmm.conv_supported(conv)
    density = float((weight != 0).sum()) / max(1, weight.numel())
    if not ok or policy in ("dense", "csr", "sparse") or weight.numel() == 0:
        return {b: "dense" for b in BATCHES}
    if policy == "compiled":
        return {b: "compiled" for b in BATCHES}
    if policy == "threshold":
        return {b: "compiled" if density <= CONV_THRESHOLDS[b] else "dense" for b in BATCHES}
    if density > MAX_MEASURED_DENSITY or input_shape is None:
        return {b: "dense" for b in BATCHES}
    probes = {p: SparseConv2d(conv, {b: p for b in BATCHES}) for p in ("dense", "compiled")}
    g = torch.Generator().manual_seed(0)
    out = {}
    for b in BATCHES:
        x = torch.randn(b, *input_shape, generator=g, dtype=weight.dtype)
        out[b] = _measure({p: partial(layer, x) for p, layer in probes.items()})
    return out


# -- tracing ---------------------------------------------------------------------------------------------
class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (SparseLinear, SparseConv2d)) or super().is_leaf_module(m, qualname)


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu, torch.relu_)
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), nn.ReLU)
    return False


def trace_flat(model: nn.Module) -> nn.Module:
    """The model's forward traced by torch.fx into one flat function, or ``model`` if it cannot be traced.

    Why: at batch 1 a LeNet-300-100 forward on a 5%-dense ticket is a few µs of kernels, and calling three
    Linear modules through ``nn.Module.__call__`` adds ~10 µs more. The traced forward calls
    :func:`sparse_linear` / :func:`sparse_conv` directly on each layer (held as a plain attribute), passes
    a following ReLU into that call (fused in the compiled kernels, in place otherwise), and replaces each
    run of Linear layers that feed only each other by one :class:`LinearChain`. Submodules stay registered,
    so ``state_dict``, ``.to()`` and :func:`path_summary` work as on the eager model.
    """
    try:
        graph = _Tracer().trace(model)
        gm = fx.GraphModule(model, graph, class_name=type(model).__name__ + "Ticket")
    except Exception:  # data-dependent control flow etc.: the eager model is still correct
        return model
    made: set[fx.Node] = set()
    g = gm.graph
    for node in list(g.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        sub = gm.get_submodule(str(node.target))
        if isinstance(sub, (SparseLinear, SparseConv2d)):
            attr = "_sparse_" + str(node.target).replace(".", "_")
            gm.__dict__[attr] = sub
            fn = sparse_linear if isinstance(sub, SparseLinear) else sparse_conv
            with g.inserting_before(node):
                new = g.call_function(fn, (g.get_attr(attr), node.args[0], False))
            node.replace_all_uses_with(new)
            g.erase_node(node)
            made.add(new)
    for node in list(g.nodes):  # layer → ReLU: the layer applies it (its output has no other reader)
        src = node.args[0] if node.args else None
        if _is_relu(gm, node) and src in made and isinstance(src, fx.Node) and len(src.users) == 1:
            src.args = (*src.args[:2], True)
            node.replace_all_uses_with(src)
            g.erase_node(node)
    # runs of Linear layers, each feeding only the next: one LinearChain call
    linears = [n for n in g.nodes if n in made and n.target is sparse_linear]
    runs: list[list[fx.Node]] = []
    for node in linears:
        src = node.args[1]
        if runs and runs[-1][-1] is src and len(src.users) == 1:  # type: ignore[union-attr]
            runs[-1].append(node)
        else:
            runs.append([node])
    for i, run in enumerate(r for r in runs if len(r) >= 2):
        getters = [n.args[0] for n in run]
        layers = [gm.__dict__[str(a.target)] for a in getters]  # type: ignore[union-attr]
        chain = LinearChain(layers, [bool(n.args[2]) for n in run])
        attr = f"_chain_{i}"
        gm.__dict__[attr] = chain
        with g.inserting_before(run[0]):
            new = g.call_function(run_chain, (g.get_attr(attr), run[0].args[1]))
        run[-1].replace_all_uses_with(new)
        for n in reversed(run):
            g.erase_node(n)
        for a in getters:
            if isinstance(a, fx.Node) and not a.users:
                g.erase_node(a)
    g.lint()
    gm.recompile()
    return gm


# -- the model -------------------------------------------------------------------------------------------
def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def _conv_input_shapes(model: nn.Module, names: Sequence[str], input_shape: Sequence[int]) -> dict[str, Any]:
    """(C, H, W) of each named convolution's input, from one dense forward of a zero batch."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str, module: nn.Module, args: tuple[Any, ...]) -> None:  # returns None: input unchanged
        shapes.setdefault(name, tuple(int(d) for d in args[0].shape[1:]))

    hooks = [model.get_submodule(n).register_forward_pre_hook(partial(record, n)) for n in names]
    try:
        model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return shapes


@torch.no_grad()
def sparsify_ticket_model(model: nn.Module, ticket: Ticket, *, policy: str = "auto") -> nn.Module:
    """Swap every prunable Linear of ``model`` (holding ``ticket``'s weights) for a :class:`SparseLinear`
    and every prunable stride-1 Conv2d for a :class:`SparseConv2d`, with paths chosen under ``policy``."""
    if policy not in POLICIES:
        raise ConfigError(f"policy '{policy}' is not one of: {', '.join(POLICIES)}")
    compiled = policy not in ("dense", "csr", "sparse") and compiled_available()
    if policy == "compiled" and not compiled:
        reason = compiled_spmm.spmm_unavailable_reason(build=False)
        raise ConfigError(f"policy 'compiled': the compiled sparse kernel is unavailable here ({reason})")
    structured = (
        policy not in ("dense", "csr", "sparse", "compiled")
        and ticket.pattern is not None  # no build for a ticket without a structured pattern
        and structured_available()
    )
    if policy == "nm" and not structured and ticket.pattern is not None and ticket.pattern.kind == "nm":
        reason = compiled_structured.structured_unavailable_reason(build=False)
        raise ConfigError(f"policy 'nm': the compiled N:M kernel is unavailable here ({reason})")
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    convs = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and f"{n}.weight" in ticket.masks and compiled_spmm.conv_supported(m)
    ]
    shapes = _conv_input_shapes(model, [n for n, _ in convs], ticket.input_shape) if convs else {}
    for name, conv in convs:
        paths = choose_conv_paths(conv, shapes.get(name), policy, compiled=compiled)
        _set_module(model, name, SparseConv2d(conv, paths))
    for name, layer in linears:
        if f"{name}.weight" not in ticket.masks:
            continue
        w = layer.weight.detach()
        b = layer.bias.detach() if layer.bias is not None else None
        pat = ticket.layer_pattern(f"{name}.weight")
        paths = choose_paths(w, b, policy, compiled=compiled, pattern=pat, structured=structured)
        _set_module(model, name, SparseLinear(w, b, paths, pattern=pat))
    return model


def path_summary(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per sparse layer: its kind, density and the path each measured batch size takes (on CUDA: each
    Linear converted to a 2:4 semi-structured weight, path ``semi_structured`` at every size)."""
    out: dict[str, dict[str, Any]] = {}
    for n, m in model.named_modules():
        if isinstance(m, (SparseLinear, SparseConv2d)):
            kind = "linear" if isinstance(m, SparseLinear) else "conv"
            out[n] = {"kind": kind, "density": m.density, "paths": dict(m.paths)}
        elif isinstance(m, nn.Linear) and getattr(m, "semi_structured", None) is not None:
            paths = {b: "semi_structured" for b in BATCHES}
            out[n] = {"kind": "linear", "density": m.semi_structured, "paths": paths}
    return out


def to_semi_structured(model: nn.Module, ticket: Ticket) -> dict[str, str]:
    """Convert, in place, every Linear of ``model`` (on CUDA, fp16/bf16) whose ticket layer obeys 2:4 to a
    ``torch.sparse`` semi-structured weight; the others stay dense. Returns, per 2:4 layer left dense, why
    (its shape is not a multiple of the library's tile, a GPU without sparse tensor cores, ...)."""
    left: dict[str, str] = {}
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, nn.Linear):
            continue
        pat = ticket.layer_pattern(f"{name}.weight")
        if pat is None or pat.kind != "nm" or (pat.n, pat.m) != (2, 4):
            continue
        reason = semi_structured.semi_structured_unsupported(layer.weight)
        if reason is not None:
            left[name] = reason
            continue
        density = float((layer.weight != 0).float().mean())
        sparse = semi_structured.to_semi_structured(layer.weight.detach())
        layer.weight = nn.Parameter(sparse, requires_grad=False)
        layer.semi_structured = density  # type: ignore[assignment]  # read by path_summary
    return left


def load_ticket(
    path: str | Path,
    *,
    policy: str = "auto",
    trace: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """The ticket at ``path`` as an eval-mode inference model (CPU: fp32 compute, fp16 values upcast).

    Verifies the file first (checksum, header claims, shapes against the rebuilt architecture; never
    executes code). Outputs equal the dense masked model's within floating-point tolerance.
    ``model.ticket`` holds the header; :func:`path_summary` says which path each layer took.

    ``device="cuda"`` (with ``dtype=torch.float16`` or ``torch.bfloat16`` for the sparse tensor cores):
    the dense model on the GPU, every Linear whose layer obeys 2:4 converted by
    :func:`to_semi_structured` unless ``policy="dense"``; ``model.semi_structured_left`` says which 2:4
    layers stayed dense and why. The CPU paths and their timing do not apply there.
    """
    if policy not in POLICIES:
        raise ConfigError(f"policy '{policy}' is not one of: {', '.join(POLICIES)}")
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"load_ticket runs on cpu or cuda, not {dev.type}")
    if dev.type == "cpu" and dtype not in (None, torch.float32):
        raise ConfigError(f"on the CPU a loaded ticket computes in float32, not {dtype}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for, but torch sees no CUDA device here")
    ticket = read_ticket(path)
    model = ticket.build()
    model.eval()
    model.requires_grad_(False)
    if dev.type == "cuda":
        model.to(device=dev, dtype=dtype or torch.float32)
        left = to_semi_structured(model, ticket) if policy != "dense" else {}
        model.semi_structured_left = left  # type: ignore[assignment]
    else:
        sparsify_ticket_model(model, ticket, policy=policy)
        if trace:
            model = trace_flat(model)
    model.ticket = dict(ticket.header)  # type: ignore[assignment]  # a plain attribute: the header
    return model
