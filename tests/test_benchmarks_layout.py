"""benchmarks/: the results layout, provenance in every result, the one writer, scripts that import cleanly.

Layout: ``benchmarks/results/<benchmark>/<variant>.{json,md}`` (figures of a result beside it as
``<variant>_<what>.png``), ``<benchmark>`` a script ``benchmarks/<benchmark>.py`` (or one removed at issue
21, whose records stay marked), every result indexed in ``benchmarks/results/README.md``. Scripts run as
``python -m benchmarks.<name>``; importing one does no work, and nothing in benchmarks/ edits sys.path.
One benchmark system: an accuracy grid is a bench suite, so benchmarks/ keeps only the scripts listed in
:data:`SCRIPTS`.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
RESULTS = BENCH / "results"
INDEX = RESULTS / "README.md"

# the provenance contract, spelled out here rather than imported from the writer
PROVENANCE_KEYS = {
    "benchmark",
    "variant",
    "git_commit",
    "git_dirty",
    "git_dirty_files",
    "command",
    "cwd",
    "versions",
    "device",
    "date_utc",
    "finished_utc",
    "wall_s",
}
VERSION_KEYS = {"python", "torch", "numpy", "ticketsearch"}
DEVICE_KEYS = {"cpu_model", "cpu_count", "cpus_usable", "torch_threads", "cuda_device", "platform"}
LEGACY_KEYS = {"legacy", "benchmark", "variant", "git_commit", "old_path"}
# What benchmarks/ keeps: what is not a grid of runs (speed, size, the open_lth and queue timings) and the two
# Optuna studies that check their best trial against the defaults. An accuracy grid is a bench suite
# (ticketsearch/bench/suites/*.json): a new grid script here fails this list on purpose.
SCRIPTS = {
    "bench_queue",
    "export_patterns",
    "export_size",
    "loop_overhead",
    "masking_overhead",
    "openlth_speed",
    "pareto_mnist",
    "run_all",
    "speed",
    "study_supermask_digits",
    "supermask_speed",
}
# the one-off accuracy scripts removed at issue 21 (their grids became suites): their records stay, marked
REMOVED = {"imp_lenet_mnist", "scorers_mnist", "supermask_mnist", "smallest_mnist", "transfer_mnist"}
REMOVED_MARK = "> **Record of a removed script.** Made by the removed script `benchmarks/{}.py`"
UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
SHA = re.compile(r"^[0-9a-f]{40}$")


def _git(*args: str) -> str | None:
    try:
        p = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout if p.returncode == 0 else None


def _in_git_checkout() -> bool:
    top = _git("rev-parse", "--show-toplevel")
    return top is not None and Path(top.strip()).resolve() == REPO


def committed_results() -> list[Path]:
    """Result files under benchmarks/results: those git tracks (a fresh `make bench` output is not
    committed), or every file when this is not a git checkout; the index itself excepted."""
    if _in_git_checkout():
        listed = _git("ls-files", "--", "benchmarks/results")
        assert listed is not None
        files = [REPO / p for p in listed.splitlines() if p and (REPO / p).exists()]
    else:
        files = [p for p in RESULTS.rglob("*") if p.is_file()]
    suites = {p.parent for p in files if p.name == "suite.json"}
    return sorted(p for p in files if p != INDEX and not any(d in p.parents for d in suites))


def suite_outputs() -> list[Path]:
    """Folders written by ``ticketsearch bench`` (a ``suite.json`` inside): their own layout, see below."""
    return sorted({p.parent for p in RESULTS.rglob("suite.json")})


def test_suite_outputs_are_complete_and_indexed():
    index = INDEX.read_text()
    for d in suite_outputs():
        for name in ("report.md", "results.jsonl", "summary.csv", "suite.json"):
            assert (d / name).is_file(), f"{d.relative_to(RESULTS)} lacks {name}"
        records = [
            json.loads(line) for line in (d / "results.jsonl").read_text().splitlines() if line.strip()
        ]
        assert records and all(r.get("provenance", {}).get("ticketsearch") for r in records)
        rel = d.relative_to(RESULTS).as_posix()
        assert f"]({rel}/report.md)" in index, f"{rel} missing from {INDEX.name}"


def script_names() -> list[str]:
    """Benchmark scripts: benchmarks/*.py not starting with an underscore."""
    return sorted(p.stem for p in BENCH.glob("*.py") if not p.name.startswith("_"))


def module_names() -> list[str]:
    return sorted(p.stem for p in BENCH.glob("*.py") if p.name != "__init__.py")


def result_pairs() -> list[tuple[str, str]]:
    return sorted(
        {(p.parent.name, p.name.split(".")[0]) for p in committed_results() if p.suffix in (".json", ".md")}
    )


@pytest.fixture
def writer(monkeypatch: pytest.MonkeyPatch):
    """``benchmarks._writer``, importable whether pytest was started as ``python -m pytest`` (the repo root
    on the path) or as ``pytest``."""
    monkeypatch.syspath_prepend(str(REPO))
    mod = importlib.import_module("benchmarks._writer")
    # these tests run in whatever state the developer's tree is in: the dirty-code guard has its own tests
    monkeypatch.setattr(mod, "code_dirty_files", lambda: [])
    return mod


# -- layout -------------------------------------------------------------------------------------------


def test_results_are_benchmark_variant_pairs():
    files = committed_results()
    assert files, "no committed results found under benchmarks/results"
    scripts = set(script_names())
    by_stem: dict[Path, set[str]] = {}
    figures: list[Path] = []
    for p in files:
        rel = p.relative_to(RESULTS)
        assert len(rel.parts) == 2, f"{rel}: results live at <benchmark>/<variant>.{{json,md}}"
        assert rel.parts[0] in scripts or rel.parts[0] in REMOVED, (
            f"{rel}: no script benchmarks/{rel.parts[0]}.py"
        )
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", p.name.split(".")[0]), f"{rel}: variant name"
        if p.suffix == ".png":  # a figure of a result: <variant>_<what>.png beside <variant>.{json,md}
            figures.append(p)
            continue
        assert p.suffix in (".json", ".md") and not p.name.endswith(".partial.json"), f"{rel}: unexpected"
        by_stem.setdefault(p.with_suffix(""), set()).add(p.suffix)
    for stem, suffixes in by_stem.items():
        assert suffixes == {".json", ".md"}, f"{stem.relative_to(RESULTS)}: has {sorted(suffixes)}"
    for p in figures:
        owners = [s for s in by_stem if s.parent == p.parent and p.stem.startswith(s.name + "_")]
        assert owners, f"{p.relative_to(RESULTS)}: a figure must be named <variant>_<what>.png of a result"


@pytest.mark.parametrize("pair", result_pairs(), ids="/".join)
def test_result_json_carries_provenance(pair: tuple[str, str]):
    benchmark, variant = pair
    data = json.loads((RESULTS / benchmark / f"{variant}.json").read_text())
    prov = data.get("provenance")
    assert isinstance(prov, dict), "no provenance block"
    assert (prov["benchmark"], prov["variant"]) == pair
    md = (RESULTS / benchmark / f"{variant}.md").read_text()
    assert "## Provenance" in md
    if prov.get("legacy"):
        assert prov["legacy"] is True
        assert LEGACY_KEYS <= set(prov), f"legacy marker lacks {sorted(LEGACY_KEYS - set(prov))}"
        assert SHA.match(prov["git_commit"])
        if _in_git_checkout():  # the commit named really added this file, at its old path
            added = _git("show", "--name-only", "--format=", prov["git_commit"])
            assert added is not None and prov["old_path"] in added.split()
        return
    assert PROVENANCE_KEYS <= set(prov), f"provenance lacks {sorted(PROVENANCE_KEYS - set(prov))}"
    assert VERSION_KEYS <= set(prov["versions"])
    assert DEVICE_KEYS <= set(prov["device"])
    assert prov["git_commit"] is None or SHA.match(prov["git_commit"])
    assert UTC.match(prov["date_utc"]) and UTC.match(prov["finished_utc"])
    assert prov["wall_s"] >= 0
    assert f"benchmarks.{benchmark}" in prov["command"] or f"{benchmark}.py" in prov["command"]


def test_index_links_every_result():
    index = INDEX.read_text()
    for benchmark, variant in result_pairs():
        assert f"]({benchmark}/{variant}.md)" in index, f"{benchmark}/{variant} missing from {INDEX.name}"
    for link in re.findall(r"\]\(([^)]+\.md)\)", index):
        assert (RESULTS / link).is_file(), f"{INDEX.name} links {link}, which does not exist"


def test_benchmarks_keeps_no_grid_script():
    """One benchmark system: no script of an accuracy grid is left beside the suites."""
    assert set(script_names()) == SCRIPTS
    assert not SCRIPTS & REMOVED


@pytest.mark.parametrize("pair", [p for p in result_pairs() if p[0] in REMOVED], ids="/".join)
def test_records_of_removed_scripts_say_what_runs_their_grid_now(pair: tuple[str, str]):
    """Each says which script made it, then the command of the same grid now or that the current code cannot
    reproduce it; every suite it names exists, and the index lists it in its removed-scripts table."""
    from ticketsearch.bench.spec import list_suites

    benchmark, variant = pair
    md = (RESULTS / benchmark / f"{variant}.md").read_text()
    note = md.split("\n\n", 1)[0]
    assert note.startswith(REMOVED_MARK.format(benchmark)), f"{benchmark}/{variant}: not marked"
    assert re.search(r"at commit `[0-9a-f]{7,40}`", note), "the note names the commit that made the record"
    assert "The same grid is" in note or "cannot be reproduced by the current code" in note.lower()
    named = re.findall(r"--suite (\S+)", note)
    assert named or "ticketsearch transfer-matrix" in note
    assert set(named) <= set(list_suites()), f"{benchmark}/{variant} names a suite that does not exist"
    index = INDEX.read_text()
    section = index.split("## Records of removed scripts", 1)[1]
    assert f"]({benchmark}/{variant}.md) | `benchmarks/{benchmark}.py` at" in section


def test_the_index_names_only_suites_that_exist():
    from ticketsearch.bench.spec import list_suites

    named = set(re.findall(r"--suite ([a-z0-9-]+)", INDEX.read_text()))
    assert named and named <= set(list_suites()), sorted(named - set(list_suites()))


# -- scripts ------------------------------------------------------------------------------------------


def _is_main_guard(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


@pytest.mark.parametrize("name", module_names())
def test_module_top_level_only_defines(name: str):
    """No work at import, statically: the top level holds imports, definitions, constants and the
    ``if __name__ == "__main__"`` guard; scripts have a ``main``."""
    tree = ast.parse((BENCH / f"{name}.py").read_text())
    allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)
    for i, node in enumerate(tree.body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # docstring
        assert isinstance(node, allowed) or _is_main_guard(node), (
            f"benchmarks/{name}.py:{node.lineno}: {type(node).__name__} at module level"
        )
    if not name.startswith("_"):
        assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)
        assert any(_is_main_guard(n) for n in tree.body), f"{name}.py: no __main__ guard"


_IMPORT_PROBE = r"""
import contextlib, io, json, os, sys
import torch
names = json.loads(sys.argv[1])
def snapshot():
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, dirs, files in os.walk("benchmarks")
            # benchmarks/runs: run folders of benchmarks running now (git-ignored), not written by importing
            if "__pycache__" not in d and not d.startswith(os.path.join("benchmarks", "runs"))
            for f in files}
before, threads, argv = snapshot(), torch.get_num_threads(), list(sys.argv)
out, files, errors = io.StringIO(), {}, {}
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    import importlib
    for n in names:
        try:
            files[n] = importlib.import_module("benchmarks." + n).__file__
        except Exception as e:
            errors[n] = f"{type(e).__name__}: {e}"
print(json.dumps({
    "errors": errors,
    "output": out.getvalue(),
    "changed_files": sorted(set(snapshot().items()) ^ set(before.items())),
    "threads": [threads, torch.get_num_threads()],
    "argv_same": sys.argv == argv,
    "files": files,
}))
"""


def test_every_module_imports_as_benchmarks_name_without_side_effects():
    names = module_names()
    p = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, json.dumps(names)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["errors"] == {}, "benchmark modules that do not import (a library name moved?)"
    assert r["output"] == "", f"importing printed: {r['output'][:500]!r}"
    assert r["changed_files"] == [], "importing wrote files"
    assert r["threads"][0] == r["threads"][1], "importing changed torch's thread count"
    assert r["argv_same"]
    for n in names:
        assert Path(r["files"][n]).resolve() == BENCH / f"{n}.py"


def _sys_path_uses(source: str) -> list[int]:
    """Lines of code (not strings) that touch sys.path or site.addsitedir."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "path":
            if isinstance(node.value, ast.Name) and node.value.id == "sys":
                lines.append(node.lineno)
        if isinstance(node, ast.Attribute) and node.attr == "addsitedir":
            lines.append(node.lineno)
        if isinstance(node, ast.ImportFrom) and node.module == "sys":
            if any(a.name == "path" for a in node.names):
                lines.append(node.lineno)
    return lines


def test_nothing_in_benchmarks_edits_the_import_path():
    """No sys.path in any benchmark's code, no PYTHONPATH in its shell scripts. (open_lth's launcher, a
    string run by a separate interpreter inside open_lth's checkout, is data here, not our import path.)"""
    for p in sorted(BENCH.rglob("*.py")):
        assert _sys_path_uses(p.read_text()) == [], f"{p.relative_to(REPO)} touches sys.path"
    for p in sorted(BENCH.rglob("*.sh")):
        assert "PYTHONPATH" not in p.read_text(), f"{p.relative_to(REPO)} sets PYTHONPATH"


@pytest.mark.parametrize("how", ["script", "module"])
def test_run_all_runs_as_script_and_as_module(how: str, tmp_path: Path):
    """`make bench` runs `python benchmarks/run_all.py`; `python -m benchmarks.run_all` works as well."""
    if how == "script":
        cmd, cwd = [sys.executable, str(BENCH / "run_all.py"), "--list"], tmp_path  # from anywhere
    else:
        cmd, cwd = [sys.executable, "-m", "benchmarks.run_all", "--list"], REPO
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    listed = [shlex.split(line) for line in p.stdout.splitlines() if line.strip()]
    assert listed
    for argv in listed:
        assert argv[:2] == ["python", "-m"] and argv[2].startswith("benchmarks.")
        assert (BENCH / f"{argv[2].removeprefix('benchmarks.')}.py").is_file()


# -- the writer ---------------------------------------------------------------------------------------


def test_writer_on_a_tiny_fake_result(writer, tmp_path: Path):
    w = writer.ResultWriter("fake_bench", "tiny", results_dir=tmp_path)
    w.write_partial([{"step": 1}])
    assert w.partial_path.is_file()
    table = writer.md_table(["method", "acc"], [["snip", "97.5%"], ["a|b", 1]])
    j, m = w.write({"rows": [{"method": "snip", "acc": 0.975}]}, "# Fake result\n\n" + table)

    assert (j, m) == (tmp_path / "fake_bench" / "tiny.json", tmp_path / "fake_bench" / "tiny.md")
    assert not w.partial_path.exists(), "the partial file outlives the result"
    assert sorted(p.name for p in j.parent.iterdir()) == ["tiny.json", "tiny.md"], "temp files left"

    data = json.loads(j.read_text())
    assert data["rows"] == [{"method": "snip", "acc": 0.975}]
    prov = data["provenance"]
    assert PROVENANCE_KEYS <= set(prov)
    assert VERSION_KEYS <= set(prov["versions"]) and DEVICE_KEYS <= set(prov["device"])
    assert (prov["benchmark"], prov["variant"]) == ("fake_bench", "tiny")
    assert prov["command"] == shlex.join(sys.orig_argv)
    assert UTC.match(prov["date_utc"]) and UTC.match(prov["finished_utc"]) and prov["wall_s"] >= 0
    import numpy
    import torch

    assert prov["versions"]["torch"] == torch.__version__
    assert prov["versions"]["numpy"] == numpy.__version__
    assert prov["device"]["torch_threads"] == torch.get_num_threads()
    assert prov["device"]["cpu_count"] >= 1
    if torch.cuda.is_available():
        assert prov["device"]["cuda_device"] == torch.cuda.get_device_name()
    else:
        assert prov["device"]["cuda_device"] is None
    if _in_git_checkout():
        assert prov["git_commit"] == _git("rev-parse", "HEAD").strip()
        assert isinstance(prov["git_dirty"], bool)
        assert prov["git_dirty"] == bool(prov["git_dirty_files"])

    md = m.read_text()
    assert md.startswith("# Fake result\n\n| method | acc |\n|---|---|\n| snip | 97.5% |\n| a\\|b | 1 |\n")
    assert "## Provenance" in md
    assert "| result | `fake_bench/tiny` |" in md
    assert f"| CUDA device | {prov['device']['cuda_device'] or 'none'} |" in md
    if prov["git_commit"]:
        assert prov["git_commit"][:12] in md


def test_writer_refuses_bad_names_and_a_payload_provenance(writer, tmp_path: Path):
    with pytest.raises(ValueError):
        writer.ResultWriter("fake_bench", "a/b", results_dir=tmp_path)
    with pytest.raises(ValueError):
        writer.ResultWriter("../up", "x", results_dir=tmp_path)
    w = writer.ResultWriter("fake_bench", "x", results_dir=tmp_path)
    with pytest.raises(ValueError):
        w.write({"provenance": {}}, "# x")
    assert not (tmp_path / "fake_bench").exists()


def test_writer_refuses_uncommitted_code_unless_forced(writer, tmp_path: Path, monkeypatch, capsys):
    """A number measured with uncommitted changes to the code it measures: refused at the start, in one
    line, nothing written; forced, it says so at the top of its markdown and in its provenance."""
    monkeypatch.delenv("TICKETSEARCH_FORCE_DIRTY", raising=False)
    monkeypatch.setattr(writer, "code_dirty_files", lambda: ["ticketsearch/methods/learned.py"])
    with pytest.raises(SystemExit) as exc:
        writer.ResultWriter("fake_bench", "dirty", results_dir=tmp_path)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "ticketsearch/methods/learned.py" in err and "--force-dirty" in err
    assert not (tmp_path / "fake_bench").exists()
    for how in ("flag", "env"):
        if how == "env":
            monkeypatch.setenv("TICKETSEARCH_FORCE_DIRTY", "1")
        w = writer.ResultWriter("fake_bench", how, results_dir=tmp_path, force_dirty=how == "flag")
        j, m = w.write({"x": 1}, "# Fake")
        prov = json.loads(j.read_text())["provenance"]
        assert prov["forced_dirty"] is True and prov["code_dirty_files"] == [
            "ticketsearch/methods/learned.py"
        ]
        md = m.read_text()
        assert md.startswith(
            "> **Dirty: measured with uncommitted changes** to `ticketsearch/methods/learned.py`"
        )
        assert "forced: uncommitted code changes" in md
    # a clean tree writes no such mark
    monkeypatch.delenv("TICKETSEARCH_FORCE_DIRTY")
    monkeypatch.setattr(writer, "code_dirty_files", lambda: [])
    j, m = writer.ResultWriter("fake_bench", "clean", results_dir=tmp_path).write({"x": 1}, "# Fake")
    assert "forced_dirty" not in json.loads(j.read_text())["provenance"] and m.read_text().startswith(
        "# Fake"
    )


def test_code_dirty_files_is_what_git_reports_for_the_measured_code():
    mod = importlib.import_module("benchmarks._writer")
    if not _in_git_checkout():
        assert mod.code_dirty_files() is None
        return
    out = _git("status", "--porcelain", "--untracked-files=all", "--", "ticketsearch", "benchmarks")
    assert out is not None
    expected = [
        line[3:]
        for line in out.splitlines()
        if line.strip() and not line[3:].startswith(("benchmarks/results/", "benchmarks/runs/"))
    ]
    assert mod.code_dirty_files() == expected


def test_every_script_accepts_force_dirty():
    """Every script that writes a result takes --force-dirty (through add_output_args) and passes it on."""
    for p in sorted(BENCH.glob("*.py")):
        text = p.read_text()
        if "ResultWriter(" in text and p.name != "_writer.py":
            assert "add_output_args(" in text and "force_dirty=args.force_dirty" in text, p.name


def test_paired_ratios_by_hand():
    """Each round's median over dense's in the same round, then the median over rounds: a slow spell of
    the machine (round 2, everything 10× slower) divides out instead of weighing on one mode."""
    from benchmarks._common import fmt_ratio, paired_ratios

    samples = {"dense": [1.0, 1.0, 10.0, 10.0, 2.0, 2.0], "m": [1.5, 1.3, 11.0, 13.0, 2.2, 2.6]}
    r = paired_ratios(samples, "dense", rounds=3)
    # rounds: median(1.5, 1.3) / 1 = 1.4; 12 / 10 = 1.2; 2.4 / 2 = 1.2
    assert r["m"]["median"] == pytest.approx(1.2) and r["m"]["rounds"] == 3
    assert (r["m"]["q1"], r["m"]["q3"]) == (pytest.approx(1.2), pytest.approx(1.3))
    assert r["dense"]["median"] == 1.0 and fmt_ratio(r["m"]) == "1.200× [1.200, 1.300]"
