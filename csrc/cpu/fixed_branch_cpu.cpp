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
// one correlation per task instead of one per row (planes.h). The parts: staging.h (rows in and out, tasks),
// correlate.h (the arithmetic and the bank as the kernels run it).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "cpu/cache.h"
#include "cpu/correlate.h"
#include "cpu/pixels.h"
#include "cpu/planes.h"
#include "cpu/staging.h"
#include "cpu/tiles.h"
#include "fixed_branch.h"
#include "output_memory.h"

namespace fixedbranch {
namespace {

using namespace cpu;  // NOLINT: the kernels' parts (staging.h, correlate.h, planes.h)

// Output rows i0 .. i1 of every branch: stage the padded input rows they read (every sh-th row, polyphase columns
// for sw > 1), copy the identity from the staged centre, correlate the filters over contiguous memory and write
// each slot where `order` puts it.
template <typename scalar_t>
void forward_kernel(const at::Tensor& y, const at::Tensor& bank, const BranchArgs& a, at::Tensor& out) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t C = a.C, H = a.H, W = a.W, Ho = a.out_h, Wo = a.out_w, K = a.K, sh = a.stride_h;
  const int64_t S1 = bank.size(1), S2 = bank.size(2);
  const SamePad& pad = a.pad;
  RowLayout layout = row_layout(W + S2 - 1, a.stride_w);
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    if (fits_tiles(y, out, bank, a)) return forward_tiles<scalar_t>(y, bank, a, out);
  }
  const bool cl = is_channels_last(out);
  const auto shared_kb = shared_kernel_bank<opmath_t>(bank, Pass::Forward, a.stride_w);
  const KernelBank<opmath_t>& kb = *shared_kb;
  const int64_t Kd = static_cast<int64_t>(kb.direct.size()), U = kb.num_columns;
  if (!cl && a.strided() && U == 0) return forward_planes<scalar_t>(y, kb, a, out);
  // 3x3 direct filters at their patterns (correlate_3x3) over NCHW rows at column stride 1: the staged rows are whole
  // vectors long and their tap-1 column (staged column 1) lies on a vector boundary, so that the correlation loads
  // aligned vectors and shifts lanes (correlate_3x3) where loads one pixel off the alignment split cache lines. The
  // 3x3 correlation alone (AMD EPYC, Zen 5, one core, in L2): 0.77x the time.
  constexpr int64_t kVec = at::vec::Vectorized<opmath_t>::size();
  const bool aligned_rows = kLaneShifts && !cl && a.stride_w == 1 && !kb.direct_patterns.empty();
  if (aligned_rows) layout.phase_len = (layout.phase_len + kVec - 1) / kVec * kVec;
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
  // Rows are written as runs: NCHW along W, channels_last along the channels of each pixel. NCHW float/double rows
  // go straight into the output; the others go through an opmath row, channels_last rows stored pixel by pixel.
  // (A one-channel channels_last output runs as NCHW rows whose pixels are (K+1) values apart: through `rows`.)
  TORCH_INTERNAL_ASSERT(tl.cv == 1 || osC == 1);
  const bool direct = std::is_same_v<scalar_t, opmath_t> && tl.cv == 1 && (osW == 1 || Wo == 1);
  const int64_t staged_rows = (tl.rows - 1) * sh + S1;
  const int64_t row_len = layout.values() * tl.cv;  // values of one staged row (of a full channel block)
  // Rows written straight into an output larger than the cache this process owns (NCHW rows, channels_last
  // pixels) are streamed past it (stream_store), not read from memory before being written: float32, 2 threads, on
  // the AMD EPYC at 37.6 and 150 MB outputs, a 3x3 bank of four took 0.87-0.93x the time and the DCT 5x5 bank
  // 0.80-0.86x; in channels_last (N8 C32 96x96, 47 MB out) 0.63-0.64x. On the Xeon guest see cache.h.
  // The store functions stream only contiguous runs of opmath_t (store_run).
  const bool stream_out = streaming_pays(static_cast<int64_t>(out.nbytes()));

  at::parallel_for(0, tl.tasks(a.N), tl.grain(Wo, K + 1), [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> tile(staged_rows * row_len + kSlack<opmath_t> + (aligned_rows ? 2 * kVec : 0));
    // Aligned rows start a vector in, so that the vector before a row's first centre vector lies in the buffer.
    opmath_t* const tile_rows = aligned_rows ? aligned_within(tile.data() + kVec + 1) - 1 : tile.data();
    std::vector<opmath_t> scratch(layout.pw * tl.cv);   // one padded row before the polyphase reordering
    std::vector<opmath_t> rows(K * Wo * tl.cv);          // one output row per filter, before conversion or scattering
    // The column passes of a factored bank: column u's row i (of the task) at column_plane(u) + (i - i0) * len, for
    // every row of the task when they run at once, else for the current row only.
    const int64_t plane_pitch = tl.rows * row_len + kSlack<opmath_t>;
    std::vector<opmath_t> columns(U * plane_pitch);
    auto column_plane = [&](int64_t u) { return columns.data() + u * plane_pitch; };
    std::vector<opmath_t*> dst(K), column_dst(U);
    for (int64_t u = 0; u < U; ++u) column_dst[u] = column_plane(u);
    std::vector<const opmath_t*> terms;
    std::vector<int64_t> col_off(S1), row_off(S2);
    std::vector<char> buffered(K + 1);  // filter k's row is in `rows`, still to be stored (bytes: tested a row)
    std::vector<const opmath_t*> slot_src(K + 1);  // channels_last: each slot's row
    std::vector<scalar_t*> slot_dst(K + 1);         // and where it goes
    std::vector<opmath_t> pixel_block(cl ? (K + 1) * tl.cv : 0);  // channels_last, channel order: one pixel's slots
    for (int64_t id = begin; id < end; ++id) {
      const Task t = locate(tl, id, C, Ho);
      const int64_t cv = t.cv, len = layout.values() * cv;
      const int64_t* off = (cv == tl.cv ? off_full : off_tail).data();
      for (int64_t r = 0; r < S1; ++r) col_off[r] = r * len;
      for (int64_t b = 0; b < S2; ++b) row_off[b] = layout.at(b) * cv;
      const View v{H, W, y.stride(2), y.stride(3), y.stride(1), cv};
      stage_rows_strided(y_ptr + t.n * y.stride(0) + t.c0 * y.stride(1), v, t.i0 * sh - pad.top,
                         (t.i1 - t.i0 - 1) * sh + S1, pad, a.mode, layout, scratch.data(), tile_rows);
      auto slot_row = [&](int64_t b, int64_t i) { return out_ptr + t.n * osN + a.channel(b, t.c0) * osC + i * osH; };
      // Filter k's output row: in the output itself when it is a contiguous run there (NCHW float/double), else in
      // `rows`.
      auto row_for = [&](int64_t k, int64_t i) -> opmath_t* {
        if constexpr (std::is_same_v<scalar_t, opmath_t>) {
          if (direct) {
            buffered[k] = false;
            return slot_row(a.slot(k), i);
          }
        }
        buffered[k] = true;
        return rows.data() + (k - 1) * Wo * cv;
      };
      // A factored bank's column passes over n staged rows from src (sh * len apart) into row 0 .. n-1 of each plane.
      auto column_passes = [&](const opmath_t* src, int64_t n) {
        correlate_blocks(U, src, sh * len, col_off.data(), kb.columns.data(), S1, column_dst.data(), len, n, len);
      };
      // The factored filters of several terms, output rows i .. i+n-1 (n > 1: in place, osH apart), from the
      // planes' row at `at` on.
      auto several_terms = [&](int64_t i, int64_t at, int64_t n) {
        for (const int64_t j : kb.several_terms) {
          terms.clear();
          for (int64_t e = kb.term_begin[j]; e < kb.term_begin[j + 1]; ++e)
            terms.push_back(column_plane(kb.term_column[e]) + at);
          correlate_sum(terms.data(), static_cast<int64_t>(terms.size()), row_off.data(),
                        kb.term_rows.data() + kb.term_begin[j] * S2, S2, row_for(kb.factored[j], i), Wo * cv,
                        n, len, osH);
        }
      };
      // NCHW float/double rows go straight into the output, all of the task's rows in one call: a call per row spent
      // on setting up what made the 3x3 bank's forward (y = 4x7x96x96 float32, 2 threads) take 0.184 ms instead of
      // 0.153. A factored bank runs its column passes over all the task's rows first, then each row pass over them.
      const bool rows_at_once = direct && cv == 1;
      // channels_last float/double in branch order: a slot's cv channels of a pixel are one run of the output, so the
      // direct filters correlate pixel by pixel (a pixel a row of cv values, osW apart) straight into it, not into
      // `rows` and then stored pixel by pixel. Whole vectors a pixel only: a partial one every pixel would cost more.
      const bool direct_pixels = std::is_same_v<scalar_t, opmath_t> && cl && a.order == Order::Branch &&
                                 cv % at::vec::Vectorized<opmath_t>::size() == 0;
      const int64_t n_rows = t.i1 - t.i0;
      if (rows_at_once && Kd > 0) {
        for (int64_t j = 0; j < Kd; ++j) dst[j] = row_for(kb.direct[j], t.i0);
        with_bool(stream_out, [&](auto stream) {
          correlate_direct<stream>(kb, tile_rows, sh * len, off, dst.data(), osH, n_rows, Wo, aligned_rows);
        });
      }
      if (rows_at_once && U > 0) {
        column_passes(tile_rows, n_rows);
        for (const auto& grp : kb.row_groups) {
          const int64_t nf = static_cast<int64_t>(grp.filters.size());
          for (int64_t f = 0; f < nf; ++f) dst[f] = row_for(kb.factored[grp.filters[f]], t.i0);
          with_bool(stream_out, [&](auto stream) {
            correlate_blocks<false, stream>(nf, column_plane(grp.column), len, row_off.data(), grp.rows.data(), S2,
                                            dst.data(), osH, n_rows, Wo);
          });
        }
        several_terms(t.i0, 0, n_rows);
      }
      for (int64_t i = t.i0; i < t.i1; ++i) {
        const opmath_t* src = tile_rows + (i - t.i0) * sh * len;
        // The identity is y itself, copied from the staged centre: exact for every dtype.
        if (a.identity && cv == 1) store_row(src + centre * cv, Wo, cv, slot_row(0, i), osW, slot_osC, stream_out);
        if constexpr (std::is_same_v<scalar_t, opmath_t>) {
          if (Kd > 0 && direct_pixels) {
            for (int64_t j = 0; j < Kd; ++j) {
              buffered[kb.direct[j]] = false;
              dst[j] = slot_row(a.slot(kb.direct[j]), i);
            }
            with_bool(stream_out, [&](auto stream) {
              correlate_direct<stream>(kb, src, cv, off, dst.data(), osW, Wo, cv);
            });
          }
        }
        if (Kd > 0 && !rows_at_once && !direct_pixels) {
          for (int64_t j = 0; j < Kd; ++j) dst[j] = row_for(kb.direct[j], i);
          correlate_direct(kb, src, 0, off, dst.data(), 0, 1, Wo * cv, aligned_rows);
        }
        if (U > 0 && !rows_at_once) {
          column_passes(src, 1);
          for (const auto& grp : kb.row_groups) {
            const int64_t nf = static_cast<int64_t>(grp.filters.size());
            for (int64_t f = 0; f < nf; ++f) dst[f] = row_for(kb.factored[grp.filters[f]], i);
            correlate_blocks(nf, column_plane(grp.column), 0, row_off.data(), grp.rows.data(), S2, dst.data(), 0, 1,
                             Wo * cv);
          }
          several_terms(i, 0, 1);
        }
        if (cv > 1) {
          // channels_last: every slot's row is buffered (row_for), and a pixel holds every slot's channels: the
          // slots are stored pixel by pixel, one stream through the output instead of K+1 strided passes.
          int64_t n = 0;
          if (a.identity) {
            slot_src[n] = src + centre * cv;
            slot_dst[n++] = slot_row(0, i);
          }
          for (int64_t k = 1; k <= K; ++k) {
            if (!buffered[k]) continue;
            slot_src[n] = rows.data() + (k - 1) * Wo * cv;
            slot_dst[n++] = slot_row(a.slot(k), i);
          }
          if (a.order == Order::Channel) {
            // Slot r's channel c lies at c * n + r of the pixel's run from slot_dst[0] on (n = B slots, in order).
            store_pixels_by_channel(slot_src.data(), n, Wo, cv, slot_dst[0], osW, pixel_block.data(), stream_out);
          } else {
            store_pixels(slot_src.data(), n, Wo, cv, slot_dst.data(), osW, slot_osC, stream_out);
          }
          continue;
        }
        // Rows at once: every map went straight into the output. Testing K flags a row (std::vector<bool>'s bits)
        // took a tenth of the DCT 5x5 forward's samples (K = 25); skipping it, float32, 2 threads: 0.94x the time at
        // 3.8 MB of output, 0.90x at stride 2 (9.6 MB), DCT 7x7 0.93x.
        if (rows_at_once) continue;
        for (int64_t k = 1; k <= K; ++k)
          if (buffered[k])
            store_row(rows.data() + (k - 1) * Wo * cv, Wo, cv, slot_row(a.slot(k), i), osW, slot_osC);
      }
    }
    if (stream_out) stream_fence();
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
  const opmath_t* zeros = nullptr;  // a row of zeros, laid out as a staged row: stands for rows outside the gradient
  // 0: the rows are staged between zeros. Else they are read where they lie, `width` values each, every value outside
  // them read as a zero (LaneWindow).
  int64_t width = 0;
  bool stream = false;  // the sums are final: whole vectors streamed past the caches (stream_store)
  const uint32_t* patterns = nullptr;  // 3x3 sources: the taps each multiplies (tap_pattern); null: every tap
};

// Whether source row i of a block of R output rows (S1 x S2 taps, stride 1) meets a tap of the pattern at column t.
constexpr bool pattern_reaches(uint32_t pattern, int R, int S1, int S2, int i, int t) {
  for (int r = 0; r < R; ++r) {
    const int a = S1 - 1 + r - i;
    if (a >= 0 && a < S1 && pattern_has(pattern, a * S2 + t)) return true;
  }
  return false;
}

// dst[r][e] (+)= sum_l sum_o sum_t w[l][a][b[t]] * rows(l, o)[shift + e - dcv[t]] for e in [0, len), where
// a = p0 + r - o*sh must lie in [0, S1), for the nr <= R padded rows p0 .. p0+nr-1 at once.
//
// Register-blocked across rows and branches: one load of a source vector feeds every output row it reaches (S1 of
// them at stride 1), and all sources and taps of an output vector are summed in registers before the one store. A
// 3x3 K=4 backward thus loads (S1+R-1)/R source vectors per row tap instead of S1, and stores each output once.
// Measured on the 2-core AMD EPYC (one thread, CPU time, y = 1x32x96x96 float32), this alone did not make the 3x3
// K=4 backward faster than the row-at-a-time gather it replaced (0.86-0.91 ms against 0.83-0.91): what it saved was
// the strided backward's zero-inserted work, until the compile-time taps below. Staged rows must be readable kSlack
// elements past shift + len.
//
// kS1 x kS2 > 0: the taps known at compile time, at stride 1 and for up to R rows (every tap b in order):
// each source's R + kS1 - 1 rows pass (rows outside the gradient read g.zeros) with no row-range test per
// multiply-add, and a 3x3 filter's taps held in registers, no weight load either. Against the general gather, 3x3 K=4
// (y = 4x7x96x96 float32, 2 threads) 0.92x the time; Gaussian/LoG 7x7 (K=8, 5 and 37 MB outputs) 0.81-0.82x; the
// six direct filters of the Gabor 11x11 bank 0.84-0.87x the whole backward; the column passes of the DCT 5x5 and 7x7
// backward 0.91-0.96x. Its inputs and weights pinned in registers (in_register) and only the vectors that reach past
// a row's ends masked (rows read in place, W = 96: two of three steps, one vector of two): Gaussian/LoG 7x7 0.85x
// the time, Gabor 11x11 0.93-0.95x, 3x3 0.95x (y of 1-4 MB, 2 threads).
//
// The sums start from zero, from dst (kAccumulate) or, if `init` is given, from init[r] instead of dst[r].
template <int R, int U, bool kAccumulate, int kS1 = 0, int kS2 = 0, typename opmath_t>
void gather_rows(const Gather<opmath_t>& g, int64_t p0, int64_t nr, const int64_t* b, const int64_t* dcv, int64_t nt,
                 int64_t shift, opmath_t* const* dst, int64_t len, const opmath_t* const* init) {
  using Vec = at::vec::Vectorized<opmath_t>;
  constexpr int64_t V = Vec::size();
  static_assert(U * V <= kSlack<opmath_t>, "slack too small for one step");
  const int64_t o_lo = std::max(g.o_first, ceil_div(p0 - g.S1 + 1, g.sh));
  const int64_t o_hi = std::min(g.o_first + g.n_rows, floor_div(p0 + nr - 1, g.sh) + 1);
  constexpr int kRowsRead = R + kS1 - 1;  // source rows o = p0 - kS1 + 1 + i, i < kRowsRead
  constexpr int64_t kMaxSources = 32;
  const opmath_t* fixed_rows[kS1 > 0 ? kMaxSources * kRowsRead : 1];
  int64_t fixed_dcv[kS2 > 0 ? kS2 : 1];
  if constexpr (kS1 > 0) {
    TORCH_INTERNAL_ASSERT(nr <= R && g.sh == 1 && g.S1 == kS1 && g.S2 == kS2 && nt == kS2 && g.L <= kMaxSources);
    for (int64_t l = 0; l < g.L; ++l)
      for (int i = 0; i < kRowsRead; ++i) {
        // Rows past p0 + nr - 1 reach only the rows r >= nr, which are summed and dropped: they read zeros.
        const int64_t o = p0 - kS1 + 1 + i;
        const bool inside = o >= g.o_first && o < g.o_first + g.n_rows && o < p0 + nr;
        fixed_rows[l * kRowsRead + i] = inside ? g.rows[l * g.n_rows + (o - g.o_first)] : g.zeros;
      }
    for (int t = 0; t < kS2; ++t) fixed_dcv[t] = dcv[t];
  }
  // Up to nine taps (a 3x3 filter, a column of up to 9) are held in registers.
  constexpr bool kHoldTaps = kS1 * kS2 <= 9;
  // Rows read where they lie need masked loads only in the vectors that reach past either end.
  constexpr int kNoVector = 0, kFirstVector = 1, kLastVector = 2, kEveryVector = 3;
  int64_t dcv_min = 0, dcv_max = 0;
  for (int t = 0; t < kS2; ++t) dcv_min = std::min(dcv_min, fixed_dcv[t]), dcv_max = std::max(dcv_max, fixed_dcv[t]);
  // source(l, pattern) for every source l, pattern an integral_constant: 3x3 sources multiply the taps of their
  // pattern (tap_pattern). The 3x3 bank of four (26 nonzero taps of 36) took 0.83-0.91x the time so (float32, one
  // process alternating both ways, 1 and 2 threads, y = 4xCx96x96 for C = 7, 51, 204), not 0.72x: the gather issues
  // as many loads as multiply-adds allow, and a zero tap skips a load only where its whole column is zero.
  auto each_source = [&](auto&& source) FIXEDBRANCH_INLINE {
    for (int64_t l = 0; l < g.L; ++l) {
      if constexpr (kS1 == 3 && kS2 == 3) {
        if (g.patterns) {
          with_tap_pattern(g.patterns[l], [&](auto pattern) FIXEDBRANCH_INLINE { source(l, pattern); });
          continue;
        }
      }
      source(l, std::integral_constant<uint32_t, kEveryTap>{});
    }
  };
  // masked: which vectors of a step load through windows, the others loading whole vectors: kNoVector, kFirstVector
  // (a row's first step), kLastVector (its last) or kEveryVector (a step that reaches past both ends).
  auto fixed_step = [&](int64_t e, Vec (&acc)[R][U], auto masked) FIXEDBRANCH_INLINE {
    constexpr int kMasked = decltype(masked)::value;
    auto masks = [](int u) constexpr {
      return kMasked == kEveryVector || (kMasked == kFirstVector && u == 0) || (kMasked == kLastVector && u == U - 1);
    };
    // The windows of a masked step are the same for every source row.
    using Window = LaneWindow<opmath_t>;
    std::optional<Window> window[kMasked != kNoVector ? kS2 : 1][U];
    if constexpr (kMasked != kNoVector) {
      for (int t = 0; t < kS2; ++t)
        for (int u = 0; u < U; ++u)
          if (masks(u)) window[t][u].emplace(shift + e - fixed_dcv[t] + u * V, g.width);
    }
    // Source l, multiplying the taps of `pattern` (every tap, or a 3x3 zero pattern: tap (a, t) at bit a * kS2 + t).
    auto source = [&](int64_t l, auto pattern) FIXEDBRANCH_INLINE {
      constexpr uint32_t kPattern = decltype(pattern)::value;
      const opmath_t* wl = g.w + l * kS1 * kS2;
      // Held taps pass source row by source row. Larger filters run column tap by column tap, the column's kS1
      // weights broadcast once for all kRowsRead source rows instead of once per row and tap (R of them per row): a
      // 7x7 or 11x11 step then issues about half the loads for its multiply-adds (0.44 a multiply-add for 11x11
      // instead of 0.82). One Xeon core, staged rows, 8 sources: 3.4-3.5 -> 4.0-4.1 G vector multiply-adds a second
      // for 11x11, 3.4-3.5 -> 3.8-3.95 for 7x7 (with its columns unrolled, 3.6).
      Vec held[kHoldTaps ? kS2 : 1][kS1];
      if constexpr (kHoldTaps) {
        static_for<kS2>([&](auto t) FIXEDBRANCH_INLINE {
          static_for<kS1>([&](auto a) FIXEDBRANCH_INLINE { held[t][a] = Vec(wl[a * kS2 + t]); });
        });
      }
      Vec column[kS1];  // taps not held: the current column's
      // Source row i at column tap t into every output row it reaches through a tap of the pattern (none: no load).
      auto row_tap = [&](auto i, auto t) FIXEDBRANCH_INLINE {
        if constexpr (kPattern != kEveryTap) {
          if constexpr (!pattern_reaches(kPattern, R, kS1, kS2, i, t)) return;
        }
        const opmath_t* row = fixed_rows[l * kRowsRead + i];
        Vec in[U];
        for (int u = 0; u < U; ++u) {
          const int64_t x = shift + e - fixed_dcv[t] + u * V;
          if (kMasked != kNoVector && masks(u)) {
            in[u] = window[t][u]->load(row + x);
          } else {
            in[u] = Vec::loadu(row + x);
          }
          in[u] = in_register(in[u]);  // one load for every row it feeds
        }
        static_for<R>([&](auto r) FIXEDBRANCH_INLINE {
          constexpr int a = kS1 - 1 + r - i;  // row tap of output row r
          if constexpr (a >= 0 && a < kS1) {
            auto fma = [&] FIXEDBRANCH_INLINE {
              Vec wv;
              if constexpr (kHoldTaps) {
                wv = held[t][a];
              } else {
                wv = column[a];
              }
              for (int u = 0; u < U; ++u) acc[r][u] = at::vec::fmadd(wv, in[u], acc[r][u]);
            };
            if constexpr (kPattern == kEveryTap) {
              fma();
            } else if constexpr (pattern_has(kPattern, a * kS2 + std::decay_t<decltype(t)>::value)) {
              fma();
            }
          }
        });
      };
      if constexpr (kHoldTaps) {
        static_for<kRowsRead>([&](auto i) FIXEDBRANCH_INLINE {
          static_for<kS2>([&](auto t) FIXEDBRANCH_INLINE { row_tap(i, t); });
        });
      } else {
        for (int t = 0; t < kS2; ++t) {
          static_for<kS1>([&](auto a) FIXEDBRANCH_INLINE { column[a] = in_register(Vec(wl[a * kS2 + t])); });
          static_for<kRowsRead>([&](auto i) FIXEDBRANCH_INLINE { row_tap(i, t); });
        }
      }
    };
    each_source(source);
  };
  // 3x3 taps over rows read in place whose tap-1 vectors lie on the vectors' alignment (every row's pixel
  // shift - 1 on a vector boundary: NCHW float rows of a multiple of 16 pixels): each source row loads the U + 2
  // aligned vectors around a step and makes its column taps' inputs from them with lane shifts (lanes_before), where
  // the gather above loads tap 0's and tap 2's vectors at one pixel off the alignment, every such load split across
  // two cache lines. AVX-512 on the 2-core AMD EPYC (Zen 5) issues a split load at about half the rate of an aligned
  // one. This gather alone (3x3 K=4, one core): 0.73x the time in L2, 0.78x from L3; the backward of y = 4x7x96x96
  // float32, old build against new, 0.84-0.85x on 1 and 2 threads.
  bool aligned_rows = false;
  if constexpr (kLaneShifts && kS1 == 3 && kS2 == 3) {
    aligned_rows = g.width > 0 && fixed_dcv[0] == 0 && fixed_dcv[1] == 1 && fixed_dcv[2] == 2;
    for (int64_t j = 0; aligned_rows && j < g.L * kRowsRead; ++j)
      aligned_rows = (reinterpret_cast<uintptr_t>(fixed_rows[j]) + (shift - 1) * sizeof(opmath_t)) % sizeof(Vec) == 0;
  }
  // edge: kInside (every vector of the step inside the rows), kFirstOutside (vector 0 wholly before them: zeros, no
  // load), kLastOutside (vector U + 1 wholly after them) or kWindowed (every vector loads through its window). A
  // row of 96 pixels runs one step of each of the first three: windows in two steps of three took 1.15x the time.
  constexpr int kInside = 0, kFirstOutside = 1, kLastOutside = 2, kWindowed = 3;
  // x0: the step's tap-1 pixel (shift - 1 + e); vector j of a row lies at x0 + (j - 1) * V.
  auto aligned_step = [&](int64_t x0, Vec (&acc)[R][U], auto edge) FIXEDBRANCH_INLINE {
    if constexpr (kLaneShifts && kS1 == 3 && kS2 == 3) {
      constexpr int kEdge = decltype(edge)::value;
      std::optional<LaneWindow<opmath_t>> window[kEdge == kWindowed ? U + 2 : 1];
      if constexpr (kEdge == kWindowed) {
        for (int j = 0; j < U + 2; ++j) window[j].emplace(x0 + (j - 1) * V, g.width);
      }
      auto source = [&](int64_t l, auto pattern) FIXEDBRANCH_INLINE {
        constexpr uint32_t kPattern = decltype(pattern)::value;
        const opmath_t* wl = g.w + l * 9;
        Vec held[3][3];  // held[t][a]: tap (a, t)
        static_for<3>([&](auto t) FIXEDBRANCH_INLINE {
          static_for<3>([&](auto a) FIXEDBRANCH_INLINE { held[t][a] = Vec(wl[a * 3 + t]); });
        });
        static_for<kRowsRead>([&](auto i) FIXEDBRANCH_INLINE {
          constexpr int kI = decltype(i)::value;
          constexpr bool kTap0 = kPattern == kEveryTap || pattern_reaches(kPattern, R, 3, 3, kI, 0);
          constexpr bool kTap1 = kPattern == kEveryTap || pattern_reaches(kPattern, R, 3, 3, kI, 1);
          constexpr bool kTap2 = kPattern == kEveryTap || pattern_reaches(kPattern, R, 3, 3, kI, 2);
          if constexpr (kTap0 || kTap1 || kTap2) {
            const opmath_t* row = fixed_rows[l * kRowsRead + i] + x0;
            // Vector 0 only feeds tap 2 (one pixel left), vector U + 1 only tap 0 (one pixel right).
            Vec v[U + 2];
            static_for<U + 2>([&](auto j) FIXEDBRANCH_INLINE {
              constexpr bool kNeeded = j == 0 ? kTap2 : j == U + 1 ? kTap0 : true;
              if constexpr (kNeeded) {
                if constexpr ((kEdge == kFirstOutside && j == 0) || (kEdge == kLastOutside && j == U + 1)) {
                  v[j] = Vec(opmath_t(0));
                } else if constexpr (kEdge == kWindowed) {
                  v[j] = in_register(window[j]->load(row + (int(j) - 1) * V));
                } else {
                  v[j] = in_register(Vec::loadu(row + (int(j) - 1) * V));
                }
              }
            });
            static_for<3>([&](auto t) FIXEDBRANCH_INLINE {
              constexpr int kT = decltype(t)::value;
              if constexpr (kT == 0 ? kTap0 : kT == 1 ? kTap1 : kTap2) {
                static_for<U>([&](auto u) FIXEDBRANCH_INLINE {
                  // Tap t reads pixel x0 + 1 - t + u * V.
                  Vec in;
                  if constexpr (kT == 0) {
                    in = lanes_before<V - 1>(v[u + 1], v[u + 2]);
                  } else if constexpr (kT == 1) {
                    in = v[u + 1];
                  } else {
                    in = lanes_before<1>(v[u], v[u + 1]);
                  }
                  static_for<R>([&](auto r) FIXEDBRANCH_INLINE {
                    constexpr int a = 2 + r - kI;  // row tap of output row r
                    if constexpr (a >= 0 && a < 3 && pattern_has(kPattern, a * 3 + kT))
                      acc[r][u] = at::vec::fmadd(held[kT][a], in, acc[r][u]);
                  });
                });
              }
            });
          }
        });
      };
      each_source(source);
    }
  };
  auto any_step = [&](int64_t e, Vec (&acc)[R][U]) {
    for (int64_t l = 0; l < g.L; ++l) {
      for (int64_t o = o_lo; o < o_hi; ++o) {
        const opmath_t* row = g.rows[l * g.n_rows + (o - g.o_first)];
        const int64_t a0 = p0 - o * g.sh;  // row tap of output row r: a0 + r
        const int64_t r_lo = std::max<int64_t>(0, -a0), r_hi = std::min<int64_t>(nr, g.S1 - a0);
        const opmath_t* wl = g.w + (l * g.S1 + a0) * g.S2;
        for (int64_t t = 0; t < nt; ++t) {
          Vec in[U];
          for (int u = 0; u < U; ++u) {
            const int64_t x = shift + e - dcv[t] + u * V;
            in[u] = g.width > 0 ? LaneWindow<opmath_t>(x, g.width).load(row + x) : Vec::loadu(row + x);
          }
          for (int r = 0; r < R; ++r) {
            if (r < r_lo || r >= r_hi) continue;
            const Vec wv(wl[r * g.S2 + b[t]]);
            for (int u = 0; u < U; ++u) acc[r][u] = at::vec::fmadd(wv, in[u], acc[r][u]);
          }
        }
      }
    }
  };
  auto step = [&](int64_t e, Vec (&acc)[R][U]) FIXEDBRANCH_INLINE {
    using std::integral_constant;
    if constexpr (kS1 > 0) {
      if (aligned_rows) {
        const int64_t x0 = shift - 1 + e;
        if (x0 >= V && x0 + (U + 1) * V <= g.width) {
          aligned_step(x0, acc, integral_constant<int, kInside>{});
        } else if (x0 == 0 && x0 + (U + 1) * V <= g.width) {
          aligned_step(x0, acc, integral_constant<int, kFirstOutside>{});
        } else if (x0 >= V && x0 + U * V == g.width) {
          aligned_step(x0, acc, integral_constant<int, kLastOutside>{});
        } else {
          aligned_step(x0, acc, integral_constant<int, kWindowed>{});
        }
        return;
      }
      const int64_t x = shift + e;
      const bool left = g.width > 0 && x - dcv_max < 0, right = g.width > 0 && x + U * V - dcv_min > g.width;
      if (!left && !right) {
        fixed_step(e, acc, integral_constant<int, kNoVector>{});
      } else if (!right && x + V - dcv_max >= 0) {
        fixed_step(e, acc, integral_constant<int, kFirstVector>{});
      } else if (!left && x + (U - 1) * V - dcv_min <= g.width) {
        fixed_step(e, acc, integral_constant<int, kLastVector>{});
      } else {
        fixed_step(e, acc, integral_constant<int, kEveryVector>{});
      }
    } else {
      any_step(e, acc);
    }
  };
  const opmath_t* const* from = init ? init : dst;
  int64_t e = 0;
  for (; e + U * V <= len; e += U * V) {
    Vec acc[R][U];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < U; ++u) acc[r][u] = kAccumulate && r < nr ? Vec::loadu(from[r] + e + u * V) : Vec(0);
    step(e, acc);
    for (int r = 0; r < nr && r < R; ++r)
      for (int u = 0; u < U; ++u) store_vector(acc[r][u], dst[r] + e + u * V, V, g.stream);
  }
  if (e == len) return;
  // The tail runs full vectors over the slack and keeps only its len - e values.
  const int64_t n = len - e;
  alignas(64) opmath_t buf[R][U * V];
  Vec acc[R][U];
  for (int r = 0; r < R; ++r) {
    std::fill(buf[r], buf[r] + U * V, opmath_t(0));
    if (kAccumulate && r < nr) std::copy(from[r] + e, from[r] + len, buf[r]);
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
                     int64_t nt, int64_t shift, opmath_t* const* dst, int64_t len, bool accumulate,
                     const opmath_t* const* init = nullptr) {
  constexpr int64_t V = at::vec::Vectorized<opmath_t>::size();
  const bool one = nr == 1, short_run = len < 2 * V;
  // A fixed-tap block holds 8 accumulators, 2 inputs and up to 9 taps: in AVX-512's registers, not AVX2's.
  if constexpr (kVectorRegisters >= 32) {
    // Square direct filters, and the column passes of factored banks (S2 = 1).
    if (g.zeros && g.sh == 1 && !short_run && (g.S2 == g.S1 || g.S2 == 1) && nt == g.S2 && g.L <= 32) {
      auto run = [&](auto rows, auto columns) {
        constexpr int S1 = decltype(rows)::value, S2 = decltype(columns)::value;
        // A single row (a task's last, of 4k + 1) takes steps of one row and four vectors: through the run-time taps
        // it cost as much as five rows in blocks of four (3x3 bank of four, 5 MB: 6% of the backward for 1% of its
        // rows).
        if (nr == 1) {
          if (accumulate) return gather_rows<1, 4, true, S1, S2>(g, p0, nr, b, dcv, nt, shift, dst, len, init);
          return gather_rows<1, 4, false, S1, S2>(g, p0, nr, b, dcv, nt, shift, dst, len, init);
        }
        if (accumulate) return gather_rows<4, 2, true, S1, S2>(g, p0, nr, b, dcv, nt, shift, dst, len, init);
        return gather_rows<4, 2, false, S1, S2>(g, p0, nr, b, dcv, nt, shift, dst, len, init);
      };
      using std::integral_constant;
      switch (g.S1 * 100 + g.S2) {
        case 303: return run(integral_constant<int, 3>{}, integral_constant<int, 3>{});
        case 505: return run(integral_constant<int, 5>{}, integral_constant<int, 5>{});
        case 707: return run(integral_constant<int, 7>{}, integral_constant<int, 7>{});
        case 909: return run(integral_constant<int, 9>{}, integral_constant<int, 9>{});
        case 1111: return run(integral_constant<int, 11>{}, integral_constant<int, 11>{});
        case 301: return run(integral_constant<int, 3>{}, integral_constant<int, 1>{});
        case 501: return run(integral_constant<int, 5>{}, integral_constant<int, 1>{});
        case 701: return run(integral_constant<int, 7>{}, integral_constant<int, 1>{});
        case 901: return run(integral_constant<int, 9>{}, integral_constant<int, 1>{});
        case 1101: return run(integral_constant<int, 11>{}, integral_constant<int, 1>{});
        default: break;
      }
    }
  }
  if constexpr (kVectorRegisters >= 32) {
    // Column passes at row stride 2 (a factored bank's strided backward): the output rows of one parity q gather only
    // the taps a = q + 2d, from source rows (p - q) / 2 - d, a stride-1 column pass over that parity's rows with
    // ceil((S1 - q) / 2) taps known at compile time, instead of the general gather's run-time row and tap tests
    // (DCT 5x5 at stride 2, float32, 2 threads: the backward 0.83x the time at a 37 MB gradient, 0.93x at 9.6 MB).
    if (g.zeros && g.sh == 2 && g.S2 == 1 && nt == 1 && g.width == 0 && g.S1 >= 2 && g.S1 <= 11 && g.L <= 32 &&
        !short_run && nr >= 2) {
      opmath_t phase_w[32 * 6];
      for (int64_t q = 0; q < 2; ++q) {
        const int64_t r0 = (q - p0 % 2 + 2) % 2, taps = (g.S1 - q + 1) / 2;
        if (r0 >= nr || taps == 0) continue;
        opmath_t* rows[2];
        const opmath_t* starts[2];
        int64_t n = 0;
        for (int64_t r = r0; r < nr; r += 2, ++n) rows[n] = dst[r], starts[n] = init ? init[r] : nullptr;
        for (int64_t l = 0; l < g.L; ++l)
          for (int64_t d = 0; d < taps; ++d) phase_w[l * taps + d] = g.w[l * g.S1 + q + 2 * d];
        Gather<opmath_t> phase = g;
        phase.sh = 1, phase.S1 = taps, phase.w = phase_w;
        const int64_t m0 = (p0 + r0 - q) / 2;
        auto run = [&](auto rows_read) {
          constexpr int S1 = decltype(rows_read)::value;
          if (accumulate) return gather_rows<2, 3, true, S1, 1>(phase, m0, n, b, dcv, 1, shift, rows, len,
                                                                  init ? starts : nullptr);
          gather_rows<2, 3, false, S1, 1>(phase, m0, n, b, dcv, 1, shift, rows, len, init ? starts : nullptr);
        };
        using std::integral_constant;
        switch (taps) {
          case 1: run(integral_constant<int, 1>{}); break;
          case 2: run(integral_constant<int, 2>{}); break;
          case 3: run(integral_constant<int, 3>{}); break;
          case 4: run(integral_constant<int, 4>{}); break;
          case 5: run(integral_constant<int, 5>{}); break;
          default: run(integral_constant<int, 6>{}); break;
        }
      }
      return;
    }
  }
  switch ((one ? 1 : 0) + (short_run ? 2 : 0) + (accumulate ? 4 : 0)) {
    case 0: gather_rows<4, 2, false>(g, p0, nr, b, dcv, nt, shift, dst, len, init); break;
    case 1: gather_rows<1, 4, false>(g, p0, nr, b, dcv, nt, shift, dst, len, init); break;
    case 2: gather_rows<4, 1, false>(g, p0, nr, b, dcv, nt, shift, dst, len, init); break;
    case 3: gather_rows<1, 1, false>(g, p0, nr, b, dcv, nt, shift, dst, len, init); break;
    case 4: gather_rows<4, 2, true>(g, p0, nr, b, dcv, nt, shift, dst, len, init); break;
    case 5: gather_rows<1, 4, true>(g, p0, nr, b, dcv, nt, shift, dst, len, init); break;
    case 6: gather_rows<4, 1, true>(g, p0, nr, b, dcv, nt, shift, dst, len, init); break;
    default: gather_rows<1, 1, true>(g, p0, nr, b, dcv, nt, shift, dst, len, init); break;
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
// (q - qa)*cv): at stride 1 in place (the sums starting from init[r] if given), else phase by phase through
// `phase_buf` (4 rows of `phase_pitch`), interleaved.
template <typename opmath_t>
void gather_columns(const Gather<opmath_t>& g, const Phases& ph, int64_t cv, int64_t p0, int64_t nr, int64_t qa,
                    int64_t qb, opmath_t* const* dst, bool accumulate, opmath_t* phase_buf, int64_t phase_pitch,
                    const opmath_t* const* init = nullptr) {
  const int64_t sw = ph.sw;
  if (sw == 1) {
    gather_rows_any(g, p0, nr, ph.b[0].data(), ph.dcv[0].data(), static_cast<int64_t>(ph.b[0].size()), qa * cv, dst,
                    (qb - qa) * cv, accumulate, init);
    return;
  }
  TORCH_INTERNAL_ASSERT(init == nullptr && g.width == 0);
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
          for (int64_t c = 0; c < cv; ++c)
            d[k * step + c] = (accumulate ? d[k * step + c] : opmath_t(0)) + s[k * cv + c];
      }
    }
  }
}

// Rows i0 .. i1 of dL/dy: the identity's gradient plus, for every live filter, the adjoint of its padded strided
// correlation (polyphase, above). A factored filter's adjoint is the transpose of its forward: each term's row pass
// transposed (a stride-sw row gather of g_k, summed per column u into h_u) and then column u's pass transposed (a
// stride-sh row gather of h_u), so the bank's column passes stay shared.
template <typename scalar_t>
void backward_kernel(const at::Tensor& g, const at::Tensor& bank, const BranchArgs& a, at::Tensor& grad_y) {
  using opmath_t = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    if (fits_tiles(g, grad_y, bank, a)) return backward_tiles<scalar_t>(g, bank, a, grad_y);
  }
  const int64_t C = a.C, H = a.H, W = a.W, Ho = a.out_h, Wo = a.out_w, sh = a.stride_h, sw = a.stride_w;
  const int64_t S1 = bank.size(1), S2 = bank.size(2), taps = S1 * S2;
  const SamePad& pad = a.pad;
  const PadMode mode = a.mode;
  const int64_t pw = W + S2 - 1;  // width of the padded image: the adjoint's columns
  const auto shared_kb = shared_kernel_bank<opmath_t>(bank, Pass::Backward);
  const KernelBank<opmath_t>& kb = *shared_kb;
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
  // The transposed row passes at stride 1 as mixes (backward_kernel, mixed_b): group u's weight of term e in
  // mixed_b at group_mix[u][b * ns + e], then the mixed rows summed with weight one.
  std::vector<std::vector<opmath_t>> group_mix;
  for (const Group& grp : groups) {
    const int64_t ns = static_cast<int64_t>(grp.sources.size());
    std::vector<opmath_t> mix(S2 * ns);
    for (int64_t e = 0; e < ns; ++e)
      for (int64_t b = 0; b < S2; ++b) mix[b * ns + e] = grp.rows[e * S2 + b];
    group_mix.push_back(std::move(mix));
  }
  const std::vector<opmath_t> ones(S2, opmath_t(1));
  const int64_t no_offset = 0;
  std::vector<opmath_t> group_columns;  // column of each group, S1 each
  for (const Group& grp : groups)
    group_columns.insert(group_columns.end(), kb.columns.begin() + grp.column * S1,
                         kb.columns.begin() + (grp.column + 1) * S1);
  const int64_t L = static_cast<int64_t>(live.size()), G = static_cast<int64_t>(groups.size());
  std::vector<uint32_t> direct_patterns;  // the live direct 3x3 filters' taps that the gathers multiply
  for (int64_t l = 0; l < Ld && S1 == 3 && S2 == 3; ++l) direct_patterns.push_back(tap_pattern(wl.data() + l * 9));
  if (!is_channels_last(grad_y) && a.strided() && G == 0 && mode == PadMode::Zeros)
    return backward_planes<scalar_t>(g, live, wl, S1, S2, a, grad_y);
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    if (pixels_apply(g, grad_y, a, G == 0))
      return backward_pixels<scalar_t>(g, live, wl, S1, S2, a, grad_y);
  }
  // A channels_last gradient in channel order holds a pixel's slots interleaved, channel by channel: its pixels are
  // read as whole runs (stage_pixels_by_channel), each live slot's channels taken from there.
  std::vector<int64_t> live_slots(L);
  for (int64_t l = 0; l < L; ++l) live_slots[l] = a.slot(live[l]);
  const bool by_channel = a.order == Order::Channel && g.stride(1) == 1;
  // A staged gradient row: E zero pixels (the widest phase's reach to the left), the Wo pixels, zeros up to the last
  // column any phase reads.
  const int64_t E = (S2 - 1) / sw, Wg = E + std::max(Wo, ceil_div(pw, sw));
  const bool cl = is_channels_last(grad_y);
  // A direct bank at stride 1 whose live filters share tap classes (symmetric banks: Gaussians, LoGs) gathers from
  // class mixes, the adjoint of the forward's correlate_classes: mix_c[o] = sum_l w_l(c) g_l[o] for every gradient
  // row o, then padded pixel (p, q) sums mix_c[p - a][q - b] over the classes c and their taps (a, b), weight one.
  // Gaussian/LoG 7x7, K = 8: 10 classes, 80 multiply-adds and 49 adds a vector where the gather did 392
  // multiply-adds. One channel a pixel (NCHW).
  TapClasses<opmath_t> classes;
  if (G == 0 && Ld > 1 && sh == 1 && sw == 1) classes = tap_classes(wl.data(), Ld, taps);
  const bool classes_pay = classes.count > 0 && 2 * (classes.count * Ld + taps) <= Ld * taps;
  const Tiling tl =
      make_tiling(C, H, (std::max<int64_t>(L, 1) * Wg + G * pw + (classes_pay ? classes.count * Wg : 0)) / sh + W + pw,
                  1, (S1 - 1) / sh, cl, sizeof(opmath_t));
  const int64_t class_count = classes_pay && tl.cv == 1 ? classes.count : 0;
  const bool by_classes = class_count > 0;
  std::vector<opmath_t> class_weights(class_count * Ld);  // [c * Ld + l]: live filter l's weight on class c
  for (int64_t c = 0; c < class_count; ++c)
    for (int64_t l = 0; l < Ld; ++l) class_weights[c * Ld + l] = classes.weights[l * classes.count + c];
  const int64_t max_rows = (tl.rows + S1 - 2) / sh + 2;  // gradient rows one run of padded rows reads
  // Padded row p sums, for every class c and tap (a, b) in it, mix_c's row p - a from column -b (the task's class_mix,
  // rows mix_pitch values apart): these offsets from mix_0's row p.
  constexpr int64_t kVec = at::vec::Vectorized<opmath_t>::size();
  const int64_t mix_rows_per_class = max_rows + 2 * (S1 - 1);
  const int64_t mix_pitch = (Wg + kVec - 1) / kVec * kVec;  // between mixed rows: whole vectors (one channel a pixel)
  // The same sums column by column (sum_columns), where the lanes shift far enough: column b's row a is tap (a, b)'s
  // class mix, row p - a. Its loads stay on the vectors' alignment: the mixed rows are mix_pitch (whole vectors)
  // apart, each row's padded column qa (where the sums start) on a vector's boundary. Gaussian/LoG 7x7 (mirror
  // symmetric: four columns of seven rows summed, 28 aligned loads a vector where sum_rows made 49 unaligned ones),
  // float32, 2 threads, old build against new: the class sums alone 0.51x the time (1.25-1.31 -> 0.66 ns a pixel, one
  // core, in L2); the backward 0.86-0.88x at 5.3, 37 and 150 MB of gradient.
  const bool sum_by_columns = lane_shift_width<opmath_t>(S2);
  std::vector<int64_t> class_tap_off;  // sum_rows: class by class, each tap's offset
  std::vector<int64_t> column_rows;    // sum_columns: [b * S1 + a], tap (a, b)'s offset less its column shift
  bool mirror = true;                  // sum_columns: column S2-1-b sums the rows of column b
  if (by_classes && sum_by_columns) {
    std::vector<int64_t> class_of(taps);
    for (int64_t c = 0; c < class_count; ++c)
      for (int64_t m = classes.begin[c]; m < classes.begin[c + 1]; ++m) class_of[classes.members[m]] = c;
    column_rows.resize(S2 * S1);
    for (int64_t a = 0; a < S1; ++a)
      for (int64_t b = 0; b < S2; ++b) {
        column_rows[b * S1 + a] = (class_of[a * S2 + b] * mix_rows_per_class - a) * mix_pitch;
        mirror = mirror && class_of[a * S2 + b] == class_of[a * S2 + S2 - 1 - b];
      }
  } else {
    for (int64_t c = 0; c < class_count; ++c)
      for (int64_t m = classes.begin[c]; m < classes.begin[c + 1]; ++m) {
        const int64_t tap = classes.members[m];
        class_tap_off.push_back((c * mix_rows_per_class - tap / S2) * mix_pitch - tap % S2);
      }
  }
  // Padded column qa of every mixed row on a vector's boundary: the rows start mix_lead values into an aligned buffer.
  const int64_t qa_rows = mode == PadMode::Zeros ? pad.left : 0;
  const int64_t mix_lead = (kVec - (E + qa_rows) % kVec) % kVec;
  const bool identity_live = a.identity && !a.stopped[0];
  const int64_t cv_tail = C % tl.cv == 0 ? tl.cv : C % tl.cv;
  const Phases g_phases_full = make_phases(S2, sw, tl.cv), g_phases_tail = make_phases(S2, sw, cv_tail);
  const Phases h_phases_full = make_phases(1, 1, tl.cv), h_phases_tail = make_phases(1, 1, cv_tail);
  // NCHW at a column stride: each group's transposed row passes run phase by phase over all of a task's rows (from
  // its mixed rows, below), unless summed in registers.
  const bool phase_planes = sw > 1 && tl.cv == 1;
  // At column stride 1 or 2, one channel a pixel, each group's mixes are summed in registers (transposed_row_sums)
  // for the odd widths up to 11 that fit a vector's lanes. Float32, 2 threads, against the mixed rows stored and
  // summed: DCT 5x5 0.81x the backward's time at a 3.8 MB gradient, 0.67x at 38 MB; DCT 7x7 0.73x at 7.4 MB, 0.68x
  // at 37 MB; the Gabor 11x11 bank (two of its filters factored) 0.84x; at stride 2, against the mixes' phase
  // planes summed and interleaved, DCT 5x5 0.68-0.73x (dL/dout of 3.8 to 148 MB).
  const bool sum_in_registers = sw <= 2 && tl.cv == 1 && lane_shift_width<opmath_t>(S2);
  const int64_t phase_len = ceil_div(pw, sw);  // values of a phase row

  const scalar_t* g_ptr = g.const_data_ptr<scalar_t>();
  scalar_t* gy_ptr = grad_y.mutable_data_ptr<scalar_t>();
  // g's strides, read once: through the tensor, each was a chain of dependent loads and tests, and the rows'
  // pointers (a few a row) took a tenth of the 3x3 K=4 backward's samples in cache (y = 4x7x96x96 float32, 2
  // threads: 0.87x the time without).
  const int64_t gsN = g.stride(0), gsC = g.stride(1), gsH = g.stride(2), gsW = g.stride(3);
  const int64_t slot_gsC = a.channel_step() * gsC;
  constexpr int64_t kRows = 4;       // the gather's row block
  constexpr int64_t kAheadRows = 8;  // gradient rows prefetched ahead of the staging
  constexpr int64_t bytes_per_value = sizeof(opmath_t);
  // Prefetching ahead of the staging, from main memory only. (The figures quoted for it here and below were measured
  // in builds whose compiler had deleted these prefetches, before prefetch_line: they await remeasuring. With them
  // live, on the 2-core AMD EPYC with AVX-512, the 3x3 K=4 backward at 37.6 and 150 MB kept its time within noise.)
  const bool prefetch_g = prefetch_pays(static_cast<int64_t>(g.nbytes()));
  // A direct bank's gather whose sums are final, stored in place into dL/dy, streams them (streaming_grad_pays). Only
  // the direct gather: streaming the class sums (Gaussian/LoG 7x7 at 150 MB) changed nothing.
  const bool stream_grad =
      streaming_grad_pays(static_cast<int64_t>(g.nbytes()), static_cast<int64_t>(grad_y.nbytes()));
  // Direct banks at stride 1 read NCHW float or double gradient rows where they lie, LaneWindow standing in for the
  // zeros around a staged row (staging copied every row once more), and in zero mode their sums start from the
  // identity's gradient (gather_rows' init, its rows prefetched with the others) instead of a pass that copied it
  // into dL/dy first. Float32, 2 threads, against staging: 3x3 K=4 0.69x the time at a 5 MB output, 0.81x at 37.6
  // MB; Gaussian/LoG 7x7 0.92x and 0.97x. The identity's start alone: 0.96-0.97x.
  // Banks with factored filters too (G > 0) read their direct filters' rows so (Gabor 11x11: 0.98x the time at 5 and
  // 37 MB); a bank with factored filters only reads the rows in place in its transposed row passes anyway, and has no
  // gather to start from the identity's gradient.
  const bool rows_in_place = std::is_same_v<scalar_t, opmath_t> && (G == 0 || Ld > 0) && sh == 1 && sw == 1 &&
                             tl.cv == 1 && gsW == 1;
  const bool g_in_place = kMaskedLoads && rows_in_place;
  const bool identity_in_gather = rows_in_place && mode == PadMode::Zeros && L > 0;  // no pass before the gathers
  const bool identity_starts_sums = identity_in_gather && identity_live;
  // channels_last direct banks at stride 1 in zero mode that backward_pixels leaves (channels that are not whole
  // vectors, half precision): the identity's gradient is copied into dL/dy's rows as the staging reads each pixel
  // (slot 0 lies just before the live slots), not in a pass over the task's rows before it: that pass read every
  // gradient pixel from memory with nothing to overlap, and the staging read it again (N8 C32 96x96, 3x3 K=4: 0.93x
  // the time).
  const bool identity_with_staging = identity_live && G == 0 && L > 0 && !by_channel && sh == 1 && sw == 1 &&
                                     mode == PadMode::Zeros && tl.cv > 1;

  at::parallel_for(0, tl.tasks(a.N), tl.grain(W, a.K + 1), [&](int64_t begin, int64_t end) {
    const int64_t g_pitch = Wg * tl.cv, h_pitch = pw * tl.cv;
    // Buffers a call never uses are not allocated (zeroed for nothing: the in-cache backward of the 3x3 and DCT 5x5
    // banks took 1.02-1.03x the time, Gaussian/LoG 7x7 1.05x).
    std::vector<opmath_t> stage(g_in_place ? 0 : L * max_rows * g_pitch + kSlack<opmath_t>);  // rows of every live g_k
    std::vector<opmath_t> h(G * max_rows * h_pitch + kSlack<opmath_t>);      // each group's transposed row passes
    // A group's mixed rows (at stride 1 and in phase planes): mixed_b's row o - o0 at mixed_rows[b] + (o - o0) *
    // mixed_pitch, after E zero pixels and followed by zeros up to the padded width.
    const int64_t mixed_pitch = (E + pw) * tl.cv + kSlack<opmath_t>;
    const bool mixes = G > 0 && (sw == 1 || phase_planes) && !sum_in_registers;
    std::vector<opmath_t> mixed(mixes ? S2 * max_rows * mixed_pitch + kSlack<opmath_t> : 0);
    std::vector<opmath_t*> mixed_rows(S2), mixed_shifted(S2);  // each mixed_b's first row, at its pixel 0
    // Points mixed_rows at n rows of cv channels a pixel. Their borders hold zeros from the initialisation, which
    // one channel a pixel (NCHW) never overwrites; channels_last blocks of other widths do, so they are refilled.
    auto place_mixed_rows = [&](int64_t n, int64_t cv) {
      for (int64_t b = 0; b < S2; ++b) {
        opmath_t* const base = mixed.data() + b * max_rows * mixed_pitch;
        mixed_rows[b] = base + E * cv;
        for (int64_t r = 0; r < n && tl.cv > 1; ++r) {
          std::fill(base + r * mixed_pitch, base + r * mixed_pitch + E * cv, opmath_t(0));
          std::fill(base + r * mixed_pitch + (E + Wo) * cv, base + (r + 1) * mixed_pitch, opmath_t(0));
        }
      }
    };
    std::vector<int64_t> source_off(L);
    std::vector<opmath_t> acc(tl.rows * W * tl.cv);                          // this task's rows of dL/dy
    // Reads as a staged gradient row (from E pixels before its start) or a row of h.
    const std::vector<opmath_t> zeros(E * tl.cv + std::max(g_pitch, h_pitch) + kSlack<opmath_t> + kVec, opmath_t(0));
    std::vector<opmath_t> adj(kRows * h_pitch);                              // padded rows, border columns included
    const int64_t phase_pitch = ceil_div(pw, sw) * tl.cv + kSlack<opmath_t>;
    std::vector<opmath_t> phase_buf(kRows * phase_pitch);
    std::vector<const opmath_t*> g_rows(L * max_rows), h_rows(G * max_rows), term_rows;
    // Phase rho's row o - o0.
    std::vector<opmath_t> phase_rows(phase_planes && !sum_in_registers ? sw * max_rows * phase_len : 0);
    std::vector<const scalar_t*> g_base(L);  // each live filter's gradient plane
    std::vector<const scalar_t*> slot_rows(L);   // channels_last: one gradient row of each live filter
    std::vector<opmath_t*> staged_rows(L);       // and where it is staged
    std::vector<opmath_t> pixel_block(tl.cv > 1 ? a.B * tl.cv : 0);  // channels_last, channel order: one pixel
    // Class c's mix of gradient row o at mix_base[(c * mix_rows_per_class + o - o0 + S1 - 1) * mix_pitch + E], laid
    // out as a staged row (its zero borders, from the initialisation, are never written) between S1 - 1 rows of zeros
    // standing for the rows outside the gradient, so that every padded row sums the same offsets.
    std::vector<opmath_t> class_mix(
        by_classes ? class_count * mix_rows_per_class * mix_pitch + 2 * kVec + kSlack<opmath_t> : 0);
    opmath_t* const mix_base = by_classes ? aligned_within(class_mix.data()) + mix_lead : nullptr;
    std::vector<opmath_t*> mix_rows(class_count);
    std::vector<int64_t> mix_off(Ld);
    for (int64_t id = begin; id < end; ++id) {
      const Task t = locate(tl, id, C, H);
      const int64_t cv = t.cv;
      const Phases& g_phases = cv == tl.cv ? g_phases_full : g_phases_tail;
      const Phases& h_phases = cv == tl.cv ? h_phases_full : h_phases_tail;
      const View v{Ho, Wo, gsH, gsW, slot_gsC, cv};
      auto g_slot = [&](int64_t b) { return g_ptr + t.n * gsN + a.channel(b, t.c0) * gsC; };
      for (int64_t l = 0; l < L; ++l) g_base[l] = g_slot(a.slot(live[l]));
      // Slot 0's plane: the identity's gradient (in channel order, where each pixel's run of slots starts).
      const scalar_t* const identity_plane = g_slot(0);
      // This task's rows of dL/dy: in place where grad_y holds them as acc would (float or double, the task's rows
      // of W pixels of cv channels one contiguous run), which saves storing them afterwards.
      scalar_t* gy_base = gy_ptr + t.n * grad_y.stride(0) + t.c0 * grad_y.stride(1);
      opmath_t* rows = acc.data();
      const bool identity_staged = identity_with_staging && cv > 1;
      if constexpr (std::is_same_v<scalar_t, opmath_t>) {
        if ((cv == 1 || grad_y.stride(1) == 1) && grad_y.stride(3) == cv && grad_y.stride(2) == W * cv)
          rows = gy_base + t.i0 * grad_y.stride(2);
      }

      // Padded rows [p0, p1) into `put(p, row)` (row: padded columns [qa, qb)), or added in place into acc.
      auto run_rows = [&](int64_t p0, int64_t p1, int64_t qa, int64_t qb, bool in_place, auto&& put) {
        const int64_t o0 = std::max<int64_t>(0, ceil_div(p0 - S1 + 1, sh));
        const int64_t o1 = std::min(Ho, floor_div(p1 - 1, sh) + 1);
        const int64_t nO = std::max<int64_t>(0, o1 - o0);
        // Where slot l's gradient row o is staged (the gathers read it from g_rows, past its E leading zeros).
        auto place_row = [&](int64_t l, int64_t o) {
          opmath_t* row = stage.data() + (l * max_rows + (o - o0)) * g_pitch;
          g_rows[l * nO + (o - o0)] = row + E * cv;
          return row;
        };
        // Slot l's gradient row o read where it lies (g_in_place): the gathers read it through lane windows.
        auto point_at_row = [&](int64_t l, int64_t o) {
          g_rows[l * nO + (o - o0)] = reinterpret_cast<const opmath_t*>(g_base[l] + o * gsH);
        };
        // One channel a pixel (NCHW): every staged row has the same zero border, which the buffer's initialisation
        // wrote and no staging overwrites; only the row's pixels are copied.
        auto stage_row = [&](int64_t l, int64_t o) {
          if (tl.cv == 1) {
            copy_pixels(g_base[l] + o * gsH, v, Wo, 1, place_row(l, o) + E);
          } else {
            stage_zero_padded(g_base[l] + o * gsH, v, Wo, E, Wg, place_row(l, o));
          }
        };
        // Direct banks stage gradient rows as the row blocks reach them, with the rows kAheadRows further on
        // prefetched (from memory): reading g then overlaps the arithmetic instead of preceding it task by task (3x3
        // K=4, y = 4x51x96x96 float32, 2 threads: 3.5 -> 3.1 ms). Factored banks stage all the task's rows first,
        // one gradient slot after another, then run their transposed row passes: read row by row across 25-49 slots
        // at once, the DCT banks' backward ran 1.3-1.5x slower at 38 MB.
        const bool incremental = G == 0;
        auto mixed_row = [&](int64_t c, int64_t o) {
          return mix_base + (c * mix_rows_per_class + o - o0 + S1 - 1) * mix_pitch + E;
        };
        // Rows outside the gradient read as zeros (their slots may hold another run's mixes); the other rows around
        // o0 .. o1 - 1 are never read.
        for (int64_t c = 0; c < class_count; ++c)
          for (int64_t i = 1; i < S1; ++i) {
            if (o0 - i < 0) std::fill_n(mixed_row(c, o0 - i), Wo, opmath_t(0));
            if (o1 - 1 + i >= Ho) std::fill_n(mixed_row(c, o1 - 1 + i), Wo, opmath_t(0));
          }
        // Gradient rows o .. o+n-1's class mixes, from every live filter's rows, staged or where they lie (equally far
        // apart in every slot either way): the rows a block of output rows reaches, mixed in one pass, not one pass a
        // row (Gaussian/LoG 7x7 backward 0.98x the time at 5, 37 and 150 MB).
        auto mix_classes = [&](int64_t o, int64_t n) {
          const opmath_t* first = g_rows[o - o0];
          const int64_t pitch = n > 1 ? g_rows[o - o0 + 1] - first : 0;
          for (int64_t l = 0; l < Ld; ++l) mix_off[l] = g_rows[l * nO + (o - o0)] - first;
          for (int64_t c = 0; c < class_count; ++c) mix_rows[c] = mixed_row(c, o);
          correlate_blocks<true>(class_count, first, pitch, mix_off.data(), class_weights.data(), Ld, mix_rows.data(),
                                 mix_pitch, n, Wo);
        };
        int64_t staged = o0;  // rows o0 .. staged-1 are staged
        auto stage_until = [&](int64_t o_end) {
          const int64_t unmixed = staged;
          for (; staged < o_end; ++staged) {
            if (cv > 1) {
              // channels_last: every live slot's row at once, pixel by pixel (stage_zero_padded_pixels).
              for (int64_t l = 0; l < L; ++l) {
                slot_rows[l] = g_base[l] + staged * gsH;
                staged_rows[l] = place_row(l, staged);
              }
              if (by_channel) {
                stage_pixels_by_channel(identity_plane + staged * gsH, live_slots.data(), L, a.B, v, Wo, E, Wg,
                                        pixel_block.data(), staged_rows.data());
              } else if (identity_staged && staged >= t.i0 && staged < t.i1) {
                stage_zero_padded_pixels(slot_rows.data(), L, v, Wo, E, Wg, staged_rows.data(),
                                         identity_plane + staged * gsH, rows + (staged - t.i0) * W * cv);
              } else {
                stage_zero_padded_pixels(slot_rows.data(), L, v, Wo, E, Wg, staged_rows.data());
              }
              continue;
            }
            for (int64_t l = 0; l < L; ++l) {
              if (g_in_place) {
                point_at_row(l, staged);
              } else {
                stage_row(l, staged);
              }
              if (prefetch_g && staged + kAheadRows < Ho)
                prefetch_pixels(g_base[l] + (staged + kAheadRows) * gsH, v, Wo);
            }
            if (prefetch_g && identity_starts_sums && staged + kAheadRows < Ho)
              prefetch_pixels(identity_plane + (staged + kAheadRows) * gsH, v, Wo);
          }
          if (by_classes && staged > unmixed) mix_classes(unmixed, staged - unmixed);
        };
        if (!incremental) {
          // Slot after slot; from main memory, each row prefetched kAheadRows rows (in this order) before it is
          // staged: row o + ahead_o of slot l + ahead_l. Where the factored filters' rows are contiguous opmath_t
          // values, their mixes (below) read them where they lie, and only the direct filters' rows are staged.
          const bool read_in_place =
              (sw == 1 || phase_planes) && cv == 1 && gsW == 1 && std::is_same_v<scalar_t, opmath_t>;
          const int64_t L_staged = read_in_place ? Ld : L;
          const int64_t ahead_l = nO > 0 ? kAheadRows / nO : 0, ahead_o = nO > 0 ? kAheadRows % nO : 0;
          for (int64_t l = 0; l < L_staged; ++l)
            for (int64_t o = o0; o < o1; ++o) {
              if (g_in_place) {
                point_at_row(l, o);
                continue;
              }
              stage_row(l, o);
              const bool wraps = o + ahead_o >= o1;
              const int64_t pl = l + ahead_l + (wraps ? 1 : 0), po = wraps ? o + ahead_o - nO : o + ahead_o;
              if (prefetch_g && pl < L_staged) prefetch_pixels(g_base[pl] + po * gsH, v, Wo);
            }
          // h_u[o][q] for every padded column q, one row at a time.
          for (int64_t u = 0; u < G; ++u) {
            const Group& grp = groups[u];
            const int64_t ns = static_cast<int64_t>(grp.sources.size());
            term_rows.resize(ns);
            opmath_t* const h_first = h.data() + u * max_rows * h_pitch;  // h_u's row o0
            for (int64_t o = o0; o < o1; ++o) h_rows[u * nO + (o - o0)] = h_first + (o - o0) * h_pitch;
            if ((sw == 1 || phase_planes) && nO > 0) {
              // h_u[o][q] = sum over the terms e of sum_b row_e[b] * g_e[o][q - b] (at a column stride, phase by
              // phase: below), all the task's rows at once, in two passes: mixed_b[o][x] = sum_e row_e[b] * g_e[o][x]
              // loads each g_e vector once for the S2 sums (a correlation whose taps are the sources, as far apart as
              // their rows), then h_u[o][q] = sum_b mixed_b[o][q - b] over the zero-bordered mixed rows. Summed
              // directly, every term's row tap loaded a shifted g_e vector for one multiply-add (ns * S2 loads
              // against ns + S2 here).
              const opmath_t* first;
              int64_t pitch;
              if (read_in_place) {
                first = reinterpret_cast<const opmath_t*>(g_base[grp.sources[0]]) + o0 * gsH;
                pitch = gsH;
                for (int64_t e = 0; e < ns; ++e) source_off[e] = g_base[grp.sources[e]] - g_base[grp.sources[0]];
              } else {
                first = g_rows[grp.sources[0] * nO];
                pitch = g_pitch;
                for (int64_t e = 0; e < ns; ++e) source_off[e] = (grp.sources[e] - grp.sources[0]) * max_rows * g_pitch;
              }
              if constexpr (kLaneShifts) {
                if (sum_in_registers) {
                  const opmath_t* w = group_mix[u].data();
                  with_odd_width<opmath_t>(S2, [&](auto taps) {
                    with_bool(sw == 2, [&](auto two) {
                      transposed_row_sums<decltype(taps)::value, two ? 2 : 1>(
                          first, pitch, source_off.data(), ns, w, Wo, pw, h_first, h_pitch, nO,
                          prefetch_g && read_in_place ? rows_ahead(ns * Wo * bytes_per_value) : 0);
                    });
                  });
                  continue;
                }
              }
              place_mixed_rows(nO, cv);
              if (read_in_place) {
                correlate_blocks<true>(S2, first, pitch, source_off.data(), group_mix[u].data(), ns, mixed_rows.data(),
                                       mixed_pitch, nO, Wo * cv);
              } else {
                correlate_blocks(S2, first, pitch, source_off.data(), group_mix[u].data(), ns, mixed_rows.data(),
                                 mixed_pitch, nO, Wo * cv);
              }
              // Phase rho of padded column q = rho + sw*m sums the taps b = rho + sw*d: mixed_b[o][m - d]. At stride 1
              // the one phase is h_u itself; at a column stride the phases are interleaved into h_u's rows.
              for (int64_t rho = 0; rho < sw; ++rho) {
                opmath_t* plane = sw == 1 ? h_first : phase_rows.data() + rho * max_rows * phase_len;
                const int64_t plane_pitch = sw == 1 ? h_pitch : phase_len;
                const int64_t nt = static_cast<int64_t>(g_phases.b[rho].size()), nm = ceil_div(pw - rho, sw) * cv;
                if (nt == 0) {
                  for (int64_t o = 0; o < nO; ++o) std::fill_n(plane + o * plane_pitch, nm, opmath_t(0));
                  continue;
                }
                for (int64_t j = 0; j < nt; ++j)
                  mixed_shifted[j] = mixed_rows[g_phases.b[rho][j]] - g_phases.dcv[rho][j];
                correlate_sum(mixed_shifted.data(), nt, &no_offset, ones.data(), 1, plane, nm, nO, mixed_pitch,
                              plane_pitch);
              }
              for (int64_t o = 0; o < nO && sw > 1; ++o)
                interleave_phases(phase_rows.data() + o * phase_len, max_rows * phase_len, sw, 0, pw,
                                  h_first + o * h_pitch);
              continue;
            }
            for (int64_t o = o0; o < o1; ++o) {
              for (int64_t e = 0; e < ns; ++e) term_rows[e] = g_rows[grp.sources[e] * nO + (o - o0)];
              opmath_t* hrow = h.data() + (u * max_rows + (o - o0)) * h_pitch;
              const Gather<opmath_t> pass{term_rows.data(), ns, o, 1, grp.rows.data(), 1, S2, 1};
              gather_columns(pass, g_phases, cv, o, 1, 0, pw, &hrow, false, phase_buf.data(), phase_pitch);
            }
          }
        }
        // The direct gathers' zero row (for rows outside the gradient) has its pixel pad.left - 1 on a vector boundary,
        // as an aligned gradient's rows do (gather_rows' aligned rows): the buffer holds a vector more for it.
        const opmath_t* const zero_row = aligned_within(zeros.data() + E * cv + pad.left - 1) - (pad.left - 1);
        Gather<opmath_t> direct{g_rows.data(), Ld, o0, nO, wl.data(), S1, S2, sh, zero_row,
                                g_in_place ? Wo : 0};
        direct.patterns = direct_patterns.empty() ? nullptr : direct_patterns.data();
        // Streamed only as dL/dy's first touch: lines a pass before had just written sat in the cache when streamed
        // (the column passes of the DCT 5x5 bank's backward, after the identity's, 1.08-1.13x the time so).
        direct.stream = stream_grad && in_place && G == 0 && identity_in_gather && rows != acc.data();
        const Gather<opmath_t> columns{h_rows.data(), G, o0, nO, group_columns.data(), S1, 1, sh, zeros.data()};
        for (int64_t p = p0; p < p1; p += kRows) {
          const int64_t nr = std::min(kRows, p1 - p);
          if (incremental) stage_until(std::min(o1, floor_div(p + nr - 1, sh) + 1));
          opmath_t* dst[kRows];
          for (int64_t r = 0; r < nr; ++r)
            dst[r] = in_place ? rows + ((p + r - pad.top - t.i0) * W - pad.left) * cv + qa * cv
                              : adj.data() + r * h_pitch;
          bool accumulate = in_place;
          const opmath_t* identity_rows[kRows];
          if (identity_in_gather) accumulate = identity_starts_sums;
          for (int64_t r = 0; r < nr && identity_starts_sums; ++r)
            identity_rows[r] = reinterpret_cast<const opmath_t*>(identity_plane + (p + r - pad.top) * gsH);
          if (Ld > 0 && by_classes) {
            for (int64_t r = 0; r < nr; ++r) {
              const opmath_t* start = identity_starts_sums ? identity_rows[r] : accumulate ? dst[r] : nullptr;
              const opmath_t* src = mixed_row(0, p + r) + qa;
              if constexpr (kLaneShifts) {
                if (sum_by_columns) {
                  sum_columns_of(S2, mirror, src, column_rows.data(), S1, start, dst[r], qb - qa);
                  continue;
                }
              }
              sum_rows(src, class_tap_off.data(), taps, start, dst[r], qb - qa);
            }
            accumulate = true;
          } else if (Ld > 0) {
            gather_columns(direct, g_phases, cv, p, nr, qa, qb, dst, accumulate, phase_buf.data(), phase_pitch,
                           identity_starts_sums ? identity_rows : nullptr);
            accumulate = true;
          }
          if (G > 0)
            gather_columns(columns, h_phases, cv, p, nr, qa, qb, dst, accumulate, phase_buf.data(), phase_pitch);
          if (!in_place)
            for (int64_t r = 0; r < nr; ++r) put(p + r, dst[r]);
        }
      };
      // Padded row p's adjoint (all pw columns) added to the image row the padding copied it from, border columns to
      // the columns they copied (reflect etc.).
      auto fold = [&](int64_t p, const opmath_t* row) {
        const int64_t i = pad_source_index(p - pad.top, H, mode);
        if (i < t.i0 || i >= t.i1) return;
        opmath_t* dst = rows + (i - t.i0) * W * cv;
        at::vec::map2([](auto x, auto y) { return x + y; }, dst, dst, row + pad.left * cv, W * cv);
        for_each_border(pad.left, W, pw, mode, [&](int64_t q, int64_t j) {
          if (j < 0) return;
          for (int64_t c = 0; c < cv; ++c) dst[j * cv + c] += row[q * cv + c];
        });
      };

      if (identity_in_gather || identity_staged) {
        // The gathers below write every row, or the staging copies the identity's gradient into each.
      } else if (identity_live) {
        // The next task's identity rows, which it reads first and nothing else asks for, are asked for now (from
        // main memory): DCT 5x5 at stride 2 spent a tenth of its backward here at 37 MB.
        if (prefetch_g && id + 1 < end) {
          const Task next = locate(tl, id + 1, C, H);
          const scalar_t* plane = g_ptr + next.n * gsN + a.channel(0, next.c0) * gsC;
          for (int64_t r = ceil_div(next.i0, sh); r * sh < next.i1; ++r)
            prefetch_pixels(plane + r * gsH, v, Wo);
        }
        identity_adjoint_rows(identity_plane, v, sh, sw, t.i0, t.i1 - t.i0, W, rows);
      } else {
        std::fill(rows, rows + (t.i1 - t.i0) * W * cv, opmath_t(0));
      }
      if (L > 0) {
        const int64_t p0 = t.i0 + pad.top, p1 = t.i1 + pad.top;
        if (mode == PadMode::Zeros) {
          run_rows(p0, p1, pad.left, pad.left + W, /*in_place=*/true, fold);
        } else {
          run_rows(p0, p1, 0, pw, /*in_place=*/false, fold);
          // Border rows of the padded image whose source row lies in this block.
          for_each_border(pad.top, H, H + S1 - 1, mode, [&](int64_t p, int64_t i) {
            if (i >= t.i0 && i < t.i1) run_rows(p, p + 1, 0, pw, /*in_place=*/false, fold);
          });
        }
      }
      if (rows == acc.data())
        for (int64_t i = t.i0; i < t.i1; ++i)
          store_row(acc.data() + (i - t.i0) * W * cv, W, cv, gy_base + i * grad_y.stride(2), grad_y.stride(3),
                    grad_y.stride(1));
    }
    if (stream_grad) stream_fence();
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
