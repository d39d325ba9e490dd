// Next-generation forward, direct correlation: every output slot written where identity, order and stride put it.
//
// forward_nchw: a thread owns V consecutive output columns of one row of one plane. Per filter row it loads the
// input segment those V outputs read (V*sw + S2 - 1 values, as 16-byte vectors in the interior) into registers
// once and applies every tap of kBranchBlock filters to it: one segment load per filter row per four branches.
// 3x3 and 5x5 at strides 1 and 2 have the segment's length at compile time; other sizes read tap by tap (L1).
// forward_cl: a thread owns V consecutive channels of one output pixel; every tap is one 16-byte load of V
// channels that feeds kBranchBlock filters.
// Each output is summed over the filter rows, then the columns, as the verified kernels sum it, so the two
// generations agree bit for bit on the 3x3 and 5x5 banks.
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

// Copies branch 0 (y sampled at (i*sh, j*sw)) for the thread's V lanes; exact for every dtype.
template <typename scalar_t, typename index_t>
__device__ __forceinline__ void copy_identity(const scalar_t* __restrict__ src, index_t src_step, bool vec_src,
                                              scalar_t* __restrict__ dst, index_t dst_step, bool vec_dst,
                                              int lanes) {
  using opmath_t = at::opmath_type<scalar_t>;
  opmath_t v[kLanes<scalar_t>];
  load_lanes(src, src_step, lanes, vec_src, v);
  store_lanes(dst, dst_step, lanes, vec_dst, v);
}

template <typename scalar_t, typename index_t, int KS2, int SW>
__global__ void __launch_bounds__(kThreads)
    forward_nchw(const scalar_t* __restrict__ y, const at::opmath_type<scalar_t>* __restrict__ w,
                 scalar_t* __restrict__ out, const Params<index_t> p) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int V = kLanes<scalar_t>;
  constexpr bool kFixed = KS2 > 0;
  const int sw = kFixed ? SW : p.sw;
  const int taps = p.S1 * p.S2;
  const index_t groups = (p.OW + V - 1) / V;
  const int64_t total = int64_t(p.N) * p.C * p.OH * groups;
  for (int64_t id = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; id < total; id += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest = id / groups;
    const index_t j0 = static_cast<index_t>(id - rest * groups) * V;
    const index_t i = static_cast<index_t>(rest % p.OH);
    rest /= p.OH;
    const index_t c = static_cast<index_t>(rest % p.C), n = static_cast<index_t>(rest / p.C);
    const int lanes = static_cast<int>(p.OW - j0 < V ? p.OW - j0 : V);
    const bool vec_out = p.vec_dst && lanes == V;
    const scalar_t* yp = y + n * p.s_n + c * p.s_c;
    scalar_t* op = out + n * p.d_n + i * p.d_h + j0 * p.d_w;

    if (p.identity) {
      copy_identity(yp + (i * p.sh) * p.s_h + j0 * sw * p.s_w, index_t(sw) * p.s_w, p.vec_src && sw == 1 && lanes == V,
                    op + p.out_channel(0, c) * p.d_c, p.d_w, vec_out, lanes);
    }
    for (int k0 = 0; k0 < p.K; k0 += kBranchBlock) {
      opmath_t acc[kBranchBlock][V];
#pragma unroll
      for (int kk = 0; kk < kBranchBlock; ++kk)
#pragma unroll
        for (int l = 0; l < V; ++l) acc[kk][l] = 0;
      const opmath_t* wk = w + int64_t(k0) * taps;
      for (int a = 0; a < p.S1; ++a) {
        const int64_t r = source_index(int64_t(i) * p.sh - p.top + a, p.H, p.top, p.S1 - 1 - p.top, p.mode);
        if (r < 0) continue;  // constant padding: the row adds nothing
        const scalar_t* row = yp + index_t(r) * p.s_h;
        const opmath_t* wa = wk + a * p.S2;
        if constexpr (kFixed) {
          constexpr int kLeft = (KS2 - 1) / 2, kRight = KS2 - 1 - kLeft;
          constexpr int kSpan = (V - 1) * SW + KS2;     // input columns the V outputs read
          constexpr int kShift = (V - kLeft % V) % V;   // the segment starts this far before the first of them
          constexpr int kLoad = (kShift + kSpan + V - 1) / V * V;
          opmath_t seg[kLoad];
          const index_t base = j0 * SW - kLeft - kShift;  // a multiple of V: j0 is
          if (p.vec_src && base >= 0 && base + kLoad <= p.W) {
#pragma unroll
            for (int q = 0; q < kLoad; q += V) load_vector(row + base + q, seg + q);
          } else {
#pragma unroll
            for (int x = 0; x < kLoad; ++x) {
              const int64_t col = source_index(int64_t(base) + x, p.W, kLeft, kRight, p.mode);
              seg[x] = col >= 0 ? static_cast<opmath_t>(row[index_t(col) * p.s_w]) : opmath_t(0);
            }
          }
#pragma unroll
          for (int b = 0; b < KS2; ++b)
#pragma unroll
            for (int kk = 0; kk < kBranchBlock; ++kk) {
              if (k0 + kk < p.K) {
                const opmath_t wv = wa[kk * taps + b];
#pragma unroll
                for (int l = 0; l < V; ++l) acc[kk][l] += wv * seg[kShift + l * SW + b];
              }
            }
        } else {
          for (int b = 0; b < p.S2; ++b) {
            opmath_t v[V];
#pragma unroll
            for (int l = 0; l < V; ++l) {
              const int64_t col =
                  source_index(int64_t(j0 + l) * sw - p.left + b, p.W, p.left, p.S2 - 1 - p.left, p.mode);
              v[l] = l < lanes && col >= 0 ? static_cast<opmath_t>(row[index_t(col) * p.s_w]) : opmath_t(0);
            }
#pragma unroll
            for (int kk = 0; kk < kBranchBlock; ++kk) {
              if (k0 + kk < p.K) {
                const opmath_t wv = wa[kk * taps + b];
#pragma unroll
                for (int l = 0; l < V; ++l) acc[kk][l] += wv * v[l];
              }
            }
          }
        }
      }
#pragma unroll
      for (int kk = 0; kk < kBranchBlock; ++kk)
        if (k0 + kk < p.K) store_lanes(op + p.out_channel(p.slot(k0 + kk + 1), c) * p.d_c, p.d_w, lanes, vec_out, acc[kk]);
    }
  }
}

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    forward_cl(const scalar_t* __restrict__ y, const at::opmath_type<scalar_t>* __restrict__ w,
               scalar_t* __restrict__ out, const Params<index_t> p) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int V = kLanes<scalar_t>;
  const int taps = p.S1 * p.S2;
  const index_t groups = (p.C + V - 1) / V;
  const int64_t total = int64_t(p.N) * p.OH * p.OW * groups;
  const index_t out_step = p.channel_step() * p.d_c;
  for (int64_t id = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; id < total; id += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest = id / groups;
    const index_t c0 = static_cast<index_t>(id - rest * groups) * V;
    const index_t j = static_cast<index_t>(rest % p.OW);
    rest /= p.OW;
    const index_t i = static_cast<index_t>(rest % p.OH), n = static_cast<index_t>(rest / p.OH);
    const int lanes = static_cast<int>(p.C - c0 < V ? p.C - c0 : V);
    const bool vec_in = p.vec_src && lanes == V, vec_out = p.vec_dst && lanes == V;
    const scalar_t* yp = y + n * p.s_n + c0 * p.s_c;
    scalar_t* op = out + n * p.d_n + i * p.d_h + j * p.d_w;

    if (p.identity) {
      copy_identity(yp + (i * p.sh) * p.s_h + (j * p.sw) * p.s_w, p.s_c, vec_in, op + p.out_channel(0, c0) * p.d_c,
                    out_step, vec_out, lanes);
    }
    for (int k0 = 0; k0 < p.K; k0 += kBranchBlock) {
      opmath_t acc[kBranchBlock][V];
#pragma unroll
      for (int kk = 0; kk < kBranchBlock; ++kk)
#pragma unroll
        for (int l = 0; l < V; ++l) acc[kk][l] = 0;
      const opmath_t* wk = w + int64_t(k0) * taps;
      for (int a = 0; a < p.S1; ++a) {
        const int64_t r = source_index(int64_t(i) * p.sh - p.top + a, p.H, p.top, p.S1 - 1 - p.top, p.mode);
        if (r < 0) continue;
        for (int b = 0; b < p.S2; ++b) {
          const int64_t col = source_index(int64_t(j) * p.sw - p.left + b, p.W, p.left, p.S2 - 1 - p.left, p.mode);
          if (col < 0) continue;
          opmath_t v[V];
          load_lanes(yp + index_t(r) * p.s_h + index_t(col) * p.s_w, p.s_c, lanes, vec_in, v);
#pragma unroll
          for (int kk = 0; kk < kBranchBlock; ++kk) {
            if (k0 + kk < p.K) {
              const opmath_t wv = wk[kk * taps + a * p.S2 + b];
#pragma unroll
              for (int l = 0; l < V; ++l) acc[kk][l] += wv * v[l];
            }
          }
        }
      }
#pragma unroll
      for (int kk = 0; kk < kBranchBlock; ++kk)
        if (k0 + kk < p.K) store_lanes(op + p.out_channel(p.slot(k0 + kk + 1), c0) * p.d_c, out_step, lanes, vec_out, acc[kk]);
    }
  }
}

template <typename scalar_t, typename index_t>
void launch(const at::Tensor& y, const at::Tensor& w, const BranchArgs& a, at::Tensor& out) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int V = kLanes<scalar_t>;
  const int64_t S1 = w.size(1), S2 = w.size(2);
  Params<index_t> p = make_params<index_t>(y, out, a, S1, S2);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const scalar_t* src = y.const_data_ptr<scalar_t>();
  const opmath_t* wp = w.const_data_ptr<opmath_t>();
  scalar_t* dst = out.mutable_data_ptr<scalar_t>();
  if (is_channels_last(out)) {
    p.vec_src = vectorisable(y, 1, V, a.C);
    p.vec_dst = a.order == Order::Branch && vectorisable(out, 1, V, a.C);
    forward_cl<scalar_t, index_t><<<grid_for(a.N * a.out_h * a.out_w * ((a.C + V - 1) / V)), kThreads, 0, stream>>>(
        src, wp, dst, p);
  } else {
    p.vec_src = vectorisable(y, 3, V, 1);
    p.vec_dst = vectorisable(out, 3, V, 1);
    const int64_t blocks = grid_for(a.N * a.C * a.out_h * ((a.out_w + V - 1) / V));
    const int64_t sw = a.stride_w;
    if (S2 == 3 && sw == 1) {
      forward_nchw<scalar_t, index_t, 3, 1><<<blocks, kThreads, 0, stream>>>(src, wp, dst, p);
    } else if (S2 == 3 && sw == 2) {
      forward_nchw<scalar_t, index_t, 3, 2><<<blocks, kThreads, 0, stream>>>(src, wp, dst, p);
    } else if (S2 == 5 && sw == 1) {
      forward_nchw<scalar_t, index_t, 5, 1><<<blocks, kThreads, 0, stream>>>(src, wp, dst, p);
    } else {
      forward_nchw<scalar_t, index_t, 0, 0><<<blocks, kThreads, 0, stream>>>(src, wp, dst, p);
    }
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void forward_direct(const at::Tensor& y, const at::Tensor& w, const BranchArgs& a, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(y.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "fixed_branch_cuda_next", [&] {
    if (fits_int32(y) && fits_int32(out)) {
      launch<scalar_t, int32_t>(y, w, a, out);
    } else {
      launch<scalar_t, int64_t>(y, w, a, out);
    }
  });
}

}  // namespace next
}  // namespace cuda
}  // namespace fixedbranch
