// Shared by the operator schemas and the per-device kernels: padding modes, the "same" padding of a bank, the
// index map of each padding mode and the argument checks that guard memory safety.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <string>

namespace fixedbranch {

enum class PadMode : int { Zeros = 0, Reflect = 1, Replicate = 2, Circular = 3 };

PadMode parse_padding_mode(c10::string_view name);

// "same" padding, as PyTorch's padding="same": the odd extra row/column goes to the bottom/right.
struct SamePad {
  int64_t top, bottom, left, right;
};

inline SamePad same_pad(int64_t s1, int64_t s2) {
  const int64_t top = (s1 - 1) / 2, left = (s2 - 1) / 2;
  return {top, s1 - 1 - top, left, s2 - 1 - left};
}

// Source index of padded coordinate i (i < 0 or i >= n lies in the border) as F.pad defines it, or -1 where
// the padded value is the constant 0. Valid for |border| < n (reflect) and |border| <= n (circular), which
// check_branch_args guarantees.
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

// Checks shared by the forward and backward kernels of every device. `what` names the operator, `input_name`
// the 4-D tensor. Returns the parsed padding mode.
PadMode check_branch_args(const char* what, const char* input_name, const at::Tensor& input, const at::Tensor& bank,
                          c10::string_view padding_mode);

// Outputs, allocated in the memory format of the operand (NCHW stays NCHW, channels_last stays channels_last):
// the forward's (N, (K+1)*C, H, W) and the backward's dL/dy, (N, C, H, W) from grad_output's (N, (K+1)*C, H, W).
at::Tensor empty_branch_output(const at::Tensor& y, int64_t num_filters);
at::Tensor empty_branch_grad(const at::Tensor& grad_output, int64_t num_filters);

// The backward's extra checks: grad_output's channels split into K+1 equal slices, stop indices in [0, K].
void check_backward_args(const at::Tensor& grad_output, const at::Tensor& bank, c10::IntArrayRef stop_gradient);

}  // namespace fixedbranch
