"""The benchmark suite: smoke end to end, resume after a worker is killed, the report by hand, bad specs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from procs import spawned_children

from ticketsearch.bench import aggregate, cells_of, load_suite, read_records, write_report
from ticketsearch.bench.report import _y_floor
from ticketsearch.bench.runner import write_timing
from ticketsearch.bench.spec import suite_from_dict
from ticketsearch.core.errors import ConfigError, UnknownNameError

REPO = Path(__file__).resolve().parents[1]


def _bench(*args: str) -> list[str]:
    return [sys.executable, "-m", "ticketsearch", "bench", "--no-progress", *args]


def test_smoke_suite_end_to_end(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(
        _bench("--suite", "smoke", "--root", str(tmp_path / "runs"), "--out", str(out)),
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    records = read_records(out / "results.jsonl")
    suite = load_suite("smoke")
    assert sorted(x["key"] for x in records) == sorted(c.key for c in cells_of(suite))
    assert all(x["status"] == "ok" for x in records)
    snip = [x for x in records if x["variant"] == "snip"]
    assert all(set(x["sanity"]) == {"reinit", "shuffle", "invert"} for x in snip)
    assert all(x["cost_to_find"]["backward_passes"] == 1 for x in snip)  # SNIP: one backward pass
    imp = [x for x in records if x["variant"] == "imp"]
    assert len({x["run"].split("/replicate_")[0] for x in imp}) == 1  # one IMP run serves every density
    assert all(x["provenance"]["ticketsearch"] for x in records)
    # each record says where its ticket keeps weights: the mask file's own per-layer fractions
    from ticketsearch.core.mask import Mask

    for x in records:
        mask = Mask.load(Path(x["run"]) / "mask.safetensors")
        want = {n: int(t.sum()) / t.numel() for n, t in mask.items()}
        assert x["layer_density"] == pytest.approx(want, abs=1e-6)
    assert all(
        x["layer_density"] == {n: 1.0 for n in x["layer_density"]} for x in records if x["variant"] == "dense"
    )
    csv_lines = (out / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("dataset,variant,density,n,acc_mean") and len(csv_lines) == 6
    md = (out / "report.md").read_text()
    # the time budget: training steps summed over the cells (+ the smallest search) against worker time
    timing = json.loads((out / "timing.json").read_text())
    cell_steps = sum(x["time_split"]["steps"] for x in records)
    assert 0 < cell_steps <= timing["training_step_s"] + 1e-3 < timing["worker_seconds"]
    assert timing["cells_run"] == len(records) and 0 < timing["outside_steps_fraction"] < 1
    # one worker: the search ran after the cells, on that worker, and its steps count in the budget
    (small,) = read_records(out / "smallest.jsonl")
    assert timing["searches_run"] == 1 and timing["searches_in_pool"] and timing["smallest_wall_s"] == 0
    assert timing["training_step_s"] == pytest.approx(cell_steps + small["time_split"]["steps"], abs=1e-3)
    assert "## Where the time went" in md
    for section in (
        "## digits/mlp_digits",
        "Dense network",
        "Cost to find",
        "Sanity checks",
        "| snip | 50% |",
    ):
        assert section in md, section
    # the smallest-ticket section: one search, decided on validation, reusing the suite's dense run
    (small,) = read_records(out / "smallest.jsonl")
    assert small["status"] == "ok" and small["variant"] == "snip" and "## Smallest tickets" in md
    ans, dense = small["answer"], small["dense"]
    assert ans["val_mean"] >= dense["val_mean"] - 0.01
    dense_run = next(x["run"] for x in records if x["variant"] == "dense")
    assert dense["runs"] == [dense_run]
    import matplotlib.image

    for name in ("accuracy", "cost", "sanity"):
        img = matplotlib.image.imread(out / f"{name}_digits_mlp_digits.png")
        assert img.ndim == 3 and min(img.shape[:2]) > 100
    # the report rebuilds from the records alone, identically
    before = md
    (out / "report.md").unlink()
    assert (
        subprocess.run(_bench("--report", str(out)), cwd=REPO, capture_output=True, text=True).returncode == 0
    )
    assert (out / "report.md").read_text() == before


def test_resume_after_a_worker_is_killed(tmp_path):
    out = tmp_path / "out"
    cmd = _bench("--suite", "smoke", "--workers", "2", "--root", str(tmp_path / "runs"), "--out", str(out))
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = out / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (results.is_file() and results.read_text().count("\n") >= 1):
        assert p.poll() is None, p.stderr.read() if p.stderr else ""
        time.sleep(0.05)
    workers = spawned_children(p.pid)
    assert workers, "no worker process found"
    os.kill(workers[0], signal.SIGKILL)
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr
    records = read_records(results)
    keys = [x["key"] for x in records]
    assert sorted(keys) == sorted(c.key for c in cells_of(load_suite("smoke")))  # none lost, none twice
    assert all(x["status"] == "ok" for x in records)
    # the smallest-ticket search ran in the pool, among the cells, not after them in this process: its
    # training steps are in the workers' time, and no time went to searches after the pool
    (small,) = read_records(out / "smallest.jsonl")
    timing = json.loads((out / "timing.json").read_text())
    assert small["status"] == "ok" and small["time_split"]["steps"] > 0
    assert timing["searches_run"] == 1 and timing["searches_in_pool"] and timing["smallest_wall_s"] < 1.0
    assert "cells and 1 smallest-ticket searches on 2 worker(s)" in (out / "report.md").read_text()
    # a second run finds every cell done and recomputes nothing
    mtime = results.stat().st_mtime_ns
    small_mtime = (out / "smallest.jsonl").stat().st_mtime_ns
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and results.stat().st_mtime_ns == mtime
    assert (out / "smallest.jsonl").stat().st_mtime_ns == small_mtime  # the search is not repeated


def _rec(variant, density, seed, acc, **kw):
    return {
        "key": f"d/m|{variant}|{density}|{seed}", "dataset": "d", "model": "m", "variant": variant,
        "density": density, "seed": seed, "status": "ok", "test_acc": acc, "density_kept": density, **kw,
    }  # fmt: skip


def test_report_from_fixed_records_matches_hand_computation(tmp_path):
    records = [
        _rec("dense", 1.0, 0, 0.98),
        _rec("imp", 0.2, 0, 0.97), _rec("imp", 0.2, 1, 0.95),
        _rec("snip", 0.2, 0, 0.96), _rec("snip", 0.2, 1, 0.98, sanity={"shuffle": 0.90}),
        _rec("snip", 0.05, 0, 0.90), _rec("imp", 0.05, 0, 0.93),
        {"key": "d/m|grasp|0.2|0", "dataset": "d", "model": "m", "variant": "grasp", "density": 0.2, "seed": 0,
         "status": "failed", "error": "ConfigError: the mask keeps no weight of layer(s) fc.weight"},
    ]  # fmt: skip
    rows = {(r["variant"], r["density"]): r for r in aggregate(records)}
    assert rows[("imp", 0.2)]["acc_mean"] == pytest.approx(0.96)
    assert rows[("imp", 0.2)]["acc_std"] == pytest.approx(0.0141421356, rel=1e-6)  # stdev(0.97, 0.95)
    assert (
        rows[("snip", 0.2)]["acc_mean"] == pytest.approx(0.97) and rows[("snip", 0.2)]["shuffle_mean"] == 0.90
    )
    write_report(records, tmp_path)
    md = (tmp_path / "report.md").read_text()
    # snip (97.00) beats imp (96.00) at 20%; imp (93.00) beats snip (90.00) at 5%
    assert "| imp | 96.00 ± 1.41 | **93.00 ± 0.00** |" in md
    assert "| snip | **97.00 ± 1.41** | 90.00 ± 0.00 |" in md
    assert "Dense network, same budget: 98.00 ± 0.00%" in md
    assert "| snip | 20% | 97.00 | - | -7.00 (hurts) | - |" in md
    assert "## Failed cells" in md and "d/m|grasp|0.2|0" in md and "keeps no weight" in md


@pytest.mark.parametrize(
    "change,match",
    [
        ({"methods": ["snp"]}, "did you mean 'snip'"),
        ({"datasets": [{"dataset": "digits", "model": "lenet300"}]}, "unknown model"),
        ({"datasets": [{"dataset": "mnits", "model": "lenet_300_100"}]}, "unknown dataset"),
        ({"densities": [0.0]}, "density"),
        ({"methods": [{"name": "x", "method": "imp", "colour": "red"}]}, "unknown key"),
        ({"methods": [{"name": "s", "method": "snip", "args": {"temprature": 1}}]}, "temprature"),
        # a density sweep stops at N/M: smoke's 0.5 is above 1:4's quarter
        (
            {"methods": [{"name": "s14", "method": "snip", "pruning": {"pattern": "1:4"}}]},
            r"method 's14' asks density 0.5, above what pattern 1:4 keeps \(0.25\); give it its own",
        ),
        (
            {"methods": [{"name": "s", "method": "snip", "pruning": {"pattern": "1:4"}, "densities": [0.3]}]},
            "asks density 0.3, above what pattern 1:4",
        ),
        ({"methods": [{"name": "s", "method": "snip", "densities": [0.0]}]}, "density of suite method 's'"),
        (
            {"methods": [{"name": "sb", "method": "supermask-bernoulli", "pruning": {"pattern": "2:4"}}]},
            "select=threshold",
        ),
        (
            {
                "methods": [
                    {"name": "s", "method": "snip", "pruning": {"pattern": "2:4"}, "densities": [0.2]}
                ],
                "smallest": {"variants": ["s"], "min_density": 0.5},
            },
            "smallest min_density 0.5 is not below 0.5",
        ),
    ],
)
def test_a_bad_spec_fails_before_any_training(change, match, tmp_path, capsys):
    base = json.loads((REPO / "ticketsearch" / "bench" / "suites" / "smoke.json").read_text())
    spec = {**base, **change}
    with pytest.raises((ConfigError, UnknownNameError), match=match):
        suite_from_dict(spec, source="test").validate()
    path = tmp_path / "suite.json"
    path.write_text(json.dumps(spec))
    from ticketsearch.cli import main

    code = main(["bench", "--suite", str(path), "--root", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "runs").exists()


def test_a_corrupt_results_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "results.jsonl"
    good = json.dumps(_rec("imp", 0.2, 0, 0.97))
    path.write_text(good + "\n{torn li\n" + json.dumps([1, 2]) + "\n" + good.replace("|0", "|1") + "\n")
    warnings: list[str] = []
    records = read_records(path, warn=warnings.append)
    assert len(records) == 2
    assert len(warnings) == 2 and "line 2" in warnings[0] and "line 3" in warnings[1]


def test_unknown_suite_suggests():
    with pytest.raises(ConfigError, match="did you mean 'smoke'"):
        load_suite("smok")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--workers", "0"], "--workers"),
        (["--seeds", "0"], "--seeds"),
        (["--device", "tpu"], "device 'tpu'"),
        (["--methods", "imp,snp"], "'snp'"),
        (["--datasets", "mnist"], "no dataset 'mnist'"),
        (["--report", "nowhere"], "results.jsonl"),
    ],
)
def test_bad_bench_flags_are_one_line(args, needle, capsys, tmp_path):
    from ticketsearch.cli import main

    code = main(["bench", "--suite", "smoke", "--root", str(tmp_path / "runs"), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and needle in err, err
    assert not (tmp_path / "runs").exists()


def test_timing_fraction_by_hand(tmp_path):
    recs = [{"time_split": {"steps": 3.0, "eval": 0.5}}, {"time_split": {"steps": 5.0, "eval": 1.0}}]
    t = write_timing(
        tmp_path / "timing.json", recs, workers=2, cells_wall=5.0, smallest_wall=2.0,
        smallest_split={"steps": 1.0, "eval": 0.25},
    )  # fmt: skip
    # capacity 2 × 5 + 2 = 12 worker-seconds, 9 s of steps: 25% outside; eval 1.75 / 12
    assert t["worker_seconds"] == 12.0 and t["training_step_s"] == 9.0
    assert t["outside_steps_fraction"] == 0.25 and t["evaluation_fraction"] == round(1.75 / 12, 4)
    assert json.loads((tmp_path / "timing.json").read_text()) == t
    # a kernel built on first use (4 s in a cell, 0.5 s in the searches) is stated and leaves the capacity
    recs[0]["time_split"]["build"] = 4.0
    t = write_timing(
        tmp_path / "timing.json", recs, workers=2, cells_wall=7.0, smallest_wall=2.0,
        smallest_split={"steps": 1.0, "eval": 0.25, "build": 0.5},
    )  # fmt: skip
    # capacity 2 × 7 + 2 - 4.5 = 11.5 worker-seconds, 9 s of steps: 2.5 s outside
    assert t["kernel_build_s"] == 4.5 and t["worker_seconds"] == 11.5
    assert t["outside_steps_fraction"] == round(2.5 / 11.5, 4)
    # the searches' clocks add up key by key; a caller's extra fields land in the same one write
    from ticketsearch.bench.runner import sum_splits

    assert sum_splits([{"steps": 1.0}, None, {"steps": 0.5, "eval": 0.25}]) == {"steps": 1.5, "eval": 0.25}
    t = write_timing(
        tmp_path / "timing.json", recs, workers=2, cells_wall=7.0, smallest_wall=0.0,
        smallest_split={}, extra={"searches_run": 3},
    )  # fmt: skip
    assert t["searches_run"] == 3 and json.loads((tmp_path / "timing.json").read_text()) == t


def test_accuracy_axis_floor_names_what_it_hides():
    rows = [
        {"variant": "imp", "density_kept": 0.1, "acc_mean": 0.97},
        {"variant": "snip", "density_kept": 0.1, "acc_mean": 0.95},
        {"variant": "grasp", "density_kept": 0.02, "acc_mean": 0.113},
    ]
    lo, off = _y_floor(rows)
    assert lo == 97.0 - 25.0 and off == ["grasp at 2% (11.3%)"]
    assert _y_floor(rows[:2]) == (None, [])


def test_total_cost_adds_what_the_reported_accuracy_took():
    from ticketsearch.bench.runner import total_cost

    # one-shot: scoring passes, then the ticket's own training
    row = {"iterations": 1000, "wall_time": 10.0}
    assert total_cost(row, {"backward_passes": 3, "wall_time": 0.5}, includes_training=False) == {
        "steps": 1003.0,
        "wall_time": 10.5,
    }
    # IMP: a level's cost_to_find already runs through its own training
    assert total_cost(row, {"backward": 5000, "wall_time": 50.0}, includes_training=True) == {
        "steps": 5000.0,
        "wall_time": 50.0,
    }
    # a supermask: untrained weights (its iterations are the search's), then-trained on top
    sm = {
        "iterations": 400,
        "wall_time": 4.0,
        "weights_trained": False,
        "then_train": {"iterations": 1000, "wall_time": 9.0},
    }
    assert total_cost(sm, {"backward": 400, "wall_time": 4.0}, includes_training=False) == {
        "steps": 400.0,
        "wall_time": 4.0,
        "then_train_steps": 1400.0,
        "then_train_wall_time": 13.0,
    }


def test_pareto_front_keeps_what_nothing_beats():
    from ticketsearch.bench.report import _pareto_front

    pts = [(1.0, 90.0), (2.0, 89.0), (2.0, 93.0), (4.0, 92.0), (16.0, 98.0), (1.0, 85.0)]
    assert _pareto_front(pts) == [(1.0, 90.0), (2.0, 93.0), (16.0, 98.0)]


def test_the_answer_names_who_wins_and_checks_the_cheap_target(tmp_path):
    from ticketsearch.bench.report import _answer_section, aggregate

    def rec(variant, method, acc, steps, density=0.036, seed=0):
        return {
            "status": "ok",
            "dataset": "mnist",
            "model": "lenet",
            "variant": variant,
            "method": method,
            "density": density,
            "density_kept": density,
            "test_acc": acc,
            "seed": seed,
            "total_cost": {"steps": steps, "wall_time": 1.0},
        }

    records = [
        rec("dense", "imp", 0.980, 5000, density=1.0),
        rec("imp", "imp", 0.981, 80000),
        rec("gmp-ticket", "gmp", 0.977, 10000),  # -0.4 pt for 12.5% of IMP's steps: meets the target
        rec("cs-ticket", "cs", 0.979, 20000),  # closer, but 25% of IMP's steps
        rec("snip", "snip", 0.970, 5001),
    ]
    text = "\n".join(_answer_section("mnist/lenet", aggregate(records), tmp_path))
    assert "| imp ★ | 3.6% |" in text and "| 16.00 | 1.00 |" in text
    assert "the best ticket is imp (98.10%, 16.0× a dense training)" in text
    assert "the best other method, cs-ticket, is -0.20 pt from imp for 25% of its cost" in text
    assert "for ≤ 20% of its cost: gmp-ticket (97.70%)" in text
    # within 0.5 pt of dense (98.00%) without IMP: cs-ticket (97.90) and gmp-ticket (97.70); on a density tie the more accurate
    assert "found without `imp`: cs-ticket at 3.6% (97.90%)" in text
    assert (tmp_path / "pareto_mnist_lenet.png").is_file()


def test_a_variant_with_its_own_densities_asks_only_those() -> None:
    base = json.loads((REPO / "ticketsearch" / "bench" / "suites" / "smoke.json").read_text())
    spec = {
        **base,
        "methods": [
            "imp",
            {"name": "snip-1of4", "method": "snip", "pruning": {"pattern": "1:4"}, "densities": [0.2]},
        ],
        "smallest": None,
    }
    suite = suite_from_dict(spec, source="test")
    suite.validate()
    cells = [(c.variant, c.density) for c in cells_of(suite)]
    assert cells == [("dense", 1.0), ("imp", 0.5), ("imp", 0.2), ("snip-1of4", 0.2)]
    from ticketsearch.bench.spec import suite_from_saved

    assert suite_from_saved(json.loads(json.dumps(suite.saved()))) == suite  # a queue's stored form
    assert "densities" not in suite.saved()["variants"][0]  # older suites keep their spec hash


def test_a_pattern_above_n_over_m_is_refused_before_anything_is_queued(tmp_path, capsys) -> None:
    base = json.loads((REPO / "ticketsearch" / "bench" / "suites" / "smoke.json").read_text())
    spec = {**base, "methods": [{"name": "snip-2of4", "method": "snip", "pruning": {"pattern": "2:4"}}],
            "densities": [0.75, 0.5]}  # fmt: skip
    path = tmp_path / "suite.json"
    path.write_text(json.dumps(spec))
    from clitools import assert_one_line_error, run_cli

    db = tmp_path / "q.db"
    r = run_cli(
        capsys, "bench", "--suite", str(path), "--root", str(tmp_path / "runs"), "--no-progress",
        "--storage", f"sqlite:///{db}",
    )  # fmt: skip
    assert_one_line_error(r, "'snip-2of4' asks density 0.75", "2:4 keeps (0.5)")
    assert not db.exists() and not (tmp_path / "runs").exists()


def test_a_suite_cut_to_one_dataset_runs_only_its_cells():
    from ticketsearch.bench.runner import cells_of

    full = load_suite("frontier")
    part = full.with_overrides(datasets=["mnist"], methods=["imp", "cs-ticket"])
    assert {c.dataset for c in cells_of(part)} == {"mnist"}
    assert {c.variant for c in cells_of(part)} == {"dense", "imp", "cs-ticket"}
    # the cells it keeps are the full suite's, under the same keys
    assert {c.key for c in cells_of(part)} <= {c.key for c in cells_of(full)}
    assert (
        full.with_overrides(datasets=["fashion_mnist/lenet_300_100"]).datasets[0].dataset == "fashion_mnist"
    )


def test_report_lists_failed_cells_and_searches_in_the_suites_order(tmp_path):
    # a retried cell or search that finishes later must not move its row: the suite's order decides
    suite = load_suite("frontier")
    keys = [c.key for c in cells_of(suite) if c.variant != "dense"][:3]
    cells = [_rec(k.split("|")[1], float(k.split("|")[2]), int(k.split("|")[3]), 0.9, key=k) for k in keys]
    failed = [{**c, "status": "failed", "error": f"boom {i}"} for i, c in enumerate(cells)]
    dense = _rec("dense", 1.0, 0, 0.95, key=next(c.key for c in cells_of(suite) if c.variant == "dense"))
    from ticketsearch.bench.runner import smallest_keys

    searches = smallest_keys(suite)[:3]
    small = tmp_path / "smallest.jsonl"
    small.write_text("".join(json.dumps(_search(k, f"s{i}")) + "\n" for i, k in enumerate(searches)))
    # the newest records arrive in reverse order: the second search and the first cell were retried
    with small.open("a") as f:
        f.write(json.dumps(_search(searches[1], "s1 again")) + "\n")
    write_report([dense, *reversed(failed), failed[0]], tmp_path, suite)
    md = (tmp_path / "report.md").read_text()
    rows = [md.index(f"`{k}`") for k in keys]
    assert rows == sorted(rows)
    spots = [md.index(k) for k in ("s0", "s1 again", "s2")]
    assert spots == sorted(spots)


def _search(key: str, error: str) -> dict:
    from ticketsearch.bench.runner import record_identity

    return {**record_identity(key), "status": "failed", "error": error}


def test_pattern_cost_is_read_against_the_same_method_unstructured(tmp_path):
    base = json.loads((REPO / "ticketsearch" / "bench" / "suites" / "smoke.json").read_text())
    suite = suite_from_dict({
        **base, "densities": [0.5, 0.25], "smallest": None,
        "methods": [
            "snip",
            {"name": "snip-2of4", "method": "snip", "pruning": {"pattern": "2:4", "allow_dense_layers": True}},
            {"name": "snip-1of4", "method": "snip", "pruning": {"pattern": "1:4"}, "densities": [0.25]},
            {"name": "sm", "method": "supermask", "then_train": True},
            {"name": "sm-2of4", "method": "supermask", "then_train": True, "pruning": {"pattern": "2:4"}},
            # another knob: not snip's sibling, and with no unstructured twin it has no row
            {"name": "snip-g", "method": "snip", "pruning": {"pattern": "2:4", "scope": "global"}},
        ],
    }, source="test")  # fmt: skip
    from ticketsearch.bench.report import pattern_groups

    assert [(b.name, [v.name for v in vs]) for b, vs in pattern_groups(suite)] == [
        ("snip", ["snip-2of4", "snip-1of4"]),
        ("sm", ["sm-2of4"]),
    ]
    records = [
        _rec("dense", 1.0, 0, 0.98),
        _rec("snip", 0.5, 0, 0.96), _rec("snip", 0.5, 1, 0.94), _rec("snip", 0.25, 0, 0.93),
        _rec("snip-2of4", 0.5, 0, 0.9525), _rec("snip-2of4", 0.25, 0, 0.94),
        _rec("snip-1of4", 0.25, 0, 0.91),
        _rec("sm", 0.5, 0, 0.90, then_train_acc=0.97), _rec("sm-2of4", 0.5, 0, 0.80, then_train_acc=0.965),
    ]  # fmt: skip
    write_report(records, tmp_path, suite)
    md = (tmp_path / "report.md").read_text()
    # snip at 50%: mean 95.00; 2:4 at 95.25 is +0.25; at 25% 94.00 against 93.00 is +1.00; 1:4 -2.00
    assert "| snip | unstructured | 95.00 |  | 93.00 |  |" in md
    assert "| snip | 2:4 | 95.25 | +0.25 | 94.00 | +1.00 |" in md
    assert "| snip | 1:4 | - |  | 91.00 | -2.00 |" in md
    assert "| sm | 2:4 | 80.00 | -10.00 | - |  |" in md
    assert "| sm (then trained) | 2:4 | 96.50 | -0.50 | - |  |" in md
    assert "snip-g" not in md.split("what a pattern costs")[1].split("##")[0]


def test_a_metric_the_ticket_lacks_comes_from_the_level_that_found_it():
    from ticketsearch.bench.runner import _metric

    rows = [
        {"level": 0, "cs": "dense?"},
        {"level": 1, "cs": {"emergent_density": 0.23}, "x": 1},
        {"level": 2, "x": 2},
        {"level": 3, "y": 3},
    ]
    assert _metric(rows, rows[2], "x") == 2  # the ticket's own field first
    assert _metric(rows, rows[2], "cs") == {"emergent_density": 0.23}  # the latest level before it
    assert _metric(rows, rows[2], "y") is None  # never a later level's
    assert _metric(rows, rows[1], "missing") is None
