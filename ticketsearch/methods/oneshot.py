"""Score once (or in R rounds) at init, select, train the ticket: every :class:`~ticketsearch.scorers.Scorer`
becomes a method through :class:`OneShot`, so plugin scorers need nothing but their ``score``."""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import TYPE_CHECKING, Any

import torch

from ..core.errors import ConfigError
from ..core.hparams import RunHparams
from ..core.mask import Mask
from ..core.select import check_empty_layers
from ..scorers.base import Scorer, ScoringContext
from ..scorers.iterative import find_mask, scope_of
from ..training.imp import reset_to
from .base import LevelRow, Method, RunContext, suggest_density, suggest_lr

if TYPE_CHECKING:  # optuna is imported only by `ticketsearch study`
    from optuna.trial import Trial

__all__ = ["OneShot", "dense_baseline", "score_batches"]

# the scoring batches come from their own stream, so they are not the first training batches
_SCORE_SEED_OFFSET = 7


def score_batches(run: RunContext) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``--score-batches`` batches of real training data, a pure function of the seed."""
    from ..data import Batcher

    p = run.hp.pruning
    bs = p.score_batch_size or run.hp.training.batch_size
    b = Batcher(run.data.x_train, run.data.y_train, bs, seed=run.seed + _SCORE_SEED_OFFSET)
    return [b.batch(i) for i in range(p.score_batches)]


def dense_baseline(run: RunContext) -> LevelRow:
    """Level 0: the dense network trained from the same init (``--baseline``)."""
    level = run.level(0)
    mask = Mask.ones(run.shapes)
    if level.done():
        res = level.result()
    else:
        model = copy.deepcopy(run.model)
        reset_to(model, run.init_state, mask)
        level.save_mask(mask, **run.mask_metadata(level=0))
        res = run.finish_level(level, model, run.train_level(level, model, desc="dense"), density=1.0)
    return LevelRow(0, mask.density, str(level.mask_path), res)


class OneShot(Method):
    """Any scorer as a method: score at init (``--rounds`` R: exponential schedule), select, train."""

    kind = "oneshot"
    fields = ("rounds", "scope", "distribution", "score_batches", "score_batch_size")
    distributed = True  # every rank scores the same batches; rank 0's mask is the one kept
    sanity_checks = ("reinit", "shuffle", "invert")
    accepts_pattern = True  # find_mask passes --pattern to every round's select

    def __init__(self, scorer_cls: type[Scorer], *, source: str = "built-in") -> None:
        self.scorer_cls = scorer_cls
        self.name = getattr(scorer_cls, "name", "") or scorer_cls.__name__
        self.source = source
        knobs = getattr(scorer_cls, "knobs", None)
        # invert (Frankle et al. 2021's sanity check): keep what the scorer would prune
        self.knobs = None if knobs is None else {**knobs, "invert": False}
        self.default_scope = getattr(scorer_cls, "default_scope", "") or "layerwise"
        self.citation = getattr(scorer_cls, "citation", "")
        if getattr(scorer_cls, "default_rounds", 1) > 1:
            self.kind = "iterative"
            # R rounds of inverted scores are R more scorings; bench has never inverted an iterative scorer
            self.sanity_checks = ("reinit", "shuffle")
        if getattr(scorer_cls, "data_free", False):  # batches are never drawn: not part of the identity
            self.fields = tuple(f for f in self.fields if not f.startswith("score_batch"))

    def validate(self, hp: RunHparams) -> None:
        super().validate(hp)
        check = getattr(
            self.scorer_cls, "check_hparams", None
        )  # the scorer's knob values (plugins: optional)
        if callable(check):
            check(hp)
        if hp.pruning.rounds < 0:
            raise ConfigError(f"rounds must be ≥ 0 (0: the method's default), got {hp.pruning.rounds}")

    def inverted(self, hp: RunHparams) -> RunHparams:
        """The same run with the scorer's ranking upside down (``--arg invert=true``)."""
        return hp.replace(method_args=tuple(sorted({**dict(hp.method_args), "invert": True}.items())))

    def search_space(
        self, trial: Trial, hp: RunHparams, *, density: tuple[float, float] | None = None
    ) -> RunHparams:
        """The ticket's training lr; how many real batches a data-driven scorer sees (SNIP's single
        batch is noisy); the rounds of an iterative scorer (SynFlow's 100 are a cost, not a law)."""
        hp = suggest_lr(trial, suggest_density(trial, hp, density))
        changes: dict[str, Any] = {}
        if "score_batches" in self.fields:  # data-free scorers drop these fields
            changes["score_batches"] = trial.suggest_int("score_batches", 1, 32, log=True)
        default_rounds = int(getattr(self.scorer_cls, "default_rounds", 1))
        if default_rounds > 1:
            changes["rounds"] = trial.suggest_int("rounds", 1, max(10, 2 * default_rounds), log=True)
        hp = hp.replace(pruning=dataclasses.replace(hp.pruning, **changes))
        space = getattr(self.scorer_cls, "search_space", None)  # a duck-typed plugin may not have one
        own = dict(space(trial, hp)) if callable(space) else {}
        if own:
            self.parse_knobs(own)  # a knob the scorer does not declare is a one-line error, here too
            hp = hp.replace(method_args=tuple(sorted({**dict(hp.method_args), **own}.items())))
        return hp

    def run_levels(self, run: RunContext) -> list[LevelRow]:
        rows = [dense_baseline(run)] if run.baseline else []
        level = run.level(1)
        if level.done():
            mask = level.load_mask()
            res = level.result()
        else:
            if level.has_mask():  # scored before a crash: scoring is deterministic, reuse it
                mask = level.load_mask()
                find_cost: dict[str, Any] = mask.metadata.get("cost_to_find", {})
            else:
                mask, find_cost = self.find(run)
                mask = run.shared_mask(mask)
                level.save_mask(mask, **run.mask_metadata(level=1, cost_to_find=find_cost))
            reset_to(run.model, run.init_state, mask)
            result = run.train_level(level, run.model, desc=f"{self.name} ({mask.density:.1%})")
            res = run.finish_level(level, run.model, result, density=mask.density, cost_to_find=find_cost)
        row = LevelRow(1, mask.density, str(level.mask_path), res)
        row.controls = run.run_controls(1, level, mask, run.init_state)
        rows.append(row)
        return rows

    def find(self, run: RunContext) -> tuple[Mask, dict[str, Any]]:
        """Score and select on the init; an empty layer is refused here, before anything is trained."""
        hp = run.hp
        scorer: Scorer = self.scorer_cls()
        if bool(dict(hp.method_args).get("invert", False)):
            scorer = _Inverted(scorer)
        batches = [] if getattr(scorer, "data_free", False) else score_batches(run)
        t0 = time.perf_counter()
        ctx = ScoringContext(data=run.data, seed=run.seed, progress=run.progress)
        mask, cost = find_mask(scorer, run.model, batches, hp, context=ctx)
        scores = None
        if (
            mask.metadata.get("empty_layers")
            and not hp.pruning.allow_empty_layers
            and cost.get("rounds") == 1
        ):
            scores = scorer.score(copy.deepcopy(run.model), batches, hparams=hp, context=ctx)
        check_empty_layers(
            mask,
            scores,
            allow=hp.pruning.allow_empty_layers,
            scope=scope_of(scorer, hp.pruning.scope),
            distribution=hp.pruning.distribution,
        )
        cost = {"wall_time": time.perf_counter() - t0, **{k: v for k, v in cost.items() if k != "wall_time"}}
        return mask, cost


class _Inverted(Scorer):
    """The scorer's ranking turned upside down: the inversion check of Frankle et al. 2021 ("Pruning neural
    networks at initialization: why are we missing the mark?") — it hurts SNIP and SynFlow, not GraSP."""

    def __init__(self, inner: Scorer) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", "")
        self.data_free = getattr(inner, "data_free", False)  # type: ignore[misc]
        self.default_rounds = getattr(inner, "default_rounds", 1)  # type: ignore[misc]
        self.default_scope = getattr(inner, "default_scope", "layerwise")  # type: ignore[misc]

    def score(
        self, model: Any, batches: Any, *, hparams: RunHparams, context: Any = None
    ) -> dict[str, torch.Tensor]:
        return {n: -s for n, s in self.inner.score(model, batches, hparams=hparams, context=context).items()}
