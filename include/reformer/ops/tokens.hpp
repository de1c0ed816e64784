#pragma once
// TokenSpan: a read-only view of contiguous int32 token ids (or targets), so the ops accept a
// std::vector, an Eigen integer vector or a raw pointer without copying.
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"

#include <Eigen/Core>
#include <cstdint>
#include <vector>

namespace reformer {

/// Token id type (also the bucket type of the LSH tape).
using Token = std::int32_t;

/// A non-owning view of `size` contiguous token ids. The viewed memory must outlive the span.
class TokenSpan {
 public:
  TokenSpan() = default;
  TokenSpan(const Token* data, Index size) : data_(data), size_(size) {
    REFORMER_REQUIRE(size >= 0 && (data != nullptr || size == 0), InvalidArgument, "TokenSpan",
                     "size = ", size, " with ", data == nullptr ? "a null" : "a non-null",
                     " pointer");
  }
  TokenSpan(const std::vector<Token>& v)  // NOLINT(google-explicit-constructor): a view
      : data_(v.data()), size_(static_cast<Index>(v.size())) {}
  template <int Rows, int Options, int MaxRows>
  TokenSpan(const Eigen::Matrix<Token, Rows, 1, Options, MaxRows, 1>& v)  // NOLINT: a view
      : data_(v.data()), size_(v.size()) {}

  const Token* data() const { return data_; }
  Index size() const { return size_; }
  bool empty() const { return size_ == 0; }
  Token operator[](Index i) const {
    REFORMER_ASSERT(i >= 0 && i < size_);
    return data_[i];
  }
  const Token* begin() const { return data_; }
  const Token* end() const { return data_ + size_; }

  /// The `count` ids starting at `offset`.
  TokenSpan subspan(Index offset, Index count) const {
    REFORMER_REQUIRE(offset >= 0 && count >= 0 && offset + count <= size_, InvalidArgument,
                     "TokenSpan::subspan", "offset = ", offset, ", count = ", count,
                     " exceed size = ", size_);
    return TokenSpan(data_ + offset, count);
  }

 private:
  const Token* data_ = nullptr;
  Index size_ = 0;
};

}  // namespace reformer
