"""Early-bird tickets (You et al., ICLR 2020, "Drawing early-bird tickets"): draw the mask early in training.

While the dense network trains, every ``--eb-every`` iterations the magnitude mask at the target density is
drawn; once the newest mask is within ``--eb-eps`` (normalised Hamming distance) of each of the last 5,
the mask has stopped changing and training stops: that mask, reset to init (or rewound), is the ticket.
It costs a fraction of one dense training, against IMP's many. Unstructured by default, so it compares with
every other method here; ``--arg structure=channel`` is the paper's channel variant for networks with
BatchNorm: channels are ranked by |γ| of the BatchNorm after each convolution (trained with the
network-slimming L1 penalty ``--arg l1=1e-4`` on γ during the search), the mask keeps whole filters.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..core.errors import ConfigError
from ..core.hparams import RunHparams, finite, parse_duration, to_iterations
from ..core.mask import Mask
from ..core.pattern import parse_pattern
from ..core.select import check_empty_layers, select
from ..sparse import prunable_parameters
from ..training.imp import reset_to
from .base import (
    LevelRow,
    Method,
    RunContext,
    register_strategy,
    rewind_field,
    steps_per_epoch,
    suggest_density,
    suggest_duration,
)

if TYPE_CHECKING:  # optuna is imported only by `ticketsearch study`
    from optuna.trial import Trial

__all__ = ["EarlyBird", "EarlyBirdDetector", "EarlyBirdHparams", "mask_distance"]


@dataclass(frozen=True)
class EarlyBirdHparams:
    """Early-bird's own hyperparameters (flags ``--eb-every``, ``--eb-eps``, ``--rewind-iter``)."""

    eb_every: str = field(
        default="1ep",
        metadata={
            "help": "early-bird: draw a mask this often while training the dense net, e.g. 1ep or 100it",
            "duration": True,
        },
    )
    eb_eps: float = field(
        default=0.1,
        metadata={
            "help": "early-bird: stop once the newest mask differs from each of the last 5 by less than "
            "this (normalised Hamming distance; default 0.1)"
        },
    )
    rewind: str = rewind_field()

    def validate(self) -> None:
        parse_duration(self.rewind, name="rewind")
        if parse_duration(self.eb_every, name="eb_every")[0] < 1:
            raise ConfigError(f"eb_every must be at least one iteration, got {self.eb_every!r}")
        if not 0 < finite("eb_eps", self.eb_eps) < 1:
            raise ConfigError(f"eb_eps must be in (0, 1), got {self.eb_eps}")


def mask_distance(a: Mask, b: Mask) -> float:
    """Normalised Hamming distance: the fraction of all weights whose kept/pruned state differs."""
    diff = sum(int((a[n] != b[n]).sum()) for n in a)
    return diff / a.num_total


class EarlyBirdDetector:
    """The stopping rule: stop at the first mask whose distance to each of the ``window`` masks drawn
    before it is below ``eps`` (You et al.'s FIFO queue of 5 masks, threshold 0.1)."""

    def __init__(self, eps: float, window: int = 5) -> None:
        self.eps, self.window = eps, window
        self.recent: deque[tuple[int, Mask]] = deque(maxlen=window)
        self.distances: list[dict[str, Any]] = []

    def add(self, it: int, mask: Mask) -> bool:
        """Record the mask drawn at iteration ``it``; True when training can stop."""
        dists = [mask_distance(mask, m) for _, m in self.recent]
        self.distances.append({"iteration": it, "max_distance": max(dists) if dists else None})
        stop = len(dists) == self.window and max(dists) < self.eps
        self.recent.append((it, mask))
        return stop


@register_strategy(
    "early-bird",
    description="early-bird ticket: the magnitude mask drawn once it stops changing in dense training (You et al. 2020)",
)
class EarlyBird(Method):
    """Early-bird tickets (You et al., ICLR 2020): train dense, draw the magnitude mask every ``--eb-every``,
    stop once it stops changing (``--eb-eps``), reset the kept weights to init (or ``--rewind-iter``)."""

    kind = "early"
    sanity_checks = ("reinit", "shuffle")
    accepts_pattern = True  # the weight structure's draws go through core.select with --pattern
    fields = ("scope", "distribution")
    hparams_cls = EarlyBirdHparams
    knobs = {"window": 5, "structure": "unstructured", "l1": 1e-4}
    default_scope = "layerwise"  # comparable with IMP's layerwise tickets; --scope global ranks all layers
    citation = "You et al., ICLR 2020 (arXiv:1909.11957)"

    def validate(self, hp: RunHparams) -> None:
        super().validate(hp)
        knobs = {**(self.knobs or {}), **self.parse_knobs(hp.args)}
        if knobs["structure"] not in ("unstructured", "channel"):
            raise ConfigError(
                f"unknown early-bird structure {knobs['structure']!r} (choose from: unstructured, channel)"
            )
        if knobs["structure"] == "channel" and parse_pattern(hp.pruning.pattern).structured:
            raise ConfigError(
                f"--pattern {hp.pruning.pattern} applies to weights; early-bird structure=channel prunes whole "
                "channels (leave --pattern unstructured, or use structure=unstructured)"
            )
        if not knobs["l1"] >= 0:
            raise ConfigError(f"early-bird l1 must be ≥ 0, got {knobs['l1']!r}")
        if not isinstance(knobs["window"], int) or knobs["window"] < 1:
            raise ConfigError(f"early-bird window must be a whole number ≥ 1, got {knobs['window']!r}")

    def search_space(
        self, trial: Trial, hp: RunHparams, *, density: tuple[float, float] | None = None
    ) -> RunHparams:
        """The stopping rule: the distance that counts as settled and how often a mask is drawn (the
        paper's 0.1 and once an epoch were set for CIFAR-scale training)."""
        hp = suggest_density(trial, hp, density)
        eps = float(trial.suggest_float("eb_eps", 0.01, 0.3, log=True))
        every = suggest_duration(trial, "eb_every", hp.training.budget, 0.02, 0.2, minimum=1)
        return self.with_hparams(hp, eb_eps=eps, eb_every=every)

    def run_levels(self, run: RunContext) -> list[LevelRow]:
        hp, p, own = run.hp, run.hp.pruning, self.own(run.hp)
        window = int(dict(hp.method_args).get("window", 5))
        spe = steps_per_epoch(run)
        every = to_iterations(own.eb_every, spe, name="eb_every")
        budget = to_iterations(hp.training.budget, spe, name="budget")
        rewind_it = to_iterations(own.rewind, spe, name="rewind")
        if parse_duration(own.rewind, name="rewind")[0] and rewind_it > budget:
            raise ConfigError(
                f"rewind point {own.rewind!r} is past the training budget {hp.training.budget!r}"
            )
        search, ticket = run.level(0), run.level(1)
        rewind_path = run.replicate_path() / "rewind.safetensors"
        eb_path = search.path / "early_bird_mask.safetensors"

        args = dict(hp.method_args)
        channel = args.get("structure", "unstructured") == "channel"
        pairs = conv_bn_pairs(run.model) if channel else []
        if channel and not pairs:
            raise ConfigError(
                f"structure=channel ranks channels by BatchNorm scale factors; model '{hp.model.model}' has no "
                "BatchNorm after a convolution"
            )

        def draw(model: nn.Module) -> Mask:
            """The detector's mask: weights (unstructured) or channels (one bool per BatchNorm channel)."""
            if channel:
                return channel_mask(model, pairs, p.density)
            scores = {n: w.detach().abs() for n, w in prunable_parameters(model).items()}
            return select(
                scores,
                p.density,
                scope=p.scope or "layerwise",
                distribution=p.distribution,
                pattern=p.pattern,
                allow_dense_layers=p.allow_dense_layers,
            )

        def weights(mask: Mask) -> Mask:
            return expand_channels(mask, pairs, run.shapes) if channel else mask

        if search.done():
            res0 = search.result()
        else:
            detector = EarlyBirdDetector(own.eb_eps, window)
            ck = search.load_checkpoint()
            resumed_at = int(ck["iteration"]) if ck is not None else 0
            for it, mask in _stored_draws(search.path, resumed_at):  # the queue as it was at the checkpoint
                detector.add(it, mask)
            found: dict[str, Any] = {}

            def on_step(it: int, model: nn.Module) -> None:
                if it == rewind_it and rewind_it > 0 and not rewind_path.is_file():
                    run.save_state(rewind_path, model.state_dict())
                if it == 0 or it % every:
                    return
                mask = draw(model)
                mask.save(search.path / "draws" / f"it_{it}.safetensors", iteration=it)
                if detector.add(it, mask):
                    from ..training import StopTraining

                    found.update(iteration=it, mask=mask)
                    raise StopTraining

            model = run.model
            reset_to(model, run.init_state, Mask.ones(run.shapes))
            search.save_mask(Mask.ones(run.shapes), **run.mask_metadata(level=0))
            l1 = float(args.get("l1", 1e-4)) if channel else 0.0
            hooks = [  # network slimming: λ·sign(γ) added to every BatchNorm scale's gradient
                bn.weight.register_hook(lambda g, w=bn.weight: g + l1 * torch.sign(w.detach()))
                for _, bn in pairs
                if l1 > 0 and bn.weight is not None
            ]
            try:
                result = run.train_level(search, model, desc="early-bird search", on_step=on_step)
            finally:
                for h in hooks:
                    h.remove()
            converged = bool(found)
            mask = weights(found["mask"] if converged else draw(model))  # never converged: the end's mask
            check_empty_layers(mask, allow=p.allow_empty_layers, scope=p.scope or "layerwise")
            mask.save(eb_path, iteration=result.iterations)
            res0 = run.finish_level(
                search,
                model,
                result,
                density=1.0,
                eb_iteration=result.iterations,
                eb_converged=converged,
                eb_fraction_of_training=result.iterations / budget,
                eb_distances=detector.distances,
            )
        rows = [LevelRow(0, 1.0, str(search.mask_path), res0)]
        start = run.load_state(rewind_path) if rewind_it > 0 else run.init_state
        if ticket.done():
            mask = ticket.load_mask()
            res1 = ticket.result()
        else:
            mask = Mask.load(eb_path)
            structure = {k: mask.metadata[k] for k in ("pattern", "dense_layers") if k in mask.metadata}
            mask = Mask({n: t.to(run.device) for n, t in mask.items()}, structure)  # the claim is kept
            reset_to(run.model, start, mask)
            init = "../rewind.safetensors" if rewind_it > 0 else "../init.safetensors"
            ticket.save_mask(mask, **run.mask_metadata(level=1, init=init, eb_iteration=res0["eb_iteration"]))
            result = run.train_level(ticket, run.model, desc=f"early-bird ticket ({mask.density:.1%})")
            cost = {
                "wall_time": res0["wall_time"],
                "forward": res0["passes"]["forward"],
                "backward": res0["passes"]["backward"],
                "fraction_of_dense_training": res0["eb_fraction_of_training"],
            }
            res1 = run.finish_level(ticket, run.model, result, density=mask.density, cost_to_find=cost)
        row = LevelRow(1, mask.density, str(ticket.mask_path), res1)
        row.controls = run.run_controls(1, ticket, mask, start)
        rows.append(row)
        return rows


def _stored_draws(level_path: Path, upto: int) -> list[tuple[int, Mask]]:
    """Masks drawn before the checkpoint a search resumes from (a draw at iteration ``upto`` itself comes
    after that checkpoint); later ones are removed, since they will be drawn again."""
    draws = []
    folder = level_path / "draws"
    for f in sorted(folder.glob("it_*.safetensors"), key=lambda q: int(q.stem.split("_")[1])):
        it = int(f.stem.split("_")[1])
        if it < upto:
            draws.append((it, Mask.load(f)))
        else:
            f.unlink()
            f.with_suffix(".json").unlink(missing_ok=True)
    return draws


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """(conv weight name, the BatchNorm right after it) in module order: a BatchNorm whose channel count is
    that of the last convolution seen normalises that convolution's output channels."""
    from ..sparse import MaskedConv2d, param_name

    pairs: list[tuple[str, nn.BatchNorm2d]] = []
    last: tuple[str, MaskedConv2d] | None = None
    for name, m in model.named_modules():
        if isinstance(m, MaskedConv2d):
            last = (name, m)
        elif (
            isinstance(m, nn.BatchNorm2d)
            and last is not None
            and m.affine
            and m.num_features == last[1].out_channels
        ):
            pairs.append((param_name(last[0]), m))
            last = None
    return pairs


def channel_mask(model: nn.Module, pairs: list[tuple[str, nn.BatchNorm2d]], density: float) -> Mask:
    """Keep the ``density`` fraction of all paired channels with the largest |γ| (one global ranking, exact
    count and ties as ``core.select``)."""
    scores = {name: bn.weight.detach().abs().float().cpu() for name, bn in pairs if bn.weight is not None}
    return select(scores, density, scope="global")


def expand_channels(channels: Mask, pairs: list[tuple[str, nn.BatchNorm2d]], shapes: dict[str, Any]) -> Mask:
    """The weight mask of a channel mask: a pruned channel's whole filter; unpaired layers stay dense."""
    out = {}
    for name, shape in shapes.items():
        if name in channels:
            keep = channels[name].to(torch.bool)
            out[name] = keep.view(-1, *([1] * (len(shape) - 1))).expand(*shape).clone()
        else:
            out[name] = torch.ones(tuple(shape), dtype=torch.bool)
    return Mask(out, {"structure": "channel", "channel_density": channels.density})
