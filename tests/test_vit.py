"""The small vision transformer ``vit_mnist``: shapes, counts by hand, what is prunable, patterns, and every
method end to end on it (digits: seconds on a CPU; the MNIST recipe's accuracy is in the docs, measured).

The registry-wide tests of tests/test_models.py run on it too (forward shape, masked layers, determinism,
reference vs in-place backend, bad shapes).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ticketsearch.core.errors import ConfigError
from ticketsearch.core.mask import Mask, exact_count
from ticketsearch.core.select import select
from ticketsearch.models import create_model, training_recipe
from ticketsearch.models.vit import ViT
from ticketsearch.sparse import MaskedLinear, apply_mask, output_parameter, prunable_parameters
from ticketsearch.testing import MethodConformance

MNIST = (1, 28, 28)
DIGITS = (1, 8, 8)


def vit(shape: tuple[int, ...] = MNIST, classes: int = 10, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("vit_mnist", shape, classes, **kw)


# -- architecture ------------------------------------------------------------------------------------------
def test_parameter_count_by_hand() -> None:
    # (1, 28, 28), dim 64, 3 blocks, MLP ×2, 10 classes; a 4×4 grid of 7×7 patches → 16 tokens + class token
    patch_embed = 49 * 64 + 64  # 3,200
    tokens = 64 + 17 * 64  # class token + position embeddings: 1,152
    block = (
        2 * 64  # norm1
        + 64 * 192 + 192  # qkv: 12,480
        + 64 * 64 + 64  # proj: 4,160
        + 2 * 64  # norm2
        + 64 * 128 + 128  # fc1: 8,320
        + 128 * 64 + 64  # fc2: 8,256
    )  # fmt: skip
    assert block == 33_472
    head = 2 * 64 + 64 * 10 + 10  # final norm + fc
    model = vit()
    assert sum(p.numel() for p in model.parameters()) == patch_embed + tokens + 3 * block + head == 105_546
    prunable = 49 * 64 + 3 * (64 * 192 + 64 * 64 + 64 * 128 + 128 * 64) + 64 * 10
    assert sum(p.numel() for p in prunable_parameters(model).values()) == prunable == 102_080


def test_every_attention_and_mlp_matrix_is_a_prunable_masked_linear() -> None:
    model = vit()
    expected = ["patch_embed.weight"]
    for i in range(3):
        expected += [f"blocks.{i}.attn.qkv.weight", f"blocks.{i}.attn.proj.weight"]
        expected += [f"blocks.{i}.mlp.fc1.weight", f"blocks.{i}.mlp.fc2.weight"]
    expected.append("fc.weight")
    assert list(prunable_parameters(model)) == expected
    for name in expected:
        assert isinstance(model.get_submodule(name.removesuffix(".weight")), MaskedLinear), name
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    assert output_parameter(model) == "fc.weight"
    prunable = {id(p) for p in prunable_parameters(model).values()}
    for name, p in model.named_parameters():  # biases, LayerNorms, class token, position embeddings
        if name not in expected:
            assert id(p) not in prunable
            assert (
                name.endswith(("bias", "cls_token", "pos_embed"))
                or ".norm" in name
                or name.startswith("norm")
            )


@pytest.mark.parametrize(
    "shape,patch,tokens",
    [
        ((1, 28, 28), (7, 7), 16),
        ((1, 8, 8), (2, 2), 16),
        ((3, 32, 32), (8, 8), 16),
        ((1, 28, 32), (7, 8), 16),
    ],
)
def test_shapes_and_patches(shape, patch, tokens) -> None:
    model = vit(shape, classes=7).eval()
    assert model.patch == patch and model.pos_embed.shape == (1, tokens + 1, 64)
    assert model.patch_embed.in_features == shape[0] * patch[0] * patch[1]
    with torch.no_grad():
        out = model(torch.randn(3, *shape))
    assert out.shape == (3, 7) and torch.isfinite(out).all()


def test_explicit_patch_and_options() -> None:
    model = create_model("vit_mnist", MNIST, 10, patch=4, dim=32, depth=2, heads=2, mlp_ratio=4)
    assert model.patch == (4, 4) and model.pos_embed.shape == (1, 50, 32) and len(model.blocks) == 2
    assert model.blocks[0].mlp.fc1.out_features == 128 and model.blocks[0].attn.heads == 2
    assert model(torch.randn(2, *MNIST)).shape == (2, 10)


@pytest.mark.parametrize(
    "shape,kw,needle",
    [
        ((1, 40), {}, "(C, H, W)"),
        ((1, 28, 30), {}, "multiples of 4"),
        ((3, 6, 6), {}, "multiples of 4"),
        ((1, 28, 28), {"patch": 5}, "multiples of patch 5"),
        ((1, 28, 28), {"dim": 30, "heads": 4}, "not divisible by heads"),
        ((1, 28, 28), {"depth": 0}, "depth must be a positive int"),
    ],
)
def test_unfit_shapes_and_options_are_one_line_errors(shape, kw, needle) -> None:
    with pytest.raises(ConfigError) as info:
        create_model("vit_mnist", shape, 10, **kw)
    msg = str(info.value)
    assert "\n" not in msg and "vit_mnist" in msg and needle in msg


def test_patch_embedding_is_a_strided_conv() -> None:
    """The Linear over flattened (C, ph, pw) patches computes what Conv2d(kernel = stride = patch) does."""
    model = vit((3, 32, 32))
    conv = nn.Conv2d(3, 64, kernel_size=8, stride=8)
    with torch.no_grad():
        conv.weight.copy_(model.patch_embed.weight.reshape(64, 3, 8, 8))
        conv.bias.copy_(model.patch_embed.bias)
    x = torch.randn(2, 3, 32, 32)
    expected = conv(x).flatten(2).transpose(1, 2)  # (B, tokens, dim), row-major over the grid
    torch.testing.assert_close(model.patch_embed(model.patchify(x)), expected, rtol=1e-5, atol=1e-5)


def test_attention_matches_torch_multihead_attention() -> None:
    """The written-out attention is standard multi-head attention (nn.MultiheadAttention, same weights)."""
    attn = vit().blocks[0].attn
    ref = nn.MultiheadAttention(64, 4, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(attn.qkv.weight)
        ref.in_proj_bias.copy_(torch.randn(192))
        attn.qkv.bias.copy_(ref.in_proj_bias)
        ref.out_proj.weight.copy_(attn.proj.weight)
        ref.out_proj.bias.copy_(attn.proj.bias)
    x = torch.randn(2, 17, 64)
    torch.testing.assert_close(attn(x), ref(x, x, x, need_weights=False)[0], rtol=1e-5, atol=1e-5)


def test_init_is_the_vit_one_under_default_and_kaiming_otherwise() -> None:
    plain = vit(init="default")
    w = plain.blocks[0].mlp.fc1.weight
    # normal(0, 0.02) truncated at ±2 std: std 0.02 · 0.880 = 0.0176
    assert w.abs().max() <= 0.04 and abs(w.std().item() - 0.0176) < 0.002
    assert not plain.blocks[0].mlp.fc1.bias.any()
    assert torch.equal(plain.norm.weight, torch.ones(64)) and plain.pos_embed.abs().max() <= 0.04
    kaiming = vit()  # the repo-wide default: kaiming normal, fan_in, ReLU gain
    w = kaiming.blocks[0].mlp.fc1.weight
    assert abs(w.std().item() - math.sqrt(2 / 64)) < 0.1 * math.sqrt(2 / 64)


def test_recipe() -> None:
    r = training_recipe("vit_mnist")
    assert (r.optimizer, r.lr, r.batch_size, r.budget, r.schedule) == ("adamw", 1e-3, 128, "3000it", "cosine")


# -- masks and patterns ------------------------------------------------------------------------------------
def test_two_four_pattern_fits_every_layer_on_digits() -> None:
    model = vit(DIGITS)
    g = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(p.shape, generator=g) for n, p in prunable_parameters(model).items()}
    mask = select(scores, 0.5, scope="layerwise", pattern="2:4")
    for name, t in mask.items():  # independent count: at most 2 of every 4 consecutive inputs in a row
        assert t.shape[1] % 4 == 0, name
        groups = t.reshape(t.shape[0], -1, 4).sum(-1)
        assert bool((groups == 2).all()), name
    apply_mask(model, mask)
    assert model(torch.randn(2, *DIGITS)).shape == (2, 10)


def test_two_four_on_mnist_names_the_patch_embedding_or_keeps_it_dense() -> None:
    """7×7 patches give the patch embedding 49 inputs, which 2:4 cannot tile; every other layer fits."""
    model = vit()
    scores = {n: torch.rand(p.shape) for n, p in prunable_parameters(model).items()}
    with pytest.raises(ConfigError, match="patch_embed"):
        select(scores, 0.5, scope="layerwise", pattern="2:4")
    mask = select(scores, 0.5, scope="layerwise", pattern="2:4", allow_dense_layers=True)
    assert bool(mask["patch_embed.weight"].all())
    assert all(mask[n].sum() * 2 == mask[n].numel() for n in scores if n != "patch_embed.weight")


def run_find(capsys, root: Path, *args: str):
    from clitools import run_cli

    base = ["find", "--model", "vit_mnist", "--dataset", "digits", "--no-progress", "--device", "cpu"]
    return run_cli(capsys, *base, "--root", str(root), *args)


def test_find_snip_at_half_keeps_exactly_half(tmp_path, capsys) -> None:
    r = run_find(
        capsys, tmp_path, "--method", "snip", "--density", "0.5", "--budget", "3it", "--batch-size", "32"
    )
    assert r.returncode == 0, r.stderr
    (path,) = tmp_path.glob("snip_*/replicate_0/level_1/mask.safetensors")
    mask = Mask.load(path)
    total = sum(t.numel() for t in mask.values())
    assert total == sum(p.numel() for p in prunable_parameters(vit(DIGITS)).values())
    assert mask.num_kept == exact_count(0.5, total)  # SNIP's global rule, the output layer included
    assert mask.metadata["model"] == "vit_mnist"


def test_find_under_two_four_writes_a_mask_that_obeys_it(tmp_path, capsys) -> None:
    r = run_find(
        capsys, tmp_path, "--method", "magnitude", "--pattern", "2:4", "--density", "0.5", "--budget", "2it"
    )
    assert r.returncode == 0, r.stderr
    (path,) = tmp_path.glob("magnitude_*/replicate_0/level_1/mask.safetensors")
    mask = Mask.load(path)  # verifies the claimed pattern
    assert mask.metadata["pattern"] == "2:4"
    for t in mask.values():
        assert int(t.reshape(t.shape[0], -1, 4).sum(-1).max()) <= 2


# -- training ----------------------------------------------------------------------------------------------
def test_short_training_reduces_the_loss() -> None:
    from ticketsearch.data import load_dataset

    data = load_dataset("digits", seed=0)
    model = vit(DIGITS)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x, y = data.x_test[:256], data.y_test[:256]
    with torch.no_grad():
        before = F.cross_entropy(model(x), y).item()
    for _ in range(40):
        idx = torch.randint(0, data.train_size, (64,), generator=g)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = F.cross_entropy(model(x), y).item()
    assert after < 0.6 * before, (before, after)


# -- every method prunes it --------------------------------------------------------------------------------
# the flags that make each method's run short (one level, few rounds); density 0.5 everywhere
SHORT = {
    "imp": ["--rate", "0.5", "--output-rate", "0.5"],  # one level to exactly half
    "synflow": ["--rounds", "3"],
    "force": ["--rounds", "2"],
    "early-bird": ["--eb-every", "2it"],
    "gem-miner": ["--arg", "retrain=false"],  # level 2 would train the kept weights with the full recipe
}


def _builtin_methods() -> list[str]:
    from ticketsearch.methods import list_methods

    return [m.name for m in list_methods() if m.source == "built-in"]


@pytest.mark.parametrize("method", _builtin_methods())
def test_every_method_prunes_the_vit(tmp_path, capsys, method) -> None:
    """Attention, MLP and patch embedding pruned end to end, LayerNorm and attention in the way of every
    scorer (GraSP's Hessian product, SynFlow's float64 all-ones pass, supermask kernels, moving masks)."""
    args = [
        "--method",
        method,
        "--density",
        "0.5",
        "--budget",
        "4it",
        "--batch-size",
        "32",
        "--eval-every",
        "2it",
    ]
    r = run_find(capsys, tmp_path, *args, *SHORT.get(method, []))
    assert r.returncode == 0, r.stderr
    masks = sorted(tmp_path.glob("*/replicate_0/level_*/mask.safetensors"))
    assert masks, r.stdout
    mask = Mask.load(masks[-1])
    assert set(mask) == set(prunable_parameters(vit(DIGITS)))
    attn = [n for n in mask if ".attn." in n or ".mlp." in n]
    assert len(attn) == 12
    assert any(not bool(mask[n].all()) for n in attn), "no attention or MLP weight was pruned"
    assert mask.density == pytest.approx(0.5, abs=0.02)


# -- the method contract on the ViT: resume bit-identical after a kill, exact density, determinism ------------
class TestViTConformance(MethodConformance):
    """The plugin method suite run on ``vit_mnist`` with GMP (a mask that moves while weights train: the
    hardest case for a bit-identical resume: optimizer state, mask schedule and weights all checkpointed)."""

    method_name = "gmp"
    model = "vit_mnist"
    budget = "1ep"
    kill_points = 2

    # model-agnostic parts of the contract, already checked on mlp_digits for every method: slow here
    @pytest.mark.slow
    def test_deterministic_under_a_seed(
        self, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        super().test_deterministic_under_a_seed(tmp_path, tmp_path_factory)

    @pytest.mark.slow
    def test_mask_file_trains_elsewhere(
        self, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        super().test_mask_file_trains_elsewhere(tmp_path, tmp_path_factory)


def test_vit_is_a_builtin_with_metadata() -> None:
    model = vit()
    assert isinstance(model, ViT) and model.model_name == "vit_mnist" and model.default_dataset == "mnist"


def test_cli_unfit_image_size_is_one_error_line(tmp_path, capsys) -> None:
    from clitools import assert_one_line_error, nothing_left

    r = run_find(capsys, tmp_path / "runs", "--method", "snip", "--resize", "6", "--budget", "2it")
    assert_one_line_error(r, "vit_mnist", "(1, 6, 6)", "multiples of 4")
    assert nothing_left(tmp_path / "runs") == []


def test_the_vit_gets_its_own_init_unless_one_is_asked():
    """A model's default init (the ViT's own, which trained better than Kaiming normal) reaches a run
    through the CLI, and only that model's runs: LeNet's stay on the project's default, and --init wins."""
    from ticketsearch.cli import build_parser
    from ticketsearch.commands.flags import resolve_hparams
    from ticketsearch.models import model_hparams

    def init_of(*argv: str) -> str:
        ns = build_parser().parse_args(["find", "--method", "snip", "--dataset", "mnist", *argv])
        return resolve_hparams(ns, method="snip").model.init

    assert init_of("--model", "vit_mnist") == "default"
    assert init_of("--model", "vit_mnist", "--init", "kaiming_normal") == "kaiming_normal"
    assert init_of("--model", "lenet_300_100") == "kaiming_normal"
    assert model_hparams("no_such_model").init == "kaiming_normal"  # refused later, where it is built
