"""Third-party scorers: the example plugin installs and is found by entry point; a broken one is isolated."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ticketsearch.core.mask import Mask
from ticketsearch.core.select import select
from ticketsearch.models import create_model
from ticketsearch.sparse import prunable_shapes

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "plugin_scorer"
METHOD_EXAMPLE = REPO / "examples" / "plugin_method"


def _env(*paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    extra = [str(p) for p in paths] + [str(REPO)]
    env["PYTHONPATH"] = os.pathsep.join(extra + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _install(EXAMPLE, "ticketsearch_plugin_example", tmp_path_factory)


@pytest.fixture(scope="module")
def installed_method_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _install(METHOD_EXAMPLE, "ticketsearch_method_example", tmp_path_factory)


def _install(example: Path, dist: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip-install an example into a private target directory.

    A --target install instead of the shared venv: entry points are found the same way (a dist-info on
    sys.path), nothing needs uninstalling, and tests running in parallel never see the plugin appear.
    The source is copied first so the build leaves no build/ or egg-info in the checkout.
    """
    tmp = tmp_path_factory.mktemp("plugin")
    src = tmp / "src"
    shutil.copytree(example, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp / "site"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--quiet",
        "--target",
        str(target),
        str(src),
    ]
    proc = _run(cmd, dict(os.environ))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(target.glob(f"{dist}-*.dist-info"))
    return target


def test_example_plugin_is_listed_and_usable(installed_plugin: Path) -> None:
    env = _env(installed_plugin)
    listing = _run([sys.executable, "-m", "ticketsearch", "list", "methods"], env)
    assert listing.returncode == 0, listing.stderr
    line = next((ln for ln in listing.stdout.splitlines() if ln.split()[:1] == ["fisher"]), None)
    assert line is not None, listing.stdout
    assert "oneshot" in line and "ticketsearch-plugin-example" in line.replace("_", "-")
    assert "Fisher pruning" in line
    code = textwrap.dedent(
        """
        import torch
        from ticketsearch.core.hparams import PruningHparams, RunHparams
        from ticketsearch.scorers import SCORERS, find_mask
        from ticketsearch.testing import conformance_models, make_batches
        cls = SCORERS.get("fisher")
        assert cls.name == "fisher" and SCORERS.entry("fisher").source != "built-in"
        model = conformance_models()["mlp"]()
        hp = RunHparams(pruning=PruningHparams(method="fisher", density=0.1, scope="global"))
        mask, cost = find_mask(cls(), model, make_batches(), hp)
        print("KEPT", mask.num_kept, mask.metadata["method"], cost["forward_passes"])
        """
    )
    proc = _run([sys.executable, "-c", code], env)
    assert proc.returncode == 0, proc.stderr
    assert "fisher" in proc.stdout and "KEPT" in proc.stdout


def test_example_plugin_passes_the_conformance_suite(installed_plugin: Path, tmp_path: Path) -> None:
    tests = tmp_path / "tests"
    shutil.copytree(EXAMPLE / "tests", tests)
    proc = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
        _env(installed_plugin),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


def test_example_method_plugin_moves_its_mask_and_passes_the_conformance_suite(
    installed_method_plugin: Path, tmp_path: Path
) -> None:
    """The moving-mask example (examples/plugin_method): found through the entry point, its mask moves
    during training at constant density, and the method suite (kill mid-level + bit-identical resume,
    pruned weights zero in every saved state) passes as its authors would run it."""
    env = _env(installed_method_plugin)
    listing = _run([sys.executable, "-m", "ticketsearch", "list", "methods"], env)
    assert listing.returncode == 0, listing.stderr
    assert any(ln.split()[:1] == ["prune-regrow"] for ln in listing.stdout.splitlines()), listing.stdout
    run = _run(
        [sys.executable, "-m", "ticketsearch", "find", "--method", "prune-regrow", "--dataset", "digits",
         "--density", "0.2", "--budget", "60it", "--arg", "every=10", "--root", str(tmp_path / "runs"),
         "--no-progress", "--json"],
        env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    row = json.loads(run.stdout)["rows"][-1]
    final = Mask.load(row["mask"])
    assert row["density"] == pytest.approx(0.2, abs=1e-3)
    # the start mask, made as the plugin documents it (a random selection at the density, from the seed),
    # has the final mask's per-layer counts but not its bits: the mask moved while it trained
    shapes = prunable_shapes(create_model("mlp_digits", (1, 8, 8), 10))
    g = torch.Generator().manual_seed(0)
    start = select({n: torch.rand(sh, generator=g) for n, sh in shapes.items()}, 0.2, scope="layerwise")
    assert start.layer_counts() == final.layer_counts()
    assert not start.equals(final)
    tests = tmp_path / "tests"
    shutil.copytree(METHOD_EXAMPLE / "tests", tests)
    proc = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
        env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


def test_broken_plugin_is_listed_and_builtins_still_work(tmp_path: Path) -> None:
    """A dist-info whose entry point imports a module that raises: listed as BROKEN, nothing else breaks."""
    site = tmp_path / "site"
    dist = site / "broken_scorer_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-scorer-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[ticketsearch.scorers]\nbroken_thing = broken_scorer_mod:Scorer\n"
    )
    (site / "broken_scorer_mod.py").write_text("raise RuntimeError('plugin exploded on import')\n")
    env = _env(site)
    listing = _run([sys.executable, "-m", "ticketsearch", "list", "methods"], env)
    assert listing.returncode == 0, listing.stderr
    line = next(ln for ln in listing.stdout.splitlines() if ln.startswith("broken_thing"))
    assert "BROKEN" in line and "plugin exploded on import" in line and "broken-scorer-plugin" in line
    assert any(ln.startswith("snip ") for ln in listing.stdout.splitlines())
    code = textwrap.dedent(
        """
        from ticketsearch.core.errors import UnknownNameError
        from ticketsearch.core.hparams import PruningHparams, RunHparams
        from ticketsearch.scorers import SCORERS, find_mask
        from ticketsearch.testing import conformance_models, make_batches
        mask, _ = find_mask(SCORERS.get("snip")(), conformance_models()["mlp"](), make_batches(),
                            RunHparams(pruning=PruningHparams(method="snip", density=0.2)))
        try:
            SCORERS.get("broken_thing")
        except UnknownNameError as exc:
            print("ERR", exc)
        print("OK", round(mask.density, 1))
        """
    )
    proc = _run([sys.executable, "-c", code], env)
    assert proc.returncode == 0, proc.stderr
    assert "OK 0.2" in proc.stdout
    assert "failed to load" in proc.stdout and "plugin exploded on import" in proc.stdout


def test_entry_point_method_gets_its_registered_name(tmp_path: Path) -> None:
    """A strategy found through the ``ticketsearch.methods`` entry-point group is the name it is
    registered under, even when it subclasses a built-in (whose class says ``imp``): messages, the run
    directory and ``list methods`` all name it."""
    site = tmp_path / "site"
    dist = site / "gentle_imp_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gentle-imp-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ticketsearch.methods]\ngentle-imp = gentle_imp_mod:GentleIMP\n")
    (site / "gentle_imp_mod.py").write_text(
        textwrap.dedent(
            '''
            from ticketsearch.methods import IMP

            class GentleIMP(IMP):
                """IMP with a knob, to see the plugin's name in a message."""

                knobs = {"softness": 1.0}
            '''
        )
    )
    env = _env(site)
    listing = _run([sys.executable, "-m", "ticketsearch", "list", "methods"], env)
    assert listing.returncode == 0, listing.stderr
    line = next(ln for ln in listing.stdout.splitlines() if ln.startswith("gentle-imp"))
    assert "gentle-imp-plugin" in line
    bad = _run(
        [sys.executable, "-m", "ticketsearch", "find", "--method", "gentle-imp", "--arg", "bogus=1"],
        env,
        cwd=tmp_path,
    )
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.startswith("error:") and "for method 'gentle-imp'" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "runs").exists()
    code = textwrap.dedent(
        """
        from ticketsearch.methods import get_method
        from ticketsearch.methods.imp import IMP
        m = get_method("gentle-imp")
        print("NAME", m.name, IMP.name, get_method("imp").name)
        """
    )
    proc = _run([sys.executable, "-c", code], env)
    assert proc.returncode == 0, proc.stderr
    assert "NAME gentle-imp imp imp" in proc.stdout
