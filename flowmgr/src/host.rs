//! The host's own protocols on the flow manager's last-resort flow: ARP (answer, learn, resolve,
//! announce, detect conflicts), ICMP echo, ICMP port/protocol unreachable for datagrams no flow
//! took, and RST for TCP segments no flow took.
//!
//! No I/O: [`Host::on_frame`] takes one received frame and the time, and appends the frames to
//! send. Error replies (ICMP unreachable, RST) share one token bucket, echo replies have their
//! own, and every frame that gets no reply is counted under the reason why. Following RFC 1122
//! (§3.2.2 and §4.2.2.13) and RFC 1812 §4.3.2.7, nothing is sent in reply to an ICMP error, an
//! RST, a frame to a broadcast or multicast address, a fragment other than the first, or a
//! datagram whose source is not a single host (unspecified, broadcast, multicast, loopback,
//! class E, our own address, our subnet's network or broadcast address).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Message, Icmpv4Packet,
    Icmpv4Repr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket, TcpSeqNumber, UdpPacket,
};

use crate::arp::{self, ArpCache, ArpNews, ArpReject, Lookup};

/// Most bytes of an ICMP error datagram (RFC 1812 §4.3.2.3: quote as much as fits in 576).
pub const ICMP_ERROR_MAX_BYTES: usize = 576;

macro_rules! counters {
    ($(#[$doc:meta])* $name:ident { $($(#[$m:meta])* $f:ident,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct $name { $($(#[$m])* pub $f: u64,)* }
        impl $name {
            /// Every counter with its name.
            pub fn list(&self) -> Vec<(String, u64)> {
                vec![$((stringify!($f).to_string(), self.$f),)*]
            }
        }
    };
}

counters! {
    /// What the last-resort handler saw and did, one counter per outcome.
    HostCounters {
        /// Frames received on the flow manager's flow.
        rx_frames,
        /// ARP requests for our address answered.
        arp_replies_sent,
        /// ARP requests sent (resolution, retries, refreshes).
        arp_requests_sent,
        /// Gratuitous ARP announcements sent.
        arp_announcements_sent,
        /// ARP packets that updated or created a cache entry.
        arp_learned,
        /// ARP packets ignored (not for us, nothing to learn).
        arp_ignored,
        /// ARP packets that were malformed or had a group sender MAC.
        arp_malformed,
        /// ARP packets claiming our address from another MAC.
        arp_conflicts,
        /// Echo replies sent.
        echo_replies,
        /// Echo requests not answered: over the echo rate.
        echo_rate_limited,
        /// ICMP port unreachable sent for UDP no flow took.
        udp_port_unreachable,
        /// ICMP protocol unreachable sent.
        proto_unreachable,
        /// RSTs sent for TCP no flow took.
        tcp_resets,
        /// SYNs to a port an app listens on (no accept call-back yet: answered with RST).
        syn_for_listener,
        /// Error replies not sent: over the error rate.
        errors_rate_limited,
        /// ICMP errors received (never answered).
        icmp_errors_received,
        /// Other ICMP received and ignored (echo replies, timestamps ...).
        icmp_ignored,
        /// No reply: the frame was an RST.
        suppressed_rst,
        /// No reply: the frame went to a broadcast or multicast address.
        suppressed_broadcast,
        /// No reply: a fragment other than the first (or a fragmented echo request).
        suppressed_fragment,
        /// No reply: the source is not a single host.
        suppressed_invalid_source,
        /// Frames for another host or another MAC.
        not_for_us,
        /// Frames that failed a length or checksum check.
        malformed,
        /// Frames of other ethertypes.
        other_ethertype,
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved.
#[derive(Debug, Clone)]
pub struct Bucket {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    /// A full bucket.
    pub fn new(per_sec: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_sec: f64::from(per_sec),
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.per_sec).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The host's identity and limits.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Our address.
    pub ip: Ipv4Addr,
    /// Our prefix length.
    pub prefix_len: u8,
    /// Our MAC.
    pub mac: [u8; 6],
    /// ICMP errors and RSTs per second.
    pub errors_per_sec: u32,
    /// Their burst.
    pub errors_burst: u32,
    /// Echo replies per second (burst: a tenth of a second's worth, at least 1).
    pub echo_per_sec: u32,
    /// ARP freshness.
    pub arp_timeout: Duration,
    /// ARP retry interval.
    pub arp_retry: Duration,
    /// ARP requests per resolution.
    pub arp_retries: u32,
}

/// The last-resort handler's state.
#[derive(Debug)]
pub struct Host {
    cfg: HostConfig,
    network: Ipv4Addr,
    broadcast: Ipv4Addr,
    arp: ArpCache,
    errors: Bucket,
    echo: Bucket,
    counters: HostCounters,
    ident: u16,
    last_conflict_log: Option<Instant>,
}

/// What kind of frame to emit in reply to an IPv4 datagram.
enum Reply<'a> {
    Echo {
        ident: u16,
        seq: u16,
        data: &'a [u8],
    },
    Unreachable {
        code: u8,
        quote: &'a [u8],
    },
    Reset {
        seq: TcpSeqNumber,
        ack: Option<TcpSeqNumber>,
        src_port: u16,
        dst_port: u16,
    },
}

impl Host {
    /// A host with an empty ARP cache.
    pub fn new(cfg: HostConfig) -> Self {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(cfg.prefix_len.min(32)))
            .unwrap_or(0);
        let ip = u32::from(cfg.ip);
        Self {
            network: Ipv4Addr::from(ip & mask),
            broadcast: Ipv4Addr::from(ip | !mask),
            arp: ArpCache::new(cfg.arp_timeout, cfg.arp_retry, cfg.arp_retries),
            errors: Bucket::new(cfg.errors_per_sec, cfg.errors_burst),
            echo: Bucket::new(cfg.echo_per_sec, (cfg.echo_per_sec / 10).max(1)),
            counters: HostCounters::default(),
            ident: 0,
            last_conflict_log: None,
            cfg,
        }
    }

    /// The counters.
    pub fn counters(&self) -> &HostCounters {
        &self.counters
    }

    /// The ARP cache.
    pub fn arp(&self) -> &ArpCache {
        &self.arp
    }

    /// Our MAC.
    pub fn mac(&self) -> [u8; 6] {
        self.cfg.mac
    }

    /// Appends a gratuitous ARP announcement of our address.
    pub fn announce(&mut self, out: &mut Vec<Vec<u8>>) {
        out.push(arp::announcement(self.cfg.mac, self.cfg.ip));
        self.counters.arp_announcements_sent += 1;
    }

    /// Looks `ip` up in the ARP cache, appending a request when one is due.
    pub fn resolve(&mut self, ip: Ipv4Addr, now: Instant, out: &mut Vec<Vec<u8>>) -> Lookup {
        let r = self.arp.lookup(ip, now);
        if matches!(r, Lookup::Started | Lookup::Hit { refresh: true, .. }) {
            out.push(arp::request(self.cfg.mac, self.cfg.ip, ip));
            self.counters.arp_requests_sent += 1;
        }
        r
    }

    /// Advances ARP timers: retries go out, failures come back as news.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) -> Vec<ArpNews> {
        let (send, news) = self.arp.poll(now);
        for ip in send {
            out.push(arp::request(self.cfg.mac, self.cfg.ip, ip));
            self.counters.arp_requests_sent += 1;
        }
        news
    }

    /// When [`poll`](Self::poll) has work next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.arp.next_deadline()
    }

    /// Handles one frame that no flow took. `listening(port)` says whether an app listens on a
    /// TCP port. Replies are appended to `out`; ARP news is returned.
    pub fn on_frame(
        &mut self,
        now: Instant,
        frame: &[u8],
        listening: impl Fn(u16) -> bool,
        out: &mut Vec<Vec<u8>>,
    ) -> Option<ArpNews> {
        self.counters.rx_frames += 1;
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.counters.malformed += 1;
            return None;
        };
        match eth.ethertype() {
            EthernetProtocol::Arp => self.on_arp(now, frame, out),
            EthernetProtocol::Ipv4 => {
                self.on_ipv4(now, &eth, listening, out);
                None
            }
            _ => {
                self.counters.other_ethertype += 1;
                None
            }
        }
    }

    fn on_arp(&mut self, now: Instant, frame: &[u8], out: &mut Vec<Vec<u8>>) -> Option<ArpNews> {
        let a = match arp::parse(frame) {
            Ok(a) => a,
            Err(ArpReject::Malformed | ArpReject::Operation | ArpReject::GroupSender) => {
                self.counters.arp_malformed += 1;
                return None;
            }
        };
        let ours = self.cfg.ip;
        if a.spa == ours && a.sha != self.cfg.mac {
            self.counters.arp_conflicts += 1;
            let quiet = self
                .last_conflict_log
                .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(10));
            if !quiet {
                self.last_conflict_log = Some(now);
                tracing::warn!(
                    ip = %ours,
                    claimed_by = %fmt_mac(a.sha),
                    conflicts = self.counters.arp_conflicts,
                    "another station claims this host's address"
                );
            }
            return None;
        }
        let for_us = a.request && a.tpa == ours;
        let mut news = None;
        if a.spa.is_unspecified() {
            // An RFC 5227 probe: nothing to learn; answering it defends our address.
        } else if self.plausible_neighbour(a.spa) {
            news = self.arp.learn(a.spa, a.sha, for_us, now);
            if news.is_some() {
                self.counters.arp_learned += 1;
            }
        }
        if for_us {
            out.push(arp::reply(&a, self.cfg.mac, ours));
            self.counters.arp_replies_sent += 1;
        } else if news.is_none() {
            self.counters.arp_ignored += 1;
        }
        news
    }

    /// An address a neighbour on our subnet may have.
    fn plausible_neighbour(&self, ip: Ipv4Addr) -> bool {
        let m = u32::MAX
            .checked_shl(32 - u32::from(self.cfg.prefix_len.min(32)))
            .unwrap_or(0);
        u32::from(ip) & m == u32::from(self.network)
            && ip != self.cfg.ip
            && (self.cfg.prefix_len >= 31 || (ip != self.network && ip != self.broadcast))
    }

    /// Whether `src` may be answered: a single host that is not us.
    fn valid_source(&self, src: Ipv4Addr) -> bool {
        let o = src.octets();
        !(o[0] == 0
            || src.is_broadcast()
            || src.is_multicast()
            || src.is_loopback()
            || o[0] >= 240
            || src == self.cfg.ip
            || (self.cfg.prefix_len < 31 && (src == self.broadcast || src == self.network)))
    }

    fn on_ipv4(
        &mut self,
        now: Instant,
        eth: &EthernetFrame<&[u8]>,
        listening: impl Fn(u16) -> bool,
        out: &mut Vec<Vec<u8>>,
    ) {
        let c = &mut self.counters;
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            c.malformed += 1;
            return;
        };
        if ip.version() != 4 || !ip.verify_checksum() {
            c.malformed += 1;
            return;
        }
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let eth_dst = eth.dst_addr().0;
        if eth_dst[0] & 1 != 0 || dst.is_broadcast() || dst.is_multicast() || dst == self.broadcast
        {
            c.suppressed_broadcast += 1;
            return;
        }
        if dst != self.cfg.ip || eth_dst != self.cfg.mac {
            c.not_for_us += 1;
            return;
        }
        if !self.valid_source(src) || eth.src_addr().0[0] & 1 != 0 {
            self.counters.suppressed_invalid_source += 1;
            return;
        }
        if ip.frag_offset() != 0 {
            self.counters.suppressed_fragment += 1;
            return;
        }
        let whole = !ip.more_frags();
        let payload = ip.payload();
        // What to quote in an ICMP error: the datagram as received (header included).
        let datagram = &eth.payload()[..usize::from(ip.total_len())];
        let reply = match ip.next_header() {
            IpProtocol::Icmp => {
                let Ok(icmp) = Icmpv4Packet::new_checked(payload) else {
                    self.counters.malformed += 1;
                    return;
                };
                match icmp.msg_type() {
                    Icmpv4Message::EchoRequest => {
                        if !whole {
                            self.counters.suppressed_fragment += 1;
                            return;
                        }
                        if !icmp.verify_checksum() {
                            self.counters.malformed += 1;
                            return;
                        }
                        if !self.echo.take(now) {
                            self.counters.echo_rate_limited += 1;
                            return;
                        }
                        self.counters.echo_replies += 1;
                        Reply::Echo {
                            ident: icmp.echo_ident(),
                            seq: icmp.echo_seq_no(),
                            data: icmp.data(),
                        }
                    }
                    Icmpv4Message::DstUnreachable
                    | Icmpv4Message::Redirect
                    | Icmpv4Message::TimeExceeded
                    | Icmpv4Message::ParamProblem => {
                        self.counters.icmp_errors_received += 1;
                        return;
                    }
                    _ if u8::from(icmp.msg_type()) == 4 => {
                        // Source quench: an error too.
                        self.counters.icmp_errors_received += 1;
                        return;
                    }
                    _ => {
                        self.counters.icmp_ignored += 1;
                        return;
                    }
                }
            }
            IpProtocol::Udp => {
                let Ok(udp) = UdpPacket::new_checked(payload) else {
                    self.counters.malformed += 1;
                    return;
                };
                if whole
                    && udp.checksum() != 0
                    && !udp.verify_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst))
                {
                    self.counters.malformed += 1;
                    return;
                }
                if !self.errors.take(now) {
                    self.counters.errors_rate_limited += 1;
                    return;
                }
                self.counters.udp_port_unreachable += 1;
                Reply::Unreachable {
                    code: 3,
                    quote: datagram,
                }
            }
            IpProtocol::Tcp => {
                let Ok(tcp) = TcpPacket::new_checked(payload) else {
                    self.counters.malformed += 1;
                    return;
                };
                if whole && !tcp.verify_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst)) {
                    self.counters.malformed += 1;
                    return;
                }
                if tcp.rst() {
                    self.counters.suppressed_rst += 1;
                    return;
                }
                if tcp.syn() && !tcp.ack() && listening(tcp.dst_port()) {
                    self.counters.syn_for_listener += 1;
                }
                if !self.errors.take(now) {
                    self.counters.errors_rate_limited += 1;
                    return;
                }
                self.counters.tcp_resets += 1;
                // RFC 793 "Reset Generation", CLOSED state.
                let (seq, ack) = if tcp.ack() {
                    (tcp.ack_number(), None)
                } else {
                    (TcpSeqNumber(0), Some(tcp.seq_number() + tcp.segment_len()))
                };
                Reply::Reset {
                    seq,
                    ack,
                    src_port: tcp.dst_port(),
                    dst_port: tcp.src_port(),
                }
            }
            _ => {
                if !self.errors.take(now) {
                    self.counters.errors_rate_limited += 1;
                    return;
                }
                self.counters.proto_unreachable += 1;
                Reply::Unreachable {
                    code: 2,
                    quote: datagram,
                }
            }
        };
        let frame = self.emit(eth.src_addr().0, src, &reply);
        out.push(frame);
    }

    /// Builds the reply frame to `to_mac`/`to_ip`.
    fn emit(&mut self, to_mac: [u8; 6], to_ip: Ipv4Addr, reply: &Reply<'_>) -> Vec<u8> {
        let (proto, l4_len) = match reply {
            Reply::Echo { data, .. } => (IpProtocol::Icmp, 8 + data.len()),
            Reply::Unreachable { quote, .. } => (
                IpProtocol::Icmp,
                8 + quote.len().min(ICMP_ERROR_MAX_BYTES - 20 - 8),
            ),
            Reply::Reset { .. } => (IpProtocol::Tcp, 20),
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress(self.cfg.mac),
            dst_addr: EthernetAddress(to_mac),
            ethertype: EthernetProtocol::Ipv4,
        };
        let ipr = Ipv4Repr {
            src_addr: self.cfg.ip,
            dst_addr: to_ip,
            next_header: proto,
            payload_len: l4_len,
            hop_limit: 64,
        };
        let caps = ChecksumCapabilities::default();
        let mut buf = vec![0u8; eth.buffer_len() + ipr.buffer_len() + l4_len];
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut f);
        let mut ip = Ipv4Packet::new_unchecked(f.payload_mut());
        ipr.emit(&mut ip, &caps);
        self.ident = self.ident.wrapping_add(1);
        ip.set_ident(self.ident);
        ip.fill_checksum();
        let l4 = ip.payload_mut();
        match *reply {
            Reply::Echo { ident, seq, data } => {
                let repr = Icmpv4Repr::EchoReply {
                    ident,
                    seq_no: seq,
                    data,
                };
                repr.emit(&mut Icmpv4Packet::new_unchecked(l4), &caps);
            }
            Reply::Unreachable { code, quote } => {
                let mut icmp = Icmpv4Packet::new_unchecked(l4);
                icmp.set_msg_type(Icmpv4Message::DstUnreachable);
                icmp.set_msg_code(code);
                let data = icmp.data_mut();
                let n = data.len();
                data.copy_from_slice(&quote[..n]);
                icmp.fill_checksum();
            }
            Reply::Reset {
                seq,
                ack,
                src_port,
                dst_port,
            } => {
                let mut tcp = TcpPacket::new_unchecked(l4);
                tcp.set_src_port(src_port);
                tcp.set_dst_port(dst_port);
                tcp.set_seq_number(seq);
                tcp.set_ack_number(ack.unwrap_or(TcpSeqNumber(0)));
                tcp.set_header_len(20);
                tcp.clear_flags();
                tcp.set_rst(true);
                tcp.set_ack(ack.is_some());
                tcp.set_window_len(0);
                tcp.set_urgent_at(0);
                tcp.fill_checksum(&IpAddress::Ipv4(self.cfg.ip), &IpAddress::Ipv4(to_ip));
            }
        }
        buf
    }
}

/// `02:4e:46:00:00:01`.
pub fn fmt_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}
