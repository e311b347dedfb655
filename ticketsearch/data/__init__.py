"""Datasets as device-resident tensors, and deterministic batching.

``load_dataset(name)`` returns a :class:`Dataset` whose tensors can live on the training device for the
whole run; :class:`Batcher` indexes them by global iteration, which is what makes training resumable
bit-identically. Importing this package registers the built-in datasets but imports none of the optional
libraries they use (scikit-learn, torchvision, mnist1d): those load when a dataset is loaded.

Shapes: digits ``(1, 8, 8)``, mnist / fashion_mnist ``(1, 28, 28)``, mnist1d ``(1, 40)`` (one channel so
Conv1d models work; MLPs flatten), cifar10 ``(3, 32, 32)``.
"""

from __future__ import annotations

from . import builtin as _builtin  # noqa: F401  (registers the built-in datasets)
from .base import (
    DATA_ENV,
    DATASETS,
    Dataset,
    DatasetSpec,
    RawSplits,
    describe,
    get_dataset_spec,
    list_datasets,
    load_dataset,
    register_dataset,
    resolve_root,
    resolve_val_size,
    stratified_split,
)
from .batches import Batcher, epoch_seed, eval_batches
from .idx import parse_idx, read_idx_file

__all__ = [
    "DATA_ENV",
    "DATASETS",
    "Batcher",
    "Dataset",
    "DatasetSpec",
    "RawSplits",
    "describe",
    "epoch_seed",
    "eval_batches",
    "get_dataset_spec",
    "list_datasets",
    "load_dataset",
    "parse_idx",
    "read_idx_file",
    "register_dataset",
    "resolve_root",
    "resolve_val_size",
    "stratified_split",
]
