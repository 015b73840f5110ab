//! Typed configuration for the nemflow driver and flow manager, read from YAML.
//!
//! One file describes a host: the DPDK EAL, the port, the host's addresses and routes, the link
//! rate the driver paces to, and the daemons' sockets and policy. Every section has defaults, so
//! a file names only what differs (`config/tap.yaml` is the fresh-machine default). Unknown
//! fields are errors; values are checked while parsing, so an error names file, line and field.

#![forbid(unsafe_code)]

mod types;

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use types::{Ipv4Cidr, MacAddr, VdevSpec};

/// The default configuration file, relative to the repository root.
pub const DEFAULT_PATH: &str = "config/tap.yaml";

/// What went wrong loading a configuration; `Display` is one line meant for a person.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML is malformed, a field is unknown, or a value is not allowed.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 when unknown).
        line: u64,
        /// 1-based column (0 when unknown).
        column: u64,
        /// What is wrong and, where known, what is allowed.
        message: String,
    },
    /// Values that are each valid but do not fit together.
    #[error("{}{}: `{field}`: {problem}", path.display(), at_line(*line))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the field in the file (0 when the field is not in it).
        line: u64,
        /// Dotted path of the field.
        field: &'static str,
        /// What is wrong and what is allowed.
        problem: String,
    },
}

/// The whole configuration of one host.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// DPDK environment abstraction layer.
    pub eal: Eal,
    /// The NIC (or virtual device) the driver owns.
    pub port: Port,
    /// This host's addresses and routes.
    pub host: Host,
    /// The link the driver paces to.
    pub link: Link,
    /// The driver process.
    pub driver: Driver,
    /// The flow manager daemon.
    pub flowmgr: FlowMgr,
}

/// DPDK EAL settings; they become the driver's EAL argument list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Eal {
    /// `--file-prefix`: names the runtime directory `/var/run/dpdk/<prefix>`; unique per driver.
    pub file_prefix: String,
    /// `-l`: the lcores the driver may use (the first is the data-path core).
    pub lcores: String,
    /// `--no-huge`: run without hugepages (the default; works on any machine).
    pub no_huge: bool,
    /// `-m`: memory in MiB DPDK may use (needed with `no_huge`).
    pub memory_mb: u32,
    /// Further EAL arguments, passed as they are (e.g. `--log-level=eal,8`).
    pub extra_args: Vec<String>,
}

impl Default for Eal {
    fn default() -> Self {
        Self {
            file_prefix: "nemflow".into(),
            lcores: "0".into(),
            no_huge: true,
            memory_mb: 1024,
            extra_args: Vec::new(),
        }
    }
}

/// The port: exactly one of `vdev` or `pci`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Port {
    /// A DPDK virtual device, e.g. `net_tap0,iface=nftap0`.
    pub vdev: Option<VdevSpec>,
    /// A PCI address, e.g. `0000:01:00.0` (the device must be bound to vfio-pci).
    pub pci: Option<String>,
    /// Receive descriptors.
    pub rx_desc: u16,
    /// Transmit descriptors.
    pub tx_desc: u16,
    /// Mbufs in the driver's pool (a power of two minus one is most efficient).
    pub mbufs: u32,
    /// Largest frame without FCS the port sends or receives, in bytes.
    pub max_frame_bytes: u16,
    /// For a net_tap port: hand the kernel side of the tap to a network namespace that plays
    /// the remote host (created at start, deleted at exit).
    pub tap_peer: Option<TapPeer>,
}

/// The remote host on the kernel side of a net_tap port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TapPeer {
    /// Network namespace to create and move the tap interface into.
    pub netns: String,
    /// Address and prefix the interface gets there.
    pub ip: Ipv4Cidr,
}

impl Default for Port {
    fn default() -> Self {
        Self {
            vdev: None,
            pci: None,
            rx_desc: 1024,
            tx_desc: 1024,
            mbufs: 8191,
            max_frame_bytes: 1514,
            tap_peer: None,
        }
    }
}

/// This host's identity on the link.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Host {
    /// Address and prefix, e.g. `10.77.0.1/24`.
    pub ip: Ipv4Cidr,
    /// MAC address; default: the port's own.
    pub mac: Option<MacAddr>,
    /// Default gateway, inside the connected subnet.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Static routes.
    pub routes: Vec<Route>,
}

impl Default for Host {
    fn default() -> Self {
        Self {
            ip: Ipv4Cidr::new(std::net::Ipv4Addr::new(10, 77, 0, 1), 24),
            mac: None,
            gateway: None,
            routes: Vec::new(),
        }
    }
}

/// A static route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination network, e.g. `10.1.0.0/16`.
    pub dest: Ipv4Cidr,
    /// Next hop, inside the connected subnet.
    pub via: std::net::Ipv4Addr,
}

/// The link as the driver's pacing sees it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Link {
    /// Rate in bit/s the driver releases frames at (the wire clock).
    pub rate_bps: u64,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            rate_bps: 100_000_000,
        }
    }
}

/// How the driver's poll loop waits when there is no work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleMode {
    /// Spin on a dedicated core: lowest latency, one core at 100%.
    Busy,
    /// Back off to short sleeps when idle: shares a small machine politely.
    Adaptive,
}

/// The driver process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Driver {
    /// Control socket for the flow manager (root only, mode 0600).
    pub control_socket: PathBuf,
    /// Idle behaviour of the poll loop.
    pub idle: IdleMode,
    /// In adaptive mode, the longest sleep when idle, in microseconds (bounds wake-up latency).
    pub max_sleep_us: u32,
    /// In adaptive mode, how long the loop spins without work before it starts sleeping, in
    /// microseconds (a burst's next frame usually comes sooner).
    pub spin_us: u32,
    /// How far ahead of the wire clock frames may be handed to the port, in microseconds: what
    /// the port holds keeps the link busy while the loop sleeps or wakes late. Never lets a flow
    /// send before its allocation starts; shifts frames at most this much earlier.
    pub lookahead_us: u32,
    /// Run the data-path thread under SCHED_FIFO at this priority (1..=99): it then wakes on
    /// time however busy the machine is, while its adaptive sleeps leave the core to others (and
    /// when busy it sleeps 100 µs per 1 ms, so the kernel never throttles it). Unset: the normal
    /// scheduler.
    pub realtime_priority: Option<u8>,
    /// Frames per receive/transmit burst.
    pub burst: u16,
    /// Entries kept in the drop log.
    pub drop_log_entries: u32,
}

impl Default for Driver {
    fn default() -> Self {
        Self {
            control_socket: PathBuf::from("/run/nemflow/driver.sock"),
            idle: IdleMode::Adaptive,
            max_sleep_us: 100,
            spin_us: 20,
            lookahead_us: 2000,
            realtime_priority: None,
            burst: 32,
            drop_log_entries: 4096,
        }
    }
}

/// The flow manager daemon.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowMgr {
    /// Socket applications connect to.
    pub socket: PathBuf,
    /// Permission bits of the application socket (e.g. `0o666` lets every uid ask; policy decides).
    pub socket_mode: u32,
    /// Fraction of the link kept out of admission control for the flow manager's own traffic.
    pub reserve: f64,
    /// Ephemeral port range `[first, last]` for port 0 requests.
    pub ephemeral_ports: [u16; 2],
    /// Uids allowed to connect; empty = everyone.
    pub allowed_uids: Vec<u32>,
    /// Uids (besides root) allowed ports below 1024.
    pub privileged_port_uids: Vec<u32>,
    /// Most flows one uid may hold.
    pub max_flows_per_uid: u32,
    /// Most channel memory one uid may hold, in bytes.
    pub max_channel_bytes_per_uid: u64,
    /// Most applications connected at once (further connections are closed at once, counted).
    pub max_clients: u32,
    /// A client that sends part of a request and then stalls this long is disconnected, ms.
    pub client_timeout_ms: u64,
    /// How long one call to the driver may take before the driver counts as unreachable, ms.
    pub driver_timeout_ms: u64,
    /// Default data area of each channel of a flow (apps may ask for other sizes), bytes.
    pub channel_bytes: u64,
    /// Default FIFO slots of each channel of a flow (a power of two).
    pub channel_slots: u32,
    /// Largest data area one channel may have, bytes.
    pub max_channel_bytes: u64,
    /// How long a resolved ARP entry counts as fresh before it is refreshed, ms.
    pub arp_timeout_ms: u64,
    /// Wait between ARP requests for an unresolved address, ms.
    pub arp_retry_ms: u64,
    /// ARP requests sent for an address before it counts as unreachable.
    pub arp_retries: u32,
    /// How long a closed TCP connection's 5-tuple is held before it may be reused, ms.
    pub time_wait_ms: u64,
    /// ICMP errors and TCP resets the host sends per second at most (token bucket rate).
    pub icmp_errors_per_sec: u32,
    /// Burst of ICMP errors and resets allowed above that rate.
    pub icmp_errors_burst: u32,
    /// ICMP echo replies per second at most.
    pub echo_replies_per_sec: u32,
    /// Where the flow manager serves Prometheus metrics (`GET /metrics`), e.g.
    /// `127.0.0.1:9464`; a loopback address only (the endpoint has no authentication). Absent:
    /// no endpoint.
    pub metrics: Option<std::net::SocketAddr>,
}

impl Default for FlowMgr {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/nemflow/flowmgr.sock"),
            socket_mode: 0o666,
            reserve: 0.02,
            ephemeral_ports: [49152, 65535],
            allowed_uids: Vec::new(),
            privileged_port_uids: Vec::new(),
            max_flows_per_uid: 1024,
            max_channel_bytes_per_uid: 1 << 30,
            max_clients: 1024,
            client_timeout_ms: 5_000,
            driver_timeout_ms: 2_000,
            channel_bytes: 256 << 10,
            channel_slots: 128,
            max_channel_bytes: 64 << 20,
            arp_timeout_ms: 60_000,
            arp_retry_ms: 250,
            arp_retries: 4,
            time_wait_ms: 60_000,
            icmp_errors_per_sec: 100,
            icmp_errors_burst: 50,
            echo_replies_per_sec: 1_000,
            metrics: None,
        }
    }
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates YAML text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config =
            serde_saphyr::from_str(text).map_err(|e| parse_error(&e, text, path))?;
        config.validate(text, path)?;
        Ok(config)
    }

    /// Settings that are valid but likely to hurt, each as a sentence for the log (the driver
    /// logs them as warnings at start). Today: a pool too small to fill both descriptor rings
    /// and still take two bursts, which on a NIC that keeps sent mbufs in its transmit ring
    /// until it needs the slots can leave receive without buffers (`rx_nombuf`).
    pub fn advice(&self) -> Vec<String> {
        let mut advice = Vec::new();
        let needed = u32::from(self.port.rx_desc)
            + u32::from(self.port.tx_desc)
            + 2 * u32::from(self.driver.burst);
        if self.port.mbufs < needed {
            advice.push(format!(
                "port.mbufs = {} is fewer than rx_desc + tx_desc + 2 × driver.burst = {needed}: \
                 with a NIC that holds sent mbufs in its transmit ring, receive can run out of \
                 buffers (counted as rx_nombuf); use at least {needed}",
                self.port.mbufs
            ));
        }
        advice
    }

    /// Cross-field checks that parsing alone cannot make.
    fn validate(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            line: line_of(text, field),
            field,
            problem,
        };
        match (&self.port.vdev, &self.port.pci) {
            (None, None) => {
                return Err(invalid(
                    "port",
                    "names no device: set `vdev` (e.g. `net_tap0,iface=nftap0`) or `pci`".into(),
                ))
            }
            (Some(_), Some(_)) => {
                return Err(invalid("port", "set only one of `vdev` and `pci`".into()))
            }
            _ => {}
        }
        if self.eal.file_prefix.is_empty()
            || !self
                .eal
                .file_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                "eal.file_prefix",
                format!(
                    "`{}`: use letters, digits, `-` and `_`",
                    self.eal.file_prefix
                ),
            ));
        }
        if self.eal.no_huge && self.eal.memory_mb == 0 {
            return Err(invalid("eal.memory_mb", "must be > 0 with no_huge".into()));
        }
        if self.port.rx_desc == 0 || self.port.tx_desc == 0 {
            return Err(invalid(
                "port.rx_desc",
                "descriptor counts must be > 0".into(),
            ));
        }
        if self.port.mbufs < 2 * u32::from(self.port.rx_desc.max(self.port.tx_desc)) {
            return Err(invalid(
                "port.mbufs",
                format!(
                    "{} is too few for {} rx + {} tx descriptors: use at least twice the larger",
                    self.port.mbufs, self.port.rx_desc, self.port.tx_desc
                ),
            ));
        }
        if !(64..=9216).contains(&self.port.max_frame_bytes) {
            return Err(invalid("port.max_frame_bytes", "allowed: 64..=9216".into()));
        }
        if !(1_000..=400_000_000_000).contains(&self.link.rate_bps) {
            return Err(invalid(
                "link.rate_bps",
                format!("{} is outside 1 kbit/s ..= 400 Gbit/s", self.link.rate_bps),
            ));
        }
        if self.host.ip.prefix_len() == 0 || self.host.ip.prefix_len() > 30 {
            return Err(invalid("host.ip", "prefix length must be 1..=30".into()));
        }
        if let Some(gw) = self.host.gateway {
            if !self.host.ip.contains(gw) || gw == self.host.ip.addr() {
                return Err(invalid(
                    "host.gateway",
                    format!("{gw} is not another address in {}", self.host.ip),
                ));
            }
        }
        for route in &self.host.routes {
            if !self.host.ip.contains(route.via) {
                return Err(invalid(
                    "host.routes",
                    format!("next hop {} is outside {}", route.via, self.host.ip),
                ));
            }
        }
        if let Some(peer) = &self.port.tap_peer {
            if self.port.vdev.as_ref().map(VdevSpec::driver) != Some("net_tap") {
                return Err(invalid(
                    "port.tap_peer",
                    "only a net_tap port has a kernel side".into(),
                ));
            }
            if peer.netns.is_empty() || peer.netns.len() > 64 || peer.netns.contains('/') {
                return Err(invalid(
                    "port.tap_peer.netns",
                    "1..=64 characters, no `/`".into(),
                ));
            }
            if !self.host.ip.contains(peer.ip.addr()) || peer.ip.addr() == self.host.ip.addr() {
                return Err(invalid(
                    "port.tap_peer.ip",
                    format!(
                        "{} must be another address in {}",
                        peer.ip.addr(),
                        self.host.ip
                    ),
                ));
            }
        }
        if self.driver.lookahead_us > 1_000_000 {
            return Err(invalid(
                "driver.lookahead_us",
                "allowed: 0..=1000000".into(),
            ));
        }
        if let Some(p) = self.driver.realtime_priority {
            if !(1..=99).contains(&p) {
                return Err(invalid(
                    "driver.realtime_priority",
                    "allowed: 1..=99".into(),
                ));
            }
            if self.driver.idle == IdleMode::Busy {
                return Err(invalid(
                    "driver.realtime_priority",
                    "a busy-polling real-time thread would starve its core: use idle: adaptive"
                        .into(),
                ));
            }
        }
        if self.driver.burst == 0 || self.driver.burst > 512 {
            return Err(invalid("driver.burst", "allowed: 1..=512".into()));
        }
        if !(0.0..0.5).contains(&self.flowmgr.reserve) {
            return Err(invalid("flowmgr.reserve", "allowed: 0.0 ..< 0.5".into()));
        }
        let [first, last] = self.flowmgr.ephemeral_ports;
        if first == 0 || first > last {
            return Err(invalid(
                "flowmgr.ephemeral_ports",
                format!("[{first}, {last}] is not a range of ports 1..=65535"),
            ));
        }
        if self.flowmgr.socket_mode > 0o777 {
            return Err(invalid("flowmgr.socket_mode", "allowed: 0..=0o777".into()));
        }
        let fm = &self.flowmgr;
        if fm.max_flows_per_uid == 0 {
            return Err(invalid(
                "flowmgr.max_flows_per_uid",
                "must be at least 1 (to refuse a uid, leave it out of allowed_uids)".into(),
            ));
        }
        if fm.max_channel_bytes_per_uid < fm.max_channel_bytes.min(fm.channel_bytes) {
            return Err(invalid(
                "flowmgr.max_channel_bytes_per_uid",
                format!(
                    "{} is less than one flow's channels ({} bytes): no app could open a flow",
                    fm.max_channel_bytes_per_uid,
                    fm.max_channel_bytes.min(fm.channel_bytes)
                ),
            ));
        }
        if fm.max_clients == 0 {
            return Err(invalid("flowmgr.max_clients", "must be > 0".into()));
        }
        for (field, ms) in [
            ("flowmgr.client_timeout_ms", fm.client_timeout_ms),
            ("flowmgr.driver_timeout_ms", fm.driver_timeout_ms),
            ("flowmgr.arp_timeout_ms", fm.arp_timeout_ms),
            ("flowmgr.arp_retry_ms", fm.arp_retry_ms),
        ] {
            if !(1..=3_600_000).contains(&ms) {
                return Err(invalid(field, format!("{ms}: allowed 1..=3600000 ms")));
            }
        }
        if fm.time_wait_ms > 3_600_000 {
            return Err(invalid(
                "flowmgr.time_wait_ms",
                "allowed: 0..=3600000 ms".into(),
            ));
        }
        if !(1..=100).contains(&fm.arp_retries) {
            return Err(invalid("flowmgr.arp_retries", "allowed: 1..=100".into()));
        }
        if fm.max_channel_bytes == 0
            || !fm.max_channel_bytes.is_multiple_of(4096)
            || fm.max_channel_bytes > 1 << 30
        {
            return Err(invalid(
                "flowmgr.max_channel_bytes",
                "a non-zero multiple of 4096, at most 1 GiB".into(),
            ));
        }
        let frame = u64::from(self.port.max_frame_bytes);
        if !fm.channel_bytes.is_multiple_of(4096)
            || fm.channel_bytes < frame
            || fm.channel_bytes > fm.max_channel_bytes
        {
            return Err(invalid(
                "flowmgr.channel_bytes",
                format!(
                    "{}: a multiple of 4096, at least one frame ({frame} bytes), at most max_channel_bytes ({})",
                    fm.channel_bytes, fm.max_channel_bytes
                ),
            ));
        }
        if !fm.channel_slots.is_power_of_two() || !(2..=65536).contains(&fm.channel_slots) {
            return Err(invalid(
                "flowmgr.channel_slots",
                "a power of two in 2..=65536".into(),
            ));
        }
        if fm.icmp_errors_per_sec == 0 || fm.echo_replies_per_sec == 0 {
            return Err(invalid(
                "flowmgr.icmp_errors_per_sec",
                "rates must be > 0 (use a small rate to quieten the host)".into(),
            ));
        }
        if let Some(addr) = fm.metrics {
            if !addr.ip().is_loopback() {
                return Err(invalid(
                    "flowmgr.metrics",
                    format!(
                        "{addr}: the metrics endpoint has no authentication: use a loopback address (127.0.0.1:PORT or [::1]:PORT)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The EAL argument list (program name first) this configuration asks for.
    pub fn eal_args(&self, program: &str) -> Vec<String> {
        let mut args = vec![
            program.to_owned(),
            "--file-prefix".into(),
            self.eal.file_prefix.clone(),
            "-l".into(),
            self.eal.lcores.clone(),
        ];
        if self.eal.no_huge {
            args.push("--no-huge".into());
        }
        if self.eal.memory_mb > 0 {
            args.extend(["-m".into(), self.eal.memory_mb.to_string()]);
        }
        match (&self.port.vdev, &self.port.pci) {
            (Some(vdev), _) => {
                args.extend(["--no-pci".into(), "--vdev".into(), vdev.as_str().to_owned()])
            }
            (None, Some(pci)) => args.extend(["-a".into(), pci.clone()]),
            (None, None) => {}
        }
        args.extend(self.eal.extra_args.iter().cloned());
        args
    }

    /// The DPDK device name of the port (`net_tap0` for `net_tap0,iface=x`, or the PCI address).
    pub fn port_name(&self) -> &str {
        match (&self.port.vdev, &self.port.pci) {
            (Some(vdev), _) => vdev.name(),
            (None, Some(pci)) => pci,
            (None, None) => "",
        }
    }
}

/// Turns a serde-saphyr error into one line: file, line, column, message.
/// `:N` for a known line, nothing for line 0.
fn at_line(line: u64) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(":{line}")
    }
}

/// The line a dotted field (`port.mbufs`) is written on: the first line, after its section's,
/// whose key is the field's last component. 0 when the field is not in the text.
fn line_of(text: &str, field: &str) -> u64 {
    let mut parts = field.split('.');
    let section = parts.next().unwrap_or_default();
    let leaf = field.rsplit('.').next().unwrap_or_default();
    let key = |line: &str, name: &str| {
        let t = line.trim_start().trim_start_matches("- ");
        t.strip_prefix(name)
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
    };
    let start = text
        .lines()
        .position(|l| !l.starts_with(' ') && key(l, section))
        .unwrap_or(0);
    text.lines()
        .enumerate()
        .skip(start)
        .find(|(_, l)| key(l, leaf))
        .map_or(0, |(i, _)| i as u64 + 1)
}

fn parse_error(e: &serde_saphyr::Error, text: &str, path: &Path) -> ConfigError {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let full = e.without_snippet().to_string();
    let first = full.lines().next().unwrap_or_default();
    // serde-saphyr prefixes "error: line L column C: "; we print the location ourselves.
    let message = first
        .strip_prefix("error: ")
        .unwrap_or(first)
        .split_once(": ")
        .filter(|(head, _)| head.starts_with("line "))
        .map_or(first, |(_, rest)| rest);
    // Custom errors repeat the location at the end.
    let message = match message.rfind(" at line ") {
        Some(i) if message[i..].contains(", column ") => &message[..i],
        _ => message,
    };
    // Name the field: a message like "invalid u16" does not, the line it is on does.
    let source = usize::try_from(line)
        .ok()
        .and_then(|l| text.lines().nth(l.checked_sub(1)?))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !message.contains(*l));
    let message = match source {
        Some(l) => format!("{message} (in `{l}`)"),
        None => message.to_owned(),
    };
    ConfigError::Parse {
        path: path.to_owned(),
        line,
        column,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("t.yaml"))
    }

    #[test]
    fn shipped_tap_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tap.yaml");
        let config = Config::load(&path).expect("config/tap.yaml");
        assert_eq!(config.port_name(), "net_tap0");
        assert!(config.eal.no_huge);
        let args = config.eal_args("x");
        assert!(args.iter().any(|a| a.starts_with("net_tap0")));
    }

    #[test]
    fn unknown_field_names_line_and_field() {
        let err = parse("port:\n  vdev: net_null0\n  rxdesc: 5\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("t.yaml:3:3: unknown field `rxdesc`"),
            "{text}"
        );
        assert!(!text.contains('\n'), "one line: {text}");
    }

    #[test]
    fn bad_values_name_line() {
        let err = parse("port:\n  vdev: net_bogus0\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("t.yaml:2:9:"), "{err}");
        assert!(err.contains("net_tap"), "lists allowed drivers: {err}");
        assert!(!err.contains(" at line "), "location once: {err}");
        let err = parse("port:\n  vdev: net_null0\nhost:\n  ip: 10.0.0.300/24\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("t.yaml:4:7:"), "{err}");
        let err = parse("port:\n  vdev: net_null0\nhost:\n  mac: 02:00:zz:00:00:01\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("MAC"), "{err}");
        let err = parse("port:\n  vdev: net_null0\n  rx_desc: 70000\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("t.yaml:3:"), "{err}");
        let err = parse("driver:\n  idle: lazy\n").unwrap_err().to_string();
        assert!(err.contains("busy") && err.contains("adaptive"), "{err}");
    }

    #[test]
    fn cross_field_checks() {
        let err = parse("eal:\n  no_huge: true\n").unwrap_err().to_string();
        assert!(err.contains("`port`: names no device"), "{err}");
        let err =
            parse("port:\n  vdev: net_null0\nhost:\n  ip: 10.0.0.1/24\n  gateway: 10.0.1.1\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("host.gateway"), "{err}");
        let err = parse("port:\n  vdev: net_null0\nflowmgr:\n  ephemeral_ports: [5000, 10]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("flowmgr.ephemeral_ports"), "{err}");
        let err = parse("port:\n  vdev: net_null0\nflowmgr:\n  channel_slots: 100\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("flowmgr.channel_slots"), "{err}");
        let err = parse("port:\n  vdev: net_null0\nflowmgr:\n  channel_bytes: 1000\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("flowmgr.channel_bytes"), "{err}");
        let err = parse("port:\n  vdev: net_null0\nflowmgr:\n  arp_retries: 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("flowmgr.arp_retries"), "{err}");
    }

    #[test]
    fn metrics_endpoint_is_loopback_only() {
        let c = parse("port:\n  vdev: net_null0\nflowmgr:\n  metrics: 127.0.0.1:9464\n").unwrap();
        assert_eq!(c.flowmgr.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(parse("port:\n  vdev: net_null0\n")
            .unwrap()
            .flowmgr
            .metrics
            .is_none());
        let err = parse("port:\n  vdev: net_null0\nflowmgr:\n  metrics: 0.0.0.0:9464\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("flowmgr.metrics") && err.contains("loopback"),
            "{err}"
        );
        let err = parse("port:\n  vdev: net_null0\nflowmgr:\n  metrics: localhost\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("t.yaml:4:"), "{err}");
    }

    #[test]
    fn malformed_yaml_is_one_line() {
        let err = parse("port: [\n").unwrap_err().to_string();
        assert!(err.starts_with("t.yaml:1:"), "{err}");
        assert!(!err.contains('\n'));
    }
}
