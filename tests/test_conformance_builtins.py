"""Every built-in one-shot scorer passes the conformance suite plugin authors run (new built-ins: for free)."""

from __future__ import annotations

import pytest

from ticketsearch.methods import METHOD_STRATEGIES
from ticketsearch.scorers import SCORERS
from ticketsearch.testing import MethodConformance, ScorerConformance

ONESHOT = [
    e.name for e in SCORERS.entries() if getattr(e.obj, "kind", "") == "oneshot" and e.source == "built-in"
]


def test_builtins_present() -> None:
    assert {"magnitude", "random", "snip", "grasp", "synflow", "prospr", "force"} <= set(ONESHOT)


class TestBuiltinConformance(ScorerConformance):
    @pytest.fixture(params=ONESHOT)
    def scorer(self, request):
        return SCORERS.get(request.param)()


# every built-in strategy runs the method suite (end to end on digits); a new one must add its row here
STRATEGIES: dict[str, dict] = {
    "supermask": {},
    # Bernoulli's default Mask keeps what it learned (s > 0); select=topk is its fixed-budget rule
    "supermask-bernoulli": {"method_args": {"select": "topk"}},
    # a freeze every 5 steps, so the frozen set grows several times within the suite's short budget; 3
    # epochs and 5 kills, so a kill lands in level 1 after a checkpoint written between freezes; select=topk
    # records every live weight, the exact count the freezes reach (the default keeps those with s > 0.5)
    "gem-miner": {
        "density": 0.2,
        "method_args": {"every": "5it", "select": "topk"},
        "budget": "3ep",
        "kill_points": 5,
    },
    # two levels of 20% (counts per level are tested against the paper's rule in test_imp)
    "imp": {"density": 0.64, "exact_density": False},
    "early-bird": {"density": 0.5},
    "gmp": {"density": 0.2},
    # a move every 5 steps, so the mask moves several times within the suite's short budget
    "rigl": {"density": 0.2, "method_args": {"every": 5}},
    "set": {"density": 0.2, "method_args": {"every": 5}},
    # two rounds (a kill may land in either; the second starts from the first's scores) and a rewind point
    "cs": {"density": 0.2, "method_args": {"rounds": 2}, "method_hparams": {"rewind": "5it"}},
}


def test_every_builtin_strategy_runs_the_suite():
    builtins = {e.name for e in METHOD_STRATEGIES.entries() if e.source == "built-in"}
    assert builtins == set(STRATEGIES)


class TestStrategyConformance(MethodConformance):
    @pytest.fixture(autouse=True, params=sorted(STRATEGIES))
    def _method(self, request):
        self.method_name = request.param
        for key, value in STRATEGIES[request.param].items():
            setattr(self, key, value)
