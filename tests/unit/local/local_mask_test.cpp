// LocalAttention with key padding (docs/DESIGN.md 7.1, 7.2): the oracle with masks (valid
// lengths and holes), padding that never leaks into real positions, what the amount of padding
// changes through the circular window, thread independence and clear errors.
#include "reformer/core/attention_mask.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/layers/local_attention.hpp"

#include "local_test_util.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

namespace reformer::local_mask_test {
namespace {

using test::banded_reference;
using test::LocalCore;
using test::random_matrix;
using test::relative_error;
using test::throws_invalid;

constexpr Index kHidden = 8;

LocalAttentionConfig masked_config(Index heads, bool causal, Index before, Index after) {
  LocalAttentionConfig cfg;
  cfg.num_heads = heads;
  cfg.head_size = 4;
  cfg.chunk_length = 4;
  cfg.chunks_before = before;
  cfg.chunks_after = after;
  cfg.causal = causal;
  return cfg;
}

Context masked_ctx(Index batch, const AttentionMask* mask) {
  Context ctx;
  ctx.batch = batch;
  ctx.mask = mask;
  return ctx;
}

struct MaskedRun {
  Matrix<double> a, dx;
  Vector<double> grads;
};

// Forward, then backward of L = sum(da .* a).
MaskedRun run(const LocalCore& lc, const Matrix<double>& xn, const Matrix<double>& da,
              const Context& ctx) {
  MaskedRun r;
  r.a.resize(lc.core.out_features(), xn.cols());
  lc.core.forward(lc.params, xn, r.a, ctx);
  Parameters<double> p = lc.params;
  p.zero_grad();
  r.dx = Matrix<double>::Zero(kHidden, xn.cols());
  Matrix<double> ra(da.rows(), da.cols());
  lc.core.backward(p, xn, da, r.dx, ra, ctx);
  EXPECT_EQ(ra, r.a);
  r.grads = p.grads();
  return r;
}

// Columns of the real positions of a batch (b*T + t with mask.real(b, t)).
Matrix<double> real_columns(const Matrix<double>& m, const AttentionMask& mask) {
  std::vector<Index> cols;
  for (Index b = 0; b < mask.batch(); ++b)
    for (Index t = 0; t < mask.length(); ++t)
      if (mask.real(b, t)) cols.push_back(b * mask.length() + t);
  Matrix<double> out(m.rows(), static_cast<Index>(cols.size()));
  for (std::size_t i = 0; i < cols.size(); ++i) out.col(static_cast<Index>(i)) = m.col(cols[i]);
  return out;
}

// The masks of the tests: valid lengths, and 0/1 flags with holes.
std::vector<AttentionMask> test_masks(Index t) {
  std::vector<int> holes(static_cast<std::size_t>(2 * t), 1);
  for (Index i = 0; i < 2 * t; ++i)
    if (i % 3 == 1 || i % 7 == 0) holes[static_cast<std::size_t>(i)] = 0;
  return {AttentionMask::from_lengths({t, std::max<Index>(1, t - 5)}, t),
          AttentionMask::from_lengths({3, t - 1}, t), AttentionMask::from_flags(holes, 2, t)};
}

TEST(LocalAttentionMask, EqualsTheCircularOracleWithPadding) {
  struct Case {
    bool causal;
    Index before, after, t;
  };
  for (const Case& c : std::vector<Case>{{true, 1, 0, 16},
                                         {false, 1, 0, 16},
                                         {false, 1, 1, 14},
                                         {true, 2, 0, 8},
                                         {false, 2, 1, 12},
                                         {true, 1, 0, 4},
                                         {false, 0, 0, 7}}) {
    const LocalCore lc(masked_config(2, c.causal, c.before, c.after), kHidden, 5);
    const Matrix<double> xn = random_matrix(kHidden, 2 * c.t, Rng(3));
    for (const AttentionMask& mask : test_masks(c.t)) {
      const Context ctx = masked_ctx(2, &mask);
      Matrix<double> a(lc.core.out_features(), xn.cols());
      lc.core.forward(lc.params, xn, a, ctx);
      EXPECT_LT(relative_error(a, banded_reference(lc, xn, ctx)), 1e-13)
          << "causal " << c.causal << " before " << c.before << " after " << c.after << " T "
          << c.t;
      // The mask matters: without it the outputs differ.
      Matrix<double> plain(a.rows(), a.cols());
      lc.core.forward(lc.params, xn, plain, masked_ctx(2, nullptr));
      EXPECT_GT(relative_error(a, plain), 1e-6);
    }
  }
}

// A mask without padding is no mask: bitwise the same as none.
TEST(LocalAttentionMask, AMaskOfOnlyRealPositionsChangesNothing) {
  const LocalCore lc(masked_config(2, false, 1, 1), kHidden);
  const Matrix<double> xn = random_matrix(kHidden, 2 * 12, Rng(3));
  const Matrix<double> da = random_matrix(lc.core.out_features(), xn.cols(), Rng(4));
  const AttentionMask all = AttentionMask::from_lengths({12, 12}, 12);
  const MaskedRun a = run(lc, xn, da, masked_ctx(2, nullptr)),
                  b = run(lc, xn, da, masked_ctx(2, &all));
  EXPECT_EQ(a.a, b.a);
  EXPECT_EQ(a.dx, b.dx);
  EXPECT_EQ(a.grads, b.grads);
}

// Whatever stands at padded positions, the outputs and gradients of real positions are bitwise
// the same (the upstream gradient is zero at padded positions), causal and not, lengths and
// holes, also where windows wrap.
TEST(LocalAttentionMask, PaddingNeverLeaks) {
  for (bool causal : {true, false}) {
    for (Index after : {0, 1}) {
      if (causal && after > 0) continue;
      const LocalCore lc(masked_config(3, causal, 1, after), kHidden, 2);
      const Index t = 14;
      for (const AttentionMask& mask : test_masks(t)) {
        const Context ctx = masked_ctx(2, &mask);
        const Matrix<double> xn = random_matrix(kHidden, 2 * t, Rng(5));
        Matrix<double> da = random_matrix(lc.core.out_features(), xn.cols(), Rng(6));
        Matrix<double> other = xn;
        for (Index b = 0; b < 2; ++b)
          for (Index i = 0; i < t; ++i)
            if (!mask.real(b, i)) {
              da.col(b * t + i).setZero();
              other.col(b * t + i) = random_matrix(kHidden, 1, Rng(100 + i), 50.0);
            }
        const MaskedRun r1 = run(lc, xn, da, ctx), r2 = run(lc, other, da, ctx);
        EXPECT_EQ(real_columns(r1.a, mask), real_columns(r2.a, mask)) << causal << after;
        EXPECT_EQ(real_columns(r1.dx, mask), real_columns(r2.dx, mask)) << causal << after;
        EXPECT_EQ(r1.grads, r2.grads) << causal << after;
        EXPECT_NE(r1.a, r2.a);  // padded queries are computed, from their own inputs
      }
    }
  }
}

// Causal, chunks_before smaller than the number of chunks: appending whole chunks of padding
// leaves the real positions' outputs and input gradients bitwise unchanged (wrapped chunks lie in
// the future and weigh exactly 0), and the weight gradients up to their summation order.
TEST(LocalAttentionMask, CausalAppendingPaddingChangesNothing) {
  const LocalCore lc(masked_config(2, true, 1, 0), kHidden, 4);
  const Index real = 10;
  const Matrix<double> x = random_matrix(kHidden, real, Rng(7));
  const Matrix<double> g = random_matrix(lc.core.out_features(), real, Rng(8));
  MaskedRun first;
  for (Index t : {12, 16, 24}) {
    const AttentionMask mask = AttentionMask::from_lengths({real}, t);
    Matrix<double> xn = random_matrix(kHidden, t, Rng(static_cast<std::uint64_t>(t)));
    xn.leftCols(real) = x;
    Matrix<double> da = Matrix<double>::Zero(g.rows(), t);
    da.leftCols(real) = g;
    MaskedRun r = run(lc, xn, da, masked_ctx(1, &mask));
    r.a = r.a.leftCols(real).eval();
    r.dx = r.dx.leftCols(real).eval();
    if (t == 12) {
      first = r;
      continue;
    }
    EXPECT_EQ(r.a, first.a) << "T " << t;
    EXPECT_EQ(r.dx, first.dx) << "T " << t;
    // The weight gradients sum over all N columns (the padded ones contribute exact zeros) in
    // blocks that depend on N: equal up to that summation order.
    EXPECT_LT(relative_error(r.grads, first.grads), 1e-14) << "T " << t;
  }
}

// Where HF's circular window lets the amount of padding change what real positions see
// (docs/DESIGN.md 7.2): exactly the chunks whose window wraps onto a different chunk.
//  - non-causal: chunk 0 looks back at the last chunk, real at T = 12 (positions 8, 9 of a
//    sequence of 10) but all padding at T = 16; the last real chunk (2) looks ahead at chunk 0
//    at T = 12 (look-ahead 1) but at the padding chunk 3 at T = 16;
//  - causal with chunks_before >= the number of chunks: at T = 8 (two chunks, before 2) the
//    window of chunk 1 is (1, 0, 1), its own keys counting twice; at T = 12 it is (2, 0, 1),
//    chunk 2 lying in the future. (Chunk 0's window (0, 1, 0) at T = 8 doubles every allowed
//    key, which leaves its softmax weights unchanged up to rounding.)
// Every other real position agrees to rounding (bitwise where the window is the same), and
// each result is the oracle's.
TEST(LocalAttentionMask, TheAmountOfPaddingChangesOnlyWrappedWindows) {
  struct Case {
    bool causal;
    Index before, after, real, t1, t2;
    std::vector<Index> changed_chunks;
  };
  for (const Case& c : std::vector<Case>{{false, 1, 0, 10, 12, 16, {0}},
                                         {false, 1, 1, 10, 12, 16, {0, 2}},
                                         {true, 2, 0, 7, 8, 12, {1}}}) {
    const LocalCore lc(masked_config(2, c.causal, c.before, c.after), kHidden, 6);
    const Matrix<double> x = random_matrix(kHidden, c.real, Rng(9));
    Matrix<double> out[2];
    for (int k = 0; k < 2; ++k) {
      const Index t = k == 0 ? c.t1 : c.t2;
      const AttentionMask mask = AttentionMask::from_lengths({c.real}, t);
      Matrix<double> xn = random_matrix(kHidden, t, Rng(10));
      xn.leftCols(c.real) = x;
      const Context ctx = masked_ctx(1, &mask);
      Matrix<double> a(lc.core.out_features(), t);
      lc.core.forward(lc.params, xn, a, ctx);
      EXPECT_LT(relative_error(a, banded_reference(lc, xn, ctx)), 1e-13);
      out[k] = a.leftCols(c.real);
    }
    for (Index i = 0; i < c.real; ++i) {
      const Index chunk = i / 4;
      const bool changes = std::find(c.changed_chunks.begin(), c.changed_chunks.end(), chunk) !=
                           c.changed_chunks.end();
      if (changes) {
        EXPECT_GT((out[0].col(i) - out[1].col(i)).norm(), 1e-6) << "position " << i;
      } else {
        EXPECT_LE((out[0].col(i) - out[1].col(i)).norm(), 1e-14 * out[0].col(i).norm())
            << "position " << i;
      }
    }
  }
}

TEST(LocalAttentionMask, ResultsAreBitwiseIndependentOfThreadCount) {
  for (bool causal : {true, false}) {
    auto cfg = masked_config(3, causal, 1, causal ? 0 : 1);
    cfg.item_chunks = 1;
    const LocalCore lc(cfg, kHidden);
    const Index t = 30;
    const AttentionMask mask = test_masks(t)[2];
    const Matrix<double> xn = random_matrix(kHidden, 2 * t, Rng(1));
    const Matrix<double> da = random_matrix(lc.core.out_features(), xn.cols(), Rng(2));
    MaskedRun r[2];
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      r[threads - 1] = run(lc, xn, da, masked_ctx(2, &mask));
    }
    EXPECT_EQ(r[0].a, r[1].a);
    EXPECT_EQ(r[0].dx, r[1].dx);
    EXPECT_EQ(r[0].grads, r[1].grads);
  }
  set_num_threads(2);
}

TEST(LocalAttentionMask, WrongShapeOrAllPaddingThrows) {
  LocalCore lc(masked_config(2, true, 1, 0), kHidden);
  const Matrix<double> xn = random_matrix(kHidden, 2 * 8, Rng(1));
  Matrix<double> a(lc.core.out_features(), xn.cols()), dx(kHidden, xn.cols());
  const Matrix<double> da = Matrix<double>::Zero(a.rows(), a.cols());
  const AttentionMask short_mask = AttentionMask::from_lengths({4, 4}, 6);
  const AttentionMask one_sequence = AttentionMask::from_lengths({4}, 8);
  const AttentionMask empty_sequence = AttentionMask::from_lengths({8, 0}, 8);
  EXPECT_TRUE(throws_invalid([&] { lc.core.forward(lc.params, xn, a, masked_ctx(2, &short_mask)); },
                             {"LocalAttention::forward", "2 x 6", "2 x 8"}));
  EXPECT_TRUE(
      throws_invalid([&] { lc.core.forward(lc.params, xn, a, masked_ctx(2, &one_sequence)); },
                     {"LocalAttention::forward", "1 x 8", "2 x 8"}));
  EXPECT_TRUE(
      throws_invalid([&] { lc.core.forward(lc.params, xn, a, masked_ctx(2, &empty_sequence)); },
                     {"LocalAttention::forward", "sequence 1", "all padding"}));
  EXPECT_TRUE(throws_invalid(
      [&] { lc.core.backward(lc.params, xn, da, dx, a, masked_ctx(2, &empty_sequence)); },
      {"LocalAttention::backward", "sequence 1", "all padding"}));
}

}  // namespace
}  // namespace reformer::local_mask_test
