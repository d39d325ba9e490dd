// The size of this machine's last-level cache, for the choices that depend on whether an operand stays in it.
#pragma once

#include <cstdint>

namespace fixedbranch {
namespace cpu {

// The last-level cache that the first CPU sees, in bytes: FIXEDBRANCH_CPU_CACHE_BYTES if set (a positive integer:
// for a machine whose listing misleads, and for tests that run the large-operand paths on small tensors), else from
// sysfs where Linux lists it (a virtual machine's sysconf(_SC_LEVEL3_CACHE_SIZE) may report its host's total, 320
// MiB on the 2-core AMD EPYC whose L3 is 32 MiB), else sysconf, else 32 MiB. Read once.
int64_t last_level_cache_bytes();

// Whether `bytes` of operand outgrow the last-level cache: software prefetching and streaming stores pay only then,
// from and to main memory.
// A factored bank's backward staged its gradient rows with prefetching 1.04-1.08x slower from the 32 MiB L3 of the
// 2-core AMD EPYC (DCT 5x5 and 7x7, 3.8-7.4 MB of gradient) and 1.15-1.3x faster from its memory (37-38 MB).
inline bool exceeds_last_level_cache(int64_t bytes) { return bytes > last_level_cache_bytes(); }

}  // namespace cpu
}  // namespace fixedbranch
