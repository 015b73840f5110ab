//! Checks made before DPDK starts, so that the usual mistakes get one readable line instead of
//! DPDK's log: not root, no `/dev/net/tun`, a tap interface name already taken.

use std::path::Path;

use nemflow_config::Config;

/// Something that stops the driver from starting.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// DPDK needs root here (hugepage/memory locking, tap devices, raw device access).
    #[error("must run as root (DPDK needs it for the NIC, its memory and tap devices); try sudo")]
    NotRoot,
    /// net_tap needs the tun driver.
    #[error("net_tap needs /dev/net/tun, which is missing: load the tun module (`modprobe tun`)")]
    NoTun,
    /// The tap interface name is in use.
    #[error("network interface `{0}` already exists: another driver is running on it, or pick another iface= in port.vdev")]
    IfaceBusy(String),
    /// The peer namespace exists already and holds interfaces (an empty one, left by a driver
    /// that was killed, is removed and made anew at start).
    #[error("network namespace `{0}` already exists and holds {1}: another driver is using it, or remove it with `ip netns del {0}`")]
    NetnsBusy(String, String),
}

/// Runs every check that applies to `config`.
pub fn check(config: &Config) -> Result<(), PreflightError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(PreflightError::NotRoot);
    }
    if let Some(vdev) = config
        .port
        .vdev
        .as_ref()
        .filter(|v| v.driver() == "net_tap")
    {
        if !Path::new("/dev/net/tun").exists() {
            return Err(PreflightError::NoTun);
        }
        if let Some(iface) = vdev.arg("iface") {
            if Path::new("/sys/class/net").join(iface).exists() {
                return Err(PreflightError::IfaceBusy(iface.into()));
            }
        }
        if let Some(peer) = &config.port.tap_peer {
            if crate::tap_peer::netns_path(&peer.netns).exists() {
                let held = crate::tap_peer::interfaces_in(&peer.netns);
                if !held.is_empty() {
                    return Err(PreflightError::NetnsBusy(
                        peer.netns.clone(),
                        held.join(", "),
                    ));
                }
            }
        }
    }
    Ok(())
}
