// The channels_last backward of direct banks, pixel by pixel (pixels.h).
//
// In channels_last a pixel of g holds every slot's C channels in one run, and a pixel of dL/dy its C channels. At
// stride 1, pixel (i, j) of dL/dy is, channel by channel, the identity's gradient at (i, j) plus w_l[a][b] * g_l[i +
// top - a][j + left - b] over the live filters l and their taps: one correlation whose "rows" are pixels (gW apart in
// g, C apart in dL/dy) and whose taps are offsets into g, summed in registers and stored once. At a stride, each
// column phase of dL/dy is such a correlation with its own taps (polyphase, below). g is read where it lies: the row
// kernels staged each live slot's channels of every pixel into rows of their own first, a copy that read g from
// memory with no arithmetic to overlap (the 3x3 bank of four, y = 8x32x96x96 float32: staging two thirds of the
// backward's time on one thread, the gather a quarter).
#include "cpu/pixels.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

#include "cpu/correlate.h"
#include "cpu/staging.h"

namespace fixedbranch {
namespace cpu {

bool pixels_apply(const at::Tensor& g, const at::Tensor& grad_y, const BranchArgs& a, bool all_direct) {
  const at::ScalarType t = g.scalar_type();
  if (t != at::kFloat && t != at::kDouble) return false;
  const int64_t lanes = t == at::kFloat ? at::vec::Vectorized<float>::size() : at::vec::Vectorized<double>::size();
  return all_direct && a.mode == PadMode::Zeros && a.order == Order::Branch && a.C % lanes == 0 &&
         g.stride(1) == 1 && grad_y.stride(1) == 1 && is_channels_last(grad_y);
}

namespace {

// Rows of g prefetched ahead of the row whose taps first reach them: a row's pixels are read in the order of the
// correlation, and from memory it waited on them. Prefetched a pixel block at a time, into L2: the 3x3 bank of four
// at the standard point (y = 8x32x96x96 float32, 2 threads) took 0.75x the time with g evicted from the caches before
// each call (4.86 -> 3.64 ms) and 0.96x with g left in the last level; a row's lines asked for all at once before the
// row (into L1 or L2) took 0.78x and 1.25x.
constexpr int64_t kAheadRows = 2;

// dst[p * dst_pitch + x] = sum_t w[t] * src[p * src_pitch + off[t] + x] for P pixels p and N vectors x: P * N
// accumulators, each tap's weight broadcast once for them all. One pixel at a time, its N sums each chained the
// taps' multiply-adds one after the other and waited on their latency: for the 3x3 bank of four (37 taps), nine
// tenths of the samples on the tap loop's last two multiply-adds, and on one Xeon core slower than staging.
template <int P, int N, typename T>
FIXEDBRANCH_INLINE inline void pixel_step(const T* src, int64_t src_pitch, const int64_t* off, const T* w,
                                          int64_t taps, T* dst, int64_t dst_pitch) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  Vec acc[P][N];
  for (int p = 0; p < P; ++p)
    for (int u = 0; u < N; ++u) acc[p][u] = Vec(T(0));
  for (int64_t t = 0; t < taps; ++t) {
    const Vec wt(w[t]);
    const T* s = src + off[t];
    for (int p = 0; p < P; ++p)
      for (int u = 0; u < N; ++u) acc[p][u] = at::vec::fmadd(wt, Vec::loadu(s + p * src_pitch + u * V), acc[p][u]);
  }
  for (int p = 0; p < P; ++p)
    for (int u = 0; u < N; ++u) acc[p][u].store(dst + p * dst_pitch + u * V);
}

// pixel_step over npix pixels, N vectors of channels each: blocks of P pixels (8 to 12 accumulators), then one by one.
// With `ahead`, each block's pixels `ahead` values further on are prefetched (kAheadRows).
template <int N, typename T>
void pixel_run(const T* src, int64_t src_pitch, const int64_t* off, const T* w, int64_t taps, T* dst,
               int64_t dst_pitch, int64_t npix, int64_t ahead) {
  constexpr int P = N == 1 ? 8 : N == 2 ? 4 : N == 3 ? 3 : 2;
  int64_t p = 0;
  for (; p + P <= npix; p += P) {
    if (ahead) {
      const char* pf = reinterpret_cast<const char*>(src + p * src_pitch + ahead);
      const int64_t bytes = P * src_pitch * static_cast<int64_t>(sizeof(T));
      for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(pf + b, 0, 2);
    }
    pixel_step<P, N>(src + p * src_pitch, src_pitch, off, w, taps, dst + p * dst_pitch, dst_pitch);
  }
  for (; p < npix; ++p) pixel_step<1, N>(src + p * src_pitch, src_pitch, off, w, taps, dst + p * dst_pitch, dst_pitch);
}

// The C channels (whole vectors) of npix pixels, in chunks of up to four vectors; `ahead` as in pixel_run, once.
template <typename T>
void correlate_pixels(const T* src, int64_t src_pitch, const int64_t* off, const T* w, int64_t taps, T* dst,
                      int64_t dst_pitch, int64_t npix, int64_t C, int64_t ahead) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  for (int64_t x = 0; x < C; x += 4 * V) {
    const T* s = src + x;
    T* d = dst + x;
    switch (std::min<int64_t>(4, (C - x) / V)) {
      case 1: pixel_run<1>(s, src_pitch, off, w, taps, d, dst_pitch, npix, x == 0 ? ahead : 0); break;
      case 2: pixel_run<2>(s, src_pitch, off, w, taps, d, dst_pitch, npix, x == 0 ? ahead : 0); break;
      case 3: pixel_run<3>(s, src_pitch, off, w, taps, d, dst_pitch, npix, x == 0 ? ahead : 0); break;
      default: pixel_run<4>(s, src_pitch, off, w, taps, d, dst_pitch, npix, x == 0 ? ahead : 0); break;
    }
  }
}

}  // namespace

template <typename scalar_t>
void backward_pixels(const at::Tensor& g, const std::vector<int64_t>& live, const std::vector<scalar_t>& weights,
                     int64_t S1, int64_t S2, const BranchArgs& a, at::Tensor& grad_y) {
  const int64_t C = a.C, H = a.H, W = a.W, Ho = a.out_h, Wo = a.out_w, sh = a.stride_h, sw = a.stride_w;
  const int64_t taps = S1 * S2, L = static_cast<int64_t>(live.size());
  const SamePad& pad = a.pad;
  const int64_t gsH = g.stride(2), gsW = g.stride(3), ysH = grad_y.stride(2), ysW = grad_y.stride(3);
  const bool identity_live = a.identity && !a.stopped[0];
  std::vector<int64_t> slot_at(L);  // where slot l's channels start in a pixel of g
  for (int64_t l = 0; l < L; ++l) slot_at[l] = a.channel(a.slot(live[l]), 0);
  const scalar_t* g_ptr = g.const_data_ptr<scalar_t>();
  scalar_t* gy_ptr = grad_y.mutable_data_ptr<scalar_t>();
  // A task is one row of dL/dy: consecutive rows share rows of g, which stay in cache.
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, W * C * (L * taps + 1)));

  at::parallel_for(0, a.N * H, grain, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> off;
    std::vector<scalar_t> w;
    for (int64_t id = begin; id < end; ++id) {
      const int64_t n = id / H, i = id % H, p = i + pad.top;  // p: the padded row
      const scalar_t* g_image = g_ptr + n * g.stride(0);
      scalar_t* dst_row = gy_ptr + n * grad_y.stride(0) + i * ysH;
      // The row of g that dL/dy's row i + kAheadRows * sh reads first, prefetched as this row's pixels pass.
      const int64_t o_ahead = p / sh + kAheadRows;
      const int64_t ahead = o_ahead < Ho ? o_ahead * gsH : 0;
      // Polyphase: pixel j = rho + sw * m of dL/dy (padded column q = j + left) gathers only the column taps b with
      // q - b = sw * x, from g's pixel x = m + (rho + left - b) / sw; row p only the row taps r with p - r = sh * o.
      // Column phase rho's pixels are thus one correlation over g's pixels m, sw pixels of dL/dy apart.
      for (int64_t rho = 0; rho < std::min(sw, W); ++rho) {
        const int64_t M = (W - rho + sw - 1) / sw;  // pixels of this phase
        // The pixels m whose every column tap of this phase lies inside g.
        int64_t m_lo = 0, m_hi = M;
        for (int64_t b = 0; b < S2; ++b) {
          if ((rho + pad.left - b) % sw != 0) continue;
          const int64_t d = (rho + pad.left - b) / sw;
          m_lo = std::max(m_lo, -d);
          m_hi = std::min(m_hi, Wo - d);
        }
        m_lo = std::min(m_lo, M);
        m_hi = std::max(m_hi, m_lo);
        // Pixels m0 .. m1 - 1: every tap that reaches pixel m0 from inside g, as offsets from g's pixel m0.
        auto run = [&](int64_t m0, int64_t m1) {
          off.clear();
          w.clear();
          if (identity_live && rho == 0 && i % sh == 0) {  // y's pixel (i, sw * m) is out's (i / sh, m)
            off.push_back(i / sh * gsH + a.channel(0, 0));
            w.push_back(scalar_t(1));
          }
          for (int64_t l = 0; l < L; ++l)
            for (int64_t r = 0; r < S1; ++r) {
              if ((p - r) % sh != 0) continue;
              const int64_t o = (p - r) / sh;
              if (p - r < 0 || o >= Ho) continue;
              for (int64_t b = 0; b < S2; ++b) {
                if ((rho + pad.left - b) % sw != 0) continue;
                const int64_t d = (rho + pad.left - b) / sw;
                if (m0 + d < 0 || m0 + d >= Wo) continue;
                off.push_back(o * gsH + d * gsW + slot_at[l]);
                w.push_back(weights[l * taps + r * S2 + b]);
              }
            }
          correlate_pixels(g_image + m0 * gsW, gsW, off.data(), w.data(), static_cast<int64_t>(off.size()),
                           dst_row + (rho + sw * m0) * ysW, sw * ysW, m1 - m0, C, rho == 0 ? ahead : 0);
        };
        for (int64_t m = 0; m < m_lo; ++m) run(m, m + 1);
        if (m_hi > m_lo) run(m_lo, m_hi);
        for (int64_t m = m_hi; m < M; ++m) run(m, m + 1);
      }
    }
  });
}

template void backward_pixels<float>(const at::Tensor&, const std::vector<int64_t>&, const std::vector<float>&,
                                     int64_t, int64_t, const BranchArgs&, at::Tensor&);
template void backward_pixels<double>(const at::Tensor&, const std::vector<int64_t>&, const std::vector<double>&,
                                      int64_t, int64_t, const BranchArgs&, at::Tensor&);

}  // namespace cpu
}  // namespace fixedbranch
