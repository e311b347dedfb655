"""Early-bird tickets: the stopping rule on a planted mask sequence, and the method end to end."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from nets import digits_hparams

from ticketsearch.core import Mask, select
from ticketsearch.experiments.rundir import load_state
from ticketsearch.methods import EarlyBirdDetector
from ticketsearch.methods.early_bird import mask_distance


def _mask(bits: list[int]) -> Mask:
    return Mask({"w": torch.tensor(bits, dtype=torch.bool)})


def test_distance_is_the_fraction_of_weights_that_differ():
    assert mask_distance(_mask([1, 1, 0, 0]), _mask([1, 0, 1, 0])) == 0.5
    assert mask_distance(_mask([1, 0] * 50), _mask([1, 0] * 50)) == 0.0


def test_stops_exactly_where_the_rule_says():
    g = torch.Generator().manual_seed(0)
    far = [_mask((torch.rand(100, generator=g) < 0.5).int().tolist()) for _ in range(5)]
    settled = far[-1]
    seq = [*far, *[settled] * 6]  # draws 0-4 far apart, then the mask stops changing
    det = EarlyBirdDetector(eps=0.1, window=5)
    stops = [det.add(i, m) for i, m in enumerate(seq)]
    # at draw 9 the five before it are draws 4-8, all equal to it; at draw 8 the window still holds draw 3
    assert stops.index(True) == 9
    assert det.distances[9]["max_distance"] == 0.0 and det.distances[8]["max_distance"] >= 0.1


def test_a_distance_equal_to_eps_does_not_stop():
    base = [1] * 10 + [0] * 10
    flipped = [0] + [1] * 10 + [0] * 9  # two positions differ: distance 0.1
    det = EarlyBirdDetector(eps=0.1, window=2)
    assert [det.add(i, _mask(b)) for i, b in enumerate([base, flipped, base, base])] == [
        False,
        False,
        False,
        False,
    ]
    assert det.add(4, _mask(base)) is True  # the two before it are equal to it


def test_early_bird_end_to_end(tmp_path):
    from ticketsearch.experiments.runner import RunOptions, run_find

    hp = digits_hparams(
        "early-bird",
        training=dict(optimizer="adam", lr=3e-3, batch_size=32, budget="10ep", eval_every="1ep"),
        density=0.2,
        eb_every="10it",
        eb_eps=0.05,
    )
    s = run_find(hp, seed=0, opts=RunOptions(root=tmp_path, device="cpu", progress=False))
    search, ticket = s.rows
    stop, total = search["eb_iteration"], ticket["iterations"]  # the ticket trains the full budget
    assert search["eb_converged"] and 0 < stop < total and search["eb_fraction_of_training"] == stop / total
    d = search["eb_distances"]
    assert d[-1]["iteration"] == stop and d[-1]["max_distance"] < 0.05
    assert all(x["max_distance"] is None or x["max_distance"] >= 0.05 for x in d[5:-1])
    # the ticket is the magnitude mask of the weights where training stopped, reset to init
    rep = s.run_dir / "replicate_0"
    weights = load_state(rep / "level_0" / "model_final.safetensors")
    by_hand = select({n: weights[n].abs() for n in Mask.load(ticket["mask"])}, 0.2, scope="layerwise")
    assert Mask.load(ticket["mask"]).equals(by_hand)
    assert Mask.load(ticket["mask"]).metadata["init"] == "../init.safetensors"
    first = json.loads((Path(ticket["mask"]).parent / "metrics.jsonl").read_text().splitlines()[0])
    assert first["iteration"] == 0
    assert ticket["cost_to_find"]["fraction_of_dense_training"] == stop / total


def test_channel_early_bird_keeps_the_filters_with_the_largest_batchnorm_scales(tmp_path):
    """structure=channel (You et al.'s variant): whole filters, ranked by |γ| of the following BatchNorm
    at the moment the search stopped; layers without a BatchNorm (the classifier) stay dense."""
    from ticketsearch.core.hparams import (
        DatasetHparams,
        ModelHparams,
        PruningHparams,
        RunHparams,
        TrainingHparams,
    )
    from ticketsearch.core.mask import exact_count
    from ticketsearch.experiments.runner import RunOptions, run_find
    from ticketsearch.methods.early_bird import conv_bn_pairs
    from ticketsearch.models import create_model

    hp = RunHparams(
        model=ModelHparams(model="resnet20"),
        dataset=DatasetHparams(dataset="digits"),
        training=TrainingHparams(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=64, budget="2ep"),
        pruning=PruningHparams(method="early-bird", density=0.5),
        method_args=(("structure", "channel"),),
        method_hparams=(("eb_eps", 0.05), ("eb_every", "5it")),
    )
    s = run_find(hp, seed=0, opts=RunOptions(root=tmp_path, device="cpu", progress=False))
    mask = Mask.load(s.rows[1]["mask"])
    final = load_state(s.run_dir / "replicate_0" / "level_0" / "model_final.safetensors")
    model = create_model("resnet20", (1, 8, 8), 10)
    names = {id(m): n for n, m in model.named_modules()}
    pairs = conv_bn_pairs(model)
    assert pairs, "resnet20 pairs every conv with a BatchNorm"
    gammas = {conv: final[f"{names[id(bn)]}.weight"].abs() for conv, bn in pairs}
    by_hand = select(gammas, 0.5, scope="global")
    total = sum(g.numel() for g in gammas.values())
    assert by_hand.num_kept == exact_count(0.5, total)
    for conv, _ in pairs:
        rows = mask[conv].flatten(1)
        assert bool((rows.all(1) | ~rows.any(1)).all()), f"{conv}: not whole filters"
        assert torch.equal(rows.all(1), by_hand[conv]), conv
    assert bool(mask["fc.weight"].all())  # no BatchNorm after it: dense
