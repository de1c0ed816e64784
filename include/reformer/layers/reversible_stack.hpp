#pragma once
// ReversibleStack: a stack of reversible blocks (reversible.hpp) made of any sublayers that meet
// the sublayer contract (sublayer.hpp):
//
//   for l in blocks:   y1 = x1 + F_l(x2),   y2 = x2 + G_l(y1)         (x1, x2: D x N)
//
// Each block holds an (F, G) pair of any types: the library's AttentionSublayer and FeedForward,
// or a user's own (examples/custom_layer.cpp). The pairs are type-erased behind Sublayer<S>; a
// virtual call per sublayer per pass costs nothing next to the sublayer's own work.
//
// Passes work in place on the caller's two streams. Block l runs with ctx.layer = l (its RNG
// key) and its slot of a BucketRecord (the LSH buckets of a pass; layers that do not hash leave
// theirs empty). Backward modes:
//   backward():         reversible, reconstructs every block's inputs from its outputs
//                       (memory independent of depth);
//   backward() with a KeptRecord:  the same, but the sublayers that can keep their activations
//                       (the feed-forward) keep them in forward within the record's byte budget,
//                       and their backward skips the recompute;
//   backward_stored():  ordinary backprop from inputs kept by forward(..., stored) (the oracle).
// forward_block() / backward_block() run one block, for callers that walk the stack themselves.
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/types.hpp"
#include "reformer/layers/kept_activations.hpp"
#include "reformer/layers/reversible.hpp"
#include "reformer/layers/sublayer.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

namespace reformer {

/// The LSH buckets of one pass through a stack: one BucketTape per block ([B, H, R, T], empty for
/// blocks that do not hash), and whether forward replays them instead of hashing. backward
/// always replays them.
struct BucketRecord {
  std::vector<BucketTape> layers;
  bool replay = false;

  std::size_t bytes_held() const {
    std::size_t n = 0;
    for (const auto& b : layers) n += b.bytes_held();
    return n;
  }
};

/// A type-erased sublayer: any type L that meets the sublayer contract for S.
template <class S>
class Sublayer {
 public:
  template <class L, class = std::enable_if_t<!std::is_same_v<std::decay_t<L>, Sublayer>>>
  Sublayer(L layer)  // NOLINT(google-explicit-constructor): a sublayer converts to its handle
      : impl_(std::make_shared<const Model<std::decay_t<L>>>(std::move(layer))) {
    require_sublayer<std::decay_t<L>, S>();
  }

  void init(Parameters<S>& params, const Rng& rng, double std) const {
    impl_->init(params, rng, std);
  }
  void forward(const Parameters<S>& params, ConstMatrixRef<S> x, MatrixRef<S> y,
               const Context& ctx) const {
    impl_->forward(params, x, y, ctx);
  }
  void backward(Parameters<S>& params, ConstMatrixRef<S> x, ConstMatrixRef<S> dy, MatrixRef<S> dx,
                MatrixRef<S> y, const Context& ctx) const {
    impl_->backward(params, x, dy, dx, y, ctx);
  }

  // The optional members of the contract: a sublayer that cannot keep reports 0 bytes, and its
  // handle never calls the other two.
  std::size_t kept_bytes(Index n, const Context& ctx) const { return impl_->kept_bytes(n, ctx); }
  void forward_keeping(const Parameters<S>& params, ConstMatrixRef<S> x, MatrixRef<S> y,
                       const Context& ctx, KeptActivations<S>& kept) const {
    impl_->forward_keeping(params, x, y, ctx, kept);
  }
  void backward_from_kept(Parameters<S>& params, ConstMatrixRef<S> x, ConstMatrixRef<S> dy,
                          MatrixRef<S> dx, MatrixRef<S> y, const Context& ctx,
                          KeptActivations<S>& kept) const {
    impl_->backward_from_kept(params, x, dy, dx, y, ctx, kept);
  }

  /// The held sublayer if it is an L, else nullptr.
  template <class L>
  const L* get() const {
    const auto* model = dynamic_cast<const Model<L>*>(impl_.get());
    return model != nullptr ? &model->layer : nullptr;
  }

 private:
  struct Concept {
    virtual ~Concept() = default;
    virtual void init(Parameters<S>&, const Rng&, double) const = 0;
    virtual void forward(const Parameters<S>&, ConstMatrixRef<S>, MatrixRef<S>,
                         const Context&) const = 0;
    virtual void backward(Parameters<S>&, ConstMatrixRef<S>, ConstMatrixRef<S>, MatrixRef<S>,
                          MatrixRef<S>, const Context&) const = 0;
    virtual std::size_t kept_bytes(Index, const Context&) const = 0;
    virtual void forward_keeping(const Parameters<S>&, ConstMatrixRef<S>, MatrixRef<S>,
                                 const Context&, KeptActivations<S>&) const = 0;
    virtual void backward_from_kept(Parameters<S>&, ConstMatrixRef<S>, ConstMatrixRef<S>,
                                    MatrixRef<S>, MatrixRef<S>, const Context&,
                                    KeptActivations<S>&) const = 0;
  };
  template <class L>
  struct Model final : Concept {
    explicit Model(L l) : layer(std::move(l)) {}
    void init(Parameters<S>& p, const Rng& rng, double std) const override {
      layer.init(p, rng, std);
    }
    void forward(const Parameters<S>& p, ConstMatrixRef<S> x, MatrixRef<S> y,
                 const Context& ctx) const override {
      layer.forward(p, x, y, ctx);
    }
    void backward(Parameters<S>& p, ConstMatrixRef<S> x, ConstMatrixRef<S> dy, MatrixRef<S> dx,
                  MatrixRef<S> y, const Context& ctx) const override {
      layer.backward(p, x, dy, dx, y, ctx);
    }
    std::size_t kept_bytes(Index n, const Context& ctx) const override {
      if constexpr (is_keeping_sublayer_v<L, S>) {
        return layer.kept_bytes(n, ctx);
      } else {
        (void)n;
        (void)ctx;
        return 0;
      }
    }
    void forward_keeping(const Parameters<S>& p, ConstMatrixRef<S> x, MatrixRef<S> y,
                         const Context& ctx, KeptActivations<S>& kept) const override {
      if constexpr (is_keeping_sublayer_v<L, S>) {
        layer.forward_keeping(p, x, y, ctx, kept);
      } else {
        (void)kept;
        layer.forward(p, x, y, ctx);
      }
    }
    void backward_from_kept(Parameters<S>& p, ConstMatrixRef<S> x, ConstMatrixRef<S> dy,
                            MatrixRef<S> dx, MatrixRef<S> y, const Context& ctx,
                            KeptActivations<S>& kept) const override {
      if constexpr (is_keeping_sublayer_v<L, S>) {
        layer.backward_from_kept(p, x, dy, dx, y, ctx, kept);
      } else {
        (void)kept;
        layer.backward(p, x, dy, dx, y, ctx);
      }
    }
    L layer;
  };
  std::shared_ptr<const Concept> impl_;
};

/// Each block's sublayer inputs, kept by forward(..., stored) for backward_stored():
/// x2 before block l (F's input) and y1 after its first half (G's input).
template <class S>
struct StoredInputs {
  std::vector<Matrix<S>> attention, feed_forward;

  std::size_t bytes_held() const {
    std::size_t n = 0;
    for (const auto& m : attention) n += static_cast<std::size_t>(m.size());
    for (const auto& m : feed_forward) n += static_cast<std::size_t>(m.size());
    return n * sizeof(S);
  }
  void clear() {
    attention.clear();
    feed_forward.clear();
  }
};

/// The activations a stack's blocks keep for the reversible backward (kept_activations.hpp): one
/// KeptActivations per sublayer, filled by forward() and consumed by backward(). forward() keeps
/// a sublayer's activations when it can keep them and they fit in what is left of budget_bytes:
/// first the G sublayers (the feed-forwards) block by block, then the F sublayers (attention);
/// every other slot gives its memory back. budget_bytes = 0 keeps nothing: memory independent
/// of depth. (The feed-forwards go first because they skip the most work per byte kept: in the
/// hf_config model about twice an LSH attention's, for the same bytes, docs/benchmarks.md.)
template <class S>
struct KeptRecord {
  std::size_t budget_bytes = 0;
  std::vector<KeptActivations<S>> attention, feed_forward;  ///< one per block
  /// The last forward's choice: which slots keep (attention_kept[l], feed_forward_kept[l]).
  std::vector<bool> attention_kept, feed_forward_kept;

  std::size_t bytes_held() const {
    std::size_t n = 0;
    for (const auto& k : attention) n += k.bytes_held();
    for (const auto& k : feed_forward) n += k.bytes_held();
    return n;
  }
  /// Sublayers whose kept activations await a backward (filled and not yet consumed).
  std::size_t filled() const {
    std::size_t n = 0;
    for (const auto& k : attention) n += k.filled ? 1 : 0;
    for (const auto& k : feed_forward) n += k.filled ? 1 : 0;
    return n;
  }
  void release() {
    attention.clear();
    feed_forward.clear();
    attention_kept.clear();
    feed_forward_kept.clear();
  }
};

template <class S>
class ReversibleStack {
 public:
  using Scalar = S;

  /// Appends a block (F, G). Both must meet the sublayer contract (checked when compiling);
  /// their parameters live in the caller's Parameters<S> store.
  template <class F, class G>
  void add(F f, G g) {
    require_sublayer<F, S>();
    require_sublayer<G, S>();
    f_.emplace_back(std::move(f));
    g_.emplace_back(std::move(g));
  }

  Index size() const { return static_cast<Index>(f_.size()); }
  const Sublayer<S>& attention(Index l) const { return f_.at(at(l)); }
  const Sublayer<S>& feed_forward(Index l) const { return g_.at(at(l)); }

  /// Initialises block l's F from f_rng.derive(l) and G from g_rng.derive(l).
  void init(Parameters<S>& params, const Rng& f_rng, const Rng& g_rng, double std) const {
    for (Index l = 0; l < size(); ++l) {
      const auto ul = static_cast<std::uint64_t>(l);
      f_[at(l)].init(params, f_rng.derive(ul), std);
      g_[at(l)].init(params, g_rng.derive(ul), std);
    }
  }

  /// The context of block l in a pass with context `base`: layer index l and the block's
  /// bucket tape of `buckets` (replayed when buckets.replay). The one place a block's context is
  /// made, for forward and backward alike.
  Context block_context(const Context& base, Index l, BucketRecord& buckets, bool replay) const {
    Context c = base;
    c.layer = static_cast<std::uint32_t>(l);
    c.buckets = &buckets.layers.at(at(l));
    c.replay_buckets = replay;
    return c;
  }

  /// In place: (x1, x2) -> outputs of the last block. Fills (or, with buckets.replay, replays)
  /// the bucket record; with `stored`, keeps every block's sublayer inputs there; with `kept`,
  /// the activations of the sublayers that fit its budget (see KeptRecord). `stored` and `kept`
  /// exclude each other.
  void forward(const Parameters<S>& params, MatrixRef<S> x1, MatrixRef<S> x2, const Context& ctx,
               BucketRecord& buckets, StoredInputs<S>* stored = nullptr,
               KeptRecord<S>* kept = nullptr) const {
    REFORMER_REQUIRE(stored == nullptr || kept == nullptr, InvalidArgument,
                     "ReversibleStack::forward",
                     "stored inputs and kept activations exclude each other (the stored "
                     "backward recomputes every sublayer)");
    prepare(buckets);
    if (stored != nullptr) {
      stored->attention.resize(f_.size());
      stored->feed_forward.resize(f_.size());
    }
    if (kept != nullptr) plan_kept(*kept, x1.cols(), ctx);
    ReversibleWorkspace<S> ws;
    for (Index l = 0; l < size(); ++l) {
      if (stored != nullptr) stored->attention[at(l)] = x2;
      forward_block(l, params, x1, x2, block_context(ctx, l, buckets, buckets.replay), ws,
                    kept_slot(kept, false, l), kept_slot(kept, true, l));
      if (stored != nullptr) stored->feed_forward[at(l)] = x1;
    }
  }

  /// Reversible backward from the top, in place: (y1, y2, dy1, dy2) of the last block ->
  /// (x1, x2, dx1, dx2) of the first. Replays the buckets of the forward pass; accumulates every
  /// parameter gradient. With `kept` (the record the forward pass filled), the sublayers that
  /// kept their activations take them from there instead of recomputing.
  void backward(Parameters<S>& params, MatrixRef<S> y1, MatrixRef<S> y2, MatrixRef<S> dy1,
                MatrixRef<S> dy2, const Context& ctx, BucketRecord& buckets,
                KeptRecord<S>* kept = nullptr) const {
    const char* where = "ReversibleStack::backward";
    check_record(where, buckets);
    if (kept != nullptr) check_kept(where, *kept);
    for (Index l = size() - 1; l >= 0; --l) {
      backward_block(l, params, y1, y2, dy1, dy2, block_context(ctx, l, buckets, true),
                     kept_slot(kept, false, l), kept_slot(kept, true, l));
    }
  }

  /// Ordinary backprop from the inputs kept by forward(..., stored): (dy1, dy2) -> (dx1, dx2).
  void backward_stored(Parameters<S>& params, const StoredInputs<S>& stored, MatrixRef<S> dy1,
                       MatrixRef<S> dy2, const Context& ctx, BucketRecord& buckets) const {
    const char* where = "ReversibleStack::backward_stored";
    check_record(where, buckets);
    REFORMER_REQUIRE(
        stored.attention.size() == f_.size() && stored.feed_forward.size() == f_.size(),
        InvalidArgument, where, "stored inputs of ", stored.attention.size(),
        " blocks for a stack of ", size());
    ReversibleWorkspace<S> ws;
    for (Index l = size() - 1; l >= 0; --l) {
      stored_backward<S>(f_[at(l)], g_[at(l)], params, stored.attention[at(l)],
                         stored.feed_forward[at(l)], dy1, dy2, block_context(ctx, l, buckets, true),
                         ws);
    }
  }

  /// Block l alone, in place: (x1, x2) -> (y1, y2). `ctx` is the block's context; keep_f /
  /// keep_g (optional) receive F's / G's kept activations when the sublayer can keep.
  void forward_block(Index l, const Parameters<S>& params, MatrixRef<S> x1, MatrixRef<S> x2,
                     const Context& ctx, ReversibleWorkspace<S>& ws,
                     KeptActivations<S>* keep_f = nullptr,
                     KeptActivations<S>* keep_g = nullptr) const {
    reversible_forward<S>(f_.at(at(l)), g_.at(at(l)), params, x1, x2, ctx, ws, keep_f, keep_g);
  }

  /// Block l alone, in place: (y1, y2, dy1, dy2) -> (x1, x2, dx1, dx2), from keep_f / keep_g
  /// where forward_block filled them.
  void backward_block(Index l, Parameters<S>& params, MatrixRef<S> y1, MatrixRef<S> y2,
                      MatrixRef<S> dy1, MatrixRef<S> dy2, const Context& ctx,
                      KeptActivations<S>* keep_f = nullptr,
                      KeptActivations<S>* keep_g = nullptr) const {
    reversible_backward<S>(f_.at(at(l)), g_.at(at(l)), params, y1, y2, dy1, dy2, ctx, keep_f,
                           keep_g);
  }

 private:
  static std::size_t at(Index i) { return static_cast<std::size_t>(i); }

  // Recording: one tape per block (a hashing block resizes its own when the shape differs, so
  // a record reused across steps keeps its memory). Replaying: the record must have one each.
  void prepare(BucketRecord& buckets) const {
    if (buckets.replay) {
      check_record("ReversibleStack::forward", buckets);
    } else {
      buckets.layers.resize(f_.size());
    }
  }
  // Chooses the kept sublayers of a pass over n columns: the G sublayers block by block, then the
  // F sublayers, each that can keep and fits what is left of the budget; the others give their
  // memory back.
  void plan_kept(KeptRecord<S>& kept, Index n, const Context& ctx) const {
    const std::size_t blocks = f_.size();
    kept.attention.resize(blocks);
    kept.feed_forward.resize(blocks);
    kept.attention_kept.assign(blocks, false);
    kept.feed_forward_kept.assign(blocks, false);
    std::size_t left = kept.budget_bytes;
    const auto plan = [&](const Sublayer<S>& layer, KeptActivations<S>& slot) {
      const std::size_t bytes = layer.kept_bytes(n, ctx);
      slot.filled = false;
      if (bytes > 0 && bytes <= left) {
        left -= bytes;
        return true;
      }
      slot.release();
      return false;
    };
    for (std::size_t l = 0; l < blocks; ++l)
      kept.feed_forward_kept[l] = plan(g_[l], kept.feed_forward[l]);
    for (std::size_t l = 0; l < blocks; ++l)
      kept.attention_kept[l] = plan(f_[l], kept.attention[l]);
  }
  // Block l's slot of F (feed_forward = false) or G, or null: no record, or a slot the plan left
  // out.
  static KeptActivations<S>* kept_slot(KeptRecord<S>* kept, bool feed_forward, Index l) {
    if (kept == nullptr) return nullptr;
    const std::vector<bool>& chosen = feed_forward ? kept->feed_forward_kept : kept->attention_kept;
    if (!chosen.at(at(l))) return nullptr;
    return feed_forward ? &kept->feed_forward[at(l)] : &kept->attention[at(l)];
  }
  void check_kept(const char* where, const KeptRecord<S>& kept) const {
    REFORMER_REQUIRE(kept.attention.size() == f_.size() && kept.feed_forward.size() == f_.size() &&
                         kept.attention_kept.size() == f_.size() &&
                         kept.feed_forward_kept.size() == f_.size(),
                     InvalidArgument, where, "kept activations of ", kept.feed_forward.size(),
                     " blocks for a stack of ", size(), " (pass the record its forward filled)");
  }
  void check_record(const char* where, const BucketRecord& buckets) const {
    REFORMER_REQUIRE(buckets.layers.size() == f_.size(), InvalidArgument, where,
                     "replaying buckets needs one BucketTape per layer: got ",
                     buckets.layers.size(), " for ", size(), " layers");
  }

  std::vector<Sublayer<S>> f_, g_;
};

}  // namespace reformer
