// FeedForward with each activation (relu, gelu, gelu_new, silu): finite-difference gradients of
// the input and every parameter in double, chunked and unchunked.
#include "dense_test_util.hpp"

#include "reformer/layers/feed_forward.hpp"

#include <gtest/gtest.h>

namespace reformer {
namespace {

TEST(FeedForwardActivations, GradientsForEveryActivation) {
  Context ctx;
  ctx.batch = 2;
  for (Activation act :
       {Activation::kRelu, Activation::kGelu, Activation::kGeluNew, Activation::kSilu}) {
    for (Index chunk : {Index{0}, Index{3}}) {
      SCOPED_TRACE(std::string(activation_name(act)) + " chunk " + std::to_string(chunk));
      test::FeedForwardSetup s;
      s.activation = act;
      s.chunk = chunk;
      test::DenseCase<FeedForward<double>> c(test::feed_forward_config(s), 51, 2 * 4, 52);
      test::expect_sublayer_gradients(c.layer, c.params, c.x, ctx);
    }
  }
}

}  // namespace
}  // namespace reformer
