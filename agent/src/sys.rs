//! The agent's raw system calls.

use std::os::fd::AsRawFd;

nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);

/// Sets a terminal's window size (kubectl exec -t's resize messages).
pub fn set_window_size(tty: &impl AsRawFd, size: &libc::winsize) -> nix::Result<()> {
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
    unsafe { tiocswinsz(tty.as_raw_fd(), size) }.map(|_| ())
}

/// Reads the start of this process's command line (`/proc/self/cmdline`, NUL-separated) into
/// `buf` without allocating: the global allocator asks before anything else has run.
/// Returns how many bytes were read (0 when `/proc` cannot be read).
pub fn own_cmdline(buf: &mut [u8]) -> usize {
    // SAFETY: the path is a NUL-terminated static string; open returns a new descriptor or -1.
    let fd = unsafe {
        libc::open(
            c"/proc/self/cmdline".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return 0;
    }
    let mut n = 0;
    while n < buf.len() {
        // SAFETY: reads at most the rest of `buf`, which stays borrowed for the call, from the
        // descriptor opened above.
        let r = unsafe { libc::read(fd, buf[n..].as_mut_ptr().cast(), buf.len() - n) };
        if r <= 0 {
            break;
        }
        n += r as usize;
    }
    // SAFETY: closes the descriptor this function opened and no one else holds.
    unsafe { libc::close(fd) };
    n
}
