"""The transfer matrix end to end (digits ↔ MNIST at 8×8, seconds), its resume, and its report by hand."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ticketsearch.core.errors import ConfigError, UnknownNameError
from ticketsearch.transfer.matrix import MatrixSpec, summarise, write_reports

REPO = Path(__file__).resolve().parents[1]


def _cmd(root: Path, out: Path, data: Path, methods: str = "snip", seeds: str = "0") -> list[str]:
    return [
        sys.executable, "-m", "ticketsearch", "transfer-matrix", "--datasets", "digits,mnist", "--resize", "8",
        "--methods", methods, "--densities", "0.3", "--seeds", seeds, "--budget", "1ep", "--root", str(root),
        "--out", str(out), "--data-root", str(data), "--no-progress", "--device", "cpu",
    ]  # fmt: skip


def test_matrix_end_to_end(tmp_path, shared_datasets):
    out = tmp_path / "matrix"
    r = subprocess.run(
        _cmd(tmp_path / "runs", out, shared_datasets), cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {(x["source"], x["target"]) for x in records} == {("digits", "mnist"), ("mnist", "digits")}
    for x in records:
        for col in ("transfer_source_init", "transfer_fresh_init", "random_mask", "own_ticket", "dense"):
            assert 0.1 < x[col] <= 1.0, (col, x)
        # the cell's own ticket is the other cell's source: found once
        other = next(y for y in records if y["source"] == x["target"])
        assert x["runs"]["own"] == other["runs"]["source"]
    csv_lines = (out / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,source,target,density") and len(csv_lines) == 3
    md = (out / "summary.md").read_text()
    assert "| snip | 30.0% | digits → mnist |" in md and "| snip | 30.0% | mnist → digits |" in md
    import matplotlib.image

    img = matplotlib.image.imread(out / "heatmap_snip.png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert "matrix:" in r.stdout and "minus own" in r.stdout


@pytest.mark.slow  # 24 s; the matrix's cells resume like every run (test_runner's kill tests)
def test_matrix_resumes_after_kill_9(tmp_path, shared_datasets):
    out = tmp_path / "matrix"
    cmd = _cmd(tmp_path / "runs", out, shared_datasets, methods="imp,snip")
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = out / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (results.is_file() and results.read_text().count("\n") >= 1):
        if p.poll() is not None:
            pytest.fail(f"matrix finished before it could be killed: {p.stderr.read() if p.stderr else ''}")
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    first = [json.loads(line) for line in results.read_text().splitlines()]
    assert 1 <= len(first) < 4
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(records) == 4  # imp and snip, both directions: none lost, none twice
    keys = [(x["method"], x["source"], x["target"]) for x in records]
    assert len(set(keys)) == 4
    assert records[: len(first)] == first  # finished cells are kept as they were, not recomputed


def test_report_from_fixed_records_matches_hand_computation(tmp_path):
    base = {"method": "imp", "source": "a", "target": "b", "density": 0.2, "source_density": 0.21}
    recs = [
        {**base, "seed": 0, "transfer_source_init": 0.90, "transfer_fresh_init": 0.80, "random_mask": 0.70, "own_ticket": 0.95, "dense": 0.97},
        {**base, "seed": 1, "transfer_source_init": 0.94, "transfer_fresh_init": 0.82, "random_mask": 0.72, "own_ticket": 0.95, "dense": 0.97},
    ]  # fmt: skip
    (row,) = summarise(recs)
    assert row["transfer_source_init_mean"] == pytest.approx(0.92)
    assert row["transfer_source_init_std"] == pytest.approx(0.028284271, rel=1e-6)  # stdev of (0.90, 0.94)
    assert row["minus_own_mean"] == pytest.approx(-0.03) and row["seeds"] == 2
    write_reports(recs, tmp_path)
    md = (tmp_path / "summary.md").read_text()
    assert (
        "| imp | 21.0% | a → b | 92.00 ± 2.83 | 81.00 ± 1.41 | 71.00 ± 1.41 | 95.00 ± 0.00 | 97.00 ± 0.00 | -3.00 ± 2.83 |"
        in md
    )
    assert (tmp_path / "heatmap_imp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "spec,match",
    [
        (dict(datasets=("digits", "mnist")), "inputs differ"),
        (dict(datasets=("digits", "mnist"), resize=8, methods=("snp",)), "did you mean 'snip'"),
        (dict(datasets=("digits",)), "at least two datasets"),
        (dict(datasets=("digits", "mnist"), resize=8, model="lenet300"), "unknown model"),
        (dict(datasets=("digits", "mnist"), resize=8, densities=(0.0,)), "densities"),
    ],
)
def test_a_bad_spec_fails_before_any_training(spec, match):
    full = {**dict(methods=("imp",), densities=(0.2,), seeds=(0,), model="mlp_digits"), **spec}
    with pytest.raises((ConfigError, UnknownNameError), match=match):
        MatrixSpec(**full).validate()
