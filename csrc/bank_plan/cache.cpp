// The plan cache (cache.h).
#include "bank_plan/cache.h"

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <unordered_map>

namespace fixedbranch {
namespace {

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

}  // namespace

std::shared_ptr<const BankPlan> cached_plan(const std::string& key) { return plan_cache().get(key); }

std::shared_ptr<const BankPlan> cache_plan(const std::string& key, std::shared_ptr<const BankPlan> plan) {
  return plan_cache().put(key, std::move(plan));
}

}  // namespace fixedbranch
