"""Mask, selection, registry and hparams against hand-computed oracles."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ticketsearch.core import ConfigError, DataError, Mask, MaskMismatchError, Registry, UnknownNameError
from ticketsearch.core.hparams import PruningHparams, RunHparams, TrainingHparams, parse_duration, stable_hash
from ticketsearch.core.mask import exact_count
from ticketsearch.core.select import layer_densities, select, select_counts


# -- selection ------------------------------------------------------------------------------------------
def test_global_topk_hand_example():
    scores = {"a": torch.tensor([[0.1, 0.9], [0.5, 0.3]]), "b": torch.tensor([0.8, 0.2, 0.7, 0.0])}
    # 8 weights, density 0.5 → keep 4: 0.9, 0.8, 0.7, 0.5
    m = select(scores, 0.5, scope="global")
    assert m["a"].tolist() == [[False, True], [True, False]]
    assert m["b"].tolist() == [True, False, True, False]
    assert m.num_kept == 4 and m.density == 0.5


def test_layerwise_exact_counts_and_rounding():
    torch.manual_seed(0)
    scores = {"a": torch.randn(7, 3), "b": torch.randn(5)}
    m = select(scores, 0.3, scope="layerwise")
    # round half up: 0.3*21 = 6.3 → 6; 0.3*5 = 1.5 → 2
    assert m.layer_counts() == {"a": 6, "b": 2}
    assert exact_count(0.5, 3) == 2 and exact_count(0.25, 2) == 1


def test_ties_broken_by_lower_index():
    scores = {"a": torch.ones(6)}
    m = select(scores, 0.5, scope="layerwise")
    assert m["a"].tolist() == [True, True, True, False, False, False]
    m2 = select({"x": torch.zeros(2), "y": torch.zeros(2)}, 0.5, scope="global")
    assert m2["x"].tolist() == [True, True] and m2["y"].tolist() == [False, False]


def test_current_mask_never_revived():
    scores = {"a": torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])}
    cur = {"a": torch.tensor([False, True, True, True, True])}
    m = select(scores, 0.4, scope="layerwise", current=cur)
    assert m["a"].tolist() == [False, True, True, False, False]
    assert m.is_subset_of(cur)
    with pytest.raises(ConfigError):
        select(scores, 1.0, scope="layerwise", current=cur)


def test_erk_distribution_matches_density_and_formula():
    shapes = {"a": (100, 50), "b": (50, 10), "c": (10, 2)}
    d = layer_densities(shapes, 0.2, "erk")
    total = sum(a * b for a, b in shapes.values())
    kept = sum(d[n] * a * b for n, (a, b) in shapes.items())
    assert abs(kept / total - 0.2) < 1e-9
    # unsaturated layers: density ∝ (n_in + n_out)/(n_in · n_out)
    unsat = [n for n in d if d[n] < 1]
    ratios = {n: d[n] / (sum(shapes[n]) / (shapes[n][0] * shapes[n][1])) for n in unsat}
    assert max(ratios.values()) == pytest.approx(min(ratios.values()))


# four layers in network order: 100, 100, 50 and 10 (the classifier) weights, 260 in all
SMART_SHAPES = {"a": (10, 10), "b": (10, 10), "c": (10, 5), "out": (5, 2)}


@pytest.mark.parametrize(
    "density,want",
    [
        # raw ratios (L-l+1)^2 + (L-l+1), L = 4: a 20, b 12, c 6; the classifier keeps 30% = 3 weights.
        # 0.2: 52 kept, 49 for a-c; 49 / (20·100 + 12·100 + 6·50) = 0.014 → 0.28, 0.168, 0.084
        (0.2, {"a": 0.28, "b": 0.168, "c": 0.084, "out": 0.3}),
        # 0.8: 208 kept; a would keep 20·205/3500 = 1.17 > 1 → dense, 105 left for b, c: 105/1500 = 0.07
        (0.8, {"a": 1.0, "b": 0.84, "c": 0.42, "out": 0.3}),
        # 0.99: a, b, c all dense (250); the classifier takes the 7.4 left
        (0.99, {"a": 1.0, "b": 1.0, "c": 1.0, "out": 0.74}),
        # 0.005: 1.3 kept, less than the classifier's 30% (3): it keeps the mean density like the rest;
        # 1.25 for a-c: 1.25/3500 = 0.000357 → 0.00714, 0.00429, 0.00214
        (0.005, {"a": 0.05 / 7, "b": 0.03 / 7, "c": 0.015 / 7, "out": 0.005}),
    ],
)
def test_smart_ratio_hand_computed(density, want):
    got = layer_densities(SMART_SHAPES, density, "smart-ratio")
    assert list(got) == list(SMART_SHAPES)
    for n in want:
        assert got[n] == pytest.approx(want[n], rel=1e-12), n
    sizes = {n: a * b for n, (a, b) in SMART_SHAPES.items()}
    assert sum(got[n] * sizes[n] for n in sizes) == pytest.approx(density * 260, rel=1e-12)


def test_smart_ratio_through_select_and_edge_cases():
    torch.manual_seed(0)
    scores = {n: torch.rand(s) for n, s in SMART_SHAPES.items()}
    m = select(scores, 0.2, scope="layerwise", distribution="smart-ratio")
    # 0.28·100 = 28, 0.168·100 = 16.8 → 17, 0.084·50 = 4.2 → 4, 0.3·10 = 3
    assert m.layer_counts() == {"a": 28, "b": 17, "c": 4, "out": 3}
    assert m.metadata["distribution"] == "smart-ratio"
    assert layer_densities({"only": (4, 4)}, 0.3, "smart-ratio") == {"only": 0.3}
    # later layers keep less, whatever their size (ERK would favour the small ones)
    d = layer_densities({"x": (8, 8), "y": (100, 100), "z": (8, 8), "out": (10, 10)}, 0.1, "smart-ratio")
    assert d["x"] > d["y"] > d["z"] and d["x"] / d["z"] == pytest.approx(20 / 6)
    with pytest.raises(ConfigError, match="smart-ratio"):
        layer_densities(SMART_SHAPES, 0.2, "smart_ratio")


def test_min_layer_density_guard():
    scores = {"big": torch.arange(100.0) + 100, "small": torch.arange(10.0)}
    plain = select(scores, 0.25, scope="global")  # keeps 28 (27.5 rounded half up)
    assert plain.layer_counts() == {"big": 28, "small": 0}  # the small layer collapses without a guard
    guarded = select(scores, 0.25, scope="global", min_layer_density=0.2)
    assert guarded.layer_counts() == {"big": 26, "small": 2} and guarded.num_kept == exact_count(0.25, 110)
    with pytest.raises(ConfigError, match="min-layer-density"):
        select(scores, 0.01, scope="global", min_layer_density=0.5)


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), "x"])
def test_bad_density(bad):
    with pytest.raises(ConfigError, match="density"):
        select({"a": torch.ones(3)}, bad)


def test_nan_scores_named():
    with pytest.raises(MaskMismatchError, match="'w2'"):
        select({"w1": torch.ones(3), "w2": torch.tensor([1.0, float("nan")])}, 0.5)


def test_select_counts():
    m = select_counts({"a": torch.tensor([3.0, 1.0, 2.0])}, {"a": 2})
    assert m["a"].tolist() == [True, False, True]


# -- mask ------------------------------------------------------------------------------------------------
def test_mask_roundtrip_and_metadata(tmp_path):
    m = Mask({"l.weight": torch.tensor([[1, 0], [1, 1]]).bool()}, {"model": "m", "dataset": "digits"})
    p = m.save(tmp_path / "mask.safetensors", method="snip")
    meta = json.loads((tmp_path / "mask.json").read_text())
    assert meta["model"] == "m" and meta["method"] == "snip" and meta["density"] == 0.75
    assert meta["shapes"] == {"l.weight": [2, 2]} and "ticketsearch_version" in meta
    back = Mask.load(p)
    assert back.equals(m) and back.metadata["dataset"] == "digits"
    assert not list(tmp_path.glob("*.tmp"))


def test_mask_load_bad_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Mask.load(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match="bad.safetensors"):
        Mask.load(bad)
    # a pickle must never be loaded: a torch.save file is rejected, not unpickled
    pk = tmp_path / "pickle.safetensors"
    torch.save({"a": torch.ones(2)}, pk)
    with pytest.raises(DataError):
        Mask.load(pk)


def test_check_shapes_names_every_difference():
    m = Mask({"a": torch.ones(2, 2, dtype=torch.bool), "x": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(MaskMismatchError) as e:
        m.check_shapes({"a": (2, 3), "b": (4,)})
    msg = str(e.value)
    assert (
        "missing from mask: b" in msg
        and "not in the model: x" in msg
        and "'a' has shape [2, 2] in the mask, [2, 3]" in msg
    )


def test_shuffle_keeps_layer_counts():
    torch.manual_seed(0)
    m = select({"a": torch.randn(20, 10), "b": torch.randn(50)}, 0.3, scope="layerwise")
    s = m.shuffled(1)
    assert s.layer_counts() == m.layer_counts() and not s.equals(m)
    assert m.shuffled(1).equals(s)  # a pure function of the seed


# -- registry --------------------------------------------------------------------------------------------
def test_registry_suggests_and_refuses_overwrite():
    r: Registry[int] = Registry("thing")
    r.add("lenet_300_100", 1, description="d")
    with pytest.raises(UnknownNameError, match="did you mean 'lenet_300_100'"):
        r.get("lenet_300")
    with pytest.raises(ValueError, match="already registered"):
        r.add("lenet_300_100", 2)
    assert r.names("lenet*") == ["lenet_300_100"]


def test_plugin_cannot_take_a_builtin_name(monkeypatch):
    import importlib.metadata as md

    class FakeEP:
        name, value, group = "dup", "json:dumps", "g"
        dist = type("D", (), {"name": "evil-plugin"})()

        def load(self):
            return 2

    monkeypatch.setattr(md, "entry_points", lambda group=None: [FakeEP()])
    r: Registry[int] = Registry("thing", entry_point_group="g")
    r.add("dup", 1)
    assert r.get("dup") == 1
    (b,) = r.broken()
    assert b.source == "evil-plugin" and "already taken by built-in" in b.error


# -- hparams ---------------------------------------------------------------------------------------------
def test_hash_stable_across_processes():
    h = RunHparams().hash()
    code = "from ticketsearch.core.hparams import RunHparams; print(RunHparams().hash())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    )
    assert out.stdout.strip() == h
    assert stable_hash({"b": 1, "a": 2}) == stable_hash({"a": 2, "b": 1})


def _variants(cls):
    import dataclasses

    for f in dataclasses.fields(cls):
        v = getattr(cls(), f.name)
        if isinstance(v, bool):
            yield f.name, not v
        elif isinstance(v, int):
            yield f.name, v + 1
        elif isinstance(v, float):
            yield f.name, v + 0.125
        else:
            yield f.name, v + "x"


@pytest.mark.parametrize("group", ["model", "dataset", "training", "pruning"])
def test_every_hparam_changes_the_hash(group):
    import dataclasses

    base = RunHparams()
    sub = getattr(base, group)
    seen = {base.hash()}
    for name, value in _variants(type(sub)):
        h = base.replace(**{group: dataclasses.replace(sub, **{name: value})}).hash()
        assert h not in seen, f"{group}.{name} does not change the hash"
        seen.add(h)
    assert base.replace(method_args=(("k", 1),)).hash() not in seen


def test_hparams_roundtrip():
    hp = RunHparams(
        training=TrainingHparams(lr=0.5), pruning=PruningHparams(method="snip"), method_args=(("a", 1),)
    )
    assert RunHparams.from_dict(json.loads(json.dumps(hp.to_dict()))) == hp


def test_durations():
    assert parse_duration("2ep") == (2, "ep") and parse_duration("500it") == (500, "it")
    with pytest.raises(ConfigError, match="'10 epochs'"):
        parse_duration("10 epochs")
