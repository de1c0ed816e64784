# cmake -DBUILD_DIR=<build> -DPREFIX=<prefix> [-DCONFIG=<config>] -P install.cmake
# Installs the build into a fresh prefix (the ctest fixture of packaging.find_package).
foreach(_var BUILD_DIR PREFIX)
  if(NOT ${_var})
    message(FATAL_ERROR "install.cmake: ${_var} is not set")
  endif()
endforeach()
file(REMOVE_RECURSE "${PREFIX}")
set(_config)
if(CONFIG)
  set(_config --config "${CONFIG}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}" ${_config}
                COMMAND_ERROR_IS_FATAL ANY)
# The package must be self-contained: headers, config, version file and exported targets.
foreach(_file include/reformer/version.hpp include/reformer/core/types.hpp)
  if(NOT EXISTS "${PREFIX}/${_file}")
    message(FATAL_ERROR "install.cmake: ${PREFIX}/${_file} was not installed")
  endif()
endforeach()
file(GLOB_RECURSE _configs "${PREFIX}/*/reformerConfig.cmake" "${PREFIX}/*/reformerConfigVersion.cmake"
     "${PREFIX}/*/reformerTargets.cmake")
list(LENGTH _configs _n)
if(NOT _n EQUAL 3)
  message(FATAL_ERROR "install.cmake: expected reformerConfig, -ConfigVersion and -Targets.cmake "
                      "under ${PREFIX}, found: ${_configs}")
endif()
