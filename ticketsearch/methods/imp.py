"""Iterative magnitude pruning as a strategy: train, prune ``rate`` of the survivors, reset or rewind, repeat.

The pruning rule and the reset live in :mod:`ticketsearch.training.imp` (open_lth's
``prune(hparams, trained_model, current_mask) -> Mask``); this module is the level loop.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..core.errors import ConfigError
from ..core.hparams import (
    RETRAIN_MODES,
    PruningHparams,
    RunHparams,
    TrainingHparams,
    finite,
    from_choices,
    parse_duration,
    to_iterations,
)
from ..core.mask import Mask
from ..core.pattern import parse_pattern
from ..core.select import check_fits
from ..sparse import apply_mask, output_parameter
from ..training.imp import PruneRule, check_rates, levels_for_density, prune, reset_to
from .base import (
    LevelRow,
    Method,
    RunContext,
    SmallestSearch,
    nearest_ticket,
    register_strategy,
    rewind_field,
    steps_per_epoch,
    suggest_density,
    suggest_duration,
    suggest_lr,
)

if TYPE_CHECKING:  # optuna is imported only by `ticketsearch study`
    from optuna.trial import Trial

__all__ = ["IMP", "IMPHparams"]


@dataclass(frozen=True)
class IMPHparams:
    """IMP's own hyperparameters (flags ``--rate``, ``--output-rate``, ``--rewind-iter``, ``--retrain``)."""

    rate: float = field(
        default=0.2,
        metadata={"help": "IMP: fraction of the remaining weights pruned per level (default 0.2)"},
    )
    output_rate: float = field(
        default=0.1,
        metadata={
            "help": "IMP: the output layer's rate (default 0.1, half the hidden rate as in the paper; "
            "negative: same as --rate)"
        },
    )
    rewind: str = rewind_field()
    retrain: str = field(
        default="reset",
        metadata={
            "help": "IMP: how kept weights retrain: reset (to init) | rewind (to --rewind-iter) | finetune "
            "(from the trained weights at the final lr) | lr-rewind (from the trained weights, replaying the "
            "lr schedule)"
        },
    )

    def validate(self) -> None:
        finite("rate", self.rate)
        finite("output_rate", self.output_rate)
        parse_duration(self.rewind, name="rewind")
        from_choices("retrain", self.retrain, RETRAIN_MODES)


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

    ``--pattern`` (:mod:`ticketsearch.training.imp`): N:M levels shrink every group towards N of M (never
    below N while above N/M), land on exactly N/M and prune within the pattern after that; block levels
    prune whole blocks. Only the levels whose masks obey the pattern are tickets (:meth:`ticket_for`).
    """

    kind = "iterative"
    fields = ("rounds", "scope")
    accepts_pattern = True  # every level's selection goes through core.select with the pattern
    hparams_cls = IMPHparams
    distributed = True  # ranks train identical weights under DDP; rank 0's pruned mask is shared anyway
    levels_serve_densities = True  # level k does not depend on how many follow
    find_cost_includes_training = True  # a level's cost_to_find runs through its own training
    default_scope = "layerwise"  # the paper's rule for LeNet and Conv-2/4/6
    citation = "Frankle & Carbin, ICLR 2019; Frankle et al., ICML 2020"

    def canonical(self, hp: RunHparams) -> RunHparams:
        own = self.own(hp)
        if own.retrain == "reset" and own.rewind != "0it":  # --rewind-iter alone means rewinding, as before
            hp = self.with_hparams(hp, retrain="rewind")
        return super().canonical(hp)

    def rule(self, hp: RunHparams) -> PruneRule:
        """One round's pruning rule from ``hp``."""
        own = self.own(hp)
        return PruneRule(
            rate=own.rate,
            output_rate=own.output_rate,
            scope=hp.pruning.scope,
            pattern=hp.pruning.pattern,
            allow_dense_layers=hp.pruning.allow_dense_layers,
        )

    def ticket_for(self, rows: Sequence[Any], density: float) -> Any:
        """The nearest level (:func:`nearest_ticket`) among those whose masks obey the run's pattern (their
        results name it): under N:M the levels above N/M are the way down to the pattern, not tickets of it.
        Without a pattern every level is a ticket."""
        return nearest_ticket([r for r in rows if r.get("pattern")] or list(rows), density)

    def identity(self, hp: RunHparams) -> str:
        extent = dataclasses.replace(hp.pruning, density=PruningHparams().density, rounds=0)
        return hp.replace(pruning=extent).hash()

    def dense_baseline(self, hp: RunHparams, weights: TrainingHparams | None = None) -> RunHparams:
        """IMP's own level 0: the run is named without its target density, so this is the very run whose
        later levels are the tickets. Under a pattern, the same run without it (density 1 cannot be asked
        of N:M, and level 0 is the same dense network either way)."""
        pruning = dataclasses.replace(hp.pruning, density=1.0, rounds=0)
        if parse_pattern(pruning.pattern).structured:
            pruning = dataclasses.replace(pruning, pattern="unstructured", allow_dense_layers=False)
        return hp.replace(pruning=pruning)

    def smallest(self, search: SmallestSearch) -> tuple[Any, list[Any], str]:
        """Walk the levels (one run per seed, extended a level at a time) to the first out of tolerance,
        then bisect on log-density below the last good level by pruning its trained weights further with
        IMP's own rule (reset and rewind: the new mask trains from the same start as the next level would)."""
        hp = search.hp
        patterned = parse_pattern(hp.pruning.pattern).structured
        probes: list[Any] = []
        good: Any = None
        k = 0
        while True:
            k += 1
            rows = [r.rows for r in search.runs(_rounds(hp, k))]
            p = search.probe([r[k] for r in rows], rows[0][k]["density"], f"level {k}")
            probes.append(p)
            if not search.accept(p):
                bad = p
                break
            if patterned and not all(r[k].get("pattern") for r in rows):
                continue  # a level on the way down to N:M (above N/M): not a ticket of the pattern
            good = p
            if p.kept <= search.min_density:
                return (
                    good,
                    probes,
                    f"level {k} is within tolerance at or below min_density {search.min_density}",
                )
        if good is None:
            if patterned:
                return None, probes, f"no IMP level under pattern {hp.pruning.pattern} is within tolerance"
            return None, probes, "the first IMP level is already out of tolerance"
        own = self.own(hp)
        if own.retrain not in ("reset", "rewind") and own.rewind == "0it":
            return good, probes, f"no bisection for --retrain {own.retrain}: the answer is a level"
        out_dir = search.out_dir
        if out_dir is None:
            return good, probes, "no bisection without an output folder for the probe masks"
        level = k - 1
        tried: dict[float, Any] = {}

        def evaluate(d: float) -> Any:
            if d in tried:
                return tried[d]
            runs = search.runs(_rounds(hp, level))
            paths = [
                self.reprune(
                    r.run_dir / f"replicate_{s}" / f"level_{level}",
                    self.rule(hp),
                    d,
                    out_dir,
                    s,
                    search.load_state,
                )
                for s, r in zip(search.seeds, runs)
            ]
            tried[d] = search.probe(search.train_masks(paths), d, f"bisect from level {level}")
            return tried[d]

        best, more = search.bisect(evaluate, good=good.kept, bad=bad.kept)
        probes += more
        return tried.get(best, good), probes, ""

    @staticmethod
    def reprune(
        level_dir: Path, p: PruneRule, density: float, out_dir: Path, seed: int, load_state: Any
    ) -> Path:
        """The level's trained weights pruned further, by IMP's own rule, to ``density``; saved with the
        level's start state as its init (so it trains like the next level would)."""
        from ..core.hparams import stable_hash
        from ..models import create_model

        mask = Mask.load(level_dir / "mask.safetensors")
        meta = mask.metadata
        name = stable_hash({"level": str(level_dir.resolve()), "density": density})
        path = out_dir / "probes" / name / "mask.safetensors"
        if path.is_file():
            return path
        trained = create_model(meta["model"], tuple(meta["input_shape"]), int(meta["num_classes"]))
        trained.load_state_dict(load_state(level_dir / "model_final.safetensors"))
        apply_mask(trained, mask)
        ratio = p.output_rate / p.rate if p.output_rate >= 0 else -1.0

        def at(rate: float) -> Mask:
            out = rate * ratio if ratio >= 0 else -1.0
            return prune(dataclasses.replace(p, rate=rate, output_rate=out), trained, mask)

        lo, hi = 1e-9, 1 - 1e-9  # the pruned fraction of survivors that reaches ``density``: monotone, bisect
        for _ in range(50):
            mid = (lo + hi) / 2
            if at(mid).density > density:
                lo = mid
            else:
                hi = mid
        new = at(hi)
        init = (level_dir / str(meta["init"])).resolve()
        rel = os.path.relpath(init, path.parent)
        new.save(path, **{**meta, "init": rel, "reprune_of": str(level_dir), "seed": seed})
        return path

    def validate(self, hp: RunHparams) -> None:
        super().validate(hp)
        check_rates(self.rule(hp))
        p = self.own(hp)
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
        p = self.own(hp)
        changes: dict[str, Any] = {"rate": float(trial.suggest_float("rate", 0.1, 0.6))}
        if p.retrain in ("reset", "rewind"):
            first = 1 if p.retrain == "rewind" else 0
            changes["rewind"] = suggest_duration(trial, "rewind", hp.training.budget, 0.0, 0.1, minimum=first)
        return self.with_hparams(hp, **changes)

    def run_levels(self, run: RunContext) -> list[LevelRow]:
        hp, own, rule = run.hp, self.own(run.hp), self.rule(run.hp)
        # an unfit layer is refused before level 0 trains (levels_for_density checks too, not --rounds)
        check_fits(run.shapes, hp.pruning.pattern, allow_dense_layers=hp.pruning.allow_dense_layers)
        output = output_parameter(run.model)
        levels = hp.pruning.rounds or levels_for_density(rule, run.shapes, output, hp.pruning.density)
        rewind_path = run.replicate_path() / "rewind.safetensors"
        spe = steps_per_epoch(run)
        rewind_it = to_iterations(own.rewind, spe, name="rewind")
        budget = to_iterations(hp.training.budget, spe, name="budget")
        if rewind_it > budget:
            raise ConfigError(
                f"rewind point {own.rewind!r} is past the training budget {hp.training.budget!r}"
            )

        def save_rewind(it: int, model: nn.Module) -> None:
            if it == rewind_it:  # kept if already there (a resumed level 0 saved it before the kill)
                run.save_state(rewind_path, model.state_dict(), keep=True)

        retrain = own.retrain
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
                    mask = run.shared_mask(prune(rule, trained, mask))
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
                # a level whose mask obeys the run's pattern says so: it is a ticket of the pattern
                claim = {"pattern": mask.metadata["pattern"]} if "pattern" in mask.metadata else {}
                res = run.finish_level(
                    level, run.model, result, density=mask.density, cost_to_find=c, **claim
                )
                prev_final = _state(run.model)
            cost = res.get("cost_to_find", cost)
            row = LevelRow(k, mask.density, str(level.mask_path), res)
            if k > 0:
                row.controls = run.run_controls(k, level, mask, start_state(k))
            rows.append(row)
        return rows


def _rounds(hp: RunHparams, k: int) -> RunHparams:
    return hp.replace(pruning=dataclasses.replace(hp.pruning, rounds=k))
