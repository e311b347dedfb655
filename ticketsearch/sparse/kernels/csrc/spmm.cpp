// Compiled CPU kernels for sparse inference (op "spmm", kernel "compiled"); see compiled_spmm.py.
// Built on first use by torch.utils.cpp_extension.load; the build is cached per content hash of this file
// (and the compiler flags / CPU it was built for).
//
// A pruned weight is held as CSR over its output rows: rowptr (int32, rows + 1), cols (int32), vals (fp32).
// For a Linear the columns are input features; for a Conv2d they are flat (c, dy, dx) indices into the
// (C, kh, kw) filter. Sums run in a different order than a dense matmul: results equal the dense masked
// layer within floating-point tolerance, not bitwise.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t WORK_GRAIN = 1 << 15;  // multiply-adds per task before parallel_for splits (threads > 1)
constexpr int64_t BT = 64;               // batch columns per register tile (batch > 1)

struct Csr {
  const int32_t* rp;
  const int32_t* ci;
  const float* v;
  const float* bias;  // nullptr: no bias
  int64_t rows;
  int64_t cols;
  int64_t nnz;
};

Csr check_csr(const at::Tensor& rowptr, const at::Tensor& cols, const at::Tensor& vals,
              const c10::optional<at::Tensor>& bias, int64_t ncols) {
  TORCH_CHECK(rowptr.dim() == 1 && rowptr.scalar_type() == at::kInt && rowptr.is_contiguous(),
              "spmm: rowptr must be a contiguous int32 vector");
  TORCH_CHECK(cols.dim() == 1 && cols.scalar_type() == at::kInt && cols.is_contiguous(),
              "spmm: cols must be a contiguous int32 vector");
  TORCH_CHECK(vals.dim() == 1 && vals.scalar_type() == at::kFloat && vals.is_contiguous(),
              "spmm: vals must be a contiguous float32 vector");
  TORCH_CHECK(rowptr.numel() >= 1 && cols.numel() == vals.numel(), "spmm: malformed CSR");
  Csr c;
  c.rp = rowptr.data_ptr<int32_t>();
  c.ci = cols.data_ptr<int32_t>();
  c.v = vals.data_ptr<float>();
  c.rows = rowptr.numel() - 1;
  c.cols = ncols;
  c.nnz = vals.numel();
  TORCH_CHECK(c.rp[0] == 0 && c.rp[c.rows] == c.nnz, "spmm: rowptr does not span the values");
  c.bias = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->numel() == c.rows && bias->scalar_type() == at::kFloat &&
                    bias->is_contiguous(),
                "spmm: bias must be a contiguous float32 vector of the output size");
    c.bias = bias->data_ptr<float>();
  }
  return c;
}

int64_t row_grain(const Csr& w, int64_t per_nnz) {
  const int64_t work = std::max<int64_t>(1, (w.nnz + w.rows) * per_nnz);
  return std::max<int64_t>(1, w.rows * WORK_GRAIN / work);
}

inline float act(float s, bool relu) { return relu && s < 0.f ? 0.f : s; }  // keeps NaN, like torch.relu

// One input row: y[i] = b[i] + sum_j v[j] x[ci[j]]. The gathers are latency-bound: eight partial sums for
// short rows; with AVX-512, rows of 64+ kept weights gather 16 at a time (measured: at 20% of 784 inputs
// 16 vs 25 us per 300 rows; below ~64 the gather's start-up and the horizontal sum cost more than it saves).
void matvec(const Csr& w, const float* x, float* y, bool relu) {
  at::parallel_for(0, w.rows, row_grain(w, 1), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      int64_t j = w.rp[i];
      const int64_t e = w.rp[i + 1];
      float s = w.bias ? w.bias[i] : 0.f;
#ifdef __AVX512F__
      if (e - j >= 64) {
        __m512 acc = _mm512_setzero_ps();
        for (; j + 16 <= e; j += 16) {
          const __m512i idx = _mm512_loadu_si512(reinterpret_cast<const void*>(w.ci + j));
          acc = _mm512_fmadd_ps(_mm512_loadu_ps(w.v + j), _mm512_i32gather_ps(idx, x, 4), acc);
        }
        s += _mm512_reduce_add_ps(acc);
      }
#endif
      float a[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      for (; j + 8 <= e; j += 8)
        for (int k = 0; k < 8; ++k) a[k] += w.v[j + k] * x[w.ci[j + k]];
      for (; j < e; ++j) a[0] += w.v[j] * x[w.ci[j]];
      y[i] = act(s + (((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))), relu);
    }
  });
}

// Many input rows, held transposed: xt is (K, B), so a kept weight scales one contiguous batch vector.
// Writes y[i * si + t * st] for output row i and batch column t (si = B, st = 1: transposed output).
// Four kept weights per update of the accumulator: one add per four products on the loop-carried chain
// (one per product ran latency-bound, ~15 cycles per kept weight, whatever the tile width).
template <int64_t TILE>
inline void row_tile(const Csr& w, int64_t i, const float* xt, int64_t B, int64_t t0, int64_t n, float* y,
                     int64_t si, int64_t st, bool relu) {
  float acc[TILE];
  const int64_t m = n == TILE ? TILE : n;  // a full tile has a compile-time trip count
  const float b = w.bias ? w.bias[i] : 0.f;
  for (int64_t t = 0; t < TILE; ++t) acc[t] = b;
  int64_t j = w.rp[i];
  const int64_t e = w.rp[i + 1];
  const float* base = xt + t0;
  for (; j + 4 <= e; j += 4) {
    const float a0 = w.v[j], a1 = w.v[j + 1], a2 = w.v[j + 2], a3 = w.v[j + 3];
    const float* __restrict__ s0 = base + (int64_t)w.ci[j] * B;
    const float* __restrict__ s1 = base + (int64_t)w.ci[j + 1] * B;
    const float* __restrict__ s2 = base + (int64_t)w.ci[j + 2] * B;
    const float* __restrict__ s3 = base + (int64_t)w.ci[j + 3] * B;
    if (m == TILE) {
      for (int64_t t = 0; t < TILE; ++t) acc[t] += (a0 * s0[t] + a1 * s1[t]) + (a2 * s2[t] + a3 * s3[t]);
    } else {
      for (int64_t t = 0; t < m; ++t) acc[t] += (a0 * s0[t] + a1 * s1[t]) + (a2 * s2[t] + a3 * s3[t]);
    }
  }
  for (; j < e; ++j) {
    const float a0 = w.v[j];
    const float* __restrict__ s0 = base + (int64_t)w.ci[j] * B;
    for (int64_t t = 0; t < m; ++t) acc[t] += a0 * s0[t];
  }
  float* out = y + i * si + t0 * st;
  for (int64_t t = 0; t < m; ++t) out[t * st] = act(acc[t], relu);
}

template <int64_t TILE>
void matmat_tiled(const Csr& w, const float* xt, int64_t B, float* y, int64_t si, int64_t st, bool relu) {
  at::parallel_for(0, w.rows, row_grain(w, B), [&](int64_t r0, int64_t r1) {
    for (int64_t t0 = 0; t0 < B; t0 += TILE) {
      const int64_t n = std::min(TILE, B - t0);
      for (int64_t i = r0; i < r1; ++i) row_tile<TILE>(w, i, xt, B, t0, n, y, si, st, relu);
    }
  });
}

// the tile is the batch rounded up to a vector-friendly width (at most BT), so small batches vectorize too
void matmat_t(const Csr& w, const float* xt, int64_t B, float* y, int64_t si, int64_t st, bool relu) {
  if (B <= 8)
    matmat_tiled<8>(w, xt, B, y, si, st, relu);
  else if (B <= 16)
    matmat_tiled<16>(w, xt, B, y, si, st, relu);
  else if (B <= 32)
    matmat_tiled<32>(w, xt, B, y, si, st, relu);
  else
    matmat_tiled<BT>(w, xt, B, y, si, st, relu);
}

at::Tensor check_input(const at::Tensor& x, int64_t K) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == K, "spmm: input must be (batch, ", K, "), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu(), "spmm: input must be float32 on the CPU");
  return x.contiguous();
}

}  // namespace

// A chain of CSR Linear layers (layer l feeds layer l + 1), ReLU after layer l where relu[l], run in one
// call. Built once (the tensors are checked and kept alive here), so a forward converts one argument: at
// batch 1 pybind's conversion of a dozen tensors costs more than the arithmetic of a 5%-dense LeNet.
// With more than one input row the activations stay transposed (features × batch) between layers, so the
// batch is transposed once on the way in and once on the way out.
class CsrChain {
 public:
  CsrChain(std::vector<at::Tensor> rowptrs, std::vector<at::Tensor> cols, std::vector<at::Tensor> vals,
           std::vector<c10::optional<at::Tensor>> biases, std::vector<int64_t> in_features,
           std::vector<bool> relu)
      : relu_(relu) {
    const size_t L = rowptrs.size();
    TORCH_CHECK(L >= 1 && cols.size() == L && vals.size() == L && biases.size() == L &&
                    in_features.size() == L && relu.size() == L,
                "spmm: a chain needs one rowptr, cols, vals, bias, width and relu flag per layer");
    for (size_t l = 0; l < L; ++l) {
      ws_.push_back(check_csr(rowptrs[l], cols[l], vals[l], biases[l], in_features[l]));
      TORCH_CHECK(l == 0 || ws_[l].cols == ws_[l - 1].rows, "spmm: layer ", l, " takes ", ws_[l].cols,
                  " features but layer ", l - 1, " gives ", ws_[l - 1].rows);
      for (int64_t c = 0; c < ws_[l].nnz; ++c)
        TORCH_CHECK(ws_[l].ci[c] >= 0 && ws_[l].ci[c] < ws_[l].cols, "spmm: column index out of range");
      keep_.insert(keep_.end(), {rowptrs[l], cols[l], vals[l]});
      if (biases[l].has_value()) keep_.push_back(*biases[l]);
    }
  }

  at::Tensor forward(at::Tensor x) const {
    x = check_input(x, ws_[0].cols);
    const int64_t B = x.size(0);
    const size_t L = ws_.size();
    if (B <= 1) {
      at::Tensor cur = x;
      for (size_t l = 0; l < L; ++l) {
        auto y = at::empty({B, ws_[l].rows}, x.options());
        if (B == 1 && ws_[l].rows > 0) matvec(ws_[l], cur.data_ptr<float>(), y.data_ptr<float>(), relu_[l]);
        cur = y;
      }
      return cur;
    }
    at::Tensor cur = x.t().contiguous();  // (K, B)
    for (size_t l = 0; l < L; ++l) {
      const bool last = l + 1 == L;
      const Csr& w = ws_[l];
      auto y = last ? at::empty({B, w.rows}, x.options()) : at::empty({w.rows, B}, x.options());
      if (w.rows > 0) {
        if (last)
          matmat_t(w, cur.data_ptr<float>(), B, y.data_ptr<float>(), 1, w.rows, relu_[l]);
        else
          matmat_t(w, cur.data_ptr<float>(), B, y.data_ptr<float>(), B, 1, relu_[l]);
      }
      cur = y;
    }
    return cur;
  }

 private:
  std::vector<at::Tensor> keep_;
  std::vector<Csr> ws_;
  std::vector<bool> relu_;
};

// A stride-1, dilation-1, ungrouped Conv2d with zero padding (ph, pw) and a CSR weight (O × C·kh·kw),
// optionally fused with ReLU. Per image the input is copied once into a zero-padded (C, Hp, Wp) plane;
// the output of channel o is then accumulated in the padded row pitch Wp, where the kept weight
// (c, dy, dx) contributes ONE contiguous multiply-add over the whole plane, shifted by c·Hp·Wp + dy·Wp + dx
// (the Wp - Wo extra columns of each row are computed and dropped). Work: nnz × Ho·Wp per image.
at::Tensor csr_conv2d(at::Tensor rowptr, at::Tensor cols, at::Tensor vals, c10::optional<at::Tensor> bias,
                      int64_t in_channels, int64_t kh, int64_t kw, int64_t ph, int64_t pw, at::Tensor x,
                      bool relu) {
  TORCH_CHECK(kh >= 1 && kw >= 1 && ph >= 0 && pw >= 0, "spmm: bad kernel size or padding");
  const Csr w = check_csr(rowptr, cols, vals, bias, in_channels * kh * kw);
  TORCH_CHECK(x.dim() == 4 && x.size(1) == in_channels, "spmm: conv input must be (batch, ", in_channels,
              ", H, W), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu(), "spmm: input must be float32 on the CPU");
  x = x.contiguous();
  const int64_t B = x.size(0), C = in_channels, H = x.size(2), W = x.size(3);
  const int64_t Hp = H + 2 * ph, Wp = W + 2 * pw, Ho = Hp - kh + 1, Wo = Wp - kw + 1;
  TORCH_CHECK(Ho >= 1 && Wo >= 1, "spmm: the kernel is larger than the padded input");
  const int64_t O = w.rows, plane = Hp * Wp, span = (Ho - 1) * Wp + Wo;
  TORCH_CHECK(C * plane < (int64_t(1) << 31), "spmm: input too large for int32 offsets");
  auto y = at::empty({B, O, Ho, Wo}, x.options());
  if (B == 0 || O == 0) return y;
  // the flat (c, dy, dx) index of each kept weight, as an offset into the padded input of one image
  std::vector<int32_t> off(w.nnz);
  for (int64_t j = 0; j < w.nnz; ++j) {
    const int64_t f = w.ci[j], c = f / (kh * kw), r = f % (kh * kw);
    TORCH_CHECK(f >= 0 && c < C, "spmm: column index out of range");
    off[j] = (int32_t)(c * plane + (r / kw) * Wp + (r % kw));
  }
  const float* xs = x.data_ptr<float>();
  float* ys = y.data_ptr<float>();
  auto one_image = [&](int64_t b, int64_t o0, int64_t o1, const float* xp, std::vector<float>& acc) {
    for (int64_t o = o0; o < o1; ++o) {
      float* __restrict__ a = acc.data();
      const float bo = w.bias ? w.bias[o] : 0.f;
      for (int64_t p = 0; p < span; ++p) a[p] = bo;
      int64_t j = w.rp[o];
      const int64_t e = w.rp[o + 1];
      for (; j + 4 <= e; j += 4) {  // four kept weights per pass over the accumulator
        const float v0 = w.v[j], v1 = w.v[j + 1], v2 = w.v[j + 2], v3 = w.v[j + 3];
        const float* __restrict__ s0 = xp + off[j];
        const float* __restrict__ s1 = xp + off[j + 1];
        const float* __restrict__ s2 = xp + off[j + 2];
        const float* __restrict__ s3 = xp + off[j + 3];
        for (int64_t p = 0; p < span; ++p) a[p] += (v0 * s0[p] + v1 * s1[p]) + (v2 * s2[p] + v3 * s3[p]);
      }
      for (; j < e; ++j) {
        const float v0 = w.v[j];
        const float* __restrict__ s0 = xp + off[j];
        for (int64_t p = 0; p < span; ++p) a[p] += v0 * s0[p];
      }
      float* out = ys + (b * O + o) * Ho * Wo;
      for (int64_t h = 0; h < Ho; ++h)
        for (int64_t q = 0; q < Wo; ++q) out[h * Wo + q] = act(a[h * Wp + q], relu);
    }
  };
  auto pad = [&](int64_t b, std::vector<float>& xp) {
    std::fill(xp.begin(), xp.end(), 0.f);
    const float* src = xs + b * C * H * W;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < H; ++h)
        std::copy(src + (c * H + h) * W, src + (c * H + h + 1) * W, xp.data() + c * plane + (h + ph) * Wp + pw);
  };
  const int64_t per_image = std::max<int64_t>(1, (w.nnz + O) * span);
  if (B == 1) {  // one image: split the output channels
    std::vector<float> xp(C * plane);
    pad(0, xp);
    at::parallel_for(0, O, std::max<int64_t>(1, O * WORK_GRAIN / per_image), [&](int64_t o0, int64_t o1) {
      std::vector<float> acc(span);
      one_image(0, o0, o1, xp.data(), acc);
    });
  } else {  // several: split the images
    at::parallel_for(0, B, std::max<int64_t>(1, WORK_GRAIN / per_image), [&](int64_t b0, int64_t b1) {
      std::vector<float> xp(C * plane), acc(span);
      for (int64_t b = b0; b < b1; ++b) {
        pad(b, xp);
        one_image(b, 0, O, xp.data(), acc);
      }
    });
  }
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<CsrChain>(m, "CsrChain", "CSR linear layers (with ReLU between) run in one call")
      .def(pybind11::init<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
                          std::vector<c10::optional<at::Tensor>>, std::vector<int64_t>, std::vector<bool>>())
      .def("forward", &CsrChain::forward);
  m.def("csr_conv2d", &csr_conv2d, "stride-1 zero-padded conv2d with a CSR weight, optional ReLU");
}
