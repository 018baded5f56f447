//! podlet's bundled control plane: the apiserver (Kubernetes REST API for kubectl and the client
//! libraries) over a revisioned store (embedded or etcd).

pub mod store;
pub mod testing;
