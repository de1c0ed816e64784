#pragma once
// Checking that a call fails with a given error type and a message naming what went wrong.
#include "reformer/core/error.hpp"

#include <gtest/gtest.h>

#include <exception>
#include <string>
#include <vector>

namespace reformer::test {

/// Expects `f()` to throw E whose message contains every one of `needles`.
template <class E = InvalidArgument, class F>
void expect_throw_with(F&& f, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "expected an exception mentioning '" << (needles.empty() ? "" : needles[0])
                  << "', nothing was thrown";
  } catch (const E& e) {
    const std::string what = e.what();
    for (const auto& n : needles) {
      EXPECT_NE(what.find(n), std::string::npos) << "message '" << what << "' lacks '" << n << "'";
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

}  // namespace reformer::test
