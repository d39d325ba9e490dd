// Content-keyed caches of what a bank is turned into (its plan, bank_plan.h; the CPU kernels' form of it,
// cpu/correlate.h): the least recently used entry is evicted beyond a capacity, and every call with the same bank
// finds its entry in one lookup.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

namespace fixedbranch {

// At most this many entries are cached per cache; the least recently used one is evicted beyond it.
constexpr size_t kBankCacheCapacity = 256;

// The key of a CPU bank's content: its dtype and shape, then its values' bytes. Equal keys are banks of equal dtype,
// shape and values (bit for bit), whatever tensors hold them; made from the bank as it is, with no conversion.
std::string bank_content_key(const at::Tensor& bank);

// A thread-safe map from content keys to shared, immutable values, least recently used first out.
template <typename Value>
class BankCache {
 public:
  // The value cached under `key`, or null.
  std::shared_ptr<const Value> get(const std::string& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = entries_.find(key);
    if (it == entries_.end()) return nullptr;
    it->second.last_use = ++clock_;
    return it->second.value;
  }
  // Caches `value` under `key` unless another thread got there first; returns the cached value either way.
  std::shared_ptr<const Value> put(const std::string& key, std::shared_ptr<const Value> value) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = entries_.find(key);
    if (it != entries_.end()) {
      it->second.last_use = ++clock_;
      return it->second.value;
    }
    if (entries_.size() >= kBankCacheCapacity) {
      auto oldest = entries_.begin();
      for (auto e = entries_.begin(); e != entries_.end(); ++e)
        if (e->second.last_use < oldest->second.last_use) oldest = e;
      entries_.erase(oldest);
    }
    entries_.emplace(key, Entry{value, ++clock_});
    return value;
  }

 private:
  struct Entry {
    std::shared_ptr<const Value> value;
    uint64_t last_use;
  };
  std::mutex mutex_;
  std::unordered_map<std::string, Entry> entries_;
  uint64_t clock_ = 0;
};

}  // namespace fixedbranch
