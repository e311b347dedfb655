"""Masked Linear/Conv2d layers and the one backend switch every masked layer goes through.

A layer's ``backend`` names a kernel of op ``masked`` in :mod:`ticketsearch.sparse.kernels` (the one
registry of kernels): ``inplace`` (default; pruned weights held at zero, their gradients zeroed after backward,
dense forward), ``reference`` (``W ⊙ M`` in every forward: the spec and the oracle in tests), ``triton`` and
``triton_bits`` (Triton matmuls masking the weight tile in-kernel; CUDA). A new kernel is one module plus a
registry entry there. :func:`resolve_backend` turns the user-facing ``--backend`` value (``auto`` or a
kernel name) into the kernel a run uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import ConfigError, MaskMismatchError
from ..core.mask import Mask
from .kernels import KERNELS, MASKED, Kernel, kernels

__all__ = [
    "MaskedLinear",
    "MaskedConv2d",
    "MaskedLayer",
    "BACKENDS",
    "AUTO",
    "DEFAULT_BACKEND",
    "register_backend",
    "set_backend",
    "resolve_backend",
    "self_check",
    "sparsify",
    "prunable_parameters",
    "prunable_shapes",
    "output_parameter",
    "apply_mask",
    "get_mask",
    "mask_gradients",
    "grad_masker",
    "mask_pairs",
    "dense_gradients",
    "enforce_mask",
    "masked_layers",
    "param_name",
]

# the registry's live index of `masked` kernels: a layer's forward finds its kernel with one dict lookup
_MASKED_KERNELS: dict[str, Kernel] = KERNELS.by_op(MASKED)


class _Backends(Mapping[str, Any]):
    """Read-only view, name → forward override (None: the dense op), of the registry's ``masked`` kernels."""

    def __getitem__(self, name: str) -> Callable[[MaskedLayer, torch.Tensor], torch.Tensor] | None:
        return _MASKED_KERNELS[name].forward

    def __iter__(self) -> Iterator[str]:
        return iter([k.name for k in kernels(MASKED)])

    def __len__(self) -> int:
        return len(_MASKED_KERNELS)

    def __repr__(self) -> str:
        return f"BACKENDS({', '.join(self)})"


BACKENDS: Mapping[str, Callable[[MaskedLayer, torch.Tensor], torch.Tensor] | None] = _Backends()


def register_backend(name: str, fn: Callable[[MaskedLayer, torch.Tensor], torch.Tensor]) -> None:
    """Register (or replace) a ``masked`` kernel whose forward is ``fn(layer, x)``.

    Shorthand for ``KERNELS.register_kernel(Kernel(name, "masked", ..., forward=fn), replace=True)``; a
    kernel with devices, dtypes or an availability probe is declared as a :class:`Kernel` directly.
    """
    doc = (fn.__doc__ or "").strip().splitlines()
    kernel = Kernel(name=name, op=MASKED, description=doc[0] if doc else name, forward=fn)
    KERNELS.register_kernel(kernel, replace=True)


class MaskedLayer:
    """Mixin holding a bool mask buffer (non-persistent: a model's state_dict is the same dense or sparse)."""

    weight: nn.Parameter
    weight_mask: torch.Tensor | None
    _mask_f: torch.Tensor | None
    _derived: dict[str, torch.Tensor]
    backend: str

    def _init_mask(self) -> None:
        self.register_buffer("weight_mask", None, persistent=False)  # type: ignore[attr-defined]  # mixin of nn.Module
        self._mask_f = None
        self._derived = {}
        self.backend = "inplace"

    def set_mask(self, mask: torch.Tensor | None) -> None:
        self._derived = {}
        if mask is None:
            self.weight_mask = None
            self._mask_f = None
            return
        if tuple(mask.shape) != tuple(self.weight.shape):
            raise MaskMismatchError(
                f"mask of shape {list(mask.shape)} for weight of shape {list(self.weight.shape)}"
            )
        self.weight_mask = mask.to(device=self.weight.device, dtype=torch.bool)
        self._mask_f = None
        with torch.no_grad():
            self.weight.mul_(self.mask_float())

    def mask_float(self) -> torch.Tensor:
        """The mask as the weight's dtype, cached: multiplying by it is the cheapest masking op."""
        m = self.weight_mask
        assert m is not None
        if (
            self._mask_f is None
            or self._mask_f.device != self.weight.device
            or self._mask_f.dtype != self.weight.dtype
        ):
            self._mask_f = m.to(device=self.weight.device, dtype=self.weight.dtype)
        return self._mask_f

    def derived_mask(self, key: str, make: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``make(bool mask)`` cached under ``key`` until the mask changes or the layer moves: a kernel that
        wants its own layout (e.g. bit-packed words) builds it once per mask, not once per step."""
        m = self.weight_mask
        assert m is not None
        out = self._derived.get(key)
        if out is None or out.device != m.device:
            out = self._derived[key] = make(m)
        return out

    def effective_weight(self) -> torch.Tensor:
        """The weight with its mask applied: as is where the backend holds pruned weights at zero
        (``inplace``) or is not a registered kernel, else ``W ⊙ M``."""
        if self.weight_mask is None:
            return self.weight
        k = _MASKED_KERNELS.get(self.backend)
        if k is None or k.masks_gradients:
            return self.weight
        return self.weight * self.weight_mask.to(self.weight.dtype)

    def dense_forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The layer's dense op with ``weight`` in place of its own (what kernels call)."""
        raise NotImplementedError

    def _apply(self, fn, recurse=True):  # keep the float mask cache on the right device/dtype
        out = super()._apply(fn, recurse)  # type: ignore[misc]
        self._mask_f = None
        self._derived = {}
        return out


# torch's stubs type Linear/_ConvNd.weight as Tensor; nn.Module only ever holds a Parameter there
class MaskedLinear(MaskedLayer, nn.Linear):  # type: ignore[misc]
    """nn.Linear whose weight may carry a mask; the backend decides how the mask is enforced."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_mask()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_mask is not None:
            k = _MASKED_KERNELS.get(self.backend)
            if k is not None and k.forward is not None:
                return k.forward(self, x)
        return F.linear(x, self.effective_weight(), self.bias)

    def dense_forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, self.bias)


class MaskedConv2d(MaskedLayer, nn.Conv2d):  # type: ignore[misc]  # weight: see MaskedLinear
    """nn.Conv2d whose weight may carry a mask."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_mask()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_mask is not None:
            k = _MASKED_KERNELS.get(self.backend)
            if k is not None and k.forward is not None:
                return k.forward(self, x)
        return self._conv_forward(x, self.effective_weight(), self.bias)

    def dense_forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, weight, self.bias)


_SWAP: dict[type[nn.Module], type[nn.Module]] = {nn.Linear: MaskedLinear, nn.Conv2d: MaskedConv2d}


def sparsify(model: nn.Module) -> nn.Module:
    """Turn every plain nn.Linear/nn.Conv2d of a (third-party) model into its masked twin, in place."""
    for module in model.modules():
        cls = _SWAP.get(type(module))
        if cls is not None:
            module.__class__ = cls
            cast(MaskedLayer, module)._init_mask()  # its class is now a MaskedLayer
    return model


def masked_layers(model: nn.Module) -> Iterator[tuple[str, MaskedLayer]]:
    for name, module in model.named_modules():
        if isinstance(module, MaskedLayer):
            yield name, module


def param_name(module_name: str) -> str:
    """The weight's name in ``named_parameters`` / a Mask for the module called ``module_name``."""
    return f"{module_name}.weight" if module_name else "weight"


def _grad_masked(layer: MaskedLayer) -> bool:
    """Whether the layer's mask is enforced by zeroing gradients (``inplace``) rather than in the forward."""
    k = _MASKED_KERNELS.get(layer.backend)
    return k is not None and k.masks_gradients


def prunable_parameters(model: nn.Module, *, include_output: bool = True) -> dict[str, nn.Parameter]:
    """Weights of masked Linear/Conv layers, in module order. Biases and norms are never pruned."""
    params = {param_name(n): m.weight for n, m in masked_layers(model)}
    if not include_output:
        params.pop(output_parameter(model), None)
    return params


def prunable_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in prunable_parameters(model).items()}


def output_parameter(model: nn.Module) -> str:
    """Name of the output layer's weight: ``model.output_layer`` if the model declares it, else the last one."""
    declared = getattr(model, "output_layer", None)
    if declared:
        return declared if declared.endswith(".weight") else f"{declared}.weight"
    names = list(prunable_parameters(model))
    if not names:
        raise ConfigError(f"model {type(model).__name__} has no prunable (Linear/Conv2d) layers")
    return names[-1]


def set_backend(model: nn.Module, backend: str) -> None:
    """Point every masked layer at the ``masked`` kernel ``backend``; fails early on an unknown or
    unavailable kernel."""
    k = _MASKED_KERNELS.get(backend)
    if k is None:
        raise ConfigError(f"unknown sparse backend '{backend}' (choose from: {', '.join(BACKENDS)})")
    reason = k.unavailable_reason(build=True)
    if reason is not None:
        raise ConfigError(f"sparse backend '{backend}' is unavailable here ({reason})")
    for _, layer in masked_layers(model):
        layer.backend = backend


AUTO = "auto"  # not a kernel: what --backend means by default (see resolve_backend)
DEFAULT_BACKEND = "inplace"
_CHECKED: dict[tuple[str, str], str | None] = {}


def self_check(backend: str, device: torch.device | str) -> str | None:
    """Why the ``masked`` kernel ``backend`` disagrees with the reference kernel on ``device`` (None: it
    agrees); once per kernel and device per process.

    A small random Linear (an all-zero row and column included), forward and backward, against
    ``F.linear(x, W ⊙ M)`` through autograd: a kernel that imports but computes wrong (a broken driver, an
    unsupported GPU) is caught before it trains a ticket.
    """
    dev = torch.device(device)
    key = (backend, str(dev))
    if key in _CHECKED:
        return _CHECKED[key]
    reason: str | None
    try:
        g = torch.Generator().manual_seed(0)
        mask = torch.rand(19, 37, generator=g) < 0.3
        mask[3] = False
        mask[:, 5] = False
        w, b = torch.randn(19, 37, generator=g), torch.randn(19, generator=g)
        layers: list[MaskedLinear] = []
        for name in (backend, "reference"):
            lin = MaskedLinear(37, 19)
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(b)
            apply_mask(lin.to(dev), {"weight": mask}, backend=name)
            layers.append(lin)
        x = torch.randn(5, 37, generator=g)
        up = torch.randn(5, 19, generator=g).to(dev)
        outs = []
        for layer in layers:
            xi = x.to(dev).requires_grad_()
            y = layer(xi)
            y.backward(up)
            mask_gradients(layer)
            assert xi.grad is not None and layer.weight.grad is not None and layer.bias.grad is not None
            outs.append([y.detach(), xi.grad, layer.weight.grad, layer.bias.grad])
        worst = max(float((a - b).abs().max()) for a, b in zip(*outs))
        ok = all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(*outs))
        reason = None if ok else f"disagrees with the reference kernel (max |difference| {worst:.3g})"
    except Exception as exc:  # a kernel that fails to compile or launch is as unusable as a wrong one
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    _CHECKED[key] = reason
    return reason


def resolve_backend(name: str, device: torch.device | str) -> str:
    """The ``masked`` kernel a run uses for ``--backend name`` on ``device``.

    ``auto``: ``triton`` on CUDA when Triton imports and the kernel passes :func:`self_check`, else
    ``inplace`` (the default, and the fastest measured on CPU). A kernel named explicitly must exist, run
    on ``device`` and be available here, or a :class:`ConfigError` says why.
    """
    dev = torch.device(device)
    if name == AUTO:
        k = _MASKED_KERNELS.get("triton")
        if (
            dev.type == "cuda"
            and k is not None
            and k.supports(dev, torch.float32)
            and k.available(build=False)
            and self_check(k.name, dev) is None
        ):
            return k.name
        return DEFAULT_BACKEND
    k = _MASKED_KERNELS.get(name)
    if k is None:
        raise ConfigError(f"unknown backend '{name}' (choose from: {', '.join([AUTO, *BACKENDS])})")
    if not k.supports(dev, torch.float32):
        raise ConfigError(f"backend '{name}' needs {k.needs()}, and this run is on {dev.type}")
    reason = k.unavailable_reason(build=True)
    if reason is not None:
        raise ConfigError(f"backend '{name}' is unavailable here ({reason})")
    return name


def apply_mask(
    model: nn.Module, mask: Mapping[str, torch.Tensor], *, backend: str | None = None
) -> nn.Module:
    """Attach ``mask`` to the model's layers and zero the pruned weights. Checks names and shapes first."""
    shapes = prunable_shapes(model)
    m = mask if isinstance(mask, Mask) else Mask(mask)
    m.check_shapes(shapes, what=f"model {type(model).__name__}")
    for name, layer in masked_layers(model):
        layer.set_mask(m[param_name(name)])
    if backend is not None:
        set_backend(model, backend)
    return model


def get_mask(model: nn.Module) -> Mask:
    """The model's current mask (all-ones for layers without one)."""
    out = {}
    for name, layer in masked_layers(model):
        wm = layer.weight_mask
        out[param_name(name)] = (
            wm.detach().cpu().clone() if wm is not None else torch.ones(layer.weight.shape, dtype=torch.bool)
        )
    return Mask(out)


def mask_gradients(model: nn.Module) -> None:
    """Zero the gradients of pruned weights (``inplace`` backend): one fused multiply over all layers."""
    grads, masks = [], []
    for _, layer in masked_layers(model):
        if layer.weight_mask is not None and layer.weight.grad is not None and _grad_masked(layer):
            grads.append(layer.weight.grad)
            masks.append(layer.mask_float())
    if grads:
        torch._foreach_mul_(grads, masks)


def mask_pairs(model: nn.Module) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(weight, float mask) of every trainable layer whose mask the ``inplace`` backend enforces through
    its gradient; an optimizer can fold these into its update."""
    return [
        (layer.weight, layer.mask_float())
        for _, layer in masked_layers(model)
        if layer.weight_mask is not None and _grad_masked(layer) and layer.weight.requires_grad
    ]


def grad_masker(model: nn.Module) -> Callable[[], None]:
    """:func:`mask_gradients` with the layer walk done once: the per-step cost is the fused multiply alone.

    For a training loop whose masks do not change while it runs (the masks are captured now).
    """
    pairs = mask_pairs(model)
    if not pairs:
        return lambda: None
    params = [p for p, _ in pairs]
    masks = [m for _, m in pairs]

    def apply() -> None:
        grads = [p.grad for p in params]
        if all(g is not None for g in grads):
            torch._foreach_mul_(cast(list[torch.Tensor], grads), masks)
        else:
            for g, m in zip(grads, masks):
                if g is not None:
                    g.mul_(m)

    return apply


@contextlib.contextmanager
def dense_gradients(model: nn.Module) -> Iterator[None]:
    """Inside: every masked layer's backward yields the dense gradient ``∂L/∂(W ⊙ M)``, pruned entries too
    (what RigL grows by). Layers that mask in their forward run the ``inplace`` path meanwhile: the same
    outputs, since their pruned weights are exactly zero, but a weight gradient that is not masked. Call
    :func:`mask_gradients` inside, after reading them, so no pruned weight moves."""
    switched = [
        layer
        for _, layer in masked_layers(model)
        if layer.weight_mask is not None and not _grad_masked(layer)
    ]
    saved = [layer.backend for layer in switched]
    for layer in switched:
        layer.backend = DEFAULT_BACKEND
    try:
        yield
    finally:
        for layer, backend in zip(switched, saved):
            layer.backend = backend


@torch.no_grad()
def enforce_mask(model: nn.Module) -> None:
    """Zero pruned weights (after loading a checkpoint or an optimizer that is not zero-preserving)."""
    ws: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    for _, layer in masked_layers(model):
        if layer.weight_mask is not None:
            ws.append(layer.weight)
            masks.append(layer.mask_float())
    if ws:
        torch._foreach_mul_(ws, masks)
