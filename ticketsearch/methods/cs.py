"""Continuous sparsification (Savarese, Silva & Maire, NeurIPS 2020, "Winning the Lottery with Continuous
Sparsification"; code: lolemacs/continuous-sparsification), written against the moving-mask levels.

Every prunable weight gets a mask parameter ``s`` (all start at ``s0``) and the network computes with
``w ⊙ σ(β·s)/σ(s0)`` (:mod:`ticketsearch.sparse.soft`) while both the weights and the masks train, under
the task loss plus λ·Σ σ(β·s)/σ(s0). Within a round the temperature β rises geometrically once per epoch
from 1 to ``final_temp``, so the sigmoid hardens to the step 1[s > 0]; between rounds ``s ← min(β·s, s0)``
(the authors' ``prune``): the masks that closed stay closed, the open ones restart at ``s0`` and compete
again, and β restarts at 1. The weights are never reset during the search (as the authors' code). The
ticket is the mask on the weights rewound to an early iteration of the first round (``--rewind-iter``;
0: the original init), trained like any ticket.

Levels (:mod:`.moving`): 1, the network the search trained, its mask made binary (``w/σ(s0)`` on the kept
weights: the β → ∞ limit of what it computed; one search of ``rounds`` trainings, each round stored and
resumed on its own); 2, the ticket, which is this run's answer at its density.

The density CS reaches is emergent (set by λ and s0, not asked for). ``--arg select=topk`` (default) keeps
exactly ``--density``: the top of ``s`` at the end of the last round (``--scope``/``--distribution`` as
for any selection, and ``--pattern``: that top-k is ``core.select``'s under the pattern, checked before
the search trains); ``select=threshold`` keeps the emergent mask 1[s > 0] (the paper's ticket) and
``--density`` is unused, so it cannot keep a pattern and refuses one. Both densities are recorded in
level 1's result (``cs.emergent_density``).

Differences from the authors' code, on purpose: one optimizer for weights and masks with the run's recipe
(theirs: two SGD optimizers with the same settings; weight decay never touches the masks in either); the
optimizer state and learning-rate schedule restart with each round (theirs carry the momentum across
rounds); between rounds ``min(β·s, s0)`` with the round's final β, the paper's rule (the released code
resets β to 1 first, so it computes ``min(s, s0)``); the ticket trains ``w_rewind`` under the mask without
their 1/σ(s0) factor (2 for s0 = 0), so it is a ticket in the same sense as IMP's.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..core.errors import ConfigError
from ..core.hparams import RunHparams, parse_duration, to_iterations
from ..core.mask import Mask
from ..core.pattern import parse_pattern
from ..core.select import check_empty_layers, select
from ..sparse import apply_mask
from ..sparse.soft import (
    SoftMaskController,
    attach_soft_masks,
    check_soft_scores_finite,
    soft_layers,
    soft_scores,
    strip_soft_masks,
)
from ..training.imp import reset_to
from ..training.loop import TrainResult, evaluate
from ..training.optim import NO_DECAY
from .base import (
    LevelStore,
    RunContext,
    register_strategy,
    rewind_field,
    steps_per_epoch,
    suggest_density,
    suggest_lr,
)
from .moving import MovingMask, budget_iterations

if TYPE_CHECKING:  # optuna is imported only by `ticketsearch study`
    from optuna.trial import Trial

__all__ = ["ContinuousSparsification", "CSHparams", "cs_temperature", "next_round_scores"]

SELECT = ("topk", "threshold")


@dataclass(frozen=True)
class CSHparams:
    """Continuous sparsification's own hyperparameter (flag ``--rewind-iter``, shared with IMP)."""

    rewind: str = rewind_field()

    def validate(self) -> None:
        parse_duration(self.rewind, name="rewind")


def cs_temperature(it: int, final: float, total: int, steps_per_epoch: int) -> float:
    """β before step ``it`` of a round of ``total`` steps: ``final ** (e / (E - 1))`` in epoch ``e`` of the
    round's ``E`` (the authors multiply β by final^(1/(E-1)) at the start of every epoch after the first,
    reaching ``final`` in the last); a round shorter than two epochs rises step by step instead."""
    epochs = -(-total // max(1, steps_per_epoch))
    if epochs >= 2:
        return float(final ** (min(it // steps_per_epoch, epochs - 1) / (epochs - 1)))
    return float(final ** (min(it, total - 1) / max(1, total - 1)))


def next_round_scores(s: torch.Tensor, beta: float, s0: float) -> torch.Tensor:
    """The paper's step between rounds, ``min(β·s, s0)`` with β the round's final temperature: a closed
    mask (s < 0) moves further below zero, so it stays closed when β restarts at 1; an open one restarts
    at ``s0`` (if it was above it). (The released code resets β to 1 just before its ``prune``, so it
    computes ``min(s, s0)``, under which a mask barely closed, σ(s) ≈ σ(0), opens again.)"""
    return torch.clamp(s * beta, max=s0)


@register_strategy(
    "cs",
    description="continuous sparsification: soft masks σ(βs) with an L1 penalty, hardened over rounds, "
    "then the mask retrained from an early rewind point",
)
class ContinuousSparsification(MovingMask):
    """Continuous sparsification (Savarese et al., NeurIPS 2020; arXiv 1912.04427).

    Knobs (``--arg``), the authors' defaults: ``l1`` (λ, 1e-8: their ``lmbda``, on the sum of the masks
    over a mean task loss), ``s0`` (0: the masks' initial value; lower finds sparser masks, their
    ``mask_initial_value``), ``final_temp`` (200: β at the end of each round), ``rounds`` (3), ``select``
    (``topk``: exactly ``--density``; ``threshold``: the emergent mask 1[s > 0]), ``retrain`` (true: train
    the ticket, level 2). ``--rewind-iter`` (default 0: the init) is where the ticket's weights come from
    (the authors rewind to epoch 2 of the first round).
    """

    kind = "continuous"
    hparams_cls = CSHparams
    knobs: dict[str, Any] = {  # type: ignore[assignment]
        **MovingMask.knobs,
        "l1": 1e-8,
        "s0": 0.0,
        "final_temp": 200.0,
        "rounds": 3,
        "select": "topk",
    }
    fields = ("scope", "distribution")
    default_scope = "global"  # one λ over every layer: the layers' densities are what the masks learn
    accepts_pattern = True  # select=topk is core.select under the pattern; select=threshold refuses one
    citation = "Savarese et al., NeurIPS 2020 (arXiv:1912.04427)"
    distributed = False  # untested under torchrun

    # -- configuration --------------------------------------------------------------------------------
    def _knobs(self, hp: RunHparams) -> dict[str, Any]:
        return {**(self.knobs or {}), **self.parse_knobs(dict(hp.method_args))}

    def validate(self, hp: RunHparams) -> None:
        super().validate(hp)
        k = self._knobs(hp)
        l1, s0, temp, rounds = float(k["l1"]), float(k["s0"]), float(k["final_temp"]), int(k["rounds"])
        if not (l1 >= 0 and math.isfinite(l1)):
            raise ConfigError(
                f"cs's l1 (λ of the L1 penalty on the masks) must be a finite number ≥ 0, got {l1:g}"
            )
        if not math.isfinite(s0) or abs(s0) > 10:
            raise ConfigError(
                f"cs's s0 (the masks' initial value) must be a finite number in [-10, 10], got {s0:g}"
            )
        if not (math.isfinite(temp) and temp >= 1.0):
            raise ConfigError(f"cs's final_temp must be a finite number ≥ 1, got {temp:g}")
        if rounds < 1:
            raise ConfigError(f"cs's rounds must be ≥ 1, got {rounds}")
        if k["select"] not in SELECT:
            raise ConfigError(f"cs's select must be one of {', '.join(SELECT)}, got {k['select']!r}")
        if k["select"] == "threshold" and parse_pattern(hp.pruning.pattern).structured:
            raise ConfigError(
                f"cs's select=threshold keeps the emergent mask 1[s > 0], which cannot keep --pattern "
                f"{hp.pruning.pattern}; use select=topk (the default) for a ticket under the pattern"
            )
        n, unit = parse_duration(self.own(hp).rewind, name="rewind")
        b, bunit = parse_duration(hp.training.budget, name="budget")
        if n and unit == bunit and n >= b:
            raise ConfigError(
                f"rewind point {self.own(hp).rewind!r} must come before the end of the first round "
                f"(budget {hp.training.budget!r})"
            )

    def _rewind_it(self, run: RunContext) -> int:
        it = to_iterations(self.own(run.hp).rewind, steps_per_epoch(run), name="rewind")
        if it >= budget_iterations(run):
            raise ConfigError(
                f"rewind point {self.own(run.hp).rewind!r} must come before the end of the first round "
                f"(budget {run.hp.training.budget!r})"
            )
        return it

    # -- the search (level 1) -------------------------------------------------------------------------
    def search(self, run: RunContext, moved: LevelStore) -> tuple[Mask, dict[str, Any]]:
        hp, k = run.hp, self._knobs(run.hp)
        p = hp.pruning
        scope = p.scope or self.default_scope
        rounds, final = int(k["rounds"]), float(k["final_temp"])
        spe, budget = steps_per_epoch(run), budget_iterations(run)
        rewind_it = self._rewind_it(run)
        if k["select"] == "topk":
            self.check_target_selection(run)  # an unfit layer or a density above N/M: before any round
        rewind_path = run.replicate_path() / "rewind.safetensors"
        plain_keys = set(run.init_state)

        model = copy.deepcopy(run.model)
        reset_to(model, run.init_state, Mask.ones(run.shapes))
        ctrl = attach_soft_masks(model, SoftMaskController(s0=float(k["s0"]), l1=float(k["l1"])))
        for _, layer in soft_layers(model):
            setattr(layer.cs_scores, NO_DECAY, True)
        wall, passes = 0.0, {"forward": 0, "backward": 0}
        per_round: list[dict[str, Any]] = []
        for r in range(1, rounds + 1):
            sub = moved.sub(f"round_{r}")
            if sub.done():
                model.load_state_dict(run.load_state(sub.final_path))
                res = sub.result()
            else:
                if r > 1:  # a checkpoint of this round, if any, replaces the model's state in train()
                    with torch.no_grad():
                        for _, layer in soft_layers(model):
                            layer.cs_scores.copy_(next_round_scores(layer.cs_scores, final, ctrl.s0))

                def on_step(it: int, m: torch.nn.Module, first: bool = r == 1) -> None:
                    # β is a function of the step alone, so a resumed round computes the same
                    ctrl.beta = cs_temperature(it, final, budget, spe)
                    if first and rewind_it > 0 and it == rewind_it:
                        state = {n: t for n, t in m.state_dict().items() if n in plain_keys}
                        run.save_state(rewind_path, state, keep=True)  # kept if a killed run saved it

                trained = run.train_level(sub, model, desc=f"cs round {r}/{rounds}", on_step=on_step)
                ctrl.beta = final
                check_soft_scores_finite(model)
                res = run.finish_level(sub, model, trained, density=_emergent(model), round=r, beta=final)
            wall += float(res["wall_time"])
            passes = {n: passes[n] + int(res["passes"][n]) for n in passes}
            per_round.append(
                {"round": r, "emergent_density": res["density"], "soft_test_acc": res["test_acc"]}
            )

        scores = soft_scores(model)
        emergent = Mask({n: s > 0 for n, s in scores.items()})
        if k["select"] == "topk":
            mask = select(
                scores,
                p.density,
                scope=scope,
                distribution=p.distribution,
                min_layer_density=p.min_layer_density,
                pattern=p.pattern,
                allow_dense_layers=p.allow_dense_layers,
            )
        else:
            mask = emergent
        check_empty_layers(mask, allow=p.allow_empty_layers, scope=scope)

        # level 1: what the search trained, at the mask's β → ∞ limit (w/σ(s0) on the kept weights)
        scale = ctrl.scale
        strip_soft_masks(model)
        with torch.no_grad():
            for name, t in model.named_parameters():
                if name in mask:
                    t.mul_(scale)
        apply_mask(model, mask)
        moved.save_mask(
            mask, **run.mask_metadata(level=1, select=k["select"], emergent_density=emergent.density)
        )
        final_eval = _evaluate(model, run)
        at_end = {"iteration": budget * rounds, **final_eval}
        result = TrainResult(
            iterations=budget * rounds, final=final_eval, best=at_end, wall_time=wall, passes=passes
        )
        described = {
            "emergent_density": emergent.density,
            "select": k["select"],
            "rounds": per_round,
            "l1": float(k["l1"]),
            "s0": float(k["s0"]),
            "final_temp": final,
            "rewind_iteration": rewind_it,
        }
        return mask, run.finish_level(moved, model, result, density=mask.density, cs=described)

    def ticket_start(self, run: RunContext) -> dict[str, torch.Tensor]:
        if self._rewind_it(run) == 0:
            return run.init_state
        return run.load_state(run.replicate_path() / "rewind.safetensors")

    def ticket_start_name(self, run: RunContext) -> str:
        it = self._rewind_it(run)
        return f"rewind (iteration {it})" if it else "init"

    def ticket_for(self, rows: Sequence[Any], density: float) -> Any:
        """The ticket (level 2) when the run trained it, else the search's network (level 1): the two
        share a mask, so nearest-density would tie anyway."""
        return max(rows, key=lambda r: int(r.level if hasattr(r, "level") else r.get("level", 1)))

    def search_space(
        self, trial: Trial, hp: RunHparams, *, density: tuple[float, float] | None = None
    ) -> RunHparams:
        hp = suggest_density(trial, suggest_lr(trial, hp), density)
        l1 = float(trial.suggest_float("l1", 1e-10, 1e-5, log=True))
        s0 = float(trial.suggest_float("s0", -0.3, 0.3))
        temp = float(trial.suggest_float("final_temp", 50.0, 500.0, log=True))
        args = {**dict(hp.method_args), "l1": l1, "s0": s0, "final_temp": temp}
        return hp.replace(method_args=tuple(sorted(args.items())))


def _emergent(model: torch.nn.Module) -> float:
    scores = soft_scores(model)
    kept = sum(int((s > 0).sum()) for s in scores.values())
    return kept / max(1, sum(s.numel() for s in scores.values()))


def _evaluate(model: torch.nn.Module, run: RunContext) -> dict[str, float]:
    data = run.data
    out: dict[str, float] = {}
    if data.x_val.shape[0] > 0:
        v = evaluate(model, data.x_val, data.y_val, precision=run.hp.training.precision)
        out.update(val_loss=v["loss"], val_acc=v["acc"])
    t = evaluate(model, data.x_test, data.y_test, precision=run.hp.training.precision)
    out.update(test_loss=t["loss"], test_acc=t["acc"])
    return out
