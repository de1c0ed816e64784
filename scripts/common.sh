# Sourced by the scripts in this folder (bash). Checks the Debian packages the build needs.

# Everything `cmake --preset release` needs: compiler, build tool, Eigen 3.4, nlohmann/json
# (checkpoints), CLI11 (example programs), GoogleTest, Google Benchmark; OpenBLAS, the GEMM
# backend that configure measures against Eigen's products and uses where it is faster
# (REFORMER_GEMM), and which the gemm.other_backend test builds against; and matplotlib for the
# plots of scripts/plot_metrics.py (scripts/train.sh draws one after training); Open MPI for
# data-parallel training (reformer::mpi, the examples under mpirun, the mpi.* tests).
REFORMER_PACKAGES=(g++ make cmake libeigen3-dev nlohmann-json3-dev libcli11-dev libgtest-dev
                   libbenchmark-dev libopenblas-dev python3-matplotlib openmpi-bin libopenmpi-dev
                   clang libclang-rt-dev)  # clang: the libFuzzer targets (tests/fuzz)

# ensure_packages <package>...: installs the missing ones when run as root; otherwise prints the
# exact apt-get command and exits 1. On a system without dpkg it only warns (CMake reports
# whatever is missing).
ensure_packages() {
  if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "note: not a Debian-based system; make sure these (or their equivalents) are installed:" >&2
    echo "  $*" >&2
    return 0
  fi
  local missing=() pkg
  for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$pkg")
    fi
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  if [ "$(id -u)" -eq 0 ]; then
    echo "Installing missing packages: ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  else
    echo "Missing packages: ${missing[*]}" >&2
    echo "Install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
}

# Parallel build and test jobs: one per core.
reformer_jobs() {
  nproc 2>/dev/null || echo 2
}
