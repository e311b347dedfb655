// Compiled CPU kernels for structured sparse inference (op "spmm", kernels "nm" and "bsr"); see
// compiled_structured.py. Built on first use by torch.utils.cpp_extension.load; the build is cached per
// content hash of this file (and the compiler flags / CPU it was built for).
//
// N:M: a weight (rows × K) whose every group of M consecutive inputs of a row keeps at most N. Held as
// "slots": per row, for each of the K/M groups, N values and N in-group indices (a group keeping fewer
// pads with value 0). S = (K/M)·N slots per row, so a 2:4 layer holds half the values of the dense one and
// one byte of index per value.
//
// block:RxC: a weight tiled by R×C blocks, each kept whole or pruned whole. Held as BSR: per block row,
// the kept blocks' column indices (int32) and their dense R×C values, row-major inside the block.
//
// Sums run in a different order than a dense matmul: results equal the dense masked layer within
// floating-point tolerance, not bitwise.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t WORK_GRAIN = 1 << 15;  // multiply-adds per task before parallel_for splits (threads > 1)

inline float act(float s, bool relu) { return relu && s < 0.f ? 0.f : s; }  // keeps NaN, like torch.relu

at::Tensor check_input(const at::Tensor& x, int64_t K, const char* who) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == K, who, ": input must be (batch, ", K, "), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu(), who,
              ": input must be float32 on the CPU");
  return x.contiguous();
}

const float* check_bias(const c10::optional<at::Tensor>& bias, int64_t rows, const char* who,
                        std::vector<at::Tensor>& keep) {
  if (!bias.has_value() || !bias->defined()) return nullptr;
  TORCH_CHECK(bias->dim() == 1 && bias->numel() == rows && bias->scalar_type() == at::kFloat &&
                  bias->is_contiguous() && bias->device().is_cpu(),
              who, ": bias must be a contiguous float32 CPU vector of the output size");
  keep.push_back(*bias);
  return bias->data_ptr<float>();
}

// Many input rows, held transposed (xt: K × B), one output row and a tile of batch columns at a time:
// a kept weight scales one contiguous batch vector. `cols` gives each weight's input index, so this serves
// the N:M slots (cols = group·M + index) as CSR with a fixed count per row.
template <int64_t TILE>
inline void fixed_row_tile(const float* v, const int32_t* ci, int64_t cnt, float b, const float* xt, int64_t B,
                           int64_t t0, int64_t n, float* out, int64_t st, bool relu) {
  float acc[TILE];
  const int64_t m = n == TILE ? TILE : n;
  for (int64_t t = 0; t < TILE; ++t) acc[t] = b;
  const float* base = xt + t0;
  int64_t j = 0;
  for (; j + 4 <= cnt; j += 4) {  // four weights per update: one add per four products on the chain
    const float a0 = v[j], a1 = v[j + 1], a2 = v[j + 2], a3 = v[j + 3];
    const float* __restrict__ s0 = base + (int64_t)ci[j] * B;
    const float* __restrict__ s1 = base + (int64_t)ci[j + 1] * B;
    const float* __restrict__ s2 = base + (int64_t)ci[j + 2] * B;
    const float* __restrict__ s3 = base + (int64_t)ci[j + 3] * B;
    if (m == TILE) {
      for (int64_t t = 0; t < TILE; ++t) acc[t] += (a0 * s0[t] + a1 * s1[t]) + (a2 * s2[t] + a3 * s3[t]);
    } else {
      for (int64_t t = 0; t < m; ++t) acc[t] += (a0 * s0[t] + a1 * s1[t]) + (a2 * s2[t] + a3 * s3[t]);
    }
  }
  for (; j < cnt; ++j) {
    const float a0 = v[j];
    const float* __restrict__ s0 = base + (int64_t)ci[j] * B;
    for (int64_t t = 0; t < m; ++t) acc[t] += a0 * s0[t];
  }
  for (int64_t t = 0; t < m; ++t) out[t * st] = act(acc[t], relu);
}

// ---------------------------------------------------------------------------------------------------------
// N:M
// ---------------------------------------------------------------------------------------------------------
class NmLinear {
 public:
  // vals: (rows, S) float32; idx: (rows, S) uint8 in-group indices (< m); S = (in_features / m) · n.
  NmLinear(at::Tensor vals, at::Tensor idx, c10::optional<at::Tensor> bias, int64_t n, int64_t m,
           int64_t in_features, bool relu)
      : n_(n), m_(m), K_(in_features), relu_(relu) {
    TORCH_CHECK(n >= 1 && m > n && m <= 255, "nm: need 1 <= n < m <= 255, got ", n, ":", m);
    TORCH_CHECK(in_features >= 0 && in_features % m == 0, "nm: in_features ", in_features,
                " is not a multiple of m = ", m);
    TORCH_CHECK(vals.dim() == 2 && vals.scalar_type() == at::kFloat && vals.is_contiguous() && vals.device().is_cpu(),
                "nm: vals must be a contiguous float32 CPU matrix (rows, slots)");
    TORCH_CHECK(idx.dim() == 2 && idx.scalar_type() == at::kByte && idx.is_contiguous() && idx.device().is_cpu(),
                "nm: idx must be a contiguous uint8 CPU matrix (rows, slots)");
    R_ = vals.size(0);
    S_ = (in_features / m) * n;
    TORCH_CHECK(vals.size(1) == S_ && idx.size(0) == R_ && idx.size(1) == S_, "nm: vals and idx must be (",
                R_, ", ", S_, ") for ", in_features, " inputs at ", n, ":", m, ", got ", vals.sizes(), " and ",
                idx.sizes());
    keep_ = {vals, idx};
    v_ = vals.data_ptr<float>();
    bias_ = check_bias(bias, R_, "nm", keep_);
    const uint8_t* id = idx.data_ptr<uint8_t>();
    // absolute input index of every slot (batch > 1, the tail of a row, and builds without AVX-512)
    cols_.resize(R_ * S_);
    for (int64_t i = 0; i < R_; ++i)
      for (int64_t s = 0; s < S_; ++s) {
        const int64_t k = id[i * S_ + s];
        TORCH_CHECK(k < m, "nm: in-group index ", k, " out of range for m = ", m);
        cols_[i * S_ + s] = (int32_t)((s / n) * m + k);
      }
    // One row at a time, sixteen slots form a "window" of W = (16 / n) · m consecutive inputs. With W of 32,
    // 64 or 128 the x values of a window sit in 2, 4 or 8 registers and each slot's value is picked by a
    // register permute (vpermt2ps) instead of a gather: the gather's per-element cost is what makes an
    // unstructured sparse matvec slow. woff_ holds each slot's offset inside its window.
    W_ = (16 % n == 0) ? (16 / n) * m : 0;
    if (W_ != 32 && W_ != 64 && W_ != 128) W_ = 0;
#ifndef __AVX512F__
    W_ = 0;
#endif
    // Rows padded to whole chunks (zero values at offset 0), so no row ends in a scalar tail: on a LeNet
    // layer a latency-bound tail of 8 slots cost a quarter of the time. The input is then read through a
    // zero-padded copy as long as the last window.
    if (W_) {
      SP_ = (S_ + 15) / 16 * 16;
      pvals_.assign(R_ * SP_, 0.f);
      woff_.assign(R_ * SP_, 0);
      for (int64_t i = 0; i < R_; ++i)
        for (int64_t s = 0; s < S_; ++s) {
          pvals_[i * SP_ + s] = v_[i * S_ + s];
          woff_[i * SP_ + s] = (uint8_t)(cols_[i * S_ + s] - (s / 16) * W_);
        }
    }
  }

  at::Tensor forward(at::Tensor x) const {
    x = check_input(x, K_, "nm");
    const int64_t B = x.size(0);
    if (B == 1) {
      auto y = at::empty({1, R_}, x.options());
      if (R_ > 0) matvec(x.data_ptr<float>(), y.data_ptr<float>());
      return y;
    }
    auto y = at::empty({B, R_}, x.options());
    if (B == 0 || R_ == 0) return y;
    const at::Tensor xt = x.t().contiguous();  // (K, B)
    matmat(xt.data_ptr<float>(), B, y.data_ptr<float>());
    return y;
  }

 private:
#ifdef __AVX512F__
  // the sixteen x values of one window that a chunk's slots pick, for a window of W inputs
  template <int64_t W>
  static inline __m512 pick(const float* xb, __m512i off) {
    const __m512 lo = _mm512_permutex2var_ps(_mm512_loadu_ps(xb), off, _mm512_loadu_ps(xb + 16));
    if (W == 32) return lo;
    const __m512 hi = _mm512_permutex2var_ps(_mm512_loadu_ps(xb + 32), off, _mm512_loadu_ps(xb + 48));
    const __m512 x64 = _mm512_mask_blend_ps(_mm512_test_epi32_mask(off, _mm512_set1_epi32(32)), lo, hi);
    if (W == 64) return x64;
    const __m512 lo2 = _mm512_permutex2var_ps(_mm512_loadu_ps(xb + 64), off, _mm512_loadu_ps(xb + 80));
    const __m512 hi2 = _mm512_permutex2var_ps(_mm512_loadu_ps(xb + 96), off, _mm512_loadu_ps(xb + 112));
    const __m512 y64 = _mm512_mask_blend_ps(_mm512_test_epi32_mask(off, _mm512_set1_epi32(32)), lo2, hi2);
    return _mm512_mask_blend_ps(_mm512_test_epi32_mask(off, _mm512_set1_epi32(64)), x64, y64);
  }

  template <int64_t W>
  void matvec_window(const float* xin, float* y) const {
    const int64_t chunks = SP_ / 16;
    std::vector<float> xpad;
    const float* x = xin;
    if (chunks * W > K_) {  // the last window reaches past the input: read a zero-padded copy
      xpad.assign(chunks * W, 0.f);
      std::memcpy(xpad.data(), xin, K_ * sizeof(float));
      x = xpad.data();
    }
    at::parallel_for(0, R_, std::max<int64_t>(1, R_ * WORK_GRAIN / std::max<int64_t>(1, R_ * SP_)),
                     [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        const float* v = pvals_.data() + i * SP_;
        const uint8_t* o = woff_.data() + i * SP_;
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        int64_t c = 0;
        for (; c + 2 <= chunks; c += 2) {  // two chunks per step: two independent accumulators
          const __m512i o0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(o + 16 * c)));
          const __m512i o1 =
              _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(o + 16 * c + 16)));
          acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(v + 16 * c), pick<W>(x + c * W, o0), acc0);
          acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(v + 16 * c + 16), pick<W>(x + (c + 1) * W, o1), acc1);
        }
        for (; c < chunks; ++c) {
          const __m512i o0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(o + 16 * c)));
          acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(v + 16 * c), pick<W>(x + c * W, o0), acc0);
        }
        const float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        y[i] = act(s + (bias_ ? bias_[i] : 0.f), relu_);
      }
    });
  }
#endif

  void matvec(const float* x, float* y) const {
#ifdef __AVX512F__
    if (W_ == 32) return matvec_window<32>(x, y);
    if (W_ == 64) return matvec_window<64>(x, y);
    if (W_ == 128) return matvec_window<128>(x, y);
#endif
    at::parallel_for(0, R_, std::max<int64_t>(1, R_ * WORK_GRAIN / std::max<int64_t>(1, R_ * S_)),
                     [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        const float* v = v_ + i * S_;
        const int32_t* c = cols_.data() + i * S_;
        float a[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        int64_t j = 0;
        for (; j + 8 <= S_; j += 8)
          for (int k = 0; k < 8; ++k) a[k] += v[j + k] * x[c[j + k]];
        for (; j < S_; ++j) a[0] += v[j] * x[c[j]];
        const float s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
        y[i] = act(s + (bias_ ? bias_[i] : 0.f), relu_);
      }
    });
  }

  template <int64_t TILE>
  void matmat_tiled(const float* xt, int64_t B, float* y) const {
    at::parallel_for(0, R_, std::max<int64_t>(1, R_ * WORK_GRAIN / std::max<int64_t>(1, R_ * S_ * B)),
                     [&](int64_t r0, int64_t r1) {
      for (int64_t t0 = 0; t0 < B; t0 += TILE) {
        const int64_t nb = std::min(TILE, B - t0);
        for (int64_t i = r0; i < r1; ++i)
          fixed_row_tile<TILE>(v_ + i * S_, cols_.data() + i * S_, S_, bias_ ? bias_[i] : 0.f, xt, B, t0, nb,
                               y + t0 * R_ + i, R_, relu_);
      }
    });
  }

  void matmat(const float* xt, int64_t B, float* y) const {
    if (B <= 8)
      matmat_tiled<8>(xt, B, y);
    else if (B <= 16)
      matmat_tiled<16>(xt, B, y);
    else if (B <= 32)
      matmat_tiled<32>(xt, B, y);
    else
      matmat_tiled<64>(xt, B, y);
  }

  int64_t n_, m_, K_, R_ = 0, S_ = 0, W_ = 0, SP_ = 0;
  bool relu_;
  const float* v_ = nullptr;
  const float* bias_ = nullptr;
  std::vector<at::Tensor> keep_;
  std::vector<int32_t> cols_;
  std::vector<float> pvals_;  // (R_, SP_): the values of rows padded to whole chunks (AVX-512 matvec)
  std::vector<uint8_t> woff_;  // (R_, SP_): each slot's offset in its window
};

// ---------------------------------------------------------------------------------------------------------
// block:RxC (BSR)
// ---------------------------------------------------------------------------------------------------------
struct Bsr {
  const int32_t* rp;  // block-row pointer (rows / r + 1)
  const int32_t* bc;  // block column of each kept block
  const float* v;     // (blocks, r, c)
  const float* bias;
  int64_t r, c, brows, bcols;
};

// One input row. Per block row, the products of every kept block accumulate elementwise in an r×c tile
// (x's c values repeated r times): one multiply-add per weight, contiguous weight loads, and the r row sums
// are taken once per block row rather than once per block. This is the portable version (any r, c).
template <int64_t RT, int64_t CT>
void bsr_matvec(const Bsr& w, const float* x, float* y, bool relu) {
  const int64_t r = RT ? RT : w.r, c = CT ? CT : w.c;
  const int64_t per = std::max<int64_t>(1, (w.rp[w.brows] + 1) * r * c);
  at::parallel_for(0, w.brows, std::max<int64_t>(1, w.brows * WORK_GRAIN / per), [&](int64_t b0, int64_t b1) {
    std::vector<float> dyn(RT && CT ? 0 : r * c);
    float fixed[RT && CT ? RT * CT : 1];
    float* acc = RT && CT ? fixed : dyn.data();
    for (int64_t br = b0; br < b1; ++br) {
      for (int64_t k = 0; k < r * c; ++k) acc[k] = 0.f;
      for (int64_t j = w.rp[br]; j < w.rp[br + 1]; ++j) {
        const float* __restrict__ v = w.v + j * r * c;
        const float* __restrict__ xs = x + (int64_t)w.bc[j] * c;
        for (int64_t rr = 0; rr < r; ++rr)
          for (int64_t cc = 0; cc < c; ++cc) acc[rr * c + cc] += v[rr * c + cc] * xs[cc];
      }
      for (int64_t rr = 0; rr < r; ++rr) {
        float s = w.bias ? w.bias[br * r + rr] : 0.f;
        for (int64_t cc = 0; cc < c; ++cc) s += acc[rr * c + cc];
        y[br * r + rr] = act(s, relu);
      }
    }
  });
}

#ifdef __AVX512F__
// The same with AVX-512 when c divides 16 or 16 divides c: a block's r·c values are NV vectors of 16 (the
// last one partial, by a load mask), and every vector multiplies the same pattern of x: x's c values
// repeated (c ≤ 16: one broadcast) or the 16 of x under the vector's columns (c a multiple of 16).
template <int64_t NV, int64_t C>
inline __m512 bsr_x(const float* xs, int64_t q) {
  if (C == 1) return _mm512_set1_ps(xs[0]);
  if (C == 2) {
    double d;
    std::memcpy(&d, xs, 8);
    return _mm512_castpd_ps(_mm512_set1_pd(d));
  }
  if (C == 4) return _mm512_broadcast_f32x4(_mm_loadu_ps(xs));
  if (C == 8) return _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(xs))));
  return _mm512_loadu_ps(xs + (C == 16 ? 0 : (q * 16) % C));  // C == 16, or C = 0: a multiple of 16
}

template <int64_t NV, int64_t C>
void bsr_matvec_avx512(const Bsr& w, const float* x, float* y, bool relu) {
  const int64_t r = w.r, c = C ? C : w.c, rc = r * c;
  const __mmask16 last = (rc % 16) ? (__mmask16)((1u << (rc % 16)) - 1) : (__mmask16)0xFFFF;
  const int64_t per = std::max<int64_t>(1, (w.rp[w.brows] + 1) * rc);
  at::parallel_for(0, w.brows, std::max<int64_t>(1, w.brows * WORK_GRAIN / per), [&](int64_t b0, int64_t b1) {
    alignas(64) float tile[NV * 16];
    for (int64_t br = b0; br < b1; ++br) {
      __m512 acc[NV];
      for (int64_t q = 0; q < NV; ++q) acc[q] = _mm512_setzero_ps();
      for (int64_t j = w.rp[br]; j < w.rp[br + 1]; ++j) {
        const float* v = w.v + j * rc;
        const float* xs = x + (int64_t)w.bc[j] * c;
        for (int64_t q = 0; q + 1 < NV; ++q)
          acc[q] = _mm512_fmadd_ps(_mm512_loadu_ps(v + 16 * q), bsr_x<NV, C>(xs, q), acc[q]);
        acc[NV - 1] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(last, v + 16 * (NV - 1)), bsr_x<NV, C>(xs, NV - 1),
                                      acc[NV - 1]);
      }
      for (int64_t q = 0; q < NV; ++q) _mm512_store_ps(tile + 16 * q, acc[q]);
      for (int64_t rr = 0; rr < r; ++rr) {
        float s = w.bias ? w.bias[br * r + rr] : 0.f;
        for (int64_t cc = 0; cc < c; ++cc) s += tile[rr * c + cc];
        y[br * r + rr] = act(s, relu);
      }
    }
  });
}

template <int64_t NV>
bool bsr_matvec_nv(const Bsr& w, const float* x, float* y, bool relu) {
  switch (w.c) {
    case 1: bsr_matvec_avx512<NV, 1>(w, x, y, relu); return true;
    case 2: bsr_matvec_avx512<NV, 2>(w, x, y, relu); return true;
    case 4: bsr_matvec_avx512<NV, 4>(w, x, y, relu); return true;
    case 8: bsr_matvec_avx512<NV, 8>(w, x, y, relu); return true;
    case 16: bsr_matvec_avx512<NV, 16>(w, x, y, relu); return true;
    default:
      if (w.c % 16 == 0) {
        bsr_matvec_avx512<NV, 0>(w, x, y, relu);
        return true;
      }
      return false;
  }
}

// true when the AVX-512 kernel took it: c divides 16 or is a multiple of 16, and a block is 1, 2, 4, 8 or 16
// vectors (at most 16 accumulator registers; 4x4, 2x8, 8x1, 8x8, 16x16 ...)
bool bsr_matvec_fast(const Bsr& w, const float* x, float* y, bool relu) {
  switch ((w.r * w.c + 15) / 16) {
    case 1: return bsr_matvec_nv<1>(w, x, y, relu);
    case 2: return bsr_matvec_nv<2>(w, x, y, relu);
    case 4: return bsr_matvec_nv<4>(w, x, y, relu);
    case 8: return bsr_matvec_nv<8>(w, x, y, relu);
    case 16: return bsr_matvec_nv<16>(w, x, y, relu);
    default: return false;
  }
}
#endif

#ifdef __AVX512F__
// One full tile of T batch columns for block rows [b0, b1), R·T/16 accumulators held in registers (the
// portable loop below leaves them in memory: a load and a store per multiply-add).
template <int64_t R, int64_t C, int64_t T>
void bsr_tile_avx512(const Bsr& w, const float* xt, int64_t B, int64_t t0, int64_t b0, int64_t b1, float* y,
                     bool relu) {
  constexpr int64_t Q = T / 16;
  const int64_t rows = w.brows * R;
  alignas(64) float out[R * T];
  for (int64_t br = b0; br < b1; ++br) {
    __m512 acc[R][Q];
    for (int64_t rr = 0; rr < R; ++rr) {
      const __m512 b = _mm512_set1_ps(w.bias ? w.bias[br * R + rr] : 0.f);
      for (int64_t q = 0; q < Q; ++q) acc[rr][q] = b;
    }
    for (int64_t j = w.rp[br]; j < w.rp[br + 1]; ++j) {
      const float* v = w.v + j * R * C;
      const float* xs = xt + (int64_t)w.bc[j] * C * B + t0;
      for (int64_t cc = 0; cc < C; ++cc) {
        __m512 xv[Q];
        for (int64_t q = 0; q < Q; ++q) xv[q] = _mm512_loadu_ps(xs + cc * B + 16 * q);
        for (int64_t rr = 0; rr < R; ++rr) {
          const __m512 a = _mm512_set1_ps(v[rr * C + cc]);
          for (int64_t q = 0; q < Q; ++q) acc[rr][q] = _mm512_fmadd_ps(a, xv[q], acc[rr][q]);
        }
      }
    }
    for (int64_t rr = 0; rr < R; ++rr)
      for (int64_t q = 0; q < Q; ++q) _mm512_store_ps(out + rr * T + 16 * q, acc[rr][q]);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t rr = 0; rr < R; ++rr) y[(t0 + t) * rows + br * R + rr] = act(out[rr * T + t], relu);
  }
}
#endif

// Many input rows, held transposed (xt: K × B): per block row and tile of T batch columns, r accumulators
// of T; each kept block loads its c input rows of the tile once and uses each for r multiply-adds.
template <int64_t RT, int64_t CT, int64_t T>
void bsr_matmat(const Bsr& w, const float* xt, int64_t B, float* y, bool relu) {
  const int64_t r = RT ? RT : w.r, c = CT ? CT : w.c;
  const int64_t per = std::max<int64_t>(1, (w.rp[w.brows] + 1) * r * c * B);
  const int64_t R = w.brows * r;
  at::parallel_for(0, w.brows, std::max<int64_t>(1, w.brows * WORK_GRAIN / per), [&](int64_t b0, int64_t b1) {
    std::vector<float> dyn(RT ? 0 : r * T);
    alignas(64) float fixed[RT ? RT * T : 1];
    float* acc = RT ? fixed : dyn.data();
    for (int64_t t0 = 0; t0 < B; t0 += T) {
      const int64_t nb = std::min(T, B - t0);
#ifdef __AVX512F__
      if (RT && CT && nb == T && T % 16 == 0) {
        bsr_tile_avx512<RT, CT, T>(w, xt, B, t0, b0, b1, y, relu);
        continue;
      }
#endif
      for (int64_t br = b0; br < b1; ++br) {
        for (int64_t rr = 0; rr < r; ++rr) {
          const float b = w.bias ? w.bias[br * r + rr] : 0.f;
          for (int64_t t = 0; t < T; ++t) acc[rr * T + t] = b;
        }
        for (int64_t j = w.rp[br]; j < w.rp[br + 1]; ++j) {
          const float* __restrict__ v = w.v + j * r * c;
          const float* __restrict__ xs = xt + (int64_t)w.bc[j] * c * B + t0;
          for (int64_t cc = 0; cc < c; ++cc) {
            const float* __restrict__ xr = xs + cc * B;
            if (nb == T) {
              for (int64_t rr = 0; rr < r; ++rr) {
                const float a = v[rr * c + cc];
                for (int64_t t = 0; t < T; ++t) acc[rr * T + t] += a * xr[t];
              }
            } else {
              for (int64_t rr = 0; rr < r; ++rr) {
                const float a = v[rr * c + cc];
                for (int64_t t = 0; t < nb; ++t) acc[rr * T + t] += a * xr[t];
              }
            }
          }
        }
        for (int64_t rr = 0; rr < r; ++rr)
          for (int64_t t = 0; t < nb; ++t) y[(t0 + t) * R + br * r + rr] = act(acc[rr * T + t], relu);
      }
    }
  });
}

class BsrLinear {
 public:
  // rowptr: (rows / r + 1) int32; cols: (blocks,) int32 block columns; vals: (blocks, r, c) float32.
  BsrLinear(at::Tensor rowptr, at::Tensor cols, at::Tensor vals, c10::optional<at::Tensor> bias, int64_t r,
            int64_t c, int64_t in_features, bool relu)
      : relu_(relu) {
    TORCH_CHECK(r >= 1 && c >= 1 && in_features >= 0 && in_features % c == 0, "bsr: in_features ", in_features,
                " is not a multiple of the block width ", c);
    TORCH_CHECK(rowptr.dim() == 1 && rowptr.scalar_type() == at::kInt && rowptr.is_contiguous() &&
                    rowptr.numel() >= 1 && rowptr.device().is_cpu(),
                "bsr: rowptr must be a contiguous int32 CPU vector");
    TORCH_CHECK(cols.dim() == 1 && cols.scalar_type() == at::kInt && cols.is_contiguous() && cols.device().is_cpu(),
                "bsr: cols must be a contiguous int32 CPU vector");
    TORCH_CHECK(vals.dim() == 3 && vals.size(0) == cols.numel() && vals.size(1) == r && vals.size(2) == c &&
                    vals.scalar_type() == at::kFloat && vals.is_contiguous() && vals.device().is_cpu(),
                "bsr: vals must be a contiguous float32 CPU tensor (blocks, ", r, ", ", c, ")");
    keep_ = {rowptr, cols, vals};
    w_.rp = rowptr.data_ptr<int32_t>();
    w_.bc = cols.data_ptr<int32_t>();
    w_.v = vals.data_ptr<float>();
    w_.r = r;
    w_.c = c;
    w_.brows = rowptr.numel() - 1;
    w_.bcols = in_features / c;
    K_ = in_features;
    TORCH_CHECK(w_.rp[0] == 0 && w_.rp[w_.brows] == cols.numel(), "bsr: rowptr does not span the blocks");
    for (int64_t b = 0; b < w_.brows; ++b)
      TORCH_CHECK(w_.rp[b] <= w_.rp[b + 1], "bsr: rowptr decreases at block row ", b);
    for (int64_t j = 0; j < cols.numel(); ++j)
      TORCH_CHECK(w_.bc[j] >= 0 && w_.bc[j] < w_.bcols, "bsr: block column index out of range");
    w_.bias = check_bias(bias, w_.brows * r, "bsr", keep_);
  }

  at::Tensor forward(at::Tensor x) const {
    x = check_input(x, K_, "bsr");
    const int64_t B = x.size(0), R = w_.brows * w_.r;
    auto y = at::empty({B, R}, x.options());
    if (B == 0 || R == 0) return y;
    if (B == 1) {
      matvec(x.data_ptr<float>(), y.data_ptr<float>());
      return y;
    }
    const at::Tensor xt = x.t().contiguous();
    matmat(xt.data_ptr<float>(), B, y.data_ptr<float>());
    return y;
  }

 private:
  // compiled shapes for the common block sizes; any other runs the same code with runtime sizes
#define TS_BSR_SHAPES(X) X(4, 4) X(2, 8) X(8, 1) X(1, 8) X(8, 8) X(2, 2) X(4, 1) X(1, 4) X(16, 16) X(16, 1) X(1, 16)
  void matvec(const float* x, float* y) const {
#ifdef __AVX512F__
    if (bsr_matvec_fast(w_, x, y, relu_)) return;
#endif
#define TS_CASE(R, C) \
  if (w_.r == R && w_.c == C) return bsr_matvec<R, C>(w_, x, y, relu_);
    TS_BSR_SHAPES(TS_CASE)
#undef TS_CASE
    bsr_matvec<0, 0>(w_, x, y, relu_);
  }

  void matmat(const float* xt, int64_t B, float* y) const {
    // r accumulators of T batch columns: T keeps them within about 16 vector registers
#define TS_CASE(R, C)                                                           \
  if (w_.r == R && w_.c == C) {                                                 \
    if (B <= 16) return bsr_matmat<R, C, 16>(w_, xt, B, y, relu_);              \
    return bsr_matmat<R, C, (R <= 2 ? 64 : R <= 4 ? 64 : R <= 8 ? 32 : 16)>(w_, xt, B, y, relu_); \
  }
    TS_BSR_SHAPES(TS_CASE)
#undef TS_CASE
    bsr_matmat<0, 0, 16>(w_, xt, B, y, relu_);
  }
#undef TS_BSR_SHAPES

  Bsr w_{};
  int64_t K_ = 0;
  bool relu_;
  std::vector<at::Tensor> keep_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<NmLinear>(m, "NmLinear", "an N:M sparse Linear (bias, optional ReLU) for CPU inference")
      .def(pybind11::init<at::Tensor, at::Tensor, c10::optional<at::Tensor>, int64_t, int64_t, int64_t, bool>())
      .def("forward", &NmLinear::forward);
  pybind11::class_<BsrLinear>(m, "BsrLinear", "a block-sparse (BSR) Linear (bias, optional ReLU) for CPU inference")
      .def(pybind11::init<at::Tensor, at::Tensor, at::Tensor, c10::optional<at::Tensor>, int64_t, int64_t, int64_t,
                          bool>())
      .def("forward", &BsrLinear::forward);
}
