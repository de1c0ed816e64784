# ctest: the README's usage snippet is examples/minimal.cpp, verbatim (so the snippet compiles:
# it is built with the examples).
# Variables: SOURCE_DIR (the repository).
file(READ "${SOURCE_DIR}/examples/minimal.cpp" program)
file(READ "${SOURCE_DIR}/README.md" readme)
string(FIND "${readme}" "```cpp\n${program}```" at)
if(at EQUAL -1)
  message(FATAL_ERROR "README.md does not contain examples/minimal.cpp verbatim in a ```cpp "
                      "block; copy the file into the README's Usage section")
endif()
