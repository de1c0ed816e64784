// The example programs' defences against bad input: numeric flags refuse NaN and out-of-range
// seeds at parse time, a non-finite loss stops training, divergence is reported, stale
// checkpoint temporaries are removed and a resumed run's metrics log loses the records it
// recomputes.
#include "common/cli.hpp"
#include "common/loss_checks.hpp"
#include "common/metrics_log.hpp"
#include "common/option_table.hpp"
#include "common/progress.hpp"
#include "common/run_setup.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <unistd.h>

namespace ex = reformer::examples;
namespace fs = std::filesystem;

namespace {

struct Flags {
  double rate = 0.5;
  std::uint64_t seed = 1;
};

void declare(ex::OptionTable<Flags>& t) {
  t.option("--rate", &Flags::rate, "a rate", ex::OptionScope::kRun, CLI::Range(0.0, 1.0))
      .option("--seed", &Flags::seed, "a seed", ex::OptionScope::kRun);
}

/// Parses `args` with the table of `declare`; returns "" or the parse error.
std::string parse(std::vector<std::string> args, Flags& f) {
  ex::OptionTable<Flags> table;
  declare(table);
  CLI::App app("test", "test");
  table.add_to(app, f);
  std::vector<const char*> argv = {"test"};
  for (const auto& a : args) argv.push_back(a.c_str());
  try {
    app.parse(static_cast<int>(argv.size()), const_cast<char**>(argv.data()));
  } catch (const CLI::ParseError& e) {
    return e.what();
  }
  return "";
}

fs::path scratch(const std::string& name) {
  const fs::path dir =
      fs::temp_directory_path() / ("reformer_hardening_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

}  // namespace

TEST(Flags, NumbersMustBeFinite) {
  for (const char* bad : {"nan", "NaN", "-nan", "inf", "1e999"}) {
    Flags f;
    const std::string error = parse({"--rate", bad}, f);
    EXPECT_NE(error.find("finite"), std::string::npos) << bad << ": '" << error << "'";
  }
  Flags f;
  EXPECT_EQ(parse({"--rate", "0.25"}, f), "");
  EXPECT_EQ(f.rate, 0.25);
}

TEST(Flags, SeedsMustFit64BitsWithoutSign) {
  for (const char* bad : {"-1", "18446744073709551616", "99999999999999999999999", "1e3", "+5"}) {
    Flags f;
    EXPECT_NE(parse({"--seed", bad}, f), "") << bad;
    EXPECT_EQ(f.seed, 1u) << bad;
  }
  Flags f;
  EXPECT_EQ(parse({"--seed", "18446744073709551615"}, f), "");
  EXPECT_EQ(f.seed, std::numeric_limits<std::uint64_t>::max());
}

TEST(LossChecks, NonFiniteLossStopsWithTheStep) {
  EXPECT_NO_THROW(ex::require_finite_loss(3.5, 0));
  for (double bad : {std::nan(""), std::numeric_limits<double>::infinity()}) {
    try {
      ex::require_finite_loss(bad, 41);
      ADD_FAILURE() << "no error for " << bad;
    } catch (const reformer::Error& e) {
      EXPECT_NE(std::string(e.what()).find("step 42"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("before the optimizer"), std::string::npos);
    }
  }
}

TEST(LossChecks, DivergenceIsReportedOnce) {
  ex::DivergenceWatch watch(256);
  EXPECT_NEAR(watch.baseline(), std::log(256.0), 1e-12);
  EXPECT_EQ(watch.check(5.6, 1), "");  // about ln V: a fresh model
  EXPECT_EQ(watch.check(std::nan(""), 2), "");
  const std::string w = watch.check(3000.0, 3);
  EXPECT_NE(w.find("step 3"), std::string::npos) << w;
  EXPECT_NE(w.find("diverging"), std::string::npos) << w;
  EXPECT_EQ(watch.check(3000.0, 4), "");
}

TEST(RunSetup, StaleCheckpointTemporariesAreRemoved) {
  const fs::path dir = scratch("tmp");
  const std::string ckpt = (dir / "checkpoint.safetensors").string();
  const std::string dead = ckpt + ".tmp.2147483646.12345";  // no such process
  const std::string mine = ckpt + ".tmp." + std::to_string(::getpid()) + ".1";
  const std::string other = (dir / "notes.tmp.1.2").string();
  for (const auto& p : {ckpt, dead, mine, other}) std::ofstream(p) << "x";
  EXPECT_EQ(ex::remove_stale_temporaries(ckpt), 1);
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_TRUE(fs::exists(mine));  // a running process may still be writing it
  EXPECT_TRUE(fs::exists(other));
  EXPECT_TRUE(fs::exists(ckpt));
  fs::remove_all(dir);
}

TEST(MetricsLog, ResumingDropsTheRecordsAfterTheCheckpoint) {
  const fs::path dir = scratch("log");
  const std::string path = (dir / "metrics.jsonl").string();
  {
    ex::MetricsLog log(path);
    for (int s = 1; s <= 6; ++s) log.write({{"event", "train"}, {"step", s}});
    log.write({{"event", "note"}});
  }
  std::ofstream(path, std::ios::app) << "{\"event\":\"train\",\"st";  // torn by a kill
  {
    ex::MetricsLog log(path, /*append=*/true, /*keep_through_step=*/4);
    log.write({{"event", "train"}, {"step", 5}});
  }
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 6u);
  EXPECT_EQ(lines[3], "{\"event\":\"train\",\"step\":4}");
  EXPECT_EQ(lines[4], "{\"event\":\"note\"}");
  EXPECT_EQ(lines[5], "{\"event\":\"train\",\"step\":5}");
  fs::remove_all(dir);
}

TEST(Progress, EtaIsABoundWhenTheRunMayStopEarly) {
  ex::Progress p(0, 100, ex::Progress::Mode::kPlain);
  EXPECT_EQ(p.status(10, 0, "").find("at most"), std::string::npos);
  p.set_may_stop_early(true);
  EXPECT_NE(p.status(10, 0, "").find("ETA at most"), std::string::npos);
  EXPECT_NE(p.status(10, 0, "").find("may stop early"), std::string::npos);
}
