// libFuzzer target: any bytes as a safetensors file. Every input must either parse (and then
// every tensor reads) or raise reformer::Error; nothing else may happen.
#include "reformer/io/safetensors.hpp"

#include <cstddef>
#include <cstdint>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto file =
        reformer::io::SafetensorsFile::parse(std::vector<char>(data, data + size), "fuzz");
    for (const auto& name : file.names()) {
      if (file.info(name).numel() <= (1 << 16)) (void)file.read<double>(name);
    }
  } catch (const reformer::Error&) {
  }
  return 0;
}
