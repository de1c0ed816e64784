# ctest: the README's code examples are the compiled ones, verbatim:
#   - the usage snippet is examples/minimal.cpp (built with the examples),
#   - the LSH example is the part of tests/unit/readme/lsh_usage_test.cpp between its
#     [readme-lsh-begin] and [readme-lsh-end] markers (built and run by that test).
# Variables: SOURCE_DIR (the repository).
file(READ "${SOURCE_DIR}/README.md" readme)

file(READ "${SOURCE_DIR}/examples/minimal.cpp" program)
string(FIND "${readme}" "```cpp\n${program}```" at)
if(at EQUAL -1)
  message(FATAL_ERROR "README.md does not contain examples/minimal.cpp verbatim in a ```cpp "
                      "block; copy the file into the README's Usage section")
endif()

file(READ "${SOURCE_DIR}/tests/unit/readme/lsh_usage_test.cpp" lsh_test)
set(begin_marker "// [readme-lsh-begin]\n")
string(FIND "${lsh_test}" "${begin_marker}" begin)
string(FIND "${lsh_test}" "// [readme-lsh-end]" end)
if(begin EQUAL -1 OR end EQUAL -1)
  message(FATAL_ERROR "tests/unit/readme/lsh_usage_test.cpp lost its readme markers")
endif()
string(LENGTH "${begin_marker}" marker_length)
math(EXPR begin "${begin} + ${marker_length}")
math(EXPR length "${end} - ${begin}")
string(SUBSTRING "${lsh_test}" ${begin} ${length} lsh_example)
string(FIND "${readme}" "```cpp\n${lsh_example}```" at)
if(at EQUAL -1)
  message(FATAL_ERROR "README.md does not contain the LSH example of "
                      "tests/unit/readme/lsh_usage_test.cpp verbatim in a ```cpp block")
endif()
