// The shared chunk kernel against a naive scalar reference, and its hand-written backward
// against finite differences (double), including the lse gradient path and dropout.
#include "reformer/layers/chunk_attention.hpp"

#include "reformer/core/thread_buffers.hpp"
#include "reformer/core/threading.hpp"

#include "local_test_util.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace reformer {
namespace {

using test::finite_differences;
using test::gradcheck_error;
using test::random_matrix;
using test::relative_error;

// Naive reference written from the formulas, one score at a time.
struct NaiveResult {
  Matrix<double> o;
  Vector<double> lse;
};

NaiveResult naive_chunk(const Matrix<double>& q, const Matrix<double>& k, const Matrix<double>& v,
                        const std::vector<Index>& qpos, const std::vector<Index>& kpos,
                        const ChunkAttentionOptions& opts) {
  const Index cq = q.cols(), ck = k.cols();
  NaiveResult r{Matrix<double>::Zero(v.rows(), cq), Vector<double>(cq)};
  for (Index i = 0; i < cq; ++i) {
    std::vector<double> s(static_cast<std::size_t>(ck));
    for (Index j = 0; j < ck; ++j) {
      double sij = 0;
      for (Index d = 0; d < q.rows(); ++d) sij += q(d, i) * k(d, j);
      const Index a = qpos[static_cast<std::size_t>(i)], b = kpos[static_cast<std::size_t>(j)];
      if (opts.causal && b > a) sij = -1e9;
      if (opts.self_mask && b == a) sij = -1e5;
      if (b >= opts.valid_length) sij = -1e9;
      s[static_cast<std::size_t>(j)] = sij;
    }
    double mx = -1e300;
    for (double x : s) mx = std::max(mx, x);
    double sum = 0;
    for (double x : s) sum += std::exp(x - mx);
    r.lse(i) = mx + std::log(sum);
    for (Index j = 0; j < ck; ++j) {
      double p = std::exp(s[static_cast<std::size_t>(j)] - r.lse(i));
      if (opts.dropout_rate > 0) {
        const auto idx =
            static_cast<std::uint64_t>(qpos[static_cast<std::size_t>(i)] * opts.draw_stride +
                                       kpos[static_cast<std::size_t>(j)]);
        p = opts.dropout_rng.uniform(idx) < opts.dropout_rate ? 0.0 : p / (1.0 - opts.dropout_rate);
      }
      r.o.col(i) += p * v.col(j);
    }
  }
  return r;
}

struct Case {
  std::string name;
  bool causal, self_mask;
  Index valid_length;
  double dropout;
};

std::vector<Case> cases() {
  const Index none = std::numeric_limits<Index>::max();
  return {{"plain", false, false, none, 0.0},     {"causal", true, false, none, 0.0},
          {"causal_self", true, true, none, 0.0}, {"self_padding", false, true, 11, 0.0},
          {"all_masks", true, true, 11, 0.0},     {"dropout", true, false, none, 0.3},
          {"dropout_all", true, true, 11, 0.5}};
}

ChunkAttentionOptions options_of(const Case& c) {
  ChunkAttentionOptions o;
  o.causal = c.causal;
  o.self_mask = c.self_mask;
  o.valid_length = c.valid_length;
  o.dropout_rate = c.dropout;
  o.dropout_rng = Rng(7).derive(3);
  o.draw_stride = 16;
  return o;
}

// LSH-like positions: a window of an earlier chunk then the own chunk, not monotone, with the
// queries' own positions among the keys and a couple of positions >= 11 (padding when masked).
const std::vector<Index> kQueryPos = {5, 2, 9, 12, 7};
const std::vector<Index> kKeyPos = {1, 8, 3, 14, 0, 6, 5, 2, 9, 12, 7};

// Inputs shaped for kQueryPos and kKeyPos: q is 6 x 5, k is 6 x 11 and v is value_rows x 11,
// drawn from Rng(seed), Rng(seed + 1) and Rng(seed + 2).
struct ChunkInputs {
  Matrix<double> q, k, v;
  ChunkInputs(std::uint64_t seed, Index value_rows)
      : q(random_matrix(6, 5, Rng(seed))),
        k(random_matrix(6, 11, Rng(seed + 1))),
        v(random_matrix(value_rows, 11, Rng(seed + 2))) {}
};

TEST(ChunkAttention, ForwardMatchesNaiveReference) {
  const ChunkInputs in(1, 4);
  ChunkAttentionWorkspace<double> ws;
  for (const Case& c : cases()) {
    const auto opts = options_of(c);
    Matrix<double> o(4, 5);
    Vector<double> lse(5);
    chunk_attention_forward<double>(in.q, in.k, in.v, kQueryPos.data(), kKeyPos.data(), opts, o,
                                    lse.data(), ws);
    const NaiveResult ref = naive_chunk(in.q, in.k, in.v, kQueryPos, kKeyPos, opts);
    EXPECT_LT(relative_error(o, ref.o), 1e-13) << c.name;
    EXPECT_LT(relative_error(lse, ref.lse), 1e-13) << c.name;
  }
}

TEST(ChunkAttention, DropoutDropsSomeButNotAll) {
  // The dropout case must actually differ from the undropped one (a test that could fail).
  const ChunkInputs in(1, 4);
  ChunkAttentionWorkspace<double> ws;
  auto opts = options_of(cases()[5]);
  Matrix<double> with(4, 5), without(4, 5);
  chunk_attention_forward<double>(in.q, in.k, in.v, kQueryPos.data(), kKeyPos.data(), opts, with,
                                  nullptr, ws);
  opts.dropout_rate = 0;
  chunk_attention_forward<double>(in.q, in.k, in.v, kQueryPos.data(), kKeyPos.data(), opts, without,
                                  nullptr, ws);
  EXPECT_GT(relative_error(with, without), 1e-3);
}

TEST(ChunkAttention, PositionsMayBeInt32AndWorkspaceIsReusable) {
  const Matrix<double> q = random_matrix(3, 4, Rng(11));
  const Matrix<double> k = random_matrix(3, 8, Rng(12));
  const Matrix<double> v = random_matrix(3, 8, Rng(13));
  const std::vector<std::int32_t> qp = {4, 5, 6, 7};
  const std::vector<std::int32_t> kp = {0, 1, 2, 3, 4, 5, 6, 7};
  ChunkAttentionOptions opts;
  ChunkAttentionWorkspace<double> big(16, 16), fresh;
  Matrix<double> a(3, 4), b(3, 4);
  chunk_attention_forward<double>(q, k, v, qp.data(), kp.data(), opts, a, nullptr, big);
  chunk_attention_forward<double>(q, k, v, qp.data(), kp.data(), opts, b, nullptr, fresh);
  EXPECT_EQ(a, b);  // a larger workspace (strided blocks) gives bitwise the same result
  EXPECT_EQ(big.max_queries(), 16);
  EXPECT_EQ(fresh.max_keys(), 8);
  // The views are contiguous whatever the workspace grew to: the softmax's vectorised column sums
  // then round the same way for every history of the thread's workspace.
  EXPECT_EQ(big.probs(8, 4).outerStride(), 8);
  EXPECT_EQ(big.grads(5, 3).outerStride(), 5);
}

TEST(ChunkAttention, FullyMaskedQueryStaysFinite) {
  // Every key is padding: all scores are -1e9, the softmax is uniform, nothing is NaN.
  const Matrix<double> q = random_matrix(3, 2, Rng(1));
  const Matrix<double> k = random_matrix(3, 4, Rng(2));
  const Matrix<double> v = random_matrix(2, 4, Rng(3));
  const std::vector<Index> qp = {0, 1}, kp = {4, 5, 6, 7};
  ChunkAttentionOptions opts;
  opts.causal = false;
  opts.valid_length = 2;
  ChunkAttentionWorkspace<double> ws;
  Matrix<double> o(2, 2);
  Vector<double> lse(2);
  chunk_attention_forward<double>(q, k, v, qp.data(), kp.data(), opts, o, lse.data(), ws);
  EXPECT_TRUE(o.allFinite());
  const Vector<double> mean = v.rowwise().mean();
  EXPECT_LT(relative_error(o.col(0), mean), 1e-14);
  EXPECT_NEAR(lse(0), -1e9 + std::log(4.0), 1e-6);
}

// Key padding of positions [offset, offset + n): about a fifth of them padded (0).
std::vector<std::uint8_t> random_key_flags(Rng& rng, Index offset, Index n) {
  std::vector<std::uint8_t> key_flags(static_cast<std::size_t>(offset + n), 1);
  for (Index t = 0; t < n; ++t) {
    if (rng.uniform(static_cast<std::uint64_t>(t)) < 0.2)
      key_flags[static_cast<std::size_t>(offset + t)] = 0;
  }
  return key_flags;
}

// Mask combination `combo` (4 bits): causal, self, key padding, keys from valid_length missing.
ChunkAttentionOptions mask_combination(int combo, const std::vector<std::uint8_t>& key_flags,
                                       Index valid_length) {
  ChunkAttentionOptions opts;
  opts.causal = (combo & 1) != 0;
  opts.self_mask = (combo & 2) != 0;
  opts.key_flags = (combo & 4) != 0 ? key_flags.data() : nullptr;
  if ((combo & 8) != 0) opts.valid_length = valid_length;
  return opts;
}

// Random key positions in [offset, offset + span) and query positions, of which every
// `share_every`-th (from the first) is a key's position (the self mask).
struct RandomPositions {
  std::vector<Index> q, k;
};
RandomPositions random_positions(Rng& rng, Index& draw, Index offset, Index span, Index cq,
                                 Index ck, Index share_every) {
  RandomPositions p{std::vector<Index>(static_cast<std::size_t>(cq)),
                    std::vector<Index>(static_cast<std::size_t>(ck))};
  for (auto& t : p.k) t = offset + static_cast<Index>(rng.uniform(draw++) * double(span));
  for (Index i = 0; i < cq; ++i) {
    p.q[static_cast<std::size_t>(i)] =
        i % share_every == 0 ? p.k[static_cast<std::size_t>(i % ck)]
                             : offset + static_cast<Index>(rng.uniform(draw++) * double(span));
  }
  return p;
}

// The packet masks of the kernel (detail::mask_scores, detail::masked_softmax_grad) against the
// per-score definition (detail::chunk_mask), bitwise: every combination of the masks, windows
// of any length (packets and tails), repeated positions, key padding, keys that do not exist,
// and positions too large to be exact in float (the per-score path).
template <class S>
void check_vector_masks_match_scalar(Index position_offset) {
  Rng rng(5);
  const auto key_flags = random_key_flags(rng, position_offset, 64);
  Index draw = 1000;
  int masked_seen = 0;
  for (const Index ck : {1, 5, 8, 16, 19, 128}) {
    for (int combo = 0; combo < 16; ++combo) {
      const ChunkAttentionOptions opts = mask_combination(combo, key_flags, position_offset + 40);
      const Index cq = 3;
      // the first query shares a key's position (self)
      const auto [qpos, kpos] = random_positions(rng, draw, position_offset, 48, cq, ck, cq);
      const auto km = detail::chunk_key_masks<S>(qpos.data(), cq, kpos.data(), ck, opts);
      EXPECT_EQ(km.vector, position_offset < (Index(1) << std::numeric_limits<S>::digits));
      for (Index i = 0; i < cq; ++i) {
        const Index qp = qpos[static_cast<std::size_t>(i)];
        std::vector<S> col(static_cast<std::size_t>(ck)), want(col.size());
        for (Index j = 0; j < ck; ++j)
          col[static_cast<std::size_t>(j)] = static_cast<S>(rng.uniform(draw++) * 8 - 4);
        want = col;
        S want_max = -std::numeric_limits<S>::infinity();
        std::vector<bool> masked(col.size());
        for (Index j = 0; j < ck; ++j) {
          const auto u = static_cast<std::size_t>(j);
          double value = 0;
          masked[u] = detail::chunk_mask(qp, kpos[u], opts, value);
          if (masked[u]) want[u] = static_cast<S>(value);
          want_max = std::max(want_max, want[u]);
          masked_seen += masked[u] ? 1 : 0;
        }
        const S got_max = detail::mask_scores<S>(col.data(), ck, qp, kpos.data(), km, opts);
        EXPECT_EQ(got_max, want_max) << ck << " " << combo;
        EXPECT_EQ(col, want) << ck << " " << combo << " " << i;
        // ds = p (dp + shift), 0 where masked
        std::vector<S> p(col.size()), dp(col.size()), ds(col.size());
        for (Index j = 0; j < ck; ++j) {
          p[static_cast<std::size_t>(j)] = static_cast<S>(rng.uniform(draw++));
          dp[static_cast<std::size_t>(j)] = static_cast<S>(rng.uniform(draw++) - 0.5);
        }
        const S shift = static_cast<S>(0.25);
        detail::masked_softmax_grad<S>(p.data(), dp.data(), ds.data(), ck, shift, qp, kpos.data(),
                                       km, opts);
        for (Index j = 0; j < ck; ++j) {
          const auto u = static_cast<std::size_t>(j);
          EXPECT_EQ(ds[u], masked[u] ? S(0) : p[u] * (dp[u] + shift)) << ck << " " << combo;
        }
      }
    }
  }
  EXPECT_GT(masked_seen, 1000);  // the combinations do mask
}

TEST(ChunkAttention, VectorMasksMatchPerScoreMasks) {
  check_vector_masks_match_scalar<float>(0);
  check_vector_masks_match_scalar<double>(0);
  check_vector_masks_match_scalar<float>(Index(1) << 24);  // not exact in float: per score
  check_vector_masks_match_scalar<double>(Index(1) << 24);
}

// The chunk softmax (detail::masked_softmax_chunk), which takes groups of queries through
// detail::masked_softmax_columns, against one query at a time (detail::masked_softmax_column),
// bitwise: probabilities and log-sum-exps, with every mask combination, query counts that leave
// a remainder after the groups, windows with and without a packet tail, and positions too large
// to be exact in float (no packet masks: one query at a time throughout). The group path is
// checked to run, and the probabilities against their definition.
template <class S>
void check_grouped_softmax_matches_columns(Index position_offset) {
  Rng rng(11);
  const auto key_flags = random_key_flags(rng, position_offset, 96);
  Index draw = 5000;
  int grouped_calls = 0;
  for (const Index ck : {16, 19, 64, 128}) {
    for (const Index cq : {1, 4, 7, 64}) {
      for (int combo = 0; combo < 16; ++combo) {
        const ChunkAttentionOptions opts = mask_combination(combo, key_flags, position_offset + 70);
        // every third query shares a key's position (self)
        const auto [qpos, kpos] = random_positions(rng, draw, position_offset, 90, cq, ck, 3);
        const auto km = detail::chunk_key_masks<S>(qpos.data(), cq, kpos.data(), ck, opts);
        Matrix<S> scores(ck, cq);
        for (Index i = 0; i < cq; ++i)
          for (Index j = 0; j < ck; ++j) scores(j, i) = static_cast<S>(rng.uniform(draw++) * 8 - 4);
        Matrix<S> got = scores, want = scores;
        Vector<S> got_lse(cq), want_lse(cq);
        detail::masked_softmax_chunk<S>(Eigen::Map<Matrix<S>>(got.data(), ck, cq), qpos.data(),
                                        kpos.data(), km, opts, got_lse.data());
        for (Index i = 0; i < cq; ++i) {
          detail::masked_softmax_column<S>(want.col(i).data(), ck,
                                           qpos[static_cast<std::size_t>(i)], kpos.data(), km, opts,
                                           &want_lse(i));
        }
        const std::string where =
            std::to_string(ck) + " x " + std::to_string(cq) + ", masks " + std::to_string(combo);
        EXPECT_EQ(got, want) << where;
        EXPECT_EQ(got_lse, want_lse) << where;
        // p = softmax of the masked scores, in double (fully masked queries: equal weights)
        const double tolerance = std::is_same_v<S, float> ? 1e-5 : 1e-13;
        for (Index i = 0; i < cq; ++i) {
          Vector<double> masked(ck);
          for (Index j = 0; j < ck; ++j) {
            double value = 0;
            const bool is_masked = detail::chunk_mask(
                qpos[static_cast<std::size_t>(i)], kpos[static_cast<std::size_t>(j)], opts, value);
            masked(j) = is_masked ? double(static_cast<S>(value)) : double(scores(j, i));
          }
          const Vector<double> e = (masked.array() - masked.maxCoeff()).exp().matrix();
          const Vector<double> p = e / e.sum();
          for (Index j = 0; j < ck; ++j)
            ASSERT_NEAR(double(got(j, i)), p(j), tolerance)
                << where << " (" << j << ", " << i << ")";
        }
        if (ck % detail::kPacketSize<S> == 0 && cq >= tuning::kSoftmaxQueries && km.vector)
          ++grouped_calls;
      }
    }
  }
  EXPECT_EQ(grouped_calls > 0, position_offset < (Index(1) << std::numeric_limits<S>::digits));
}

TEST(ChunkAttention, GroupedSoftmaxMatchesOneQueryAtATime) {
  check_grouped_softmax_matches_columns<float>(0);
  check_grouped_softmax_matches_columns<double>(0);
  check_grouped_softmax_matches_columns<float>(Index(1) << 24);  // not exact in float
}

// The kernel scratch of a thread that has not run a chunk yet is grown by grow_thread_buffers()
// to the largest any thread asked for, so its first chunk in a later step allocates nothing.
TEST(ChunkAttention, ThreadWorkspacesGrowOnEveryThread) {
  const int before = num_threads();
  set_num_threads(2);
  if (num_threads() < 2) GTEST_SKIP() << "built without OpenMP";
  using Shared = ThreadLocalBuffer<detail::ThreadChunkWorkspace<float>>;
  std::vector<Index> keys(2);
  auto record = [&] { keys[static_cast<std::size_t>(thread_index())] = Shared::mine().max_keys(); };
  on_every_thread(record);
  const Index worker_before = keys[1];
  const Index wanted = std::max<Index>(worker_before, Shared::largest()[1]) + 64;
  thread_chunk_workspace<float>(8, wanted, 16);  // this thread only
  on_every_thread(record);
  EXPECT_EQ(keys[0], wanted);
  EXPECT_EQ(keys[1], worker_before);
  grow_thread_buffers();
  on_every_thread(record);
  EXPECT_EQ(keys[1], wanted);
  set_num_threads(before);
}

// Loss L = sum(W .* o) + sum(w .* lse): do = W, dlse = w.
TEST(ChunkAttention, BackwardMatchesFiniteDifferences) {
  ChunkInputs in(21, 4);  // not const: finite_differences perturbs q, k and v
  const Matrix<double> w_o = random_matrix(4, 5, Rng(24));
  const Matrix<double> w_lse = random_matrix(5, 1, Rng(25));
  ChunkAttentionWorkspace<double> ws;
  for (const Case& c : cases()) {
    for (bool with_lse : {false, true}) {
      const auto opts = options_of(c);
      auto loss = [&]() {
        Matrix<double> o(4, 5);
        Vector<double> lse(5);
        chunk_attention_forward<double>(in.q, in.k, in.v, kQueryPos.data(), kKeyPos.data(), opts, o,
                                        lse.data(), ws);
        double l = (o.array() * w_o.array()).sum();
        if (with_lse) l += lse.dot(w_lse.col(0));
        return l;
      };
      Matrix<double> dq = Matrix<double>::Constant(6, 5, 99.0);  // overwritten
      Matrix<double> dk = Matrix<double>::Ones(6, 11);           // accumulated
      Matrix<double> dv = Matrix<double>::Ones(4, 11);           // accumulated
      chunk_attention_backward<double>(in.q, in.k, in.v, kQueryPos.data(), kKeyPos.data(), opts,
                                       w_o, with_lse ? w_lse.data() : nullptr, dq, dk, dv, ws);
      dk.array() -= 1.0;
      dv.array() -= 1.0;
      const std::string what = c.name + (with_lse ? "+lse" : "");
      EXPECT_LT(gradcheck_error(dq, finite_differences(in.q, loss)), 1e-6) << what;
      EXPECT_LT(gradcheck_error(dk, finite_differences(in.k, loss)), 1e-6) << what;
      EXPECT_LT(gradcheck_error(dv, finite_differences(in.v, loss)), 1e-6) << what;
      EXPECT_GT(dq.norm(), 1e-3) << what;  // the check is not vacuous
    }
  }
}

// LSH attention saves a buffer by letting dq overwrite d_o (same shape when Dv = Dh): the kernel
// reads d_o completely before it writes dq, so the aliased call gives the same bits.
TEST(ChunkAttention, BackwardDqMayAliasDo) {
  const ChunkInputs in(41, 6);
  const Matrix<double> d_o = random_matrix(6, 5, Rng(44));
  const Matrix<double> dlse = random_matrix(5, 1, Rng(45));
  ChunkAttentionWorkspace<double> ws;
  for (const Case& c : cases()) {
    const auto opts = options_of(c);
    Matrix<double> dq(6, 5), dk = Matrix<double>::Zero(6, 11), dv = Matrix<double>::Zero(6, 11);
    chunk_attention_backward<double>(in.q, in.k, in.v, kQueryPos.data(), kKeyPos.data(), opts, d_o,
                                     dlse.data(), dq, dk, dv, ws);
    Matrix<double> shared = d_o;  // d_o in, dq out
    Matrix<double> dk2 = Matrix<double>::Zero(6, 11), dv2 = Matrix<double>::Zero(6, 11);
    chunk_attention_backward<double>(in.q, in.k, in.v, kQueryPos.data(), kKeyPos.data(), opts,
                                     shared, dlse.data(), shared, dk2, dv2, ws);
    EXPECT_TRUE(shared == dq) << c.name;
    EXPECT_TRUE(dk2 == dk) << c.name;
    EXPECT_TRUE(dv2 == dv) << c.name;
    EXPECT_FALSE(dq.isApprox(d_o)) << c.name;  // dq really replaced d_o
  }
}

// A backward that takes the probabilities its forward stored (probs_out) computes nothing
// differently: the forward's o and lse, and the backward's dq, dk and dv, are bitwise those of
// the recomputing calls; the stored matrix is the undropped softmax (columns sum to 1, and
// v p^T is the output without dropout).
template <class S>
void check_stored_probabilities_match_recompute() {
  const ChunkInputs in(51, 6);
  const Matrix<S> q = in.q.cast<S>(), k = in.k.cast<S>(), v = in.v.cast<S>();
  const Matrix<S> d_o = random_matrix(6, 5, Rng(54)).cast<S>();
  const Matrix<S> dlse = random_matrix(5, 1, Rng(55)).cast<S>();
  ChunkAttentionWorkspace<S> ws;
  for (const Case& c : cases()) {
    const auto opts = options_of(c);
    Matrix<S> o(6, 5), o_stored(6, 5), probs = Matrix<S>::Constant(11, 5, S(7));
    Vector<S> lse(5), lse_stored(5);
    chunk_attention_forward<S>(q, k, v, kQueryPos.data(), kKeyPos.data(), opts, o, lse.data(), ws);
    chunk_attention_forward<S>(q, k, v, kQueryPos.data(), kKeyPos.data(), opts, o_stored,
                               lse_stored.data(), ws, probs.data());
    EXPECT_TRUE(o_stored == o) << c.name;
    EXPECT_TRUE(lse_stored == lse) << c.name;
    const double tol = std::is_same_v<S, float> ? 1e-5 : 1e-13;
    EXPECT_LT((probs.colwise().sum().array() - S(1)).abs().maxCoeff(), tol) << c.name;
    ChunkAttentionOptions undropped = opts;
    undropped.dropout_rate = 0.0;
    Matrix<S> o_plain(6, 5);
    chunk_attention_forward<S>(q, k, v, kQueryPos.data(), kKeyPos.data(), undropped, o_plain,
                               nullptr, ws);
    EXPECT_LT(relative_error(Matrix<S>(v * probs), o_plain), tol) << c.name;

    Matrix<S> dq(6, 5), dk = Matrix<S>::Ones(6, 11), dv = Matrix<S>::Ones(6, 11);
    chunk_attention_backward<S>(q, k, v, kQueryPos.data(), kKeyPos.data(), opts, d_o, dlse.data(),
                                dq, dk, dv, ws);
    Matrix<S> dq2(6, 5), dk2 = Matrix<S>::Ones(6, 11), dv2 = Matrix<S>::Ones(6, 11);
    chunk_attention_backward<S>(q, k, v, kQueryPos.data(), kKeyPos.data(), opts, d_o, dlse.data(),
                                dq2, dk2, dv2, ws, probs.data());
    EXPECT_TRUE(dq2 == dq) << c.name;
    EXPECT_TRUE(dk2 == dk) << c.name;
    EXPECT_TRUE(dv2 == dv) << c.name;
    EXPECT_GT(dq.norm(), 1e-3) << c.name;

    // The backward really takes the given probabilities: handed those of other queries q_other,
    // its dv = d_o pd^T is the dv of the backward at q_other, not the one at q.
    const Matrix<S> q_other = random_matrix(6, 5, Rng(56)).cast<S>();
    Matrix<S> o_other(6, 5), probs_other(11, 5);
    chunk_attention_forward<S>(q_other, k, v, kQueryPos.data(), kKeyPos.data(), opts, o_other,
                               nullptr, ws, probs_other.data());
    Matrix<S> dq3(6, 5), dk3 = Matrix<S>::Ones(6, 11), dv3 = Matrix<S>::Ones(6, 11);
    chunk_attention_backward<S>(q_other, k, v, kQueryPos.data(), kKeyPos.data(), opts, d_o,
                                dlse.data(), dq3, dk3, dv3, ws);
    Matrix<S> dq4(6, 5), dk4 = Matrix<S>::Ones(6, 11), dv4 = Matrix<S>::Ones(6, 11);
    chunk_attention_backward<S>(q, k, v, kQueryPos.data(), kKeyPos.data(), opts, d_o, dlse.data(),
                                dq4, dk4, dv4, ws, probs_other.data());
    EXPECT_TRUE(dv4 == dv3) << c.name;
    EXPECT_FALSE(dv4 == dv) << c.name;
  }
}

TEST(ChunkAttention, StoredProbabilitiesGiveTheRecomputedResults) {
  check_stored_probabilities_match_recompute<double>();
  check_stored_probabilities_match_recompute<float>();
}

// The shifted backward takes shift_i = dlse_i - delta_i from its caller instead of computing
// delta_i = sum_j p_ij dp_ij: handed the shift computed here from the forward's probabilities
// (dp = m .* (v^T d_o), m the dropout factors), it gives the gradients of the dlse backward.
TEST(ChunkAttention, ShiftedBackwardTakesTheGivenShift) {
  const ChunkInputs in(61, 6);
  const Matrix<double> d_o = random_matrix(6, 5, Rng(64));
  const Matrix<double> dlse = random_matrix(5, 1, Rng(65));
  ChunkAttentionWorkspace<double> ws;
  for (const Case& c : cases()) {
    const auto opts = options_of(c);
    Matrix<double> o(6, 5), p(11, 5);  // p: the undropped probabilities, Ck x Cq
    chunk_attention_forward<double>(in.q, in.k, in.v, kQueryPos.data(), kKeyPos.data(), opts, o,
                                    nullptr, ws, p.data());
    Matrix<double> dp = in.v.transpose() * d_o;  // Ck x Cq
    for (Index i = 0; i < 5; ++i)
      for (Index j = 0; j < 11; ++j)
        dp(j, i) *= detail::chunk_dropout_factor<double>(
            kQueryPos[static_cast<std::size_t>(i)], kKeyPos[static_cast<std::size_t>(j)], opts);
    const Vector<double> shift =
        dlse.col(0) - (p.array() * dp.array()).colwise().sum().transpose().matrix();

    Matrix<double> dq(6, 5), dk = Matrix<double>::Ones(6, 11), dv = Matrix<double>::Ones(6, 11);
    chunk_attention_backward<double>(in.q, in.k, in.v, kQueryPos.data(), kKeyPos.data(), opts, d_o,
                                     dlse.data(), dq, dk, dv, ws);
    Matrix<double> dq2(6, 5), dk2 = Matrix<double>::Ones(6, 11), dv2 = Matrix<double>::Ones(6, 11);
    chunk_attention_backward_shifted<double>(in.q, in.k, in.v, kQueryPos.data(), kKeyPos.data(),
                                             opts, d_o, shift.data(), dq2, dk2, dv2, ws);
    EXPECT_LT(relative_error(dq2, dq), 1e-13) << c.name;
    EXPECT_LT(relative_error(dk2, dk), 1e-13) << c.name;
    EXPECT_TRUE(dv2 == dv) << c.name;  // dv = d_o pd^T does not involve the shift

    // The shift is really used: another one moves dq and dk.
    const Vector<double> other = shift.array() + 0.5;
    Matrix<double> dq3(6, 5), dk3 = Matrix<double>::Ones(6, 11), dv3 = Matrix<double>::Ones(6, 11);
    chunk_attention_backward_shifted<double>(in.q, in.k, in.v, kQueryPos.data(), kKeyPos.data(),
                                             opts, d_o, other.data(), dq3, dk3, dv3, ws);
    EXPECT_GT(relative_error(dq3, dq), 1e-3) << c.name;
  }
}

TEST(ChunkAttention, FloatAgreesWithDouble) {
  const Matrix<double> q = random_matrix(8, 4, Rng(31));
  const Matrix<double> k = random_matrix(8, 8, Rng(32));
  const Matrix<double> v = random_matrix(8, 8, Rng(33));
  const std::vector<Index> qp = {4, 5, 6, 7}, kp = {0, 1, 2, 3, 4, 5, 6, 7};
  ChunkAttentionOptions opts;
  ChunkAttentionWorkspace<double> wd;
  ChunkAttentionWorkspace<float> wf;
  Matrix<double> od(8, 4);
  Matrix<float> of(8, 4);
  chunk_attention_forward<double>(q, k, v, qp.data(), kp.data(), opts, od, nullptr, wd);
  const Matrix<float> qf = q.cast<float>(), kf = k.cast<float>(), vf = v.cast<float>();
  chunk_attention_forward<float>(qf, kf, vf, qp.data(), kp.data(), opts, of, nullptr, wf);
  EXPECT_LT(relative_error(of.cast<double>(), od), 1e-5);
}

template <class F>
void expect_invalid(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no exception, expected one mentioning " << needle;
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("chunk_attention"), std::string::npos) << e.what();
  }
}

TEST(ChunkAttention, BadInputThrows) {
  const Matrix<double> q = random_matrix(3, 2, Rng(1));
  const Matrix<double> k = random_matrix(3, 4, Rng(2));
  const Matrix<double> v = random_matrix(2, 4, Rng(3));
  const Matrix<double> k_bad = random_matrix(4, 4, Rng(2));
  const Matrix<double> v_bad = random_matrix(2, 3, Rng(3));
  const std::vector<Index> qp = {0, 1}, kp = {0, 1, 2, 3};
  ChunkAttentionWorkspace<double> ws;
  Matrix<double> o(2, 2), o_bad(3, 2);
  ChunkAttentionOptions opts;
  expect_invalid(
      [&] {
        chunk_attention_forward<double>(q, k_bad, v, qp.data(), kp.data(), opts, o, nullptr, ws);
      },
      "k has shape 4 x 4");
  expect_invalid(
      [&] {
        chunk_attention_forward<double>(q, k, v_bad, qp.data(), kp.data(), opts, o, nullptr, ws);
      },
      "v has shape");
  expect_invalid(
      [&] {
        chunk_attention_forward<double>(q, k, v, qp.data(), kp.data(), opts, o_bad, nullptr, ws);
      },
      "o has shape");
  expect_invalid(
      [&] {
        chunk_attention_forward<double>(q, k, v, static_cast<const Index*>(nullptr), kp.data(),
                                        opts, o, nullptr, ws);
      },
      "positions");
  ChunkAttentionOptions bad = opts;
  bad.dropout_rate = 1.0;
  expect_invalid(
      [&] { chunk_attention_forward<double>(q, k, v, qp.data(), kp.data(), bad, o, nullptr, ws); },
      "dropout_rate");
  bad.dropout_rate = 0.5;  // draw_stride still 0
  expect_invalid(
      [&] { chunk_attention_forward<double>(q, k, v, qp.data(), kp.data(), bad, o, nullptr, ws); },
      "draw_stride");
  Matrix<double> dq(3, 2), dk(3, 3), dv(2, 4);
  expect_invalid(
      [&] {
        chunk_attention_backward<double>(q, k, v, qp.data(), kp.data(), opts, o, nullptr, dq, dk,
                                         dv, ws);
      },
      "dk has shape");
  Matrix<double> dq_ok(3, 2), dk_ok(3, 4), dv_ok(2, 4);
  expect_invalid(
      [&] {
        chunk_attention_backward_shifted<double>(q, k, v, qp.data(), kp.data(), opts, o, nullptr,
                                                 dq_ok, dk_ok, dv_ok, ws);
      },
      "shift must not be null");
}

}  // namespace
}  // namespace reformer
