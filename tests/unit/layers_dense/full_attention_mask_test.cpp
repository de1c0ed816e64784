// FullAttention with key padding (docs/DESIGN.md 7.1): a plain masked reference, finite-difference
// gradients, padding that never leaks (whatever stands there, however much of it), masks with
// holes, thread independence and clear errors.
#include "reformer/core/attention_mask.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/layers/full_attention.hpp"

#include "support/compare.hpp"
#include "support/finite_differences.hpp"
#include "support/random.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <exception>
#include <string>
#include <vector>

namespace reformer::full_mask_test {
namespace {

using test::finite_differences;
using test::gradcheck_error;
using test::random_matrix;
using test::relative_error;

constexpr Index kHidden = 6;

struct Core {
  Parameters<double> params;
  FullAttention<double> core;
  Core(bool causal, Index heads = 2, std::uint64_t seed = 3)
      : core(FullAttentionConfig{heads, 3, causal, 0.0}, kHidden, params, "") {
    core.init(params, Rng(seed), 0.5);
  }
};

Context masked_ctx(Index batch, const AttentionMask* mask) {
  Context ctx;
  ctx.batch = batch;
  ctx.mask = mask;
  return ctx;
}

// Plain masked attention: s_ij = q_i . k_j, -1e9 where j > i (causal) or key j is padding,
// softmax over the keys up to the sequence's last real one (docs/DESIGN.md 7.1).
Matrix<double> reference(const Core& c, const Matrix<double>& xn, Index batch,
                         const AttentionMask& mask) {
  const auto& cfg = c.core.config();
  const Index dh = cfg.head_size, t = xn.cols() / batch;
  const Matrix<double> q = c.params.value(c.core.query_slot()) * xn;
  const Matrix<double> k = c.params.value(c.core.key_slot()) * xn / std::sqrt(double(dh));
  const Matrix<double> v = c.params.value(c.core.value_slot()) * xn;
  Matrix<double> a = Matrix<double>::Zero(cfg.num_heads * dh, xn.cols());
  for (Index b = 0; b < batch; ++b)
    for (Index h = 0; h < cfg.num_heads; ++h)
      for (Index i = 0; i < t; ++i) {
        Index end = t;
        while (!mask.real(b, end - 1)) --end;
        Vector<double> s(end);
        for (Index j = 0; j < end; ++j) {
          s(j) = q.col(b * t + i).segment(h * dh, dh).dot(k.col(b * t + j).segment(h * dh, dh));
          if ((cfg.causal && j > i) || !mask.real(b, j)) s(j) = -1e9;
        }
        const Vector<double> p = (s.array() - s.maxCoeff()).exp().matrix();
        for (Index j = 0; j < end; ++j)
          a.col(b * t + i).segment(h * dh, dh) +=
              p(j) / p.sum() * v.col(b * t + j).segment(h * dh, dh);
      }
  return a;
}

std::vector<AttentionMask> test_masks(Index t) {
  std::vector<int> holes(static_cast<std::size_t>(2 * t), 1);
  for (Index i = 0; i < 2 * t; ++i)
    if (i % 3 == 0 || i % 5 == 2) holes[static_cast<std::size_t>(i)] = 0;
  return {AttentionMask::from_lengths({t, t - 4}, t), AttentionMask::from_flags(holes, 2, t)};
}

struct MaskedRun {
  Matrix<double> a, dx;
  Vector<double> grads;
};

MaskedRun run(const Core& c, const Matrix<double>& xn, const Matrix<double>& da,
              const Context& ctx) {
  MaskedRun r;
  r.a.resize(c.core.out_features(), xn.cols());
  c.core.forward(c.params, xn, r.a, ctx);
  Parameters<double> p = c.params;
  p.zero_grad();
  r.dx = Matrix<double>::Zero(kHidden, xn.cols());
  Matrix<double> ra(da.rows(), da.cols());
  c.core.backward(p, xn, da, r.dx, ra, ctx);
  EXPECT_EQ(ra, r.a);
  r.grads = p.grads();
  return r;
}

TEST(FullAttentionMask, EqualsThePlainMaskedReference) {
  for (bool causal : {true, false}) {
    const Core c(causal);
    const Index t = 9;
    const Matrix<double> xn = random_matrix(kHidden, 2 * t, Rng(4));
    for (const AttentionMask& mask : test_masks(t)) {
      Matrix<double> a(c.core.out_features(), xn.cols());
      c.core.forward(c.params, xn, a, masked_ctx(2, &mask));
      const Matrix<double> ref = reference(c, xn, 2, mask);
      // A padded query with no allowed key: the softmax (exp(s - logsumexp), as HF) gives
      // 1/n only up to the rounding of -1e9 + log n.
      EXPECT_LT(relative_error(a, ref), 1e-7) << causal;
      for (Index i = 0; i < 2 * t; ++i) {
        if (mask.real(i / t, i % t)) {
          EXPECT_LT((a.col(i) - ref.col(i)).norm(), 1e-13 * ref.col(i).norm()) << causal << i;
        }
      }
    }
  }
}

TEST(FullAttentionMask, MatchesFiniteDifferences) {
  for (bool causal : {true, false}) {
    for (const AttentionMask& mask : test_masks(7)) {
      Core c(causal);
      const Context ctx = masked_ctx(2, &mask);
      Matrix<double> xn = random_matrix(kHidden, 14, Rng(5));
      const Matrix<double> g = random_matrix(c.core.out_features(), 14, Rng(6));
      auto loss = [&] {
        Matrix<double> a(g.rows(), g.cols());
        c.core.forward(c.params, xn, a, ctx);
        return (a.array() * g.array()).sum();
      };
      c.params.zero_grad();
      Matrix<double> dx = Matrix<double>::Zero(kHidden, 14), a(g.rows(), g.cols());
      c.core.backward(c.params, xn, g, dx, a, ctx);
      EXPECT_LT(gradcheck_error(dx, finite_differences(xn, loss)), 1e-6) << causal;
      for (SlotId id : {c.core.query_slot(), c.core.key_slot(), c.core.value_slot()}) {
        Matrix<double> w = c.params.value(id);
        auto loss_w = [&] {
          c.params.value(id) = w;
          return loss();
        };
        const Matrix<double> fd = finite_differences(w, loss_w);
        c.params.value(id) = w;
        EXPECT_LT(gradcheck_error(c.params.grad(id), fd), 1e-6) << causal;
      }
    }
  }
}

// Whatever stands at padded positions, the real positions' outputs and gradients are bitwise
// the same (upstream gradient zero at padding); appending padding leaves their outputs and input
// gradients bitwise the same, and the weight gradients up to their summation order.
TEST(FullAttentionMask, PaddingNeverLeaks) {
  for (bool causal : {true, false}) {
    const Core c(causal);
    const Index t = 11;
    for (const AttentionMask& mask : test_masks(t)) {
      Matrix<double> xn = random_matrix(kHidden, 2 * t, Rng(7));
      Matrix<double> da = random_matrix(c.core.out_features(), 2 * t, Rng(8));
      Matrix<double> other = xn;
      for (Index i = 0; i < 2 * t; ++i)
        if (!mask.real(i / t, i % t)) {
          da.col(i).setZero();
          other.col(i) = random_matrix(kHidden, 1, Rng(50 + i), 30.0);
        }
      const MaskedRun r1 = run(c, xn, da, masked_ctx(2, &mask)),
                      r2 = run(c, other, da, masked_ctx(2, &mask));
      for (Index i = 0; i < 2 * t; ++i) {
        if (!mask.real(i / t, i % t)) continue;
        EXPECT_EQ(r1.a.col(i), r2.a.col(i)) << causal << " column " << i;
        EXPECT_EQ(r1.dx.col(i), r2.dx.col(i)) << causal << " column " << i;
      }
      EXPECT_EQ(r1.grads, r2.grads) << causal;
    }
  }
}

TEST(FullAttentionMask, AppendingPaddingChangesNothing) {
  for (bool causal : {true, false}) {
    const Core c(causal);
    const Index real = 7;
    const Matrix<double> x = random_matrix(kHidden, real, Rng(9));
    const Matrix<double> g = random_matrix(c.core.out_features(), real, Rng(10));
    MaskedRun first;
    for (Index t : {8, 13, 40}) {
      const AttentionMask mask = AttentionMask::from_lengths({real}, t);
      Matrix<double> xn = random_matrix(kHidden, t, Rng(static_cast<std::uint64_t>(t)));
      xn.leftCols(real) = x;
      Matrix<double> da = Matrix<double>::Zero(g.rows(), t);
      da.leftCols(real) = g;
      MaskedRun r = run(c, xn, da, masked_ctx(1, &mask));
      r.a = r.a.leftCols(real).eval();
      r.dx = r.dx.leftCols(real).eval();
      if (t == 8) {
        first = r;
        continue;
      }
      EXPECT_EQ(r.a, first.a) << causal << " T " << t;
      EXPECT_EQ(r.dx, first.dx) << causal << " T " << t;
      // The weight gradients sum over all N columns (the padded ones contribute exact zeros)
      // in blocks that depend on N: equal up to that summation order.
      EXPECT_LT(relative_error(r.grads, first.grads), 1e-14) << causal << " T " << t;
    }
  }
}

TEST(FullAttentionMask, BitwiseIdenticalForAnyThreadCount) {
  const Core c(true, 3);
  const Index t = 70;  // several query panels
  const AttentionMask mask = test_masks(t)[1];
  const Matrix<double> xn = random_matrix(kHidden, 2 * t, Rng(1));
  const Matrix<double> da = random_matrix(c.core.out_features(), 2 * t, Rng(2));
  MaskedRun r[2];
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    r[threads - 1] = run(c, xn, da, masked_ctx(2, &mask));
  }
  EXPECT_EQ(r[0].a, r[1].a);
  EXPECT_EQ(r[0].dx, r[1].dx);
  EXPECT_EQ(r[0].grads, r[1].grads);
  set_num_threads(2);
}

TEST(FullAttentionMask, WrongShapeOrAllPaddingThrows) {
  const Core c(false);
  const Matrix<double> xn = random_matrix(kHidden, 10, Rng(1));
  Matrix<double> a(c.core.out_features(), 10);
  auto message = [&](const AttentionMask& m) -> std::string {
    try {
      c.core.forward(c.params, xn, a, masked_ctx(2, &m));
    } catch (const InvalidArgument& e) {
      return e.what();
    } catch (const std::exception& e) {
      return std::string("wrong type: ") + e.what();
    }
    return "no exception";
  };
  const std::string shape = message(AttentionMask::from_lengths({4, 4}, 4));
  EXPECT_NE(shape.find("FullAttention::forward"), std::string::npos) << shape;
  EXPECT_NE(shape.find("2 x 4"), std::string::npos) << shape;
  const std::string empty = message(AttentionMask::from_lengths({0, 5}, 5));
  EXPECT_NE(empty.find("sequence 0"), std::string::npos) << empty;
  EXPECT_NE(empty.find("all padding"), std::string::npos) << empty;
}

}  // namespace
}  // namespace reformer::full_mask_test
