// The factorisation of a bank's filters (bank_plan.h), the linear algebra behind plan.cpp: singular vectors by
// one-sided Jacobi, columns matched across the bank, rows re-solved against the shared columns and verified, and the
// minimum cut that chooses which filters run factored. All in float64, no LAPACK, deterministic.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "bank_plan/bank_plan.h"

namespace fixedbranch {
namespace factorise {

using Column = std::vector<double>;

double max_abs(const double* v, int64_t n);

// The left singular vectors of the s1 x s2 row-major filter `f` with singular values above
// rank_tolerance * sigma_0, in order of decreasing singular value (ties: lower index first), each of unit norm.
// One-sided Jacobi (Hestenes) orthogonalises the columns of A = F (or of F^T when S2 > S1, accumulating the
// rotations, whose columns are then F's left vectors): no LAPACK, deterministic, accurate singular vectors.
std::vector<Column> left_singular_vectors(const double* f, int64_t s1, int64_t s2, double rank_tolerance);

// Unit column with the canonical sign: its largest-magnitude entry positive (first of the near-ties).
void canonical_sign(Column& u);

// The shared column factors, with an index for finding a column equal to a new one up to sign. Each column has a
// signature, its dot product with fixed weights; columns within the match tolerance of each other have signatures
// within that tolerance * sum(weights), so only the columns in that signature window (of +u and of -u) are
// compared entry by entry, and a bank of thousands of filters does not compare every pair.
class ColumnSet {
 public:
  ColumnSet(int64_t s1, double tolerance);
  // The index of the earliest column equal to u or -u within the tolerance, or -1. (The sign needs no
  // record: the rows are re-solved against the shared column.)
  int64_t find(const Column& u) const;
  int64_t add(Column u);
  std::vector<Column> release() { return std::move(columns_); }

 private:
  double signature(const Column& u) const;
  std::vector<double> weights_;
  double tolerance_, window_;
  std::vector<Column> columns_;
  std::multimap<double, int64_t> by_signature_;
};

// The rows R minimising ||F - U R|| for the filter `f` (s1 x s2) and the chosen columns U = columns[idx] (the
// pseudo-inverse solution R = (U^T U)^{-1} U^T F, by Cholesky: U's columns are nearly orthonormal, so U^T U is
// close to the identity and well conditioned), then the reconstruction check. Returns the terms, or nothing when
// U^T U is not positive definite or F - U R exceeds tolerance * max|F| in some tap.
std::vector<BankPlan::Term> resolve_rows(const double* f, int64_t s1, int64_t s2, const std::vector<Column>& columns,
                                         const std::vector<int64_t>& idx, double tolerance);

// An edge of a flow network: `capacity` units from node `from` to node `to`.
struct Edge {
  int64_t from, to, capacity;
};
// The source side of the minimum `source`-`sink` cut of a network of `nodes` nodes with the fewest nodes (Dinic's
// maximum flow, then the nodes reachable from the source in the residual graph).
std::vector<bool> min_cut_source_side(int64_t nodes, const std::vector<Edge>& edges, int64_t source, int64_t sink);

}  // namespace factorise
}  // namespace fixedbranch
