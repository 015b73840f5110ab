//! The host's own protocols on the flow manager's last-resort flow: ARP (answer, learn, resolve,
//! announce, detect conflicts), ICMP echo, ICMP port/protocol unreachable for datagrams no flow
//! took, and for TCP segments no flow took: a call-back for a SYN to a listening port, the
//! TIME_WAIT answers for a closed connection's 4-tuple, and RST for the rest.
//!
//! No I/O: [`Host::on_frame`] takes one received frame and the time, appends the frames to
//! send, and returns news for the daemon (ARP resolutions, SYNs to call an app back for).
//!
//! TIME_WAIT follows RFC 793 with RFC 1122 §4.2.2.13 and RFC 1337, as Linux does: a SYN whose
//! sequence number is above the old connection's receive point reopens the 4-tuple (if an app
//! listens; its new initial sequence number must be above the old send point), an RST is
//! ignored, and every other segment (an old duplicate SYN, a retransmitted FIN, stray data) is
//! answered with the final ACK again. Error replies (ICMP unreachable, RST) share one token bucket, echo replies have their
//! own, and every frame that gets no reply is counted under the reason why. Following RFC 1122
//! (§3.2.2 and §4.2.2.13) and RFC 1812 §4.3.2.7, nothing is sent in reply to an ICMP error, an
//! RST, a frame to a broadcast or multicast address, a fragment other than the first, or a
//! datagram whose source is not a single host (unspecified, broadcast, multicast, loopback,
//! class E, our own address, our subnet's network or broadcast address).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use nemflow_proto::ctl::TcpSeen;

use nemflow_proto::flow::ip_proto;
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
        /// UDP or TCP for a flow whose filter the driver was still installing: dropped.
        for_installing_flow,
        /// ICMP protocol unreachable sent.
        proto_unreachable,
        /// RSTs sent for TCP no flow took.
        tcp_resets,
        /// SYNs to a port an app listens on (passed to the daemon to call the app back).
        syn_for_listener,
        /// Segments for a 4-tuple in TIME_WAIT answered with its final ACK.
        time_wait_acks,
        /// SYNs that reopened a 4-tuple in TIME_WAIT (RFC 1122 §4.2.2.13).
        time_wait_reopens,
        /// RSTs for a 4-tuple in TIME_WAIT, ignored (RFC 1337).
        time_wait_rst_ignored,
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
    /// An RST (or, with `rst` false, a bare ACK): `ack` sets the ACK flag.
    Tcp {
        rst: bool,
        seq: TcpSeqNumber,
        ack: Option<TcpSeqNumber>,
        src_port: u16,
        dst_port: u16,
    },
}

/// What the daemon knows about a local port and remote (a UDP or TCP 4-tuple) that no flow took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SapLookup {
    /// A flow holds the 4-tuple: its open was answered and the driver is still installing its
    /// filter (the only way its frames reach the host). Dropped, counted, never refused: the app
    /// was told its port is bound.
    pub held: bool,
    /// An app listens on the local TCP port.
    pub listening: bool,
    /// The 4-tuple is held for TIME_WAIT; with the old connection's sequence state when the
    /// driver saw it close cleanly (`None`: it was reset or never synchronized, and segments
    /// are answered as for a closed port).
    pub time_wait: Option<Option<TcpSeen>>,
}

/// A SYN to a listening port: the daemon calls the listening app back with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynNews {
    /// The listening port.
    pub port: u16,
    /// The connecting peer.
    pub remote: SocketAddrV4,
    /// The SYN frame as received.
    pub frame: Vec<u8>,
    /// It reopens a 4-tuple held for TIME_WAIT (the daemon ends the hold on accept).
    pub reopens_time_wait: bool,
    /// The new connection's initial sequence number must be above this one.
    pub isn_above: Option<u32>,
}

/// News from one frame for the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum News {
    /// ARP resolved or failed an address.
    Arp(ArpNews),
    /// A SYN for a listening port.
    Syn(SynNews),
}

/// `a` is after `b` in TCP sequence space.
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
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

    /// Handles one frame that no flow took. `sap(ip_proto, local_port, remote)` says what the
    /// daemon knows about a UDP or TCP 4-tuple. Replies are appended to `out`; news is returned.
    pub fn on_frame(
        &mut self,
        now: Instant,
        frame: &[u8],
        sap: impl Fn(u8, u16, SocketAddrV4) -> SapLookup,
        out: &mut Vec<Vec<u8>>,
    ) -> Option<News> {
        self.counters.rx_frames += 1;
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.counters.malformed += 1;
            return None;
        };
        match eth.ethertype() {
            EthernetProtocol::Arp => self.on_arp(now, frame, out).map(News::Arp),
            EthernetProtocol::Ipv4 => self.on_ipv4(now, &eth, sap, out),
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
        if a.sha == self.cfg.mac {
            // Our own frame, looped back.
            self.counters.arp_ignored += 1;
            return None;
        }
        if a.spa == ours {
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
        sap: impl Fn(u8, u16, SocketAddrV4) -> SapLookup,
        out: &mut Vec<Vec<u8>>,
    ) -> Option<News> {
        let c = &mut self.counters;
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            c.malformed += 1;
            return None;
        };
        if ip.version() != 4 || !ip.verify_checksum() {
            c.malformed += 1;
            return None;
        }
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let eth_dst = eth.dst_addr().0;
        if eth_dst[0] & 1 != 0 || dst.is_broadcast() || dst.is_multicast() || dst == self.broadcast
        {
            c.suppressed_broadcast += 1;
            return None;
        }
        if dst != self.cfg.ip || eth_dst != self.cfg.mac {
            c.not_for_us += 1;
            return None;
        }
        if !self.valid_source(src) || eth.src_addr().0[0] & 1 != 0 {
            self.counters.suppressed_invalid_source += 1;
            return None;
        }
        if ip.frag_offset() != 0 {
            self.counters.suppressed_fragment += 1;
            return None;
        }
        let whole = !ip.more_frags();
        let payload = ip.payload();
        // What to quote in an ICMP error: the datagram as received (header included).
        let datagram = &eth.payload()[..usize::from(ip.total_len())];
        let reply = match ip.next_header() {
            IpProtocol::Icmp => {
                let Ok(icmp) = Icmpv4Packet::new_checked(payload) else {
                    self.counters.malformed += 1;
                    return None;
                };
                match icmp.msg_type() {
                    Icmpv4Message::EchoRequest => {
                        if !whole {
                            self.counters.suppressed_fragment += 1;
                            return None;
                        }
                        if !icmp.verify_checksum() {
                            self.counters.malformed += 1;
                            return None;
                        }
                        if !self.echo.take(now) {
                            self.counters.echo_rate_limited += 1;
                            return None;
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
                        return None;
                    }
                    _ if u8::from(icmp.msg_type()) == 4 => {
                        // Source quench: an error too.
                        self.counters.icmp_errors_received += 1;
                        return None;
                    }
                    _ => {
                        self.counters.icmp_ignored += 1;
                        return None;
                    }
                }
            }
            IpProtocol::Udp => {
                let Ok(udp) = UdpPacket::new_checked(payload) else {
                    self.counters.malformed += 1;
                    return None;
                };
                if whole
                    && udp.checksum() != 0
                    && !udp.verify_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst))
                {
                    self.counters.malformed += 1;
                    return None;
                }
                if sap(
                    ip_proto::UDP,
                    udp.dst_port(),
                    SocketAddrV4::new(src, udp.src_port()),
                )
                .held
                {
                    self.counters.for_installing_flow += 1;
                    return None;
                }
                if !self.errors.take(now) {
                    self.counters.errors_rate_limited += 1;
                    return None;
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
                    return None;
                };
                if whole && !tcp.verify_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst)) {
                    self.counters.malformed += 1;
                    return None;
                }
                let remote = SocketAddrV4::new(src, tcp.src_port());
                let found = sap(ip_proto::TCP, tcp.dst_port(), remote);
                if found.held {
                    self.counters.for_installing_flow += 1;
                    return None;
                }
                let seq = tcp.seq_number().0 as u32;
                let syn = tcp.syn() && !tcp.ack() && !tcp.rst();
                if tcp.rst() {
                    if found.time_wait.is_some_and(|s| s.is_some()) {
                        self.counters.time_wait_rst_ignored += 1;
                    } else {
                        self.counters.suppressed_rst += 1;
                    }
                    return None;
                }
                let mut reopens_time_wait = false;
                let mut isn_above = None;
                match found.time_wait {
                    Some(Some(tw)) if !(syn && seq_after(seq, tw.rcv_nxt)) => {
                        // An old duplicate SYN, a retransmitted FIN, anything else: the final
                        // ACK again (RFC 793 TIME-WAIT; rate limited like every reply).
                        if !self.errors.take(now) {
                            self.counters.errors_rate_limited += 1;
                            return None;
                        }
                        self.counters.time_wait_acks += 1;
                        let reply = Reply::Tcp {
                            rst: false,
                            seq: TcpSeqNumber(tw.snd_nxt as i32),
                            ack: Some(TcpSeqNumber(tw.rcv_nxt as i32)),
                            src_port: tcp.dst_port(),
                            dst_port: tcp.src_port(),
                        };
                        out.push(self.emit(eth.src_addr().0, src, &reply));
                        return None;
                    }
                    Some(Some(tw)) => {
                        // A new incarnation (RFC 1122 §4.2.2.13): only to a listener.
                        reopens_time_wait = true;
                        isn_above = Some(tw.snd_nxt);
                    }
                    Some(None) => reopens_time_wait = true,
                    None => {}
                }
                if syn && found.listening {
                    self.counters.syn_for_listener += 1;
                    if reopens_time_wait {
                        self.counters.time_wait_reopens += 1;
                    }
                    let len = ETHERNET_HEADER + usize::from(ip.total_len());
                    return Some(News::Syn(SynNews {
                        port: tcp.dst_port(),
                        remote,
                        frame: eth.as_ref()[..len].to_vec(),
                        reopens_time_wait,
                        isn_above,
                    }));
                }
                if !self.errors.take(now) {
                    self.counters.errors_rate_limited += 1;
                    return None;
                }
                self.counters.tcp_resets += 1;
                // RFC 793 "Reset Generation", CLOSED state.
                let (seq, ack) = if tcp.ack() {
                    (tcp.ack_number(), None)
                } else {
                    (TcpSeqNumber(0), Some(tcp.seq_number() + tcp.segment_len()))
                };
                Reply::Tcp {
                    rst: true,
                    seq,
                    ack,
                    src_port: tcp.dst_port(),
                    dst_port: tcp.src_port(),
                }
            }
            _ => {
                if !self.errors.take(now) {
                    self.counters.errors_rate_limited += 1;
                    return None;
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
        None
    }

    /// Builds the reply frame to `to_mac`/`to_ip`.
    fn emit(&mut self, to_mac: [u8; 6], to_ip: Ipv4Addr, reply: &Reply<'_>) -> Vec<u8> {
        let (proto, l4_len) = match reply {
            Reply::Echo { data, .. } => (IpProtocol::Icmp, 8 + data.len()),
            Reply::Unreachable { quote, .. } => (
                IpProtocol::Icmp,
                8 + quote.len().min(ICMP_ERROR_MAX_BYTES - 20 - 8),
            ),
            Reply::Tcp { .. } => (IpProtocol::Tcp, 20),
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
            Reply::Tcp {
                rst,
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
                tcp.set_rst(rst);
                tcp.set_ack(ack.is_some());
                tcp.set_window_len(0);
                tcp.set_urgent_at(0);
                tcp.fill_checksum(&IpAddress::Ipv4(self.cfg.ip), &IpAddress::Ipv4(to_ip));
            }
        }
        buf
    }
}

impl Host {
    /// Refuses a SYN the daemon called an app back for (the app rejected it): RST|ACK with
    /// `ack = SEG.SEQ + 1`, as for a closed port. Rate limited like every error reply.
    pub fn refuse_syn(&mut self, now: Instant, syn: &[u8], out: &mut Vec<Vec<u8>>) {
        self.on_frame(now, syn, |_, _, _| SapLookup::default(), out);
        // Counted as a frame by `on_frame`; it was not received twice.
        self.counters.rx_frames = self.counters.rx_frames.saturating_sub(1);
    }

    /// Resets a connection whose app is gone: RST (with ACK when `ack` is given) from
    /// `local_port` to `remote` at `to_mac`, with sequence number `seq` (the connection's next
    /// one, which the peer accepts as in window; RFC 5961 peers answer an inexact one with a
    /// challenge ACK, which then finds no flow and is reset exactly, `SEG.SEQ = SEG.ACK`).
    pub fn reset(
        &mut self,
        local_port: u16,
        remote: SocketAddrV4,
        to_mac: [u8; 6],
        seq: u32,
        ack: Option<u32>,
        out: &mut Vec<Vec<u8>>,
    ) {
        self.counters.tcp_resets += 1;
        let reply = Reply::Tcp {
            rst: true,
            seq: TcpSeqNumber(seq as i32),
            ack: ack.map(|a| TcpSeqNumber(a as i32)),
            src_port: local_port,
            dst_port: remote.port(),
        };
        out.push(self.emit(to_mac, *remote.ip(), &reply));
    }
}

/// Bytes of an Ethernet header (no VLAN tag).
const ETHERNET_HEADER: usize = 14;

/// `02:4e:46:00:00:01`.
pub fn fmt_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{UdpRepr, IPV4_HEADER_LEN};

    const MAC: [u8; 6] = [2, 0x4e, 0x46, 0, 0, 1];
    const PEER_MAC: [u8; 6] = [2, 0x4e, 0x46, 0xff, 0, 2];
    const US: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const PEER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

    fn host() -> Host {
        Host::new(HostConfig {
            ip: US,
            prefix_len: 24,
            mac: MAC,
            errors_per_sec: 100,
            errors_burst: 50,
            echo_per_sec: 1000,
            arp_timeout: Duration::from_secs(60),
            arp_retry: Duration::from_millis(100),
            arp_retries: 3,
        })
    }

    /// Ethernet + IPv4 (checksummed) around `l4`.
    fn ip_frame(
        dst_mac: [u8; 6],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: IpProtocol,
        l4: &[u8],
        frag_offset: u16,
        more: bool,
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 14 + IPV4_HEADER_LEN + l4.len()];
        let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
        EthernetRepr {
            src_addr: EthernetAddress(PEER_MAC),
            dst_addr: EthernetAddress(dst_mac),
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut eth);
        let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
        Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: proto,
            payload_len: l4.len(),
            hop_limit: 64,
        }
        .emit(&mut ip, &ChecksumCapabilities::default());
        ip.set_ident(0x4242);
        ip.clear_flags();
        ip.set_more_frags(more);
        ip.set_frag_offset(frag_offset);
        ip.payload_mut().copy_from_slice(l4);
        ip.fill_checksum();
        buf
    }

    /// A whole unfragmented UDP datagram from the peer to us, in its Ethernet frame.
    fn udp_from_peer(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        ip_frame(
            MAC,
            PEER,
            US,
            IpProtocol::Udp,
            &udp(PEER, US, sport, dport, payload),
            0,
            false,
        )
    }

    fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut l4 = vec![0u8; 8 + payload.len()];
        UdpRepr {
            src_port: sport,
            dst_port: dport,
        }
        .emit(
            &mut UdpPacket::new_unchecked(&mut l4[..]),
            &IpAddress::Ipv4(src),
            &IpAddress::Ipv4(dst),
            payload.len(),
            |b| b.copy_from_slice(payload),
            &ChecksumCapabilities::default(),
        );
        l4
    }

    fn tcp(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        syn: bool,
        ack: Option<u32>,
        rst: bool,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut l4 = vec![0u8; 20 + payload.len()];
        let mut t = TcpPacket::new_unchecked(&mut l4[..]);
        t.set_src_port(40000);
        t.set_dst_port(80);
        t.set_seq_number(TcpSeqNumber(1000));
        t.set_ack_number(TcpSeqNumber(ack.unwrap_or(0) as i32));
        t.set_header_len(20);
        t.clear_flags();
        t.set_syn(syn);
        t.set_ack(ack.is_some());
        t.set_rst(rst);
        t.set_window_len(512);
        t.payload_mut().copy_from_slice(payload);
        t.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
        l4
    }

    fn echo(data: &[u8]) -> Vec<u8> {
        let mut l4 = vec![0u8; 8 + data.len()];
        Icmpv4Repr::EchoRequest {
            ident: 7,
            seq_no: 9,
            data,
        }
        .emit(
            &mut Icmpv4Packet::new_unchecked(&mut l4[..]),
            &ChecksumCapabilities::default(),
        );
        l4
    }

    fn run(h: &mut Host, frame: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        h.on_frame(
            Instant::now(),
            frame,
            |_, _, _| SapLookup::default(),
            &mut out,
        );
        out
    }

    /// `run` with what the daemon knows about TCP 4-tuples.
    fn run_tcp(h: &mut Host, frame: &[u8], lookup: SapLookup) -> (Vec<Vec<u8>>, Option<News>) {
        let mut out = Vec::new();
        let news = h.on_frame(Instant::now(), frame, |_, _, _| lookup, &mut out);
        (out, news)
    }

    /// The reply's IPv4 packet, checked: from us, to the peer, valid checksum, to the peer's MAC.
    fn reply_ip(frame: &[u8]) -> Ipv4Packet<&[u8]> {
        let eth = EthernetFrame::new_checked(frame).unwrap();
        assert_eq!(eth.dst_addr().0, PEER_MAC);
        assert_eq!(eth.src_addr().0, MAC);
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (US, PEER));
        ip
    }

    #[test]
    fn answers_arp_for_us_learns_and_flags_conflicts() {
        let mut h = host();
        let req = arp::frame([0xff; 6], true, PEER_MAC, PEER, [0; 6], US);
        let out = run(&mut h, &req);
        assert_eq!(out.len(), 1);
        let rep = arp::parse(&out[0]).unwrap();
        assert!(!rep.request);
        assert_eq!(
            (rep.sha, rep.spa, rep.tha, rep.tpa),
            (MAC, US, PEER_MAC, PEER)
        );
        assert_eq!(
            h.arp().peek(PEER),
            Some(PEER_MAC),
            "learned from a request for us"
        );
        // A request for someone else: no reply, nothing created.
        let other = arp::frame(
            [0xff; 6],
            true,
            PEER_MAC,
            Ipv4Addr::new(10, 77, 0, 3),
            [0; 6],
            PEER,
        );
        assert!(run(&mut h, &other).is_empty());
        assert_eq!(h.arp().peek(Ipv4Addr::new(10, 77, 0, 3)), None);
        // Someone else claims our address.
        let claim = arp::announcement(PEER_MAC, US);
        assert!(run(&mut h, &claim).is_empty());
        assert_eq!(h.counters().arp_conflicts, 1);
        // Our own announcement echoed back is not a conflict.
        assert!(run(&mut h, &arp::announcement(MAC, US)).is_empty());
        assert_eq!(h.counters().arp_conflicts, 1);
        assert_eq!(h.counters().arp_replies_sent, 1);
        assert_eq!(h.counters().arp_ignored, 2);
    }

    #[test]
    fn resolves_with_retries() {
        let mut h = host();
        let t0 = Instant::now();
        let mut out = Vec::new();
        assert_eq!(h.resolve(PEER, t0, &mut out), Lookup::Started);
        assert_eq!(arp::parse(&out[0]).unwrap().tpa, PEER);
        out.clear();
        assert!(h.poll(t0 + Duration::from_millis(100), &mut out).is_empty());
        assert_eq!(out.len(), 1, "retry");
        let reply = arp::frame(MAC, false, PEER_MAC, PEER, MAC, US);
        let mut none = Vec::new();
        let news = h.on_frame(t0, &reply, |_, _, _| SapLookup::default(), &mut none);
        assert!(matches!(
            news,
            Some(News::Arp(ArpNews::Resolved {
                completed: true,
                ..
            }))
        ));
        assert!(none.is_empty());
        assert_eq!(h.counters().arp_requests_sent, 2);
    }

    #[test]
    fn echo_request_gets_a_reply() {
        let mut h = host();
        let f = ip_frame(
            MAC,
            PEER,
            US,
            IpProtocol::Icmp,
            &echo(b"ping data"),
            0,
            false,
        );
        let out = run(&mut h, &f);
        assert_eq!(out.len(), 1);
        let ip = reply_ip(&out[0]);
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.msg_type(), Icmpv4Message::EchoReply);
        assert_eq!((icmp.echo_ident(), icmp.echo_seq_no()), (7, 9));
        assert_eq!(icmp.data(), b"ping data");
        assert_eq!(h.counters().echo_replies, 1);
    }

    #[test]
    fn a_flow_being_installed_drops_its_early_frames_without_refusing_them() {
        let mut h = host();
        let held = SapLookup {
            held: true,
            ..SapLookup::default()
        };
        let dgram = udp_from_peer(5555, 9, b"early");
        let mut out = Vec::new();
        assert!(h
            .on_frame(Instant::now(), &dgram, |_, _, _| held, &mut out)
            .is_none());
        let (rst, _) = run_tcp(&mut h, &seg(1, 77, TcpSeen::ACK), held);
        assert!(
            out.is_empty() && rst.is_empty(),
            "neither refused nor reset"
        );
        assert_eq!(h.counters().for_installing_flow, 2);
        assert_eq!(
            h.counters().udp_port_unreachable + h.counters().tcp_resets,
            0
        );
        // The lookup is asked about the datagram's own 4-tuple.
        let asked = std::cell::Cell::new(None);
        h.on_frame(
            Instant::now(),
            &dgram,
            |proto, port, remote| {
                asked.set(Some((proto, port, remote)));
                SapLookup::default()
            },
            &mut out,
        );
        assert_eq!(
            asked.get(),
            Some((ip_proto::UDP, 9, SocketAddrV4::new(PEER, 5555)))
        );
        assert_eq!(h.counters().udp_port_unreachable, 1);
    }

    #[test]
    fn closed_udp_port_gets_port_unreachable_quoting_the_datagram() {
        let mut h = host();
        let f = udp_from_peer(5555, 9, b"hello");
        let out = run(&mut h, &f);
        assert_eq!(out.len(), 1);
        let ip = reply_ip(&out[0]);
        assert_eq!(ip.next_header(), IpProtocol::Icmp);
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(
            (icmp.msg_type(), icmp.msg_code()),
            (Icmpv4Message::DstUnreachable, 3)
        );
        assert_eq!(
            icmp.data(),
            &f[14..],
            "the whole original datagram is quoted"
        );
        assert_eq!(h.counters().udp_port_unreachable, 1);
        // A long datagram is quoted up to 576 bytes in all.
        let big = udp_from_peer(5555, 9, &[7u8; 1400]);
        let out = run(&mut h, &big);
        assert_eq!(out[0].len() - 14, ICMP_ERROR_MAX_BYTES);
    }

    #[test]
    fn closed_tcp_port_gets_rst() {
        let mut h = host();
        // A SYN: RST|ACK, seq 0, ack = seq + 1.
        let f = ip_frame(
            MAC,
            PEER,
            US,
            IpProtocol::Tcp,
            &tcp(PEER, US, true, None, false, b""),
            0,
            false,
        );
        let out = run(&mut h, &f);
        let ip = reply_ip(&out[0]);
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(t.verify_checksum(&IpAddress::Ipv4(US), &IpAddress::Ipv4(PEER)));
        assert!(t.rst() && t.ack() && !t.syn());
        assert_eq!((t.src_port(), t.dst_port()), (80, 40000));
        assert_eq!(
            (t.seq_number(), t.ack_number()),
            (TcpSeqNumber(0), TcpSeqNumber(1001))
        );
        // A segment with ACK and data: RST with seq = its ack.
        let f = ip_frame(
            MAC,
            PEER,
            US,
            IpProtocol::Tcp,
            &tcp(PEER, US, false, Some(5000), false, b"xyz"),
            0,
            false,
        );
        let out = run(&mut h, &f);
        let ip = reply_ip(&out[0]);
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(t.rst() && !t.ack());
        assert_eq!(t.seq_number(), TcpSeqNumber(5000));
        // Never an RST for an RST.
        let f = ip_frame(
            MAC,
            PEER,
            US,
            IpProtocol::Tcp,
            &tcp(PEER, US, false, None, true, b""),
            0,
            false,
        );
        assert!(run(&mut h, &f).is_empty());
        assert_eq!(h.counters().suppressed_rst, 1);
        assert_eq!(h.counters().tcp_resets, 2);
    }

    /// A TCP segment 10.77.0.2:40000 → :80 with `seq`, flags (TcpSeen bits), ack if ACK.
    fn seg(seq: u32, ack: u32, flags: u8) -> Vec<u8> {
        let mut l4 = vec![0u8; 20];
        let mut t = TcpPacket::new_unchecked(&mut l4[..]);
        t.set_src_port(40000);
        t.set_dst_port(80);
        t.set_seq_number(TcpSeqNumber(seq as i32));
        t.set_ack_number(TcpSeqNumber(ack as i32));
        t.set_header_len(20);
        t.clear_flags();
        t.set_syn(flags & TcpSeen::SYN != 0);
        t.set_fin(flags & TcpSeen::FIN != 0);
        t.set_rst(flags & TcpSeen::RST != 0);
        t.set_ack(flags & TcpSeen::ACK != 0);
        t.set_window_len(512);
        t.fill_checksum(&IpAddress::Ipv4(PEER), &IpAddress::Ipv4(US));
        ip_frame(MAC, PEER, US, IpProtocol::Tcp, &l4, 0, false)
    }

    fn reply_tcp(frame: &[u8]) -> (TcpSeqNumber, TcpSeqNumber, bool, bool, bool) {
        let ip = reply_ip(frame);
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(t.verify_checksum(&IpAddress::Ipv4(US), &IpAddress::Ipv4(PEER)));
        assert_eq!((t.src_port(), t.dst_port()), (80, 40000));
        (t.seq_number(), t.ack_number(), t.rst(), t.ack(), t.syn())
    }

    #[test]
    fn a_syn_to_a_listener_is_news_not_a_reset() {
        let mut h = host();
        let listening = SapLookup {
            listening: true,
            time_wait: None,
            held: false,
        };
        let syn = seg(1000, 0, TcpSeen::SYN);
        let (out, news) = run_tcp(&mut h, &syn, listening);
        assert!(out.is_empty(), "the app answers, not the host");
        let Some(News::Syn(n)) = news else {
            panic!("no call-back: {news:?}")
        };
        assert_eq!(n.port, 80);
        assert_eq!(n.remote, SocketAddrV4::new(PEER, 40000));
        assert_eq!(n.frame, syn, "the whole SYN frame is handed over");
        assert!(!n.reopens_time_wait && n.isn_above.is_none());
        assert_eq!(h.counters().syn_for_listener, 1);
        // A SYN-ACK or a bare ACK to the listening port has no connection: RST.
        let (out, news) = run_tcp(
            &mut h,
            &seg(1000, 5, TcpSeen::SYN | TcpSeen::ACK),
            listening,
        );
        assert!(news.is_none());
        assert_eq!(reply_tcp(&out[0]).0, TcpSeqNumber(5));
        // The app refuses: RST|ACK for the SYN.
        let mut out = Vec::new();
        h.refuse_syn(Instant::now(), &syn, &mut out);
        let (seq, ack, rst, has_ack, _) = reply_tcp(&out[0]);
        assert!(rst && has_ack);
        assert_eq!((seq, ack), (TcpSeqNumber(0), TcpSeqNumber(1001)));
        assert_eq!(
            h.counters().rx_frames,
            2,
            "the refused SYN was received once"
        );
    }

    #[test]
    fn time_wait_answers_as_rfc_793_and_1122_say() {
        let mut h = host();
        // The old connection: we sent up to 5001 (FIN included), received up to 9001.
        let state = TcpSeen {
            snd_nxt: 5001,
            rcv_nxt: 9001,
            peer_ack: 5001,
            peer_nxt: 9001,
            tx_flags: TcpSeen::SYN | TcpSeen::ACK | TcpSeen::FIN,
            rx_flags: TcpSeen::SYN | TcpSeen::ACK | TcpSeen::FIN,
            ends: None,
        };
        let tw = |listening| SapLookup {
            listening,
            time_wait: Some(Some(state)),
            held: false,
        };
        // The peer lost our last ACK and sends its FIN again: the final ACK again.
        let (out, news) = run_tcp(
            &mut h,
            &seg(9000, 5001, TcpSeen::FIN | TcpSeen::ACK),
            tw(true),
        );
        assert!(news.is_none());
        let (seq, ack, rst, has_ack, syn) = reply_tcp(&out[0]);
        assert!(!rst && has_ack && !syn);
        assert_eq!((seq, ack), (TcpSeqNumber(5001), TcpSeqNumber(9001)));
        // An old duplicate SYN (not above the receive point): the ACK, no call-back.
        let (out, news) = run_tcp(&mut h, &seg(8000, 0, TcpSeen::SYN), tw(true));
        assert!(news.is_none());
        assert_eq!(reply_tcp(&out[0]).1, TcpSeqNumber(9001));
        assert_eq!(h.counters().time_wait_acks, 2);
        // An RST is ignored (RFC 1337).
        let (out, _) = run_tcp(&mut h, &seg(9001, 0, TcpSeen::RST), tw(true));
        assert!(out.is_empty());
        assert_eq!(h.counters().time_wait_rst_ignored, 1);
        // A new incarnation above the receive point (also across the wrap) reopens it for a
        // listener, with our new ISN to be above the old send point.
        let (out, news) = run_tcp(&mut h, &seg(9001 + 100_000, 0, TcpSeen::SYN), tw(true));
        assert!(out.is_empty());
        let Some(News::Syn(n)) = news else {
            panic!("no reopen: {news:?}")
        };
        assert!(n.reopens_time_wait);
        assert_eq!(n.isn_above, Some(5001));
        assert_eq!(h.counters().time_wait_reopens, 1);
        // Without a listener the new SYN is refused as at a closed port.
        let (out, news) = run_tcp(&mut h, &seg(9001 + 100_000, 0, TcpSeen::SYN), tw(false));
        assert!(news.is_none());
        let (_, ack, rst, _, _) = reply_tcp(&out[0]);
        assert!(rst);
        assert_eq!(ack, TcpSeqNumber(9001 + 100_001));
        // A hold without sequence state (the connection was reset): closed-port answers, and a
        // SYN to a listener reopens it without an ISN bound.
        let reset = |listening| SapLookup {
            listening,
            time_wait: Some(None),
            held: false,
        };
        let (out, _) = run_tcp(&mut h, &seg(1, 77, TcpSeen::ACK), reset(false));
        let (seq, _, rst, _, _) = reply_tcp(&out[0]);
        assert!(rst);
        assert_eq!(seq, TcpSeqNumber(77));
        let (_, news) = run_tcp(&mut h, &seg(1, 0, TcpSeen::SYN), reset(true));
        assert!(matches!(
            news,
            Some(News::Syn(SynNews {
                reopens_time_wait: true,
                isn_above: None,
                ..
            }))
        ));
    }

    #[test]
    fn resets_a_connection_left_open() {
        let mut h = host();
        let mut out = Vec::new();
        h.reset(
            80,
            SocketAddrV4::new(PEER, 40000),
            PEER_MAC,
            123_456,
            Some(777),
            &mut out,
        );
        let (seq, ack, rst, has_ack, _) = reply_tcp(&out[0]);
        assert!(rst && has_ack);
        assert_eq!((seq, ack), (TcpSeqNumber(123_456), TcpSeqNumber(777)));
        assert_eq!(h.counters().tcp_resets, 1);
    }

    #[test]
    fn never_answers_what_rfc_1122_forbids() {
        let mut h = host();
        let u = |src, dst| udp(src, dst, 1, 9, b"x");
        // Broadcast and multicast destinations (IP or MAC).
        let bc = Ipv4Addr::new(10, 77, 0, 255);
        for (mac, dst) in [
            ([0xff; 6], Ipv4Addr::BROADCAST),
            ([0xff; 6], bc),
            ([1, 0, 0x5e, 0, 0, 1], Ipv4Addr::new(224, 0, 0, 1)),
            ([0xff; 6], US),
        ] {
            assert!(run(
                &mut h,
                &ip_frame(mac, PEER, dst, IpProtocol::Udp, &u(PEER, dst), 0, false)
            )
            .is_empty());
        }
        assert_eq!(h.counters().suppressed_broadcast, 4);
        // Echo to a broadcast: no reply either.
        assert!(run(
            &mut h,
            &ip_frame([0xff; 6], PEER, bc, IpProtocol::Icmp, &echo(b""), 0, false)
        )
        .is_empty());
        assert_eq!(h.counters().suppressed_broadcast, 5);
        // Invalid sources.
        for src in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(224, 1, 1, 1),
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(240, 0, 0, 1),
            US,
            bc,
            Ipv4Addr::new(10, 77, 0, 0),
        ] {
            assert!(run(
                &mut h,
                &ip_frame(MAC, src, US, IpProtocol::Udp, &u(src, US), 0, false)
            )
            .is_empty());
        }
        assert_eq!(h.counters().suppressed_invalid_source, 7);
        // A later fragment.
        assert!(run(
            &mut h,
            &ip_frame(
                MAC,
                PEER,
                US,
                IpProtocol::Udp,
                b"no header here..",
                8,
                false
            )
        )
        .is_empty());
        assert_eq!(h.counters().suppressed_fragment, 1);
        // A first fragment of UDP may be answered (RFC 1122 forbids only later ones).
        let first = ip_frame(
            MAC,
            PEER,
            US,
            IpProtocol::Udp,
            &udp(PEER, US, 1, 9, &[0; 16]),
            0,
            true,
        );
        assert_eq!(run(&mut h, &first).len(), 1);
        // ICMP errors are never answered.
        let mut err = vec![3u8, 3, 0, 0, 0, 0, 0, 0];
        err.extend_from_slice(&first[14..42]);
        let mut p = Icmpv4Packet::new_unchecked(&mut err[..]);
        p.fill_checksum();
        assert!(run(
            &mut h,
            &ip_frame(MAC, PEER, US, IpProtocol::Icmp, &err, 0, false)
        )
        .is_empty());
        assert_eq!(h.counters().icmp_errors_received, 1);
        // For another host (promiscuous delivery).
        let other = Ipv4Addr::new(10, 77, 0, 9);
        assert!(run(
            &mut h,
            &ip_frame(MAC, PEER, other, IpProtocol::Udp, &u(PEER, other), 0, false)
        )
        .is_empty());
        assert_eq!(h.counters().not_for_us, 1);
        assert_eq!(h.counters().udp_port_unreachable, 1);
    }

    #[test]
    fn unknown_protocol_gets_protocol_unreachable() {
        let mut h = host();
        let out = run(
            &mut h,
            &ip_frame(
                MAC,
                PEER,
                US,
                IpProtocol::Unknown(253),
                b"abcdefgh",
                0,
                false,
            ),
        );
        let ip = reply_ip(&out[0]);
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(
            (icmp.msg_type(), icmp.msg_code()),
            (Icmpv4Message::DstUnreachable, 2)
        );
        assert_eq!(h.counters().proto_unreachable, 1);
    }

    #[test]
    fn errors_are_rate_limited_and_counted() {
        let mut h = host();
        let f = udp_from_peer(1, 9, b"x");
        let t = Instant::now();
        let mut out = Vec::new();
        for _ in 0..80 {
            h.on_frame(t, &f, |_, _, _| SapLookup::default(), &mut out);
        }
        assert_eq!(out.len(), 50, "the burst");
        assert_eq!(h.counters().errors_rate_limited, 30);
        // A second later the bucket has refilled by the rate (100/s), capped at the burst.
        out.clear();
        for _ in 0..80 {
            h.on_frame(
                t + Duration::from_secs(1),
                &f,
                |_, _, _| SapLookup::default(),
                &mut out,
            );
        }
        assert_eq!(out.len(), 50);
        assert_eq!(h.counters().udp_port_unreachable, 100);
    }

    #[test]
    fn damaged_frames_are_counted_never_answered() {
        let mut h = host();
        let good = udp_from_peer(1, 9, b"payload");
        let mut bad_sum = good.clone();
        let n = bad_sum.len();
        bad_sum[n - 1] ^= 0xff; // UDP checksum no longer matches
        assert!(run(&mut h, &bad_sum).is_empty());
        assert_eq!(h.counters().malformed, 1);
        let mut bad_ip = good.clone();
        bad_ip[14 + 10] ^= 0xff; // IP header checksum
        assert!(run(&mut h, &bad_ip).is_empty());
        for cut in 0..good.len() {
            assert!(run(&mut h, &good[..cut]).is_empty(), "cut at {cut}");
        }
        let tcp_good = ip_frame(
            MAC,
            PEER,
            US,
            IpProtocol::Tcp,
            &tcp(PEER, US, true, None, false, b""),
            0,
            false,
        );
        for cut in 0..tcp_good.len() {
            assert!(run(&mut h, &tcp_good[..cut]).is_empty(), "cut at {cut}");
        }
        assert_eq!(
            h.counters().udp_port_unreachable + h.counters().tcp_resets,
            0
        );
        assert_eq!(
            h.counters().rx_frames,
            h.counters().malformed + h.counters().other_ethertype
        );
    }
}
