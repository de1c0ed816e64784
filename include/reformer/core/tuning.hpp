#pragma once
// Every performance tuning constant of the library, with the reason for its value.
//
// None of these changes what is computed beyond rounding: every blocking below is a function
// of the shapes only, never of the thread count, so results stay bitwise identical for any
// number of threads whatever the values. Changing a block size may change the summation order
// of a split reduction (and so the last bits of a result), and the memory bounds change the
// peak memory, not the results.
#include "reformer/core/types.hpp"

namespace reformer::tuning {

// ---- Parallel loops (ops/parallel.hpp) ---------------------------------------------------------

/// Below this many floating-point operations a loop runs on the calling thread: starting a
/// parallel region costs more than it saves on so little work. The blocks are the same either
/// way, so results do not depend on the choice.
inline constexpr double kMinParallelFlops = 1 << 20;

/// Columns (tokens) per block of token-parallel elementwise work (LayerNorm, dropout,
/// activations, the reversible stream updates). Trades the per-block overhead (and LayerNorm's
/// per-block partial sums of dgamma / dbeta) against load balance: T = 4096 gives 32 blocks.
inline constexpr Index kColumnBlock = 128;

/// Rough cost of one dropout draw (counter hashing) in flops; only decides whether a dropout
/// loop is worth running in parallel (kMinParallelFlops).
inline constexpr double kDropoutFlopsPerElement = 20.0;

// ---- Blocked products (ops/linear.hpp) ---------------------------------------------------------
//
// Eigen's GEMM copies ("packs") both operands into its own panel layout. A block of a product
// split over output columns re-packs the whole left operand (the weight); with blocks of w
// columns that costs one packed weight element per 2w flops. At w = 128 the packing was 14% of
// the model step's CPU time (T = 4096, perf). Wide column blocks and token-split weight
// gradients made the T = 4096 step about 14% faster (interleaved A/B, medians of 6 runs: 1.08 s
// before, 0.92 s after).

/// Products split over their output columns aim at this many blocks: enough to keep the
/// threads busy.
inline constexpr Index kProductColumnBlocks = 8;
/// Narrowest column block of a product (a multiple of 64): wide enough to amortise re-packing
/// the weight. Products with fewer than twice this many columns split over rows instead.
inline constexpr Index kMinProductColumns = 256;
/// Widest column block of a product: beyond it the blocks of a long sequence are too few per
/// thread, and packing is already amortised (one packed weight element per 2048 flops).
inline constexpr Index kMaxProductColumns = 1024;

/// Products too narrow to split over columns split over their output rows: blocks of at least
/// kMinRowBlock rows, at most kMaxRowBlocks of them. Every row block re-packs the right
/// operand, so fewer, taller blocks pack less; more blocks balance the threads better.
inline constexpr Index kMinRowBlock = 32;
inline constexpr Index kMaxRowBlocks = 8;

/// Weight gradients dW += dy x^T are summed over blocks of kGradTokenBlock tokens (each partial
/// product packs only its own tokens, instead of every row block of dW re-packing all of x),
/// at most kGradPartials partial dW at a time: kGradPartials x |dW| of extra memory against
/// parallelism (8 keeps 2 to 8 threads busy).
inline constexpr Index kGradTokenBlock = 256;
inline constexpr Index kGradPartials = 8;

// ---- Cross-entropy (ops/cross_entropy.hpp) -----------------------------------------------------

/// Default tokens per chunk of the cross-entropy op: the logits buffer is V x chunk.
/// Trades the buffer size against the per-chunk overhead (two products and a softmax per chunk).
/// Also the smallest chunk the heads choose on their own (kHeadChunkScalars).
inline constexpr Index kCrossEntropyDefaultChunk = 128;

/// Scalars of the per-chunk buffers (logits, the normalised input and its gradient) a head
/// aims for when its chunk size is 0 (automatic, model/lm_head.hpp): 2^21, 8 MiB in float,
/// i.e. 1152 tokens of the 256-token vocabulary, 2D = 512 model of the benchmarks. Small chunks
/// cost speed: every chunk's products re-pack the V x 2D weight, per thread, and open their own
/// parallel regions (at 128 tokens the 4K step of that model ran about 3.5% slower).
inline constexpr Index kHeadChunkScalars = Index{1} << 21;

// ---- Attention sublayer and feed-forward (layers/) --------------------------------------------

/// Scalars of the per-head matrices of one head group (e.g. its rows of the attention output)
/// an attention sublayer call aims for: 2^22, 16 MiB in float, i.e. all 4 heads of 64 up to 16K
/// tokens per call. Bounds the working set of long inputs; larger groups do more per call.
inline constexpr Index kHeadGroupScalars = Index{1} << 22;

/// Rough cost of one activation (erf) in flops; only decides whether an activation loop is
/// worth running in parallel (kMinParallelFlops).
inline constexpr double kActivationFlops = 20.0;

// ---- Dense attention cores (layers/full_attention.hpp, layers/local_attention.hpp) ------------

/// Queries whose softmax the chunk kernel computes together (layers/chunk_attention.hpp,
/// masked_softmax_columns): a query's maximum and sum over a chunk's 128 keys are chains of
/// only 8 dependent packet operations each (16 float lanes), so one query at a time leaves the
/// vector units waiting. Four queries at a time (with the reciprocal of the sum) took a 128-key,
/// 64-query chunk's forward from 25.6-27.6 us to 24.1-25.1 us and its backward from 55-58 us to
/// 52-53 us (AVX-512, one thread, alternating builds); two and eight queries measured about the
/// same as four in the softmax alone.
inline constexpr int kSoftmaxQueries = 4;

/// Queries per panel of full attention: the T x T matrix is never held whole, a thread holds a
/// few T x kFullAttentionQueryBlock buffers. Smaller panels use less memory, larger ones give
/// longer products.
inline constexpr Index kFullAttentionQueryBlock = 64;

/// Query positions per parallel work item of local attention (chunks are grouped to cover
/// about this many): enough work per item to amortise its start, enough items to balance.
inline constexpr Index kLocalAttentionItemTokens = 256;

// ---- LSH attention (layers/lsh_bucketing.hpp, layers/lsh_attention.hpp) -----------------------

/// Tokens per block of the bucket hashing: the rotated buffer stays small (rotations x 256).
inline constexpr Index kLshHashTokenBlock = 256;

/// Sorted chunks per block, the work item of LSH's attention phases (at least chunks_before +
/// chunks_after): a block copies its chunks and the neighbours its windows reach once, so longer
/// blocks copy less per chunk; shorter ones balance the threads.
inline constexpr Index kLshChunksPerItem = 4;

/// Positions per parallel work item of the per-head phases (hashing, the key scales, the
/// rounds' final normalisation): fixed blocks of 4096 let a single long head keep every core
/// busy.
inline constexpr Index kLshPositionsPerItem = 4096;

/// How many columns ahead the scattered gathers and scatters of sorted places prefetch: far enough
/// to hide the memory latency of a cache miss, near enough that the lines are still cached when
/// read.
inline constexpr Index kLshPrefetchDistance = 8;

/// Scalars of per-head buffers one wave of heads may hold: 2^24, 64 MiB in float. Bounds the
/// peak memory of long inputs.
inline constexpr Index kLshWaveScalars = Index{1} << 24;

/// Blocks of chunks a wave aims for: enough items for the threads; more heads per wave only help
/// short sequences.
inline constexpr Index kLshWaveItems = 64;

/// Scalars of chunk probabilities the backward of one wave may store: 2^24, 64 MiB in float.
/// The backward's recomputing forward stores the probabilities of every chunk of the rounds
/// before the last (window x chunk scalars per chunk; the last round's chunks run their backward
/// straight after their forward) and the chunk backward takes them instead of computing the
/// scores and their softmax a third time. With R = 2 and chunks of 64 attending to 128 keys that
/// covers one head up to 128K tokens; a wave whose store would be larger recomputes them.
/// Transient: held during one attention sublayer's backward only.
inline constexpr Index kLshStoredProbabilityScalars = Index{1} << 24;

// ---- Fused feed-forward (layers/feed_forward.hpp) ---------------------------------------------

/// Column (token) blocks of the fused feed-forward kernel: a block runs LayerNorm, both
/// products, the activation and both dropouts on its own D x w and F x w buffers. It re-packs a
/// weight for every product by a weight (2 forward, 4 in the backward with its recomputation:
/// one packed weight element per 2 w flops), and the backward's weight-gradient products read
/// and write the whole dW1 / dW2 once per block.
/// The width w aims at kFeedForwardBlocks blocks (enough for the threads), the narrowest multiple
/// of 64 that gives at most that many, within [kFeedForwardMinColumns, kFeedForwardMaxColumns]:
/// w = 256 up to N = 2048 columns, 512 from N = 3585. Against a fixed 256, the hf_config
/// feed-forward at T = 4096 was about 5% faster (interleaved A/B, docs/benchmarks.md); a maximum
/// of 1024 measured the same as 512 at T = 16384 and doubles the F x w buffers of a thread.
inline constexpr Index kFeedForwardBlocks = 8;
inline constexpr Index kFeedForwardMinColumns = 256;
inline constexpr Index kFeedForwardMaxColumns = 512;

/// Groups of consecutive blocks the fused backward accumulates its parameter gradients in: every
/// group but the first holds a partial dW1 and dW2 (2 F D scalars), summed in group order at the
/// end. 8 keeps 2 to 8 threads busy for the memory of kGradPartials.
inline constexpr Index kFeedForwardGradGroups = 8;

}  // namespace reformer::tuning
