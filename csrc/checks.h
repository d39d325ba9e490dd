// The argument checks of the fixedbranch operators: every message names the operator, the argument, what was
// expected and what was received (docs/design.md, "Bad input"). Value errors raise Python's ValueError (as the
// public functions always have), so a raw torch.ops.fixedbranch call and the public function reject alike.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/string_view.h>

#include <array>
#include <string>

#include "fixed_branch.h"

namespace fixedbranch {

// An int[2] argument as the user most likely wrote it: one number when both entries are equal (the schema turns a
// single int into a pair), "(a, b)" otherwise.
std::string echo_pair(c10::IntArrayRef v);

// A defined tensor of `dim` dimensions (`dims` spells them) and one of the four float dtypes.
void check_float_tensor(const char* what, const char* name, const at::Tensor& t, int64_t dim, const char* dims);

// The bank's own checks (3-D, non-empty, float; a 2-D bank is told how to make a bank) and that it lives on the
// operand's device.
void check_bank(const char* what, const at::Tensor& bank, const at::Tensor& like, const char* like_name);

// Checks and parses the non-tensor arguments of a branch operator applied to an image of `y_sizes` (N, C, H, W)
// named `input_name`: the padding mode and its size rules, the order, the stride and the stop set. H = W = -1
// stands for an image not seen yet: everything but the size rules is checked.
BranchArgs parse_branch_args(const char* what, const char* input_name, std::array<int64_t, 4> y_sizes,
                             const at::Tensor& bank, c10::string_view padding_mode, c10::IntArrayRef stop_gradient,
                             bool identity, c10::string_view order, c10::IntArrayRef stride,
                             const char* stride_name = "stride", const char* padding_mode_name = "padding_mode");

// The convolution's arguments of fixed_branch_conv2d; returns the convolution's output size (N, C_out, H, W).
std::array<int64_t, 4> check_conv_args(const char* what, const at::Tensor& x, const at::Tensor& weight,
                                       const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                       c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups);

}  // namespace fixedbranch
