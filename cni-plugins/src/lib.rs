//! podlet's CNI plugins (`bridge`, `host-local`, `loopback`, `portmap`) as a library: the spec
//! types, the plumbing every plugin binary shares, and the plugins themselves. It knows nothing
//! of pods.

pub mod client;
pub mod ipam;
pub mod netlink;
pub mod nft;
pub mod ns;
pub mod plugins;
pub mod skel;
pub mod spec;
mod sys;
