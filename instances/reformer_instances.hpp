#pragma once
// Build speed of this repository only; users of the library never see this file (the library
// stays header-only: include the headers and the compiler instantiates what you use).
//
// The templates that cost most to compile (ReformerLM, its embeddings, the attention and
// feed-forward sublayers, the three attention cores, the products of ops/linear.hpp) are
// explicitly instantiated once per build in the static libraries of instances/CMakeLists.txt.
// Our tests, examples and benchmarks get this header forced in first (-include) and link one of
// those libraries: the `extern template` declarations below stop
// them from compiling those members again. Their heavy members are defined outside the class
// bodies for this (in-class definitions are implicitly inline, and GCC instantiates inline
// members of an `extern template` class anyway when it optimises).
//
// A library and its users must agree on every macro that changes the headers' code: CMake
// builds them with the same flags (one library per REFORMER_ENABLE_ASSERTS setting), and the
// reference below makes a mismatch a link error instead of an ODR violation.
#include "reformer/layers/attention_sublayer.hpp"
#include "reformer/layers/feed_forward.hpp"
#include "reformer/layers/full_attention.hpp"
#include "reformer/layers/local_attention.hpp"
#include "reformer/layers/lsh_attention.hpp"
#include "reformer/layers/reversible_stack.hpp"
#include "reformer/model/embeddings.hpp"
#include "reformer/model/encoder_models.hpp"
#include "reformer/model/lm_head.hpp"
#include "reformer/model/reformer_backbone.hpp"
#include "reformer/model/reformer_lm.hpp"
#include "reformer/ops/linear.hpp"

// REFORMER_INSTANCES_LAYERS / _MODEL(extern, S) declare, (, S) define (instances/*.cpp) the
// instantiations for scalar type S.
#define REFORMER_INSTANCES_LAYERS(EXTERN, S)                                         \
  EXTERN template void reformer::detail::product_of_views<S>(                        \
      reformer::detail::ProductView<S>, reformer::detail::ProductView<const S>,      \
      reformer::detail::ProductView<const S>, bool);                                 \
  EXTERN template void reformer::detail::parallel_product_of_views<S>(               \
      reformer::detail::ProductView<S>, reformer::detail::ProductView<const S>,      \
      reformer::detail::ProductView<const S>, bool);                                 \
  EXTERN template class reformer::FullAttention<S>;                                  \
  EXTERN template class reformer::LocalAttention<S>;                                 \
  EXTERN template class reformer::LshAttention<S>;                                   \
  EXTERN template class reformer::FeedForward<S>;                                    \
  EXTERN template class reformer::AttentionSublayer<S, reformer::FullAttention<S>>;  \
  EXTERN template class reformer::AttentionSublayer<S, reformer::LocalAttention<S>>; \
  EXTERN template class reformer::AttentionSublayer<S, reformer::LshAttention<S>>;
#define REFORMER_INSTANCES_MODEL(EXTERN, S)                             \
  EXTERN template class reformer::Embeddings<S>;                        \
  EXTERN template class reformer::LmHead<S>;                            \
  EXTERN template class reformer::ReformerBackbone<S>;                  \
  EXTERN template class reformer::ReformerLM<S>;                        \
  EXTERN template class reformer::ReformerForMaskedLM<S>;               \
  EXTERN template class reformer::ReformerForSequenceClassification<S>; \
  EXTERN template class reformer::ReformerForQuestionAnswering<S>;

// The flavour of the instantiations: with or without REFORMER_ENABLE_ASSERTS.
#if defined(REFORMER_ENABLE_ASSERTS)
#define REFORMER_INSTANCES_FLAVOUR reformer_instances_checked
#else
#define REFORMER_INSTANCES_FLAVOUR reformer_instances_unchecked
#endif
extern "C" const int REFORMER_INSTANCES_FLAVOUR;

#if !defined(REFORMER_INSTANCES_DEFINE)
REFORMER_INSTANCES_LAYERS(extern, float)
REFORMER_INSTANCES_MODEL(extern, float)
#if defined(REFORMER_INSTANCES_DOUBLE)
REFORMER_INSTANCES_LAYERS(extern, double)
REFORMER_INSTANCES_MODEL(extern, double)
#endif
// Every user references the flavour it was compiled with (kept by `used` even when unused).
namespace {
[[maybe_unused]] __attribute__((used)) const int* const reformer_instances_flavour =
    &REFORMER_INSTANCES_FLAVOUR;
}  // namespace
#endif
