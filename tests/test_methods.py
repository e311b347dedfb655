"""Methods as strategies: the registry, each method's own identity (fields and knobs), default scopes."""

from __future__ import annotations

import pytest
from nets import with_pruning

from ticketsearch.core.errors import ConfigError, UnknownNameError
from ticketsearch.core.hparams import PruningHparams, RunHparams
from ticketsearch.methods import METHOD_STRATEGIES, LevelRow, OneShot, get_method, list_methods, method_names


def _hp(method: str, args: dict | None = None, **pruning) -> RunHparams:
    hp = RunHparams(pruning=PruningHparams(method=method), method_args=tuple(sorted((args or {}).items())))
    return with_pruning(hp, **pruning)


def _hash(method: str, args: dict | None = None, **pruning) -> str:
    return get_method(method).canonical(_hp(method, args, **pruning)).hash()


def test_every_method_resolves_with_its_kind():
    kinds = {m.name: m.kind for m in list_methods()}
    assert kinds["imp"] == "iterative" and kinds["synflow"] == "iterative"
    assert kinds["snip"] == kinds["grasp"] == kinds["magnitude"] == kinds["random"] == "oneshot"
    assert kinds["supermask"] == kinds["supermask-bernoulli"] == kinds["gem-miner"] == "learned"
    assert isinstance(get_method("snip"), OneShot)
    assert kinds["cs"] == "continuous"
    assert set(METHOD_STRATEGIES.names()) == {
        "cs",
        "imp",
        "early-bird",
        "gmp",
        "rigl",
        "set",
        "supermask",
        "supermask-bernoulli",
        "gem-miner",
    }
    assert "snip" in method_names() and "imp" in method_names()


def test_unknown_method_suggests():
    with pytest.raises(UnknownNameError, match="did you mean 'snip'"):
        get_method("snp")


def test_default_scope_follows_each_paper():
    # SNIP, GraSP and SynFlow select globally in the papers and their code; IMP (LeNet/Conv) and edge-popup
    # per layer
    scopes = {m.name: m.scope for m in list_methods()}
    assert scopes["snip"] == scopes["grasp"] == scopes["synflow"] == "global"
    assert scopes["imp"] == scopes["supermask"] == "layerwise"
    assert scopes["gem-miner"] == "global"  # the authors' BottomK freezing ranks all layers together
    assert get_method("snip").canonical(_hp("snip")).pruning.scope == "global"
    assert get_method("imp").canonical(_hp("imp")).pruning.scope == "layerwise"
    # the flag that says the default names the same run as no flag
    assert _hash("snip") == _hash("snip", scope="global") != _hash("snip", scope="layerwise")


def test_only_a_methods_own_fields_enter_its_hash():
    assert _hash("snip") == _hash("snip", rate=0.5, output_rate=0.3, rewind="5it")
    assert _hash("imp") != _hash("imp", rate=0.5)
    assert _hash("imp") == _hash("imp", score_batches=4, distribution="erk")
    # data-free scorers never draw batches: the batch count is not part of their identity
    assert _hash("magnitude") == _hash("magnitude", score_batches=4)
    assert _hash("snip") != _hash("snip", score_batches=4)
    assert _hash("supermask") == _hash("supermask", rounds=3)


def test_knobs_are_declared_typed_and_checked():
    # typed: "200" and 200.0 are the same run
    assert _hash("grasp", {"temperature": "200"}) == _hash("grasp", {"temperature": 200.0}) == _hash("grasp")
    with pytest.raises(
        ConfigError, match=r"unknown method argument 'temprature'.*allowed: chunk_size, invert, temperature"
    ):
        get_method("grasp").canonical(_hp("grasp", {"temprature": 1}))
    with pytest.raises(ConfigError, match="unknown method argument 'kernel'"):
        get_method("snip").canonical(_hp("snip", {"kernel": "fast"}))
    with pytest.raises(ConfigError, match="not a boolean"):
        get_method("supermask").canonical(_hp("supermask", {"scale_fan": "maybe"}))
    assert get_method("supermask").canonical(_hp("supermask", {"scale_fan": "off"})).args == {
        "scale_fan": False
    }
    with pytest.raises(ConfigError, match="weight_init"):
        get_method("supermask").validate(
            get_method("supermask").canonical(_hp("supermask", {"weight_init": "x"}))
        )


def test_one_knob_parser_for_every_method():
    """``method_arg`` (scorers) and the supermask knobs agree on booleans and integers."""
    from ticketsearch.core.hparams import coerce_knob
    from ticketsearch.methods.learned import SupermaskKnobs, knobs_from_args
    from ticketsearch.scorers import method_arg

    for text, value in [("on", True), ("off", False), ("yes", True), ("0", False)]:
        assert method_arg(_hp("x", {"flag": text}), "flag", False) is value
        assert knobs_from_args({"scale_fan": text}, SupermaskKnobs).scale_fan is value
        assert coerce_knob("flag", text, True) is value
    with pytest.raises(ConfigError, match="not a valid int"):
        coerce_knob("check_every", "2.5", 50)


@pytest.mark.parametrize("method", ["imp", "snip", "synflow"])
def test_validate_refuses_negative_rounds(method):
    m = get_method(method)
    with pytest.raises(ConfigError, match="rounds"):
        m.validate(m.canonical(_hp(method, rounds=-3)))


def test_level_row_is_typed_and_reads_like_the_json_record():
    row = LevelRow(
        1, 0.25, "m.safetensors", {"test_acc": 0.9, "es_iteration": 7}, controls={"reinit": {"test_acc": 0.8}}
    )
    assert row.test_acc == 0.9 and row.es_iteration == 7 and row.weights_trained
    assert row["test_acc"] == 0.9 and row["controls"]["reinit"]["test_acc"] == 0.8
    assert dict(row) == {
        "level": 1,
        "density": 0.25,
        "mask": "m.safetensors",
        "test_acc": 0.9,
        "es_iteration": 7,
        "controls": {"reinit": {"test_acc": 0.8}},
    }


def test_a_scorer_plugin_cannot_take_a_strategy_name():
    from ticketsearch.core.registry import Registry

    reg: Registry = Registry("method")
    reg.add("imp", object, source="some-plugin")
    reg.reserve(["imp"])
    assert "imp" not in reg.names()
    assert "already taken by a built-in method" in reg.broken()[0].error


def test_inverted_scores_keep_what_the_scorer_would_prune(tmp_path):
    """--arg invert=true (Frankle et al. 2021's check) on magnitude keeps the smallest |w| at init."""
    from ticketsearch.core import Mask, select
    from ticketsearch.core.hparams import DatasetHparams, ModelHparams, TrainingHparams
    from ticketsearch.experiments.rundir import load_state
    from ticketsearch.experiments.runner import RunOptions, run_find

    hp = RunHparams(
        model=ModelHparams(model="mlp_digits"),
        dataset=DatasetHparams(dataset="digits"),
        training=TrainingHparams(budget="1ep"),
        pruning=PruningHparams(method="magnitude", density=0.3),
        method_args=(("invert", True),),
    )
    s = run_find(hp, seed=0, opts=RunOptions(root=tmp_path, device="cpu", progress=False))
    init = load_state(s.run_dir / "replicate_0" / "init.safetensors")
    mask = Mask.load(s.rows[-1]["mask"])
    by_hand = select({n: -init[n].abs() for n in mask}, 0.3, scope="global")
    assert mask.equals(by_hand)
    plain = run_find(
        hp.replace(method_args=()), seed=0, opts=RunOptions(root=tmp_path, device="cpu", progress=False)
    )
    assert plain.run_dir != s.run_dir
