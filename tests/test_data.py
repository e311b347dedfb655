"""Tests of ticketsearch.data against independent oracles (raw bytes read with numpy, sklearn, mnist1d)."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ticketsearch.data as D
from ticketsearch.core.errors import ConfigError, DataError, UnknownNameError
from ticketsearch.data import builtin, idx

STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def raw_idx(path: Path) -> np.ndarray:
    """Oracle IDX reader, independent of the library: fixed offsets for the known MNIST layouts."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if data[3] == 1:
        return np.frombuffer(data, dtype=np.uint8, offset=8)
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(-1, 28, 28)


@pytest.fixture(scope="module")
def mnist(shared_datasets: Path) -> D.Dataset:
    return D.load_dataset("mnist", root=shared_datasets, seed=3)


def _assert_same(a: D.Dataset, b: D.Dataset) -> None:
    for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k


def _bad_root(tmp_path: Path, shared: Path, stem: str, content: bytes) -> Path:
    """A flat folder of the four MNIST files where ``stem``.gz is replaced by ``content``."""
    root = tmp_path / "bad"
    root.mkdir()
    for s in STEMS:
        dst = root / f"{s}.gz"
        if s == stem:
            dst.write_bytes(content)
        else:
            dst.symlink_to(shared / "mnist" / f"{s}.gz")
    return root


# -- import, registry, configuration ----------------------------------------------------------------------
def test_import_is_cheap_and_skips_optional_libraries() -> None:
    code = (
        "import ticketsearch.data, sys; "
        "bad = [m for m in ('torchvision', 'sklearn', 'mnist1d') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_registry_metadata_without_loading() -> None:
    assert {"digits", "mnist", "fashion_mnist", "mnist1d", "cifar10"} <= set(D.list_datasets())
    rows = {r[0]: r for r in D.describe()}
    assert rows["digits"][2:] == ("mlp_digits", (1, 8, 8), 10)
    assert rows["mnist"][2:] == ("lenet_300_100", (1, 28, 28), 10)
    assert rows["fashion_mnist"][2:] == ("lenet_300_100", (1, 28, 28), 10)
    assert rows["mnist1d"][2:] == ("mlp_mnist1d", (1, 40), 10)
    assert rows["cifar10"][2:] == ("resnet20", (3, 32, 32), 10)
    assert all(r[1] and "\n" not in r[1] for r in rows.values())
    assert D.get_dataset_spec("mnist1d").default_val_size == 0.1
    assert D.get_dataset_spec("cifar10").default_val_size == 5000


def test_unknown_dataset_suggests_closest() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'mnist'"):
        D.load_dataset("mnsit")
    assert issubclass(UnknownNameError, ConfigError)


def test_register_rejects_taken_name() -> None:
    with pytest.raises(ValueError, match="already registered"):
        D.register_dataset(
            "mnist", description="x", default_model="m", input_shape=(1,), num_classes=2, default_val_size=0
        )(lambda root, download=False: None)


def test_resolve_root_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(D.DATA_ENV, raising=False)
    assert D.resolve_root(None) == Path("data")
    monkeypatch.setenv(D.DATA_ENV, str(tmp_path / "env"))
    assert D.resolve_root(None) == tmp_path / "env"
    assert D.resolve_root(tmp_path / "arg") == tmp_path / "arg"


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_data_root_that_is_a_file_or_under_one(tmp_path: Path, name: str) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("not a folder")
    for root in (blocker, blocker / "sub"):
        with pytest.raises(DataError) as e:
            D.load_dataset(name, root=root)
        msg = str(e.value)
        assert "\n" not in msg and f"data root '{root}'" in msg and "is a file, not a folder" in msg
        assert f"'{blocker}'" in msg or root == blocker


def test_data_root_unknown_user(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as e:
        D.load_dataset("mnist", root="~nosuchuser_ts/data")
    msg = str(e.value)
    assert "\n" not in msg and "data root '~nosuchuser_ts/data'" in msg and "no user 'nosuchuser_ts'" in msg
    monkeypatch.setenv(D.DATA_ENV, "~nosuchuser_ts/data")
    with pytest.raises(ConfigError, match=r"\$TICKETSEARCH_DATA.*no user 'nosuchuser_ts'"):
        D.resolve_root(None)
    monkeypatch.setenv(D.DATA_ENV, "~/data")
    assert D.resolve_root(None) == Path.home() / "data"


def test_loader_os_error_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ticketsearch.data import base

    def loader(root: Path, *, download: bool = False) -> D.RawSplits:
        return np.load(root / "missing.npz")  # type: ignore[no-any-return]

    spec = base.DatasetSpec("plug", loader, "d", "m", (1,), 2, 0.1)
    monkeypatch.setattr(base, "get_dataset_spec", lambda name: spec)
    with pytest.raises(DataError) as e:
        D.load_dataset("plug", root=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and f"dataset 'plug': cannot read '{tmp_path / 'missing.npz'}'" in msg


def test_resolve_val_size() -> None:
    assert D.resolve_val_size(None, 1000, 0.1) == 100
    assert D.resolve_val_size(-1.0, 1000, 5000 / 60000) == 83
    assert D.resolve_val_size(0, 1000, 0.1) == 0
    assert D.resolve_val_size(0.25, 1000, 0.1) == 250
    assert D.resolve_val_size(300, 1000, 0.1) == 300
    assert D.resolve_val_size(300.0, 1000, 0.1) == 300
    for bad in (1000, 2000, 1.5, True, float("nan")):
        with pytest.raises(ConfigError):
            D.resolve_val_size(bad, 1000, 0.1)


def test_stratified_split_exact_counts_and_proportions() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, size=1003)
    keep, held = D.stratified_split(y, 250, seed=5)
    assert len(held) == 250 and len(keep) == 753
    assert np.intersect1d(keep, held).size == 0
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(1003))
    counts, held_counts = np.bincount(y, minlength=7), np.bincount(y[held], minlength=7)
    assert np.all(np.abs(held_counts - counts * 250 / 1003) < 1)
    k2, h2 = D.stratified_split(y, 250, seed=5)
    assert np.array_equal(h2, held)
    _, h3 = D.stratified_split(y, 250, seed=6)
    assert not np.array_equal(h3, held)


# -- IDX parsing ------------------------------------------------------------------------------------------
def test_parse_idx_synthetic() -> None:
    vals = np.arange(6, dtype=">i4").reshape(2, 3)
    blob = bytes([0, 0, 0x0C, 2]) + np.array([2, 3], dtype=">u4").tobytes() + vals.tobytes()
    out = D.parse_idx(blob)
    assert out.dtype == np.int32 and np.array_equal(out, np.arange(6).reshape(2, 3))
    with pytest.raises(DataError, match="magic"):
        D.parse_idx(b"\x01\x00\x08\x01" + blob[4:], source="f.idx")
    with pytest.raises(DataError, match="f.idx.*truncated or corrupt"):
        D.parse_idx(blob[:-1], source="f.idx")
    with pytest.raises(DataError, match="f.idx"):
        D.parse_idx(b"\x00\x00", source="f.idx")


def test_checksum_table_matches_shared_sums(shared_datasets: Path) -> None:
    sums = {}
    for line in (shared_datasets / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split()
        sums[rel] = digest
    folders = {"mnist": "mnist", "fashion_mnist": "fashion-mnist"}
    for ds, files in idx.IDX_FILES.items():
        for stem, f in files.items():
            path = shared_datasets / folders[ds] / f"{stem}.gz"
            assert f.gz_sha256 == sums[f"{folders[ds]}/{stem}.gz"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == f.gz_sha256
            assert hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest() == f.raw_sha256


def test_mnist_matches_raw_oracle(mnist: D.Dataset, shared_datasets: Path) -> None:
    labels = raw_idx(shared_datasets / "mnist" / "train-labels-idx1-ubyte.gz")
    assert labels.shape == (60000,)
    assert np.bincount(labels).tolist() == MNIST_TRAIN_COUNTS
    images = raw_idx(shared_datasets / "mnist" / "train-images-idx3-ubyte.gz")
    assert images.shape == (60000, 28, 28)

    assert (mnist.train_size, mnist.val_size, mnist.test_size) == (55000, 5000, 10000)
    assert mnist.x_train.shape == (55000, 1, 28, 28) and mnist.x_test.shape == (10000, 1, 28, 28)
    assert mnist.x_train.dtype == torch.float32 and mnist.y_train.dtype == torch.int64
    assert mnist.input_shape == (1, 28, 28) and mnist.num_classes == 10
    ti, vi = mnist.train_index.numpy(), mnist.val_index.numpy()
    assert np.intersect1d(ti, vi).size == 0
    assert np.array_equal(np.sort(np.concatenate([ti, vi])), np.arange(60000))
    assert np.array_equal(mnist.y_train.numpy(), labels[ti])
    assert np.array_equal(mnist.y_val.numpy(), labels[vi])
    # stratified: each class's share of the validation set within one sample of its share of the data
    expected = np.array(MNIST_TRAIN_COUNTS) * 5000 / 60000
    assert np.all(np.abs(np.bincount(mnist.y_val.numpy(), minlength=10) - expected) < 1)
    # normalisation with the standard constants, rows where the index says they came from
    rows = [0, 1, 12345, 54999]
    want = (images[ti[rows]].astype(np.float64) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(mnist.x_train[rows, 0].numpy(), want, atol=1e-5)
    test_labels = raw_idx(shared_datasets / "mnist" / "t10k-labels-idx1-ubyte.gz")
    assert np.array_equal(mnist.y_test.numpy(), test_labels)
    assert set(mnist.meta["checksums"].values()) == {"sha256"}
    assert mnist.meta["split_seed"] == 3


def test_mnist_val_split_depends_on_seed_only(mnist: D.Dataset, shared_datasets: Path) -> None:
    other = D.load_dataset("mnist", root=shared_datasets, seed=4, val_size=0.1)
    assert other.val_size == 6000
    assert torch.equal(other.x_test, mnist.x_test)
    assert not torch.equal(other.val_index[:5000], mnist.val_index)


def test_fashion_mnist_shared_layout(shared_datasets: Path) -> None:
    ds = D.load_dataset("fashion_mnist", root=shared_datasets, val_size=0)
    labels = raw_idx(shared_datasets / "fashion-mnist" / "train-labels-idx1-ubyte.gz")
    assert np.bincount(labels).tolist() == [6000] * 10
    assert ds.val_size == 0 and ds.x_val.shape == (0, 1, 28, 28) and ds.y_val.shape == (0,)
    assert np.array_equal(ds.y_train.numpy(), labels)
    assert ds.x_train.shape == (60000, 1, 28, 28)
    img = raw_idx(shared_datasets / "fashion-mnist" / "t10k-images-idx3-ubyte.gz")[7]
    np.testing.assert_allclose(ds.x_test[7, 0].numpy(), (img / 255 - 0.2860) / 0.3530, atol=1e-5)


def test_torchvision_layout(tmp_path: Path, shared_datasets: Path, mnist: D.Dataset) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for s in STEMS:
        (raw / f"{s}.gz").symlink_to(shared_datasets / "mnist" / f"{s}.gz")
    _assert_same(D.load_dataset("mnist", root=tmp_path, seed=3), mnist)


def test_torchvision_layout_uncompressed(tmp_path: Path, shared_datasets: Path, mnist: D.Dataset) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for s in STEMS:
        (raw / s).write_bytes(gzip.decompress((shared_datasets / "mnist" / f"{s}.gz").read_bytes()))
    ds = D.load_dataset("mnist", root=tmp_path, seed=3)
    _assert_same(ds, mnist)
    assert set(ds.meta["checksums"].values()) == {"sha256 (content)"}


def test_flat_layout_via_env(
    tmp_path: Path, shared_datasets: Path, mnist: D.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    for s in STEMS:
        shutil.copyfile(shared_datasets / "mnist" / f"{s}.gz", tmp_path / f"{s}.gz")
    monkeypatch.setenv(D.DATA_ENV, str(tmp_path))
    _assert_same(D.load_dataset("mnist", seed=3), mnist)


def test_recompressed_gz_accepted_by_content(tmp_path: Path, shared_datasets: Path) -> None:
    src = shared_datasets / "mnist" / "t10k-labels-idx1-ubyte.gz"
    dst = tmp_path / "t10k-labels-idx1-ubyte.gz"
    dst.write_bytes(gzip.compress(gzip.decompress(src.read_bytes()), compresslevel=1, mtime=0))
    arr, how = D.read_idx_file(dst, idx.IDX_FILES["mnist"]["t10k-labels-idx1-ubyte"])
    assert how == "sha256 (content)" and np.array_equal(arr, raw_idx(src))


def test_truncated_gzip_names_file(tmp_path: Path, shared_datasets: Path) -> None:
    good = (shared_datasets / "mnist" / "train-labels-idx1-ubyte.gz").read_bytes()
    root = _bad_root(tmp_path, shared_datasets, "train-labels-idx1-ubyte", good[: len(good) // 2])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz.*truncated or corrupt"):
        D.load_dataset("mnist", root=root)


def test_corrupt_byte_names_file(tmp_path: Path, shared_datasets: Path) -> None:
    good = bytearray((shared_datasets / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes())
    good[len(good) // 2] ^= 0xFF
    root = _bad_root(tmp_path, shared_datasets, "t10k-labels-idx1-ubyte", bytes(good))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz"):
        D.load_dataset("mnist", root=root)


def test_bad_idx_header_names_file(tmp_path: Path, shared_datasets: Path) -> None:
    raw = gzip.decompress((shared_datasets / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes())
    root = _bad_root(tmp_path, shared_datasets, "t10k-labels-idx1-ubyte", gzip.compress(raw[:-10]))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: IDX header says dims \(10000,\)"):
        D.load_dataset("mnist", root=root)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x08\x03" + raw[2:]))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: bad IDX magic"):
        D.load_dataset("mnist", root=root)


def test_checksum_mismatch_reports_expected_and_actual(tmp_path: Path, shared_datasets: Path) -> None:
    raw = bytearray(gzip.decompress((shared_datasets / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # still a well-formed IDX file, just different labels
    blob = gzip.compress(bytes(raw))
    root = _bad_root(tmp_path, shared_datasets, "t10k-labels-idx1-ubyte", blob)
    want = idx.IDX_FILES["mnist"]["t10k-labels-idx1-ubyte"].gz_sha256
    got = hashlib.sha256(blob).hexdigest()
    with pytest.raises(DataError, match=rf"t10k-labels-idx1-ubyte\.gz: checksum mismatch.*{want}.*{got}"):
        D.load_dataset("mnist", root=root)


def test_wrong_dataset_files_are_identified(tmp_path: Path, shared_datasets: Path) -> None:
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for s in STEMS:
        (folder / f"{s}.gz").symlink_to(shared_datasets / "mnist" / f"{s}.gz")
    with pytest.raises(DataError, match="this is MNIST's train-images-idx3-ubyte"):
        D.load_dataset("fashion_mnist", root=tmp_path)


def test_missing_files_lists_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*a: object, **k: object) -> None:
        raise AssertionError("must not download unless asked")

    monkeypatch.setattr(idx, "download_with_torchvision", no_download)
    (tmp_path / "mnist").mkdir()
    with pytest.raises(DataError) as exc:
        D.load_dataset("mnist", root=tmp_path)
    msg = str(exc.value)
    assert "\n" not in msg
    for place in (tmp_path / "MNIST" / "raw", tmp_path / "mnist", tmp_path):
        assert str(place) in msg
    for s in STEMS:
        assert f"{s}.gz" in msg
    assert "--download" in msg and "vision" in msg


def test_partial_files_report_only_missing(tmp_path: Path, shared_datasets: Path) -> None:
    (tmp_path / "t10k-labels-idx1-ubyte.gz").symlink_to(
        shared_datasets / "mnist" / "t10k-labels-idx1-ubyte.gz"
    )
    with pytest.raises(DataError) as exc:
        D.load_dataset("mnist", root=tmp_path)
    assert "t10k-labels" not in str(exc.value).split("looked in")[0]


def test_download_without_torchvision_is_a_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(DataError, match=r"ticketsearch\[vision\]"):
        D.load_dataset("mnist", root=tmp_path, download=True)
    with pytest.raises(DataError, match=r"ticketsearch\[vision\]"):
        D.load_dataset("cifar10", root=tmp_path, download=True)


# -- digits -----------------------------------------------------------------------------------------------
def test_digits_splits() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    a = D.load_dataset("digits", seed=0)
    b = D.load_dataset("digits", seed=1)
    assert a.input_shape == (1, 8, 8) and a.x_train.shape[1:] == (1, 8, 8)
    assert a.train_size + a.val_size + a.test_size == 1797
    assert a.test_size == 359 and a.val_size == 144
    # the test split is fixed across replicate seeds; the validation split is not
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.val_index, b.val_index)
    # stratified test split
    counts = np.bincount(bunch.target)
    assert np.all(np.abs(np.bincount(a.y_test.numpy(), minlength=10) - counts * 359 / 1797) < 1)
    # no sample appears twice and none is lost: undo the normalisation and compare with sklearn's rows
    norm = a.meta["normalization"]
    rows = []
    for x in (a.x_train, a.x_val, a.x_test):
        rows.append(np.rint((x.double().numpy() * norm["std"] + norm["mean"]) * 16).reshape(-1, 64))
    ours = np.concatenate(rows)
    assert ours.min() == 0 and ours.max() == 16

    def as_sorted(m: np.ndarray) -> np.ndarray:
        return m[np.lexsort(m.T[::-1])]

    assert np.array_equal(as_sorted(ours), as_sorted(bunch.data.astype(np.float64)))
    ys = np.concatenate([a.y_train.numpy(), a.y_val.numpy(), a.y_test.numpy()])
    assert np.array_equal(np.bincount(ys), counts)


def test_dataset_to_and_val_size_zero() -> None:
    ds = D.load_dataset("digits", val_size=0, device="cpu")
    assert ds.val_size == 0 and ds.x_val.shape == (0, 1, 8, 8) and ds.x_val.dtype == torch.float32
    moved = ds.to("cpu")
    assert moved is not ds and moved.device == torch.device("cpu")
    assert torch.equal(moved.x_train, ds.x_train)
    assert "digits" in repr(ds)


# -- Batcher ----------------------------------------------------------------------------------------------
def test_batcher_pure_function_of_seed_and_iteration() -> None:
    x = torch.arange(103, dtype=torch.float32).unsqueeze(1)
    y = torch.arange(103)
    a = D.Batcher(x, y, 10, seed=7)
    assert a.steps_per_epoch == 11 and len(a) == 11
    seq = [a.batch(i) for i in range(40)]
    b = D.Batcher(x, y, 10, seed=7)
    for i in (35, 3, 22, 3, 0, 39):  # any call order
        xb, yb = b.batch(i)
        assert torch.equal(xb, seq[i][0]) and torch.equal(yb, seq[i][1])
    # resuming at iteration k replays exactly the batches of an uninterrupted run
    c = D.Batcher(x, y, 10, seed=7)
    for i in range(17, 40):
        assert torch.equal(c.batch(i)[1], seq[i][1])
    # features and labels stay paired
    for xb, yb in seq:
        assert torch.equal(xb[:, 0].long(), yb)
    assert not torch.equal(D.Batcher(x, y, 10, seed=8).batch(0)[1], seq[0][1])


def test_batcher_epochs_cover_every_sample_once() -> None:
    x, y = torch.randn(103, 3), torch.arange(103)
    b = D.Batcher(x, y, 10, seed=1)
    perms = []
    for epoch in range(3):
        ys = [b.batch(epoch * 11 + s)[1] for s in range(11)]
        assert [len(t) for t in ys] == [10] * 10 + [3]
        got = torch.cat(ys)
        assert torch.equal(torch.sort(got).values, y)
        perms.append(got)
    assert not torch.equal(perms[0], perms[1])
    d = D.Batcher(x, y, 10, seed=1, drop_last=True)
    assert d.steps_per_epoch == 10
    got = torch.cat([d.batch(s)[1] for s in range(10)])
    assert got.unique().numel() == 100 and all(len(d.batch(s)[1]) == 10 for s in range(25))


def test_batcher_seed_hash_is_stable() -> None:
    # changing the seed mix would silently change every recorded run; pin it
    g = torch.Generator().manual_seed(D.epoch_seed(0, 0))
    b = D.Batcher(torch.zeros(20, 1), torch.arange(20), 5, seed=0)
    assert torch.equal(b.permutation(0), torch.randperm(20, generator=g))
    assert len({D.epoch_seed(s, e) for s in range(20) for e in range(20)}) == 400
    assert all(0 <= D.epoch_seed(s, 0) < 2**63 for s in (-1, 0, 2**70))


def test_batcher_errors() -> None:
    x, y = torch.zeros(5, 1), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ConfigError):
        D.Batcher(x, y, 0, seed=0)
    with pytest.raises(ConfigError):
        D.Batcher(x, y[:4], 2, seed=0)
    with pytest.raises(ConfigError):
        D.Batcher(x[:0], y[:0], 2, seed=0)
    with pytest.raises(ConfigError):
        D.Batcher(x, y, 6, seed=0, drop_last=True)
    with pytest.raises(ConfigError):
        D.Batcher(x, y, 2, seed=0).batch(-1)


def test_eval_batches_sequential() -> None:
    x, y = torch.arange(23).float(), torch.arange(23)
    chunks = list(D.eval_batches(x, y, 5))
    assert [len(c[1]) for c in chunks] == [5, 5, 5, 5, 3]
    assert torch.equal(torch.cat([c[1] for c in chunks]), y)
    assert list(D.eval_batches(x[:0], y[:0], 5)) == []


# -- MNIST-1D ---------------------------------------------------------------------------------------------
@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    try:
        import requests

        monkeypatch.setattr(requests, "get", refuse)
    except ImportError:
        pass


def test_mnist1d_generated_offline_and_cached(tmp_path: Path, no_network: None) -> None:
    pytest.importorskip("mnist1d")
    from mnist1d.data import get_dataset_args, make_dataset

    np.random.seed(123)
    random.seed(123)
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    ds = D.load_dataset("mnist1d", root=tmp_path, seed=0)
    assert np.array_equal(np.random.get_state()[1], np_before) and random.getstate() == py_before
    assert ds.input_shape == (1, 40)
    assert ds.x_train.shape == (3600, 1, 40) and ds.x_val.shape == (400, 1, 40)
    assert ds.x_test.shape == (1000, 1, 40) and ds.x_test.dtype == torch.float32
    assert ds.meta["from_cache"] is False
    caches = list((tmp_path / "mnist1d").glob("*.npz"))
    assert len(caches) == 1 and not list((tmp_path / "mnist1d").glob(".*tmp"))

    oracle = make_dataset(get_dataset_args())
    np.testing.assert_allclose(ds.x_test[:, 0].numpy(), oracle["x_test"], rtol=1e-6, atol=1e-6)
    assert np.array_equal(ds.y_test.numpy(), oracle["y_test"])
    ti = ds.train_index.numpy()
    np.testing.assert_allclose(ds.x_train[:, 0].numpy(), oracle["x"][ti], rtol=1e-6, atol=1e-6)

    again = D.load_dataset("mnist1d", root=tmp_path, seed=0)
    assert again.meta["from_cache"] is True
    _assert_same(again, ds)

    caches[0].write_bytes(b"not an npz")  # a damaged cache is regenerated, not fatal
    healed = D.load_dataset("mnist1d", root=tmp_path, seed=0)
    assert healed.meta["from_cache"] is False
    _assert_same(healed, ds)


def test_mnist1d_missing_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(DataError, match="pip install mnist1d"):
        D.load_dataset("mnist1d", root=tmp_path)


# -- CIFAR-10 ---------------------------------------------------------------------------------------------
def _fake_cifar(root: Path, n_per_batch: int = 6) -> tuple[dict[str, str], np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    md5s, images = {}, []
    for name in (*[f"data_batch_{i}" for i in range(1, 6)], "test_batch"):
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n_per_batch)]
        blob = pickle.dumps({"batch_label": name, "labels": labels, "data": data}, protocol=2)
        # the real batches (pickled by numpy 1.x) name numpy.core, which numpy 2 moved to numpy._core
        blob = blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        (folder / name).write_bytes(blob)
        md5s[name] = hashlib.md5(blob).hexdigest()
        images.append(data)
    return md5s, np.concatenate(images)


def test_fake_cifar10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    md5s, images = _fake_cifar(tmp_path)
    monkeypatch.setattr(builtin, "CIFAR10_MD5", md5s)
    ds = D.load_dataset("cifar10", root=tmp_path, val_size=0)
    assert ds.x_train.shape == (30, 3, 32, 32) and ds.x_test.shape == (6, 3, 32, 32)
    mean = np.array([0.4914, 0.4822, 0.4465]).reshape(3, 1, 1)
    std = np.array([0.2470, 0.2435, 0.2616]).reshape(3, 1, 1)
    want = (images[:30].reshape(30, 3, 32, 32) / 255 - mean) / std
    np.testing.assert_allclose(ds.x_train.numpy(), want, atol=1e-5)
    with_val = D.load_dataset("cifar10", root=tmp_path, val_size=5)
    assert with_val.val_size == 5 and with_val.train_size == 25


def test_cifar10_checksum_missing_and_malicious(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    md5s, _ = _fake_cifar(tmp_path)
    with pytest.raises(DataError, match=r"data_batch_1: checksum mismatch: expected md5 c99cafc1"):
        D.load_dataset("cifar10", root=tmp_path, val_size=0)

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, ("echo pwned",))

    blob = pickle.dumps({"data": Evil(), "labels": []}, protocol=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(blob)
    monkeypatch.setattr(builtin, "CIFAR10_MD5", {**md5s, "data_batch_3": hashlib.md5(blob).hexdigest()})
    with pytest.raises(DataError, match=r"data_batch_3: not a readable CIFAR-10 batch.*refusing"):
        D.load_dataset("cifar10", root=tmp_path, val_size=0)

    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match=r"CIFAR-10 files not found: test_batch"):
        D.load_dataset("cifar10", root=tmp_path, val_size=0)


def test_process_cache_reuses_unchanged_files_and_rereads_changed_ones(
    shared_datasets: Path, tmp_path: Path
) -> None:
    from ticketsearch.data import base

    root = tmp_path / "flat"
    root.mkdir()
    for f in (shared_datasets / "mnist").glob("*.gz"):
        (root / f.name).write_bytes(f.read_bytes())
    key = ("mnist", str(root.resolve()))
    a = D.load_dataset("mnist", root=root, seed=0)
    raw = base._RAW_CACHE[key][1]
    b = D.load_dataset("mnist", root=root, seed=1)
    assert base._RAW_CACHE[key][1] is raw  # the second load decoded nothing
    assert torch.equal(a.x_test, b.x_test)
    for t in (b.x_train, b.x_val, b.x_test, b.y_train, b.y_test):
        t.add_(1)  # a caller editing its tensors in place never reaches the cache or other loads
    again = D.load_dataset("mnist", root=root, seed=0)
    for name in ("x_train", "x_val", "x_test", "y_train", "y_val", "y_test"):
        assert torch.equal(getattr(again, name), getattr(a, name)), name
    with pytest.raises(ValueError):
        raw.x_test[0, 0, 0, 0] = 1.0  # the cached arrays are read-only
    # a replaced file (new mtime) is read again, and verified again
    img = root / "t10k-images-idx3-ubyte.gz"
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))
    D.load_dataset("mnist", root=root, seed=0)
    assert base._RAW_CACHE[key][1] is not raw
    img.write_bytes(img.read_bytes()[:-10])
    with pytest.raises(DataError):
        D.load_dataset("mnist", root=root, seed=0)
