// The bank plan (bank_plan.h): each filter factored (factorise.h) to the tolerances of the bank's dtype, columns
// shared across the bank, the cheapest choice of factored filters, and the plan cached by dtype and content.
#include "bank_plan/bank_plan.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "bank_plan/cache.h"
#include "bank_plan/factorise.h"
#include "checks.h"

namespace fixedbranch {

int64_t BankPlan::direct_taps() const { return K * S1 * S2; }

int64_t BankPlan::plan_taps() const {
  std::vector<bool> used(columns.size(), false);
  int64_t taps = 0;
  for (int64_t k = 0; k < K; ++k) {
    if (!factored(k)) {
      taps += S1 * S2;
      continue;
    }
    for (const Term& t : terms[k]) {
      used[t.column] = true;
      taps += S2;
    }
  }
  return taps + static_cast<int64_t>(std::count(used.begin(), used.end(), true)) * S1;
}

namespace {

using factorise::Column;

// The cost rule: of all choices of factored filters, the one with the fewest multiply-adds per output pixel,
// counting kPassOverhead per pass. A factored filter costs S2 + kPassOverhead per term instead of its S1 * S2
// direct taps, and every column pass its factored filters use costs S1 + kPassOverhead once. Choosing filters whose
// savings outweigh the columns they need is a maximum-weight closure problem, solved exactly by a minimum cut
// (Picard, 1976): source -> filter (its savings, when positive), filter -> each of its columns (unbounded),
// column -> sink (its cost). The filters on the source side of the cut run factored. Of several cheapest plans it
// picks the one with the fewest factored filters, so a tie goes direct, and in the result every factored filter
// costs strictly less factored, given the columns the others share, than direct. A greedy per-filter rule would
// not see groups: two rank-2 3x3 filters sharing both columns each cost 8 < 9 factored given the other, but
// 2 * 8 + 2 * 4 = 24 >= 18 together.
void choose_paths(BankPlan& plan) {
  const int64_t K = plan.K, C = static_cast<int64_t>(plan.columns.size());
  const int64_t direct = plan.S1 * plan.S2;
  const int64_t term_cost = plan.S2 + kPassOverhead, column_cost = plan.S1 + kPassOverhead;
  const int64_t source = K + C, sink = K + C + 1;
  std::vector<factorise::Edge> edges;
  int64_t total_savings = 0;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t savings = direct - term_cost * static_cast<int64_t>(plan.terms[k].size());
    if (plan.factored(k) && savings > 0) total_savings += savings;
  }
  for (int64_t k = 0; k < K; ++k) {
    const int64_t savings = direct - term_cost * static_cast<int64_t>(plan.terms[k].size());
    if (!plan.factored(k) || savings <= 0) continue;
    edges.push_back({source, k, savings});
    for (const auto& t : plan.terms[k]) edges.push_back({k, K + t.column, total_savings + 1});
  }
  for (int64_t c = 0; c < C; ++c) edges.push_back({K + c, sink, column_cost});
  const std::vector<bool> factored = factorise::min_cut_source_side(K + C + 2, edges, source, sink);
  for (int64_t k = 0; k < K; ++k) {
    if (!factored[k]) plan.terms[k].clear();
  }
}

// Drops the columns no factored filter uses and renumbers the rest in order of first use.
void compact_columns(BankPlan& plan) {
  std::vector<int64_t> remap(plan.columns.size(), -1);
  std::vector<Column> kept;
  for (auto& ts : plan.terms) {
    for (auto& t : ts) {
      if (remap[t.column] < 0) {
        remap[t.column] = static_cast<int64_t>(kept.size());
        kept.push_back(std::move(plan.columns[t.column]));
      }
      t.column = remap[t.column];
    }
  }
  plan.columns = std::move(kept);
}

std::shared_ptr<const BankPlan> build_plan(const double* data, int64_t K, int64_t S1, int64_t S2,
                                           c10::ScalarType dtype) {
  const PlanTolerances tol = plan_tolerances(dtype);
  auto plan = std::make_shared<BankPlan>();
  plan->K = K;
  plan->S1 = S1;
  plan->S2 = S2;
  plan->dtype = dtype;
  plan->terms.resize(K);
  plan->ranks.assign(K, 0);
  const int64_t size = S1 * S2;
  // Per filter: its candidate columns, as indices into the shared list (earliest match wins; new ones appended).
  std::vector<std::vector<int64_t>> chosen(K);
  factorise::ColumnSet shared(S1, tol.column_match);
  for (int64_t k = 0; k < K; ++k) {
    const double* f = data + k * size;
    if (!std::all_of(f, f + size, [](double x) { return std::isfinite(x); })) {
      plan->ranks[k] = -1;
      continue;
    }
    if (factorise::max_abs(f, size) == 0.0) continue;  // a zero filter: rank 0, direct
    std::vector<Column> us = factorise::left_singular_vectors(f, S1, S2, tol.rank);
    plan->ranks[k] = static_cast<int64_t>(us.size());
    if (S1 == 1 || S2 == 1) continue;  // a row or column filter is its own cheapest form
    for (Column& u : us) {
      factorise::canonical_sign(u);
      int64_t c = shared.find(u);
      if (c < 0) c = shared.add(std::move(u));
      // Two of one filter's orthonormal vectors matching one column would make U^T U singular: keep one.
      if (std::find(chosen[k].begin(), chosen[k].end(), c) == chosen[k].end()) chosen[k].push_back(c);
    }
  }
  plan->columns = shared.release();
  // Rows re-solved against the shared columns (which differ from the filter's own vectors by up to
  // tol.column_match), then verified; a filter that fails the check runs direct.
  for (int64_t k = 0; k < K; ++k) {
    if (chosen[k].empty()) continue;
    plan->terms[k] = factorise::resolve_rows(data + k * size, S1, S2, plan->columns, chosen[k], tol.reconstruction);
  }
  choose_paths(*plan);
  compact_columns(*plan);
  return plan;
}

}  // namespace

std::shared_ptr<const BankPlan> plan_bank(const at::Tensor& bank) {
  constexpr const char* what = "fixedbranch.bank_plan";
  check_bank(what, bank, bank, "itself");
  TORCH_CHECK_VALUE(bank.device().is_cpu(), what, ": expected bank on the CPU, got ", bank.device());
  static auto* plans = new BankCache<BankPlan>();  // never destroyed: plans may be requested during static teardown
  // Keyed by the bank's own bytes, which the float64 values are made from only when the plan is new (the conversion
  // cost more than the lookup).
  const std::string key = bank_content_key(bank);
  if (auto hit = plans->get(key)) return hit;
  const at::Tensor values = bank.detach().to(at::kDouble).contiguous();
  // Decomposed outside the lock: two threads may both build the first plan of a bank; one of them is kept.
  return plans->put(key, build_plan(values.const_data_ptr<double>(), values.size(0), values.size(1), values.size(2),
                                    bank.scalar_type()));
}

}  // namespace fixedbranch
