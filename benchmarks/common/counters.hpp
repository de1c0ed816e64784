#pragma once
// The counters every benchmark reports, computed from our own wall clock (the library runs
// OpenMP threads, so CPU time of the benchmark thread means nothing; the families also use
// UseRealTime()):
//   tokens/s          tokens processed per second of wall time
//   GFLOP/s           flops (common/flops.hpp) per second of wall time, / 1e9
//   flops             FLOPs of one iteration
//   peak_bytes        peak resident memory of the process during the benchmark (VmHWM)
//   peak_extra_bytes  peak_bytes minus the resident memory when the benchmark started
//   threads           library threads
//   faults_per_iter   minor page faults per timed iteration (getrusage ru_minflt: memory
//                     freshly mapped and zeroed by the kernel; 0 in a steady state that reuses
//                     its memory)
//   cpus_busy         CPU time of the whole process (every thread) per second of wall time in
//                     the timed sections: threads x the share of the time they had work. It
//                     means that only when idle threads sleep (OMP_WAIT_POLICY=passive, as
//                     scripts/test.sh sets); with OpenMP's default, threads that spin while
//                     they wait count as busy.
#include "memory.hpp"

#include <benchmark/benchmark.h>
#include <reformer/core/threading.hpp>

#include <sys/resource.h>

#include <chrono>
#include <cstddef>
#include <ctime>
#include <type_traits>

namespace reformer_bench {

/// Minor page faults of the process so far.
inline double minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_minflt);
}

/// CPU seconds of every thread of the process so far.
inline double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

/// Sums the wall time, the process CPU time and the page faults of the timed sections of one
/// benchmark run.
class WallClock {
 public:
  void start() {
    faults0_ = minor_faults();
    cpu0_ = process_cpu_seconds();
    t0_ = Clock::now();
  }
  void stop() {
    seconds_ += std::chrono::duration<double>(Clock::now() - t0_).count();
    cpu_ += process_cpu_seconds() - cpu0_;
    faults_ += minor_faults() - faults0_;
  }
  double seconds() const { return seconds_; }
  double cpu_seconds() const { return cpu_; }
  double faults() const { return faults_; }

 private:
  using Clock = std::chrono::steady_clock;
  Clock::time_point t0_{};
  double seconds_ = 0, cpu_ = 0, cpu0_ = 0, faults_ = 0, faults0_ = 0;
};

/// Times `work()` once per benchmark iteration, after one untimed warm-up call (the first call
/// touches fresh memory and is slower than the steady state a training run sees). `between()`,
/// when given, runs before each timed call, outside the timing (its own measurements, e.g.
/// AdjacentGemm).
template <class Work, class Between = std::nullptr_t>
WallClock time_iterations(benchmark::State& state, Work&& work, Between&& between = nullptr) {
  work();
  WallClock clock;
  for (auto _ : state) {
    if constexpr (!std::is_same_v<std::decay_t<Between>, std::nullptr_t>) {
      state.PauseTiming();
      between();
      state.ResumeTiming();
    }
    clock.start();
    work();
    clock.stop();
  }
  return clock;
}

/// Sets the counters listed above. `tokens` and `flops` are per iteration.
inline void report(benchmark::State& state, const WallClock& clock, double tokens, double flops,
                   const PeakMeter& peak) {
  const double iters = static_cast<double>(state.iterations());
  const double secs = clock.seconds() > 0 ? clock.seconds() : 1e-12;
  using C = benchmark::Counter;
  state.counters["tokens/s"] = C(tokens * iters / secs);
  state.counters["GFLOP/s"] = C(flops * iters / secs / 1e9);
  state.counters["flops"] = C(flops);
  state.counters["peak_bytes"] = C(double(peak.peak()), C::kDefaults, C::kIs1024);
  state.counters["peak_extra_bytes"] = C(double(peak.extra()), C::kDefaults, C::kIs1024);
  state.counters["peak_reset"] = C(peak.reset_ok() ? 1 : 0);
  state.counters["threads"] = C(reformer::num_threads());
  state.counters["faults_per_iter"] = C(clock.faults() / (iters > 0 ? iters : 1));
  state.counters["cpus_busy"] = C(clock.cpu_seconds() / secs);
}

/// Skips the benchmark (with a message naming the need) when it would need more than 90% of
/// the memory the kernel reports available once the heap's free pages are handed back (the
/// memory earlier benchmarks freed is reusable). Returns true when skipped.
inline bool skip_if_memory_short(benchmark::State& state, double bytes_needed) {
  release_free_heap();
  const double avail = double(available_bytes());
  if (avail > 0 && bytes_needed > 0.9 * avail) {
    const std::string msg = "needs ~" + std::to_string(bytes_needed / double(1 << 30)) +
                            " GiB, only " + std::to_string(avail / double(1 << 30)) +
                            " GiB available";
    state.SkipWithError(msg.c_str());
    return true;
  }
  return false;
}

}  // namespace reformer_bench
