"""Reading the IDX files of MNIST and Fashion-MNIST, with their canonical checksums.

We parse IDX ourselves (a 4-byte magic, big-endian dimensions, raw values) instead of going through
torchvision so the core datasets need no optional dependency, and so a corrupt or truncated file is a
:class:`DataError` that names the file instead of a reshape error later.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from .base import check_data_root

__all__ = [
    "IDX_FILES",
    "IdxFile",
    "parse_idx",
    "read_idx_file",
    "sha256_bytes",
    "find_idx_files",
    "load_idx_dataset",
]

# IDX type code -> big-endian numpy dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

SPLIT_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class IdxFile:
    """Canonical identity of one file: sha256 of the distributed ``.gz`` and of its uncompressed content.

    The content hash lets us accept re-compressed copies and torchvision's extracted files.
    """

    gz_sha256: str
    raw_sha256: str
    shape: tuple[int, ...]


# (dataset, file stem) -> canonical checksums (the .gz values are those of /work/shared/datasets/SHA256SUMS)
IDX_FILES: dict[str, dict[str, IdxFile]] = {
    "mnist": {
        "train-images-idx3-ubyte": IdxFile(
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            (60000, 28, 28),
        ),
        "train-labels-idx1-ubyte": IdxFile(
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            (60000,),
        ),
        "t10k-images-idx3-ubyte": IdxFile(
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            (10000, 28, 28),
        ),
        "t10k-labels-idx1-ubyte": IdxFile(
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            (10000,),
        ),
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": IdxFile(
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            (60000, 28, 28),
        ),
        "train-labels-idx1-ubyte": IdxFile(
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            (60000,),
        ),
        "t10k-images-idx3-ubyte": IdxFile(
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            (10000, 28, 28),
        ),
        "t10k-labels-idx1-ubyte": IdxFile(
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            (10000,),
        ),
    },
}

# Folder names per layout: torchvision's root/<Class>/raw, /work/shared/datasets' root/<name>, and flat root.
_TORCHVISION_DIR = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_SHARED_DIRS = {"mnist": ("mnist",), "fashion_mnist": ("fashion-mnist", "fashion_mnist")}
_PRETTY = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Decode an uncompressed IDX blob into a native-endian array; ``source`` names the file in errors."""
    if len(data) < 4:
        raise DataError(f"{source}: not an IDX file (only {len(data)} bytes)")
    zero, code, ndim = int.from_bytes(data[0:2], "big"), data[2], data[3]
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"{source}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000TTNN)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"{source}: IDX header says dims {dims} ({expected} bytes) but the file has {len(data)} bytes; "
            "it is truncated or corrupt"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr if dtype.itemsize == 1 else arr.astype(dtype.newbyteorder("="))


def read_idx_file(path: str | os.PathLike[str], expected: IdxFile | None = None) -> tuple[np.ndarray, str]:
    """Read an IDX file (``.gz`` or not), verify it against ``expected`` and return (array, how_verified).

    A ``.gz`` passes if its own sha256 is canonical, or failing that if its uncompressed content is (a
    re-compressed copy). Structural problems are reported before checksum ones because they say more.
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    is_gz = path.name.endswith(".gz")
    if is_gz:
        try:
            raw = gzip.decompress(blob)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"{path}: truncated or corrupt gzip file ({exc}); delete it and fetch it again"
            ) from exc
    else:
        raw = blob
    arr = parse_idx(raw, source=str(path))
    if expected is None:
        return arr, "unverified"
    if is_gz and sha256_bytes(blob) == expected.gz_sha256:
        return arr, "sha256"
    raw_sha = sha256_bytes(raw)
    if raw_sha == expected.raw_sha256:
        return arr, "sha256 (content)"
    actual = sha256_bytes(blob) if is_gz else raw_sha
    want = expected.gz_sha256 if is_gz else expected.raw_sha256
    hint = _identify(raw_sha)
    raise DataError(
        f"{path}: checksum mismatch: expected sha256 {want}, got {actual}"
        + (f" ({hint})" if hint else "; the file is corrupt or not the canonical one")
    )


def _identify(raw_sha: str) -> str:
    """Name the canonical file a mismatching one really is (MNIST files in a Fashion-MNIST folder...)."""
    for ds, files in IDX_FILES.items():
        for stem, f in files.items():
            if f.raw_sha256 == raw_sha:
                return f"this is {_PRETTY[ds]}'s {stem}"
    return ""


def candidate_dirs(root: Path, dataset: str) -> list[Path]:
    """Folders searched, in order: torchvision layout, the shared-datasets layout, then ``root`` itself."""
    dirs = [root / _TORCHVISION_DIR[dataset] / "raw"]
    dirs += [root / d for d in _SHARED_DIRS[dataset]]
    dirs.append(root)
    return dirs


def find_idx_files(root: Path, dataset: str) -> tuple[dict[str, Path], list[str]]:
    """Locate the four files; returns (found stem -> path, missing stems).

    Uncompressed copies are preferred where both exist (torchvision keeps both; reading the raw file is
    faster), and each file is searched independently so a partly filled folder still reports exactly what
    is missing.
    """
    found: dict[str, Path] = {}
    missing: list[str] = []
    for stem in SPLIT_FILES:
        for d in candidate_dirs(root, dataset):
            hit = next((d / n for n in (stem, stem + ".gz") if (d / n).is_file()), None)
            if hit is not None:
                found[stem] = hit
                break
        else:
            missing.append(stem)
    return found, missing


def missing_message(root: Path, dataset: str, missing: list[str]) -> str:
    where = ", ".join(str(d) for d in candidate_dirs(root, dataset))
    files = ", ".join(f"{s}.gz" for s in missing)
    return (
        f"{_PRETTY[dataset]} files not found: {files}; looked in {where} (also uncompressed, without .gz); "
        f"pass --download (needs torchvision: pip install 'ticketsearch[vision]') or copy the four "
        f"{_PRETTY[dataset]} .gz files into {root / _SHARED_DIRS[dataset][0]} "
        f"(the data root comes from --data-root, else $TICKETSEARCH_DATA, else ./data)"
    )


def download_with_torchvision(root: Path, dataset: str) -> None:
    """Fetch through torchvision, only when the user asked (``download=True``)."""
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:
        raise DataError(
            f"downloading {_PRETTY[dataset]} needs torchvision: pip install 'ticketsearch[vision]' "
            "(or copy the files into the data root yourself)"
        ) from exc
    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST}[dataset]
    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as exc:  # network errors come in many types; all mean the same to the user
        raise DataError(
            f"downloading {_PRETTY[dataset]} into {root} failed: {type(exc).__name__}: {exc}"
        ) from exc


def load_idx_dataset(
    root: Path, dataset: str, *, download: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, str]]:
    """Read and verify the four files of ``dataset``: returns (arrays by stem, paths, how each was verified)."""
    check_data_root(root)
    found, missing = find_idx_files(root, dataset)
    if missing and download:
        download_with_torchvision(root, dataset)
        found, missing = find_idx_files(root, dataset)
    if missing:
        raise DataError(missing_message(root, dataset, missing))
    arrays, paths, verified = {}, {}, {}
    for stem in SPLIT_FILES:
        expected = IDX_FILES[dataset][stem]
        arr, how = read_idx_file(found[stem], expected)
        if arr.shape != expected.shape:  # cannot happen after a checksum match; guards edits of the table
            raise DataError(f"{found[stem]}: shape {arr.shape}, expected {expected.shape}")
        arrays[stem], paths[stem], verified[stem] = arr, str(found[stem]), how
    return arrays, paths, verified
