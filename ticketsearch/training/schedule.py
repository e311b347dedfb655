"""Masks that move while weights train: the hook a method uses to prune, regrow or freeze at step boundaries.

Gradual magnitude pruning, RigL, SET, continuous sparsification and Gem-Miner all change the mask *during*
training. They decide; the one training loop (:func:`ticketsearch.training.train`) applies, so that every
part of training follows the current mask the same way for every method:

- the new masks are attached to the layers and the weights they prune are set to exactly zero;
- the optimizer's state of a pruned weight (momentum, Adam's moments) is zeroed, so a momentum buffer never
  moves a weight that was just pruned; a regrown weight starts at zero with zero state (as RigL does);
- the gradient masks folded into the optimizer's update, and the ones applied before ``--grad-clip``'s norm,
  are rebuilt from the new masks;
- evaluations, checkpoints and the final weights see the current mask;
- under torchrun every rank applies rank 0's masks (each rank also calls the schedule, so its own state
  advances in step);
- the step runs eagerly (no CUDA graph), and the result says so.

A schedule is decided by the iteration and the model (and, at the steps it asks for them, the dense
gradients), and keeps whatever else it needs in :meth:`MaskSchedule.state_dict`, which is saved with every
training checkpoint together with the current masks: a run killed anywhere resumes to the bit-identical
masks and weights. A method whose mask never moves passes no schedule and pays nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

__all__ = ["MaskSchedule", "MaskUpdate"]

# new masks for the layers that change, by parameter name (``fc1.weight``): bool tensors of the weight's shape
MaskUpdate = Mapping[str, torch.Tensor]


class MaskSchedule:
    """A method's moves of the mask during one ``train()`` call. Subclass and override :meth:`update`.

    Boundaries are numbered by the steps done: boundary 0 comes before the first step, boundary ``it``
    right after step ``it`` (1-based count) and before the evaluation and checkpoint at ``it``. A resumed
    run does not call the boundary its checkpoint was written at again.
    """

    def needs_grads(self, it: int) -> bool:
        """Whether :meth:`update` at boundary ``it`` reads the dense gradients of the step that ends there
        (RigL grows by ``|∂L/∂w|`` of pruned weights). Asked before that step; ``False`` costs nothing."""
        return False

    def update(
        self, it: int, model: nn.Module, grads: Mapping[str, torch.Tensor] | None
    ) -> MaskUpdate | None:
        """New masks at boundary ``it`` (only the layers that change), or ``None`` for no change.

        ``model`` holds the current weights and masks (read them; do not change them: the loop applies the
        returned masks). ``grads``: the step's dense gradients by parameter name (pruned weights included,
        before any masking or clipping) when :meth:`needs_grads` asked for them, else ``None``. Raising
        :class:`ticketsearch.training.StopTraining` ends training here.
        """
        return None

    def state_dict(self) -> dict[str, Any]:
        """What the schedule needs besides the iteration and the masks to resume (tensors, numbers,
        strings, lists, dicts: checkpoints load with ``weights_only``)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (called on resume, before the first step)."""
