//! Helpers shared by nemflow's integration tests and its experiments harness: unique names,
//! network namespaces, raw AF_PACKET sockets and mmap'd receive rings on kernel interfaces,
//! hand-made frames, real driver and flow-manager processes, and guards that clean up DPDK
//! runtime files, tap interfaces and namespaces even when a test fails midway.
//!
//! Tests that use these need root (CI runs as root); they fail with a clear message otherwise.

pub mod driver;
pub mod flows;
pub mod frames;
mod netns;
mod raw;
mod rx_ring;
pub mod system;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

pub use netns::{ip, Netns};
pub use raw::RawSocket;
pub use rx_ring::{Block, Frames, RingConfig, RingStats, RxFrame, RxRing, VlanTag};

/// A name unique to this process and call, at most 15 bytes (fits a Linux interface name):
/// `prefix` (≤ 6 bytes) + pid + a counter.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = format!(
        "{}{:x}{}",
        &prefix[..prefix.len().min(6)],
        std::process::id(),
        n
    );
    name.truncate(15);
    name
}

/// Panics with a clear message unless running as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (net_tap, network namespaces, raw sockets)"
    );
}

/// DPDK's runtime directory for a file prefix.
pub fn dpdk_runtime_dir(prefix: &str) -> PathBuf {
    PathBuf::from("/var/run/dpdk").join(prefix)
}

/// Removes `/var/run/dpdk/<prefix>` when dropped, also when the test panics.
#[derive(Debug)]
pub struct DpdkPrefixGuard {
    /// The file prefix to pass to the EAL.
    pub prefix: String,
}

impl DpdkPrefixGuard {
    /// A fresh, unique prefix.
    pub fn new(tag: &str) -> Self {
        Self {
            prefix: unique_name(tag),
        }
    }
}

impl Drop for DpdkPrefixGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(dpdk_runtime_dir(&self.prefix));
    }
}

/// Whether a network interface exists in the current namespace.
pub fn iface_exists(name: &str) -> bool {
    PathBuf::from("/sys/class/net").join(name).exists()
}

/// Deletes a network interface when dropped (if it still exists).
#[derive(Debug)]
pub struct IfaceGuard(pub String);

impl Drop for IfaceGuard {
    fn drop(&mut self) {
        if iface_exists(&self.0) {
            let _ = ip(&["link", "del", &self.0]);
        }
    }
}
