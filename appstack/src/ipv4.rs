//! IPv4: a 20-byte header template whose checksum is precomputed except for the per-packet words
//! (total length, identification, flags and fragment offset, destination); fragmentation on send
//! when a datagram exceeds the path MTU (one frame per fragment); on receive, header checks,
//! reassembly ([`crate::reasm`]) and ICMP error parsing ([`crate::icmp`]).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use nemflow_rbuf::Extent;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv4Repr, IPV4_HEADER_LEN};

use crate::checksum::Csum;
use crate::counters::{IcmpCounters, Ipv4Counters, StackCounters};
use crate::error::{Error, Result};
use crate::icmp::{self, IcmpDrop};
use crate::layer::{Layer, Now, RxBuf, RxPacket, TxDst, TxPacket, Up};
use crate::reasm::{FragKey, Reassembler, ReassemblyLimits, MAX_PAYLOAD};

/// IPv4 header bytes this stack sends (no options).
pub const IP_HEADER: usize = IPV4_HEADER_LEN;

/// Smallest path MTU an ICMP "fragmentation needed" may set (Linux's `min_pmtu`): a forged
/// message cannot make the flow send tiny fragments.
pub const MIN_PATH_MTU: u16 = 552;

/// Path MTUs remembered per destination at most (unconnected flows).
const PMTU_ENTRIES: usize = 64;

/// IPv4 settings of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Config {
    /// Time to live of sent datagrams.
    pub ttl: u8,
    /// Set DF on sent datagrams; a datagram larger than the path MTU is then refused
    /// (`TooLong`) instead of fragmented.
    pub dont_fragment: bool,
    /// First identification used (later ones count up).
    pub initial_id: u16,
    /// Reassembly limits.
    pub reassembly: ReassemblyLimits,
}

impl Default for Ipv4Config {
    fn default() -> Self {
        Ipv4Config {
            ttl: 64,
            dont_fragment: false,
            initial_id: 0,
            reassembly: ReassemblyLimits::default(),
        }
    }
}

/// The IPv4 layer over `L` (Ethernet).
#[derive(Debug)]
pub struct Ipv4<L> {
    lower: L,
    local: Ipv4Addr,
    remote: Option<Ipv4Addr>,
    subnet_broadcast: Ipv4Addr,
    proto: u8,
    template: [u8; IP_HEADER],
    /// Sum of the template's words except length, id, flags/offset, checksum and destination.
    base_sum: Csum,
    cfg: Ipv4Config,
    next_id: u16,
    link_mtu: usize,
    pmtu: HashMap<Ipv4Addr, u16>,
    reasm: Reassembler,
    counters: Ipv4Counters,
    icmp_counters: IcmpCounters,
}

/// How a datagram of `len` payload bytes is cut for `mtu`: bytes per fragment, fragments.
fn plan(len: usize, mtu: usize) -> (usize, usize) {
    if IP_HEADER + len <= mtu {
        return (len, 1);
    }
    let per = ((mtu.saturating_sub(IP_HEADER)) / 8 * 8).max(8);
    (per, len.div_ceil(per))
}

/// What the receive checks decided about one frame.
enum Verdict {
    Up {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        start: usize,
        end: usize,
    },
    Fragment {
        key: FragKey,
        offset: usize,
        more: bool,
        start: usize,
        end: usize,
        supported: bool,
    },
    Icmp(std::result::Result<icmp::IcmpReport, IcmpDrop>),
    Truncated,
    BadVersion,
    BadChecksum,
    WrongDst,
    WrongSrc,
    WrongProto,
}

impl<L: Layer> Ipv4<L> {
    /// A layer for `proto` (e.g. UDP) from `local`, connected to `remote` if given (then only
    /// datagrams from it are accepted), on a link of `link_mtu` with subnet `subnet`.
    pub fn new(
        lower: L,
        local: Ipv4Addr,
        remote: Option<Ipv4Addr>,
        subnet: (Ipv4Addr, u8),
        proto: u8,
        link_mtu: u16,
        cfg: Ipv4Config,
    ) -> Result<Self> {
        let link_mtu = usize::from(link_mtu).min(lower.max_data_len(&TxDst::default()));
        if link_mtu < 68 {
            return Err(Error::InvalidSetup(format!(
                "IP MTU {link_mtu} is below the IPv4 minimum of 68"
            )));
        }
        let mut template = [0u8; IP_HEADER];
        let mut p = Ipv4Packet::new_unchecked(&mut template[..]);
        Ipv4Repr {
            src_addr: local,
            dst_addr: remote.unwrap_or(Ipv4Addr::UNSPECIFIED),
            next_header: IpProtocol::from(proto),
            payload_len: 0,
            hop_limit: cfg.ttl,
        }
        .emit(&mut p, &ChecksumCapabilities::ignored());
        p.set_dont_frag(cfg.dont_fragment);
        p.set_total_len(0);
        p.set_dst_addr(Ipv4Addr::UNSPECIFIED);
        let mut base_sum = Csum::new();
        base_sum.bytes(&template);
        if let Some(r) = remote {
            Ipv4Packet::new_unchecked(&mut template[..]).set_dst_addr(r);
        }
        let prefix = subnet.1.min(32);
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        };
        let subnet_broadcast = Ipv4Addr::from(u32::from(subnet.0) | !mask);
        Ok(Ipv4 {
            lower,
            local,
            remote,
            subnet_broadcast,
            proto,
            template,
            base_sum,
            next_id: cfg.initial_id,
            cfg,
            link_mtu,
            pmtu: HashMap::new(),
            reasm: Reassembler::new(cfg.reassembly),
            counters: Ipv4Counters::default(),
            icmp_counters: IcmpCounters::default(),
        })
    }

    /// The header template (checksum field zero; destination zero for unconnected flows).
    pub fn template(&self) -> &[u8; IP_HEADER] {
        &self.template
    }

    /// The link MTU in use (the FIB's, capped by the channel's buffers).
    pub fn link_mtu(&self) -> usize {
        self.link_mtu
    }

    /// The path MTU towards `dst`.
    pub fn path_mtu(&self, dst: Ipv4Addr) -> usize {
        if self.pmtu.is_empty() {
            return self.link_mtu;
        }
        self.pmtu
            .get(&dst)
            .map_or(self.link_mtu, |m| usize::from(*m).min(self.link_mtu))
    }

    /// Lowers the path MTU towards `dst` after an ICMP "fragmentation needed" (clamped to
    /// [`MIN_PATH_MTU`]..=link MTU); returns the MTU now in use.
    pub fn update_path_mtu(&mut self, dst: Ipv4Addr, mtu: u16) -> u16 {
        let link = u16::try_from(self.link_mtu).unwrap_or(u16::MAX);
        let m = mtu.max(MIN_PATH_MTU).min(link);
        let cur = u16::try_from(self.path_mtu(dst)).unwrap_or(u16::MAX);
        if m < cur {
            if self.pmtu.len() >= PMTU_ENTRIES && !self.pmtu.contains_key(&dst) {
                // Bounded: forget the largest entry (the least useful to remember).
                if let Some(k) = self.pmtu.iter().max_by_key(|(_, v)| **v).map(|(k, _)| *k) {
                    self.pmtu.remove(&k);
                }
            }
            self.pmtu.insert(dst, m);
            m
        } else {
            cur
        }
    }

    /// Whether DF is set on sent datagrams.
    pub fn dont_fragment(&self) -> bool {
        self.cfg.dont_fragment
    }

    /// Reassembly state (for tests and statistics).
    pub fn reassembler(&self) -> &Reassembler {
        &self.reasm
    }

    /// The layer below.
    pub fn lower(&self) -> &L {
        &self.lower
    }

    /// The layer below, mutably.
    pub fn lower_mut(&mut self) -> &mut L {
        &mut self.lower
    }

    fn dst_of(&self, dst: &TxDst) -> Ipv4Addr {
        dst.ip.or(self.remote).unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    fn accepts_dst(&self, dst: Ipv4Addr) -> bool {
        dst == self.local
            || dst.is_broadcast()
            || dst == self.subnet_broadcast
            || dst.is_multicast()
    }

    fn check(&self, bytes: &[u8]) -> Verdict {
        if bytes.len() < IP_HEADER {
            return Verdict::Truncated;
        }
        let ip = Ipv4Packet::new_unchecked(bytes);
        if ip.version() != 4 {
            return Verdict::BadVersion;
        }
        if ip.check_len().is_err() {
            return Verdict::Truncated;
        }
        if !ip.verify_checksum() {
            return Verdict::BadChecksum;
        }
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        if !self.accepts_dst(dst) {
            return Verdict::WrongDst;
        }
        if self.remote.is_some_and(|r| r != src) {
            return Verdict::WrongSrc;
        }
        let proto = u8::from(ip.next_header());
        let start = usize::from(ip.header_len());
        // Trim Ethernet padding: the datagram ends at its total length.
        let end = usize::from(ip.total_len());
        let fragment = ip.more_frags() || ip.frag_offset() != 0;
        if fragment {
            return Verdict::Fragment {
                key: FragKey {
                    src,
                    dst,
                    proto,
                    id: ip.ident(),
                },
                offset: usize::from(ip.frag_offset()),
                more: ip.more_frags(),
                start,
                end,
                supported: proto == self.proto,
            };
        }
        if proto == self.proto {
            Verdict::Up {
                src,
                dst,
                start,
                end,
            }
        } else if proto == nemflow_proto::flow::ip_proto::ICMP {
            let r = icmp::parse(&bytes[start..end], src);
            Verdict::Icmp(match r {
                Ok(rep) if rep.quoted_src != self.local || rep.quoted_proto != self.proto => {
                    Err(IcmpDrop::NotForFlow)
                }
                r => r,
            })
        } else {
            Verdict::WrongProto
        }
    }
}

impl<L: Layer> Layer for Ipv4<L> {
    fn max_data_len(&self, dst: &TxDst) -> usize {
        if self.cfg.dont_fragment {
            self.path_mtu(self.dst_of(dst)) - IP_HEADER
        } else {
            MAX_PAYLOAD
        }
    }

    fn frames_needed(&self, len: usize, dst: &TxDst) -> usize {
        plan(len, self.path_mtu(self.dst_of(dst))).1
    }

    fn tx_free(&mut self) -> Result<usize> {
        self.lower.tx_free()
    }

    fn tx_buffers(&self) -> usize {
        self.lower.tx_buffers()
    }

    fn alloc(&mut self, len: usize, dst: TxDst) -> Result<Option<TxPacket>> {
        let max = self.max_data_len(&dst);
        if len > max {
            return Err(Error::TooLong { len, max });
        }
        let (per, n) = plan(len, self.path_mtu(self.dst_of(&dst)));
        let mut out: Option<TxPacket> = None;
        for i in 0..n {
            let this = if i + 1 == n { len - per * i } else { per };
            let sub = match self.lower.alloc(IP_HEADER + this, dst) {
                Ok(Some(p)) => p,
                other => {
                    if let Some(p) = out {
                        self.lower.free(p);
                    }
                    return other.map(|_| None);
                }
            };
            match &mut out {
                None => out = Some(sub),
                Some(p) => p.frames.extend(sub.frames),
            }
        }
        Ok(out.map(|mut p| {
            p.first += IP_HEADER as u32;
            p.rest = p.first;
            p
        }))
    }

    fn free(&mut self, pkt: TxPacket) {
        self.lower.free(pkt);
    }

    fn tx_bytes_mut(&mut self, extent: Extent) -> Result<&mut [u8]> {
        self.lower.tx_bytes_mut(extent)
    }

    fn push(&mut self, mut pkt: TxPacket) -> Result<()> {
        let h = IP_HEADER as u32;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let dst = self.dst_of(&pkt.dst);
        let n = pkt.frames.len();
        let mut at = 0usize;
        for i in 0..n {
            let f = pkt.frames[i];
            let off = pkt.offset(i);
            let start = off.checked_sub(h).ok_or_else(|| {
                Error::InvalidSetup("packet has no room for the IPv4 header".into())
            })?;
            let data_len = f.len.saturating_sub(off) as usize;
            let hdr = self.lower.tx_bytes_mut(Extent::new(f.offset + start, h))?;
            hdr.copy_from_slice(&self.template);
            let mut ip = Ipv4Packet::new_unchecked(&mut hdr[..]);
            let total = (IP_HEADER + data_len) as u16;
            ip.set_total_len(total);
            ip.set_ident(id);
            ip.set_more_frags(i + 1 < n);
            ip.set_frag_offset(at as u16);
            ip.set_dst_addr(dst);
            let mut sum = self.base_sum;
            sum.word(total);
            sum.word(id);
            sum.word(u16::from_be_bytes([hdr[6], hdr[7]]));
            sum.addr(dst);
            Ipv4Packet::new_unchecked(&mut hdr[..]).set_checksum(sum.finish());
            at += data_len;
        }
        self.counters.tx_datagrams += 1;
        if n > 1 {
            self.counters.tx_fragmented += 1;
            self.counters.tx_fragments += n as u64;
        }
        pkt.first -= h;
        pkt.rest -= h;
        self.lower.push(pkt)
    }

    fn pop(&mut self, now: &mut Now<'_>) -> Result<Option<Up>> {
        if self.reasm.in_progress() > 0 {
            self.reasm.expire(now.get());
        }
        loop {
            let mut pkt = match self.lower.pop(now)? {
                None => return Ok(None),
                Some(Up::Packet(p)) => p,
                Some(up @ Up::Icmp(_)) => return Ok(Some(up)),
            };
            let verdict = match self.lower.rx_bytes(&pkt).get(pkt.start..pkt.end) {
                Some(bytes) => self.check(bytes),
                None => Verdict::Truncated,
            };
            match verdict {
                Verdict::Up {
                    src,
                    dst,
                    start,
                    end,
                } => {
                    self.counters.rx_up += 1;
                    pkt.end = pkt.start + end;
                    pkt.start += start;
                    pkt.meta.src_ip = src;
                    pkt.meta.dst_ip = dst;
                    return Ok(Some(Up::Packet(pkt)));
                }
                Verdict::Fragment {
                    key,
                    offset,
                    more,
                    start,
                    end,
                    supported,
                } => {
                    self.counters.fragments += 1;
                    let done = if supported {
                        let t = now.get();
                        let whole = self.lower.rx_bytes(&pkt);
                        let data = whole
                            .get(pkt.start + start..pkt.start + end)
                            .unwrap_or_default();
                        self.reasm.insert(key, offset, more, data, t)
                    } else {
                        self.reasm.count_unsupported();
                        None
                    };
                    let meta = pkt.meta;
                    self.lower.release(pkt);
                    if let Some(v) = done {
                        let len = v.len();
                        let mut out = RxPacket {
                            buf: RxBuf::Owned(v),
                            start: 0,
                            end: len,
                            meta,
                        };
                        out.meta.src_ip = key.src;
                        out.meta.dst_ip = key.dst;
                        return Ok(Some(Up::Packet(out)));
                    }
                    continue;
                }
                Verdict::Icmp(r) => {
                    self.counters.icmp += 1;
                    let out = match r {
                        Ok(rep) => {
                            self.icmp_counters.passed_up += 1;
                            Some(rep)
                        }
                        Err(IcmpDrop::Malformed) => {
                            self.icmp_counters.malformed += 1;
                            None
                        }
                        Err(IcmpDrop::BadChecksum) => {
                            self.icmp_counters.bad_checksum += 1;
                            None
                        }
                        Err(IcmpDrop::Ignored) => {
                            self.icmp_counters.ignored += 1;
                            None
                        }
                        Err(IcmpDrop::NotForFlow) => {
                            self.icmp_counters.not_for_flow += 1;
                            None
                        }
                    };
                    self.lower.release(pkt);
                    if let Some(rep) = out {
                        return Ok(Some(Up::Icmp(rep)));
                    }
                    continue;
                }
                Verdict::Truncated => self.counters.truncated += 1,
                Verdict::BadVersion => self.counters.bad_version += 1,
                Verdict::BadChecksum => self.counters.bad_checksum += 1,
                Verdict::WrongDst => self.counters.wrong_dst += 1,
                Verdict::WrongSrc => self.counters.wrong_src += 1,
                Verdict::WrongProto => self.counters.wrong_proto += 1,
            }
            self.lower.release(pkt);
        }
    }

    fn rx_bytes<'a>(&'a self, pkt: &'a RxPacket) -> &'a [u8] {
        self.lower.rx_bytes(pkt)
    }

    fn release(&mut self, pkt: RxPacket) {
        self.lower.release(pkt);
    }

    fn rx_ready(&mut self) -> Result<bool> {
        self.lower.rx_ready()
    }

    fn counters(&self, out: &mut StackCounters) {
        self.lower.counters(out);
        out.ipv4 = self.counters;
        out.reasm = self.reasm.counters();
        out.icmp = self.icmp_counters;
    }
}
