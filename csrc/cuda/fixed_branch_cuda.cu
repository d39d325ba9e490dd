// CUDA kernels of fixed_branch (forward) and _fixed_branch_backward.
//
// Forward: a block stages its tile of y plus the halo, already padded through pad_source_index and widened to
// opmath_t, in shared memory once; each thread then keeps a window of kRows + S1 - 1 staged rows in registers and
// writes kRows outputs of every branch (the identity included). Global memory sees y read once and the K+1 maps
// written once, with consecutive threads on consecutive addresses in NCHW and in channels_last.
//
// Backward: a gather, so every thread owns its outputs and no atomics are needed (deterministic). With the
// padded gradient dL/dypad = sum over live k of F_k^T g_k (a correlation of g_k with the flipped filter),
// dL/dy[i][j] = g_0[i][j] + sum of dL/dypad[p][q] over the padded positions (p, q) that the padding copied from
// (i, j). The identity position (i + top, j + left) is computed from staged tiles of each g_k; the extra border
// positions (reflect, replicate, circular) exist only for pixels within the filter radius of an edge, which
// compute them straight from global memory.
//
// 3x3 and 5x5 filters get their window unrolled in registers (the common banks: Sobel, Laplacian, Gaussian, DCT);
// other sizes loop over taps reading shared memory. Tensors whose offsets fit in int32 use int32 index math; the
// others use int64 on the generic path. Filters too large for a shared-memory tile use the direct kernels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "fixed_branch.h"
#include "tiling.cuh"

namespace fixedbranch {
namespace cuda {
namespace {

// Where a thread sits in its tile: plane, column, and the first of its kRows rows.
struct Slot {
  int c, col, row0;
};

template <typename index_t>
__device__ __forceinline__ Slot place(const Geometry<index_t>& g, int t) {
  if (g.cl) return {t % g.cb, (t / g.cb) % g.tw, (t / (g.cb * g.tw)) * kRows};
  return {t / (g.tw * g.rs), t % g.tw, ((t / g.tw) % g.rs) * kRows};
}

// Shared-memory strides of a staged tile: NCHW keeps rows of one plane together, channels_last keeps the planes
// of one pixel together, matching the order in which threads are placed (no bank conflicts in either).
struct TileStrides {
  int c, r, q;
};

__device__ __forceinline__ TileStrides tile_strides(int cl, int cb, int HR, int HC) {
  return cl ? TileStrides{1, HC * cb, cb} : TileStrides{HR * HC, HC, 1};
}

// Banks small enough are copied to shared memory once per block; others are read from global memory.
template <typename opmath_t>
__device__ const opmath_t* stage_bank(const opmath_t* __restrict__ bank, bool shared, opmath_t* slot, int count) {
  if (!shared) return bank;
  for (int e = threadIdx.x; e < count; e += blockDim.x) slot[e] = bank[e];
  __syncthreads();
  return slot;
}

// Source of staged coordinate x along an axis of n pixels, or -1 for 0. A tile may reach past the padded image
// (its last row or column block overhangs); pad_source_index is defined only within the padding, and those
// positions feed no output, so any in-range answer would do: they read nothing.
__device__ __forceinline__ int64_t staged_source(int64_t x, int64_t n, PadMode mode) {
  const int64_t s = pad_source_index(x, n, mode);
  return s < n ? s : -1;
}

// Stages rows r0 .. r0+HR-1 and columns q0 .. q0+HC-1 (image coordinates, mapped through `mode`; 0 where the
// padding is constant) of planes p0 .. p0+cb-1 of src, whose channel c of plane P lives at channel c + shift.
template <typename scalar_t, typename opmath_t, typename index_t>
__device__ void stage_tile(const scalar_t* __restrict__ src, const Geometry<index_t>& g, index_t p0, index_t shift,
                           index_t r0, index_t q0, int HR, int HC, TileStrides ts, PadMode mode, opmath_t* tile) {
  const int t = threadIdx.x, nt = blockDim.x;
  if (g.cl) {
    // A thread keeps one plane (cb divides the block) and walks pixels: a warp reads consecutive channels.
    const int c = t % g.cb;
    const index_t P = p0 + c;
    const bool live = P < g.planes;
    const scalar_t* base = src;
    if (live) {
      const index_t n = P / g.C;
      base += n * g.src_n + (P - n * g.C + shift) * g.src_c;
    }
    for (int pix = t / g.cb; pix < HR * HC; pix += nt / g.cb) {
      const int r = pix / HC, q = pix - r * HC;
      opmath_t v = 0;
      if (live) {
        const index_t si = static_cast<index_t>(staged_source(r0 + r, g.H, mode));
        const index_t sj = static_cast<index_t>(staged_source(q0 + q, g.W, mode));
        if (si >= 0 && sj >= 0) v = static_cast<opmath_t>(base[si * g.src_h + sj * g.src_w]);
      }
      tile[c + r * ts.r + q * ts.q] = v;
    }
  } else {
    // A warp takes one staged row of one plane: consecutive columns.
    const int lanes = nt < 32 ? nt : 32, lane = t % lanes;
    for (int u = t / lanes; u < g.cb * HR; u += nt / lanes) {
      const int c = u / HR, r = u - c * HR;
      const index_t P = p0 + c;
      const index_t si = P < g.planes ? static_cast<index_t>(staged_source(r0 + r, g.H, mode)) : index_t(-1);
      opmath_t* row = tile + c * ts.c + r * ts.r;
      if (si < 0) {
        for (int q = lane; q < HC; q += lanes) row[q] = 0;
        continue;
      }
      const index_t n = P / g.C;
      const scalar_t* base = src + n * g.src_n + (P - n * g.C + shift) * g.src_c + si * g.src_h;
      for (int q = lane; q < HC; q += lanes) {
        const index_t sj = static_cast<index_t>(staged_source(q0 + q, g.W, mode));
        row[q] = sj >= 0 ? static_cast<opmath_t>(base[sj * g.src_w]) : opmath_t(0);
      }
    }
  }
}

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

template <typename scalar_t, typename index_t, int KS1, int KS2>
__global__ void __launch_bounds__(kMaxThreads)
    branch_forward_tiled(const scalar_t* __restrict__ y, const at::opmath_type<scalar_t>* __restrict__ bank,
                         scalar_t* __restrict__ out, const Geometry<index_t> g, const bool bank_shared) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr bool kFixed = KS1 > 0 && KS2 > 0;
  const int S1 = kFixed ? KS1 : g.S1, S2 = kFixed ? KS2 : g.S2;
  const int top = kFixed ? (KS1 - 1) / 2 : g.top, left = kFixed ? (KS2 - 1) / 2 : g.left;
  const int HR = g.rs * kRows + S1 - 1, HC = g.tw + S2 - 1;
  const TileStrides ts = tile_strides(g.cl, g.cb, HR, HC);
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  opmath_t* tile = reinterpret_cast<opmath_t*>(shared_bytes);
  const opmath_t* w = stage_bank(bank, bank_shared, tile + g.cb * HR * HC, g.K * S1 * S2);
  const Slot s = place(g, threadIdx.x);
  const opmath_t* win0 = tile + s.c * ts.c + s.row0 * ts.r + s.col * ts.q;  // this thread's window in the tile

  for (int64_t id = blockIdx.x; id < g.tiles; id += gridDim.x) {
    const int64_t rest = id / g.tiles_w;
    const index_t j0 = static_cast<index_t>(id - rest * g.tiles_w) * g.tw;
    const index_t i0 = static_cast<index_t>(rest % g.tiles_h) * (g.rs * kRows);
    const index_t p0 = static_cast<index_t>(rest / g.tiles_h) * g.cb;
    __syncthreads();  // the previous tile has been read
    stage_tile(y, g, p0, index_t(0), i0 - top, j0 - left, HR, HC, ts, g.mode, tile);
    __syncthreads();

    const index_t P = p0 + s.c, i = i0 + s.row0, j = j0 + s.col;
    if (P >= g.planes || i >= g.H || j >= g.W) continue;
    const int nrows = static_cast<int>(g.H - i < kRows ? g.H - i : kRows);
    const index_t n = P / g.C;
    scalar_t* o = out + n * g.dst_n + (P - n * g.C) * g.dst_c + i * g.dst_h + j * g.dst_w;
    const index_t branch_step = g.C * g.dst_c;

    if constexpr (kFixed) {
      opmath_t win[kRows + KS1 - 1][KS2];
#pragma unroll
      for (int r = 0; r < kRows + KS1 - 1; ++r)
#pragma unroll
        for (int b = 0; b < KS2; ++b) win[r][b] = win0[r * ts.r + b * ts.q];
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        if (r < nrows) o[r * g.dst_h] = static_cast<scalar_t>(win[r + (KS1 - 1) / 2][(KS2 - 1) / 2]);
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
#pragma unroll
        for (int r = 0; r < kRows; ++r)
          if (r < nrows) o[r * g.dst_h] = static_cast<scalar_t>(acc[r]);
      }
    } else {
      const opmath_t* centre = win0 + top * ts.r + left * ts.q;
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        if (r < nrows) o[r * g.dst_h] = static_cast<scalar_t>(centre[r * ts.r]);
      for (int k = 0; k < g.K; ++k) {
        o += branch_step;
        opmath_t acc[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r] = 0;
        const opmath_t* wk = w + k * S1 * S2;
        for (int a = 0; a < S1; ++a) {
          for (int b = 0; b < S2; ++b) {
            const opmath_t wv = wk[a * S2 + b];
            const opmath_t* v = win0 + a * ts.r + b * ts.q;
#pragma unroll
            for (int r = 0; r < kRows; ++r) acc[r] += wv * v[r * ts.r];
          }
        }
#pragma unroll
        for (int r = 0; r < kRows; ++r)
          if (r < nrows) o[r * g.dst_h] = static_cast<scalar_t>(acc[r]);
      }
    }
  }
}

template <typename scalar_t, typename index_t, int KS1, int KS2>
__global__ void __launch_bounds__(kMaxThreads)
    branch_backward_tiled(const scalar_t* __restrict__ g_out, const at::opmath_type<scalar_t>* __restrict__ bank,
                          scalar_t* __restrict__ grad_y, const Geometry<index_t> g, const bool bank_shared) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr bool kFixed = KS1 > 0 && KS2 > 0;
  const int S1 = kFixed ? KS1 : g.S1, S2 = kFixed ? KS2 : g.S2;
  const int top = kFixed ? (KS1 - 1) / 2 : g.top, left = kFixed ? (KS2 - 1) / 2 : g.left;
  const int bottom = S1 - 1 - top, right = S2 - 1 - left;
  const int HR = g.rs * kRows + S1 - 1, HC = g.tw + S2 - 1;
  const TileStrides ts = tile_strides(g.cl, g.cb, HR, HC);
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  opmath_t* tile = reinterpret_cast<opmath_t*>(shared_bytes);
  const opmath_t* w = stage_bank(bank, bank_shared, tile + g.cb * HR * HC, g.K * S1 * S2);
  const Slot s = place(g, threadIdx.x);
  const opmath_t* win0 = tile + s.c * ts.c + s.row0 * ts.r + s.col * ts.q;

  for (int64_t id = blockIdx.x; id < g.tiles; id += gridDim.x) {
    const int64_t rest = id / g.tiles_w;
    const index_t j0 = static_cast<index_t>(id - rest * g.tiles_w) * g.tw;
    const index_t i0 = static_cast<index_t>(rest % g.tiles_h) * (g.rs * kRows);
    const index_t p0 = static_cast<index_t>(rest / g.tiles_h) * g.cb;
    const index_t P = p0 + s.c, i = i0 + s.row0, j = j0 + s.col;
    const bool active = P < g.planes && i < g.H && j < g.W;

    // The identity position: dL/dypad[i + top][j + left] = sum_{a,b} w[a][b] g[i + top - a][j + left - b], and
    // g's row i + top - a sits at staged row (i - i0) + S1 - 1 - a of a tile that starts bottom rows above i0.
    opmath_t acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = 0;
    for (int k = 1; k <= g.K; ++k) {
      if (g.stop.has(k)) continue;  // uniform across the block
      __syncthreads();
      stage_tile(g_out, g, p0, k * g.C, i0 - bottom, j0 - right, HR, HC, ts, PadMode::Zeros, tile);
      __syncthreads();
      if (!active) continue;
      const opmath_t* wk = w + (k - 1) * S1 * S2;
      if constexpr (kFixed) {
        opmath_t win[kRows + KS1 - 1][KS2];
#pragma unroll
        for (int r = 0; r < kRows + KS1 - 1; ++r)
#pragma unroll
          for (int b = 0; b < KS2; ++b) win[r][b] = win0[r * ts.r + b * ts.q];
#pragma unroll
        for (int a = 0; a < KS1; ++a)
#pragma unroll
          for (int b = 0; b < KS2; ++b) {
            const opmath_t wv = wk[a * KS2 + b];
#pragma unroll
            for (int r = 0; r < kRows; ++r) acc[r] += wv * win[r + KS1 - 1 - a][KS2 - 1 - b];
          }
      } else {
        for (int a = 0; a < S1; ++a) {
          for (int b = 0; b < S2; ++b) {
            const opmath_t wv = wk[a * S2 + b];
            const opmath_t* v = win0 + (S1 - 1 - a) * ts.r + (S2 - 1 - b) * ts.q;
#pragma unroll
            for (int r = 0; r < kRows; ++r) acc[r] += wv * v[r * ts.r];
          }
        }
      }
    }
    if (!active) continue;

    const int nrows = static_cast<int>(g.H - i < kRows ? g.H - i : kRows);
    const index_t n = P / g.C, c = P - n * g.C;
    const scalar_t* g0 = g_out + n * g.src_n + c * g.src_c + i * g.src_h + j * g.src_w;
    scalar_t* o = grad_y + n * g.dst_n + c * g.dst_c + i * g.dst_h + j * g.dst_w;
    // Pixels that are the source of border positions of the padding belong to branch_backward_border.
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
  g.cb = t.cb, g.tw = t.tw, g.rs = t.rs, g.cl = t.cl;
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
  const int64_t shared = (t.tile_values(g.S1, g.S2) + (bank_shared ? w.numel() : 0)) * int64_t(sizeof(opmath_t));
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

// Runs the forward (src = y, dst = out) or the backward (src = grad_output, dst = grad_y) on w, the bank in
// opmath_t. C is the channel count of y.
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
  const TileShape t = choose_tile(channels_last, C, dst.size(2), dst.size(3), S1, S2, sizeof(opmath_t),
                                  bank_shared ? bank_bytes : 0);
  if (t.cb == 0) {
    launch_direct<kForward, false, scalar_t>(src, w, dst, make_geometry<int64_t>(src, dst, C, w, mode, t, stop));
    return;
  }
  if (fits_int32(src) && fits_int32(dst)) {
    const Geometry<int32_t> g = make_geometry<int32_t>(src, dst, C, w, mode, t, stop);
    if (S1 == 3 && S2 == 3) {
      launch_tiled<kForward, scalar_t, int32_t, 3, 3>(src, w, dst, g, t, bank_shared);
    } else if (S1 == 5 && S2 == 5) {
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

at::Tensor fixed_branch_cuda(const at::Tensor& y, const at::Tensor& bank, c10::string_view padding_mode,
                             c10::IntArrayRef stop_gradient) {
  const PadMode mode = check_branch_args("fixedbranch.fixed_branch", "y", y, bank, padding_mode);
  TORCH_INTERNAL_ASSERT(y.device().is_cuda());
  const c10::cuda::CUDAGuard device_guard(y.device());
  const int64_t K = bank.size(0);
  at::Tensor out = at::empty({y.size(0), (K + 1) * y.size(1), y.size(2), y.size(3)},
                             y.options().memory_format(y.suggest_memory_format()));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "fixed_branch_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor w = bank.to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
    run_branch<true, scalar_t>(y, w, mode, StopSet{}, out, y.size(1));
  });
  return out;
}

at::Tensor fixed_branch_backward_cuda(const at::Tensor& grad_output, const at::Tensor& bank,
                                      c10::string_view padding_mode, c10::IntArrayRef stop_gradient) {
  const PadMode mode =
      check_branch_args("fixedbranch._fixed_branch_backward", "grad_output", grad_output, bank, padding_mode);
  check_backward_args(grad_output, bank, stop_gradient);
  TORCH_INTERNAL_ASSERT(grad_output.device().is_cuda());
  const c10::cuda::CUDAGuard device_guard(grad_output.device());
  const int64_t K = bank.size(0);
  const at::Tensor& g = grad_output;
  at::Tensor grad_y = at::empty({g.size(0), g.size(1) / (K + 1), g.size(2), g.size(3)},
                                g.options().memory_format(g.suggest_memory_format()));
  if (grad_y.numel() == 0) return grad_y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "fixed_branch_backward_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    at::Tensor w = bank.to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
    StopSet stop{};
    bool own_copy = false;
    for (const int64_t k : stop_gradient) {
      if (k < StopSet::kCapacity) {
        stop.bits[k >> 5] |= 1u << (k & 31);
      } else {
        // Beyond the bitmask: a stopped filter contributes nothing when its weights are zero.
        if (!own_copy) w = w.clone(), own_copy = true;
        w.select(0, k - 1).zero_();
      }
    }
    run_branch<false, scalar_t>(g, w, mode, stop, grad_y, grad_y.size(1));
  });
  return grad_y;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fixedbranch, CUDA, m) {
  m.impl("fixed_branch", &cuda::fixed_branch_cuda);
  m.impl("_fixed_branch_backward", &cuda::fixed_branch_backward_cuda);
}

}  // namespace fixedbranch
