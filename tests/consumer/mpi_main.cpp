// A user's data-parallel program, built by the packaging tests when the package defines
// reformer::mpi: the optional MPI header compiles and links against it. It runs as one process
// (MPI singleton): the sum over one rank is the rank's own gradient.
#include <reformer/core/parameters.hpp>
#include <reformer/distributed/mpi.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  reformer::distributed::Environment env(&argc, &argv);
  reformer::distributed::Communicator comm;
  reformer::Parameters<float> params;
  params.add("dense.weight", {3, 4});
  params.grads().setConstant(0.5f);
  reformer::distributed::DataParallel<float> dp(comm);
  dp.broadcast_parameters(params);
  dp.allreduce_gradients(params);
  if (params.grads()(0) != 0.5f * static_cast<float>(comm.size())) return 1;
  std::printf("reformer::mpi: ok (%d rank(s))\n", comm.size());
  return 0;
}
