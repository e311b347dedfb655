"""The dataset registry, the :class:`Dataset` container and :func:`load_dataset`.

Loaders only read files and return fixed train/test arrays; everything that depends on the replicate seed
(the validation split) happens here, once, the same way for every dataset, so two datasets cannot differ in
how their validation sets were drawn.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import ConfigError, DataError, TicketsearchError
from ..core.io import blocking_file, expand_path
from ..core.registry import Registry

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetSpec",
    "RawSplits",
    "register_dataset",
    "get_dataset_spec",
    "load_dataset",
    "resolve_root",
    "check_data_root",
    "resolve_val_size",
    "stratified_split",
    "list_datasets",
    "describe",
    "DATA_ENV",
]

DATA_ENV = "TICKETSEARCH_DATA"


@dataclass
class RawSplits:
    """What a loader returns: normalised float32 features and int64 labels, before the validation split.

    ``meta`` records provenance (files read, whether checksums matched) and ends up in ``Dataset.meta``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


Loader = Callable[..., RawSplits]  # loader(root: Path, *, download: bool) -> RawSplits


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: the loader plus static metadata.

    The metadata is static so ``ticketsearch list datasets`` and model auto-selection never load data.
    ``default_val_size`` follows :class:`~ticketsearch.core.hparams.DatasetHparams`: a fraction if < 1,
    else a count.
    """

    name: str
    loader: Loader
    description: str
    default_model: str
    input_shape: tuple[int, ...]
    num_classes: int
    default_val_size: float
    cache: bool = False  # the loader is deterministic given its root and files: reuse it in this process


DATASETS: Registry[DatasetSpec] = Registry("dataset", entry_point_group="ticketsearch.datasets")


def register_dataset(
    name: str,
    *,
    description: str,
    default_model: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    default_val_size: float,
    registry: Registry[DatasetSpec] | None = None,
    cache: bool = False,
) -> Callable[[Loader], Loader]:
    """Decorator registering ``loader(root, *, download) -> RawSplits`` under ``name``.

    Returns the loader unchanged so it stays callable and testable on its own. ``cache=True`` promises
    that the loader's result depends only on the root and the files it lists in ``meta["files"]``: a
    process that loads the data set again (a benchmark worker running cell after cell) then reuses it while
    those files are unchanged, instead of decompressing and normalising them every time.
    """

    def deco(loader: Loader) -> Loader:
        spec = DatasetSpec(
            name=name,
            loader=loader,
            description=description,
            default_model=default_model,
            input_shape=tuple(int(s) for s in input_shape),
            num_classes=int(num_classes),
            default_val_size=float(default_val_size),
            cache=bool(cache),
        )
        (registry if registry is not None else DATASETS).add(name, spec, description=description)
        return loader

    return deco


@dataclass
class Dataset:
    """A whole dataset as tensors, ready to live on the training device.

    Features are float32 of shape ``(N, *input_shape)``, already normalised; labels are int64. With
    ``val_size=0`` the validation tensors are empty (0 rows) rather than ``None`` so callers only test
    ``x_val.shape[0]``. ``train_index`` / ``val_index`` are the rows of the loader's training set that went to
    each split (CPU int64), which makes the split auditable and reproducible from the run record.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    meta: dict[str, Any] = field(default_factory=dict)
    train_index: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    val_index: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))

    @property
    def train_size(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def val_size(self) -> int:
        return int(self.x_val.shape[0])

    @property
    def test_size(self) -> int:
        return int(self.x_test.shape[0])

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device: str | torch.device) -> Dataset:
        """A copy with every data tensor on ``device`` (the indices stay on CPU); ``self`` is untouched."""
        moved = {
            k: getattr(self, k).to(device)
            for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
        }
        return dataclasses.replace(self, **moved)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.train_size}, val={self.val_size}, test={self.test_size}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes}, device={self.device})"
        )


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: ``root`` if given, else ``$TICKETSEARCH_DATA``, else ``./data``.

    One rule for every command, so a user sets the environment variable once. A ``~user`` that does not
    exist is a one-line ConfigError naming where the path came from.
    """
    if root is not None and str(root) != "":
        return expand_path(root, what="data root")
    env = os.environ.get(DATA_ENV)
    if env:
        return expand_path(env, what=f"data root (${DATA_ENV})")
    return Path("data")


def check_data_root(root: Path) -> None:
    """One-line DataError if ``root`` cannot be a readable folder (it, or a folder above it, is a file).

    Without it a root that is a file reads as "files not found" (is_file() hides the cause), and a root
    we may not enter raises PermissionError deep inside a loader. A root that does not exist yet is fine:
    the loaders say which files to put where.
    """
    try:
        if not root.exists():
            blocker = blocking_file(root)
            if blocker is not None:
                raise DataError(f"data root '{root}' cannot be read: '{blocker}' is a file, not a folder")
            return
        if not root.is_dir():
            raise DataError(
                f"data root '{root}' is a file, not a folder; pass the folder that holds the data"
            )
        with os.scandir(root):
            pass
    except OSError as exc:
        if isinstance(exc, TicketsearchError):
            raise
        raise DataError(f"data root '{root}' cannot be read ({exc.strerror or exc})") from None


def resolve_val_size(val_size: float | int | None, n_train: int, default: float) -> int:
    """Turn the user's ``val_size`` into a row count (the ``DatasetHparams`` convention).

    ``None`` or negative: the dataset's default; ``0``: no validation set; ``0 < v < 1``: a fraction of
    the training set; ``v >= 1``: a count (must be a whole number).
    """
    if isinstance(val_size, bool):
        raise ConfigError(f"val_size must be a number, got {val_size!r}")
    v = default if val_size is None or float(val_size) < 0 else float(val_size)
    if not math.isfinite(v):
        raise ConfigError(f"val_size must be finite, got {val_size!r}")
    if v == 0:
        return 0
    if v < 1:
        n = int(round(v * n_train))
        n = max(n, 1)
    else:
        if v != int(v):
            raise ConfigError(f"val_size must be a fraction < 1 or a whole count, got {val_size!r}")
        n = int(v)
    if n >= n_train:
        raise ConfigError(
            f"val_size {val_size!r} leaves no training data ({n} of {n_train} training samples); "
            "choose a smaller val_size"
        )
    return n


def stratified_split(
    labels: np.ndarray, n_holdout: int, seed: int, *, salt: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (kept, held_out) with class proportions preserved, as a pure function of seed.

    Per-class quotas use largest remainders (ties to the lower class id) so the held-out count is exact.
    Both index arrays are sorted, so the kept rows keep their original order. ``salt`` separates splits
    drawn for different purposes from the same seed.
    """
    labels = np.asarray(labels)
    n = int(labels.shape[0])
    if not 0 <= n_holdout <= n:
        raise ConfigError(f"cannot hold out {n_holdout} of {n} samples")
    idx = np.arange(n)
    if n_holdout == 0:
        return idx, idx[:0]
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (n_holdout / n)
    quota = np.floor(exact).astype(np.int64)
    rest = n_holdout - int(quota.sum())
    if rest > 0:
        order = np.lexsort((np.arange(len(classes)), -(exact - quota)))
        quota[order[:rest]] += 1
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, salt, 0x5EED])))
    held = []
    for c, q in zip(classes, quota):
        rows = idx[labels == c]
        held.append(rows[rng.permutation(rows.shape[0])[: int(q)]])
    held_idx = np.sort(np.concatenate(held))
    keep = np.ones(n, dtype=bool)
    keep[held_idx] = False
    return idx[keep], held_idx


_RAW_CACHE: dict[tuple[str, str], tuple[Any, RawSplits]] = {}
_RAW_CACHE_SIZE = 2  # MNIST's raw splits are ~220 MB of float32; two data sets cover a transfer


def _files_state(raw: RawSplits) -> Any:
    """(path, size, mtime) of every file a loader read: a replaced or edited file invalidates the cache."""
    files = raw.meta.get("files") or {}
    paths = files.values() if isinstance(files, dict) else files
    out = []
    for p in sorted(str(x) for x in paths):
        try:
            st = os.stat(p)
        except OSError:
            return None
        out.append((p, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _load_raw(spec: DatasetSpec, root: Path, download: bool) -> RawSplits:
    if not spec.cache:
        return spec.loader(root, download=download)
    key = (spec.name, str(root))
    hit = _RAW_CACHE.get(key)
    if hit is not None and hit[0] is not None and _files_state(hit[1]) == hit[0]:
        return hit[1]
    raw = spec.loader(root, download=download)
    for a in (raw.x_train, raw.y_train, raw.x_test, raw.y_test):
        a.flags.writeable = False  # shared by later loads: nobody may edit it in place
    _RAW_CACHE.pop(key, None)
    _RAW_CACHE[key] = (_files_state(raw), raw)
    while len(_RAW_CACHE) > _RAW_CACHE_SIZE:
        _RAW_CACHE.pop(next(iter(_RAW_CACHE)))
    return raw


def get_dataset_spec(name: str) -> DatasetSpec:
    """The registered spec (loader + static metadata) of ``name``; unknown names suggest the closest."""
    obj = DATASETS.get(name)
    if not isinstance(obj, DatasetSpec):
        raise ConfigError(
            f"dataset '{name}' is registered as {type(obj).__name__}, not a DatasetSpec; "
            "register it with ticketsearch.data.register_dataset"
        )
    return obj


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    val_size: float | int | None = None,
    device: str | torch.device = "cpu",
    download: bool = False,
    resize: int = 0,
) -> Dataset:
    """Load ``name`` with a validation set held out of its training set, drawn from ``seed``.

    The test set never depends on ``seed`` (replicates must be scored on identical data); the validation
    split does, stratified by class. ``val_size`` is ``None``/negative for the dataset's default, a
    fraction < 1, or a count (see :func:`resolve_val_size`). Files are only downloaded with
    ``download=True``. ``resize`` > 0 resamples images to ``resize`` × ``resize`` (antialiased bilinear), so
    a ticket found on one image size can be trained on another (digits 8×8 ↔ MNIST 28×28).
    """
    spec = get_dataset_spec(name)
    root_path = resolve_root(root)
    try:
        raw = _load_raw(spec, root_path, download)
    except OSError as exc:  # a loader (or a plugin's) that let an OSError out: still one line
        if isinstance(exc, TicketsearchError):
            raise
        where = f"'{exc.filename}'" if exc.filename else f"the data root '{root_path}'"
        raise DataError(f"dataset '{name}': cannot read {where} ({exc.strerror or exc})") from None
    _check_raw(spec, raw)
    n_val = resolve_val_size(val_size, int(raw.x_train.shape[0]), spec.default_val_size)
    train_idx, val_idx = stratified_split(raw.y_train, n_val, seed, salt=1)

    def rows(a: np.ndarray, idx: np.ndarray | None, dtype: type) -> torch.Tensor:
        """A fresh tensor of ``a``'s rows ``idx`` (all rows: None): never a view of ``a``, which may be the
        process cache's (read-only, shared by later loads). One copy: a fancy index already copies."""
        out = a[idx] if idx is not None else np.array(a, dtype=dtype)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=dtype))

    ti, vi = torch.from_numpy(train_idx).long(), torch.from_numpy(val_idx).long()
    input_shape = tuple(spec.input_shape)
    if resize:  # resample every image once, then split
        x_all, x_test, input_shape = _resize(
            name, input_shape, resize, rows(raw.x_train, None, np.float32), rows(raw.x_test, None, np.float32)
        )
        x_train, x_val = x_all[ti], x_all[vi]
    else:  # split first: each split is copied once, not the whole training set twice
        x_train, x_val = rows(raw.x_train, train_idx, np.float32), rows(raw.x_train, val_idx, np.float32)
        x_test = rows(raw.x_test, None, np.float32)
    meta = dict(raw.meta)
    meta.update({"dataset": name, "root": str(root_path), "split_seed": int(seed), "val_size": int(n_val)})
    if resize:
        meta["resize"] = int(resize)
    ds = Dataset(
        name=name,
        x_train=x_train,
        y_train=rows(raw.y_train, train_idx, np.int64),
        x_val=x_val,
        y_val=rows(raw.y_train, val_idx, np.int64),
        x_test=x_test,
        y_test=rows(raw.y_test, None, np.int64),
        input_shape=input_shape,
        num_classes=spec.num_classes,
        meta=meta,
        train_index=ti,
        val_index=vi,
    )
    return ds.to(device) if torch.device(device) != torch.device("cpu") else ds


def _resize(
    name: str, shape: tuple[int, ...], size: int, *xs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """Images (C×H×W) resampled to size × size: antialiased, so downsampling averages instead of aliasing."""
    import torch.nn.functional as F

    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 1024:
        raise ConfigError(f"resize must be a whole number in [1, 1024] (0: native size), got {size!r}")
    if len(shape) != 3:
        raise ConfigError(f"resize applies to image datasets (C×H×W); '{name}' has input shape {shape}")
    if tuple(shape[1:]) == (size, size):
        return xs[0], xs[1], shape
    out = [
        F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).contiguous()
        for x in xs
    ]
    return out[0], out[1], (shape[0], size, size)


def _check_raw(spec: DatasetSpec, raw: RawSplits) -> None:
    """A loader bug (or a plugin's) must surface here, not as a shape error deep in training."""
    for split in ("train", "test"):
        x, y = getattr(raw, f"x_{split}"), getattr(raw, f"y_{split}")
        if tuple(x.shape[1:]) != spec.input_shape or x.shape[0] != y.shape[0] or y.ndim != 1:
            raise DataError(
                f"dataset '{spec.name}' loader returned {split} arrays x{tuple(x.shape)} y{tuple(y.shape)}; "
                f"expected x(N, {', '.join(map(str, spec.input_shape))}) and y(N,)"
            )
        if y.shape[0] and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
            raise DataError(
                f"dataset '{spec.name}' {split} labels span {int(y.min())}..{int(y.max())}, "
                f"outside 0..{spec.num_classes - 1}"
            )


def list_datasets() -> list[str]:
    """Registered dataset names (built-ins and plugins), sorted."""
    return DATASETS.names()


def describe() -> list[tuple[str, str, str, tuple[int, ...], int]]:
    """``(name, description, default_model, input_shape, num_classes)`` per dataset, without loading data."""
    rows = []
    for entry in DATASETS.entries():
        spec = entry.obj
        if isinstance(spec, DatasetSpec):
            rows.append(
                (spec.name, entry.description, spec.default_model, spec.input_shape, spec.num_classes)
            )
    return rows
