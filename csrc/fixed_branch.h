// Shared by the operator entry points and the per-device kernels: padding modes, the "same" padding of a bank,
// the index map of each padding mode, the parsed arguments of a branch operator and the per-device kernel table.
// The semantics are docs/design.md's.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/macros/Macros.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/OptionalArrayRef.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fixedbranch {

enum class PadMode : int { Zeros = 0, Reflect = 1, Replicate = 2, Circular = 3 };

// Output channel orders: Branch puts branch b of channel c at b*C + c (torch.cat's order), Channel at c*B + b
// (a grouped convolution with a repeated bank).
enum class Order : int { Branch = 0, Channel = 1 };

// "same" padding, as PyTorch's padding="same": the odd extra row/column goes to the bottom/right.
struct SamePad {
  int64_t top, bottom, left, right;
};

inline SamePad same_pad(int64_t s1, int64_t s2) {
  const int64_t top = (s1 - 1) / 2, left = (s2 - 1) / 2;
  return {top, s1 - 1 - top, left, s2 - 1 - left};
}

// Source index of padded coordinate i (i < 0 or i >= n lies in the border) as F.pad defines it, or -1 where
// the padded value is the constant 0. Valid for |border| < n (reflect) and |border| <= n (circular), which the
// argument checks guarantee.
C10_HOST_DEVICE inline int64_t pad_source_index(int64_t i, int64_t n, PadMode mode) {
  if (i >= 0 && i < n) return i;
  switch (mode) {
    case PadMode::Reflect:
      return i < 0 ? -i : 2 * (n - 1) - i;
    case PadMode::Replicate:
      return i < 0 ? 0 : n - 1;
    case PadMode::Circular:
      return i < 0 ? i + n : i - n;
    default:
      return -1;
  }
}

// The arguments of a branch operator after the entry point has checked and parsed them: everything a device
// kernel needs besides the tensors. Sizes are y's (N, C, H, W) and the output's (out_h, out_w).
struct BranchArgs {
  PadMode mode;
  SamePad pad;
  bool identity;
  Order order;
  int64_t stride_h, stride_w;
  int64_t N, C, H, W, out_h, out_w;
  int64_t K;                  // filters in the bank
  int64_t B;                  // branches in the output: K + identity
  std::vector<bool> stopped;  // K+1 flags, index 0 the identity; only the backward reads them

  bool strided() const { return stride_h != 1 || stride_w != 1; }
  // Output slot of filter k (1..K): the identity, when present, is slot 0.
  int64_t slot(int64_t k) const { return k - 1 + (identity ? 1 : 0); }
  // Output channel of slot b, channel c, and the step between consecutive channels of one slot.
  int64_t channel(int64_t b, int64_t c) const { return order == Order::Branch ? b * C + c : c * B + b; }
  int64_t channel_step() const { return order == Order::Branch ? 1 : B; }
  // True when the output is exactly the old cat([y, F_1*y, ..., F_K*y]) at full resolution.
  bool plain() const { return identity && order == Order::Branch && !strided(); }
};

// Device kernels. `bank` is already rounded to the operand's dtype and contiguous; `out` / `grad_y` are allocated
// (non-empty) in the memory format the operator promises. Kernels only compute.
using ForwardKernel = void (*)(const at::Tensor& y, const at::Tensor& bank, const BranchArgs& args, at::Tensor& out);
using BackwardKernel = void (*)(const at::Tensor& grad_output, const at::Tensor& bank, const BranchArgs& args,
                                at::Tensor& grad_y);

struct BranchKernels {
  ForwardKernel forward = nullptr;
  BackwardKernel backward = nullptr;
};

// Each device file registers its kernels here once (a static initialiser) and nowhere else; fixed_branch.cpp
// registers the entry points below with the dispatcher for the CPU and CUDA keys, and they look the kernels up by
// the operand's device type.
bool register_branch_kernels(c10::DeviceType device, BranchKernels kernels);

// What a CUDA build adds besides its kernels, registered once by cuda/next.cu (a CPU-only build has none): the
// CUDA kernel generation the next call will run ("verified" or "next", FIXEDBRANCH_CUDA_KERNELS), and a probe that
// raises each kind of error CUDA-side code can raise (fixedbranch::_cuda_error_probe, tools/gpu_errors.py).
struct CudaHooks {
  std::string (*kernels)() = nullptr;
  void (*error_probe)(c10::string_view what) = nullptr;
};
bool register_cuda_hooks(CudaHooks hooks);

// The device-independent entry points of fixedbranch::fixed_branch and fixedbranch::_fixed_branch_backward: check
// every argument, parse once, allocate, return early on empty tensors, guard the device, run the device kernel.
at::Tensor fixed_branch(const at::Tensor& y, const at::Tensor& bank, c10::string_view padding_mode,
                        c10::IntArrayRef stop_gradient, bool identity, c10::string_view order,
                        c10::IntArrayRef stride);
at::Tensor fixed_branch_backward(const at::Tensor& grad_output, const at::Tensor& bank, c10::string_view padding_mode,
                                 c10::IntArrayRef stop_gradient, bool identity, c10::string_view order,
                                 c10::IntArrayRef stride, c10::IntArrayRef input_size);
// fixedbranch::fixed_branch_transpose, the adjoint of fixed_branch: the backward kernel with no branch stopped.
at::Tensor fixed_branch_transpose(const at::Tensor& z, const at::Tensor& bank, c10::string_view padding_mode,
                                  bool identity, c10::string_view order, c10::IntArrayRef stride,
                                  c10::OptionalIntArrayRef output_size);

}  // namespace fixedbranch
