// Device side of the tiling: where each thread sits, how a block stages a tile (with its halo, through the
// padding map) in shared memory, and the correlation of a thread's kRows outputs with a filter.
#pragma once

#include <ATen/OpMathType.h>

#include "fixed_branch.h"
#include "tiling.cuh"

namespace fixedbranch {
namespace cuda {

// Where a thread sits in its tile: plane, column, and the first of its kRows rows.
struct Slot {
  int c, col, row0;
};

template <typename index_t>
__device__ __forceinline__ Slot place(const Geometry<index_t>& g, int t) {
  if (g.cl) return {t % g.cb, (t / g.cb) % g.tw, (t / (g.cb * g.tw)) * kRows};
  return {t / (g.tw * g.rs), t % g.tw, ((t / g.tw) % g.rs) * kRows};
}

// Shared-memory strides of a tile of np staged planes: NCHW keeps the rows of one plane together, channels_last
// the planes of one pixel, matching the order in which threads are placed (no bank conflicts in either).
struct TileStrides {
  int c, r, q;
};

__device__ __forceinline__ TileStrides tile_strides(int cl, int np, int HR, int HC) {
  return cl ? TileStrides{1, HC * np, np} : TileStrides{HR * HC, HC, 1};
}

// Mixed-radix position of a staged element in storage order, digit 0 fastest: (column, row, plane) in NCHW,
// (plane, column, row) in channels_last. The shared-memory index of the element is its linear position, so
// stepping by the block size costs a few adds and compares instead of divisions.
struct TileCounter {
  int d0, d1, d2;
  __device__ __forceinline__ void advance(const TileCounter& step, int radix0, int radix1) {
    d0 += step.d0;
    int carry = d0 >= radix0;
    d0 -= carry ? radix0 : 0;
    d1 += step.d1 + carry;
    carry = d1 >= radix1;
    d1 -= carry ? radix1 : 0;
    d2 += step.d2 + carry;
  }
};

__device__ __forceinline__ TileCounter split_position(int e, int radix0, int radix1) {
  return {e % radix0, (e / radix0) % radix1, e / (radix0 * radix1)};
}

// Source of staged coordinate x along an axis of n pixels, or -1 for 0. A tile may reach past the padded image
// (its last row or column block overhangs); pad_source_index is defined only within the padding, and those
// positions feed no output, so they read nothing.
template <typename index_t>
__device__ __forceinline__ index_t staged_source(index_t x, index_t n, PadMode mode) {
  if (x >= 0 && x < n) return x;
  const int64_t s = pad_source_index(x, n, mode);
  return s < n ? static_cast<index_t>(s) : index_t(-1);
}

// Loads per thread issued before any is stored: one memory latency per batch instead of one per element.
constexpr int kStageBatch = 8;

// Stages rows r0 .. r0+HR-1 and columns q0 .. q0+HC-1 (image coordinates, mapped through `mode`; 0 where the
// padding is constant) of np planes; plane j starts at src + plane_offset[j], or is all zeros where that is -1.
template <typename scalar_t, typename opmath_t, typename index_t>
__device__ __forceinline__ void stage_tile(const scalar_t* __restrict__ src, const Geometry<index_t>& g,
                                           const index_t* plane_offset, int np, index_t r0, index_t q0, int HR,
                                           int HC, PadMode mode, TileCounter start, TileCounter step,
                                           opmath_t* tile) {
  const int total = np * HR * HC, nt = blockDim.x;
  const int radix0 = g.cl ? np : HC, radix1 = g.cl ? HC : HR;
  TileCounter d = start;
  for (int e0 = threadIdx.x; e0 < total; e0 += kStageBatch * nt) {
    opmath_t v[kStageBatch];
#pragma unroll
    for (int b = 0; b < kStageBatch; ++b) {
      v[b] = 0;
      if (e0 + b * nt < total) {
        const int plane = g.cl ? d.d0 : d.d2, q = g.cl ? d.d1 : d.d0, r = g.cl ? d.d2 : d.d1;
        const index_t off = plane_offset[plane];
        const index_t si = staged_source<index_t>(r0 + r, g.H, mode);
        const index_t sj = staged_source<index_t>(q0 + q, g.W, mode);
        if (off >= 0 && si >= 0 && sj >= 0) v[b] = static_cast<opmath_t>(src[off + si * g.src_h + sj * g.src_w]);
      }
      d.advance(step, radix0, radix1);
    }
#pragma unroll
    for (int b = 0; b < kStageBatch; ++b)
      if (e0 + b * nt < total) tile[e0 + b * nt] = v[b];
  }
}

// Banks small enough are copied to shared memory once per block; others are read from global memory.
template <typename opmath_t>
__device__ const opmath_t* stage_bank(const opmath_t* __restrict__ bank, bool shared, opmath_t* slot, int count) {
  if (!shared) return bank;
  for (int e = threadIdx.x; e < count; e += blockDim.x) slot[e] = bank[e];
  __syncthreads();
  return slot;
}

// Filters up to this many rows are correlated column by column from registers; taller ones tap by tap.
constexpr int kMaxStripRows = 8;

// acc[r] += sum over a < S1, b < S2 of weight(a, b) * v[(r + a) * rs + b * qs]: the kRows + S1 - 1 values of
// each column are loaded from shared memory once, not once per tap.
template <typename opmath_t, typename Weight>
__device__ __forceinline__ void correlate(const opmath_t* v, int rs, int qs, int S1, int S2, Weight weight,
                                          opmath_t (&acc)[kRows]) {
  if (S1 <= kMaxStripRows) {
    for (int b = 0; b < S2; ++b) {
      opmath_t col[kRows + kMaxStripRows - 1];
#pragma unroll
      for (int x = 0; x < kRows + kMaxStripRows - 1; ++x)
        col[x] = x < kRows + S1 - 1 ? v[x * rs + b * qs] : opmath_t(0);
#pragma unroll
      for (int a = 0; a < kMaxStripRows; ++a) {
        if (a < S1) {
          const opmath_t w = weight(a, b);
#pragma unroll
          for (int r = 0; r < kRows; ++r) acc[r] += w * col[r + a];
        }
      }
    }
  } else {
    for (int a = 0; a < S1; ++a) {
      for (int b = 0; b < S2; ++b) {
        const opmath_t w = weight(a, b);
        const opmath_t* p = v + a * rs + b * qs;
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r] += w * p[r * rs];
      }
    }
  }
}

}  // namespace cuda
}  // namespace fixedbranch
