// packet::exp_nonpositive (ops/detail/exp_packet.hpp) against Eigen's pexp, the oracle it
// shortens: bitwise the same on [-87.6, 88], 0 below (where pexp is below the smallest normal
// float), NaN for NaN; and Eigen's pexp itself for double packets.
#include "reformer/ops/detail/exp_packet.hpp"
#include "reformer/ops/detail/packets.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace reformer::exp_packet_test {
namespace {

namespace ei = Eigen::internal;

template <class S>
using Bits = std::conditional_t<sizeof(S) == 4, std::uint32_t, std::uint64_t>;

template <class S>
Bits<S> bits(S x) {
  Bits<S> b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

/// fast[i] = exp_nonpositive(x[i]) and eigen[i] = Eigen's pexp(x[i]), one packet at a time.
template <class S>
void evaluate(const std::vector<S>& x, std::vector<S>& fast, std::vector<S>& eigen) {
  using P = detail::Packet<S>;
  constexpr int k = detail::kPacketSize<S>;
  std::vector<S> in(x);
  in.resize((x.size() + k - 1) / k * k, S(0));
  fast.assign(in.size(), S(0));
  eigen.assign(in.size(), S(0));
  for (std::size_t i = 0; i < in.size(); i += k) {
    const P p = ei::ploadu<P>(in.data() + i);
    ei::pstoreu(fast.data() + i, detail::packet::exp_nonpositive(p));
    ei::pstoreu(eigen.data() + i, ei::pexp(p));
  }
}

float from_bits(std::uint32_t b) {
  float v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

/// Calls check(x, exp_nonpositive(x), pexp(x)) for the floats whose bit patterns run from
/// `first` to `last` (inclusive) in steps of `stride`, a packet P at a time; returns the count.
template <class P, class Check>
std::size_t for_float_bits(std::uint32_t first, std::uint32_t last, std::uint32_t stride,
                           Check&& check) {
  constexpr int k = ei::unpacket_traits<P>::size;
  float in[k], fast[k], eigen[k];
  std::size_t count = 0;
  std::uint64_t b = first;
  while (b <= last) {
    int n = 0;
    for (; n < k && b <= last; ++n, b += stride) in[n] = from_bits(static_cast<std::uint32_t>(b));
    for (int l = n; l < k; ++l) in[l] = 0.0f;
    const P p = ei::ploadu<P>(in);
    ei::pstoreu(fast, detail::packet::exp_nonpositive(p));
    ei::pstoreu(eigen, ei::pexp(p));
    for (int l = 0; l < n; ++l) check(in[l], fast[l], eigen[l]);
    count += static_cast<std::size_t>(n);
  }
  return count;
}

// The kernels' float packet and its half: with AVX-512 the full packet takes Eigen's own exp, and
// the half (AVX) packet still runs the shortened generic one, so the comparison below checks the
// shortened code on every x86 build (SSE's half packet is the packet itself). Tags name them, as
// vector types are not kept intact as class template arguments.
struct FullFloatPacket {
  using type = detail::Packet<float>;
};
struct HalfFloatPacket {
  using type = ei::packet_traits<float>::half;
};

template <class Tag>
class ExpPacketFloat : public ::testing::Test {};
using FloatPackets = ::testing::Types<FullFloatPacket, HalfFloatPacket>;
TYPED_TEST_SUITE(ExpPacketFloat, FloatPackets);

TYPED_TEST(ExpPacketFloat, IsBitwiseEigensExpOnItsRange) {
  // About 23 million arguments spread over every binade of [-87.6, 88] (negative floats grow in
  // magnitude with their bit pattern), plus the edges.
  std::size_t mismatches = 0;
  auto same = [&](float x, float fast, float eigen) {
    if (bits(fast) != bits(eigen) && ++mismatches <= 5)
      ADD_FAILURE() << "x = " << x << ": exp_nonpositive " << fast << ", pexp " << eigen;
  };
  std::size_t n = for_float_bits<typename TypeParam::type>(bits(-0.0f), bits(-87.6f), 97, same);
  n += for_float_bits<typename TypeParam::type>(bits(0.0f), bits(88.0f), 97, same);
  std::vector<float> edges = {0.0f,
                              -0.0f,
                              -87.6f,
                              -87.5f,
                              -87.33f,
                              -86.99f,
                              -1e-30f,
                              -1e-45f,
                              1e-45f,
                              1.0f,
                              -1.0f,
                              -0.5f,
                              87.9f,
                              88.0f,
                              std::numeric_limits<float>::min(),
                              -std::numeric_limits<float>::min()};
  for (float v : edges) n += for_float_bits<typename TypeParam::type>(bits(v), bits(v), 1, same);
  EXPECT_GT(n, 20000000u);
  EXPECT_EQ(mismatches, 0u) << "of " << n << " arguments";
}

TYPED_TEST(ExpPacketFloat, BelowTheRangeIsZeroWherePexpIsNotNormal) {
  // Below -87.6 exp(x) is under the smallest normal float: 0 here, 0 or a subnormal from pexp.
  std::size_t failures = 0;
  auto zero = [&](float x, float fast, float eigen) {
    if ((bits(fast) != bits(0.0f) || !(eigen < std::numeric_limits<float>::min())) &&
        ++failures <= 5)
      ADD_FAILURE() << "x = " << x << ": exp_nonpositive " << fast << ", pexp " << eigen;
  };
  std::size_t n = for_float_bits<typename TypeParam::type>(bits(-87.7f), bits(-1e4f), 101, zero);
  for (float v : {-88.0f, -88.723f, -89.0f, -103.0f, -1e9f, -1e30f,
                  -std::numeric_limits<float>::max(), -std::numeric_limits<float>::infinity()})
    n += for_float_bits<typename TypeParam::type>(bits(v), bits(v), 1, zero);
  EXPECT_GT(n, 100000u);
  EXPECT_EQ(failures, 0u) << "of " << n << " arguments";
}

TEST(ExpPacket, NanGivesNan) {
  const std::vector<float> xf(5, std::numeric_limits<float>::quiet_NaN());
  std::vector<float> ff, ef;
  evaluate(xf, ff, ef);
  for (std::size_t i = 0; i < xf.size(); ++i) {
    EXPECT_TRUE(std::isnan(ff[i]));
    EXPECT_TRUE(std::isnan(ef[i]));
  }
  const std::vector<double> xd(3, std::numeric_limits<double>::quiet_NaN());
  std::vector<double> fd, ed;
  evaluate(xd, fd, ed);
  for (std::size_t i = 0; i < xd.size(); ++i) EXPECT_TRUE(std::isnan(fd[i]));
}

TEST(ExpPacket, DoubleIsEigensExp) {
  std::vector<double> x;
  for (double v = -745.0; v <= 0.0; v += 0.37) x.push_back(v);
  for (double v :
       {0.0, -0.0, -1e-300, -708.3, -708.5, -1e9, -std::numeric_limits<double>::infinity()})
    x.push_back(v);
  std::vector<double> fast, eigen;
  evaluate(x, fast, eigen);
  for (std::size_t i = 0; i < x.size(); ++i)
    ASSERT_EQ(bits(fast[i]), bits(eigen[i])) << "x = " << x[i];
}

}  // namespace
}  // namespace reformer::exp_packet_test
