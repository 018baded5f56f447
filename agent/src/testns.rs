//! Tests' throwaway network namespaces (root needed; skipped only with
//! PODLET_SKIP_PRIVILEGED=1): made with `ip netns add`, entered through the one closure API,
//! removed on drop.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Netns(String);

impl Netns {
    /// `None` only where privileged tests are skipped by hand.
    pub fn new(what: &str) -> Option<Netns> {
        if std::env::var_os("PODLET_SKIP_PRIVILEGED").is_some() {
            return None;
        }
        // Tests run in parallel: each its own namespace.
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("podlet-{what}-test-{}-{n}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add (root needed)");
        Some(Netns(name))
    }

    pub fn name(&self) -> String {
        self.0.clone()
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }

    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        podlet_cni::ns::with_netns(&self.path(), f).unwrap()
    }

    /// `nft list table ip <table>` in the namespace.
    pub fn nft_list(&self, table: &str) -> String {
        self.nft_list_family("ip", table)
    }

    /// `nft list table <family> <table>` in the namespace.
    pub fn nft_list_family(&self, family: &str, table: &str) -> String {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.0, "nft", "list", "table", family, table,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
