#include "reformer/core/threading.hpp"
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace reformer {
namespace {

TEST(Threading, ParallelForVisitsEveryItemOnce) {
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    std::vector<int> hits(1000, 0);
    parallel_for(1000, [&](Index i) { hits[static_cast<std::size_t>(i)] += 1; });
    for (int h : hits) ASSERT_EQ(h, 1);
  }
}

TEST(Threading, LowestFailingItemIsRethrown) {
  set_num_threads(2);
  try {
    parallel_for(100, [](Index i) {
      if (i % 10 == 3) throw std::runtime_error("item " + std::to_string(i));
    });
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "item 3");
  }
}

TEST(Context, LengthValidatesBatchLayout) {
  Context ctx;
  ctx.batch = 3;
  EXPECT_EQ(ctx.length("f", 12), 4);
  try {
    ctx.length("my_layer", 13);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("my_layer"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("13"), std::string::npos);
  }
}

TEST(Error, CheckShapeNamesArgumentAndValues) {
  try {
    check_shape("linear_forward", "x", 3, 4, 5, -1);
    FAIL();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("linear_forward"), std::string::npos) << msg;
    EXPECT_NE(msg.find("x has shape 3 x 4"), std::string::npos) << msg;
    EXPECT_NE(msg.find("5 x any"), std::string::npos) << msg;
  }
  EXPECT_NO_THROW(check_shape("f", "x", 3, 4, 3, 4));
}

}  // namespace
}  // namespace reformer
