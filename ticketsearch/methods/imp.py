"""Iterative magnitude pruning as a strategy: train, prune ``rate`` of the survivors, reset or rewind, repeat.

The pruning rule and the reset live in :mod:`ticketsearch.training.imp` (open_lth's
``prune(hparams, trained_model, current_mask) -> Mask``); this module is the level loop.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..core.errors import ConfigError
from ..core.hparams import PruningHparams, RunHparams, TrainingHparams, parse_duration, to_iterations
from ..core.mask import Mask
from ..sparse import apply_mask, output_parameter
from ..training.imp import check_rates, levels_for_density, prune, reset_to
from .base import (
    LevelRow,
    Method,
    RunContext,
    register_strategy,
    steps_per_epoch,
    suggest_density,
    suggest_duration,
    suggest_lr,
)

if TYPE_CHECKING:  # optuna is imported only by `ticketsearch study`
    from optuna.trial import Trial

__all__ = ["IMP"]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _finetune_hparams(hp: RunHparams, steps_per_epoch: int, budget: int) -> TrainingHparams:
    """Fine-tuning (Han et al. 2015; Renda et al. 2020's baseline): the same budget at the learning rate the
    original schedule ends with, held constant."""
    from ..training.optim import LRSchedule

    final_lr = LRSchedule(hp.training, steps_per_epoch, budget)(budget - 1)
    return dataclasses.replace(hp.training, lr=final_lr, schedule="constant", warmup="0it", milestones="")


@register_strategy(
    "imp", description="iterative magnitude pruning: train, prune p% of the remaining, reset or rewind"
)
class IMP(Method):
    """Iterative magnitude pruning with reset to init or rewind (Frankle & Carbin, ICLR 2019;
    Frankle et al., ICML 2020 "Linear mode connectivity and the lottery ticket hypothesis").

    Levels: 0 is the dense network; level k keeps (1 - rate)^k of each layer (layerwise, the output layer at
    its own ``output_rate``) or of all weights (``--scope global``), ranked by the magnitude of the weights
    trained at level k - 1. How the kept weights retrain (``--retrain``, Renda et al. 2020 compare them):
    ``reset`` to init (the paper), ``rewind`` to iteration ``--rewind-iter`` of the dense run (Frankle et al.
    2020), ``finetune`` from the weights trained at level k - 1 at the schedule's final learning rate, or
    ``lr-rewind`` from those weights replaying the whole learning-rate schedule.

    A level does not depend on how many levels follow, so the run is named without ``--density`` and
    ``--rounds``: asking for a lower density later extends the same run.
    """

    kind = "iterative"
    fields = ("rounds", "rate", "output_rate", "scope", "rewind", "retrain")
    distributed = True  # ranks train identical weights under DDP; rank 0's pruned mask is shared anyway
    default_scope = "layerwise"  # the paper's rule for LeNet and Conv-2/4/6
    citation = "Frankle & Carbin, ICLR 2019; Frankle et al., ICML 2020"

    def canonical(self, hp: RunHparams) -> RunHparams:
        hp = super().canonical(hp)
        p = hp.pruning
        if p.retrain == "reset" and p.rewind != "0it":  # --rewind-iter alone means rewinding, as before
            hp = hp.replace(pruning=dataclasses.replace(p, retrain="rewind"))
        return hp

    def identity(self, hp: RunHparams) -> str:
        extent = dataclasses.replace(hp.pruning, density=PruningHparams().density, rounds=0)
        return hp.replace(pruning=extent).hash()

    def validate(self, hp: RunHparams) -> None:
        super().validate(hp)
        check_rates(hp.pruning)
        p = hp.pruning
        rewinds = parse_duration(p.rewind, name="rewind")[0] > 0
        if p.retrain == "rewind" and not rewinds:
            raise ConfigError("--retrain rewind needs the point to rewind to: --rewind-iter K (K > 0)")
        if p.retrain in ("finetune", "lr-rewind") and rewinds:
            raise ConfigError(f"--retrain {p.retrain} starts from the trained weights; drop --rewind-iter")
        if hp.pruning.rounds < 0:
            raise ConfigError(
                f"rounds (IMP levels) must be ≥ 0 (0: as many as reach --density), got {hp.pruning.rounds}"
            )

    def search_space(
        self, trial: Trial, hp: RunHparams, *, density: tuple[float, float] | None = None
    ) -> RunHparams:
        """The training lr, the rate pruned per level (fewer, coarser levels up to 0.6) and, when the kept
        weights restart (reset or rewind), the rewind point in the first tenth of training (Frankle et
        al. 2020 find early rewinding is what deep nets need)."""
        hp = suggest_lr(trial, suggest_density(trial, hp, density))
        p = hp.pruning
        changes: dict[str, Any] = {"rate": float(trial.suggest_float("rate", 0.1, 0.6))}
        if p.retrain in ("reset", "rewind"):
            first = 1 if p.retrain == "rewind" else 0
            changes["rewind"] = suggest_duration(trial, "rewind", hp.training.budget, 0.0, 0.1, minimum=first)
        return hp.replace(pruning=dataclasses.replace(p, **changes))

    def run_levels(self, run: RunContext) -> list[LevelRow]:
        hp = run.hp
        output = output_parameter(run.model)
        levels = hp.pruning.rounds or levels_for_density(hp.pruning, run.shapes, output, hp.pruning.density)
        rewind_path = run.replicate_path() / "rewind.safetensors"
        spe = steps_per_epoch(run)
        rewind_it = to_iterations(hp.pruning.rewind, spe, name="rewind")
        budget = to_iterations(hp.training.budget, spe, name="budget")
        if rewind_it > budget:
            raise ConfigError(
                f"rewind point {hp.pruning.rewind!r} is past the training budget {hp.training.budget!r}"
            )

        def save_rewind(it: int, model: nn.Module) -> None:
            if it == rewind_it:  # kept if already there (a resumed level 0 saved it before the kill)
                run.save_state(rewind_path, model.state_dict(), keep=True)

        retrain = hp.pruning.retrain
        from_trained = retrain in ("finetune", "lr-rewind")
        level_hp = _finetune_hparams(hp, spe, budget) if retrain == "finetune" else None

        def start_state(k: int) -> dict[str, torch.Tensor]:
            """What level k > 0 trains from: init, the rewind point, or level k - 1's trained weights."""
            if from_trained:
                return run.load_state(run.level(k - 1).final_path)
            return run.load_state(rewind_path) if rewind_it > 0 else run.init_state

        def start_name(k: int) -> str:
            if k == 0:
                return "../init.safetensors"
            if from_trained:
                return f"../level_{k - 1}/model_final.safetensors"
            return "../rewind.safetensors" if rewind_it > 0 else "../init.safetensors"

        rows: list[LevelRow] = []
        mask = Mask.ones(run.shapes)
        cost = {"wall_time": 0.0, "forward": 0, "backward": 0}
        prev_final: dict[str, torch.Tensor] | None = None
        for k in range(levels + 1):
            level = run.level(k)
            if level.done():
                mask = level.load_mask()
                res = level.result()
                prev_final = run.load_state(level.final_path)
            else:
                if k > 0:
                    assert prev_final is not None
                    trained = copy.deepcopy(run.model)
                    trained.load_state_dict(prev_final)
                    apply_mask(trained, mask)
                    mask = run.shared_mask(prune(hp.pruning, trained, mask))
                reset_to(run.model, start_state(k) if k > 0 else run.init_state, mask)
                # the state this level trains from is the ticket's init (rewind point, trained weights)
                level.save_mask(mask, **run.mask_metadata(level=k, init=start_name(k), retrain=retrain))
                result = run.train_level(
                    level,
                    run.model,
                    level_hp if k > 0 else None,
                    desc=f"level {k} ({mask.density:.1%})",
                    on_step=save_rewind if k == 0 and rewind_it > 0 else None,
                )
                c = {
                    "wall_time": cost["wall_time"] + result.wall_time,
                    "forward": cost["forward"] + result.passes["forward"],
                    "backward": cost["backward"] + result.passes["backward"],
                }
                res = run.finish_level(level, run.model, result, density=mask.density, cost_to_find=c)
                prev_final = _state(run.model)
            cost = res.get("cost_to_find", cost)
            row = LevelRow(k, mask.density, str(level.mask_path), res)
            if k > 0:
                row.controls = run.run_controls(k, level, mask, start_state(k))
            rows.append(row)
        return rows
