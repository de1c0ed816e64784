#pragma once
// Resident-memory measurements for the benchmarks (Linux /proc).
//
// Peak resident memory of one benchmark inside a process that runs many: before the measured
// work, free heap pages are handed back to the kernel (malloc_trim) and the kernel's high-water
// mark VmHWM is reset to the current resident size (writing "5" to /proc/self/clear_refs, Linux
// >= 4.0). Afterwards VmHWM is the peak of that benchmark alone, plus whatever the process held
// when the peak was reset (the baseline, reported separately). Where the reset is not allowed,
// the peak is the process's peak since it started (reset_peak() returns false, the counter
// `peak_reset` says 0).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

#include <unistd.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace reformer_bench {

/// A "<Key>:   <n> kB" field of /proc/self/status or /proc/meminfo in bytes (0 if absent).
inline std::size_t proc_field_bytes(const char* file, const std::string& key) {
  std::ifstream in(file);
  std::string line;
  const std::string prefix = key + ":";
  while (std::getline(in, line)) {
    if (line.compare(0, prefix.size(), prefix) == 0) {
      return static_cast<std::size_t>(std::stoull(line.substr(prefix.size()))) * 1024;
    }
  }
  return 0;
}

/// Current resident set size (VmRSS).
inline std::size_t resident_bytes() { return proc_field_bytes("/proc/self/status", "VmRSS"); }

/// Peak resident set size since the process started or since the last reset_peak() (VmHWM).
inline std::size_t peak_resident_bytes() { return proc_field_bytes("/proc/self/status", "VmHWM"); }

/// Memory the kernel says can still be allocated without swapping (MemAvailable).
inline std::size_t available_bytes() { return proc_field_bytes("/proc/meminfo", "MemAvailable"); }

/// Hands the heap's free pages back to the kernel. With keep_freed_memory() malloc never does
/// this by itself, so the memory a finished benchmark freed stays resident (and out of
/// MemAvailable) until this is called.
inline void release_free_heap() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

/// Returns free heap memory to the kernel, then resets VmHWM to the current VmRSS. False when
/// the kernel refused the reset (the peak then covers the whole process lifetime).
inline bool reset_peak() {
  release_free_heap();
  std::ofstream clear("/proc/self/clear_refs");
  if (!clear) return false;
  clear << "5";
  clear.close();
  return static_cast<bool>(clear);
}

/// Peak of one measured region: construct before the work (resets the peak), read after.
class PeakMeter {
 public:
  PeakMeter() : reset_ok_(reset_peak()), baseline_(resident_bytes()) {}

  bool reset_ok() const { return reset_ok_; }
  /// Resident bytes when the region started.
  std::size_t baseline() const { return baseline_; }
  /// Peak resident bytes of the process during the region (absolute).
  std::size_t peak() const { return peak_resident_bytes(); }
  /// Peak above the baseline: the memory the region itself needed.
  std::size_t extra() const {
    const std::size_t p = peak();
    return p > baseline_ ? p - baseline_ : 0;
  }

 private:
  bool reset_ok_;
  std::size_t baseline_;
};

/// Makes glibc's malloc keep freed memory for reuse instead of returning it to the kernel after
/// every free (no mmap'd blocks, no heap trimming, the heap grows in 64 MiB steps). The library
/// draws its large work buffers from the model's Workspace, which keeps them across calls, so
/// the benchmarks run with glibc's own policy by default; --malloc=tuned applies this (and the
/// huge-page re-execution below) to compare, as `--malloc tuned` of the example programs
/// (examples/common/allocator.hpp). reset_peak() and the memory guard (skip_if_memory_short)
/// still hand free pages back before each measurement.
///
/// Trimming is off entirely (threshold -1), not merely raised: a trim threshold of 1 GiB still
/// let a long call that frees GiBs at its end hand them back, and the next call re-faulted them
/// (LSH R = 2 fwd+bwd at T = 2^20: 11387 faults of 2 MiB pages per call, the kernel zeroing
/// 22 GiB; with trimming off, 0).
inline void keep_freed_memory() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, -1);
  mallopt(M_TOP_PAD, 64 << 20);
#endif
}

/// Transparent huge pages (2 MiB) for the heap. Debian's kernel backs anonymous memory with
/// huge pages only where it is madvised (THP mode "madvise"), and glibc >= 2.35 madvises its
/// heap when the process starts with GLIBC_TUNABLES containing glibc.malloc.hugetlb=1. Long
/// inputs touch gigabytes of fresh buffers and gather columns from them in bucket order: with
/// 4 KiB pages a step pays a page fault per 4 KiB and more TLB misses on the gathers (faults
/// measured at T = 2^18: 250k per call, 488 with huge pages; the time difference of that run is not
/// quoted, the machine was loaded; see benchmarks/results/huge_pages_{on,off}.json for an A/B).
///
/// Tunables are read when a process starts, so this re-executes the program (argv unchanged)
/// with the tunable added (only with --malloc=tuned: the Workspace maps its large blocks with
/// MADV_HUGEPAGE itself). It returns, doing nothing, when the tunable is present already or
/// the exec fails; the JSON context records which (transparent_huge_pages).
inline void reexec_with_huge_pages(char** argv) {
#if defined(__GLIBC__) && defined(__linux__)
  const char* current = std::getenv("GLIBC_TUNABLES");
  const std::string tunables = current != nullptr ? current : "";
  if (tunables.find("glibc.malloc.hugetlb") != std::string::npos) return;
  const std::string updated =
      tunables.empty() ? "glibc.malloc.hugetlb=1" : tunables + ":glibc.malloc.hugetlb=1";
  if (setenv("GLIBC_TUNABLES", updated.c_str(), 1) != 0) return;
  execv("/proc/self/exe", argv);
  // exec failed: carry on with 4 KiB pages, and say so in the context
  if (current != nullptr) {
    setenv("GLIBC_TUNABLES", current, 1);
  } else {
    unsetenv("GLIBC_TUNABLES");
  }
#else
  (void)argv;
#endif
}

/// "glibc.malloc.hugetlb=N" when the process runs with that tunable, else "off".
inline std::string huge_pages_setting() {
  const char* t = std::getenv("GLIBC_TUNABLES");
  const std::string s = t != nullptr ? t : "";
  const auto at = s.find("glibc.malloc.hugetlb=");
  if (at == std::string::npos) return "off";
  return s.substr(at,
                  s.find(':', at) == std::string::npos ? std::string::npos : s.find(':', at) - at);
}

inline double gib(std::size_t bytes) { return double(bytes) / double(std::size_t{1} << 30); }
inline double mib(std::size_t bytes) { return double(bytes) / double(std::size_t{1} << 20); }

}  // namespace reformer_bench
