// A user's program: built by the packaging tests against the installed package, through
// add_subdirectory and through FetchContent. Uses a few core types and prints the version (and
// the GEMM backend: "openblas" when it links reformer::openblas).
#include <reformer/core/error.hpp>
#include <reformer/core/gemm_backend.hpp>
#include <reformer/core/parameters.hpp>
#include <reformer/core/rng.hpp>
#include <reformer/core/threading.hpp>
#include <reformer/core/types.hpp>
#include <reformer/version.hpp>

#include <cstdint>
#include <cstdio>
#include <cstring>

int main() {
  // The headers we compiled against are the version CMake's package reported.
  if (std::strcmp(reformer::version_string(), REFORMER_EXPECTED_VERSION) != 0) {
    std::printf("version mismatch: headers %s, package %s\n", reformer::version_string(),
                REFORMER_EXPECTED_VERSION);
    return 1;
  }

  reformer::Parameters<float> params;
  const auto w = params.add("dense.weight", {3, 4});
  const reformer::Rng rng(42);
  auto weight = params.value(w);
  for (reformer::Index i = 0; i < weight.size(); ++i)
    weight.data()[i] = static_cast<float>(rng.normal(static_cast<std::uint64_t>(i)));

  reformer::set_num_threads(2);
  reformer::Matrix<float> x = reformer::Matrix<float>::Ones(4, 5);  // D x T
  reformer::Matrix<float> y = weight * x;                           // 3 x T
  if (y.rows() != 3 || y.cols() != 5 || !y.allFinite()) return 1;

  try {
    params.id_of("missing.weight");
    std::printf("expected reformer::InvalidArgument\n");
    return 1;
  } catch (const reformer::Error& e) {
    if (std::strstr(e.what(), "missing.weight") == nullptr) return 1;
  }

  std::printf("reformer %s: ok (%d threads, GEMM %s)\n", reformer::version_string(),
              reformer::num_threads(), reformer::gemm_backend_name());
  return 0;
}
