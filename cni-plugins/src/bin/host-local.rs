//! host-local IPAM plugin.
fn main() {
    podlet_cni::skel::main(&podlet_cni::ipam::hostlocal::HostLocal)
}
