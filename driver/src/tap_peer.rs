//! The remote host on the kernel side of a net_tap port: a network namespace that receives the
//! tap interface, with an address and the link up. Deleted again on drop.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

use nemflow_config::Ipv4Cidr;

/// Setting up the peer namespace failed.
#[derive(Debug, thiserror::Error)]
#[error("setting up the tap peer: `ip {cmd}` failed: {why}")]
pub struct TapPeerError {
    cmd: String,
    why: String,
}

/// A network namespace owning the kernel side of the tap.
#[derive(Debug)]
pub struct TapPeer {
    netns: String,
}

fn ip(args: &[&str]) -> Result<(), TapPeerError> {
    let err = |why: String| TapPeerError {
        cmd: args.join(" "),
        why,
    };
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| err(format!("{e} (is iproute2 installed?)")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
    }
}

impl TapPeer {
    /// Creates `netns`, moves `iface` into it, gives it `addr` and brings it up. IPv6 is
    /// switched off on the interface so the kernel does not chatter on the link.
    ///
    /// net_tap gives the kernel interface the port's own MAC; the peer gets its own,
    /// `02:4e:46:ff:XX:YY` from the last two bytes of its address, so that the link has two
    /// distinct stations.
    ///
    /// A namespace of that name left by a driver that did not exit cleanly (killed: its tap
    /// went with it, the namespace stayed, holding nothing but `lo`) is deleted and made anew;
    /// one that still holds other interfaces is someone else's and an error.
    pub fn setup(netns: &str, iface: &str, addr: Ipv4Cidr) -> Result<Self, TapPeerError> {
        if netns_path(netns).exists() {
            remove_stale(netns)?;
        }
        ip(&["netns", "add", netns])?;
        let peer = Self {
            netns: netns.to_owned(),
        };
        ip(&["link", "set", iface, "netns", netns])?;
        let _ = ip(&["-n", netns, "link", "set", "lo", "up"]);
        let _ = Command::new("ip")
            .args(["netns", "exec", netns, "sysctl", "-qw"])
            .arg(format!("net.ipv6.conf.{iface}.disable_ipv6=1"))
            .output();
        let [.., a, b] = addr.addr().octets();
        let mac = format!("02:4e:46:ff:{a:02x}:{b:02x}");
        ip(&["-n", netns, "link", "set", iface, "address", &mac])?;
        ip(&["-n", netns, "addr", "add", &addr.to_string(), "dev", iface])?;
        ip(&["-n", netns, "link", "set", iface, "up"])?;
        Ok(peer)
    }

    /// The namespace's name.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// A watch on `iface`'s link state inside the namespace. net_tap asks the kernel about its
    /// interface in the driver's own namespace, where the interface no longer is once it moved
    /// here: DPDK then reports the link down whatever its state. The watch asks through a socket
    /// made inside the namespace instead.
    pub fn link_watch(&self, iface: &str) -> Result<LinkWatch, TapPeerError> {
        LinkWatch::new(&self.netns, iface)
    }
}

/// The link state of an interface in another network namespace, read with `SIOCGIFFLAGS` on a
/// socket created in that namespace (a socket stays in the namespace it was made in).
#[derive(Debug)]
pub struct LinkWatch {
    sock: OwnedFd,
    name: [libc::c_char; libc::IFNAMSIZ],
}

impl LinkWatch {
    fn new(netns: &str, iface: &str) -> Result<Self, TapPeerError> {
        let err = |why: String| TapPeerError {
            cmd: format!("netns exec {netns}: watch {iface}"),
            why,
        };
        let bytes = iface.as_bytes();
        if bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(err("not an interface name".into()));
        }
        let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
        for (d, s) in name.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let path = netns_path(netns);
        let ns = std::fs::File::open(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        // A short-lived thread enters the namespace, so the driver's own threads stay where
        // they are.
        let sock = std::thread::spawn(move || -> Result<OwnedFd, String> {
            // SAFETY: setns on a namespace fd we opened; it affects only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns: {}", std::io::Error::last_os_error()));
            }
            // SAFETY: plain socket(2); the result is checked before use.
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(format!("socket: {}", std::io::Error::last_os_error()));
            }
            // SAFETY: a fresh descriptor nobody else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .join()
        .map_err(|_| err("watch thread panicked".into()))?
        .map_err(err)?;
        let watch = Self { sock, name };
        watch
            .up()
            .ok_or_else(|| err(format!("no interface {iface} in the namespace")))?;
        Ok(watch)
    }

    /// Whether the interface is up and has carrier (`IFF_UP` and `IFF_RUNNING`); `None` if it
    /// cannot be read (the interface or namespace is gone).
    pub fn up(&self) -> Option<bool> {
        // SAFETY: ifreq is plain C data; all-zero is a valid value before the name is set.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        req.ifr_name = self.name;
        // SAFETY: SIOCGIFFLAGS on a valid socket with a valid ifreq that lives across the call.
        let r = unsafe { libc::ioctl(self.sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
        if r < 0 {
            return None;
        }
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
        Some(flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0)
    }
}

/// Where `ip netns` keeps the named network namespace `netns`.
pub fn netns_path(netns: &str) -> std::path::PathBuf {
    std::path::Path::new("/var/run/netns").join(netns)
}

/// The interfaces in `netns` other than `lo` (a namespace that cannot be listed counts as
/// holding `?`: better left alone).
pub fn interfaces_in(netns: &str) -> Vec<String> {
    let out = match Command::new("ip")
        .args(["-n", netns, "-o", "link", "show"])
        .output()
    {
        Ok(o) if o.status.success() => o,
        _ => return vec!["?".into()],
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default().to_owned())
        .filter(|n| n != "lo")
        .collect()
}

/// Deletes `netns` if it holds no interface but `lo`.
fn remove_stale(netns: &str) -> Result<(), TapPeerError> {
    let others = interfaces_in(netns);
    if !others.is_empty() {
        return Err(TapPeerError {
            cmd: format!("netns add {netns}"),
            why: format!(
                "namespace {netns} exists and holds {}: another driver's? Stop it, or set port.tap_peer.netns",
                others.join(", ")
            ),
        });
    }
    ip(&["netns", "del", netns])?;
    tracing::warn!(
        netns,
        "removed the tap peer namespace a driver that did not exit cleanly left behind"
    );
    Ok(())
}

impl Drop for TapPeer {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.netns]) {
            tracing::warn!("{e}");
        }
    }
}
