"""A conformance suite for whole methods (strategies): learned supermasks, IMP, or a plugin's own.

Where :class:`~ticketsearch.testing.ScorerConformance` checks a scorer's ``score``, this runs the method end
to end through the runner on scikit-learn's digits (seconds on a CPU) and checks what every method owes
the rest of ticketsearch: a Mask with exactly the requested density under the method's selection rule,
determinism under a seed, resume that never recomputes a finished level, a run killed in the middle of a
level that resumes to the bit-identical masks, weights and metrics, pruned weights that are exactly zero in
every state it saves (final weights and checkpoints, including a mask schedule's), a mask file another
command can train, an identity (hash) that its declared fields and knobs alone decide, and ``--pattern``:
a method that declares ``accepts_pattern`` ends on the pattern (counted here, group by group), one that
does not refuses it in one line. It trains with
the model's own recipe (the method's, if it declares one), shortened to ``budget``::

    from ticketsearch.testing import MethodConformance

    class TestMyMethod(MethodConformance):
        method_name = "my-method"
        method_args = {"knob": 1}

``model`` (default ``mlp_digits``) names the network: any registered model that takes digits' (1, 8, 8).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from ..core.errors import ConfigError
from ..core.hparams import DatasetHparams, PruningHparams, RunHparams, TrainingHparams
from ..core.mask import Mask, exact_count

__all__ = ["MethodConformance"]

# one default run per method configuration, shared by the tests that only read it (a whole-method run is
# the suite's cost): hparams hash -> (the run's summary, the evaluation events it logged)
_REFERENCE: dict[str, tuple[Any, list[Path]]] = {}


class MethodConformance:
    """Mixin of end-to-end contract tests for a method; subclass as ``Test...`` and set ``method_name``."""

    method_name: ClassVar[str] = ""
    method_args: ClassVar[dict[str, Any]] = {}
    # the method's own hyperparameters (its ``hparams_cls`` fields, e.g. ``rewind``) by name
    method_hparams: ClassVar[dict[str, Any]] = {}
    # the network the contract is checked on (a model plugin runs the suite on its own model this way)
    model: ClassVar[str] = "mlp_digits"
    density: ClassVar[float] = 0.3
    budget: ClassVar[str] = "2ep"
    # False for methods whose own schedule sets per-level counts (IMP prunes a rate of the survivors)
    exact_density: ClassVar[bool] = True
    # how many evaluations, spread over the whole run, the kill-and-resume test kills the run at
    kill_points: ClassVar[int] = 3
    # the N:M pattern (and its density) a method that declares accepts_pattern is run under; None: skip
    pattern: ClassVar[str | None] = "2:4"
    pattern_density: ClassVar[float] = 0.5

    # -- hooks ----------------------------------------------------------------------------------------
    def name(self) -> str:
        if not self.method_name:
            raise TypeError(f"{type(self).__name__}: set method_name")
        return self.method_name

    def hparams(self, **pruning: Any) -> RunHparams:
        from ..methods import get_method
        from ..models import model_hparams, training_recipe

        method = get_method(self.name())
        training = method.recipe(self.model, "digits") or training_recipe(self.model)
        return RunHparams(
            model=model_hparams(self.model),
            dataset=DatasetHparams(dataset="digits"),
            training=TrainingHparams(
                **{**training.__dict__, "budget": self.budget, "eval_every": "1ep", "batch_size": 64}
            ),
            pruning=method.default_pruning(method=self.name(), **{"density": self.density, **pruning}),
            method_args=tuple(sorted(self.method_args.items())),
            method_hparams=tuple(sorted(self.method_hparams.items())),
        )

    def find(
        self,
        root: Path,
        seed: int = 0,
        on_eval: Callable[[Path, dict[str, Any]], None] | None = None,
        **pruning: Any,
    ) -> Any:
        from ..experiments.runner import RunOptions, run_find

        opts = RunOptions(root=root, device="cpu", progress=False, on_eval=on_eval)
        return run_find(self.hparams(**pruning), seed=seed, opts=opts)

    def reference(self, factory: pytest.TempPathFactory) -> tuple[Any, list[Path]]:
        """The default run (seed 0) of this configuration, made once per session and only read after:
        the tests that need a default run share it (determinism's first run, resume's, the kill test's
        reference, the mask file). Returns its summary and the evaluations it logged, in order."""
        key = f"{self.name()}:{self.hparams().hash()}"
        if key not in _REFERENCE:
            evals: list[Path] = []
            root = factory.mktemp(f"reference_{self.name()}")
            summary = self.find(root, on_eval=lambda path, rec: evals.append(path))
            _REFERENCE[key] = (summary, evals)
        return _REFERENCE[key]

    # -- the contract -----------------------------------------------------------------------------------
    @pytest.mark.parametrize("scope", ["layerwise", "global"])
    def test_exact_density_under_the_selection_rule(self, tmp_path: Path, scope: str) -> None:
        from ..methods import get_method

        if not self.exact_density or "scope" not in get_method(self.name()).fields:
            pytest.skip("the method's own schedule decides its counts")
        from ..core.select import layer_densities

        summary = self.find(tmp_path, scope=scope)
        row = summary.rows[-1]
        mask = Mask.load(row["mask"])
        sizes = {n: t.numel() for n, t in mask.items()}
        if scope == "global":
            assert mask.num_kept == exact_count(self.density, sum(sizes.values()))
        else:  # each layer at the density its distribution (uniform, ERK, ...) gives it
            hp = get_method(self.name()).canonical(self.hparams(scope=scope))
            shapes = {n: tuple(t.shape) for n, t in mask.items()}
            dens = layer_densities(shapes, self.density, hp.pruning.distribution)
            for n, c in mask.layer_counts().items():
                assert c == exact_count(dens[n], sizes[n]), (n, c)
        assert row["density"] == pytest.approx(mask.density)

    def test_deterministic_under_a_seed(
        self, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        a = self.reference(tmp_path_factory)[0].rows
        b = self.find(tmp_path / "b").rows
        assert len(a) == len(b)
        for ra, rb in zip(a, b):
            assert Mask.load(ra["mask"]).equals(Mask.load(rb["mask"]))
            assert ra["test_acc"] == rb["test_acc"]
        c = self.find(tmp_path / "c", seed=1).rows
        assert any(not Mask.load(ra["mask"]).equals(Mask.load(rc["mask"])) for ra, rc in zip(a, c))

    def test_finished_levels_are_never_recomputed(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        s = self.reference(tmp_path_factory)[0]
        files = {p: p.stat().st_mtime_ns for p in (s.run_dir / "replicate_0").rglob("*") if p.is_file()}
        again = self.find(s.run_dir.parent)
        assert [dict(r) for r in again.rows] == [dict(r) for r in s.rows]
        assert files == {
            p: p.stat().st_mtime_ns for p in (s.run_dir / "replicate_0").rglob("*") if p.is_file()
        }

    def test_killed_mid_level_resumes_bit_identical(
        self, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        ref, evals = self.reference(tmp_path_factory)
        _assert_pruned_are_zero(ref.run_dir)
        n = len(evals)
        assert n > 1, "the method's levels report no evaluation (does it log through its level?)"
        points = sorted(
            {max(1, min(n, round(n * (i + 1) / (self.kill_points + 1)))) for i in range(self.kill_points)}
        )
        for k in points:
            root = tmp_path / f"kill_{k}"
            seen = []

            def kill(path: Path, rec: dict[str, Any], seen: list[int] = seen, k: int = k) -> None:
                seen.append(1)
                if len(seen) == k:
                    raise _Killed(f"killed at evaluation {k} ({path.name}, iteration {rec['iteration']})")

            with pytest.raises(_Killed):
                self.find(root, on_eval=kill)
            _assert_pruned_are_zero(root)  # the checkpoint it left, and every level it finished
            again = self.find(root)
            assert len(again.rows) == len(ref.rows), f"killed at evaluation {k} of {n}"
            for a, b in zip(ref.rows, again.rows):
                where = f"level {a['level']} after a kill at evaluation {k} of {n}"
                assert Mask.load(a["mask"]).equals(Mask.load(b["mask"])), f"{where}: masks differ"
                for key in ("density", "test_acc", "test_loss", "es_iteration", "iterations"):
                    assert a.get(key) == b.get(key), f"{where}: {key} {a.get(key)} != {b.get(key)}"
                fa, fb = (
                    Path(a["mask"]).parent / "model_final.safetensors",
                    Path(b["mask"]).parent / "model_final.safetensors",
                )
                if fa.is_file():
                    sa, sb = _load(fa), _load(fb)
                    assert all(torch.equal(sa[x], sb[x]) for x in sa), f"{where}: final weights differ"

    def test_mask_file_trains_elsewhere(
        self, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        from ..experiments.runner import RunOptions, train_mask

        row = self.reference(tmp_path_factory)[0].rows[-1]
        mask = Mask.load(row["mask"])
        meta = mask.metadata
        assert (meta["model"], meta["dataset"], meta["method"]) == (self.model, "digits", self.name())
        hp = self.hparams().replace(pruning=PruningHparams(method="train"))
        t = train_mask(
            Path(row["mask"]), hp, seed=0, opts=RunOptions(root=tmp_path / "t", device="cpu", progress=False)
        )
        assert Mask.load(t.rows[0]["mask"]).equals(mask)
        assert t.rows[0]["iterations"] > 0

    def test_a_declared_pattern_is_kept(self, tmp_path: Path) -> None:
        """``accepts_pattern = True`` is a promise the rest of ticketsearch relies on (export packs the
        layers, ``load_ticket`` runs the N:M kernel): the ticket's mask keeps at most N of every M
        consecutive weights of a row, counted here without ``core.pattern``, and its sidecar says so
        (``Mask.load`` refuses a claim the tensors break). A method that does not declare it refuses
        ``--pattern`` in one line."""
        from ..core.pattern import parse_pattern
        from ..methods import get_method

        if self.pattern is None:
            pytest.skip("no pattern asked of this configuration")
        method = get_method(self.name())
        hp = self.hparams(pattern=self.pattern, density=self.pattern_density, allow_dense_layers=True)
        if not method.accepts_pattern:
            with pytest.raises(ConfigError, match="does not support --pattern") as refused:
                method.validate(hp)
            assert "\n" not in str(refused.value)
            return
        pat = parse_pattern(self.pattern)
        assert pat.kind == "nm", "the contract counts N:M groups"
        summary = self.find(
            tmp_path, pattern=self.pattern, density=self.pattern_density, allow_dense_layers=True
        )
        row = method.ticket_for(summary.rows, self.pattern_density)  # the one rule for "the ticket"
        mask = Mask.load(row["mask"])
        assert mask.metadata.get("pattern") == str(pat), "the ticket's sidecar does not claim the pattern"
        dense = set(mask.metadata.get("dense_layers") or [])
        assert dense != set(mask), "every layer was kept dense: the pattern was never applied"
        for name, t in mask.items():
            if name in dense:
                continue
            groups = t.reshape(t.shape[0], -1, pat.m).sum(-1)
            assert int(groups.max()) <= pat.n, f"{name}: a group of {pat.m} keeps {int(groups.max())}"
        assert row["density"] <= self.pattern_density + 1e-9
        _assert_pruned_are_zero(summary.run_dir)

    def test_identity_is_what_the_method_declares(self) -> None:
        from ..methods import get_method, own_hparams

        method = get_method(self.name())
        hp = method.canonical(self.hparams())
        assert method.canonical(hp) == hp  # canonical form is a fixed point
        # a shared field it does not read, or another method's own hyperparameter, never renames its run
        for name in method.ignored_fields():
            value = _another(getattr(PruningHparams(), name))
            other = self.hparams().replace(
                pruning=dataclasses.replace(self.hparams().pruning, **{name: value})
            )
            assert method.canonical(other).hash() == hp.hash(), f"shared field {name!r} renamed the run"
        for name, spec in own_hparams().items():
            if name not in method.own_fields():
                mine = dict(self.hparams().method_hparams)
                other = self.hparams().replace(
                    method_hparams=tuple(sorted({**mine, name: _another(spec.default)}.items()))
                )
                assert method.canonical(other).hash() == hp.hash(), f"{name!r} (of {spec.methods}) renamed it"
        if method.knobs is not None:
            bad = self.hparams().replace(method_args=(("no_such_knob", 1),))
            with pytest.raises(ConfigError, match="no_such_knob"):
                method.canonical(bad)


def _another(value: Any) -> Any:
    """A value of the same type as ``value`` and different from it."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 + 0.125
    return f"{value}_other"


class _Killed(Exception):
    """A kill in the middle of a level (not a user error: the runner must leave its files for the resume)."""


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _assert_pruned_are_zero(root: Path) -> None:
    """Every saved state under ``root`` keeps its pruned weights at exactly zero: a level's final weights
    and its checkpoint against the level's mask, a mask schedule's checkpoint against the masks it holds."""
    for mask_path in root.rglob("mask.safetensors"):
        mask = Mask.load(mask_path)
        final = mask_path.parent / "model_final.safetensors"
        states = [("model_final", _load(final))] if final.is_file() else []
        ck = mask_path.parent / "checkpoint.pt"
        if ck.is_file():
            states.append(("checkpoint", torch.load(ck, map_location="cpu", weights_only=True)["model"]))
        for what, state in states:
            for name, m in mask.items():
                if name in state:
                    assert bool((state[name][~m] == 0).all()), (
                        f"{mask_path.parent}: {what} {name} has pruned weights != 0"
                    )
    for ck in root.rglob("checkpoint.pt"):
        st = torch.load(ck, map_location="cpu", weights_only=True)
        for name, m in (st.get("masks") or {}).items():
            assert bool((st["model"][name][~m] == 0).all()), f"{ck}: {name} has pruned weights != 0"
