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


def paired_ratios(samples: dict[str, list[float]], base: str, *, rounds: int) -> dict[str, dict[str, float]]:
    """Each mode's ratio to ``base`` as the median of paired per-round ratios, with quartiles.

    ``samples[k]`` holds ``rounds`` equal chunks taken in the same rounds for every mode (the interleaved
    samplers here append round by round): round r's ratio is the median of k's chunk over the median of the
    base's chunk, so a slow spell of the machine divides out of that round instead of biasing one mode;
    the ratio stated is the median over rounds, the quartiles say how much the rounds agree."""

    def per_round(v: list[float]) -> list[float]:
        n = len(v) // rounds
        return [statistics.median(v[r * n : (r + 1) * n]) for r in range(rounds)]

    den = per_round(samples[base])
    out: dict[str, dict[str, float]] = {}
    for k, v in samples.items():
        num = per_round(v)
        if rounds > 1:
            m, q1, q3 = paired_ratio(num, den)
        else:
            m = q1 = q3 = num[0] / den[0]
        out[k] = {"median": m, "q1": q1, "q3": q3, "rounds": rounds}
    return out


def paired_ratio(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """(median, lower quartile, upper quartile) of num[r] / den[r] over rounds r (at least two)."""
    ratios = [a / b for a, b in zip(num, den)]
    q = statistics.quantiles(ratios, n=4, method="inclusive")
    return statistics.median(ratios), q[0], q[2]


def fmt_ratio(r: dict[str, float]) -> str:
    """``1.023× [1.011, 1.034]``: a paired ratio with its quartiles, as the records print it."""
    return f"{r['median']:.3f}× [{r['q1']:.3f}, {r['q3']:.3f}]"


def interleaved_samples(
    fns: dict[str, Callable[[], Any]],
    *,
    rounds: int = 5,
    repeats: int = 200,
    warmup: int = 20,
    sync: bool = False,
) -> dict[str, list[float]]:
    """Every call's ms per function, ``rounds × repeats`` of them sampled round-robin (one call of each in
    turn) so drift and noise hit all alike; :func:`paired_ratios` pairs them by these ``rounds``."""
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
    return samples
