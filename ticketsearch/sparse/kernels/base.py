"""The kernel record, the one registry, and how a knob value (``fast``, ``inplace``, ...) becomes a kernel.

Kept apart from ``__init__`` so the implementation modules can import it without importing each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from ...core.errors import ConfigError
from ...core.registry import Registry

if TYPE_CHECKING:
    from ..layers import MaskedLayer

__all__ = [
    "MASKED",
    "TOPK",
    "SPMM",
    "OPS",
    "FAST",
    "Kernel",
    "KernelRegistry",
    "KERNELS",
    "TopKSelector",
    "TopKLayout",
    "topk_layout",
    "kernels",
    "find_kernel",
    "resolve_topk",
]

MASKED = "masked"  # a fixed-mask layer's forward/backward (``set_backend``, ``apply_mask(backend=...)``)
TOPK = "topk"  # a supermask's exact top-k of |scores| fused with W ⊙ M (``to_supermask(kernel=...)``)
SPMM = "spmm"  # a fixed sparse weight times a dense batch, inference only (``export.load_ticket``)
OPS = (MASKED, TOPK, SPMM)
FAST = "fast"  # not a kernel: "the best top-k kernel ready for these tensors", resolved per device/dtype


class TopKSelector(Protocol):
    """What a ``topk`` kernel builds for one controller: all layers' masks in one call.

    ``forward`` returns ``W ⊙ M`` per tensor without autograd (M: the first ``k`` of a stable descending sort
    of each group's concatenated ``|scores|``, ties to the lower flat index); ``backward`` returns the
    straight-through ``sign(s) ⊙ g ⊙ W``. ``stats`` holds counters for benchmarks.
    """

    stats: dict[str, int]

    def forward(
        self, scores: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]: ...

    def backward(
        self, grads: Sequence[torch.Tensor], weights: Sequence[torch.Tensor], scores: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]: ...


@dataclass(frozen=True)
class TopKLayout:
    """A selector's ``(shapes, groups, ks)`` once checked: what every ``topk`` kernel is built from.

    Checked in one place so every kernel accepts and refuses the same arguments (a kernel that skipped a
    check would index past a group or keep more weights than a group has, differently per kernel).
    ``members[g]``: the tensors of group ``g`` in order; ``group_n[g]``: their total size.
    """

    shapes: list[tuple[int, ...]]
    sizes: list[int]
    groups: list[int]
    ks: list[int]
    members: list[list[int]]
    group_n: list[int]


def topk_layout(shapes: Sequence[Sequence[int]], groups: Sequence[int], ks: Sequence[int]) -> TopKLayout:
    """Check a selector's arguments: one group id per tensor, groups contiguous runs numbered 0, 1, ...,
    one ``k`` per group with ``0 <= k <=`` the group's size; ValueError naming what is wrong otherwise."""
    groups_ = [int(g) for g in groups]
    if len(shapes) != len(groups_):
        raise ValueError("one group id per tensor")
    if groups_ != sorted(groups_) or (groups_ and list(range(groups_[-1] + 1)) != sorted(set(groups_))):
        raise ValueError("groups must be contiguous runs numbered 0, 1, ...")
    ks_ = [int(k) for k in ks]
    G = groups_[-1] + 1 if groups_ else 0
    if len(ks_) != G:
        raise ValueError("one k per group")
    shapes_ = [tuple(int(d) for d in s) for s in shapes]
    sizes = [math.prod(s) for s in shapes_]
    members = [[t for t, gg in enumerate(groups_) if gg == g] for g in range(G)]
    group_n = [sum(sizes[t] for t in idx) for idx in members]
    for g in range(G):
        if not 0 <= ks_[g] <= group_n[g]:
            raise ValueError(f"group {g}: cannot keep {ks_[g]} of {group_n[g]}")
    return TopKLayout(shapes_, sizes, groups_, ks_, members, group_n)


def _always(build: bool) -> str | None:
    return None


@dataclass(frozen=True)
class Kernel:
    """One implementation of one op.

    ``devices``/``dtypes``: what it runs on (None: any device type / any floating dtype). ``probe(build)``
    says why it cannot run on this machine (None: it can); with ``build=False`` it must answer at once,
    without compiling anything. ``priority`` orders the kernels of an op (listings, and ``fast``, which picks
    the highest-priority ``auto`` kernel that supports the tensors and is ready without a build).

    Op-specific parts. ``masked``: ``forward(layer, x)`` replaces the layer's forward (None: the dense op on
    ``layer.effective_weight()``); ``masks_gradients``: pruned weights are held at exact zero by zeroing
    their gradients after backward (``mask_gradients``, ``grad_masker``), so the forward needs no mask.
    ``topk``: ``selector(shapes, groups, ks, *, device, dtype)`` builds a :class:`TopKSelector`.
    """

    name: str
    op: str
    description: str
    devices: tuple[str, ...] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None
    priority: int = 0
    auto: bool = False
    probe: Callable[[bool], str | None] = _always
    forward: Callable[[MaskedLayer, torch.Tensor], torch.Tensor] | None = None
    masks_gradients: bool = False
    selector: Callable[..., TopKSelector] | None = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"kernel op must be one of {', '.join(OPS)}, got {self.op!r}")
        if self.op == TOPK and self.selector is None:
            raise ValueError(f"topk kernel '{self.name}' needs a selector factory")
        if not self.name or "/" in self.name or self.name == FAST:
            raise ValueError(f"bad kernel name {self.name!r}")

    @property
    def key(self) -> str:
        """The registry key: names are unique per op (``reference`` exists for both ops)."""
        return f"{self.op}/{self.name}"

    def unavailable_reason(self, *, build: bool = True) -> str | None:
        try:
            return self.probe(build)
        except Exception as exc:  # a broken probe makes the kernel unavailable, not the library unusable
            return f"{type(exc).__name__}: {exc}"

    def available(self, *, build: bool = True) -> bool:
        """Whether it can run on this machine (``build=True`` may compile it first, once)."""
        return self.unavailable_reason(build=build) is None

    def supports(self, device: torch.device | str, dtype: torch.dtype) -> bool:
        kind = torch.device(device).type
        if self.devices is not None and kind not in self.devices:
            return False
        if self.dtypes is not None:
            return dtype in self.dtypes
        return dtype.is_floating_point

    def needs(self) -> str:
        dt = "/".join(str(d).removeprefix("torch.") for d in self.dtypes) if self.dtypes else "floating"
        dev = "/".join(self.devices).upper() if self.devices else "any-device"
        return f"{dt} {dev} tensors"


class KernelRegistry(Registry[Kernel]):
    """The registry keyed ``op/name``, with a per-op index so a layer's forward finds its kernel by a dict
    lookup on the name it already holds."""

    def __init__(self) -> None:
        super().__init__("kernel")
        self._by_op: dict[str, dict[str, Kernel]] = {op: {} for op in OPS}

    def add(
        self, name: str, obj: Kernel, *, description: str | None = None, source: str = "built-in"
    ) -> None:
        if not isinstance(obj, Kernel):
            raise TypeError(f"a kernel registry entry must be a Kernel, got {type(obj).__name__}")
        if name != obj.key:
            raise ValueError(f"kernel '{obj.name}' must be registered as '{obj.key}', not '{name}'")
        super().add(
            name, obj, description=obj.description if description is None else description, source=source
        )
        self._by_op[obj.op][obj.name] = obj

    def unregister(self, name: str) -> None:
        entry = self._entries.get(name)
        super().unregister(name)
        if entry is not None:
            self._by_op[entry.obj.op].pop(entry.obj.name, None)

    def register_kernel(self, kernel: Kernel, *, replace: bool = False, source: str = "built-in") -> Kernel:
        """The one registration line of a kernel module's record."""
        if replace:
            self.unregister(kernel.key)
        self.add(kernel.key, kernel, source=source)
        return kernel

    def by_op(self, op: str) -> dict[str, Kernel]:
        """name → kernel of one op, live (do not mutate: register through the registry)."""
        return self._by_op[op]


KERNELS = KernelRegistry()


def kernels(op: str) -> list[Kernel]:
    """The kernels of one op, highest priority first (ties: registration order)."""
    if op not in OPS:
        raise ValueError(f"kernel op must be one of {', '.join(OPS)}, got {op!r}")
    return sorted(KERNELS.by_op(op).values(), key=lambda k: -k.priority)


def find_kernel(op: str, name: str) -> Kernel | None:
    return KERNELS.by_op(op).get(name)


def resolve_topk(name: str, device: torch.device | str, dtype: torch.dtype) -> Kernel:
    """The top-k kernel a ``kernel=`` knob means for tensors on ``device`` of ``dtype``.

    ``fast`` never waits for a compiler: a kernel that must be built first is skipped until something
    (``kernel=compiled``, the test suite) has built it.
    """
    dev = torch.device(device)
    if name == FAST:
        for cand in kernels(TOPK):
            if cand.auto and cand.supports(dev, dtype) and cand.available(build=False):
                return cand
        raise ConfigError(f"no supermask kernel runs on {dtype} tensors on {dev.type}")
    k = find_kernel(TOPK, name)
    if k is None:
        names = ", ".join([FAST, *(k.name for k in kernels(TOPK))])
        raise ConfigError(f"unknown supermask kernel '{name}' (choose from: {names})")
    if not k.supports(dev, dtype):
        raise ConfigError(
            f"supermask kernel '{name}' needs {k.needs()}, got {str(dtype).removeprefix('torch.')} on {dev.type}"
        )
    reason = k.unavailable_reason(build=True)
    if reason is not None:
        raise ConfigError(f"supermask kernel '{name}' is unavailable here ({reason})")
    return k
