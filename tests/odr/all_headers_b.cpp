// One of two translation units that include every public header (the list is generated at
// configure time, tests/CMakeLists.txt): a definition in a header that is not inline (or not a
// template) is then defined twice and reformer_test_core fails to link.
#include "reformer_all_headers.hpp"

namespace reformer_odr_check {
int translation_unit_b() { return 1; }
}  // namespace reformer_odr_check
