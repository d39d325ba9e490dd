// The strided NCHW kernels (planes.cpp), called by the row kernels' entry points (fixed_branch_cpu.cpp) where they
// apply: y or g in NCHW, a stride > 1, every filter (every live filter, in the backward) direct, and in the backward
// zero padding. A task runs plane by plane, or at column stride 2 (small banks forward, 3x3 to 7x7 filters backward)
// with y or g read where it lies, column pairs split or interleaved in registers.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <vector>

#include "cpu/correlate.h"
#include "fixed_branch.h"

namespace fixedbranch {
namespace cpu {

// Every map of fixed_branch's forward, the bank all direct in `kb`.
template <typename scalar_t>
void forward_planes(const at::Tensor& y, const KernelBank<at::opmath_type<scalar_t>>& kb, const BranchArgs& a,
                    at::Tensor& out);

// dL/dy from the gradients of the live filters `live` (indices 1..K), whose taps `weights` holds in that order.
template <typename scalar_t>
void backward_planes(const at::Tensor& g, const std::vector<int64_t>& live,
                     const std::vector<at::opmath_type<scalar_t>>& weights, int64_t S1, int64_t S2, const BranchArgs& a,
                     at::Tensor& grad_y);

}  // namespace cpu
}  // namespace fixedbranch
