// Banks of 2x2 filters at stride 2 on even-sized maps (one level of the Haar transform, its inverse): every pixel of
// y lies in exactly one output's window, so the pass is a block transform that needs no staging (tiles.cpp). Called
// by the row kernels' entry points (fixed_branch_cpu.cpp) where `fits_tiles` says so.
#pragma once

#include <ATen/ATen.h>

#include "fixed_branch.h"

namespace fixedbranch {
namespace cpu {

// True when the tile kernels compute this pass: 2x2 filters, stride 2, H and W even (no output reads the padding,
// so every padding mode gives the same result), float or double, and rows contiguous in `src` (y, or the gradient)
// and `dst` (the output, or dL/dy).
bool fits_tiles(const at::Tensor& src, const at::Tensor& dst, const at::Tensor& bank, const BranchArgs& a);

// Every map of fixed_branch's forward.
template <typename scalar_t>
void forward_tiles(const at::Tensor& y, const at::Tensor& bank, const BranchArgs& a, at::Tensor& out);

// dL/dy: the identity's gradient and every live filter's adjoint.
template <typename scalar_t>
void backward_tiles(const at::Tensor& g, const at::Tensor& bank, const BranchArgs& a, at::Tensor& grad_y);

}  // namespace cpu
}  // namespace fixedbranch
