// CUDA kernels of fixed_branch (forward) and _fixed_branch_backward: the verified generation, and the switch to the
// next one (FIXEDBRANCH_CUDA_KERNELS=next, next.cu).
//
// Forward: a block stages its tile of y plus the halo, already padded through pad_source_index and widened to
// opmath_t, in shared memory once (eight loads in flight per thread, staging.cuh); each thread then writes kRows
// outputs of every branch, the identity included. Global memory sees y read once and the K+1 maps written once,
// with consecutive threads on consecutive addresses in NCHW and in channels_last. On an H100, float32
// N=32, C=64, 128x128, K=4 3x3 runs at 76% of the time a plain copy of the same bytes takes, in both layouts.
//
// Backward: a gather, so every thread owns its outputs and no atomics are needed (deterministic). With the
// padded gradient dL/dypad = sum over live k of F_k^T g_k (a correlation of g_k with the flipped filter),
// dL/dy[i][j] = g_0[i][j] + sum of dL/dypad[p][q] over the padded positions (p, q) that the padding copied from
// (i, j). The identity position (i + top, j + left) comes from staged tiles of up to 8 branches at a time; the
// border positions (reflect, replicate, circular) exist only for pixels within the filter's reach of an edge,
// which a second kernel computes entirely, straight from global memory, so that each pixel is written once.
//
// 3x3 and 5x5 filters keep their whole window in registers across branches (the common banks: Sobel,
// Laplacian, Gaussian, DCT); other sizes correlate column by column. Tensors whose offsets fit in int32 use
// int32 index math, others int64 on the generic path. Filters too large for a shared-memory tile use the direct
// kernels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "fixed_branch.h"
#include "next_host.h"
#include "staging.cuh"
#include "tiling.cuh"

namespace fixedbranch {
namespace cuda {
namespace {

// dL/dypad[p][q] of plane (n, c): sum over live branches k of sum_{a,b} w_k[a][b] * g_k[p-a][q-b], g_k zero
// outside the image. Read straight from global memory: used only near the borders and by the direct kernel.
template <typename scalar_t, typename opmath_t, typename index_t>
__device__ opmath_t padded_gradient_at(const scalar_t* __restrict__ g_out, const Geometry<index_t>& g,
                                       const opmath_t* w, int64_t n, int64_t c, int64_t p, int64_t q) {
  opmath_t sum = 0;
  for (int k = 1; k <= g.K; ++k) {
    if (g.stop.has(k)) continue;
    const scalar_t* gk = g_out + n * g.src_n + (k * int64_t(g.C) + c) * g.src_c;
    const opmath_t* wk = w + int64_t(k - 1) * g.S1 * g.S2;
    for (int a = 0; a < g.S1; ++a) {
      const int64_t r = p - a;
      if (r < 0 || r >= g.H) continue;
      for (int b = 0; b < g.S2; ++b) {
        const int64_t col = q - b;
        if (col < 0 || col >= g.W) continue;
        sum += wk[a * g.S2 + b] * static_cast<opmath_t>(gk[r * g.src_h + col * g.src_w]);
      }
    }
  }
  return sum;
}

// Padded coordinate number e (0: the identity position i + before; 1 .. S-1: the border positions) along an axis
// of n pixels with `before` padded positions before it, or -1 when that border position is not copied from i.
__device__ __forceinline__ int64_t padded_position(int e, int64_t i, int64_t n, int before, PadMode mode) {
  if (e == 0) return i + before;
  const int b = e - 1;
  const int64_t p = b < before ? b : n + b;
  return pad_source_index(p - before, n, mode) == i ? p : -1;
}

// Sum of dL/dypad over the padded positions copied from pixel (i, j) (the adjoint of the padding), the identity
// position included or not.
template <typename scalar_t, typename opmath_t, typename index_t>
__device__ __forceinline__ opmath_t gather_padded(const scalar_t* __restrict__ g_out, const Geometry<index_t>& g,
                                               const opmath_t* w, int64_t n, int64_t c, int64_t i, int64_t j,
                                               bool identity) {
  opmath_t sum = 0;
  for (int er = 0; er < g.S1; ++er) {
    const int64_t p = padded_position(er, i, g.H, g.top, g.mode);
    if (p < 0) continue;
    for (int ec = 0; ec < g.S2; ++ec) {
      if (er == 0 && ec == 0 && !identity) continue;
      const int64_t q = padded_position(ec, j, g.W, g.left, g.mode);
      if (q < 0) continue;
      sum += padded_gradient_at(g_out, g, w, n, c, p, q);
    }
  }
  return sum;
}

// Shared memory of a tiled kernel, laid out as TileShape::shared_bytes counts it.
template <typename opmath_t, typename index_t>
struct SharedLayout {
  index_t* offsets;  // where each staged plane starts in global memory
  opmath_t* tile;
  opmath_t* bank;
  __device__ SharedLayout(unsigned char* base, int np, int tile_values) {
    offsets = reinterpret_cast<index_t*>(base);
    tile = reinterpret_cast<opmath_t*>(base + (8 * np + 15) / 16 * 16);
    bank = tile + tile_values;
  }
};

// Blocks per SM the register allocation must allow. Four resident 3x3 float blocks let one block's staging
// overlap the others' stores (unconstrained, ptxas takes 80 registers: three blocks); larger windows and double
// need their registers more than the occupancy.
template <int KS1, typename opmath_t>
constexpr int kMinBlocks = KS1 == 3 && sizeof(opmath_t) == 4 ? 4 : 1;

// Writes a thread's kRows outputs (fewer at the bottom edge), rounding to the output dtype.
template <typename scalar_t, typename opmath_t, typename index_t>
__device__ __forceinline__ void store_rows(scalar_t* o, index_t stride, int nrows, const opmath_t (&v)[kRows]) {
#pragma unroll
  for (int r = 0; r < kRows; ++r)
    if (r < nrows) o[r * stride] = static_cast<scalar_t>(v[r]);
}

// Offset of plane P's slice `branch` (channel branch*C + c of src), or -1 past the last plane.
template <typename index_t>
__device__ __forceinline__ index_t plane_offset(const Geometry<index_t>& g, index_t P, int branch) {
  if (P >= g.planes) return -1;
  const index_t n = P / g.C;
  return n * g.src_n + (P - n * g.C + branch * g.C) * g.src_c;
}

template <typename scalar_t, typename index_t, int KS1, int KS2>
__global__ void __launch_bounds__(kMaxThreads, kMinBlocks<KS1, at::opmath_type<scalar_t>>)
    branch_forward_tiled(const scalar_t* __restrict__ y, const at::opmath_type<scalar_t>* __restrict__ bank,
                         scalar_t* __restrict__ out, const Geometry<index_t> g, const bool bank_shared) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr bool kFixed = KS1 > 0 && KS2 > 0;
  const int S1 = kFixed ? KS1 : g.S1, S2 = kFixed ? KS2 : g.S2;
  const int top = kFixed ? (KS1 - 1) / 2 : g.top, left = kFixed ? (KS2 - 1) / 2 : g.left;
  const int HR = g.rs * kRows + S1 - 1, HC = g.tw + S2 - 1, np = g.cb;
  const TileStrides ts = tile_strides(g.cl, np, HR, HC);
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const SharedLayout<opmath_t, index_t> sh(shared_bytes, np, np * HR * HC);
  // The unrolled kernels always get the bank in shared memory (the host sees to it), read with shared loads.
  const opmath_t* w = stage_bank(bank, kFixed || bank_shared, sh.bank, g.K * S1 * S2);
  if constexpr (kFixed) w = sh.bank;
  const Slot s = place(g, threadIdx.x);
  const opmath_t* win0 = sh.tile + s.c * ts.c + s.row0 * ts.r + s.col * ts.q;  // this thread's window
  const int radix0 = g.cl ? np : HC, radix1 = g.cl ? HC : HR;
  const TileCounter start = split_position(threadIdx.x, radix0, radix1);
  const TileCounter step = split_position(blockDim.x, radix0, radix1);

  for (int64_t id = blockIdx.x; id < g.tiles; id += gridDim.x) {
    const int64_t rest = id / g.tiles_w;
    const index_t j0 = static_cast<index_t>(id - rest * g.tiles_w) * g.tw;
    const index_t i0 = static_cast<index_t>(rest % g.tiles_h) * (g.rs * kRows);
    const index_t p0 = static_cast<index_t>(rest / g.tiles_h) * g.cb;
    // Every thread is past the previous tile's staging (the barrier after it), so the offsets can be rewritten.
    for (int c = threadIdx.x; c < np; c += blockDim.x) sh.offsets[c] = plane_offset(g, p0 + c, 0);
    __syncthreads();  // offsets written; the previous tile has been read
    stage_tile(y, g, sh.offsets, np, i0 - top, j0 - left, HR, HC, g.mode, start, step, sh.tile);
    __syncthreads();

    const index_t P = p0 + s.c, i = i0 + s.row0, j = j0 + s.col;
    if (P >= g.planes || i >= g.H || j >= g.W) continue;
    const int nrows = static_cast<int>(g.H - i < kRows ? g.H - i : kRows);
    const index_t n = P / g.C;
    scalar_t* o = out + n * g.dst_n + (P - n * g.C) * g.dst_c + i * g.dst_h + j * g.dst_w;
    const index_t branch_step = g.C * g.dst_c;

    if constexpr (kFixed) {
      // The whole window in registers, shared by every branch.
      opmath_t win[kRows + KS1 - 1][KS2];
#pragma unroll
      for (int r = 0; r < kRows + KS1 - 1; ++r)
#pragma unroll
        for (int b = 0; b < KS2; ++b) win[r][b] = win0[r * ts.r + b * ts.q];
      opmath_t centre[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) centre[r] = win[r + (KS1 - 1) / 2][(KS2 - 1) / 2];
      store_rows(o, g.dst_h, nrows, centre);
      for (int k = 0; k < g.K; ++k) {
        o += branch_step;
        opmath_t wk[KS1 * KS2];
#pragma unroll
        for (int e = 0; e < KS1 * KS2; ++e) wk[e] = w[k * KS1 * KS2 + e];
        opmath_t acc[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          acc[r] = 0;
#pragma unroll
          for (int a = 0; a < KS1; ++a)
#pragma unroll
            for (int b = 0; b < KS2; ++b) acc[r] += wk[a * KS2 + b] * win[r + a][b];
        }
        store_rows(o, g.dst_h, nrows, acc);
      }
    } else {
      opmath_t centre[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) centre[r] = win0[(top + r) * ts.r + left * ts.q];
      store_rows(o, g.dst_h, nrows, centre);
      for (int k = 0; k < g.K; ++k) {
        o += branch_step;
        opmath_t acc[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r] = 0;
        const opmath_t* wk = w + k * S1 * S2;
        correlate(win0, ts.r, ts.q, S1, S2, [&](int a, int b) { return wk[a * S2 + b]; }, acc);
        store_rows(o, g.dst_h, nrows, acc);
      }
    }
  }
}

template <typename scalar_t, typename index_t, int KS1, int KS2>
__global__ void __launch_bounds__(kMaxThreads, kMinBlocks<KS1, at::opmath_type<scalar_t>>)
    branch_backward_tiled(const scalar_t* __restrict__ g_out, const at::opmath_type<scalar_t>* __restrict__ bank,
                          scalar_t* __restrict__ grad_y, const Geometry<index_t> g, const bool bank_shared) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr bool kFixed = KS1 > 0 && KS2 > 0;
  const int S1 = kFixed ? KS1 : g.S1, S2 = kFixed ? KS2 : g.S2;
  const int top = kFixed ? (KS1 - 1) / 2 : g.top, left = kFixed ? (KS2 - 1) / 2 : g.left;
  const int bottom = S1 - 1 - top, right = S2 - 1 - left;
  // Each round stages `slices` consecutive branches' tiles of g at once.
  const int HR = g.rs * kRows + S1 - 1, HC = g.tw + S2 - 1, np = g.cb * g.slices;
  const TileStrides ts = tile_strides(g.cl, np, HR, HC);
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const SharedLayout<opmath_t, index_t> sh(shared_bytes, np, np * HR * HC);
  // The unrolled kernels always get the bank in shared memory (the host sees to it), read with shared loads.
  const opmath_t* w = stage_bank(bank, kFixed || bank_shared, sh.bank, g.K * S1 * S2);
  if constexpr (kFixed) w = sh.bank;
  const Slot s = place(g, threadIdx.x);
  const opmath_t* win0 = sh.tile + s.c * ts.c + s.row0 * ts.r + s.col * ts.q;
  const int radix0 = g.cl ? np : HC, radix1 = g.cl ? HC : HR;
  const TileCounter start = split_position(threadIdx.x, radix0, radix1);
  const TileCounter step = split_position(blockDim.x, radix0, radix1);

  for (int64_t id = blockIdx.x; id < g.tiles; id += gridDim.x) {
    const int64_t rest = id / g.tiles_w;
    const index_t j0 = static_cast<index_t>(id - rest * g.tiles_w) * g.tw;
    const index_t i0 = static_cast<index_t>(rest % g.tiles_h) * (g.rs * kRows);
    const index_t p0 = static_cast<index_t>(rest / g.tiles_h) * g.cb;
    const index_t P = p0 + s.c, i = i0 + s.row0, j = j0 + s.col;
    const bool active = P < g.planes && i < g.H && j < g.W;

    // The identity position: dL/dypad[i + top][j + left] = sum_{a,b} w[a][b] g[i + top - a][j + left - b], and
    // g's row i + top - a sits at staged row (i - i0) + S1 - 1 - a of a tile that starts `bottom` rows above i0.
    opmath_t acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = 0;
    for (int k0 = 1; k0 <= g.K; k0 += g.slices) {
      bool any_live = false;  // uniform across the block
      for (int k = k0; k < k0 + g.slices && k <= g.K; ++k) any_live |= !g.stop.has(k);
      if (!any_live) continue;
      for (int e = threadIdx.x; e < np; e += blockDim.x) {
        const int k = k0 + e / g.cb;
        sh.offsets[e] = k <= g.K && !g.stop.has(k) ? plane_offset(g, p0 + e % g.cb, k) : index_t(-1);
      }
      __syncthreads();  // offsets written; the previous round has been read
      stage_tile(g_out, g, sh.offsets, np, i0 - bottom, j0 - right, HR, HC, PadMode::Zeros, start, step, sh.tile);
      __syncthreads();
      if (!active) continue;
      for (int slice = 0; slice < g.slices; ++slice) {
        const int k = k0 + slice;
        if (k > g.K || g.stop.has(k)) continue;
        const opmath_t* wk = w + (k - 1) * S1 * S2;
        const opmath_t* v0 = win0 + slice * g.cb * ts.c;
        if constexpr (kFixed) {
          opmath_t win[kRows + KS1 - 1][KS2];
#pragma unroll
          for (int r = 0; r < kRows + KS1 - 1; ++r)
#pragma unroll
            for (int b = 0; b < KS2; ++b) win[r][b] = v0[r * ts.r + b * ts.q];
#pragma unroll
          for (int a = 0; a < KS1; ++a)
#pragma unroll
            for (int b = 0; b < KS2; ++b) {
              const opmath_t wv = wk[a * KS2 + b];
#pragma unroll
              for (int r = 0; r < kRows; ++r) acc[r] += wv * win[r + KS1 - 1 - a][KS2 - 1 - b];
            }
        } else {
          correlate(v0, ts.r, ts.q, S1, S2, [&](int a, int b) { return wk[(S1 - 1 - a) * S2 + (S2 - 1 - b)]; },
                    acc);
        }
      }
    }
    if (!active) continue;

    const int nrows = static_cast<int>(g.H - i < kRows ? g.H - i : kRows);
    const index_t n = P / g.C, c = P - n * g.C;
    const scalar_t* g0 = g_out + n * g.src_n + c * g.src_c + i * g.src_h + j * g.src_w;
    scalar_t* o = grad_y + n * g.dst_n + c * g.dst_c + i * g.dst_h + j * g.dst_w;
    // Pixels that are the source of border positions of the padding belong to branch_backward_direct.
    const bool col_band = g.mode != PadMode::Zeros && (j < g.band_cols || j >= g.W - g.band_cols);
    const bool identity_live = !g.stop.has(0);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (r >= nrows) break;
      if (g.mode != PadMode::Zeros && (col_band || i + r < g.band_rows || i + r >= g.H - g.band_rows)) continue;
      opmath_t v = acc[r];
      if (identity_live) v += static_cast<opmath_t>(g0[r * g.src_h]);
      o[r * g.dst_h] = static_cast<scalar_t>(v);
    }
  }
}

// Fallbacks for filters whose tile does not fit in shared memory: one thread per pixel, straight from global
// memory through the padding map.
template <typename scalar_t>
__global__ void __launch_bounds__(kMaxThreads)
    branch_forward_direct(const scalar_t* __restrict__ y, const at::opmath_type<scalar_t>* __restrict__ w,
                          scalar_t* __restrict__ out, const Geometry<int64_t> g) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t total = g.planes * g.H * g.W;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = e % g.W, i = (e / g.W) % g.H, P = e / (g.W * g.H), n = P / g.C, c = P % g.C;
    const scalar_t* yp = y + n * g.src_n + c * g.src_c;
    scalar_t* o = out + n * g.dst_n + c * g.dst_c + i * g.dst_h + j * g.dst_w;
    o[0] = yp[i * g.src_h + j * g.src_w];
    for (int k = 0; k < g.K; ++k) {
      const opmath_t* wk = w + int64_t(k) * g.S1 * g.S2;
      opmath_t acc = 0;
      for (int a = 0; a < g.S1; ++a) {
        const int64_t si = pad_source_index(i - g.top + a, g.H, g.mode);
        if (si < 0) continue;
        for (int b = 0; b < g.S2; ++b) {
          const int64_t sj = pad_source_index(j - g.left + b, g.W, g.mode);
          if (sj >= 0) acc += wk[a * g.S2 + b] * static_cast<opmath_t>(yp[si * g.src_h + sj * g.src_w]);
        }
      }
      o[(k + 1) * g.C * g.dst_c] = static_cast<scalar_t>(acc);
    }
  }
}

// Number of pixels per plane within band_rows of the top or bottom edge or band_cols of the left or right edge,
// and the position of pixel number e among them (full rows first, then the sides of the middle rows).
struct Band {
  int64_t rt, rb, lc, rc, H, W;
  __host__ __device__ Band(int64_t h, int64_t w, int br, int bc) : H(h), W(w) {
    rt = br < h ? br : h;
    rb = h - (rt > h - br ? rt : h - br);
    lc = bc < w ? bc : w;
    rc = w - (lc > w - bc ? lc : w - bc);
  }
  __host__ __device__ int64_t size() const { return (rt + rb) * W + (H - rt - rb) * (lc + rc); }
  __device__ void pixel(int64_t e, int64_t& i, int64_t& j) const {
    if (e < (rt + rb) * W) {
      const int64_t row = e / W;
      i = row < rt ? row : H - rb + (row - rt);
      j = e - row * W;
      return;
    }
    e -= (rt + rb) * W;
    const int64_t per_row = lc + rc, row = e / per_row, x = e - row * per_row;
    i = rt + row;
    j = x < lc ? x : W - rc + (x - lc);
  }
};

// dL/dy straight from global memory, one thread per pixel: of the band pixels that the tiled kernel leaves out
// (kBand), or of every pixel when no tile fits in shared memory.
template <typename scalar_t, bool kBand>
__global__ void __launch_bounds__(kMaxThreads)
    branch_backward_direct(const scalar_t* __restrict__ g_out, const at::opmath_type<scalar_t>* __restrict__ w,
                           scalar_t* __restrict__ grad_y, const Geometry<int64_t> g) {
  using opmath_t = at::opmath_type<scalar_t>;
  const Band band(g.H, g.W, g.band_rows, g.band_cols);
  const int64_t per_plane = kBand ? band.size() : g.H * g.W, total = g.planes * per_plane;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t P = e / per_plane, x = e - P * per_plane, n = P / g.C, c = P - n * g.C;
    int64_t i, j;
    if constexpr (kBand) {
      band.pixel(x, i, j);
    } else {
      i = x / g.W, j = x - i * g.W;
    }
    opmath_t v = gather_padded(g_out, g, w, n, c, i, j, /*identity=*/true);
    if (!g.stop.has(0)) v += static_cast<opmath_t>(g_out[n * g.src_n + c * g.src_c + i * g.src_h + j * g.src_w]);
    grad_y[n * g.dst_n + c * g.dst_c + i * g.dst_h + j * g.dst_w] = static_cast<scalar_t>(v);
  }
}

// ------------------------------------------------------------------------------------------------------------
// Host side.

// Whether every offset into t fits in int32 (sizes and strides of PyTorch tensors are non-negative).
bool fits_int32(const at::Tensor& t) {
  int64_t last = 0;
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  return t.numel() < std::numeric_limits<int32_t>::max() && last < std::numeric_limits<int32_t>::max();
}

template <typename index_t>
Geometry<index_t> make_geometry(const at::Tensor& src, const at::Tensor& dst, int64_t C, const at::Tensor& bank,
                                PadMode mode, const TileShape& t, const StopSet& stop) {
  Geometry<index_t> g{};
  const int64_t N = dst.size(0), H = dst.size(2), W = dst.size(3);
  g.planes = N * C, g.C = C, g.H = H, g.W = W;
  g.src_n = src.stride(0), g.src_c = src.stride(1), g.src_h = src.stride(2), g.src_w = src.stride(3);
  g.dst_n = dst.stride(0), g.dst_c = dst.stride(1), g.dst_h = dst.stride(2), g.dst_w = dst.stride(3);
  g.K = static_cast<int>(bank.size(0)), g.S1 = static_cast<int>(bank.size(1)), g.S2 = static_cast<int>(bank.size(2));
  const SamePad pad = same_pad(bank.size(1), bank.size(2));
  g.top = static_cast<int>(pad.top), g.left = static_cast<int>(pad.left);
  g.band_rows = static_cast<int>(std::max(pad.top, pad.bottom) + 1);
  g.band_cols = static_cast<int>(std::max(pad.left, pad.right) + 1);
  g.cb = t.cb, g.tw = t.tw, g.rs = t.rs, g.cl = t.cl, g.slices = t.slices;
  if (t.cb > 0) {
    g.tiles_w = (W + t.tw - 1) / t.tw;
    g.tiles_h = (H + t.rows() - 1) / t.rows();
    g.tiles = (N * C + t.cb - 1) / t.cb * g.tiles_h * g.tiles_w;
  }
  g.mode = mode;
  g.stop = stop;
  return g;
}

template <bool kForward, typename scalar_t, typename index_t, int KS1, int KS2>
void launch_tiled(const at::Tensor& src, const at::Tensor& w, at::Tensor& dst, const Geometry<index_t>& g,
                  const TileShape& t, bool bank_shared) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t shared =
      t.shared_bytes(g.S1, g.S2, sizeof(opmath_t), bank_shared ? w.numel() * int64_t(sizeof(opmath_t)) : 0);
  const int64_t blocks = std::min<int64_t>(g.tiles, std::numeric_limits<int32_t>::max());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if constexpr (kForward) {
    branch_forward_tiled<scalar_t, index_t, KS1, KS2><<<blocks, t.threads(), shared, stream>>>(
        src.const_data_ptr<scalar_t>(), w.const_data_ptr<opmath_t>(), dst.mutable_data_ptr<scalar_t>(), g,
        bank_shared);
  } else {
    branch_backward_tiled<scalar_t, index_t, KS1, KS2><<<blocks, t.threads(), shared, stream>>>(
        src.const_data_ptr<scalar_t>(), w.const_data_ptr<opmath_t>(), dst.mutable_data_ptr<scalar_t>(), g,
        bank_shared);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// One thread per pixel (of the band, or of the image), a grid-stride loop over a capped grid.
template <bool kForward, bool kBand, typename scalar_t>
void launch_direct(const at::Tensor& src, const at::Tensor& w, at::Tensor& dst, const Geometry<int64_t>& g) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t per_plane = kBand ? Band(g.H, g.W, g.band_rows, g.band_cols).size() : g.H * g.W;
  const int64_t blocks = std::min<int64_t>((g.planes * per_plane + kMaxThreads - 1) / kMaxThreads, int64_t(1) << 20);
  if (blocks == 0) return;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if constexpr (kForward) {
    branch_forward_direct<scalar_t><<<blocks, kMaxThreads, 0, stream>>>(
        src.const_data_ptr<scalar_t>(), w.const_data_ptr<opmath_t>(), dst.mutable_data_ptr<scalar_t>(), g);
  } else {
    branch_backward_direct<scalar_t, kBand><<<blocks, kMaxThreads, 0, stream>>>(
        src.const_data_ptr<scalar_t>(), w.const_data_ptr<opmath_t>(), dst.mutable_data_ptr<scalar_t>(), g);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Runs the forward (src = y, dst = out) or the backward (src = grad_output, dst = grad_y) on w, the bank in
// opmath_t. C is the channel count of y.
template <bool kForward, typename scalar_t>
void run_branch(const at::Tensor& src, const at::Tensor& w, PadMode mode, const StopSet& stop, at::Tensor& dst,
                int64_t C) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t S1 = w.size(1), S2 = w.size(2);
  const bool channels_last = dst.is_contiguous(at::MemoryFormat::ChannelsLast) && !dst.is_contiguous();
  const int64_t bank_bytes = w.numel() * int64_t(sizeof(opmath_t));
  const bool bank_shared = bank_bytes <= kBankSharedLimit;
  // The backward stages up to kMaxSlices branches per round: fewer barriers, more loads in flight.
  constexpr int64_t kMaxSlices = 8;
  const int64_t max_slices = kForward ? 1 : std::min<int64_t>(w.size(0), kMaxSlices);
  const TileShape t = choose_tile(channels_last, C, dst.size(2), dst.size(3), S1, S2, sizeof(opmath_t),
                                  bank_shared ? bank_bytes : 0, max_slices);
  if (t.cb == 0) {
    launch_direct<kForward, false, scalar_t>(src, w, dst, make_geometry<int64_t>(src, dst, C, w, mode, t, stop));
    return;
  }
  if (fits_int32(src) && fits_int32(dst)) {
    const Geometry<int32_t> g = make_geometry<int32_t>(src, dst, C, w, mode, t, stop);
    if (S1 == 3 && S2 == 3 && bank_shared) {
      launch_tiled<kForward, scalar_t, int32_t, 3, 3>(src, w, dst, g, t, bank_shared);
    } else if (S1 == 5 && S2 == 5 && bank_shared) {
      launch_tiled<kForward, scalar_t, int32_t, 5, 5>(src, w, dst, g, t, bank_shared);
    } else {
      launch_tiled<kForward, scalar_t, int32_t, 0, 0>(src, w, dst, g, t, bank_shared);
    }
  } else {
    launch_tiled<kForward, scalar_t, int64_t, 0, 0>(src, w, dst, make_geometry<int64_t>(src, dst, C, w, mode, t, stop),
                                                    t, bank_shared);
  }
  if (!kForward && mode != PadMode::Zeros) {
    // The tiled backward leaves the pixels that the padding copies into its border to this one.
    launch_direct<false, true, scalar_t>(src, w, dst, make_geometry<int64_t>(src, dst, C, w, mode, t, stop));
  }
}

// The verified kernels compute the full-resolution, branch-major output with the identity. The other options are
// composed from it with ATen slicing and permutation copies until they have native kernels.
at::Tensor full_resolution_like(const at::Tensor& t, const BranchArgs& a) {
  return at::empty({a.N, (a.K + 1) * a.C, a.H, a.W}, t.options().memory_format(t.suggest_memory_format()));
}

// The slots of a full-resolution branch-major tensor that the output holds, as (N, B, C, H', W').
at::Tensor output_slots(const at::Tensor& full, const BranchArgs& a) {
  return full.narrow(1, a.identity ? 0 : a.C, a.B * a.C)
      .slice(2, 0, a.H, a.stride_h)
      .slice(3, 0, a.W, a.stride_w)
      .view({a.N, a.B, a.C, a.out_h, a.out_w});
}

// A tensor laid out as the output (N, B*C, H', W'), as (N, B, C, H', W') whichever its order.
at::Tensor by_branch(const at::Tensor& t, const BranchArgs& a) {
  return a.order == Order::Branch ? t.view({a.N, a.B, a.C, a.out_h, a.out_w})
                                  : t.view({a.N, a.C, a.B, a.out_h, a.out_w}).transpose(1, 2);
}

void forward_cuda(const at::Tensor& y, const at::Tensor& bank, const BranchArgs& a, at::Tensor& out) {
  if (next::selected_generation() == next::Generation::Next) return next::forward(y, bank, a, out);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "fixed_branch_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor w = bank.to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
    if (a.plain()) {
      run_branch<true, scalar_t>(y, w, a.mode, StopSet{}, out, a.C);
      return;
    }
    at::Tensor full = full_resolution_like(y, a);
    run_branch<true, scalar_t>(y, w, a.mode, StopSet{}, full, a.C);
    by_branch(out, a).copy_(output_slots(full, a));
  });
}

void backward_cuda(const at::Tensor& grad_output, const at::Tensor& bank, const BranchArgs& a, at::Tensor& grad_y) {
  if (next::selected_generation() == next::Generation::Next) return next::backward(grad_output, bank, a, grad_y);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "fixed_branch_backward_cuda",
                                  [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    at::Tensor w = bank.to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
    StopSet stop{};
    bool own_copy = false;
    for (int64_t k = 0; k <= a.K; ++k) {
      if (!a.stopped[k]) continue;
      if (k < StopSet::kCapacity) {
        stop.bits[k >> 5] |= 1u << (k & 31);
      } else {
        // Beyond the bitmask: a stopped filter contributes nothing when its weights are zero.
        if (!own_copy) w = w.clone(), own_copy = true;
        w.select(0, k - 1).zero_();
      }
    }
    if (a.plain()) {
      run_branch<false, scalar_t>(grad_output, w, a.mode, stop, grad_y, a.C);
      return;
    }
    // The full-resolution gradient the composed forward would have received: zero where it sampled nothing.
    at::Tensor full = full_resolution_like(grad_output, a).zero_();
    output_slots(full, a).copy_(by_branch(grad_output, a));
    run_branch<false, scalar_t>(full, w, a.mode, stop, grad_y, a.C);
  });
}

const bool registered = register_branch_kernels(c10::DeviceType::CUDA, {&forward_cuda, &backward_cuda});

}  // namespace
}  // namespace cuda

}  // namespace fixedbranch
