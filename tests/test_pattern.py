"""Selection under a sparsity pattern (N:M, block:RxC) against masks worked out by hand."""

from __future__ import annotations

import json

import pytest
import torch

from ticketsearch.core.errors import ConfigError, DataError, MaskMismatchError
from ticketsearch.core.mask import Mask
from ticketsearch.core.pattern import Pattern, check_pattern, parse_pattern
from ticketsearch.core.select import (
    check_selection,
    claim_pattern,
    select,
    select_counts,
    select_global,
    select_growth,
)


def _b(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


# -- parsing ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,expected",
    [
        ("unstructured", Pattern("unstructured")),
        ("2:4", Pattern("nm", n=2, m=4)),
        (" 1:4 ", Pattern("nm", n=1, m=4)),
        ("4:8", Pattern("nm", n=4, m=8)),
        ("block:2x2", Pattern("block", r=2, c=2)),
        ("BLOCK:4x1", Pattern("block", r=4, c=1)),
    ],
)
def test_parse_pattern(text: str, expected: Pattern) -> None:
    assert parse_pattern(text) == expected
    assert parse_pattern(str(expected)) == expected  # the canonical spelling parses back


@pytest.mark.parametrize("bad", ["2:", "4:2", "0:4", "2-4", "block:2", "block:0x2", "2:4000", "blocks:2x2"])
def test_bad_pattern_is_one_line_naming_it(bad: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_pattern(bad)
    msg = str(e.value)
    assert repr(bad) in msg and "\n" not in msg and "block:RxC" in msg


@pytest.mark.parametrize("bad", ["4:4", "block:1x1"])
def test_degenerate_patterns_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="unstructured"):
        parse_pattern(bad)


# -- N:M ----------------------------------------------------------------------------------------------------
SCORES_2x8 = torch.tensor(
    [
        [1.0, 4.0, 3.0, 2.0, 5.0, 5.0, 5.0, 5.0],  # group 1: a four-way tie → indices 4, 5
        [0.0, 0.0, 1.0, 0.0, 8.0, 7.0, 9.0, -6.0],  # group 0: 1 then the first of three tied zeros
    ]
)


def test_two_four_by_hand() -> None:
    m = select({"w": SCORES_2x8}, 0.5, pattern="2:4")
    assert torch.equal(m["w"], _b([[0, 1, 1, 0, 1, 1, 0, 0], [1, 0, 1, 0, 1, 0, 1, 0]]))
    assert m.metadata["pattern"] == "2:4"
    check_pattern(m, "2:4")


def test_one_four_by_hand() -> None:
    m = select({"w": SCORES_2x8}, 0.25, pattern="1:4")
    assert torch.equal(m["w"], _b([[0, 1, 0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0, 1, 0]]))


def test_two_four_at_lower_density_is_topk_within_the_groups() -> None:
    # 2:4 allows {4,3 | 5,5} and {0,1 | 8,9}; the best 4 of those 8 (25% of 16), ties to the lower index
    m = select({"w": SCORES_2x8}, 0.25, pattern="2:4", scope="layerwise")
    assert torch.equal(m["w"], _b([[0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 0, 1, 0]]))
    check_pattern(m, "2:4")


def test_two_four_never_revives_a_pruned_weight() -> None:
    current = {"w": _b([[1, 0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0, 1]])}
    m = select({"w": SCORES_2x8}, 0.5, pattern="2:4", current=current)
    # row 0 group 0: only 1.0 and 2.0 alive → both; row 1 group 1: only -6 alive → it alone
    assert torch.equal(m["w"], _b([[1, 0, 0, 1, 1, 1, 0, 0], [1, 0, 1, 0, 0, 0, 0, 1]]))
    assert m.is_subset_of(current)


def test_conv_groups_run_along_the_flattened_input() -> None:
    # [out=1, in=2, kh=1, kw=2]: the row is (in0kw0, in0kw1, in1kw0, in1kw1), one group of 4
    s = torch.tensor([[[[1.0, 3.0]], [[4.0, 2.0]]]])
    m = select({"c": s}, 0.5, pattern="2:4")
    assert torch.equal(m["c"], torch.tensor([[[[False, True]], [[True, False]]]]))


def test_density_above_n_over_m_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"above what pattern 2:4 keeps \(0.5\)"):
        select({"w": SCORES_2x8}, 0.6, pattern="2:4")


def test_unfit_layer_is_named_or_kept_dense() -> None:
    scores = {"a": SCORES_2x8, "b": torch.arange(6.0).reshape(2, 3)}
    with pytest.raises(ConfigError) as e:
        select(scores, 0.5, pattern="2:4")
    assert "b [2, 3]" in str(e.value) and "'a'" not in str(e.value) and "--allow-dense-layers" in str(e.value)
    m = select(scores, 0.5, pattern="2:4", allow_dense_layers=True)
    assert bool(m["b"].all()) and m.metadata["dense_layers"] == ["b"]
    check_pattern(m, "2:4", dense_layers=["b"])
    with pytest.raises(MaskMismatchError, match="'b'"):
        check_pattern(m, "2:4")


# -- blocks ------------------------------------------------------------------------------------------------
SCORES_4x4 = torch.tensor(
    [
        [1.0, 1.0, 0.0, 9.0],
        [1.0, 1.0, 0.0, 0.0],
        [2.0, 0.0, 3.0, 3.0],
        [2.0, 0.0, 0.0, -3.0],
    ]
)  # block sums (2x2, row-major): 4, 9, 4, 3


def test_block_by_hand_with_a_tie() -> None:
    m = select({"w": SCORES_4x4}, 0.5, pattern="block:2x2")
    # the 9-block, then the first of the two 4-blocks (the lower block index)
    assert torch.equal(m["w"], _b([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]))
    check_pattern(m, "block:2x2")


def test_block_counts_are_exact_and_global_across_layers() -> None:
    other = torch.full((2, 4), 5.0)  # two blocks of sum 20: above every block of SCORES_4x4
    m = select({"w": SCORES_4x4, "v": other}, 0.5, pattern="block:2x2", scope="global")
    assert m.layer_counts() == {"w": 4, "v": 8}  # 3 of 6 blocks: both of v, the 9-block of w
    assert bool(m["w"][0:2, 2:4].all())


def test_block_with_a_pruned_weight_stays_pruned() -> None:
    current = {"w": torch.ones(4, 4, dtype=torch.bool)}
    current["w"][0, 3] = False  # the 9-block is no longer whole
    m = select({"w": SCORES_4x4}, 0.5, pattern="block:2x2", current=current)
    assert torch.equal(m["w"], _b([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]))


def test_check_pattern_names_the_offending_group() -> None:
    bad = Mask({"w": _b([[1, 1, 1, 0, 0, 0, 0, 0]])})
    with pytest.raises(MaskMismatchError, match=r"'w' breaks pattern 2:4: row 0, columns 0..3 keep 3"):
        check_pattern(bad, "2:4")
    with pytest.raises(MaskMismatchError, match="block at row 0, column 0"):
        check_pattern(Mask({"w": _b([[1, 0], [1, 1]])}), "block:2x2")


# -- the mask file ------------------------------------------------------------------------------------------
def test_pattern_survives_save_and_load(tmp_path) -> None:
    m = select({"w": SCORES_2x8}, 0.5, pattern="2:4")
    path = m.save(tmp_path / "m.safetensors")
    assert json.loads((tmp_path / "m.json").read_text())["pattern"] == "2:4"
    assert Mask.load(path).metadata["pattern"] == "2:4"


def test_a_sidecar_claiming_a_pattern_the_tensor_breaks_is_refused(tmp_path) -> None:
    m = select(
        {"w": SCORES_2x8}, 0.5, scope="layerwise"
    )  # unstructured: row 1 keeps 8, 7, 9, 1... in a group
    path = m.save(tmp_path / "m.safetensors", pattern="2:4")
    with pytest.raises(DataError) as e:
        Mask.load(path)
    assert "2:4" in str(e.value) and "'w'" in str(e.value) and "\n" not in str(e.value)


def test_a_sidecar_claiming_a_bad_pattern_is_refused(tmp_path) -> None:
    path = Mask({"w": _b([[1, 0, 1, 0]])}).save(tmp_path / "m.safetensors", pattern="3:2")
    with pytest.raises(DataError, match="'3:2'"):
        Mask.load(path)


# -- the run's identity -------------------------------------------------------------------------------------
def test_pattern_enters_the_hash_only_when_not_default() -> None:
    from ticketsearch.core.hparams import PruningHparams, RunHparams
    from ticketsearch.methods import get_method

    method = get_method("magnitude")

    def name(**pruning: object) -> str:
        return method.canonical(RunHparams(pruning=PruningHparams(method="magnitude", **pruning))).hash()

    base = RunHparams(pruning=PruningHparams(method="magnitude"))
    assert "pattern" not in base.to_dict()["pruning"]  # runs named before the field keep their names
    assert name() == name(pattern="unstructured") == name(allow_dense_layers=True)
    assert name(pattern="2:4", density=0.5) == name(pattern=" 2:4", density=0.5)
    assert name(pattern="2:4", density=0.5) not in (name(density=0.5), name(pattern="1:2", density=0.5))
    assert name(pattern="2:4", density=0.5) != name(pattern="2:4", density=0.5, allow_dense_layers=True)


@pytest.mark.parametrize(
    "method,pattern,extra",
    [
        ("magnitude", "2:4", []),
        ("synflow", "2:4", ["--rounds", "3"]),  # the first round makes the groups, later ones prune within
        ("snip", "block:2x4", []),
    ],
)
def test_find_with_a_pattern_writes_a_mask_that_obeys_it(tmp_path, capsys, method, pattern, extra) -> None:
    from clitools import run_cli

    root = tmp_path / "runs"
    args = ["find", "--dataset", "digits", "--no-progress", "--device", "cpu", "--budget", "2it", *extra]
    r = run_cli(
        capsys, *args, "--method", method, "--pattern", pattern, "--density", "0.25", "--root", str(root)
    )
    assert r.returncode == 0, r.stderr
    (path,) = root.glob(f"{method}_*/replicate_0/level_1/mask.safetensors")
    m = Mask.load(path)  # verifies the claim
    assert m.metadata["pattern"] == pattern and abs(m.density - 0.25) < 1e-9
    for t in m.values():  # independent counts on the [out, in] weights of the MLP
        if pattern == "2:4":  # no group of 4 along a row keeps more than 2
            assert int(t.reshape(t.shape[0], -1, 4).sum(-1).max()) <= 2
        else:  # every 2x4 tile is all kept or all pruned
            tiles = t.reshape(t.shape[0] // 2, 2, -1, 4).sum(dim=(1, 3))
            assert bool(((tiles == 0) | (tiles == 8)).all())


def test_a_layer_density_above_n_over_m_is_refused_by_name() -> None:
    # ERK gives the small layer 'a' more than half at an overall 40%: 2:4 cannot hold that
    scores = {"a": torch.rand(4, 8, generator=torch.Generator().manual_seed(0)), "b": torch.ones(64, 64)}
    with pytest.raises(ConfigError, match="2:4 keeps at most 0.5 of a layer, but a would keep 1"):
        select(scores, 0.4, pattern="2:4", scope="layerwise", distribution="erk")
    with pytest.raises(ConfigError, match="--min-layer-density would keep 0.6"):
        select(scores, 0.4, pattern="2:4", min_layer_density=0.6)
    m = select(scores, 0.4, pattern="2:4", scope="layerwise")
    assert m.layer_counts() == {"a": 13, "b": 1638}  # round-half-up(0.4 × 32), (0.4 × 4096)


def test_a_sidecar_cannot_exempt_a_layer_that_fits(tmp_path) -> None:
    m = select({"w": SCORES_2x8}, 0.5, scope="layerwise")  # breaks 2:4 (see above)
    path = m.save(tmp_path / "m.safetensors", pattern="2:4", dense_layers=["w"])
    with pytest.raises(DataError, match="'w' of shape \\[2, 8\\] is listed as dense"):
        Mask.load(path)


# -- a schedule walking down to the pattern (descent) and the count-based selections -------------------------
def test_descent_above_n_over_m_keeps_every_groups_n_best_first() -> None:
    # 75% of 16 = 12. The groups' 2 best: {4,3 | 5,5} and {1,0 | 9,8} (8 weights); then the best 4 of the
    # rest: 5, 5 (row 0, columns 6, 7), 7 (row 1, column 5), 2 (row 0, column 3).
    m = select({"w": SCORES_2x8}, 0.75, pattern="2:4", scope="layerwise", descent=True)
    assert torch.equal(m["w"], _b([[0, 1, 1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 1, 1, 0]]))
    assert "pattern" not in m.metadata  # it keeps 4 of a group: no claim of 2:4
    # plain top-12 would keep only one weight (the 1) of row 1's first group
    plain = select({"w": SCORES_2x8}, 0.75, scope="layerwise")
    assert int(plain["w"][1, :4].sum()) == 1


@pytest.mark.parametrize("density", [0.5, 0.25])
@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_descent_at_or_below_n_over_m_is_the_plain_pattern_rule(density: float, scope: str) -> None:
    scores = {"w": SCORES_2x8, "v": torch.arange(16.0).reshape(2, 8).flip(1)}
    a = select(scores, density, pattern="2:4", scope=scope, descent=True)
    b = select(scores, density, pattern="2:4", scope=scope)
    assert all(torch.equal(a[n], b[n]) for n in scores)
    assert a.metadata["pattern"] == "2:4"


def test_select_counts_under_n_m_is_the_floor_rule_then_the_cap() -> None:
    # count 12: the floor rule (as above); count 8: the groups' 2 best; count 3: the best 3 of those
    m12 = select_counts({"w": SCORES_2x8}, {"w": 12}, pattern="2:4")
    assert torch.equal(m12["w"], _b([[0, 1, 1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 1, 1, 0]]))
    m8 = select_counts({"w": SCORES_2x8}, {"w": 8}, current=m12, pattern="2:4")
    assert torch.equal(m8["w"], _b([[0, 1, 1, 0, 1, 1, 0, 0], [1, 0, 1, 0, 1, 0, 1, 0]]))
    m3 = select_counts({"w": SCORES_2x8}, {"w": 3}, current=m8, pattern="2:4")
    assert torch.equal(
        m3["w"],
        _b([[0, 0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0, 1, 0]]),
    )  # 9, 8, then the first of the two 5s


def test_select_counts_in_blocks_must_be_whole_blocks() -> None:
    m = select_counts({"w": SCORES_4x4}, {"w": 8}, pattern="block:2x2")
    assert torch.equal(m["w"], _b([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ConfigError, match="not a whole number of 2x2 blocks"):
        select_counts({"w": SCORES_4x4}, {"w": 6}, pattern="block:2x2")
    with pytest.raises(ConfigError, match="does not fit"):
        select_counts({"w": torch.zeros(3, 4)}, {"w": 4}, pattern="block:2x2")


def test_select_global_under_n_m_floors_every_group() -> None:
    # 1:4 over a = [4, 3, 2, 1] and b = [.5, .6, .7, .8]: k = 4 keeps each group's best (4, .8), then 3, 2
    scores = {"a": torch.tensor([[4.0, 3.0, 2.0, 1.0]]), "b": torch.tensor([[0.5, 0.6, 0.7, 0.8]])}
    m = select_global(scores, 4, pattern="1:4")
    assert m["a"].tolist() == [[True, True, True, False]] and m["b"].tolist() == [[False, False, False, True]]
    m2 = select_global(scores, 2, current=m, pattern="1:4")
    assert m2["a"].tolist() == [[True, False, False, False]] and m2["b"].tolist() == [
        [False, False, False, True]
    ]


def test_growth_fills_only_the_room_the_pattern_leaves() -> None:
    kept = {"w": _b([[1, 0, 0, 0, 1, 1, 0, 0]])}  # 2:4: room for 1 in the first group, none in the second
    score = {"w": torch.tensor([[0.0, 5.0, 9.0, 1.0, 0.0, 0.0, 8.0, 7.0]])}
    g = select_growth(score, {"w": 1}, kept=kept, pattern="2:4")
    assert g["w"].tolist() == [[False, False, True, False, False, False, False, False]]
    with pytest.raises(
        ConfigError, match="cannot grow 2 weights of 'w' under pattern 2:4: its groups have room for 1"
    ):
        select_growth(score, {"w": 2}, kept=kept, pattern="2:4")
    plain = select_growth(score, {"w": 2}, kept=kept)  # unstructured: the best two not kept, 9 and 8
    assert plain["w"].tolist() == [[False, False, True, False, False, False, True, False]]


def test_block_growth_takes_whole_empty_blocks() -> None:
    kept = {"w": _b([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]])}
    # empty 2x2 blocks: (0, 1) sum 9, (1, 1) sum 3; (1, 0) holds a kept weight
    g = select_growth({"w": SCORES_4x4}, {"w": 4}, kept=kept, pattern="block:2x2")
    assert torch.equal(g["w"], _b([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]))


def test_check_selection_refuses_what_select_would_without_scores() -> None:
    shapes = {"a": (4, 8), "b": (64, 64)}
    with pytest.raises(ConfigError, match="2:4 keeps at most 0.5 of a layer, but a would keep 1"):
        check_selection(shapes, 0.4, pattern="2:4", scope="layerwise", distribution="erk")
    with pytest.raises(ConfigError, match=r"above what pattern 1:4 keeps \(0.25\)"):
        check_selection(shapes, 0.5, pattern="1:4")
    with pytest.raises(ConfigError, match=r"c \[2, 3\].*--allow-dense-layers"):
        check_selection({**shapes, "c": (2, 3)}, 0.25, pattern="2:4")
    assert check_selection({**shapes, "c": (2, 3)}, 0.25, pattern="2:4", allow_dense_layers=True) == ["c"]
    assert check_selection(shapes, 0.9) == []


def test_claim_pattern_refuses_a_broken_mask_or_drops_the_claim() -> None:
    bad = Mask({"w": _b([[1, 1, 1, 0]])}, {"pattern": "2:4"})
    with pytest.raises(MaskMismatchError):
        claim_pattern(bad, "2:4")
    assert "pattern" not in claim_pattern(bad, "2:4", strict=False).metadata
    assert claim_pattern(Mask({"w": _b([[1, 1, 0, 0]])}), "2:4").metadata["pattern"] == "2:4"
