#pragma once
// Command-line options shared by the benchmark programs (next to Google Benchmark's own
// --benchmark_* flags, which pass through), the run context recorded in the JSON output, and the
// program skeleton: parse our flags, initialise Google Benchmark, register, run.
//
//   --threads=N      threads of the library's parallel loops (default: all hardware threads)
//   --tmin=T         smallest sequence length of the T families (0 = the program's default)
//   --tmax=T         largest sequence length of the T families (0 = the program's default)
//   --long           the long ranges (T up to 2^20); not part of the default run
//   --ffn_chunk=N    tokens per feed-forward chunk in the model benchmarks (0 = unchunked)
//   --dropout=P      hidden / attention dropout of the model benchmarks (default 0)
//   --no_gemm        leave out the GEMM reference family
//   --malloc=P       system (default: glibc's own policy; the library reuses its work buffers)
//                    or tuned (glibc keeps freed memory, keep_freed_memory, and the program
//                    re-executes with huge pages, reexec_with_huge_pages; common/memory.hpp)
//   --huge_pages=off with --malloc=tuned: 4 KiB pages, no re-execution
// A program may accept more integer flags of its own (Options::extra, e.g. model_step's
// --depth_t); any other flag goes to Google Benchmark, which rejects what it does not know.
#include "memory.hpp"

#include <benchmark/benchmark.h>
#include <reformer/core/gemm_backend.hpp>
#include <reformer/core/threading.hpp>
#include <reformer/version.hpp>

#include <Eigen/Core>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(REFORMER_OPENBLAS)
extern "C" char* openblas_get_config(void);
#endif

namespace reformer_bench {

struct Options {
  int threads = 0;
  reformer::Index tmin = 0, tmax = 0;
  bool long_range = false;
  reformer::Index ffn_chunk = 1024;
  double dropout = 0.0;
  bool gemm = true;
  bool tuned_malloc = false;
  bool huge_pages = true;
  std::map<std::string, reformer::Index> extra;  ///< the program's own integer flags

  /// A program flag's value (its default when not given).
  reformer::Index get(const std::string& name) const { return extra.at(name); }

  /// The T range of a family: the flags when given, else [lo, hi] (hi_long with --long).
  reformer::Index lo(reformer::Index def) const { return tmin > 0 ? tmin : def; }
  reformer::Index hi(reformer::Index def, reformer::Index def_long) const {
    return tmax > 0 ? tmax : (long_range ? def_long : def);
  }
};

/// The value of "--name=value" in `arg`, or nullptr.
inline const char* flag_value(const std::string& arg, const char* name) {
  const std::string prefix = std::string("--") + name + "=";
  return arg.compare(0, prefix.size(), prefix) == 0 ? arg.c_str() + prefix.size() : nullptr;
}

inline long long parse_integer(const char* flag, const char* text) {
  char* end = nullptr;
  const long long v = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || v < 0) {
    throw std::invalid_argument(std::string("--") + flag + "=" + text +
                                ": expected a non-negative integer");
  }
  return v;
}

/// Whether argv[1..argc) contains `flag` exactly.
inline bool has_flag(int argc, char** argv, const char* flag) {
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == flag) return true;
  }
  return false;
}

/// Takes our flags out of argv (the rest is for Google Benchmark). `extra` holds the program's
/// own integer flags with their defaults.
inline Options parse_options(int& argc, char** argv,
                             const std::map<std::string, reformer::Index>& extra = {},
                             const char* usage_extra = "") {
  Options o;
  o.extra = extra;
  std::vector<char*> rest;
  rest.push_back(argv[0]);
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (const char* v = flag_value(a, "threads")) {
      o.threads = static_cast<int>(parse_integer("threads", v));
    } else if (const char* v = flag_value(a, "tmin")) {
      o.tmin = parse_integer("tmin", v);
    } else if (const char* v = flag_value(a, "tmax")) {
      o.tmax = parse_integer("tmax", v);
    } else if (const char* v = flag_value(a, "ffn_chunk")) {
      o.ffn_chunk = parse_integer("ffn_chunk", v);
    } else if (const char* v = flag_value(a, "dropout")) {
      o.dropout = std::strtod(v, nullptr);
      if (!(o.dropout >= 0 && o.dropout < 1)) {
        throw std::invalid_argument(std::string("--dropout=") + v + ": expected 0 <= p < 1");
      }
    } else if (a.compare(0, 2, "--") == 0 && a.find('=') != std::string::npos &&
               o.extra.count(a.substr(2, a.find('=') - 2)) != 0) {
      const std::string key = a.substr(2, a.find('=') - 2);
      o.extra[key] = parse_integer(key.c_str(), a.c_str() + a.find('=') + 1);
    } else if (a == "--long") {
      o.long_range = true;
    } else if (a == "--no_gemm") {
      o.gemm = false;
    } else if (const char* v = flag_value(a, "malloc")) {
      const std::string policy = v;
      if (policy != "tuned" && policy != "system") {
        throw std::invalid_argument("--malloc=" + policy + ": expected system or tuned");
      }
      o.tuned_malloc = policy == "tuned";
    } else if (const char* v = flag_value(a, "huge_pages")) {
      const std::string setting = v;
      if (setting != "on" && setting != "off") {
        throw std::invalid_argument("--huge_pages=" + setting + ": expected on or off");
      }
      o.huge_pages = setting == "on";
    } else {
      if (a == "--help") {
        std::printf(
            "reformer benchmark options:\n"
            "  --threads=N    library threads (default: all hardware threads)\n"
            "  --tmin=T       smallest sequence length of the T families\n"
            "  --tmax=T       largest sequence length of the T families\n"
            "  --long         long ranges (T up to 2^20)\n"
            "  --ffn_chunk=N  tokens per feed-forward chunk of the models (default 1024)\n"
            "  --dropout=P    dropout of the models (default 0)\n"
            "  --no_gemm      leave out the GEMM reference\n"
            "  --malloc=P     system (default) or tuned (glibc keeps freed memory, huge pages)\n"
            "  --huge_pages=S with --malloc=tuned: on (default: re-run with\n"
            "                 glibc.malloc.hugetlb=1) or off\n%s\n"
            "Google Benchmark options follow.\n",
            usage_extra);
      }
      rest.push_back(argv[i]);
    }
  }
  if (o.tmin > 0 && o.tmax > 0 && o.tmin > o.tmax) {
    throw std::invalid_argument("--tmin=" + std::to_string(o.tmin) +
                                " exceeds --tmax=" + std::to_string(o.tmax));
  }
  argc = static_cast<int>(rest.size());
  for (int i = 0; i < argc; ++i) argv[i] = rest[static_cast<std::size_t>(i)];
  return o;
}

/// "model name" of /proc/cpuinfo.
inline std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, 10, "model name") == 0) {
      const auto colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(colon + 2);
    }
  }
  return "unknown";
}

/// The GEMM backend of this build: "eigen" or "openblas" (reformer::gemm_backend_name).
inline const char* product_backend() { return reformer::gemm_backend_name(); }

/// The -march value this program was compiled with (CMake REFORMER_MARCH, e.g. "native" or
/// "haswell"), or "default" without one (REFORMER_NATIVE=OFF: the compiler's default target).
inline const char* build_march() {
#if defined(REFORMER_BUILD_MARCH)
  return REFORMER_BUILD_MARCH;
#else
  return "default";
#endif
}

/// Sets the library's thread count and records the run's context in the benchmark output.
inline void apply_options(Options& o) {
  if (o.tuned_malloc) keep_freed_memory();
  if (o.threads <= 0) o.threads = static_cast<int>(std::thread::hardware_concurrency());
  if (o.threads <= 0) o.threads = 1;
  reformer::set_num_threads(o.threads);  // also keeps OpenBLAS's own threads off
  benchmark::AddCustomContext("gemm_backend", reformer::gemm_backend_name());
  benchmark::AddCustomContext("march", build_march());
#if defined(REFORMER_OPENBLAS)
  benchmark::AddCustomContext("openblas_core", reformer::gemm_backend_core());
  benchmark::AddCustomContext("openblas", openblas_get_config());
#endif
  // Set when the run emulates an older CPU (benchmarks/peers/README.md), or when OpenMP's idle
  // threads sleep (OMP_WAIT_POLICY=passive, as the test script sets): that makes a 2-core step
  // a few percent slower than the default, which spins a while before sleeping.
  const char* const timing_env[] = {"OPENBLAS_CORETYPE", "GLIBC_TUNABLES", "OMP_WAIT_POLICY",
                                    "GOMP_SPINCOUNT"};
  for (const char* name : timing_env) {
    if (const char* value = std::getenv(name)) benchmark::AddCustomContext(name, value);
  }
  benchmark::AddCustomContext("reformer_version", REFORMER_VERSION_STRING);
  benchmark::AddCustomContext("reformer_threads", std::to_string(reformer::num_threads()));
  benchmark::AddCustomContext("cpu_model", cpu_model());
  benchmark::AddCustomContext("mem_total_gib",
                              std::to_string(gib(proc_field_bytes("/proc/meminfo", "MemTotal"))));
  benchmark::AddCustomContext("eigen_version", std::to_string(EIGEN_WORLD_VERSION) + "." +
                                                   std::to_string(EIGEN_MAJOR_VERSION) + "." +
                                                   std::to_string(EIGEN_MINOR_VERSION));
  benchmark::AddCustomContext("eigen_simd", Eigen::SimdInstructionSetsInUse());
  benchmark::AddCustomContext("products", product_backend());  // read by plot_benchmarks.py
  benchmark::AddCustomContext("ffn_chunk", std::to_string(o.ffn_chunk));
  benchmark::AddCustomContext("dropout", std::to_string(o.dropout));
  benchmark::AddCustomContext("malloc", o.tuned_malloc ? "tuned" : "system");
  benchmark::AddCustomContext("transparent_huge_pages", huge_pages_setting());
}

/// The main() of a benchmark program: `register_all(options)` registers its families.
template <class Register>
int run_main(int argc, char** argv, Register&& register_all,
             const std::map<std::string, reformer::Index>& extra = {},
             const char* usage_extra = "") {
  if (has_flag(argc, argv, "--malloc=tuned") && !has_flag(argc, argv, "--huge_pages=off")) {
    reexec_with_huge_pages(argv);  // returns only when it did not re-execute
  }
  Options o;
  try {
    o = parse_options(argc, argv, extra, usage_extra);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
    return 2;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  apply_options(o);
  register_all(o);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace reformer_bench
