"""``load_ticket``: a ticket file as a runnable CPU inference model whose sparse layers take the fastest path.

The model is the registered architecture (``create_model`` by name) with the ticket's weights; each
prunable Linear becomes a :class:`SparseLinear` that runs, per batch size, either the dense matmul on the
zero-filled weight or ``torch.sparse`` CSR (``addmv`` for one row, ``addmm`` for more). Convolutions keep
the dense path (oneDNN's convolution on the zero-filled weight; a sparse convolution is not attempted).
The model is then traced with torch.fx into one flat forward (:func:`trace_flat`): at batch 1 a LeNet layer
takes a few microseconds, the same order as a Python module call, so the traced forward calls the sparse
layers as plain functions. ``trace=False`` keeps the eager module tree.

Which path wins depends on the layer's shape and density, the batch size, the CPU and its thread count,
so the default (``policy="auto"``) measures it at load time: per Linear, batches of 1, 8 and 64 rows, the
two paths interleaved (median of 15 calls after warm-up), and CSR is taken only where it is at least 10%
faster. A batch of B rows then uses the decision of the nearest measured size (log scale). That costs a
few milliseconds per layer and makes the model never meaningfully slower than dense. ``policy="threshold"``
skips the measurement and applies fixed density limits measured once on a 2-core x86 CPU (AVX-512, MKL,
1 thread; see :data:`THRESHOLDS`), ``"dense"`` and ``"sparse"`` force a path (tests use ``"sparse"`` to
check the CSR path against the dense masked model).
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import ConfigError
from .ticket import Ticket, read_ticket

__all__ = ["POLICIES", "THRESHOLDS", "SparseLinear", "load_ticket", "sparsify_ticket_model", "path_summary"]

POLICIES = ("auto", "threshold", "dense", "sparse")
BATCHES = (1, 8, 64)  # measured batch sizes; a batch uses the nearest one on a log scale
# policy="threshold": CSR where density <= limit[batch] and the layer has >= MIN_NUMEL weights. Measured with
# torch 2.14 / MKL, 1 thread: one-row CSR addmv beats the dense matvec of a 300×784 layer at 5% (7.3 vs 13 µs)
# but never on a 100×300 one (fixed CSR overhead ≈ 4 µs); with 64 rows CSR wins up to ~20-30% density.
THRESHOLDS = {1: 0.05, 8: 0.1, 64: 0.25}
MIN_NUMEL = 65536
MARGIN = 0.9  # CSR must take at most 90% of the dense time to be chosen


_CODES = {"dense": 0, "csr": 1}


def sparse_linear(layer: SparseLinear, x: torch.Tensor) -> torch.Tensor:
    """``layer``'s forward as a plain function (what the traced model calls: no module call per layer)."""
    d = layer.__dict__
    if x.dim() != 2:
        y = sparse_linear(layer, x.reshape(-1, d["in_features"]))
        return y.reshape(*x.shape[:-1], d["out_features"])
    n = x.shape[0]
    path = d["_p1"] if n <= 2 else d["_p8"] if n <= 22 else d["_p64"]
    b = d["_b"]
    if path == 0 or n == 0:
        w = d["_w"] if d["_w"] is not None else d["_c"].to_dense()
        if n == 1 and b is not None:  # addmv: ~25% less than F.linear's addmm for one row
            return torch.addmv(b, w, x.view(-1)).view(1, -1)
        return F.linear(x, w, b)
    c = d["_c"]
    if n == 1:
        v = x.view(-1)
        return (torch.addmv(b, c, v) if b is not None else torch.mv(c, v)).view(1, -1)
    xt = x.t()
    return (torch.addmm(d["_bcol"], c, xt) if b is not None else c @ xt).t()


class SparseLinear(nn.Module):
    """An inference-only Linear with a fixed (pruned) weight: dense or CSR per batch size.

    ``paths`` maps each of :data:`BATCHES` to ``"dense"`` or ``"csr"``; a batch of B rows takes the path
    of the nearest measured size (B ≤ 2 → 1, B ≤ 22 → 8, else 64). Only the representations some batch
    size uses are kept (a layer that always runs CSR holds no dense weight). The forward is kept lean —
    plain attributes, no per-call arithmetic — because at batch 1 a LeNet layer's matmul takes a few
    microseconds, the same order as Python's dispatch. Not differentiable through the CSR path: fine-tune
    with :func:`ticketsearch.export.finetune` instead.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, paths: dict[int, str]) -> None:
        super().__init__()
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.paths = {b: paths[b] for b in BATCHES}
        self.nnz = int((weight != 0).sum())
        self.density = self.nnz / weight.numel() if weight.numel() else 1.0
        used = set(self.paths.values())
        self.register_buffer("bias", bias.detach().clone() if bias is not None else None)
        self.register_buffer("weight", weight.detach().clone() if "dense" in used else None)
        self.csr: torch.Tensor | None = None
        if "csr" in used:
            with warnings.catch_warnings():  # "sparse CSR support is in beta": we test the ops we use
                warnings.simplefilter("ignore")
                self.csr = weight.detach().to_sparse_csr()
        self._refresh()

    def _refresh(self) -> None:
        """Plain-attribute copies of what the forward reads (nn.Module's __getattr__ is slow per call)."""
        d = self.__dict__
        d["_w"], d["_b"], d["_c"] = self._buffers["weight"], self._buffers["bias"], self.csr
        d["_bcol"] = self._buffers["bias"][:, None] if self._buffers["bias"] is not None else None
        d["_p1"], d["_p8"], d["_p64"] = (_CODES[self.paths[b]] for b in BATCHES)

    def extra_repr(self) -> str:
        p = ", ".join(f"B≈{b}: {v}" for b, v in self.paths.items())
        return f"in={self.in_features}, out={self.out_features}, density={self.density:.4f}, paths=({p})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_linear(self, x)

    def _apply(self, fn, recurse=True):  # keep the CSR copy and the plain attributes beside the buffers
        out = super()._apply(fn, recurse)
        if self.csr is not None:
            self.csr = fn(self.csr)
        self._refresh()
        return out


# -- choosing the path ----------------------------------------------------------------------------------
def _time(fns: dict[str, Callable[[], Any]], repeats: int = 15, warmup: int = 3) -> dict[str, float]:
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


@torch.no_grad()
def choose_paths(weight: torch.Tensor, bias: torch.Tensor | None, policy: str) -> dict[int, str]:
    """Per measured batch size, ``"dense"`` or ``"csr"`` for this layer under ``policy``."""
    density = float((weight != 0).sum()) / max(1, weight.numel())
    if policy == "dense" or weight.numel() == 0:
        return {b: "dense" for b in BATCHES}
    if policy == "sparse":
        return {b: "csr" for b in BATCHES}
    if policy == "threshold":
        big = weight.numel() >= MIN_NUMEL
        return {b: "csr" if big and density <= THRESHOLDS[b] else "dense" for b in BATCHES}
    if density > 0.5:  # CSR never came close above half density
        return {b: "dense" for b in BATCHES}
    both = {1: "dense", 8: "dense", 64: "dense"}
    probe_dense = SparseLinear(weight, bias, {b: "dense" for b in BATCHES})
    probe_csr = SparseLinear(weight, bias, {b: "csr" for b in BATCHES})
    g = torch.Generator().manual_seed(0)
    for b in BATCHES:
        x = torch.randn(b, weight.shape[1], generator=g, dtype=weight.dtype)
        t = _time({"dense": partial(probe_dense, x), "csr": partial(probe_csr, x)})
        both[b] = "csr" if t["csr"] <= MARGIN * t["dense"] else "dense"
    return both


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, SparseLinear) or super().is_leaf_module(m, qualname)


def trace_flat(model: nn.Module) -> nn.Module:
    """The model's forward traced by torch.fx into one flat function, or ``model`` if it cannot be traced.

    Why: at batch 1 a LeNet-300-100 forward on a 5%-dense ticket is ~13 µs of kernels, and calling three
    Linear modules through ``nn.Module.__call__`` adds ~10 µs more; the traced forward calls
    :func:`sparse_linear` directly on each layer (held as a plain attribute), and applies ReLU in place on
    a sparse layer's fresh output. Submodules stay registered, so ``state_dict``, ``.to()`` and
    :func:`path_summary` work as on the eager model.
    """
    try:
        graph = _Tracer().trace(model)
        gm = fx.GraphModule(model, graph, class_name=type(model).__name__ + "Ticket")
    except Exception:  # data-dependent control flow etc.: the eager model is still correct
        return model
    made: set[fx.Node] = set()
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), SparseLinear):
            attr = "_sparse_" + str(node.target).replace(".", "_")
            gm.__dict__[attr] = gm.get_submodule(node.target)
            with gm.graph.inserting_before(node):
                new = gm.graph.call_function(sparse_linear, (gm.graph.get_attr(attr), *node.args))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            made.add(new)
    for node in list(gm.graph.nodes):
        relu = node.op == "call_function" and node.target in (F.relu, torch.relu)
        if relu and not node.kwargs.get("inplace") and node.args and node.args[0] in made:
            if len(node.args[0].users) == 1:
                with gm.graph.inserting_before(node):
                    new = gm.graph.call_function(torch.relu_, (node.args[0],))
                node.replace_all_uses_with(new)
                gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


@torch.no_grad()
def sparsify_ticket_model(model: nn.Module, ticket: Ticket, *, policy: str = "auto") -> nn.Module:
    """Swap every prunable Linear of ``model`` (holding ``ticket``'s weights) for a :class:`SparseLinear`."""
    if policy not in POLICIES:
        raise ConfigError(f"policy '{policy}' is not one of: {', '.join(POLICIES)}")
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, layer in linears:
        pname = f"{name}.weight"
        if pname not in ticket.masks:
            continue
        w = layer.weight.detach()
        b = layer.bias.detach() if layer.bias is not None else None
        _set_module(model, name, SparseLinear(w, b, choose_paths(w, b, policy)))
    return model


def path_summary(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per SparseLinear: its density and the path each measured batch size takes."""
    return {
        n: {"density": m.density, "paths": dict(m.paths)}
        for n, m in model.named_modules()
        if isinstance(m, SparseLinear)
    }


def load_ticket(path: str | Path, *, policy: str = "auto", trace: bool = True) -> nn.Module:
    """The ticket at ``path`` as an eval-mode CPU inference model (fp32 compute, fp16 values upcast).

    Verifies the file first (checksum, header claims, shapes against the rebuilt architecture; never
    executes code). Outputs equal the dense masked model's within floating-point tolerance.
    ``model.ticket`` holds the header; :func:`path_summary` says which path each layer took.
    """
    if policy not in POLICIES:
        raise ConfigError(f"policy '{policy}' is not one of: {', '.join(POLICIES)}")
    ticket = read_ticket(path)
    model = ticket.build()
    model.eval()
    model.requires_grad_(False)
    sparsify_ticket_model(model, ticket, policy=policy)
    if trace:
        model = trace_flat(model)
    model.ticket = dict(ticket.header)  # type: ignore[assignment]  # a plain attribute: the header
    return model
