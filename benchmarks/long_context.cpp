// The long-context run: one training step (forward, loss, reversible backward) of a 2-layer
// (lsh, local) model on a single sequence of 2^20 tokens; prints seconds and peak resident
// memory, and writes them as JSON. Not part of the default benchmark run (one step takes
// minutes and gigabytes); scripts/run_benchmarks.sh runs it with --long.
//
// Model (common/model.hpp): D = 256, H = 4, Dh = 64, F = 1024, C = 64, V = 256, R = --hashes
// (default 2), float, dropout 0.
//
//   long_context [--length=1048576] [--layers=lsh,local] [--hashes=2] [--threads=N]
//                [--ffn_chunk=1024] [--steps=1] [--stored] [--max_gib=G] [--json=FILE]
//                [--malloc=system|tuned] [--huge_pages=off]
//
// Allocator: glibc's own policy by default (the model's Workspace keeps the work buffers);
// --malloc=tuned keeps freed memory in glibc (keep_freed_memory) and re-executes the program with
// GLIBC_TUNABLES=glibc.malloc.hugetlb=1 unless --huge_pages=off (common/memory.hpp).
//
// --max_gib caps the process's address space (RLIMIT_AS): past it an allocation throws
// std::bad_alloc and the program reports the failure instead of inviting the kernel's OOM killer
// onto a shared machine.
#include "common/flops.hpp"
#include "common/memory.hpp"
#include "common/model.hpp"
#include "common/options.hpp"

#include <reformer/reformer.hpp>

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <new>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using reformer::Index;
using reformer_bench::flag_value;
using reformer_bench::parse_integer;

struct Args {
  Index length = Index{1} << 20;
  std::vector<std::string> layers = {"lsh", "local"};
  Index hashes = 2;
  int threads = 0;
  Index ffn_chunk = 1024;
  Index steps = 1;
  bool stored = false;
  bool tuned_malloc = false;
  double max_gib = 0;
  std::string json;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(item);
  return out;
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    if (const char* v = flag_value(s, "length")) {
      a.length = parse_integer("length", v);
    } else if (const char* v = flag_value(s, "layers")) {
      a.layers = split(v);
    } else if (const char* v = flag_value(s, "hashes")) {
      a.hashes = parse_integer("hashes", v);
    } else if (const char* v = flag_value(s, "threads")) {
      a.threads = static_cast<int>(parse_integer("threads", v));
    } else if (const char* v = flag_value(s, "ffn_chunk")) {
      a.ffn_chunk = parse_integer("ffn_chunk", v);
    } else if (const char* v = flag_value(s, "steps")) {
      a.steps = parse_integer("steps", v);
    } else if (const char* v = flag_value(s, "max_gib")) {
      a.max_gib = std::strtod(v, nullptr);
    } else if (const char* v = flag_value(s, "json")) {
      a.json = v;
    } else if (s == "--malloc=system") {
      a.tuned_malloc = false;
    } else if (s == "--malloc=tuned") {
      a.tuned_malloc = true;
    } else if (s == "--huge_pages=on" || s == "--huge_pages=off") {
      // handled before parsing (reexec_with_huge_pages, with --malloc=tuned)
    } else if (s == "--stored") {
      a.stored = true;
    } else {
      throw std::invalid_argument("unknown argument '" + s +
                                  "' (see the header of benchmarks/long_context.cpp)");
    }
  }
  if (a.length < 2 || a.steps < 1) throw std::invalid_argument("--length >= 2, --steps >= 1");
  return a;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  if (reformer_bench::has_flag(argc, argv, "--help")) {
    std::printf(
        "long_context [--length=1048576] [--layers=lsh,local] [--hashes=2] [--threads=N]\n"
        "             [--ffn_chunk=1024] [--steps=1] [--stored] [--max_gib=G] [--json=FILE]\n"
        "             [--malloc=system|tuned] [--huge_pages=off]\n"
        "One training step of a 2-layer model on one long sequence; prints the times, the peak\n"
        "resident memory and the workspace's footprint (see benchmarks/long_context.cpp).\n");
    return 0;
  }
  if (reformer_bench::has_flag(argc, argv, "--malloc=tuned") &&
      !reformer_bench::has_flag(argc, argv, "--huge_pages=off")) {
    reformer_bench::reexec_with_huge_pages(argv);
  }
  Args args;
  try {
    args = parse(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "long_context: %s\n", e.what());
    return 2;
  }
  if (args.tuned_malloc) reformer_bench::keep_freed_memory();
  if (args.max_gib > 0) {
    rlimit lim{};
    lim.rlim_cur = lim.rlim_max = static_cast<rlim_t>(args.max_gib * double(1ull << 30));
    setrlimit(RLIMIT_AS, &lim);
  }
  const int threads =
      args.threads > 0 ? args.threads : static_cast<int>(std::thread::hardware_concurrency());
  reformer::set_num_threads(threads > 0 ? threads : 1);

  reformer_bench::Options o;
  o.ffn_chunk = args.ffn_chunk;
  reformer_bench::ModelSpec m;
  m.layers = args.layers;
  m.length = args.length;
  m.hashes = args.hashes;
  m.mode = args.stored ? reformer::BackpropMode::kStoredActivations
                       : reformer::BackpropMode::kReversible;

  std::printf("long_context: T = %lld, layers =", static_cast<long long>(m.length));
  for (const auto& l : m.layers) std::printf(" %s", l.c_str());
  std::printf(", R = %lld, threads = %d, %s backward, huge pages: %s\n",
              static_cast<long long>(m.hashes), reformer::num_threads(),
              args.stored ? "stored-activation" : "reversible",
              reformer_bench::huge_pages_setting().c_str());
  std::fflush(stdout);

  double forward_s = 0, backward_s = 0, loss = 0;
  std::size_t peak = 0, extra = 0, param_bytes = 0, tape_bytes = 0;
  reformer::Workspace::Stats workspace;
  bool reset_ok = false;
  double flops = 0;
  try {
    const reformer::ReformerConfig config = reformer_bench::model_config(m, o);
    reformer::ReformerLM<float> model(config, m.mode);
    param_bytes = reformer_bench::parameter_bytes(model);
    flops = reformer_bench::model_step_flops(config, m.length);
    const std::vector<reformer::Token> tokens =
        reformer_bench::model_tokens(m.length, config.vocab_size);
    const reformer_bench::PeakMeter meter;
    reset_ok = meter.reset_ok();
    reformer::Tape<float> tape;
    for (Index s = 0; s < args.steps; ++s) {
      model.zero_grad();
      auto t0 = std::chrono::steady_clock::now();
      loss = model.forward_loss(tokens, 1, tape, static_cast<std::uint64_t>(s));
      forward_s = seconds_since(t0);
      t0 = std::chrono::steady_clock::now();
      model.backward(tape);
      backward_s = seconds_since(t0);
    }
    tape_bytes = tape.bytes_held();
    workspace = model.workspace().stats();
    peak = meter.peak();
    extra = meter.extra();
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "long_context: out of memory (peak so far %.2f GiB%s)\n",
                 reformer_bench::gib(reformer_bench::peak_resident_bytes()),
                 args.max_gib > 0 ? ", --max_gib reached" : "");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "long_context: %s\n", e.what());
    return 1;
  }

  const double step_s = forward_s + backward_s;
  std::printf("  loss          %.9g\n", loss);
  std::printf("  forward       %.2f s\n", forward_s);
  std::printf("  backward      %.2f s\n", backward_s);
  std::printf("  step          %.2f s  (%.0f tokens/s, %.1f GFLOP/s)\n", step_s,
              double(m.length) / step_s, flops / step_s / 1e9);
  std::printf("  peak RSS      %.2f GiB  (%.2f GiB above the model's parameters%s)\n",
              reformer_bench::gib(peak), reformer_bench::gib(extra),
              reset_ok ? "" : "; peak not resettable: process lifetime");
  std::printf("  parameters    %.1f MiB (values + gradients), tape %.2f GiB\n",
              reformer_bench::mib(param_bytes), reformer_bench::gib(tape_bytes));
  std::printf(
      "  workspace     %.2f GiB at most (in use + free, the tape's streams included), "
      "%zu regions mapped\n",
      reformer_bench::gib(workspace.peak_bytes), workspace.mappings);

  if (!args.json.empty()) {
    std::ofstream out(args.json);
    out << "{\n  \"context\": {\"program\": \"long_context\", \"cpu_model\": \""
        << reformer_bench::cpu_model() << "\", \"threads\": " << reformer::num_threads()
        << ", \"products\": \"" << reformer_bench::product_backend() << "\", \"malloc\": \""
        << (args.tuned_malloc ? "tuned" : "system") << "\", \"transparent_huge_pages\": \""
        << reformer_bench::huge_pages_setting() << "\"},\n"
        << "  \"long_context\": {\"length\": " << m.length << ", \"layers\": \"";
    for (std::size_t i = 0; i < m.layers.size(); ++i) out << (i ? "," : "") << m.layers[i];
    out << "\", \"hashes\": " << m.hashes << ", \"backward\": \""
        << (args.stored ? "stored" : "reversible") << "\", \"loss\": " << loss
        << ", \"forward_seconds\": " << forward_s << ", \"backward_seconds\": " << backward_s
        << ", \"step_seconds\": " << step_s << ", \"flops\": " << flops
        << ", \"peak_bytes\": " << peak << ", \"peak_extra_bytes\": " << extra
        << ", \"param_bytes\": " << param_bytes << ", \"tape_bytes\": " << tape_bytes
        << ", \"workspace_peak_bytes\": " << workspace.peak_bytes << "}\n}\n";
    if (!out) {
      std::fprintf(stderr, "long_context: cannot write %s\n", args.json.c_str());
      return 1;
    }
  }
  return 0;
}
