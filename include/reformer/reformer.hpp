#pragma once
// Umbrella header: the whole library except io/ (checkpoints need nlohmann/json; include
// <reformer/io/checkpoint.hpp> explicitly when you use them).
//
//   #include <reformer/reformer.hpp>
//   reformer::ReformerConfig cfg;  cfg.validate();
//   reformer::ReformerLM<float> model(cfg);
//   double loss = model.train_step(tokens, batch, step);
#include "reformer/version.hpp"

#include "reformer/core/context.hpp"
#include "reformer/core/error.hpp"
#include "reformer/core/init.hpp"
#include "reformer/core/parameters.hpp"
#include "reformer/core/rng.hpp"
#include "reformer/core/threading.hpp"
#include "reformer/core/tuning.hpp"
#include "reformer/core/types.hpp"

#include "reformer/ops/activations.hpp"
#include "reformer/ops/check_finite.hpp"
#include "reformer/ops/cross_entropy.hpp"
#include "reformer/ops/dropout.hpp"
#include "reformer/ops/embedding.hpp"
#include "reformer/ops/layer_norm.hpp"
#include "reformer/ops/linear.hpp"
#include "reformer/ops/parallel.hpp"
#include "reformer/ops/softmax.hpp"
#include "reformer/ops/tokens.hpp"

#include "reformer/layers/attention_sublayer.hpp"
#include "reformer/layers/chunk_attention.hpp"
#include "reformer/layers/feed_forward.hpp"
#include "reformer/layers/full_attention.hpp"
#include "reformer/layers/local_attention.hpp"
#include "reformer/layers/lsh_attention.hpp"
#include "reformer/layers/lsh_bucketing.hpp"
#include "reformer/layers/reversible.hpp"
#include "reformer/layers/reversible_stack.hpp"
#include "reformer/layers/sublayer.hpp"

#include "reformer/model/attention_cache.hpp"
#include "reformer/model/clip.hpp"
#include "reformer/model/config.hpp"
#include "reformer/model/embeddings.hpp"
#include "reformer/model/encoder_models.hpp"
#include "reformer/model/generator.hpp"
#include "reformer/model/lm_head.hpp"
#include "reformer/model/optimizer.hpp"
#include "reformer/model/reformer_backbone.hpp"
#include "reformer/model/reformer_lm.hpp"
#include "reformer/model/sampling.hpp"
#include "reformer/model/schedule.hpp"
#include "reformer/model/tape.hpp"

#include "reformer/testing/gradcheck.hpp"
