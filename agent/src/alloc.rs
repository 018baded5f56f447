//! The process's allocator, chosen by what the process is.
//!
//! The servers (`podlet run`, `podlet control-plane`) allocate and free small objects across
//! threads at a high rate — JSON trees, watch events, TLS records: glibc's malloc took a fifth
//! of the apiserver's CPU in `bench/scheduler.py`, and mimalloc's thread-local free lists
//! raised its pods/s by a third. The per-pod processes (the shim and the pause it forks) are
//! the opposite: single-threaded, long-lived and counted per pod, where mimalloc's segments
//! tripled their proportional memory (PSS 1.05 → 3.1 MiB per pod). So the servers get
//! mimalloc and every other subcommand the system allocator.
//!
//! The choice is made at the first allocation, before `main` (no threads yet), from the
//! subcommand in `/proc/self/cmdline`, and never changes, so every block is freed by the
//! allocator that made it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

use mimalloc::MiMalloc;

pub struct Allocator;

const UNDECIDED: u8 = 0;
const SYSTEM: u8 = 1;
const MIMALLOC: u8 = 2;

static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// The global options that take a value (`PathFlags`), which may precede the subcommand.
const VALUED: [&[u8]; 4] = [b"--config", b"--root-dir", b"--run-dir", b"--log-dir"];

/// Whether a command line (NUL-separated, as `/proc/self/cmdline`) runs a server subcommand.
fn is_server(cmdline: &[u8]) -> bool {
    let mut args = cmdline.split(|b| *b == 0).skip(1);
    while let Some(arg) = args.next() {
        if VALUED.contains(&arg) {
            args.next();
        } else if !arg.starts_with(b"-") {
            return arg == b"run" || arg == b"control-plane";
        }
    }
    false
}

#[inline]
fn mimalloc() -> bool {
    match CHOICE.load(Ordering::Relaxed) {
        MIMALLOC => true,
        SYSTEM => false,
        _ => {
            let mut buf = [0u8; 512];
            let n = crate::sys::own_cmdline(&mut buf);
            let choice = if is_server(&buf[..n]) {
                MIMALLOC
            } else {
                SYSTEM
            };
            // Only the first decision counts (it is the same one, from the same command line).
            let _ =
                CHOICE.compare_exchange(UNDECIDED, choice, Ordering::Relaxed, Ordering::Relaxed);
            CHOICE.load(Ordering::Relaxed) == MIMALLOC
        }
    }
}

/// The allocator this process uses (both are unit structs: nothing to build).
#[inline]
fn chosen() -> &'static dyn GlobalAlloc {
    if mimalloc() {
        &MiMalloc
    } else {
        &System
    }
}

// SAFETY: every call goes to one of two allocators that uphold GlobalAlloc's contract, and the
// choice between them is fixed before the first block is handed out, so a block is always
// freed or resized by the allocator that made it.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        unsafe { chosen().alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        unsafe { chosen().alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from the same allocator (the choice never changes).
        unsafe { chosen().dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from the same allocator (the choice never changes).
        unsafe { chosen().realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::is_server;

    #[test]
    fn servers_are_run_and_control_plane_after_any_global_flags() {
        for (cmdline, server) in [
            (&b"podlet\0run\0--node-name\0n1\0"[..], true),
            (
                b"/usr/bin/podlet\0control-plane\0--listen\0[::]:6443\0",
                true,
            ),
            (b"podlet\0--root-dir\0/var/lib/x\0run\0", true),
            (b"podlet\0--config=/etc/podlet/config.yaml\0run\0", true),
            (b"podlet\0--run-dir\0run\0shim\0--pod-dir\0/run/p\0", false),
            (b"podlet\0shim\0--pod-dir\0/run/podlet/pods/x\0", false),
            (b"podlet\0oci\0run\0--bundle\0b\0c\0", false),
            (b"podlet\0ps\0", false),
            (b"podlet\0", false),
            (b"", false),
        ] {
            assert_eq!(
                is_server(cmdline),
                server,
                "{}",
                String::from_utf8_lossy(cmdline)
            );
        }
    }
}
