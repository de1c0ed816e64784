#pragma once
// Eigen type aliases used across the library.
//
// Activations are D x T column-major matrices: one token is one contiguous column, a chunk of
// tokens is `middleCols(t0, C)`, and a batch of B sequences of equal length T is D x (B*T)
// (sequence b occupies columns [b*T, (b+1)*T)).
//
// Weights keep the Hugging Face / PyTorch layout [out, in] row-major, so a checkpoint tensor is a
// plain memcpy; in Eigen they are RowMajor maps of shape out x in and `W * x` is the product.
#include <Eigen/Core>
#include <cstdint>

namespace reformer {

using Index = Eigen::Index;

template <class S>
using Matrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
template <class S>
using RowMajorMatrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class S>
using Vector = Eigen::Matrix<S, Eigen::Dynamic, 1>;
template <class S>
using RowVector = Eigen::Matrix<S, 1, Eigen::Dynamic>;

/// Writable / read-only views of column-major activations (accept matrices, blocks, maps).
template <class S>
using MatrixRef = Eigen::Ref<Matrix<S>>;
template <class S>
using ConstMatrixRef = Eigen::Ref<const Matrix<S>>;
template <class S>
using VectorRef = Eigen::Ref<Vector<S>>;
template <class S>
using ConstVectorRef = Eigen::Ref<const Vector<S>>;

/// Views of weights in [out, in] row-major layout.
template <class S>
using WeightMap = Eigen::Map<RowMajorMatrix<S>>;
template <class S>
using ConstWeightMap = Eigen::Map<const RowMajorMatrix<S>>;
template <class S>
using WeightRef = Eigen::Ref<RowMajorMatrix<S>>;
template <class S>
using ConstWeightRef = Eigen::Ref<const RowMajorMatrix<S>>;

template <class S>
using VectorMap = Eigen::Map<Vector<S>>;
template <class S>
using ConstVectorMap = Eigen::Map<const Vector<S>>;

}  // namespace reformer
