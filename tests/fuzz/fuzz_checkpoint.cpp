// libFuzzer target: any bytes as a checkpoint. Opening checks the config, the tensors it needs
// and the user JSON; a file that opens is then loaded (parameters, and the Adam state when it
// has one) into a store with the config's layout. Anything wrong must raise reformer::Error.
#include "reformer/io/checkpoint.hpp"
#include "reformer/model/parameter_layout.hpp"

#include <cstddef>
#include <cstdint>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace reformer;
  try {
    const io::Checkpoint ck(io::SafetensorsFile::parse(std::vector<char>(data, data + size), "f"));
    (void)ck.user_value<double>("elapsed_s");
    if (!ck.has_config()) return 0;
    const auto layout = reformer_parameter_layout(ck.config());
    if (parameter_count(layout) > (1 << 20)) return 0;  // checked against the file already
    Parameters<float> params;
    for (const auto& p : layout) params.add(p.name, p.shape);
    if (ck.has_optimizer()) {
      Adam<float> opt(params, AdamOptions::adam(1e-3));
      io::load_checkpoint(ck.file(), params, opt);
    } else {
      io::load_parameters(ck.file(), params);
    }
  } catch (const Error&) {
  }
  return 0;
}
