"""Shared helpers for benchmark scripts: the data root and timing. Results are written by ``_writer``."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "datasets"


def data_root() -> str:
    """../shared/datasets when present (the real MNIST/Fashion-MNIST files), else $TICKETSEARCH_DATA."""
    if SHARED_DATA.is_dir():
        return str(SHARED_DATA)
    return os.environ.get("TICKETSEARCH_DATA", "data")


def time_fn(
    fn: Callable[[], Any], *, warmup: int = 20, repeats: int = 200, sync: bool = False
) -> dict[str, float]:
    """Median and spread of ``fn`` wall time in ms after warm-up."""
    for _ in range(warmup):
        fn()
    if sync:
        torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - t0) * 1e3)
    return {
        "median_ms": statistics.median(samples),
        "p10_ms": sorted(samples)[len(samples) // 10],
        "p90_ms": sorted(samples)[9 * len(samples) // 10],
    }


def interleaved_medians(
    fns: dict[str, Callable[[], Any]],
    *,
    rounds: int = 5,
    repeats: int = 200,
    warmup: int = 20,
    sync: bool = False,
) -> dict[str, float]:
    """Median ms per function, sampled round-robin (one call of each in turn) so drift and noise hit all
    alike: ratios between them are then meaningful even on a busy 2-core machine."""
    keys = list(fns)
    for _ in range(warmup):
        for k in keys:
            fns[k]()
    samples: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(rounds * repeats):
        order = keys[r % len(keys) :] + keys[: r % len(keys)]
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            if sync:
                torch.cuda.synchronize()
            samples[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}
