#pragma once
// The attention sublayer: LayerNorm -> attention core -> output projection (-> dropout).
//
//   xn = LN(x)                     D x N       N = ctx.batch * T
//   a  = Core(xn)                  H*Dh x N    concatenated head outputs
//   z  = W_o a                     D x N       W_o: [D, H*Dh], no bias
//   y  = Dropout(z)                D x N       training only, p = output_dropout (HF
//                                              hidden_dropout_prob), key
//                                              ctx.rng(stream::kAttentionOutputDropout), draw
//                                              index = column * D + row of the full D x N matrix
//
// Parameters (Hugging Face ReformerAttention names, registered in HF state-dict order):
//   <prefix>layer_norm.weight [D], <prefix>layer_norm.bias [D],
//   <prefix>self_attention.*        (registered by the core),
//   <prefix>output.dense.weight [D, H*Dh].
//
// A core maps normalised inputs to concatenated head outputs (docs/ARCHITECTURE.md). Its input
// is a ProjectionInput (layers/projection_input.hpp): here x with this sublayer's LayerNorm,
// which the core's head projections apply block by block, so xn = LN(x) is never formed whole.
//   using Config = ...;              // the core's own configuration, with num_heads, head_size
//   Core(const Config&, Index hidden, Parameters<S>&, const std::string& prefix);
//   const Config& config() const;
//   Index out_features() const;                         // H * Dh
//   void init(Parameters<S>&, const Rng&, double std) const;  // HF initialisation
//   void forward(const Parameters<S>&, const ProjectionInput<S>& input, MatrixRef<S> a,
//                const Context&, HeadRange heads) const;        // a: the rows of `heads`
//   void backward(Parameters<S>&, const ProjectionInput<S>& input, ConstMatrixRef<S> da,
//                 const ProjectionInputGrad<S>& dinput /* += */, MatrixRef<S> a /* recomputed */,
//                 const Context&, HeadRange heads) const;      // core parameter grads +=
//
// Memory: the heads are streamed in groups (head_range.hpp), so a call holds the per-head
// matrices of one group instead of all heads' and no D x N normalised input or its gradient:
// for long inputs the group is a single head. The group size depends only on the shapes
// (kHeadGroupScalars), never on threads. Every buffer of D x N or more is a Scratch drawn from
// ctx.workspace (core/workspace.hpp).
//   forward:   the outputs of up to kForwardOutputGroups (2) groups gather in one buffer a,
//              then one product adds them to y (z = sum over such spans s of W_o[:, s] a_s),
//              so y is read and written once per two groups instead of once per group. The
//              forward then holds a (2 groups) and the core's projections (2-3 groups), less
//              than the backward of one group holds (a_g, da_g, the projections and their
//              gradients: 6-8 groups). Spans of 4 groups held no more at once either, but their
//              larger buffer left the workspace fragmented: the 2-layer 2^20 step's footprint
//              grew from 5.84 to 6.09 GiB (docs/benchmarks.md).
//   backward:  each group gets da_g = W_o[:, g]^T dz and adds its share of dx, dgamma and dbeta
//              through the LayerNorm (LN backward is linear in dxn, so the groups' shares add
//              up to the gradient of the whole). After group g's core backward one pass over
//              the tokens forms dW_o[:, g] += dz a_g^T, y -= W_o[:, g] a_g and the next group's
//              da_{g+1} = W_o[:, g+1]^T dz (linear_weight_grads_alongside), so dz is read once
//              per group, not twice.
//
// Kept activations (the optional part of the sublayer contract, sublayer.hpp): when the core
// can keep its own activations, it provides
//   static constexpr std::size_t kKeptMatrices;     // matrices it keeps per call
//   std::size_t kept_bytes(Index n, const Context&, HeadRange) const;   // 0: keeps nothing
//   void forward_keeping(const Parameters<S>&, const ProjectionInput<S>&, MatrixRef<S> a,
//                        const Context&, HeadRange, KeptActivations<S>&, std::size_t first) const;
//   void backward_from_kept(Parameters<S>&, const ProjectionInput<S>&, ConstMatrixRef<S> da,
//                           const ProjectionInputGrad<S>& dinput, ConstMatrixRef<S> a,
//                           const Context&, HeadRange, KeptActivations<S>&,
//                           std::size_t first) const;
// (LshAttention does), and this sublayer keeps f(x) (matrix 0), a of all heads (matrix 1) and,
// per head group g, the core's matrices (from matrix 2 + g kKeptMatrices). backward_from_kept()
// then runs no forward at all: y -= f(x), and each group's gradient goes through the core from
// what it kept. With any other core, or a configuration the core does not keep (kept_bytes 0),
// kept_bytes() is 0 and forward_keeping() throws.
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/init.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/tuning.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"
#include "reformer/layers/head_range.hpp"
#include "reformer/layers/kept_activations.hpp"
#include "reformer/layers/projection_input.hpp"
#include "reformer/layers/sublayer.hpp"
#include "reformer/ops/dropout.hpp"
#include "reformer/ops/layer_norm.hpp"
#include "reformer/ops/linear.hpp"
#include "reformer/ops/parallel.hpp"

#include <algorithm>
#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>

namespace reformer {

namespace detail {
/// Whether an attention core provides the keeping members (attention_sublayer.hpp).
template <class Core, class S, class = void>
struct is_keeping_core : std::false_type {};
template <class Core, class S>
struct is_keeping_core<
    Core, S,
    std::void_t<decltype(Core::kKeptMatrices),
                decltype(std::declval<const Core&>().kept_bytes(
                    Index{0}, std::declval<const Context&>(), HeadRange{})),
                decltype(std::declval<const Core&>().forward_keeping(
                    std::declval<const Parameters<S>&>(), std::declval<const ProjectionInput<S>&>(),
                    std::declval<MatrixRef<S>>(), std::declval<const Context&>(), HeadRange{},
                    std::declval<KeptActivations<S>&>(), std::size_t{0})),
                decltype(std::declval<const Core&>().backward_from_kept(
                    std::declval<Parameters<S>&>(), std::declval<const ProjectionInput<S>&>(),
                    std::declval<ConstMatrixRef<S>>(),
                    std::declval<const ProjectionInputGrad<S>&>(),
                    std::declval<ConstMatrixRef<S>>(), std::declval<const Context&>(), HeadRange{},
                    std::declval<KeptActivations<S>&>(), std::size_t{0}))>> : std::true_type {};
}  // namespace detail

/// Configuration of an AttentionSublayer: the core's configuration plus the wrapper's own.
template <class CoreConfig>
struct AttentionSublayerConfig {
  CoreConfig core{};              ///< heads, head size, masks, ... (validated by the core)
  Index hidden_size = 0;          ///< D
  double layer_norm_eps = 1e-12;  ///< LayerNorm epsilon (HF default)
  double output_dropout = 0.0;    ///< dropout after the output dense (HF hidden_dropout_prob)
  /// Memory knob: scalars of one head group's per-head matrices; 0 = the default
  /// (AttentionSublayer::kHeadGroupScalars). Heads are streamed in groups of
  /// clamp(head_group_scalars / (Dh * N), 1, H) heads; the results agree up to rounding.
  Index head_group_scalars = 0;

  /// The attention sublayer of a model configuration (a ReformerConfig, model/config.hpp),
  /// its core configured by CoreConfig::from.
  template <class ModelConfig>
  static AttentionSublayerConfig from(const ModelConfig& m) {
    return {/*core=*/CoreConfig::from(m), /*hidden_size=*/m.hidden_size,
            /*layer_norm_eps=*/m.layer_norm_eps, /*output_dropout=*/m.hidden_dropout_prob,
            /*head_group_scalars=*/0};
  }
};

template <class S, class Core>
class AttentionSublayer {
 public:
  using Scalar = S;
  using CoreType = Core;
  using CoreConfig = typename Core::Config;
  using Config = AttentionSublayerConfig<CoreConfig>;

  /// Registers `<prefix>layer_norm.*`, the core's `<prefix>self_attention.*` and
  /// `<prefix>output.dense.weight` in `params`. Throws InvalidArgument on a bad config: the
  /// wrapper's own fields are checked before anything is registered, the core's when the core is
  /// constructed (after the LayerNorm slots), so build into a store you discard on failure.
  AttentionSublayer(const Config& cfg, Parameters<S>& params, const std::string& prefix = "")
      : cfg_(validated(cfg)),
        ln_weight_(params.add(prefix + "layer_norm.weight", {cfg.hidden_size})),
        ln_bias_(params.add(prefix + "layer_norm.bias", {cfg.hidden_size})),
        core_(cfg.core, cfg.hidden_size, params, prefix),
        out_weight_(params.add(prefix + "output.dense.weight",
                               {cfg.hidden_size, checked_out_features(core_)})) {}

  const Config& config() const { return cfg_; }
  const Core& core() const { return core_; }
  Index hidden_size() const { return cfg_.hidden_size; }

  SlotId layer_norm_weight_slot() const { return ln_weight_; }
  SlotId layer_norm_bias_slot() const { return ln_bias_; }
  SlotId output_weight_slot() const { return out_weight_; }

  /// Hugging Face initialisation: weights ~ normal(0, std) drawn from `rng`, LayerNorm weight 1
  /// and bias 0.
  void init(Parameters<S>& params, const Rng& rng, double std) const;

  /// Scalars of the per-head matrices of one head group (e.g. its rows of the attention output)
  /// a call aims for: 2^22, 16 MiB in float, i.e. all 4 heads of 64 up to 16K tokens per call.
  static constexpr Index kHeadGroupScalars = tuning::kHeadGroupScalars;

  /// Head groups whose outputs a forward gathers before one output product (file comment).
  static constexpr Index kForwardOutputGroups = 2;

  /// Heads per group for N = batch * T tokens (a function of the config and shapes only).
  Index heads_per_group(Index n) const {
    const Index budget = cfg_.head_group_scalars > 0 ? cfg_.head_group_scalars : kHeadGroupScalars;
    const Index per_head = core_.config().head_size * std::max<Index>(n, 1);
    return std::clamp<Index>(budget / per_head, 1, core_.config().num_heads);
  }

  /// Heads whose outputs a forward over n tokens adds to y in one product: up to
  /// kForwardOutputGroups head groups.
  Index heads_per_output_product(Index n) const {
    return std::min(kForwardOutputGroups * heads_per_group(n), core_.config().num_heads);
  }

  /// y = f(x). x and y are D x (ctx.batch * T); y must not alias x.
  void forward(const Parameters<S>& params, ConstMatrixRef<S> x, MatrixRef<S> y,
               const Context& ctx) const;

  /// The sublayer contract's backward (sublayer.hpp): recomputes f from x and updates in place
  ///   dx += (df/dx)^T dy,   y -= f(x),
  /// accumulating the parameter gradients. dx and y alias neither x, dy nor each other. y
  /// receives the head groups' terms one by one (without output dropout).
  void backward(Parameters<S>& params, ConstMatrixRef<S> x, ConstMatrixRef<S> dy, MatrixRef<S> dx,
                MatrixRef<S> y, const Context& ctx) const;

  /// Whether the core can keep its activations (see the file comment).
  static constexpr bool kCoreKeeps = detail::is_keeping_core<Core, S>::value;

  /// Bytes forward_keeping() keeps for n columns under ctx: f(x), each group's a_g and what the
  /// core keeps; 0 when the core keeps nothing for this call.
  std::size_t kept_bytes(Index n, const Context& ctx) const;

  /// y = f(x), bitwise forward()'s, keeping f(x), a and the core's activations in `kept`.
  /// InvalidArgument when kept_bytes() is 0.
  void forward_keeping(const Parameters<S>& params, ConstMatrixRef<S> x, MatrixRef<S> y,
                       const Context& ctx, KeptActivations<S>& kept) const;

  /// backward() from what forward_keeping() kept (same context), without a forward pass:
  /// dx += (df/dx)^T dy and the parameter gradients, bitwise backward()'s at the same x;
  /// y -= f(x) with the kept f(x).
  void backward_from_kept(Parameters<S>& params, ConstMatrixRef<S> x, ConstMatrixRef<S> dy,
                          MatrixRef<S> dx, MatrixRef<S> y, const Context& ctx,
                          KeptActivations<S>& kept) const;

 private:
  // Kept matrix numbers: f(x), a (all heads), then per head group the core's matrices.
  static constexpr std::size_t kKeptOutput = 0;
  static constexpr std::size_t kKeptHeadOutputs = 1;
  static std::size_t kept_group_base(std::size_t group) {
    if constexpr (kCoreKeeps) {
      return 2 + group * Core::kKeptMatrices;
    } else {
      return 2 + group;
    }
  }

  // InvalidArgument naming `where` when this call keeps nothing (the keeping members).
  void require_keeps(const char* where, Index n, const Context& ctx) const {
    REFORMER_REQUIRE(
        kept_bytes(n, ctx) > 0, InvalidArgument, where, "this attention keeps nothing for ", n,
        " columns of batch ", ctx.batch,
        " (kept_bytes() is 0: a core without keeping, or a sequence it does not hash)");
  }

  // dz = d(Dropout(z)) = mask .* dy / (1 - p) with the forward's mask, in `buffer`; without
  // dropout, dy itself.
  ConstMatrixRef<S> output_dropout_gradient(ConstMatrixRef<S> dy, Scratch<S>& buffer,
                                            const Context& ctx) const {
    if (!(ctx.training && cfg_.output_dropout > 0.0)) return dy;
    buffer.resize(ctx.workspace, hidden_size(), dy.cols());
    apply_output_dropout(dy, buffer.map(), ctx);
    return buffer.map();
  }

  static const Config& validated(const Config& cfg) {
    const char* where = "AttentionSublayer";
    detail::require_positive(where, "hidden_size", cfg.hidden_size);
    detail::require_positive(where, "layer_norm_eps", cfg.layer_norm_eps);
    detail::require_dropout(where, "output_dropout", cfg.output_dropout);
    REFORMER_REQUIRE(cfg.head_group_scalars >= 0, InvalidArgument, where,
                     "head_group_scalars = ", cfg.head_group_scalars, " must be >= 0");
    return cfg;
  }
  static Index checked_out_features(const Core& core) {
    const Index f = core.out_features();
    REFORMER_REQUIRE(f > 0, InvalidArgument, "AttentionSublayer", "core out_features = ", f,
                     " must be positive");
    return f;
  }

  // Calls f(heads) for the head groups [0, g), [g, 2g), ... of a call with n tokens, in order.
  template <class F>
  void for_head_groups(Index n, F&& f) const {
    for_spans(HeadRange{0, core_.config().num_heads}, heads_per_group(n), f);
  }
  // Calls f(span) for [first, first + g), [first + g, first + 2g), ... within `heads`, in order.
  template <class F>
  static void for_spans(HeadRange heads, Index g, F&& f) {
    const Index end = heads.first + heads.count;
    for (Index h0 = heads.first; h0 < end; h0 += g) f(HeadRange{h0, std::min(g, end - h0)});
  }
  // The head group after `heads` in a call with n tokens; count 0 after the last.
  HeadRange next_head_group(HeadRange heads, Index n) const {
    const Index first = heads.first + heads.count;
    return HeadRange{first, std::min(heads_per_group(n), core_.config().num_heads - first)};
  }
  // The rows of `heads` in a, whose rows start at head `a_first`.
  MatrixRef<S> head_rows_of(MatrixRef<S> a, Index a_first, HeadRange heads) const {
    const Index dh = core_.config().head_size;
    return a.middleRows((heads.first - a_first) * dh, heads.count * dh);
  }

  // What a pass does with a term W_o[:, s] a_s of z (a span of heads s).
  enum class OutputTerm {
    kNone,      // nothing (the kept backward: y -= f(x) at the end)
    kSet,       // target = W_o[:, s] a_s   (the first term of z)
    kAdd,       // target += W_o[:, s] a_s  (the next terms of z)
    kSubtract,  // target -= W_o[:, s] a_s  (y -= f(x) term by term, without dropout)
  };

  // target[:, t0 : t0 + nt] (=, +=, -=) w a[:, t0 : t0 + nt]. Every term of z goes through
  // here over the token blocks of linear_weight_grads (tuning::kGradTokenBlock), in the forward
  // and in the backward's output pass alike: with one head group the backward's z is then
  // bitwise the forward's.
  template <class W>
  static void output_term(MatrixRef<S> target, const W& w, ConstMatrixRef<S> a, Index t0, Index nt,
                          OutputTerm term) {
    auto y = target.middleCols(t0, nt);
    switch (term) {
      case OutputTerm::kNone:
        break;
      case OutputTerm::kSet:
        product(y, w, a.middleCols(t0, nt), false);
        break;
      case OutputTerm::kAdd:
        product(y, w, a.middleCols(t0, nt), true);
        break;
      case OutputTerm::kSubtract:
        y.noalias() -= w * a.middleCols(t0, nt);
        break;
    }
  }

  // The forward's term of a span: y (= or +=) W_o[:, s] a_s over the token blocks, in parallel.
  void add_output_product(const Parameters<S>& params, HeadRange outs, ConstMatrixRef<S> a,
                          MatrixRef<S> y) const {
    constexpr Index kBlock = tuning::kGradTokenBlock;
    const Index n = a.cols();
    const auto w_o = output_columns(params, outs);
    const OutputTerm term = outs.first == 0 ? OutputTerm::kSet : OutputTerm::kAdd;
    parallel_items(num_blocks(n, kBlock), 2.0 * double(y.rows()) * double(a.size()),
                   [&](Index blk) {
                     const Index t0 = blk * kBlock;
                     output_term(y, w_o, a, t0, std::min(kBlock, n - t0), term);
                   });
  }

  // z = sum_g W_o[:, g] a_g. After group g's core backward, one pass over the tokens:
  //   dW_o[:, g] += dz a_g^T                (bitwise linear_weight_grads')
  //   target (=, +=, -=) W_o[:, g] a_g      (OutputTerm)
  //   da_next = W_o[:, next]^T dz           (when next.count > 0; da_next: next.count*Dh x N)
  void output_backward_pass(Parameters<S>& params, HeadRange heads, ConstMatrixRef<S> dz,
                            ConstMatrixRef<S> a, OutputTerm term, MatrixRef<S> target,
                            HeadRange next, MatrixRef<S> da_next, Workspace* ws) const {
    const Index dh = core_.config().head_size;
    const auto w_o = output_columns(params, heads);
    const auto w_next = output_columns(params, next);
    linear_weight_grads_alongside<S>(
        dz, a, params.grad(out_weight_).middleCols(heads.first * dh, heads.count * dh), nullptr, ws,
        [&](Index t0, Index nt) {
          output_term(target, w_o, a, t0, nt, term);
          if (next.count > 0) {
            product(da_next.middleCols(t0, nt), w_next.transpose(), dz.middleCols(t0, nt), false);
          }
        });
  }

  // W_o[:, heads]: the columns of W_o that read the outputs of `heads`.
  auto output_columns(const Parameters<S>& params, HeadRange heads) const {
    const Index dh = core_.config().head_size;
    return params.value(out_weight_).middleCols(heads.first * dh, heads.count * dh);
  }

  // The input of the core's projections: x with this sublayer's LayerNorm. With `stats`, a call
  // that normalises x more than once (several head groups, or a backward), x's statistics are
  // computed here into it (2 x N) and every normalisation takes one pass (bitwise the same).
  ProjectionInput<S> layer_norm_input(const Parameters<S>& params, ConstMatrixRef<S> x,
                                      Scratch<S>* stats, const Context& ctx) const {
    ProjectionInput<S> input(x, params.value_vector(ln_weight_), params.value_vector(ln_bias_),
                             cfg_.layer_norm_eps);
    if (stats != nullptr) {
      stats->resize(ctx.workspace, 2, x.cols());
      layer_norm_statistics_parallel<S>(x, cfg_.layer_norm_eps, stats->map());
      input.use_statistics(stats->map());
    }
    return input;
  }
  // Whether a forward over n tokens normalises x more than once (more than one head group).
  bool several_groups(Index n) const { return heads_per_group(n) < core_.config().num_heads; }

  // out = Dropout(in) with this sublayer's output-dropout key (out may alias in).
  void apply_output_dropout(ConstMatrixRef<S> in, MatrixRef<S> out, const Context& ctx) const {
    const double p = ctx.training ? cfg_.output_dropout : 0.0;
    dropout_parallel<S>(ctx.rng(stream::kAttentionOutputDropout), p, 0, in, out);
  }

  Config cfg_;
  SlotId ln_weight_, ln_bias_;
  Core core_;
  SlotId out_weight_;
};

// ---- member definitions -------------------------------------------------------------------------
// The heavy members are defined outside the class body, so they are not implicitly inline: a
// translation unit that declares
// `extern template class AttentionSublayer<float, LshAttention<float>>;` (this repository's
// own tests, examples and benchmarks: instances/) then does not compile them again.

template <class S, class Core>
void AttentionSublayer<S, Core>::init(Parameters<S>& params, const Rng& rng, double std) const {
  params.value_vector(ln_weight_).setOnes();
  params.value_vector(ln_bias_).setZero();
  init_normal(params, out_weight_, rng.derive(0), std);
  core_.init(params, rng.derive(1), std);
}

template <class S, class Core>
void AttentionSublayer<S, Core>::forward(const Parameters<S>& params, ConstMatrixRef<S> x,
                                         MatrixRef<S> y, const Context& ctx) const {
  const char* where = "AttentionSublayer::forward";
  check_sublayer_input<S>(where, x, hidden_size(), ctx);
  check_shape(where, "y", y.rows(), y.cols(), x.rows(), x.cols());
  const Index n = x.cols();
  Scratch<S> stats;
  const ProjectionInput<S> input =  // xn = LN(x), block by block
      layer_norm_input(params, x, several_groups(n) ? &stats : nullptr, ctx);
  Scratch<S> a;  // a_s: the outputs of the head groups of one output product
  const Index span = heads_per_output_product(n);
  for_spans(HeadRange{0, core_.config().num_heads}, span, [&](HeadRange outs) {
    a.resize(ctx.workspace, outs.count * core_.config().head_size, n);
    for_spans(outs, heads_per_group(n), [&](HeadRange heads) {
      core_.forward(params, input, head_rows_of(a.map(), outs.first, heads), ctx, heads);
    });
    add_output_product(params, outs, a.map(), y);  // z = W_o a = sum over spans of W_o[:, s] a_s
  });
  apply_output_dropout(y, y, ctx);
}

template <class S, class Core>
void AttentionSublayer<S, Core>::backward(Parameters<S>& params, ConstMatrixRef<S> x,
                                          ConstMatrixRef<S> dy, MatrixRef<S> dx, MatrixRef<S> y,
                                          const Context& ctx) const {
  const char* where = "AttentionSublayer::backward";
  check_sublayer_input<S>(where, x, hidden_size(), ctx);
  check_backward_buffers<S>(where, x, dy, dx, y);
  const Index n = x.cols(), dh = core_.config().head_size;
  const bool dropout = ctx.training && cfg_.output_dropout > 0.0;

  // Forward, recomputed: xn = LN(x), block by block inside the core's projections (normalised
  // by the recomputed projections and again by their backward: with x's statistics).
  Scratch<S> stats;
  const ProjectionInput<S> input = layer_norm_input(params, x, &stats, ctx);
  // xn = LN(x)  =>  dx += LN'(x)^T dxn, dgamma and dbeta += (each head group's share of dxn).
  const ProjectionInputGrad<S> dinput(dx, params.grad_vector(ln_weight_),
                                      params.grad_vector(ln_bias_));

  // f(x) = Dropout(z)  =>  dz = mask .* dy / (1 - p)   (the same mask as the forward pass).
  // Without dropout dz is dy itself and no D x N buffer is needed.
  Scratch<S> dz_buffer;
  const ConstMatrixRef<S> dz = output_dropout_gradient(dy, dz_buffer, ctx);

  // z = sum_g W_o[:, g] a_g. Without dropout each group's term is subtracted from y directly;
  // with dropout the whole z is needed first, then y -= Dropout(z).
  Scratch<S> z;
  if (dropout) z.resize(ctx.workspace, hidden_size(), n);

  // z = sum_g W_o[:, g] a_g  =>  da_g = W_o[:, g]^T dz,  dW_o[:, g] += dz a_g^T.
  Scratch<S> a, da;  // one head group's outputs and their gradient
  const HeadRange first{0, heads_per_group(n)};
  da.resize(ctx.workspace, first.count * dh, n);
  parallel_product(da.map(), output_columns(params, first).transpose(), dz, false);
  for_head_groups(n, [&](HeadRange heads) {
    // Through the core (and the LayerNorm): dx, dgamma, dbeta += (da_g / x), and the
    // recomputed outputs a_g.
    a.resize(ctx.workspace, heads.count * dh, n);
    core_.backward(params, input, da.map(), dinput, a.map(), ctx, heads);
    // dW_o[:, g] += dz a_g^T;  y -= W_o[:, g] a_g (z += with dropout);  da = da_{g+1}.
    const HeadRange next = next_head_group(heads, n);
    if (next.count > 0) da.resize(ctx.workspace, next.count * dh, n);
    const OutputTerm term = !dropout           ? OutputTerm::kSubtract
                            : heads.first == 0 ? OutputTerm::kSet
                                               : OutputTerm::kAdd;
    output_backward_pass(params, heads, dz, a.map(), term, dropout ? z.map() : y, next, da.map(),
                         ctx.workspace);
  });
  a.reset();
  da.reset();
  dz_buffer.reset();
  if (dropout) {
    apply_output_dropout(z.map(), z.map(), ctx);
    add_parallel<S>(y, z.map(), S(-1));  // y -= Dropout(z)
  }
}

template <class S, class Core>
std::size_t AttentionSublayer<S, Core>::kept_bytes(Index n, const Context& ctx) const {
  if constexpr (kCoreKeeps) {
    const Index dh = core_.config().head_size;
    // f(x) and a
    std::size_t bytes =
        static_cast<std::size_t>((hidden_size() + core_.config().num_heads * dh) * n) * sizeof(S);
    bool keeps = true;
    for_head_groups(n, [&](HeadRange heads) {
      const std::size_t core_bytes = core_.kept_bytes(n, ctx, heads);
      keeps = keeps && core_bytes > 0;
      bytes += core_bytes;
    });
    return keeps ? bytes : 0;
  } else {
    (void)n;
    (void)ctx;
    return 0;
  }
}

template <class S, class Core>
void AttentionSublayer<S, Core>::forward_keeping(const Parameters<S>& params, ConstMatrixRef<S> x,
                                                 MatrixRef<S> y, const Context& ctx,
                                                 KeptActivations<S>& kept) const {
  const char* where = "AttentionSublayer::forward_keeping";
  check_sublayer_input<S>(where, x, hidden_size(), ctx);
  check_shape(where, "y", y.rows(), y.cols(), x.rows(), x.cols());
  const Index n = x.cols();
  require_keeps(where, n, ctx);
  if constexpr (kCoreKeeps) {
    // forward(), with a in its kept matrix instead of scratch.
    const Index dh = core_.config().head_size, num_heads = core_.config().num_heads;
    Scratch<S> stats;
    const ProjectionInput<S> input =
        layer_norm_input(params, x, several_groups(n) ? &stats : nullptr, ctx);
    MatrixRef<S> a = kept.matrix(kKeptHeadOutputs, num_heads * dh, n);
    std::size_t group = 0;
    for_spans(HeadRange{0, num_heads}, heads_per_output_product(n), [&](HeadRange outs) {
      MatrixRef<S> a_s = head_rows_of(a, 0, outs);
      for_spans(outs, heads_per_group(n), [&](HeadRange heads) {
        core_.forward_keeping(params, input, head_rows_of(a, 0, heads), ctx, heads, kept,
                              kept_group_base(group++));
      });
      add_output_product(params, outs, a_s, y);
    });
    apply_output_dropout(y, y, ctx);
    copy_parallel<S>(y, kept.matrix(kKeptOutput, hidden_size(), n));
  }
}

template <class S, class Core>
void AttentionSublayer<S, Core>::backward_from_kept(Parameters<S>& params, ConstMatrixRef<S> x,
                                                    ConstMatrixRef<S> dy, MatrixRef<S> dx,
                                                    MatrixRef<S> y, const Context& ctx,
                                                    KeptActivations<S>& kept) const {
  const char* where = "AttentionSublayer::backward_from_kept";
  check_sublayer_input<S>(where, x, hidden_size(), ctx);
  check_backward_buffers<S>(where, x, dy, dx, y);
  const Index n = x.cols();
  require_keeps(where, n, ctx);
  if constexpr (kCoreKeeps) {
    const Index dh = core_.config().head_size;
    const ConstMatrixRef<S> fx = kept.kept(where, kKeptOutput, hidden_size(), n);
    Scratch<S> stats;  // x is normalised by each projection's backward and its gradient
    const ProjectionInput<S> input = layer_norm_input(params, x, &stats, ctx);
    const ProjectionInputGrad<S> dinput(dx, params.grad_vector(ln_weight_),
                                        params.grad_vector(ln_bias_));
    Scratch<S> dz_buffer;
    const ConstMatrixRef<S> dz = output_dropout_gradient(dy, dz_buffer, ctx);
    MatrixRef<S> a = kept.kept(where, kKeptHeadOutputs, core_.config().num_heads * dh, n);
    // z = sum_g W_o[:, g] a_g  =>  da_g = W_o[:, g]^T dz,  dW_o[:, g] += dz a_g^T (as backward()).
    Scratch<S> da;  // one head group's output gradient
    const HeadRange first{0, heads_per_group(n)};
    da.resize(ctx.workspace, first.count * dh, n);
    parallel_product(da.map(), output_columns(params, first).transpose(), dz, false);
    std::size_t group = 0;
    for_head_groups(n, [&](HeadRange heads) {
      const MatrixRef<S> a_g = head_rows_of(a, 0, heads);
      core_.backward_from_kept(params, input, da.map(), dinput, a_g, ctx, heads, kept,
                               kept_group_base(group++));
      const HeadRange next = next_head_group(heads, n);
      if (next.count > 0) da.resize(ctx.workspace, next.count * dh, n);
      output_backward_pass(params, heads, dz, a_g, OutputTerm::kNone, y, next, da.map(),
                           ctx.workspace);
    });
    add_parallel<S>(y, fx, S(-1));  // y -= f(x)
  }
}

}  // namespace reformer
