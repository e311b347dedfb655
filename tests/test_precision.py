"""``--precision bf16`` (autocast forward + loss, fp32 master weights) and the CUDA-graph step's CPU side.

The graph step's device-scalar optimizer is checked here against the eager loop (the oracle) by running
its body uncaptured on CPU; capture and replay themselves are CUDA-only (tests/gpu/test_graphs.py).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn as nn
from clitools import assert_one_line_error, nothing_left, run_cli
from nets import one_thread  # noqa: F401  (autouse fixture)

import ticketsearch.training.loop as loop_mod
from ticketsearch.core.hparams import RunHparams, TrainingHparams, stable_hash
from ticketsearch.core.mask import Mask
from ticketsearch.data import load_dataset
from ticketsearch.models import create_model
from ticketsearch.sparse import apply_mask, masked_layers, prunable_shapes
from ticketsearch.training import evaluate, train
from ticketsearch.training.graphs import GRAPHS_OFF


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _masked_model(seed: int = 0, density: float = 0.3, backend: str = "inplace") -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("mlp_digits", (1, 8, 8), 10)
    g = torch.Generator().manual_seed(seed + 1)
    mask = Mask({n: torch.rand(s, generator=g) < density for n, s in prunable_shapes(model).items()})
    return apply_mask(model, mask, backend=backend)


def _pruned(model: nn.Module) -> list[torch.Tensor]:
    return [
        layer.weight[~layer.weight_mask] for _, layer in masked_layers(model) if layer.weight_mask is not None
    ]


# -- identity: the hash --------------------------------------------------------------------------------------
def _old_form(hp: RunHparams) -> dict:
    """What RunHparams.to_dict gave before the precision field existed: every section's fields, nothing else."""
    d = {
        "model": dataclasses.asdict(hp.model),
        "dataset": dataclasses.asdict(hp.dataset),
        # (nor eval_start, added later still)
        "training": {
            k: v for k, v in dataclasses.asdict(hp.training).items() if k not in ("precision", "eval_start")
        },
        # and the fields PruningHparams held then, before IMP and early-bird declared them as their own
        "pruning": {
            # (nor the sparsity pattern's fields, added later still)
            **{
                k: v
                for k, v in dataclasses.asdict(hp.pruning).items()
                if k not in ("pattern", "allow_dense_layers")
            },
            **{"rate": 0.2, "output_rate": 0.1, "rewind": "0it", "retrain": "reset", "eb_every": "1ep"},
            "eb_eps": 0.1,
        },
        "method_args": dict(hp.method_args),
    }
    return d


@pytest.mark.parametrize("hp", [RunHparams(), RunHparams(training=TrainingHparams(optimizer="sgd", lr=0.1))])
def test_fp32_keeps_the_old_hash_and_bf16_changes_it(hp):
    assert "precision" not in hp.to_dict()["training"]
    assert hp.hash() == stable_hash(_old_form(hp))
    bf16 = hp.replace(training=dataclasses.replace(hp.training, precision="bf16"))
    assert bf16.to_dict()["training"]["precision"] == "bf16"
    assert bf16.hash() != hp.hash()
    # hparams.json written before the field existed (no key) reads back as fp32, same name
    assert RunHparams.from_dict(_old_form(hp)) == hp
    assert RunHparams.from_dict(json.loads(json.dumps(bf16.to_dict()))) == bf16


def test_bad_precision_is_refused_by_train(digits):
    with pytest.raises(Exception, match="precision 'fp16'.*bf16"):
        train(
            _masked_model(), digits, TrainingHparams(precision="fp16", budget="1it"), seed=0, progress=False
        )


# -- bf16 training on CPU --------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["inplace", "reference"])
def test_bf16_trains_under_autocast_and_keeps_masks_exact(digits, backend):
    hp32 = TrainingHparams(optimizer="adam", lr=3e-3, batch_size=32, budget="4ep")
    hp16 = dataclasses.replace(hp32, precision="bf16")
    dtypes: set[torch.dtype] = set()
    m16 = _masked_model(backend=backend)
    first = next(layer for _, layer in masked_layers(m16))
    first.register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype))
    r16 = train(m16, digits, hp16, seed=0, progress=False)
    m32 = _masked_model(backend=backend)
    r32 = train(m32, digits, hp32, seed=0, progress=False)
    assert dtypes == {torch.bfloat16}  # training steps and evaluations ran under autocast
    assert all(p.dtype == torch.float32 for p in m16.parameters())  # master weights stay fp32
    assert all(torch.all(w == 0) for w in _pruned(m16))  # pruned weights exactly zero
    losses = [r["train_loss"] for r in r16.history[1:]]
    assert losses[-1] < 0.5 * losses[0]
    assert r16.final["test_acc"] > 0.85
    assert abs(r16.final["test_acc"] - r32.final["test_acc"]) < 0.05
    # and bf16 really changed the arithmetic (not the fp32 run under another name)
    assert any(not torch.equal(a, b) for a, b in zip(m16.parameters(), m32.parameters()))


def test_bf16_gradients_of_pruned_weights_are_masked(digits):
    """Under autocast the raw gradient of a pruned weight is generally non-zero; the step must not use it."""
    model = _masked_model(backend="reference")  # reference: W ⊙ M in the forward, so the grad is masked too
    hp = TrainingHparams(optimizer="sgd", lr=0.1, momentum=0.9, batch_size=32, budget="3it", precision="bf16")
    train(model, digits, hp, seed=0, progress=False)
    for _, layer in masked_layers(model):
        assert layer.weight.grad is not None
        assert torch.all(layer.weight.grad[~layer.weight_mask] == 0)
        assert torch.all(layer.weight[~layer.weight_mask] == 0)


def test_evaluate_in_bf16_is_close_to_fp32(digits):
    model = _masked_model()
    train(model, digits, TrainingHparams(budget="2ep", batch_size=32), seed=0, progress=False)
    e32 = evaluate(model, digits.x_test, digits.y_test)
    e16 = evaluate(model, digits.x_test, digits.y_test, precision="bf16")
    assert e16 != e32 and abs(e16["acc"] - e32["acc"]) < 0.03 and abs(e16["loss"] - e32["loss"]) < 0.05


# -- the graph step (CPU side) -----------------------------------------------------------------------------
GRAPH_CASES = {
    "sgd": dict(optimizer="sgd", lr=0.05),
    "sgd_momentum_wd": dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3, schedule="cosine"),
    "sgd_nesterov": dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "sgd_wd_no_momentum": dict(optimizer="sgd", lr=0.05, weight_decay=1e-2),
    "adam": dict(optimizer="adam", lr=3e-3, warmup="20it"),
    "adamw_wd": dict(optimizer="adamw", lr=3e-3, weight_decay=1e-2),
    "adam_l2_clip": dict(optimizer="adam", lr=3e-3, weight_decay=1e-3, grad_clip=0.5),
    "sgd_bf16": dict(optimizer="sgd", lr=0.05, momentum=0.9, precision="bf16"),
}


@pytest.mark.parametrize("case", sorted(GRAPH_CASES))
def test_graph_step_body_equals_eager_step(digits, monkeypatch, case):
    """The step a CUDA graph captures (device-scalar lr and step count) run uncaptured on CPU, against the
    eager loop over 2 epochs (~80 steps, incl. each epoch's short last batch): equal within fp32 rounding."""
    hp = TrainingHparams(batch_size=32, budget="2ep", **GRAPH_CASES[case])
    eager = _masked_model()
    r_eager = train(eager, digits, hp, seed=5, progress=False)
    assert not r_eager.graph and r_eager.eager_reason == GRAPHS_OFF
    monkeypatch.setattr(loop_mod, "eager_reason", lambda *a, **k: None)  # take the graph path on CPU
    graphed = _masked_model()
    r_graph = train(graphed, digits, hp, seed=5, progress=False)
    assert not r_graph.graph and r_graph.eager_reason == "device cpu: not captured"
    for a, b in zip(eager.parameters(), graphed.parameters()):
        torch.testing.assert_close(b, a, rtol=2e-4, atol=2e-5)
    assert all(torch.all(w == 0) for w in _pruned(graphed))
    for ra, rb in zip(r_eager.history, r_graph.history):
        assert ra["iteration"] == rb["iteration"]
        assert rb["test_acc"] == pytest.approx(ra["test_acc"], abs=0.01)
        if ra["train_loss"] is not None:
            assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-3)


def test_graph_step_resume_matches_uninterrupted(digits, monkeypatch):
    """A checkpoint written by the graph path (host-side optimizer steps and lr kept in step) resumes to
    the same weights as an uninterrupted graph-path run."""
    monkeypatch.setattr(loop_mod, "eager_reason", lambda *a, **k: None)
    hp = TrainingHparams(optimizer="adam", lr=3e-3, batch_size=32, budget="3ep", schedule="cosine")
    full = _masked_model()
    train(full, digits, hp, seed=2, progress=False)
    saved = []
    train(_masked_model(), digits, hp, seed=2, progress=False, save_checkpoint=saved.append, stop_at=41)
    assert saved[-1].iteration == 41 and saved[-1].optimizer["steps"] == 41
    resumed = _masked_model()  # the same mask, other weights: the checkpoint must overwrite them
    with torch.no_grad():
        for p in resumed.parameters():
            p.add_(1.0)
    train(resumed, digits, hp, seed=2, progress=False, start=saved[-1])
    for a, b in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


# -- the CLI ---------------------------------------------------------------------------------------------
FIND = [
    "find",
    "--dataset",
    "digits",
    "--no-progress",
    "--device",
    "cpu",
    "--budget",
    "1ep",
    "--method",
    "snip",
]


def test_cli_precision_names_the_run_and_no_graph_is_recorded(tmp_path, capsys):
    root = tmp_path / "runs"
    r32 = run_cli(capsys, *FIND, "--root", str(root), "--json")
    assert r32.returncode == 0, r32.stderr
    r16 = run_cli(capsys, *FIND, "--root", str(root), "--json", "--precision", "bf16", "--graph")
    assert r16.returncode == 0, r16.stderr
    d32, d16 = (json.loads(r.stdout)["run_dir"] for r in (r32, r16))
    assert d32 != d16
    hp16 = json.loads((tmp_path / d16 / "hparams.json").read_text())
    hp32 = json.loads((tmp_path / d32 / "hparams.json").read_text())
    assert hp16["training"]["precision"] == "bf16" and "precision" not in hp32["training"]
    res16 = json.loads(next((tmp_path / d16).rglob("result.json")).read_text())
    res32 = json.loads(next((tmp_path / d32).rglob("result.json")).read_text())
    assert res16["graph"] is False and "CUDA-only" in res16["eager_reason"]  # --graph asked, CPU: eager
    assert res32["graph"] is False and res32["eager_reason"] == GRAPHS_OFF  # off unless asked


def test_cli_bad_precision_one_line(tmp_path, capsys):
    root = tmp_path / "runs"
    r = run_cli(capsys, *FIND, "--root", str(root), "--precision", "half")
    assert_one_line_error(r, "precision", "'half'", "bf16")
    assert nothing_left(root) == []
