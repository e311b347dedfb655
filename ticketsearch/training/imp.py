"""Iterative magnitude pruning (Frankle & Carbin 2019): the pruning strategy and the reset/rewind rule.

``prune(hparams, trained_model, current_mask) -> Mask`` follows open_lth's contract: prune ``rate`` of the
weights that are still alive (layerwise as in the paper, e.g. 20% per hidden layer and 10% for the output
layer, or one global ranking), by magnitude of the *trained* weights. The level loop that trains, prunes
and resets lives in :mod:`ticketsearch.methods.imp`; the run directory in :mod:`ticketsearch.experiments`.

Under ``--pattern`` every level still prunes ``rate`` of the survivors of each layer (or of the pool), and
``core.select`` makes the level's mask under the pattern with ``current=`` the previous one:

- ``N:M``: a level above N/M keeps every group's N best surviving weights first, then the layer's best
  others (``core.select``'s floor rule), so groups shrink level by level but never below N; the level that
  would take a layer (global: the pool) below N/M stops it at exactly N/M, i.e. N of every M; the levels
  after it continue geometrically from there, pruning inside the pattern. A level's mask claims the pattern
  (sidecar ``"pattern"``) once every layer is at or below N/M, and :func:`levels_for_density` runs until
  it does, so the last level always obeys it.
- ``block:RxC``: counts are in blocks (``rate`` of the surviving blocks), whole blocks ranked by the sum of
  their trained magnitudes; every level obeys the pattern.

Layers whose shape cannot hold the pattern are refused by name, or with ``allow_dense_layers`` kept whole at
every level (the density then counts the other layers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..core.errors import ConfigError
from ..core.mask import Mask, exact_count
from ..core.pattern import Pattern, parse_pattern
from ..core.select import check_fits, claim_pattern, select_counts, select_global
from ..sparse import apply_mask, output_parameter, prunable_parameters

__all__ = [
    "PruneRule",
    "prune",
    "level_counts",
    "next_counts",
    "levels_for_density",
    "reset_to",
    "check_rates",
]


@dataclass(frozen=True)
class PruneRule:
    """What one IMP round reads: the fraction of survivors pruned (``rate``; the output layer's
    ``output_rate``, negative: the same as ``rate``), the ranking's ``scope`` ("" = layerwise) and the
    ``pattern`` the masks are made under (layers it cannot fit kept whole if ``allow_dense_layers``)."""

    rate: float = 0.2
    output_rate: float = 0.1
    scope: str = ""
    pattern: str = "unstructured"
    allow_dense_layers: bool = False


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


@dataclass(frozen=True)
class _Geometry:
    """How a pattern shapes IMP's counts: ``unit`` weights per counted unit (a block's R·C, else 1), each
    fit layer's N:M ``floors`` (N/M of its weights; empty without N:M) and the layers kept ``dense``."""

    pattern: Pattern
    unit: int
    floors: dict[str, int]
    dense: list[str]


def _geometry(hp: PruneRule, shapes: Mapping[str, tuple[int, ...]]) -> _Geometry:
    pat = parse_pattern(hp.pattern)
    dense = check_fits(shapes, pat, allow_dense_layers=hp.allow_dense_layers) if pat.structured else []
    fit = [n for n in shapes if n not in dense]
    floors = {n: pat.n * math.prod(shapes[n]) // pat.m for n in fit} if pat.kind == "nm" else {}
    return _Geometry(pat, pat.r * pat.c if pat.kind == "block" else 1, floors, dense)


def next_counts(
    hp: PruneRule, alive: Mapping[str, int], output: str, geo: _Geometry
) -> tuple[dict[str, int] | None, int | None, dict[str, int]]:
    """:func:`level_counts` in weights, under the pattern: counted in ``geo.unit`` s (whole blocks), and
    under N:M a layer (global: the pool) above its floor never goes below it in one level."""
    u = geo.unit
    counts_u, k_u, fixed_u = level_counts(hp, {n: a // u for n, a in alive.items()}, output)

    def clamp(n: str, c: int) -> int:
        f = geo.floors.get(n)
        return max(c, f) if f is not None and alive[n] > f else c

    if counts_u is not None:
        return {n: clamp(n, c * u) for n, c in counts_u.items()}, None, {}
    assert k_u is not None
    fixed = {n: clamp(n, c * u) for n, c in fixed_u.items()}
    k = k_u * u
    if geo.floors:
        pooled = [n for n in alive if n not in fixed]
        pool_floor = sum(geo.floors[n] for n in pooled)
        if sum(alive[n] for n in pooled) > pool_floor:
            k = max(k, pool_floor)
    return None, k, fixed


def _obeys(hp: PruneRule, alive: Mapping[str, int], output: str, geo: _Geometry) -> bool:
    """Whether masks with these counts obey N:M (every layer, or the pool and the fixed output layer, at or
    below N/M: the floor rule then keeps at most N per group)."""
    if not geo.floors:
        return True
    if hp.scope in ("", "layerwise"):
        return all(alive[n] <= geo.floors[n] for n in alive)
    fixed = [output] if hp.output_rate >= 0 and output in alive else []
    pooled = [n for n in alive if n not in fixed]
    return all(alive[n] <= geo.floors[n] for n in fixed) and sum(alive[n] for n in pooled) <= sum(
        geo.floors[n] for n in pooled
    )


def prune(hp: PruneRule, trained_model: nn.Module, current: Mask) -> Mask:
    """Next level's mask: drop ``rate`` of the surviving weights with the smallest trained magnitude (under
    ``hp.pattern``: the rules of the module docstring; the mask claims the pattern once it obeys it)."""
    check_rates(hp)
    params = prunable_parameters(trained_model)
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    current.check_shapes(shapes)
    geo = _geometry(hp, shapes)
    fit = [n for n in params if n not in geo.dense]
    scores = {n: params[n].detach().abs().cpu() for n in fit}
    counts_all = current.layer_counts()
    alive = {n: counts_all[n] for n in fit}
    output = output_parameter(trained_model)
    counts, k, fixed = next_counts(hp, alive, output, geo)
    cur = current.cpu()
    sub = {n: cur[n] for n in fit}
    if counts is not None:
        chosen = select_counts(scores, counts, current=sub, pattern=geo.pattern)
    else:
        assert k is not None
        chosen = select_global(scores, k, current=sub, fixed_counts=fixed, pattern=geo.pattern)
    if not geo.pattern.structured:
        return chosen
    mask = Mask({n: chosen[n] if n in chosen else cur[n] for n in params})
    return claim_pattern(mask, geo.pattern, geo.dense, strict=False)


def levels_for_density(
    hp: PruneRule, shapes: Mapping[str, tuple[int, ...]], output: str, target: float
) -> int:
    """Smallest number of IMP rounds whose overall density is ≤ ``target`` (simulated on counts); under N:M
    also every layer at or below N/M, so the last level obeys the pattern. Layers kept dense (an unfit
    shape, ``allow_dense_layers``) are not counted."""
    check_rates(hp)
    geo = _geometry(hp, shapes)
    alive = {n: int(torch.Size(s).numel()) for n, s in shapes.items() if n not in geo.dense}
    total = sum(alive.values())
    levels = 0
    while sum(alive.values()) / total > target * (1 + 1e-9) or not _obeys(hp, alive, output, geo):
        counts, k, fixed = next_counts(hp, alive, output, geo)
        if counts is not None:
            new = counts
        else:
            assert k is not None
            pooled = {n: c for n, c in alive.items() if n not in fixed}
            ptotal = sum(pooled.values())
            est = {n: round(c * k / ptotal) for n, c in pooled.items()}  # an estimate for planning
            if est and geo.floors:  # N:M: a total that is exact, so the pool's floor is met exactly
                last = list(est)[-1]
                est[last] += k - sum(est.values())
            new = {**est, **fixed}
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
