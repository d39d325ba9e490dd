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
//
// Strided NCHW passes of direct filters (wavelet levels, strided stems) stage whole tasks as polyphase planes and run
// one correlation per task instead of one per row (forward_planes, backward_planes).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>


#include "bank_plan/bank_plan.h"
#include "cpu/cost_model.h"
#include "fixed_branch.h"
#include "output_memory.h"

namespace fixedbranch {
namespace {

// Size of a task's staged tile: small enough for L2 with the output rows, large enough that the S1-1 halo rows
// staged twice stay a small fraction in channels_last.
constexpr int64_t kTileBytes = 128 * 1024;
// Channels per task in channels_last; bounds the tile width when C is large.
constexpr int64_t kChannelBlock = 64;

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

// Copies npix pixels of Cv values, read `v.sW` apart (channels `v.sC` apart), to dst with `step` pixels between
// consecutive ones (step > 1 leaves the gaps alone: the identity's adjoint at a stride).
template <typename scalar_t, typename opmath_t>
void copy_pixels(const scalar_t* src, const View& v, int64_t npix, int64_t step, opmath_t* dst) {
  if (v.Cv == 1) {
    if (step == 1) {
      convert_run(src, v.sW, npix, dst);
    } else {
      for (int64_t j = 0; j < npix; ++j) dst[j * step] = static_cast<opmath_t>(src[j * v.sW]);
    }
  } else if (step == 1 && v.sC == 1 && v.sW == v.Cv) {  // channels_last with the block spanning all channels
    convert_run(src, 1, npix * v.Cv, dst);
  } else {
    for (int64_t j = 0; j < npix; ++j) convert_run(src + j * v.sW, v.sC, v.Cv, dst + j * step * v.Cv);
  }
}

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
    copy_pixels(src, v, v.W, 1, dst + lpad * v.Cv);
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

// A strided forward reads every sw-th padded column. Its staged rows are stored in polyphase order: padded column
// q at (q % sw) * phase_len + q / sw, so that the columns one tap reads for consecutive outputs are contiguous and
// the correlation vectorises as at stride 1 (tap b of output x reads phase b % sw at x + b / sw).
struct RowLayout {
  int64_t pw, sw, phase_len;
  int64_t values() const { return sw * phase_len; }  // pixels per staged row
  int64_t at(int64_t q) const { return (q % sw) * phase_len + q / sw; }
};

inline RowLayout row_layout(int64_t pw, int64_t sw) { return {pw, sw, (pw + sw - 1) / sw}; }

// Splits a row of pw pixels (Cv values each), the padded row's columns from `first` on, into the padded row's sw
// column phases: pixel x, padded column q = first + x, to dst + (q % sw) * phase_stride + (q / sw) * cv, where
// q / sw < keep.
template <typename opmath_t>
void split_phases(const opmath_t* row, int64_t pw, int64_t sw, int64_t cv, int64_t keep, opmath_t* dst,
                  int64_t phase_stride, int64_t first = 0) {
  if (sw == 2 && cv == 1) {
    // Stride 2, one value per pixel (NCHW): split even and odd pixels a vector pair at a time, the last pair loaded
    // and stored in part.
    using Vec = at::vec::Vectorized<opmath_t>;
    constexpr int64_t V = Vec::size();
    // Pixel 2k is column first + 2k: phase first % 2, index k + first / 2; pixel 2k+1: the other phase,
    // index k + (first + 1) / 2.
    opmath_t* to_even = dst + (first % 2) * phase_stride + first / 2;
    opmath_t* to_odd = dst + ((first + 1) % 2) * phase_stride + (first + 1) / 2;
    const int64_t even = std::min((pw + 1) / 2, keep - first / 2), odd = std::min(pw / 2, keep - (first + 1) / 2);
    for (int64_t m = 0; m < std::max(even, odd); m += V) {
      const int64_t left = pw - 2 * m;  // pixels from 2m on
      const Vec lo = Vec::loadu(row + 2 * m, std::min(left, V));
      const Vec hi = left > V ? Vec::loadu(row + 2 * m + V, std::min(left - V, V)) : Vec(0);
      const auto split = at::vec::deinterleave2(lo, hi);
      split.first.store(to_even + m, std::max<int64_t>(0, std::min(even - m, V)));
      split.second.store(to_odd + m, std::max<int64_t>(0, std::min(odd - m, V)));
    }
    return;
  }
  TORCH_INTERNAL_ASSERT(first == 0);
  // Phase by phase, so that no pixel pays a division.
  for (int64_t phase = 0; phase < sw; ++phase) {
    const opmath_t* from = row + phase * cv;
    opmath_t* to = dst + phase * phase_stride;
    const int64_t count = std::min((pw - phase + sw - 1) / sw, keep);
    if (cv == 1) {
      for (int64_t m = 0; m < count; ++m) to[m] = from[m * sw];
    } else {
      for (int64_t m = 0; m < count; ++m) std::copy_n(from + m * sw * cv, cv, to + m * cv);
    }
  }
}

template <typename scalar_t, typename opmath_t>
void stage_rows_strided(const scalar_t* base, const View& v, int64_t row0, int64_t nrows, const SamePad& pad,
                        PadMode mode, const RowLayout& layout, opmath_t* scratch, opmath_t* dst) {
  if (layout.sw == 1) {
    stage_rows(base, v, row0, nrows, pad.left, pad.right, mode, dst);
    return;
  }
  const int64_t row_len = layout.values() * v.Cv;
  for (int64_t t = 0; t < nrows; ++t, dst += row_len) {
    stage_rows(base, v, row0 + t, 1, pad.left, pad.right, mode, scratch);
    std::fill(dst, dst + row_len, opmath_t(0));  // the phases' unused tails
    split_phases(scratch, layout.pw, layout.sw, v.Cv, layout.phase_len, dst, layout.phase_len * v.Cv);
  }
}

// Rows row0 .. row0+nrows-1 of the identity's adjoint, W pixels of Cv values: g (described by v) where the row and
// column are multiples of the stride (y[::sh, ::sw] is the identity branch), 0 elsewhere.
template <typename scalar_t, typename opmath_t>
void identity_adjoint_rows(const scalar_t* base, const View& v, int64_t sh, int64_t sw, int64_t row0, int64_t nrows,
                           int64_t W, opmath_t* dst) {
  const int64_t row_len = W * v.Cv;
  for (int64_t t = 0; t < nrows; ++t, dst += row_len) {
    const int64_t r = row0 + t;
    if (sw != 1 || r % sh != 0) std::fill(dst, dst + row_len, opmath_t(0));
    if (r % sh == 0) copy_pixels(base + (r / sh) * v.sH, v, v.W, sw, dst);
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

// `rows` output rows per task, each staging `rows_per_output` input rows of `tile_row_values` values per channel,
// plus `halo_rows` shared with the next block.
Tiling make_tiling(int64_t C, int64_t rows, int64_t tile_row_values, int64_t rows_per_output, int64_t halo_rows,
                   bool channels_last, int64_t opmath_size) {
  Tiling t{};
  t.cv = channels_last ? std::min(C, kChannelBlock) : 1;
  t.channel_blocks = channels_last ? (C + t.cv - 1) / t.cv : C;
  const int64_t row_bytes = std::max<int64_t>(tile_row_values * t.cv * opmath_size * rows_per_output, 1);
  // At least four output rows per halo row, even past the budget: wide channels_last rows (K gradient maps of
  // 32+ channels in backward) would otherwise stage each input row three times for one output row.
  t.rows = std::clamp<int64_t>(std::max(kTileBytes / row_bytes - halo_rows, 4 * halo_rows), 1,
                               std::max<int64_t>(rows, 1));
  t.row_blocks = (rows + t.rows - 1) / t.rows;
  return t;
}

template <typename opmath_t>
std::vector<opmath_t> bank_values(const at::Tensor& bank) {
  const at::Tensor b = bank.to(at::CppTypeToScalarType<opmath_t>::value).contiguous();
  return std::vector<opmath_t>(b.data_ptr<opmath_t>(), b.data_ptr<opmath_t>() + b.numel());
}

// The bank as the CPU kernels run it: the filters the plan factors (bank_plan/bank_plan.h) as column passes shared
// across the bank, then a row pass per separable term; the others as direct correlations. Values in opmath_t.
template <typename opmath_t>
struct KernelBank {
  int64_t S1 = 0, S2 = 0;
  std::vector<int64_t> direct, factored;      // filter indices 1..K of each kind
  std::vector<opmath_t> direct_weights;       // per direct filter, S1*S2 taps
  int64_t num_columns = 0;
  std::vector<opmath_t> columns;              // per column, S1 values
  std::vector<int64_t> term_begin;            // terms of factored filter j: [term_begin[j], term_begin[j+1])
  std::vector<int64_t> term_column;           // per term, its column
  std::vector<opmath_t> term_rows;            // per term, S2 values
};

template <typename opmath_t>
KernelBank<opmath_t> kernel_bank(const at::Tensor& bank, Pass pass) {
  KernelBank<opmath_t> kb;
  const int64_t K = bank.size(0);
  kb.S1 = bank.size(1), kb.S2 = bank.size(2);
  const int64_t taps = kb.S1 * kb.S2;
  const std::shared_ptr<const BankPlan> plan = cpu_plan(bank, pass);  // null: every filter direct
  const std::vector<opmath_t> w = bank_values<opmath_t>(bank);
  for (int64_t k = 1; k <= K; ++k) {
    if (plan && plan->factored(k - 1)) {
      kb.factored.push_back(k);
    } else {
      kb.direct.push_back(k);
      kb.direct_weights.insert(kb.direct_weights.end(), w.begin() + (k - 1) * taps, w.begin() + k * taps);
    }
  }
  if (!plan) return kb;
  auto put = [&](const std::vector<double>& v, std::vector<opmath_t>& dst) {
    for (const double x : v) dst.push_back(static_cast<opmath_t>(x));
  };
  kb.num_columns = static_cast<int64_t>(plan->columns.size());
  for (const auto& column : plan->columns) put(column, kb.columns);
  kb.term_begin.push_back(0);
  for (const int64_t k : kb.factored) {
    for (const auto& term : plan->terms[k - 1]) {
      kb.term_column.push_back(term.column);
      put(term.row, kb.term_rows);
    }
    kb.term_begin.push_back(static_cast<int64_t>(kb.term_column.size()));
  }
  return kb;
}

// correlate<KB, ...> for a run-time KB in 1..4, no accumulation: KB column passes at once.
template <typename opmath_t>
void correlate_columns(int64_t kb, const opmath_t* src, const int64_t* off, const opmath_t* w, int64_t taps,
                       opmath_t* const* dst, int64_t len) {
  switch (kb) {
    case 4: correlate<4, 2, false>(src, off, w, taps, taps, dst, len); break;
    case 3: correlate<3, 2, false>(src, off, w, taps, taps, dst, len); break;
    case 2: correlate<2, 3, false>(src, off, w, taps, taps, dst, len); break;
    default: correlate<1, 4, false>(src, off, w, taps, taps, dst, len); break;
  }
}

// Offsets of the S1*S2 taps in a staged tile whose rows hold `layout.values()` pixels of Cv values.
std::vector<int64_t> tap_offsets(int64_t s1, int64_t s2, const RowLayout& layout, int64_t cv) {
  std::vector<int64_t> off(s1 * s2);
  for (int64_t a = 0; a < s1; ++a)
    for (int64_t b = 0; b < s2; ++b) off[a * s2 + b] = (a * layout.values() + layout.at(b)) * cv;
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

bool is_channels_last(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
}

// Strided NCHW passes of direct filters run plane by plane. Rows at a stride are short (a wavelet level of a
// 56-pixel map has 28-pixel rows), and row by row the correlation spent more on each call's setup and partial last
// vector than on its arithmetic. A task's padded rows are staged as sh*sw polyphase planes instead: plane
// (r % sh, q % sw) holds padded pixel (r, q) at row r / sh, column q / sw, each plane row `pitch` values. Every tap
// of every output of the task is then one offset into contiguous memory, the task is one correlation over its
// rows * pitch values. A plane row holds the Wo + (S2-1)/sw pixels the outputs of a row read; when that is Wo (a
// stride as wide as the filter, as in the Haar transform) and a map's rows are contiguous, the correlation writes the
// maps in place, else into rows of `pitch` values whose last (S2-1)/sw are dropped.
struct Planes {
  int64_t sh, sw, rows, pitch;
  int64_t size() const { return rows * pitch; }
  int64_t at(int64_t r, int64_t q) const { return ((r % sh) * sw + q % sw) * size() + (r / sh) * pitch + q / sw; }
};

// The forward of every filter when all are direct, y in NCHW (any strides) and a stride > 1.
template <typename scalar_t>
void forward_planes(const at::Tensor& y, const KernelBank<at::opmath_type<scalar_t>>& kb, const BranchArgs& a,
                    at::Tensor& out) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t C = a.C, H = a.H, W = a.W, Ho = a.out_h, Wo = a.out_w, K = a.K, sh = a.stride_h, sw = a.stride_w;
  const int64_t S1 = kb.S1, S2 = kb.S2, taps = S1 * S2;
  const SamePad& pad = a.pad;
  const int64_t pw = W + S2 - 1, pitch = Wo + (S2 - 1) / sw;
  // Per output row: sh padded rows (sh*sw plane rows) and K rows of maps, each about `pitch` values.
  const Tiling tl = make_tiling(C, Ho, pitch, sh * sw + K, (S1 - 1) / sh, /*channels_last=*/false, sizeof(opmath_t));
  const Planes planes{sh, sw, tl.rows + (S1 - 1) / sh, pitch};  // every task's plane geometry
  std::vector<int64_t> off(taps);
  for (int64_t r = 0; r < S1; ++r)
    for (int64_t q = 0; q < S2; ++q) off[r * S2 + q] = planes.at(r, q);
  const int64_t map_len = tl.rows * pitch + kSlack<opmath_t>;
  const scalar_t* y_ptr = y.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
  const int64_t osW = out.stride(3), slot_osC = a.channel_step() * out.stride(1);
  const bool in_place = std::is_same_v<scalar_t, opmath_t> && pitch == Wo && osW == 1 && out.stride(2) == Wo;

  at::parallel_for(0, tl.tasks(a.N), tl.grain(Wo, K + 1), [&](int64_t begin, int64_t end) {
    // The last tap of the last dropped output reads (S2-1)/sw < pitch values past the planes.
    std::vector<opmath_t> tile(sh * sw * planes.size() + pitch + kSlack<opmath_t>);
    std::vector<opmath_t> row(pw), maps(K * map_len);
    std::vector<opmath_t*> dst(K);
    for (int64_t id = begin; id < end; ++id) {
      for (int64_t k = 0; k < K; ++k) dst[k] = maps.data() + k * map_len;
      const Task t = locate(tl, id, C, Ho);
      const int64_t n = t.i1 - t.i0;
      const View v{H, W, y.stride(2), y.stride(3), y.stride(1), 1};
      const scalar_t* base = y_ptr + t.n * y.stride(0) + t.c0 * y.stride(1);
      for (int64_t r = 0; r < (n - 1) * sh + S1; ++r) {
        opmath_t* dst = tile.data() + planes.at(r, 0);
        const int64_t source = pad_source_index(t.i0 * sh - pad.top + r, H, a.mode);
        if constexpr (std::is_same_v<scalar_t, opmath_t>) {
          // Float rows split straight from y; only the few border columns go pixel by pixel.
          if (sw == 2 && v.sW == 1 && source >= 0) {
            const scalar_t* src = base + source * v.sH;
            split_phases(src, W, 2, 1, pitch, dst, planes.size(), pad.left);
            for (int64_t q = 0; q < pw; ++q) {
              if (q == pad.left) q += W;
              if (q >= pw) break;
              if (q / 2 >= pitch) continue;
              const int64_t j = pad_source_index(q - pad.left, W, a.mode);
              dst[(q % 2) * planes.size() + q / 2] = j < 0 ? opmath_t(0) : src[j];
            }
            continue;
          }
        }
        stage_rows(base, v, t.i0 * sh - pad.top + r, 1, pad.left, pad.right, a.mode, row.data());
        split_phases(row.data(), pw, sw, 1, pitch, dst, planes.size());
      }
      scalar_t* out_task = out_ptr + t.n * out.stride(0) + t.i0 * out.stride(2);
      if constexpr (std::is_same_v<scalar_t, opmath_t>) {
        if (in_place) {
          for (int64_t k = 1; k <= K; ++k) dst[k - 1] = out_task + a.channel(a.slot(k), t.c0) * out.stride(1);
        }
      }
      correlate_branches(tile.data(), off.data(), kb.direct_weights.data(), taps, K, dst.data(), 1, n * pitch, 0);
      for (int64_t i = 0; i < n; ++i) {
        scalar_t* out_row = out_task + i * out.stride(2);
        if (a.identity)
          store_row(tile.data() + planes.at(i * sh + pad.top, pad.left), Wo, 1,
                    out_row + a.channel(0, t.c0) * out.stride(1), osW, slot_osC);
        if (!in_place)
          for (int64_t k = 1; k <= K; ++k)
            store_row(dst[k - 1] + i * pitch, Wo, 1, out_row + a.channel(a.slot(k), t.c0) * out.stride(1), osW,
                      slot_osC);
      }
    }
  });
}

// Output rows i0 .. i1 of every branch: stage the padded input rows they read (every sh-th row, polyphase columns
// for sw > 1), copy the identity from the staged centre, correlate the filters over contiguous memory and write
// each slot where `order` puts it.
template <typename scalar_t>
void forward_kernel(const at::Tensor& y, const at::Tensor& bank, const BranchArgs& a, at::Tensor& out) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t C = a.C, H = a.H, W = a.W, Ho = a.out_h, Wo = a.out_w, K = a.K, sh = a.stride_h;
  const int64_t S1 = bank.size(1), S2 = bank.size(2), taps = S1 * S2;
  const SamePad& pad = a.pad;
  const RowLayout layout = row_layout(W + S2 - 1, a.stride_w);
  const bool cl = is_channels_last(out);
  const KernelBank<opmath_t> kb = kernel_bank<opmath_t>(bank, Pass::Forward);
  const int64_t Kd = static_cast<int64_t>(kb.direct.size()), U = kb.num_columns;
  if (!cl && a.strided() && U == 0) return forward_planes<scalar_t>(y, kb, a, out);
  // A task's tile holds its staged rows and, for a factored bank, the U column passes of one row.
  const Tiling tl = make_tiling(C, Ho, layout.values(), sh + (U > 0 ? U : 0), S1 - 1, cl, sizeof(opmath_t));
  // The last channel block may be narrower; its taps sit at other offsets.
  const std::vector<int64_t> off_full = tap_offsets(S1, S2, layout, tl.cv);
  const std::vector<int64_t> off_tail = tap_offsets(S1, S2, layout, C % tl.cv == 0 ? tl.cv : C % tl.cv);
  const int64_t centre = pad.top * layout.values() + layout.at(pad.left);  // y's pixel (i*sh, j*sw), in pixels

  const scalar_t* y_ptr = y.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
  const int64_t osN = out.stride(0), osC = out.stride(1), osH = out.stride(2), osW = out.stride(3);
  const int64_t slot_osC = a.channel_step() * osC;  // between consecutive channels of one slot
  // Rows are written as runs: NCHW along W, channels_last along the channels of each pixel. float/double rows go
  // straight into the output where a slot's channels are contiguous; the others go through an opmath row.
  // (A one-channel channels_last output runs as NCHW rows whose pixels are (K+1) values apart: through `rows`.)
  TORCH_INTERNAL_ASSERT(tl.cv == 1 || osC == 1);
  const bool direct = std::is_same_v<scalar_t, opmath_t> && (tl.cv == 1 ? osW == 1 || Wo == 1 : slot_osC == 1);
  const int64_t staged_rows = (tl.rows - 1) * sh + S1;
  const int64_t row_len = layout.values() * tl.cv;  // values of one staged row (of a full channel block)

  at::parallel_for(0, tl.tasks(a.N), tl.grain(Wo, K + 1), [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> tile(staged_rows * row_len + kSlack<opmath_t>);
    std::vector<opmath_t> scratch(layout.pw * tl.cv);   // one padded row before the polyphase reordering
    std::vector<opmath_t> rows(K * Wo * tl.cv);          // one output row per filter, before conversion or scattering
    std::vector<opmath_t> columns(U * (row_len + kSlack<opmath_t>));  // the column passes of one output row
    std::vector<opmath_t*> dst(K);
    std::vector<const opmath_t*> terms;
    std::vector<int64_t> col_off(S1), row_off(S2);
    std::vector<bool> buffered(K + 1);  // filter k's row is in `rows`, still to be stored
    for (int64_t id = begin; id < end; ++id) {
      const Task t = locate(tl, id, C, Ho);
      const int64_t cv = t.cv, len = layout.values() * cv;
      const int64_t* off = (cv == tl.cv ? off_full : off_tail).data();
      for (int64_t r = 0; r < S1; ++r) col_off[r] = r * len;
      for (int64_t b = 0; b < S2; ++b) row_off[b] = layout.at(b) * cv;
      const View v{H, W, y.stride(2), y.stride(3), y.stride(1), cv};
      stage_rows_strided(y_ptr + t.n * y.stride(0) + t.c0 * y.stride(1), v, t.i0 * sh - pad.top,
                         (t.i1 - t.i0 - 1) * sh + S1, pad, a.mode, layout, scratch.data(), tile.data());
      auto slot_row = [&](int64_t b, int64_t i) { return out_ptr + t.n * osN + a.channel(b, t.c0) * osC + i * osH; };
      // Filter k's output row: in the output itself when it is a contiguous run there (NCHW float/double, or the
      // direct filters of a channels_last float/double row, written pixel by pixel), else in `rows`.
      auto row_for = [&](int64_t k, int64_t i, bool per_pixel) -> opmath_t* {
        if constexpr (std::is_same_v<scalar_t, opmath_t>) {
          if (direct && (cv == 1 || per_pixel)) {
            buffered[k] = false;
            return slot_row(a.slot(k), i);
          }
        }
        buffered[k] = true;
        return rows.data() + (k - 1) * Wo * cv;
      };
      for (int64_t i = t.i0; i < t.i1; ++i) {
        const opmath_t* src = tile.data() + (i - t.i0) * sh * len;
        // The identity is y itself, copied from the staged centre: exact for every dtype.
        if (a.identity) store_row(src + centre * cv, Wo, cv, slot_row(0, i), osW, slot_osC);
        if (Kd > 0) {
          for (int64_t j = 0; j < Kd; ++j) dst[j] = row_for(kb.direct[j], i, /*per_pixel=*/true);
          const bool in_place = !buffered[kb.direct[0]];
          correlate_branches(src, off, kb.direct_weights.data(), taps, Kd, dst.data(), cv == 1 ? 1 : Wo,
                             cv == 1 ? Wo : cv, in_place ? osW : cv);
        }
        if (U > 0) {
          // Column passes over the whole staged row (every phase), up to four columns per pass over the input.
          for (int64_t u = 0; u < U; u += 4) {
            opmath_t* column_dst[4];
            const int64_t n = std::min<int64_t>(4, U - u);
            for (int64_t c = 0; c < n; ++c) column_dst[c] = columns.data() + (u + c) * (row_len + kSlack<opmath_t>);
            correlate_columns(n, src, col_off.data(), kb.columns.data() + u * S1, S1, column_dst, len);
          }
          // Row passes: each factored filter sums its terms' rows of the column passes in registers.
          for (size_t j = 0; j < kb.factored.size(); ++j) {
            terms.clear();
            for (int64_t e = kb.term_begin[j]; e < kb.term_begin[j + 1]; ++e)
              terms.push_back(columns.data() + kb.term_column[e] * (row_len + kSlack<opmath_t>));
            correlate_sum<false>(terms.data(), static_cast<int64_t>(terms.size()), row_off.data(),
                                 kb.term_rows.data() + kb.term_begin[j] * S2, S2,
                                 row_for(kb.factored[j], i, /*per_pixel=*/false), Wo * cv);
          }
        }
        for (int64_t k = 1; k <= K; ++k)
          if (buffered[k])
            store_row(rows.data() + (k - 1) * Wo * cv, Wo, cv, slot_row(a.slot(k), i), osW, slot_osC);
      }
    }
  });
}

// The backward gathers: every element of dL/dy sums the taps that reach it, so each task writes only its own rows,
// with no atomics, and the result does not depend on the blocking or the thread count.
//
// Polyphase: the adjoint of a stride-(sh, sw) correlation sends g_k[o][x] to padded pixel (o*sh + a, x*sw + b) with
// weight F_k[a][b]. Padded row p gathers only the rows o with a = p - o*sh in [0, S1); padded column q = rho + sw*m
// (phase rho) gathers only the taps b = rho + sw*d, from x = m - d. So each phase is a plain correlation of the
// gradient as stored (never zero-inserted) with its own taps, and the phases are interleaved when stored.

inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline int64_t ceil_div(int64_t a, int64_t b) { return floor_div(a + b - 1, b); }

// One gather pass: L sources, each a set of staged rows o (pointers at pixel x = 0), and their S1 x S2 taps.
template <typename opmath_t>
struct Gather {
  const opmath_t* const* rows;  // rows[l * n_rows + (o - o_first)]
  int64_t L, o_first, n_rows;
  const opmath_t* w;  // w[(l * S1 + a) * S2 + b]
  int64_t S1, S2, sh;
};

// dst[r][e] (+)= sum_l sum_o sum_t w[l][a][b[t]] * rows(l, o)[shift + e - dcv[t]] for e in [0, len), where
// a = p0 + r - o*sh must lie in [0, S1), for the nr <= R padded rows p0 .. p0+nr-1 at once.
//
// Register-blocked across rows and branches: one load of a source vector feeds every output row it reaches (S1 of
// them at stride 1), and all sources and taps of an output vector are summed in registers before the one store. A
// 3x3 K=4 backward thus loads (S1+R-1)/R source vectors per row tap instead of S1, and stores each output once.
// Measured on the 2-core AMD EPYC (one thread, CPU time, y = 1x32x96x96 float32), this did not make the 3x3 K=4
// backward faster than the row-at-a-time gather it replaced (0.86-0.91 ms against 0.83-0.91), nor did compile-time
// row taps: each live branch costs about the same 0.6 ns per pixel, and a cpu-clock profile puts as much time in
// staging g's rows (memcpy, the first touch of g) as in the FMAs. What the gather saves is the strided backward's
// zero-inserted work. Rows must be readable kSlack elements past shift + len.
template <int R, int U, bool kAccumulate, typename opmath_t>
void gather_rows(const Gather<opmath_t>& g, int64_t p0, int64_t nr, const int64_t* b, const int64_t* dcv, int64_t nt,
                 int64_t shift, opmath_t* const* dst, int64_t len) {
  using Vec = at::vec::Vectorized<opmath_t>;
  constexpr int64_t V = Vec::size();
  static_assert(U * V <= kSlack<opmath_t>, "slack too small for one step");
  const int64_t o_lo = std::max(g.o_first, ceil_div(p0 - g.S1 + 1, g.sh));
  const int64_t o_hi = std::min(g.o_first + g.n_rows, floor_div(p0 + nr - 1, g.sh) + 1);
  auto step = [&](int64_t e, Vec (&acc)[R][U]) {
    for (int64_t l = 0; l < g.L; ++l) {
      for (int64_t o = o_lo; o < o_hi; ++o) {
        const opmath_t* row = g.rows[l * g.n_rows + (o - g.o_first)] + shift + e;
        const int64_t a0 = p0 - o * g.sh;  // row tap of output row r: a0 + r
        const int64_t r_lo = std::max<int64_t>(0, -a0), r_hi = std::min<int64_t>(nr, g.S1 - a0);
        const opmath_t* wl = g.w + (l * g.S1 + a0) * g.S2;
        for (int64_t t = 0; t < nt; ++t) {
          const opmath_t* s = row - dcv[t];
          Vec in[U];
          for (int u = 0; u < U; ++u) in[u] = Vec::loadu(s + u * V);
          for (int r = 0; r < R; ++r) {
            if (r < r_lo || r >= r_hi) continue;
            const Vec wv(wl[r * g.S2 + b[t]]);
            for (int u = 0; u < U; ++u) acc[r][u] = at::vec::fmadd(wv, in[u], acc[r][u]);
          }
        }
      }
    }
  };
  int64_t e = 0;
  for (; e + U * V <= len; e += U * V) {
    Vec acc[R][U];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < U; ++u) acc[r][u] = kAccumulate && r < nr ? Vec::loadu(dst[r] + e + u * V) : Vec(0);
    step(e, acc);
    for (int r = 0; r < nr && r < R; ++r)
      for (int u = 0; u < U; ++u) acc[r][u].store(dst[r] + e + u * V);
  }
  if (e == len) return;
  // The tail runs full vectors over the slack and keeps only its len - e values.
  const int64_t n = len - e;
  alignas(64) opmath_t buf[R][U * V];
  Vec acc[R][U];
  for (int r = 0; r < R; ++r) {
    std::fill(buf[r], buf[r] + U * V, opmath_t(0));
    if (kAccumulate && r < nr) std::copy(dst[r] + e, dst[r] + len, buf[r]);
    for (int u = 0; u < U; ++u) acc[r][u] = Vec::loadu(buf[r] + u * V);
  }
  step(e, acc);
  for (int r = 0; r < nr && r < R; ++r) {
    for (int u = 0; u < U; ++u) acc[r][u].store(buf[r] + u * V);
    std::copy(buf[r], buf[r] + n, dst[r] + e);
  }
}

template <typename opmath_t>
void gather_rows_any(const Gather<opmath_t>& g, int64_t p0, int64_t nr, const int64_t* b, const int64_t* dcv,
                     int64_t nt, int64_t shift, opmath_t* const* dst, int64_t len, bool accumulate) {
  constexpr int64_t V = at::vec::Vectorized<opmath_t>::size();
  const bool one = nr == 1, short_run = len < 2 * V;
  switch ((one ? 1 : 0) + (short_run ? 2 : 0) + (accumulate ? 4 : 0)) {
    case 0: gather_rows<4, 2, false>(g, p0, nr, b, dcv, nt, shift, dst, len); break;
    case 1: gather_rows<1, 4, false>(g, p0, nr, b, dcv, nt, shift, dst, len); break;
    case 2: gather_rows<4, 1, false>(g, p0, nr, b, dcv, nt, shift, dst, len); break;
    case 3: gather_rows<1, 1, false>(g, p0, nr, b, dcv, nt, shift, dst, len); break;
    case 4: gather_rows<4, 2, true>(g, p0, nr, b, dcv, nt, shift, dst, len); break;
    case 5: gather_rows<1, 4, true>(g, p0, nr, b, dcv, nt, shift, dst, len); break;
    case 6: gather_rows<4, 1, true>(g, p0, nr, b, dcv, nt, shift, dst, len); break;
    default: gather_rows<1, 1, true>(g, p0, nr, b, dcv, nt, shift, dst, len); break;
  }
}

// The column taps of each phase: phase rho of a stride-sw pass over S2 taps gathers taps b = rho + sw*d from x = m - d
// (pixel offsets d*cv).
struct Phases {
  int64_t sw;
  std::vector<std::vector<int64_t>> b, dcv;
};

Phases make_phases(int64_t S2, int64_t sw, int64_t cv) {
  Phases ph{sw, std::vector<std::vector<int64_t>>(sw), std::vector<std::vector<int64_t>>(sw)};
  for (int64_t rho = 0; rho < sw; ++rho)
    for (int64_t d = 0; rho + sw * d < S2; ++d) {
      ph.b[rho].push_back(rho + sw * d);
      ph.dcv[rho].push_back(d * cv);
    }
  return ph;
}

// Padded rows p0 .. p0+nr-1 (nr <= 4), padded columns [qa, qb), of one gather pass into dst[r] (column q at
// (q - qa)*cv): at stride 1 in place, else phase by phase through `phase_buf` (4 rows of `phase_pitch`), interleaved.
template <typename opmath_t>
void gather_columns(const Gather<opmath_t>& g, const Phases& ph, int64_t cv, int64_t p0, int64_t nr, int64_t qa,
                    int64_t qb, opmath_t* const* dst, bool accumulate, opmath_t* phase_buf, int64_t phase_pitch) {
  const int64_t sw = ph.sw;
  if (sw == 1) {
    gather_rows_any(g, p0, nr, ph.b[0].data(), ph.dcv[0].data(), static_cast<int64_t>(ph.b[0].size()), qa * cv, dst,
                    (qb - qa) * cv, accumulate);
    return;
  }
  opmath_t* pb[4];
  for (int64_t r = 0; r < nr; ++r) pb[r] = phase_buf + r * phase_pitch;
  for (int64_t rho = 0; rho < sw; ++rho) {
    const int64_t mb = ceil_div(qa - rho, sw), nm = ceil_div(qb - rho, sw) - mb;
    if (nm <= 0) continue;
    const int64_t nt = static_cast<int64_t>(ph.b[rho].size());
    if (nt == 0 && accumulate) continue;
    if (nt > 0) gather_rows_any(g, p0, nr, ph.b[rho].data(), ph.dcv[rho].data(), nt, mb * cv, pb, nm * cv, false);
    for (int64_t r = 0; r < nr; ++r) {
      opmath_t* d = dst[r] + (rho + sw * mb - qa) * cv;
      const opmath_t* s = pb[r];
      const int64_t step = sw * cv;
      if (nt == 0) {
        for (int64_t k = 0; k < nm; ++k) std::fill(d + k * step, d + k * step + cv, opmath_t(0));
      } else if (cv == 1) {
        if (accumulate) {
          for (int64_t k = 0; k < nm; ++k) d[k * step] += s[k];
        } else {
          for (int64_t k = 0; k < nm; ++k) d[k * step] = s[k];
        }
      } else {
        for (int64_t k = 0; k < nm; ++k)
          for (int64_t c = 0; c < cv; ++c) d[k * step + c] = (accumulate ? d[k * step + c] : opmath_t(0)) + s[k * cv + c];
      }
    }
  }
}

// dst[j] (+)= the phase rows' value of padded column q = j + lpad, for j in [0, W): phase q % sw (its row at
// row + (q % sw) * phase_stride) at q / sw.
template <bool kAccumulate, typename opmath_t>
void interleave_phases(const opmath_t* row, int64_t phase_stride, int64_t sw, int64_t lpad, int64_t W, opmath_t* dst) {
  using Vec = at::vec::Vectorized<opmath_t>;
  constexpr int64_t V = Vec::size();
  if (sw == 2) {
    // Even columns j = 2k read a[k], odd ones b[k]: interleave a vector of each, the last pair in part.
    const opmath_t* a = row + (lpad % 2) * phase_stride + lpad / 2;
    const opmath_t* b = row + ((lpad + 1) % 2) * phase_stride + (lpad + 1) / 2;
    const int64_t even = (W + 1) / 2, odd = W / 2;
    for (int64_t k = 0; k < even; k += V) {
      const auto pair = at::vec::interleave2(Vec::loadu(a + k, std::min(even - k, V)),
                                             Vec::loadu(b + k, std::max<int64_t>(0, std::min(odd - k, V))));
      const int64_t left = W - 2 * k;  // columns from 2k on
      const int64_t n0 = std::min(left, V), n1 = std::max<int64_t>(0, std::min(left - V, V));
      (kAccumulate ? Vec::loadu(dst + 2 * k, n0) + pair.first : pair.first).store(dst + 2 * k, n0);
      if (n1 > 0)
        (kAccumulate ? Vec::loadu(dst + 2 * k + V, n1) + pair.second : pair.second).store(dst + 2 * k + V, n1);
    }
    return;
  }
  for (int64_t pc = 0; pc < sw; ++pc) {
    const opmath_t* src = row + pc * phase_stride;
    const int64_t j0 = ((pc - lpad) % sw + sw) % sw, m0 = (j0 + lpad) / sw;
    if (sw == 1 && kAccumulate) {
      at::vec::map2([](Vec x, Vec y) { return x + y; }, dst, dst, src + m0, W);
    } else if (sw == 1) {
      std::copy_n(src + m0, W, dst);
    } else {
      for (int64_t j = j0, m = m0; j < W; j += sw, ++m) dst[j] = (kAccumulate ? dst[j] : opmath_t(0)) + src[m];
    }
  }
}

// The strided backward plane by plane (see forward_planes), for live filters that are all direct, g in NCHW and
// zero padding. A task stages each live gradient's rows once, with Dr zero rows above and Dc zero pixels to the left.
// Padded pixel (pr + sh*mr, pc + sw*mc) of the adjoint gathers only the taps (pr + sh*dr, pc + sw*dc), from
// gradient pixel (mr - dr, mc - dc): so each phase (pr, pc) is one correlation of the staged rows over the whole task,
// and the phases are interleaved into dL/dy's rows.
template <typename scalar_t>
void backward_planes(const at::Tensor& g, const std::vector<int64_t>& live,
                     const std::vector<at::opmath_type<scalar_t>>& weights, int64_t S1, int64_t S2, const BranchArgs& a,
                     at::Tensor& grad_y) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t C = a.C, H = a.H, W = a.W, Ho = a.out_h, Wo = a.out_w, sh = a.stride_h, sw = a.stride_w;
  const int64_t taps = S1 * S2, L = static_cast<int64_t>(live.size()), P = sh * sw;
  const SamePad& pad = a.pad;
  const int64_t Dr = (S1 - 1) / sh, Dc = (S2 - 1) / sw;
  const int64_t Mc = (pad.left + W - 1) / sw + 1;  // phase columns the image's columns reach
  const int64_t pitch = Dc + std::max(Wo, Mc);     // of staged gradient rows and of phase rows
  // Per image row: L/sh staged gradient rows and sw phase rows (sh*sw phases, one row each per sh image rows).
  const Tiling tl = make_tiling(C, H, pitch, (L + P + sh - 1) / sh + 1, Dr, /*channels_last=*/false, sizeof(opmath_t));
  const int64_t max_phase_rows = (tl.rows + sh - 1) / sh + 1;
  // Each phase's taps: offsets into the staged rows and, per source, weights.
  std::vector<std::vector<int64_t>> phase_off(P);
  std::vector<std::vector<opmath_t>> phase_w(P);
  for (int64_t pr = 0; pr < sh; ++pr)
    for (int64_t pc = 0; pc < sw; ++pc) {
      std::vector<int64_t>& off = phase_off[pr * sw + pc];
      for (int64_t ra = pr, dr = 0; ra < S1; ra += sh, ++dr)
        for (int64_t cb = pc, dc = 0; cb < S2; cb += sw, ++dc) off.push_back((Dr - dr) * pitch + Dc - dc);
      for (int64_t l = 0; l < L; ++l)
        for (int64_t ra = pr; ra < S1; ra += sh)
          for (int64_t cb = pc; cb < S2; cb += sw) phase_w[pr * sw + pc].push_back(weights[l * taps + ra * S2 + cb]);
    }
  const int64_t stage_len = (max_phase_rows + Dr + 1) * pitch + kSlack<opmath_t>;
  const int64_t phase_len = max_phase_rows * pitch + kSlack<opmath_t>;
  const bool identity_live = a.identity && !a.stopped[0];
  const scalar_t* g_ptr = g.const_data_ptr<scalar_t>();
  scalar_t* gy_ptr = grad_y.mutable_data_ptr<scalar_t>();

  at::parallel_for(0, tl.tasks(a.N), tl.grain(W, a.K + 1), [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> stage(L * stage_len), phases(P * phase_len), acc(tl.rows * W);
    std::vector<const opmath_t*> sources(L);
    for (int64_t l = 0; l < L; ++l) sources[l] = stage.data() + l * stage_len;
    for (int64_t id = begin; id < end; ++id) {
      const Task t = locate(tl, id, C, H);
      const int64_t mr0 = (t.i0 + pad.top) / sh, nm = (t.i1 + pad.top - 1) / sh + 1 - mr0;
      const View v{Ho, Wo, g.stride(2), g.stride(3), a.channel_step() * g.stride(1), 1};
      auto g_slot = [&](int64_t b) { return g_ptr + t.n * g.stride(0) + a.channel(b, t.c0) * g.stride(1); };
      for (int64_t l = 0; l < L; ++l) {
        const scalar_t* base = g_slot(a.slot(live[l]));
        opmath_t* row = stage.data() + l * stage_len;
        for (int64_t o = mr0 - Dr; o < mr0 + nm; ++o, row += pitch) {
          if (o < 0 || o >= Ho) {
            std::fill(row, row + pitch, opmath_t(0));
            continue;
          }
          std::fill(row, row + Dc, opmath_t(0));
          copy_pixels(base + o * g.stride(2), v, Wo, 1, row + Dc);
          std::fill(row + Dc + Wo, row + pitch, opmath_t(0));
        }
      }
      for (int64_t phase = 0; phase < P && L > 0; ++phase) {
        const int64_t nt = static_cast<int64_t>(phase_off[phase].size());
        opmath_t* dst = phases.data() + phase * phase_len;
        if (nt == 0) {
          std::fill(dst, dst + nm * pitch, opmath_t(0));
        } else {
          correlate_sum<false>(sources.data(), L, phase_off[phase].data(), phase_w[phase].data(), nt, dst, nm * pitch);
        }
      }
      // This task's rows of dL/dy: in place where they are float or double rows of W values, W apart.
      const int64_t n = t.i1 - t.i0;
      scalar_t* gy_base = gy_ptr + t.n * grad_y.stride(0) + t.c0 * grad_y.stride(1);
      opmath_t* rows = acc.data();
      if constexpr (std::is_same_v<scalar_t, opmath_t>) {
        if (grad_y.stride(3) == 1 && grad_y.stride(2) == W) rows = gy_base + t.i0 * W;
      }
      if (identity_live) identity_adjoint_rows(g_slot(0), v, sh, sw, t.i0, n, W, rows);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t p = t.i0 + i + pad.top;
        const opmath_t* row = phases.data() + (p % sh) * sw * phase_len + (p / sh - mr0) * pitch;
        if (L == 0) {
          if (!identity_live) std::fill(rows + i * W, rows + (i + 1) * W, opmath_t(0));
        } else if (identity_live) {
          interleave_phases<true>(row, phase_len, sw, pad.left, W, rows + i * W);
        } else {
          interleave_phases<false>(row, phase_len, sw, pad.left, W, rows + i * W);
        }
      }
      if (rows == acc.data())
        for (int64_t i = 0; i < n; ++i)
          store_row(rows + i * W, W, 1, gy_base + (t.i0 + i) * grad_y.stride(2), grad_y.stride(3), grad_y.stride(1));
    }
  });
}

// Rows i0 .. i1 of dL/dy: the identity's gradient plus, for every live filter, the adjoint of its padded strided
// correlation (polyphase, above). A factored filter's adjoint is the transpose of its forward: each term's row pass
// transposed (a stride-sw row gather of g_k, summed per column u into h_u) and then column u's pass transposed (a
// stride-sh row gather of h_u), so the bank's column passes stay shared.
template <typename scalar_t>
void backward_kernel(const at::Tensor& g, const at::Tensor& bank, const BranchArgs& a, at::Tensor& grad_y) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t C = a.C, H = a.H, W = a.W, Ho = a.out_h, Wo = a.out_w, sh = a.stride_h, sw = a.stride_w;
  const int64_t S1 = bank.size(1), S2 = bank.size(2), taps = S1 * S2;
  const SamePad& pad = a.pad;
  const PadMode mode = a.mode;
  const int64_t pw = W + S2 - 1;  // width of the padded image: the adjoint's columns
  const KernelBank<opmath_t> kb = kernel_bank<opmath_t>(bank, Pass::Backward);
  // Live filters (whose gradient reaches y) are staged, the direct ones first.
  std::vector<int64_t> live;
  std::vector<opmath_t> wl;  // the live direct filters' taps
  for (size_t j = 0; j < kb.direct.size(); ++j) {
    if (a.stopped[kb.direct[j]]) continue;
    live.push_back(kb.direct[j]);
    wl.insert(wl.end(), kb.direct_weights.begin() + j * taps, kb.direct_weights.begin() + (j + 1) * taps);
  }
  const int64_t Ld = static_cast<int64_t>(live.size());
  // Group u sums the transposed row passes of every live term on column u.
  struct Group {
    int64_t column;
    std::vector<int64_t> sources;  // staged slices (indices into live)
    std::vector<opmath_t> rows;    // their rows, S2 each
  };
  std::vector<Group> groups;
  for (int64_t u = 0; u < kb.num_columns; ++u) {
    Group grp{u, {}, {}};
    for (size_t j = 0; j < kb.factored.size(); ++j) {
      const int64_t k = kb.factored[j];
      if (a.stopped[k]) continue;
      for (int64_t e = kb.term_begin[j]; e < kb.term_begin[j + 1]; ++e) {
        if (kb.term_column[e] != u) continue;
        const auto it = std::find(live.begin(), live.end(), k);
        grp.sources.push_back(it - live.begin());
        if (it == live.end()) live.push_back(k);
        grp.rows.insert(grp.rows.end(), kb.term_rows.begin() + e * S2, kb.term_rows.begin() + (e + 1) * S2);
      }
    }
    if (!grp.sources.empty()) groups.push_back(std::move(grp));
  }
  std::vector<opmath_t> group_columns;  // column of each group, S1 each
  for (const Group& grp : groups)
    group_columns.insert(group_columns.end(), kb.columns.begin() + grp.column * S1,
                         kb.columns.begin() + (grp.column + 1) * S1);
  const int64_t L = static_cast<int64_t>(live.size()), G = static_cast<int64_t>(groups.size());
  if (!is_channels_last(grad_y) && a.strided() && G == 0 && mode == PadMode::Zeros)
    return backward_planes<scalar_t>(g, live, wl, S1, S2, a, grad_y);
  // A staged gradient row: E zero pixels (the widest phase's reach to the left), the Wo pixels, zeros up to the last
  // column any phase reads.
  const int64_t E = (S2 - 1) / sw, Wg = E + std::max(Wo, ceil_div(pw, sw));
  const bool cl = is_channels_last(grad_y);
  const Tiling tl =
      make_tiling(C, H, (std::max<int64_t>(L, 1) * Wg + G * pw) / sh + W + pw, 1, (S1 - 1) / sh, cl, sizeof(opmath_t));
  const int64_t max_rows = (tl.rows + S1 - 2) / sh + 2;  // gradient rows one run of padded rows reads
  const bool identity_live = a.identity && !a.stopped[0];
  const int64_t cv_tail = C % tl.cv == 0 ? tl.cv : C % tl.cv;
  const Phases g_phases_full = make_phases(S2, sw, tl.cv), g_phases_tail = make_phases(S2, sw, cv_tail);
  const Phases h_phases_full = make_phases(1, 1, tl.cv), h_phases_tail = make_phases(1, 1, cv_tail);

  const scalar_t* g_ptr = g.const_data_ptr<scalar_t>();
  scalar_t* gy_ptr = grad_y.mutable_data_ptr<scalar_t>();
  const int64_t slot_gsC = a.channel_step() * g.stride(1);
  constexpr int64_t kRows = 4;  // the gather's row block

  at::parallel_for(0, tl.tasks(a.N), tl.grain(W, a.K + 1), [&](int64_t begin, int64_t end) {
    const int64_t g_pitch = Wg * tl.cv, h_pitch = pw * tl.cv;
    std::vector<opmath_t> stage(L * max_rows * g_pitch + kSlack<opmath_t>);  // rows of every live g_k
    std::vector<opmath_t> h(G * max_rows * h_pitch + kSlack<opmath_t>);      // each group's transposed row passes
    std::vector<opmath_t> acc(tl.rows * W * tl.cv);                          // this task's rows of dL/dy
    std::vector<opmath_t> adj(kRows * h_pitch);                              // padded rows, border columns included
    const int64_t phase_pitch = ceil_div(pw, sw) * tl.cv + kSlack<opmath_t>;
    std::vector<opmath_t> phase_buf(kRows * phase_pitch);
    std::vector<const opmath_t*> g_rows(L * max_rows), h_rows(G * max_rows), term_rows;
    for (int64_t id = begin; id < end; ++id) {
      const Task t = locate(tl, id, C, H);
      const int64_t cv = t.cv;
      const Phases& g_phases = cv == tl.cv ? g_phases_full : g_phases_tail;
      const Phases& h_phases = cv == tl.cv ? h_phases_full : h_phases_tail;
      const View v{Ho, Wo, g.stride(2), g.stride(3), slot_gsC, cv};
      auto g_slot = [&](int64_t b) { return g_ptr + t.n * g.stride(0) + a.channel(b, t.c0) * g.stride(1); };

      // Padded rows [p0, p1) into `put(p, row)` (row: padded columns [qa, qb)), or added in place into acc.
      auto run_rows = [&](int64_t p0, int64_t p1, int64_t qa, int64_t qb, bool in_place, auto&& put) {
        const int64_t o0 = std::max<int64_t>(0, ceil_div(p0 - S1 + 1, sh));
        const int64_t o1 = std::min(Ho, floor_div(p1 - 1, sh) + 1);
        const int64_t nO = std::max<int64_t>(0, o1 - o0);
        for (int64_t l = 0; l < L; ++l) {
          const scalar_t* base = g_slot(a.slot(live[l]));
          for (int64_t o = o0; o < o1; ++o) {
            opmath_t* row = stage.data() + (l * max_rows + (o - o0)) * g_pitch;
            std::fill(row, row + E * cv, opmath_t(0));
            copy_pixels(base + o * g.stride(2), v, Wo, 1, row + E * cv);
            std::fill(row + (E + Wo) * cv, row + Wg * cv, opmath_t(0));
            g_rows[l * nO + (o - o0)] = row + E * cv;
          }
        }
        // h_u[o][q] for every padded column q, one row at a time.
        for (int64_t u = 0; u < G; ++u) {
          const Group& grp = groups[u];
          const int64_t ns = static_cast<int64_t>(grp.sources.size());
          term_rows.resize(ns);
          for (int64_t o = o0; o < o1; ++o) {
            for (int64_t e = 0; e < ns; ++e) term_rows[e] = g_rows[grp.sources[e] * nO + (o - o0)];
            opmath_t* hrow = h.data() + (u * max_rows + (o - o0)) * h_pitch;
            h_rows[u * nO + (o - o0)] = hrow;
            const Gather<opmath_t> pass{term_rows.data(), ns, o, 1, grp.rows.data(), 1, S2, 1};
            gather_columns(pass, g_phases, cv, o, 1, 0, pw, &hrow, false, phase_buf.data(), phase_pitch);
          }
        }
        const Gather<opmath_t> direct{g_rows.data(), Ld, o0, nO, wl.data(), S1, S2, sh};
        const Gather<opmath_t> columns{h_rows.data(), G, o0, nO, group_columns.data(), S1, 1, sh};
        for (int64_t p = p0; p < p1; p += kRows) {
          const int64_t nr = std::min(kRows, p1 - p);
          opmath_t* dst[kRows];
          for (int64_t r = 0; r < nr; ++r)
            dst[r] = in_place ? acc.data() + ((p + r - pad.top - t.i0) * W - pad.left) * cv + qa * cv
                              : adj.data() + r * h_pitch;
          bool accumulate = in_place;
          if (Ld > 0) {
            gather_columns(direct, g_phases, cv, p, nr, qa, qb, dst, accumulate, phase_buf.data(), phase_pitch);
            accumulate = true;
          }
          if (G > 0) gather_columns(columns, h_phases, cv, p, nr, qa, qb, dst, accumulate, phase_buf.data(), phase_pitch);
          if (!in_place)
            for (int64_t r = 0; r < nr; ++r) put(p + r, dst[r]);
        }
      };
      // Padded row p's adjoint (all pw columns) added to the image row the padding copied it from, border columns to
      // the columns they copied (reflect etc.).
      auto fold = [&](int64_t p, const opmath_t* row) {
        const int64_t i = pad_source_index(p - pad.top, H, mode);
        if (i < t.i0 || i >= t.i1) return;
        opmath_t* dst = acc.data() + (i - t.i0) * W * cv;
        at::vec::map2([](auto x, auto y) { return x + y; }, dst, dst, row + pad.left * cv, W * cv);
        for (int64_t q = 0; q < pw; ++q) {
          if (q == pad.left) q += W;
          if (q >= pw) break;
          const int64_t j = pad_source_index(q - pad.left, W, mode);
          if (j < 0) continue;
          for (int64_t c = 0; c < cv; ++c) dst[j * cv + c] += row[q * cv + c];
        }
      };

      if (identity_live) {
        identity_adjoint_rows(g_slot(0), v, sh, sw, t.i0, t.i1 - t.i0, W, acc.data());
      } else {
        std::fill(acc.begin(), acc.begin() + (t.i1 - t.i0) * W * cv, opmath_t(0));
      }
      if (L > 0) {
        const int64_t p0 = t.i0 + pad.top, p1 = t.i1 + pad.top;
        if (mode == PadMode::Zeros) {
          run_rows(p0, p1, pad.left, pad.left + W, /*in_place=*/true, fold);
        } else {
          run_rows(p0, p1, 0, pw, /*in_place=*/false, fold);
          // Border rows of the padded image whose source row lies in this block.
          for (int64_t p = 0; p < H + S1 - 1; ++p) {
            if (p == pad.top) p += H;
            if (p >= H + S1 - 1) break;
            const int64_t i = pad_source_index(p - pad.top, H, mode);
            if (i >= t.i0 && i < t.i1) run_rows(p, p + 1, 0, pw, /*in_place=*/false, fold);
          }
        }
      }
      scalar_t* gy_base = gy_ptr + t.n * grad_y.stride(0) + t.c0 * grad_y.stride(1);
      for (int64_t i = t.i0; i < t.i1; ++i)
        store_row(acc.data() + (i - t.i0) * W * cv, W, cv, gy_base + i * grad_y.stride(2), grad_y.stride(3),
                  grad_y.stride(1));
    }
  });
}

// A fresh output of tens of MB would fault in 4 KiB at a time as the kernel writes it; see output_memory.cpp.
void forward_cpu(const at::Tensor& y, const at::Tensor& bank, const BranchArgs& args, at::Tensor& out) {
  prepare_output(out);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "fixed_branch_cpu",
                                  [&] { forward_kernel<scalar_t>(y, bank, args, out); });
}

void backward_cpu(const at::Tensor& grad_output, const at::Tensor& bank, const BranchArgs& args, at::Tensor& grad_y) {
  prepare_output(grad_y);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "fixed_branch_backward_cpu",
                                  [&] { backward_kernel<scalar_t>(grad_output, bank, args, grad_y); });
}

const bool registered = register_branch_kernels(c10::DeviceType::CPU, {&forward_cpu, &backward_cpu});

}  // namespace

}  // namespace fixedbranch
