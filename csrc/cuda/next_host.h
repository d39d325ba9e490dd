// Host side of the next CUDA kernels: the parameters a launch gets, the layout checks that allow 16-byte vectors,
// and the entry points of each kernel file (next_forward.cu, next_backward.cu, next_factored.cu, next.cu).
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "fixed_branch.h"
#include "next_common.cuh"
#include "next_plan.h"

namespace fixedbranch {
namespace cuda {
namespace next {

// Whether every offset into t fits in int32 (sizes and strides of PyTorch tensors are non-negative).
inline bool fits_int32(const at::Tensor& t) {
  int64_t last = 0;
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  return t.numel() < std::numeric_limits<int32_t>::max() && last < std::numeric_limits<int32_t>::max();
}

// channels_last in the sense the kernels care about: the lanes are channels.
inline bool is_channels_last(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
}

// Whether V lanes of t along dimension `lane_dim` (3 = W for NCHW, 1 = C for channels_last) can move as one
// aligned 16-byte vector wherever a thread's first lane is a multiple of V: unit stride along the lanes, every
// other stride a multiple of V and the data 16-byte aligned. `lane_span` is the extent that must be a multiple
// of V for the lane groups to start aligned in every slot (C for channels_last branch order, else 1).
inline bool vectorisable(const at::Tensor& t, int64_t lane_dim, int64_t lanes, int64_t lane_span) {
  if (t.stride(lane_dim) != 1 || lane_span % lanes != 0) return false;
  if (reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 != 0) return false;
  for (int64_t d = 0; d < 4; ++d)
    if (d != lane_dim && t.size(d) > 1 && t.stride(d) % lanes != 0) return false;
  return true;
}

template <typename index_t>
Params<index_t> make_params(const at::Tensor& src, const at::Tensor& dst, const BranchArgs& a, int64_t S1,
                            int64_t S2) {
  Params<index_t> p{};
  p.N = a.N, p.C = a.C, p.H = a.H, p.W = a.W, p.OH = a.out_h, p.OW = a.out_w;
  p.s_n = src.stride(0), p.s_c = src.stride(1), p.s_h = src.stride(2), p.s_w = src.stride(3);
  p.d_n = dst.stride(0), p.d_c = dst.stride(1), p.d_h = dst.stride(2), p.d_w = dst.stride(3);
  p.K = static_cast<int>(a.K), p.B = static_cast<int>(a.B);
  p.S1 = static_cast<int>(S1), p.S2 = static_cast<int>(S2);
  p.top = static_cast<int>(a.pad.top), p.left = static_cast<int>(a.pad.left);
  p.sh = static_cast<int>(a.stride_h), p.sw = static_cast<int>(a.stride_w);
  p.band_rows = static_cast<int>(std::max(a.pad.top, a.pad.bottom) + 1);
  p.band_cols = static_cast<int>(std::max(a.pad.left, a.pad.right) + 1);
  p.identity = a.identity ? 1 : 0;
  p.channel_order = a.order == Order::Channel ? 1 : 0;
  p.mode = a.mode;
  return p;
}

// A grid-stride loop's grid: enough blocks to fill the device several times over, no more.
inline int64_t grid_for(int64_t work_items) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return std::max<int64_t>(1, std::min<int64_t>((work_items + kThreads - 1) / kThreads, sms * 32));
}

// next_forward.cu: every filter by direct correlation. `w` is the bank in opmath_t (K, S1, S2), contiguous.
void forward_direct(const at::Tensor& y, const at::Tensor& w, const BranchArgs& a, at::Tensor& out);
// next_factored.cu: the bank's plan (columns into shared memory, then rows); false when the plan does not pay or
// no tile fits, and nothing ran.
bool forward_factored(const at::Tensor& y, const DevicePlan* plan, const at::Tensor& w, const BranchArgs& a,
                      at::Tensor& out);
// next_backward.cu: dL/dy, every live branch folded in registers.
void backward_direct(const at::Tensor& g, const at::Tensor& w, const BranchArgs& a, const StopMask& stop,
                     at::Tensor& grad_y);

// The CUDA kernel generations: FIXEDBRANCH_CUDA_KERNELS=verified (the default) or next, read on every call so that
// a process (a test) can switch between them. next.cu.
enum class Generation { Verified, Next };
Generation selected_generation();

// next.cu: the generation's entry points (the device kernel table's signature).
void forward(const at::Tensor& y, const at::Tensor& bank, const BranchArgs& a, at::Tensor& out);
void backward(const at::Tensor& grad_output, const at::Tensor& bank, const BranchArgs& a, at::Tensor& grad_y);

}  // namespace next
}  // namespace cuda
}  // namespace fixedbranch
