// The linear algebra of the bank plan (factorise.h).
#include "bank_plan/factorise.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <numeric>

namespace fixedbranch {
namespace factorise {
namespace {

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

}  // namespace

double max_abs(const double* v, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::abs(v[i]));
  return m;
}

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

ColumnSet::ColumnSet(int64_t s1, double tolerance) : weights_(s1), tolerance_(tolerance) {
  // Distinct, irrational-ratio weights: zero-sum or symmetric columns (derivatives, cosines) still spread out.
  for (int64_t i = 0; i < s1; ++i) weights_[i] = 1.0 + 0.6180339887498949 * static_cast<double>(i);
  // Twice the bound, for the rounding of the signatures themselves.
  window_ = 2.0 * tolerance_ * std::accumulate(weights_.begin(), weights_.end(), 0.0);
}

int64_t ColumnSet::find(const Column& u) const {
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

int64_t ColumnSet::add(Column u) {
  const int64_t c = static_cast<int64_t>(columns_.size());
  by_signature_.emplace(signature(u), c);
  columns_.push_back(std::move(u));
  return c;
}

double ColumnSet::signature(const Column& u) const {
  double s = 0.0;
  for (size_t i = 0; i < u.size(); ++i) s += weights_[i] * u[i];
  return s;
}

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

std::vector<bool> min_cut_source_side(int64_t nodes, const std::vector<Edge>& edges, int64_t source, int64_t sink) {
  MinCut cut(nodes);
  for (const Edge& e : edges) cut.add_edge(e.from, e.to, e.capacity);
  return cut.source_side(source, sink);
}

}  // namespace factorise
}  // namespace fixedbranch
