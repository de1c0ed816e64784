#pragma once
// Eigen's packet type of a scalar (AVX-512 / AVX2 / SSE / NEON register of float or double, or
// the scalar itself when Eigen does not vectorise) and its number of lanes, for the kernels that
// are written on Eigen's packet math.
#include <Eigen/Core>

namespace reformer::detail {

template <class S>
using Packet = typename Eigen::internal::packet_traits<S>::type;

template <class S>
inline constexpr int kPacketSize = Eigen::internal::unpacket_traits<Packet<S>>::size;

}  // namespace reformer::detail
