// The CPU kernels' cost model: whether they run a bank's plan (csrc/bank_plan/bank_plan.h) factored or correlate
// every filter directly. The plan counts multiply-adds; the CPU kernels differ in what one costs (cost_model.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <memory>
#include <string>

#include "bank_plan/bank_plan.h"

namespace fixedbranch {

// The most branches one register-blocked pass of the CPU kernels (correlate<KB, 2> in correlate.h) runs at once:
// 2*KB accumulators and the input vectors fit the 32 vector registers of AVX-512 up to KB = 8, but blocks of 7 and 8
// ran the DCT 7x7 forward (in cache) and the Gaussian/LoG 7x7 one 1.1x slower than blocks of 4 and 3, or 4 and 4;
// blocks of at most 6 ran them as fast or faster. The 16 registers of AVX2 hold KB = 4. kVectorRegisters: the ISA's
// vector registers, which the backward's compile-time taps need 32 of (gather_rows_any, fixed_branch_cpu.cpp).
// kMaxClassBranches: the same for the forward's passes over tap classes (correlate_classes), whose steps hold fewer
// operands: 2*8 accumulators and 4 partial sums.
#ifdef CPU_CAPABILITY_AVX512
constexpr int kVectorRegisters = 32;
constexpr int64_t kMaxBranches = 6;
constexpr int64_t kMaxClassBranches = 8;
#else
constexpr int kVectorRegisters = 16;
constexpr int64_t kMaxBranches = 4;
constexpr int64_t kMaxClassBranches = 4;
#endif

// f(first, size) for each block of a run of n branches: as few blocks of at most `most` (kMaxBranches) as possible,
// of even sizes (the kernels run them so, correlate_blocks, and the cost model counts them so).
template <typename F>
void for_each_branch_block(int64_t n, F&& f, int64_t most = kMaxBranches) {
  const int64_t blocks = (n + most - 1) / most;
  for (int64_t b = 0, first = 0; b < blocks; ++b) {
    const int64_t size = (n - first) / (blocks - b);
    f(first, size);
    first += size;
  }
}

// The CPU kernels' passes, which the cost model weighs apart: the forward writes each factored filter's map from a
// row pass (shared by the single-term filters on one column, kMaxBranches at a time), the backward sums the row
// passes' adjoints into shared column accumulators.
enum class Pass { Forward, Backward };

// Whether the CPU kernels' `pass` runs `plan` rather than the direct correlation of every filter (their default).
// A forward at column stride `stride_w` runs its column passes over every column of the rows it keeps.
bool pays_on_cpu(const BankPlan& plan, Pass pass, int64_t stride_w = 1);

// The plan the CPU kernels' `pass` runs for `bank` (rounded to the compute dtype, on the CPU), or null where it
// correlates every filter directly: by pays_on_cpu, unless fixedbranch::_set_factoring forced a path.
std::shared_ptr<const BankPlan> cpu_plan(const at::Tensor& bank, Pass pass, int64_t stride_w = 1);

// How a bank's plan is used: by the cost model (Auto), never, or whenever the plan factors a filter.
enum class Factoring : int { Auto = 0, Never = 1, Always = 2 };

// The policy fixedbranch::_set_factoring set; the CUDA kernels follow it too (with their own cost model).
Factoring factoring_policy();

// fixedbranch::_set_factoring: "auto" (pays_on_cpu decides), "never" or "always" (whenever the plan factors a
// filter); returns the previous policy. Benchmarks compare the paths; results agree within the tolerances either way.
std::string set_factoring(c10::string_view policy);

// fixedbranch::_bank_plan_pays_on_cpu, a diagnostic: pays_on_cpu of the plan of `bank` (any device), for the
// backward pass or the forward.
bool bank_plan_pays_on_cpu(const at::Tensor& bank, bool backward);

}  // namespace fixedbranch
