// Next-generation backward: dL/dy as one gather over every live branch, for any identity, order and stride.
//
// With D the gradient of the padded y, D[p][q] = sum over live k of sum_{a,b} F_k[a][b] g_k[(p-a)/sh][(q-b)/sw],
// where only the taps with p-a and q-b divisible by the stride exist (the polyphase adjoint of the strided
// correlation: no zero-inserted gradient is ever formed), and dL/dy[i][j] = g_0[i/sh][j/sw] (when the identity is
// live and (i, j) was sampled) + the sum of D over the padded positions the padding copied from (i, j).
//
// backward_nchw: a thread owns V consecutive columns of one row of dL/dy; backward_cl V consecutive channels of
// one pixel. The thread loads, per live branch and filter row, the gradient segment its V outputs read (16-byte
// vectors at stride 1 in the interior) and folds every tap of every live branch into one register accumulator per
// lane: D at the identity position (i + top, j + left), each gradient tile read once for all branches. Away from
// the edges (or with zero padding) no other padded position copies from (i, j); lanes within a filter's reach of
// an edge under reflect, replicate or circular padding add D at their border positions (border_gradient), then
// every lane adds the identity's gradient and dL/dy is written once.
// The sums run branch by branch, row by row, column by column, then the identity, as the verified kernels run
// them, so the two generations agree bit for bit on 3x3 and 5x5 banks.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "next_common.cuh"
#include "next_host.h"

namespace fixedbranch {
namespace cuda {
namespace next {
namespace {

// D[pr][qc] of plane (n, c), straight from global memory, live branches only.
template <typename scalar_t, typename opmath_t, typename index_t>
__device__ opmath_t padded_gradient(const scalar_t* __restrict__ g, const Params<index_t>& p, const StopMask& stop,
                                    const opmath_t* __restrict__ w, index_t n, index_t c, int64_t pr, int64_t qc) {
  opmath_t sum = 0;
  const int taps = p.S1 * p.S2;
  for (int k = 1; k <= p.K; ++k) {
    if (stop.has(k)) continue;
    const scalar_t* gk = g + n * p.s_n + p.out_channel(p.slot(k), c) * p.s_c;
    const opmath_t* wk = w + int64_t(k - 1) * taps;
    for (int a = 0; a < p.S1; ++a) {
      const int64_t t = pr - a;
      if (t < 0) break;
      if (t % p.sh != 0 || t / p.sh >= p.OH) continue;
      const scalar_t* row = gk + index_t(t / p.sh) * p.s_h;
      for (int b = 0; b < p.S2; ++b) {
        const int64_t u = qc - b;
        if (u < 0) break;
        if (u % p.sw != 0 || u / p.sw >= p.OW) continue;
        sum += wk[a * p.S2 + b] * static_cast<opmath_t>(row[index_t(u / p.sw) * p.s_w]);
      }
    }
  }
  return sum;
}

// Padded coordinate number e along an axis of n pixels with `before` padded positions ahead of it: 0 is the
// identity position i + before, 1 .. S-1 the border positions, or -1 when that border position is not copied
// from i (the verified kernels enumerate the same positions in the same order).
__device__ __forceinline__ int64_t padded_position(int e, int64_t i, int64_t n, int before, PadMode mode) {
  if (e == 0) return i + before;
  const int b = e - 1;
  const int64_t q = b < before ? b : n + b;
  return pad_source_index(q - before, n, mode) == i ? q : -1;
}

// The sum of D over the padded positions other than the identity position (i + top, j + left) that the padding
// copied from pixel (i, j): the adjoint of reflect, replicate and circular padding. In the verified kernels' order
// (rows of positions, then columns), so that D at the identity position plus this sum is their sum bit for bit.
template <typename scalar_t, typename opmath_t, typename index_t>
__device__ opmath_t border_gradient(const scalar_t* __restrict__ g, const Params<index_t>& p, const StopMask& stop,
                                    const opmath_t* __restrict__ w, index_t n, index_t c, int64_t i, int64_t j,
                                    opmath_t v) {
  for (int er = 0; er < p.S1; ++er) {
    const int64_t pr = padded_position(er, i, p.H, p.top, p.mode);
    if (pr < 0) continue;
    for (int ec = er == 0 ? 1 : 0; ec < p.S2; ++ec) {
      const int64_t qc = padded_position(ec, j, p.W, p.left, p.mode);
      if (qc < 0) continue;
      v += padded_gradient(g, p, stop, w, n, c, pr, qc);
    }
  }
  return v;
}

template <typename index_t>
__device__ __forceinline__ bool in_band_rows(const Params<index_t>& p, index_t i) {
  return i < p.band_rows || i >= p.H - p.band_rows;
}

template <typename scalar_t, typename index_t, int KS2, int SW>
__global__ void __launch_bounds__(kThreads)
    backward_nchw(const scalar_t* __restrict__ g, const at::opmath_type<scalar_t>* __restrict__ w,
                  scalar_t* __restrict__ grad_y, const Params<index_t> p, const StopMask stop) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int V = kLanes<scalar_t>;
  constexpr bool kFixed = KS2 > 0;
  const int sw = kFixed ? SW : p.sw;
  const int taps = p.S1 * p.S2;
  const index_t groups = (p.W + V - 1) / V;
  const int64_t total = int64_t(p.N) * p.C * p.H * groups;
  for (int64_t id = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; id < total; id += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest = id / groups;
    const index_t j0 = static_cast<index_t>(id - rest * groups) * V;
    const index_t i = static_cast<index_t>(rest % p.H);
    rest /= p.H;
    const index_t c = static_cast<index_t>(rest % p.C), n = static_cast<index_t>(rest / p.C);
    const int lanes = static_cast<int>(p.W - j0 < V ? p.W - j0 : V);
    scalar_t* o = grad_y + n * p.d_n + c * p.d_c + i * p.d_h + j0 * p.d_w;
    opmath_t acc[V];
#pragma unroll
    for (int l = 0; l < V; ++l) acc[l] = 0;

    // D at the identity position (i + top, j + left) of every lane, every live branch folded in.
    for (int k = 1; k <= p.K; ++k) {
      if (stop.has(k)) continue;
      const scalar_t* gk = g + n * p.s_n + p.out_channel(p.slot(k), c) * p.s_c;
      const opmath_t* wk = w + int64_t(k - 1) * taps;
      for (int a = 0; a < p.S1; ++a) {
        const index_t t = i + p.top - a;
        if (t < 0) break;
        if (t % p.sh != 0 || t / p.sh >= p.OH) continue;
        const scalar_t* row = gk + (t / p.sh) * p.s_h;
        const opmath_t* wa = wk + a * p.S2;
        if constexpr (kFixed) {
          // Lane l, tap b reads gradient column (j0 + l + left - b) / SW where that divides: segment entry
          // (l + left - b + kLead) / SW, the segment starting kLead / SW columns before j0 / SW.
          constexpr int kLeft = (KS2 - 1) / 2;
          constexpr int kLead = (KS2 - 1 - kLeft + SW - 1) / SW * SW;
          constexpr int kSpan = (V - 1 + kLeft + kLead) / SW + 1;
          constexpr int kShift = SW == 1 ? (V - kLead % V) % V : 0;  // vector alignment (stride 1 only)
          constexpr int kLoad = SW == 1 ? (kShift + kSpan + V - 1) / V * V : kSpan;
          opmath_t seg[kLoad];
          const index_t base = j0 / SW - kLead / SW - kShift;
          bool loaded = false;
          if constexpr (SW == 1) {
            if (p.vec_src && base >= 0 && base + kLoad <= p.OW) {
#pragma unroll
              for (int q = 0; q < kLoad; q += V) load_vector(row + base + q, seg + q);
              loaded = true;
            }
          }
          if (!loaded) {
#pragma unroll
            for (int x = 0; x < kLoad; ++x) {
              const index_t col = base + x;
              seg[x] = col >= 0 && col < p.OW ? static_cast<opmath_t>(row[col * p.s_w]) : opmath_t(0);
            }
          }
#pragma unroll
          for (int b = 0; b < KS2; ++b) {
            const opmath_t wv = wa[b];
#pragma unroll
            for (int l = 0; l < V; ++l)
              if ((l + kLeft - b + kLead) % SW == 0) acc[l] += wv * seg[kShift + (l + kLeft - b + kLead) / SW];
          }
        } else {
          for (int b = 0; b < p.S2; ++b) {
            const opmath_t wv = wa[b];
#pragma unroll
            for (int l = 0; l < V; ++l) {
              const index_t u = j0 + l + p.left - b;
              if (l < lanes && u >= 0 && u % sw == 0 && u / sw < p.OW)
                acc[l] += wv * static_cast<opmath_t>(row[(u / sw) * p.s_w]);
            }
          }
        }
      }
    }
    // Lanes within a filter's reach of an edge: the border positions the padding copied from them.
    if (p.mode != PadMode::Zeros && (in_band_rows(p, i) || j0 < p.band_cols || j0 + V > p.W - p.band_cols)) {
#pragma unroll
      for (int l = 0; l < V; ++l) {
        const index_t j = j0 + l;
        if (l < lanes && (in_band_rows(p, i) || j < p.band_cols || j >= p.W - p.band_cols))
          acc[l] = border_gradient(g, p, stop, w, n, c, int64_t(i), int64_t(j), acc[l]);
      }
    }
    if (p.identity && !stop.has(0) && i % p.sh == 0) {
      const scalar_t* g0 = g + n * p.s_n + p.out_channel(0, c) * p.s_c + (i / p.sh) * p.s_h;
#pragma unroll
      for (int l = 0; l < V; ++l)
        if (l < lanes && (j0 + l) % sw == 0) acc[l] += static_cast<opmath_t>(g0[((j0 + l) / sw) * p.s_w]);
    }
    store_lanes(o, p.d_w, lanes, p.vec_dst && lanes == V, acc);
  }
}

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    backward_cl(const scalar_t* __restrict__ g, const at::opmath_type<scalar_t>* __restrict__ w,
                scalar_t* __restrict__ grad_y, const Params<index_t> p, const StopMask stop) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int V = kLanes<scalar_t>;
  const int taps = p.S1 * p.S2;
  const index_t groups = (p.C + V - 1) / V;
  const int64_t total = int64_t(p.N) * p.H * p.W * groups;
  const index_t g_step = p.channel_step() * p.s_c;
  for (int64_t id = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; id < total; id += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest = id / groups;
    const index_t c0 = static_cast<index_t>(id - rest * groups) * V;
    const index_t j = static_cast<index_t>(rest % p.W);
    rest /= p.W;
    const index_t i = static_cast<index_t>(rest % p.H), n = static_cast<index_t>(rest / p.H);
    const int lanes = static_cast<int>(p.C - c0 < V ? p.C - c0 : V);
    const bool vec_in = p.vec_src && lanes == V;
    scalar_t* o = grad_y + n * p.d_n + c0 * p.d_c + i * p.d_h + j * p.d_w;
    opmath_t acc[V];
#pragma unroll
    for (int l = 0; l < V; ++l) acc[l] = 0;

    for (int k = 1; k <= p.K; ++k) {
      if (stop.has(k)) continue;
      const scalar_t* gk = g + n * p.s_n + p.out_channel(p.slot(k), c0) * p.s_c;
      const opmath_t* wk = w + int64_t(k - 1) * taps;
      for (int a = 0; a < p.S1; ++a) {
        const index_t t = i + p.top - a;
        if (t < 0) break;
        if (t % p.sh != 0 || t / p.sh >= p.OH) continue;
        for (int b = 0; b < p.S2; ++b) {
          const index_t u = j + p.left - b;
          if (u < 0) break;
          if (u % p.sw != 0 || u / p.sw >= p.OW) continue;
          opmath_t v[V];
          load_lanes(gk + (t / p.sh) * p.s_h + (u / p.sw) * p.s_w, g_step, lanes, vec_in, v);
          const opmath_t wv = wk[a * p.S2 + b];
#pragma unroll
          for (int l = 0; l < V; ++l) acc[l] += wv * v[l];
        }
      }
    }
    if (p.mode != PadMode::Zeros && (in_band_rows(p, i) || j < p.band_cols || j >= p.W - p.band_cols)) {
#pragma unroll
      for (int l = 0; l < V; ++l)
        if (l < lanes) acc[l] = border_gradient(g, p, stop, w, n, c0 + l, int64_t(i), int64_t(j), acc[l]);
    }
    if (p.identity && !stop.has(0) && i % p.sh == 0 && j % p.sw == 0) {
      opmath_t v[V];
      load_lanes(g + n * p.s_n + p.out_channel(0, c0) * p.s_c + (i / p.sh) * p.s_h + (j / p.sw) * p.s_w, g_step, lanes,
                 vec_in, v);
#pragma unroll
      for (int l = 0; l < V; ++l) acc[l] += v[l];
    }
    store_lanes(o, p.d_c, lanes, p.vec_dst && lanes == V, acc);
  }
}

template <typename scalar_t, typename index_t>
void launch(const at::Tensor& g, const at::Tensor& w, const BranchArgs& a, const StopMask& stop, at::Tensor& grad_y) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int V = kLanes<scalar_t>;
  const int64_t S1 = w.size(1), S2 = w.size(2);
  Params<index_t> p = make_params<index_t>(g, grad_y, a, S1, S2);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const scalar_t* src = g.const_data_ptr<scalar_t>();
  const opmath_t* wp = w.const_data_ptr<opmath_t>();
  scalar_t* dst = grad_y.mutable_data_ptr<scalar_t>();
  if (is_channels_last(grad_y)) {
    p.vec_src = a.order == Order::Branch && vectorisable(g, 1, V, a.C);
    p.vec_dst = vectorisable(grad_y, 1, V, a.C);
    backward_cl<scalar_t, index_t><<<grid_for(a.N * a.H * a.W * ((a.C + V - 1) / V)), kThreads, 0, stream>>>(
        src, wp, dst, p, stop);
  } else {
    p.vec_src = vectorisable(g, 3, V, 1);
    p.vec_dst = vectorisable(grad_y, 3, V, 1);
    const int64_t blocks = grid_for(a.N * a.C * a.H * ((a.W + V - 1) / V));
    const int64_t sw = a.stride_w;
    if (S2 == 3 && sw == 1) {
      backward_nchw<scalar_t, index_t, 3, 1><<<blocks, kThreads, 0, stream>>>(src, wp, dst, p, stop);
    } else if (S2 == 3 && sw == 2) {
      backward_nchw<scalar_t, index_t, 3, 2><<<blocks, kThreads, 0, stream>>>(src, wp, dst, p, stop);
    } else if (S2 == 5 && sw == 1) {
      backward_nchw<scalar_t, index_t, 5, 1><<<blocks, kThreads, 0, stream>>>(src, wp, dst, p, stop);
    } else {
      backward_nchw<scalar_t, index_t, 0, 0><<<blocks, kThreads, 0, stream>>>(src, wp, dst, p, stop);
    }
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void backward_direct(const at::Tensor& g, const at::Tensor& w, const BranchArgs& a, const StopMask& stop,
                     at::Tensor& grad_y) {
  const c10::cuda::CUDAGuard guard(g.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "fixed_branch_backward_cuda_next", [&] {
    if (fits_int32(g) && fits_int32(grad_y)) {
      launch<scalar_t, int32_t>(g, w, a, stop, grad_y);
    } else {
      launch<scalar_t, int64_t>(g, w, a, stop, grad_y);
    }
  });
}

}  // namespace next
}  // namespace cuda
}  // namespace fixedbranch
