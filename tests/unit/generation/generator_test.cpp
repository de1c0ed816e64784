// Generator (model/generator.hpp): the logits of every appended token against the last column of
// the full forward pass on the whole prefix, for local, full and LSH layers and mixed stacks;
// each attention cache against its core's forward on the sequence of cached inputs; bad input.
#include "reformer/model/generator.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/model/attention_cache.hpp"
#include "reformer/model/reformer_lm.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

namespace reformer {
namespace {

/// A small decoder: D = 16, 2 heads of 8, chunks of 8, no dropout.
ReformerConfig small_config(std::vector<std::string> layers) {
  ReformerConfig c;
  c.vocab_size = 40;
  c.hidden_size = 16;
  c.num_attention_heads = 2;
  c.attention_head_size = 8;
  c.feed_forward_size = 32;
  c.attn_layers = std::move(layers);
  c.lsh_attn_chunk_length = 8;
  c.local_attn_chunk_length = 8;
  c.num_buckets = {4};
  c.axial_pos_embds = true;
  c.axial_pos_shape = {16, 32};  // T <= 512
  c.axial_pos_embds_dim = {8, 8};
  c.max_position_embeddings = 512;
  c.hidden_dropout_prob = 0.0;
  c.local_attention_probs_dropout_prob = 0.0;
  c.initializer_range = 0.3;  // sharper attention than the default, so windows matter
  c.seed = 7;
  return c;
}

std::vector<Token> random_tokens(Index n, Index vocab, std::uint64_t seed) {
  std::vector<Token> t(static_cast<std::size_t>(n));
  const Rng rng(seed);
  for (Index i = 0; i < n; ++i)
    t[static_cast<std::size_t>(i)] = static_cast<Token>(
        std::min<Index>(vocab - 1, static_cast<Index>(rng.uniform(static_cast<std::uint64_t>(i)) *
                                                      static_cast<double>(vocab))));
  return t;
}

template <class S>
double relative_error(const Vector<S>& got, const Vector<S>& want) {
  return static_cast<double>((got - want).cwiseAbs().maxCoeff() / want.cwiseAbs().maxCoeff());
}

/// Whether generation step s (0 = right after the prefill) is compared with the full forward:
/// every step of the first 12 (the dense-to-hashed switch of the short prompt at T = C + 1, the
/// first chunk boundary), then every 50th and the last, to keep the test fast; the caches are
/// compared at every step on their own below.
bool checked_step(Index s, Index steps) { return s < 12 || s % 50 == 0 || s == steps; }

/// Generates `steps` tokens after a prompt of `prompt` tokens and checks the logits against the
/// reference model's full forward on the prefix. With `replay`, the reference replays the
/// generator's buckets (float: a hash near a tie may flip with rounding).
template <class S>
void expect_exact(const ReformerConfig& cfg, Index prompt, Index steps, double tol, bool replay) {
  const ReformerLM<S> model(cfg);
  Generator<S> gen(model);
  const ReformerLM<S>& ref = gen.reference_model();
  const std::vector<Token> tokens = random_tokens(prompt + steps, cfg.vocab_size, 11);
  gen.prefill(TokenSpan(tokens.data(), prompt));
  for (Index t = prompt; t <= prompt + steps; ++t) {
    if (!checked_step(t - prompt, steps)) {
      gen.append(tokens[static_cast<std::size_t>(t)]);
      continue;
    }
    const TokenSpan prefix(tokens.data(), t);
    Matrix<S> full;
    if (replay) {
      BucketRecord record = gen.buckets();
      record.replay = true;
      full = ref.logits(prefix, 1, record);
    } else {
      full = ref.logits(prefix, 1);
    }
    const double err = relative_error<S>(gen.next_logits(), full.col(t - 1));
    ASSERT_LE(err, tol) << "length " << t;
    if (t < prompt + steps) gen.append(tokens[static_cast<std::size_t>(t)]);
  }
  EXPECT_EQ(gen.length(), prompt + steps);
}

struct Case {
  const char* name;
  std::vector<std::string> layers;
  Index rounds;
  std::vector<Index> buckets;
  Index lsh_before, lsh_after;
};

std::vector<Case> cases() {
  return {
      {"local", {"local", "local"}, 1, {4}, 1, 0},
      {"full", {"full"}, 1, {4}, 1, 0},
      {"full_local", {"full", "local", "full"}, 1, {4}, 1, 0},
      {"lsh_r1", {"lsh"}, 1, {4}, 1, 0},
      {"local_lsh_r2", {"local", "lsh"}, 2, {8}, 1, 0},
      {"full_local_lsh_r4_factorised", {"full", "local", "lsh"}, 4, {2, 4}, 1, 0},
      {"lsh_r2_auto_buckets", {"lsh"}, 2, {}, 1, 0},
      {"lsh_r2_two_chunks_back", {"local", "lsh"}, 2, {4}, 2, 0},
  };
}

ReformerConfig config_of(const Case& c) {
  ReformerConfig cfg = small_config(c.layers);
  cfg.num_hashes = c.rounds;
  cfg.num_buckets = c.buckets;
  cfg.lsh_num_chunks_before = c.lsh_before;
  cfg.lsh_num_chunks_after = c.lsh_after;
  return cfg;
}

TEST(Generator, ExactInDoubleWithAndWithoutAShortPrompt) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    expect_exact<double>(config_of(c), 3, 300, 1e-12, false);   // prompt shorter than a chunk
    expect_exact<double>(config_of(c), 37, 300, 1e-12, false);  // several chunks
  }
}

TEST(Generator, ExactInFloat) {
  const std::vector<Case> all = cases();
  for (std::size_t i = 0; i < all.size(); ++i) {
    SCOPED_TRACE(all[i].name);
    expect_exact<float>(config_of(all[i]), i % 2 == 0 ? 3 : 37, 300, 1e-5, true);
  }
}

TEST(Generator, AutoBucketsAreFixedFromTheMaximumLength) {
  ReformerConfig cfg = small_config({"lsh"});
  cfg.num_buckets = {};
  const ReformerLM<double> model(cfg);
  const Generator<double> gen(model, 256);
  // padded 256 / C 8 = 32 chunks -> 64 buckets, above the limit 2 * max(isqrt(512 / 8), 8) = 16
  EXPECT_EQ(gen.reference_model().config().num_buckets, (std::vector<Index>{8, 8}));
  EXPECT_EQ(Generator<double>::fixed_layout_config(cfg, 512).num_buckets,
            (std::vector<Index>{8, 16}));
}

// After prefill the logits are the last column of the prompt's forward pass for any stack, also
// where a later LSH layer makes the appended tokens follow the cached (causal) semantics.
TEST(Generator, PrefillMatchesTheForwardPassOfAnyStack) {
  ReformerConfig cfg = small_config({"lsh", "local", "lsh"});
  cfg.num_hashes = 2;
  const ReformerLM<double> model(cfg);
  Generator<double> gen(model);
  const std::vector<Token> tokens = random_tokens(70, cfg.vocab_size, 5);
  gen.prefill(tokens);
  const Matrix<double> full = gen.reference_model().logits(tokens, 1);
  EXPECT_LE(relative_error<double>(gen.next_logits(), full.col(69)), 1e-12);
  for (Index i = 0; i < 20; ++i) gen.append(tokens[static_cast<std::size_t>(i)]);
  EXPECT_TRUE(gen.next_logits().allFinite());
  EXPECT_GT(gen.cache_bytes(), std::size_t{0});
}

// The caches on their own: every appended column's output against the core's forward on all
// columns so far (the layer-level contract, which holds below other LSH layers too), starting
// from a prefill of 5 columns (shorter than a chunk of 8, longer than one of 4).
Matrix<double> random_inputs(Index rows, Index cols) {
  Matrix<double> x(rows, cols);
  const Rng rng(4);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = rng.normal(static_cast<std::uint64_t>(i));
  return x;
}

template <class Core, class Cache, class Prefill>
void expect_cache_matches_core(const Core& core, const Parameters<double>& params, Cache& cache,
                               const Context& ctx, Index n, Prefill&& prefill) {
  const Matrix<double> xn = random_inputs(core.hidden_size(), n);
  prefill(cache, xn.leftCols(5));
  const Index rows = core.out_features();
  Vector<double> a(rows);
  for (Index t = 5; t < n; ++t) {
    cache.append(params, xn.col(t), a);
    Matrix<double> full(rows, t + 1);
    core.forward(params, xn.leftCols(t + 1), full, ctx);
    ASSERT_LE((a - full.col(t)).cwiseAbs().maxCoeff(), 1e-12 * full.col(t).cwiseAbs().maxCoeff())
        << "t = " << t;
  }
}

TEST(AttentionCache, LshMatchesTheCoreOnTheCachedInputs) {
  for (Index rounds : {1, 2, 4}) {
    SCOPED_TRACE(rounds);
    LshAttentionConfig cfg;
    cfg.num_heads = 2;
    cfg.head_size = 8;
    cfg.chunk_length = 4;
    cfg.num_hashes = rounds;
    cfg.num_buckets = rounds == 4 ? std::vector<Index>{2, 4} : std::vector<Index>{4};
    cfg.chunks_before = rounds == 2 ? 2 : 1;
    cfg.chunks_after = rounds == 2 ? 1 : 0;
    Parameters<double> params;
    const LshAttention<double> core(cfg, 12, params);
    core.init(params, Rng(3), 0.5);
    Context ctx;
    ctx.layer = 2;
    ctx.seed = 9;
    LshAttentionCache<double> cache(core, core.bucket_layout(90), ctx, 90);
    expect_cache_matches_core(core, params, cache, ctx, 90,
                              [&](auto& c, const auto& x) { c.prefill(params, x, nullptr); });
  }
}

TEST(AttentionCache, LocalMatchesTheCoreOnTheCachedInputs) {
  for (Index before : {0, 1, 2}) {
    SCOPED_TRACE(before);
    LocalAttentionConfig cfg;
    cfg.num_heads = 2;
    cfg.head_size = 8;
    cfg.chunk_length = 4;
    cfg.chunks_before = before;
    Parameters<double> params;
    const LocalAttention<double> core(cfg, 12, params);
    core.init(params, Rng(3), 0.5);
    LocalAttentionCache<double> cache(core);
    expect_cache_matches_core(core, params, cache, Context{}, 60,
                              [&](auto& c, const auto& x) { c.prefill(params, x); });
  }
}

TEST(AttentionCache, FullMatchesTheCoreOnTheCachedInputs) {
  FullAttentionConfig cfg;
  cfg.num_heads = 2;
  cfg.head_size = 8;
  Parameters<double> params;
  const FullAttention<double> core(cfg, 12, params);
  core.init(params, Rng(3), 0.5);
  FullAttentionCache<double> cache(core, 60);
  expect_cache_matches_core(core, params, cache, Context{}, 60,
                            [&](auto& c, const auto& x) { c.prefill(params, x); });
}

TEST(Generator, GenerateStopsAtAStopTokenOrTheMaximumLength) {
  const ReformerConfig cfg = small_config({"local", "lsh"});
  const ReformerLM<double> model(cfg);
  Generator<double> gen(model, 40);
  SamplingOptions greedy;
  greedy.temperature = 0.0;
  Sampler sampler(greedy, 1);
  const std::vector<Token> prompt = {1, 2, 3};
  const std::vector<Token> out = generate(gen, prompt, 100, sampler);
  ASSERT_EQ(out.size(), 37u);  // prompt + new tokens = max_length = 40
  // Greedy: each token is the argmax of the full forward on the prefix before it.
  std::vector<Token> seq = prompt;
  for (std::size_t i = 0; i < 5; ++i) {
    const Matrix<double> l = gen.reference_model().logits(seq, 1);
    Index best = 0;
    l.col(l.cols() - 1).maxCoeff(&best);
    EXPECT_EQ(out[i], best) << i;
    seq.push_back(out[i]);
  }
  greedy.stop_tokens = {out[2]};
  Sampler stopping(greedy, 1);
  const std::vector<Token> short_out = generate(gen, prompt, 100, stopping);
  EXPECT_LE(short_out.size(), 3u);
  EXPECT_EQ(short_out.back(), out[2]);
}

TEST(Generator, BadInputIsAClearError) {
  const ReformerConfig cfg = small_config({"local", "lsh"});
  const ReformerLM<double> model(cfg);
  Generator<double> gen(model, 16);
  EXPECT_THROW(gen.next_logits(), InvalidArgument);
  EXPECT_THROW(gen.append(1), InvalidArgument);  // before prefill
  EXPECT_THROW(gen.prefill(std::vector<Token>{}), InvalidArgument);
  EXPECT_THROW(gen.prefill(std::vector<Token>{1, 40}), InvalidArgument);
  EXPECT_THROW(gen.prefill(std::vector<Token>{1, -1}), InvalidArgument);
  EXPECT_THROW(gen.prefill(std::vector<Token>(17, 1)), InvalidArgument);
  gen.prefill(std::vector<Token>(15, 1));
  EXPECT_THROW(gen.append(40), InvalidArgument);
  gen.append(2);
  try {
    gen.append(3);
    FAIL() << "no error past max_length";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("max_length = 16"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Generator<double>(model, 513), InvalidArgument);
  EXPECT_THROW(Generator<double>(model, -1), InvalidArgument);
}

}  // namespace
}  // namespace reformer
