"""Capabilities instead of kinds: what each method answers, the one rule for "the ticket at density d",
and methods' own hyperparameters (declared beside the method, hashed for that method only)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ticketsearch.core.errors import ConfigError
from ticketsearch.core.hparams import PruningHparams, RunHparams, TrainingHparams
from ticketsearch.methods import LevelRow, Method, get_method, nearest_ticket, own_hparams

PKG = Path(__file__).resolve().parents[1] / "ticketsearch"


def _rows(*densities: float) -> list[LevelRow]:
    return [LevelRow(k, d, f"level_{k}/mask.safetensors") for k, d in enumerate(densities)]


def test_the_ticket_at_a_density_is_the_nearest_level_on_a_log_scale():
    # IMP's levels at 20% per level: 1, .8, .64, .512. Asked 0.6: |ln .64 - ln .6| = 0.065 beats
    # |ln .512 - ln .6| = 0.159 (and .8: 0.288)
    rows = _rows(1.0, 0.8, 0.64, 0.512)
    assert nearest_ticket(rows, 0.6).level == 2
    assert nearest_ticket(rows, 0.01).level == 3  # below the last level: the last level
    assert nearest_ticket(rows, 1.0).level == 1  # the dense level 0 is never the ticket
    # a tie on the log scale (0.8 and 0.2 are both a factor 2 from 0.4): the later level
    assert nearest_ticket(_rows(1.0, 0.8, 0.2), 0.4).level == 2
    # a moving-mask run: level 1 trained while the mask moved, level 2 the same mask retrained from init
    assert nearest_ticket(_rows(1.0, 0.05, 0.05), 0.05).level == 2
    assert nearest_ticket(_rows(0.05), 0.05).level == 0  # only a level 0: it answers
    # a one-ticket method (a dense baseline, then its ticket) answers with its ticket whatever is asked
    assert nearest_ticket(_rows(1.0, 0.3), 0.9).level == 1
    assert nearest_ticket([dict(r) for r in rows], 0.6)["level"] == 2  # the dict records of --json too
    for name in ("imp", "snip", "supermask", "early-bird", "gmp"):
        assert get_method(name).ticket_for(rows, 0.6).level == 2


# what each built-in answers: the rules the kinds used to stand for, written out by hand
CAPABILITIES = {
    # name: (trains weights, --controls, --then-train, bench's sanity checks, one run serves densities)
    "imp": (True, True, False, (), True),
    "snip": (True, True, False, ("reinit", "shuffle", "invert"), False),
    "magnitude": (True, True, False, ("reinit", "shuffle", "invert"), False),
    "synflow": (True, True, False, ("reinit", "shuffle"), False),
    "early-bird": (True, True, False, ("reinit", "shuffle"), False),
    "supermask": (False, False, True, (), False),
    "supermask-bernoulli": (False, False, True, (), False),
    # its level 2 trains the kept weights from init: that is the ticket, so no --then-train on top
    "gem-miner": (True, False, False, (), False),
    "gmp": (True, True, False, ("reinit", "shuffle"), False),
    "rigl": (True, True, False, ("reinit", "shuffle"), False),
    "set": (True, True, False, ("reinit", "shuffle"), False),
}


@pytest.mark.parametrize("name", sorted(CAPABILITIES))
def test_each_method_declares_what_it_can_do(name):
    m = get_method(name)
    got = (
        m.trains_weights,
        m.accepts_controls,
        m.accepts_then_train,
        m.sanity_checks,
        m.levels_serve_densities,
    )
    assert got == CAPABILITIES[name]


def test_inverted_is_the_same_run_with_the_ranking_upside_down():
    hp = RunHparams(pruning=PruningHparams(method="snip"), method_args=(("x", 1),))
    assert get_method("snip").inverted(hp).args == {"x": 1, "invert": True}
    with pytest.raises(ConfigError, match="invert"):
        get_method("imp").inverted(RunHparams())


def test_dense_baselines():
    training = TrainingHparams(lr=0.01)
    imp = get_method("imp")
    hp = imp.with_hparams(RunHparams(training=training, pruning=PruningHparams(density=0.05)), rewind="5it")
    dense = imp.dense_baseline(hp)
    # IMP's dense network is level 0 of the very run whose later levels are the tickets
    assert imp.identity(imp.canonical(dense)) == imp.identity(imp.canonical(hp))
    assert dense.pruning.density == 1.0
    # a supermask trains scores: its dense network trains weights, with the model's recipe by default
    sm = RunHparams(training=TrainingHparams(lr=0.1), pruning=PruningHparams(method="supermask"))
    weights = TrainingHparams(lr=0.003)
    assert get_method("supermask").dense_baseline(sm, weights).training == weights
    d = get_method("supermask").dense_baseline(sm)
    assert (d.pruning.method, d.pruning.density, d.method_args) == ("imp", 1.0, ())
    # a one-shot method's dense network trains as its tickets do, whatever weights says
    snip = RunHparams(training=training, pruning=PruningHparams(method="snip", density=0.1))
    assert get_method("snip").dense_baseline(snip, weights).training == training


def test_no_code_outside_methods_decides_by_a_kind_or_a_name():
    pattern = re.compile(
        r'(method|get_method\([^)]*\))\.kind\b|\.name *== *"imp"|pruning\.method *== *"imp"'
        r'|kind *(==|!=) *"(learned|oneshot|iterative|early|bernoulli|edge_popup)"'
    )
    hits = [
        f"{p.relative_to(PKG)}:{i}: {line.strip()}"
        for p in sorted(PKG.rglob("*.py"))
        if "methods" not in p.relative_to(PKG).parts[:1]
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1)
        if pattern.search(line)
    ]
    assert hits == []


# -- own hyperparameters ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ToyHparams:
    warmth: float = field(default=0.5, metadata={"help": "how warm"})


class _Toy(Method):
    """A method declared the way a plugin declares one (not registered)."""

    name = "toy"
    hparams_cls = _ToyHparams

    def run_levels(self, run):  # pragma: no cover - never run
        raise NotImplementedError


def test_an_own_field_at_its_default_names_the_same_run():
    toy = _Toy()
    base = RunHparams(pruning=PruningHparams(method="toy"))
    at_default = toy.canonical(toy.with_hparams(base, warmth=0.5))
    assert at_default.hash() == toy.canonical(base).hash() and "method_hparams" not in at_default.to_dict()
    warm = toy.canonical(toy.with_hparams(base, warmth=0.9))
    assert warm.to_dict()["method_hparams"] == {"warmth": 0.9} and warm.hash() != at_default.hash()
    assert toy.own(warm).warmth == 0.9 and toy.own(base).warmth == 0.5
    assert RunHparams.from_dict(warm.to_dict()) == warm
    with pytest.raises(
        ConfigError, match=r"unknown hyperparameter 'rate' for method 'toy' \(allowed: .*warmth"
    ):
        toy.with_hparams(base, rate=0.3)


def test_imps_and_early_birds_fields_are_their_own():
    assert "rate" not in {f.name for f in dataclasses.fields(PruningHparams)}
    assert set(get_method("imp").own_fields()) == {"rate", "output_rate", "rewind", "retrain"}
    assert set(get_method("early-bird").own_fields()) == {"eb_every", "eb_eps", "rewind"}
    flags = own_hparams()
    assert set(get_method("cs").own_fields()) == {"rewind"}
    assert flags["rewind"].flag == "--rewind-iter" and flags["rewind"].methods == ("cs", "early-bird", "imp")
    assert flags["rate"].methods == ("imp",) and flags["rate"].help.startswith("IMP:")
    # an IMP rate never reaches a SNIP run: not its field, so not its identity
    snip = get_method("snip")
    hp = RunHparams(pruning=PruningHparams(method="snip"))
    assert snip.canonical(hp.replace(method_hparams=(("rate", 0.5),))).hash() == snip.canonical(hp).hash()
