# A stand-in Eigen 3.3 package: packaging.find_package_rejects_old_eigen checks that the reformer
# package config refuses it with a clear message.
if(NOT TARGET Eigen3::Eigen)
  add_library(Eigen3::Eigen INTERFACE IMPORTED)
endif()
