// Your own sublayer in a Reformer: a gated feed-forward (SwiGLU) checked against finite
// differences, stacked with LSH attention in a ReversibleStack, and trained for a few steps.
#include <reformer/reformer.hpp>

#include <cstdio>
#include <string>

using namespace reformer;
using Array = Eigen::ArrayXXd;

// f(x) = Wo (silu(Wg x) .* (Wv x)), D x N -> D x N through F hidden features.
struct GatedFeedForward {
  SlotId wg, wv, wo;
  GatedFeedForward(Index d, Index f, Parameters<double>& p, const std::string& prefix)
      : wg(p.add(prefix + "gate", {f, d})),
        wv(p.add(prefix + "value", {f, d})),
        wo(p.add(prefix + "out", {d, f})) {}
  void init(Parameters<double>& p, const Rng& rng, double std) const {
    for (SlotId s : {wg, wv, wo}) init_normal(p, s, rng.derive(s), std);  // weights ~ N(0, std^2)
  }
  void forward(const Parameters<double>& p, ConstMatrixRef<double> x, MatrixRef<double> y,
               const Context&) const {
    const Array a = (p.value(wg) * x).array(), sig = (1.0 + (-a).exp()).inverse();
    y.noalias() = p.value(wo) * (a * sig * (p.value(wv) * x).array()).matrix();
  }
  // The sublayer contract: dx += J^T dy, parameter gradients +=, y -= f(x).
  void backward(Parameters<double>& p, ConstMatrixRef<double> x, ConstMatrixRef<double> dy,
                MatrixRef<double> dx, MatrixRef<double> y, const Context&) const {
    const Array a = (p.value(wg) * x).array(), b = (p.value(wv) * x).array();
    const Array sig = (1.0 + (-a).exp()).inverse(), silu = a * sig;
    const Matrix<double> h = (silu * b).matrix();                                 // F x N
    const Array dh = (p.value(wo).transpose() * dy).array();                      // dh = Wo^T dy
    const Matrix<double> db = (dh * silu).matrix();                               // d(Wv x)
    const Matrix<double> da = (dh * b * sig * (1.0 + a * (1.0 - sig))).matrix();  // d(Wg x)
    p.grad(wo).noalias() += dy * h.transpose();
    p.grad(wg).noalias() += da * x.transpose();
    p.grad(wv).noalias() += db * x.transpose();
    dx.noalias() += p.value(wg).transpose() * da + p.value(wv).transpose() * db;
    y.noalias() -= p.value(wo) * h;
  }
};

int main() {
  const Index d = 32, n = 128;
  Parameters<double> params;
  ReversibleStack<double> stack;  // two blocks: (LSH attention, gated feed-forward)
  for (Index l = 0; l < 2; ++l) {
    AttentionSublayer<double, LshAttention<double>>::Config att;
    att.hidden_size = d;
    att.core.num_heads = 2;
    att.core.head_size = att.core.chunk_length = 16;
    const std::string prefix = "layers." + std::to_string(l) + ".";
    AttentionSublayer<double, LshAttention<double>> attention(att, params, prefix + "attention.");
    stack.add(attention, GatedFeedForward(d, 64, params, prefix + "gated."));
  }
  stack.init(params, Rng(1), Rng(2), 0.1);

  // 1. The hand-written backward against finite differences.
  const GatedFeedForward& glu = *stack.feed_forward(0).get<GatedFeedForward>();
  Matrix<double> x = Matrix<double>::Random(d, 8), dx(d, 8), fx(d, 8), y(d, 8);
  testing::GradientChecker check(
      [&] {
        glu.forward(params, x, y, Context{});
        return y;
      },
      [&](const Matrix<double>& w) {
        backward_out_of_place(glu, params, x, w, dx, fx, Context{});
      });
  const auto rx = check(x, dx, "x"), rg = check(params.value(glu.wg), params.grad(glu.wg), "gate");
  const bool ok = rx.passed() && rg.passed();
  std::printf("gradcheck %s: max relative error %.1e (x), %.1e (gate)\n", ok ? "passed" : "FAILED",
              rx.max_rel_error, rg.max_rel_error);

  // 2. Train the stack to map a sequence to its reverse (mean squared error), with Adam.
  const Matrix<double> input = Matrix<double>::Random(d, n), target = input.rowwise().reverse();
  Adam<double> adam(params, AdamOptions::adam(3e-3));
  double first = 0, loss = 0;
  Workspace workspace;  // the layers' work buffers, reused from step to step
  for (std::uint64_t step = 0; step < 30; ++step) {
    Context ctx;
    ctx.training = true;
    ctx.workspace = &workspace;
    ctx.step = step;  // new LSH rotations every step
    Matrix<double> x1 = input, x2 = input;
    BucketRecord buckets;
    stack.forward(params, x1, x2, ctx, buckets);
    Matrix<double> dy1 = (x1 + x2 - target) / double(n), dy2 = dy1;  // d loss / d(x1, x2)
    loss = 0.5 * (x1 + x2 - target).squaredNorm() / double(n);
    if (step == 0) first = loss;
    params.zero_grad();
    stack.backward(params, x1, x2, dy1, dy2, ctx, buckets);  // reconstructs, stores nothing
    adam.step(params);
    if (step % 10 == 0) std::printf("step %2d  loss %.4f\n", int(step), loss);
  }
  std::printf("loss %.4f -> %.4f\n", first, loss);
  return ok && loss < first ? 0 : 1;
}
