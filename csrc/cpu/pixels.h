// The channels_last backward of direct banks in zero padding, read and written where the tensors lie (pixels.cpp),
// called by the row kernels' entry point (fixed_branch_cpu.cpp) where it applies.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "fixed_branch.h"

namespace fixedbranch {
namespace cpu {

// Whether backward_pixels takes dL/dy from g: float or double, zero padding, branch order, every live filter direct
// (`all_direct`), the channels of g's slots and of dL/dy contiguous (channels_last), C whole vectors; any stride.
bool pixels_apply(const at::Tensor& g, const at::Tensor& grad_y, const BranchArgs& a, bool all_direct);

// dL/dy from the gradients of the live filters `live` (indices 1..K), whose S1 x S2 taps `weights` holds in that
// order, and the identity's gradient where it is live.
template <typename scalar_t>
void backward_pixels(const at::Tensor& g, const std::vector<int64_t>& live, const std::vector<scalar_t>& weights,
                     int64_t S1, int64_t S2, const BranchArgs& a, at::Tensor& grad_y);

}  // namespace cpu
}  // namespace fixedbranch
