// How the CPU kernels move rows between tensors and a task's cache-sized buffers: staging padded (and polyphase)
// input rows widened to opmath_t, storing finished rows in any dtype and layout, and cutting the work into tasks.
// Shared by the row kernels (fixed_branch_cpu.cpp) and the plane kernels (planes.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "fixed_branch.h"

namespace fixedbranch {
namespace cpu {

// Size of a task's staged tile: small enough for L2 with the output rows, large enough that the S1-1 halo rows
// staged twice stay a small fraction in channels_last.
constexpr int64_t kTileBytes = 128 * 1024;
// Channels per task in channels_last; bounds the tile width when C is large.
constexpr int64_t kChannelBlock = 64;

// dst[i * dst_stride] = src[i * src_stride] for i in [0, n), converted: contiguous runs as one copy or one vector
// conversion.
template <typename src_t, typename dst_t>
inline void convert_strided(const src_t* src, int64_t src_stride, dst_t* dst, int64_t dst_stride, int64_t n) {
  if (src_stride == 1 && dst_stride == 1) {
    if constexpr (std::is_same_v<src_t, dst_t>) {
      // Rows are short (a few hundred bytes): a vector loop inline, where memcpy's call and size dispatch cost
      // as much as the copy.
      using Vec = at::vec::Vectorized<dst_t>;
      constexpr int64_t V = Vec::size();
      int64_t i = 0;
      for (; i + V <= n; i += V) Vec::loadu(src + i).store(dst + i);
      if (i < n) Vec::loadu(src + i, n - i).store(dst + i, n - i);
    } else {
      at::vec::convert(src, dst, n);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i * dst_stride] = static_cast<dst_t>(src[i * src_stride]);
  }
}

template <typename src_t, typename dst_t>
inline void convert_run(const src_t* src, int64_t stride, int64_t n, dst_t* dst) {
  convert_strided(src, stride, dst, 1, n);
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

// Stages npix pixels (described by v) after `lead` zero pixels, zeros following them up to `total` pixels: a
// gradient row as the backward's gathers read it, every tap that falls outside the row reading a zero.
template <typename scalar_t, typename opmath_t>
void stage_zero_padded(const scalar_t* src, const View& v, int64_t npix, int64_t lead, int64_t total, opmath_t* dst) {
  std::fill(dst, dst + lead * v.Cv, opmath_t(0));
  copy_pixels(src, v, npix, 1, dst + lead * v.Cv);
  std::fill(dst + (lead + npix) * v.Cv, dst + total * v.Cv, opmath_t(0));
}

// The zeros of n staged rows of `total` pixels (Cv values each) around their npix pixels from `lead` on.
template <typename opmath_t>
void zero_borders(opmath_t* const* dst, int64_t n, int64_t Cv, int64_t npix, int64_t lead, int64_t total) {
  for (int64_t r = 0; r < n; ++r) {
    std::fill(dst[r], dst[r] + lead * Cv, opmath_t(0));
    std::fill(dst[r] + (lead + npix) * Cv, dst[r] + total * Cv, opmath_t(0));
  }
}

// stage_zero_padded for n rows at once, pixel by pixel: pixel j of every row, then pixel j+1. Rows that interleave
// in the tensor (the slots of a channels_last gradient, whose pixels hold every slot's channels) are read as one
// stream instead of n passes that each touch every pixel.
// With `row` (a row of npix pixels, no zeros around it), the pixels of `row_src` are copied into it in the same pass.
template <typename scalar_t, typename opmath_t>
void stage_zero_padded_pixels(const scalar_t* const* src, int64_t n, const View& v, int64_t npix, int64_t lead,
                              int64_t total, opmath_t* const* dst, const scalar_t* row_src = nullptr,
                              opmath_t* row = nullptr) {
  zero_borders(dst, n, v.Cv, npix, lead, total);
  for (int64_t j = 0; j < npix; ++j) {
    if (row) convert_run(row_src + j * v.sW, v.sC, v.Cv, row + j * v.Cv);
    for (int64_t r = 0; r < n; ++r) convert_run(src[r] + j * v.sW, v.sC, v.Cv, dst[r] + (lead + j) * v.Cv);
  }
}

// stage_zero_padded_pixels for n slots of a channels_last gradient in channel order, whose pixel holds channel c of
// slot b at c * B + b from `pixels` on (its first pixel, the task's first channel, slot 0): each pixel's run of Cv * B
// values is read once into `block` and its slots `slots[r]` taken from there, instead of one value at a time, B
// values apart.
template <typename scalar_t, typename opmath_t>
void stage_pixels_by_channel(const scalar_t* pixels, const int64_t* slots, int64_t n, int64_t B, const View& v,
                             int64_t npix, int64_t lead, int64_t total, opmath_t* block, opmath_t* const* dst) {
  zero_borders(dst, n, v.Cv, npix, lead, total);
  for (int64_t j = 0; j < npix; ++j) {
    convert_run(pixels + j * v.sW, 1, v.Cv * B, block);
    for (int64_t r = 0; r < n; ++r) {
      opmath_t* to = dst[r] + (lead + j) * v.Cv;
      for (int64_t c = 0; c < v.Cv; ++c) to[c] = block[c * B + slots[r]];
    }
  }
}

// Asks for the cache line that holds *p. An asm statement on x86-64: GCC 12 at -O3 deleted the __builtin_prefetch
// loops of the backward's staging and of the stride-2 pair forward (their object code held no prefetch), as if a loop
// of prefetches did nothing.
inline void prefetch_line(const char* p) {
#if defined(__x86_64__)
  asm volatile("prefetcht0 %0" : : "m"(*p));
#else
  __builtin_prefetch(p);
#endif
}

// Asks for the cache lines of n contiguous values from src on, ahead of their use.
template <typename T>
inline void prefetch_values(const T* src, int64_t n) {
  const char* p = reinterpret_cast<const char*>(src);
  const int64_t bytes = n * static_cast<int64_t>(sizeof(T));
  for (int64_t b = 0; b < bytes; b += 64) prefetch_line(p + b);
}

// Asks for `values` values from `offset` values past base on: an address that may lie past base's tensor, where a
// prefetch does not fault, so computed as an integer.
template <typename T>
void prefetch_at(const T* base, int64_t offset, int64_t values) {
  const intptr_t address = reinterpret_cast<intptr_t>(base) + offset * static_cast<intptr_t>(sizeof(T));
  prefetch_values(reinterpret_cast<const T*>(address), values);
}

// Asks for the cache lines of npix pixels (described by v) ahead of their use: rows of contiguous values only, the
// others are left to the hardware.
template <typename scalar_t>
inline void prefetch_pixels(const scalar_t* src, const View& v, int64_t npix) {
  if (v.sW == 1 && v.Cv == 1) prefetch_values(src, npix);
}

// How many rows ahead of their use the kernels that read rows where they lie, from main memory, ask for them
// (prefetch_pays): rows of `row_bytes` each, about 16 KiB of them (a third of a 48 KiB L1). Such rows are runs of a
// few cache lines (a 96-pixel row of a plane, 6 lines; its stride-2 output's gradient rows, 3), from several planes
// at once, which the hardware's prefetchers hardly followed: on the 2-core AMD EPYC with AVX-512 (32 MiB L3), y =
// 4x204x96x96 float32, the 3x3 bank of four at stride 2 on one thread took 9.7 ms forward without and 2.2-2.5 ms
// with 16 to 24 output rows (12 to 18 KiB) asked for ahead.
constexpr int64_t kAheadBytes = 16 << 10;
inline int64_t rows_ahead(int64_t row_bytes) {
  return std::max<int64_t>(1, kAheadBytes / std::max<int64_t>(1, row_bytes));
}

// Calls f(q, j) for each border index q of a padded axis of `padded` entries whose image part is the n entries from
// `lead` on: j is the image index the padding copies into q (pad_source_index), -1 for a zero.
template <typename F>
inline void for_each_border(int64_t lead, int64_t n, int64_t padded, PadMode mode, F&& f) {
  for (int64_t q = 0; q < padded; ++q) {
    if (q == lead) q += n;
    if (q >= padded) break;
    f(q, pad_source_index(q - lead, n, mode));
  }
}

// Stages rows row0 .. row0+nrows-1 (padded coordinates, mapped through `mode`) with `lpad` and `rpad` border
// columns into dst, row-major, Cv values per pixel, the rows `pitch` values apart (0: as long as they are).
template <typename scalar_t, typename opmath_t>
void stage_rows(const scalar_t* base, const View& v, int64_t row0, int64_t nrows, int64_t lpad, int64_t rpad,
                PadMode mode, opmath_t* dst, int64_t pitch = 0) {
  const int64_t pw = lpad + v.W + rpad;
  const int64_t row_len = pw * v.Cv;
  for (int64_t t = 0; t < nrows; ++t, dst += pitch > 0 ? pitch : row_len) {
    const int64_t r = pad_source_index(row0 + t, v.H, mode);
    if (r < 0) {
      std::fill(dst, dst + row_len, opmath_t(0));
      continue;
    }
    const scalar_t* src = base + r * v.sH;
    copy_pixels(src, v, v.W, 1, dst + lpad * v.Cv);
    for_each_border(lpad, v.W, pw, mode, [&](int64_t q, int64_t j) {
      opmath_t* d = dst + q * v.Cv;
      if (j < 0) {
        std::fill(d, d + v.Cv, opmath_t(0));
      } else {
        convert_run(src + j * v.sW, v.sC, v.Cv, d);
      }
    });
  }
}

// A strided forward reads every sw-th padded column. Its staged rows are stored in polyphase order: padded column
// q at (q % sw) * phase_len + q / sw, so that the columns one tap reads for consecutive outputs are contiguous and
// the correlation vectorises as at stride 1 (tap b of output x reads phase b % sw at x + b / sw).
struct RowLayout {
  int64_t pw, sw, phase_len;  // phase_len may exceed the phase's ceil(pw / sw) pixels: a longer pitch
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
    // Whole vector pairs first, with no counts to test: rows are a few vectors long, and the masked loads and
    // stores of the general step cost as much as the split.
    int64_t m = 0;
    for (; m + V <= std::min(even, odd) && 2 * (m + V) <= pw; m += V) {
      const auto split = at::vec::deinterleave2(Vec::loadu(row + 2 * m), Vec::loadu(row + 2 * m + V));
      split.first.store(to_even + m);
      split.second.store(to_odd + m);
    }
    for (; m < std::max(even, odd); m += V) {
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

// dst[j] = the phase rows' value of padded column q = j + lpad, for j in [0, W): phase q % sw (its row at
// row + (q % sw) * phase_stride) at q / sw.
template <typename opmath_t>
void interleave_phases(const opmath_t* row, int64_t phase_stride, int64_t sw, int64_t lpad, int64_t W, opmath_t* dst) {
  using Vec = at::vec::Vectorized<opmath_t>;
  constexpr int64_t V = Vec::size();
  if (sw == 2) {
    // Even columns j = 2k read a[k], odd ones b[k]: interleave a vector of each, the last pair in part.
    const opmath_t* a = row + (lpad % 2) * phase_stride + lpad / 2;
    const opmath_t* b = row + ((lpad + 1) % 2) * phase_stride + (lpad + 1) / 2;
    const int64_t even = (W + 1) / 2, odd = W / 2;
    int64_t k = 0;
    for (; k + V <= odd; k += V) {  // whole vector pairs first, as in split_phases
      const auto pair = at::vec::interleave2(Vec::loadu(a + k), Vec::loadu(b + k));
      pair.first.store(dst + 2 * k);
      pair.second.store(dst + 2 * k + V);
    }
    for (; k < even; k += V) {
      const auto pair = at::vec::interleave2(Vec::loadu(a + k, std::min(even - k, V)),
                                             Vec::loadu(b + k, std::max<int64_t>(0, std::min(odd - k, V))));
      const int64_t left = W - 2 * k;  // columns from 2k on
      pair.first.store(dst + 2 * k, std::min(left, V));
      if (left > V) pair.second.store(dst + 2 * k + V, std::min(left - V, V));
    }
    return;
  }
  for (int64_t pc = 0; pc < sw; ++pc) {
    const opmath_t* src = row + pc * phase_stride;
    const int64_t j0 = ((pc - lpad) % sw + sw) % sw, m0 = (j0 + lpad) / sw;
    if (sw == 1) {
      std::copy_n(src + m0, W, dst);
    } else {
      for (int64_t j = j0, m = m0; j < W; j += sw, ++m) dst[j] = src[m];
    }
  }
}

template <typename scalar_t, typename opmath_t>
void stage_rows_strided(const scalar_t* base, const View& v, int64_t row0, int64_t nrows, const SamePad& pad,
                        PadMode mode, const RowLayout& layout, opmath_t* scratch, opmath_t* dst) {
  if (layout.sw == 1) {
    stage_rows(base, v, row0, nrows, pad.left, pad.right, mode, dst, layout.values() * v.Cv);
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
    if constexpr (std::is_same_v<scalar_t, opmath_t>) {
      // Column stride 2 on contiguous rows: each gradient vector interleaved with zeros into two whole vectors of
      // the row, which a fill and a scalar store every other value wrote twice (a tenth of the DCT 5x5 backward at
      // stride 2).
      if (sw == 2 && v.Cv == 1 && v.sW == 1 && r % sh == 0) {
        using Vec = at::vec::Vectorized<opmath_t>;
        constexpr int64_t V = Vec::size();
        const opmath_t* src = base + (r / sh) * v.sH;
        for (int64_t x = 0; 2 * x < W; x += V) {
          const auto pair = at::vec::interleave2(Vec::loadu(src + x, std::min(V, v.W - x)), Vec(opmath_t(0)));
          pair.first.store(dst + 2 * x, std::min(V, W - 2 * x));
          if (W > 2 * x + V) pair.second.store(dst + 2 * x + V, std::min(V, W - 2 * x - V));
        }
        continue;
      }
    }
    if (sw != 1 || r % sh != 0) std::fill(dst, dst + row_len, opmath_t(0));
    if (r % sh == 0) copy_pixels(base + (r / sh) * v.sH, v, v.W, sw, dst);
  }
}

// Elements a staged buffer carries past its end, so that a full vector may be loaded at every tap of the last,
// partial vector of a row.
template <typename opmath_t>
constexpr int64_t kSlack = 4 * at::vec::Vectorized<opmath_t>::size();

// The lanes of a vector at x that fall in [0, width), and loads of only those lanes, the others zero: a row read
// where it lies as if it were staged between zeros. Masked lanes are never read, so the row may start or end at a
// page that is not mapped; stores leave the memory outside the window alone. One masked load or store on AVX-512 and
// AVX2 (kMaskedLoads), else a copy through a buffer.
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
constexpr bool kMaskedLoads = true;
#else
constexpr bool kMaskedLoads = false;
#endif

template <typename T>
struct LaneWindow {
  using Vec = at::vec::Vectorized<T>;
  static constexpr int64_t V = Vec::size();
#if defined(CPU_CAPABILITY_AVX512)
  uint32_t lanes;
#elif defined(CPU_CAPABILITY_AVX2)
  __m256i keep;
#endif
  int64_t lo, hi;

  LaneWindow(int64_t x, int64_t width)
      : lo(std::clamp<int64_t>(-x, 0, V)), hi(std::max(lo, std::clamp<int64_t>(width - x, 0, V))) {
#if defined(CPU_CAPABILITY_AVX512)
    lanes = ((1u << hi) - 1) & ~((1u << lo) - 1);
#elif defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<T, float>) {
      const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
      keep = _mm256_and_si256(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32(static_cast<int>(lo) - 1)),
                              _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(hi)), lane));
    } else {
      const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
      keep = _mm256_and_si256(_mm256_cmpgt_epi64(lane, _mm256_set1_epi64x(lo - 1)),
                              _mm256_cmpgt_epi64(_mm256_set1_epi64x(hi), lane));
    }
#endif
  }

  // The window's lanes of p[0 .. V).
  Vec load(const T* p) const {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, float>) return _mm512_maskz_loadu_ps(static_cast<__mmask16>(lanes), p);
    if constexpr (std::is_same_v<T, double>) return _mm512_maskz_loadu_pd(static_cast<__mmask8>(lanes), p);
#elif defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<T, float>) return _mm256_maskload_ps(p, keep);
    if constexpr (std::is_same_v<T, double>) return _mm256_maskload_pd(p, keep);
#endif
    alignas(64) T buf[V] = {};
    std::copy(p + lo, p + hi, buf + lo);
    return Vec::loadu(buf);
  }

  // The window's lanes of v stored at p, the memory of the others untouched.
  void store(const Vec& v, T* p) const {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, float>) return _mm512_mask_storeu_ps(p, static_cast<__mmask16>(lanes), v);
    if constexpr (std::is_same_v<T, double>) return _mm512_mask_storeu_pd(p, static_cast<__mmask8>(lanes), v);
#elif defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<T, float>) return _mm256_maskstore_ps(p, keep, v);
    if constexpr (std::is_same_v<T, double>) return _mm256_maskstore_pd(p, keep, v);
#endif
    alignas(64) T buf[V];
    v.store(buf);
    std::copy(buf + lo, buf + hi, p + lo);
  }
};

// Streaming stores, for outputs larger than the cache this process owns (cache.h): their lines would otherwise be
// read from memory before being written, and the cache could not keep them anyway. stream_store puts v at p past the
// caches where the ISA has a streaming store and p is aligned to the vector, else stores it as usual. They are weakly
// ordered: a thread ends its streaming with stream_fence before its work counts as done.
template <typename T>
inline void stream_store(const at::vec::Vectorized<T>& v, T* p) {
  if (reinterpret_cast<uintptr_t>(p) % sizeof(at::vec::Vectorized<T>) == 0) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, float>) return _mm512_stream_ps(p, v);
    if constexpr (std::is_same_v<T, double>) return _mm512_stream_pd(p, v);
#elif defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<T, float>) return _mm256_stream_ps(p, v);
    if constexpr (std::is_same_v<T, double>) return _mm256_stream_pd(p, v);
#endif
  }
  v.store(p);
}

inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

// The first `count` values of v at p: a whole vector streamed if `stream` (stream_store), else stored. v by value: a
// reference to an accumulator, passed to a call the compiler did not inline, kept every accumulator of the stride-2
// pair forward's step in memory.
template <typename T>
inline void store_vector(at::vec::Vectorized<T> v, T* p, int64_t count, bool stream) {
  if (stream && count == at::vec::Vectorized<T>::size()) return stream_store(v, p);
  v.store(p, count);
}

// dst[i * dst_stride] = src[i] for i in [0, n), converted (convert_strided); a contiguous run of the same type
// streamed where whole vectors reach if `stream`.
template <typename scalar_t, typename opmath_t>
void store_run(const opmath_t* src, int64_t n, scalar_t* dst, int64_t dst_stride, bool stream) {
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    if (stream && dst_stride == 1) {
      using Vec = at::vec::Vectorized<opmath_t>;
      constexpr int64_t V = Vec::size();
      int64_t i = 0;
      for (; i + V <= n; i += V) stream_store(Vec::loadu(src + i), dst + i);
      if (i < n) Vec::loadu(src + i, n - i).store(dst + i, n - i);
      return;
    }
  }
  convert_strided(src, 1, dst, dst_stride, n);
}

// The first vector boundary at or after p, in a buffer allocated a vector longer: rows placed from there on keep their
// loads on the vectors' alignment.
template <typename T>
inline T* aligned_within(T* p) {
  constexpr uintptr_t kBytes = sizeof(at::vec::Vectorized<std::remove_const_t<T>>);
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(p) + kBytes - 1) / kBytes * kBytes);
}

// f(std::true_type) or f(std::false_type) as b is: a run-time choice between two compile-time variants.
template <typename F>
inline void with_bool(bool b, F&& f) {
  if (b) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// Writes W*Cv staged values of one row to a tensor whose pixels are `sW` apart and channels `sC` apart; contiguous
// runs streamed if `stream` (store_run), for an output larger than the cache this process owns.
template <typename scalar_t, typename opmath_t>
void store_row(const opmath_t* src, int64_t W, int64_t Cv, scalar_t* dst, int64_t sW, int64_t sC,
               bool stream = false) {
  auto put = [stream](const opmath_t* s, int64_t n, scalar_t* d, int64_t stride) {
    store_run(s, n, d, stride, stream);
  };
  if (Cv == 1) {
    put(src, W, dst, sW);
  } else if (sC == 1 && sW == Cv) {
    put(src, W * Cv, dst, 1);
  } else {
    for (int64_t j = 0; j < W; ++j) put(src + j * Cv, Cv, dst + j * sW, sC);
  }
}

// store_row for n rows at once, pixel by pixel: pixel j of every row, then pixel j+1. Rows that interleave in the
// tensor (the slots of a channels_last output, whose pixels hold every slot's channels) are written as one stream
// instead of n passes that each touch every pixel; contiguous channels streamed if `stream` (store_run).
template <typename scalar_t, typename opmath_t>
void store_pixels(const opmath_t* const* src, int64_t n, int64_t W, int64_t Cv, scalar_t* const* dst, int64_t sW,
                  int64_t sC, bool stream = false) {
  for (int64_t j = 0; j < W; ++j)
    for (int64_t r = 0; r < n; ++r) store_run(src[r] + j * Cv, Cv, dst[r] + j * sW, sC, stream);
}

// store_pixels for the n slots of a channels_last output in channel order, whose pixel holds channel c of slot r at
// c * n + r, for the Cv channels from dst's on: each pixel's slots are interleaved into `block` (Cv * n values) and
// stored as one run, streamed if `stream`, instead of one value at a time, n values apart.
template <typename scalar_t, typename opmath_t>
void store_pixels_by_channel(const opmath_t* const* src, int64_t n, int64_t W, int64_t Cv, scalar_t* dst, int64_t sW,
                             opmath_t* block, bool stream) {
  for (int64_t j = 0; j < W; ++j) {
    for (int64_t r = 0; r < n; ++r) {
      const opmath_t* from = src[r] + j * Cv;
      for (int64_t c = 0; c < Cv; ++c) block[c * n + r] = from[c];
    }
    store_run(block, Cv * n, dst + j * sW, 1, stream);
  }
}

// Task decomposition shared by forward and backward: images x channel blocks x row blocks.
// Tasks per thread at least, for tasks of `values` values each: small inputs run inline instead of waking a thread
// team for microseconds of work.
inline int64_t tasks_per_grain(int64_t values) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, values));
}

struct Tiling {
  int64_t cv, channel_blocks, rows, row_blocks;
  int64_t tasks(int64_t n) const { return n * channel_blocks * row_blocks; }
  int64_t grain(int64_t W, int64_t maps) const { return tasks_per_grain(rows * W * cv * maps); }
};

// `rows` output rows per task, each staging `rows_per_output` input rows of `tile_row_values` values per channel,
// plus `halo_rows` shared with the next block.
inline Tiling make_tiling(int64_t C, int64_t rows, int64_t tile_row_values, int64_t rows_per_output, int64_t halo_rows,
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

// Offsets of the S1*S2 taps in a staged tile whose rows hold `layout.values()` pixels of Cv values.
inline std::vector<int64_t> tap_offsets(int64_t s1, int64_t s2, const RowLayout& layout, int64_t cv) {
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

inline bool is_channels_last(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
}

}  // namespace cpu
}  // namespace fixedbranch
