"""Scores → ticket, in one round or many: the driver every scoring method goes through.

Round r of R keeps ``density ** (r / R)`` of the weights (the exponential schedule of SynFlow, Tanaka et
al. 2020), re-scoring the network with the current mask applied; pruned weights stay pruned (the selection
is given the current mask, so a weight cannot come back, unlike in the reference SNIP/GraSP iterative
code). With R = 1 this is plain one-shot pruning. The caller's model is never modified: rounds run on a
copy.

A scorer that ``revives`` (FORCE) runs its R rounds itself, because its rounds must be free to bring back
what an earlier round pruned: ``find_mask`` calls it once, with the resolved R in ``hparams.pruning.rounds``,
and makes only the last selection (the caller's own mask is still never revived).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch.nn as nn

from ..core.errors import ConfigError
from ..core.hparams import RunHparams
from ..core.mask import Mask
from ..core.pattern import parse_pattern
from ..core.select import check_density, select, validate_scores
from ..sparse import apply_mask, get_mask, masked_layers, prunable_shapes
from .base import Batch, Scorer, ScoringContext, cost_counter

__all__ = ["find_mask", "density_schedule", "first_collapse_density", "empty_layers", "scope_of"]


def density_schedule(density: float, rounds: int, start: float = 1.0) -> list[float]:
    """Densities of rounds 1..R: geometric from ``start`` to ``density``; the last is ``density`` exactly."""
    if rounds < 1:
        raise ConfigError(f"rounds must be ≥ 1, got {rounds}")
    out = [start * (density / start) ** (r / rounds) for r in range(1, rounds)]
    return out + [density]


def scope_of(scorer: Any, scope: str) -> str:
    """The selection scope a run uses: the one asked for, else the scorer's paper's (``default_scope``)."""
    return scope or getattr(scorer, "default_scope", "") or "layerwise"


def _scorer_name(scorer: Any) -> str:
    return getattr(scorer, "name", "") or type(scorer).__name__


def _existing_mask(model: nn.Module) -> Mask | None:
    if any(layer.weight_mask is not None for _, layer in masked_layers(model)):
        return get_mask(model)
    return None


def empty_layers(mask: Mask) -> list[str]:
    """Layers the mask keeps nothing of: the network no longer connects input to output (layer collapse)."""
    return [n for n, c in mask.layer_counts().items() if c == 0]


def find_mask(
    scorer: Scorer,
    model: nn.Module,
    batches: Sequence[Batch],
    hparams: RunHparams,
    *,
    context: ScoringContext | None = None,
) -> tuple[Mask, dict[str, Any]]:
    """Score ``model`` and select ``hparams.pruning.density`` of its prunable weights, in one or more rounds.

    ``rounds`` is ``hparams.pruning.rounds`` or, when 0, the scorer's ``default_rounds``. A mask already on
    the model is respected: the schedule starts from its density and its pruned weights stay pruned.
    Every round's scores are validated (a bad scorer output is a one-line error naming the parameter).

    Returns the mask (metadata: method, density, rounds) and the cost of finding it: wall time, rounds,
    forward passes, examples forwarded, backward passes and anything the scorer reported.
    """
    p = hparams.pruning
    density = check_density(p.density)
    rounds = int(p.rounds) if p.rounds else int(getattr(scorer, "default_rounds", 1) or 1)
    if rounds < 1:
        raise ConfigError(f"rounds must be ≥ 1 (0 = the method's default), got {p.rounds}")
    name = _scorer_name(scorer)
    shapes = prunable_shapes(model)
    if not shapes:
        raise ConfigError(f"model {type(model).__name__} has no prunable (masked Linear/Conv2d) layers")
    current = _existing_mask(model)
    start = current.density if current is not None else 1.0
    if current is not None and density > start + 1e-12:
        raise ConfigError(
            f"the model is already pruned to density {start:.4g}; cannot prune it to a higher density {density:.4g}"
        )
    pat = parse_pattern(p.pattern)
    t0 = time.perf_counter()
    revives = bool(getattr(scorer, "revives", False))
    schedule = [density] if revives else density_schedule(density, rounds, start)
    score_hp = hparams.replace(pruning=_replace(p, rounds=rounds)) if revives else hparams
    work = copy.deepcopy(model)  # rounds zero pruned weights: never on the caller's model
    with cost_counter(work) as cost:
        for d in schedule:
            if current is not None:
                apply_mask(work, current)
            scores = scorer.score(work, batches, hparams=score_hp, context=context)
            validate_scores(scores, shapes, source=f"scorer '{name}'")
            current = select(
                scores,
                min(d, pat.max_density),  # N:M: the first round makes the groups, later ones prune within
                scope=scope_of(scorer, p.scope),
                distribution=p.distribution,
                current=current,
                min_layer_density=p.min_layer_density,
                pattern=pat,
                allow_dense_layers=p.allow_dense_layers,
            )
    assert current is not None
    empty = empty_layers(current)
    mask = Mask(current, current.metadata).with_metadata(
        method=name, density=density, rounds=rounds, empty_layers=empty
    )
    record: dict[str, Any] = {"wall_time": time.perf_counter() - t0, "rounds": rounds, **cost}
    if empty:
        record["empty_layers"] = empty
    return mask, record


def first_collapse_density(
    scorer: Scorer,
    model: nn.Module,
    batches: Sequence[Batch],
    hparams: RunHparams,
    densities: Iterable[float],
    *,
    rounds: int = 1,
    context: ScoringContext | None = None,
) -> float | None:
    """The largest of ``densities`` at which the method empties some layer, or None if none does.

    ``rounds=1`` (single shot) scores once and selects at every density (scores do not depend on the
    target); ``rounds`` > 1, or a scorer that ``revives`` (its scores depend on the target), runs
    :func:`find_mask` per density. The per-layer floor
    (``min_layer_density``) is switched off: the point is to see where the method alone collapses.
    """
    dens = sorted({check_density(d) for d in densities}, reverse=True)
    p = hparams.pruning
    if rounds == 1 and not getattr(scorer, "revives", False):
        work = copy.deepcopy(model)
        scores = scorer.score(work, batches, hparams=hparams, context=context)
        validate_scores(scores, prunable_shapes(model), source=f"scorer '{_scorer_name(scorer)}'")
        current = _existing_mask(model)
        for d in dens:
            m = select(
                scores,
                d,
                scope=scope_of(scorer, p.scope),
                distribution=p.distribution,
                current=current,
                pattern=p.pattern,
                allow_dense_layers=p.allow_dense_layers,
            )
            if empty_layers(m):
                return d
        return None
    for d in dens:
        hp = hparams.replace(pruning=_replace(p, density=d, rounds=rounds, min_layer_density=0.0))
        m, _ = find_mask(scorer, model, batches, hp, context=context)
        if empty_layers(m):
            return d
    return None


def _replace(obj: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **changes)
