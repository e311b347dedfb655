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


def _planted_runs(monkeypatch, tmp_path, threshold: float) -> list[float]:
    """run_find replaced by a planted curve: validation 98% at densities ≥ threshold, 50% below; returns
    the densities asked, in order."""
    from types import SimpleNamespace

    import ticketsearch.smallest as sm

    asked: list[float] = []

    def fake_run_find(hp, *, seed, opts):
        d = hp.pruning.density
        asked.append(d)
        acc = 0.98 if d >= threshold else 0.5
        row = {"level": 0 if d == 1.0 else 1, "density": d, "val_acc": acc, "test_acc": acc}
        return SimpleNamespace(rows=[{**row, "mask": str(tmp_path / f"{d}" / "mask.safetensors")}])

    monkeypatch.setattr(sm, "run_find", fake_run_find)
    return asked


def test_a_pattern_caps_the_search_at_n_over_m(monkeypatch, tmp_path):
    from ticketsearch.core.hparams import PruningHparams, RunHparams
    from ticketsearch.experiments.runner import RunOptions
    from ticketsearch.smallest import smallest

    asked = _planted_runs(monkeypatch, tmp_path, threshold=0.1)
    hp = RunHparams(pruning=PruningHparams(method="snip", pattern="2:4", density=0.25))
    r = smallest(hp, seeds=[0], tolerance=0.5, opts=RunOptions(root=tmp_path), min_density=0.01)
    # the dense reference, min_density, then N/M (never above it), then bisection between 0.5 and 0.01
    assert asked[:3] == [1.0, 0.01, 0.5] and max(asked[1:]) == 0.5
    assert asked[3] == pytest.approx(math.sqrt(0.5 * 0.01))
    assert r.answer is not None and 0.1 <= r.answer.density <= 0.11

    asked = _planted_runs(monkeypatch, tmp_path, threshold=0.6)  # not even N/M is good enough
    r = smallest(hp, seeds=[0], tolerance=0.5, opts=RunOptions(root=tmp_path), min_density=0.01)
    assert asked == [1.0, 0.01, 0.5] and r.answer is None and "even density 0.5" in r.note

    with pytest.raises(ConfigError, match="min_density 0.5 is not below 0.5, the most pattern 2:4 keeps"):
        smallest(hp, seeds=[0], tolerance=0.5, opts=RunOptions(root=tmp_path), min_density=0.5)


class _PlantedIMPSearch:
    """What IMP's walk sees: levels 1, .75, .5625, then .5 and .375 obeying 2:4 (as a 2:4 run's levels
    are, the third stopped at N/M), validation 98% down to ``threshold``."""

    DENSITIES = [1.0, 0.75, 0.5625, 0.5, 0.375, 0.28125]

    def __init__(self, threshold: float) -> None:
        from ticketsearch.core.hparams import PruningHparams, RunHparams

        self.hp = RunHparams(pruning=PruningHparams(method="imp", pattern="2:4", density=0.25))
        self.seeds, self.min_density, self.max_density, self.out_dir = [0], 1e-3, 0.5, None
        self.threshold = threshold

    def runs(self, hp):
        from types import SimpleNamespace

        rows = []
        for k in range(hp.pruning.rounds + 1):
            d = self.DENSITIES[k]
            acc = 0.98 if d >= self.threshold else 0.5
            rows.append({"level": k, "density": d, "val_acc": acc, "test_acc": acc, "mask": f"/x/{k}/m"})
            if d <= 0.5:
                rows[-1]["pattern"] = "2:4"
        return [SimpleNamespace(rows=rows)]

    def probe(self, rows, density, source):
        return Probe(
            density=density, kept=rows[0]["density"], val=[rows[0]["val_acc"]], test=[0.0], source=source
        )

    def accept(self, probe):
        return probe.val_mean >= 0.975


def test_imp_under_a_pattern_counts_only_the_levels_that_obey_it():
    from ticketsearch.methods import get_method

    imp = get_method("imp")
    answer, probes, note = imp.smallest(_PlantedIMPSearch(threshold=0.4))
    # levels 1 and 2 pass but are the way down to 2:4; level 3 (N/M) is the first ticket, level 4 fails
    assert [p.source for p in probes] == ["level 1", "level 2", "level 3", "level 4"]
    assert answer is probes[2] and answer.kept == 0.5 and "no bisection" in note
    answer, probes, note = imp.smallest(_PlantedIMPSearch(threshold=0.55))  # fails at N/M itself
    assert (
        answer is None and len(probes) == 3 and note == "no IMP level under pattern 2:4 is within tolerance"
    )
