"""The Triton source of the fused edge-popup kernels (:mod:`.triton_supermask`).

Every kernel rebuilds the mask from the scores: weight ``i`` (flat, row-major) is kept iff
``|s_i| > t`` or (``|s_i| == t`` and ``i < c``), with ``t`` the layer's k-th largest ``|s|`` and ``c`` the
cut among its ties; ``t`` and ``c`` are read from device memory, so no step waits for the host. Imported
only when a Triton kernel first runs (a jit function finds the jit functions it calls among its module's
globals, so triton is imported at module level here).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit_masked import configs


@triton.jit
def keep_tile(s, t, c, rows, cols, K, valid):
    # the mask tile [rows, cols] of an [N, K] layer: the reference top-k, ties to the lower flat index
    a = tl.abs(tl.load(s + rows[:, None] * K + cols[None, :], mask=valid, other=0.0))
    flat = rows[:, None] * K + cols[None, :]
    return valid & ((a > t) | ((a == t) & (flat < c)))


@triton.autotune(configs=configs(("BM", "BN", "BK")), key=["N", "K"])
@triton.jit
def fwd(
    x,
    w,
    s,
    tp,
    cp,
    b,
    y,
    M,
    N,
    K,
    HAS_BIAS: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    # y[M, N] = x[M, K] @ (w ⊙ topk(|s|))[N, K]ᵀ (+ b)
    t = tl.load(tp)
    c = tl.load(cp)
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        a = tl.load(x + rm[:, None] * K + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        wmask = (rn[:, None] < N) & (kk[None, :] < K)
        wt = tl.load(w + rn[:, None] * K + kk[None, :], mask=wmask, other=0.0)
        wt = tl.where(keep_tile(s, t, c, rn, kk, K, wmask), wt, 0.0)
        acc += tl.dot(a, tl.trans(wt), input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(b + rn, mask=rn < N, other=0.0)[None, :]
    tl.store(y + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.autotune(configs=configs(("BM", "BK", "BN")), key=["N", "K"])
@triton.jit
def bwd_x(g, w, s, tp, cp, gx, M, N, K, BM: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr):
    # gx[M, K] = g[M, N] @ (w ⊙ topk(|s|))[N, K]
    t = tl.load(tp)
    c = tl.load(cp)
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
        wt = tl.where(keep_tile(s, t, c, nn_, rk, K, wmask), wt, 0.0)
        acc += tl.dot(gt, wt, input_precision="ieee")
    tl.store(gx + rm[:, None] * K + rk[None, :], acc, mask=(rm[:, None] < M) & (rk[None, :] < K))


@triton.autotune(configs=configs(("BN", "BK", "BM")), key=["N", "K"])
@triton.jit
def bwd_s(g, x, w, s, gs, M, N, K, BN: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr):
    # gs[N, K] = (g[M, N]ᵀ @ x[M, K]) ⊙ w ⊙ sign(s): the straight-through gradient, every score (pruned or
    # not), in the reference's order ((∂L/∂W_eff ⊙ W) ⊙ sign(s)); W ⊙ M is never formed
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
    wt = tl.load(w + rn[:, None] * K + rk[None, :], mask=out, other=0.0)
    st = tl.load(s + rn[:, None] * K + rk[None, :], mask=out, other=0.0)
    sign = tl.where(st > 0, 1.0, tl.where(st < 0, -1.0, 0.0))
    tl.store(gs + rn[:, None] * K + rk[None, :], acc * wt * sign, mask=out)


@triton.jit
def weff(w, s, tp, cp, out, n, B: tl.constexpr):
    # out = w ⊙ topk(|s|), elementwise over a flat layer (convolutions, and the selector's forward)
    t = tl.load(tp)
    c = tl.load(cp)
    i = tl.program_id(0) * B + tl.arange(0, B)
    valid = i < n
    a = tl.abs(tl.load(s + i, mask=valid, other=0.0))
    keep = (a > t) | ((a == t) & (i < c))
    tl.store(out + i, tl.where(keep, tl.load(w + i, mask=valid, other=0.0), 0.0), mask=valid)
