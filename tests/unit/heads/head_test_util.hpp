#pragma once
// Shared pieces of the head tests: random streams, contexts and gradient checks of a head's loss.
#include "reformer/core/context.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"
#include "reformer/testing/gradcheck.hpp"
#include "support/random.hpp"

#include <gtest/gtest.h>

#include <functional>
#include <string>

namespace reformer::test {

/// A context for B sequences; training with a fixed seed and step (fixed dropout masks).
inline Context head_context(Index batch, bool training) {
  Context ctx;
  ctx.batch = batch;
  ctx.training = training;
  ctx.seed = 11;
  ctx.step = 3;
  return ctx;
}

/// Gradient checks of a scalar loss L(x1, x2, params): `loss()` returns L and `backward(scale,
/// dcat)` writes dcat = d(scale L)/d[x1; x2] and adds d(scale L)/dparams to p.grads().
/// Checks x1, x2 and every parameter slot.
inline void check_head_gradients(Parameters<double>& p, Matrix<double>& x1, Matrix<double>& x2,
                                 const std::function<double()>& loss,
                                 const std::function<void(double, MatrixRef<double>)>& backward,
                                 double tolerance = 1e-7) {
  const Index d = x1.rows(), n = x1.cols();
  Matrix<double> dcat(2 * d, n);
  auto forward = [&] { return Matrix<double>::Constant(1, 1, loss()); };
  auto backward_w = [&](const Matrix<double>& w) {
    p.zero_grad();
    dcat.setConstant(1e300);  // every column must be written
    backward(w(0, 0), dcat);
  };
  testing::GradCheckOptions opts;
  opts.tolerance = tolerance;
  testing::GradientChecker check(forward, backward_w, opts);
  const Matrix<double> dx1 = dcat.topRows(d), dx2 = dcat.bottomRows(d);
  EXPECT_TRUE(check(x1, dx1, "x1")) << check.last();
  EXPECT_TRUE(check(x2, dx2, "x2")) << check.last();
  for (SlotId id = 0; id < p.num_slots(); ++id) {
    const Matrix<double> g = p.grad(id);
    EXPECT_TRUE(check(p.value(id), g, p.slot(id).name)) << check.last();
  }
}

}  // namespace reformer::test
