"""Scores → Mask. The only place masks are made from scores, so every method is compared under one rule.

Higher score = keep. Counts are exact (``round-half-up(density × n)``) and ties are broken
deterministically: among equal scores the weight with the lower flat index (in the order of the score
dict, then row-major) is kept. Weights pruned in ``current`` are never revived.

Under a pattern (:mod:`.pattern`) the same rule runs inside what the pattern allows. A schedule that walks
down to an N:M pattern (IMP's levels, GMP's steps, Gem-Miner's freezes) passes densities above N/M on the
way; those are selections with a *floor*: every group of M keeps its N best alive weights first, then the
rest of the count goes to the best remaining weights, so the step that reaches N/M can always keep exactly
N of every M (``select(..., descent=True)``, and the count-based :func:`select_counts` / :func:`select_global`
under a pattern). One rule for both sides of N/M: with B the N best alive weights of every group, a count
c ≤ |B| keeps the c best of B, a count c > |B| keeps B and the c − |B| best of the other alive weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from .errors import ConfigError, EmptyLayerError, MaskMismatchError
from .mask import Mask, exact_count
from .pattern import Pattern, check_pattern, parse_pattern, row_view_shape, unfit_layers

__all__ = [
    "select",
    "parse_pattern",
    "check_pattern",
    "select_counts",
    "select_global",
    "select_growth",
    "check_selection",
    "check_fits",
    "claim_pattern",
    "layer_densities",
    "check_density",
    "validate_scores",
    "check_empty_layers",
    "DISTRIBUTIONS",
    "SCOPES",
]

DISTRIBUTIONS = ("uniform", "erk", "smart-ratio")
SMART_RATIO_CLASSIFIER = 0.3  # Su et al. 2020's keep ratio of the linear (classifier) layer
SCOPES = ("global", "layerwise")


def check_density(density: float, *, name: str = "density") -> float:
    """Density is the fraction kept and must lie in (0, 1]."""
    try:
        d = float(density)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in (0, 1], got {density!r}") from None
    if not (0.0 < d <= 1.0) or math.isnan(d):
        raise ConfigError(f"{name} must be in (0, 1] (the fraction of weights kept), got {density!r}")
    return d


def validate_scores(
    scores: Mapping[str, torch.Tensor],
    shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    source: str = "scorer",
) -> None:
    """Raise naming the parameter if scores are missing, extra, misshaped or not finite."""
    if shapes is not None:
        missing = [n for n in shapes if n not in scores]
        extra = [n for n in scores if n not in shapes]
        if missing:
            raise MaskMismatchError(f"{source} returned no score for parameter(s): {', '.join(missing)}")
        if extra:
            raise MaskMismatchError(f"{source} returned scores for unknown parameter(s): {', '.join(extra)}")
    for n, s in scores.items():
        if not isinstance(s, torch.Tensor):
            raise MaskMismatchError(f"{source} score for '{n}' is {type(s).__name__}, expected a tensor")
        if shapes is not None and tuple(s.shape) != tuple(shapes[n]):
            raise MaskMismatchError(
                f"{source} score for '{n}' has shape {list(s.shape)}, parameter has {list(shapes[n])}"
            )
        if not bool(torch.isfinite(s).all()):
            bad = "NaN" if bool(torch.isnan(s).any()) else "infinite"
            raise MaskMismatchError(f"{source} returned {bad} scores for parameter '{n}'")


def _masked_flat(scores: Mapping[str, torch.Tensor], current: Mapping[str, torch.Tensor] | None, name: str):
    s = scores[name].detach().flatten().to(torch.float64)
    alive = None
    if current is not None:
        alive = current[name].flatten().to(s.device)
    return s, alive


def _topk_indices(values: torch.Tensor, alive: torch.Tensor | None, k: int) -> torch.Tensor:
    """Indices of the k largest values among alive ones; ties → lower index first (stable sort)."""
    if alive is not None:
        idx_alive = torch.nonzero(alive, as_tuple=False).flatten()
        vals = values[idx_alive]
    else:
        idx_alive = None
        vals = values
    if k > vals.numel():
        raise ConfigError(f"cannot keep {k} weights: only {vals.numel()} are still unpruned")
    order = torch.sort(vals, descending=True, stable=True).indices[:k]
    return idx_alive[order] if idx_alive is not None else order


def _fit_or_raise(shapes: Mapping[str, Sequence[int]], pat: Pattern) -> None:
    unfit = unfit_layers(shapes, pat)
    if unfit:
        raise ConfigError(
            f"pattern {pat} does not fit layer(s) {', '.join(f'{n} {list(shapes[n])}' for n in unfit)}: "
            f"{pat.need()}"
        )


def _nm_floors(
    scores: Mapping[str, torch.Tensor], current: Mapping[str, torch.Tensor] | None, pat: Pattern
) -> dict[str, torch.Tensor]:
    return {n: _nm_allowed(s, None if current is None else current[n], pat) for n, s in scores.items()}


def _block_units(count: int, pat: Pattern, name: str) -> int:
    unit = pat.r * pat.c
    if count % unit:
        raise ConfigError(
            f"cannot keep {count} weights of '{name}' under pattern {pat}: not a whole number of "
            f"{pat.r}x{pat.c} blocks"
        )
    return count // unit


def _block_grid(
    scores: Mapping[str, torch.Tensor], current: Mapping[str, torch.Tensor] | None, pat: Pattern
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """Block sums and (with ``current``) which blocks are whole, on the row view's block grid."""
    grid, alive = {}, {}
    for n, s in scores.items():
        rows, cols = row_view_shape(s.shape)
        v = s.detach().to(torch.float64).reshape(rows // pat.r, pat.r, cols // pat.c, pat.c)
        grid[n] = v.sum(dim=(1, 3))
        if current is not None:
            a = current[n].to(torch.bool).reshape(rows // pat.r, pat.r, cols // pat.c, pat.c)
            alive[n] = a.all(dim=3).all(dim=1).to(grid[n].device)
    return grid, (alive if current is not None else None)


def _expand_blocks(chosen: Mapping[str, torch.Tensor], scores: Mapping[str, torch.Tensor], pat: Pattern):
    return {
        n: b.repeat_interleave(pat.r, dim=0).repeat_interleave(pat.c, dim=1).reshape(scores[n].shape)
        for n, b in chosen.items()
    }


def select_counts(
    scores: Mapping[str, torch.Tensor],
    counts: Mapping[str, int],
    *,
    current: Mapping[str, torch.Tensor] | None = None,
    pattern: str | Pattern = "unstructured",
) -> Mask:
    """Layerwise top-k with an exact count per layer.

    ``pattern``: ``N:M`` applies the floor rule of the module docstring per layer (a count at most N per
    group's worth keeps the best of each group's N best; a larger one keeps those first), so a schedule
    stepping down through these counts reaches exactly N of M; ``block:RxC`` selects whole blocks, and each
    count must be a whole number of blocks. Every layer must fit the pattern (the caller keeps unfit layers
    out).
    """
    pat = parse_pattern(pattern)
    if not pat.structured:
        return _select_counts(scores, counts, current, None)
    _fit_or_raise({n: tuple(t.shape) for n, t in scores.items()}, pat)
    if pat.kind == "nm":
        return _select_counts(scores, counts, current, _nm_floors(scores, current, pat))
    grid, alive = _block_grid(scores, current, pat)
    chosen = _select_counts(grid, {n: _block_units(int(counts[n]), pat, n) for n in scores}, alive, None)
    return Mask(_expand_blocks(chosen, scores, pat))


def _select_counts(
    scores: Mapping[str, torch.Tensor],
    counts: Mapping[str, int],
    current: Mapping[str, torch.Tensor] | None,
    floor: Mapping[str, torch.Tensor] | None,
) -> Mask:
    out = {}
    for name, t in scores.items():
        k = int(counts[name])
        values, alive = _masked_flat(scores, current, name)
        m = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
        if floor is not None:
            base = floor[name].flatten().to(values.device)
            nb = int(base.sum())
            if k <= nb:  # the best k of the groups' N best
                alive, nb = base, 0
            else:  # the groups' N best, then the best of the rest
                m |= base
                alive = (alive if alive is not None else torch.ones_like(base)) & ~base
                k -= nb
        if k > 0:
            m[_topk_indices(values, alive, k)] = True
        out[name] = m.reshape(t.shape)
    return Mask(out)


def select_global(
    scores: Mapping[str, torch.Tensor],
    k: int,
    *,
    current: Mapping[str, torch.Tensor] | None = None,
    fixed_counts: Mapping[str, int] | None = None,
    min_counts: Mapping[str, int] | None = None,
    pattern: str | Pattern = "unstructured",
) -> Mask:
    """Keep the ``k`` highest scores across all layers (one threshold).

    ``fixed_counts`` layers are selected on their own with that count and excluded from the global pool
    (``k`` counts only the pooled layers). ``min_counts`` guarantees each layer at least that many weights
    (its best ones) before the rest of the budget is spent globally: the guard against emptying a layer.
    ``pattern``: as :func:`select_counts`, with the N:M floor taken over the whole pool (blocks: ``k``, the
    fixed and the minimum counts in whole blocks).
    """
    pat = parse_pattern(pattern)
    if not pat.structured:
        return _select_global(scores, k, current, fixed_counts, min_counts, None)
    _fit_or_raise({n: tuple(t.shape) for n, t in scores.items()}, pat)
    if pat.kind == "nm":
        return _select_global(scores, k, current, fixed_counts, min_counts, _nm_floors(scores, current, pat))
    grid, alive = _block_grid(scores, current, pat)
    unit = pat.r * pat.c
    chosen = _select_global(
        grid,
        _block_units(int(k), pat, "the pooled layers"),
        alive,
        {n: _block_units(int(c), pat, n) for n, c in (fixed_counts or {}).items()},
        {n: -(-int(c) // unit) for n, c in (min_counts or {}).items()},
        None,
    )
    return Mask(_expand_blocks(chosen, scores, pat))


def _select_global(
    scores: Mapping[str, torch.Tensor],
    k: int,
    current: Mapping[str, torch.Tensor] | None,
    fixed_counts: Mapping[str, int] | None,
    min_counts: Mapping[str, int] | None,
    floor: Mapping[str, torch.Tensor] | None,
) -> Mask:
    fixed_counts = dict(fixed_counts or {})
    min_counts = dict(min_counts or {})
    pooled = [n for n in scores if n not in fixed_counts]
    out: dict[str, torch.Tensor] = {}
    if fixed_counts:
        fixed_scores = {n: scores[n] for n in fixed_counts}
        fixed_floor = {n: floor[n] for n in fixed_counts} if floor is not None else None
        out.update(_select_counts(fixed_scores, fixed_counts, current, fixed_floor))
    if not pooled:
        return Mask({n: out[n] for n in scores})
    flats, alives, sizes = [], [], []
    for n in pooled:
        v, a = _masked_flat(scores, current, n)
        flats.append(v.cpu())
        alives.append(a.cpu() if a is not None else torch.ones(v.numel(), dtype=torch.bool))
        sizes.append(v.numel())
    values = torch.cat(flats)
    alive = torch.cat(alives)
    keep = torch.zeros(values.numel(), dtype=torch.bool)
    if floor is not None:
        base = torch.cat([floor[n].flatten().cpu() for n in pooled])
        if k <= int(base.sum()):  # the best k of the groups' N best
            alive = base
            alives = list(torch.split(base, sizes))
        else:  # the groups' N best first
            keep |= base
    # the guard: each layer's best min_counts[n] weights first (counting what is already kept)
    offset = 0
    for n, size, a in zip(pooled, sizes, alives):
        m = min(int(min_counts.get(n, 0)), int(a.sum()))
        have = int(keep[offset : offset + size].sum())
        if m > have:
            seg = values[offset : offset + size]
            free = a & ~keep[offset : offset + size]
            keep[offset + _topk_indices(seg, free, m - have)] = True
        offset += size
    remaining = k - int(keep.sum())
    if remaining < 0:
        raise ConfigError(
            f"the per-layer minimum needs {int(keep.sum())} weights but the density allows only {k}; "
            "lower --min-layer-density or raise --density"
        )
    if remaining > 0:
        chosen = _topk_indices(values, alive & ~keep, remaining)
        keep[chosen] = True
    offset = 0
    for n, size in zip(pooled, sizes):
        out[n] = keep[offset : offset + size].reshape(scores[n].shape).to(scores[n].device)
        offset += size
    return Mask({n: out[n] for n in scores})


def select_growth(
    scores: Mapping[str, torch.Tensor],
    counts: Mapping[str, int],
    *,
    kept: Mapping[str, torch.Tensor],
    pattern: str | Pattern = "unstructured",
) -> Mask:
    """The ``counts[n]`` best-scored weights of each layer outside ``kept`` that ``kept`` may gain while
    still obeying ``pattern``: what dynamic sparse training grows after it drops.

    Unstructured: the top-k of the weights not kept. ``N:M``: a group with ``j`` kept weights has room for
    ``N − j`` more; each group's best ``N − j`` candidates are allowed and the top-k of those are grown
    (ties to the lower index), so no group ever passes N (at density N/M every group regrows exactly what it
    dropped). ``block:RxC``: whole blocks with no kept weight, by the sum of their scores (counts in whole
    blocks). A count the pattern has no room for is a ConfigError.
    """
    pat = parse_pattern(pattern)
    free = {n: ~kept[n].to(torch.bool) for n in scores}
    if not pat.structured:
        return _select_counts(scores, counts, free, None)
    _fit_or_raise({n: tuple(t.shape) for n, t in scores.items()}, pat)
    if pat.kind == "block":
        grid, alive = _block_grid(scores, free, pat)
        units = {n: _block_units(int(counts[n]), pat, n) for n in scores}
        return Mask(_expand_blocks(_select_counts(grid, units, alive, None), scores, pat))
    allowed = {}
    for n, s in scores.items():
        rows, cols = row_view_shape(s.shape)
        used = kept[n].to(torch.int64).reshape(rows, cols // pat.m, pat.m).sum(-1)
        allowed[n] = _nm_allowed(s, free[n], pat, room=(pat.n - used).clamp(min=0))
        room = int(allowed[n].sum())
        if int(counts[n]) > room:
            raise ConfigError(
                f"cannot grow {int(counts[n])} weights of '{n}' under pattern {pat}: its groups have room "
                f"for {room}"
            )
    return _select_counts(scores, counts, allowed, None)


def layer_densities(
    shapes: Mapping[str, Sequence[int]], density: float, distribution: str = "uniform"
) -> dict[str, float]:
    """Per-layer densities whose weighted mean is ``density``.

    ``uniform``: every layer the same. ``erk`` (Evci et al. 2020, RigL): density ∝ sum(dims)/prod(dims),
    layers that would exceed 1 are made dense and the rest rescaled. ``smart-ratio`` (Su et al. 2020,
    "Sanity-Checking Pruning Methods: Random Tickets can Win the Jackpot"): see :func:`_smart_ratio`.
    ``shapes`` must be in network order (``prunable_shapes`` is): smart-ratio depends on depth.
    """
    check_density(density)
    if distribution == "uniform":
        return {n: density for n in shapes}
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(
            f"unknown density distribution '{distribution}' (choose from: {', '.join(DISTRIBUTIONS)})"
        )
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    if distribution == "erk":
        raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
        return _proportional(sizes, raw, density * sum(sizes.values()))
    return _smart_ratio(sizes, density)


def _proportional(sizes: Mapping[str, int], raw: Mapping[str, float], budget: float) -> dict[str, float]:
    """Densities ``eps · raw[n]`` spending ``budget`` weights; a layer that would exceed 1 is made dense and
    the others rescaled, until none does (ERK's rule: the total stays exact)."""
    dense: set[str] = set()
    while True:
        left = budget - sum(sizes[n] for n in dense)
        denom = sum(raw[n] * sizes[n] for n in sizes if n not in dense)
        eps = left / denom if denom > 0 else 0.0
        over = [n for n in sizes if n not in dense and eps * raw[n] > 1.0]
        if not over:
            break
        dense.update(over)
    return {n: (1.0 if n in dense else eps * raw[n]) for n in sizes}


def _smart_ratio(sizes: Mapping[str, int], density: float) -> dict[str, float]:
    """Smart-ratio densities (Su et al., NeurIPS 2020, Section 5; their ``pruner/SmartRatio.py``).

    Layer l of L (1 = the first, in network order) keeps a fraction ∝ (L − l + 1)² + (L − l + 1): the
    earlier a layer, the more it keeps, quadratically. The last layer (the classifier) keeps a fixed 30%
    (the code's ``--linear_keep_ratio 0.3``), and the others share the rest of the budget, so the
    total is exactly ``density``. A layer whose share would exceed 1 is made dense and the others rescaled,
    as ERK does (the authors' code instead pushes the excess greedily into the next layers; the total is
    the same). If every other layer is dense, the classifier takes what is left (above 30%); if the
    classifier's 30% alone exceeds the budget, it keeps ``density`` like the others' mean. One layer: it
    keeps ``density``. The VGG variant of the code (each conv's ratio further divided by l²) is not
    implemented: this is the rule the paper states, used for ResNets.
    """
    names = list(sizes)
    if len(names) == 1:
        return {names[0]: density}
    budget = density * sum(sizes.values())
    last, rest = names[-1], names[:-1]
    L = len(names)
    last_d = SMART_RATIO_CLASSIFIER if SMART_RATIO_CLASSIFIER * sizes[last] <= budget else density
    raw = {n: float((L - i) ** 2 + (L - i)) for i, n in enumerate(rest)}
    out = _proportional({n: sizes[n] for n in rest}, raw, budget - last_d * sizes[last])
    if all(out[n] >= 1.0 for n in rest):  # everything else dense: the classifier takes what is left
        last_d = min(1.0, max(last_d, (budget - sum(sizes[n] for n in rest)) / sizes[last]))
    out[last] = last_d
    return out


def select(
    scores: Mapping[str, torch.Tensor],
    density: float,
    *,
    scope: str = "global",
    distribution: str = "uniform",
    layer_density: Mapping[str, float] | None = None,
    current: Mapping[str, torch.Tensor] | None = None,
    min_layer_density: float = 0.0,
    pattern: str | Pattern = "unstructured",
    allow_dense_layers: bool = False,
    descent: bool = False,
) -> Mask:
    """Make a mask keeping ``density`` of all scored weights.

    ``scope='global'``: one ranking over all layers (except those in ``layer_density``, selected on their
    own). ``scope='layerwise'``: each layer keeps its own density, from ``distribution`` (uniform, ERK or
    smart-ratio) unless overridden by ``layer_density``. ``min_layer_density`` is a floor for every layer.
    Densities are fractions of each layer's full size, not of what ``current`` still keeps.

    ``pattern`` (see :mod:`.pattern`): ``N:M`` first keeps, in every group of M consecutive weights of a
    row, the N best-scored still-alive ones (ties to the lower index); that is the whole mask when
    ``density`` is N/M, and a lower density then runs the unstructured rule above *within* those
    weights (a density above N/M is refused). ``block:RxC`` runs the rule above on blocks scored by the
    sum of their scores, with exact block counts; a block with any weight pruned in ``current`` is pruned.
    A layer whose shape cannot hold the pattern is an error naming it, unless ``allow_dense_layers``: then
    it is kept whole (as ``current`` has it) and the density applies to the other layers.

    ``descent``: this selection is one step of a schedule walking down to the pattern (GMP's steps,
    Gem-Miner's freezes); under N:M a density (or a layer's density) above N/M is then not refused but
    met by the floor rule of the module docstring: every group keeps its N best alive weights, the rest of
    the count goes to the best others. Below N/M it is the rule above. The mask claims the pattern (its
    metadata's ``pattern``) only when it obeys it; the schedule's target is checked up front with
    :func:`check_selection`.
    """
    check_density(density)
    if scope not in SCOPES:
        raise ConfigError(f"unknown selection scope '{scope}' (choose from: {', '.join(SCOPES)})")
    if not 0.0 <= min_layer_density <= 1.0:
        raise ConfigError(f"min_layer_density must be in [0, 1], got {min_layer_density}")
    if not scores:
        raise ConfigError("no prunable parameters to select from (the model has no Linear/Conv weights)")
    pat = parse_pattern(pattern)
    validate_scores(scores, None)
    shapes = {n: tuple(t.shape) for n, t in scores.items()}
    if current is not None:
        Mask(current).check_shapes(shapes, what="scores")
    overrides = {n: check_density(d, name=f"density of '{n}'") for n, d in (layer_density or {}).items()}
    unknown = [n for n in overrides if n not in scores]
    if unknown:
        raise ConfigError(f"layer density given for unknown parameter(s): {', '.join(unknown)}")
    meta = dict(
        density_requested=float(density),
        scope=scope,
        distribution=distribution if scope == "layerwise" else None,
    )
    if not pat.structured:
        mask = _select_unstructured(
            scores, density, scope, distribution, overrides, current, min_layer_density
        )
        return mask.with_metadata(**meta)

    unfit = _pattern_checks(
        shapes, density, scope, distribution, overrides, min_layer_density, pat, allow_dense_layers, descent
    )
    fit = [n for n in shapes if n not in unfit]
    sub_scores = {n: scores[n] for n in fit}
    sub_current = {n: current[n] for n in fit} if current is not None else None
    sub_over = {n: d for n, d in overrides.items() if n in fit}
    if pat.kind == "nm":
        allowed = _nm_floors(sub_scores, sub_current, pat)
        if descent:  # the floor rule: the groups' N best first where a count exceeds them
            picked = dict(
                _select_unstructured(
                    sub_scores,
                    density,
                    scope,
                    distribution,
                    sub_over,
                    sub_current,
                    min_layer_density,
                    allowed,
                )
            )
        elif _exactly_n_of_m(density, sub_over, min_layer_density, pat):
            picked = allowed  # N of every M: the density is exactly N/M (less where current pruned more)
        else:
            picked = dict(
                _select_unstructured(
                    sub_scores, density, scope, distribution, sub_over, allowed, min_layer_density
                )
            )
    else:
        picked = _select_blocks(
            sub_scores, density, scope, distribution, sub_over, sub_current, min_layer_density, pat
        )
    out: dict[str, torch.Tensor] = {}
    for n, t in scores.items():
        if n in picked:
            out[n] = picked[n].to(t.device)
        else:  # kept dense (allowed): whole, except what current already pruned
            base = current[n] if current is not None else torch.ones(t.shape, dtype=torch.bool)
            out[n] = base.to(device=t.device, dtype=torch.bool).clone()
    mask = Mask(out).with_metadata(**meta)
    if descent:  # a step above N/M keeps more than N of some group: it claims nothing
        return claim_pattern(mask, pat, unfit, strict=False)
    return claim_pattern(mask, pat, unfit)


def _exactly_n_of_m(
    density: float, overrides: Mapping[str, float], min_layer_density: float, pat: Pattern
) -> bool:
    return density >= pat.max_density - 1e-12 and not overrides and min_layer_density <= pat.max_density


def _pattern_checks(
    shapes: Mapping[str, Sequence[int]],
    density: float,
    scope: str,
    distribution: str,
    overrides: Mapping[str, float],
    min_layer_density: float,
    pat: Pattern,
    allow_dense_layers: bool,
    descent: bool,
) -> list[str]:
    """What :func:`select` refuses under a pattern before it looks at a score; returns the unfit layers
    kept dense."""
    if density > pat.max_density + 1e-12 and not descent:
        raise ConfigError(
            f"density {density:g} is above what pattern {pat} keeps ({pat.max_density:g}); "
            f"use --density {pat.max_density:g} or lower"
        )
    unfit = check_fits(shapes, pat, allow_dense_layers=allow_dense_layers)
    if pat.kind == "nm" and not descent:
        fit = {n: shapes[n] for n in shapes if n not in unfit}
        sub_over = {n: d for n, d in overrides.items() if n in fit}
        if not _exactly_n_of_m(density, sub_over, min_layer_density, pat):
            _check_nm_densities(fit, density, scope, distribution, sub_over, min_layer_density, pat)
    return unfit


def check_fits(
    shapes: Mapping[str, Sequence[int]], pattern: str | Pattern, *, allow_dense_layers: bool = False
) -> list[str]:
    """The layers whose shape cannot hold ``pattern`` (kept dense when ``allow_dense_layers``); without
    that permission, a one-line ConfigError naming each with its shape. A method that selects later (a
    schedule, IMP's levels) calls this before it trains anything."""
    pat = parse_pattern(pattern)
    unfit = unfit_layers(shapes, pat)
    if unfit and not allow_dense_layers:
        raise ConfigError(
            f"pattern {pat} does not fit layer(s) {', '.join(f'{n} {list(shapes[n])}' for n in unfit)}: "
            f"{pat.need()}; pass --allow-dense-layers to keep them dense"
        )
    if unfit and len(unfit) == len(shapes):
        raise ConfigError(f"pattern {pat} fits none of the layers ({pat.need()}): nothing to select")
    return unfit


def check_selection(
    shapes: Mapping[str, Sequence[int]],
    density: float,
    *,
    scope: str = "global",
    distribution: str = "uniform",
    layer_density: Mapping[str, float] | None = None,
    min_layer_density: float = 0.0,
    pattern: str | Pattern = "unstructured",
    allow_dense_layers: bool = False,
) -> list[str]:
    """Raise what :func:`select` would raise for a pattern at ``density`` on layers of ``shapes``, without
    scores: an unfit layer, a density above N/M, a layer's density (ERK, override, floor) above N/M. A
    method whose selections come later (during or after training) calls it with its target first, so a bad
    value fails before anything trains. Returns the layers that will be kept dense."""
    check_density(density)
    pat = parse_pattern(pattern)
    if not pat.structured:
        return []
    overrides = {n: check_density(d, name=f"density of '{n}'") for n, d in (layer_density or {}).items()}
    return _pattern_checks(
        shapes, density, scope, distribution, overrides, min_layer_density, pat, allow_dense_layers, False
    )


def claim_pattern(
    mask: Mask, pattern: str | Pattern, dense_layers: Sequence[str] = (), *, strict: bool = True
) -> Mask:
    """``mask`` with ``pattern`` (and the layers kept dense) in its metadata: the claim its sidecar makes and
    ``Mask.load`` checks. ``strict``: a mask that breaks the pattern is a bug, raised; otherwise it is
    returned without the claim (a schedule's step above N/M)."""
    pat = parse_pattern(pattern)
    if not pat.structured:
        return mask
    try:
        check_pattern(mask, pat, dense_layers=dense_layers)
    except MaskMismatchError:
        if strict:
            raise
        return Mask(mask, {k: v for k, v in mask.metadata.items() if k not in ("pattern", "dense_layers")})
    extra: dict[str, object] = {"pattern": str(pat)}
    if dense_layers:
        extra["dense_layers"] = list(dense_layers)
    return mask.with_metadata(**extra)


def _check_nm_densities(
    shapes: Mapping[str, Sequence[int]],
    density: float,
    scope: str,
    distribution: str,
    overrides: Mapping[str, float],
    min_layer_density: float,
    pat: Pattern,
) -> None:
    """N:M keeps at most N/M of any layer: a per-layer density (ERK, an override, the floor) above that
    cannot be met, and is refused here by name rather than as a count the top-k cannot fill."""
    dens = dict(overrides)
    if scope == "layerwise":
        dens = {**layer_densities(shapes, density, distribution), **dens}
    if min_layer_density > pat.max_density + 1e-12:
        dens["--min-layer-density"] = min_layer_density
    over = [(n, d) for n, d in dens.items() if d > pat.max_density + 1e-12]
    if over:
        n, d = over[0]
        raise ConfigError(
            f"pattern {pat} keeps at most {pat.max_density:g} of a layer, but {n} would keep {d:.4g} "
            f"({scope} {distribution if scope == 'layerwise' else ''} selection); lower --density or use "
            "--distribution uniform".replace("  ", " ")
        )


def _nm_allowed(
    score: torch.Tensor, alive: torch.Tensor | None, pat: Pattern, *, room: torch.Tensor | None = None
) -> torch.Tensor:
    """In every group of M consecutive weights of each row, the N best-scored alive ones (fewer where the
    group has fewer alive: a pruned weight is never revived). Ties → lower index (stable sort). ``room``
    (``[rows, groups]``): each group's own number instead of N (what growth may add to a group)."""
    rows, cols = row_view_shape(score.shape)
    g = score.detach().to(torch.float64).reshape(rows, cols // pat.m, pat.m)
    if alive is not None:
        a = alive.to(g.device, torch.bool).reshape(rows, cols // pat.m, pat.m)
        g = g.masked_fill(~a, -math.inf)  # scores are finite (validated): dead weights sort last
    order = torch.sort(g, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros(g.shape, dtype=torch.bool, device=g.device)
    if room is None:
        keep.scatter_(-1, order[..., : pat.n], True)
    else:
        rank_ok = torch.arange(pat.m, device=g.device) < room.to(g.device).unsqueeze(-1)
        keep.scatter_(-1, order, rank_ok)
    if alive is not None:
        keep &= a
    return keep.reshape(score.shape)


def _select_blocks(
    scores: Mapping[str, torch.Tensor],
    density: float,
    scope: str,
    distribution: str,
    overrides: Mapping[str, float],
    current: Mapping[str, torch.Tensor] | None,
    min_layer_density: float,
    pat: Pattern,
) -> dict[str, torch.Tensor]:
    """Block selection = the unstructured rule on the block grid. A block's score is the sum of its
    weights' scores (all blocks have R·C weights, so sum and mean rank alike, also across layers); block
    ties → the lower block index, row-major over the grid. Layerwise densities (ERK, smart-ratio) are
    computed from the weights' real shapes, not the grid's, then counted in blocks."""
    grid, alive_grid = _block_grid(scores, current, pat)
    over = dict(overrides)
    if scope == "layerwise":
        dens = layer_densities({n: tuple(s.shape) for n, s in scores.items()}, density, distribution)
        over = {**dens, **over}
    chosen = _select_unstructured(grid, density, scope, distribution, over, alive_grid, min_layer_density)
    return _expand_blocks(chosen, scores, pat)


def _select_unstructured(
    scores: Mapping[str, torch.Tensor],
    density: float,
    scope: str,
    distribution: str,
    overrides: Mapping[str, float],
    current: Mapping[str, torch.Tensor] | None,
    min_layer_density: float,
    floor: Mapping[str, torch.Tensor] | None = None,
) -> Mask:
    """The element-wise rule of :func:`select` on already validated arguments (``floor``: the N:M floor
    rule of the module docstring)."""
    shapes = {n: tuple(t.shape) for n, t in scores.items()}
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    min_counts = {n: min(sizes[n], math.ceil(min_layer_density * sizes[n])) for n in shapes}

    if scope == "layerwise":
        dens = layer_densities(shapes, density, distribution)
        dens.update(overrides)
        counts = {n: max(exact_count(dens[n], sizes[n]), min_counts[n]) for n in shapes}
        return _select_counts(scores, counts, current, floor)
    fixed = {n: max(exact_count(d, sizes[n]), min_counts[n]) for n, d in overrides.items()}
    pooled_total = sum(sizes[n] for n in shapes if n not in fixed)
    k = (
        exact_count(density, sum(sizes.values())) - sum(fixed.values())
        if fixed
        else exact_count(density, pooled_total)
    )
    k = max(0, min(k, pooled_total))
    return _select_global(
        scores,
        k,
        current,
        fixed,
        {n: c for n, c in min_counts.items() if n not in fixed},
        floor,
    )


def _ceil_sig(x: float, digits: int = 3) -> float:
    """Round up to ``digits`` significant digits: a printed bound that is still sufficient."""
    if x <= 0:
        return x
    e = math.floor(math.log10(x)) - digits + 1
    return math.ceil(x / 10**e) * 10**e


def _smallest_density(
    shapes: Mapping[str, Sequence[int]],
    scope: str,
    distribution: str,
    scores: Mapping[str, torch.Tensor] | None,
) -> float | None:
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    if scope == "global":
        if scores is None:
            return None
        flat = torch.cat([scores[n].detach().flatten().double().cpu() for n in shapes])
        total = flat.numel()
        # the rank of each layer's best weight in the global ranking; k = round-half-up(d·N) reaches it
        # once d·N ≥ rank - 0.5
        worst = max(int((flat > scores[n].detach().double().max().cpu()).sum()) + 1 for n in shapes)
        return min(1.0, (worst - 0.5) / total)

    def ok(d: float) -> bool:
        dens = layer_densities(shapes, d, distribution)
        return all(exact_count(dens[n], sizes[n]) >= 1 for n in shapes)

    lo, hi = 0.0, 1.0
    for _ in range(60):  # monotone in d: bisect to float precision
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def check_empty_layers(
    mask: Mask,
    scores: Mapping[str, torch.Tensor] | None = None,
    *,
    allow: bool = False,
    scope: str = "layerwise",
    distribution: str = "uniform",
) -> list[str]:
    """Layers the mask keeps nothing of; an error unless ``allow``.

    A network with an empty layer no longer connects input to output and trains to chance: reporting its
    10% accuracy as a ticket's would be a silent wrong number. The message names the layers and the
    smallest density that keeps at least one weight in every layer (exact for layerwise selection; for
    global selection, computed from the scores when they are given).
    """
    empty = [n for n, c in mask.layer_counts().items() if c == 0]
    if not empty or allow:
        return empty
    d = _smallest_density(mask.shapes(), scope, distribution, scores)
    hint = f"the smallest density that keeps one weight in every layer is {_ceil_sig(d):.3g}; " if d else ""
    raise EmptyLayerError(
        f"the mask keeps no weight of layer(s) {', '.join(empty)} at density "
        f"{mask.metadata.get('density_requested', mask.density):.3g} "
        f"({scope} selection): the network would be disconnected; {hint}raise --density, set "
        "--min-layer-density, or pass --allow-empty-layers"
    )
