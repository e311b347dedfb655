"""Run directories are named by a hash of the canonical hparams: a refactoring of where a method keeps its
hyperparameters must not rename a single existing run. The names below were computed on main before the
methods declared their own hyperparameters (commit a04875b, where IMP's and early-bird's values were
PruningHparams fields); they are the pin, not the oracle of anything else."""

from __future__ import annotations

import pytest

from ticketsearch.core.hparams import (
    DatasetHparams,
    ModelHparams,
    PruningHparams,
    RunHparams,
    TrainingHparams,
    stable_hash,
)
from ticketsearch.methods import get_method


def _with(hp: RunHparams, **own: object) -> RunHparams:
    """``hp`` with the method's own hyperparameters set by name (as flags and bench suites set them)."""
    return get_method(hp.pruning.method).with_hparams(hp, **own)


def _cases() -> dict[str, RunHparams]:
    return {
        "imp_rewind": _with(
            RunHparams(
                dataset=DatasetHparams(dataset="mnist"),
                model=ModelHparams(model="lenet300_100"),
                pruning=PruningHparams(method="imp", density=0.05),
            ),
            rewind="100it",
        ),
        "imp_default": RunHparams(pruning=PruningHparams(method="imp")),
        "imp_finetune_rate": _with(
            RunHparams(pruning=PruningHparams(method="imp", scope="global")),
            rate=0.3,
            output_rate=-1.0,
            retrain="finetune",
        ),
        "early_bird": _with(
            RunHparams(
                pruning=PruningHparams(method="early-bird", density=0.1), method_args=(("window", 3),)
            ),
            eb_every="10it",
            eb_eps=0.05,
            rewind="5it",
        ),
        "early_bird_default": RunHparams(pruning=PruningHparams(method="early-bird")),
        "snip": RunHparams(
            training=TrainingHparams(lr=0.01),
            pruning=PruningHparams(method="snip", density=0.05, score_batches=3),
        ),
        "synflow": RunHparams(pruning=PruningHparams(method="synflow", density=0.01, rounds=10)),
        "supermask": RunHparams(
            pruning=PruningHparams(method="supermask", density=0.5),
            method_args=(("weight_init", "kaiming_normal"),),
        ),
        "bernoulli": RunHparams(
            pruning=PruningHparams(method="supermask-bernoulli", density=0.3),
            method_args=(("select", "topk"),),
        ),
        "gmp": RunHparams(pruning=PruningHparams(method="gmp", density=0.05), method_args=(("end", 0.5),)),
        "gmp_default": RunHparams(pruning=PruningHparams(method="gmp")),
        "rigl": RunHparams(pruning=PruningHparams(method="rigl", density=0.1, distribution="erk")),
        "set": RunHparams(pruning=PruningHparams(method="set", density=0.05)),
    }


# case -> (run identity of the canonical hparams, hash of the hparams as given: a study's identity)
PINNED = {
    "imp_rewind": ("691e18986cdb", "8332842aed0e"),
    "imp_default": ("71bd217e4fbb", "f6e8ab50187c"),
    "imp_finetune_rate": ("09f872835387", "09f872835387"),
    "early_bird": ("a0a898cb8985", "aee278f50e35"),
    "early_bird_default": ("f46956f12c37", "b2d4be5bdbad"),
    "snip": ("a93573a8c93c", "ab64d74e1418"),
    "synflow": ("ccd6101b7b7a", "47c632c86eec"),
    "supermask": ("8add12e44d3f", "92e07ccda147"),
    "bernoulli": ("d0c8a2aae63f", "9edd271c28b9"),
    # computed on main at 22b561a (gmp, before this branch's changes reached it)
    "gmp": ("e853accd7915", "25fea157a9ed"),
    "gmp_default": ("6a7cfcb3cbf2", "5df1633ea208"),
    # computed on main at 1422244 (rigl and set)
    "rigl": ("663345eb32a1", "875fe4f91694"),
    "set": ("0d7701879b10", "c15b278d7ebc"),
}


@pytest.mark.parametrize("case", sorted(PINNED))
def test_run_names_are_unchanged(case):
    hp = _cases()[case]
    method = get_method(hp.pruning.method)
    assert (method.identity(method.canonical(hp)), stable_hash(hp.to_dict())) == PINNED[case]


# suite -> (number of cells, hash of every cell's run directory name and hparams hash)
SUITES = {
    "cifar": (615, "b515f452d1e7"),
    "cs-mnist1d": (74, "78cf3c431638"),  # recorded 2026-12-07; its imp, rigl and cs-ticket cells: frontier's
    "dynamic-sparse": (26, "19d489ccdbf3"),
    "frontier": (462, "1626f987545a"),  # its MNIST imp, gmp, rigl and set cells reuse the runs above
    # the grids of the removed one-off scripts (issue 21), computed at their introduction
    "imp-lenet": (10, "6c71b05a33cd"),  # its IMP run is the one benchmarks/imp_lenet_mnist.py named
    "moving-masks": (20, "f6c563ae5116"),  # main at 22b561a
    # the frontier methods added 2026-12-07 (issue 20); its first 426 cells keep (426, "e643f24e7b05")
    "paper": (762, "2613c3f703f6"),
    "patterns": (58, "b4b2e8cebd43"),  # branch patterns (issue 22), computed when the suite was added
    "patterns-vit": (58, "6935fe52a6e3"),  # issue 22, computed when the suite was added (not run yet)
    "quick": (369, "7f47cf1adabe"),  # renamed on purpose: "evaluate": "end" (issue 21 part 4)
    "smallest-lenet": (14, "46392092f112"),  # the runs benchmarks/smallest_mnist.py named
    "smoke": (5, "b5693baafb8e"),
    "snip-paper": (48, "2b3d5d44a670"),
    "snip-paper-adam": (6, "712e073123f9"),
    "supermask-lenet": (24, "ceb2d907bdef"),
    "supermask-mnist1d": (52, "1fe92059afd4"),
}


@pytest.mark.parametrize("name", sorted(SUITES))
def test_bench_suites_keep_their_run_names(name):
    """Every cell of every shipped suite (their variants set IMP's and early-bird's fields by name) names
    the run it named before, so a rerun suite reuses its cached cells."""
    from ticketsearch.bench.runner import DENSE, _entry, _hparams, cells_of
    from ticketsearch.bench.spec import load_suite

    suite = load_suite(name)
    names = []
    for cell in cells_of(suite):
        variant = None if cell.variant == DENSE else next(v for v in suite.variants if v.name == cell.variant)
        hp, _ = _hparams(
            _entry(suite, cell), variant, 1.0 if variant is None else cell.density, suite.evaluate
        )
        method = get_method(hp.pruning.method)
        canon = method.canonical(hp)
        names.append(
            f"{cell.key} {canon.pruning.method}_{method.identity(canon)} {stable_hash(hp.to_dict())}"
        )
    assert (len(names), stable_hash(sorted(names))) == SUITES[name]


def test_old_hparams_json_reads_back_to_the_same_name():
    """An hparams.json written before the move (IMP's fields in "pruning") reads back into the method's own
    hyperparameters and names the same run."""
    old = {
        "model": {"model": "auto", "init": "kaiming_normal"},
        "dataset": {"dataset": "digits", "val_size": -1.0, "resize": 0},
        "training": RunHparams().to_dict()["training"],
        "pruning": {
            **{k: v for k, v in RunHparams().to_dict()["pruning"].items()},
            "method": "imp",
            "rewind": "100it",
            "retrain": "rewind",
        },
        "method_args": {},
    }
    hp = RunHparams.from_dict(old)
    assert hp.own == {"rewind": "100it", "retrain": "rewind"}
    assert hp.to_dict() == old
    imp = get_method("imp")
    assert imp.own(hp).rewind == "100it" and imp.own(hp).rate == 0.2
