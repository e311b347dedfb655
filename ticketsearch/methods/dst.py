"""Dynamic sparse training: sparse from the first step, the mask moved by drop-and-grow (RigL, SET).

Both start from a random mask at ``--density`` with the papers' ERK layer densities (the default here;
``--distribution uniform`` for equal ones)
and every ΔT steps, until a fraction of the budget, each layer drops the f(t) fraction of its kept weights
with the smallest magnitude and grows as many elsewhere, so every layer keeps its count:

- RigL (Evci et al., ICML 2020, "Rigging the Lottery"): grow where the dense gradient |∂L/∂w| of that
  step is largest (pruned weights included: the loop hands the schedule the dense gradients);
- SET (Mocanu et al., Nature Communications 2018): grow at random (a generator seeded by the run's seed
  and the step, so a resumed run grows the same weights).

f(t) = α/2 · (1 + cos(π t / T_end)), RigL's cosine decay (α = 0.3, ΔT = 100, T_end = 75% of the budget:
the paper's defaults). A grown weight starts at zero with zero optimizer state (the loop's rule); a weight
dropped and grown at the same step keeps its value, as in RigL's code. Drop and grow each go through
``core.select`` (exact counts, ties to the lower index). Levels as every moving-mask method's
(:mod:`.moving`): 1, the sparse network trained while its mask moved; 2, its final mask retrained from init.

Under ``--pattern`` the start mask is selected under the pattern, and every move keeps it: ``N:M`` drops as
above (dropping never breaks a group) and grows only where a group has room, its best ``N − kept``
candidates first, then the layer's best of those (:func:`ticketsearch.core.select.select_growth`), so no
group passes N and each layer keeps its count (at density N/M every group regrows exactly what it dropped);
``block:RxC`` drops and grows whole blocks (the drop fraction counted in blocks, dropped by the sum of |w|,
grown by the sum of |gradient| or of the random scores). Layers kept dense (``--allow-dense-layers``) never
move.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn as nn

from ..core.errors import ConfigError
from ..core.hparams import RunHparams
from ..core.mask import Mask, exact_count
from ..core.pattern import parse_pattern
from ..core.select import check_fits, select, select_counts, select_growth
from ..sparse import get_mask, prunable_parameters
from ..training.schedule import MaskSchedule, MaskUpdate
from .base import RunContext, register_strategy, suggest_density, suggest_lr
from .moving import MovingMask, budget_iterations

if TYPE_CHECKING:  # optuna is imported only by `ticketsearch study`
    from optuna.trial import Trial

__all__ = ["DropGrow", "RigL", "SET", "cosine_fraction"]

# the start mask's random scores come from their own stream (not the init's, not the growth's)
_START_SEED_OFFSET = 11
_GROW_SEED_OFFSET = 1_000_003


def cosine_fraction(it: int, alpha: float, t_end: int) -> float:
    """RigL's drop fraction at step ``it``: α/2 · (1 + cos(π it / T_end)), 0 from ``t_end`` on."""
    if it >= t_end:
        return 0.0
    return alpha / 2.0 * (1.0 + math.cos(math.pi * it / t_end))


class DropGrow(MaskSchedule):
    """Every ``every`` steps before ``t_end``, per layer: drop the :func:`cosine_fraction` of the kept
    weights with the smallest |w|; grow as many among the rest by |dense gradient| (``grow="gradient"``)
    or at random (``grow="random"``)."""

    def __init__(
        self,
        every: int,
        alpha: float,
        t_end: int,
        grow: str,
        seed: int,
        *,
        pattern: str = "unstructured",
        dense_layers: Sequence[str] = (),
    ) -> None:
        if grow not in ("gradient", "random"):
            raise ValueError(f"grow must be 'gradient' or 'random', got {grow!r}")
        self.every, self.alpha, self.t_end, self.grow, self.seed = max(1, every), alpha, t_end, grow, seed
        self.pattern = parse_pattern(pattern)
        self.dense_layers = set(dense_layers)

    def is_update(self, it: int) -> bool:
        return 0 < it < self.t_end and it % self.every == 0

    def needs_grads(self, it: int) -> bool:
        return self.grow == "gradient" and self.is_update(it)

    def update(
        self, it: int, model: nn.Module, grads: Mapping[str, torch.Tensor] | None
    ) -> MaskUpdate | None:
        if not self.is_update(it):
            return None
        f = cosine_fraction(it, self.alpha, self.t_end)
        masks = get_mask(model)
        gen = (
            torch.Generator().manual_seed(self.seed * _GROW_SEED_OFFSET + it)
            if self.grow == "random"
            else None
        )
        pat = self.pattern
        unit = pat.r * pat.c if pat.kind == "block" else 1  # blocks: the fraction counts whole blocks
        drop_pattern = pat if pat.kind == "block" else "unstructured"  # dropping never breaks N:M
        new: dict[str, torch.Tensor] = {}
        for name, w in prunable_parameters(model).items():
            if name in self.dense_layers:  # kept whole: never moves
                continue
            m = masks[name].to(w.device)
            n_on = int(m.sum())
            k = exact_count(f, n_on // unit) * unit
            if k == 0:
                continue
            keep = select_counts(
                {name: w.detach().abs()}, {name: n_on - k}, current={name: m}, pattern=drop_pattern
            )[name]
            if gen is not None:
                score = torch.rand(w.shape, generator=gen).to(w.device)
            else:
                assert grads is not None, "the loop hands dense gradients at the steps needs_grads names"
                score = grads[name].abs()
            grown = select_growth({name: score}, {name: k}, kept={name: keep}, pattern=pat)[name]
            out = keep | grown
            if not torch.equal(out, m):
                new[name] = out
        return new


class _DropGrowMethod(MovingMask):
    """RigL and SET: the same schedule but for how weights grow."""

    grow: ClassVar[str] = "gradient"
    kind = "dynamic"
    accepts_pattern = True  # the start mask under the pattern, every move within it (DropGrow)
    knobs: ClassVar[dict[str, Any] | None] = {**MovingMask.knobs, "every": 100, "alpha": 0.3, "end": 0.75}  # type: ignore[dict-item]
    default_scope = (
        "layerwise"  # the start mask's rule (with ERK: the papers'); every move keeps layer counts
    )
    default_distribution = "erk"  # the papers' layer densities (``--distribution uniform`` to compare)

    def validate(self, hp: RunHparams) -> None:
        super().validate(hp)
        k = self.parse_knobs(dict(hp.method_args))
        every, alpha, end = int(k.get("every", 100)), float(k.get("alpha", 0.3)), float(k.get("end", 0.75))
        if every < 1:
            raise ConfigError(f"{self.name}'s every (steps between mask updates) must be >= 1, got {every}")
        if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
            raise ConfigError(f"{self.name}'s alpha (drop fraction) must be in [0, 1], got {alpha:g}")
        if not (math.isfinite(end) and 0.0 < end <= 1.0):
            raise ConfigError(f"{self.name}'s end (fraction of the budget) must be in (0, 1], got {end:g}")

    def start_mask(self, run: RunContext) -> Mask:
        p = run.hp.pruning
        g = torch.Generator().manual_seed(run.seed + _START_SEED_OFFSET)
        scores = {n: torch.rand(s, generator=g) for n, s in run.shapes.items()}
        scope = p.scope or self.default_scope  # global: one random ranking; the moves keep each layer's count
        return select(
            scores,
            p.density,
            scope=scope,
            distribution=p.distribution,
            min_layer_density=p.min_layer_density,
            pattern=p.pattern,
            allow_dense_layers=p.allow_dense_layers,
        )

    def schedule(self, run: RunContext) -> DropGrow:
        k = self.parse_knobs(dict(run.hp.method_args))
        t_end = max(1, int(round(float(k.get("end", 0.75)) * budget_iterations(run))))
        p = run.hp.pruning
        return DropGrow(
            int(k.get("every", 100)),
            float(k.get("alpha", 0.3)),
            t_end,
            self.grow,
            seed=run.seed,
            pattern=p.pattern,
            dense_layers=check_fits(run.shapes, p.pattern, allow_dense_layers=p.allow_dense_layers),
        )

    def describe(self, schedule: MaskSchedule) -> dict[str, Any]:
        assert isinstance(schedule, DropGrow)
        return {"every": schedule.every, "alpha": schedule.alpha, "t_end": schedule.t_end}

    def search_space(
        self, trial: Trial, hp: RunHparams, *, density: tuple[float, float] | None = None
    ) -> RunHparams:
        hp = suggest_density(trial, suggest_lr(trial, hp), density)
        alpha = float(trial.suggest_float("alpha", 0.1, 0.5))
        every = int(trial.suggest_int("every", 25, 400, log=True))
        return hp.replace(
            method_args=tuple(sorted({**dict(hp.method_args), "alpha": alpha, "every": every}.items()))
        )


@register_strategy(
    "rigl", description="RigL: sparse from the start, drop by |w|, grow by |dense gradient| every ΔT steps"
)
class RigL(_DropGrowMethod):
    """RigL (Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML 2020). The paper's
    defaults: ERK densities (the default ``--distribution``), α 0.3, ΔT 100, T_end 75% of the budget."""

    grow = "gradient"
    citation = "Evci et al., ICML 2020"


@register_strategy(
    "set", description="SET: sparse from the start, drop by |w|, grow at random every ΔT steps"
)
class SET(_DropGrowMethod):
    """Sparse Evolutionary Training (Mocanu et al., Nature Communications 2018), with RigL's schedule (as in
    Evci et al. 2020's comparison): random growth instead of RigL's gradient."""

    grow = "random"
    citation = "Mocanu et al., Nature Communications 2018"
