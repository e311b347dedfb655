"""Every built-in one-shot scorer passes the conformance suite plugin authors run (new built-ins: for free)."""

from __future__ import annotations

import pytest

from ticketsearch.scorers import SCORERS
from ticketsearch.testing import MethodConformance, ScorerConformance

ONESHOT = [
    e.name for e in SCORERS.entries() if getattr(e.obj, "kind", "") == "oneshot" and e.source == "built-in"
]


def test_builtins_present() -> None:
    assert {"magnitude", "random", "snip", "grasp", "synflow"} <= set(ONESHOT)


class TestBuiltinConformance(ScorerConformance):
    @pytest.fixture(params=ONESHOT)
    def scorer(self, request):
        return SCORERS.get(request.param)()


class TestLearnedConformance(MethodConformance):
    """The learned methods pass the method suite (end to end on digits)."""

    # Bernoulli's default Mask keeps what it learned (s > 0); select=topk is its fixed-budget rule
    @pytest.fixture(autouse=True, params=[("supermask", {}), ("supermask-bernoulli", {"select": "topk"})])
    def _method(self, request):
        self.method_name, self.method_args = request.param


class TestIMPConformance(MethodConformance):
    method_name = "imp"
    density = 0.64  # two levels of 20% (counts per level are tested against the paper's rule in test_imp)
    exact_density = False
