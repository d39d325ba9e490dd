// Preparing the memory of a fresh CPU output before a kernel writes it.
//
// glibc's malloc serves blocks above 32 MiB (and smaller ones until its threshold adapts) with a fresh mapping and
// unmaps them when they are freed, so every large output starts unbacked and the kernel's first write to each
// 4 KiB page faults. Measured on the 2-core AMD EPYC virtual machine of benchmarks/results/allocation/ (Linux 6.18,
// transparent huge pages on madvise), a fresh 35.9 MiB output (y = 4x51x96x96 float32, four 3x3 filters) takes
// 9,181 faults of 1.8-2.6 us (the trap, allocating, zeroing): 10-25 ms against the kernel's 2-4 ms of work.
// torch's clone of a tensor that size pays the same faults.
//
// A huge page costs little more than its zeroing, 0.19-0.21 ms per 2 MiB against 0.9-1.1 ms for 512 small pages,
// but some are far dearer. This machine hands every free 2 MiB block back to its host (free page reporting), which
// then has to back it again, 4 KiB at a time, when the guest touches it: such a huge page took 7 ms of CPU (11 ms
// wall), all of it in clear_page and none in compaction (compact_stall and thp_fault_fallback stayed 0 under
// defrag=madvise). A huge page needs exactly such a block; small pages come from smaller free fragments, which are
// never handed back. Faulting in 2 GiB: small pages 0.9 ms per 2 MiB throughout; huge pages 7 ms for 98% of them
// the first time, 0.2 ms for 89% of them right after. Advising huge pages unconditionally therefore made the fused
// forward fast most of the time and several times slower than clone the rest (35.9 MiB, interleaved calls: median
// 22.8 ms against clone's 47.5, but 90th percentile 91.7 against 59.6 and up to 186 ms).
//
// So the pages are faulted in here, before the kernel runs, on ATen's threads:
// - with MADV_POPULATE_WRITE (Linux 5.14): one system call per range instead of one trap per page;
// - one huge page at a time, each timed on the thread's CPU clock. That clock counts the host's time to back a
//   page but not the time the scheduler gives the core to another process. Once the huge pages have cost more
//   than their small pages would have, the rest of the output gets small pages, so the loss against small pages
//   is at most one slow huge page per thread;
// - only where pages are missing (mincore): a recycled block costs one system call.
// Measured side by side in one process (35.9 MiB, 80 calls each): clone median 31.3 ms, 90th percentile 36.8;
// small pages faulted in in parallel 30.8 / 38.5; this 19.9 / 39.3 (CPU time 20.1 / 36.0 against clone's
// 31.2 / 37.6). At 71.7 MiB: clone 62.7 / 70.8, small pages 58.0 / 69.3, this 31.3 / 59.1.
// Without MADV_POPULATE_WRITE nothing is done and the kernel's writes fault the pages in.
#include "output_memory.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <fstream>
#include <string>
#endif

namespace fixedbranch {

#ifdef __linux__
namespace {

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

// A small page's fault costs at least this much: 1.8-2.6 us measured here, 0.5-1 us on bare metal. A huge page
// that took longer than its small pages would have at this price is a loss.
constexpr int64_t kSmallPageFaultNs = 1000;

struct Memory {
  uintptr_t page = 4096, huge = uintptr_t(2) << 20;
  bool populate = false;    // MADV_POPULATE_WRITE exists
  bool huge_pages = false;  // transparent huge pages are not switched off
};

const Memory& memory() {
  static const Memory m = [] {
    Memory m;
    const long page = sysconf(_SC_PAGESIZE);
    if (page > 0) m.page = static_cast<uintptr_t>(page);
    // An empty range: the kernel only checks that it knows the advice.
    m.populate = madvise(nullptr, 0, MADV_POPULATE_WRITE) == 0;
    std::ifstream size("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size");
    unsigned long long huge = 0;
    if (size >> huge && huge > m.page && (huge & (huge - 1)) == 0) m.huge = huge;
    std::ifstream enabled("/sys/kernel/mm/transparent_hugepage/enabled");
    std::string line;
    m.huge_pages = std::getline(enabled, line) && line.find("[never]") == std::string::npos;
    return m;
  }();
  return m;
}

int64_t thread_cpu_ns() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return int64_t(t.tv_sec) * 1000000000 + t.tv_nsec;
}

// Faults in the pages of [begin, end) for writing. Failure is harmless: the kernel's writes fault them in.
void fault_in(uintptr_t begin, uintptr_t end) {
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
}

}  // namespace

void prepare_output(const at::Tensor& out) {
  const Memory& m = memory();
  const size_t nbytes = out.nbytes();
  if (!m.populate || nbytes < m.huge) return;
  const auto data = reinterpret_cast<uintptr_t>(out.data_ptr());
  uintptr_t first = data & ~(m.page - 1);
  uintptr_t last = (data + nbytes + m.page - 1) & ~(m.page - 1);

  // Only the pages from the first missing one to the last: none in a recycled block; in a fresh one, all but the
  // page malloc wrote its header to.
  std::vector<unsigned char> resident((last - first) / m.page);
  if (mincore(reinterpret_cast<void*>(first), last - first, resident.data()) != 0) return;
  size_t a = 0, b = resident.size();
  while (a < b && (resident[a] & 1)) ++a;
  while (b > a && (resident[b - 1] & 1)) --b;
  if (a == b) return;
  last = first + b * m.page;
  first += a * m.page;

  const uintptr_t huge_first = (first + m.huge - 1) & ~(m.huge - 1), huge_last = last & ~(m.huge - 1);
  if (!m.huge_pages || huge_last <= huge_first) {
    const int64_t pieces = static_cast<int64_t>((last - first + m.huge - 1) / m.huge);
    at::parallel_for(0, pieces, 1, [&](int64_t i0, int64_t i1) {
      fault_in(first + i0 * m.huge, std::min(last, first + i1 * m.huge));
    });
    return;
  }

  // Items 0 .. n_huge-1 are the huge pages, item n_huge the small pages before and after them.
  const int64_t n_huge = static_cast<int64_t>((huge_last - huge_first) / m.huge);
  const int64_t small_pages_ns = static_cast<int64_t>(m.huge / m.page) * kSmallPageFaultNs;
  // The advice stays with the address range: a block the allocator keeps (glibc's heap, jemalloc) takes huge pages
  // on its next first touch too, whoever it is handed to.
  madvise(reinterpret_cast<void*>(huge_first), huge_last - huge_first, MADV_HUGEPAGE);
  std::atomic<int64_t> huge_done{0}, huge_ns{0};
  std::atomic<bool> small{false};
  at::parallel_for(0, n_huge + 1, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < std::min(i1, n_huge); ++i) {
      const uintptr_t page = huge_first + i * m.huge;
      if (small.load(std::memory_order_relaxed)) {
        const uintptr_t end = huge_first + std::min(i1, n_huge) * m.huge;
        madvise(reinterpret_cast<void*>(page), end - page, MADV_NOHUGEPAGE);
        fault_in(page, end);
        break;
      }
      const int64_t t0 = thread_cpu_ns();
      fault_in(page, page + m.huge);
      const int64_t dt = thread_cpu_ns() - t0;
      const int64_t spent = huge_ns.fetch_add(dt) + dt, done = huge_done.fetch_add(1) + 1;
      // One page's worth of slack, so that the first huge page is judged by twice its small pages' price.
      if (spent > (done + 1) * small_pages_ns) small.store(true, std::memory_order_relaxed);
    }
    if (i1 > n_huge) {
      fault_in(first, huge_first);
      fault_in(huge_last, last);
    }
  });
}

#else

void prepare_output(const at::Tensor&) {}

#endif

}  // namespace fixedbranch
