// Unit tests of the example programs' shared helpers (examples/common/).
#include "common/cli.hpp"
#include "common/copy_task.hpp"
#include "common/progress.hpp"
#include "common/text_data.hpp"

#include <gtest/gtest.h>

#include <set>

namespace ex = reformer::examples;
using reformer::Index;

TEST(CopyTask, SequencesAreZeroWZeroW) {
  const ex::CopyTask task(16, 5);
  const auto b = task.sample(reformer::Rng(3), 4);
  ASSERT_EQ(b.tokens.size(), 64u);
  for (Index s = 0; s < 4; ++s) {
    const ex::Tok* seq = b.tokens.data() + s * 16;
    EXPECT_EQ(seq[0], 0);
    EXPECT_EQ(seq[8], 0);
    for (Index i = 1; i < 8; ++i) {
      EXPECT_GE(seq[i], 1);
      EXPECT_LE(seq[i], 4);
      EXPECT_EQ(seq[i], seq[8 + i]);
    }
  }
}

TEST(CopyTask, OnlyTheSecondCopyIsCounted) {
  const ex::CopyTask task(12, 7);
  const auto b = task.sample(reformer::Rng(1), 2);
  for (Index s = 0; s < 2; ++s) {
    for (Index t = 0; t < 12; ++t) {
      const ex::Tok target = b.targets[static_cast<std::size_t>(s * 12 + t)];
      if (t >= 6 && t <= 10) {
        EXPECT_EQ(target, b.tokens[static_cast<std::size_t>(s * 12 + t + 1)]) << t;
        EXPECT_TRUE(task.counted(t));
      } else {
        EXPECT_EQ(target, -1) << t;
        EXPECT_FALSE(task.counted(t));
      }
    }
  }
  EXPECT_EQ(task.counted_per_sequence(), 5);
}

TEST(CopyTask, BatchesAreAPureFunctionOfTheKeyAndCoverAllSymbols) {
  const ex::CopyTask task(64, 9);
  const auto a = task.sample(reformer::Rng(5).derive(7), 8);
  const auto b = task.sample(reformer::Rng(5).derive(7), 8);
  const auto c = task.sample(reformer::Rng(5).derive(8), 8);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_NE(a.tokens, c.tokens);
  std::set<ex::Tok> seen(a.tokens.begin(), a.tokens.end());
  EXPECT_EQ(seen.size(), 9u);  // 0 and all 8 content symbols
}

TEST(CopyTask, RejectsBadShapes) {
  EXPECT_THROW(ex::CopyTask(15, 8), reformer::InvalidArgument);
  EXPECT_THROW(ex::CopyTask(2, 8), reformer::InvalidArgument);
  EXPECT_THROW(ex::CopyTask(16, 2), reformer::InvalidArgument);
}

TEST(CopyTask, ArgmaxAccuracyCountsCountedPositionsOnly) {
  const ex::CopyTask task(8, 4);
  const auto b = task.sample(reformer::Rng(2), 2);
  // Perfect logits for every position, then spoil one counted and one ignored prediction.
  reformer::Matrix<float> logits = reformer::Matrix<float>::Zero(4, 16);
  for (Index n = 0; n < 16; ++n) {
    const ex::Tok tgt = b.targets[static_cast<std::size_t>(n)];
    logits(tgt < 0 ? 0 : tgt, n) = 1.0f;
  }
  auto acc = ex::argmax_accuracy(logits, b);
  EXPECT_EQ(acc.total, 6);
  EXPECT_EQ(acc.correct, 6);
  EXPECT_EQ(acc.sequences_correct, 2);
  logits(b.targets[4 + 8] == 1 ? 2 : 1, 4 + 8) = 5.0f;  // sequence 1, t = 4 (counted)
  logits(3, 1) = 5.0f;                                  // sequence 0, t = 1 (ignored)
  acc = ex::argmax_accuracy(logits, b);
  EXPECT_EQ(acc.correct, 5);
  EXPECT_EQ(acc.sequences_correct, 1);
  EXPECT_DOUBLE_EQ(acc.token_accuracy(), 5.0 / 6.0);
}

TEST(TextCorpus, SplitsAndWindows) {
  std::vector<ex::Tok> bytes(100);
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<ex::Tok>(i);
  const ex::TextCorpus corpus(bytes, 0.1, 16, "test");
  EXPECT_EQ(corpus.train().size(), 90u);
  EXPECT_EQ(corpus.valid().size(), 10u);
  const auto b = corpus.sample_train(reformer::Rng(1), 3, 16);
  for (Index s = 0; s < 3; ++s) {
    const ex::Tok first = b.tokens[static_cast<std::size_t>(s * 16)];
    EXPECT_LE(first + 15, 89);
    for (Index t = 0; t < 16; ++t) {
      EXPECT_EQ(b.tokens[static_cast<std::size_t>(s * 16 + t)], first + t);
      EXPECT_EQ(b.targets[static_cast<std::size_t>(s * 16 + t)], t == 15 ? -1 : first + t + 1);
    }
  }
  const auto windows = corpus.valid_windows(4, 100);
  ASSERT_EQ(windows.size(), 2u);  // 90..93, 94..97; the short tail 98..99 is dropped
  EXPECT_EQ(windows[1].tokens.front(), 94);
  EXPECT_EQ(corpus.valid_windows(64, 100).at(0).length, 10);  // a single short window
}

TEST(TextCorpus, RejectsTooShortInput) {
  EXPECT_THROW(ex::TextCorpus(std::vector<ex::Tok>(20), 0.1, 32, "tiny"),
               reformer::InvalidArgument);
  EXPECT_THROW(ex::read_bytes("/nonexistent/file.txt"), reformer::IoError);
}

TEST(Progress, StatusLine) {
  EXPECT_EQ(ex::format_duration(3725.2), "1:02:05");
  EXPECT_EQ(ex::format_duration(-1), "--:--:--");
  EXPECT_EQ(ex::format_count(31234), "31.2k");
  EXPECT_EQ(ex::format_count(2.5e6), "2.50M");
  ex::Progress p(0, 100, ex::Progress::Mode::kPlain, 10.0, stderr);
  const std::string s = p.status(7, 700, "loss 1.0");
  EXPECT_NE(s.find("step   7/100  loss 1.0"), std::string::npos) << s;
  EXPECT_NE(s.find("tok/s"), std::string::npos);
  EXPECT_NE(s.find("ETA"), std::string::npos);
}

TEST(Cli, OneLine) { EXPECT_EQ(ex::one_line("a\nb\tc \n"), "a b c"); }
