//! The plugins; each binary in `src/bin` only hands one of these to [`crate::skel::main`].

pub mod bridge;
pub mod loopback;
pub mod portmap;
