// The weight gradient of a depthwise convolution on the CPU (depthwise.cpp), registered by fixed_branch.cpp as
// fixedbranch::_depthwise_conv2d_weight_grad.
#pragma once

#include <ATen/ATen.h>

namespace fixedbranch {

// dL/dweight, shape (C, 1, S1, S2), of F.conv2d(input, weight, stride=1, padding=padding, dilation=1, groups=C)
// given dL/doutput. float32 and float64; checks its arguments.
at::Tensor depthwise_conv2d_weight_grad(const at::Tensor& grad_output, const at::Tensor& input,
                                        c10::IntArrayRef kernel_size, c10::IntArrayRef padding);

}  // namespace fixedbranch
