// The device plan cache of the next CUDA kernels.
//
// The plan is computed from the bank's values (csrc/bank_plan.cpp, on the host), and a CUDA bank's values are on
// the device: reading them is a device-to-host copy, a synchronisation. The design forbids one per call, so the
// plan is cached by the bank tensor's identity and version counter:
//   - identity: the TensorImpl, held by a weak reference, so that a freed bank's address cannot alias a new one
//     (the weak reference keeps the impl's memory from being reused while the entry lives);
//   - version: every in-place change of the bank (bank.mul_(2), copy_, optimiser-style updates) bumps it, and the
//     next call re-plans.
// The first call with a bank tensor reads it once (one synchronisation) and uploads the plan's tables; every later
// call with the same, unchanged tensor finds them. The modules keep their bank as a buffer in the layer's dtype,
// so a layer synchronises once per bank, at its first call after construction or a move.
// Where the plan cannot be had without a synchronisation on every call, the bank runs direct (same results within
// the tolerances, docs/design.md section 4) rather than synchronise:
//   - a temporary bank: the operator rounds a bank of another dtype than y's into a fresh tensor on every call, so
//     its identity never repeats (pass the bank in y's dtype, as the modules do, to run factored);
//   - an inference tensor, which has no version counter;
//   - a call during CUDA graph capture, where a copy to the host is not allowed (a bank seen before capture is
//     found in the cache and runs factored in the graph too).
#include "next_plan.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraphsUtils.cuh>
#include <c10/core/TensorImpl.h>
#include <c10/util/intrusive_ptr.h>

#include <algorithm>
#include <list>
#include <mutex>
#include <vector>

#include "bank_plan/bank_plan.h"
#include "cpu/cost_model.h"
#include "fixed_branch.h"

namespace fixedbranch {
namespace cuda {
namespace next {
namespace {

// Entries kept: each holds a small device table and a weak reference (a freed bank's storage is released at once;
// only its TensorImpl header waits for the entry's eviction).
constexpr size_t kCapacity = 64;

// The CUDA kernels' cost model: the direct kernels are memory-bound up to a few dozen taps per output pixel, so the
// factored kernel (an extra shared-memory pass, scalar stores) runs only where the plan at least halves the
// multiply-adds, e.g. DCT and Gaussian banks of 5x5 and up (next.cu does not even look up the plan of a bank under
// 5x5 taps unless the policy is "always").
bool pays_on_cuda(const BankPlan& plan) { return 2 * plan.plan_taps() <= plan.direct_taps(); }

struct Entry {
  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> bank;
  const c10::TensorImpl* impl;
  uint32_t version;
  c10::ScalarType opmath;
  Factoring policy;
  std::shared_ptr<const DevicePlan> plan;
};

std::mutex cache_mutex;
std::list<Entry>& cache() {
  static auto* entries = new std::list<Entry>();  // never destroyed: calls may come during static teardown
  return *entries;
}

std::shared_ptr<const DevicePlan> build(const at::Tensor& bank, c10::ScalarType opmath, Factoring policy) {
  auto device_plan = std::make_shared<DevicePlan>();
  const std::shared_ptr<const BankPlan> plan = plan_bank(bank.detach().cpu());  // the one synchronisation
  const int64_t K = plan->K, S1 = plan->S1, S2 = plan->S2;
  std::vector<double> values;
  for (const auto& column : plan->columns) values.insert(values.end(), column.begin(), column.end());
  std::vector<int32_t> term_begin{0}, term_column;
  for (int64_t k = 0; k < K; ++k) {
    for (const auto& term : plan->terms[k]) {
      term_column.push_back(static_cast<int32_t>(term.column));
      values.insert(values.end(), term.row.begin(), term.row.end());
    }
    term_begin.push_back(static_cast<int32_t>(term_column.size()));
  }
  std::vector<int32_t> meta = term_begin;
  meta.insert(meta.end(), term_column.begin(), term_column.end());
  const auto device = bank.device();
  device_plan->values = at::tensor(values, at::kDouble).to(device, opmath);
  device_plan->meta = at::tensor(meta, at::kInt).to(device);
  device_plan->num_columns = static_cast<int64_t>(plan->columns.size());
  const bool any_factored = !term_column.empty();
  device_plan->run_factored = any_factored && policy != Factoring::Never &&
                              (policy == Factoring::Always || pays_on_cuda(*plan));
  (void)S1, (void)S2;
  return device_plan;
}

}  // namespace

std::shared_ptr<const DevicePlan> plan_for_bank(const at::Tensor& bank, c10::ScalarType opmath) {
  const Factoring policy = factoring_policy();
  if (policy == Factoring::Never) return nullptr;
  // A tensor only the caller's local handle refers to is the operator's per-call conversion (see above).
  if (bank.is_inference() || bank.use_count() <= 1) return nullptr;
  const c10::TensorImpl* impl = bank.unsafeGetTensorImpl();
  const uint32_t version = impl->version_counter().current_version();
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto& entries = cache();
    for (auto it = entries.begin(); it != entries.end(); ++it) {
      if (it->impl == impl && !it->bank.expired() && it->version == version && it->opmath == opmath &&
          it->policy == policy) {
        entries.splice(entries.begin(), entries, it);  // most recently used first
        return it->plan;
      }
    }
  }
  if (at::cuda::currentStreamCaptureStatus() != at::cuda::CaptureStatus::None) return nullptr;
  std::shared_ptr<const DevicePlan> plan = build(bank, opmath, policy);
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto& entries = cache();
  entries.remove_if([&](const Entry& e) { return e.impl == impl || e.bank.expired(); });
  entries.push_front(Entry{c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(bank.getIntrusivePtr()),
                           impl, version, opmath, policy, plan});
  if (entries.size() > kCapacity) entries.pop_back();
  return plan;
}

}  // namespace next
}  // namespace cuda
}  // namespace fixedbranch
