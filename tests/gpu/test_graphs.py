"""The CUDA-graph training step against the eager step (the oracle) on the GPU: weights, masks, BatchNorm
statistics, resume, bf16, the Triton backend, and the cases that must fall back to eager."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn
from nets import digits_hparams

from ticketsearch.core.hparams import TrainingHparams
from ticketsearch.core.mask import Mask
from ticketsearch.data import load_dataset
from ticketsearch.models import create_model
from ticketsearch.sparse import apply_mask, masked_layers, prunable_shapes
from ticketsearch.training import train
from ticketsearch.training.graphs import GRAPHS_OFF

pytestmark = pytest.mark.gpu  # TF32 off for every test: tests/gpu/conftest.py


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0, device="cuda")


def _model(name: str = "mlp_digits", backend: str = "inplace", density: float = 0.3) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, (1, 8, 8), 10)
    g = torch.Generator().manual_seed(1)
    mask = Mask({n: torch.rand(s, generator=g) < density for n, s in prunable_shapes(model).items()})
    return apply_mask(model.cuda(), mask, backend=backend)


def _pruned_all_zero(model: nn.Module) -> bool:
    return all(
        bool(torch.all(layer.weight[~layer.weight_mask] == 0))
        for _, layer in masked_layers(model)
        if layer.weight_mask is not None
    )


def _pair(hp: TrainingHparams, data, **model_kw):
    eager, graphed = _model(**model_kw), _model(**model_kw)
    r_e = train(eager, data, hp, seed=3, progress=False, graph=False)
    r_g = train(graphed, data, hp, seed=3, progress=False, graph=True)
    assert not r_e.graph and r_e.eager_reason == GRAPHS_OFF
    assert r_g.graph, r_g.eager_reason  # captured (a capture failure names its error here)
    return eager, graphed, r_e, r_g


@pytest.mark.parametrize(
    "opt",
    [
        dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3, schedule="cosine"),
        dict(optimizer="adam", lr=3e-3, warmup="10it"),
        dict(optimizer="adamw", lr=3e-3, weight_decay=1e-2, grad_clip=0.5),
    ],
    ids=["sgd", "adam", "adamw_clip"],
)
@pytest.mark.parametrize("backend", ["inplace", "reference", "triton"])
def test_graph_equals_eager_fp32(digits, opt, backend):
    """~80 steps over 2 epochs, including each epoch's short last batch (run uncaptured)."""
    hp = TrainingHparams(batch_size=32, budget="2ep", **opt)
    eager, graphed, r_e, r_g = _pair(hp, digits, backend=backend)
    for a, b in zip(eager.parameters(), graphed.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)
    assert _pruned_all_zero(graphed)
    assert r_g.final["test_acc"] == pytest.approx(r_e.final["test_acc"], abs=0.01)
    assert r_g.passes == r_e.passes


def test_graph_keeps_batchnorm_statistics(digits):
    """Warm-up steps are undone: running means/vars and num_batches_tracked equal the eager run's."""
    hp = TrainingHparams(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=64, budget="1ep")
    eager, graphed, _, _ = _pair(hp, digits, name="resnet20")
    se, sg = eager.state_dict(), graphed.state_dict()
    for k in se:
        if k.endswith("num_batches_tracked"):
            assert int(se[k]) == int(sg[k])
        else:
            torch.testing.assert_close(sg[k], se[k], rtol=1e-3, atol=1e-4)


def test_graph_bf16(digits):
    hp = TrainingHparams(optimizer="adam", lr=3e-3, batch_size=32, budget="3ep", precision="bf16")
    eager, graphed, r_e, r_g = _pair(hp, digits)
    assert _pruned_all_zero(graphed)
    assert all(p.dtype == torch.float32 for p in graphed.parameters())
    assert r_g.final["test_acc"] > 0.85
    assert r_g.final["test_acc"] == pytest.approx(r_e.final["test_acc"], abs=0.03)


def test_graph_resume_equals_uninterrupted(digits):
    hp = TrainingHparams(optimizer="adam", lr=3e-3, batch_size=32, budget="3ep", schedule="cosine")
    full = _model()
    train(full, digits, hp, seed=2, progress=False, graph=True)
    saved = []
    r = train(
        _model(), digits, hp, seed=2, progress=False, graph=True, save_checkpoint=saved.append, stop_at=41
    )
    assert r.graph and saved[-1].iteration == 41 and saved[-1].optimizer["steps"] == 41
    resumed = _model()
    with torch.no_grad():
        for p in resumed.parameters():
            p.add_(1.0)  # other weights: the checkpoint must overwrite them
    r2 = train(resumed, digits, hp, seed=2, progress=False, graph=True, start=saved[-1])
    assert r2.graph
    for a, b in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_hooks_fall_back_to_eager(digits):
    seen = []
    hp = TrainingHparams(batch_size=32, budget="5it")
    r = train(
        _model(), digits, hp, seed=0, progress=False, graph=True, after_step=lambda it, m: seen.append(it)
    )
    assert not r.graph and "hook" in (r.eager_reason or "") and seen == [1, 2, 3, 4, 5]


def test_runner_records_graph(digits, tmp_path):
    from ticketsearch.experiments.runner import RunOptions, run_find

    hp = digits_hparams(training=dict(batch_size=32, budget="1ep"), density=0.8, rounds=1)
    s = run_find(hp, seed=0, opts=RunOptions(root=tmp_path, device="cuda", progress=False, graph=True))
    assert all(row.result["graph"] is True for row in s.rows), [r.result.get("eager_reason") for r in s.rows]
    bf = dataclasses.replace(hp, training=dataclasses.replace(hp.training, precision="bf16"))
    s2 = run_find(bf, seed=0, opts=RunOptions(root=tmp_path, device="cuda", progress=False, graph=False))
    assert s2.run_dir != s.run_dir
    assert all(row.result["graph"] is False and row.result["eager_reason"] == GRAPHS_OFF for row in s2.rows)
