#pragma once
// A matrix over storage that only grows, for scratch kept across calls (per-thread buffers):
//
//   GrowingMatrix<S> m;
//   m.reshape(dh, cols);   // m.map(): dh x cols, contiguous from the start of the storage
//
// reshape allocates only when the storage holds fewer than rows * cols scalars, so a buffer
// used for shapes of equal or smaller size, in any order (e.g. by layers of different head
// sizes), allocates once. New storage is written (zeros), so its pages are in before a later
// call first uses them. The view's layout depends on its shape only, never on the history of
// the storage (results must not depend on which thread's buffer a work item ran in).
#include "reformer/core/types.hpp"

#include <Eigen/Core>
#include <new>

namespace reformer {

template <class S>
class GrowingMatrix {
 public:
  using MapType = Eigen::Map<Matrix<S>>;

  GrowingMatrix() = default;
  GrowingMatrix(const GrowingMatrix&) = delete;  // the view points into this object's storage
  GrowingMatrix& operator=(const GrowingMatrix&) = delete;

  /// Views rows x cols of the storage (growing it first when it holds fewer scalars). The
  /// viewed values are whatever the storage held: callers write before they read.
  MapType& reshape(Index rows, Index cols) {
    if (storage_.size() < rows * cols) storage_.setZero(rows * cols);
    new (&view_) MapType(storage_.data(), rows, cols);  // re-seats the view (Eigen's idiom)
    return view_;
  }
  /// Grows the storage to hold `scalars` without changing the view's shape.
  void reserve(Index scalars) {
    if (storage_.size() < scalars) {
      storage_.setZero(scalars);
      new (&view_) MapType(storage_.data(), view_.rows(), view_.cols());
    }
  }
  Index capacity() const { return storage_.size(); }

  MapType& map() { return view_; }
  const MapType& map() const { return view_; }

 private:
  Vector<S> storage_;
  MapType view_{nullptr, 0, 0};
};

}  // namespace reformer
