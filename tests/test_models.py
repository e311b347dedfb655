"""Model registry tests: parametrized over ``MODELS.names()`` so every registered model is tested for free,
plus parameter counts computed by hand as independent oracles."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from ticketsearch.core.errors import ConfigError, UnknownNameError
from ticketsearch.models import (
    INITS,
    MODELS,
    ModelSource,
    create_model,
    describe,
    get_model_spec,
    init_weights,
    list_models,
    register_model,
)
from ticketsearch.models.torchvision_models import torchvision_available  # noqa: E402
from ticketsearch.sparse.layers import (
    MaskedLayer,
    apply_mask,
    output_parameter,
    prunable_parameters,
)

# models supplied by torchvision are tested only where it is installed (the core never needs it); a model
# source (hf:) is a family, not a model: tests/test_hf.py tests it on tiny configs
SOURCES = {e.name for e in MODELS.entries() if isinstance(e.obj, ModelSource)}
NAMES = [n for n in MODELS.names() if (n != "resnet18" or torchvision_available()) and n not in SOURCES]
BUILTINS = {
    "lenet_300_100", "lenet5", "conv2", "conv4", "conv6", "vgg16", "resnet20",
    "mlp_digits", "mlp_mnist1d", "cnn_mnist1d", "resnet18", "vit_mnist",
}  # fmt: skip


def build(name: str, num_classes: int = 10, seed: int = 0, **kwargs) -> nn.Module:
    spec = get_model_spec(name)
    assert spec is not None
    torch.manual_seed(seed)
    return create_model(name, spec.example_input_shape, num_classes, **kwargs)


def example_input(name: str, batch: int = 3) -> torch.Tensor:
    spec = get_model_spec(name)
    assert spec is not None
    g = torch.Generator().manual_seed(123)
    return torch.randn(batch, *spec.example_input_shape, generator=g)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_builtins_registered() -> None:
    assert BUILTINS <= set(NAMES)


# -- every registered model ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_forward_shape(name: str) -> None:
    model = build(name, num_classes=7)
    model.eval()
    with torch.no_grad():
        out = model(example_input(name, batch=3))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_all_linear_and_conv_layers_are_masked(name: str) -> None:
    model = build(name)
    for mod_name, module in model.named_modules():
        assert not isinstance(module, (nn.Conv1d, nn.Conv3d)), f"{mod_name}: only 2-D masked convs exist"
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            assert isinstance(module, MaskedLayer), f"{mod_name} is a plain {type(module).__name__}"


@pytest.mark.parametrize("name", NAMES)
def test_prunable_parameters_are_layer_weights_only(name: str) -> None:
    model = build(name)
    prunable = prunable_parameters(model)
    assert prunable, "a model without prunable weights"
    masked_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, MaskedLayer)}
    assert set(prunable) == masked_weights
    bn_params = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for p in m.parameters()
    }
    biases = {id(m.bias) for m in model.modules() if isinstance(m, MaskedLayer) and m.bias is not None}
    for pname, p in prunable.items():
        assert pname.endswith(".weight") and p.dim() >= 2
        assert id(p) not in bn_params and id(p) not in biases


@pytest.mark.parametrize("name", NAMES)
def test_output_parameter_is_the_last_linear(name: str) -> None:
    model = build(name, num_classes=5)
    assert isinstance(getattr(model, "output_layer", None), str)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    last_name, last = linears[-1]
    assert output_parameter(model) == f"{last_name}.weight" == f"{model.output_layer}.weight"
    assert last.out_features == 5
    assert list(prunable_parameters(model))[-1] == output_parameter(model)
    assert output_parameter(model) not in prunable_parameters(model, include_output=False)


@pytest.mark.parametrize("name", NAMES)
def test_creation_is_deterministic_under_seed(name: str) -> None:
    a, b, c = build(name, seed=0), build(name, seed=0), build(name, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert any(not torch.equal(sa[k], sc[k]) for k in prunable_parameters(a))


@pytest.mark.parametrize("name", NAMES)
def test_bad_shapes_and_classes_raise_config_error(name: str) -> None:
    for shape in [(), (1, 0, 5), (2.5, 3)]:
        with pytest.raises(ConfigError):
            create_model(name, shape, 10)  # type: ignore[arg-type]
    spec = get_model_spec(name)
    assert spec is not None
    with pytest.raises(ConfigError, match="num_classes"):
        create_model(name, spec.example_input_shape, 0)
    with pytest.raises(ConfigError, match="init"):
        create_model(name, spec.example_input_shape, 10, init="xavier_magic")
    with pytest.raises(ConfigError, match="no option"):
        create_model(name, spec.example_input_shape, 10, not_an_option=1)


@pytest.mark.parametrize("name", NAMES)
def test_masked_forward_same_on_reference_and_inplace(name: str) -> None:
    x = example_input(name, batch=2)
    outs = []
    for backend in ("reference", "inplace"):
        model = build(name, seed=3).eval()
        g = torch.Generator().manual_seed(7)
        mask = {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in prunable_parameters(model).items()}
        apply_mask(model, mask, backend=backend)
        for n, p in prunable_parameters(model).items():  # pruned weights are exactly zero either way
            assert not p[~mask[n]].any()
        with torch.no_grad():
            outs.append(model(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)


# -- shapes each architecture refuses -------------------------------------------------------------------
IMAGE_NETS = ["lenet5", "conv2", "conv4", "conv6", "vgg16", "resnet20"]
MLPS = ["lenet_300_100", "mlp_digits", "mlp_mnist1d"]


@pytest.mark.parametrize("name", IMAGE_NETS)
def test_image_nets_refuse_sequences_and_tiny_images(name: str) -> None:
    for shape in [(1, 40), (3, 1, 1), (1, 1, 28, 28)]:
        with pytest.raises(ConfigError) as info:
            create_model(name, shape, 10)
        msg = str(info.value)
        assert "\n" not in msg and name in msg and str(shape) in msg and "(C, H, W)" in msg


@pytest.mark.parametrize(
    "name,too_small,smallest",
    [
        ("lenet5", 15, 16),
        ("conv2", 1, 2),
        ("conv4", 3, 4),
        ("conv6", 7, 8),
        ("vgg16", 15, 16),
        ("resnet20", 7, 8),
    ],
)
def test_smallest_image_size(name: str, too_small: int, smallest: int) -> None:
    with pytest.raises(ConfigError):
        create_model(name, (3, too_small, 32), 10)
    with pytest.raises(ConfigError):
        create_model(name, (3, 32, too_small), 10)
    model = create_model(name, (3, smallest, smallest + 1), 4).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, smallest, smallest + 1)).shape == (2, 4)


@pytest.mark.parametrize("name", MLPS)
def test_mlps_flatten_any_shape(name: str) -> None:
    for shape in [(1, 28, 28), (1, 8, 8), (3, 32, 32), (1, 40), (40,)]:
        model = create_model(name, shape, 3)
        assert model(torch.randn(2, *shape)).shape == (2, 3)
        assert model.layers[0].in_features == math.prod(shape)


def test_cnn_mnist1d_shapes() -> None:
    for shape in [(40,), (1, 40), (2, 40), (1, 3)]:
        model = create_model("cnn_mnist1d", shape, 10)
        assert model(torch.randn(4, *shape)).shape == (4, 10)
    for shape in [(1, 28, 28), (1, 2), (3, 1, 40)]:
        with pytest.raises(ConfigError, match=r"cnn_mnist1d.*\(C, L\)"):
            create_model("cnn_mnist1d", shape, 10)
    model = create_model("cnn_mnist1d", (1, 40), 10)
    assert tuple(model.conv1.weight.shape) == (25, 1, 1, 5)  # Conv1d(k=5) as a (1, 5) Conv2d
    assert tuple(model.conv2.weight.shape) == (25, 25, 1, 3)
    assert model.fc.in_features == 125  # 40 -> 19 -> 10 -> 5 positions × 25 channels


def test_cnn_mnist1d_matches_conv1d() -> None:
    """The (1, k) Conv2d reshaping computes exactly what nn.Conv1d computes with the same weights."""
    model = create_model("cnn_mnist1d", (1, 40), 10).eval()
    x = torch.randn(5, 1, 40)
    h = x
    for conv, k in [(model.conv1, 5), (model.conv2, 3), (model.conv3, 3)]:
        ref = nn.Conv1d(conv.in_channels, conv.out_channels, k, stride=2, padding=1)
        with torch.no_grad():
            ref.weight.copy_(conv.weight.squeeze(2))
            ref.bias.copy_(conv.bias)
        h = torch.relu(ref(h))
    expected = model.fc(h.flatten(1))
    torch.testing.assert_close(model(x), expected)


# -- parameter counts computed by hand ------------------------------------------------------------------
def test_lenet_300_100_params() -> None:
    # 784·300+300 + 300·100+100 + 100·10+10 = 235,500 + 30,100 + 1,010
    model = create_model("lenet_300_100", (1, 28, 28), 10)
    assert n_params(model) == 266_610
    assert sum(p.numel() for p in prunable_parameters(model).values()) == 784 * 300 + 300 * 100 + 100 * 10


def test_lenet5_params() -> None:
    # conv1 20·1·5·5+20 = 520; 28→24→pool 12; conv2 50·20·5·5+50 = 25,050; 12→8→pool 4
    # fc1 (50·4·4=800)·500+500 = 400,500; fc 500·10+10 = 5,010; total 431,080
    assert n_params(create_model("lenet5", (1, 28, 28), 10)) == 431_080


# Frankle & Carbin's conv nets on (3, 32, 32), 10 classes. Conv 3×3 with bias: out·in·9 + out.
#   64·3·9+64 = 1,792     64·64·9+64 = 36,928     128·64·9+128 = 73,856     128·128·9+128 = 147,584
#   256·128·9+256 = 295,168     256·256·9+256 = 590,080
# FC: conv2 flattens 64·16·16 = 16,384 → 256: 4,194,560; conv4 128·8·8 = 8,192 → 256: 2,097,408;
#     conv6 256·4·4 = 4,096 → 256: 1,048,832; then 256·256+256 = 65,792 and 256·10+10 = 2,570.
CONV_COUNTS = {
    "conv2": 1_792 + 36_928 + 4_194_560 + 65_792 + 2_570,  # 4,301,642 (paper: 4.3M)
    "conv4": 1_792 + 36_928 + 73_856 + 147_584 + 2_097_408 + 65_792 + 2_570,  # 2,425,930 (paper: 2.4M)
    "conv6": 1_792 + 36_928 + 73_856 + 147_584 + 295_168 + 590_080 + 1_048_832 + 65_792 + 2_570,  # 2,262,602
}


@pytest.mark.parametrize("name", sorted(CONV_COUNTS))
def test_conv_params(name: str) -> None:
    assert n_params(create_model(name, (3, 32, 32), 10)) == CONV_COUNTS[name]


def test_conv_counts_by_hand() -> None:
    assert CONV_COUNTS == {"conv2": 4_301_642, "conv4": 2_425_930, "conv6": 2_262_602}


def test_resnet20_params() -> None:
    # stem conv 3·16·9 = 432, BN 32. Stage 1: 3 blocks × (2·16·16·9 + 2·32) = 3 × 4,672 = 14,016.
    # Stage 2: first block 16·32·9 + 32·32·9 + 2·64 + (1×1 projection 16·32 + BN 64) = 14,528;
    #          two more × (2·32·32·9 + 2·64) = 2 × 18,560 = 37,120.
    # Stage 3: first block 32·64·9 + 64·64·9 + 2·128 + (32·64 + 128) = 57,728; two more × 73,984 = 147,968.
    # fc 64·10+10 = 650. Total 432+32+14,016+14,528+37,120+57,728+147,968+650 = 272,474 (~0.27M).
    assert n_params(create_model("resnet20", (3, 32, 32), 10)) == 272_474


def test_vgg16_params() -> None:
    # 13 convs 3×3 with bias + BN (2 per channel), fc 512→10: the open_lth cifar_vgg_16 count.
    chans = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    conv = sum(o * i * 9 + o + 2 * o for i, o in zip(chans[:-1], chans[1:]))
    assert conv + 512 * 10 + 10 == 14_728_266
    assert n_params(create_model("vgg16", (3, 32, 32), 10)) == 14_728_266


def test_mnist1d_params() -> None:
    # mlp: 40·100+100 + 100·100+100 + 100·10+10; cnn: 25·5+25 + 2·(25·25·3+25) + 125·10+10
    assert n_params(create_model("mlp_mnist1d", (1, 40), 10)) == 15_210
    assert n_params(create_model("cnn_mnist1d", (1, 40), 10)) == 150 + 2 * 1_900 + 1_260 == 5_210
    assert (
        n_params(create_model("mlp_digits", (1, 8, 8), 10)) == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    )


# -- options, init, registry ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vgg16", "resnet20"])
def test_non_affine_batchnorm(name: str) -> None:
    model = create_model(name, (3, 16, 16), 10, affine_bn=False)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not bn.affine and bn.weight is None for bn in bns)
    assert all(
        bn.affine for bn in create_model(name, (3, 16, 16), 10).modules() if isinstance(bn, nn.BatchNorm2d)
    )


def test_init_options() -> None:
    assert "kaiming_normal" in INITS and "default" in INITS
    torch.manual_seed(0)
    model = create_model("lenet_300_100", (1, 28, 28), 10)  # kaiming_normal: std sqrt(2/fan_in), zero bias
    w = model.layers[0].weight
    assert abs(w.std().item() - math.sqrt(2 / 784)) < 0.05 * math.sqrt(2 / 784)
    assert not model.layers[0].bias.any()
    sc = create_model("lenet_300_100", (1, 28, 28), 10, init="signed_constant")
    assert torch.allclose(sc.layers[1].weight.abs(), torch.full_like(sc.layers[1].weight, math.sqrt(2 / 300)))
    ku = create_model("lenet_300_100", (1, 28, 28), 10, init="kaiming_uniform")
    bound = math.sqrt(6 / 784)
    assert ku.layers[0].weight.abs().max() <= bound
    torch.manual_seed(5)
    default = create_model("mlp_digits", (1, 8, 8), 10, init="default")
    torch.manual_seed(5)
    plain = nn.Linear(64, 128)
    assert torch.equal(default.layers[0].weight, plain.weight)  # PyTorch's own init, untouched
    with pytest.raises(ConfigError):
        init_weights(model, "nope")


def test_reinit_keeps_pruned_weights_zero() -> None:
    model = create_model("mlp_digits", (1, 8, 8), 10)
    mask = {n: torch.rand(p.shape) < 0.3 for n, p in prunable_parameters(model).items()}
    apply_mask(model, mask)
    init_weights(model, "kaiming_normal")
    for n, p in prunable_parameters(model).items():
        assert not p[~mask[n]].any()


def test_list_models_and_unknown_names() -> None:
    assert list_models() == sorted(list_models())
    assert list_models("conv*") == ["conv2", "conv4", "conv6"]
    assert "lenet5" in list_models("lenet*") and "vgg16" not in list_models("lenet*")
    with pytest.raises(UnknownNameError, match="did you mean 'resnet20'"):
        create_model("resnet2O", (3, 32, 32), 10)


def test_register_model_and_duplicates() -> None:
    @register_model("tiny_test_model", input_shapes="any", example_input_shape=(4,))
    def tiny(input_shape: tuple[int, ...], num_classes: int, hidden: int = 3) -> nn.Module:
        """A tiny model used by the tests."""
        from ticketsearch.models import MLP

        return MLP(input_shape, num_classes, (hidden,), name="tiny_test_model")

    try:
        assert "tiny_test_model" in list_models()
        assert MODELS.entry("tiny_test_model").description == "A tiny model used by the tests."
        model = create_model("tiny_test_model", (4,), 2, hidden=5)
        assert model.layers[0].out_features == 5 and model.model_name == "tiny_test_model"
        with pytest.raises(ValueError, match="already registered"):
            register_model("tiny_test_model", input_shapes="any", example_input_shape=(4,))(tiny)
    finally:
        MODELS.unregister("tiny_test_model")
    assert "tiny_test_model" not in list_models()


def test_describe_rows() -> None:
    rows = {r.name: r for r in describe() if not r.name.startswith(tuple(f"{s}:" for s in SOURCES))}
    assert set(rows) == set(NAMES)
    rng = torch.random.get_rng_state()
    describe()
    assert torch.equal(rng, torch.random.get_rng_state())  # counting builds on the meta device, no RNG use
    assert rows["lenet_300_100"].prunable_params == 784 * 300 + 300 * 100 + 100 * 10
    for name in ["mlp_digits", "cnn_mnist1d", "lenet5", "resnet20"]:
        model = build(name)
        assert rows[name].prunable_params == sum(p.numel() for p in prunable_parameters(model).values())
    for row in rows.values():
        assert row.description and row.input_shapes and row.example_input_shape
    assert describe("conv*")[0].name == "conv2" and len(describe("conv*")) == 3


def test_model_metadata() -> None:
    for name in BUILTINS & set(NAMES):
        spec = get_model_spec(name)
        assert spec is not None and spec.default_dataset
        model = build(name)
        assert model.output_layer == "fc"
        assert model.default_dataset == spec.default_dataset
        assert model.model_name == name


def test_import_does_not_pull_torchvision() -> None:
    code = "import sys, ticketsearch.models; assert 'torchvision' not in sys.modules, 'torchvision imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
