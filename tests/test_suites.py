"""Every built-in suite is valid data: its datasets, models, methods and knobs exist and its values pass
validation, so a typo in a shipped spec fails here and not an hour into a user's run."""

from __future__ import annotations

import pytest

from ticketsearch.bench import cells_of, load_suite
from ticketsearch.bench.spec import list_suites


@pytest.mark.parametrize("name", list_suites())
def test_builtin_suite_validates(name: str) -> None:
    suite = load_suite(name)
    suite.validate()
    assert suite.description and cells_of(suite)
    keys = [c.key for c in cells_of(suite)]
    assert len(keys) == len(set(keys))
    for a in suite.anchors:  # an anchor names a variant and dataset of its own suite
        assert a.variant in {v.name for v in suite.variants}
        assert a.dataset in {d.dataset for d in suite.datasets}


def test_snip_paper_is_snips_setup() -> None:
    suite = load_suite("snip-paper")
    (entry,) = suite.datasets
    t = entry.training
    assert (t["optimizer"], t["lr"], t["momentum"], t["weight_decay"], t["batch_size"]) == (
        "sgd", 0.1, 0.9, 5e-4, 100,
    )  # fmt: skip
    assert {0.05, 0.02} <= set(suite.densities)  # 95% and 98% sparsity, the paper's LeNet-300-100 rows
    for v in suite.variants:
        assert v.pruning == {"scope": "global", "score_batches": 1, "score_batch_size": 100}
