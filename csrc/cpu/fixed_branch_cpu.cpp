// CPU kernels of fixed_branch (forward) and _fixed_branch_backward.
//
// One template serves both memory formats. A task owns (image n, a block of channels, a block of rows). It stages
// its rows of the input, padded and widened to opmath_t, into a small buffer that stays in cache, then every output
// is a correlation over contiguous memory: the padding never reaches the inner loop, and arbitrary input strides
// (transposed, expanded, channels_last) only cost the staging copy. In NCHW a channel block is one channel and a
// staged row is W values; in channels_last a staged row interleaves Cv channels per pixel, so the same flat
// correlation vectorises across channels. Main memory sees y read once and the K+1 maps written once.
//
// The backward is a gather, so each task writes only its own rows of dL/dy: no atomics, deterministic, and the
// result does not depend on the blocking or the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "fixed_branch.h"

namespace fixedbranch {
namespace {

// Size of a task's staged tile: small enough for L2 with the output rows, large enough that the S1-1 halo rows
// staged twice stay a small fraction in channels_last.
constexpr int64_t kTileBytes = 128 * 1024;
// Channels per task in channels_last; bounds the tile width when C is large.
constexpr int64_t kChannelBlock = 64;

// A fresh output of tens of MB is mmap'ed by malloc and faults in 4 KiB at a time, and those faults cost more
// than the kernel's own work (96x96x160x8 float32: 17 ms of faults against a 1.5 ms copy). Asking for huge pages
// before the first touch (as PyTorch's THP_MEM_ALLOC_ENABLE does for every allocation) cuts the fault count 512x.
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = (begin + t.nbytes()) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
}

template <typename src_t, typename dst_t>
inline void convert_run(const src_t* src, int64_t stride, int64_t n, dst_t* dst) {
  if (stride == 1) {
    if constexpr (std::is_same_v<src_t, dst_t>) {
      std::memcpy(dst, src, n * sizeof(dst_t));
    } else {
      at::vec::convert(src, dst, n);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<dst_t>(src[i * stride]);
  }
}

// Geometry of one task's view of a 4-D tensor: `Cv` channels (stride sC) of every pixel are stored together.
struct View {
  int64_t H, W, sH, sW, sC, Cv;
};

// Stages rows row0 .. row0+nrows-1 (padded coordinates, mapped through `mode`) with `lpad` and `rpad` border
// columns into dst, row-major, Cv values per pixel.
template <typename scalar_t, typename opmath_t>
void stage_rows(const scalar_t* base, const View& v, int64_t row0, int64_t nrows, int64_t lpad, int64_t rpad,
                PadMode mode, opmath_t* dst) {
  const int64_t pw = lpad + v.W + rpad;
  const int64_t row_len = pw * v.Cv;
  for (int64_t t = 0; t < nrows; ++t, dst += row_len) {
    const int64_t r = pad_source_index(row0 + t, v.H, mode);
    if (r < 0) {
      std::fill(dst, dst + row_len, opmath_t(0));
      continue;
    }
    const scalar_t* src = base + r * v.sH;
    if (v.Cv == 1) {
      convert_run(src, v.sW, v.W, dst + lpad);
    } else if (v.sC == 1 && v.sW == v.Cv) {  // channels_last with the block spanning all channels: one run
      convert_run(src, 1, v.W * v.Cv, dst + lpad * v.Cv);
    } else {
      for (int64_t j = 0; j < v.W; ++j) convert_run(src + j * v.sW, v.sC, v.Cv, dst + (lpad + j) * v.Cv);
    }
    for (int64_t q = 0; q < pw; ++q) {
      if (q == lpad) q += v.W;
      if (q >= pw) break;
      const int64_t j = pad_source_index(q - lpad, v.W, mode);
      opmath_t* d = dst + q * v.Cv;
      if (j < 0) {
        std::fill(d, d + v.Cv, opmath_t(0));
      } else {
        convert_run(src + j * v.sW, v.sC, v.Cv, d);
      }
    }
  }
}

// Elements a staged buffer carries past its end, so that a full vector may be loaded at every tap of the last,
// partial vector of a row.
template <typename opmath_t>
constexpr int64_t kSlack = 4 * at::vec::Vectorized<opmath_t>::size();

// dst[k][x] (+)= sum_t w[k * w_stride + t] * src[x + off[t]] for x in [0, len) and KB branches at once.
//
// The input vectors of a tap are loaded once and feed all KB branches, so a step of U vectors costs U input loads
// and KB weight broadcasts for KB*U FMAs. One branch at a time needed a broadcast and a load per FMA and ran at a
// third of the FMA rate (3.0 ns per pixel for K=4 3x3 float32, in cache, on one AVX2 core). src must be readable
// kSlack elements past src + len + max(off).
template <int KB, int U, bool kAccumulate, typename opmath_t>
void correlate(const opmath_t* src, const int64_t* off, const opmath_t* w, int64_t w_stride, int64_t taps,
               opmath_t* const* dst, int64_t len) {
  using Vec = at::vec::Vectorized<opmath_t>;
  constexpr int64_t V = Vec::size();
  static_assert(U * V <= kSlack<opmath_t>, "slack too small for one step");
  auto step = [&](int64_t x, Vec (&acc)[KB][U]) {
    for (int64_t t = 0; t < taps; ++t) {
      const opmath_t* s = src + x + off[t];
      Vec in[U];
      for (int u = 0; u < U; ++u) in[u] = Vec::loadu(s + u * V);
      for (int k = 0; k < KB; ++k) {
        const Vec wk(w[k * w_stride + t]);
        for (int u = 0; u < U; ++u) acc[k][u] = at::vec::fmadd(wk, in[u], acc[k][u]);
      }
    }
  };
  int64_t x = 0;
  for (; x + U * V <= len; x += U * V) {
    Vec acc[KB][U];
    for (int k = 0; k < KB; ++k)
      for (int u = 0; u < U; ++u) acc[k][u] = kAccumulate ? Vec::loadu(dst[k] + x + u * V) : Vec(0);
    step(x, acc);
    for (int k = 0; k < KB; ++k)
      for (int u = 0; u < U; ++u) acc[k][u].store(dst[k] + x + u * V);
  }
  if (x == len) return;
  // The tail runs full vectors over the slack and keeps only its len - x values.
  const int64_t n = len - x;
  alignas(64) opmath_t buf[KB][U * V];
  Vec acc[KB][U];
  for (int k = 0; k < KB; ++k) {
    std::fill(buf[k], buf[k] + U * V, opmath_t(0));
    if (kAccumulate) std::copy(dst[k] + x, dst[k] + len, buf[k]);
    for (int u = 0; u < U; ++u) acc[k][u] = Vec::loadu(buf[k] + u * V);
  }
  step(x, acc);
  for (int k = 0; k < KB; ++k) {
    for (int u = 0; u < U; ++u) acc[k][u].store(buf[k] + u * V);
    std::copy(buf[k], buf[k] + n, dst[k] + x);
  }
}

// All K branches of one row of `npix` pixels of cv values, four branches at a time: pixel p of branch k goes to
// dst[k] + p * dst_stride. A channels_last output interleaves the branches per pixel (dst_stride = (K+1)*C);
// NCHW passes the whole row as one pixel.
template <typename opmath_t>
void correlate_branches(const opmath_t* src, const int64_t* off, const opmath_t* w, int64_t taps, int64_t K,
                        opmath_t* const* dst, int64_t npix, int64_t cv, int64_t dst_stride) {
  opmath_t* d[4];
  for (int64_t p = 0; p < npix; ++p) {
    const opmath_t* s = src + p * cv;
    for (int64_t k = 0; k < K; k += 4) {
      const int64_t kb = std::min<int64_t>(4, K - k);
      for (int64_t b = 0; b < kb; ++b) d[b] = dst[k + b] + p * dst_stride;
      const opmath_t* wk = w + k * taps;
      // Short runs (a few channels per pixel) take one vector per step so that they rarely reach the tail.
      const bool short_run = cv < 2 * at::vec::Vectorized<opmath_t>::size();
      switch (kb + (short_run ? 4 : 0)) {
        case 4: correlate<4, 2, false>(s, off, wk, taps, taps, d, cv); break;
        case 3: correlate<3, 2, false>(s, off, wk, taps, taps, d, cv); break;
        case 2: correlate<2, 3, false>(s, off, wk, taps, taps, d, cv); break;
        case 1: correlate<1, 4, false>(s, off, wk, taps, taps, d, cv); break;
        case 8: correlate<4, 1, false>(s, off, wk, taps, taps, d, cv); break;
        case 7: correlate<3, 1, false>(s, off, wk, taps, taps, d, cv); break;
        case 6: correlate<2, 1, false>(s, off, wk, taps, taps, d, cv); break;
        default: correlate<1, 1, false>(s, off, wk, taps, taps, d, cv); break;
      }
    }
  }
}

// dst[x] (+)= sum_s sum_t w[s * taps + t] * src[s][x + off[t]]: the backward's sum over branches, kept in
// registers across all sources so that the sum is written once.
template <bool kAccumulate, typename opmath_t>
void correlate_sum(const opmath_t* const* src, int64_t nsrc, const int64_t* off, const opmath_t* w, int64_t taps,
                   opmath_t* dst, int64_t len) {
  using Vec = at::vec::Vectorized<opmath_t>;
  constexpr int64_t V = Vec::size();
  constexpr int U = 4;
  auto step = [&](int64_t x, Vec (&acc)[U]) {
    for (int64_t s = 0; s < nsrc; ++s) {
      for (int64_t t = 0; t < taps; ++t) {
        const Vec wt(w[s * taps + t]);
        const opmath_t* p = src[s] + x + off[t];
        for (int u = 0; u < U; ++u) acc[u] = at::vec::fmadd(wt, Vec::loadu(p + u * V), acc[u]);
      }
    }
  };
  int64_t x = 0;
  for (; x + U * V <= len; x += U * V) {
    Vec acc[U];
    for (int u = 0; u < U; ++u) acc[u] = kAccumulate ? Vec::loadu(dst + x + u * V) : Vec(0);
    step(x, acc);
    for (int u = 0; u < U; ++u) acc[u].store(dst + x + u * V);
  }
  if (x == len) return;
  alignas(64) opmath_t buf[U * V] = {};
  if (kAccumulate) std::copy(dst + x, dst + len, buf);
  Vec acc[U];
  for (int u = 0; u < U; ++u) acc[u] = Vec::loadu(buf + u * V);
  step(x, acc);
  for (int u = 0; u < U; ++u) acc[u].store(buf + u * V);
  std::copy(buf, buf + (len - x), dst + x);
}

// Writes W*Cv staged values of one row to a tensor whose pixels are `sW` apart and channels `sC` apart.
template <typename scalar_t, typename opmath_t>
void store_row(const opmath_t* src, int64_t W, int64_t Cv, scalar_t* dst, int64_t sW, int64_t sC) {
  auto put = [](const opmath_t* s, int64_t n, scalar_t* d, int64_t stride) {
    if (stride == 1) {
      if constexpr (std::is_same_v<scalar_t, opmath_t>) {
        std::memcpy(d, s, n * sizeof(scalar_t));
      } else {
        at::vec::convert(s, d, n);
      }
    } else {
      for (int64_t i = 0; i < n; ++i) d[i * stride] = static_cast<scalar_t>(s[i]);
    }
  };
  if (Cv == 1) {
    put(src, W, dst, sW);
  } else if (sC == 1 && sW == Cv) {
    put(src, W * Cv, dst, 1);
  } else {
    for (int64_t j = 0; j < W; ++j) put(src + j * Cv, Cv, dst + j * sW, sC);
  }
}

// Task decomposition shared by forward and backward: images x channel blocks x row blocks.
struct Tiling {
  int64_t cv, channel_blocks, rows, row_blocks;
  int64_t tasks(int64_t n) const { return n * channel_blocks * row_blocks; }
  // Tasks per thread at least: small inputs run inline instead of waking a thread team for microseconds of work.
  int64_t grain(int64_t W, int64_t maps) const {
    return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, rows * W * cv * maps));
  }
};

Tiling make_tiling(int64_t C, int64_t H, int64_t tile_row_values, int64_t halo_rows, bool channels_last,
                   int64_t opmath_size) {
  Tiling t{};
  t.cv = channels_last ? std::min(C, kChannelBlock) : 1;
  t.channel_blocks = channels_last ? (C + t.cv - 1) / t.cv : C;
  const int64_t row_bytes = std::max<int64_t>(tile_row_values * t.cv * opmath_size, 1);
  // At least four output rows per halo row, even past the budget: wide channels_last rows (K gradient maps of
  // 32+ channels in backward) would otherwise stage each input row three times for one output row.
  t.rows = std::clamp<int64_t>(std::max(kTileBytes / row_bytes - halo_rows, 4 * halo_rows), 1, H);
  t.row_blocks = (H + t.rows - 1) / t.rows;
  return t;
}

template <typename opmath_t>
std::vector<opmath_t> bank_values(const at::Tensor& bank, bool flip) {
  const at::Tensor b = (flip ? bank.flip({1, 2}) : bank).to(at::CppTypeToScalarType<opmath_t>::value).contiguous();
  return std::vector<opmath_t>(b.data_ptr<opmath_t>(), b.data_ptr<opmath_t>() + b.numel());
}

// Offsets of the S1*S2 taps in a staged tile whose rows hold `row_values` pixels of Cv values.
std::vector<int64_t> tap_offsets(int64_t s1, int64_t s2, int64_t row_values, int64_t cv) {
  std::vector<int64_t> off(s1 * s2);
  for (int64_t a = 0; a < s1; ++a)
    for (int64_t b = 0; b < s2; ++b) off[a * s2 + b] = (a * row_values + b) * cv;
  return off;
}

// Where to find task `task`'s image, channel block and row block.
struct Task {
  int64_t n, c0, cv, i0, i1;
};

inline Task locate(const Tiling& tl, int64_t task, int64_t C, int64_t H) {
  const int64_t rb = task % tl.row_blocks;
  const int64_t cb = (task / tl.row_blocks) % tl.channel_blocks;
  const int64_t c0 = cb * tl.cv, i0 = rb * tl.rows;
  return {task / (tl.row_blocks * tl.channel_blocks), c0, std::min(tl.cv, C - c0), i0, std::min(H, i0 + tl.rows)};
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& y, const at::Tensor& bank, PadMode mode, at::Tensor& out) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t N = y.size(0), C = y.size(1), H = y.size(2), W = y.size(3);
  const int64_t K = bank.size(0), S1 = bank.size(1), S2 = bank.size(2), taps = S1 * S2;
  const SamePad pad = same_pad(S1, S2);
  const int64_t pw = W + S2 - 1;
  const bool cl = out.is_contiguous(at::MemoryFormat::ChannelsLast) && !out.is_contiguous();
  const Tiling tl = make_tiling(C, H, pw, S1 - 1, cl, sizeof(opmath_t));
  const std::vector<opmath_t> w = bank_values<opmath_t>(bank, /*flip=*/false);
  // The last channel block may be narrower; its taps sit at other offsets.
  const std::vector<int64_t> off_full = tap_offsets(S1, S2, pw, tl.cv);
  const std::vector<int64_t> off_tail = tap_offsets(S1, S2, pw, C % tl.cv == 0 ? tl.cv : C % tl.cv);

  const scalar_t* y_ptr = y.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
  const int64_t osN = out.stride(0), osC = out.stride(1), osH = out.stride(2), osW = out.stride(3);
  // Rows are written as runs: NCHW along W, channels_last along the channels of each pixel.
  TORCH_INTERNAL_ASSERT(tl.cv == 1 ? osW == 1 : osC == 1);

  at::parallel_for(0, tl.tasks(N), tl.grain(W, K + 1), [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> tile((tl.rows + S1 - 1) * pw * tl.cv + kSlack<opmath_t>);
    std::vector<opmath_t> rows(K * W * tl.cv);  // one output row per branch, before conversion or scattering
    std::vector<opmath_t*> dst(K);
    for (int64_t id = begin; id < end; ++id) {
      const Task t = locate(tl, id, C, H);
      const int64_t* off = (t.cv == tl.cv ? off_full : off_tail).data();
      const View v{H, W, y.stride(2), y.stride(3), y.stride(1), t.cv};
      stage_rows(y_ptr + t.n * y.stride(0) + t.c0 * y.stride(1), v, t.i0 - pad.top, t.i1 - t.i0 + S1 - 1, pad.left,
                 pad.right, mode, tile.data());
      scalar_t* out_base = out_ptr + t.n * osN + t.c0 * osC;
      // float/double rows are written straight into the output; half types go through a float row.
      constexpr bool direct = std::is_same_v<scalar_t, opmath_t>;
      const int64_t npix = t.cv == 1 ? 1 : W, run = t.cv == 1 ? W : t.cv;
      const int64_t dst_stride = direct ? osW : t.cv;
      for (int64_t i = t.i0; i < t.i1; ++i) {
        const opmath_t* src = tile.data() + (i - t.i0) * pw * t.cv;
        // Branch 0 is y itself, copied from the staged centre: exact for every dtype.
        store_row(src + (pad.top * pw + pad.left) * t.cv, W, t.cv, out_base + i * osH, osW, osC);
        for (int64_t k = 0; k < K; ++k) {
          if constexpr (direct) {
            dst[k] = out_base + (k + 1) * C * osC + i * osH;
          } else {
            dst[k] = rows.data() + k * W * t.cv;
          }
        }
        correlate_branches(src, off, w.data(), taps, K, dst.data(), npix, run, dst_stride);
        if (direct) continue;
        for (int64_t k = 0; k < K; ++k)
          store_row(rows.data() + k * W * t.cv, W, t.cv, out_base + (k + 1) * C * osC + i * osH, osW, osC);
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& g, const at::Tensor& bank, PadMode mode, const std::vector<bool>& stopped,
                     at::Tensor& grad_y) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t N = grad_y.size(0), C = grad_y.size(1), H = grad_y.size(2), W = grad_y.size(3);
  const int64_t K = bank.size(0), S1 = bank.size(1), S2 = bank.size(2), taps = S1 * S2;
  const SamePad pad = same_pad(S1, S2);
  const int64_t pw = W + S2 - 1;        // width of the padded image: the adjoint's columns
  const int64_t gw = W + 2 * (S2 - 1);  // width of a staged gradient row, zero-extended on both sides
  std::vector<int64_t> live;            // filters whose gradient reaches y
  for (int64_t k = 1; k <= K; ++k)
    if (!stopped[k]) live.push_back(k);
  const int64_t L = static_cast<int64_t>(live.size());
  const bool cl = grad_y.is_contiguous(at::MemoryFormat::ChannelsLast) && !grad_y.is_contiguous();
  const Tiling tl = make_tiling(C, H, std::max<int64_t>(L, 1) * gw + W, S1 - 1, cl, sizeof(opmath_t));
  // The adjoint of correlating with w is correlating the zero-extended gradient with w flipped.
  const std::vector<opmath_t> flipped = bank_values<opmath_t>(bank, /*flip=*/true);
  std::vector<opmath_t> wl(L * taps);
  for (int64_t l = 0; l < L; ++l)
    std::copy_n(flipped.data() + (live[l] - 1) * taps, taps, wl.data() + l * taps);
  const std::vector<int64_t> off_full = tap_offsets(S1, S2, gw, tl.cv);
  const std::vector<int64_t> off_tail = tap_offsets(S1, S2, gw, C % tl.cv == 0 ? tl.cv : C % tl.cv);

  const scalar_t* g_ptr = g.const_data_ptr<scalar_t>();
  scalar_t* gy_ptr = grad_y.mutable_data_ptr<scalar_t>();

  at::parallel_for(0, tl.tasks(N), tl.grain(W, K + 1), [&](int64_t begin, int64_t end) {
    const int64_t stage_size = (tl.rows + S1 - 1) * gw * tl.cv;
    std::vector<opmath_t> stage(L * stage_size + kSlack<opmath_t>);  // rows of every live g_k, zero-extended
    std::vector<opmath_t> acc(tl.rows * W * tl.cv);                  // this task's rows of dL/dy
    std::vector<opmath_t> adj(pw * tl.cv);                           // one row of the padded-image adjoint
    std::vector<const opmath_t*> src(L);
    for (int64_t id = begin; id < end; ++id) {
      const Task t = locate(tl, id, C, H);
      const int64_t cv = t.cv;
      const int64_t* off = (cv == tl.cv ? off_full : off_tail).data();
      const View v{H, W, g.stride(2), g.stride(3), g.stride(1), cv};
      auto g_slice = [&](int64_t k) { return g_ptr + t.n * g.stride(0) + (k * C + t.c0) * g.stride(1); };
      // Stages rows [p0 - S1 + 1, p1) of every live g_k: what rows [p0, p1) of the adjoint read.
      auto stage_live = [&](int64_t p0, int64_t p1) {
        for (int64_t l = 0; l < L; ++l)
          stage_rows(g_slice(live[l]), v, p0 - (S1 - 1), p1 - p0 + S1 - 1, S2 - 1, S2 - 1, PadMode::Zeros,
                     stage.data() + l * stage_size);
      };
      // adj[q] for padded columns q in [q0, q0 + n) of staged row r: the sum over live branches of F_k^T g_k.
      auto adjoint = [&](int64_t r, int64_t q0, int64_t n, opmath_t* dst, bool accumulate) {
        for (int64_t l = 0; l < L; ++l) src[l] = stage.data() + l * stage_size + (r * gw + q0) * cv;
        if (accumulate) {
          correlate_sum<true>(src.data(), L, off, wl.data(), taps, dst, n * cv);
        } else {
          correlate_sum<false>(src.data(), L, off, wl.data(), taps, dst, n * cv);
        }
      };
      // Padded columns outside the image send their value to the column the padding copied (reflect etc.).
      auto fold_border_columns = [&](const opmath_t* row, opmath_t* dst) {
        for (int64_t q = 0; q < pw; ++q) {
          if (q == pad.left) q += W;
          if (q >= pw) break;
          const int64_t j = pad_source_index(q - pad.left, W, mode);
          if (j < 0) continue;
          for (int64_t c = 0; c < cv; ++c) dst[j * cv + c] += row[q * cv + c];
        }
      };

      if (stopped[0]) {
        std::fill(acc.begin(), acc.end(), opmath_t(0));
      } else {
        stage_rows(g_slice(0), v, t.i0, t.i1 - t.i0, 0, 0, PadMode::Zeros, acc.data());
      }
      if (L > 0) {
        // Adjoint rows i + top of the block's own rows i: the interior columns accumulate straight into acc.
        stage_live(t.i0 + pad.top, t.i1 + pad.top);
        for (int64_t i = t.i0; i < t.i1; ++i) {
          opmath_t* dst = acc.data() + (i - t.i0) * W * cv;
          adjoint(i - t.i0, pad.left, W, dst, /*accumulate=*/true);
          if (mode == PadMode::Zeros) continue;
          adjoint(i - t.i0, 0, pw, adj.data(), /*accumulate=*/false);
          fold_border_columns(adj.data(), dst);
        }
        // Border rows of the padded image whose source row lies in this block.
        for (int64_t p = 0; mode != PadMode::Zeros && p < H + S1 - 1; ++p) {
          if (p == pad.top) p += H;
          if (p >= H + S1 - 1) break;
          const int64_t i = pad_source_index(p - pad.top, H, mode);
          if (i < t.i0 || i >= t.i1) continue;
          stage_live(p, p + 1);
          adjoint(0, 0, pw, adj.data(), /*accumulate=*/false);
          opmath_t* dst = acc.data() + (i - t.i0) * W * cv;
          at::vec::map2([](auto a, auto b) { return a + b; }, dst, dst, adj.data() + pad.left * cv, W * cv);
          fold_border_columns(adj.data(), dst);
        }
      }
      scalar_t* gy_base = gy_ptr + t.n * grad_y.stride(0) + t.c0 * grad_y.stride(1);
      for (int64_t i = t.i0; i < t.i1; ++i)
        store_row(acc.data() + (i - t.i0) * W * cv, W, cv, gy_base + i * grad_y.stride(2), grad_y.stride(3),
                  grad_y.stride(1));
    }
  });
}

at::Tensor fixed_branch_cpu(const at::Tensor& y, const at::Tensor& bank, c10::string_view padding_mode,
                            c10::IntArrayRef stop_gradient) {
  const PadMode mode = check_branch_args("fixedbranch.fixed_branch", "y", y, bank, padding_mode);
  TORCH_INTERNAL_ASSERT(y.device().is_cpu());
  const int64_t K = bank.size(0);
  at::Tensor out = empty_branch_output(y, K);
  if (out.numel() == 0) return out;
  advise_huge_pages(out);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "fixed_branch_cpu",
                                  [&] { forward_kernel<scalar_t>(y, bank, mode, out); });
  return out;
}

at::Tensor fixed_branch_backward_cpu(const at::Tensor& grad_output, const at::Tensor& bank,
                                     c10::string_view padding_mode, c10::IntArrayRef stop_gradient) {
  const PadMode mode =
      check_branch_args("fixedbranch._fixed_branch_backward", "grad_output", grad_output, bank, padding_mode);
  check_backward_args(grad_output, bank, stop_gradient);
  TORCH_INTERNAL_ASSERT(grad_output.device().is_cpu());
  const int64_t K = bank.size(0);
  std::vector<bool> stopped(K + 1, false);
  for (const int64_t k : stop_gradient) stopped[k] = true;
  const auto g = grad_output;
  at::Tensor grad_y = empty_branch_grad(g, K);
  if (grad_y.numel() == 0) return grad_y;
  advise_huge_pages(grad_y);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "fixed_branch_backward_cpu",
                                  [&] { backward_kernel<scalar_t>(g, bank, mode, stopped, grad_y); });
  return grad_y;
}

}  // namespace

TORCH_LIBRARY_IMPL(fixedbranch, CPU, m) {
  m.impl("fixed_branch", &fixed_branch_cpu);
  m.impl("_fixed_branch_backward", &fixed_branch_backward_cpu);
}

}  // namespace fixedbranch
