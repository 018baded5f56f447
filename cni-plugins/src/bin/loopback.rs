//! The loopback CNI plugin.
fn main() {
    podlet_cni::skel::main(&podlet_cni::plugins::loopback::Loopback)
}
