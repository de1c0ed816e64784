// Must NOT compile: a sublayer whose backward has the out-of-place signature of older code
// (dx overwritten, f(x) written to fx: no const, so it is not the contract's member) is put into
// a ReversibleStack. The compiler stops with the contract's message (tests/CMakeLists.txt checks
// it). With REFORMER_COMPILE_FAIL_FIXED the signature is right and the file compiles, which
// shows that the failure comes from the signature alone.
#include "reformer/layers/reversible_stack.hpp"

namespace {

struct ScaleSublayer {
  void init(reformer::Parameters<double>&, const reformer::Rng&, double) const {}
  void forward(const reformer::Parameters<double>&, reformer::ConstMatrixRef<double> x,
               reformer::MatrixRef<double> y, const reformer::Context&) const {
    y = 2.0 * x;
  }
#if defined(REFORMER_COMPILE_FAIL_FIXED)
  void backward(reformer::Parameters<double>&, reformer::ConstMatrixRef<double> x,
                reformer::ConstMatrixRef<double> dy, reformer::MatrixRef<double> dx,
                reformer::MatrixRef<double> y, const reformer::Context&) const {
    dx += 2.0 * dy;
    y -= 2.0 * x;
  }
#else
  void backward(reformer::Parameters<double>&, reformer::ConstMatrixRef<double> x,
                reformer::ConstMatrixRef<double> dy, reformer::MatrixRef<double> dx,
                reformer::MatrixRef<double> fx, const reformer::Context&) {
    dx = 2.0 * dy;
    fx = 2.0 * x;
  }
#endif
};

}  // namespace

int main() {
  reformer::ReversibleStack<double> stack;
  stack.add(ScaleSublayer{}, ScaleSublayer{});
  return static_cast<int>(stack.size()) - 1;
}
