"""A conformance suite any scorer can run against itself (as Optuna ships one for samplers and storages).

Subclass :class:`ScorerConformance` in a test module, name the scorer, and pytest runs every check::

    from ticketsearch.testing import ScorerConformance

    class TestGradNorm(ScorerConformance):
        scorer_name = "gradnorm"          # a registered name (entry point), or:
        # scorer_cls = GradNormScorer     # the class itself
        # method_args = {"chunk_size": 8} # knobs, as with --arg key=value

The checks are the contract of :class:`ticketsearch.scorers.Scorer`: one finite score per prunable parameter
with its shape; deterministic under a seed; the model's weights, buffers (BatchNorm statistics included),
masks, gradients and train/eval mode untouched, bitwise; works on an MLP and on a conv net with BatchNorm,
on CPU; and, through the shared selection rule, exact densities (kept == round-half-up(density × n)),
masks that only shrink over rounds and never revive a pruned weight.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
import torch.nn as nn

from ..core.hparams import PruningHparams, RunHparams
from ..core.mask import Mask, exact_count
from ..core.select import validate_scores
from ..scorers import SCORERS, Scorer, ScoringContext, find_mask
from ..sparse import MaskedConv2d, MaskedLinear, apply_mask, get_mask, prunable_shapes

__all__ = ["ScorerConformance", "conformance_models", "make_batches"]

NUM_CLASSES = 3


def _mlp() -> nn.Module:
    m = nn.Sequential(
        nn.Flatten(),
        MaskedLinear(36, 20),
        nn.ReLU(),
        MaskedLinear(20, 12),
        nn.ReLU(),
        MaskedLinear(12, NUM_CLASSES),
    )
    m.input_shape = (1, 6, 6)  # type: ignore[assignment]
    return m


def _conv_bn() -> nn.Module:
    m = nn.Sequential(
        MaskedConv2d(1, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        MaskedConv2d(4, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        MaskedLinear(6, NUM_CLASSES),
    )
    m.input_shape = (1, 6, 6)  # type: ignore[assignment]
    return m


def conformance_models() -> dict[str, Any]:
    """Builders of the small CPU networks every scorer must handle: an MLP and a conv net with BatchNorm."""
    return {"mlp": _mlp, "conv_bn": _conv_bn}


def make_batches(
    n_batches: int = 2, batch_size: int = 8, *, seed: int = 0, input_shape=(1, 6, 6)
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed, labelled batches (every class present) drawn from a private generator."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        x = torch.randn((batch_size, *input_shape), generator=g)
        y = torch.arange(batch_size) % NUM_CLASSES
        out.append((x, y))
    return out


def _build(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = conformance_models()[kind]()
    # non-trivial BatchNorm statistics and affine parameters, so a scorer that moves them is caught
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return model


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "masks": {k: v.clone() for k, v in get_mask(model).items()},
        "grads": {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": [m.training for m in model.modules()],
        "dtypes": {k: v.dtype for k, v in model.state_dict().items()},
    }


class _DataStub:
    """The parts of a Dataset a one-shot scorer may read through ScoringContext.data."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.x_train = torch.cat([x for x, _ in batches])
        self.y_train = torch.cat([y for _, y in batches])
        self.x_val, self.y_val = self.x_train[:0], self.y_train[:0]
        self.x_test, self.y_test = self.x_train, self.y_train
        self.input_shape = tuple(self.x_train.shape[1:])
        self.num_classes = NUM_CLASSES
        self.name = "conformance"


class ScorerConformance:
    """Mixin of contract tests for a scorer; subclass it as ``Test...`` and set ``scorer_name`` or ``scorer_cls``.

    Override :meth:`make_scorer` (or the ``scorer`` fixture) for scorers that need constructor arguments.
    ``rounds`` lists the round counts the density checks run with (keep them small: the nets are tiny but a
    scorer may be slow).
    """

    scorer_name: ClassVar[str | None] = None
    scorer_cls: ClassVar[type | None] = None
    method_args: ClassVar[dict[str, Any]] = {}
    rounds: ClassVar[tuple[int, ...]] = (1, 3)
    densities: ClassVar[tuple[float, ...]] = (0.5, 0.1, 0.013)

    # -- hooks for implementers -------------------------------------------------------------------------
    def make_scorer(self) -> Scorer:
        cls = self.scorer_cls
        if cls is None:
            if not self.scorer_name:
                raise TypeError(f"{type(self).__name__}: set scorer_name or scorer_cls")
            cls = SCORERS.get(self.scorer_name)
        return cls()

    @pytest.fixture
    def scorer(self) -> Scorer:
        return self.make_scorer()

    def hparams(self, scorer: Scorer, **pruning: Any) -> RunHparams:
        p = PruningHparams(method=getattr(scorer, "name", "") or "scorer", **pruning)
        return RunHparams(pruning=p, method_args=tuple(sorted(self.method_args.items())))

    def context(self, batches: list[tuple[torch.Tensor, torch.Tensor]], seed: int = 0) -> ScoringContext:
        return ScoringContext(data=_DataStub(batches), seed=seed, progress=False)

    def _score(self, scorer: Scorer, model: nn.Module, batches, seed: int = 0) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return scorer.score(model, batches, hparams=self.hparams(scorer), context=self.context(batches, seed))

    # -- the contract -----------------------------------------------------------------------------------
    @pytest.mark.parametrize("net", ["mlp", "conv_bn"])
    def test_one_finite_score_per_prunable_parameter(self, scorer: Scorer, net: str) -> None:
        model = _build(net)
        shapes = prunable_shapes(model)
        scores = self._score(scorer, model, make_batches())
        assert isinstance(scores, dict), f"score() returned {type(scores).__name__}, expected a dict"
        validate_scores(scores, shapes, source=f"scorer {type(scorer).__name__}")
        assert list(scores) == list(shapes), (
            "scores must be keyed (and ordered) like prunable_parameters(model)"
        )
        for n, s in scores.items():
            assert s.is_floating_point(), f"score of '{n}' has dtype {s.dtype}, expected floating point"
            assert s.device == model.get_parameter(n).device, f"score of '{n}' is on {s.device}"

    @pytest.mark.parametrize("net", ["mlp", "conv_bn"])
    def test_deterministic_under_seed(self, scorer: Scorer, net: str) -> None:
        batches = make_batches()
        a = self._score(scorer, _build(net), batches, seed=3)
        b = self._score(scorer, _build(net), batches, seed=3)
        for n in a:
            assert torch.equal(a[n], b[n]), f"scores of '{n}' differ between two runs with the same seed"

    @pytest.mark.parametrize("net", ["mlp", "conv_bn"])
    @pytest.mark.parametrize("train_mode", [True, False])
    def test_model_untouched(self, scorer: Scorer, net: str, train_mode: bool) -> None:
        model = _build(net)
        model.train(train_mode)
        before = _snapshot(model)
        self._score(scorer, model, make_batches())
        after = _snapshot(model)
        for k, v in before["state"].items():
            assert torch.equal(v, after["state"][k]), f"scoring changed '{k}' of the model"
        assert before["dtypes"] == after["dtypes"], "scoring changed the model's dtypes"
        for k, v in before["masks"].items():
            assert torch.equal(v, after["masks"][k]), f"scoring changed the mask of '{k}'"
        for n, g in before["grads"].items():
            assert (g is None) == (after["grads"][n] is None), f"scoring left a gradient on '{n}'"
        assert before["requires_grad"] == after["requires_grad"], "scoring changed requires_grad"
        assert before["training"] == after["training"], "scoring changed the train/eval mode"

    def test_masked_model_untouched_and_scored(self, scorer: Scorer) -> None:
        model = _build("conv_bn")
        g = torch.Generator().manual_seed(1)
        mask = Mask({n: torch.rand(s, generator=g) < 0.6 for n, s in prunable_shapes(model).items()})
        apply_mask(model, mask)
        before = _snapshot(model)
        scores = self._score(scorer, model, make_batches())
        validate_scores(scores, prunable_shapes(model), source=type(scorer).__name__)
        after = _snapshot(model)
        for k, v in before["state"].items():
            assert torch.equal(v, after["state"][k]), f"scoring a masked model changed '{k}'"
        assert get_mask(model).equals(mask), "scoring changed the attached mask"

    @pytest.mark.parametrize("scope", ["global", "layerwise"])
    def test_exact_density_after_selection(self, scorer: Scorer, scope: str) -> None:
        batches = make_batches()
        for net in ("mlp", "conv_bn"):
            model = _build(net)
            shapes = prunable_shapes(model)
            total = sum(int(torch.Size(s).numel()) for s in shapes.values())
            for rounds in self.rounds:
                for d in self.densities:
                    hp = self.hparams(scorer, density=d, rounds=rounds, scope=scope)
                    torch.manual_seed(0)
                    mask, cost = find_mask(scorer, model, batches, hp, context=self.context(batches))
                    if scope == "global":
                        assert mask.num_kept == exact_count(d, total), (net, rounds, d, mask.num_kept)
                    else:
                        for n, c in mask.layer_counts().items():
                            assert c == exact_count(d, int(torch.Size(shapes[n]).numel())), (
                                net,
                                rounds,
                                d,
                                n,
                                c,
                            )
                    assert mask.metadata.get("rounds") == rounds
                    assert isinstance(cost.get("wall_time"), float)

    def test_existing_mask_respected(self, scorer: Scorer) -> None:
        model = _build("mlp")
        batches = make_batches()
        g = torch.Generator().manual_seed(2)
        old = Mask({n: torch.rand(s, generator=g) < 0.5 for n, s in prunable_shapes(model).items()})
        apply_mask(model, old)
        hp = self.hparams(scorer, density=0.1, rounds=2, scope="global")
        torch.manual_seed(0)
        mask, _ = find_mask(scorer, model, batches, hp, context=self.context(batches))
        assert mask.is_subset_of(old), "a weight pruned before scoring was revived"
        assert get_mask(model).equals(old)
