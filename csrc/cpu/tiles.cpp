// The 2x2, stride-2 kernels (tiles.h). Output pixel (i, j) of filter k reads the tile y[2i:2i+2, 2j:2j+2] and no
// other output reads it: the forward loads two rows of y, splits their even and odd columns (one permute per
// vector pair) and writes every map; the backward loads each live gradient once and interleaves the four sums of
// a tile back into two rows of dL/dy. y and the maps move once, straight between the tensors: the plane kernels
// staged every row into polyphase planes first and spent more on that than on the arithmetic: 0.58-0.69 ms forward
// and 0.95 ms backward for N8 C96 56x56 float32 on 2 cores, against 0.12 ms for a copy of y; these take 0.30 and
// 0.22-0.37 ms.
#include "cpu/tiles.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <vector>

#include "cpu/cache.h"
#include "cpu/correlate.h"
#include "cpu/staging.h"

namespace fixedbranch {
namespace cpu {
namespace {

// Calls f(n, c, i, count) for runs of rows [id, id + count) of the pass's N * C * rows rows that lie in one map:
// a run steps its pointers from row to row instead of locating every row.
template <typename F>
void for_each_run(int64_t begin, int64_t end, int64_t C, int64_t rows, F&& f) {
  for (int64_t id = begin; id < end;) {
    const int64_t i = id % rows, count = std::min(end - id, rows - i);
    f(id / (C * rows), id / rows % C, i, count);
    id += count;
  }
}

// The even and odd pixels of the 2m values at p (m <= V).
template <typename T>
std::pair<at::vec::Vectorized<T>, at::vec::Vectorized<T>> split_pairs(const T* p, int64_t m) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  if (m == V) return at::vec::deinterleave2(Vec::loadu(p), Vec::loadu(p + V));
  return at::vec::deinterleave2(Vec::loadu(p, std::min(2 * m, V)),
                                2 * m > V ? Vec::loadu(p + V, 2 * m - V) : Vec(T(0)));
}

// Stores 2m values at p, alternating from `even` and `odd` (m <= V); whole vectors streamed if `stream`.
template <typename T>
void store_pairs(const at::vec::Vectorized<T>& even, const at::vec::Vectorized<T>& odd, T* p, int64_t m,
                 bool stream) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  const auto pair = at::vec::interleave2(even, odd);
  store_vector(pair.first, p, std::min(2 * m, V), stream);
  if (2 * m > V) store_vector(pair.second, p + V, 2 * m - V, stream);
}

}  // namespace

bool fits_tiles(const at::Tensor& src, const at::Tensor& dst, const at::Tensor& bank, const BranchArgs& a) {
  const bool real = src.scalar_type() == at::kFloat || src.scalar_type() == at::kDouble;
  return real && bank.size(1) == 2 && bank.size(2) == 2 && a.stride_h == 2 && a.stride_w == 2 && a.H % 2 == 0 &&
         a.W % 2 == 0 && src.stride(3) == 1 && dst.stride(3) == 1;
}

template <typename T>
void forward_tiles(const at::Tensor& y, const at::Tensor& bank, const BranchArgs& a, at::Tensor& out) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int64_t K = a.K, Ho = a.out_h, Wo = a.out_w;
  const std::vector<T> w = bank_values<T>(bank);  // w[4k + 2a + b]: tap (a, b) of filter k+1
  const T* y_ptr = y.const_data_ptr<T>();
  T* out_ptr = out.mutable_data_ptr<T>();
  const int64_t ysN = y.stride(0), ysC = y.stride(1), ysH = y.stride(2);
  const int64_t osN = out.stride(0), osC = out.stride(1), osH = out.stride(2);
  // Rows that continue in memory let a row's last, partial vector run over into the next row of the run, which is
  // written (or read) later in the same run: no masked load or store but the run's last row's. Only rows of a vector
  // or more: a shorter row's vector would reach past the next row.
  const bool runs_on = ysH == a.W && osH == Wo && Wo >= V;
  // An output larger than the cache this process owns is streamed past it, as in the row kernels' forward.
  const bool stream = streaming_pays(static_cast<int64_t>(out.nbytes()));
  at::parallel_for(0, a.N * a.C * Ho, tasks_per_grain(2 * a.W + (K + 1) * Wo), [&](int64_t begin, int64_t end) {
    std::vector<T*> maps(K);
    for_each_run(begin, end, a.C, Ho, [&](int64_t n, int64_t c, int64_t i, int64_t count) {
      const T* top = y_ptr + n * ysN + c * ysC + 2 * i * ysH;
      T* row = out_ptr + n * osN + i * osH;
      T* identity = a.identity ? row + a.channel(0, c) * osC : nullptr;
      for (int64_t k = 0; k < K; ++k) maps[k] = row + a.channel(a.slot(k + 1), c) * osC;
      for (int64_t r = 0; r < count; ++r, top += 2 * ysH) {
        const bool run_over = runs_on && r + 1 < count;
        for (int64_t j = 0; j < Wo; j += V) {
          const int64_t m = run_over ? V : std::min(V, Wo - j);
          const auto [e0, o0] = split_pairs(top + 2 * j, m);
          const auto [e1, o1] = split_pairs(top + ysH + 2 * j, m);
          if (identity) store_vector(e0, identity + r * osH + j, m, stream);
          for (int64_t k = 0; k < K; ++k) {
            const T* f = w.data() + 4 * k;
            Vec acc = Vec(f[0]) * e0;
            acc = at::vec::fmadd(Vec(f[1]), o0, acc);
            acc = at::vec::fmadd(Vec(f[2]), e1, acc);
            acc = at::vec::fmadd(Vec(f[3]), o1, acc);
            store_vector(acc, maps[k] + r * osH + j, m, stream);
          }
        }
      }
    });
    if (stream) stream_fence();
  });
}

template <typename T>
void backward_tiles(const at::Tensor& g, const at::Tensor& bank, const BranchArgs& a, at::Tensor& grad_y) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int64_t Ho = a.out_h, Wo = a.out_w;
  const std::vector<T> bank_w = bank_values<T>(bank);
  std::vector<int64_t> live;  // filters whose gradient reaches y
  std::vector<T> w;           // their taps, 4 each
  for (int64_t k = 1; k <= a.K; ++k) {
    if (a.stopped[k]) continue;
    live.push_back(k);
    w.insert(w.end(), bank_w.begin() + 4 * (k - 1), bank_w.begin() + 4 * k);
  }
  const int64_t L = static_cast<int64_t>(live.size());
  const bool identity_live = a.identity && !a.stopped[0];
  const T* g_ptr = g.const_data_ptr<T>();
  T* gy_ptr = grad_y.mutable_data_ptr<T>();
  const int64_t gsN = g.stride(0), gsC = g.stride(1), gsH = g.stride(2);
  const int64_t dsN = grad_y.stride(0), dsC = grad_y.stride(1), dsH = grad_y.stride(2);
  const bool runs_on = gsH == Wo && dsH == a.W && Wo >= V;  // as in forward_tiles
  const bool stream = streaming_pays(static_cast<int64_t>(grad_y.nbytes()));  // as forward_tiles' output
  at::parallel_for(0, a.N * a.C * Ho, tasks_per_grain((L + 1) * Wo + 2 * a.W), [&](int64_t begin, int64_t end) {
    std::vector<const T*> sources(L);
    for_each_run(begin, end, a.C, Ho, [&](int64_t n, int64_t c, int64_t i, int64_t count) {
      const T* row = g_ptr + n * gsN + i * gsH;
      const T* identity = identity_live ? row + a.channel(0, c) * gsC : nullptr;
      for (int64_t l = 0; l < L; ++l) sources[l] = row + a.channel(a.slot(live[l]), c) * gsC;
      T* top = gy_ptr + n * dsN + c * dsC + 2 * i * dsH;
      for (int64_t r = 0; r < count; ++r, top += 2 * dsH) {
        const int64_t at_row = r * gsH;
        const bool run_over = runs_on && r + 1 < count;
        for (int64_t j = 0; j < Wo; j += V) {
          const int64_t exact = std::min(V, Wo - j), m = run_over ? V : exact;
          // acc[2a + b]: the tile's pixel (a, b), i.e. dL/dy at (2i + a, 2j + b).
          Vec acc[4] = {identity ? Vec::loadu(identity + at_row + j, m) : Vec(T(0)), Vec(T(0)), Vec(T(0)), Vec(T(0))};
          for (int64_t l = 0; l < L; ++l) {
            const Vec x = Vec::loadu(sources[l] + at_row + j, m);
            const T* f = w.data() + 4 * l;
            for (int q = 0; q < 4; ++q) acc[q] = at::vec::fmadd(Vec(f[q]), x, acc[q]);
          }
          // The top row stops at its end: past it lies the bottom row, whose first vectors are already written.
          store_pairs(acc[0], acc[1], top + 2 * j, exact, stream);
          store_pairs(acc[2], acc[3], top + dsH + 2 * j, m, stream);
        }
      }
    });
    if (stream) stream_fence();
  });
}

template void forward_tiles<float>(const at::Tensor&, const at::Tensor&, const BranchArgs&, at::Tensor&);
template void forward_tiles<double>(const at::Tensor&, const at::Tensor&, const BranchArgs&, at::Tensor&);
template void backward_tiles<float>(const at::Tensor&, const at::Tensor&, const BranchArgs&, at::Tensor&);
template void backward_tiles<double>(const at::Tensor&, const at::Tensor&, const BranchArgs&, at::Tensor&);

}  // namespace cpu
}  // namespace fixedbranch
