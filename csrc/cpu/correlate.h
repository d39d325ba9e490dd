// The CPU kernels' arithmetic: register-blocked correlations over staged rows (staging.h), and the bank as the
// kernels run it, direct or factored by its plan.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <memory>
#include <numeric>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "bank_plan/bank_plan.h"
#include "bank_plan/cache.h"
#include "cpu/cost_model.h"
#include "cpu/staging.h"

namespace fixedbranch {
namespace cpu {

// Inlines a function or lambda whose array arguments must stay in registers: the gather's steps, whose accumulators
// went through memory after every multiply-add when the compiler called them instead.
#define FIXEDBRANCH_INLINE __attribute__((always_inline))

// v, which the compiler must then keep in a register: it can no longer fold the load or broadcast that made v into
// each multiply-add that uses it. Unpinned, the gather's fixed-tap steps reloaded each input vector for every output
// row it feeds and broadcast each weight once per vector: 3.0-3.1 G vector multiply-adds a second on one Xeon core for
// 7x7 and 11x11 filters over staged rows, 3.6-3.8 G pinned. (Pinned in the strided backward's phase sums it changed
// nothing measurable.)
template <typename opmath_t>
FIXEDBRANCH_INLINE inline at::vec::Vectorized<opmath_t> in_register(at::vec::Vectorized<opmath_t> v) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<opmath_t, float> || std::is_same_v<opmath_t, double>) {
    using Raw = std::conditional_t<std::is_same_v<opmath_t, float>,
#if defined(CPU_CAPABILITY_AVX512)
                                   __m512, __m512d>;
#else
                                   __m256, __m256d>;
#endif
    Raw raw = v;
    asm("" : "+v"(raw));
    return raw;
  }
#endif
  return v;
}

// f(integral_constant<int, i>) for i = 0 .. N-1: indices the compiler sees as constants.
template <typename F, int... I>
FIXEDBRANCH_INLINE inline void static_for_each(F&& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, typename F>
FIXEDBRANCH_INLINE inline void static_for(F&& f) {
  static_for_each(f, std::make_integer_sequence<int, N>{});
}

// f(integral_constant<int, N>) for a run-time count n in 1..kMost (kMost <= 5): the vectors of a step, the filters
// of a block.
template <int kMost, typename F>
FIXEDBRANCH_INLINE inline void with_count(int64_t n, F&& f) {
  using std::integral_constant;
  switch (n) {
    case 1: f(integral_constant<int, 1>{}); break;
    case 2: if constexpr (kMost >= 2) f(integral_constant<int, 2>{}); break;
    case 3: if constexpr (kMost >= 3) f(integral_constant<int, 3>{}); break;
    case 4: if constexpr (kMost >= 4) f(integral_constant<int, 4>{}); break;
    default: if constexpr (kMost >= 5) f(integral_constant<int, 5>{}); break;
  }
}

// step(s, d, x, integral_constant<int, N>{}, last) over `rows` rows of `len` outputs (row r reads src + r *
// src_pitch, writes dst[k] + r * dst_pitch): steps of U vectors, then the rest, fewer than U vectors, as one step of
// as many vectors as it needs, whose last vector keeps `last` values: single vectors would load and broadcast as much
// for a fraction of the multiply-adds (rows of 28 outputs ran 60% slower so).
template <int KB, int U, typename opmath_t, typename Step>
FIXEDBRANCH_INLINE inline void for_each_step(const opmath_t* src, int64_t src_pitch, opmath_t* const* dst,
                                             int64_t dst_pitch, int64_t rows, int64_t len, Step&& step) {
  constexpr int64_t V = at::vec::Vectorized<opmath_t>::size();
  using std::integral_constant;
  opmath_t* d[KB];
  for (int64_t r = 0; r < rows; ++r) {
    const opmath_t* s = src + r * src_pitch;
    for (int k = 0; k < KB; ++k) d[k] = dst[k] + r * dst_pitch;
    int64_t x = 0;
    for (; x + U * V <= len; x += U * V) step(s, d, x, integral_constant<int, U>{}, V);
    const int64_t rest = len - x;
    if (rest == 0) continue;
    const int64_t last = rest - (rest - 1) / V * V;  // values in the step's last vector
    with_count<U>((rest + V - 1) / V, [&](auto vectors) FIXEDBRANCH_INLINE { step(s, d, x, vectors, last); });
  }
}

// dst[k][x] = sum_t w[k * taps + t] * src[x + off[t]] for x in [0, len) and KB branches at once, for `rows` rows
// whose src and dst lie src_pitch and dst_pitch apart.
//
// The input vectors of a tap are loaded once and feed all KB branches, so a step of U vectors costs U input loads
// and KB weight broadcasts for KB*U FMAs. One branch at a time needed a broadcast and a load per FMA and ran at a
// third of the FMA rate (3.0 ns per pixel for K=4 3x3 float32, in cache, on one AVX2 core). A row's last values
// take single vectors, the very last stored in part. src must be readable a vector past src + len + max(off) in
// every row, unless kExactTail: then the last vector of a row loads only the values it keeps, and src may be a
// tensor's rows, read up to their end. kStream: whole vectors are stored past the caches (stream_store).
template <int KB, int U, bool kExactTail = false, bool kStream = false, typename opmath_t>
void correlate(const opmath_t* src, const int64_t* off, const opmath_t* w, int64_t taps, opmath_t* const* dst,
               int64_t len, int64_t rows = 1, int64_t src_pitch = 0, int64_t dst_pitch = 0) {
  using Vec = at::vec::Vectorized<opmath_t>;
  constexpr int64_t V = Vec::size();
  static_assert(U * V <= kSlack<opmath_t>, "slack too small for one step");
  // N vectors from x on; the last one keeps `last` values (V: all).
  auto step = [&](const opmath_t* s, opmath_t* const* d, int64_t x, auto vectors, int64_t last) FIXEDBRANCH_INLINE {
    constexpr int N = decltype(vectors)::value;
    Vec acc[KB][N];
    for (int k = 0; k < KB; ++k)
      for (int u = 0; u < N; ++u) acc[k][u] = Vec(opmath_t(0));
    for (int64_t t = 0; t < taps; ++t) {
      const opmath_t* in_t = s + x + off[t];
      Vec in[N];
      for (int u = 0; u < N; ++u)
        in[u] = kExactTail && u + 1 == N && last < V ? Vec::loadu(in_t + u * V, last) : Vec::loadu(in_t + u * V);
      for (int k = 0; k < KB; ++k) {
        const Vec wk(w[k * taps + t]);
        for (int u = 0; u < N; ++u) acc[k][u] = at::vec::fmadd(wk, in[u], acc[k][u]);
      }
    }
    for (int k = 0; k < KB; ++k)
      for (int u = 0; u < N; ++u) store_vector(acc[k][u], d[k] + x + u * V, u + 1 < N ? V : last, kStream);
  };
  for_each_step<KB, U>(src, src_pitch, dst, dst_pitch, rows, len, step);
}

// The taps of a 3x3 filter that the kernels multiply, tap (a, t) at bit 3a + t: every tap, or the nonzero taps of the
// common edge and Laplacian filters (Sobel, Prewitt and Scharr: a zero middle column or row; the four-neighbour
// Laplacian: zero corners). The 3x3 bank of four (Sobel x and y, Laplacian, Gaussian) has 26 nonzero taps of 36. A
// NaN or infinite value so reaches a sum through the nonzero taps only, where a zero tap would multiply it into a NaN.
constexpr uint32_t kEveryTap = ~0u, kMiddleColumnZero = 0x16D, kMiddleRowZero = 0x1C7, kCornersZero = 0x0BA;

constexpr bool pattern_has(uint32_t pattern, int bit) { return pattern == kEveryTap || ((pattern >> bit) & 1u); }

// The pattern with the fewest taps that holds every nonzero tap of the 3x3 filter w (row-major), else kEveryTap.
template <typename T>
uint32_t tap_pattern(const T* w) {
  uint32_t nonzero = 0;
  for (int j = 0; j < 9; ++j)
    if (!(w[j] == T(0))) nonzero |= 1u << j;
  for (const uint32_t pattern : {kCornersZero, kMiddleColumnZero, kMiddleRowZero})
    if ((nonzero & ~pattern) == 0) return pattern;
  return kEveryTap;
}

// f(integral_constant<uint32_t, pattern>) for a pattern of tap_pattern.
template <typename F>
FIXEDBRANCH_INLINE inline void with_tap_pattern(uint32_t pattern, F&& f) {
  using std::integral_constant;
  switch (pattern) {
    case kMiddleColumnZero: f(integral_constant<uint32_t, kMiddleColumnZero>{}); break;
    case kMiddleRowZero: f(integral_constant<uint32_t, kMiddleRowZero>{}); break;
    case kCornersZero: f(integral_constant<uint32_t, kCornersZero>{}); break;
    default: f(integral_constant<uint32_t, kEveryTap>{}); break;
  }
}

#if defined(CPU_CAPABILITY_AVX512)
constexpr bool kLaneShifts = true;
#else
constexpr bool kLaneShifts = false;
#endif

// The vector of lanes x - B .. x - B + V - 1 from two consecutive vectors (prev at x - V, cur at x): AVX-512's
// valignd/valignq, for float and double; elsewhere unused (kLaneShifts).
template <int B, typename opmath_t>
FIXEDBRANCH_INLINE inline at::vec::Vectorized<opmath_t> lanes_before(const at::vec::Vectorized<opmath_t>& prev,
                                                                     const at::vec::Vectorized<opmath_t>& cur) {
#if defined(CPU_CAPABILITY_AVX512)
  constexpr int V = at::vec::Vectorized<opmath_t>::size();
  if constexpr (std::is_same_v<opmath_t, float>) {
    return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(cur), _mm512_castps_si512(prev), V - B));
  } else {
    return _mm512_castsi512_pd(_mm512_alignr_epi64(_mm512_castpd_si512(cur), _mm512_castpd_si512(prev), V - B));
  }
#else
  static_assert(B < 0, "lanes_before needs AVX-512 (kLaneShifts)");
  return cur;
#endif
}

// correlate<KB, U> (kExactTail false) for 3x3 filters, filter k multiplying the taps of patterns[k] only: a step
// loads the nine taps' input vectors once, for every filter, then runs each filter's pattern (dispatched once a
// filter and a step) in two partial sums. Nine taps of U = 2 vectors, two sums a filter: AVX-512's registers only.
// The 3x3 bank of four's forward (y = 4x7x96x96 float32, one process alternating both ways) took 0.92-0.94x the
// time on 1 and 2 threads, not the 0.72x of its multiply-adds, as in the backward's gathers; at 37.6 MB of output,
// bound by its streamed writes, its time did not change.
template <int KB, bool kStream = false, typename opmath_t>
void correlate_3x3(const opmath_t* src, const int64_t* off, const opmath_t* w, const uint32_t* patterns,
                   opmath_t* const* dst, int64_t len, int64_t rows, int64_t src_pitch, int64_t dst_pitch,
                   bool aligned_rows = false) {
  using Vec = at::vec::Vectorized<opmath_t>;
  constexpr int64_t V = Vec::size();
  constexpr int U = 2;
  static_assert(U * V <= kSlack<opmath_t>, "slack too small for one step");
  int64_t o[9];
  for (int t = 0; t < 9; ++t) o[t] = off[t];
  // aligned_rows: rows staged with their centre column on the vectors' alignment (every row's tap (a, 1) a whole
  // number of vectors from the first's, which is on a boundary), readable a vector before each row's first centre
  // vector. Each row then loads the aligned vectors around a step once and lane shifts make its left and right taps'
  // inputs, where loads one pixel off the alignment split cache lines. (The offsets are checked here too.)
  bool aligned = false;
  if constexpr (kLaneShifts) {
    aligned = aligned_rows && reinterpret_cast<uintptr_t>(src + o[1]) % sizeof(Vec) == 0 && src_pitch % V == 0;
    for (int a = 0; a < 3; ++a)
      aligned = aligned && o[3 * a] + 1 == o[3 * a + 1] && o[3 * a + 2] == o[3 * a + 1] + 1 &&
                (o[3 * a + 1] - o[1]) % V == 0;
  }
  auto step = [&](const opmath_t* s, opmath_t* const* d, int64_t x, auto vectors, int64_t last) FIXEDBRANCH_INLINE {
    constexpr int N = decltype(vectors)::value;
    Vec in[9][N];
    if constexpr (kLaneShifts) {
      if (aligned) {
        static_for<3>([&](auto a) FIXEDBRANCH_INLINE {
          const opmath_t* centre = s + x + o[3 * a + 1];
          Vec v[N + 2];
          for (int j = 0; j < N + 2; ++j) v[j] = in_register(Vec::loadu(centre + (j - 1) * V));
          static_for<N>([&](auto u) FIXEDBRANCH_INLINE {
            in[3 * a][u] = lanes_before<1>(v[u], v[u + 1]);
            in[3 * a + 1][u] = v[u + 1];
            in[3 * a + 2][u] = lanes_before<V - 1>(v[u + 1], v[u + 2]);
          });
        });
      }
    }
    if (!kLaneShifts || !aligned) {
      static_for<9>([&](auto t) FIXEDBRANCH_INLINE {
        for (int u = 0; u < N; ++u) in[t][u] = in_register(Vec::loadu(s + x + o[t] + u * V));
      });
    }
    static_for<KB>([&](auto k) FIXEDBRANCH_INLINE {
      constexpr int kFilter = decltype(k)::value;
      with_tap_pattern(patterns[kFilter], [&](auto pattern) FIXEDBRANCH_INLINE {
        constexpr uint32_t kPattern = decltype(pattern)::value;
        Vec acc[2][N];
        for (int u = 0; u < N; ++u) acc[0][u] = acc[1][u] = Vec(opmath_t(0));
        static_for<9>([&](auto t) FIXEDBRANCH_INLINE {
          constexpr int kTap = decltype(t)::value;
          if constexpr (pattern_has(kPattern, kTap)) {
            const Vec wk(w[kFilter * 9 + kTap]);
            for (int u = 0; u < N; ++u) acc[kTap % 2][u] = at::vec::fmadd(wk, in[kTap][u], acc[kTap % 2][u]);
          }
        });
        for (int u = 0; u < N; ++u)
          store_vector(acc[0][u] + acc[1][u], d[kFilter] + x + u * V, u + 1 < N ? V : last, kStream);
      });
    });
  };
  for_each_step<KB, U>(src, src_pitch, dst, dst_pitch, rows, len, step);
}

// run(integral_constant KB, integral_constant U) for a run-time block of kb in 1..kMaxClassBranches branches: the
// vectors a step of correlate<KB, U> takes.
template <typename F>
void with_block_shape(int64_t kb, F&& run) {
  using std::integral_constant;
  switch (kb) {
    case 8: if constexpr (kMaxClassBranches >= 8) run(integral_constant<int, 8>{}, integral_constant<int, 2>{}); break;
    case 7: if constexpr (kMaxClassBranches >= 7) run(integral_constant<int, 7>{}, integral_constant<int, 2>{}); break;
    case 6: if constexpr (kMaxBranches >= 6) run(integral_constant<int, 6>{}, integral_constant<int, 2>{}); break;
    case 5: if constexpr (kMaxBranches >= 5) run(integral_constant<int, 5>{}, integral_constant<int, 2>{}); break;
    case 4: run(integral_constant<int, 4>{}, integral_constant<int, 2>{}); break;
    case 3: run(integral_constant<int, 3>{}, integral_constant<int, 2>{}); break;
    case 2: run(integral_constant<int, 2>{}, integral_constant<int, 3>{}); break;
    default: run(integral_constant<int, 1>{}, integral_constant<int, 4>{}); break;
  }
}

// correlate<KB, ...> for a run-time KB in 1..kMaxBranches.
template <bool kExactTail = false, bool kStream = false, typename opmath_t>
void correlate_block(int64_t kb, const opmath_t* src, int64_t src_pitch, const int64_t* off, const opmath_t* w,
                     int64_t taps, opmath_t* const* dst, int64_t dst_pitch, int64_t rows, int64_t len) {
  with_block_shape(kb, [&](auto blocks, auto vectors) {
    constexpr int KB = decltype(blocks)::value, U = decltype(vectors)::value;
    if constexpr (KB <= kMaxBranches)
      correlate<KB, U, kExactTail, kStream>(src, off, w, taps, dst, len, rows, src_pitch, dst_pitch);
  });
}

// K branches over one input (a bank's direct filters, its column passes, the row passes of filters that share a
// column), `rows` rows of `len` values: row r reads src + r * src_pitch and writes branch k at dst[k] + r * dst_pitch.
// The branches run in as few blocks as kMaxBranches allows, of even sizes: five as one block, not four and a block
// of one, which loads an input vector per multiply-add (the DCT 5x5 forward spent as long on its blocks of one as
// on the blocks of four, 4x the work).
template <bool kExactTail = false, bool kStream = false, typename opmath_t>
void correlate_blocks(int64_t K, const opmath_t* src, int64_t src_pitch, const int64_t* off, const opmath_t* w,
                      int64_t taps, opmath_t* const* dst, int64_t dst_pitch, int64_t rows, int64_t len) {
  for_each_branch_block(K, [&](int64_t k, int64_t kb) {
    correlate_block<kExactTail, kStream>(kb, src, src_pitch, off, w + k * taps, taps, dst + k, dst_pitch, rows, len);
  });
}

// The taps of a block of filters grouped into classes whose weights agree in every filter of the block: the mirror
// and point symmetries of Gaussians, Laplacians of Gaussians and Gabor filters. A class's inputs are summed before
// the block's multiply-adds (correlate_classes), so each filter costs one multiply-add and one weight broadcast a
// class, not a tap: a Gaussian/LoG 7x7 block of eight makes 10 classes of 49 taps (39 adds and 80 multiply-adds a
// vector instead of 392 multiply-adds).
template <typename opmath_t>
struct TapClasses {
  int64_t count = 0;               // classes
  std::vector<int64_t> begin;      // class c: members[begin[c] .. begin[c + 1])
  std::vector<int64_t> members;    // tap indices, class by class, larger classes first
  std::vector<opmath_t> weights;   // weights[k * count + c]: filter k of the block on class c
};

// The classes of the kb filters w[k * taps + t], taps equal when their weights are in every filter (exactly, so that
// every class holds the same value for each filter and NaN or infinite inputs propagate as in the direct sum).
template <typename opmath_t>
TapClasses<opmath_t> tap_classes(const opmath_t* w, int64_t kb, int64_t taps) {
  std::vector<int64_t> order(taps);
  std::iota(order.begin(), order.end(), 0);
  // A strict weak order for the sort: NaN after every number, NaNs alike, ties by tap.
  auto before = [](opmath_t x, opmath_t y) { return x != x ? false : y != y || x < y; };
  auto less = [&](int64_t a, int64_t b) {
    for (int64_t k = 0; k < kb; ++k) {
      const opmath_t x = w[k * taps + a], y = w[k * taps + b];
      if (before(x, y)) return true;
      if (before(y, x)) return false;
    }
    return a < b;
  };
  auto same = [&](int64_t a, int64_t b) {
    for (int64_t k = 0; k < kb; ++k)
      if (!(w[k * taps + a] == w[k * taps + b])) return false;
    return true;
  };
  std::sort(order.begin(), order.end(), less);
  // Equal taps lie next to each other in that order, each class's in increasing tap order.
  std::vector<std::vector<int64_t>> classes;
  for (int64_t i = 0; i < taps; ++i) {
    if (i == 0 || !same(order[i - 1], order[i])) classes.emplace_back();
    classes.back().push_back(order[i]);
  }
  TapClasses<opmath_t> tc;
  // Largest classes first: runs of classes of one size, whose sums a step unrolls (correlate_classes).
  std::stable_sort(classes.begin(), classes.end(), [](const auto& a, const auto& b) { return a.size() > b.size(); });
  tc.count = static_cast<int64_t>(classes.size());
  tc.begin.push_back(0);
  for (const auto& c : classes) {
    tc.members.insert(tc.members.end(), c.begin(), c.end());
    tc.begin.push_back(static_cast<int64_t>(tc.members.size()));
  }
  tc.weights.resize(kb * tc.count);
  for (int64_t k = 0; k < kb; ++k)
    for (int64_t c = 0; c < tc.count; ++c) tc.weights[k * tc.count + c] = w[k * taps + classes[c][0]];
  return tc;
}

// correlate<KB, U> (kExactTail false) with the block's taps in classes: dst[k][x] = sum_c tc.weights[k * count + c]
// * sum_{t in c} src[x + off[t]]. Same operands, same rows and the same stores as correlate.
template <int KB, int U, bool kStream = false, typename opmath_t>
void correlate_classes(const opmath_t* src, const int64_t* off, const TapClasses<opmath_t>& tc,
                       opmath_t* const* dst, int64_t len, int64_t rows = 1, int64_t src_pitch = 0,
                       int64_t dst_pitch = 0) {
  using Vec = at::vec::Vectorized<opmath_t>;
  constexpr int64_t V = Vec::size();
  static_assert(U * V <= kSlack<opmath_t>, "slack too small for one step");
  const int64_t count = tc.count;
  const int64_t* begin = tc.begin.data();
  const opmath_t* w = tc.weights.data();
  std::vector<int64_t> member_off(tc.members.size());
  for (size_t j = 0; j < member_off.size(); ++j) member_off[j] = off[tc.members[j]];
  const int64_t* m_off = member_off.data();
  auto step = [&](const opmath_t* s, opmath_t* const* d, int64_t x, auto vectors, int64_t last) FIXEDBRANCH_INLINE {
    constexpr int N = decltype(vectors)::value;
    Vec acc[KB][N];
    for (int k = 0; k < KB; ++k)
      for (int u = 0; u < N; ++u) acc[k][u] = Vec(opmath_t(0));
    // Class c's members summed (M of them: unrolled, pairwise), then its multiply-adds.
    auto one_class = [&](int64_t c, auto members) FIXEDBRANCH_INLINE {
      constexpr int M = decltype(members)::value;
      const int64_t* mo = m_off + begin[c];
      Vec in[N];
      if constexpr (M > 0) {
        Vec part[M][N];
        static_for<M>([&](auto j) FIXEDBRANCH_INLINE {
          for (int u = 0; u < N; ++u) part[j][u] = Vec::loadu(s + x + mo[j] + u * V);
        });
        // Pairs, then pairs of pairs (M is a power of two).
        auto level = [&](auto width) FIXEDBRANCH_INLINE {
          constexpr int Wd = decltype(width)::value;
          static_for<M / (2 * Wd)>([&](auto i) FIXEDBRANCH_INLINE {
            constexpr int j = 2 * Wd * decltype(i)::value;
            for (int u = 0; u < N; ++u) part[j][u] = part[j][u] + part[j + Wd][u];
          });
        };
        if constexpr (M >= 2) level(std::integral_constant<int, 1>{});
        if constexpr (M >= 4) level(std::integral_constant<int, 2>{});
        if constexpr (M >= 8) level(std::integral_constant<int, 4>{});
        for (int u = 0; u < N; ++u) in[u] = part[0][u];
      } else {
        for (int u = 0; u < N; ++u) in[u] = Vec::loadu(s + x + mo[0] + u * V);
        for (int64_t j = 1; j < begin[c + 1] - begin[c]; ++j)
          for (int u = 0; u < N; ++u) in[u] = in[u] + Vec::loadu(s + x + mo[j] + u * V);
      }
      for (int k = 0; k < KB; ++k) {
        const Vec wk(w[k * count + c]);
        for (int u = 0; u < N; ++u) acc[k][u] = at::vec::fmadd(wk, in[u], acc[k][u]);
      }
    };
    // Runs of classes of one size, each run's loop free of branches on the size: a branch per class mispredicted.
    for (int64_t c = 0; c < count;) {
      const int64_t size = begin[c + 1] - begin[c];
      int64_t end = c + 1;
      while (end < count && begin[end + 1] - begin[end] == size) ++end;
      auto run = [&](auto members) FIXEDBRANCH_INLINE {
        for (; c < end; ++c) one_class(c, members);
      };
      using std::integral_constant;
      switch (size) {
        case 1: run(integral_constant<int, 1>{}); break;
        case 2: run(integral_constant<int, 2>{}); break;
        case 4: run(integral_constant<int, 4>{}); break;
        case 8: run(integral_constant<int, 8>{}); break;
        default: run(integral_constant<int, 0>{}); break;
      }
    }
    for (int k = 0; k < KB; ++k)
      for (int u = 0; u < N; ++u) store_vector(acc[k][u], d[k] + x + u * V, u + 1 < N ? V : last, kStream);
  };
  for_each_step<KB, U>(src, src_pitch, dst, dst_pitch, rows, len, step);
}

// dst[x] = sum_s sum_t w[s * taps + t] * src[s][x + off[t]]: a sum over branches (the backward's, a factored
// filter's terms), kept in registers across all sources so that it is written once; `rows` rows whose sources lie
// src_pitch apart and whose dst lie dst_pitch apart. As in correlate, a row's last values take one step of as many
// vectors as they need, the very last stored in part; sources must be readable a vector past x + off[t].
template <typename opmath_t>
void correlate_sum(const opmath_t* const* src, int64_t nsrc, const int64_t* off, const opmath_t* w, int64_t taps,
                   opmath_t* dst, int64_t len, int64_t rows = 1, int64_t src_pitch = 0, int64_t dst_pitch = 0) {
  using Vec = at::vec::Vectorized<opmath_t>;
  constexpr int64_t V = Vec::size();
  constexpr int U = 4;
  auto step = [&](int64_t at, opmath_t* d, int64_t x, auto vectors, int64_t last) {
    constexpr int N = decltype(vectors)::value;
    Vec acc[N];
    for (int u = 0; u < N; ++u) acc[u] = Vec(opmath_t(0));
    for (int64_t s = 0; s < nsrc; ++s) {
      for (int64_t t = 0; t < taps; ++t) {
        const Vec wt(w[s * taps + t]);
        const opmath_t* p = src[s] + at + x + off[t];
        for (int u = 0; u < N; ++u) acc[u] = at::vec::fmadd(wt, Vec::loadu(p + u * V), acc[u]);
      }
    }
    for (int u = 0; u < N; ++u) acc[u].store(d + x + u * V, u + 1 < N ? V : last);
  };
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t at = r * src_pitch;
    opmath_t* d = dst + r * dst_pitch;
    int64_t x = 0;
    for (; x + U * V <= len; x += U * V) step(at, d, x, std::integral_constant<int, U>{}, V);
    const int64_t rest = len - x;
    if (rest == 0) continue;
    const int64_t last = rest - (rest - 1) / V * V;
    switch ((rest + V - 1) / V) {
      case 1: step(at, d, x, std::integral_constant<int, 1>{}, last); break;
      case 2: step(at, d, x, std::integral_constant<int, 2>{}, last); break;
      case 3: step(at, d, x, std::integral_constant<int, 3>{}, last); break;
      default: step(at, d, x, std::integral_constant<int, 4>{}, last); break;
    }
  }
}

// dst[x] = start[x] + sum_i src[x + off[i]] for x in [0, len), from zero if start is null: the backward's gather over
// tap classes, whose weights are all one. src must be readable a vector past len + off[i]; start (which may be dst)
// and dst are read and written only in [0, len). Steps of four vectors, each its own sum, so that the adds' latency
// overlaps.
template <typename opmath_t>
void sum_rows(const opmath_t* src, const int64_t* off, int64_t n, const opmath_t* start, opmath_t* dst, int64_t len) {
  using Vec = at::vec::Vectorized<opmath_t>;
  constexpr int64_t V = Vec::size();
  auto step = [&](const opmath_t* s, opmath_t* const* d, int64_t x, auto vectors, int64_t last) FIXEDBRANCH_INLINE {
    constexpr int N = decltype(vectors)::value;
    Vec acc[N];
    for (int u = 0; u < N; ++u)
      acc[u] = start ? Vec::loadu(start + x + u * V, u + 1 < N ? V : last) : Vec(opmath_t(0));
    for (int64_t i = 0; i < n; ++i)
      for (int u = 0; u < N; ++u) acc[u] = acc[u] + Vec::loadu(s + off[i] + x + u * V);
    for (int u = 0; u < N; ++u) acc[u].store(d[0] + x + u * V, u + 1 < N ? V : last);
  };
  for_each_step<1, 4>(src, 0, &dst, 0, 1, len, step);
}

// sum_rows over the taps of an S1 x S2 filter, column by column: dst[x] = start[x] + sum_j T_j[x - j], T_j[x] =
// sum_a src[x + row_off[j * S1 + a]] (the offsets of column j's rows; its taps' column shift -j comes from lane shifts
// in registers, lanes_before). sum_rows loaded each of the S1 * S2 taps' vectors at its column shift, almost all of
// them across two cache lines. Here the loads stay on the vectors' alignment where src's rows do, and with kMirror
// (column S2-1-j reads the rows of column j: the mirror symmetry of Gaussians and Laplacians) only (S2 + 1) / 2 columns
// are summed. Reads as sum_rows does, and S2 - 1 values before src (masked: the lanes that sum_rows' taps read).
template <int S2, bool kMirror, typename opmath_t>
void sum_columns(const opmath_t* src, const int64_t* row_off, int64_t S1, const opmath_t* start, opmath_t* dst,
                 int64_t len) {
  using Vec = at::vec::Vectorized<opmath_t>;
  constexpr int64_t V = Vec::size();
  constexpr int J = kMirror ? (S2 + 1) / 2 : S2;  // columns summed
  static_assert(S2 <= V, "a column shifts by at most a vector's lanes");
  Vec prev[J];  // T_j at x - V .. x - 1
  const LaneWindow<opmath_t> before_src(S2 - 1 - V, V);
  static_for<J>([&](auto j) FIXEDBRANCH_INLINE {
    prev[j] = Vec(opmath_t(0));
    for (int64_t a = 0; a < S1; ++a) prev[j] = prev[j] + before_src.load(src - V + row_off[j * S1 + a]);
  });
  for (int64_t x = 0; x < len; x += V) {
    Vec cur[J];
    static_for<J>([&](auto j) FIXEDBRANCH_INLINE {
      cur[j] = Vec::loadu(src + x + row_off[j * S1]);
      for (int64_t a = 1; a < S1; ++a) cur[j] = cur[j] + Vec::loadu(src + x + row_off[j * S1 + a]);
    });
    const int64_t n = std::min<int64_t>(V, len - x);
    Vec acc = start ? Vec::loadu(start + x, n) : Vec(opmath_t(0));
    static_for<S2>([&](auto j) FIXEDBRANCH_INLINE {
      constexpr int c = kMirror ? std::min<int>(j, S2 - 1 - j) : int(j);
      if constexpr (j == 0) {
        acc = acc + cur[c];
      } else {
        acc = acc + lanes_before<j>(prev[c], cur[c]);
      }
    });
    acc.store(dst + x, n);
    for (int j = 0; j < J; ++j) prev[j] = cur[j];
  }
}

// Whether the lane-shifting sums (sum_columns, transposed_row_sums) take width S: odd, 3 to 11, no wider than a vector
// of opmath_t, and lane shifts in the ISA (kLaneShifts).
template <typename opmath_t>
constexpr bool lane_shift_width(int64_t S) {
  return kLaneShifts && S % 2 == 1 && S >= 3 && S <= 11 && S <= at::vec::Vectorized<opmath_t>::size();
}

// run(integral_constant<int, S>) for a run-time width S that lane_shift_width takes.
template <typename opmath_t, typename F>
void with_odd_width(int64_t S, F&& run) {
  constexpr int64_t V = at::vec::Vectorized<opmath_t>::size();
  using std::integral_constant;
  switch (S) {
    case 3: run(integral_constant<int, 3>{}); break;
    case 5: run(integral_constant<int, 5>{}); break;
    case 7: run(integral_constant<int, 7>{}); break;
    case 9: if constexpr (V >= 9) run(integral_constant<int, 9>{}); break;
    default: if constexpr (V >= 11) run(integral_constant<int, 11>{}); break;
  }
}

// sum_columns for a run-time odd width S2 (with_odd_width) and symmetry.
template <typename opmath_t>
void sum_columns_of(int64_t S2, bool mirror, const opmath_t* src, const int64_t* row_off, int64_t S1,
                    const opmath_t* start, opmath_t* dst, int64_t len) {
  with_bool(mirror, [&](auto kMirror) {
    with_odd_width<opmath_t>(S2, [&](auto width) {
      sum_columns<decltype(width)::value, decltype(kMirror)::value>(src, row_off, S1, start, dst, len);
    });
  });
}

// A factored backward's transposed row passes of one group, summed (one channel a pixel, column stride SW of 1 or
// 2): dst[q] = sum_b sum_e w[b * ns + e] * src_e[m - d] over the taps b = rho + SW * d of the column's phase, q = rho
// + SW * m, for q in [0, out_len), where src_e = first + src_off[e] holds len values and reads as zeros outside
// them; `rows` rows, src and dst pitch apart. Each step loads the ns source vectors at m once into S2 mixes (S2 * ns
// multiply-adds), shifts mix b by d lanes across the previous step's (lanes_before) and adds those of each phase;
// at stride 2 the two phases' sums are interleaved in registers into the row. The mixes never leave the registers:
// stored as rows and summed from shifted loads, the sums took a quarter of the DCT 5x5 backward and waited on their
// loads. A step takes U vectors so that each weight broadcast feeds U multiply-adds: one vector a step loaded a source
// vector and broadcast S2 weights for S2 multiply-adds, close to a load each, and was bound by its loads. Two vectors
// (AVX-512), float32, 2 threads, old build against new: the DCT 5x5 backward 0.84x the time at 3.8 and 38 MB of
// gradient, 0.95x at stride 2 (9.6 MB); DCT 7x7 0.94x. ahead > 0: the sources' rows `ahead` rows further on are
// asked for as each row starts (sources read where they lie, from main memory: rows_ahead), past the last of the
// `rows` too: there lie the rows of the caller's next task where the sources are planes of a contiguous tensor (the
// next row block, or the next channel's plane). A task of fewer rows than `ahead` (the DCT 5x5 backward at stride 2
// stages 15 gradient rows a task, 17 ahead) otherwise asked for none.
template <int S2, int SW, typename opmath_t>
void transposed_row_sums(const opmath_t* first, int64_t src_pitch, const int64_t* src_off, int64_t ns,
                         const opmath_t* w, int64_t len, int64_t out_len, opmath_t* dst, int64_t dst_pitch,
                         int64_t rows, int64_t ahead = 0) {
  using Vec = at::vec::Vectorized<opmath_t>;
  constexpr int64_t V = Vec::size();
  constexpr int U = kVectorRegisters >= 32 ? 2 : 1;  // vectors a step: S2 weights broadcast for U * S2 multiply-adds
  static_assert(S2 <= V && (SW == 1 || SW == 2), "a mix shifts by fewer lanes than a vector holds");
  for (int64_t r = 0; r < rows; ++r) {
    const opmath_t* src = first + r * src_pitch;
    if (ahead > 0)
      for (int64_t e = 0; e < ns; ++e) prefetch_at(src, ahead * src_pitch + src_off[e], len);
    opmath_t* d = dst + r * dst_pitch;
    Vec prev[S2];
    for (int b = 0; b < S2; ++b) prev[b] = Vec(opmath_t(0));
    // N vectors of mixes from x on, then the row's values they complete.
    auto step = [&](int64_t x, auto vectors) FIXEDBRANCH_INLINE {
      constexpr int N = decltype(vectors)::value;
      Vec mix[N][S2];
      for (int u = 0; u < N; ++u)
        for (int b = 0; b < S2; ++b) mix[u][b] = Vec(opmath_t(0));
      const bool inside = x + N * V <= len;
      for (int64_t e = 0; e < ns; ++e) {
        const opmath_t* p = src + src_off[e] + x;
        Vec in[N];
        for (int u = 0; u < N; ++u)
          in[u] = inside ? Vec::loadu(p + u * V) : LaneWindow<opmath_t>(x + u * V, len).load(p + u * V);
        static_for<S2>([&](auto b) FIXEDBRANCH_INLINE {
          const Vec wb(w[b * ns + e]);
          for (int u = 0; u < N; ++u) mix[u][b] = at::vec::fmadd(wb, in[u], mix[u][b]);
        });
      }
      static_for<N>([&](auto u) FIXEDBRANCH_INLINE {
        const Vec* before = prev;  // the mixes of the vector before
        if constexpr (decltype(u)::value > 0) before = mix[u - 1];
        const int64_t xu = x + u * V;
        Vec phase[SW];
        static_for<SW>([&](auto rho) FIXEDBRANCH_INLINE {
          phase[rho] = mix[u][rho];
          static_for<(S2 - rho + SW - 1) / SW - 1>([&](auto i) FIXEDBRANCH_INLINE {
            constexpr int dd = i + 1, b = rho + SW * dd;
            phase[rho] = phase[rho] + lanes_before<dd>(before[b], mix[u][b]);
          });
        });
        if constexpr (SW == 1) {
          phase[0].store(d + xu, std::min<int64_t>(V, out_len - xu));
        } else {
          const auto pair = at::vec::interleave2(phase[0], phase[1]);  // the row's values from q on, in two vectors
          const int64_t q = 2 * xu;
          pair.first.store(d + q, std::min<int64_t>(V, out_len - q));
          if (out_len > q + V) pair.second.store(d + q + V, std::min<int64_t>(V, out_len - q - V));
        }
      });
      for (int b = 0; b < S2; ++b) prev[b] = mix[N - 1][b];
    };
    int64_t x = 0;
    for (; (x + (U - 1) * V) * SW < out_len; x += U * V) step(x, std::integral_constant<int, U>{});
    if (x * SW < out_len) step(x, std::integral_constant<int, 1>{});
  }
}

// Every phase of a stride-(SH, SW) adjoint at once (the strided backward's planes, planes.cpp): phase (pr, pc) sums,
// over the sources s and the taps (pr + SH*dr, pc + SW*dc) of their S1 x S2 filters w[s], src[s][x + (Dr - dr) *
// pitch + Dc - dc] into dst + (pr*SW + pc) * phase_stride, for x in [0, len). The phases share their shifted source
// vectors: one load of src[s] at (dr, dc) feeds every phase that has a tap there, so a 3x3 filter at stride 2 loads
// 4 vectors for its 9 multiply-adds, where a pass per phase loaded 9 (with 9 weight broadcasts, one per tap, both
// ways). 3x3 K=4 backward at stride 2, float32, 2 threads: 0.85-0.89x the time of the pass per phase (dL/dy of 1 to
// 30 MB). As in correlate_sum, sources must be readable a vector past x + their offsets, and a row's last values take
// one step of as many vectors as they need.
template <int S1, int S2, int SH, int SW, typename opmath_t>
void correlate_phases(const opmath_t* const* src, int64_t nsrc, const opmath_t* w, int64_t pitch, int64_t Dr,
                      int64_t Dc, opmath_t* dst, int64_t phase_stride, int64_t len) {
  using Vec = at::vec::Vectorized<opmath_t>;
  constexpr int64_t V = Vec::size();
  constexpr int U = kVectorRegisters >= 32 ? 4 : 2, P = SH * SW;
  constexpr int NR = (S1 + SH - 1) / SH, NC = (S2 + SW - 1) / SW;  // source offsets along each axis
  auto step = [&](int64_t x, auto vectors, int64_t last) FIXEDBRANCH_INLINE {
    constexpr int N = decltype(vectors)::value;
    Vec acc[P][N];
    for (int p = 0; p < P; ++p)
      for (int u = 0; u < N; ++u) acc[p][u] = Vec(opmath_t(0));
    for (int64_t s = 0; s < nsrc; ++s) {
      const opmath_t* ws = w + s * S1 * S2;
      static_for<NR>([&](auto dr) FIXEDBRANCH_INLINE {
        static_for<NC>([&](auto dc) FIXEDBRANCH_INLINE {
          const opmath_t* at = src[s] + (Dr - dr) * pitch + Dc - dc + x;
          Vec in[N];
          for (int u = 0; u < N; ++u) in[u] = Vec::loadu(at + u * V);
          static_for<SH>([&](auto pr) FIXEDBRANCH_INLINE {
            static_for<SW>([&](auto pc) FIXEDBRANCH_INLINE {
              constexpr int a = pr + SH * dr, b = pc + SW * dc;
              if constexpr (a < S1 && b < S2) {
                const Vec wv(ws[a * S2 + b]);
                for (int u = 0; u < N; ++u) acc[pr * SW + pc][u] = at::vec::fmadd(wv, in[u], acc[pr * SW + pc][u]);
              }
            });
          });
        });
      });
    }
    for (int p = 0; p < P; ++p)
      for (int u = 0; u < N; ++u) acc[p][u].store(dst + p * phase_stride + x + u * V, u + 1 < N ? V : last);
  };
  int64_t x = 0;
  for (; x + U * V <= len; x += U * V) step(x, std::integral_constant<int, U>{}, V);
  const int64_t rest = len - x;
  if (rest == 0) return;
  const int64_t last = rest - (rest - 1) / V * V;
  switch ((rest + V - 1) / V) {
    case 1: step(x, std::integral_constant<int, 1>{}, last); break;
    case 2: if constexpr (U >= 2) step(x, std::integral_constant<int, 2>{}, last); break;
    case 3: if constexpr (U >= 3) step(x, std::integral_constant<int, 3>{}, last); break;
    default: if constexpr (U >= 4) step(x, std::integral_constant<int, 4>{}, last); break;
  }
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
  // The factored filters of one term (a separable filter: every DCT basis filter) grouped by their column: the
  // forward's row pass loads each shifted vector of the column's row once for a block of them (correlate<KB>)
  // instead of once per filter, which made it one load per multiply-add (cost_model.cpp weighs the same groups).
  // Filters of several terms sum them in registers (correlate_sum).
  struct RowGroup {
    int64_t column;
    std::vector<int64_t> filters;  // indices into `factored`
    std::vector<opmath_t> rows;    // their row filters, S2 each
  };
  std::vector<RowGroup> row_groups;
  std::vector<int64_t> several_terms;  // indices into `factored`
  // The forward's: per block of the direct filters (for_each_branch_block, at most kMaxClassBranches), its tap
  // classes, if every block has at most three quarters as many classes as taps; else none.
  std::vector<TapClasses<opmath_t>> direct_classes;
  // The forward's, for 3x3 direct filters without tap classes where AVX-512's registers hold correlate_3x3's step
  // and some filter has zero taps: each direct filter's tap_pattern; else none.
  std::vector<uint32_t> direct_patterns;
};

template <typename opmath_t>
KernelBank<opmath_t> kernel_bank(const at::Tensor& bank, Pass pass, int64_t stride_w = 1) {
  KernelBank<opmath_t> kb;
  const int64_t K = bank.size(0);
  kb.S1 = bank.size(1), kb.S2 = bank.size(2);
  const int64_t taps = kb.S1 * kb.S2;
  const std::shared_ptr<const BankPlan> plan = cpu_plan(bank, pass, stride_w);  // null: every filter direct
  const std::vector<opmath_t> w = bank_values<opmath_t>(bank);
  for (int64_t k = 1; k <= K; ++k) {
    if (plan && plan->factored(k - 1)) {
      kb.factored.push_back(k);
    } else {
      kb.direct.push_back(k);
      kb.direct_weights.insert(kb.direct_weights.end(), w.begin() + (k - 1) * taps, w.begin() + k * taps);
    }
  }
  if (pass == Pass::Forward) {
    bool pay = true;
    for_each_branch_block(static_cast<int64_t>(kb.direct.size()), [&](int64_t k, int64_t n) {
      kb.direct_classes.push_back(tap_classes(kb.direct_weights.data() + k * taps, n, taps));
      pay = pay && 4 * kb.direct_classes.back().count <= 3 * taps;
    }, kMaxClassBranches);
    if (!pay) kb.direct_classes.clear();
    if (kVectorRegisters >= 32 && kb.direct_classes.empty() && kb.S1 == 3 && kb.S2 == 3) {
      for (size_t j = 0; j < kb.direct.size(); ++j)
        kb.direct_patterns.push_back(tap_pattern(kb.direct_weights.data() + j * 9));
      if (std::all_of(kb.direct_patterns.begin(), kb.direct_patterns.end(), [](uint32_t p) { return p == kEveryTap; }))
        kb.direct_patterns.clear();
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
  for (int64_t j = 0; j < static_cast<int64_t>(kb.factored.size()); ++j) {
    const int64_t e = kb.term_begin[j];
    if (kb.term_begin[j + 1] - e != 1) {
      kb.several_terms.push_back(j);
      continue;
    }
    auto grp = std::find_if(kb.row_groups.begin(), kb.row_groups.end(),
                            [&](const auto& r) { return r.column == kb.term_column[e]; });
    if (grp == kb.row_groups.end()) grp = kb.row_groups.insert(kb.row_groups.end(), {kb.term_column[e], {}, {}});
    grp->filters.push_back(j);
    grp->rows.insert(grp->rows.end(), kb.term_rows.begin() + e * kb.S2, kb.term_rows.begin() + (e + 1) * kb.S2);
  }
  return kb;
}

// kernel_bank's result, cached by the bank's content, the pass, the column stride and the factoring policy (all it
// depends on), shared by the calls with that bank: building it (the plan's lookup, the bank rounded to opmath_t, the
// tap classes sorted) took a fifth of a call's time on a 1x2x8x8 input.
template <typename opmath_t>
std::shared_ptr<const KernelBank<opmath_t>> shared_kernel_bank(const at::Tensor& bank, Pass pass,
                                                               int64_t stride_w = 1) {
  static auto* banks = new BankCache<KernelBank<opmath_t>>();  // never destroyed, as the plan cache
  std::string key = bank_content_key(bank);
  const int64_t rest[3] = {static_cast<int64_t>(pass), stride_w, static_cast<int64_t>(factoring_policy())};
  key.append(reinterpret_cast<const char*>(rest), sizeof(rest));
  if (auto hit = banks->get(key)) return hit;
  return banks->put(key, std::make_shared<const KernelBank<opmath_t>>(kernel_bank<opmath_t>(bank, pass, stride_w)));
}

// The forward's direct filters of `kb` over staged rows, as correlate_blocks runs them (the same arguments): through
// their tap classes where kb has them (correlate_classes), else correlate_blocks. Float32, 2 threads, on the Intel
// Xeon guest, both ways alternating in one process: the Gaussian/LoG 7x7 bank (one block of eight, 10 classes of
// its 49 taps) 0.48-0.54x the forward's time from 1 to 150 MB of output; the Gabor 11x11 bank (its six direct
// filters one block, 61 classes of 121: point symmetry) 0.83-0.86x. aligned_rows: see correlate_3x3.
template <bool kStream = false, typename opmath_t>
void correlate_direct(const KernelBank<opmath_t>& kb, const opmath_t* src, int64_t src_pitch, const int64_t* off,
                      opmath_t* const* dst, int64_t dst_pitch, int64_t rows, int64_t len, bool aligned_rows = false) {
  const int64_t taps = kb.S1 * kb.S2, Kd = static_cast<int64_t>(kb.direct.size());
  if (!kb.direct_patterns.empty()) {
    for_each_branch_block(Kd, [&](int64_t k, int64_t n) {
      with_block_shape(n, [&](auto blocks, auto) {
        constexpr int KB = decltype(blocks)::value;
        if constexpr (KB <= kMaxBranches)
          correlate_3x3<KB, kStream>(src, off, kb.direct_weights.data() + k * taps, kb.direct_patterns.data() + k,
                                     dst + k, len, rows, src_pitch, dst_pitch, aligned_rows);
      });
    });
    return;
  }
  if (kb.direct_classes.empty())
    return correlate_blocks<false, kStream>(Kd, src, src_pitch, off, kb.direct_weights.data(), taps, dst, dst_pitch,
                                            rows, len);
  int64_t block = 0;
  for_each_branch_block(Kd, [&](int64_t k, int64_t n) {
    const TapClasses<opmath_t>& tc = kb.direct_classes[block++];
    with_block_shape(n, [&](auto blocks, auto vectors) {
      constexpr int KB = decltype(blocks)::value, U = decltype(vectors)::value;
      correlate_classes<KB, U, kStream>(src, off, tc, dst + k, len, rows, src_pitch, dst_pitch);
    });
  }, kMaxClassBranches);
}

}  // namespace cpu
}  // namespace fixedbranch
