// Preparing the memory of a fresh CPU output before a kernel writes it (output_memory.cpp has the measurements).
#pragma once

#include <ATen/core/Tensor.h>

namespace fixedbranch {

// Backs every page of `out`, a tensor just allocated for a kernel that overwrites all of it, with memory, in
// parallel on ATen's thread pool, using huge pages while they cost less than small ones. The contents stay
// unspecified. Does nothing off Linux, for outputs under one huge page, and for memory that is already backed
// (a block the allocator recycled); never fails: where the system lacks a feature it leaves the kernel's own writes
// to fault the pages in.
void prepare_output(const at::Tensor& out);

}  // namespace fixedbranch
