// The next generation of CUDA kernels (FIXEDBRANCH_CUDA_KERNELS=next): what every kernel of it shares.
//
// A thread owns V "lanes" of one output row: V consecutive columns in NCHW, V consecutive channels of one pixel in
// channels_last, where V = 16 bytes / the element size (8 halves, 4 floats, 2 doubles). Where the layout allows
// (unit stride along the lanes, every other stride and the base pointer 16-byte aligned, checked on the host) the
// lanes move as one 16-byte load or store; the arithmetic is in opmath_t (float32 for the half types). The output
// options (identity, order, stride) are addressing only: no ATen copy before or after any kernel.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

#include <cstdint>

#include "fixed_branch.h"

namespace fixedbranch {
namespace cuda {
namespace next {

constexpr int kThreads = 256;
// Filters accumulated at once by a forward thread: each loaded input value feeds this many branches.
constexpr int kBranchBlock = 4;

template <typename T>
constexpr int kLanes = 16 / static_cast<int>(sizeof(T));

// Branches whose gradient is stopped: a bitmask passed by value up to kInline branches (no allocation, no copy,
// so a launch stays capturable in a CUDA graph), a device array beyond. Stopped branches are skipped, never
// multiplied by zero, so a NaN in a stopped branch's gradient cannot reach dL/dy (docs/design.md, stop_gradient).
struct StopMask {
  static constexpr int kInline = 1024;
  uint32_t bits[kInline / 32];
  const uint32_t* overflow;  // bit k - kInline for branches k >= kInline; null when K < kInline
  C10_HOST_DEVICE bool has(int k) const {
    if (k < kInline) return (bits[k >> 5] >> (k & 31)) & 1u;
    const int e = k - kInline;
    return (overflow[e >> 5] >> (e & 31)) & 1u;
  }
};

// Everything a kernel needs besides its pointers, by value. "src" is the tensor read (y forward, grad_output
// backward), "dst" the tensor written (out forward, grad_y backward). Sizes are y's (N, C, H, W) and the output's
// (OH, OW); channel c of output slot b sits at channel out_channel(b, c).
template <typename index_t>
struct Params {
  index_t N, C, H, W, OH, OW;
  index_t s_n, s_c, s_h, s_w;  // src strides
  index_t d_n, d_c, d_h, d_w;  // dst strides
  int K, B, S1, S2, top, left, sh, sw;
  int band_rows, band_cols;  // pixels this close to an edge may be copied into the padding (backward)
  int identity, channel_order;
  int vec_src, vec_dst;  // the lanes of src / dst may move as 16-byte vectors
  PadMode mode;

  __device__ __forceinline__ index_t out_channel(int b, index_t c) const {
    return channel_order ? c * B + b : b * C + c;
  }
  __device__ __forceinline__ int slot(int k) const { return k - 1 + identity; }
  // Step between the output channels of consecutive y channels of one slot.
  __device__ __forceinline__ int channel_step() const { return channel_order ? B : 1; }
};

// Source of padded coordinate x (image coordinates: -before .. n-1+after) along an axis of n pixels, or -1 where
// the value is 0: the constant padding, and positions past the padded image that only lanes beyond the output
// reach (pad_source_index is defined only within the padding).
__device__ __forceinline__ int64_t source_index(int64_t x, int64_t n, int before, int after, PadMode mode) {
  if (x >= 0 && x < n) return x;
  if (x < -before || x >= n + after) return -1;
  return pad_source_index(x, n, mode);
}

// 16-byte loads and stores of V lanes, converted to and from opmath_t.
template <typename scalar_t, typename opmath_t>
__device__ __forceinline__ void load_vector(const scalar_t* __restrict__ p, opmath_t* v) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const scalar_t* e = reinterpret_cast<const scalar_t*>(&raw);
#pragma unroll
  for (int l = 0; l < kLanes<scalar_t>; ++l) v[l] = static_cast<opmath_t>(e[l]);
}

template <typename scalar_t, typename opmath_t>
__device__ __forceinline__ void store_vector(scalar_t* __restrict__ p, const opmath_t* v) {
  uint4 raw;
  scalar_t* e = reinterpret_cast<scalar_t*>(&raw);
#pragma unroll
  for (int l = 0; l < kLanes<scalar_t>; ++l) e[l] = static_cast<scalar_t>(v[l]);
  *reinterpret_cast<uint4*>(p) = raw;
}

// V lanes `step` elements apart starting at p, `lanes` of them valid (the others read as 0): one vector when
// `vector` (then step is 1 and all V are valid).
template <typename scalar_t, typename opmath_t, typename index_t>
__device__ __forceinline__ void load_lanes(const scalar_t* __restrict__ p, index_t step, int lanes, bool vector,
                                           opmath_t* v) {
  constexpr int V = kLanes<scalar_t>;
  if (vector) {
    load_vector(p, v);
    return;
  }
#pragma unroll
  for (int l = 0; l < V; ++l) v[l] = l < lanes ? static_cast<opmath_t>(p[l * step]) : opmath_t(0);
}

template <typename scalar_t, typename opmath_t, typename index_t>
__device__ __forceinline__ void store_lanes(scalar_t* __restrict__ p, index_t step, int lanes, bool vector,
                                            const opmath_t* v) {
  constexpr int V = kLanes<scalar_t>;
  if (vector) {
    store_vector(p, v);
    return;
  }
#pragma unroll
  for (int l = 0; l < V; ++l)
    if (l < lanes) p[l * step] = static_cast<scalar_t>(v[l]);
}

}  // namespace next
}  // namespace cuda
}  // namespace fixedbranch
