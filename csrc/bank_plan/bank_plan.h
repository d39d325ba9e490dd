// The plan of a fixed filter bank: each filter either as a short sum of separable terms (column along H, then row
// along W) with the column factors shared across the bank, or as a direct correlation, whichever costs fewer
// multiply-adds per output pixel. A bank is decomposed once; plan_bank caches the plan by the bank's content.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace fixedbranch {

// The three tolerances of a plan, chosen by the dtype the bank was rounded to (plan_tolerances below).
//   rank: singular values sigma_i <= rank * sigma_0 are dropped.
//   column_match: two unit column factors are one shared column when they differ by at most this much in every
//     entry (either sign; the sign is folded into the rows).
//   reconstruction: a factored filter must rebuild from its (shared) columns and re-solved rows to within this
//     much of its largest tap, in float64; otherwise it runs as a direct correlation.
struct PlanTolerances {
  double rank, column_match, reconstruction;
};
// float64: dropping sigma_i changes the filter by at most sigma_i (spectral norm, hence also per tap), so the
// factored filter stays within ~1e-12 of the bank, a hundred times under float64's 1e-10 relative tolerance.
constexpr PlanTolerances kFloat64PlanTolerances{1e-12, 1e-12, 1e-12};
// float32, and the half types, which are computed in float32: rounding a bank to float32 perturbs each tap by at
// most 2^-24 ~ 6e-8 of itself. A filter that was rank r before rounding then has sigma_r up to ~3e-8 sigma_0, the
// copies of a column that several filters share differ by up to ~2e-8, and the rank-r form misses the rounded taps
// by up to ~7e-8 of the largest (measured on DCT 3 to 32, Gaussians up to 63x63, LoG and Gabor banks): at 1e-12
// nothing would be shared. 1e-6, about 8 float32 ulps, keeps these filters on their float64 plan with a margin of
// 14 or more, and keeps every factored filter within 1e-6 of its largest tap of the rounded bank, which is the
// filter the reference applies: ten times under float32's 1e-5 tolerance (a 31x31 Gabor bank, whose smooth
// filters this bound truncates, changes its output by 5e-7 of the largest value). The half types get the same,
// not their own rounding (2^-9 ~ 2e-3 for bfloat16): the half-rounded bank is what the reference applies, and
// factoring away a half-ulp perturbation could cost more than the 1e-2 budget where a filter's taps cancel. A half
// bank is factored only where it is low rank to float32 precision (exact values such as Sobel's, the symmetries of
// a rounded DCT), and runs direct elsewhere.
constexpr PlanTolerances kFloat32PlanTolerances{1e-6, 1e-6, 1e-6};
// The tolerances for a bank of this dtype: float64's for float64, float32's for every other floating dtype.
constexpr PlanTolerances plan_tolerances(c10::ScalarType dtype) {
  return dtype == c10::ScalarType::Double ? kFloat64PlanTolerances : kFloat32PlanTolerances;
}
// Cost, in multiply-adds per output pixel, of one intermediate pass beyond its taps: a column pass writes an
// intermediate row and each factored term reads one back. It keeps a separable form that merely ties with the
// direct taps (e.g. S1 + S2 = S1 * S2 at 2x2) from being chosen for the extra memory traffic.
constexpr int64_t kPassOverhead = 1;

// A bank's factored plan: filter k = sum over its terms of column ⊗ row (column along H, S1 values; row along W,
// S2 values; F_k[a][b] = sum_t columns[t.column][a] * t.row[b]), or direct correlation.
struct BankPlan {
  int64_t K, S1, S2;
  c10::ScalarType dtype;                      // the bank's dtype, whose plan_tolerances the plan was made with
  std::vector<std::vector<double>> columns;   // distinct column factors, each S1 values, unit L2 norm
  struct Term { int64_t column; std::vector<double> row; };  // row holds S2 values, the singular value folded in
  std::vector<std::vector<Term>> terms;       // per filter; empty = this filter runs as a direct correlation
  std::vector<int64_t> ranks;                 // per filter: numerical rank of the filter (0 for a zero filter),
                                              // whichever path it runs on
  bool factored(int64_t k) const { return !terms[k].empty(); }
  int64_t direct_taps() const;  // multiply-adds per output pixel of the direct path for the WHOLE bank: K*S1*S2
  int64_t plan_taps() const;    // multiply-adds per output pixel of this plan:
                                //   (#columns used)*S1 + sum over factored filters of terms*S2 + direct filters*S1*S2
  // Which path a device's kernels take is their own cost model's choice (the CPU's: csrc/cpu/cost_model.h).
};

// The plan of `bank` (K, S1, S2), any float dtype, on the CPU (values read as float64), made with the tolerances
// of the bank's own dtype: pass the bank as the kernel will see it, rounded to the compute dtype. Cached by content:
// the same values, shape and dtype return the same shared plan without another decomposition. Every column of the
// plan is used by some factored filter, numbered in order of first use (filter by filter, term by term). Filters
// with S1 == 1 or S2 == 1, zero filters and filters with a non-finite tap are direct.
std::shared_ptr<const BankPlan> plan_bank(const at::Tensor& bank);

// The diagnostic operators (csrc/fixed_branch.cpp registers them; fixedbranch/plan.py reads them). They accept a bank
// on any device and copy it to the CPU; they are off the hot path.
//   fixedbranch::_bank_plan: the plan as a (K, kPlanTableColumns.size()) int64 table, one row per filter.
//   fixedbranch::_bank_plan_reconstruct: the bank rebuilt from its plan, (K, S1, S2) float64 on the CPU.
//   fixedbranch::_bank_plan_columns: the names of the table's columns, in order.
//   fixedbranch::_bank_plan_tolerances: a dtype's PlanTolerances as [rank, column_match, reconstruction].
at::Tensor bank_plan_table(const at::Tensor& bank);
at::Tensor bank_plan_reconstruct(const at::Tensor& bank);
std::vector<std::string> bank_plan_columns();
std::vector<double> bank_plan_tolerances(c10::ScalarType dtype);

}  // namespace fixedbranch
