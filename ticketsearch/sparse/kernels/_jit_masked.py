"""The Triton source of the masked linear kernels (:mod:`.triton_masked`, :mod:`.triton_bits`).

Imported only when a Triton kernel first runs: it imports triton at module level, because a ``@triton.jit``
function finds the jit functions it calls among its module's globals.
"""

from __future__ import annotations

import os
from typing import Any

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def configs(names: tuple[str, str, str]) -> list[Any]:
    """Tile candidates: one 32-wide tile in the interpreter (numpy per tile: bigger is not faster there)."""
    a, b, c = names
    if INTERPRET:
        return [triton.Config({a: 32, b: 32, c: 32})]
    out = []
    for x, y, z, warps, stages in (  # few: each is compiled once per kernel (≈ 1 s each on a fresh GPU)
        (32, 32, 32, 4, 3),
        (32, 64, 32, 4, 3),
        (64, 32, 32, 4, 3),
        (64, 64, 32, 4, 3),
        (128, 64, 32, 8, 3),
    ):
        out.append(triton.Config({a: x, b: y, c: z}, num_warps=warps, num_stages=stages))
    return out


@triton.jit
def keep_tile(m, rows, cols, K, KW, valid, BITS: tl.constexpr):
    # the mask tile [rows, cols] of an [N, K] mask: bytes (row stride K) or int32 words (row stride KW)
    if BITS:
        word = tl.load(m + rows[:, None] * KW + (cols[None, :] >> 5), mask=valid, other=0)
        keep = ((word >> (cols[None, :] & 31)) & 1) != 0
    else:
        keep = tl.load(m + rows[:, None] * K + cols[None, :], mask=valid, other=0) != 0
    return keep


@triton.autotune(configs=configs(("BM", "BN", "BK")), key=["N", "K"])
@triton.jit
def fwd(
    x,
    w,
    m,
    b,
    y,
    M,
    N,
    K,
    KW,
    HAS_BIAS: tl.constexpr,
    BITS: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    # y[M, N] = x[M, K] @ (w ⊙ m)[N, K]ᵀ (+ b); all row-major contiguous
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        a = tl.load(x + rm[:, None] * K + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        wmask = (rn[:, None] < N) & (kk[None, :] < K)
        wt = tl.load(w + rn[:, None] * K + kk[None, :], mask=wmask, other=0.0)
        wt = tl.where(keep_tile(m, rn, kk, K, KW, wmask, BITS), wt, 0.0)
        acc += tl.dot(a, tl.trans(wt), input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(b + rn, mask=rn < N, other=0.0)[None, :]
    tl.store(y + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.autotune(configs=configs(("BM", "BK", "BN")), key=["N", "K"])
@triton.jit
def bwd_x(g, w, m, gx, M, N, K, KW, BITS: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr):
    # gx[M, K] = g[M, N] @ (w ⊙ m)[N, K]
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rk = tl.program_id(1) * BK + tl.arange(0, BK)
    rn = tl.arange(0, BN)
    acc = tl.zeros((BM, BK), dtype=tl.float32)
    for n0 in range(0, N, BN):
        nn_ = n0 + rn
        gt = tl.load(
            g + rm[:, None] * N + nn_[None, :], mask=(rm[:, None] < M) & (nn_[None, :] < N), other=0.0
        )
        wmask = (nn_[:, None] < N) & (rk[None, :] < K)
        wt = tl.load(w + nn_[:, None] * K + rk[None, :], mask=wmask, other=0.0)
        wt = tl.where(keep_tile(m, nn_, rk, K, KW, wmask, BITS), wt, 0.0)
        acc += tl.dot(gt, wt, input_precision="ieee")
    tl.store(gx + rm[:, None] * K + rk[None, :], acc, mask=(rm[:, None] < M) & (rk[None, :] < K))


@triton.autotune(configs=configs(("BN", "BK", "BM")), key=["N", "K"])
@triton.jit
def bwd_w(g, x, m, gw, M, N, K, KW, BITS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr):
    # gw[N, K] = (g[M, N]ᵀ @ x[M, K]) ⊙ m: pruned weights get exactly zero, in the same kernel
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    rk = tl.program_id(1) * BK + tl.arange(0, BK)
    rm = tl.arange(0, BM)
    acc = tl.zeros((BN, BK), dtype=tl.float32)
    for m0 in range(0, M, BM):
        mm = m0 + rm
        gt = tl.load(g + mm[:, None] * N + rn[None, :], mask=(mm[:, None] < M) & (rn[None, :] < N), other=0.0)
        xt = tl.load(x + mm[:, None] * K + rk[None, :], mask=(mm[:, None] < M) & (rk[None, :] < K), other=0.0)
        acc += tl.dot(tl.trans(gt), xt, input_precision="ieee")
    out = (rn[:, None] < N) & (rk[None, :] < K)
    acc = tl.where(keep_tile(m, rn, rk, K, KW, out, BITS), acc, 0.0)
    tl.store(gw + rn[:, None] * K + rk[None, :], acc, mask=out)
