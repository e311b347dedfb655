"""Every built-in suite is valid data: its datasets, models, methods and knobs exist and its values pass
validation, so a typo in a shipped spec fails here and not an hour into a user's run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ticketsearch.bench import cells_of, load_suite
from ticketsearch.bench.spec import list_suites, suite_dict, suite_from_dict, suite_from_saved
from ticketsearch.core.errors import ConfigError


@pytest.mark.parametrize("name", list_suites())
def test_builtin_suite_validates(name: str) -> None:
    suite = load_suite(name)
    suite.validate()
    assert suite.description and cells_of(suite)
    keys = [c.key for c in cells_of(suite)]
    assert len(keys) == len(set(keys))
    for a in suite.anchors:  # an anchor names a variant and dataset of its own suite
        assert a.variant in {v.name for v in suite.variants}
        assert a.dataset in {d.dataset for d in suite.datasets}


def test_snip_paper_is_snips_setup() -> None:
    suite = load_suite("snip-paper")
    (entry,) = suite.datasets
    t = entry.training
    assert (t["optimizer"], t["lr"], t["momentum"], t["weight_decay"], t["batch_size"]) == (
        "sgd", 0.1, 0.9, 5e-4, 100,
    )  # fmt: skip
    assert {0.05, 0.02} <= set(suite.densities)  # 95% and 98% sparsity, the paper's LeNet-300-100 rows
    for v in suite.variants:
        assert v.pruning == {"scope": "global", "score_batches": 1, "score_batch_size": 100}


# -- the variant fields that let a suite hold a one-off script's grid (issue 21) -------------------------------

# spec hashes (the queue names of `bench --storage`) computed on main at 797600b, before the variant fields
# densities / training / controls / metrics existed: a field added at its default renames no queue
SPEC_HASHES = {
    "cifar": "b16bea6ed5",
    "dynamic-sparse": "b4e6ba9f1d",
    "frontier": "317745219e",
    "moving-masks": "52f479307e",
    "paper": "bab02e286b",
    "quick": "fa9501231f",
    "smoke": "98d1612cc1",
    "snip-paper": "da47ec0ed6",
}


@pytest.mark.parametrize("name", sorted(SPEC_HASHES))
def test_existing_suites_keep_their_queue_names(name: str) -> None:
    from ticketsearch.bench.queue import spec_hash

    assert spec_hash(load_suite(name)) == SPEC_HASHES[name]


def test_overridden_suites_keep_their_queue_names() -> None:
    from ticketsearch.bench.queue import spec_hash

    assert spec_hash(load_suite("quick").with_overrides(methods=["imp", "snip"], seeds=1)) == "7b02c634f7"
    assert spec_hash(load_suite("smoke").with_overrides(seeds=2)) == "6c143e4553"


def _spec(**variant: Any) -> dict[str, Any]:
    return {
        "name": "tiny",
        "description": "a test suite",
        "datasets": [{"dataset": "digits", "model": "mlp_digits", "training": {"budget": "1ep"}}],
        "methods": [{"name": "v", **variant}],
        "densities": [0.5],
        "seeds": 1,
    }


def test_suite_dict_leaves_out_later_fields_at_their_defaults_and_reads_back() -> None:
    plain = suite_from_dict(_spec(method="imp"), source="t")
    assert set(suite_dict(plain)["variants"][0]) == {"name", "method", "pruning", "args", "then_train"}
    full = suite_from_dict(
        _spec(
            method="supermask-bernoulli",
            densities=[0.5, 0.3],
            training={"budget": "2ep"},
            metrics=["learned_density"],
        ),
        source="t",
    )
    saved = suite_dict(full)["variants"][0]
    assert saved["densities"] == (0.5, 0.3) and saved["training"] == {"budget": "2ep"}
    assert "controls" not in saved
    # suite.json (and a queue's stored suite) read back into the same suite, new fields included
    roundtrip = json.loads(json.dumps(suite_dict(full)))
    assert suite_from_saved(roundtrip) == full
    assert suite_from_saved(json.loads(json.dumps(suite_dict(plain)))) == plain


def test_variant_densities_training_and_cells() -> None:
    from ticketsearch.bench.runner import DENSE, _entry, _hparams

    s = suite_from_dict(
        {
            **_spec(method="supermask", densities=[0.3], training={"budget": "7ep"}),
            "methods": [
                "imp",
                {"name": "v", "method": "supermask", "densities": [0.3], "training": {"budget": "7ep"}},
                {"name": "w", "method": "snip", "training": {"lr": 0.05}},
            ],
        },
        source="t",
    )
    s.validate()
    assert [(c.variant, c.density) for c in cells_of(s)] == [
        (DENSE, 1.0), ("imp", 0.5), ("v", 0.3), ("w", 0.5),
    ]  # fmt: skip
    cells = {c.variant: c for c in cells_of(s)}
    v = next(x for x in s.variants if x.name == "v")
    hp, weights = _hparams(_entry(s, cells["v"]), v, 0.3)
    # a learned method's override lands on its score recipe; the weights' recipe (dense, then-train) stays
    assert hp.training.budget == "7ep" and hp.training.optimizer == "sgd" and weights.budget == "1ep"
    w = next(x for x in s.variants if x.name == "w")
    hp, weights = _hparams(_entry(s, cells["w"]), w, 0.5)
    assert (hp.training.lr, hp.training.budget, weights.lr) == (0.05, "1ep", weights.lr)
    assert weights.lr != 0.05


@pytest.mark.parametrize(
    "variant,match",
    [
        ({"method": "supermask", "controls": ["reinit"]}, "controls do not apply"),
        ({"method": "imp", "controls": ["reinitt"]}, "unknown control"),
        ({"method": "imp", "controls": "reinit"}, "must be a list"),
        ({"method": "imp", "training": {"budgt": "1ep"}}, "unknown training key"),
        ({"method": "imp", "training": {"lr": -1}}, "lr"),
        ({"method": "imp", "densities": [1.5]}, "density"),
        ({"method": "imp", "densities": [0.5, 0.5]}, "twice"),
        ({"method": "imp", "metrics": [""]}, "metrics"),
    ],
)
def test_a_bad_variant_field_is_one_line_before_any_training(
    variant: dict[str, Any], match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec(**variant)
    with pytest.raises(ConfigError, match=match):
        suite_from_dict(spec, source="t").validate()
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    from ticketsearch.cli import main

    code = main(["bench", "--suite", str(path), "--root", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert not (tmp_path / "runs").exists()


def test_a_bad_dataset_training_key_is_one_line() -> None:
    spec = _spec(method="imp")
    spec["datasets"][0]["training"] = {"optimiser": "sgd"}
    with pytest.raises(ConfigError, match="unknown training key"):
        suite_from_dict(spec, source="t").validate()


def test_a_suite_with_variant_fields_runs_and_records(tmp_path: Path) -> None:
    """On digits, 1 epoch: IMP's reinit control asked by the variant (no sanity checks), a supermask at its
    own density and budget, Bernoulli's extra metrics."""
    from ticketsearch.bench import read_records
    from ticketsearch.cli import main

    spec = _spec(method="imp", controls=["reinit"])
    spec["densities"] = [0.8]  # IMP's first level: one ticket and one control
    spec["datasets"][0]["score_budget"] = "1ep"
    spec["methods"] += [
        {"name": "sm", "method": "supermask", "densities": [0.3], "training": {"budget": "2ep"}},
        {"name": "bern", "method": "supermask-bernoulli", "metrics": ["expected_mask_test_acc", "nothing"]},
    ]
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    out, root = tmp_path / "out", tmp_path / "runs"
    code = main(["bench", "--suite", str(path), "--root", str(root), "--out", str(out), "--no-progress"])
    assert code == 0
    recs = {r["variant"]: r for r in read_records(out / "results.jsonl")}
    assert all(r["status"] == "ok" for r in recs.values()), recs
    assert set(recs["v"]["sanity"]) == {"reinit"} and set(recs["v"]["sanity_es"]) == {"reinit"}
    assert 0 <= recs["v"]["sanity"]["reinit"] <= 1
    assert recs["sm"]["density"] == 0.3 and recs["sm"]["hparams"]["training"]["budget"] == "2ep"
    assert recs["sm"]["sanity"] == {} and "metrics" not in recs["sm"]
    metrics = recs["bern"]["metrics"]
    assert 0 <= metrics["expected_mask_test_acc"] <= 1 and metrics["nothing"] is None
    saved = suite_from_saved(json.loads((out / "suite.json").read_text()))
    assert saved == load_suite(str(path))
