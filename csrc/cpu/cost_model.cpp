// The CPU kernels' cost model (cost_model.h).
#include "cpu/cost_model.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <map>

#include "checks.h"

namespace fixedbranch {
namespace {

// The CPU kernels' relative cost of a row-pass tap and of one intermediate pass, in direct taps. A direct tap feeds
// a block of branches from one load, a row-pass tap of one filter needs a load of its own, and each intermediate row (a
// column pass, a factored filter's row) is written and read once more. In the forward, a filter whose row pass runs
// alone also writes its map alone, where a direct pass (or the shared row pass of the single-term filters on one
// column, pays_on_cpu) writes several maps from one pass over its input. Weighted so, the estimate picks the path
// the bank sweep (python -m benchmarks banks) measures faster, forward and backward. Measured on the 2-core AMD EPYC
// (2 threads, warm allocator, best of 9, ms at 5 and 37.5 MB outputs, direct / factored): forward 3x3 standard
// 0.19 / 0.33, 2.02 / 2.69; DCT 5x5 0.34 / 0.14, 3.85 / 2.90; DCT 7x7 1.07 / 0.30, 5.41 / 2.79; Gaussian+LoG 7x7
// 0.62 / 0.76, 4.64 / 6.20; Gabor 11x11 1.40 / 1.24, 9.60 / 8.92; backward 3x3 0.34 / 0.46, 3.46 / 4.77; DCT 5x5
// 0.49 / 0.35, 6.62 / 5.01; DCT 7x7 1.58 / 0.78, 8.69 / 5.81; Gaussian+LoG 0.98 / 1.50, 8.22 / 12.06; Gabor
// 1.90 / 1.68, 14.73 / 13.16.
constexpr double kRowTapCost = 2.0, kPassCost = 4.0, kForwardFilterPassCost = 16.0;

constexpr const char* kFactoringNames[] = {"auto", "never", "always"};
std::atomic<int> factoring_setting{static_cast<int>(Factoring::Auto)};

}  // namespace

Factoring factoring_policy() { return static_cast<Factoring>(factoring_setting.load(std::memory_order_relaxed)); }

bool pays_on_cpu(const BankPlan& plan, Pass pass, int64_t stride_w) {
  const bool forward = pass == Pass::Forward;
  // Per output pixel, a strided forward's column passes cover stride_w staged columns (all phases): a Daubechies-2
  // bank (four 4x4 filters on two columns) pays factored at stride 1 and not at the stride 2 of a wavelet level
  // (1.5-1.9 ms direct against 2.0-2.9 factored, N8 C96 56x56 float32), where a DCT 5x5 bank still does.
  double factored_cost = static_cast<double>(plan.columns.size()) * (plan.S1 + kPassCost) *
                         static_cast<double>(forward ? stride_w : 1);
  std::map<int64_t, int64_t> sharing;  // the forward's single-term filters per column
  for (int64_t k = 0; k < plan.K; ++k) {
    if (!plan.factored(k)) {
      factored_cost += static_cast<double>(plan.S1 * plan.S2);
    } else if (forward && plan.terms[k].size() == 1) {
      ++sharing[plan.terms[k][0].column];
    } else {
      factored_cost += kRowTapCost * plan.S2 * static_cast<double>(plan.terms[k].size()) +
                       (forward ? kForwardFilterPassCost : kPassCost);
    }
  }
  // The forward runs the row passes of the single-term filters on one column together, in blocks of at most
  // kMaxBranches of even sizes (correlate_blocks): each load feeds a block, which writes its maps from one pass, as
  // direct filters do.
  for (const auto& [column, filters] : sharing) {
    for_each_branch_block(filters, [&](int64_t, int64_t n) {
      const double c = static_cast<double>(n);
      factored_cost += c * ((1.0 + 1.0 / c) * plan.S2 + (n > 1 ? kPassCost : kForwardFilterPassCost));
    });
  }
  return factored_cost < static_cast<double>(plan.direct_taps());
}

std::shared_ptr<const BankPlan> cpu_plan(const at::Tensor& bank, Pass pass, int64_t stride_w) {
  const Factoring policy = factoring_policy();
  if (policy == Factoring::Never || bank.size(1) == 1 || bank.size(2) == 1) return nullptr;
  auto plan = plan_bank(bank);
  if (policy == Factoring::Auto && !pays_on_cpu(*plan, pass, stride_w)) return nullptr;
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
