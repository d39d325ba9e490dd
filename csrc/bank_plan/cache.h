// The plan cache (bank_plan.h): content-keyed, least recently used plan evicted beyond kPlanCacheCapacity.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "bank_plan/bank_plan.h"

namespace fixedbranch {

// At most this many plans are cached; the least recently used one is evicted beyond it.
constexpr size_t kPlanCacheCapacity = 256;

// The cached plan of `key` (the dtype, the shape, then the float64 values' bytes: plan_bank makes it), or null.
std::shared_ptr<const BankPlan> cached_plan(const std::string& key);
// Caches `plan` under `key` unless another thread got there first; returns the cached plan either way.
std::shared_ptr<const BankPlan> cache_plan(const std::string& key, std::shared_ptr<const BankPlan> plan);

}  // namespace fixedbranch
