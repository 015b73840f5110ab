//! Raw AF_PACKET sockets: see and send exactly the frames a kernel interface carries.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// An AF_PACKET socket bound to one interface, receiving every ethertype.
#[derive(Debug)]
pub struct RawSocket {
    fd: OwnedFd,
    ifindex: i32,
}

/// Reads (and so resets) a packet socket's `PACKET_STATISTICS` into `stats`, whose type is the
/// one the socket's ring version fills (`tpacket_stats`, `tpacket_stats_v3`).
pub(crate) fn packet_statistics<T: Copy>(fd: BorrowedFd<'_>, mut stats: T) -> Result<T, String> {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: valid socket; `stats` and `len` are valid out-pointers of the size given, and
    // every `T` used here is a plain C struct of integers, valid for any bytes.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&raw mut stats).cast(),
            &mut len,
        )
    };
    if ret < 0 {
        return Err(last_os_error("PACKET_STATISTICS"));
    }
    Ok(stats)
}

pub(crate) fn last_os_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

impl RawSocket {
    /// Binds to `iface` in the current network namespace.
    pub fn bind(iface: &str) -> Result<Self, String> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if fd < 0 {
            return Err(last_os_error("socket(AF_PACKET)"));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let cname = std::ffi::CString::new(iface).map_err(|_| "interface name has NUL")?;
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(last_os_error(&format!("no interface {iface}")));
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: addr is a valid sockaddr_ll of the size we pass.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if ret < 0 {
            return Err(last_os_error(&format!("bind to {iface}")));
        }
        Ok(Self {
            fd,
            ifindex: ifindex as i32,
        })
    }

    /// Binds to `iface` inside the network namespace `netns` (by name, as `ip netns` knows it).
    /// The socket stays in that namespace; the calling thread does not move.
    pub fn bind_in(netns: &str, iface: &str) -> Result<Self, String> {
        let path = format!("/var/run/netns/{netns}");
        let ns = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        let iface = iface.to_owned();
        std::thread::spawn(move || {
            // SAFETY: setns on a namespace fd we opened; it only affects this new thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                return Err(last_os_error("setns"));
            }
            Self::bind(&iface)
        })
        .join()
        .map_err(|_| "socket thread panicked".to_string())?
    }

    /// Sends one whole frame.
    pub fn send(&self, frame: &[u8]) -> Result<(), String> {
        // SAFETY: frame is a valid buffer of frame.len() bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(last_os_error("send"));
        }
        Ok(())
    }

    /// Receives frames until `keep` accepts one or `timeout` passes.
    pub fn recv_matching(
        &self,
        timeout: Duration,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
                continue;
            }
            // SAFETY: buf is writable for buf.len() bytes. MSG_DONTWAIT: poll said readable.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if let Ok(n) = usize::try_from(n) {
                if keep(&buf[..n]) {
                    return Some(buf[..n].to_vec());
                }
            }
        }
    }

    /// Sets the receive buffer to `bytes` (`SO_RCVBUFFORCE`, root only), so that a capture does
    /// not lose frames to a short burst while its reader is descheduled.
    pub fn set_recv_buffer(&self, bytes: usize) -> Result<(), String> {
        let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: valid socket, option value of the size passed.
        let ret = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if ret < 0 {
            return Err(last_os_error("SO_RCVBUFFORCE"));
        }
        Ok(())
    }

    /// Frames the kernel dropped for this socket since the last call (its receive buffer was
    /// full), from `PACKET_STATISTICS`.
    pub fn drops(&self) -> Result<u64, String> {
        let stats = packet_statistics(
            self.fd.as_fd(),
            libc::tpacket_stats {
                tp_packets: 0,
                tp_drops: 0,
            },
        )?;
        Ok(u64::from(stats.tp_drops))
    }

    /// Asks the kernel to timestamp every received frame (`SO_TIMESTAMPNS`).
    pub fn enable_timestamps(&self) -> Result<(), String> {
        let on: libc::c_int = 1;
        // SAFETY: valid socket, option value of the size passed.
        let ret = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if ret < 0 {
            return Err(last_os_error("SO_TIMESTAMPNS"));
        }
        Ok(())
    }

    /// Receives one frame within `timeout`, with the kernel's receive timestamp (ns since the
    /// Unix epoch; 0 if timestamps are off).
    pub fn recv_timestamped(&self, timeout: Duration, buf: &mut [u8]) -> Option<(usize, u64)> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().clamp(0, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
            return None;
        }
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u64; 16];
        // SAFETY: msghdr is plain data; all-zero is valid before we fill the fields.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: msg points at valid buffers that outlive the call.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        let n = usize::try_from(n).ok()?;
        let mut stamp = 0u64;
        // SAFETY: walking the control messages the kernel wrote into `control`, with the libc
        // macros that bound every step by msg_controllen.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET
                    && (*cmsg).cmsg_type == libc::SO_TIMESTAMPNS
                {
                    let ts =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                    stamp = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        Some((n, stamp))
    }

    /// The interface index bound to.
    pub fn ifindex(&self) -> i32 {
        self.ifindex
    }
}
