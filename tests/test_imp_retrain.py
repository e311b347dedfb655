"""IMP's retraining modes start from the right weights at the right learning rate (hand-built oracles)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from nets import with_pruning

from ticketsearch.core import ConfigError, Mask
from ticketsearch.core.hparams import (
    DatasetHparams,
    ModelHparams,
    PruningHparams,
    RunHparams,
    TrainingHparams,
)
from ticketsearch.experiments.rundir import load_state
from ticketsearch.experiments.runner import RunOptions, run_find

LR, BATCH = 0.05, 64


def _hp(**pruning) -> RunHparams:
    hp = RunHparams(
        model=ModelHparams(model="mlp_digits"),
        dataset=DatasetHparams(dataset="digits"),
        training=TrainingHparams(
            optimizer="sgd",
            lr=LR,
            momentum=0.9,
            batch_size=BATCH,
            budget="3ep",
            eval_every="1it",
            schedule="cosine",
        ),
        pruning=PruningHparams(method="imp", rounds=1),
    )
    return with_pruning(hp, **pruning)  # IMP's own (retrain, rewind) or shared (density)


def _run(tmp_path, **pruning):
    s = run_find(_hp(**pruning), seed=0, opts=RunOptions(root=tmp_path, device="cpu", progress=False))
    return s.run_dir / "replicate_0"


def _first_eval_matches(rep, state: dict[str, torch.Tensor]) -> bool:
    """Level 1's record at iteration 0 is the evaluation of ``state`` ⊙ level 1's mask."""
    from ticketsearch.data import load_dataset
    from ticketsearch.models import create_model
    from ticketsearch.sparse import apply_mask
    from ticketsearch.training import evaluate

    model = create_model("mlp_digits", (1, 8, 8), 10)
    model.load_state_dict(state)
    apply_mask(model, Mask.load(rep / "level_1" / "mask.safetensors"))
    data = load_dataset("digits", seed=0)
    first = json.loads((rep / "level_1" / "metrics.jsonl").read_text().splitlines()[0])
    return first["iteration"] == 0 and first["test_acc"] == evaluate(model, data.x_test, data.y_test)["acc"]


def _lrs(rep, level: int) -> list[float]:
    return [
        json.loads(line)["lr"] for line in (rep / f"level_{level}" / "metrics.jsonl").read_text().splitlines()
    ]


def _cosine(it: int, total: int) -> float:
    return LR * 0.5 * (1 + math.cos(math.pi * min(it, total) / total))


@pytest.mark.parametrize("mode", ["reset", "finetune", "lr-rewind"])
def test_each_mode_starts_from_its_weights_at_its_learning_rate(tmp_path, mode):
    rep = _run(tmp_path, retrain=mode)
    init = load_state(rep / "init.safetensors")
    trained = load_state(rep / "level_0" / "model_final.safetensors")
    meta = Mask.load(rep / "level_1" / "mask.safetensors").metadata
    total = len(_lrs(rep, 0)) - 1  # one record per iteration, plus iteration 0
    if mode == "reset":
        assert _first_eval_matches(rep, init) and meta["init"] == "../init.safetensors"
        assert _lrs(rep, 1) == _lrs(rep, 0)
    else:
        assert _first_eval_matches(rep, trained) and meta["init"] == "../level_0/model_final.safetensors"
        assert not _first_eval_matches(rep, init)
    lrs = _lrs(rep, 1)
    if mode == "finetune":  # the original schedule's last learning rate, held
        assert lrs[1:] == pytest.approx([_cosine(total - 1, total)] * total)
    else:  # the original cosine schedule replayed from the start
        assert lrs[1:] == pytest.approx([_cosine(it, total) for it in range(total)])
    assert meta["retrain"] == mode


def test_rewind_flag_alone_means_rewinding_and_modes_are_validated(tmp_path):
    from ticketsearch.methods import get_method

    imp = get_method("imp")
    assert imp.own(imp.canonical(_hp(rewind="5it"))).retrain == "rewind"
    with pytest.raises(ConfigError, match="--rewind-iter"):
        imp.validate(imp.canonical(_hp(retrain="rewind")))
    with pytest.raises(ConfigError, match="drop --rewind-iter"):
        imp.validate(imp.canonical(_hp(retrain="finetune", rewind="5it")))
    # modes are different runs; the target density is not part of a run's name (levels extend it)
    names = {imp.identity(imp.canonical(_hp(retrain=m))) for m in ("reset", "finetune", "lr-rewind")}
    assert len(names) == 3
    assert imp.identity(imp.canonical(_hp(density=0.5))) == imp.identity(imp.canonical(_hp(density=0.05)))


def test_a_lower_density_extends_the_same_imp_run(tmp_path):
    opts = RunOptions(root=tmp_path, device="cpu", progress=False)
    a = run_find(_hp().replace(pruning=PruningHparams(method="imp", rounds=1)), seed=0, opts=opts)
    files = {p: p.stat().st_mtime_ns for p in (a.run_dir / "replicate_0").rglob("*") if p.is_file()}
    b = run_find(_hp().replace(pruning=PruningHparams(method="imp", rounds=2)), seed=0, opts=opts)
    assert a.run_dir == b.run_dir and len(b.rows) == 3
    assert [dict(r) for r in b.rows[:2]] == [dict(r) for r in a.rows]
    assert files == {p: p.stat().st_mtime_ns for p in files}  # levels 0 and 1 were not recomputed
