# Shared by the consumer projects: the executable every packaging test builds and runs.
set(_reformer_consumer_dir "${CMAKE_CURRENT_LIST_DIR}")
if(NOT REFORMER_EXPECTED_VERSION)
  message(FATAL_ERROR "pass -DREFORMER_EXPECTED_VERSION=<version of the tree under test>")
endif()

function(reformer_consumer_executable)
  add_executable(reformer_consumer "${_reformer_consumer_dir}/main.cpp")
  target_link_libraries(reformer_consumer PRIVATE reformer::reformer)
  target_compile_definitions(reformer_consumer PRIVATE
    REFORMER_EXPECTED_VERSION="${REFORMER_EXPECTED_VERSION}")
  target_compile_options(reformer_consumer PRIVATE -Wall -Wextra -Wpedantic -Werror)
endfunction()

# With the optional reformer::mpi: a second executable including reformer/distributed/mpi.hpp
# (built, so its compile and link settings are checked; not run: that needs an MPI launcher).
function(reformer_consumer_mpi_executable)
  if(TARGET reformer::mpi)
    add_executable(reformer_consumer_mpi "${_reformer_consumer_dir}/mpi_main.cpp")
    target_link_libraries(reformer_consumer_mpi PRIVATE reformer::mpi)
    target_compile_options(reformer_consumer_mpi PRIVATE -Wall -Wextra -Wpedantic -Werror)
  endif()
endfunction()

# A project that pulls reformer in from source must get the library target and nothing else:
# none of our tests, benchmarks, examples or install rules, and no -march=native.
function(reformer_check_subproject reformer_source_dir)
  if(NOT TARGET reformer::reformer)
    message(FATAL_ERROR "reformer::reformer is not defined")
  endif()
  if(TARGET reformer_test_core)
    message(FATAL_ERROR "the subproject built our test target reformer_test_core")
  endif()
  get_property(_subdirs DIRECTORY "${reformer_source_dir}" PROPERTY SUBDIRECTORIES)
  if(_subdirs)
    message(FATAL_ERROR "the subproject added its own subdirectories: ${_subdirs}")
  endif()
  get_property(_targets DIRECTORY "${reformer_source_dir}" PROPERTY BUILDSYSTEM_TARGETS)
  if(NOT _targets STREQUAL "reformer")
    message(FATAL_ERROR "the subproject defined targets other than 'reformer': ${_targets}")
  endif()
  foreach(_option REFORMER_BUILD_TESTS REFORMER_BUILD_BENCHMARKS REFORMER_BUILD_EXAMPLES
                  REFORMER_INSTALL REFORMER_NATIVE)
    if(${_option})
      message(FATAL_ERROR "${_option} defaults to ON in a subproject")
    endif()
  endforeach()
  get_property(_options DIRECTORY "${reformer_source_dir}" PROPERTY COMPILE_OPTIONS)
  if(_options MATCHES "march")
    message(FATAL_ERROR "the subproject added compile options: ${_options}")
  endif()
endfunction()
