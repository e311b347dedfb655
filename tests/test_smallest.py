"""Smallest-ticket search: bisection on planted curves, decisions from validation only, and end to end."""

from __future__ import annotations

import json
import math

import pytest
from nets import digits_hparams

from ticketsearch.core.errors import ConfigError
from ticketsearch.smallest import Probe, bisect_log_density, check_tolerance, within_tolerance


def _probe(d: float, val: float, test: float) -> Probe:
    return Probe(density=d, kept=d, val=[val], test=[test])


def test_bisection_finds_a_planted_threshold_in_the_expected_probes():
    threshold, tried = 0.037, []

    def evaluate(d: float) -> Probe:
        tried.append(d)
        return _probe(d, 0.98 if d >= threshold else 0.90, 0.5)

    accept = within_tolerance(_probe(1.0, 0.98, 0.98), 0.5)
    good, probes = bisect_log_density(evaluate, accept, good=1.0, bad=1e-3, precision=0.1, max_probes=50)
    # each probe halves log(good/bad): from log(1000) down to log(1.1)
    expected = math.ceil(math.log2(math.log(1e3) / math.log(1.1)))
    assert len(probes) == expected == 7
    assert threshold <= good <= threshold * 1.1
    assert len(set(tried)) == len(tried)  # never a density twice


def test_the_answer_follows_validation_even_where_test_disagrees():
    # validation stays within tolerance down to 5%; test would say 20%
    def evaluate(d: float) -> Probe:
        return _probe(d, 0.97 if d >= 0.05 else 0.80, 0.97 if d >= 0.2 else 0.80)

    accept = within_tolerance(_probe(1.0, 0.97, 0.97), 0.5)
    good, _ = bisect_log_density(evaluate, accept, good=1.0, bad=1e-3, precision=0.05, max_probes=50)
    assert 0.05 <= good < 0.06
    assert accept(_probe(0.1, 0.97, 0.10)) and not accept(_probe(0.1, 0.90, 0.99))


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_tolerance_is_refused(bad, capsys, tmp_path):
    with pytest.raises(ConfigError, match="tolerance"):
        check_tolerance(bad)
    from ticketsearch.cli import main

    code = main(["smallest", "--tolerance", str(bad), "--root", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "tolerance" in err
    assert not (tmp_path / "r").exists()


def test_imp_walks_levels_then_bisects(tmp_path, capsys):
    from ticketsearch.cli import main

    out = tmp_path / "out"
    args = ["smallest", "--method", "imp", "--tolerance", "3", "--seeds", "1", "--budget", "2ep"]
    code = main(
        [*args, "--rate", "0.5", "--root", str(tmp_path / "runs"), "--out", str(out), "--no-progress"]
    )
    assert code == 0, capsys.readouterr().err
    r = json.loads((out / "result.json").read_text())
    kinds = [p["source"] for p in r["probes"]]
    assert kinds[0] == "level 1" and any(k.startswith("bisect from level") for k in kinds)
    levels = [p for p in r["probes"] if p["source"].startswith("level")]
    dense_val = r["dense"]["val_mean"]
    # walked until the first level out of tolerance, decided on validation
    assert (
        all(p["val_mean"] >= dense_val - 0.03 for p in levels[:-1])
        and levels[-1]["val_mean"] < dense_val - 0.03
    )
    ans, good_level, bad_level = r["answer"], levels[-2], levels[-1]
    assert ans["val_mean"] >= dense_val - 0.03
    assert bad_level["kept"] < ans["kept"] <= good_level["kept"]
    dens = [p["density"] for p in r["probes"]]
    assert len(set(dens)) == len(dens)
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG" and "Answer" in (out / "report.md").read_text()
    assert r["cost"]["runs"] >= len(r["probes"])


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--min-density", "0"], "min_density"),
        (["--method", "imp", "--rate", "1.5"], "rate"),
        (["--method", "snp"], "did you mean 'snip'"),
        (["--seeds", "0"], "--seeds"),
    ],
)
def test_bad_search_is_one_line(args, needle, capsys, tmp_path):
    from ticketsearch.cli import main

    code = main(["smallest", *args, "--root", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and needle in err, err
    assert not (tmp_path / "r").exists()


def test_a_density_that_empties_a_layer_is_out_of_tolerance_not_an_error(tmp_path):
    """SNIP at 0.01% (about 3 weights) disconnects the digits MLP: the search treats it as a failed probe and goes on."""
    from ticketsearch.experiments.runner import RunOptions
    from ticketsearch.smallest import smallest

    hp = digits_hparams("snip", training=dict(optimizer="adam", lr=3e-3, batch_size=32, budget="2ep"))
    opts = RunOptions(root=tmp_path, device="cpu", progress=False)
    r = smallest(hp, seeds=[0], tolerance=5.0, opts=opts, min_density=1e-4, precision=0.5)
    first = r.probes[0]
    assert first.density == 1e-4 and first.source.startswith("collapsed") and first.val == [0.0]
    assert r.answer is not None and r.answer.kept > 1e-4
