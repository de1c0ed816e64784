// Element-wise activations of the feed-forward on an F x chunk = 1024 x 512 hidden block:
// elements per second of the scalar oracle (testing/activation_oracle.hpp, one std::erf /
// std::tanh / std::exp per element) against the vectorised forward and backward passes
// (ops/activations.hpp), for float and double. Single-threaded: the kernels are element-wise.
//
// The `*_tail` families time the vectorised passes on inputs whose results lie in the far
// tails, where the exact values fall through the subnormal range (gelu |x| in [13, 14.5] float /
// [37.6, 39.9] double; gelu_new [10.1, 10.6] / [21.2, 21.5]; silu [88, 102] / [709, 744]): the
// kernels return the limits there without computing on subnormal numbers, which x86 runs in
// microcode (ops/detail/activation_packets.hpp). Their rate should match the plain families'.
#include "reformer/ops/activations.hpp"
#include "reformer/testing/activation_oracle.hpp"

#include <benchmark/benchmark.h>

#include <cmath>
#include <string>
#include <type_traits>

namespace {

using namespace reformer;

constexpr Index kRows = 1024;  // F
constexpr Index kCols = 512;   // chunk

template <class S>
Matrix<S> hidden_block() {
  return (Matrix<S>::Random(kRows, kCols) * S(4)).eval();
}

/// The block of hidden_block with every element moved into activation a's subnormal band (sign
/// kept).
template <class S>
Matrix<S> tail_block(Activation a) {
  const bool f = std::is_same_v<S, float>;
  double lo = 0, hi = 0;
  switch (a) {
    case Activation::kGelu:
      lo = f ? 13.0 : 37.6, hi = f ? 14.5 : 39.9;
      break;
    case Activation::kGeluNew:
      lo = f ? 10.1 : 21.2, hi = f ? 10.6 : 21.5;
      break;
    default:
      lo = f ? 88.0 : 709.0, hi = f ? 102.0 : 744.0;
      break;
  }
  const Matrix<S> r = hidden_block<S>() / S(4);  // uniform in [-1, 1]
  return r.unaryExpr([&](S v) {
    const S m = S(lo + (hi - lo) * std::fabs(double(v)));
    return v < 0 ? -m : m;
  });
}

template <class S>
S oracle_value(Activation a, S x) {
  switch (a) {
    case Activation::kGelu:
      return testing::formula::gelu(x);
    case Activation::kGeluNew:
      return testing::formula::gelu_new(x);
    default:
      return testing::formula::silu(x);
  }
}

template <class S>
S oracle_grad(Activation a, S x) {
  switch (a) {
    case Activation::kGelu:
      return testing::formula::gelu_grad(x);
    case Activation::kGeluNew:
      return testing::formula::gelu_new_grad(x);
    default:
      return testing::formula::silu_grad(x);
  }
}

void finish(benchmark::State& state, Activation a) {
  state.SetItemsProcessed(state.iterations() * kRows * kCols);
  state.SetLabel(activation_name(a));
}

template <class S>
void scalar_forward(benchmark::State& state, Activation a) {
  const Matrix<S> x = hidden_block<S>();
  Matrix<S> y(kRows, kCols);
  for (auto _ : state) {
    for (Index k = 0; k < x.size(); ++k) y(k) = oracle_value(a, x(k));
    benchmark::DoNotOptimize(y.data());
  }
  finish(state, a);
}

template <class S>
void scalar_backward(benchmark::State& state, Activation a) {
  const Matrix<S> x = hidden_block<S>(), dy = hidden_block<S>();
  Matrix<S> dx(kRows, kCols);
  for (auto _ : state) {
    for (Index k = 0; k < x.size(); ++k) dx(k) = oracle_grad(a, x(k)) * dy(k);
    benchmark::DoNotOptimize(dx.data());
  }
  finish(state, a);
}

/// The input block of the vectorised families: hidden_block, or its tail band (`tail`).
template <class S>
Matrix<S> vector_input(Activation a, bool tail) {
  return tail ? tail_block<S>(a) : hidden_block<S>();
}

template <class S>
void vector_forward(benchmark::State& state, Activation a, bool tail) {
  const Matrix<S> x = vector_input<S>(a, tail);
  Matrix<S> y(kRows, kCols);
  for (auto _ : state) {
    activation_forward<S>(a, x, y);
    benchmark::DoNotOptimize(y.data());
  }
  finish(state, a);
}

template <class S>
void vector_backward(benchmark::State& state, Activation a, bool tail) {
  const Matrix<S> x = vector_input<S>(a, tail), dy = hidden_block<S>();
  Matrix<S> dx(kRows, kCols);
  for (auto _ : state) {
    activation_backward<S>(a, x, dy, dx);
    benchmark::DoNotOptimize(dx.data());
  }
  finish(state, a);
}

template <class S>
void register_all(const char* type) {
  for (Activation a : {Activation::kGelu, Activation::kGeluNew, Activation::kSilu}) {
    const std::string suffix = std::string("/") + activation_name(a) + "/" + type;
    benchmark::RegisterBenchmark(("activations/scalar_forward" + suffix).c_str(), scalar_forward<S>,
                                 a);
    benchmark::RegisterBenchmark(("activations/vector_forward" + suffix).c_str(), vector_forward<S>,
                                 a, false);
    benchmark::RegisterBenchmark(("activations/scalar_backward" + suffix).c_str(),
                                 scalar_backward<S>, a);
    benchmark::RegisterBenchmark(("activations/vector_backward" + suffix).c_str(),
                                 vector_backward<S>, a, false);
    benchmark::RegisterBenchmark(("activations/vector_forward_tail" + suffix).c_str(),
                                 vector_forward<S>, a, true);
    benchmark::RegisterBenchmark(("activations/vector_backward_tail" + suffix).c_str(),
                                 vector_backward<S>, a, true);
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all<float>("float");
  register_all<double>("double");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
