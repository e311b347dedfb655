"""Every built-in one-shot scorer passes the conformance suite plugin authors run (new built-ins: for free)."""

from __future__ import annotations

import pytest

from ticketsearch.scorers import SCORERS
from ticketsearch.testing import ScorerConformance

ONESHOT = [
    e.name for e in SCORERS.entries() if getattr(e.obj, "kind", "") == "oneshot" and e.source == "built-in"
]


def test_builtins_present() -> None:
    assert {"magnitude", "random", "snip", "grasp", "synflow"} <= set(ONESHOT)


class TestBuiltinConformance(ScorerConformance):
    @pytest.fixture(params=ONESHOT)
    def scorer(self, request):
        return SCORERS.get(request.param)()
