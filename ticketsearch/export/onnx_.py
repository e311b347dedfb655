"""``onnx`` export: the dense masked model as an ONNX graph, with the ticket's header and a checksum inside.

Why ONNX: runtimes on small devices (onnxruntime, TFLite converters, vendor SDKs) read it without Python or
PyTorch. Weights of layers sparse enough to gain (density < 1/3: ONNX's sparse tensors spend 8 bytes of
int64 index per kept value) go in as ``sparse_initializer``s, which onnxruntime densifies when it loads the
graph — the file shrinks, inference is the dense graph. Values are fp32 (onnxruntime's CPU kernels for
Gemm/Conv are fp32; fp16 is refused rather than silently widened).

The ticket's header (model, input shape, classes, shapes, densities, source) is the model's
``metadata_props`` entry ``ticketsearch_ticket``, and ``ticketsearch_sha256`` is the sha256 of the
serialized model without that entry. :func:`verify_onnx` checks both, the graph (``onnx.checker``), the
shapes of the stored weights, and — with onnxruntime installed — runs it on a batch and checks the output
shape. Export itself runs the graph in onnxruntime (when installed) against the PyTorch model.

``onnx`` (and ``onnxruntime`` for the checks) are optional: imported here only, with a one-line error
naming the package to install when missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..core.errors import ConfigError, DataError
from ..core.io import atomic_write_bytes

__all__ = ["export_onnx", "verify_onnx", "HEADER_PROP", "SHA_PROP"]

HEADER_PROP = "ticketsearch_ticket"
SHA_PROP = "ticketsearch_sha256"
SPARSE_BELOW = 1 / 3


def _require(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(
            f"--format onnx needs the '{name}' package, which is not installed: pip install onnx onnxruntime "
            "(or pip install 'ticketsearch[dev]')"
        ) from None


def _ort() -> Any | None:
    try:
        import onnxruntime  # type: ignore[import-untyped]

        return onnxruntime
    except ImportError:
        return None


def _torch_export(model: nn.Module, x: torch.Tensor, path: str) -> None:
    """The TorchScript exporter (fast, names initializers after parameters); the dynamo one if it is gone."""
    names: dict[str, Any] = {"input_names": ["input"], "output_names": ["logits"]}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (x,),
                path,
                dynamo=False,
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                **names,
            )
            return
        except TypeError:  # a torch without the legacy exporter's arguments
            pass
        batch = torch.export.Dim("batch")
        torch.onnx.export(model, (x,), path, dynamo=True, dynamic_shapes=({0: batch},), **names)


def _digest(proto: Any) -> str:
    return hashlib.sha256(proto.SerializeToString()).hexdigest()


def _sparsify_initializers(onnx: Any, proto: Any, masks: dict[str, np.ndarray]) -> dict[str, str]:
    """Move weights with density < 1/3 into ``sparse_initializer`` (linear int64 indices)."""
    from onnx import numpy_helper

    kept: list[Any] = []
    how: dict[str, str] = {}
    for init in list(proto.graph.initializer):
        mask = masks.get(init.name)
        if mask is None:
            kept.append(init)
            continue
        arr = numpy_helper.to_array(init)
        if arr.shape != mask.shape or mask.mean() >= SPARSE_BELOW:
            kept.append(init)
            how[init.name] = "dense"
            continue
        flat_idx = np.flatnonzero(mask.reshape(-1)).astype(np.int64)
        values = numpy_helper.from_array(arr.reshape(-1)[flat_idx].astype(np.float32), name=init.name)
        indices = numpy_helper.from_array(flat_idx, name=f"{init.name}_indices")
        proto.graph.sparse_initializer.append(
            onnx.helper.make_sparse_tensor(values, indices, list(arr.shape))
        )
        how[init.name] = "sparse"
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    return how


def export_onnx(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    mask: Any,
    *,
    out: str | Path,
    dtype: str,
    meta: dict[str, Any],
) -> Any:
    """Write the dense masked ``model`` (loaded with ``state`` ⊙ ``mask``) as ONNX to ``out``."""
    from .ticket import ExportResult, dense_fp32_bytes

    if dtype != "fp32":
        raise ConfigError(
            f"--format onnx --dtype {dtype}: ONNX tickets are fp32 (onnxruntime's CPU Gemm/Conv kernels are "
            "fp32); use --dtype fp32, or a safetensors format for fp16"
        )
    onnx = _require("onnx")
    masks = {n: mask[n].detach().cpu().bool() for n in mask}
    masked = {
        k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu() for k, v in state.items()
    }
    for n, m in masks.items():
        masked[n] = masked[n] * m
    model.load_state_dict(masked, strict=True)
    model.eval()
    shape = tuple(int(d) for d in meta["input_shape"])
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        raw = str(Path(tmp) / "model.onnx")
        _torch_export(model, x[:1], raw)
        proto = onnx.load(raw)
    np_masks = {n: m.numpy() for n, m in masks.items()}
    how = _sparsify_initializers(onnx, proto, np_masks)
    counts = {n: int(m.sum()) for n, m in np_masks.items()}
    total = sum(m.size for m in np_masks.values())
    kept = sum(counts.values())
    header = {
        "format": "ticketsearch-ticket-onnx/1",
        "encoding": "onnx",
        "dtype": "fp32",
        "model": meta["model"],
        "input_shape": list(shape),
        "num_classes": int(meta["num_classes"]),
        "num_kept": kept,
        "num_total": total,
        "density": kept / total if total else 1.0,
        "layers": {
            n: {
                "shape": list(m.shape),
                "num_kept": counts[n],
                "density": counts[n] / m.size if m.size else 1.0,
                "storage": how.get(n, "renamed"),
            }
            for n, m in np_masks.items()
        },
        "source": json.loads(json.dumps(meta.get("source"), default=str)),
        "dataset": meta.get("dataset"),
    }
    onnx.helper.set_model_props(proto, {HEADER_PROP: json.dumps(header, sort_keys=True)})
    sha = _digest(proto)
    entry = proto.metadata_props.add()
    entry.key, entry.value = SHA_PROP, sha
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # the exporter made a graph the checker refuses: a bug, but say it in one line
        raise DataError(f"the exported ONNX graph does not pass onnx.checker: {exc}") from None
    data = proto.SerializeToString()
    ort = _ort()
    if ort is not None:
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-4):
            raise DataError(
                "onnxruntime's output differs from the PyTorch model's (max |diff| "
                f"{float(np.abs(got - want).max()):.3g}); the ONNX export is not faithful for this model"
            )
    path = atomic_write_bytes(out, data)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    return ExportResult(
        path=path,
        format="onnx",
        dtype="fp32",
        bytes=len(data),
        dense_fp32_bytes=dense_fp32_bytes(shapes),
        density=header["density"],
        layers={
            n: {"encoding": f"onnx-{how.get(n, 'dense')}", **{k: v for k, v in r.items() if k != "shape"}}
            for n, r in header["layers"].items()
        },
    )


def verify_onnx(path: str | Path, *, run: bool = True) -> dict[str, Any]:
    """Check an ONNX ticket: checksum, graph, header claims vs stored weights; run it when onnxruntime is
    installed (``run``). Returns the header. Parsing is protobuf only: nothing in the file is executed."""
    onnx = _require("onnx")
    from onnx import numpy_helper

    p = Path(path)
    if not p.is_file():
        raise DataError(f"ONNX ticket '{p}' does not exist")
    try:
        proto = onnx.load(str(p))
    except Exception as exc:
        raise DataError(
            f"'{p}' is not a readable ONNX file (truncated or corrupt: {str(exc)[:200]})"
        ) from None
    props = {e.key: e.value for e in proto.metadata_props}
    if HEADER_PROP not in props or SHA_PROP not in props:
        raise DataError(f"'{p}' is an ONNX model but not a ticketsearch ticket (no '{HEADER_PROP}' metadata)")
    idx = [i for i, e in enumerate(proto.metadata_props) if e.key == SHA_PROP]
    for i in reversed(idx):
        del proto.metadata_props[i]
    got = _digest(proto)
    if got != props[SHA_PROP]:
        raise DataError(
            f"ONNX ticket '{p}' fails its checksum (says {props[SHA_PROP][:16]}..., content hashes to "
            f"{got[:16]}...): the file was modified or damaged; export it again"
        )
    try:
        header = json.loads(props[HEADER_PROP])
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise DataError(f"ONNX ticket '{p}' is invalid: {str(exc)[:200]}") from None
    stored: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for s in proto.graph.sparse_initializer:
        dims = list(s.dims)
        dense = np.zeros(math.prod(dims), dtype=np.float32)
        dense[numpy_helper.to_array(s.indices).reshape(-1)] = numpy_helper.to_array(s.values)
        stored[s.values.name] = dense.reshape(dims)
    for name, rec in (header.get("layers") or {}).items():
        if name not in stored:
            continue
        arr = stored[name]
        if list(arr.shape) != rec.get("shape"):
            raise DataError(
                f"ONNX ticket '{p}': '{name}' has shape {list(arr.shape)}, the header says {rec.get('shape')}"
            )
        nonzero = int(np.count_nonzero(arr))
        if nonzero > rec.get("num_kept", -1):
            raise DataError(
                f"ONNX ticket '{p}': '{name}' holds {nonzero} nonzero weights, the header says {rec.get('num_kept')} kept"
            )
    ort = _ort()
    if run and ort is not None:
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        x = np.zeros((1, *header["input_shape"]), dtype=np.float32)
        y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        if y.shape != (1, header["num_classes"]):
            raise DataError(
                f"ONNX ticket '{p}' outputs shape {list(y.shape)}, expected [1, {header['num_classes']}]"
            )
    return header
