// The strided NCHW kernels: planes, and column pairs read where they lie (planes.h).
#include "cpu/planes.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/cache.h"
#include "cpu/staging.h"

namespace fixedbranch {
namespace cpu {
namespace {

// Strided NCHW passes of direct filters run plane by plane. Rows at a stride are short (a wavelet level of a 56-pixel
// map has 28-pixel rows), and row by row the correlation spent more on each call's setup and partial last vector than
// on its arithmetic. A task's padded rows are staged as sh*sw polyphase planes instead: plane (r % sh, q % sw) holds
// padded pixel (r, q) at row r / sh, column q / sw, each plane row `pitch` values. Every tap of every output of the
// task is then one offset into contiguous memory, the task is one correlation call over its rows. A plane row holds the
// Wo + (S2-1)/sw pixels the outputs of a row read. Float and double maps whose rows are contiguous along W are written
// in place, Wo values a row (the last vector of a row stored in part); the others go through rows of `pitch` values
// whose last (S2-1)/sw are dropped. In place saves a copy of every map: for a 3x3 bank of four at stride 2, float32, 2
// threads, 0.091 -> 0.072 ms (y = 4x7x96x96) and 0.72-0.75 -> 0.60-0.69 ms (4x51x96x96) on the 2-core AMD EPYC. The
// staging is not what bounds the pass: on the Xeon guest it took a third of the samples of the 3x3 forward (y =
// 4x7x96x96), yet a kernel that read y where it lies instead (a row's taps b = 2p, 2p + 1 the even and odd lanes of one
// pair of loads, deinterleaved in registers, no planes) took the same time (float32, 2 threads: 0.109 ms in two runs
// against 0.104-0.126 in four; 0.60-0.61 against 0.61-0.63 at 4x51x96x96). A core moves about 25 GB/s to and from the
// last-level cache there (a one-thread copy of 1.3 or 5 MB), and the maps' writes (read for ownership, written back)
// and y's reads come to 3.6 MB, 72 us of the 104 at two cores' rate. Tasks a quarter or an eighth as large, whose
// planes stay in L1, took 0.82-0.93x the time at y = 4x7x96x96 on two threads but 0.86-1.02x on one thread or at
// 4x51x96x96 (three rounds each): a few percent at most, not adopted.
struct Planes {
  int64_t sh, sw, rows, pitch;
  int64_t size() const { return rows * pitch; }
  int64_t at(int64_t r, int64_t q) const { return ((r % sh) * sw + q % sw) * size() + (r / sh) * pitch + q / sw; }
};

// The stride-2 pair kernels' steps: vectors a step (forward_pairs and backward_pairs) and filters a block
// (forward_pairs: kPairBranches * kPairVectors accumulators and kPairVectors inputs in the registers).
constexpr int kPairVectors = kVectorRegisters >= 32 ? 4 : 2, kPairBranches = kVectorRegisters >= 32 ? 5 : 4;

// The rows of y that forward_pairs' output row r reads first, asked for `ahead` output rows before it (from main
// memory, rows_ahead): `count` rows of `values` values, `pitch` apart, from base + first + r * step on (base null:
// none). Past the plane's last row lie the next plane's first rows, which the thread's next task reads where y is
// contiguous.
template <typename T>
struct RowsAhead {
  const T* base = nullptr;
  int64_t first = 0, step = 0, count = 0, pitch = 0, values = 0;
  void at(int64_t r) const {
    if (base)
      for (int64_t q = 0; q < count; ++q) prefetch_at(base, first + r * step + q * pitch, values);
  }
};

// One step of forward_pairs: KB filters (weights w, `taps` apart) over the N vectors of outputs from x0 on, summing
// the n taps j whose inputs start at src[j] (y's row + 2*x0 + b - left), their loads' windows at win[j] (the tap
// column's, forward_pairs' Step) and their weights at w + tap[j]; for `rows` rows, src_pitch and dst_pitch apart.
// Where shares[j], tap j + 1 (column b + 1 of the same row) takes the odd lanes of tap j's loads: its windows mask
// the same columns of y. So a 3x3 row of taps loads two pairs of vectors, not three: the 3x3 bank of four at stride
// 2 (float32, one process alternating both ways) took 0.83x the time at y = 4x7x96x96 on 1 and 2 threads, 0.81x at
// 4x51x96x96, as predicted from the loads and permutes that bound it (a third fewer loads, as many permutes). The
// identity, y's pixel (i*sh, 2x), is the even lanes of tap (top, left)'s loads: the first block of filters stores
// them into `identity` (null: none), not a pass of its own that loaded and permuted them again (one thread, y =
// 4x7x96x96: 0.91x the time).
// One flat loop over the taps, as in correlate, and a function of its own, each shape compiled apart: loops over tap
// rows and columns inside forward_pairs' own loop kept the accumulators in memory. `ahead`: the rows to ask for.
template <int KB, int N, typename T>
void pair_step(const T* const* src, const LaneWindow<T>* const* win, const int64_t* tap, const char* shares,
               int64_t n, const T* w, int64_t taps, T* const* maps, int64_t x0, int64_t Wo, int64_t rows,
               int64_t src_pitch, int64_t dst_pitch, bool stream, const RowsAhead<T>& ahead, T* identity,
               int64_t identity_tap) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  for (int64_t row = 0; row < rows; ++row) {
    ahead.at(row);
    Vec acc[KB][N];
    static_for<KB>([&](auto k) FIXEDBRANCH_INLINE {
      static_for<N>([&](auto u) FIXEDBRANCH_INLINE { acc[k][u] = Vec(T(0)); });
    });
    auto multiply = [&](const Vec (&in)[N], int64_t j) FIXEDBRANCH_INLINE {
      const T* wt = w + tap[j];
      static_for<KB>([&](auto k) FIXEDBRANCH_INLINE {
        const Vec wk(wt[k * taps]);
        static_for<N>([&](auto u) FIXEDBRANCH_INLINE { acc[k][u] = at::vec::fmadd(wk, in[u], acc[k][u]); });
      });
    };
    for (int64_t j = 0; j < n;) {
      const T* from = src[j] + row * src_pitch;
      const LaneWindow<T>* lanes = win[j];
      Vec even[N], odd[N];
      static_for<N>([&](auto u) FIXEDBRANCH_INLINE {
        const T* pair = from + 2 * u * V;
        std::tie(even[u], odd[u]) = at::vec::deinterleave2(lanes[2 * u].load(pair), lanes[2 * u + 1].load(pair + V));
      });
      multiply(even, j);
      if (identity && tap[j] == identity_tap) {
        static_for<N>([&](auto u) FIXEDBRANCH_INLINE {
          const int64_t x = x0 + u * V;
          store_vector(even[u], identity + row * dst_pitch + x, std::min(V, Wo - x), stream);
        });
      }
      if (shares[j]) multiply(odd, j + 1);
      j += shares[j] ? 2 : 1;
    }
    static_for<N>([&](auto u) FIXEDBRANCH_INLINE {
      const int64_t x = x0 + u * V, count = std::min(V, Wo - x);
      static_for<KB>([&](auto k) FIXEDBRANCH_INLINE {
        store_vector(acc[k][u], maps[k] + row * dst_pitch + x, count, stream);
      });
    });
  }
}

// The forward at column stride 2 in zero padding, every filter direct and in no tap classes, for float or double y
// and output whose rows are contiguous: y read where it lies, nothing staged. Output pixel (i, x) of a filter sums
// its taps (r, b) over y's pixel (i*sh + r - top, 2x + b - left): for a tap, the even lanes of the two vectors from
// y's column 2*x0 + b - left on are the tap's inputs for outputs x0 .. x0 + V - 1, one permute per vector, the lanes
// outside y's row masked to zero (LaneWindow). The identity, y's pixel (i*sh, 2x), is the even lanes from column
// 2*x0 of row i*sh.
// The planes (forward_planes) spent as long staging y as correlating it: the 3x3 bank of four, y = 4x7x96x96
// float32, 4.3 us a plane on one core, about 1.6 of them staging the planes and 1.6 correlating them.
template <typename T>
void forward_pairs(const at::Tensor& y, const KernelBank<T>& kb, const BranchArgs& a, at::Tensor& out) {
  using Vec = at::vec::Vectorized<T>;
  using Window = LaneWindow<T>;
  constexpr int64_t V = Vec::size();
  constexpr int U = kPairVectors, kMost = kPairBranches;
  const int64_t C = a.C, H = a.H, W = a.W, Ho = a.out_h, Wo = a.out_w, K = a.K, sh = a.stride_h;
  const int64_t S1 = kb.S1, S2 = kb.S2, taps = S1 * S2, top = a.pad.top, left = a.pad.left;
  TORCH_INTERNAL_ASSERT(top < S1 && left < S2);  // 'same' padding: the identity's pixel is a tap's
  // The steps along an output row, the same for every row: the first output x0, the vectors n, and the windows of
  // the loads of tap column b, vector u, half h at loads[(b * U + u) * 2 + h].
  struct Step {
    int64_t x0;
    int n;
    std::vector<Window> loads;
  };
  std::vector<Step> steps;
  for (int64_t x0 = 0; x0 < Wo; x0 += U * V) {
    Step& step = steps.emplace_back();
    step.x0 = x0;
    step.n = static_cast<int>(std::min<int64_t>(U, (Wo - x0 + V - 1) / V));
    for (int64_t b = 0; b < S2; ++b)
      for (int u = 0; u < U; ++u)
        for (int h = 0; h < 2; ++h) step.loads.emplace_back(2 * (x0 + u * V) + b - left + h * V, W);
  }
  const T* y_ptr = y.const_data_ptr<T>();
  T* out_ptr = out.mutable_data_ptr<T>();
  const T* w = kb.direct_weights.data();
  const int64_t ysH = y.stride(2), osH = out.stride(2), osC = out.stride(1);
  const bool stream = streaming_pays(static_cast<int64_t>(out.nbytes()));
  // From main memory, y's rows are asked for `ahead` output rows before their use (rows_ahead).
  const bool prefetch_y =
      prefetch_beside_pays(static_cast<int64_t>(y.nbytes()), static_cast<int64_t>(out.nbytes()));
  const int64_t ahead = rows_ahead(sh * W * static_cast<int64_t>(sizeof(T)));

  // Tasks of up to kRows output rows of one map. The rows whose taps all lie in y (all but a few at the top and
  // bottom) run as one call a step, their taps listed once.
  constexpr int64_t kRows = 32;
  const int64_t row_blocks = (Ho + kRows - 1) / kRows;
  const int64_t first_inside = (top + sh - 1) / sh;                              // i*sh - top >= 0
  const int64_t end_inside = H - S1 + top >= 0 ? (H - S1 + top) / sh + 1 : 0;  // i*sh - top + S1 <= H
  at::parallel_for(0, a.N * C * row_blocks, tasks_per_grain(kRows * ((K + 1) * Wo + sh * W)), [&](int64_t begin,
                                                                                                   int64_t end) {
    std::vector<const T*> rows(S1);  // the input rows of tap row r, null outside y
    std::vector<T*> maps(K);
    std::vector<const T*> src(taps);
    std::vector<const Window*> win(taps);
    std::vector<int64_t> tap(taps);
    std::vector<char> shares(taps);  // tap j + 1's inputs are the odd lanes of tap j's loads
    const RowsAhead<T> no_rows;
    for (int64_t id = begin; id < end; ++id) {
      const int64_t rb = id % row_blocks, c = id / row_blocks % C, n = id / (row_blocks * C);
      const int64_t i0 = rb * kRows, i1 = std::min(Ho, i0 + kRows);
      const T* plane = y_ptr + n * y.stride(0) + c * y.stride(1);
      T* out_plane = out_ptr + n * out.stride(0);
      // Output rows i .. i + count - 1, whose tap rows are those of row i (null: outside y) moved sh rows a row.
      auto run_rows = [&](int64_t i, int64_t count) {
        for (int64_t r = 0; r < S1; ++r) {
          const int64_t source = i * sh + r - top;
          rows[r] = source >= 0 && source < H ? plane + source * ysH : nullptr;
        }
        T* out_row = out_plane + i * osH;
        T* identity = a.identity ? out_row + a.channel(0, c) * osC : nullptr;
        for (int64_t j = 0; j < K; ++j) maps[j] = out_row + a.channel(a.slot(kb.direct[j]), c) * osC;
        // The sh rows output row i + ahead reads past those of the row before it, asked for once, by the first step.
        RowsAhead<T> next_rows;
        if (prefetch_y) next_rows = {plane, ((i + ahead) * sh + S1 - sh - top) * ysH, sh * ysH, sh, ysH, W};
        for (const Step& step : steps) {
          int64_t n_taps = 0;
          for (int64_t r = 0; r < S1; ++r) {
            if (!rows[r]) continue;
            for (int64_t b = 0; b < S2; ++b, ++n_taps) {
              src[n_taps] = rows[r] + 2 * step.x0 + b - left;
              win[n_taps] = step.loads.data() + b * U * 2;
              tap[n_taps] = r * S2 + b;
              shares[n_taps] = b + 1 < S2 && ((b - left) & 1) == 0;
            }
          }
          with_count<U>(step.n, [&](auto vectors) {
            constexpr int N = decltype(vectors)::value;
            for_each_branch_block(K, [&](int64_t k0, int64_t kn) {
              with_count<kMost>(kn, [&](auto blocks) {
                pair_step<decltype(blocks)::value, N>(src.data(), win.data(), tap.data(), shares.data(), n_taps,
                                                       w + k0 * taps, taps, maps.data() + k0, step.x0, Wo, count,
                                                       sh * ysH, osH, stream,
                                                       k0 == 0 && step.x0 == 0 ? next_rows : no_rows,
                                                       k0 == 0 ? identity : nullptr, top * S2 + left);
              });
            }, kMost);
          });
        }
      };
      const int64_t a0 = std::clamp(first_inside, i0, i1), a1 = std::clamp(end_inside, a0, i1);
      for (int64_t i = i0; i < a0; ++i) run_rows(i, 1);
      if (a1 > a0) run_rows(a0, a1 - a0);
      for (int64_t i = a1; i < i1; ++i) run_rows(i, 1);
    }
    if (stream) stream_fence();
  });
}

}  // namespace

// The forward of every filter when all are direct, y in NCHW (any strides) and a stride > 1.
template <typename scalar_t>
void forward_planes(const at::Tensor& y, const KernelBank<at::opmath_type<scalar_t>>& kb, const BranchArgs& a,
                    at::Tensor& out) {
  using opmath_t = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, opmath_t> && kMaskedLoads) {
    // On AVX-512, banks of up to 16 taps whose filters make one block: a permute a tap costs less than staging the
    // planes, but each block of filters permutes its taps' inputs again (float32, 2 threads, y = 4x16x96x96, against
    // the planes: 3x3 banks of 1, 2 and 5 filters 0.72x, 0.80x and 0.87x the time, 4x4 of 3 0.95x at 56x56; 3x3 of
    // 6 and 8 filters 1.04-1.13x, 5x5 of 2 and 4 1.07-1.16x, 7x7 of 4 1.08-1.27x). AVX2's permutes and masked loads
    // cost more: its build on the same machine took 0.97-1.04x the planes' time for the 3x3 bank of four at 4x7x96x96
    // and 1.13-1.2x at 4x51, 1.05-1.5x for the 3x3 banks of one and five filters.
    if (kVectorRegisters >= 32 && a.stride_w == 2 && a.mode == PadMode::Zeros && a.K > 0 && a.K <= kPairBranches &&
        kb.S1 * kb.S2 <= 16 && kb.direct_classes.empty() && y.stride(3) == 1 && out.stride(3) == 1)
      return forward_pairs(y, kb, a, out);
  }
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
  // Where each staged row and each output row's identity lie in the planes: the same for every task, and a division
  // per row was a tenth of the staging's profile.
  const int64_t staged_rows = (tl.rows - 1) * sh + S1;
  std::vector<int64_t> row_at(staged_rows), identity_at(tl.rows);
  for (int64_t r = 0; r < staged_rows; ++r) row_at[r] = planes.at(r, 0);
  for (int64_t i = 0; i < tl.rows; ++i) identity_at[i] = planes.at(i * sh + pad.top, pad.left);
  // The padded columns outside the image that the planes keep, with the image column each copies (-1: a zero): the
  // same for every row, listed once instead of mapped through the padding mode row by row.
  std::vector<std::pair<int64_t, int64_t>> border;
  for_each_border(pad.left, W, pw, a.mode, [&](int64_t q, int64_t j) {
    if (q / sw < pitch) border.emplace_back(planes.at(0, q), j);
  });
  const int64_t map_len = tl.rows * pitch + kSlack<opmath_t>;
  const scalar_t* y_ptr = y.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
  const int64_t osW = out.stride(3), slot_osC = a.channel_step() * out.stride(1);
  const bool in_place = std::is_same_v<scalar_t, opmath_t> && osW == 1;
  // In place into an output larger than the cache this process owns: streamed past it, as in the row kernels' forward.
  const bool stream_out = in_place && streaming_pays(static_cast<int64_t>(out.nbytes()));

  at::parallel_for(0, tl.tasks(a.N), tl.grain(Wo, K + 1), [&](int64_t begin, int64_t end) {
    // The last tap of the last dropped output reads (S2-1)/sw < pitch values past the planes.
    std::vector<opmath_t> tile(sh * sw * planes.size() + pitch + kSlack<opmath_t>);
    // The maps' rows when they cannot go into the output in place (zeroed on allocation: none when they can).
    std::vector<opmath_t> row(pw), maps(in_place ? 0 : K * map_len);
    std::vector<opmath_t*> dst(K);
    for (int64_t id = begin; id < end; ++id) {
      if (!in_place)
        for (int64_t k = 0; k < K; ++k) dst[k] = maps.data() + k * map_len;
      const Task t = locate(tl, id, C, Ho);
      const int64_t n = t.i1 - t.i0;
      const View v{H, W, y.stride(2), y.stride(3), y.stride(1), 1};
      const scalar_t* base = y_ptr + t.n * y.stride(0) + t.c0 * y.stride(1);
      for (int64_t r = 0; r < (n - 1) * sh + S1; ++r) {
        opmath_t* plane_row = tile.data() + row_at[r];  // row r of the planes of column phase 0
        const int64_t source = pad_source_index(t.i0 * sh - pad.top + r, H, a.mode);
        if constexpr (std::is_same_v<scalar_t, opmath_t>) {
          // Float rows split straight from y; only the few border columns go pixel by pixel.
          if (sw == 2 && v.sW == 1 && source >= 0) {
            const scalar_t* src = base + source * v.sH;
            split_phases(src, W, 2, 1, pitch, plane_row, planes.size(), pad.left);
            for (const auto& [to, j] : border) plane_row[to] = j < 0 ? opmath_t(0) : src[j];
            continue;
          }
        }
        stage_rows(base, v, t.i0 * sh - pad.top + r, 1, pad.left, pad.right, a.mode, row.data());
        split_phases(row.data(), pw, sw, 1, pitch, plane_row, planes.size());
      }
      scalar_t* out_task = out_ptr + t.n * out.stride(0) + t.i0 * out.stride(2);
      int64_t dst_pitch = pitch;
      if constexpr (std::is_same_v<scalar_t, opmath_t>) {
        if (in_place) {
          for (int64_t k = 1; k <= K; ++k) dst[k - 1] = out_task + a.channel(a.slot(k), t.c0) * out.stride(1);
          dst_pitch = out.stride(2);
        }
      }
      with_bool(stream_out, [&](auto stream) {
        correlate_direct<stream>(kb, tile.data(), pitch, off.data(), dst.data(), dst_pitch, n, Wo);
      });
      for (int64_t i = 0; i < n; ++i) {
        scalar_t* out_row = out_task + i * out.stride(2);
        if (a.identity)
          store_row(tile.data() + identity_at[i], Wo, 1, out_row + a.channel(0, t.c0) * out.stride(1), osW, slot_osC,
                    stream_out);
        if (!in_place)
          for (int64_t k = 1; k <= K; ++k)
            store_row(dst[k - 1] + i * pitch, Wo, 1, out_row + a.channel(a.slot(k), t.c0) * out.stride(1), osW,
                      slot_osC);
      }
    }
    if (stream_out) stream_fence();
  });
}

// The column geometry of backward_pairs for S x S filters in 'same' padding (left = (S - 1) / 2): dL/dy's column
// 2x + h (parity h) is padded column phase kPhase[h] at gradient column x + kShift[h] - dc for tap column
// kPhase[h] + 2*dc, so a step reads gradient columns x + o for o in kFirst .. kLast.
template <int S>
struct PairColumns {
  static constexpr int N = (S + 1) / 2;  // gradient rows (and columns) a phase reads: taps 2*d + phase, d < N
  static constexpr int kLeft = (S - 1) / 2;
  static constexpr int kPhase[2] = {kLeft % 2, 1 - kLeft % 2}, kShift[2] = {kLeft / 2, (kLeft + 1) / 2};
  static constexpr int kFirst = kShift[0] - (N - 1), kLast = kShift[1], kOffsets = kLast - kFirst + 1;
};

// One step of backward_pairs: dL/dy's column pairs x0 .. x0 + n*V - 1 of a pair of rows (out[pr], null: not this
// task's) from the L live filters' gradient rows rows[l * N + dr] (weights S*S each), the loads' windows at
// loads[(o - kFirst) * U + u] if kMasked, and the identity's gradient row (or null) for row phase identity_phase.
// A function of its own, each shape compiled apart: inside backward_pairs' loop the accumulators were kept in memory.
template <int S, int n, bool kMasked, int U, typename T>
void pair_gather(const T* const* rows, int64_t L, const T* weights, int64_t x0, const LaneWindow<T>* loads,
                 const T* identity, int64_t identity_phase, T* const* out, int64_t W) {
  using Vec = at::vec::Vectorized<T>;
  using G = PairColumns<S>;
  constexpr int64_t V = Vec::size();
  constexpr int N = G::N;
  auto load = [&](const T* row, int o, int u) FIXEDBRANCH_INLINE {
    const T* p = row + x0 + o + u * V;
    if constexpr (kMasked) return loads[(o - G::kFirst) * U + u].load(p);
    return Vec::loadu(p);
  };
  Vec acc[2][2][n];  // [row phase][column parity][vector]
  static_for<n>([&](auto u) FIXEDBRANCH_INLINE {
    static_for<4>([&](auto p) FIXEDBRANCH_INLINE { acc[p / 2][p % 2][u] = Vec(T(0)); });
  });
  for (int64_t l = 0; l < L; ++l) {
    const T* ws = weights + l * S * S;
    static_for<N>([&](auto dr) FIXEDBRANCH_INLINE {
      const T* row = rows[l * N + dr];
      static_for<G::kOffsets>([&](auto oi) FIXEDBRANCH_INLINE {
        constexpr int o = G::kFirst + oi;
        Vec in[n];
        static_for<n>([&](auto u) FIXEDBRANCH_INLINE { in[u] = load(row, o, u); });
        static_for<2>([&](auto h) FIXEDBRANCH_INLINE {
          constexpr int dc = G::kShift[h] - o;
          static_for<2>([&](auto pr) FIXEDBRANCH_INLINE {
            constexpr int ta = pr + 2 * dr, tb = G::kPhase[h] + 2 * dc;
            if constexpr (dc >= 0 && dc < N && ta < S && tb < S) {
              const Vec wv(ws[ta * S + tb]);
              static_for<n>([&](auto u) FIXEDBRANCH_INLINE {
                acc[pr][h][u] = at::vec::fmadd(wv, in[u], acc[pr][h][u]);
              });
            }
          });
        });
      });
    });
  }
  // g_0[m][x] is dL/dy's pixel (2m, 2x): its row phase, the even column of pair x (offset 0).
  if (identity) {
    static_for<2>([&](auto pr) FIXEDBRANCH_INLINE {
      if (pr != identity_phase) return;
      static_for<n>([&](auto u) FIXEDBRANCH_INLINE { acc[pr][0][u] = acc[pr][0][u] + load(identity, 0, u); });
    });
  }
  static_for<2>([&](auto pr) FIXEDBRANCH_INLINE {
    if (!out[pr]) return;
    static_for<n>([&](auto u) FIXEDBRANCH_INLINE {
      const auto pair = at::vec::interleave2(acc[pr][0][u], acc[pr][1][u]);
      const int64_t j = 2 * (x0 + u * V);  // dL/dy's column of the pair's first value, < W
      pair.first.store(out[pr] + j, std::min(V, W - j));
      if (W - j > V) pair.second.store(out[pr] + j + V, std::min(V, W - j - V));
    });
  });
}

// The strided backward of square S x S direct filters at stride 2, for float or double g and dL/dy whose rows are
// contiguous: pair by pair of dL/dy's rows, with nothing staged and no phase planes. Padded pixel (pr + 2*mr, pc +
// 2*mc) gathers the taps (pr + 2*dr, pc + 2*dc) from gradient pixel (mr - dr, mc - dc). A step runs over dL/dy's
// column pairs (2x, 2x + 1) from x0 on (PairColumns: the two columns are the two phases at their own gradient
// columns), so the sums of all four phases stay in registers and interleave into whole vectors of dL/dy's rows. Each
// gradient vector at a column offset is loaded once for every phase and tap it feeds (as in correlate_phases), read
// where g lies (LaneWindow supplying the zeros past its edges), and the identity's gradient is added to its phase.
// The passes it replaces staged g, wrote and read the phase planes and interleaved them: 3x3 K=4, float32, 2 threads,
// against a pass per phase: 0.83x the time at a 1.3 MB gradient, 0.62x at 9.4 MB, 0.44x at 37 MB (correlate_phases
// over staged planes, which runs the other dtypes and layouts: 0.85-0.89x). Steps over the phase columns instead of
// the column pairs took a vector more wherever left is odd and W/2 a multiple of the vector (W = 96: 4 vectors for
// 48 pairs); building a step's windows row by row cost about a third of its instructions.
template <int S, typename opmath_t>
void backward_pairs(const at::Tensor& g, const std::vector<int64_t>& live, const std::vector<opmath_t>& weights,
                    const BranchArgs& a, const Tiling& tl, at::Tensor& grad_y) {
  using Vec = at::vec::Vectorized<opmath_t>;
  using Window = LaneWindow<opmath_t>;
  using G = PairColumns<S>;
  constexpr int64_t V = Vec::size();
  constexpr int U = kPairVectors, N = G::N;
  const int64_t C = a.C, H = a.H, W = a.W, Ho = a.out_h, Wo = a.out_w, L = static_cast<int64_t>(live.size());
  const int64_t top = a.pad.top;
  TORCH_INTERNAL_ASSERT(top == G::kLeft && a.pad.left == G::kLeft);
  const bool identity_live = a.identity && !a.stopped[0];
  const int64_t pairs = (W + 1) / 2;  // column pairs of dL/dy, the last one even alone where W is odd
  const opmath_t* g_ptr = g.const_data_ptr<opmath_t>();
  opmath_t* gy_ptr = grad_y.mutable_data_ptr<opmath_t>();
  const std::vector<opmath_t> zeros(Wo + V, opmath_t(0));  // stands for gradient rows outside g
  // dL/dy streamed past the cache (streaming_grad_pays): its rows are then interleaved into a buffer and streamed from
  // there (the rows start a pixel off the vectors' alignment in 'same' padding, where no streaming store reaches).
  const bool stream_out =
      streaming_grad_pays(static_cast<int64_t>(g.nbytes()), static_cast<int64_t>(grad_y.nbytes()));
  // From main memory, the gradient rows a pair of rows reads first are asked for `ahead` pairs before it (rows_ahead).
  const bool prefetch_g =
      prefetch_beside_pays(static_cast<int64_t>(g.nbytes()), static_cast<int64_t>(grad_y.nbytes()));
  const int64_t ahead = rows_ahead((L + (identity_live ? 1 : 0)) * Wo * static_cast<int64_t>(sizeof(opmath_t)));
  // The steps along a pair of rows, the same for every pair: the first column pair x0, the vectors n and, for a step
  // that reads past g's edges, its loads' windows (pair_gather).
  struct PairStep {
    int64_t x0;
    int n;
    std::vector<Window> loads;  // none: no load of the step reaches past g's edges
  };
  std::vector<PairStep> steps;
  for (int64_t x0 = 0; x0 < pairs; x0 += U * V) {
    PairStep& ps = steps.emplace_back();
    ps.x0 = x0;
    ps.n = static_cast<int>(std::min<int64_t>(U, (pairs - x0 + V - 1) / V));
    if (x0 + G::kFirst >= 0 && x0 + G::kLast + ps.n * V <= Wo) continue;
    for (int o = G::kFirst; o <= G::kLast; ++o)
      for (int u = 0; u < U; ++u) ps.loads.emplace_back(x0 + o + u * V, Wo);
  }

  // The strides, read once: through the tensors, each is a chain of dependent loads and tests, several a row pair
  // (the 3x3 K=4 backward at stride 2, float32, 2 threads, old build against new: 0.80-0.88x the time without them at
  // 1.3 and 9.4 MB of gradient).
  const int64_t gsN = g.stride(0), gsC = g.stride(1), gsH = g.stride(2);
  const int64_t gysN = grad_y.stride(0), gysC = grad_y.stride(1), gysH = grad_y.stride(2);

  at::parallel_for(0, tl.tasks(a.N), tl.grain(W, a.K + 1), [&](int64_t begin, int64_t end) {
    std::vector<const opmath_t*> planes(L), rows(L * N);
    std::vector<opmath_t> row_buffer(stream_out ? 2 * W : 0);
    for (int64_t id = begin; id < end; ++id) {
      const Task t = locate(tl, id, C, H);
      auto g_plane = [&](int64_t b) { return g_ptr + t.n * gsN + a.channel(b, t.c0) * gsC; };
      for (int64_t l = 0; l < L; ++l) planes[l] = g_plane(a.slot(live[l]));
      const opmath_t* const identity_plane = g_plane(0);
      opmath_t* gy_plane = gy_ptr + t.n * gysN + t.c0 * gysC;
      for (int64_t mr = (t.i0 + top) / 2; mr <= (t.i1 - 1 + top) / 2; ++mr) {
        for (int64_t l = 0; l < L; ++l)
          for (int dr = 0; dr < N; ++dr) {
            const int64_t o = mr - dr;
            rows[l * N + dr] = o >= 0 && o < Ho ? planes[l] + o * gsH : zeros.data();
          }
        if (prefetch_g) {
          for (int64_t l = 0; l < L; ++l) prefetch_at(planes[l], (mr + ahead) * gsH, Wo);
          if (identity_live) prefetch_at(identity_plane, (mr + ahead - top / 2) * gsH, Wo);
        }
        const int64_t io = mr - top / 2;  // the identity's gradient row
        const opmath_t* identity = identity_live && io >= 0 && io < Ho ? identity_plane + io * gsH : nullptr;
        opmath_t *out[2], *dest[2];  // where a step stores dL/dy's rows, and where they belong
        for (int pr = 0; pr < 2; ++pr) {
          const int64_t i = 2 * mr + pr - top;
          dest[pr] = i >= t.i0 && i < t.i1 ? gy_plane + i * gysH : nullptr;
          out[pr] = dest[pr] && stream_out ? row_buffer.data() + pr * W : dest[pr];
        }
        for (const PairStep& ps : steps) {
          with_count<U>(ps.n, [&](auto vectors) {
            constexpr int n = decltype(vectors)::value;
            with_bool(!ps.loads.empty(), [&](auto masked) {
              pair_gather<S, n, decltype(masked)::value, U>(rows.data(), L, weights.data(), ps.x0, ps.loads.data(),
                                                            identity, top % 2, out, W);
            });
          });
        }
        for (int pr = 0; pr < 2 && stream_out; ++pr)
          if (dest[pr]) store_run(out[pr], W, dest[pr], 1, true);
      }
    }
    if (stream_out) stream_fence();
  });
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
  // f(integral_constant<int, S>) where the filters are S x S, S in {3, 5, 7}, at stride 2: the sizes the stride-2
  // kernels are built for. Whether f ran.
  auto square_at_stride_two = [&](auto&& f) {
    if (sh != 2 || sw != 2 || S1 != S2) return false;
    switch (S1) {
      case 3: f(std::integral_constant<int, 3>{}); return true;
      case 5: f(std::integral_constant<int, 5>{}); return true;
      case 7: f(std::integral_constant<int, 7>{}); return true;
      default: return false;
    }
  };
  if constexpr (std::is_same_v<scalar_t, opmath_t> && kMaskedLoads) {
    auto pairs = [&](auto size) { backward_pairs<decltype(size)::value>(g, live, weights, a, tl, grad_y); };
    if (L > 0 && g.stride(3) == 1 && grad_y.stride(3) == 1 && square_at_stride_two(pairs)) return;
  }
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
  // The common square filters at stride 2 run every phase in one pass (correlate_phases), the others phase by phase.
  using AllPhases = void (*)(const opmath_t* const*, int64_t, const opmath_t*, int64_t, int64_t, int64_t, opmath_t*,
                             int64_t, int64_t);
  AllPhases all_phases = nullptr;
  square_at_stride_two([&](auto size) {
    constexpr int S = decltype(size)::value;
    all_phases = &correlate_phases<S, S, 2, 2, opmath_t>;
  });
  const int64_t stage_len = (max_phase_rows + Dr + 1) * pitch + kSlack<opmath_t>;
  const int64_t phase_len = max_phase_rows * pitch + kSlack<opmath_t>;
  const bool identity_live = a.identity && !a.stopped[0];
  const scalar_t* g_ptr = g.const_data_ptr<scalar_t>();
  scalar_t* gy_ptr = grad_y.mutable_data_ptr<scalar_t>();

  at::parallel_for(0, tl.tasks(a.N), tl.grain(W, a.K + 1), [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> stage(L * stage_len), phases(P * phase_len), acc(tl.rows * W), identity_row(Wo);
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
          // Only the pixels: the Dc zeros before them and the zeros after lie where no pixel is ever copied, zero
          // since the buffer was made (a row outside the gradient is filled whole, above).
          copy_pixels(base + o * g.stride(2), v, Wo, 1, row + Dc);
        }
      }
      if (L > 0 && all_phases) {
        all_phases(sources.data(), L, weights.data(), pitch, Dr, Dc, phases.data(), phase_len, nm * pitch);
      } else {
        for (int64_t phase = 0; phase < P && L > 0; ++phase) {
          const int64_t nt = static_cast<int64_t>(phase_off[phase].size());
          opmath_t* dst = phases.data() + phase * phase_len;
          if (nt == 0) {
            std::fill(dst, dst + nm * pitch, opmath_t(0));
          } else {
            correlate_sum(sources.data(), L, phase_off[phase].data(), phase_w[phase].data(), nt, dst, nm * pitch);
          }
        }
      }
      // This task's rows of dL/dy: in place where they are float or double rows of W values, W apart.
      const int64_t n = t.i1 - t.i0;
      scalar_t* gy_base = gy_ptr + t.n * grad_y.stride(0) + t.c0 * grad_y.stride(1);
      opmath_t* rows = acc.data();
      if constexpr (std::is_same_v<scalar_t, opmath_t>) {
        if (grad_y.stride(3) == 1 && grad_y.stride(2) == W) rows = gy_base + t.i0 * W;
      }
      if (L == 0) {
        if (identity_live) {
          identity_adjoint_rows(g_slot(0), v, sh, sw, t.i0, n, W, rows);
        } else {
          std::fill(rows, rows + n * W, opmath_t(0));
        }
      } else {
        // The identity's gradient, g_0[m][x] at image pixel (m*sh, x*sw), is padded pixel (m*sh + top, x*sw + left):
        // phase (top % sh, left % sw), row m + top/sh, column x + left/sw. Added there, it is interleaved with the
        // filters' sums. Zeroing dL/dy's rows and scattering g_0 into every other pixel took a fifth of the pass's
        // profile; without them a 3x3 bank of four at stride 2 (y = 4x51x96x96 float32, 2 threads) went from 0.94 to
        // 0.83-0.89 ms.
        if (identity_live) {
          opmath_t* identity = phases.data() + ((pad.top % sh) * sw + pad.left % sw) * phase_len +
                               (pad.top / sh - mr0) * pitch + pad.left / sw;
          for (int64_t m = (t.i0 + sh - 1) / sh; m * sh < t.i1; ++m) {
            copy_pixels(g_slot(0) + m * g.stride(2), v, Wo, 1, identity_row.data());
            opmath_t* dst = identity + m * pitch;
            at::vec::map2([](auto x, auto y) { return x + y; }, dst, dst, identity_row.data(), Wo);
          }
        }
        // Padded row p = t.i0 + pad.top + i is phase row p / sh of row phase p % sh, counted along, not divided.
        int64_t pr = (t.i0 + pad.top) % sh, pm = (t.i0 + pad.top) / sh - mr0;
        for (int64_t i = 0; i < n; ++i) {
          interleave_phases(phases.data() + pr * sw * phase_len + pm * pitch, phase_len, sw, pad.left, W, rows + i * W);
          if (++pr == sh) pr = 0, ++pm;
        }
      }
      if (rows == acc.data())
        for (int64_t i = 0; i < n; ++i)
          store_row(rows + i * W, W, 1, gy_base + (t.i0 + i) * grad_y.stride(2), grad_y.stride(3), grad_y.stride(1));
    }
  });
}

#define FIXEDBRANCH_PLANES(scalar_t)                                                                                   \
  template void forward_planes<scalar_t>(const at::Tensor&, const KernelBank<at::opmath_type<scalar_t>>&,            \
                                         const BranchArgs&, at::Tensor&);                                             \
  template void backward_planes<scalar_t>(const at::Tensor&, const std::vector<int64_t>&,                             \
                                          const std::vector<at::opmath_type<scalar_t>>&, int64_t, int64_t,           \
                                          const BranchArgs&, at::Tensor&);
FIXEDBRANCH_PLANES(float)
FIXEDBRANCH_PLANES(double)
FIXEDBRANCH_PLANES(c10::Half)
FIXEDBRANCH_PLANES(c10::BFloat16)
#undef FIXEDBRANCH_PLANES

}  // namespace cpu
}  // namespace fixedbranch
