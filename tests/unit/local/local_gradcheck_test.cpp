// Finite-difference gradient checks (double) of the LocalAttention core's hand-written backward:
// input and every weight, causal / non-causal, H in {1, 3}, T a multiple of C or not, with and
// without attention-probability dropout (a fixed training context), with circular windows that
// hold a chunk twice, and with key padding (valid lengths or a mask with holes).
#include "reformer/layers/local_attention.hpp"

#include "local_test_util.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace reformer {
namespace {

using test::finite_differences;
using test::gradcheck_error;
using test::LocalCore;
using test::random_matrix;

struct GradCase {
  bool causal;
  Index heads, t, after, item_chunks;
  double dropout;
  Index before = 1;
  std::vector<int> flags = {};  // batch x t key flags; empty = no mask
};

std::string describe(const GradCase& c) {
  return std::string(c.causal ? "causal" : "non-causal") + " H=" + std::to_string(c.heads) +
         " T=" + std::to_string(c.t) + " after=" + std::to_string(c.after) +
         " item_chunks=" + std::to_string(c.item_chunks) + " dropout=" + std::to_string(c.dropout) +
         " before=" + std::to_string(c.before) + (c.flags.empty() ? "" : " masked");
}

TEST(LocalAttentionGrad, MatchesFiniteDifferences) {
  const Index hidden = 4, batch = 2;
  const std::vector<GradCase> cases = {
      {true, 1, 8, 0, 0, 0.0},
      {true, 3, 7, 0, 1, 0.0},
      {false, 1, 7, 1, 0, 0.0},
      {false, 3, 8, 1, 1, 0.0},
      {true, 3, 10, 0, 2, 0.3},
      {false, 1, 10, 1, 1, 0.3},
      {true, 1, 3, 0, 0, 0.2},
      // a chunk twice in the window (two chunks, before 2)
      {true, 3, 8, 0, 0, 0.0, 2},
      {false, 1, 8, 2, 1, 0.0, 2},
      // key padding: lengths 8 and 5, then holes
      {false, 3, 8, 1, 0, 0.0, 1, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0}},
      {true, 1, 8, 0, 1, 0.2, 1, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0}},
      {false, 1, 7, 1, 0, 0.0, 1, {1, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0}},
      {true, 3, 3, 0, 0, 0.0, 1, {0, 1, 0, 1, 1, 0}}};
  for (const auto& c : cases) {
    LocalAttentionConfig cfg;
    cfg.num_heads = c.heads;
    cfg.head_size = 2;
    cfg.chunk_length = 4;
    cfg.chunks_before = c.before;
    cfg.chunks_after = c.after;
    cfg.causal = c.causal;
    cfg.dropout = c.dropout;
    cfg.item_chunks = c.item_chunks;
    LocalCore lc(cfg, hidden, 3);
    Context ctx;
    ctx.batch = batch;
    ctx.training = c.dropout > 0;
    ctx.seed = 17;
    const AttentionMask mask =
        c.flags.empty() ? AttentionMask() : AttentionMask::from_flags(c.flags, batch, c.t);
    ctx.mask = &mask;
    Matrix<double> xn = random_matrix(hidden, batch * c.t, Rng(5));
    const Matrix<double> g = random_matrix(lc.core.out_features(), xn.cols(), Rng(6));

    // Loss L = sum(g .* a(xn, W)).
    auto loss = [&]() {
      Matrix<double> a(lc.core.out_features(), xn.cols());
      lc.core.forward(lc.params, xn, a, ctx);
      return (a.array() * g.array()).sum();
    };
    lc.params.zero_grad();
    Matrix<double> dxn(hidden, xn.cols()), a(g.rows(), g.cols());
    dxn.setZero();  // the core adds its gradient
    lc.core.backward(lc.params, xn, g, dxn, a, ctx);

    EXPECT_LT(gradcheck_error(dxn, finite_differences(xn, loss)), 1e-6) << describe(c);
    for (SlotId id : {lc.core.query_slot(), lc.core.key_slot(), lc.core.value_slot()}) {
      const auto& slot = lc.params.slot(id);
      Matrix<double> w = lc.params.value(id);  // row-major copy as a column-major matrix
      auto loss_w = [&]() {
        lc.params.value(id) = w;
        return loss();
      };
      const Matrix<double> fd = finite_differences(w, loss_w);
      lc.params.value(id) = w;
      const Matrix<double> analytic = lc.params.grad(id);
      EXPECT_LT(gradcheck_error(analytic, fd), 1e-6) << describe(c) << " " << slot.name;
      EXPECT_GT(analytic.norm(), 1e-6) << describe(c) << " " << slot.name;
    }
  }
}

}  // namespace
}  // namespace reformer
