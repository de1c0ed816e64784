// Configure-time probe of the GEMM backends (cmake/gemm_backend.cmake, REFORMER_GEMM=AUTO):
// times Eigen's float product against OpenBLAS's cblas_sgemm, both on one thread, on the product
// shapes the library runs most, and prints the figures for CMake to compare.
//
//   W (M x K, row-major [out, in]) * X (K x N, column-major)     the layers' projections
//     proj     256 x  256 x 512   attention projections (one column block of 512 tokens)
//     ffn_in  1024 x  256 x 512   feed-forward W1
//     ffn_out  256 x 1024 x 512   feed-forward W2
//   dW (M x K, row-major) += dY (M x N) * X (K x N)^T                  weight gradients
//     wgrad    256 x  256 x 512   reduction over a block of 512 tokens
//
// After a warm-up, each shape is timed in rounds that alternate the two backends (a load change
// on the machine then hits both alike); the best round of each counts, measured in the thread's
// CPU time so that time spent descheduled does not count. Both results are compared, so a wrong
// BLAS call fails the probe instead of winning it.
//
// Output, one "key=value" per line: per shape "<name>_eigen_us", "<name>_openblas_us"; then
// "eigen_us", "openblas_us" (sums of the best rounds), "eigen_gflops", "openblas_gflops",
// "openblas_core" (the kernels OpenBLAS runs) and "cpu_isa" (the widest vector instructions this
// CPU reports: avx512f, avx2 (with FMA) or older), so that CMake can tell when OpenBLAS did not
// recognise the CPU and fell back to older kernels. Exit status 0 on success.
#include <cblas.h>
#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <limits>

extern "C" void openblas_set_num_threads(int num_threads);
extern "C" int openblas_get_num_threads(void);
extern "C" char* openblas_get_corename(void);

namespace {

using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ColMajor = Eigen::MatrixXf;

constexpr int kRounds = 12;          // best of
constexpr int kCallsPerRound = 2;    // products per timed round
constexpr double kWarmUp = 0.3;      // seconds of products before timing (clock ramp-up)
constexpr float kTolerance = 1e-3f;  // relative difference of the two results

double thread_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

bool close(const float* a, const float* b, Eigen::Index n) {
  double diff = 0, scale = 0;
  for (Eigen::Index i = 0; i < n; ++i) {
    diff = std::max(diff, double(std::abs(a[i] - b[i])));
    scale = std::max(scale, double(std::abs(a[i])));
  }
  return diff <= kTolerance * std::max(scale, 1.0);
}

/// One product shape, computed by both backends into separate outputs.
class Shape {
 public:
  /// out (M x N) = W (M x K, row-major) * X (K x N), or with `weight_grad`
  /// dW (M x K, row-major) += dY (M x N) * X (K x N)^T.
  Shape(const char* name, int m, int k, int n, bool weight_grad)
      : name_(name), m_(m), k_(k), n_(n), weight_grad_(weight_grad) {
    if (weight_grad_) {
      a_ = ColMajor::Random(m, n);  // dY
      x_ = ColMajor::Random(k, n);
      grad_eigen_ = RowMajor::Zero(m, k);
      grad_blas_ = RowMajor::Zero(m, k);
    } else {
      w_ = RowMajor::Random(m, k);
      x_ = ColMajor::Random(k, n);
      out_eigen_.resize(m, n);
      out_blas_.resize(m, n);
    }
  }

  const char* name() const { return name_; }
  double flops() const { return 2.0 * m_ * k_ * n_; }

  void eigen() {
    if (weight_grad_) {
      grad_eigen_.noalias() += a_ * x_.transpose();
    } else {
      out_eigen_.noalias() = w_ * x_;
    }
  }

  void openblas() {
    if (weight_grad_) {
      // dW stored row-major is dW^T column-major (K x M): dW^T += X * dY^T.
      cblas_sgemm(CblasColMajor, CblasNoTrans, CblasTrans, k_, m_, n_, 1.0f, x_.data(), k_,
                  a_.data(), m_, 1.0f, grad_blas_.data(), k_);
    } else {
      // W stored row-major is a column-major K x M matrix: out = (that)^T * X.
      cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, m_, n_, k_, 1.0f, w_.data(), k_,
                  x_.data(), k_, 0.0f, out_blas_.data(), m_);
    }
  }

  /// Whether both backends computed the same (after the same number of calls each).
  bool agree() const {
    return weight_grad_ ? close(grad_eigen_.data(), grad_blas_.data(), grad_eigen_.size())
                        : close(out_eigen_.data(), out_blas_.data(), out_eigen_.size());
  }

 private:
  const char* name_;
  int m_, k_, n_;
  bool weight_grad_;
  RowMajor w_;
  ColMajor a_, x_, out_eigen_, out_blas_;
  RowMajor grad_eigen_, grad_blas_;
};

/// CPU seconds per call of kCallsPerRound calls of f, or `best` if that was faster.
template <class F>
double best_round(F&& f, double best) {
  const double t0 = thread_seconds();
  for (int i = 0; i < kCallsPerRound; ++i) f();
  return std::min(best, (thread_seconds() - t0) / kCallsPerRound);
}

long long microseconds(double seconds) { return std::llround(1e6 * seconds); }

}  // namespace

int main() {
  Eigen::setNbThreads(1);
  openblas_set_num_threads(1);
  if (openblas_get_num_threads() != 1) {
    std::printf("error=OpenBLAS did not accept one thread\n");
    return 1;
  }

  Shape shapes[] = {{"proj", 256, 256, 512, false},
                    {"ffn_in", 1024, 256, 512, false},
                    {"ffn_out", 256, 1024, 512, false},
                    {"wgrad", 256, 256, 512, true}};

  // Warm-up: the core's clock ramps up under load, and the first calls fault in the pages and
  // OpenBLAS's buffers. Equal numbers of calls keep the accumulated weight gradients comparable.
  for (const double t0 = thread_seconds(); thread_seconds() - t0 < kWarmUp;) {
    for (Shape& s : shapes) {
      s.eigen();
      s.openblas();
    }
  }
  for (const Shape& s : shapes) {
    if (!s.agree()) {
      std::printf("error=%s: Eigen and OpenBLAS disagree\n", s.name());
      return 1;
    }
  }

  const double inf = std::numeric_limits<double>::infinity();
  double eigen = 0, openblas = 0, flops = 0;
  for (Shape& s : shapes) {
    double best_eigen = inf, best_openblas = inf;
    for (int r = 0; r < kRounds; ++r) {
      best_eigen = best_round([&] { s.eigen(); }, best_eigen);
      best_openblas = best_round([&] { s.openblas(); }, best_openblas);
    }
    std::printf("%s_eigen_us=%lld\n%s_openblas_us=%lld\n", s.name(), microseconds(best_eigen),
                s.name(), microseconds(best_openblas));
    eigen += best_eigen;
    openblas += best_openblas;
    flops += s.flops();
  }
  std::printf("eigen_us=%lld\nopenblas_us=%lld\n", microseconds(eigen), microseconds(openblas));
  std::printf("eigen_gflops=%.1f\nopenblas_gflops=%.1f\n", 1e-9 * flops / eigen,
              1e-9 * flops / openblas);
  std::printf("openblas_core=%s\n", openblas_get_corename());
  __builtin_cpu_init();
  const char* isa = __builtin_cpu_supports("avx512f")                                 ? "avx512f"
                    : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? "avx2"
                                                                                      : "older";
  std::printf("cpu_isa=%s\n", isa);
  return 0;
}
