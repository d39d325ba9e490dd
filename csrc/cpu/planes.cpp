// The strided NCHW kernels that run a task plane by plane (planes.h).
#include "cpu/planes.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>
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

}  // namespace

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

// The strided backward of square S x S direct filters at stride 2, for float or double g and dL/dy whose rows are
// contiguous: pair by pair of dL/dy's rows, with nothing staged and no phase planes. Padded pixel (pr + 2*mr, pc +
// 2*mc) gathers the taps (pr + 2*dr, pc + 2*dc) from gradient pixel (mr - dr, mc - dc), so one step over the phase
// columns mc0 .. mc0 + U*V - 1 of pair mr sums all four phases in registers (each shifted gradient vector loaded
// once for the phases that have a tap there, as in correlate_phases), read where g lies (LaneWindow supplying the
// zeros past its edges), adds the identity's gradient to its phase, interleaves the column phases and stores both
// rows into dL/dy. The passes it replaces staged g, wrote and read the phase planes and interleaved them: 3x3 K=4,
// float32, 2 threads, against a pass per phase: 0.83x the time at a 1.3 MB gradient, 0.62x at 9.4 MB, 0.44x at 37 MB
// (correlate_phases over staged planes, which runs the other dtypes and layouts: 0.85-0.89x).
template <int S, typename opmath_t>
void backward_pairs(const at::Tensor& g, const std::vector<int64_t>& live, const std::vector<opmath_t>& weights,
                    const BranchArgs& a, const Tiling& tl, at::Tensor& grad_y) {
  using Vec = at::vec::Vectorized<opmath_t>;
  using Window = LaneWindow<opmath_t>;
  constexpr int64_t V = Vec::size();
  constexpr int U = kVectorRegisters >= 32 ? 4 : 2;
  constexpr int N = (S + 1) / 2;  // gradient rows (and columns) a phase reads: taps 2*d + phase, d < N
  const int64_t C = a.C, H = a.H, W = a.W, Ho = a.out_h, Wo = a.out_w, L = static_cast<int64_t>(live.size());
  const int64_t top = a.pad.top, left = a.pad.left;
  const bool identity_live = a.identity && !a.stopped[0];
  const int64_t mc_lo = left / 2, mc_hi = (left + W - 1) / 2 + 1;  // the phase columns dL/dy's columns lie in
  const opmath_t* g_ptr = g.const_data_ptr<opmath_t>();
  opmath_t* gy_ptr = grad_y.mutable_data_ptr<opmath_t>();
  const std::vector<opmath_t> zeros(Wo + V, opmath_t(0));  // stands for gradient rows outside g
  // dL/dy streamed past the cache (streaming_grad_pays): its rows are then interleaved into a buffer and streamed from
  // there (the rows start a pixel off the vectors' alignment in 'same' padding, where no streaming store reaches).
  const bool stream_out =
      streaming_grad_pays(static_cast<int64_t>(g.nbytes()), static_cast<int64_t>(grad_y.nbytes()));
  // The steps along a pair of rows, the same for every pair: where each starts and, for a step that reaches past
  // g's or dL/dy's edges, the windows of its loads (at column shift dc; the identity's is left / 2 < N) and stores.
  // Set up once here: rows of 96 pixels are a single masked step, and building its 16 windows row by row took
  // about a third of the step's instructions.
  struct PairStep {
    int64_t mc0;
    bool masked;
    std::optional<Window> loads[N][U], stores[U][2];
  };
  std::vector<PairStep> steps;
  for (int64_t mc0 = mc_lo; mc0 < mc_hi; mc0 += U * V) {
    PairStep& ps = steps.emplace_back();
    ps.mc0 = mc0;
    ps.masked = !(mc0 - (N - 1) >= 0 && mc0 - left / 2 >= 0 && mc0 + U * V <= Wo && 2 * mc0 - left >= 0 &&
                  2 * (mc0 + U * V) - left <= W);
    if (!ps.masked) continue;
    for (int u = 0; u < U; ++u) {
      for (int dc = 0; dc < N; ++dc) ps.loads[dc][u].emplace(mc0 - dc + u * V, Wo);
      for (int h = 0; h < 2; ++h) ps.stores[u][h].emplace(2 * (mc0 + u * V) - left + h * V, W);
    }
  }

  at::parallel_for(0, tl.tasks(a.N), tl.grain(W, a.K + 1), [&](int64_t begin, int64_t end) {
    std::vector<const opmath_t*> planes(L), rows(L * N);
    std::vector<opmath_t> row_buffer(stream_out ? 2 * W : 0);
    for (int64_t id = begin; id < end; ++id) {
      const Task t = locate(tl, id, C, H);
      auto g_plane = [&](int64_t b) { return g_ptr + t.n * g.stride(0) + a.channel(b, t.c0) * g.stride(1); };
      for (int64_t l = 0; l < L; ++l) planes[l] = g_plane(a.slot(live[l]));
      opmath_t* gy_plane = gy_ptr + t.n * grad_y.stride(0) + t.c0 * grad_y.stride(1);
      for (int64_t mr = (t.i0 + top) / 2; mr <= (t.i1 - 1 + top) / 2; ++mr) {
        for (int64_t l = 0; l < L; ++l)
          for (int dr = 0; dr < N; ++dr) {
            const int64_t o = mr - dr;
            rows[l * N + dr] = o >= 0 && o < Ho ? planes[l] + o * g.stride(2) : zeros.data();
          }
        const int64_t io = mr - top / 2;  // the identity's gradient row
        const opmath_t* identity = identity_live && io >= 0 && io < Ho ? g_plane(0) + io * g.stride(2) : nullptr;
        opmath_t *out[2], *dest[2];  // where a step stores dL/dy's rows, and where they belong
        for (int pr = 0; pr < 2; ++pr) {
          const int64_t i = 2 * mr + pr - top;
          dest[pr] = i >= t.i0 && i < t.i1 ? gy_plane + i * grad_y.stride(2) : nullptr;
          out[pr] = dest[pr] && stream_out ? row_buffer.data() + pr * W : dest[pr];
        }
        auto step = [&](const PairStep& ps, auto masked) FIXEDBRANCH_INLINE {
          constexpr bool kMasked = decltype(masked)::value;
          const int64_t mc0 = ps.mc0;
          const auto& loads = ps.loads;
          const auto& stores = ps.stores;
          auto load = [&](const opmath_t* row, int dc, int u) FIXEDBRANCH_INLINE {
            const int64_t x = mc0 - dc + u * V;
            if constexpr (kMasked) return loads[dc][u]->load(row + x);
            return Vec::loadu(row + x);
          };
          Vec acc[2][2][U];
          for (int p = 0; p < 4; ++p)
            for (int u = 0; u < U; ++u) acc[p / 2][p % 2][u] = Vec(opmath_t(0));
          for (int64_t l = 0; l < L; ++l) {
            const opmath_t* ws = weights.data() + l * S * S;
            static_for<N>([&](auto dr) FIXEDBRANCH_INLINE {
              const opmath_t* row = rows[l * N + dr];
              static_for<N>([&](auto dc) FIXEDBRANCH_INLINE {
                Vec in[U];
                for (int u = 0; u < U; ++u) in[u] = load(row, dc, u);
                static_for<2>([&](auto pr) FIXEDBRANCH_INLINE {
                  static_for<2>([&](auto pc) FIXEDBRANCH_INLINE {
                    constexpr int ta = pr + 2 * dr, tb = pc + 2 * dc;
                    if constexpr (ta < S && tb < S) {
                      const Vec wv(ws[ta * S + tb]);
                      for (int u = 0; u < U; ++u) acc[pr][pc][u] = at::vec::fmadd(wv, in[u], acc[pr][pc][u]);
                    }
                  });
                });
              });
            });
          }
          // g_0[m][x] is dL/dy's pixel (2m, 2x): padded (2m + top, 2x + left), phase (top % 2, left % 2).
          // (Selected by constant indices: a run-time index would keep acc in memory.)
          if (identity) {
            static_for<2>([&](auto pr) FIXEDBRANCH_INLINE {
              static_for<2>([&](auto pc) FIXEDBRANCH_INLINE {
                if (pr != top % 2 || pc != left % 2) return;
                for (int u = 0; u < U; ++u) acc[pr][pc][u] = acc[pr][pc][u] + load(identity, left / 2, u);
              });
            });
          }
          static_for<2>([&](auto pr) FIXEDBRANCH_INLINE {
            if (!out[pr]) return;
            for (int u = 0; u < U; ++u) {
              const auto pair = at::vec::interleave2(acc[pr][0][u], acc[pr][1][u]);
              const int64_t j = 2 * (mc0 + u * V) - left;  // dL/dy's column of the pair's first value
              if constexpr (kMasked) {
                stores[u][0]->store(pair.first, out[pr] + j);
                stores[u][1]->store(pair.second, out[pr] + j + V);
              } else {
                pair.first.store(out[pr] + j);
                pair.second.store(out[pr] + j + V);
              }
            }
          });
        };
        for (const PairStep& ps : steps) {
          if (ps.masked) {
            step(ps, std::true_type{});
          } else {
            step(ps, std::false_type{});
          }
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
