// The last-level cache's size (cache.h).
#include "cpu/cache.h"

#include <cstdlib>
#include <fstream>
#include <string>

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

}  // namespace

int64_t last_level_cache_bytes() {
  static const int64_t bytes = [] {
    if (const char* set = std::getenv("FIXEDBRANCH_CPU_CACHE_BYTES")) {
      char* end = nullptr;
      const long long value = std::strtoll(set, &end, 10);
      if (end != set && *end == '\0' && value > 0) return static_cast<int64_t>(value);
    }
    int64_t size = sysfs_last_level_cache();
#if defined(__linux__) && defined(_SC_LEVEL3_CACHE_SIZE)
    if (size <= 0) size = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
    return size > 0 ? size : int64_t(32) << 20;
  }();
  return bytes;
}

}  // namespace cpu
}  // namespace fixedbranch
