// The size of this machine's last-level cache, for the choices that depend on whether an operand stays in it.
#pragma once

#include <algorithm>
#include <cstdint>

namespace fixedbranch {
namespace cpu {

// The last-level cache that the first CPU sees, in bytes: FIXEDBRANCH_CPU_CACHE_BYTES if set (a positive integer:
// for a machine whose listing misleads, and for tests that run the large-operand paths on small tensors), else from
// sysfs where Linux lists it (a virtual machine's sysconf(_SC_LEVEL3_CACHE_SIZE) may report its host's total, 320
// MiB on the 2-core AMD EPYC whose L3 is 32 MiB), else sysconf, else 32 MiB. Read once.
int64_t last_level_cache_bytes();

// The part of that cache this process can count on keeping its data in: the listing, at most 16 MiB per CPU it may
// run on (FIXEDBRANCH_CPU_CACHE_BYTES, if set, as is). No processor has more last-level cache per core than that
// (the largest, AMD's stacked-cache parts, 12 MiB); a virtual machine that lists more lists its host's cache, which
// other guests share: the 2-core Intel Xeon guest lists 480 MiB, yet its copies slow from 48 MiB working sets on
// (56 GB/s to 50 at 48 MiB, 30 at 96 MiB, 27 at 256 MiB) and its writes from 96 MiB.
int64_t owned_cache_bytes();

// Whether an output of `bytes` should be written with streaming stores, past the cache: when it outgrows the cache
// this process owns, its lines would be read from memory before being written and then evicted unread. On the Xeon
// guest (float32, 2 threads) streaming from 32 MiB on instead of from its listed 480: the 3x3 bank of four's forward
// at 150 MB 0.47-0.49x the time, 75 MB 0.54-0.70x, 37.5 MB 0.59-1.0x (its regular stores there ran at either speed),
// 20 MB 1.01-1.03x; DCT 5x5 and 7x7 at 150 MB 0.46-0.55x.
inline bool streaming_pays(int64_t bytes) { return bytes > owned_cache_bytes(); }

// Whether a backward should stream dL/dy past the cache: when the gradient it reads and dL/dy together outgrow the
// cache this process owns, dL/dy's lines are gone from it by the time they are written again (stored, each line was
// read from memory first), though dL/dy alone may be small (a fifth of the gradient for a 3x3 bank of four).
inline bool streaming_grad_pays(int64_t gradient_bytes, int64_t grad_y_bytes) {
  return streaming_pays(gradient_bytes + grad_y_bytes);
}

// Whether an operand of `bytes` read once should be prefetched in software: only from main memory, when it outgrows
// the cache as listed or twice the cache counted on, whichever is less (reads keep their speed further than
// writes: the Xeon guest read 56 GB/s up to 64 MiB, 53 at 96, 44 at 128, 25 at 256). A factored bank's backward
// staged its gradient rows with prefetching 1.04-1.08x slower from the 32 MiB L3 of the 2-core AMD EPYC (DCT 5x5
// and 7x7, 3.8-7.4 MB of gradient) and 1.15-1.3x faster from its memory (37-38 MB). On the Xeon guest the 3x3 bank's
// backward prefetched was 1.1x slower at 37.5 MB and 0.85-0.92x at 150 MB; the DCT 5x5 and 7x7, Gaussian/LoG and
// Gabor banks' within noise at both.
inline bool prefetch_pays(int64_t bytes) {
  return bytes > std::min(last_level_cache_bytes(), 2 * owned_cache_bytes());
}

// Whether a pass that reads an operand of `read_bytes` once, where it lies, and writes `written_bytes` should
// prefetch it: when the two together outgrow the cache (prefetch_pays), the written lines evicting the read ones from
// call to call, streamed or not (the stride-2 pair kernels: y of 30 MB beside 37 MB of maps came from memory on the
// 2-core AMD EPYC with AVX-512, 32 MiB L3).
inline bool prefetch_beside_pays(int64_t read_bytes, int64_t written_bytes) {
  return prefetch_pays(read_bytes + written_bytes);
}

}  // namespace cpu
}  // namespace fixedbranch
