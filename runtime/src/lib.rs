//! podlet's container runtime: images, pod sandboxes (the shim and its pause process),
//! containers through youki's libcontainer, root filesystems and cgroups. It knows nothing of
//! the Kubernetes API; the agent translates pods into these terms.

pub mod cgroup;
pub mod host;
pub mod image;
pub mod oci;
pub mod rootfs;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod sys;
