// The attention sublayer applies its LayerNorm inside the cores' head projections, block by block
// (layers/projection_input.hpp), instead of forming xn = LN(x) and its gradient whole. Checked
// against the unfused computation, written out here with the cores' plain-input path: xn =
// layer_norm_forward(x), the cores on xn, dxn summed over the head groups, then
// layer_norm_backward. Also: bitwise identical for 1 and 2 threads, and a steady state that maps
// no new workspace memory.
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"
#include "reformer/layers/attention_sublayer.hpp"
#include "reformer/layers/full_attention.hpp"
#include "reformer/layers/head_range.hpp"
#include "reformer/layers/local_attention.hpp"
#include "reformer/layers/lsh_attention.hpp"
#include "reformer/layers/projection_input.hpp"
#include "reformer/ops/dropout.hpp"
#include "reformer/ops/layer_norm.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

namespace reformer::test::attention_fusion {

// Five heads: with one per group the forward adds their outputs to y in three products (2 + 2 + 1).
constexpr Index kHidden = 8, kHeads = 5, kHeadSize = 4;

template <class Core>
using Layer = AttentionSublayer<double, Core>;

template <class Core>
constexpr bool kIsLsh = std::is_same_v<Core, LshAttention<double>>;

/// One configuration of a test run.
struct Case {
  Index batch = 1, length = 300;  // N = 300 tokens: blocks of 256 and 44 columns
  bool causal = true;
  double dropout = 0.0;       // attention-probability and output dropout
  Index heads_per_group = 1;  // 1, 2 (groups of 2, 2 and 1) or 5
  Index rounds = 1;           // LSH hash rounds

  Index tokens() const { return batch * length; }
  std::string name() const {
    return "batch " + std::to_string(batch) + ", T " + std::to_string(length) +
           (causal ? ", causal" : ", bidirectional") + ", dropout " + std::to_string(dropout) +
           ", heads per group " + std::to_string(heads_per_group) + ", rounds " +
           std::to_string(rounds);
  }
};

template <class Core>
typename Layer<Core>::Config make_config(const Case& c) {
  typename Layer<Core>::Config cfg;
  cfg.hidden_size = kHidden;
  cfg.layer_norm_eps = 1e-5;
  cfg.output_dropout = c.dropout;
  cfg.head_group_scalars = c.heads_per_group * kHeadSize * c.tokens();
  cfg.core.num_heads = kHeads;
  cfg.core.head_size = kHeadSize;
  cfg.core.causal = c.causal;
  cfg.core.dropout = c.dropout;
  if constexpr (!std::is_same_v<Core, FullAttention<double>>) cfg.core.chunk_length = 8;
  if constexpr (kIsLsh<Core>) {
    cfg.core.num_hashes = c.rounds;
    cfg.core.num_buckets = {8};
  }
  return cfg;
}

Matrix<double> random_input(Index rows, Index cols, std::uint64_t seed, double scale = 1.0) {
  const Rng rng(seed);
  Matrix<double> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) {
    m.data()[i] = scale * rng.normal(static_cast<std::uint64_t>(i));
  }
  return m;
}

/// A sublayer with every parameter drawn normal(0, 0.5) (the LayerNorm's included) and a
/// training context recording its LSH buckets into `tape`.
template <class Core>
struct Setup {
  Parameters<double> params;
  Layer<Core> layer;
  BucketTape tape;
  Context ctx;

  explicit Setup(const Case& c) : layer(make_config<Core>(c), params) {
    const Rng rng(5);
    for (Index i = 0; i < params.size(); ++i) {
      params.values()[i] = 0.5 * rng.normal(static_cast<std::uint64_t>(i));
    }
    ctx.batch = c.batch;
    ctx.training = true;
    ctx.seed = 17;
    ctx.step = 2;
    ctx.layer = 1;
    ctx.buckets = &tape;
  }
};

/// What a forward and backward call produce.
struct Result {
  Matrix<double> y;        // f(x)
  Matrix<double> dx;       // dx0 + J^T dy
  Matrix<double> y_after;  // y0 - f(x), backward's in-place update
  Vector<double> grads;    // every parameter gradient
};

/// The sublayer itself (LayerNorm fused into the projections), its buffers from `ws`.
template <class Core>
Result run_fused(Setup<Core>& s, const Matrix<double>& x, const Matrix<double>& dy,
                 const Matrix<double>& dx0, const Matrix<double>& y0, Workspace* ws) {
  Result r;
  Context ctx = s.ctx;
  ctx.workspace = ws;
  ctx.replay_buckets = false;
  r.y.resize(x.rows(), x.cols());
  s.layer.forward(s.params, x, r.y, ctx);
  ctx.replay_buckets = true;
  s.params.zero_grad();
  r.dx = dx0;
  r.y_after = y0;
  s.layer.backward(s.params, x, dy, r.dx, r.y_after, ctx);
  r.grads = s.params.grads();
  return r;
}

/// The unfused computation: xn = LN(x) whole, the cores on the plain input xn, head group by
/// head group as the sublayer streams them, then the LayerNorm backward of the summed dxn.
/// Replays the buckets the fused run recorded.
template <class Core>
Result run_unfused(Setup<Core>& s, const Matrix<double>& x, const Matrix<double>& dy,
                   const Matrix<double>& dx0, const Matrix<double>& y0) {
  const auto& cfg = s.layer.config();
  const Core& core = s.layer.core();
  Parameters<double>& params = s.params;
  Context ctx = s.ctx;
  ctx.replay_buckets = true;
  const Index n = x.cols(), dh = kHeadSize, g = s.layer.heads_per_group(n);
  const auto gamma = params.value_vector(s.layer.layer_norm_weight_slot());
  const auto beta = params.value_vector(s.layer.layer_norm_bias_slot());
  const Rng out_rng = ctx.rng(stream::kAttentionOutputDropout);
  auto groups = [&](auto&& f) {
    for (Index h0 = 0; h0 < kHeads; h0 += g) f(HeadRange{h0, std::min(g, kHeads - h0)});
  };
  auto w_o = [&](HeadRange heads) {
    return params.value(s.layer.output_weight_slot())
        .middleCols(heads.first * dh, heads.count * dh);
  };

  Result r;
  Matrix<double> xn(kHidden, n);
  layer_norm_forward<double>(x, gamma, beta, cfg.layer_norm_eps, xn);
  r.y = Matrix<double>::Zero(kHidden, n);
  groups([&](HeadRange heads) {
    Matrix<double> a(heads.count * dh, n);
    core.forward(params, xn, a, ctx, heads);
    r.y += w_o(heads) * a;
  });
  dropout_parallel<double>(out_rng, cfg.output_dropout, 0, r.y, r.y);

  params.zero_grad();
  Matrix<double> dz(kHidden, n), z = Matrix<double>::Zero(kHidden, n);
  dropout_parallel<double>(out_rng, cfg.output_dropout, 0, dy, dz);
  Matrix<double> dxn = Matrix<double>::Zero(kHidden, n);
  groups([&](HeadRange heads) {
    Matrix<double> da = w_o(heads).transpose() * dz, a(heads.count * dh, n);
    core.backward(params, xn, da, dxn, a, ctx, heads);
    params.grad(s.layer.output_weight_slot()).middleCols(heads.first * dh, heads.count * dh) +=
        dz * a.transpose();
    z += w_o(heads) * a;
  });
  dropout_parallel<double>(out_rng, cfg.output_dropout, 0, z, z);
  r.y_after = y0 - z;
  Matrix<double> dx_ln(kHidden, n);
  layer_norm_backward<double>(x, gamma, cfg.layer_norm_eps, dxn, dx_ln,
                              params.grad_vector(s.layer.layer_norm_weight_slot()),
                              params.grad_vector(s.layer.layer_norm_bias_slot()));
  r.dx = dx0 + dx_ln;
  r.grads = params.grads();
  return r;
}

bool same_bits(const Matrix<double>& a, const Matrix<double>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(double) * static_cast<std::size_t>(a.size())) == 0;
}

template <class Core>
std::vector<Case> cases() {
  std::vector<Case> out;
  const std::vector<Index> rounds = kIsLsh<Core> ? std::vector<Index>{1, 2} : std::vector<Index>{1};
  for (const Index r : rounds) {
    Case c;
    c.rounds = r;
    out.push_back(c);  // batch 1, causal, no dropout, one head per group
    c.batch = 2;
    c.length = 150;
    c.dropout = 0.1;
    c.heads_per_group = 2;  // groups of two, two and one heads
    out.push_back(c);
    c.causal = false;
    c.dropout = 0.0;
    c.heads_per_group = kHeads;
    out.push_back(c);
    c.batch = 1;
    c.length = 300;
    c.causal = true;
    c.dropout = 0.2;
    c.heads_per_group = 1;
    out.push_back(c);
  }
  return out;
}

template <class Core>
class AttentionFusion : public ::testing::Test {};
using Cores = ::testing::Types<FullAttention<double>, LocalAttention<double>, LshAttention<double>>;
TYPED_TEST_SUITE(AttentionFusion, Cores);

TYPED_TEST(AttentionFusion, MatchesLayerNormThenPlainCores) {
  for (const Case& c : cases<TypeParam>()) {
    SCOPED_TRACE(c.name());
    const Index n = c.tokens();
    const Matrix<double> x = random_input(kHidden, n, 1, 2.0);
    const Matrix<double> dy = random_input(kHidden, n, 2);
    const Matrix<double> dx0 = random_input(kHidden, n, 3);
    const Matrix<double> y0 = random_input(kHidden, n, 4);
    Setup<TypeParam> s(c);
    ASSERT_EQ(s.layer.heads_per_group(n), c.heads_per_group);
    Workspace ws;
    const Result fused = run_fused(s, x, dy, dx0, y0, &ws);
    const Result plain = run_unfused(s, x, dy, dx0, y0);
    EXPECT_LT(relative_error(fused.y, plain.y), 1e-12);
    EXPECT_LT(relative_error(fused.dx - dx0, plain.dx - dx0), 1e-12);
    EXPECT_LT(relative_error(fused.y_after, plain.y_after), 1e-12);
    EXPECT_LT(relative_error(fused.grads, plain.grads), 1e-12);
    // Every parameter slot on its own (the LayerNorm's included) and not trivially 0.
    for (SlotId id = 0; id < s.params.num_slots(); ++id) {
      const ParamSlot& slot = s.params.slot(id);
      const Index off = slot.offset, size = slot.size;
      SCOPED_TRACE(slot.name);
      EXPECT_LT(relative_error(fused.grads.segment(off, size), plain.grads.segment(off, size)),
                1e-12);
      EXPECT_GT(plain.grads.segment(off, size).cwiseAbs().maxCoeff(), 1e-6);
    }
    EXPECT_EQ(ws.stats().in_use_bytes, 0u) << "every scratch buffer went back to the workspace";
  }
}

// Without a workspace the buffers come from the heap, with the same results bitwise.
TYPED_TEST(AttentionFusion, WorkspaceDoesNotChangeResults) {
  Case c;
  c.batch = 2;
  c.length = 150;
  c.dropout = 0.1;
  c.heads_per_group = 2;
  c.rounds = 2;
  const Index n = c.tokens();
  const Matrix<double> x = random_input(kHidden, n, 11);
  const Matrix<double> dy = random_input(kHidden, n, 12);
  const Matrix<double> zero = Matrix<double>::Zero(kHidden, n);
  Setup<TypeParam> s(c);
  Workspace ws;
  const Result with = run_fused(s, x, dy, zero, zero, &ws);
  const Result without = run_fused(s, x, dy, zero, zero, nullptr);
  EXPECT_TRUE(same_bits(with.y, without.y));
  EXPECT_TRUE(same_bits(with.dx, without.dx));
  EXPECT_TRUE(same_bits(with.y_after, without.y_after));
  EXPECT_TRUE(bitwise_equal(with.grads, without.grads));
}

// Spans of one and two LayerNorm blocks (N = 2600: 11 blocks of 256 columns in 8 spans), two
// sequences, head groups of two, two and one, dropout: bitwise the same for 1 and 2 threads. Then a
// steady state: the same call again maps no new workspace memory.
TYPED_TEST(AttentionFusion, ThreadIndependentAndSteadyState) {
  Case c;
  c.batch = 2;
  c.length = 1300;
  c.dropout = 0.1;
  c.heads_per_group = 2;
  c.rounds = 2;
  const Index n = c.tokens();
  const Matrix<double> x = random_input(kHidden, n, 21);
  const Matrix<double> dy = random_input(kHidden, n, 22);
  const Matrix<double> dx0 = random_input(kHidden, n, 23);
  const Matrix<double> y0 = random_input(kHidden, n, 24);
  Setup<TypeParam> s(c);
  const int saved = num_threads();
  Workspace ws;
  set_num_threads(1);
  const Result one = run_fused(s, x, dy, dx0, y0, &ws);
  const std::size_t mappings = ws.stats().mappings;
  EXPECT_GT(mappings, 0u) << "the large buffers come from the workspace";
  const Result again = run_fused(s, x, dy, dx0, y0, &ws);
  EXPECT_EQ(ws.stats().mappings, mappings) << "a steady state maps no new memory";
  set_num_threads(2);
  const Result two = run_fused(s, x, dy, dx0, y0, &ws);
  set_num_threads(saved);
  EXPECT_TRUE(same_bits(one.y, again.y));
  EXPECT_TRUE(same_bits(one.y, two.y));
  EXPECT_TRUE(same_bits(one.dx, two.dx));
  EXPECT_TRUE(same_bits(one.y_after, two.y_after));
  EXPECT_TRUE(bitwise_equal(one.grads, two.grads));
  // And still the unfused result, to rounding.
  const Result plain = run_unfused(s, x, dy, dx0, y0);
  EXPECT_LT(relative_error(one.y, plain.y), 1e-12);
  EXPECT_LT(relative_error(one.dx - dx0, plain.dx - dx0), 1e-12);
  EXPECT_LT(relative_error(one.grads, plain.grads), 1e-12);
}

// The cores on their own: a LayerNorm input gives the plain input's results (forward, the
// buckets compute_buckets draws, and the gradients through the LayerNorm), and one carrying x's
// statistics (as the sublayer passes it) bitwise the LayerNorm input's; a gradient of the wrong
// form, and statistics on a plain input or of the wrong width, are rejected.
TYPED_TEST(AttentionFusion, CoresAcceptEveryInputForm) {
  Case c;
  c.batch = 2;
  c.length = 150;
  c.rounds = 2;
  const Index n = c.tokens(), rows = kHeads * kHeadSize;
  Setup<TypeParam> s(c);
  const TypeParam& core = s.layer.core();
  const Matrix<double> x = random_input(kHidden, n, 31, 3.0);
  const Matrix<double> da = random_input(rows, n, 32);
  const auto gamma = s.params.value_vector(s.layer.layer_norm_weight_slot());
  const auto beta = s.params.value_vector(s.layer.layer_norm_bias_slot());
  const double eps = s.layer.config().layer_norm_eps;
  Matrix<double> xn(kHidden, n);
  layer_norm_forward<double>(x, gamma, beta, eps, xn);
  const ProjectionInput<double> fused(x, gamma, beta, eps);

  Context ctx = s.ctx;
  Matrix<double> a_plain(rows, n), a_fused(rows, n);
  core.forward(s.params, xn, a_plain, ctx);
  ctx.replay_buckets = true;
  core.forward(s.params, fused, a_fused, ctx);
  EXPECT_LT(relative_error(a_fused, a_plain), 1e-12);
  if constexpr (kIsLsh<TypeParam>) {
    BucketTape plain_tape, fused_tape;
    core.compute_buckets(s.params, xn, ctx, plain_tape);
    core.compute_buckets(s.params, fused, ctx, fused_tape);
    EXPECT_EQ(fused_tape.data, plain_tape.data);
    EXPECT_EQ(fused_tape.data, s.tape.data);
  }

  Matrix<double> dxn = Matrix<double>::Zero(kHidden, n), dx_plain(kHidden, n);
  Vector<double> dgamma_plain = Vector<double>::Zero(kHidden), dbeta_plain = dgamma_plain;
  s.params.zero_grad();
  core.backward(s.params, xn, da, dxn, a_plain, ctx);
  const Vector<double> core_grads_plain = s.params.grads();
  layer_norm_backward<double>(x, gamma, eps, dxn, dx_plain, dgamma_plain, dbeta_plain);

  Matrix<double> dx_fused = Matrix<double>::Zero(kHidden, n);
  Vector<double> dgamma_fused = Vector<double>::Zero(kHidden), dbeta_fused = dgamma_fused;
  s.params.zero_grad();
  core.backward(s.params, fused, da,
                ProjectionInputGrad<double>(dx_fused, dgamma_fused, dbeta_fused), a_fused, ctx);
  EXPECT_LT(relative_error(a_fused, a_plain), 1e-12);
  EXPECT_LT(relative_error(dx_fused, dx_plain), 1e-12);
  EXPECT_LT(relative_error(dgamma_fused, dgamma_plain), 1e-12);
  EXPECT_LT(relative_error(dbeta_fused, dbeta_plain), 1e-12);
  EXPECT_LT(relative_error(s.params.grads(), core_grads_plain), 1e-12);

  Matrix<double> stats(2, n), padded_stats = Matrix<double>::Constant(3, n, 1e3);
  layer_norm_statistics<double>(x, eps, stats);
  padded_stats.topRows(2) = stats;  // a view whose columns are 3 scalars apart
  ProjectionInput<double> with_stats(x, gamma, beta, eps);
  with_stats.use_statistics(padded_stats.topRows(2));
  Matrix<double> a_stats(rows, n), dx_stats = Matrix<double>::Zero(kHidden, n);
  Vector<double> dgamma_stats = Vector<double>::Zero(kHidden), dbeta_stats = dgamma_stats;
  core.forward(s.params, with_stats, a_stats, ctx);
  EXPECT_EQ(a_stats, a_fused);
  const Vector<double> core_grads_fused = s.params.grads();
  s.params.zero_grad();
  core.backward(s.params, with_stats, da,
                ProjectionInputGrad<double>(dx_stats, dgamma_stats, dbeta_stats), a_stats, ctx);
  EXPECT_EQ(a_stats, a_fused);
  EXPECT_EQ(dx_stats, dx_fused);
  EXPECT_EQ(dgamma_stats, dgamma_fused);
  EXPECT_EQ(dbeta_stats, dbeta_fused);
  EXPECT_EQ(s.params.grads(), core_grads_fused);

  EXPECT_THROW(
      core.backward(s.params, fused, da, ProjectionInputGrad<double>(dx_fused), a_fused, ctx),
      InvalidArgument);
  ProjectionInput<double> plain(xn);
  EXPECT_THROW(plain.use_statistics(stats), InvalidArgument);
  const Matrix<double> narrow(2, n - 1);
  EXPECT_THROW(with_stats.use_statistics(narrow), InvalidArgument);
}

}  // namespace reformer::test::attention_fusion
