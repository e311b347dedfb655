"""Mask: parameter name → bool tensor (True = keep), the one object that crosses dataset boundaries.

Stored as safetensors (no pickle: loading a stranger's mask must not run code) with a JSON sidecar holding
the metadata a transfer needs: model name and parameter shapes, source dataset, method, density, hparam
hash and library version, and the sparsity pattern when the mask was made under one (``"pattern": "2:4"``,
with ``"dense_layers"`` exempted), which :meth:`Mask.load` verifies against the tensors. Shapes are checked on every application, with a message naming the layer.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, DataError, MaskMismatchError
from .io import atomic_write, atomic_write_json, json_kind
from .pattern import check_pattern

__all__ = ["Mask", "layer_seed"]

_FORMAT = "ticketsearch-mask/1"


class Mask(Mapping[str, torch.Tensor]):
    """An immutable-by-convention mapping of parameter names to bool tensors, plus metadata."""

    def __init__(
        self, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None
    ) -> None:
        self._t: dict[str, torch.Tensor] = {}
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"mask entry '{name}' is {type(t).__name__}, expected a tensor")
            self._t[name] = t.detach().to(dtype=torch.bool)
        self.metadata: dict[str, Any] = dict(metadata or {})

    # -- mapping ------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._t[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)

    def __repr__(self) -> str:
        return f"Mask({len(self)} tensors, density={self.density:.4f})"

    # -- constructors -------------------------------------------------------------------------------
    @classmethod
    def ones(cls, shapes: Mapping[str, Iterable[int]], **metadata: Any) -> Mask:
        return cls({n: torch.ones(tuple(s), dtype=torch.bool) for n, s in shapes.items()}, metadata)

    # -- statistics ---------------------------------------------------------------------------------
    @property
    def num_kept(self) -> int:
        return int(sum(int(t.sum()) for t in self._t.values()))

    @property
    def num_total(self) -> int:
        return int(sum(t.numel() for t in self._t.values()))

    @property
    def density(self) -> float:
        """Fraction of weights kept (sparsity = 1 − density)."""
        total = self.num_total
        return self.num_kept / total if total else 1.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def layer_density(self) -> dict[str, float]:
        return {n: (float(t.sum()) / t.numel() if t.numel() else 1.0) for n, t in self._t.items()}

    def layer_counts(self) -> dict[str, int]:
        return {n: int(t.sum()) for n, t in self._t.items()}

    def shapes(self) -> dict[str, list[int]]:
        return {n: list(t.shape) for n, t in self._t.items()}

    # -- algebra ------------------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> Mask:
        return Mask({n: t.to(device) for n, t in self._t.items()}, self.metadata)

    def cpu(self) -> Mask:
        return self.to("cpu")

    def is_subset_of(self, other: Mapping[str, torch.Tensor]) -> bool:
        """True if every kept weight here is kept in ``other`` (masks only shrink under IMP)."""
        return all(not bool((t & ~other[n].to(t.device)).any()) for n, t in self._t.items())

    def equals(self, other: Mapping[str, torch.Tensor]) -> bool:
        return set(self) == set(other) and all(
            torch.equal(t.cpu(), other[n].cpu()) for n, t in self._t.items()
        )

    def with_metadata(self, **metadata: Any) -> Mask:
        return Mask(self._t, {**self.metadata, **metadata})

    def shuffled(self, seed: int | torch.Generator) -> Mask:
        """Randomly permute the kept positions within each layer: same layerwise densities, new structure.

        The sanity check of Frankle et al. 2021: a method whose ticket survives this only learned densities.
        Each layer draws from its own generator seeded by :func:`layer_seed` ``(seed, name)``, so the result
        depends only on the seed and the layer names, not on dict order (a mask reloaded from disk comes
        back in the file's order). A ``torch.Generator`` is still accepted: one 63-bit seed is drawn from
        it first, which keeps that path order-independent too.
        """
        if isinstance(seed, torch.Generator):
            seed = int(torch.randint(0, 2**63 - 1, (1,), generator=seed, dtype=torch.int64))
        elif isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"shuffled() takes an int seed (or a torch.Generator), got {type(seed).__name__}")
        out = {}
        for n, t in self._t.items():
            flat = t.flatten().cpu()
            g = torch.Generator().manual_seed(layer_seed(seed, n))
            perm = torch.randperm(flat.numel(), generator=g)
            out[n] = flat[perm].reshape(t.shape).to(t.device)
        return Mask(out, {**self.metadata, "control": "layerwise_shuffle", "shuffle_seed": int(seed)})

    # -- model checks -------------------------------------------------------------------------------
    def check_shapes(self, shapes: Mapping[str, Iterable[int]], *, what: str = "model") -> None:
        """Raise MaskMismatchError naming every missing, extra or misshaped parameter."""
        expected = {n: tuple(s) for n, s in shapes.items()}
        problems = []
        missing = [n for n in expected if n not in self._t]
        extra = [n for n in self._t if n not in expected]
        if missing:
            problems.append(f"missing from mask: {', '.join(missing)}")
        if extra:
            problems.append(f"not in the {what.split(' ')[0]}: {', '.join(extra)}")
        for n, s in expected.items():
            if n in self._t and tuple(self._t[n].shape) != s:
                problems.append(
                    f"'{n}' has shape {list(self._t[n].shape)} in the mask, {list(s)} in the {what.split(' ')[0]}"
                )
        if problems:
            src = self.metadata.get("model")
            src_txt = f" (mask made for model '{src}')" if src else ""
            raise MaskMismatchError(f"mask does not fit the {what}{src_txt}: " + "; ".join(problems))

    # -- persistence --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], **metadata: Any) -> Path:
        """Write ``path`` (safetensors) and ``path`` with suffix ``.json`` (metadata), both atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        meta = {**self.metadata, **metadata}
        meta.update(
            format=_FORMAT,
            density=self.density,
            num_kept=self.num_kept,
            num_total=self.num_total,
            shapes=self.shapes(),
            layer_density=self.layer_density(),
        )
        meta.setdefault("ticketsearch_version", _version())
        tensors = {n: t.detach().cpu().to(torch.uint8).contiguous() for n, t in self._t.items()}
        header = {
            "ticketsearch": json.dumps({k: meta[k] for k in ("format", "model", "density") if k in meta})
        }
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
        atomic_write_json(sidecar_path(path), meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Mask:
        """Load a mask written by :meth:`save`; never unpickles. Corrupt files give a one-line DataError."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise DataError(f"mask file '{path}' does not exist")
        try:
            raw = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataError(f"mask file '{path}' is not a valid safetensors file: {exc}") from None
        meta: dict[str, Any] = {}
        side = sidecar_path(path)
        if side.is_file():
            try:
                meta = json.loads(side.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataError(f"mask metadata '{side}' is not valid JSON: {exc}") from None
            except OSError as exc:
                raise DataError(f"cannot read mask metadata '{side}': {exc.strerror or exc}") from None
            if not isinstance(meta, dict):
                raise DataError(
                    f"mask metadata '{side}' holds a JSON {json_kind(meta)}, expected an object; "
                    "delete it to load the mask without metadata"
                )
        for n, t in raw.items():
            if t.dtype not in (torch.uint8, torch.bool) or bool((t > 1).any()):
                raise DataError(f"mask file '{path}': entry '{n}' is not a 0/1 tensor (dtype {t.dtype})")
        mask = cls({n: t.bool() for n, t in raw.items()}, meta)
        _check_metadata(path, side, mask, meta, _header(path))
        return mask


def _header(path: Path) -> dict[str, Any]:
    """The copy of model and density that :meth:`Mask.save` writes inside the safetensors file itself."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get("ticketsearch")
        out = json.loads(text) if text else {}
    except Exception:  # an unreadable header is no evidence either way
        return {}
    return out if isinstance(out, dict) else {}


def _check_metadata(path: Path, side: Path, mask: Mask, meta: dict[str, Any], header: dict[str, Any]) -> None:
    """A sidecar edited to lie (about the model, shapes or density) must not steer a transfer: every claim
    it makes is checked against the tensors and against the copy inside the mask file."""
    lie = f"mask metadata '{side}' does not match the mask file '{path}'"
    for key in ("model", "density"):
        if key in header and key in meta and meta[key] != header[key]:
            raise DataError(f"{lie}: it says {key} {meta[key]!r}, the file says {header[key]!r}")
    if "num_kept" in meta and meta["num_kept"] != mask.num_kept:
        raise DataError(
            f"mask file '{path}' keeps {mask.num_kept} weights but its metadata says {meta['num_kept']}"
        )
    if "num_total" in meta and meta["num_total"] != mask.num_total:
        raise DataError(f"{lie}: it says {meta['num_total']} weights in all, the file holds {mask.num_total}")
    shapes = mask.shapes()
    claimed = meta.get("shapes")
    if isinstance(claimed, dict) and claimed != shapes:
        bad = sorted(set(claimed) ^ set(shapes)) or sorted(n for n in shapes if claimed.get(n) != shapes[n])
        n = bad[0]
        raise DataError(
            f"{lie}: layer '{n}' has shape {claimed.get(n)} in the metadata, {shapes.get(n)} in the file"
        )
    if (
        "density" in meta
        and isinstance(meta["density"], (int, float))
        and abs(meta["density"] - mask.density) > 1e-12
    ):
        raise DataError(f"{lie}: it says density {meta['density']}, the file keeps {mask.density}")
    layers = meta.get("layer_density")
    if isinstance(layers, dict):
        actual = mask.layer_density()
        for n, d in layers.items():
            if n not in actual or not isinstance(d, (int, float)) or abs(d - actual[n]) > 1e-12:
                raise DataError(f"{lie}: it says layer '{n}' keeps {d}, the file keeps {actual.get(n)}")
    if "pattern" in meta:  # a claim of structure (2:4, blocks) is what a sparse kernel will rely on
        try:
            dense = meta.get("dense_layers") or []
            if not isinstance(dense, list) or not all(isinstance(n, str) for n in dense):
                raise MaskMismatchError(f"dense_layers must be a list of layer names, got {dense!r}")
            check_pattern(mask, str(meta["pattern"]), dense_layers=dense)
        except (ConfigError, MaskMismatchError) as exc:
            raise DataError(f"{lie}: it claims pattern {meta['pattern']!r}, but {exc}") from None


def layer_seed(seed: int, name: str) -> int:
    """A 63-bit seed for layer ``name`` from the run's ``seed``: sha256, so stable across processes and
    Python versions (``hash()`` of a str is salted per process)."""
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p.with_name(p.name[: -len(p.suffix)] + ".json") if p.suffix else p.with_name(p.name + ".json")


def _version() -> str:
    try:
        from .. import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


def exact_count(density: float, n: int) -> int:
    """Number of weights kept for ``density`` of ``n``: round half up, so the rule is the same everywhere."""
    return int(math.floor(density * n + 0.5))
