"""A conformance suite for whole methods (strategies): learned supermasks, IMP, or a plugin's own.

Where :class:`~ticketsearch.testing.ScorerConformance` checks a scorer's ``score``, this runs the method end
to end through the runner on scikit-learn's digits (seconds on a CPU) and checks what every method owes
the rest of ticketsearch: a Mask with exactly the requested density under the method's selection rule,
determinism under a seed, resume that never recomputes a finished level, a mask file another command can
train, and an identity (hash) that its declared fields and knobs alone decide::

    from ticketsearch.testing import MethodConformance

    class TestMyMethod(MethodConformance):
        method_name = "my-method"
        method_args = {"knob": 1}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from ..core.errors import ConfigError
from ..core.hparams import DatasetHparams, ModelHparams, PruningHparams, RunHparams, TrainingHparams
from ..core.mask import Mask, exact_count

__all__ = ["MethodConformance"]


class MethodConformance:
    """Mixin of end-to-end contract tests for a method; subclass as ``Test...`` and set ``method_name``."""

    method_name: ClassVar[str] = ""
    method_args: ClassVar[dict[str, Any]] = {}
    density: ClassVar[float] = 0.3
    budget: ClassVar[str] = "2ep"
    # False for methods whose own schedule sets per-level counts (IMP prunes a rate of the survivors)
    exact_density: ClassVar[bool] = True

    # -- hooks ----------------------------------------------------------------------------------------
    def name(self) -> str:
        if not self.method_name:
            raise TypeError(f"{type(self).__name__}: set method_name")
        return self.method_name

    def hparams(self, **pruning: Any) -> RunHparams:
        from ..methods import get_method

        method = get_method(self.name())
        training = method.recipe("mlp_digits", "digits") or TrainingHparams()
        return RunHparams(
            model=ModelHparams(model="mlp_digits"),
            dataset=DatasetHparams(dataset="digits"),
            training=TrainingHparams(
                **{**training.__dict__, "budget": self.budget, "eval_every": "1ep", "batch_size": 64}
            ),
            pruning=PruningHparams(method=self.name(), density=self.density, **pruning),
            method_args=tuple(sorted(self.method_args.items())),
        )

    def find(self, root: Path, seed: int = 0, **pruning: Any) -> Any:
        from ..experiments.runner import RunOptions, run_find

        return run_find(
            self.hparams(**pruning), seed=seed, opts=RunOptions(root=root, device="cpu", progress=False)
        )

    # -- the contract -----------------------------------------------------------------------------------
    @pytest.mark.parametrize("scope", ["layerwise", "global"])
    def test_exact_density_under_the_selection_rule(self, tmp_path: Path, scope: str) -> None:
        from ..methods import get_method

        if not self.exact_density or "scope" not in get_method(self.name()).fields:
            pytest.skip("the method's own schedule decides its counts")
        row = self.find(tmp_path, scope=scope).rows[-1]
        mask = Mask.load(row["mask"])
        sizes = {n: t.numel() for n, t in mask.items()}
        if scope == "global":
            assert mask.num_kept == exact_count(self.density, sum(sizes.values()))
        else:
            for n, c in mask.layer_counts().items():
                assert c == exact_count(self.density, sizes[n]), (n, c)
        assert row["density"] == pytest.approx(mask.density)

    def test_deterministic_under_a_seed(self, tmp_path: Path) -> None:
        a = self.find(tmp_path / "a").rows
        b = self.find(tmp_path / "b").rows
        assert len(a) == len(b)
        for ra, rb in zip(a, b):
            assert Mask.load(ra["mask"]).equals(Mask.load(rb["mask"]))
            assert ra["test_acc"] == rb["test_acc"]
        c = self.find(tmp_path / "c", seed=1).rows
        assert any(not Mask.load(ra["mask"]).equals(Mask.load(rc["mask"])) for ra, rc in zip(a, c))

    def test_finished_levels_are_never_recomputed(self, tmp_path: Path) -> None:
        s = self.find(tmp_path)
        files = {p: p.stat().st_mtime_ns for p in (s.run_dir / "replicate_0").rglob("*") if p.is_file()}
        again = self.find(tmp_path)
        assert [dict(r) for r in again.rows] == [dict(r) for r in s.rows]
        assert files == {
            p: p.stat().st_mtime_ns for p in (s.run_dir / "replicate_0").rglob("*") if p.is_file()
        }

    def test_mask_file_trains_elsewhere(self, tmp_path: Path) -> None:
        from ..experiments.runner import RunOptions, train_mask

        row = self.find(tmp_path).rows[-1]
        mask = Mask.load(row["mask"])
        meta = mask.metadata
        assert (meta["model"], meta["dataset"], meta["method"]) == ("mlp_digits", "digits", self.name())
        hp = self.hparams().replace(pruning=PruningHparams(method="train"))
        t = train_mask(
            Path(row["mask"]), hp, seed=0, opts=RunOptions(root=tmp_path / "t", device="cpu", progress=False)
        )
        assert Mask.load(t.rows[0]["mask"]).equals(mask)
        assert t.rows[0]["iterations"] > 0

    def test_identity_is_what_the_method_declares(self) -> None:
        from ..methods import get_method

        method = get_method(self.name())
        hp = method.canonical(self.hparams())
        assert method.canonical(hp) == hp  # canonical form is a fixed point
        for name in method.ignored_fields():  # a field it does not read never renames its run
            if name in ("rate", "output_rate"):
                other = self.hparams(**{name: 0.5})
                assert method.canonical(other).hash() == hp.hash()
        if method.knobs is not None:
            bad = self.hparams().replace(method_args=(("no_such_knob", 1),))
            with pytest.raises(ConfigError, match="no_such_knob"):
                method.canonical(bad)
