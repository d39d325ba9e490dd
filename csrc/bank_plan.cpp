// The bank plan (bank_plan.h): per-filter SVD by one-sided Jacobi in float64, column factors shared across the
// bank, rows re-solved against the shared columns and verified, all to the tolerances of the bank's dtype, the
// cheapest choice of factored filters (a minimum cut), and a cache keyed by dtype and content. Also the
// diagnostic operators behind fixedbranch/plan.py.
#include "bank_plan.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <numeric>
#include <string>
#include <unordered_map>

namespace fixedbranch {

int64_t BankPlan::direct_taps() const { return K * S1 * S2; }

// The CPU kernels' relative cost of a row-pass tap and of one intermediate pass, in direct taps (pays_on_cpu).
constexpr double kRowTapCost = 2.0, kPassCost = 4.0;

bool BankPlan::pays_on_cpu() const {
  double factored_cost = 0;
  for (int64_t k = 0; k < K; ++k) {
    if (factored(k)) {
      factored_cost += kRowTapCost * S2 * static_cast<double>(terms[k].size()) + kPassCost;
    } else {
      factored_cost += static_cast<double>(S1 * S2);
    }
  }
  factored_cost += static_cast<double>(columns.size()) * (S1 + kPassCost);
  return factored_cost < static_cast<double>(direct_taps());
}

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

constexpr const char* kWhat = "fixedbranch.bank_plan";
// One-sided Jacobi stops after this many sweeps even if some pair is still not orthogonal to rounding (it converges
// quadratically, in well under 20 sweeps for the sizes a filter has); the re-solve and the reconstruction check
// catch an unconverged result.
constexpr int kMaxJacobiSweeps = 60;
// The canonical sign makes the largest-magnitude entry of a column positive; entries within this relative margin
// of the largest count as tied and the first of them decides, so that rounding noise between two copies of a
// symmetric column (e.g. [1, 0, -1] / sqrt(2)) cannot flip the choice. The noise is largest in a bank rounded to
// float32, ~2e-8 per entry of a unit column, under 1e-7 of the largest entry up to 32 taps. (The choice only
// normalises: columns are matched up to sign either way.)
constexpr double kSignTieTolerance = 1e-6;

using Column = std::vector<double>;

double max_abs(const double* v, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::abs(v[i]));
  return m;
}

// The left singular vectors of the s1 x s2 row-major filter `f` with singular values above
// rank_tolerance * sigma_0, in order of decreasing singular value (ties: lower index first), each of unit norm.
// One-sided Jacobi (Hestenes) orthogonalises the columns of A = F (or of F^T when S2 > S1, accumulating the
// rotations, whose columns are then F's left vectors): no LAPACK, deterministic, accurate singular vectors.
std::vector<Column> left_singular_vectors(const double* f, int64_t s1, int64_t s2, double rank_tolerance) {
  const bool transpose = s2 > s1;
  const int64_t m = transpose ? s2 : s1;  // length of the columns orthogonalised
  const int64_t n = transpose ? s1 : s2;  // their number
  // Scale to a largest tap of 1 so that the dot products neither overflow nor underflow; the rank is relative.
  const double scale = max_abs(f, s1 * s2);
  std::vector<double> a(n * m), v;  // a: n columns of m values; v: n columns of n values (transpose only)
  for (int64_t i = 0; i < s1; ++i) {
    for (int64_t j = 0; j < s2; ++j) {
      const double x = f[i * s2 + j] / scale;
      if (transpose) {
        a[i * m + j] = x;  // column i of F^T is row i of F
      } else {
        a[j * m + i] = x;
      }
    }
  }
  if (transpose) {
    v.assign(n * n, 0.0);
    for (int64_t i = 0; i < n; ++i) v[i * n + i] = 1.0;
  }
  auto dot = [](const double* x, const double* y, int64_t len) {
    double s = 0.0;
    for (int64_t i = 0; i < len; ++i) s += x[i] * y[i];
    return s;
  };
  auto rotate = [](double* x, double* y, int64_t len, double c, double s) {
    for (int64_t i = 0; i < len; ++i) {
      const double xi = x[i], yi = y[i];
      x[i] = c * xi - s * yi;
      y[i] = s * xi + c * yi;
    }
  };
  const double tol = DBL_EPSILON * static_cast<double>(m);
  for (int sweep = 0; sweep < kMaxJacobiSweeps; ++sweep) {
    bool rotated = false;
    for (int64_t p = 0; p + 1 < n; ++p) {
      for (int64_t q = p + 1; q < n; ++q) {
        double* ap = &a[p * m];
        double* aq = &a[q * m];
        const double alpha = dot(ap, ap, m), beta = dot(aq, aq, m), gamma = dot(ap, aq, m);
        if (std::abs(gamma) <= tol * std::sqrt(alpha * beta)) continue;
        rotated = true;
        // The rotation that zeroes gamma, the smaller of the two angles (Golub & Van Loan, sec. 8.6.3).
        const double zeta = (beta - alpha) / (2.0 * gamma);
        const double t = std::copysign(1.0, zeta) / (std::abs(zeta) + std::hypot(1.0, zeta));
        const double c = 1.0 / std::sqrt(1.0 + t * t), s = c * t;
        rotate(ap, aq, m, c, s);
        if (transpose) rotate(&v[p * n], &v[q * n], n, c, s);
      }
    }
    if (!rotated) break;
  }
  std::vector<double> sigma(n);
  for (int64_t i = 0; i < n; ++i) sigma[i] = std::sqrt(dot(&a[i * m], &a[i * m], m));
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return sigma[x] > sigma[y]; });
  std::vector<Column> out;
  if (n == 0 || !(sigma[order[0]] > 0.0)) return out;
  const double cutoff = rank_tolerance * sigma[order[0]];
  for (const int64_t i : order) {
    if (!(sigma[i] > cutoff)) break;
    // Without transposition the left vector is the orthogonalised column over its norm; with it, the
    // accumulated rotation's column (already unit norm up to rounding). Renormalised either way below.
    Column u = transpose ? Column(v.begin() + i * n, v.begin() + (i + 1) * n)
                         : Column(a.begin() + i * m, a.begin() + (i + 1) * m);
    const double norm = std::sqrt(dot(u.data(), u.data(), s1));
    for (double& x : u) x /= norm;
    out.push_back(std::move(u));
  }
  return out;
}

// Unit column with the canonical sign: its largest-magnitude entry positive (first of the near-ties).
void canonical_sign(Column& u) {
  const double top = max_abs(u.data(), static_cast<int64_t>(u.size()));
  for (const double x : u) {
    if (std::abs(x) >= top * (1.0 - kSignTieTolerance)) {
      if (x < 0) {
        for (double& y : u) y = -y;
      }
      return;
    }
  }
}

// The shared column factors, with an index for finding a column equal to a new one up to sign. Each column has a
// signature, its dot product with fixed weights; columns within the match tolerance of each other have signatures
// within that tolerance * sum(weights), so only the columns in that signature window (of +u and of -u) are
// compared entry by entry, and a bank of thousands of filters does not compare every pair.
class ColumnSet {
 public:
  ColumnSet(int64_t s1, double tolerance) : weights_(s1), tolerance_(tolerance) {
    // Distinct, irrational-ratio weights: zero-sum or symmetric columns (derivatives, cosines) still spread out.
    for (int64_t i = 0; i < s1; ++i) weights_[i] = 1.0 + 0.6180339887498949 * static_cast<double>(i);
    // Twice the bound, for the rounding of the signatures themselves.
    window_ = 2.0 * tolerance_ * std::accumulate(weights_.begin(), weights_.end(), 0.0);
  }
  // The index of the earliest column equal to u or -u within the tolerance, or -1. (The sign needs no
  // record: the rows are re-solved against the shared column.)
  int64_t find(const Column& u) const {
    const double sig = signature(u);
    int64_t best = -1;
    for (const double sg : {1.0, -1.0}) {
      auto it = by_signature_.lower_bound(sg * sig - window_);
      for (; it != by_signature_.end() && it->first <= sg * sig + window_; ++it) {
        const int64_t c = it->second;
        if (best >= 0 && c > best) continue;
        bool match = true;
        for (size_t i = 0; i < u.size() && match; ++i) {
          match = std::abs(columns_[c][i] - sg * u[i]) <= tolerance_;
        }
        if (match) best = c;
      }
    }
    return best;
  }
  int64_t add(Column u) {
    const int64_t c = static_cast<int64_t>(columns_.size());
    by_signature_.emplace(signature(u), c);
    columns_.push_back(std::move(u));
    return c;
  }
  std::vector<Column> release() { return std::move(columns_); }

 private:
  double signature(const Column& u) const {
    double s = 0.0;
    for (size_t i = 0; i < u.size(); ++i) s += weights_[i] * u[i];
    return s;
  }
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
                                         const std::vector<int64_t>& idx, double tolerance) {
  const int64_t r = static_cast<int64_t>(idx.size());
  std::vector<double> g(r * r), b(r * s2, 0.0);
  for (int64_t p = 0; p < r; ++p) {
    const Column& up = columns[idx[p]];
    for (int64_t q = 0; q < r; ++q) {
      const Column& uq = columns[idx[q]];
      double s = 0.0;
      for (int64_t i = 0; i < s1; ++i) s += up[i] * uq[i];
      g[p * r + q] = s;
    }
    for (int64_t i = 0; i < s1; ++i) {
      for (int64_t j = 0; j < s2; ++j) b[p * s2 + j] += up[i] * f[i * s2 + j];
    }
  }
  // Cholesky G = L L^T in place (lower triangle), then forward and back substitution on every row of B.
  for (int64_t p = 0; p < r; ++p) {
    for (int64_t q = 0; q <= p; ++q) {
      double s = g[p * r + q];
      for (int64_t t = 0; t < q; ++t) s -= g[p * r + t] * g[q * r + t];
      if (p == q) {
        if (!(s > 0.5)) return {};  // the columns of a near-orthonormal set have a Gram matrix near I
        g[p * r + p] = std::sqrt(s);
      } else {
        g[p * r + q] = s / g[q * r + q];
      }
    }
  }
  for (int64_t j = 0; j < s2; ++j) {
    for (int64_t p = 0; p < r; ++p) {
      double s = b[p * s2 + j];
      for (int64_t t = 0; t < p; ++t) s -= g[p * r + t] * b[t * s2 + j];
      b[p * s2 + j] = s / g[p * r + p];
    }
    for (int64_t p = r - 1; p >= 0; --p) {
      double s = b[p * s2 + j];
      for (int64_t t = p + 1; t < r; ++t) s -= g[t * r + p] * b[t * s2 + j];
      b[p * s2 + j] = s / g[p * r + p];
    }
  }
  const double bound = tolerance * max_abs(f, s1 * s2);
  for (int64_t i = 0; i < s1; ++i) {
    for (int64_t j = 0; j < s2; ++j) {
      double s = 0.0;
      for (int64_t p = 0; p < r; ++p) s += columns[idx[p]][i] * b[p * s2 + j];
      if (!(std::abs(f[i * s2 + j] - s) <= bound)) return {};
    }
  }
  std::vector<BankPlan::Term> terms(r);
  for (int64_t p = 0; p < r; ++p) {
    terms[p].column = idx[p];
    terms[p].row.assign(b.begin() + p * s2, b.begin() + (p + 1) * s2);
  }
  return terms;
}

// Maximum flow from `source` to `sink` (Dinic; iterative, so deep residual paths need no deep call stack), then
// the nodes reachable from the source in the residual graph: the source side of the minimum cut with the fewest
// nodes.
class MinCut {
 public:
  explicit MinCut(int64_t nodes) : adj_(nodes), level_(nodes), next_(nodes) {}
  void add_edge(int64_t from, int64_t to, int64_t capacity) {
    adj_[from].push_back(static_cast<int64_t>(to_.size()));
    to_.push_back(to);
    cap_.push_back(capacity);
    adj_[to].push_back(static_cast<int64_t>(to_.size()));
    to_.push_back(from);
    cap_.push_back(0);
  }
  std::vector<bool> source_side(int64_t source, int64_t sink) {
    while (levels(source, sink)) {
      std::fill(next_.begin(), next_.end(), 0);
      std::vector<int64_t> path;  // edges from the source
      int64_t u = source;
      while (true) {
        if (u == sink) {
          int64_t flow = cap_[path.front()];
          for (const int64_t e : path) flow = std::min(flow, cap_[e]);
          for (const int64_t e : path) {
            cap_[e] -= flow;
            cap_[e ^ 1] += flow;
          }
          path.clear();
          u = source;
          continue;
        }
        auto& i = next_[u];
        while (i < static_cast<int64_t>(adj_[u].size())) {
          const int64_t e = adj_[u][i];
          if (cap_[e] > 0 && level_[to_[e]] == level_[u] + 1) break;
          ++i;
        }
        if (i < static_cast<int64_t>(adj_[u].size())) {
          path.push_back(adj_[u][i]);
          u = to_[adj_[u][i]];
        } else {  // dead end: retreat and never enter u again in this phase
          if (u == source) break;
          level_[u] = -1;
          path.pop_back();
          u = path.empty() ? source : to_[path.back()];
          ++next_[u];
        }
      }
    }
    levels(source, sink);
    std::vector<bool> side(adj_.size());
    for (size_t v = 0; v < adj_.size(); ++v) side[v] = level_[v] >= 0;
    return side;
  }

 private:
  // BFS levels over the residual edges from the source; whether the sink is reached.
  bool levels(int64_t source, int64_t sink) {
    std::fill(level_.begin(), level_.end(), -1);
    std::vector<int64_t> queue = {source};
    level_[source] = 0;
    for (size_t q = 0; q < queue.size(); ++q) {
      const int64_t u = queue[q];
      for (const int64_t e : adj_[u]) {
        if (cap_[e] > 0 && level_[to_[e]] < 0) {
          level_[to_[e]] = level_[u] + 1;
          queue.push_back(to_[e]);
        }
      }
    }
    return level_[sink] >= 0;
  }
  std::vector<std::vector<int64_t>> adj_;
  std::vector<int64_t> to_, cap_, level_, next_;
};

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
  MinCut cut(K + C + 2);
  int64_t total_savings = 0;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t savings = direct - term_cost * static_cast<int64_t>(plan.terms[k].size());
    if (plan.factored(k) && savings > 0) total_savings += savings;
  }
  for (int64_t k = 0; k < K; ++k) {
    const int64_t savings = direct - term_cost * static_cast<int64_t>(plan.terms[k].size());
    if (!plan.factored(k) || savings <= 0) continue;
    cut.add_edge(source, k, savings);
    for (const auto& t : plan.terms[k]) cut.add_edge(k, K + t.column, total_savings + 1);
  }
  for (int64_t c = 0; c < C; ++c) cut.add_edge(K + c, sink, column_cost);
  const std::vector<bool> factored = cut.source_side(source, sink);
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
  ColumnSet shared(S1, tol.column_match);
  for (int64_t k = 0; k < K; ++k) {
    const double* f = data + k * size;
    if (!std::all_of(f, f + size, [](double x) { return std::isfinite(x); })) {
      plan->ranks[k] = -1;
      continue;
    }
    if (max_abs(f, size) == 0.0) continue;  // a zero filter: rank 0, direct
    std::vector<Column> us = left_singular_vectors(f, S1, S2, tol.rank);
    plan->ranks[k] = static_cast<int64_t>(us.size());
    if (S1 == 1 || S2 == 1) continue;  // a row or column filter is its own cheapest form
    for (Column& u : us) {
      canonical_sign(u);
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
    plan->terms[k] = resolve_rows(data + k * size, S1, S2, plan->columns, chosen[k], tol.reconstruction);
  }
  choose_paths(*plan);
  compact_columns(*plan);
  return plan;
}

// Content-keyed LRU cache of plans. The key is the dtype (which sets the tolerances) and the shape, followed by the
// float64 values' bytes.
class PlanCache {
 public:
  std::shared_ptr<const BankPlan> get(const std::string& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = entries_.find(key);
    if (it == entries_.end()) return nullptr;
    it->second.last_use = ++clock_;
    return it->second.plan;
  }
  // Inserts `plan` unless another thread got there first; returns the cached plan either way.
  std::shared_ptr<const BankPlan> put(const std::string& key, std::shared_ptr<const BankPlan> plan) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = entries_.find(key);
    if (it != entries_.end()) {
      it->second.last_use = ++clock_;
      return it->second.plan;
    }
    if (entries_.size() >= kPlanCacheCapacity) {
      auto oldest = std::min_element(entries_.begin(), entries_.end(), [](const auto& x, const auto& y) {
        return x.second.last_use < y.second.last_use;
      });
      entries_.erase(oldest);
    }
    entries_.emplace(key, Entry{plan, ++clock_});
    return plan;
  }

 private:
  struct Entry {
    std::shared_ptr<const BankPlan> plan;
    uint64_t last_use;
  };
  std::mutex mutex_;
  std::unordered_map<std::string, Entry> entries_;
  uint64_t clock_ = 0;
};

PlanCache& plan_cache() {
  static PlanCache* cache = new PlanCache();  // never destroyed: plans may be requested during static teardown
  return *cache;
}

void check_bank(const at::Tensor& bank) {
  TORCH_CHECK(bank.dim() == 3, kWhat, ": expected bank to have 3 dimensions (K, S1, S2), got ", bank.dim());
  TORCH_CHECK(at::isFloatingType(bank.scalar_type()), kWhat, ": expected bank to be a floating-point tensor, got ",
              bank.scalar_type());
  TORCH_CHECK(bank.size(0) >= 1 && bank.size(1) >= 1 && bank.size(2) >= 1, kWhat,
              ": expected a non-empty bank (K, S1, S2 >= 1), got shape ", bank.sizes());
}

}  // namespace

std::shared_ptr<const BankPlan> plan_bank(const at::Tensor& bank) {
  check_bank(bank);
  TORCH_CHECK(bank.device().is_cpu(), kWhat, ": expected bank on the CPU, got ", bank.device());
  const c10::ScalarType dtype = bank.scalar_type();
  const at::Tensor values = bank.detach().to(at::kDouble).contiguous();
  const int64_t K = values.size(0), S1 = values.size(1), S2 = values.size(2);
  const int64_t header[4] = {static_cast<int64_t>(dtype), K, S1, S2};
  const size_t value_bytes = static_cast<size_t>(values.numel()) * sizeof(double);
  std::string key(sizeof(header) + value_bytes, '\0');
  std::memcpy(&key[0], header, sizeof(header));
  std::memcpy(&key[sizeof(header)], values.const_data_ptr<double>(), value_bytes);
  if (auto hit = plan_cache().get(key)) return hit;
  // Decomposed outside the lock: two threads may both build the first plan of a bank; one of them is kept.
  return plan_cache().put(key, build_plan(values.const_data_ptr<double>(), K, S1, S2, dtype));
}

namespace {

// Columns of the table returned by fixedbranch::_bank_plan, one row per filter. fixedbranch/plan.py reads it;
// keep the two in step.
enum PlanTableColumn : int64_t {
  kFactored = 0,      // 1 if the filter runs factored, 0 if direct
  kTerms = 1,         // its number of separable terms (0 when direct)
  kFirstColumn = 2,   // the column index of its first term, -1 when direct
  kNewColumns = 3,    // columns whose first user (in filter order) it is: their sum is the plan's column count
  kRank = 4,          // its numerical rank (0 for a zero filter, -1 with a non-finite tap), whatever its path
  kPlanTableWidth = 5,
};

at::Tensor bank_plan_table(const at::Tensor& bank) {
  check_bank(bank);
  const auto plan = plan_bank(bank.device().is_cpu() ? bank : bank.cpu());
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
    taps += ts.empty() ? plan->S1 * plan->S2 : static_cast<int64_t>(ts.size()) * plan->S2;
  }
  // The table must tell Python everything plan_taps counts.
  TORCH_INTERNAL_ASSERT(next_column == static_cast<int64_t>(plan->columns.size()));
  TORCH_INTERNAL_ASSERT(taps + next_column * plan->S1 == plan->plan_taps());
  return table;
}

// The bank rebuilt from the plan of its own dtype, (K, S1, S2) float64 on the CPU: factored filters as the sum of
// their terms, direct filters copied from the bank.
at::Tensor bank_plan_reconstruct(const at::Tensor& bank) {
  check_bank(bank);
  const at::Tensor cpu = bank.detach().cpu();
  const auto plan = plan_bank(cpu);
  const at::Tensor values = cpu.to(at::kDouble).contiguous();
  at::Tensor out = values.clone();
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

}  // namespace

// Diagnostics, off the hot path: they accept a bank on any device and copy it to the CPU.
bool bank_plan_pays_on_cpu(const at::Tensor& bank) {
  return plan_bank(bank.device().is_cpu() ? bank : bank.cpu())->pays_on_cpu();
}

TORCH_LIBRARY_FRAGMENT(fixedbranch, m) {
  m.def("_bank_plan(Tensor bank) -> Tensor");
  m.def("_bank_plan_reconstruct(Tensor bank) -> Tensor");
  m.def("_bank_plan_pays_on_cpu(Tensor bank) -> bool");
}

TORCH_LIBRARY_IMPL(fixedbranch, CompositeExplicitAutograd, m) {
  m.impl("_bank_plan", &bank_plan_table);
  m.impl("_bank_plan_reconstruct", &bank_plan_reconstruct);
  m.impl("_bank_plan_pays_on_cpu", &bank_plan_pays_on_cpu);
}

}  // namespace fixedbranch
