"""Iterative magnitude pruning as a strategy: train, prune ``rate`` of the survivors, reset or rewind, repeat.

The pruning rule and the reset live in :mod:`ticketsearch.training.imp` (open_lth's
``prune(hparams, trained_model, current_mask) -> Mask``); this module is the level loop.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..core.errors import ConfigError
from ..core.hparams import RunHparams, to_iterations
from ..core.mask import Mask
from ..sparse import apply_mask, output_parameter
from ..training.imp import check_rates, levels_for_density, prune, reset_to
from .base import LevelRow, Method, RunContext, register_strategy

__all__ = ["IMP"]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _steps_per_epoch(run: RunContext) -> int:
    n = int(run.data.x_train.shape[0])
    return max(1, -(-n // run.hp.training.batch_size))


@register_strategy(
    "imp", description="iterative magnitude pruning: train, prune p% of the remaining, reset or rewind"
)
class IMP(Method):
    """Iterative magnitude pruning with reset to init or rewind (Frankle & Carbin, ICLR 2019;
    Frankle et al., ICML 2020 "Linear mode connectivity and the lottery ticket hypothesis").

    Levels: 0 is the dense network; level k keeps (1 - rate)^k of each layer (layerwise, the output layer at
    its own ``output_rate``) or of all weights (``--scope global``), ranked by the magnitude of the weights
    trained at level k - 1. Kept weights restart from init (``rewind`` 0) or from iteration ``rewind`` of
    the dense run.
    """

    kind = "iterative"
    fields = ("rounds", "rate", "output_rate", "scope", "rewind")
    default_scope = "layerwise"  # the paper's rule for LeNet and Conv-2/4/6
    citation = "Frankle & Carbin, ICLR 2019; Frankle et al., ICML 2020"

    def validate(self, hp: RunHparams) -> None:
        super().validate(hp)
        check_rates(hp.pruning)
        if hp.pruning.rounds < 0:
            raise ConfigError(
                f"rounds (IMP levels) must be ≥ 0 (0: as many as reach --density), got {hp.pruning.rounds}"
            )

    def run_levels(self, run: RunContext) -> list[LevelRow]:
        hp = run.hp
        output = output_parameter(run.model)
        levels = hp.pruning.rounds or levels_for_density(hp.pruning, run.shapes, output, hp.pruning.density)
        rewind_path = run.replicate_path() / "rewind.safetensors"
        spe = _steps_per_epoch(run)
        rewind_it = to_iterations(hp.pruning.rewind, spe, name="rewind")
        budget = to_iterations(hp.training.budget, spe, name="budget")
        if rewind_it > budget:
            raise ConfigError(
                f"rewind point {hp.pruning.rewind!r} is past the training budget {hp.training.budget!r}"
            )

        def save_rewind(it: int, model: nn.Module) -> None:
            if it == rewind_it and not rewind_path.is_file():
                run.save_state(rewind_path, model.state_dict())

        def start_state() -> dict[str, torch.Tensor]:
            return run.load_state(rewind_path) if rewind_it > 0 else run.init_state

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
                    mask = prune(hp.pruning, trained, mask)
                reset_to(run.model, start_state() if k > 0 else run.init_state, mask)
                # the state this level trains from is the ticket's init: the rewind point once rewinding
                start = "../rewind.safetensors" if k > 0 and rewind_it > 0 else "../init.safetensors"
                level.save_mask(mask, **run.mask_metadata(level=k, init=start))
                result = run.train_level(
                    level,
                    run.model,
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
                row.controls = run.run_controls(k, level, mask, start_state())
            rows.append(row)
        return rows
