"""Iterative magnitude pruning (Frankle & Carbin 2019): the pruning strategy and the reset/rewind rule.

``prune(hparams, trained_model, current_mask) -> Mask`` follows open_lth's contract: prune ``rate`` of the
weights that are still alive (layerwise as in the paper, e.g. 20% per hidden layer and 10% for the output
layer, or one global ranking), by magnitude of the *trained* weights. The level loop that trains, prunes
and resets lives in :mod:`ticketsearch.experiments.runner`, which owns persistence and resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..core.errors import ConfigError
from ..core.mask import Mask, exact_count
from ..core.select import select_counts, select_global
from ..sparse import apply_mask, output_parameter, prunable_parameters

__all__ = ["PruneRule", "prune", "level_counts", "levels_for_density", "reset_to", "check_rates"]


@dataclass(frozen=True)
class PruneRule:
    """What one IMP round reads: the fraction of survivors pruned (``rate``; the output layer's
    ``output_rate``, negative: the same as ``rate``) and the ranking's ``scope`` ("" = layerwise)."""

    rate: float = 0.2
    output_rate: float = 0.1
    scope: str = ""


def check_rates(hp: PruneRule) -> None:
    if not 0.0 < hp.rate < 1.0:
        raise ConfigError(
            f"IMP rate (fraction of remaining weights pruned per round) must be in (0, 1), got {hp.rate}"
        )
    if hp.output_rate >= 1.0:
        raise ConfigError(f"IMP output_rate must be < 1 (negative: same as rate), got {hp.output_rate}")
    if hp.scope not in ("", "layerwise", "global"):
        raise ConfigError(f"unknown IMP scope '{hp.scope}' (choose from: layerwise, global)")


def _rates(hp: PruneRule, names: list[str], output: str) -> dict[str, float]:
    rates = {n: hp.rate for n in names}
    if hp.output_rate >= 0 and output in rates:
        rates[output] = hp.output_rate
    return rates


def level_counts(
    hp: PruneRule, alive: Mapping[str, int], output: str
) -> tuple[dict[str, int] | None, int | None, dict[str, int]]:
    """Weights kept after one round. Layerwise: a count per layer. Global: (None, pooled k, fixed counts)."""
    names = list(alive)
    rates = _rates(hp, names, output)
    if hp.scope in ("", "layerwise"):  # "": IMP's default, the paper's layerwise rule
        return {n: alive[n] - exact_count(rates[n], alive[n]) for n in names}, None, {}
    fixed = {}
    if hp.output_rate >= 0 and output in alive:
        fixed[output] = alive[output] - exact_count(hp.output_rate, alive[output])
    pooled = sum(c for n, c in alive.items() if n not in fixed)
    return None, pooled - exact_count(hp.rate, pooled), fixed


def prune(hp: PruneRule, trained_model: nn.Module, current: Mask) -> Mask:
    """Next level's mask: drop ``rate`` of the surviving weights with the smallest trained magnitude."""
    check_rates(hp)
    params = prunable_parameters(trained_model)
    current.check_shapes({n: tuple(p.shape) for n, p in params.items()})
    scores = {n: p.detach().abs().cpu() for n, p in params.items()}
    alive = current.layer_counts()
    output = output_parameter(trained_model)
    counts, k, fixed = level_counts(hp, alive, output)
    cur = current.cpu()
    if counts is not None:
        return select_counts(scores, counts, current=cur)
    assert k is not None
    return select_global(scores, k, current=cur, fixed_counts=fixed)


def levels_for_density(
    hp: PruneRule, shapes: Mapping[str, tuple[int, ...]], output: str, target: float
) -> int:
    """Smallest number of IMP rounds whose overall density is ≤ ``target`` (simulated on counts)."""
    check_rates(hp)
    alive = {n: int(torch.Size(s).numel()) for n, s in shapes.items()}
    total = sum(alive.values())
    levels = 0
    while sum(alive.values()) / total > target * (1 + 1e-9):
        counts, k, fixed = level_counts(hp, alive, output)
        if counts is not None:
            new = counts
        else:
            assert k is not None
            pooled = {n: c for n, c in alive.items() if n not in fixed}
            ptotal = sum(pooled.values())
            new = {**{n: round(c * k / ptotal) for n, c in pooled.items()}, **fixed}  # estimate for planning
        if new == alive:
            raise ConfigError(f"IMP cannot reach density {target}: rounds stop removing weights")
        alive = new
        levels += 1
        if levels > 1000:
            raise ConfigError(f"IMP would need more than 1000 rounds to reach density {target}")
    return levels


@torch.no_grad()
def reset_to(model: nn.Module, state: Mapping[str, torch.Tensor], mask: Mask) -> nn.Module:
    """Load the stored tensors bit for bit (init, or the rewind point), then zero the pruned weights."""
    model.load_state_dict(dict(state), strict=True)
    apply_mask(model, mask)
    return model
