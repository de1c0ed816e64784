// hidden_act in a config JSON: every accepted activation name parses, unknown names are a
// ConfigError naming the value.
#include "reformer/io/config_json.hpp"

#include <gtest/gtest.h>

#include <string>

namespace reformer {
namespace {

std::string config_with_act(const std::string& act) {
  ReformerConfig c;
  c.hidden_act = act;
  std::string text = config_to_json_string(c);
  return text;
}

TEST(ConfigJsonActivation, ParsesEveryHiddenActName) {
  const std::pair<const char*, Activation> cases[] = {{"relu", Activation::kRelu},
                                                      {"gelu", Activation::kGelu},
                                                      {"gelu_new", Activation::kGeluNew},
                                                      {"silu", Activation::kSilu},
                                                      {"swish", Activation::kSilu}};
  for (const auto& [name, act] : cases) {
    const ReformerConfig c = config_from_json_string(config_with_act(name));
    EXPECT_EQ(c.hidden_act, name);
    EXPECT_EQ(c.activation(), act) << name;
  }
}

TEST(ConfigJsonActivation, UnknownHiddenActIsConfigErrorNamingIt) {
  try {
    config_from_json_string(config_with_act("gelu_fast"));
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("hidden_act = 'gelu_fast'"), std::string::npos) << what;
    EXPECT_NE(what.find("gelu_new"), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace reformer
