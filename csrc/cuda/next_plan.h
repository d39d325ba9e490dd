// The bank plan (csrc/bank_plan.h) as the next CUDA kernels use it: its tables in device memory, cached per bank
// tensor so that a call costs no host-device synchronisation once the bank has been seen.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <memory>

namespace fixedbranch {
namespace cuda {
namespace next {

struct DevicePlan {
  at::Tensor values;  // opmath_t on the bank's device: U column factors (S1 each), then T term rows (S2 each)
  at::Tensor meta;    // int32 on the device: term_begin (K + 1), then term_column (T)
  int64_t num_columns = 0;
  bool run_factored = false;  // the factoring policy and the plan's cost choose the factored kernel
};

// The plan of `bank` (rounded to y's dtype, on the device) with tables in `opmath`, or null where it cannot be had
// without a host-device synchronisation that would recur on every call: see next_plan.cu.
std::shared_ptr<const DevicePlan> plan_for_bank(const at::Tensor& bank, c10::ScalarType opmath);

}  // namespace next
}  // namespace cuda
}  // namespace fixedbranch
