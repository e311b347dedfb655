"""Every built-in suite is valid data: its datasets, models, methods and knobs exist and its values pass
validation, so a typo in a shipped spec fails here and not an hour into a user's run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ticketsearch.bench import cells_of, load_suite
from ticketsearch.bench.spec import list_suites, suite_from_dict, suite_from_saved
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
# densities / training / controls / metrics existed (frontier and patterns: on main at 9f5f516, before the
# fields training / controls / metrics were merged): a field added at its default renames no queue
SPEC_HASHES = {
    "cifar": "b16bea6ed5",
    "dynamic-sparse": "b4e6ba9f1d",
    "frontier": "22a02eef0b",
    "moving-masks": "52f479307e",
    "paper": "b7370a0223",  # renamed on purpose 2026-12-07: the frontier methods added (issue 20); never recorded
    "patterns": "b9cd7c9c55",
    "patterns-vit": "10664ec5a5",  # added 2026-12-07
    "quick": "1211b0ed06",  # renamed on purpose: its trainings evaluate once, at the end (issue 21 part 4)
    "smoke": "98d1612cc1",
    "snip-paper": "da47ec0ed6",
}


@pytest.mark.parametrize("name", sorted(SPEC_HASHES))
def test_existing_suites_keep_their_queue_names(name: str) -> None:
    from ticketsearch.bench.queue import spec_hash

    assert spec_hash(load_suite(name)) == SPEC_HASHES[name]


def test_overridden_suites_keep_their_queue_names() -> None:
    from ticketsearch.bench.queue import spec_hash

    assert spec_hash(load_suite("quick").with_overrides(methods=["imp", "snip"], seeds=1)) == "0b9ea2eb2e"
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


def test_saved_form_leaves_out_later_fields_at_their_defaults_and_reads_back() -> None:
    plain = suite_from_dict(_spec(method="imp"), source="t")
    assert set(plain.saved()["variants"][0]) == {"name", "method", "pruning", "args", "then_train"}
    full = suite_from_dict(
        _spec(
            method="supermask-bernoulli",
            densities=[0.5, 0.3],
            training={"budget": "2ep"},
            metrics=["learned_density"],
        ),
        source="t",
    )
    saved = full.saved()["variants"][0]
    assert saved["densities"] == (0.5, 0.3) and saved["training"] == {"budget": "2ep"}
    assert "controls" not in saved
    # suite.json (and a queue's stored suite) read back into the same suite, new fields included
    roundtrip = json.loads(json.dumps(full.saved()))
    assert suite_from_saved(roundtrip) == full
    assert suite_from_saved(json.loads(json.dumps(plain.saved()))) == plain


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


def test_evaluate_end_evaluates_every_training_once_at_its_end(tmp_path: Path) -> None:
    """``"evaluate": "end"``: the weights' recipe, a learned method's score recipe and a variant's own
    budget all evaluate once, at the end; a real cell's runs then hold one history entry per training."""
    from ticketsearch.bench.runner import _entry, _hparams, run_cell

    spec = {
        **_spec(method="imp"),
        "methods": ["snip", {"name": "sm", "method": "supermask", "training": {"budget": "3ep"}}],
        "evaluate": "end",
    }
    s = suite_from_dict(spec, source="t")
    s.validate()
    assert s.saved()["evaluate"] == "end" and suite_from_saved(json.loads(json.dumps(s.saved()))) == s
    assert "evaluate" not in suite_from_dict(_spec(method="imp"), source="t").saved()
    cells = {c.variant: c for c in cells_of(s)}
    for name, budget in (("snip", "1ep"), ("sm", "3ep")):
        v = next(x for x in s.variants if x.name == name)
        hp, weights = _hparams(_entry(s, cells[name]), v, 0.5, s.evaluate)
        assert (hp.training.budget, hp.training.eval_every, hp.training.eval_start) == (budget, budget, False)
        assert (weights.eval_every, weights.eval_start) == (weights.budget, False)
    rec = run_cell(s, cells["snip"], root=tmp_path / "runs", data_root=None, device="cpu")
    assert rec["status"] == "ok", rec
    histories = [p.read_text().splitlines() for p in (tmp_path / "runs").rglob("metrics.jsonl")]
    assert histories and all(len(h) == 1 and json.loads(h[0])["iteration"] > 0 for h in histories)
    with pytest.raises(ConfigError, match="unknown evaluate 'start'"):
        suite_from_dict({**spec, "evaluate": "start"}, source="t").validate()


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


def test_suite_command_names_every_flag_that_changes_the_run() -> None:
    from ticketsearch.bench.runner import suite_command

    assert suite_command("quick", root="runs", out="out dir") == (
        "python -m ticketsearch bench --suite quick --root runs --out 'out dir' --workers 1"
    )
    assert suite_command(
        "my.json",
        root="r",
        out="o",
        data_root="../d",
        workers=2,
        device="cuda",
        methods=["imp", "snip"],
        seeds=3,
        datasets=["mnist", "digits/mlp_digits"],
    ) == (
        "python -m ticketsearch bench --suite my.json --root r --out o --data-root ../d --device cuda "
        "--workers 2 --methods imp,snip --seeds 3 --datasets mnist,digits/mlp_digits"
    )


def test_report_prints_the_recorded_command_and_nothing_without_one(tmp_path: Path) -> None:
    from ticketsearch.bench import write_report
    from ticketsearch.bench.runner import write_command

    rec = {
        "key": "d/m|dense|1|0", "dataset": "d", "model": "m", "variant": "dense", "density": 1.0, "seed": 0,
        "status": "ok", "test_acc": 0.9, "density_kept": 1.0,
    }  # fmt: skip
    write_report([rec], tmp_path)
    assert "Reproduce:" not in (tmp_path / "report.md").read_text()
    (tmp_path / "command.json").write_text("{not json")
    write_report([rec], tmp_path)  # an unreadable command.json: no command, no failure
    assert "Reproduce:" not in (tmp_path / "report.md").read_text()
    write_command(tmp_path, "python -m ticketsearch bench --suite smoke --root r --out o --workers 1")
    write_report([rec], tmp_path)
    head = (tmp_path / "report.md").read_text().splitlines()[:4]
    assert "Reproduce: `python -m ticketsearch bench --suite smoke --root r --out o --workers 1`" in head


def test_a_suite_with_variant_fields_runs_records_and_prints_its_command(tmp_path: Path) -> None:
    """On digits, 1 epoch: IMP's reinit control asked by the variant (no sanity checks), SNIP at its own
    density and budget keeping extra result fields; the folder's command.json and report header. (No
    supermask here: its compiled kernel would be built first; the score recipe's override is checked above.)"""
    from ticketsearch.bench import read_records
    from ticketsearch.cli import main

    spec = _spec(method="imp", controls=["reinit"])
    spec["densities"] = [0.8]  # IMP's first level: one ticket and one control
    spec["methods"].append(
        {
            "name": "sn",
            "method": "snip",
            "densities": [0.3],
            "training": {"budget": "2ep"},
            "metrics": ["es_iteration", "nothing"],
        }
    )
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    out, root = tmp_path / "out", tmp_path / "runs"
    code = main(["bench", "--suite", str(path), "--root", str(root), "--out", str(out), "--no-progress"])
    assert code == 0
    recs = {r["variant"]: r for r in read_records(out / "results.jsonl")}
    assert all(r["status"] == "ok" for r in recs.values()), recs
    assert set(recs["v"]["sanity"]) == {"reinit"} and set(recs["v"]["sanity_es"]) == {"reinit"}
    assert 0 <= recs["v"]["sanity"]["reinit"] <= 1
    assert "metrics" not in recs["v"] and "sanity_es" not in recs["sn"]
    assert recs["sn"]["density"] == 0.3 and recs["sn"]["hparams"]["training"]["budget"] == "2ep"
    assert recs["sn"]["sanity"] == {}  # no sanity checks in this suite, no controls asked
    assert recs["sn"]["metrics"] == {"es_iteration": recs["sn"]["es_iteration"], "nothing": None}
    assert recs["dense"]["hparams"]["training"]["budget"] == "1ep"  # the dataset's, not the variant's
    command = f"python -m ticketsearch bench --suite {path} --root {root} --out {out} --workers 1"
    assert json.loads((out / "command.json").read_text())["command"] == command
    assert f"Reproduce: `{command}`" in (out / "report.md").read_text()
    saved = suite_from_saved(json.loads((out / "suite.json").read_text()))
    assert saved == load_suite(str(path))


def test_a_queue_run_records_the_local_command_that_reproduces_it(tmp_path: Path) -> None:
    """``bench --storage``: the same cells run locally reproduce the folder, so its command needs no
    database (and never holds the storage URL, which may carry a password)."""
    from ticketsearch.cli import main

    spec = _spec(method="snip")
    spec["methods"] = ["snip"]
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    out, root = tmp_path / "out", tmp_path / "runs"
    url = f"sqlite:///{tmp_path / 'q.db'}"
    argv = ["bench", "--suite", str(path), "--root", str(root), "--out", str(out), "--no-progress"]
    assert main([*argv, "--storage", url]) == 0
    text = (out / "command.json").read_text()
    assert "sqlite" not in text and "q.db" not in text
    command = json.loads(text)["command"]
    assert command == f"python -m ticketsearch bench --suite {path} --root {root} --out {out} --workers 1"
    assert f"Reproduce: `{command}`" in (out / "report.md").read_text()


def _identities(name: str) -> dict[str, str]:
    """variant -> the run identity of its cells (one per variant in these suites: IMP's is density-free)."""
    from ticketsearch.bench.runner import DENSE, _entry, _hparams
    from ticketsearch.methods import get_method

    suite = load_suite(name)
    out: dict[str, str] = {}
    for cell in cells_of(suite):
        if cell.variant == DENSE:
            continue
        variant = next(v for v in suite.variants if v.name == cell.variant)
        hp, _ = _hparams(_entry(suite, cell), variant, cell.density)
        method = get_method(hp.pruning.method)
        out[cell.variant] = f"{hp.pruning.method}_{method.identity(method.canonical(hp))}"
    return out


def test_imp_lenet_mnist_is_the_removed_scripts_setup() -> None:
    """benchmarks/imp_lenet_mnist.py (removed at issue 21) trained this very IMP run (Frankle & Carbin's
    Adam 1.2e-3, batch 60, 20% / 10% per level, layerwise, 10K iterations, eval every 500): the suite
    reuses its levels under the same --root; its reinit control is now the variant's control."""
    suite = load_suite("imp-lenet")
    assert _identities("imp-lenet") == {"imp": "imp_ea612be40c21"}
    (imp,) = suite.variants
    assert imp.controls == ("reinit",) and not suite.sanity
    assert suite.densities == (0.512, 0.211, 0.07, 0.036) and suite.seeds == (0, 1)


def test_smallest_mnist_names_the_removed_scripts_runs() -> None:
    """benchmarks/smallest_mnist.py's runs, by name (the IMP run is also moving-masks' own)."""
    assert _identities("smallest-lenet") == {
        "imp": "imp_347195445e08",
        "imp-lr-rewind": "imp_21fcdea10638",
        "snip": "snip_fc4ed7d144af",
        "synflow": "synflow_ce26cd4c6992",
        "supermask": "supermask_f2dc488cdaa4",
        "early-bird": "early-bird_3206bf73bac7",
    }
    small = load_suite("smallest-lenet").smallest
    assert small is not None and (small.tolerance, small.min_density, small.precision) == (0.5, 1e-3, 0.1)


def test_supermask_suites_hold_the_scripts_grid() -> None:
    """Edge-popup at the script's k, Bernoulli at 0.5 with its expected mask kept, the MNIST-1D budgets."""
    from ticketsearch.bench.runner import DENSE

    mnist = load_suite("supermask-lenet")
    grid = {(c.dataset, c.variant, c.density) for c in cells_of(mnist) if c.variant != DENSE}
    for ds in ("mnist", "fashion_mnist"):
        assert {(ds, "edge-popup", k) for k in (0.1, 0.3, 0.5, 0.7)} | {(ds, "bernoulli", 0.5)} == {
            g for g in grid if g[0] == ds
        }
    one_d = load_suite("supermask-mnist1d")
    budgets = {v.name: v.training.get("budget") for v in one_d.variants}
    assert budgets == {
        "edge-popup": None, "edge-popup-100ep": "100ep", "edge-popup-300ep": "300ep",
        "bernoulli": None, "bernoulli-100ep": "100ep", "bernoulli-300ep": "300ep",
    }  # fmt: skip
    assert {d.model for d in one_d.datasets} == {"mlp_mnist1d", "cnn_mnist1d"}
    for v in (*mnist.variants, *one_d.variants):
        if v.method == "supermask-bernoulli":
            assert v.densities == (0.5,) and "expected_mask_test_acc" in v.metrics


def test_snip_paper_adam_is_snips_adam_row() -> None:
    suite = load_suite("snip-paper-adam")
    (entry,) = suite.datasets
    t = entry.training
    assert (t["optimizer"], t["lr"], t["batch_size"], t["budget"]) == ("adam", 1e-3, 100, "40ep")
    sgd = load_suite("snip-paper").datasets[0].training
    assert {k: t[k] for k in ("schedule", "milestones", "gamma", "eval_every")} == {
        k: sgd[k] for k in ("schedule", "milestones", "gamma", "eval_every")
    }
    assert (
        suite.densities == (0.1,)
        and suite.variants[0].pruning == load_suite("snip-paper").variants[0].pruning
    )
