"""The built-in datasets: digits, mnist, fashion_mnist, mnist1d and cifar10.

Optional libraries (scikit-learn, torchvision, mnist1d) are imported inside the loaders, so importing
``ticketsearch.data`` stays cheap and works without them. Every test set is fixed (independent of the
replicate seed): replicates must be scored on identical data for their spread to mean anything.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import DataError
from ..core.io import atomic_write
from .base import RawSplits, check_data_root, register_dataset, stratified_split
from .idx import load_idx_dataset

__all__ = [
    "load_digits_raw",
    "load_mnist_raw",
    "load_fashion_mnist_raw",
    "load_mnist1d_raw",
    "load_cifar10_raw",
    "NORMALIZATION",
    "CIFAR10_MD5",
    "DIGITS_TEST_FRACTION",
]

# Standard per-channel statistics of each training set (MNIST / Fashion-MNIST / CIFAR-10, pixel values
# scaled to [0, 1]); fixed constants rather than recomputed so a model trained under one split sees the
# same input scale under another. CIFAR uses the true population std (0.2470, ...), not the often-copied
# (0.2023, ...).
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

DIGITS_TEST_FRACTION = 0.2
_DIGITS_TEST_SEED = 0  # fixed: the test split must not move with the replicate seed


# -- digits ----------------------------------------------------------------------------------------------
@register_dataset(
    "digits",
    description="scikit-learn's bundled 8x8 handwritten digits (1797 samples); no files needed",
    default_model="mlp_digits",
    input_shape=(1, 8, 8),
    num_classes=10,
    default_val_size=0.1,
)
def load_digits_raw(root: Path, *, download: bool = False) -> RawSplits:
    """Digits with a fixed stratified 20% test split (seed 0, whatever the replicate seed).

    Pixels (0..16) are scaled to [0, 1] and then standardised with one scalar mean/std taken over the fixed
    training portion (train + val), so the scaling, like the test set, is the same for every replicate.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is a core dependency
        raise DataError("the digits dataset needs scikit-learn: pip install scikit-learn") from exc
    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float64).reshape(-1, 1, 8, 8) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    n_test = int(round(DIGITS_TEST_FRACTION * y.shape[0]))
    train_idx, test_idx = stratified_split(y, n_test, _DIGITS_TEST_SEED, salt=2)
    mean, std = float(x[train_idx].mean()), float(x[train_idx].std())
    x = ((x - mean) / std).astype(np.float32)
    return RawSplits(
        x[train_idx],
        y[train_idx],
        x[test_idx],
        y[test_idx],
        meta={
            "source": "sklearn.datasets.load_digits",
            "test_split_seed": _DIGITS_TEST_SEED,
            "normalization": {"scale": 1 / 16, "mean": mean, "std": std},
        },
    )


# -- MNIST / Fashion-MNIST -------------------------------------------------------------------------------
def _idx_raw(root: Path, dataset: str, download: bool) -> RawSplits:
    arrays, paths, verified = load_idx_dataset(root, dataset, download=download)
    (mean,), (std,) = NORMALIZATION[dataset]
    scale, shift = np.float32(1.0 / (255.0 * std)), np.float32(mean / std)

    def images(a: np.ndarray) -> np.ndarray:
        out = a.astype(np.float32)
        out *= scale
        out -= shift
        return out.reshape(a.shape[0], 1, a.shape[1], a.shape[2])

    return RawSplits(
        images(arrays["train-images-idx3-ubyte"]),
        arrays["train-labels-idx1-ubyte"].astype(np.int64),
        images(arrays["t10k-images-idx3-ubyte"]),
        arrays["t10k-labels-idx1-ubyte"].astype(np.int64),
        meta={"files": paths, "checksums": verified, "normalization": {"mean": mean, "std": std}},
    )


@register_dataset(
    "mnist",
    description="MNIST handwritten digits, 28x28 (IDX files from the data root)",
    default_model="lenet_300_100",
    input_shape=(1, 28, 28),
    num_classes=10,
    default_val_size=5000,
    cache=True,
)
def load_mnist_raw(root: Path, *, download: bool = False) -> RawSplits:
    """MNIST from its canonical IDX files (torchvision, flat or ``mnist/`` layout), checksums verified."""
    return _idx_raw(root, "mnist", download)


@register_dataset(
    "fashion_mnist",
    description="Fashion-MNIST clothing images, 28x28 (IDX files from the data root)",
    default_model="lenet_300_100",
    input_shape=(1, 28, 28),
    num_classes=10,
    default_val_size=5000,
    cache=True,
)
def load_fashion_mnist_raw(root: Path, *, download: bool = False) -> RawSplits:
    """Fashion-MNIST from its canonical IDX files (torchvision, flat or ``fashion-mnist/`` layout)."""
    return _idx_raw(root, "fashion_mnist", download)


# -- MNIST-1D --------------------------------------------------------------------------------------------
@register_dataset(
    "mnist1d",
    description="MNIST-1D: 1-D signals of length 40 (4000 train / 1000 test), generated offline",
    default_model="mlp_mnist1d",
    input_shape=(1, 40),
    num_classes=10,
    default_val_size=0.1,
)
def load_mnist1d_raw(root: Path, *, download: bool = False) -> RawSplits:
    """MNIST-1D generated locally with the package's default arguments, cached as ``.npz``.

    Shape ``(1, 40)``: one channel so Conv1d models take it as is (MLPs flatten). We call
    ``make_dataset`` directly, never ``get_dataset`` (which downloads a pickle). The cache key covers the
    generation arguments and the package version, since a new version may generate different data. The
    package seeds numpy's and Python's global RNGs; we restore them so loading data does not perturb
    anything else seeded by the caller.
    """
    try:
        import mnist1d
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise DataError("the mnist1d dataset needs the mnist1d package: pip install mnist1d") from exc
    args = get_dataset_args(as_dict=True)
    gen_args = {k: v for k, v in args.items() if k != "url"}
    version = getattr(mnist1d, "__version__", None) or _dist_version("mnist1d")
    key_src = json.dumps({"args": gen_args, "version": version}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    cache = Path(root) / "mnist1d" / f"mnist1d_{key}.npz"
    data = _read_npz(cache)
    cached = data is not None
    if data is None:
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            from mnist1d.utils import ObjectView

            d = make_dataset(ObjectView(dict(args)))
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        data = {
            "x": np.asarray(d["x"], dtype=np.float32),
            "y": np.asarray(d["y"], dtype=np.int64),
            "x_test": np.asarray(d["x_test"], dtype=np.float32),
            "y_test": np.asarray(d["y_test"], dtype=np.int64),
        }
        try:
            _write_npz(cache, data)
        except OSError:  # a read-only data root must not stop training; we just regenerate next time
            pass
    return RawSplits(
        data["x"].reshape(-1, 1, data["x"].shape[-1]),
        data["y"],
        data["x_test"].reshape(-1, 1, data["x_test"].shape[-1]),
        data["y_test"],
        meta={
            "source": "mnist1d.make_dataset",
            "args": gen_args,
            "mnist1d_version": version,
            "cache": str(cache),
            "from_cache": cached,
        },
    )


def _dist_version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def _read_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if absent or unreadable (a damaged cache is regenerated, not fatal)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in ("x", "y", "x_test", "y_test")}
    except Exception:
        return None
    if out["x"].shape[0] != out["y"].shape[0] or out["x_test"].shape[0] != out["y_test"].shape[0]:
        return None
    return out


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, w)


# -- CIFAR-10 --------------------------------------------------------------------------------------------
CIFAR10_DIR = "cifar-10-batches-py"
# md5 of each batch as distributed (the same values torchvision checks)
CIFAR10_MD5: dict[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
_CIFAR_TRAIN = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")

# The only globals a CIFAR batch pickle needs (numpy array reconstruction); anything else is refused, so
# a doctored file cannot run code even though the format is pickle.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    want = CIFAR10_MD5.get(path.name)
    got = hashlib.md5(blob).hexdigest()
    if want is not None and got != want:
        raise DataError(
            f"{path}: checksum mismatch: expected md5 {want}, got {got}; the file is corrupt or not CIFAR-10"
        )
    try:
        d = _CifarUnpickler(io.BytesIO(blob), encoding="latin1").load()
        x = np.asarray(d["data"], dtype=np.uint8)
        y = np.asarray(d["labels"], dtype=np.int64)
    except Exception as exc:
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({type(exc).__name__}: {exc})") from exc
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y.shape != (x.shape[0],):
        raise DataError(
            f"{path}: CIFAR-10 batch has data {x.shape} and labels {y.shape}; expected (N, 3072), (N,)"
        )
    return x.reshape(-1, 3, 32, 32), y


@register_dataset(
    "cifar10",
    description="CIFAR-10 colour images, 32x32 (python-format batches from the data root)",
    default_model="resnet20",
    input_shape=(3, 32, 32),
    num_classes=10,
    default_val_size=5000,
)
def load_cifar10_raw(root: Path, *, download: bool = False) -> RawSplits:
    """CIFAR-10 from ``root/cifar-10-batches-py`` (the layout torchvision extracts), md5-checked.

    The batches are pickles; we read them with an unpickler that only admits numpy's array
    reconstruction, after checking their md5, so a foreign file cannot run code.
    """
    check_data_root(Path(root))
    folder = Path(root) / CIFAR10_DIR
    names = (*_CIFAR_TRAIN, "test_batch")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing and download:
        _download_cifar10(Path(root))
        missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 files not found: {', '.join(missing)} in {folder}; pass --download (needs torchvision: "
            f"pip install 'ticketsearch[vision]') or extract cifar-10-python.tar.gz into {Path(root)}"
        )
    parts = [_read_cifar_batch(folder / n) for n in names]
    mean = np.asarray(NORMALIZATION["cifar10"][0], dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(NORMALIZATION["cifar10"][1], dtype=np.float32).reshape(1, 3, 1, 1)

    def norm(a: np.ndarray) -> np.ndarray:
        out = a.astype(np.float32)
        out /= np.float32(255.0)
        out -= mean
        out /= std
        return out

    x_train = np.concatenate([p[0] for p in parts[:-1]])
    y_train = np.concatenate([p[1] for p in parts[:-1]])
    return RawSplits(
        norm(x_train),
        y_train,
        norm(parts[-1][0]),
        parts[-1][1],
        meta={
            "files": {n: str(folder / n) for n in names},
            "checksums": {n: ("md5" if n in CIFAR10_MD5 else "unverified") for n in names},
            "normalization": {"mean": NORMALIZATION["cifar10"][0], "std": NORMALIZATION["cifar10"][1]},
        },
    )


def _download_cifar10(root: Path) -> None:
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:
        raise DataError(
            "downloading CIFAR-10 needs torchvision: pip install 'ticketsearch[vision]' "
            "(or extract cifar-10-python.tar.gz into the data root yourself)"
        ) from exc
    try:
        root.mkdir(parents=True, exist_ok=True)
        tvd.CIFAR10(str(root), train=True, download=True)
    except Exception as exc:
        raise DataError(f"downloading CIFAR-10 into {root} failed: {type(exc).__name__}: {exc}") from exc
