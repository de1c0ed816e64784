#pragma once
// What a sublayer's forward pass may keep for its backward pass, so the backward does not
// recompute it (the optional part of the sublayer contract, sublayer.hpp).
//
// A reversible backward recomputes every sublayer's forward from its reconstructed input: for
// the feed-forward that is a quarter of its arithmetic. When memory allows, a sublayer that
// supports it keeps its intermediates instead (the feed-forward: its LayerNorm output, hidden
// activations and output). KeptActivations is the bag it keeps them in: numbered matrices that
// keep their memory across passes of the same shape, so a steady state allocates nothing. The
// memory comes from the bag's own Workspace (core/workspace.hpp): huge-page regions, mapped once.
//
//   kept.matrix(0, d, n)  ->  d x n, uninitialised the first time, reused afterwards
//   kept.filled           ->  set by the forward that filled it, cleared by the backward that
//                             consumed it (a backward may overwrite what it consumes)
#include "reformer/core/error.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"

#include <cstddef>
#include <memory>
#include <vector>

namespace reformer {

template <class S>
class KeptActivations {
 public:
  KeptActivations() = default;
  KeptActivations(const KeptActivations& other) { *this = other; }
  KeptActivations& operator=(const KeptActivations& other) {
    if (this != &other) {
      release();
      for (std::size_t i = 0; i < other.matrices_.size(); ++i) {
        const auto& m = other.matrices_[i];
        matrix(i, m.rows(), m.cols()) = m.map();
      }
      filled = other.filled;
    }
    return *this;
  }
  KeptActivations(KeptActivations&&) noexcept = default;
  KeptActivations& operator=(KeptActivations&& other) noexcept {
    if (this != &other) {
      matrices_ = std::move(other.matrices_);  // its blocks go back before its workspace may go
      workspace_ = std::move(other.workspace_);
      filled = other.filled;
    }
    return *this;
  }

  /// Matrix i, resized to rows x cols (its memory is kept when the shape is unchanged).
  MatrixRef<S> matrix(std::size_t i, Index rows, Index cols) {
    if (matrices_.size() <= i) matrices_.resize(i + 1);
    Scratch<S>& m = matrices_[i];
    if (m.rows() != rows || m.cols() != cols) {
      if (workspace_ == nullptr) workspace_ = std::make_unique<Workspace>();
      m.resize(workspace_.get(), rows, cols);
    }
    return m.map();
  }

  /// Matrix i as the forward left it; InvalidArgument naming `where` when it is not rows x cols.
  MatrixRef<S> kept(const char* where, std::size_t i, Index rows, Index cols) {
    REFORMER_REQUIRE(i < matrices_.size(), InvalidArgument, where, "kept activations hold ",
                     matrices_.size(), " matrices, matrix ", i, " was asked for");
    check_shape(where, "kept matrix", matrices_[i].rows(), matrices_[i].cols(), rows, cols);
    return matrices_[i].map();
  }

  /// Bytes held by the matrices.
  std::size_t bytes_held() const {
    std::size_t n = 0;
    for (const auto& m : matrices_) n += static_cast<std::size_t>(m.rows() * m.cols());
    return n * sizeof(S);
  }

  /// Gives the memory back to the system.
  void release() {
    matrices_.clear();
    matrices_.shrink_to_fit();
    workspace_.reset();
    filled = false;
  }

  /// True between the forward that filled the matrices and the backward that consumes them.
  bool filled = false;

 private:
  std::unique_ptr<Workspace> workspace_;  // outlives the blocks of matrices_
  std::vector<Scratch<S>> matrices_;
};

}  // namespace reformer
