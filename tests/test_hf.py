"""The ``hf:`` model source: any Hugging Face transformers model from a config, its layers masked.

Needs the ``hf`` extra (``transformers``, in the dev extra so CI runs these); without it the tests that build
a model are skipped with the reason, and the ones that check the lazy import and the missing-extra error
still run. No weights are downloaded and no network is used: every model is built from a tiny config.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from ticketsearch.core.errors import ConfigError, UnknownNameError
from ticketsearch.core.mask import Mask, exact_count
from ticketsearch.models import MODELS, ModelSource, create_model, get_model_spec
from ticketsearch.models.hf import parse_hf_argument, transformers_available
from ticketsearch.sparse import MaskedLayer, MaskedLinear, apply_mask, output_parameter, prunable_parameters

needs_hf = pytest.mark.skipif(
    not transformers_available(), reason="transformers is not installed (pip install 'ticketsearch[hf]')"
)

DIGITS = (1, 8, 8)
# a ViT of hidden size 32 and 2 layers on digits: 2×2 patches of the 8×8 image → 16 tokens
VIT = "hf:vit,hidden_size=32,num_hidden_layers=2,num_attention_heads=4,intermediate_size=64,patch_size=2"
GPT2 = "hf:gpt2,n_embd=32,n_layer=2,n_head=4,vocab_size=50,n_positions=16,resid_pdrop=0,embd_pdrop=0,attn_pdrop=0"


def build(name: str, shape: tuple[int, ...] = DIGITS, classes: int = 10, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, shape, classes, **kw)


# -- without transformers ----------------------------------------------------------------------------------
def test_importing_ticketsearch_does_not_import_transformers() -> None:
    code = (
        "import sys, ticketsearch, ticketsearch.models, ticketsearch.cli; "
        "from ticketsearch.models import MODELS; MODELS.entry('hf:vit,hidden_size=32'); "
        "assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_extra_is_one_line_naming_the_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'ticketsearch\[hf\]'"):
        build(VIT)


@pytest.mark.parametrize(
    "argument,needle",
    [
        ("", "say which model"),
        (",hidden_size=32", "start with the model type"),
        ("vit,hidden_size", "expected key=value"),
        ("vit,a=1,a=2", "given twice"),
        ("no/such/config.json", "cannot read the config file"),
    ],
)
def test_bad_names_are_one_line_errors(argument: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        MODELS.entry(f"hf:{argument}")
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_source_alone_and_unknown_sources() -> None:
    with pytest.raises(ConfigError, match="family of models: name one as hf:"):
        get_model_spec("hf")
    with pytest.raises(UnknownNameError, match="unknown model source 'nope'.*hf:"):
        MODELS.entry("nope:vit")


def test_inline_values_are_json_where_they_parse() -> None:
    fields, from_file = parse_hf_argument("bert,hidden_size=32,hidden_act=gelu,use_cache=false,x=0.5")
    assert not from_file
    assert fields == {
        "model_type": "bert",
        "hidden_size": 32,
        "hidden_act": "gelu",
        "use_cache": False,
        "x": 0.5,
    }


def test_a_source_registered_as_a_plugin(tmp_path: Path) -> None:
    """A ModelSource in the entry-point group ``ticketsearch.models`` is found like any plugin model."""
    (tmp_path / "toy_source.py").write_text(
        "import torch.nn as nn\n"
        "from ticketsearch.models import ModelSource, ModelSpec, MLP\n"
        "def _resolve(arg):\n"
        "    width = int(arg)\n"
        "    return ModelSpec(f'toy:{arg}', lambda s, c: MLP(s, c, (width,)), 'toy mlp', 'any', (4,))\n"
        "SOURCE = ModelSource('toy', _resolve, 'toy MLPs of any width', 'toy:<width>')\n"
    )
    dist = tmp_path / "toy_source-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-source\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ticketsearch.models]\ntoy = toy_source:SOURCE\n")
    code = (
        "from ticketsearch.models import create_model, MODELS\n"
        "m = create_model('toy:7', (4,), 3)\n"
        "assert m.layers[0].out_features == 7, m\n"
        "assert MODELS.entry('toy:7').source == 'toy-source'\n"
    )
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    out = subprocess.run(
        [sys.executable, "-m", "ticketsearch", "list", "models"], env=env, capture_output=True, text=True
    )
    assert "toy:<width>" in out.stdout and "hf:<model_type>" in out.stdout, out.stdout + out.stderr


def test_registry_lists_the_source_not_its_models() -> None:
    entry = next(e for e in MODELS.entries() if e.name == "hf")
    assert isinstance(entry.obj, ModelSource) and entry.obj.usage.startswith("hf:")


# -- with transformers: a tiny ViT config on digits --------------------------------------------------------
@needs_hf
def test_vit_config_builds_with_every_linear_masked() -> None:
    model = build(VIT)
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            assert isinstance(m, MaskedLayer), name
    names = list(prunable_parameters(model))
    assert names[0] == "net.vit.embeddings.patch_embeddings.projection.weight"  # a masked Conv2d
    attention = [n for n in names if ".attention." in n]
    assert len(attention) == 2 * 4  # q, k, v and output projection in each of 2 layers
    assert len([n for n in names if ".mlp." in n or ".intermediate." in n or ".output.dense" in n]) >= 4
    assert output_parameter(model) == "net.classifier.weight" == names[-1]
    assert model(torch.randn(3, *DIGITS)).shape == (3, 10)
    assert model.net.config.image_size == 8 and model.net.config.num_channels == 1
    assert model.net.config.num_labels == 10


@needs_hf
def test_all_ones_mask_gives_the_dense_models_output() -> None:
    """Masking changes nothing but the layers' class: with every weight kept, the output is that of the
    transformers model built from the same config and seed, untouched."""
    import transformers

    fields, _ = parse_hf_argument(VIT.removeprefix("hf:"))
    fields.pop("model_type")
    config = transformers.ViTConfig(**fields, image_size=8, num_channels=1, num_labels=10)
    torch.manual_seed(0)
    ref = transformers.ViTForImageClassification(config).eval()
    model = build(VIT, init="default").eval()
    for backend in ("reference", "inplace"):
        apply_mask(
            model,
            {n: torch.ones(p.shape, dtype=torch.bool) for n, p in prunable_parameters(model).items()},
            backend=backend,
        )
        x = torch.randn(4, *DIGITS)
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref(pixel_values=x).logits, rtol=1e-5, atol=1e-6)


@needs_hf
def test_deterministic_under_a_seed() -> None:
    a, b = build(VIT, seed=3).state_dict(), build(VIT, seed=3).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@needs_hf
def test_snip_at_half_then_training(tmp_path, capsys) -> None:
    from clitools import run_cli

    root = tmp_path / "runs"
    args = ["find", "--method", "snip", "--model", VIT, "--dataset", "digits", "--density", "0.5"]
    args += [
        "--budget",
        "4it",
        "--batch-size",
        "32",
        "--eval-every",
        "2it",
        "--no-progress",
        "--root",
        str(root),
    ]
    r = run_cli(capsys, *args)
    assert r.returncode == 0, r.stderr
    (path,) = root.glob("snip_*/replicate_0/level_1/mask.safetensors")
    mask = Mask.load(path)
    total = sum(t.numel() for t in mask.values())
    assert mask.num_kept == exact_count(0.5, total)
    assert mask.metadata["model"] == VIT
    metrics = [json.loads(x) for x in (path.parent / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["iteration"] == 4 and metrics[-1]["train_loss"] is not None


@needs_hf
def test_config_file(tmp_path) -> None:
    import transformers

    cfg = transformers.ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, patch_size=4
    )
    path = tmp_path / "config.json"
    cfg.to_json_file(str(path))  # as the Hub writes it: image_size 224, 3 channels, many more fields
    model = build(f"hf:{path}", shape=(1, 8, 8), classes=5)
    assert model.net.config.hidden_size == 16 and model.net.config.image_size == 8
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 5)


@needs_hf
@pytest.mark.parametrize(
    "name,needle",
    [
        ("hf:vit,hidden_sise=32", "no field 'hidden_sise'"),
        ("hf:no_such_type", "knows no model type 'no_such_type'"),
        ("hf:vit,num_channels=3", "num_channels=3, the data 1"),
        ("hf:vit,hidden_size=32", "cannot take input shape (1, 8, 8)"),  # the default 16×16 patch
    ],
)
def test_bad_configs_are_one_line_errors(name: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(name)
    assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)


@needs_hf
def test_cli_bad_config_is_one_error_line(tmp_path, capsys) -> None:
    from clitools import assert_one_line_error, nothing_left, run_cli

    root = tmp_path / "runs"
    r = run_cli(capsys, "find", "--method", "snip", "--model", "hf:vit,hidden_sise=3", "--root", str(root))
    assert_one_line_error(r, "hidden_sise")
    assert nothing_left(root) == []


# -- GPT-2: Conv1D made Linear ------------------------------------------------------------------------------
@needs_hf
def test_gpt2_conv1d_becomes_an_equivalent_masked_linear() -> None:
    import transformers

    model = build(GPT2, shape=(12,), classes=3, init="default").eval()
    assert not any(type(m).__name__ == "Conv1D" for m in model.modules())
    attn = model.net.transformer.h[0].attn
    assert isinstance(attn.c_attn, MaskedLinear) and tuple(attn.c_attn.weight.shape) == (96, 32)
    assert output_parameter(model) == "net.score.weight"
    fields, _ = parse_hf_argument(GPT2.removeprefix("hf:"))
    fields.pop("model_type")
    torch.manual_seed(0)
    config = transformers.GPT2Config(**fields, num_labels=3, pad_token_id=0)
    ref = transformers.AutoModelForSequenceClassification.from_config(
        config, attn_implementation="eager"
    ).eval()
    ids = torch.randint(1, 50, (4, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref(input_ids=ids).logits, rtol=1e-5, atol=1e-6)
    g = torch.Generator().manual_seed(1)
    apply_mask(
        model, {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in prunable_parameters(model).items()}
    )
    assert torch.isfinite(model(ids)).all()
    with pytest.raises(ConfigError, match="token ids"):
        model(torch.randn(2, 12))


def test_tied_weights_are_refused() -> None:
    from ticketsearch.models.hf import _check_untied
    from ticketsearch.sparse import sparsify

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight

    with pytest.raises(ConfigError, match="emb.weight and head.weight are one tied weight"):
        _check_untied(sparsify(Tied()), "hf:toy")


@pytest.mark.parametrize(
    "model,needles",
    [("hf", ["family of models", "hf:<model_type>"]), ("nope:x", ["unknown model source 'nope'", "hf:..."])],
)
def test_cli_source_alone_or_unknown_is_one_error_line(tmp_path, capsys, model, needles) -> None:
    from clitools import assert_one_line_error, nothing_left, run_cli

    root = tmp_path / "runs"
    r = run_cli(capsys, "find", "--method", "snip", "--model", model, "--root", str(root))
    assert_one_line_error(r, *needles)
    assert nothing_left(root) == []
