// The diagnostic operators of the bank plan (bank_plan.h): the plan as a table, the bank rebuilt from its plan, and
// the constants fixedbranch/plan.py reads instead of restating them (the table's column names, the tolerances).
#include <ATen/ATen.h>

#include <algorithm>
#include <array>

#include "bank_plan/bank_plan.h"
#include "checks.h"

namespace fixedbranch {
namespace {

constexpr const char* kWhat = "fixedbranch.bank_plan";

// Columns of the table returned by fixedbranch::_bank_plan, one row per filter, and their names
// (fixedbranch::_bank_plan_columns), by which fixedbranch/plan.py finds them.
enum PlanTableColumn : int64_t {
  kFactored = 0,     // 1 if the filter runs factored, 0 if direct
  kTerms = 1,        // its number of separable terms (0 when direct)
  kFirstColumn = 2,  // the column index of its first term, -1 when direct
  kNewColumns = 3,   // columns whose first user (in filter order) it is: their sum is the plan's column count
  kRank = 4,         // its numerical rank (0 for a zero filter, -1 with a non-finite tap), whatever its path
  kTaps = 5,         // multiply-adds per output pixel it adds: its terms' rows (or its direct taps) and its new
                     // columns' passes; the column sums to BankPlan::plan_taps
  kPlanTableWidth = 6,
};
constexpr std::array<const char*, kPlanTableWidth> kPlanTableNames = {"factored",    "terms", "first_column",
                                                                       "new_columns", "rank",  "taps"};

// A diagnostic's bank: checked as the operators check theirs, then copied to the CPU.
at::Tensor host_bank(const at::Tensor& bank) {
  check_bank(kWhat, bank, bank, "itself");  // (no operand: the device rule holds trivially)
  return bank.detach().cpu();
}

}  // namespace

at::Tensor bank_plan_table(const at::Tensor& bank) {
  const auto plan = plan_bank(host_bank(bank));
  at::Tensor table = at::empty({plan->K, kPlanTableWidth}, at::TensorOptions().dtype(at::kLong));
  int64_t* row = table.data_ptr<int64_t>();
  int64_t next_column = 0, taps = 0;
  for (int64_t k = 0; k < plan->K; ++k, row += kPlanTableWidth) {
    const auto& ts = plan->terms[k];
    int64_t introduced = 0;
    for (const auto& t : ts) {
      if (t.column >= next_column) ++introduced;  // columns are numbered in order of first use
    }
    next_column += introduced;
    row[kFactored] = plan->factored(k) ? 1 : 0;
    row[kTerms] = static_cast<int64_t>(ts.size());
    row[kFirstColumn] = ts.empty() ? -1 : ts.front().column;
    row[kNewColumns] = introduced;
    row[kRank] = plan->ranks[k];
    row[kTaps] = (ts.empty() ? plan->S1 * plan->S2 : static_cast<int64_t>(ts.size()) * plan->S2) +
                 introduced * plan->S1;
    taps += row[kTaps];
  }
  // The table must tell Python everything plan_taps counts.
  TORCH_INTERNAL_ASSERT(next_column == static_cast<int64_t>(plan->columns.size()));
  TORCH_INTERNAL_ASSERT(taps == plan->plan_taps());
  return table;
}

// Factored filters as the sum of their terms, direct filters copied from the bank.
at::Tensor bank_plan_reconstruct(const at::Tensor& bank) {
  const at::Tensor cpu = host_bank(bank);
  const auto plan = plan_bank(cpu);
  at::Tensor out = cpu.to(at::kDouble).contiguous().clone();
  double* o = out.data_ptr<double>();
  const int64_t S1 = plan->S1, S2 = plan->S2;
  for (int64_t k = 0; k < plan->K; ++k) {
    if (!plan->factored(k)) continue;
    double* f = o + k * S1 * S2;
    std::fill(f, f + S1 * S2, 0.0);
    for (const auto& t : plan->terms[k]) {
      const auto& col = plan->columns[t.column];
      for (int64_t a = 0; a < S1; ++a) {
        for (int64_t b = 0; b < S2; ++b) f[a * S2 + b] += col[a] * t.row[b];
      }
    }
  }
  return out;
}

std::vector<std::string> bank_plan_columns() { return {kPlanTableNames.begin(), kPlanTableNames.end()}; }

std::vector<double> bank_plan_tolerances(c10::ScalarType dtype) {
  TORCH_CHECK_VALUE(at::isFloatingType(dtype), kWhat, ": expected a floating-point dtype, got ", dtype);
  const PlanTolerances t = plan_tolerances(dtype);
  return {t.rank, t.column_match, t.reconstruction};
}

}  // namespace fixedbranch
