// The CPU kernels' cost model (cost_model.h).
#include "cpu/cost_model.h"

#include <ATen/ATen.h>

#include <atomic>

#include "checks.h"

namespace fixedbranch {
namespace {

// The CPU kernels' relative cost of a row-pass tap and of one intermediate pass, in direct taps. A direct tap feeds
// four branches from one load, a row-pass tap needs a load of its own, and each intermediate row (a column pass, a
// factored filter's row) is written and read once more. Weighted so, the estimate picks direct for 3x3 banks and
// factored for DCT 5x5/7x7 banks, as the bank sweep (python -m benchmarks banks) measures. Rechecked with the polyphase
// backward on the 2-core AMD EPYC (one thread, CPU time, direct / factored, forward and backward in ms): 3x3 standard
// 0.37 / 1.04 and 0.70 / 1.27; DCT 5x5 1.29 / 0.93 and 2.17 / 1.55; DCT 7x7 1.92 / 1.76 and 3.47 / 1.80;
// Gaussian+LoG 7x7 1.20 / 1.89 and 2.01 / 3.57; Gabor 11x11 2.79 / 2.56 and 4.18 / 3.87: the path picked here is the
// faster one both ways for each.
constexpr double kRowTapCost = 2.0, kPassCost = 4.0;

constexpr const char* kFactoringNames[] = {"auto", "never", "always"};
std::atomic<int> factoring_setting{static_cast<int>(Factoring::Auto)};

}  // namespace

Factoring factoring_policy() { return static_cast<Factoring>(factoring_setting.load(std::memory_order_relaxed)); }

bool pays_on_cpu(const BankPlan& plan) {
  double factored_cost = 0;
  for (int64_t k = 0; k < plan.K; ++k) {
    if (plan.factored(k)) {
      factored_cost += kRowTapCost * plan.S2 * static_cast<double>(plan.terms[k].size()) + kPassCost;
    } else {
      factored_cost += static_cast<double>(plan.S1 * plan.S2);
    }
  }
  factored_cost += static_cast<double>(plan.columns.size()) * (plan.S1 + kPassCost);
  return factored_cost < static_cast<double>(plan.direct_taps());
}

std::shared_ptr<const BankPlan> cpu_plan(const at::Tensor& bank) {
  const Factoring policy = factoring_policy();
  if (policy == Factoring::Never || bank.size(1) == 1 || bank.size(2) == 1) return nullptr;
  auto plan = plan_bank(bank);
  if (policy == Factoring::Auto && !pays_on_cpu(*plan)) return nullptr;
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

bool bank_plan_pays_on_cpu(const at::Tensor& bank) {
  check_bank("fixedbranch.bank_plan", bank, bank, "itself");
  return pays_on_cpu(*plan_bank(bank.detach().cpu()));
}

}  // namespace fixedbranch
