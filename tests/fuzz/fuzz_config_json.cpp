// libFuzzer target: any text as a config JSON. It must either give a valid config (whose
// parameter layout and count are then computed) or raise reformer::Error.
#include "reformer/io/config_json.hpp"
#include "reformer/model/parameter_layout.hpp"

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const reformer::ReformerConfig c =
        reformer::config_from_json_string(std::string(reinterpret_cast<const char*>(data), size));
    (void)c.max_length();
    (void)c.total_buckets();
    (void)reformer::parameter_count(reformer::reformer_parameter_layout(c));
    (void)reformer::config_to_json_string(c);
  } catch (const reformer::Error&) {
  }
  return 0;
}
