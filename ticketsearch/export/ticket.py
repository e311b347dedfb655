"""Write and read ticket files: :func:`export_ticket`, :func:`read_ticket` and the :class:`Ticket` they share.

A ticket file holds, per prunable layer, the kept values (fp32 or fp16, row-major order of the kept
positions) and where they are (a bitmask, CSR indices, or the dense zero-filled weight), plus every
non-prunable tensor (biases, BatchNorm) dense. ``auto`` picks, per layer, whichever of bitmask and CSR is
smaller — unless the mask was made under a structured pattern (its sidecar's ``pattern``): then every layer
the pattern covers is stored packed, ``nm`` for N:M (kept values + small in-group indices) and ``bsr`` for
``block:RxC`` (block coordinates + dense blocks), after checking that the mask obeys the pattern it claims.
The layout of the file itself is :mod:`.container`; the encodings are :mod:`.bitmask`, :mod:`.csr`,
:mod:`.dense`, :mod:`.nm` and :mod:`.bsr`.

Reading checks everything a file claims before anyone uses it: the checksum, then every header field
against the decoded data (kept counts, densities, shapes, dtypes), then the model: it is rebuilt from its
registered name, input shape and class count, and every stored tensor must have exactly the shape that
model has — a header lying about shapes, classes or input size cannot slip a misshaped tensor through.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..core.errors import ConfigError, DataError, MaskMismatchError
from ..core.mask import Mask
from ..core.pattern import Pattern, check_pattern, parse_pattern
from . import bitmask, bsr, csr, dense, nm
from .container import FILE_FORMAT, pack_blob, read_container, unpack_blob, write_container

__all__ = [
    "FORMATS",
    "VALUE_DTYPES",
    "Ticket",
    "ExportResult",
    "export_ticket",
    "read_ticket",
    "build_model",
    "dense_fp32_bytes",
]

FORMATS = ("bitmask", "csr", "dense", "auto", "onnx")
VALUE_DTYPES: dict[str, np.dtype] = {"fp32": np.dtype(np.float32), "fp16": np.dtype(np.float16)}
_LAYER_ENCODINGS = ("bitmask", "csr", "dense", "nm", "bsr")
_INDEX = {"bitmask": bitmask, "csr": csr}


# -- the model a ticket belongs to ---------------------------------------------------------------------
def build_model(model: Any, input_shape: Any, num_classes: Any) -> nn.Module:
    """The registered architecture, built without touching the caller's random state.

    ``create_model`` draws its init from the global RNG; loading a ticket must not change what the
    caller's next ``torch.randn`` returns, so the draw happens inside a forked RNG.
    """
    from ..models import create_model

    if not isinstance(model, str) or not model:
        raise DataError(f"model name must be a non-empty string, got {model!r}")
    shape = _int_list(input_shape, "input_shape", positive=True)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise DataError(f"num_classes must be a positive integer, got {num_classes!r}")
    with torch.random.fork_rng(devices=[]):
        return create_model(model, tuple(shape), num_classes, init="default")


def _int_list(value: Any, what: str, *, positive: bool) -> list[int]:
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(d, int) and not isinstance(d, bool) and (d > 0 if positive else d >= 0) for d in value
    )
    if not ok or (positive and not value):
        kind = "positive" if positive else "non-negative"
        raise DataError(f"{what} must be a list of {kind} integers, got {value!r}")
    return [int(d) for d in value]


def model_layout(
    model: nn.Module, state_keys: set[str] | None = None
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(prunable weight shapes, every other state entry's shape) of ``model``.

    ``state_keys``: the names a stored state has; a model whose BatchNorm is affine is made non-affine
    when the stored state lacks exactly those parameters (learned supermasks train with non-affine BN).
    """
    from ..sparse import prunable_shapes

    if state_keys is not None:
        bn = [
            n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
        ]
        if bn and f"{bn[0]}.weight" not in state_keys and f"{bn[0]}.running_mean" in state_keys:
            from ..sparse.supermask import make_bn_nonaffine

            make_bn_nonaffine(model)
    prunable = {n: tuple(s) for n, s in prunable_shapes(model).items()}
    rest = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in prunable}
    return prunable, rest


def dense_fp32_bytes(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Bytes of a model's tensors as plain dense fp32 (the baseline every size is compared with)."""
    return sum(4 * math.prod(s) for s in shapes.values())


# -- the in-memory ticket ------------------------------------------------------------------------------
@dataclass
class Ticket:
    """A decoded, verified ticket: kept values, masks and dense tensors, plus the header they came with."""

    header: dict[str, Any]
    masks: dict[str, torch.Tensor]  # prunable weight name -> bool tensor of the weight's shape
    values: dict[str, torch.Tensor]  # prunable weight name -> 1-D kept values, row-major kept order
    dense: dict[str, torch.Tensor]  # every other state entry, as stored
    path: Path | None = None
    layout: tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]] = field(
        default_factory=lambda: ({}, {})
    )

    @property
    def model_name(self) -> str:
        return str(self.header["model"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.header["input_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.header["num_classes"])

    @property
    def dtype(self) -> str:
        return str(self.header["dtype"])

    @property
    def density(self) -> float:
        return float(self.header["density"])

    @property
    def num_kept(self) -> int:
        return int(self.header["num_kept"])

    @property
    def pattern(self) -> Pattern | None:
        """The structured pattern every layer not in :attr:`dense_layers` obeys (checked on reading), or
        None: what lets ``load_ticket`` offer the N:M and block kernels."""
        p = self.header.get("pattern")
        return parse_pattern(p) if p is not None else None

    @property
    def dense_layers(self) -> list[str]:
        """Layers exempted from :attr:`pattern` (their shape cannot hold it; kept dense)."""
        return list(self.header.get("dense_layers") or [])

    def layer_pattern(self, name: str) -> Pattern | None:
        """The pattern prunable layer ``name`` obeys, or None."""
        pat = self.pattern
        return pat if pat is not None and pat.structured and name not in self.dense_layers else None

    def weight(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The zero-filled dense weight of layer ``name``."""
        m = self.masks[name]
        w = torch.zeros(m.numel(), dtype=dtype)
        w[m.reshape(-1)] = self.values[name].to(dtype)
        return w.reshape(m.shape)

    def state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The full model state: zero-filled prunable weights, floating tensors cast to ``dtype``."""
        out = {n: self.weight(n, dtype) for n in self.masks}
        for n, t in self.dense.items():
            out[n] = t.to(dtype) if t.is_floating_point() else t.clone()
        return out

    def mask(self) -> Mask:
        """The ticket's mask, with the metadata an export needs again (its pattern too, so a fine-tuned
        structured ticket is written packed and loads with its structured kernels)."""
        meta = {k: self.header.get(k) for k in ("model", "input_shape", "num_classes")}
        meta.update({k: self.header[k] for k in ("pattern", "dense_layers") if k in self.header})
        return Mask(self.masks, meta)

    def build(self) -> nn.Module:
        """The architecture, with this ticket's dense state loaded (no masks attached)."""
        model = build_model(self.model_name, list(self.input_shape), self.num_classes)
        model_layout(model, set(self.masks) | set(self.dense))
        model.load_state_dict(self.state_dict(), strict=True)
        return model


@dataclass
class ExportResult:
    """What :func:`export_ticket` wrote: the file, its size, and the per-layer encodings it chose."""

    path: Path
    format: str
    dtype: str
    bytes: int
    dense_fp32_bytes: int
    density: float
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """File size as a fraction of the dense fp32 model."""
        return self.bytes / self.dense_fp32_bytes if self.dense_fp32_bytes else float("nan")


# -- export ---------------------------------------------------------------------------------------------
def _check_choice(value: Any, allowed: tuple[str, ...], flag: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{flag} '{value}' is not one of: {', '.join(allowed)}")
    return str(value)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def _cast(name: str, arr: np.ndarray, dtype: np.dtype, label: str) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise DataError(f"weights: '{name}' holds NaN or infinite values; a ticket needs finite weights")
    with np.errstate(over="ignore"):  # overflow is reported below, in one line
        out = arr.astype(dtype)
    if not np.isfinite(out).all():
        big = float(np.abs(arr).max())
        raise ConfigError(
            f"--dtype {label}: '{name}' holds {big:.4g}, beyond {label}'s range (±{np.finfo(dtype).max:.4g}); "
            "use --dtype fp32"
        )
    return out


def _ticket_meta(mask: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if isinstance(mask, Mask):
        meta.update({k: v for k, v in mask.metadata.items() if k in ("model", "input_shape", "num_classes")})
    meta.update(metadata or {})
    for key in ("model", "input_shape", "num_classes"):
        if meta.get(key) is None:
            raise ConfigError(
                f"export needs the ticket's {key}: pass it in metadata (the mask's mask.json sidecar "
                "records it for masks written by `find`)"
            )
    return meta


def export_ticket(
    model_state: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor],
    *,
    format: str = "auto",
    dtype: str = "fp32",
    out: str | Path,
    metadata: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Write the ticket ``mask`` keeps of ``model_state`` to ``out``.

    ``format``: ``bitmask``, ``csr``, ``dense``, ``auto`` (per layer the smaller of bitmask and CSR; with a
    structured pattern, ``nm`` or ``bsr`` for every layer it covers) or ``onnx`` (the dense masked model as
    an ONNX graph, checked with onnxruntime when installed). The pattern is ``metadata["pattern"]`` or else
    the mask's own (``mask.metadata``, from its sidecar), with ``dense_layers`` exempted likewise; a mask
    that breaks the pattern it claims is a one-line :class:`DataError`.
    ``dtype``: ``fp32`` or ``fp16`` for the stored values. ``metadata`` must give (or ``mask.metadata``
    hold) ``model``, ``input_shape`` and ``num_classes``; ``source`` (the run the ticket came from) and
    ``dataset`` are recorded when given, and any other JSON values go under ``extra``.
    Everything is validated before the file is written (atomically).
    """
    fmt = _check_choice(format, FORMATS, "--format")
    label = _check_choice(dtype, tuple(VALUE_DTYPES), "--dtype")
    meta = _ticket_meta(mask, metadata)
    model = build_model(meta["model"], meta["input_shape"], meta["num_classes"])
    state = {k: v for k, v in model_state.items()}
    prunable, rest = model_layout(model, set(state))
    m = mask if isinstance(mask, Mask) else Mask(mask)
    m.check_shapes(prunable, what=f"model '{meta['model']}'")
    pattern, exempt = _claimed_pattern(m, metadata)
    want = {**prunable, **rest}
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    wrong = sorted(n for n in want if n in state and tuple(state[n].shape) != want[n])
    if missing or extra or wrong:
        what = (
            f"missing {', '.join(missing[:3])}"
            if missing
            else f"unexpected {', '.join(extra[:3])}"
            if extra
            else f"'{wrong[0]}' has shape {list(state[wrong[0]].shape)}, the model {list(want[wrong[0]])}"
        )
        raise DataError(f"weights do not fit model '{meta['model']}' {tuple(meta['input_shape'])}: {what}")
    if fmt == "onnx":
        from .onnx_ import export_onnx

        return export_onnx(model, state, m, out=out, dtype=label, meta=meta)
    vdt = VALUE_DTYPES[label]
    tensors: dict[str, np.ndarray] = {}
    layers: dict[str, dict[str, Any]] = {}
    kept_total = 0
    total = 0
    for name, shape in prunable.items():
        mk = _to_numpy(m[name]).astype(bool)
        w = _cast(name, _to_numpy(state[name].float()), vdt, label)
        blobs, rec = encode_layer(
            w, mk, fmt, pattern=None if name in exempt else pattern, what=f"layer '{name}'"
        )
        k = int(mk.sum())
        n = math.prod(shape)
        rec.update(shape=list(shape), num_kept=k, density=k / n if n else 1.0)
        layers[name] = rec
        tensors.update({f"{name}:{s}": a for s, a in blobs.items()})
        kept_total += k
        total += n
    dense_meta: dict[str, Any] = {}
    for name in rest:
        t = state[name].detach().cpu()
        arr = _to_numpy(t)
        if t.is_floating_point():
            arr = _cast(name, arr.astype(np.float32), vdt, label)
        stored, rec = pack_blob(arr, compress=False)
        tensors[name] = stored
        dense_meta[name] = rec
    header = {
        "format": FILE_FORMAT,
        "encoding": fmt,
        "dtype": label,
        "model": meta["model"],
        "input_shape": list(meta["input_shape"]),
        "num_classes": int(meta["num_classes"]),
        "num_kept": kept_total,
        "num_total": total,
        "density": kept_total / total if total else 1.0,
        "layers": layers,
        "dense": dense_meta,
        "source": _jsonable(meta.get("source")),
        "dataset": meta.get("dataset"),
        "extra": _jsonable({k: v for k, v in meta.items() if k not in _HEADER_META}),
        "ticketsearch_version": _version(),
    }
    if pattern is not None:  # only then: files of unstructured tickets keep their header
        header["pattern"] = str(pattern)
        if exempt:
            header["dense_layers"] = sorted(exempt)
    path = write_container(out, header, tensors)
    return ExportResult(
        path=path,
        format=fmt,
        dtype=label,
        bytes=path.stat().st_size,
        dense_fp32_bytes=dense_fp32_bytes(want),
        density=header["density"],
        layers={n: {k: r[k] for k in ("encoding", "num_kept", "density")} for n, r in layers.items()},
    )


_HEADER_META = ("model", "input_shape", "num_classes", "source", "dataset", "pattern", "dense_layers")


def _claimed_pattern(mask: Mask, metadata: Mapping[str, Any] | None) -> tuple[Pattern | None, set[str]]:
    """The structured pattern the mask claims (``metadata`` first, then the mask's own), checked against
    its tensors; (None, set()) for an unstructured mask."""
    src: Mapping[str, Any] = metadata if metadata and metadata.get("pattern") is not None else mask.metadata
    text = src.get("pattern")
    if text is None:
        return None, set()
    pat = parse_pattern(str(text))  # a bad spelling: ConfigError naming it
    if not pat.structured:
        return None, set()
    dense_layers = src.get("dense_layers") or []
    if not isinstance(dense_layers, (list, tuple)) or not all(isinstance(n, str) for n in dense_layers):
        raise ConfigError(f"dense_layers must be a list of layer names, got {dense_layers!r}")
    try:
        check_pattern(mask, pat, dense_layers=dense_layers)
    except MaskMismatchError as exc:
        raise DataError(f"the mask claims pattern {pat}, but {exc}") from None
    return pat, set(dense_layers)


def encode_layer(
    weight: np.ndarray,
    mask: np.ndarray,
    fmt: str,
    *,
    pattern: Pattern | None = None,
    what: str = "layer",
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Blobs (name suffix -> stored array) and header record of one prunable layer in ``fmt`` (``auto``
    with a structured ``pattern`` the layer obeys: ``nm`` or ``bsr``)."""
    if fmt == "dense":
        blobs, rec = dense.encode(weight, mask)
        rec["encoding"] = "dense"
        return blobs, rec
    if fmt == "auto" and pattern is not None and pattern.kind == "nm":
        blobs, rec = nm.encode(weight, mask, pattern.n, pattern.m, what=what)
        rec["encoding"] = "nm"
        return blobs, rec
    if fmt == "auto" and pattern is not None and pattern.kind == "block":
        blobs, rec = bsr.encode(weight, mask, pattern.r, pattern.c, what=what)
        rec["encoding"] = "bsr"
        return blobs, rec
    if fmt == "auto":
        options = [(e, *_INDEX[e].encode_index(mask)) for e in ("bitmask", "csr")]
        enc, blobs, rec = min(options, key=lambda o: sum(r["stored_bytes"] for r in o[2]["blobs"].values()))
    else:
        enc = fmt
        blobs, rec = _INDEX[enc].encode_index(mask)
    values, vrec = pack_blob(weight.reshape(-1)[mask.reshape(-1)], compress=False)
    blobs["values"] = values
    rec["blobs"]["values"] = vrec
    rec["encoding"] = enc
    return blobs, rec


def _jsonable(obj: Any) -> Any:
    import json

    try:
        return json.loads(json.dumps(obj, default=str, allow_nan=False))
    except ValueError:
        return str(obj)


def _version() -> str:
    from .. import __version__

    return __version__


# -- read -----------------------------------------------------------------------------------------------
def read_ticket(path: str | Path, *, check_model: bool = True) -> Ticket:
    """Read and verify the ticket file at ``path`` (see the module doc for what is checked)."""
    p = Path(path)
    if p.suffix == ".onnx":
        raise ConfigError(
            f"'{p}' is an ONNX ticket: run it with onnxruntime (ticketsearch.export.verify_onnx checks it); "
            "load_ticket and finetune read the safetensors formats (bitmask, csr, dense, auto)"
        )
    header, stored = read_container(p)
    where = f"ticket file '{p}'"
    label = header.get("dtype")
    if label not in VALUE_DTYPES:
        raise DataError(f"{where}: dtype {label!r} is not one of: {', '.join(VALUE_DTYPES)}")
    vdt = VALUE_DTYPES[label]
    layers = header.get("layers")
    dense_meta = header.get("dense")
    if not isinstance(layers, dict) or not isinstance(dense_meta, dict):
        raise DataError(f"{where}: the header lacks its 'layers' or 'dense' table")
    used: set[str] = set()
    masks: dict[str, torch.Tensor] = {}
    values: dict[str, torch.Tensor] = {}
    kept_total = total = 0
    for name, rec in layers.items():
        what = f"{where}, layer '{name}'"
        if not isinstance(rec, dict) or not isinstance(rec.get("blobs"), dict):
            raise DataError(f"{what}: no valid record in the header")
        shape = tuple(_int_list(rec.get("shape"), f"{what}: shape", positive=False))
        enc = rec.get("encoding")
        if enc not in _LAYER_ENCODINGS:
            raise DataError(f"{what}: encoding {enc!r} is not one of: {', '.join(_LAYER_ENCODINGS)}")
        names = {s: f"{name}:{s}" for s in rec["blobs"]}
        absent = [t for t in names.values() if t not in stored]
        if absent:
            raise DataError(f"{what}: the file lacks tensor '{absent[0]}'")
        blobs = {s: stored[t] for s, t in names.items()}
        used.update(names.values())
        needed = {
            "dense": ("bitmask", "weight"),
            "bitmask": ("bitmask", "values"),
            "csr": ("row_counts", "indices", "values"),
            "nm": ("indices", "values"),
            "bsr": ("row_counts", "indices", "values"),
        }[enc]
        optional = ("slot_kept",) if enc == "nm" else ()
        if sorted(set(blobs) - set(optional)) != sorted(needed):
            raise DataError(
                f"{what}: a {enc} layer holds {', '.join(needed)}, this one {', '.join(sorted(blobs))}"
            )
        if enc == "dense":
            flat_mask, kept = dense.decode(blobs, rec, shape, what=what)
        elif enc == "nm":
            flat_mask, kept = nm.decode(blobs, rec, shape, what=what)
        elif enc == "bsr":
            flat_mask, kept = bsr.decode(blobs, rec, shape, what=what)
        else:
            flat_mask = _INDEX[enc].decode_index(blobs, rec, shape, what=what)
            kept = unpack_blob(blobs["values"], rec["blobs"]["values"], what=f"{what} values")
        if kept.dtype != vdt or kept.ndim != 1:
            raise DataError(f"{what}: values are {kept.dtype.name}, the header's dtype is {label}")
        k = int(flat_mask.sum())
        n = math.prod(shape)
        if kept.size != k:
            raise DataError(f"{what}: {kept.size} values for {k} kept positions")
        claimed_k, claimed_d = rec.get("num_kept"), rec.get("density")
        if claimed_k != k:
            raise DataError(f"{what}: the header says {claimed_k} weights kept, the file keeps {k}")
        if not isinstance(claimed_d, (int, float)) or abs(claimed_d - (k / n if n else 1.0)) > 1e-9:
            raise DataError(
                f"{what}: the header says density {claimed_d}, the file keeps {k / n if n else 1.0}"
            )
        if not np.isfinite(kept).all():
            raise DataError(f"{what}: values hold NaN or infinity")
        masks[name] = torch.from_numpy(flat_mask.reshape(shape).copy())
        values[name] = torch.from_numpy(np.array(kept, copy=True))
        kept_total += k
        total += n
    dense_t: dict[str, torch.Tensor] = {}
    for name, rec in dense_meta.items():
        what = f"{where}, tensor '{name}'"
        if name not in stored:
            raise DataError(f"{what}: listed in the header, absent from the file")
        arr = unpack_blob(stored[name], rec, what=what)
        if arr.dtype.kind == "f" and (arr.dtype != vdt or not np.isfinite(arr).all()):
            raise DataError(f"{what}: must be finite {label} values, got {arr.dtype.name}")
        used.add(name)
        dense_t[name] = torch.from_numpy(np.array(arr, copy=True))
    unknown = sorted(set(stored) - used)
    if unknown:
        raise DataError(f"{where}: holds tensor '{unknown[0]}' that its header does not describe")
    density = kept_total / total if total else 1.0
    if header.get("num_kept") != kept_total or header.get("num_total") != total:
        raise DataError(
            f"{where}: the header says {header.get('num_kept')} of {header.get('num_total')} weights kept, "
            f"the file keeps {kept_total} of {total}"
        )
    if not isinstance(header.get("density"), (int, float)) or abs(header["density"] - density) > 1e-9:
        raise DataError(f"{where}: the header says density {header.get('density')}, the file keeps {density}")
    _check_header_pattern(header, masks, where)
    ticket = Ticket(header=header, masks=masks, values=values, dense=dense_t, path=p)
    if check_model:
        ticket.layout = _check_against_model(ticket, where)
    return ticket


def _check_header_pattern(header: Mapping[str, Any], masks: Mapping[str, torch.Tensor], where: str) -> None:
    """A header's ``pattern`` claim is what the N:M and block kernels rely on: every layer must obey it."""
    if "pattern" not in header:
        return
    try:
        pat = parse_pattern(header["pattern"]) if isinstance(header["pattern"], str) else None
    except ConfigError:
        pat = None
    if pat is None or not pat.structured:
        raise DataError(f"{where}: the header's pattern {header['pattern']!r} is not a structured pattern")
    exempt = header.get("dense_layers", [])
    if not isinstance(exempt, list) or not all(isinstance(n, str) for n in exempt):
        raise DataError(f"{where}: the header's dense_layers {exempt!r} is not a list of layer names")
    try:
        check_pattern(masks, pat, dense_layers=exempt)
    except MaskMismatchError as exc:
        raise DataError(f"{where}: the header claims pattern {pat}, but {exc}") from None
    for name in exempt:
        if name not in masks:
            raise DataError(
                f"{where}: the header exempts '{name}' from its pattern, a layer it does not hold"
            )


def _check_against_model(
    ticket: Ticket, where: str
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    h = ticket.header
    try:
        model = build_model(h.get("model"), h.get("input_shape"), h.get("num_classes"))
    except (ConfigError, DataError) as exc:
        raise DataError(f"{where}: {exc}") from None
    prunable, rest = model_layout(model, set(ticket.masks) | set(ticket.dense))
    desc = f"model '{h['model']}' with input {tuple(h['input_shape'])} and {h['num_classes']} classes"
    for have, want, kind in (
        (ticket.masks, prunable, "prunable layers"),
        (ticket.dense, rest, "other tensors"),
    ):
        if set(have) != set(want):
            diff = sorted(set(have) ^ set(want))[0]
            side = "the file" if diff in have else desc
            raise DataError(f"{where}: '{diff}' is only in {side} (the {kind} of the two differ)")
        for n, s in want.items():
            if tuple(have[n].shape) != s:
                raise DataError(
                    f"{where}: '{n}' has shape {list(have[n].shape)} in the file, {list(s)} in {desc}"
                )
    return prunable, rest
