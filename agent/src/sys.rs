//! The agent's raw system calls.

use std::os::fd::AsRawFd;

nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);

/// Sets a terminal's window size (kubectl exec -t's resize messages).
pub fn set_window_size(tty: &impl AsRawFd, size: &libc::winsize) -> nix::Result<()> {
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
    unsafe { tiocswinsz(tty.as_raw_fd(), size) }.map(|_| ())
}
