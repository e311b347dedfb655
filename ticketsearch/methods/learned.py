"""Learned supermasks: ``supermask`` (edge-popup, Ramanujan et al. 2020), ``supermask-bernoulli`` (Zhou et al.
2019) and ``gem-miner`` (Sreenivasan et al. 2022).

The weights are never trained: they are redrawn (signed Kaiming constant by default) and frozen, and only a
score per weight learns, through the one training loop (:func:`ticketsearch.training.train`). The result is
an ordinary score dict (higher = keep: ``|s|`` for edge-popup, ``sigmoid(s)`` for Bernoulli), so
``core.select`` makes the Mask and every command that takes a mask (``train --mask``) works on it.

``density`` is the fraction of weights KEPT, as everywhere in ticketsearch (edge-popup's code calls it
"prune rate" and uses it as the kept fraction k; we use one meaning only). For edge-popup it is the k that
training keeps. Bernoulli masks learn their own density: by default (knob ``select=threshold``) the Mask is
the learned binary mask ``sigmoid(s) > 0.5`` and ``density`` is the prior it starts from (the initial keep
probability, as Zhou's ``--sigmoid_bias``; the Mask's density is what training made of it); ``select=topk``
keeps exactly the top ``density`` of the scores instead.

Method knobs come from ``--arg key=value`` (:class:`SupermaskKnobs`, :class:`BernoulliKnobs`).

``--pattern`` (N:M, blocks): edge-popup's forward keeps ``core.select``'s mask of ``|s|`` under the pattern
(:mod:`ticketsearch.sparse.supermask`), so it trains and records one mask; Bernoulli records the top
``density`` of its logits under the pattern (``select=topk``; its learned threshold mask has no pattern and
is refused with one); Gem-Miner freezes under the pattern, each freeze above N/M keeping every group's N best
live weights first (``core.select``'s floor rule), the last one at exactly ``density`` within the pattern;
its threshold mask (live and s > 0.5) is a subset of that and keeps N:M, but not whole blocks (refused).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn as nn

from ..core.errors import ConfigError
from ..core.hparams import RunHparams, TrainingHparams, coerce_knob, parse_duration, to_iterations
from ..core.mask import Mask
from ..core.pattern import parse_pattern
from ..core.select import check_density, check_empty_layers, check_selection, claim_pattern, select
from ..sparse import apply_mask, get_mask, masked_layers, param_name, prunable_parameters
from ..sparse.supermask import (
    SUPERMASK_KERNELS,
    WEIGHT_INITS,
    check_scores_finite,
    init_frozen_weights,
    keep_scores,
    make_bn_nonaffine,
    strip_supermask,
    supermask_controller,
    to_supermask,
)
from ..training.schedule import MaskSchedule, MaskUpdate
from .base import (
    LevelRow,
    Method,
    RunContext,
    dense_hparams,
    register_strategy,
    suggest_density,
    suggest_lr,
)

if TYPE_CHECKING:  # optuna is imported only by `ticketsearch study`
    from optuna.trial import Trial

__all__ = [
    "SupermaskKnobs",
    "BernoulliKnobs",
    "GemMinerKnobs",
    "GemMinerSchedule",
    "freeze_points",
    "GemMiner",
    "knobs_from_args",
    "learned_recipe",
    "Learned",
    "run_learned",
    "LearnedResult",
    "EdgePopup",
    "BernoulliSupermask",
    "LEARNED_METHODS",
]


@dataclass(frozen=True)
class SupermaskKnobs:
    """Edge-popup knobs (``--arg key=value``).

    weight_init: ``signed_constant`` (±√2/√fan_in, the paper's best) or ``kaiming_normal``.
    scale_fan: fan_in × density in the weight scale (edge-popup's ``scale_fan``; the kept weights then have
    the variance of a dense Kaiming layer). score_init_scale: scores ~ U(±scale/√fan_in) (the paper's
    Kaiming-uniform, a=√5, is scale 1). nonaffine_bn: turn affine BatchNorm into non-affine BatchNorm (the
    paper's NonAffineBatchNorm); otherwise its affine parameters stay frozen at their init. kernel: ``fast``
    (compiled CPU kernel when it builds, else PyTorch), ``compiled``, ``torch`` or ``reference`` (a sort per
    forward: the spec). check_every: steps between NaN checks of the scores.
    """

    weight_init: str = "signed_constant"
    scale_fan: bool = True
    score_init_scale: float = 1.0
    nonaffine_bn: bool = True
    kernel: str = "fast"
    check_every: int = 50

    def validate(self) -> None:
        if self.weight_init not in WEIGHT_INITS:
            raise ConfigError(
                f"weight_init must be one of {', '.join(WEIGHT_INITS)}, got {self.weight_init!r}"
            )
        if self.kernel not in SUPERMASK_KERNELS:
            raise ConfigError(f"kernel must be one of {', '.join(SUPERMASK_KERNELS)}, got {self.kernel!r}")
        if not (self.score_init_scale > 0 and math.isfinite(self.score_init_scale)):
            raise ConfigError(f"score_init_scale must be a positive number, got {self.score_init_scale}")
        if self.check_every < 1:
            raise ConfigError(f"check_every must be ≥ 1, got {self.check_every}")


@dataclass(frozen=True)
class BernoulliKnobs(SupermaskKnobs):
    """Bernoulli-mask knobs: those of :class:`SupermaskKnobs` plus

    rescale: Zhou et al.'s dynamic weight rescaling (weights × layer size / kept count, in training and
    eval; the final factor of each layer is baked into the returned weights). init_logit: scores start
    around this logit (default: logit(density), so ``density`` is the initial keep probability, as Zhou's
    ``--sigmoid_bias``; 0 → 0.5). train_mask: ``round`` (default) is Zhou's ``--round_mask``: in training a
    random half of the mask is clamped to the rounded mask [p > 0.5] and the other half is p, and evaluation
    uses the rounded mask, so training optimises and early-stops on the binary mask that is recorded;
    ``sample`` draws m ~ Bernoulli(p) with a straight-through gradient (the paper's description).
    final_temperature: with ``sample``, p = sigmoid(s / T) with T annealed geometrically from 1 to this over
    training, so the samples converge to the rounded mask (1: no annealing; the binary mask then falls far
    below the expected mask). select: ``threshold`` (default) records the learned binary mask s > 0;
    ``topk`` the top ``density`` of the scores (scope and distribution apply).

    Why: trained under noise whose mean is p, the network's top-k (or rounded) mask is a different network
    (92.2% on MNIST LeNet-300-100 against 97.7% for the expected mask); trained with ``round``, the
    recorded binary mask reaches 97.55% (``benchmarks/results/supermask_mnist``).
    """

    rescale: bool = False
    init_logit: float = math.nan  # nan: logit(density)
    train_mask: str = "round"
    final_temperature: float = 0.1
    select: str = "threshold"

    def validate(self) -> None:
        super().validate()
        if self.train_mask not in ("round", "sample"):
            raise ConfigError(f"train_mask must be 'round' or 'sample', got {self.train_mask!r}")
        if self.select not in ("threshold", "topk"):
            raise ConfigError(f"select must be 'threshold' or 'topk', got {self.select!r}")
        if not 0.0 < self.final_temperature <= 1.0:
            raise ConfigError(f"final_temperature must be in (0, 1], got {self.final_temperature}")
        if math.isinf(self.init_logit):
            raise ConfigError(f"init_logit must be finite, got {self.init_logit}")


@dataclass(frozen=True)
class GemMinerKnobs(SupermaskKnobs):
    """Gem-Miner knobs: those of :class:`SupermaskKnobs` (``score_init_scale`` unused: scores start U[0, 1])
    plus

    l2: λ of the penalty λ‖s‖² on the scores (the authors' ``lmbda``; 7e-6 in their final configs), which
    pushes scores that the loss does not need below the 0.5 threshold. every: the freezing period, a
    duration (``5ep``: the authors' ``iter_period`` of 5 epochs; ``20it``); freezes happen every period
    before the end (:func:`freeze_points`), each keeping density^(j/n) of the weights (j-th of n), so the
    last one keeps exactly ``density``. select: ``threshold`` (default) records the final binary mask, the
    live weights with s > 0.5 (the authors' rounded mask, the network the scores trained; at most
    ``density``: the L2 penalty is what brings it to the target); ``topk`` records every weight still live
    (exactly ``density``). retrain: train the kept weights from their init as level 2, the method's
    ticket (the paper's second phase); ``false`` stops at the mask at init.

    Defaults differ from edge-popup's where the paper does: weights ``kaiming_normal`` without
    ``scale_fan`` (a ticket at the model's own kind of init, trained afterwards).
    """

    weight_init: str = "kaiming_normal"
    scale_fan: bool = False
    l2: float = 7e-6
    every: str = "5ep"
    select: str = "threshold"
    retrain: bool = True

    def validate(self) -> None:
        super().validate()
        if not (self.l2 >= 0 and math.isfinite(self.l2)):
            raise ConfigError(f"l2 must be a finite number ≥ 0, got {self.l2}")
        n, _ = parse_duration(str(self.every), name="every")
        if n < 1:
            raise ConfigError(
                f"every must be at least one iteration or epoch (e.g. 5ep, 20it), got {self.every!r}"
            )
        if self.select not in ("topk", "threshold"):
            raise ConfigError(f"select must be 'topk' or 'threshold', got {self.select!r}")


def freeze_points(total: int, period: int) -> list[int]:
    """The boundaries (steps done) at which Gem-Miner freezes: every ``period`` steps strictly before the
    end of ``total``, as the authors' ``epoch % iter_period == 0`` for epochs 1 … E − 1 (floor((E − 1) / T)
    freezes), so the scores of the last live weights still train after the last freeze; a period as long as
    training gives one freeze, at the end."""
    if total < 1 or period < 1:
        raise ConfigError(f"total and period must be ≥ 1, got {total} and {period}")
    return list(range(period, total, period)) or [total]


class GemMinerSchedule(MaskSchedule):
    """Gem-Miner's iterative freezing (the authors' ``hc_iter`` with ``prune_type=BottomK``): at the j-th of
    n :func:`freeze_points` the live weights with the lowest clamped scores are frozen out so that
    ``density ** (j / n)`` of all weights stay live, by :func:`ticketsearch.core.select` (scope and
    distribution apply; lower flat index kept on ties). A frozen weight ranks below every live one and the
    new mask is intersected with the old, so nothing is ever unfrozen.

    The authors prune ``ceil(p · live)`` with p = 1 − target^(1/n) at each step, which reaches the target
    only up to rounding; the exact geometric counts here reach it exactly. The frozen set is the layers'
    attached masks, which the training loop checkpoints: the schedule keeps no state of its own.
    """

    def __init__(
        self,
        density: float,
        points: list[int],
        *,
        scope: str = "global",
        distribution: str = "uniform",
        min_layer_density: float = 0.0,
        pattern: str = "unstructured",
        allow_dense_layers: bool = False,
    ) -> None:
        self.density = check_density(density)
        self.points = list(points)
        self.scope = scope
        self.distribution = distribution
        self.min_layer_density = min_layer_density
        self.pattern = parse_pattern(pattern)
        self.allow_dense_layers = allow_dense_layers

    def target(self, j: int) -> float:
        """The live fraction after the j-th freeze (1-based)."""
        return self.density ** (j / len(self.points))

    def update(self, it: int, model: nn.Module, grads: Any = None) -> MaskUpdate | None:
        if it == 0:  # attach all-live masks, so a fresh run and a resumed one carry the same state
            return dict(get_mask(model))
        if it not in self.points:
            return None
        j = self.points.index(it) + 1
        keep = supermask_controller(model).keep_scores()
        old = get_mask(model)
        # under a pattern the freeze selects among the live weights (current=): the groups' floor counts
        # live ones only; without one, frozen weights already rank last (keep-score −1)
        patterned = self.pattern.structured
        new = select(
            keep,
            self.target(j),
            scope=self.scope,
            distribution=self.distribution,
            min_layer_density=self.min_layer_density,
            current={n: t.to(keep[n].device) for n, t in old.items()} if patterned else None,
            pattern=self.pattern,
            allow_dense_layers=self.allow_dense_layers,
            descent=patterned,  # freezes above N/M walk down to the pattern
        )
        return {n: new[n].to(old[n].device) & old[n] for n in new}


def knobs_from_args(
    args: dict[str, Any] | None, cls: type[SupermaskKnobs] = SupermaskKnobs
) -> SupermaskKnobs:
    """Knobs from ``hparams.args``; unknown keys are a one-line ConfigError naming the allowed ones."""
    args = dict(args or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in args if k not in fields)
    if unknown:
        raise ConfigError(
            f"unknown method argument(s) {', '.join(unknown)} for {cls.__name__} (allowed: {', '.join(fields)})"
        )
    base = cls()
    knobs = cls(**{k: coerce_knob(k, v, getattr(base, k)) for k, v in args.items()})
    knobs.validate()
    return knobs


_MNIST_LIKE = ("mnist", "fashion_mnist", "digits", "mnist1d", "kmnist", "emnist")


def learned_recipe(dataset_name: str, method: str = "supermask") -> TrainingHparams:
    """The recipe a supermask trains its scores with (the weights never train).

    Edge-popup: SGD lr 0.1, momentum 0.9, weight decay 5e-4, cosine, batch 128 (Ramanujan et al. 2020);
    10 epochs on MNIST-like data (digits: 30, it is tiny), 100 on CIFAR-like data. Bernoulli (Zhou et
    al. 2019): Adam lr 0.1, no weight decay, same batch and budget.
    """
    name = (dataset_name or "").lower()
    if name == "digits":
        budget = "30ep"
    elif name in _MNIST_LIKE or "mnist" in name:
        budget = "10ep"
    else:
        budget = "100ep"
    if method in ("supermask-bernoulli", "bernoulli"):
        return TrainingHparams(
            optimizer="adam",
            lr=0.1,
            momentum=0.0,
            weight_decay=0.0,
            batch_size=128,
            budget=budget,
            schedule="cosine",
            eval_every="1ep",
        )
    return TrainingHparams(
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        batch_size=128,
        budget=budget,
        schedule="cosine",
        eval_every="1ep",
    )


@dataclass
class LearnedResult:
    """What a learned method hands the runner.

    ``scores``: keep-scores keyed like ``prunable_parameters(model)`` (|s| or sigmoid(s)); ``model``: the
    frozen-weight model with plain masked layers and no mask attached (weights = the supermask's weights,
    BatchNorm statistics as trained), so ``apply_mask(model, mask)`` + ``evaluate`` is the supermask's own
    accuracy; ``init_state``: its state_dict before score training (the ticket's init for then-train; it
    fits ``model``); ``mask``: ``core.select`` of the scores with the run's density/scope/distribution.
    """

    scores: dict[str, torch.Tensor]
    model: nn.Module
    init_state: dict[str, torch.Tensor]
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    mask: Mask | None = None
    raw_scores: dict[str, torch.Tensor] = field(default_factory=dict)


LEARNED_METHODS = {
    "supermask": ("edge_popup", SupermaskKnobs),
    "supermask-bernoulli": ("bernoulli", BernoulliKnobs),
    "gem-miner": ("gem_miner", GemMinerKnobs),
}


def run_learned(
    method_name: str,
    model: nn.Module,
    data: Any,
    hparams: RunHparams,
    *,
    seed: int,
    log: Callable[[dict[str, Any]], None] | None = None,
    progress: bool | str = "auto",
    start: Any = None,
    save_checkpoint: Callable[[Any], None] | None = None,
) -> LearnedResult:
    """Learn a supermask of ``model`` on ``data`` with ``hparams.training``; ``model`` is changed in place.

    In place: BatchNorm made non-affine (knob), weights redrawn from ``seed`` (knob ``weight_init``),
    frozen; then scores train and the model comes back with plain masked layers (no mask attached).
    Deterministic on CPU for a given seed. Raises ConfigError on bad density/knobs/model and
    DivergenceError when the scores become NaN/inf.

    ``start`` / ``save_checkpoint`` go to the training loop: checkpoints hold the scores (parameters of the
    supermask layers) and the optimizer state, so a killed run resumes, and a divergence keeps the last
    good checkpoint.
    """
    from ..training import evaluate, train

    if method_name not in LEARNED_METHODS:
        raise ConfigError(
            f"unknown learned method '{method_name}' (choose from: {', '.join(LEARNED_METHODS)})"
        )
    kind, knob_cls = LEARNED_METHODS[method_name]
    knobs = knobs_from_args(hparams.args, knob_cls)
    density = check_density(hparams.pruning.density)
    # edge-popup's per-layer k; Gem-Miner freezes by one global ranking
    scope = hparams.pruning.scope or ("global" if kind == "gem_miner" else "layerwise")
    if scope not in ("layerwise", "global"):
        raise ConfigError(f"unknown selection scope '{scope}' (choose from: global, layerwise)")
    if not list(masked_layers(model)):
        raise ConfigError(
            f"model {type(model).__name__} has no prunable (Linear/Conv2d) layers for a supermask"
        )
    allow_empty = hparams.pruning.allow_empty_layers
    pr = hparams.pruning
    # what the selection under --pattern refuses (an unfit layer, a density above N/M), before training
    dense_layers = check_selection(
        {n: tuple(p.shape) for n, p in prunable_parameters(model).items()},
        density,
        scope=scope,
        distribution=pr.distribution,
        min_layer_density=pr.min_layer_density,
        pattern=pr.pattern,
        allow_dense_layers=pr.allow_dense_layers,
    )
    if scope == "layerwise":  # per-layer counts do not depend on the scores: refuse before training
        flat = {n: torch.zeros(p.shape) for n, p in prunable_parameters(model).items()}
        counts = select(
            flat,
            density,
            scope=scope,
            distribution=hparams.pruning.distribution,
            min_layer_density=hparams.pruning.min_layer_density,
            pattern=pr.pattern,
            allow_dense_layers=pr.allow_dense_layers,
        )
        check_empty_layers(counts, allow=allow_empty, scope=scope, distribution=hparams.pruning.distribution)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(int(seed))
    converted = make_bn_nonaffine(model) if knobs.nonaffine_bn else 0
    init_frozen_weights(model, knobs.weight_init, density=density, scale_fan=knobs.scale_fan, generator=gen)
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    init_logit = getattr(knobs, "init_logit", 0.0)
    if math.isnan(init_logit):  # the prior keep probability is the requested density (Zhou's sigmoid_bias)
        p0 = min(max(density, 1e-3), 1.0 - 1e-3)
        init_logit = math.log(p0 / (1.0 - p0))
    to_supermask(
        model,
        density=density,
        kind=kind,
        scope=scope,
        distribution=hparams.pruning.distribution,
        kernel=knobs.kernel,
        score_init_scale=knobs.score_init_scale,
        init_logit=init_logit,
        rescale=getattr(knobs, "rescale", False),
        generator=gen,
        # edge-popup's forward selects under the pattern; the other rules select only at the end
        pattern=pr.pattern if kind == "edge_popup" else "unstructured",
        allow_dense_layers=pr.allow_dense_layers,
        min_layer_density=pr.min_layer_density,
    )
    ctrl = supermask_controller(model)
    on_step = None
    if isinstance(knobs, BernoulliKnobs):
        ctrl.train_mask = knobs.train_mask
        ctrl.eval_mask = "binary"  # evaluations (and the early-stop record) see the rounded mask
        t_end = knobs.final_temperature if knobs.train_mask == "sample" else 1.0
        if t_end < 1.0:
            from ..data import Batcher

            spe = Batcher(data.x_train, data.y_train, hparams.training.batch_size, seed=seed).steps_per_epoch
            total = max(to_iterations(hparams.training.budget, spe, name="budget"), 1)

            def on_step(it: int, m: nn.Module) -> None:  # a function of the iteration: resumes exactly
                ctrl.temperature = t_end ** (min(it + 1, total) / total)

    schedule: GemMinerSchedule | None = None
    if isinstance(knobs, GemMinerKnobs):
        from ..data import Batcher

        variant = ctrl.variant
        variant.l2 = knobs.l2  # type: ignore[attr-defined]
        spe = Batcher(data.x_train, data.y_train, hparams.training.batch_size, seed=seed).steps_per_epoch
        total = max(to_iterations(hparams.training.budget, spe, name="budget"), 1)
        period = max(to_iterations(knobs.every, spe, name="every"), 1)
        schedule = GemMinerSchedule(
            density,
            freeze_points(total, period),
            scope=scope,
            distribution=hparams.pruning.distribution,
            min_layer_density=hparams.pruning.min_layer_density,
            pattern=pr.pattern,
            allow_dense_layers=pr.allow_dense_layers,
        )

        def on_step(it: int, m: nn.Module) -> None:  # the authors clamp before every forward
            variant.project(ctrl)  # type: ignore[attr-defined]

    def after_step(it: int, m: nn.Module) -> None:
        if it % knobs.check_every == 0:
            check_scores_finite(m)

    t0 = time.perf_counter()
    res = train(
        model,
        data,
        hparams.training,
        seed=seed,
        after_step=after_step,
        on_step=on_step,
        log=log,
        progress=progress,
        desc=method_name,
        start=start,
        save_checkpoint=save_checkpoint,
        schedule=schedule,
    )
    wall = time.perf_counter() - t0
    check_scores_finite(model)
    if schedule is not None:
        from .moving import _best_after

        # an earlier minimum belongs to a denser network than the one recorded: early-stop after the last freeze
        res = _best_after(res, schedule.points[-1])
    live: Mask | None = None
    metrics_gem: dict[str, Any] = {}
    if kind == "gem_miner":
        ctrl.variant.project(ctrl)  # type: ignore[attr-defined]
        live = get_mask(model)  # after the last freeze: exactly `density`
        metrics_gem.update(
            {
                "l2": ctrl.variant.l2,  # type: ignore[attr-defined]
                "freeze_points": list(schedule.points) if schedule is not None else [],
                "threshold_density": ctrl.current_mask().density,
                "threshold_mask_test_acc": res.final.get("test_acc"),  # the forward's mask: live and s > 0.5
            }
        )
    scores = keep_scores(model)
    metrics: dict[str, Any] = {
        "wall_time": wall,
        "passes": dict(res.passes),
        "iterations": res.iterations,
        "supermask_final_test_acc": res.final.get("test_acc"),
        "supermask_best": {k: v for k, v in res.best.items() if k in ("iteration", "val_acc", "test_acc")},
        "weights_trained": False,
        "weight_init": knobs.weight_init,
        "bn_made_nonaffine": converted,
        "kernel": ctrl.backend,
    }
    select_by = getattr(knobs, "select", "topk")
    if kind == "bernoulli":
        n_all = sum(s.numel() for s in scores.values())
        metrics["learned_density"] = float(sum(float(s.sum()) for s in scores.values()) / n_all)
        metrics["learned_density_p50"] = float(sum(int((s > 0.5).sum()) for s in scores.values()) / n_all)
        metrics["binary_mask_test_acc"] = res.final.get("test_acc")  # the rounded mask s > 0
        ctrl.eval_mask = "expected"
        metrics["expected_mask_test_acc"] = evaluate(model, data.x_test, data.y_test)["acc"]
        metrics["select"] = select_by
        metrics["train_mask"] = ctrl.train_mask
    if kind == "gem_miner":
        metrics.update(metrics_gem)
        metrics["select"] = select_by
        threshold_mask = ctrl.current_mask()
    raw = strip_supermask(model)
    if kind == "gem_miner":
        assert live is not None
        mask = threshold_mask if select_by == "threshold" else live
        mask = claim_pattern(mask, pr.pattern, dense_layers, strict=False)  # N:M: both obey it
    elif select_by == "threshold":
        # the learned binary mask: sigmoid(s) > 0.5, the limit the Bernoulli samples are driven to
        mask = Mask({n: raw[n] > 0 for n in raw})
    else:
        # Bernoulli ranks by the logits, not sigmoid(s), which is exactly 1.0 in float32 for s > ~17
        # (ties would then be broken by index)
        mask = select(
            raw if kind == "bernoulli" else scores,
            density,
            scope=scope,
            distribution=hparams.pruning.distribution,
            min_layer_density=hparams.pruning.min_layer_density,
            pattern=pr.pattern,  # edge-popup: the very selection its forward made (pattern_selection)
            allow_dense_layers=pr.allow_dense_layers,
        )
    if kind == "bernoulli" and getattr(knobs, "rescale", False):
        _bake_rescale(model, mask)
    check_empty_layers(
        mask, scores, allow=allow_empty, scope=scope, distribution=hparams.pruning.distribution
    )
    probe = copy.deepcopy(model)
    apply_mask(probe, mask)
    metrics["supermask_test_acc"] = evaluate(probe, data.x_test, data.y_test)["acc"]
    metrics["density"] = mask.density
    del probe
    model.to(device)
    return LearnedResult(
        scores=scores,
        model=model,
        init_state=init_state,
        metrics=metrics,
        history=res.history,
        mask=mask,
        raw_scores=raw,
    )


@torch.no_grad()
def _bake_rescale(model: nn.Module, mask: Mask) -> None:
    """Dynamic weight rescaling: the final per-layer factor (size / kept) goes into the returned weights."""
    for name, layer in masked_layers(model):
        kept = max(int(mask[param_name(name)].sum()), 1)
        layer.weight.mul_(layer.weight.numel() / kept)


def _knob_defaults(cls: type[SupermaskKnobs]) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)}


class Learned(Method):
    """Shared by the learned supermasks: train scores on frozen weights, record the selected Mask."""

    kind = "learned"
    fields = ("scope", "distribution")
    knob_cls: ClassVar[type[SupermaskKnobs]] = SupermaskKnobs
    # the ticket's weights stay at their init: controls that retrain weights compare nothing, while
    # training the kept weights afterwards (--then-train) is the question worth asking
    trains_weights = False
    accepts_controls = False
    accepts_then_train = True

    accepts_pattern = True  # edge-popup's forward, Bernoulli's top-k and Gem-Miner's freezes select under it

    def validate(self, hp: RunHparams) -> None:
        super().validate(hp)
        knobs = knobs_from_args(hp.args, self.knob_cls)  # every knob checked before a file exists
        pat = parse_pattern(hp.pruning.pattern)
        select_by = getattr(knobs, "select", "topk")
        if (
            pat.structured
            and select_by == "threshold"
            and (self.knob_cls is BernoulliKnobs or pat.kind == "block")
        ):
            what = "keeps every score above 0" if self.knob_cls is BernoulliKnobs else "drops single weights"
            raise ConfigError(
                f"method '{self.name}' with select=threshold cannot keep pattern {pat} (its learned mask "
                f"{what}); add --arg select=topk"
            )

    def recipe(self, model: str, dataset: str) -> TrainingHparams | None:
        return learned_recipe(dataset, self.name)

    def dense_baseline(self, hp: RunHparams, weights: TrainingHparams | None = None) -> RunHparams:
        """``hp.training`` trains the scores: the dense network trains weights with ``weights`` or, by
        default, the model's recipe."""
        from ..models import training_recipe

        return dense_hparams(hp.replace(training=weights or training_recipe(hp.model.model)))

    def search_space(
        self, trial: Trial, hp: RunHparams, *, density: tuple[float, float] | None = None
    ) -> RunHparams:
        """The learning rate of the scores (the weights never train): the recipes' 0.1 comes from other
        data sets and models. Bernoulli learns its own density, so ``density`` is only its prior."""
        return suggest_lr(trial, suggest_density(trial, hp, density))

    def run_levels(self, run: RunContext) -> list[LevelRow]:
        from ..models import training_recipe
        from .oneshot import dense_baseline

        rows = [dense_baseline(run)] if run.baseline else []
        row, level, mask, init_state = self.find_level(run)
        if run.then_train:
            recipe = run.then_train_hp or training_recipe(run.hp.model.model)
            row.then_train = run.then_train_level(level, init_state, mask, recipe)
        rows.append(row)
        return rows

    def find_level(self, run: RunContext) -> tuple[LevelRow, Any, Mask, dict[str, torch.Tensor]]:
        """Level 1: the scores trained (or the stored level read back); returns its row, store, Mask and
        the weights at init the mask stands on."""
        from ..training import TrainState, evaluate

        hp = run.hp
        level = run.level(1)
        init_path = level.path / "init.safetensors"
        if level.done():
            mask = level.load_mask()
            res = level.result()
            init_state = run.load_state(init_path)
            bn_affine = [
                n
                for n, m in run.model.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
            ]
            if bn_affine and f"{bn_affine[0]}.weight" not in init_state:
                make_bn_nonaffine(run.model)  # the stored init's BatchNorm is non-affine: match its structure
        else:
            ck = level.load_checkpoint()  # scores + optimizer state of a run in progress
            start = TrainState.from_dict(ck) if ck is not None else None
            level.reset_metrics(start.history if start is not None else [])
            torch.manual_seed(run.seed)
            lr = run_learned(
                self.name,
                run.model,
                run.data,
                hp,
                seed=run.seed,
                log=level.log,
                progress=run.progress,
                start=start,
                save_checkpoint=lambda st: level.save_checkpoint(st.to_dict()),
            )
            assert lr.mask is not None  # run_learned selected with core.select (density, scope, guard)
            mask = lr.mask
            apply_mask(lr.model, mask)
            untrained = evaluate(lr.model, run.data.x_test, run.data.y_test)
            untrained_val = evaluate(lr.model, run.data.x_val, run.data.y_val)
            init_state = {k: v.detach().clone() for k, v in lr.init_state.items()}
            run.save_state(init_path, init_state)
            run.save_state(level.final_path, lr.model.state_dict())
            level.save_mask(mask, **run.mask_metadata(level=1, init="init.safetensors"))
            metrics = dict(lr.metrics)
            best = metrics.get("supermask_best") or {}
            res = {
                "es_iteration": best.get("iteration"),
                "es_test_acc": best.get("test_acc"),
                "test_acc": untrained["acc"],
                "test_loss": untrained["loss"],
                "val_acc": untrained_val["acc"],
                "untrained_test_acc": untrained["acc"],
                "weights_trained": False,
                "cost_to_find": {
                    "wall_time": metrics.get("wall_time"),
                    "forward": metrics.get("passes", {}).get("forward"),
                    "backward": metrics.get("passes", {}).get("backward"),
                },
                **{k: v for k, v in metrics.items() if k not in ("passes",)},
            }
            level.write_result(res)
        return LevelRow(1, mask.density, str(level.mask_path), res), level, mask, init_state


@register_strategy(
    "supermask",
    description="edge-popup supermask: scores learned on frozen random weights (Ramanujan et al. 2020)",
)
class EdgePopup(Learned):
    """Edge-popup (Ramanujan et al., "What's Hidden in a Randomly Weighted Neural Network?", CVPR 2020).

    Frozen signed-Kaiming-constant weights; each weight has a score; the forward keeps the top ``density``
    of |scores| per layer (``--scope global``: over all layers); straight-through gradient to the scores.
    """

    citation = "Ramanujan et al., CVPR 2020 (arXiv:1911.13299)"
    knob_cls = SupermaskKnobs
    knobs = _knob_defaults(SupermaskKnobs)
    k_range: ClassVar[tuple[float, float]] = (0.05, 0.9)

    def search_space(
        self, trial: Trial, hp: RunHparams, *, density: tuple[float, float] | None = None
    ) -> RunHparams:
        """k (the kept fraction) and the score lr: k is edge-popup's own knob, which the paper sweeps
        (best at 30-70% kept), so it is searched even when the study does not search densities."""
        return suggest_lr(trial, suggest_density(trial, hp, density or self.k_range))


@register_strategy(
    "supermask-bernoulli", description="Bernoulli supermask: sampled masks, sigmoid scores (Zhou et al. 2019)"
)
class BernoulliSupermask(Learned):
    """Zhou et al., "Deconstructing Lottery Tickets: Zeros, Signs, and the Supermask", NeurIPS 2019.

    Scores with keep probability sigmoid(scores); by default trained with Zhou's ``--round_mask`` (half the
    mask rounded, half soft) and evaluated on the rounded mask; the Mask is the learned binary mask
    sigmoid(scores) > 0.5 (its density is learned, starting from ``density``), or with ``select=topk`` the
    top ``density`` of the scores. ``train_mask=sample`` samples Bernoulli masks (straight-through).
    """

    citation = "Zhou et al., NeurIPS 2019 (arXiv:1905.01067)"
    knob_cls = BernoulliKnobs
    knobs = _knob_defaults(BernoulliKnobs)


@register_strategy(
    "gem-miner",
    description="Gem-Miner: [0,1] scores on frozen init weights, L2 + iterative global freezing, "
    "then the kept weights train from init (Sreenivasan et al. 2022)",
)
class GemMiner(Learned):
    """Gem-Miner (Sreenivasan, Sohn, Yang, Grinde, Nagle, Wang, Xing, Lee & Papailiopoulos, "Rare Gems:
    Finding Lottery Tickets at Initialization", NeurIPS 2022, arXiv:2202.12002; the authors' code
    ksreenivasan/pruning_is_enough, ``--algo hc_iter``).

    Level 1: weights frozen at their init, a score in [0, 1] per weight (U[0, 1]), forward mask
    ``1[s > 0.5]`` with a straight-through gradient, L2 penalty λ‖s‖², scores clamped to [0, 1] before each
    step, and every ``every`` (5 epochs) a global bottom-k freeze of the live weights, the last one reaching
    exactly ``density`` (:class:`GemMinerSchedule`). The level-1 Mask is the final binary mask (live and
    s > 0.5; ``select=topk``: every live weight), a ticket at init: its accuracy is that of the untrained
    weights. Level 2 (knob ``retrain``, on by default):
    the kept weights train from that same init with the model's recipe, the run's ticket, whose record
    also holds the untrained accuracy. The recipe of the scores is the authors': SGD 0.1, momentum 0.9,
    cosine, no weight decay (the L2 is on the scores, by ``l2``).
    """

    citation = "Sreenivasan et al., NeurIPS 2022 (arXiv:2202.12002)"
    knob_cls = GemMinerKnobs
    knobs = _knob_defaults(GemMinerKnobs)
    default_scope = "global"  # the authors' BottomK freezing ranks all layers' scores together
    # level 2 trains the kept weights from init: that is the reported ticket, and --then-train would repeat it
    trains_weights = True
    accepts_then_train = False

    def recipe(self, model: str, dataset: str) -> TrainingHparams | None:
        return dataclasses.replace(learned_recipe(dataset, self.name), weight_decay=0.0)

    def search_space(
        self, trial: Trial, hp: RunHparams, *, density: tuple[float, float] | None = None
    ) -> RunHparams:
        """The score lr and the L2 weight λ, log-uniform a decade either way of the authors' 7e-6: λ sets
        how many scores fall under the threshold, and the authors tune it per model and sparsity. The
        density is the target, searched only when the study asks."""
        hp = suggest_lr(trial, suggest_density(trial, hp, density))
        l2 = float(trial.suggest_float("l2", 7e-7, 7e-5, log=True))
        args = {**dict(hp.method_args), "l2": l2}
        return hp.replace(method_args=tuple(sorted(args.items())))

    def run_levels(self, run: RunContext) -> list[LevelRow]:
        from ..models import training_recipe
        from ..training.imp import reset_to
        from .oneshot import dense_baseline

        rows = [dense_baseline(run)] if run.baseline else []
        row1, _, mask, init_state = self.find_level(run)
        rows.append(row1)
        if not knobs_from_args(run.hp.args, GemMinerKnobs).retrain:  # type: ignore[union-attr]
            return rows
        ticket = run.level(2)
        structure = {k: mask.metadata[k] for k in ("pattern", "dense_layers") if k in mask.metadata}
        mask = Mask({n: t.to(run.device) for n, t in mask.items()}, structure)
        if ticket.done():
            res2 = ticket.result()
        else:
            model = copy.deepcopy(run.model)
            reset_to(model, {k: v.to(run.device) for k, v in init_state.items()}, mask)
            ticket.save_mask(mask, **run.mask_metadata(level=2, retrained_from="init"))
            recipe = run.then_train_hp or training_recipe(run.hp.model.model)
            result = run.train_level(ticket, model, recipe, desc=f"{self.name} ticket ({mask.density:.1%})")
            cost = row1.result.get("cost_to_find") if isinstance(row1.result, dict) else None
            res2 = run.finish_level(
                ticket,
                model,
                result,
                density=mask.density,
                cost_to_find=cost,
                untrained_test_acc=row1.result.get("untrained_test_acc"),
            )
        rows.append(LevelRow(2, mask.density, str(ticket.mask_path), res2))
        return rows
