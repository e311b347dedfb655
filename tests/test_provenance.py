"""Provenance of every result, stale reuse reported, ``--rerun-stale`` recomputing exactly the stale levels,
and a suite's failed cells retried by its next run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from nets import digits_hparams

import ticketsearch
from ticketsearch.core import provenance as P
from ticketsearch.experiments.runner import RunOptions, run_find

REPO = Path(__file__).resolve().parents[1]
OTHER = {"ticketsearch": "0.0.9", "git_commit": "0" * 40, "git_dirty": False, "dirty_digest": None}


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout


def test_current_names_this_checkout_and_torch():
    P.current.cache_clear()  # computed once per process: an edit to the tree since then is not its business
    now = P.current()
    assert now["git_commit"] == _git("rev-parse", "HEAD").strip()
    dirty = bool(_git("status", "--porcelain", "--untracked-files=all", "--", "ticketsearch").strip())
    assert now["git_dirty"] is dirty and (now["dirty_digest"] is not None) is dirty
    assert now["torch"] == torch.__version__ and now["ticketsearch"] == ticketsearch.__version__
    assert P.for_device("cpu")["device"] == "cpu"


@pytest.mark.parametrize(
    "recorded,now,stale",
    [
        (None, {"git_commit": "a" * 40, "git_dirty": False}, "no provenance"),
        ({"git_commit": "a" * 40, "git_dirty": False}, {"git_commit": "a" * 40, "git_dirty": False}, None),
        (
            {"git_commit": "b" * 40, "git_dirty": False},
            {"git_commit": "a" * 40, "git_dirty": False},
            "bbbbbbbb",
        ),
        # the same uncommitted edit is the same code; another edit, or none, is not
        (
            {"git_commit": "a" * 40, "git_dirty": True, "dirty_digest": "d1"},
            {"git_commit": "a" * 40, "git_dirty": True, "dirty_digest": "d1"},
            None,
        ),
        (
            {"git_commit": "a" * 40, "git_dirty": True, "dirty_digest": "d1"},
            {"git_commit": "a" * 40, "git_dirty": True, "dirty_digest": "d2"},
            "uncommitted",
        ),
        (
            {"git_commit": "a" * 40, "git_dirty": False},
            {"git_commit": "a" * 40, "git_dirty": True, "dirty_digest": "d2"},
            "aaaaaaaa",
        ),
        # made by an installed package while this code runs from a checkout: unknown code
        (
            {"ticketsearch": "0.1.0", "git_commit": None},
            {"ticketsearch": "0.1.0", "git_commit": "a" * 40},
            "0.1.0",
        ),
        # outside a checkout the version is all there is
        ({"ticketsearch": "0.1.0"}, {"ticketsearch": "0.1.0", "git_commit": None}, None),
        ({"ticketsearch": "0.0.9"}, {"ticketsearch": "0.1.0", "git_commit": None}, "0.0.9"),
    ],
)
def test_stale_reason(recorded, now, stale):
    why = P.stale_reason(recorded, now)
    assert (why is None) if stale is None else (why is not None and stale in why), why


def _levels(run_dir: Path, seed: int = 0) -> dict[int, Path]:
    return {int(p.name.split("_")[1]): p for p in (run_dir / f"replicate_{seed}").glob("level_*")}


def _imp_hp():
    return digits_hparams("imp", training={"budget": "1ep"}, rounds=3)


def test_every_result_records_its_code_and_the_hash_ignores_it(tmp_path, monkeypatch):
    opts = RunOptions(root=tmp_path, device="cpu", progress=False, controls=("reinit",))
    s = run_find(_imp_hp(), seed=0, opts=opts)
    results = sorted(s.run_dir.rglob("result.json"))
    assert len(results) == 4 + 3  # levels 0-3 and a reinit control beside each pruned level
    for r in results:
        prov = json.loads(r.read_text())["provenance"]
        assert {k: prov[k] for k in ("git_commit", "git_dirty", "torch")} == {
            k: P.current()[k] for k in ("git_commit", "git_dirty", "torch")
        }
        assert prov["device"] == "cpu"
    assert s.rows[-1]["provenance"]["git_commit"] == P.current()["git_commit"]
    # other code asking for the same run gets the same directory (provenance is not in the hash)
    monkeypatch.setattr(P, "current", lambda: dict(OTHER, torch="9.9"))
    with P.collect_stale() as stale:
        again = run_find(_imp_hp(), seed=0, opts=opts)
    assert again.run_dir == s.run_dir
    assert [r.result for r in again.rows] == [r.result for r in s.rows]  # reused, not recomputed
    assert len(stale) == 7 and all("made by" in e["reason"] for e in stale)


def _age(result_path: Path, prov: dict | None) -> None:
    """Make a finished level look made by other code (or before provenance existed, ``prov=None``)."""
    res = json.loads(result_path.read_text())
    if prov is None:
        res.pop("provenance")
    else:
        res["provenance"] = prov
    result_path.write_text(json.dumps(res))


def test_rerun_stale_recomputes_the_stale_level_and_later_ones_only(tmp_path, capsys):
    opts = RunOptions(root=tmp_path, device="cpu", progress=False)
    s = run_find(_imp_hp(), seed=0, opts=opts)
    levels = _levels(s.run_dir)
    _age(levels[2] / "result.json", None)
    before = {k: (p / "result.json").read_bytes() for k, p in levels.items()}
    init = (s.run_dir / "replicate_0" / "init.safetensors").read_bytes()
    # without the flag the stale level is reused and named
    with P.collect_stale() as stale:
        run_find(_imp_hp(), seed=0, opts=opts)
    assert [Path(e["path"]).name for e in stale] == ["level_2"] and "no provenance" in stale[0]["reason"]
    assert {k: (p / "result.json").read_bytes() for k, p in levels.items()} == before
    # with it, level 2 and level 3 (built from level 2's weights) are recomputed, levels 0-1 kept as they are
    with P.collect_stale() as stale:
        again = run_find(_imp_hp(), seed=0, opts=RunOptions(**{**opts.__dict__, "rerun_stale": True}))
    assert stale == []
    assert "recomputing level(s) 2, 3" in capsys.readouterr().err
    after = {k: (p / "result.json").read_bytes() for k, p in _levels(s.run_dir).items()}
    assert after[0] == before[0] and after[1] == before[1]
    assert after[2] != before[2] and after[3] != before[3]
    assert all(json.loads(after[k])["provenance"]["git_commit"] == P.current()["git_commit"] for k in (2, 3))
    assert (s.run_dir / "replicate_0" / "init.safetensors").read_bytes() == init
    # on CPU the recomputed levels are the same numbers (same code, same seed)
    assert [r["test_acc"] for r in again.rows] == [r["test_acc"] for r in s.rows]


def test_rerun_stale_with_every_level_stale_starts_over(tmp_path):
    opts = RunOptions(root=tmp_path, device="cpu", progress=False)
    s = run_find(digits_hparams("snip", training={"budget": "1ep"}, density=0.3), seed=0, opts=opts)
    (level,) = _levels(s.run_dir).values()
    _age(level / "result.json", OTHER)
    again = run_find(
        digits_hparams("snip", training={"budget": "1ep"}, density=0.3),
        seed=0,
        opts=RunOptions(**{**opts.__dict__, "rerun_stale": True}),
    )
    assert again.rows[-1]["provenance"]["git_commit"] == P.current()["git_commit"]
    assert again.rows[-1]["test_acc"] == s.rows[-1]["test_acc"]


# -- the suite: failed cells retried, stale cells named and recomputed --------------------------------------
def _tiny_suite():
    from ticketsearch.bench.spec import suite_from_dict

    return suite_from_dict(
        {
            "name": "tiny",
            "datasets": [{"dataset": "digits", "model": "mlp_digits", "training": {"budget": "1ep"}}],
            "methods": ["snip"],
            "densities": [0.3],
            "seeds": [0],
            "sanity": False,
        },
        source="test",
    )


def test_a_failed_cell_is_retried_and_a_stale_one_recomputed_on_request(tmp_path):
    from ticketsearch.bench import cells_of, read_records, run_suite, write_report

    suite = _tiny_suite()
    out = tmp_path / "out"
    out.mkdir()
    dense, snip = cells_of(suite)
    results = out / "results.jsonl"
    # an earlier run: the dense cell ok but made by other code, the snip cell failed (data were missing)
    old = {"status": "ok", "test_acc": 0.5, "provenance": OTHER, "stale": []}
    lines = [
        {"key": dense.key, "dataset": "digits", "model": "mlp_digits", "variant": "dense", "density": 1.0,
         "seed": 0, "method": "imp", "kind": "dense", "density_kept": 1.0, **old},
        {"key": snip.key, "status": "failed", "error": "DataError: files not found", "provenance": OTHER},
    ]  # fmt: skip
    results.write_text("".join(json.dumps(x) + "\n" for x in lines))
    records = run_suite(suite, out, root=tmp_path / "runs", progress=False)
    got = {r["key"]: r for r in records}
    assert (
        got[snip.key]["status"] == "ok"
        and got[snip.key]["provenance"]["git_commit"] == P.current()["git_commit"]
    )
    assert got[dense.key]["test_acc"] == 0.5  # ok records are done, even stale ones, without the flag
    assert len(read_records(results)) == 3  # the failed record stays in the log; the newest one counts
    write_report(read_records(results), out, suite)
    md = (out / "report.md").read_text()
    assert "## Reused results made by other code" in md and f"`{dense.key}`" in md
    assert "## Failed cells" not in md  # the retried cell is not failed any more
    # --rerun-stale: the stale dense cell runs now (for real: a trained accuracy, this code's provenance)
    records = run_suite(suite, out, root=tmp_path / "runs", progress=False, rerun_stale=True)
    got = {r["key"]: r for r in records}
    assert (
        got[dense.key]["test_acc"] != 0.5
        and got[dense.key]["provenance"]["git_commit"] == P.current()["git_commit"]
    )
    write_report(read_records(results), out, suite)
    assert "made by other code" not in (out / "report.md").read_text()


def test_smallest_names_the_stale_levels_it_reused(tmp_path):
    from ticketsearch.smallest import smallest

    hp = digits_hparams("snip", training={"budget": "1ep"}, density=0.5)
    opts = RunOptions(root=tmp_path / "runs", device="cpu", progress=False)
    kw = dict(seeds=[0], tolerance=50.0, opts=opts, min_density=0.05)
    first = smallest(hp, out_dir=tmp_path / "a", **kw)
    assert first.stale == [] and "made by other code" not in (tmp_path / "a" / "report.md").read_text()
    dense_level = Path(first.dense.runs[0])
    _age(dense_level / "result.json", OTHER)
    again = smallest(hp, out_dir=tmp_path / "b", **kw)
    assert [Path(e["path"]) for e in again.stale] == [dense_level]
    md = (tmp_path / "b" / "report.md").read_text()
    assert "## Reused results made by other code" in md and "0000000000" in md and str(dense_level) in md
    saved = json.loads((tmp_path / "b" / "result.json").read_text())
    assert [e["path"] for e in saved["stale_reuses"]] == [str(dense_level)]


def test_find_rerun_stale_flag(tmp_path, capsys):
    from clitools import run_cli

    args = ["find", "--method", "snip", "--dataset", "digits", "--density", "0.3", "--budget", "1ep"]
    args += ["--root", str(tmp_path), "--no-progress", "--device", "cpu"]
    assert run_cli(capsys, *args).returncode == 0
    (result,) = tmp_path.rglob("result.json")
    _age(result, OTHER)
    assert run_cli(capsys, *args).returncode == 0  # reused as it is
    assert json.loads(result.read_text())["provenance"] == OTHER
    r = run_cli(capsys, *args, "--rerun-stale")
    assert r.returncode == 0 and "recomputing level(s) 1" in r.stderr, r.stderr
    assert json.loads(result.read_text())["provenance"]["git_commit"] == P.current()["git_commit"]


def _matrix_record(seed: int, acc: float, prov: dict | None, stale: list | None = None) -> dict:
    rec = {"method": "snip", "source": "digits", "target": "mnist", "density": 0.2, "seed": seed}
    rec |= {
        k: acc for k in ("transfer_source_init", "transfer_fresh_init", "random_mask", "own_ticket", "dense")
    }
    rec |= {"source_density": 0.2, "own_density": 0.2, "source_acc": acc, "weights_trained": True}
    if prov is not None:
        rec["provenance"] = prov
    if stale is not None:
        rec["stale"] = stale
    return rec


def test_transfer_matrix_summary_names_stale_cells_and_reads_the_newest_record(tmp_path):
    from ticketsearch.transfer.matrix import cell_key, record_stale, write_reports

    old = _matrix_record(0, 0.5, None)  # made before records held their code
    fresh = _matrix_record(1, 0.9, P.current(), stale=[])
    reused = _matrix_record(
        2, 0.9, P.current(), stale=[{"path": "runs/snip_x/replicate_2/level_1", "reason": "made by X"}]
    )
    assert (
        "no provenance" in record_stale(old)
        and record_stale(fresh) is None
        and "made by X" in record_stale(reused)
    )
    write_reports([old, fresh, reused], tmp_path)
    md = (tmp_path / "summary.md").read_text()
    assert "## Reused results made by other code" in md
    assert f"`{cell_key(old)}`" in md and f"`{cell_key(reused)}`" in md and f"`{cell_key(fresh)}`" not in md
    # the cell recomputed by --rerun-stale is appended; the newest record is the one summarised
    write_reports([old, fresh, reused, _matrix_record(0, 0.9, P.current(), stale=[])], tmp_path)
    md = (tmp_path / "summary.md").read_text()
    assert f"`{cell_key(old)}`" not in md and "| 90.00 ± 0.00 |" in md


def test_study_report_names_trials_that_reused_stale_levels():
    from types import SimpleNamespace

    from ticketsearch.studies.report import stale_trials

    trials = [
        SimpleNamespace(number=0, user_attrs={}),
        SimpleNamespace(
            number=1, user_attrs={"stale": [{"path": "p", "reason": "made by ticketsearch 0.0.9"}]}
        ),
    ]
    study = SimpleNamespace(get_trials=lambda deepcopy=False: trials)
    assert stale_trials(study) == [
        {"cell": "trial 1", "reason": "reused 1 level(s): made by ticketsearch 0.0.9"}
    ]
