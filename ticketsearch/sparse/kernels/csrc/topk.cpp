// Compiled CPU kernel of the supermask top-k (op "topk", kernel "compiled"); see compiled.py.
// Built on first use by torch.utils.cpp_extension.load; the build is cached per content hash of this file.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace {
struct Item { float a; int64_t i; };
inline bool before(const Item& x, const Item& y) { return x.a > y.a || (x.a == y.a && x.i < y.i); }
constexpr int64_t BLOCK = 32;
constexpr int64_t GRAIN = 16384;

// y = w where |s| > v (bitwise select, branch-free), else 0
void write_above(const float* s, const float* w, float* y, int64_t m, float v) {
  at::parallel_for(0, m, GRAIN, [=](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float a = std::fabs(s[i]);
      uint32_t wb;
      std::memcpy(&wb, w + i, 4);
      wb &= -(uint32_t)(a > v);
      std::memcpy(y + i, &wb, 4);
    }
  });
}
}  // namespace

// Exact stable top-k of |s| per group (groups: contiguous runs of tensors), fused with W_eff = W * mask.
// lo/hi: a guessed band around each group's k-th value. One pass (parallel) writes y = W * (|s| >= hi),
// counts |s| >= hi and collects the band [lo, hi); nth_element in the band picks the k-th of the stable
// descending order (value desc, index asc) and the chosen band elements are set in y.
// Returns [info (G, 4) doubles: v, j, band size, status; y_0, y_1, ...]. status: 0 band hit, 1 clean cut at
// hi, 2 exact (band missed, resolved by nth_element over the group), 3 trivial (k = 0 or n), 4/5 band missed
// with the k-th above/below it (only when exact = false: outputs then invalid), -1 NaN seen.
std::vector<at::Tensor> sm_forward(std::vector<at::Tensor> scores, std::vector<at::Tensor> weights,
                                   std::vector<int64_t> group_of, std::vector<int64_t> ks,
                                   std::vector<double> lo, std::vector<double> hi, bool exact) {
  const int64_t G = (int64_t)ks.size();
  const int64_t T = (int64_t)scores.size();
  auto info = at::zeros({G, 4}, at::kDouble);
  double* o = info.data_ptr<double>();
  std::vector<at::Tensor> result;
  result.reserve(T + 1);
  result.push_back(info);
  std::vector<float*> ys(T);
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(scores[t].is_contiguous() && weights[t].is_contiguous(), "supermask: tensors must be contiguous");
    TORCH_CHECK(scores[t].scalar_type() == at::kFloat && weights[t].scalar_type() == at::kFloat, "supermask: float32 only");
    result.push_back(at::empty_like(weights[t]));
    ys[t] = result.back().data_ptr<float>();
  }
  const int nthreads = at::get_num_threads();
  std::vector<std::vector<Item>> bands(nthreads);
  std::vector<int64_t> hi_counts(nthreads), nan_counts(nthreads);
  std::vector<Item> band;
  int64_t t0 = 0;
  for (int64_t g = 0; g < G; ++g) {
    int64_t t1 = t0, n = 0;
    while (t1 < T && group_of[t1] == g) { n += scores[t1].numel(); ++t1; }
    const int64_t k = ks[g];
    double* og = o + 4 * g;
    if (k <= 0 || k >= n) {
      og[0] = k <= 0 ? std::numeric_limits<double>::infinity() : -1.0;
      og[1] = -1; og[3] = 3;
      for (int64_t t = t0; t < t1; ++t)
        write_above(scores[t].data_ptr<float>(), weights[t].data_ptr<float>(), ys[t], scores[t].numel(), (float)og[0]);
      t0 = t1;
      continue;
    }
    const float flo = (float)lo[g];
    const float fhi = (float)hi[g];
    for (auto& b : bands) b.clear();
    std::fill(hi_counts.begin(), hi_counts.end(), 0);
    std::fill(nan_counts.begin(), nan_counts.end(), 0);
    int64_t off = 0;
    for (int64_t t = t0; t < t1; ++t) {
      const float* p = scores[t].data_ptr<float>();
      const float* w = weights[t].data_ptr<float>();
      float* y = ys[t];
      const int64_t m = scores[t].numel();
      const int64_t nblocks = (m + BLOCK - 1) / BLOCK;
      const int64_t toff = off;
      at::parallel_for(0, nblocks, GRAIN / BLOCK, [&, p, w, y, m, toff, flo, fhi](int64_t bb, int64_t be) {
        const int tid = at::get_thread_num();
        std::vector<Item>& mine = bands[tid];
        int64_t c_hi_total = 0, c_nan_total = 0;
        for (int64_t blk = bb; blk < be; ++blk) {
          const int64_t b = blk * BLOCK, e = std::min(m, b + BLOCK);
          int32_t c_hi = 0, c_band = 0, c_nan = 0;
          for (int64_t i = b; i < e; ++i) {
            const float a = std::fabs(p[i]);
            const uint32_t keep = -(uint32_t)(a >= fhi);
            uint32_t wb;
            std::memcpy(&wb, w + i, 4);
            wb &= keep;
            std::memcpy(y + i, &wb, 4);
            c_hi += (a >= fhi);
            c_band += (a >= flo) & (a < fhi);
            c_nan += (a != a);
          }
          c_hi_total += c_hi;
          c_nan_total += c_nan;
          if (c_band) {  // branch-free compaction of the block's band elements
            Item q[BLOCK];
            int64_t c = 0;
            for (int64_t i = b; i < e; ++i) {
              const float a = std::fabs(p[i]);
              q[c] = {a, toff + i};
              c += (a >= flo) & (a < fhi);
            }
            mine.insert(mine.end(), q, q + c);
          }
        }
        hi_counts[tid] += c_hi_total;
        nan_counts[tid] += c_nan_total;
      });
      off += m;
    }
    int64_t count_hi = 0, nan_count = 0;
    band.clear();
    for (int th = 0; th < nthreads; ++th) {
      count_hi += hi_counts[th];
      nan_count += nan_counts[th];
      band.insert(band.end(), bands[th].begin(), bands[th].end());
    }
    og[2] = (double)band.size();
    if (nan_count) { og[3] = -1; t0 = t1; continue; }
    if (count_hi == k) {  // clean cut: y already holds W * (|s| >= hi)
      og[0] = std::nextafter(fhi, -std::numeric_limits<float>::infinity());
      og[1] = -1; og[3] = 1; t0 = t1;
      continue;
    }
    if (count_hi < k && k <= count_hi + (int64_t)band.size()) {
      const int64_t r = k - count_hi;
      std::nth_element(band.begin(), band.begin() + (r - 1), band.end(), before);
      og[0] = band[r - 1].a; og[1] = (double)band[r - 1].i; og[3] = 0;
      // set the r chosen band elements (they precede the k-th in the stable order)
      for (int64_t q = 0; q < r; ++q) {
        int64_t idx = band[q].i, t = t0;
        while (idx >= scores[t].numel()) { idx -= scores[t].numel(); ++t; }
        ys[t][idx] = weights[t].data_ptr<float>()[idx];
      }
      t0 = t1;
      continue;
    }
    if (!exact) { og[3] = count_hi > k ? 4 : 5; t0 = t1; continue; }
    // the band missed: exact k-th over the whole group, then rewrite the outputs
    std::vector<Item> all;
    all.reserve(n);
    off = 0;
    for (int64_t t = t0; t < t1; ++t) {
      const float* p = scores[t].data_ptr<float>();
      const int64_t m = scores[t].numel();
      for (int64_t i = 0; i < m; ++i) all.push_back({std::fabs(p[i]), off + i});
      off += m;
    }
    std::nth_element(all.begin(), all.begin() + (k - 1), all.end(), before);
    const Item kth = all[k - 1];
    og[0] = kth.a; og[1] = (double)kth.i; og[3] = 2;
    for (int64_t t = t0; t < t1; ++t)
      write_above(scores[t].data_ptr<float>(), weights[t].data_ptr<float>(), ys[t], scores[t].numel(), kth.a);
    for (int64_t q = 0; q < k; ++q) {
      if (all[q].a == kth.a) {  // ties at the k-th value up to its index
        int64_t idx = all[q].i, t = t0;
        while (idx >= scores[t].numel()) { idx -= scores[t].numel(); ++t; }
        ys[t][idx] = weights[t].data_ptr<float>()[idx];
      }
    }
    t0 = t1;
  }
  return result;
}

// straight-through backward: dL/ds = dL/dW_eff * W * sign(s)
std::vector<at::Tensor> sm_backward(std::vector<at::Tensor> grads, std::vector<at::Tensor> weights,
                                    std::vector<at::Tensor> scores) {
  std::vector<at::Tensor> outs;
  outs.reserve(grads.size());
  for (size_t t = 0; t < grads.size(); ++t) {
    auto g = grads[t].contiguous();
    auto out = at::empty_like(weights[t]);
    const float* gp = g.data_ptr<float>();
    const float* w = weights[t].data_ptr<float>();
    const float* s = scores[t].data_ptr<float>();
    float* y = out.data_ptr<float>();
    const int64_t m = g.numel();
    at::parallel_for(0, m, GRAIN, [=](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const float sg = (float)(s[i] > 0.0f) - (float)(s[i] < 0.0f);
        y[i] = gp[i] * w[i] * sg;
      }
    });
    outs.push_back(out);
  }
  return outs;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sm_forward", torch::wrap_pybind_function(sm_forward), "exact stable top-k of |s| fused with W * mask");
  m.def("sm_backward", torch::wrap_pybind_function(sm_backward), "straight-through gradient sign(s) * g * W");
}
