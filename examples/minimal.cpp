// The smallest complete program: build a Reformer language model, train it for a few steps on
// one toy sequence, and save it. This is the README's usage snippet.
#include <reformer/io/checkpoint.hpp>
#include <reformer/reformer.hpp>

#include <cstdio>
#include <vector>

int main() {
  reformer::ReformerConfig config;  // 4 layers (local, lsh, local, lsh), d_model 128
  config.vocab_size = 32;
  config.hidden_size = 64;
  config.feed_forward_size = 128;
  config.attention_head_size = 32;  // 2 heads
  config.lsh_attn_chunk_length = config.local_attn_chunk_length = 16;
  config.num_hashes = 2;
  config.axial_pos_shape = {8, 8};  // positions up to 8 * 8 = 64
  config.axial_pos_embds_dim = {32, 32};

  reformer::ReformerLM<float> model(config);
  reformer::Adam<float> adam(model.parameters(), reformer::AdamOptions::adam(1e-3));

  // One batch of 2 sequences of length 64, side by side: token i is i % 32.
  const reformer::Index batch = 2, length = 64;
  std::vector<reformer::Token> tokens(batch * length);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<reformer::Token>(i % 32);

  for (int step = 0; step < 20; ++step) {
    model.zero_grad();
    const double loss = model.train_step(tokens, batch);  // forward + recomputing backward
    reformer::clip_grad_norm(model.parameters(), 1.0);
    adam.step(model.parameters());
    std::printf("step %2d  loss %.4f\n", step + 1, loss);
  }
  reformer::io::save_model("minimal.safetensors", model);  // HF names + config
  std::printf("saved minimal.safetensors\n");
}
