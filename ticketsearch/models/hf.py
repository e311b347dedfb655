"""The ``hf:`` model source: any Hugging Face ``transformers`` model built from a config, with masked layers.

Why a source rather than a list of models: a transformers model is described by its config, so the model
*name* carries the config, and every command (``find``, ``bench``, ``transfer``, ``export``) and every
mask file can rebuild it from the name alone. Two forms:

``hf:<model_type>[,<key>=<value>...]``
    the config inline, e.g. ``hf:vit,hidden_size=32,num_hidden_layers=2,num_attention_heads=4,
    intermediate_size=64``; values are JSON where they parse (numbers, ``true``) and strings otherwise; a
    key the model type's config does not have is refused (a typo would otherwise be ignored silently).
``hf:<path>.json``
    a ``config.json`` as ``PretrainedConfig.to_json_file`` or the Hub writes it (``model_type`` inside). The
    run is named by the path, not the file's contents: edit the file and name it anew, or the runs already
    made under the old contents would be taken as this model's (a changed shape is caught when a mask is
    loaded; a changed activation or dropout is not).

The data decide the head and input: a (C, H, W) image makes an ``AutoModelForImageClassification`` with
``num_channels = C`` and ``image_size = H`` (H = W; an inline config that disagrees is refused, a config
file is adapted to the data), a (L,) sample makes
an ``AutoModelForSequenceClassification`` fed ``input_ids`` (integer token ids: the Python API, as no built-in
data set holds text); ``num_labels`` is always the number of classes. No weights are downloaded, no
network is used and a config's remote code is never run (``trust_remote_code=False``): the model is
initialised from the config, then by ``create_model``'s ``init`` (``default`` keeps transformers' own).
Attention is the ``eager`` implementation unless the name says ``attn_implementation=...``: it is
deterministic on CPU and twice differentiable (GraSP's Hessian-gradient product).

Every ``nn.Linear`` and ``nn.Conv2d`` becomes a masked layer (:func:`ticketsearch.sparse.sparsify`); GPT-2's
``Conv1D`` (a Linear whose weight is stored transposed, ``(in, out)``) is first replaced by an
``nn.Linear`` with the transposed weight, which computes the same function. Embeddings, LayerNorms, biases
and any other layer kind (``nn.Conv1d``, ``nn.Conv3d``) stay dense. The output layer is the last Linear
with ``num_classes`` outputs (``classifier`` for ViT and BERT, ``score`` for GPT-2). Weights tied between
a masked layer and another module (a language-model head tied to its embedding) are refused: pruning one
would prune both.

``transformers`` is imported only when such a model is built (the ``hf`` extra:
``pip install 'ticketsearch[hf]'``), never when ticketsearch is imported.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..core.errors import ConfigError
from ..sparse.layers import MaskedLinear, masked_layers, sparsify
from .registry import ModelSource, ModelSpec, check_input_shape, register_model_source, shape_error

__all__ = ["HFModel", "parse_hf_argument", "build_hf_model", "transformers_available", "SOURCE"]

USAGE = "hf:<model_type>[,key=value...] | hf:<config.json>"
INSTALL = "pip install 'ticketsearch[hf]'"
# keys of the inline form that are not config fields
_OPTIONS = ("attn_implementation",)


def transformers_available() -> bool:
    """Whether the ``hf`` extra is installed (checked without importing transformers)."""
    import importlib.util

    return importlib.util.find_spec("transformers") is not None


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_hf_argument(argument: str) -> tuple[dict[str, Any], bool]:
    """``<model_type>[,k=v...]`` or ``<path>.json`` → (config fields with ``model_type``, from a file?).

    Reads the file for the second form; every problem is a one-line ConfigError naming the model.
    """
    name = f"hf:{argument}"
    if argument.endswith(".json"):
        path = Path(argument).expanduser()
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(
                f"model '{name}': cannot read the config file ({exc.strerror or exc})"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"model '{name}': the config file is not JSON ({exc})") from None
        if not isinstance(fields, dict) or not isinstance(fields.get("model_type"), str):
            raise ConfigError(f"model '{name}': the config file must be a JSON object with a 'model_type'")
        return fields, True
    model_type, *items = argument.split(",")
    if not model_type or "=" in model_type:
        raise ConfigError(f"model '{name}': start with the model type, as {USAGE}")
    fields: dict[str, Any] = {"model_type": model_type.strip()}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"model '{name}': expected key=value, got {item!r} (as {USAGE})")
        if key.strip() in fields:
            raise ConfigError(f"model '{name}': {key.strip()!r} given twice")
        fields[key.strip()] = _value(value.strip())
    return fields, False


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[Any]:
    """Import transformers with its own log at error level while a model is built (config warnings about
    token ids a classifier never uses would otherwise reach every run's output), then restore it."""
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"'hf:' models need transformers: {INSTALL}") from None
    logging = transformers.logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield transformers
    finally:
        logging.set_verbosity(level)


class HFModel(nn.Module):
    """A transformers classification model as ticketsearch sees a model: a tensor in, logits out.

    ``net`` is the transformers model (module names ``net.<its own names>``); ``kind`` is ``image``
    (``pixel_values``) or ``tokens`` (``input_ids``).
    """

    def __init__(self, net: nn.Module, kind: str, name: str) -> None:
        super().__init__()
        self.net = net
        self.kind = kind
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "image":
            out = self.net(pixel_values=x)
        else:
            if x.is_floating_point():
                raise ConfigError(
                    f"model '{self.name}' reads token ids (integers), got {x.dtype} inputs; a data-free "
                    "scorer (synflow) or an image data set cannot feed it"
                )
            out = self.net(input_ids=x)
        return out.logits if hasattr(out, "logits") else out[0]


def _conv1d_to_linear(model: nn.Module, transformers: Any) -> int:
    """Replace every transformers ``Conv1D`` (weight ``(in, out)``, ``y = x W + b``) by the nn.Linear that
    computes the same (weight ``Wᵀ``), so it becomes a masked layer; returns how many were replaced."""
    conv1d = getattr(getattr(transformers, "pytorch_utils", None), "Conv1D", None)
    if conv1d is None:
        return 0
    count = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, conv1d):
                n_in, n_out = child.weight.shape
                lin = nn.Linear(
                    n_in,
                    n_out,
                    bias=child.bias is not None,
                    device=child.weight.device,
                    dtype=child.weight.dtype,
                )
                with torch.no_grad():
                    lin.weight.copy_(child.weight.t())
                    if child.bias is not None:
                        lin.bias.copy_(child.bias)
                setattr(parent, child_name, lin)
                count += 1
    return count


def _check_untied(model: nn.Module, name: str) -> None:
    """Refuse a masked weight that another module shares: a mask on it would prune both."""
    owners: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(pname)
    for _, layer in masked_layers(model):
        shared = owners.get(id(layer.weight), [])
        if len(shared) > 1:
            raise ConfigError(
                f"model '{name}': {' and '.join(shared)} are one tied weight, so a mask on one would prune the "
                "other; untie them in the config (e.g. tie_word_embeddings=false)"
            )


def _dry_run(model: HFModel, shape: tuple[int, ...], name: str) -> None:
    """One forward of two zero samples, in eval mode and without gradients (no RNG drawn), so a config
    that cannot take the data (a patch larger than the image, a sequence longer than its positions, heads
    that do not divide the width: transformers checks few of these when it builds) is refused here in one
    line, not as a traceback from the middle of training."""
    was_training = model.training
    model.eval()
    x = torch.zeros((2, *shape), dtype=torch.float32 if model.kind == "image" else torch.long)
    try:
        with torch.no_grad():
            model(x)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"model '{name}' cannot take input shape {shape}: {first}") from None
    finally:
        model.train(was_training)


def _output_layer(model: nn.Module, num_classes: int) -> str:
    names = [n for n, m in masked_layers(model) if isinstance(m, MaskedLinear)]
    heads = [
        n for n, m in masked_layers(model) if isinstance(m, MaskedLinear) and m.out_features == num_classes
    ]
    return (heads or names)[-1]


def build_hf_model(
    name: str, fields: dict[str, Any], input_shape: tuple[int, ...], num_classes: int, *, strict: bool
) -> HFModel:
    """Build ``fields`` (a config with ``model_type``) for samples of ``input_shape``, layers masked.

    ``strict`` (the inline form, where every key was typed for this run): refuse keys the model type's
    config does not know (typos) and an ``image_size``/``num_channels``/``num_labels`` the data contradict.
    A config file (a Hub ``config.json`` always spells out 224×224×3 and its labels) is adapted instead.
    """
    shape = check_input_shape(name, input_shape)
    if len(shape) == 3 and shape[1] == shape[2]:
        kind = "image"
    elif len(shape) == 1:
        kind = "tokens"
    else:
        raise shape_error(name, shape, "(C, H, W) images with H = W, or (L,) token ids")
    fields = dict(fields)
    model_type = fields.pop("model_type")
    options = {k: fields.pop(k) for k in _OPTIONS if k in fields}
    attn = options.get("attn_implementation", "eager")
    with _quiet_transformers() as transformers:
        try:
            default = transformers.AutoConfig.for_model(model_type)
        except (ValueError, KeyError):
            raise ConfigError(
                f"model '{name}': transformers {transformers.__version__} knows no model type '{model_type}'"
            ) from None
        if strict:
            unknown = sorted(k for k in fields if not hasattr(default, k))
            if unknown:
                raise ConfigError(
                    f"model '{name}': the {model_type} config has no field {', '.join(map(repr, unknown))}"
                )
        derived: dict[str, Any] = {"num_labels": num_classes}
        if kind == "image":
            if hasattr(default, "num_channels"):
                derived["num_channels"] = shape[0]
            if hasattr(default, "image_size"):
                derived["image_size"] = shape[1]
        for key, value in derived.items():
            if strict and key in fields and fields[key] != value:
                raise ConfigError(
                    f"model '{name}': the config says {key}={fields[key]!r}, the data {value!r} "
                    f"(input shape {shape}, {num_classes} classes); drop {key} from the config"
                )
        fields.pop("id2label", None)
        fields.pop("label2id", None)
        fields.update(derived)
        try:
            config = transformers.AutoConfig.for_model(model_type, **fields)
            auto = (
                transformers.AutoModelForImageClassification
                if kind == "image"
                else transformers.AutoModelForSequenceClassification
            )
            net = auto.from_config(config, attn_implementation=attn, trust_remote_code=False)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            task = "image classification" if kind == "image" else "sequence classification"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"model '{name}': transformers cannot build a {task} model: {first}") from None
        if kind == "tokens" and getattr(config, "pad_token_id", None) is None:
            # sequence classifiers pool the last non-padding token; without a pad id they refuse batches > 1
            net.config.pad_token_id = 0
        _conv1d_to_linear(net, transformers)
    model = HFModel(net, kind, name)
    _dry_run(model, shape, name)
    sparsify(model)
    if not list(masked_layers(model)):
        raise ConfigError(f"model '{name}' has no Linear or Conv2d layer to prune")
    _check_untied(model, name)
    model.output_layer = _output_layer(model, num_classes)  # type: ignore[assignment]
    model.default_dataset = None  # type: ignore[assignment]
    model.input_shape = shape  # type: ignore[assignment]
    model.num_classes = num_classes  # type: ignore[assignment]
    return model


def _resolve(argument: str) -> ModelSpec:
    """``hf:<argument>`` → its ModelSpec; a config file is read now (a missing file fails at once)."""
    name = f"hf:{argument}"
    fields, from_file = parse_hf_argument(argument)

    def builder(input_shape: tuple[int, ...], num_classes: int) -> HFModel:
        return build_hf_model(name, fields, input_shape, num_classes, strict=not from_file)

    size = fields.get("image_size")
    channels = fields.get("num_channels", 3)
    example: tuple[int, ...] = (channels, size, size) if isinstance(size, int) else (16,)
    return ModelSpec(
        name=name,
        builder=builder,
        description=f"transformers '{fields['model_type']}' built from a config (no weights)",
        input_shapes="(C, H, W) images with H = W (image classification) or (L,) token ids (sequence)",
        example_input_shape=example,
    )


SOURCE = register_model_source(
    ModelSource(
        name="hf",
        resolve=_resolve,
        description="any Hugging Face transformers model from a config, no weights (needs the hf extra)",
        usage=USAGE,
    )
)
