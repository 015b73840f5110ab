//! UDP throughput of one flow over a tap link, nemflow against Linux sockets, side by side in one
//! run: datagrams/s and payload Mbit/s, app → wire and wire → app.
//!
//! - **app → wire**: the app sends `len`-byte datagrams on one flow as fast as it can for
//!   `--seconds`; a Linux UDP socket (`recvmmsg`) on the far side of the tap counts what arrives.
//! - **wire → app**: a Linux UDP socket (`sendmmsg`) on the far side sends as fast as it can; the
//!   app counts what it receives.
//!
//! Stacks under test:
//! - **nemflow**: the app's own stack (appstack's `UdpFlow`, zero-copy `tx_buf` / `recv_datagram`,
//!   default channels) over its Rbuf channels; the real driver on net_tap (link rate 10 Gbit/s,
//!   so pacing never limits) and the real flow manager; the far side in the driver's remote-host
//!   namespace.
//! - **Linux, tap link**: the same program shape on a kernel UDP socket (`sendmmsg` /
//!   `recvmmsg`, batches of `--batch`, default buffers) in namespace L, whose tap device is joined
//!   to a tap device in namespace R by a user-space forwarder (read a frame, write it: what DPDK's
//!   net_tap PMD does for the nemflow driver); the far side in R.
//! - **Linux, veth** (for reference): the same, over a veth pair (no user-space hop).
//!
//! The far side is the same code on every link. Runs alternate between the stacks, so machine
//! noise falls on all of them; medians of `--runs` are printed as a Markdown table.
//!
//! Needs root and the workspace's release binaries beside this one:
//! `cargo build --release -p nemflow-driver -p nemflow-flowmgr -p nemflow-bench --bins &&
//! ./target/release/udp`.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Parser;
use nemflow_appstack::{Error as StackError, FlowChannels, FlowConfig, UdpFlow};
use nemflow_flowmgr::client::Client;
use nemflow_proto::app::OpenFlow;
use nemflow_testkit::driver::DriverOptions;
use nemflow_testkit::system::NemflowHost;
use nemflow_testkit::{unique_name, Netns};

/// UDP over a tap link: nemflow's per-app stack and driver against Linux sockets
/// (sendmmsg/recvmmsg), app → wire and wire → app. Needs root.
#[derive(Debug, Clone, Parser)]
#[command(name = "udp")]
struct Args {
    /// Seconds each sender sends.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Runs of each measurement (the median is printed).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// UDP payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "64,1472")]
    sizes: Vec<usize>,
    /// Datagrams per sendmmsg/recvmmsg call on Linux sockets.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// The nemflow driver's link rate, bit/s (high, so pacing does not limit).
    #[arg(long, default_value_t = 10_000_000_000)]
    rate_bps: u64,
    /// The nemflow driver's idle mode: `adaptive` (default) or `busy`.
    #[arg(long, default_value = "adaptive")]
    driver_idle: String,
    /// Skip the veth reference.
    #[arg(long)]
    no_veth: bool,
    /// After each nemflow run, print where datagrams were lost (driver and kernel counters).
    #[arg(long)]
    diag: bool,
    /// Seconds per step of the search for the highest lossless wire → app rate (0: no search).
    #[arg(long, default_value_t = 1.0)]
    search_seconds: f64,
    /// Renice the nemflow driver to this (the test harness starts it at -10, above the apps).
    #[arg(long, allow_hyphen_values = true)]
    driver_nice: Option<i32>,
    /// Loss the search accepts as lossless (a fraction).
    #[arg(long, default_value_t = 0.01)]
    max_loss: f64,
}

/// Far-side (remote host) socket buffer: big, so the far side is never what limits.
const FAR_SOCKET_BUFFER: usize = 16 << 20;
/// The receiver stops after the sender ended and nothing arrived for this long.
const QUIET: Duration = Duration::from_millis(200);
/// Port the far side receives on.
const FAR_SINK_PORT: u16 = 9100;
/// Port the far side sends from.
const FAR_SOURCE_PORT: u16 = 9101;
/// Port the app receives on.
const APP_PORT: u16 = 9200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    AppToWire,
    WireToApp,
}

impl Dir {
    fn label(self) -> &'static str {
        match self {
            Dir::AppToWire => "app → wire",
            Dir::WireToApp => "wire → app",
        }
    }
}

/// What a sender did.
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    datagrams: u64,
    elapsed: Duration,
    /// CPU time of the sending thread (user + system).
    cpu: Duration,
}

/// What a receiver got: datagrams, payload bytes, from the first to the last.
#[derive(Debug, Clone, Copy, Default)]
struct Received {
    datagrams: u64,
    bytes: u64,
    span: Duration,
    /// CPU time of the receiving thread (user + system).
    cpu: Duration,
}

/// CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// One measurement.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    sent: Sent,
    received: Received,
    /// Which end is the app under test.
    app_sends: bool,
}

impl Sample {
    /// CPU time the app's thread spent per datagram it sent or received (its stack, its system
    /// calls, its waiting for buffers when it spins).
    fn app_cpu_ns(&self) -> f64 {
        let (cpu, n) = if self.app_sends {
            (self.sent.cpu, self.sent.datagrams)
        } else {
            (self.received.cpu, self.received.datagrams)
        };
        cpu.as_nanos() as f64 / n.max(1) as f64
    }

    /// Delivered datagrams per second.
    fn delivered_per_s(&self) -> f64 {
        self.received.datagrams as f64 / self.received.span.as_secs_f64().max(1e-9)
    }

    /// Delivered payload Mbit/s.
    fn delivered_mbit_s(&self) -> f64 {
        self.received.bytes as f64 * 8.0 / 1e6 / self.received.span.as_secs_f64().max(1e-9)
    }

    /// Datagrams per second the sending app got rid of.
    fn offered_per_s(&self) -> f64 {
        self.sent.datagrams as f64 / self.sent.elapsed.as_secs_f64().max(1e-9)
    }

    /// Share of sent datagrams that did not arrive.
    fn loss(&self) -> f64 {
        if self.sent.datagrams == 0 {
            return 0.0;
        }
        1.0 - self.received.datagrams as f64 / self.sent.datagrams as f64
    }
}

// ---- threads in network namespaces ----

/// Runs `f` on a new thread inside network namespace `netns` (sockets it creates live there).
fn spawn_in<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> JoinHandle<Result<T, String>> {
    let path = format!("/var/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| format!("setns {path}: {e}"))?;
        f()
    })
}

fn join<T>(h: JoinHandle<Result<T, String>>) -> Result<T, String> {
    h.join().map_err(|_| "thread panicked".to_string())?
}

// ---- Linux UDP sockets: sendmmsg / recvmmsg ----

fn set_buffer(sock: &UdpSocket, opt: libc::c_int, bytes: usize) -> Result<(), String> {
    let v = bytes as libc::c_int;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int and its size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(format!("setsockopt: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Sends `len`-byte datagrams on a connected socket with `sendmmsg`, `batch` per call, for
/// `duration`, as fast as it can or paced to `rate_per_s`. Each payload starts with its sequence
/// number (as the nemflow sender writes it).
fn sendmmsg_for(
    sock: &UdpSocket,
    len: usize,
    batch: usize,
    duration: Duration,
    rate_per_s: Option<f64>,
) -> Result<Sent, String> {
    let mut bufs = vec![vec![0u8; len]; batch];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: mmsghdr is a plain C struct; all-zero is a valid value (no name, no control).
    let mut msgs: Vec<libc::mmsghdr> = (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let stamp = len.min(8);
    let cpu0 = thread_cpu();
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        if let Some(rate) = rate_per_s {
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            let now = Instant::now();
            if due > now + Duration::from_micros(100) {
                std::thread::sleep(due - now);
            } else {
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
            }
        }
        for (i, b) in bufs.iter_mut().enumerate() {
            b[..stamp].copy_from_slice(&(sent + i as u64).to_be_bytes()[..stamp]);
        }
        // SAFETY: `msgs` holds `batch` headers, each pointing at one live iovec of a live
        // buffer (`iovs`, `bufs` outlive the call and are not moved).
        let n = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                batch as libc::c_uint,
                0,
            )
        };
        if n > 0 {
            sent += n as u64;
        } else {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN | libc::ENOBUFS | libc::EINTR) => std::thread::yield_now(),
                // The far side's kernel said port unreachable for an early datagram: go on.
                Some(libc::ECONNREFUSED) => {}
                _ => return Err(format!("sendmmsg: {e}")),
            }
        }
    }
    Ok(Sent {
        datagrams: sent,
        elapsed: start.elapsed(),
        cpu: thread_cpu() - cpu0,
    })
}

/// Receives with `recvmmsg` until `stop` is set and nothing arrived for [`QUIET`]. Reads each
/// payload's sequence number (as the nemflow receiver does).
fn recvmmsg_until(sock: &UdpSocket, batch: usize, stop: &AtomicBool) -> Result<Received, String> {
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(|e| e.to_string())?;
    let mut bufs = vec![vec![0u8; 65536]; batch];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: mmsghdr is a plain C struct; all-zero is a valid value.
    let mut msgs: Vec<libc::mmsghdr> = (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let cpu0 = thread_cpu();
    let mut r = Received::default();
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut seq_sum = 0u64;
    loop {
        // SAFETY: `msgs` holds `batch` headers pointing at live iovecs of live 64 KiB buffers;
        // a null timeout (the socket's receive timeout applies to the first datagram).
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                batch as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n > 0 {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
            for (m, b) in msgs.iter().zip(&bufs).take(n as usize) {
                let len = m.msg_len as usize;
                r.bytes += len as u64;
                let mut s = [0u8; 8];
                let k = len.min(8);
                s[..k].copy_from_slice(&b[..k]);
                seq_sum = seq_sum.wrapping_add(u64::from_be_bytes(s));
            }
            r.datagrams += n as u64;
            continue;
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) => {}
            _ => return Err(format!("recvmmsg: {e}")),
        }
        let quiet = first.is_none_or(|_| last.elapsed() > QUIET);
        if stop.load(Ordering::Relaxed) && quiet {
            break;
        }
    }
    std::hint::black_box(seq_sum);
    r.span = first.map(|f| last - f).unwrap_or_default();
    r.cpu = thread_cpu() - cpu0;
    Ok(r)
}

/// A receiving socket bound to `port` inside `netns`, on its own thread; `ready` once bound.
fn linux_sink(
    netns: &str,
    port: u16,
    buffer: Option<usize>,
    batch: usize,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<Result<Received, String>>, String> {
    let (tx, rx) = mpsc::channel();
    let h = spawn_in(netns, move || {
        let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
            .map_err(|e| format!("bind {port}: {e}"))?;
        if let Some(b) = buffer {
            set_buffer(&sock, libc::SO_RCVBUFFORCE, b)?;
        }
        let _ = tx.send(());
        recvmmsg_until(&sock, batch, &stop)
    });
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(()) => Ok(h),
        Err(_) => Err(join(h).err().unwrap_or_else(|| "sink did not start".into())),
    }
}

/// What a sender sends: datagram size, batch, how long, how fast (`None`: as fast as it can).
#[derive(Debug, Clone, Copy)]
struct Load {
    len: usize,
    batch: usize,
    duration: Duration,
    rate_per_s: Option<f64>,
}

/// A sending socket inside `netns`, bound to `from_port` and connected to `to`, sending `load`
/// on its own thread; sets `done` at the end.
fn linux_source(
    netns: &str,
    from_port: u16,
    to: SocketAddrV4,
    buffer: Option<usize>,
    load: Load,
    done: Arc<AtomicBool>,
) -> JoinHandle<Result<Sent, String>> {
    spawn_in(netns, move || {
        let r = (|| {
            let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, from_port))
                .map_err(|e| format!("bind {from_port}: {e}"))?;
            if let Some(b) = buffer {
                set_buffer(&sock, libc::SO_SNDBUFFORCE, b)?;
            }
            sock.connect(to).map_err(|e| format!("connect {to}: {e}"))?;
            sendmmsg_for(&sock, load.len, load.batch, load.duration, load.rate_per_s)
        })();
        done.store(true, Ordering::Relaxed);
        r
    })
}

// ---- the Linux links ----

/// Two namespaces, L (the host under test, 10.78.0.1) and R (the far side, 10.78.0.2), joined
/// by two tap devices and a forwarder thread per direction, or by a veth pair. Removed on drop.
struct LinuxLink {
    host: Netns,
    remote: Netns,
    stop: Arc<AtomicBool>,
    forwarders: Vec<JoinHandle<u64>>,
    /// Frames the forwarders could not write.
    fwd_errors: Arc<AtomicU64>,
}

const L_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const R_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);

/// Opens a tap device (no packet-information header), non-blocking.
fn open_tap(name: &str) -> Result<File, String> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .map_err(|e| format!("/dev/net/tun: {e}"))?;
    // SAFETY: ifreq is a plain C struct; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF on the tun fd we opened, with a pointer to a live, initialised ifreq.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if r < 0 {
        return Err(format!(
            "TUNSETIFF {name}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(f)
}

/// Moves frames from `from` to `to` until `stop`: read a frame, write it (as a poll-mode driver
/// does with a tap), sleeping in poll(2) when there is nothing to read. Returns frames moved.
fn forward(from: Arc<File>, to: Arc<File>, stop: Arc<AtomicBool>, errors: Arc<AtomicU64>) -> u64 {
    let mut buf = vec![0u8; 65536];
    let mut moved = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match (&*from).read(&mut buf) {
            Ok(n) => {
                if (&*to).write(&buf[..n]).is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                moved += 1;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd: from.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll on one live pollfd; the fd stays open (`from` is held).
                unsafe { libc::poll(&mut pfd, 1, 50) };
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    moved
}

impl LinuxLink {
    fn configure(ns: &Netns, iface: &str, ip: Ipv4Addr) -> Result<(), String> {
        let _ = ns.exec(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{iface}.disable_ipv6=1"),
        ]);
        ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", iface])?;
        ns.exec(&["ip", "link", "set", iface, "up"])?;
        Ok(())
    }

    /// L and R joined by two taps and a user-space forwarder.
    fn tap() -> Result<Self, String> {
        let host = Netns::new("nbl")?;
        let remote = Netns::new("nbr")?;
        let (l_if, r_if) = (unique_name("nbtl"), unique_name("nbtr"));
        let l = Arc::new(open_tap(&l_if)?);
        let r = Arc::new(open_tap(&r_if)?);
        host.adopt(&l_if)?;
        remote.adopt(&r_if)?;
        Self::configure(&host, &l_if, L_IP)?;
        Self::configure(&remote, &r_if, R_IP)?;
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(AtomicU64::new(0));
        let forwarders = vec![
            {
                let (l, r, s, e) = (l.clone(), r.clone(), stop.clone(), errors.clone());
                std::thread::spawn(move || forward(l, r, s, e))
            },
            {
                let (s, e) = (stop.clone(), errors.clone());
                std::thread::spawn(move || forward(r, l, s, e))
            },
        ];
        Ok(LinuxLink {
            host,
            remote,
            stop,
            forwarders,
            fwd_errors: errors,
        })
    }

    /// L and R joined by a veth pair.
    fn veth() -> Result<Self, String> {
        let host = Netns::new("nbl")?;
        let remote = Netns::new("nbr")?;
        let (l_if, r_if) = (unique_name("nbvl"), unique_name("nbvr"));
        nemflow_testkit::ip(&["link", "add", &l_if, "type", "veth", "peer", "name", &r_if])?;
        host.adopt(&l_if)?;
        remote.adopt(&r_if)?;
        Self::configure(&host, &l_if, L_IP)?;
        Self::configure(&remote, &r_if, R_IP)?;
        Ok(LinuxLink {
            host,
            remote,
            stop: Arc::new(AtomicBool::new(false)),
            forwarders: Vec::new(),
            fwd_errors: Arc::new(AtomicU64::new(0)),
        })
    }
}

impl Drop for LinuxLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.forwarders.drain(..) {
            let _ = h.join();
        }
    }
}

/// One measurement on a Linux link: the app in L, the far side in R.
fn run_linux(link: &LinuxLink, dir: Dir, load: Load) -> Result<Sample, String> {
    let stop = Arc::new(AtomicBool::new(false));
    match dir {
        Dir::AppToWire => {
            let sink = linux_sink(
                link.remote.name(),
                FAR_SINK_PORT,
                Some(FAR_SOCKET_BUFFER),
                load.batch,
                stop.clone(),
            )?;
            let app = linux_source(
                link.host.name(),
                APP_PORT,
                SocketAddrV4::new(R_IP, FAR_SINK_PORT),
                None,
                load,
                Arc::new(AtomicBool::new(false)),
            );
            let sent = join(app);
            stop.store(true, Ordering::Relaxed);
            let received = join(sink)?;
            Ok(Sample {
                sent: sent?,
                received,
                app_sends: dir == Dir::AppToWire,
            })
        }
        Dir::WireToApp => {
            let app = linux_sink(link.host.name(), APP_PORT, None, load.batch, stop.clone())?;
            let far = linux_source(
                link.remote.name(),
                FAR_SOURCE_PORT,
                SocketAddrV4::new(L_IP, APP_PORT),
                Some(FAR_SOCKET_BUFFER),
                load,
                stop,
            );
            let sent = join(far);
            let received = join(app)?;
            Ok(Sample {
                sent: sent?,
                received,
                app_sends: dir == Dir::AppToWire,
            })
        }
    }
}

// ---- nemflow ----

const NEMFLOW_HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const NEMFLOW_PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// Opens a UDP flow through the flow manager and builds its stack (default channels).
fn open_flow(
    host: &NemflowHost,
    local_port: u16,
    remote: Option<SocketAddrV4>,
) -> Result<(UdpFlow, Client), String> {
    let mut client = Client::connect(&host.socket).map_err(|e| e.to_string())?;
    let f = client
        .open(&OpenFlow::udp(local_port, remote))
        .map_err(|e| e.to_string())?;
    let channels = FlowChannels::from_flow(f).map_err(|e| e.to_string())?;
    let flow = UdpFlow::new(channels, FlowConfig::default()).map_err(|e| e.to_string())?;
    Ok((flow, client))
}

/// Sends `len`-byte datagrams zero-copy (sequence number written in place) for `duration`;
/// blocks on the channel's back-pressure.
fn nemflow_send(flow: &mut UdpFlow, len: usize, duration: Duration) -> Result<Sent, String> {
    let stamp = len.min(8);
    let cpu0 = thread_cpu();
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        if sent.is_multiple_of(64) && start.elapsed() >= duration {
            break;
        }
        let mut b = flow.tx_buf(len).map_err(|e| e.to_string())?;
        b.write_at(0, &sent.to_be_bytes()[..stamp])
            .map_err(|e| e.to_string())?;
        b.send().map_err(|e| e.to_string())?;
        sent += 1;
    }
    let elapsed = start.elapsed();
    let _ = flow.flush();
    Ok(Sent {
        datagrams: sent,
        elapsed,
        cpu: thread_cpu() - cpu0,
    })
}

/// Receives zero-copy (reads each payload's sequence number) until `done` is set and nothing
/// arrived for [`QUIET`].
fn nemflow_receive(flow: &mut UdpFlow, done: &AtomicBool) -> Result<Received, String> {
    flow.set_read_timeout(Some(Duration::from_millis(20)));
    let cpu0 = thread_cpu();
    let mut r = Received::default();
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut seq_sum = 0u64;
    loop {
        match flow.recv_datagram() {
            Ok(d) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                let p = d.payload();
                let mut s = [0u8; 8];
                let k = p.len().min(8);
                s[..k].copy_from_slice(&p[..k]);
                seq_sum = seq_sum.wrapping_add(u64::from_be_bytes(s));
                r.bytes += p.len() as u64;
                r.datagrams += 1;
            }
            Err(StackError::TimedOut | StackError::WouldBlock) => {
                let quiet = first.is_none_or(|_| last.elapsed() > QUIET);
                if done.load(Ordering::Relaxed) && quiet {
                    break;
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    std::hint::black_box(seq_sum);
    r.span = first.map(|f| last - f).unwrap_or_default();
    r.cpu = thread_cpu() - cpu0;
    Ok(r)
}

/// Drop counters along the nemflow path, for `--diag`.
#[derive(Debug, Clone, Copy, Default)]
struct Drops {
    /// Driver: frames for the flow that found no empty RX buffer.
    flow_no_buffer: u64,
    /// Driver: frames the port missed (DPDK imissed) or found no mbuf for.
    port_missed: u64,
    /// Kernel, remote side of the tap: frames it could not hand to the tap (TX dropped).
    remote_tx_dropped: u64,
    /// Kernel, remote side of the tap: frames it handed to the tap.
    remote_tx_packets: u64,
}

fn drops(host: &NemflowHost, client: &mut Client, port: u16) -> Drops {
    let mut d = Drops::default();
    if let Ok(s) = client.stats() {
        d.port_missed = s.port.rx_missed + s.port.rx_nombuf;
        for (info, st) in &s.flows {
            if info.local.port() == port {
                d.flow_no_buffer += st.rx_dropped_no_buffer;
            }
        }
    }
    let stat = |name: &str| -> u64 {
        std::process::Command::new("ip")
            .args(["netns", "exec", &host.driver.netns, "cat"])
            .arg(format!(
                "/sys/class/net/{}/statistics/{name}",
                host.driver.iface
            ))
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(0)
    };
    d.remote_tx_dropped = stat("tx_dropped");
    d.remote_tx_packets = stat("tx_packets");
    d
}

/// One measurement on nemflow: the app here, the far side in the driver's remote-host namespace.
fn run_nemflow(host: &NemflowHost, dir: Dir, load: Load, diag: bool) -> Result<Sample, String> {
    let netns = host.driver.netns.clone();
    match dir {
        Dir::AppToWire => {
            let stop = Arc::new(AtomicBool::new(false));
            let sink = linux_sink(
                &netns,
                FAR_SINK_PORT,
                Some(FAR_SOCKET_BUFFER),
                load.batch,
                stop.clone(),
            )?;
            let (mut flow, _client) = open_flow(
                host,
                APP_PORT,
                Some(SocketAddrV4::new(NEMFLOW_PEER_IP, FAR_SINK_PORT)),
            )?;
            let sent = nemflow_send(&mut flow, load.len, load.duration);
            stop.store(true, Ordering::Relaxed);
            let received = join(sink)?;
            Ok(Sample {
                sent: sent?,
                received,
                app_sends: dir == Dir::AppToWire,
            })
        }
        Dir::WireToApp => {
            let (mut flow, mut client) = open_flow(host, APP_PORT, None)?;
            let before = drops(host, &mut client, APP_PORT);
            let done = Arc::new(AtomicBool::new(false));
            let far = linux_source(
                &netns,
                FAR_SOURCE_PORT,
                SocketAddrV4::new(NEMFLOW_HOST_IP, APP_PORT),
                Some(FAR_SOCKET_BUFFER),
                load,
                done.clone(),
            );
            let received = nemflow_receive(&mut flow, &done);
            let sent = join(far)?;
            if diag {
                let after = drops(host, &mut client, APP_PORT);
                eprintln!(
                    "  diag: remote kernel handed {} frames to the tap, dropped {}; driver: port missed {}, flow had no buffer for {}",
                    after.remote_tx_packets - before.remote_tx_packets,
                    after.remote_tx_dropped - before.remote_tx_dropped,
                    after.port_missed - before.port_missed,
                    after.flow_no_buffer - before.flow_no_buffer
                );
            }
            Ok(Sample {
                sent,
                received: received?,
                app_sends: false,
            })
        }
    }
}

// ---- report ----

fn median(mut v: Vec<Sample>, key: impl Fn(&Sample) -> f64) -> Sample {
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stack {
    Nemflow,
    LinuxTap,
    LinuxVeth,
}

impl Stack {
    fn label(self) -> &'static str {
        match self {
            Stack::Nemflow => "nemflow",
            Stack::LinuxTap => "Linux, tap link",
            Stack::LinuxVeth => "Linux, veth",
        }
    }
}

/// The setting: the nemflow host and the Linux links.
struct Bench {
    host: NemflowHost,
    tap: LinuxLink,
    veth: Option<LinuxLink>,
    diag: bool,
}

impl Bench {
    fn stacks(&self) -> Vec<Stack> {
        let mut v = vec![Stack::Nemflow, Stack::LinuxTap];
        if self.veth.is_some() {
            v.push(Stack::LinuxVeth);
        }
        v
    }

    fn one(&self, s: Stack, dir: Dir, load: Load) -> Result<Sample, String> {
        match (s, &self.veth) {
            (Stack::Nemflow, _) => run_nemflow(&self.host, dir, load, self.diag),
            (Stack::LinuxTap, _) => run_linux(&self.tap, dir, load),
            (Stack::LinuxVeth, Some(v)) => run_linux(v, dir, load),
            (Stack::LinuxVeth, None) => Err("no veth link".into()),
        }
    }

    /// The highest rate the far side can send to the app at with at most `max_loss` lost:
    /// doubling from 16 k/s until loss, then halving the interval, down to 10 %.
    fn lossless_rate(&self, s: Stack, mut load: Load, max_loss: f64) -> Result<Sample, String> {
        let mut good: Option<Sample> = None;
        let mut bad: Option<f64> = None;
        let mut rate = 16_000.0;
        for _ in 0..12 {
            load.rate_per_s = Some(rate);
            let m = self.one(s, Dir::WireToApp, load)?;
            // A far side that could not send at the rate asked is at its own limit: stop there.
            let reached = m.offered_per_s() >= 0.95 * rate;
            if m.loss() <= max_loss && reached {
                good = Some(m);
            } else {
                bad = Some(rate);
            }
            let lo = good.map_or(0.0, |g| g.offered_per_s());
            rate = match bad {
                None => rate * 2.0,
                Some(hi) if hi <= lo * 1.1 || (m.loss() <= max_loss && !reached) => break,
                Some(hi) => (lo + hi) / 2.0,
            };
            if rate < 1_000.0 {
                break;
            }
        }
        Ok(good.unwrap_or_default())
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udp: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Medians per (size, direction or measure, stack).
type Results = Vec<((usize, &'static str, Stack), Vec<Sample>)>;

fn push(results: &mut Results, key: (usize, &'static str, Stack), m: Sample) {
    match results.iter_mut().find(|(k, _)| *k == key) {
        Some((_, v)) => v.push(m),
        None => results.push((key, vec![m])),
    }
}

fn log(run: usize, len: usize, what: &str, s: Stack, m: &Sample) {
    eprintln!(
        "run {run}: {len:>5} B {what:<22} {:<16} sent {:>9} ({:>8.0}/s)  received {:>9} ({:>8.0}/s, {:>7.1} Mbit/s, loss {:>5.1} %)  app CPU {:>6.0} ns/datagram",
        s.label(),
        m.sent.datagrams,
        m.offered_per_s(),
        m.received.datagrams,
        m.delivered_per_s(),
        m.delivered_mbit_s(),
        m.loss() * 100.0,
        m.app_cpu_ns()
    );
}

const FLAT_OUT: &str = "as fast as it can";
const LOSSLESS: &str = "lossless";

fn run() -> Result<(), String> {
    let a = Args::parse();
    nemflow_testkit::require_root();
    let idle: &'static str = match a.driver_idle.as_str() {
        "adaptive" => "adaptive",
        "busy" => "busy",
        other => return Err(format!("--driver-idle: adaptive or busy, not {other}")),
    };
    let host = NemflowHost::start(
        &DriverOptions {
            rate_bps: a.rate_bps,
            idle,
            ..DriverOptions::default()
        },
        "",
    )?;
    if let Some(n) = a.driver_nice {
        let pid = host.driver.pid().to_string();
        let ok = std::process::Command::new("renice")
            .args(["-n", &n.to_string(), "-p", &pid])
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("renice: {e}"))?;
        if !ok.success() {
            return Err(format!("renice -n {n} -p {pid} failed"));
        }
    }
    let bench = Bench {
        host,
        tap: LinuxLink::tap()?,
        veth: if a.no_veth {
            None
        } else {
            Some(LinuxLink::veth()?)
        },
        diag: a.diag,
    };
    let stacks = bench.stacks();
    let load = |len: usize, seconds: f64| Load {
        len,
        batch: a.batch,
        duration: Duration::from_secs_f64(seconds),
        rate_per_s: None,
    };
    // Warm-up: ARP on every link, code paths, page faults.
    for &s in &stacks {
        for dir in [Dir::AppToWire, Dir::WireToApp] {
            bench.one(s, dir, load(64, 0.2))?;
        }
    }
    let mut results: Results = Vec::new();
    for run in 0..a.runs {
        for &len in &a.sizes {
            for &s in &stacks {
                let m = bench.one(s, Dir::AppToWire, load(len, a.seconds))?;
                log(run, len, "app → wire", s, &m);
                push(&mut results, (len, Dir::AppToWire.label(), s), m);
            }
            for &s in &stacks {
                let m = bench.one(s, Dir::WireToApp, load(len, a.seconds))?;
                log(run, len, "wire → app, flat out", s, &m);
                push(&mut results, (len, FLAT_OUT, s), m);
            }
            if a.search_seconds > 0.0 {
                for &s in &stacks {
                    let m = bench.lossless_rate(s, load(len, a.search_seconds), a.max_loss)?;
                    log(run, len, "wire → app, lossless", s, &m);
                    push(&mut results, (len, LOSSLESS, s), m);
                }
            }
        }
    }
    let fwd_errors = bench.tap.fwd_errors.load(Ordering::Relaxed);
    drop(bench);
    print_tables(&a, &results, &stacks);
    if fwd_errors > 0 {
        println!("\n(tap forwarder: {fwd_errors} frames could not be written)");
    }
    Ok(())
}

fn print_tables(a: &Args, results: &Results, stacks: &[Stack]) {
    let get = |len: usize, what: &str, s: Stack| -> Sample {
        results
            .iter()
            .find(|(k, _)| k.0 == len && k.1 == what && k.2 == s)
            .map(|(_, v)| median(v.clone(), Sample::delivered_per_s))
            .unwrap_or_default()
    };
    println!(
        "One UDP flow, medians of {} runs of {} s. Each cell: datagrams/s and payload Mbit/s \
         counted by the receiver; in brackets what the sender got rid of and the share lost.",
        a.runs, a.seconds
    );
    let mut tables = vec![
        (
            Dir::AppToWire.label(),
            "app → wire: the app sends as fast as it can",
            true,
        ),
        (
            FLAT_OUT,
            "wire → app: the far side sends as fast as it can",
            true,
        ),
    ];
    if a.search_seconds > 0.0 {
        tables.push((
            LOSSLESS,
            "wire → app: the highest far-side rate the app receives with ≤ 1 % loss",
            false,
        ));
    }
    for (what, title, with_sent) in tables {
        println!("\n{title}\n");
        let mut h = String::from("| payload |");
        let mut r = String::from("|--:|");
        for s in stacks {
            h.push_str(&format!(" {} |", s.label()));
            r.push_str("--:|");
        }
        println!("{h} nemflow / Linux tap |\n{r}--:|");
        for &len in &a.sizes {
            let mut row = format!("| {len} B |");
            for &s in stacks {
                let m = get(len, what, s);
                row.push_str(&format!(
                    " {:.0} k/s, {:.0} Mbit/s",
                    m.delivered_per_s() / 1e3,
                    m.delivered_mbit_s()
                ));
                if with_sent {
                    row.push_str(&format!(
                        " ({:.0} k/s, {:.0} %)",
                        m.offered_per_s() / 1e3,
                        m.loss() * 100.0
                    ));
                }
                row.push_str(" |");
            }
            let n = get(len, what, Stack::Nemflow).delivered_per_s();
            let l = get(len, what, Stack::LinuxTap).delivered_per_s();
            println!("{row} {:.2} |", n / l.max(1e-9));
        }
    }
    println!(
        "\nCPU time of the app's thread per datagram (its stack and system calls, and its \
         wake-ups when it waits), in the flat-out runs, ns\n"
    );
    let mut h = String::from("| payload | direction |");
    let mut r = String::from("|--:|---|");
    for s in stacks {
        h.push_str(&format!(" {} |", s.label()));
        r.push_str("--:|");
    }
    println!("{h}\n{r}");
    for &len in &a.sizes {
        for (what, label) in [
            (Dir::AppToWire.label(), "app → wire"),
            (FLAT_OUT, "wire → app"),
        ] {
            let mut row = format!("| {len} B | {label} |");
            for &s in stacks {
                let cpu = results
                    .iter()
                    .find(|(k, _)| k.0 == len && k.1 == what && k.2 == s)
                    .map(|(_, v)| median(v.clone(), Sample::app_cpu_ns).app_cpu_ns())
                    .unwrap_or_default();
                row.push_str(&format!(" {cpu:.0} |"));
            }
            println!("{row}");
        }
    }
}
