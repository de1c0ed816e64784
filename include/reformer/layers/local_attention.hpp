#pragma once
// LocalAttention: chunked (local) multi-head self-attention (docs/DESIGN.md 1.3), an attention
// core for AttentionSublayer. Cost O(T * C) per head instead of O(T^2).
//
// Per sequence b (columns [b*T, (b+1)*T) of xn) and head h (rows [h*Dh, (h+1)*Dh)):
//   q = W_q xn,  k = W_k xn / sqrt(Dh),  v = W_v xn                 Dh x T each
//   T <= C: one chunk, dense attention over the sequence (Hugging Face's standard attention);
//   otherwise positions are cut into n = ceil(T / C) chunks of C consecutive tokens (the last
//   one shorter when C does not divide T) and the queries of chunk c attend to the keys of the
//   chunks adjacent_chunk(c, i, n), i = -chunks_before .. chunks_after (chunk_attention.hpp):
//   Hugging Face's circular window. Chunk 0 looks back at the last chunks; with a look-ahead the
//   last chunk looks ahead at the first ones; an offset of at least n in magnitude gives chunk
//   c itself, so a window can hold a chunk twice, and each copy's keys count in the softmax
//   (docs/DESIGN.md 7.2). A window that does not wrap is the contiguous column range
//       [(c - before) C, min(T, (c + after + 1) C));
//   s_ij = q_i . k_j; masks replace s_ij (chunk_attention.hpp): causal -1e9 where
//   pos(j) > pos(i) (when causal), key padding -1e9 where key j is padding (ctx.mask,
//   docs/DESIGN.md 7.1); no self mask;  p = softmax_j(s),  p~ = Dropout(p),  o_i = sum_j p~_ij v_j
//   dropout key ctx.rng(stream::kAttentionProbsDropout).derive(b).derive(h), draw index
//   pos(i) * T + pos(j) — the same masks as FullAttention's for the same (query, key) pair.
//
// T not a multiple of C (the layer used on its own; a model pads T to a multiple of its chunk
// lengths): the last chunk is shorter. This is what Hugging Face computes for the sequence padded
// with masked keys to a multiple of C, for every query with at least one allowed key: a masked
// key's weight exp(-1e9 - lse) is exactly 0 there.
//
// With the causal mask, wrapped keys that lie in the query's future weigh exactly 0, but keys of
// a chunk that appears twice in the window (chunks_before >= n) count twice.
//
// Parameters: <prefix>self_attention.query.weight, .key.weight, .value.weight, each [H*Dh, D]
// (no biases), the Hugging Face local-attention names.
//
// Parallelism: items (sequence, head, block of consecutive chunks), fixed by the shapes. In
// backward the blocks run in passes whose key windows do not overlap, each accumulating dk / dv
// in place for its chunks whose window does not wrap; the wrapping chunks (at most
// before + after per sequence and head) then run in order, one item per (sequence, head),
// adding their window's gradients chunk by chunk. Every key's gradient is summed in the same
// order for any thread count.
// Memory: O(N * H * Dh) for q, k, v and their gradients (drawn from ctx.workspace), plus O(C^2)
// per item.
#include "reformer/core/checked_size.hpp"
#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/growing_matrix.hpp"
#include "reformer/core/init.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/thread_buffers.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/core/tuning.hpp"
#include "reformer/core/types.hpp"
#include "reformer/core/workspace.hpp"
#include "reformer/layers/attention_sublayer.hpp"
#include "reformer/layers/chunk_attention.hpp"
#include "reformer/layers/detail/head_projection.hpp"
#include "reformer/layers/detail/key_padding.hpp"
#include "reformer/layers/detail/qkv_core.hpp"
#include "reformer/layers/head_range.hpp"
#include "reformer/layers/projection_input.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

namespace reformer {

struct LocalAttentionConfig {
  Index num_heads = 1;      ///< H
  Index head_size = 64;     ///< Dh
  Index chunk_length = 64;  ///< C (HF local_attn_chunk_length)
  Index chunks_before = 1;  ///< chunks of look-back (HF local_num_chunks_before)
  Index chunks_after = 0;   ///< chunks of look-ahead (HF local_num_chunks_after)
  bool causal = true;       ///< mask keys after the query (HF is_decoder)
  double dropout = 0.0;     ///< dropout on the attention probabilities (training only)
  /// Chunks per parallel work item; 0 = automatic (about kItemTokens positions). A tuning knob
  /// only: results do not depend on it beyond rounding of the dk / dv summation order.
  Index item_chunks = 0;

  /// The local attention of a model configuration (a ReformerConfig, model/config.hpp).
  template <class ModelConfig>
  static LocalAttentionConfig from(const ModelConfig& m) {
    return {/*num_heads=*/m.num_attention_heads,
            /*head_size=*/m.head_size(),
            /*chunk_length=*/m.local_attn_chunk_length,
            /*chunks_before=*/m.local_num_chunks_before,
            /*chunks_after=*/m.local_num_chunks_after,
            /*causal=*/m.is_decoder,
            /*dropout=*/m.local_attention_probs_dropout_prob,
            /*item_chunks=*/0};
  }
};

template <class S>
class LocalAttention : public detail::QkvCore<S, LocalAttentionConfig> {
  using Base = detail::QkvCore<S, LocalAttentionConfig>;

 public:
  using Scalar = S;
  using Config = LocalAttentionConfig;

  /// Query positions per work item when cfg.item_chunks == 0: chunks are grouped so an item
  /// covers about this many.
  static constexpr Index kItemTokens = tuning::kLocalAttentionItemTokens;

  LocalAttention(const Config& cfg, Index hidden, Parameters<S>& params,
                 const std::string& prefix = "")
      : Base("LocalAttention", validated(cfg), hidden, params, prefix) {}

  /// a = attention(input): the input (layers/projection_input.hpp) is D x N, N = ctx.batch * T,
  /// a plain xn or x with a LayerNorm; a holds the rows of `heads` (all heads by default):
  /// heads.count*Dh x N.
  void forward(const Parameters<S>& params, const ProjectionInput<S>& input, MatrixRef<S> a,
               const Context& ctx, HeadRange heads = HeadRange::all()) const;
  /// forward() of a plain normalised input xn (D x N).
  void forward(const Parameters<S>& params, ConstMatrixRef<S> xn, MatrixRef<S> a,
               const Context& ctx, HeadRange heads = HeadRange::all()) const {
    forward(params, ProjectionInput<S>(xn), a, ctx, heads);
  }

  /// Recomputes the forward pass of `heads` (all by default; da and a: heads.count*Dh x N),
  /// ADDS their gradient w.r.t. the input to `dinput` (dxn += J^T da, or through the input's
  /// LayerNorm into dx, dgamma and dbeta), writes their recomputed rows of a and accumulates
  /// their rows of dW_q, dW_k, dW_v.
  void backward(Parameters<S>& params, const ProjectionInput<S>& input, ConstMatrixRef<S> da,
                const ProjectionInputGrad<S>& dinput, MatrixRef<S> a, const Context& ctx,
                HeadRange heads = HeadRange::all()) const;
  /// backward() of a plain normalised input xn: dxn += J^T da.
  void backward(Parameters<S>& params, ConstMatrixRef<S> xn, ConstMatrixRef<S> da, MatrixRef<S> dxn,
                MatrixRef<S> a, const Context& ctx, HeadRange heads = HeadRange::all()) const {
    backward(params, ProjectionInput<S>(xn), da, ProjectionInputGrad<S>(dxn), a, ctx, heads);
  }

 private:
  // How one call is cut into work items: item = (b * heads + h) * blocks + block, h the local
  // head of the call's head range.
  struct Layout {
    Index t = 0;                 // sequence length
    Index batch = 0, heads = 0;  // heads: the range's count
    Index chunk = 0;             // C
    Index chunks = 0;            // ceil(T / C)
    Index per_block = 0;         // chunks per item
    Index blocks = 0;            // items per (sequence, head)
    Index before = 0, after = 0;

    Index items() const { return batch * heads * blocks; }
    Index batch_of(Index item) const { return item / (heads * blocks); }
    Index head_of(Index item) const { return (item / blocks) % heads; }
    Index block_of(Index item) const { return item % blocks; }
    Index first_chunk(Index blk) const { return blk * per_block; }
    Index end_chunk(Index blk) const { return std::min(chunks, (blk + 1) * per_block); }
  };

  // Query columns [q0, q0 + nq) of one chunk and, when its window does not wrap, the key
  // window [k0, k0 + nk), within a sequence.
  struct Window {
    Index q0, nq, k0, nk;
  };

  // Whether the window of chunk c wraps around the sequence ends (then it is gathered).
  static bool wraps(const Layout& lay, Index c) {
    return lay.chunks > 1 && (c < lay.before || c + lay.after >= lay.chunks);
  }
  static Window window(const Layout& lay, Index c) {
    Window w{};
    w.q0 = c * lay.chunk;
    w.nq = std::min(lay.chunk, lay.t - w.q0);
    w.k0 = std::max<Index>(0, (c - lay.before) * lay.chunk);
    const Index k1 = std::min(lay.t, (c + lay.after + 1) * lay.chunk);
    w.nk = k1 - w.k0;
    return w;
  }
  static Index max_queries(const Layout& lay) { return std::min(lay.chunk, lay.t); }
  static Index max_keys(const Layout& lay) {
    return lay.chunks == 1 ? lay.t : (lay.before + lay.after + 1) * lay.chunk;
  }

  // A wrapped window, gathered: keys, values and positions of the chunks adjacent_chunk(c, i, n)
  // for i = -before .. after, in that order; in backward also their gradients. One per thread
  // (ThreadLocalBuffer, core/thread_buffers.hpp), so work items allocate nothing once it has
  // grown, whatever the head sizes of the layers using it.
  struct Gathered {
    GrowingMatrix<S> k, v, dk, dv;  // Dh x (largest window); the columns in use: leftCols(nk)
    std::vector<Index> pos;
    Index nk = 0;
  };
  // The sizes a Gathered is reserved for: {Dh x keys (keys, values, their gradients), keys}.
  struct GatheredKind {
    using Buffer = Gathered;
    static constexpr std::size_t kSizes = 2;
    static void grow(Gathered& g, const std::array<Index, kSizes>& n) {
      g.k.reserve(n[0]);
      g.v.reserve(n[0]);
      g.dk.reserve(n[0]);
      g.dv.reserve(n[0]);
      if (g.pos.size() < static_cast<std::size_t>(n[1]))
        g.pos.resize(static_cast<std::size_t>(n[1]));
    }
  };
  using ThreadGathered = ThreadLocalBuffer<GatheredKind>;
  // Columns [k0, k0 + nk) of the sequence for window slot i (offset i - before) of chunk c.
  static void window_chunk(const Layout& lay, Index c, Index i, Index& k0, Index& nk) {
    const Index m = adjacent_chunk(c, i - lay.before, lay.chunks);
    k0 = m * lay.chunk;
    nk = std::min(lay.chunk, lay.t - k0);
  }
  // The calling thread's Gathered, sized for this layout (Dh x its largest window; growing
  // writes the memory, so its pages are in). Every work item calls it, wrapping or not, so the
  // thread's buffers exist and are paged in after the first steps whichever thread later draws
  // a wrapping chunk (an allocation or a first touch there would be a steady-state page fault).
  Gathered& thread_gathered(const Layout& lay) const {
    const Index dh = cfg_.head_size, mk = max_keys(lay);
    Gathered& g = ThreadGathered::reserve({dh * mk, mk});
    g.k.reshape(dh, mk);
    g.v.reshape(dh, mk);
    g.dk.reshape(dh, mk);
    g.dv.reshape(dh, mk);
    return g;
  }
  template <class K, class V>
  void gather(const Layout& lay, Index c, const K& k, const V& v, Gathered& g) const {
    const Index slots = lay.before + lay.after + 1;
    g.nk = 0;
    for (Index i = 0; i < slots; ++i) {
      Index k0 = 0, nk = 0;
      window_chunk(lay, c, i, k0, nk);
      g.k.map().middleCols(g.nk, nk) = k.middleCols(k0, nk);
      g.v.map().middleCols(g.nk, nk) = v.middleCols(k0, nk);
      std::iota(g.pos.begin() + g.nk, g.pos.begin() + g.nk + nk, k0);
      g.nk += nk;
    }
  }

  // The fields of its own (QkvCore checks the shared ones).
  static const Config& validated(const Config& cfg) {
    const char* where = "LocalAttention";
    REFORMER_REQUIRE(cfg.chunk_length > 0, InvalidArgument, where,
                     "chunk_length = ", cfg.chunk_length, " must be positive");
    REFORMER_REQUIRE(cfg.chunks_before >= 0, InvalidArgument, where,
                     "chunks_before = ", cfg.chunks_before, " must be >= 0");
    REFORMER_REQUIRE(cfg.chunks_after >= 0, InvalidArgument, where,
                     "chunks_after = ", cfg.chunks_after, " must be >= 0");
    const auto adjacent = checked_add(cfg.chunks_before, cfg.chunks_after, kMaxIndex - 1);
    REFORMER_REQUIRE(adjacent && checked_mul(*adjacent + 1, cfg.chunk_length, Index{1} << 31),
                     InvalidArgument, where,
                     "the window (chunks_before + 1 + chunks_after) x "
                     "chunk_length = (",
                     cfg.chunks_before, " + 1 + ", cfg.chunks_after, ") x ", cfg.chunk_length,
                     " exceeds 2^31 positions");
    REFORMER_REQUIRE(cfg.item_chunks >= 0, InvalidArgument, where,
                     "item_chunks = ", cfg.item_chunks, " must be >= 0");
    return cfg;
  }

  using Base::cfg_;
  using Base::hidden_;
  using Base::qkv_;

  Layout layout(const char* where, const ProjectionInput<S>& input, const Context& ctx,
                HeadRange heads) const {
    Layout lay;
    lay.t = this->check_input(where, input, ctx, heads);
    lay.batch = ctx.batch;
    lay.heads = heads.count;
    lay.chunk = cfg_.chunk_length;
    lay.chunks = (lay.t + lay.chunk - 1) / lay.chunk;  // 1 when T <= C: dense
    lay.per_block =
        cfg_.item_chunks > 0 ? cfg_.item_chunks : std::max<Index>(1, kItemTokens / lay.chunk);
    lay.blocks = (lay.chunks + lay.per_block - 1) / lay.per_block;
    lay.before = cfg_.chunks_before;
    lay.after = cfg_.chunks_after;
    return lay;
  }

  ChunkAttentionOptions options(const Context& ctx, const detail::KeyPadding& padding, Index b,
                                Index h, Index t) const {
    ChunkAttentionOptions opts;
    opts.causal = cfg_.causal;
    opts.self_mask = false;
    opts.key_flags = padding.flags(b);
    if (ctx.training && cfg_.dropout > 0) {
      opts.dropout_rate = cfg_.dropout;
      opts.dropout_rng = ctx.rng(stream::kAttentionProbsDropout)
                             .derive(static_cast<std::uint64_t>(b))
                             .derive(static_cast<std::uint64_t>(h));
      opts.draw_stride = t;
    }
    return opts;
  }

  // 0, 1, ..., t - 1, drawn from the workspace.
  static ScratchArray<Index> positions(Workspace* ws, Index t) {
    ScratchArray<Index> pos(ws, t);
    std::iota(pos.begin(), pos.end(), Index(0));
    return pos;
  }

  // Columns [c0, c0 + nc) of sequence b in the rows of local head h of a count*Dh x N matrix.
  template <class M>
  auto cols(M& m, Index b, Index h, Index t, Index c0, Index nc) const {
    return m.block(h * cfg_.head_size, b * t + c0, cfg_.head_size, nc);
  }
};

// ---- member definitions -------------------------------------------------------------------------
// The heavy members are defined outside the class body, so they are not implicitly inline: a
// translation unit that declares `extern template class LocalAttention<float>;` (this repository's
// own tests, examples and benchmarks: instances/) then does not compile them again.

template <class S>
void LocalAttention<S>::forward(const Parameters<S>& params, const ProjectionInput<S>& input,
                                MatrixRef<S> a, const Context& ctx, HeadRange heads) const {
  heads = heads.resolve(cfg_.num_heads);
  const char* where = "LocalAttention::forward";
  const Layout lay = layout(where, input, ctx, heads);
  const detail::KeyPadding padding(where, ctx, lay.t);
  const Index n = input.cols(), rows = heads.count * cfg_.head_size;
  check_shape(where, "a", a.rows(), a.cols(), rows, n);
  Scratch<S> q_buf(ctx.workspace, rows, n), k_buf(ctx.workspace, rows, n),
      v_buf(ctx.workspace, rows, n);
  auto &q = q_buf.map(), &k = k_buf.map(), &v = v_buf.map();
  detail::project_qkv<S>(params, qkv_, heads, cfg_.head_size, input, q, k, v, ctx.workspace);
  const ScratchArray<Index> pos = positions(ctx.workspace, lay.t);
  parallel_for(lay.items(), [&](Index item) {
    const Index b = lay.batch_of(item), h = lay.head_of(item), blk = lay.block_of(item);
    const ChunkAttentionOptions opts = options(ctx, padding, b, heads.global(h), lay.t);
    ChunkAttentionWorkspace<S>& ws =
        thread_chunk_workspace<S>(max_queries(lay), max_keys(lay), cfg_.head_size);
    Gathered& g = thread_gathered(lay);
    for (Index c = lay.first_chunk(blk); c < lay.end_chunk(blk); ++c) {
      const Window w = window(lay, c);
      if (wraps(lay, c)) {
        gather(lay, c, cols(k, b, h, lay.t, 0, lay.t), cols(v, b, h, lay.t, 0, lay.t), g);
        chunk_attention_forward<S>(cols(q, b, h, lay.t, w.q0, w.nq), g.k.map().leftCols(g.nk),
                                   g.v.map().leftCols(g.nk), pos.data() + w.q0, g.pos.data(), opts,
                                   cols(a, b, h, lay.t, w.q0, w.nq), static_cast<S*>(nullptr), ws);
        continue;
      }
      chunk_attention_forward<S>(cols(q, b, h, lay.t, w.q0, w.nq), cols(k, b, h, lay.t, w.k0, w.nk),
                                 cols(v, b, h, lay.t, w.k0, w.nk), pos.data() + w.q0,
                                 pos.data() + w.k0, opts, cols(a, b, h, lay.t, w.q0, w.nq),
                                 static_cast<S*>(nullptr), ws);
    }
  });
}

template <class S>
void LocalAttention<S>::backward(Parameters<S>& params, const ProjectionInput<S>& input,
                                 ConstMatrixRef<S> da, const ProjectionInputGrad<S>& dinput,
                                 MatrixRef<S> a, const Context& ctx, HeadRange heads) const {
  heads = heads.resolve(cfg_.num_heads);
  const char* where = "LocalAttention::backward";
  const Layout lay = layout(where, input, ctx, heads);
  const detail::KeyPadding padding(where, ctx, lay.t);
  const Index n = input.cols(), dh = cfg_.head_size, rows = heads.count * dh;
  dinput.check_matches(where, input);
  detail::check_core_backward_buffers<S>(where, da, dinput.dx(), a, rows, input.rows(), n);
  Workspace* ws = ctx.workspace;
  Scratch<S> q_buf(ws, rows, n), k_buf(ws, rows, n), v_buf(ws, rows, n);
  auto &q = q_buf.map(), &k = k_buf.map(), &v = v_buf.map();
  detail::project_qkv<S>(params, qkv_, heads, cfg_.head_size, input, q, k, v, ws);
  const ScratchArray<Index> pos = positions(ws, lay.t);
  // dq replaces q in place: a chunk's queries are read only by that chunk, and the kernel reads
  // them completely before it writes their gradient.
  Scratch<S> dk_buf(ws, rows, n), dv_buf(ws, rows, n);
  auto &dq = q, &dk = dk_buf.map(), &dv = dv_buf.map();
  dk.setZero();
  dv.setZero();

  // Per chunk (layers/chunk_attention.hpp): o = v p~^T recomputed into a, dq of the chunk's
  // queries overwritten, dk / dv of its key window accumulated in place. The key windows of
  // neighbouring blocks overlap, so the blocks run in `passes` passes (pass p: the blocks
  // p, p + passes, ...), whose windows are disjoint within a pass: every key receives its
  // contributions in pass order, for any thread count, without per-item buffers. The chunks
  // whose window wraps are left out of the passes and run afterwards (below).
  const Index passes = 1 + (lay.before + lay.after + lay.per_block - 1) / lay.per_block;
  for (Index p = 0; p < passes && p < lay.blocks; ++p) {
    const Index per_pass = (lay.blocks - p + passes - 1) / passes;
    parallel_for(lay.batch * lay.heads * per_pass, [&](Index i) {
      const Index bh = i / per_pass, blk = p + (i % per_pass) * passes;
      const Index b = bh / lay.heads, h = bh % lay.heads;
      const ChunkAttentionOptions opts = options(ctx, padding, b, heads.global(h), lay.t);
      ChunkAttentionWorkspace<S>& ws =
          thread_chunk_workspace<S>(max_queries(lay), max_keys(lay), cfg_.head_size);
      for (Index c = lay.first_chunk(blk); c < lay.end_chunk(blk); ++c) {
        if (wraps(lay, c)) continue;
        const Window w = window(lay, c);
        chunk_attention_forward_backward<S>(
            cols(q, b, h, lay.t, w.q0, w.nq), cols(k, b, h, lay.t, w.k0, w.nk),
            cols(v, b, h, lay.t, w.k0, w.nk), pos.data() + w.q0, pos.data() + w.k0, opts,
            cols(da, b, h, lay.t, w.q0, w.nq), static_cast<const S*>(nullptr),
            cols(a, b, h, lay.t, w.q0, w.nq), cols(dq, b, h, lay.t, w.q0, w.nq),
            cols(dk, b, h, lay.t, w.k0, w.nk), cols(dv, b, h, lay.t, w.k0, w.nk), ws);
      }
    });
  }
  // The wrapping chunks, in order, one item per (sequence, head): each gathers its window,
  // computes the window's key and value gradients apart and adds them chunk by chunk (a chunk
  // that appears twice receives both parts, in window order).
  if (lay.chunks > 1) {
    parallel_for(lay.batch * lay.heads, [&](Index bh) {
      const Index b = bh / lay.heads, h = bh % lay.heads;
      const ChunkAttentionOptions opts = options(ctx, padding, b, heads.global(h), lay.t);
      ChunkAttentionWorkspace<S>& ws =
          thread_chunk_workspace<S>(max_queries(lay), max_keys(lay), cfg_.head_size);
      Gathered& g = thread_gathered(lay);
      for (Index c = 0; c < lay.chunks; ++c) {
        if (!wraps(lay, c)) continue;
        const Window w = window(lay, c);
        gather(lay, c, cols(k, b, h, lay.t, 0, lay.t), cols(v, b, h, lay.t, 0, lay.t), g);
        g.dk.map().leftCols(g.nk).setZero();
        g.dv.map().leftCols(g.nk).setZero();
        chunk_attention_forward_backward<S>(
            cols(q, b, h, lay.t, w.q0, w.nq), g.k.map().leftCols(g.nk), g.v.map().leftCols(g.nk),
            pos.data() + w.q0, g.pos.data(), opts, cols(da, b, h, lay.t, w.q0, w.nq),
            static_cast<const S*>(nullptr), cols(a, b, h, lay.t, w.q0, w.nq),
            cols(dq, b, h, lay.t, w.q0, w.nq), g.dk.map().leftCols(g.nk), g.dv.map().leftCols(g.nk),
            ws);
        Index off = 0;
        for (Index i = 0; i < lay.before + lay.after + 1; ++i) {
          Index k0 = 0, nk = 0;
          window_chunk(lay, c, i, k0, nk);
          cols(dk, b, h, lay.t, k0, nk) += g.dk.map().middleCols(off, nk);
          cols(dv, b, h, lay.t, k0, nk) += g.dv.map().middleCols(off, nk);
          off += nk;
        }
      }
    });
  }
  // k and v are no longer read (q_buf holds dq now)
  k_buf.reset();
  v_buf.reset();

  // q = W_q xn, k = W_k xn / sqrt(Dh), v = W_v xn  =>  dW += d(.) xn^T,
  // dxn += W_q^T dq + W_k^T dk + W_v^T dv, the 1/sqrt(Dh) moved onto dk (this group's rows).
  detail::project_qkv_backward<S>(params, qkv_, heads, cfg_.head_size, input, dq, dk, dv, dinput,
                                  ws);
}

/// The local-attention sublayer a user instantiates: LN -> LocalAttention -> W_o (-> dropout).
template <class S>
using LocalAttentionLayer = AttentionSublayer<S, LocalAttention<S>>;
template <class S>
using LocalAttentionLayerConfig = typename LocalAttentionLayer<S>::Config;

}  // namespace reformer
