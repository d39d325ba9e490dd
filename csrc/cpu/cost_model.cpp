// The CPU kernels' cost model (cost_model.h).
#include "cpu/cost_model.h"

#include <ATen/ATen.h>

#include <atomic>

#include "checks.h"

namespace fixedbranch {
namespace {

// The CPU kernels' relative cost of a row-pass tap and of one intermediate pass, in direct taps. A direct tap feeds
// four branches from one load, a row-pass tap needs a load of its own, and each intermediate row (a column pass, a
// factored filter's row) is written and read once more. The forward pays more per factored filter: its row pass
// writes that filter's map on its own, where a direct pass writes four maps from one pass over the staged rows.
// Weighted so, the estimate picks the path the bank sweep (python -m benchmarks banks) measures faster, forward and
// backward. Measured on the 2-core AMD EPYC (2 threads, warm allocator, best of 7, ms at 5 and 37.5 MB outputs,
// direct / factored): forward 3x3 standard 0.19 / 0.33, 2.00 / 3.14; DCT 5x5 0.32 / 0.26, 3.58 / 4.79; DCT 7x7
// 0.92 / 0.84, 4.85 / 4.52; Gaussian+LoG 7x7 0.61 / 1.53, 4.32 / 7.72; Gabor 11x11 1.36 / 1.26, 9.51 / 8.94;
// backward 3x3 0.32 / 0.47, 3.61 / 4.90; DCT 5x5 0.46 / 0.34, 6.09 / 4.86; DCT 7x7 1.44 / 0.80, 8.30 / 5.13;
// Gaussian+LoG 0.93 / 1.53, 7.90 / 11.96; Gabor 2.01 / 1.82, 14.45 / 12.96. Only DCT 5x5's small forward
// disagrees (a 0.06 ms loss, against 1.2 ms gained at 37.5 MB).
constexpr double kRowTapCost = 2.0, kPassCost = 4.0, kForwardFilterPassCost = 16.0;

constexpr const char* kFactoringNames[] = {"auto", "never", "always"};
std::atomic<int> factoring_setting{static_cast<int>(Factoring::Auto)};

}  // namespace

Factoring factoring_policy() { return static_cast<Factoring>(factoring_setting.load(std::memory_order_relaxed)); }

bool pays_on_cpu(const BankPlan& plan, Pass pass) {
  const double filter_pass = pass == Pass::Forward ? kForwardFilterPassCost : kPassCost;
  double factored_cost = 0;
  for (int64_t k = 0; k < plan.K; ++k) {
    if (plan.factored(k)) {
      factored_cost += kRowTapCost * plan.S2 * static_cast<double>(plan.terms[k].size()) + filter_pass;
    } else {
      factored_cost += static_cast<double>(plan.S1 * plan.S2);
    }
  }
  factored_cost += static_cast<double>(plan.columns.size()) * (plan.S1 + kPassCost);
  return factored_cost < static_cast<double>(plan.direct_taps());
}

std::shared_ptr<const BankPlan> cpu_plan(const at::Tensor& bank, Pass pass) {
  const Factoring policy = factoring_policy();
  if (policy == Factoring::Never || bank.size(1) == 1 || bank.size(2) == 1) return nullptr;
  auto plan = plan_bank(bank);
  if (policy == Factoring::Auto && !pays_on_cpu(*plan, pass)) return nullptr;
  return plan;
}

std::string set_factoring(c10::string_view policy) {
  int chosen = -1;
  for (int i = 0; i < 3; ++i) {
    if (policy == kFactoringNames[i]) chosen = i;
  }
  TORCH_CHECK_VALUE(chosen >= 0, "fixedbranch._set_factoring: expected policy to be 'auto', 'never' or 'always', got '",
                    std::string(policy), "'");
  return kFactoringNames[factoring_setting.exchange(chosen)];
}

bool bank_plan_pays_on_cpu(const at::Tensor& bank, bool backward) {
  check_bank("fixedbranch.bank_plan", bank, bank, "itself");
  return pays_on_cpu(*plan_bank(bank.detach().cpu()), backward ? Pass::Backward : Pass::Forward);
}

}  // namespace fixedbranch
