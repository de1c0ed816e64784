#pragma once
// Ctrl-C handling for the example programs: the first SIGINT (or SIGTERM) only raises a flag,
// which the training loop polls once per step to save a checkpoint and exit cleanly; a second
// one restores the default action, so pressing Ctrl-C twice always ends the program at once.
#include <csignal>

namespace reformer::examples {

namespace detail {
// Written from the signal handler: the only object type the standard allows there.
inline volatile std::sig_atomic_t g_interrupt_requested = 0;

inline void on_interrupt_signal(int sig) {
  g_interrupt_requested = 1;
  std::signal(sig, SIG_DFL);  // the next one terminates
}
}  // namespace detail

/// Installs the handler for SIGINT and SIGTERM.
inline void install_interrupt_handler() {
  detail::g_interrupt_requested = 0;
  std::signal(SIGINT, detail::on_interrupt_signal);
  std::signal(SIGTERM, detail::on_interrupt_signal);
}

/// True once Ctrl-C (or SIGTERM) was received.
inline bool interrupt_requested() { return detail::g_interrupt_requested != 0; }

}  // namespace reformer::examples
