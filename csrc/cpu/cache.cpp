// The last-level cache's size (cache.h).
#include "cpu/cache.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#ifdef __linux__
#include <unistd.h>
#endif

namespace fixedbranch {
namespace cpu {
namespace {

// The largest level's size among /sys/devices/system/cpu/cpu0/cache/index*/ ("32768K"), 0 where none is listed.
int64_t sysfs_last_level_cache() {
  int best_level = 0;
  int64_t best_size = 0;
  for (int i = 0; i < 8; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream level_file(dir + "level"), size_file(dir + "size");
    int level = 0;
    std::string size;
    if (!(level_file >> level) || !(size_file >> size) || size.empty()) continue;
    int64_t bytes = 0;
    try {
      bytes = std::stoll(size);
    } catch (...) {
      continue;
    }
    const char unit = size.back();
    if (unit == 'K') bytes <<= 10;
    if (unit == 'M') bytes <<= 20;
    if (level > best_level) best_level = level, best_size = bytes;
  }
  return best_size;
}

// FIXEDBRANCH_CPU_CACHE_BYTES as a positive integer, 0 where unset or malformed.
int64_t cache_bytes_set() {
  if (const char* set = std::getenv("FIXEDBRANCH_CPU_CACHE_BYTES")) {
    char* end = nullptr;
    const long long value = std::strtoll(set, &end, 10);
    if (end != set && *end == '\0' && value > 0) return static_cast<int64_t>(value);
  }
  return 0;
}

}  // namespace

int64_t last_level_cache_bytes() {
  static const int64_t bytes = [] {
    if (const int64_t set = cache_bytes_set()) return set;
    int64_t size = sysfs_last_level_cache();
#if defined(__linux__) && defined(_SC_LEVEL3_CACHE_SIZE)
    if (size <= 0) size = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
    return size > 0 ? size : int64_t(32) << 20;
  }();
  return bytes;
}

int64_t owned_cache_bytes() {
  static const int64_t bytes = [] {
    if (cache_bytes_set() > 0) return last_level_cache_bytes();
    const int64_t cpus = std::max(1u, std::thread::hardware_concurrency());
    return std::min(last_level_cache_bytes(), cpus * (int64_t(16) << 20));
  }();
  return bytes;
}

}  // namespace cpu
}  // namespace fixedbranch
