# ctest: the README's code examples are the compiled ones, verbatim:
#   - the usage snippet is examples/minimal.cpp (built with the examples),
#   - the LSH and encoder examples are the parts of tests/unit/readme/lsh_usage_test.cpp and
#     encoder_usage_test.cpp between their readme markers (built and run by those tests).
# Variables: SOURCE_DIR (the repository).
file(READ "${SOURCE_DIR}/README.md" readme)

file(READ "${SOURCE_DIR}/examples/minimal.cpp" program)
string(FIND "${readme}" "```cpp\n${program}```" at)
if(at EQUAL -1)
  message(FATAL_ERROR "README.md does not contain examples/minimal.cpp verbatim in a ```cpp "
                      "block; copy the file into the README's Usage section")
endif()

# The part of a compiled test between its "// [readme-<name>-begin]" and "// [readme-<name>-end]"
# markers must stand verbatim in a ```cpp block of the README.
function(check_readme_example name file)
  file(READ "${SOURCE_DIR}/${file}" test_source)
  set(begin_marker "// [readme-${name}-begin]\n")
  string(FIND "${test_source}" "${begin_marker}" begin)
  string(FIND "${test_source}" "// [readme-${name}-end]" end)
  if(begin EQUAL -1 OR end EQUAL -1)
    message(FATAL_ERROR "${file} lost its readme markers")
  endif()
  string(LENGTH "${begin_marker}" marker_length)
  math(EXPR begin "${begin} + ${marker_length}")
  math(EXPR length "${end} - ${begin}")
  string(SUBSTRING "${test_source}" ${begin} ${length} example)
  string(FIND "${readme}" "```cpp\n${example}```" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "README.md does not contain the ${name} example of ${file} verbatim in a "
                        "```cpp block")
  endif()
endfunction()

check_readme_example(lsh tests/unit/readme/lsh_usage_test.cpp)
check_readme_example(encoder tests/unit/readme/encoder_usage_test.cpp)
