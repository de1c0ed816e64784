// Learning-rate schedules at known steps; gradient clipping, scaling and accumulation.
#include "reformer/model/clip.hpp"
#include "reformer/model/schedule.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

namespace reformer {
namespace {

TEST(LrSchedule, Constant) {
  const auto s = LrSchedule::constant(3e-4);
  EXPECT_EQ(s.lr(0), 3e-4);
  EXPECT_EQ(s.lr(123456), 3e-4);
  EXPECT_EQ(LrSchedule().lr(7), 1e-3);
}

TEST(LrSchedule, WarmupThenRsqrt) {
  const auto s = LrSchedule::warmup_rsqrt(1.0, 4);
  EXPECT_DOUBLE_EQ(s.lr(0), 0.25);
  EXPECT_DOUBLE_EQ(s.lr(1), 0.5);
  EXPECT_DOUBLE_EQ(s.lr(3), 1.0);    // peak at update 4
  EXPECT_DOUBLE_EQ(s.lr(15), 0.5);   // sqrt(4 / 16)
  EXPECT_DOUBLE_EQ(s.lr(399), 0.1);  // sqrt(4 / 400)
  EXPECT_DOUBLE_EQ(LrSchedule::warmup_rsqrt(2e-3, 100).lr(9999), 2e-4);
}

TEST(LrSchedule, WarmupThenCosine) {
  const auto s = LrSchedule::warmup_cosine(1.0, 2, 10, 0.1);
  EXPECT_DOUBLE_EQ(s.lr(0), 0.5);
  EXPECT_DOUBLE_EQ(s.lr(1), 1.0);
  EXPECT_DOUBLE_EQ(s.lr(5), 0.55);  // halfway through the cosine
  EXPECT_NEAR(s.lr(3), 0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * 2.0 / 8.0)), 1e-15);
  EXPECT_DOUBLE_EQ(s.lr(9), 0.1);
  EXPECT_DOUBLE_EQ(s.lr(1000), 0.1);
  // Monotone after the warmup.
  for (int k = 2; k < 12; ++k) EXPECT_LE(s.lr(k), s.lr(k - 1)) << k;
  const auto no_warmup = LrSchedule::warmup_cosine(1.0, 0, 4);
  EXPECT_DOUBLE_EQ(no_warmup.lr(0), 0.5 * (1 + std::cos(M_PI * 0.25)));
  EXPECT_DOUBLE_EQ(no_warmup.lr(3), 0.0);
}

TEST(LrSchedule, RejectsBadArguments) {
  EXPECT_THROW(LrSchedule::constant(0.0), InvalidArgument);
  EXPECT_THROW(LrSchedule::constant(std::numeric_limits<double>::infinity()), InvalidArgument);
  EXPECT_THROW(LrSchedule::warmup_rsqrt(1.0, 0), InvalidArgument);
  EXPECT_THROW(LrSchedule::warmup_cosine(1.0, -1, 10), InvalidArgument);
  EXPECT_THROW(LrSchedule::warmup_cosine(1.0, 10, 10), InvalidArgument);
  EXPECT_THROW(LrSchedule::warmup_cosine(1.0, 1, 10, 2.0), InvalidArgument);
  try {
    (void)LrSchedule::constant(1.0).lr(-1);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("step = -1"), std::string::npos) << e.what();
  }
}

Parameters<double> grads_3_4_12() {
  Parameters<double> p;
  p.add("a", {2});
  p.add("b", {1});
  p.grads() << 3.0, 4.0, 12.0;  // norm 13
  return p;
}

TEST(Clip, GlobalNormAndClipping) {
  Parameters<double> p = grads_3_4_12();
  EXPECT_DOUBLE_EQ(global_grad_norm(p), 13.0);
  EXPECT_DOUBLE_EQ(clip_grad_norm(p, 100.0), 13.0);  // below the limit: unchanged
  EXPECT_EQ(p.grads()[2], 12.0);
  EXPECT_DOUBLE_EQ(clip_grad_norm(p, 1.3), 13.0);
  const double f = 1.3 / (13.0 + 1e-6);
  EXPECT_DOUBLE_EQ(p.grads()[0], 3.0 * f);
  EXPECT_DOUBLE_EQ(p.grads()[2], 12.0 * f);
  EXPECT_NEAR(global_grad_norm(p), 1.3, 1e-6);

  Parameters<float> q;
  q.add("x", {2});
  q.grads() << 3.0f, 4.0f;
  EXPECT_DOUBLE_EQ(clip_grad_norm(q, 0.5), 5.0);
  EXPECT_NEAR(q.grads().norm(), 0.5f, 1e-6f);
}

TEST(Clip, RefusesNonFiniteGradientsAndBadLimits) {
  Parameters<double> p = grads_3_4_12();
  EXPECT_THROW(clip_grad_norm(p, 0.0), InvalidArgument);
  EXPECT_THROW(clip_grad_norm(p, -1.0), InvalidArgument);
  p.grads()[1] = std::numeric_limits<double>::infinity();
  try {
    clip_grad_norm(p, 1.0);
    FAIL();
  } catch (const InvalidArgument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("gradient of 'a' element 1"), std::string::npos) << what;
  }
  EXPECT_EQ(p.grads()[0], 3.0);  // untouched
  Parameters<double> huge;
  huge.add("h", {2});
  huge.grads().setConstant(1e200);  // finite, but the squared norm overflows
  EXPECT_THROW(clip_grad_norm(huge, 1.0), InvalidArgument);
  EXPECT_THROW(scale_grads(huge, std::nan("")), InvalidArgument);
}

TEST(Clip, AccumulateGradientsAveragesMicroBatches) {
  Parameters<double> p;
  p.add("w", {2});
  p.grads().setConstant(99.0);  // stale gradients are cleared first
  const double loss = accumulate_gradients(p, 4, [&](Index k) {
    p.grads()[0] += static_cast<double>(k + 1);  // 1 + 2 + 3 + 4 = 10
    p.grads()[1] += 2.0;
    return static_cast<double>(k);  // losses 0, 1, 2, 3
  });
  EXPECT_DOUBLE_EQ(loss, 1.5);
  EXPECT_DOUBLE_EQ(p.grads()[0], 2.5);
  EXPECT_DOUBLE_EQ(p.grads()[1], 2.0);
  EXPECT_THROW(accumulate_gradients(p, 0, [](Index) { return 0.0; }), InvalidArgument);
  scale_grads(p, 2.0);
  EXPECT_DOUBLE_EQ(p.grads()[0], 5.0);
}

}  // namespace
}  // namespace reformer
