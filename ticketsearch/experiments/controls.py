"""Controls trained beside a ticket: each a small registered class, so a new sanity check is one class.

From Frankle & Carbin 2019 (random reinitialisation) and Frankle et al. 2021 (layerwise shuffle): a
ticket that does no better than its controls was found by its per-layer densities, not by which weights it
kept or where they started.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn as nn

from ..core.mask import Mask
from ..core.registry import Registry
from ..sparse import apply_mask
from ..training.imp import reset_to

if TYPE_CHECKING:
    from .runner import Run

__all__ = ["Control", "ControlSetup", "CONTROLS", "register_control", "control_seed"]

# a control's seed is a function of (replicate seed, level), far from any replicate seed a user picks
_CONTROL_SEED_OFFSET = 1_000_003


def control_seed(seed: int, level: int) -> int:
    return (seed + _CONTROL_SEED_OFFSET * (level + 1)) % (2**63)


@dataclass
class ControlSetup:
    """What a control trains: a model already masked and at its starting weights, and its mask."""

    model: nn.Module
    mask: Mask
    fresh_init: bool  # the init differs from the ticket's: stored beside the control (init.safetensors)


class Control(ABC):
    """Builds the network a control trains; the runner stores, trains and resumes it like a level."""

    name: ClassVar[str] = ""

    @abstractmethod
    def setup(self, run: Run, level: int, mask: Mask, start_state: dict[str, torch.Tensor]) -> ControlSetup:
        """The control of the ticket ``mask`` whose weights start from ``start_state``."""


CONTROLS: Registry[type[Control]] = Registry("control")


def register_control(name: str, *, description: str | None = None):
    def deco(cls: type[Control]) -> type[Control]:
        cls.name = name
        CONTROLS.add(name, cls, description=description)
        return cls

    return deco


@register_control("reinit", description="the ticket's mask on a fresh random init (Frankle & Carbin 2019)")
class Reinit(Control):
    def setup(self, run: Run, level: int, mask: Mask, start_state: dict[str, torch.Tensor]) -> ControlSetup:
        model = run.build_model(control_seed(run.seed, level))
        apply_mask(model, mask)
        return ControlSetup(model, mask, fresh_init=True)


@register_control(
    "random_mask",
    description="a layerwise shuffle of the mask (same per-layer densities) on the ticket's init "
    "(Frankle et al. 2021)",
)
class RandomMask(Control):
    def setup(self, run: Run, level: int, mask: Mask, start_state: dict[str, torch.Tensor]) -> ControlSetup:
        # seeded per layer by name: the same shuffle whether the mask was built in memory or read from disk
        shuffled = mask.shuffled(control_seed(run.seed, level))
        model = copy.deepcopy(run.model)
        reset_to(model, start_state, shuffled)
        return ControlSetup(model, shuffled, fresh_init=False)
