//! UDP: an 8-byte header template whose checksum starts from the precomputed pseudo-header sum;
//! per datagram the length, the destination (unconnected flows) and the payload are added. On
//! receive: length and checksum checks (a zero checksum is accepted, RFC 768), port matching, and
//! matching of ICMP errors to this flow by the quoted UDP header.

use std::net::{Ipv4Addr, SocketAddrV4};

use nemflow_proto::flow::ip_proto;
use nemflow_rbuf::Extent;
use smoltcp::wire::{IpAddress, UdpPacket, UDP_HEADER_LEN};

use crate::checksum::Csum;
use crate::counters::{StackCounters, UdpCounters};
use crate::error::{Error, Result};
use crate::icmp::IcmpReport;
use crate::layer::{Layer, Now, RxPacket, TxDst, TxPacket, Up};

/// UDP header bytes.
pub const UDP_HEADER: usize = UDP_HEADER_LEN;

/// Largest UDP payload over IPv4: 65 535 − 20 − 8.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// The UDP layer over `L` (IPv4).
#[derive(Debug)]
pub struct Udp<L> {
    lower: L,
    local: SocketAddrV4,
    remote: Option<SocketAddrV4>,
    template: [u8; UDP_HEADER],
    /// Pseudo-header source address and protocol, plus the source port.
    base_sum: Csum,
    counters: UdpCounters,
}

enum Verdict {
    Up {
        src_port: u16,
        len: usize,
        no_checksum: bool,
    },
    BadLen,
    BadChecksum,
    WrongPort,
    WrongSrc,
}

impl<L: Layer> Udp<L> {
    /// A layer for `local`, connected to `remote` if given.
    pub fn new(lower: L, local: SocketAddrV4, remote: Option<SocketAddrV4>) -> Self {
        let mut template = [0u8; UDP_HEADER];
        let mut p = UdpPacket::new_unchecked(&mut template[..]);
        p.set_src_port(local.port());
        p.set_dst_port(remote.map_or(0, |r| r.port()));
        p.set_len(0);
        p.set_checksum(0);
        let mut base_sum = Csum::new();
        base_sum.addr(*local.ip());
        base_sum.word(u16::from(ip_proto::UDP));
        base_sum.word(local.port());
        Udp {
            lower,
            local,
            remote,
            template,
            base_sum,
            counters: UdpCounters::default(),
        }
    }

    /// The header template (length and checksum zero; destination port zero when unconnected).
    pub fn template(&self) -> &[u8; UDP_HEADER] {
        &self.template
    }

    /// The layer below.
    pub fn lower(&self) -> &L {
        &self.lower
    }

    /// The layer below, mutably.
    pub fn lower_mut(&mut self) -> &mut L {
        &mut self.lower
    }

    /// Whether an ICMP report quotes a datagram this flow sent.
    fn is_ours(&self, rep: &IcmpReport) -> bool {
        let p = UdpPacket::new_unchecked(&rep.quoted_l4[..]);
        p.src_port() == self.local.port()
            && self
                .remote
                .is_none_or(|r| *r.ip() == rep.quoted_dst && r.port() == p.dst_port())
    }

    fn check(&self, bytes: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Verdict {
        let Ok(p) = UdpPacket::new_checked(bytes) else {
            return Verdict::BadLen;
        };
        if p.dst_port() != self.local.port() {
            return Verdict::WrongPort;
        }
        if self.remote.is_some_and(|r| r.port() != p.src_port()) {
            return Verdict::WrongSrc;
        }
        let no_checksum = p.checksum() == 0;
        if !no_checksum && !p.verify_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst)) {
            return Verdict::BadChecksum;
        }
        Verdict::Up {
            src_port: p.src_port(),
            len: usize::from(p.len()),
            no_checksum,
        }
    }
}

impl<L: Layer> Layer for Udp<L> {
    fn max_data_len(&self, dst: &TxDst) -> usize {
        self.lower
            .max_data_len(dst)
            .saturating_sub(UDP_HEADER)
            .min(MAX_UDP_PAYLOAD)
    }

    fn frames_needed(&self, len: usize, dst: &TxDst) -> usize {
        self.lower.frames_needed(len + UDP_HEADER, dst)
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
        Ok(self.lower.alloc(len + UDP_HEADER, dst)?.map(|mut p| {
            p.first += UDP_HEADER as u32;
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
        let h = UDP_HEADER as u32;
        let mut sum = self.base_sum;
        let mut payload = 0usize;
        for i in 0..pkt.frames.len() {
            if let Some(seg) = pkt.segment(i) {
                sum.bytes(self.lower.tx_bytes_mut(seg)?);
                payload += seg.len as usize;
            }
        }
        let dst_ip = pkt
            .dst
            .ip
            .or(self.remote.map(|r| *r.ip()))
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let dst_port = pkt.dst.port.or(self.remote.map(|r| r.port())).unwrap_or(0);
        let udp_len = (UDP_HEADER + payload) as u16;
        sum.addr(dst_ip);
        sum.word(dst_port);
        // The length counts twice: in the pseudo-header and in the header.
        sum.word(udp_len);
        sum.word(udp_len);
        let ck = match sum.finish() {
            0 => 0xffff,
            c => c,
        };
        let f = pkt.frames[0];
        let start = pkt
            .first
            .checked_sub(h)
            .ok_or_else(|| Error::InvalidSetup("packet has no room for the UDP header".into()))?;
        let hdr = self.lower.tx_bytes_mut(Extent::new(f.offset + start, h))?;
        hdr.copy_from_slice(&self.template);
        let mut p = UdpPacket::new_unchecked(&mut hdr[..]);
        p.set_dst_port(dst_port);
        p.set_len(udp_len);
        p.set_checksum(ck);
        pkt.first -= h;
        self.counters.tx_datagrams += 1;
        self.counters.tx_bytes += payload as u64;
        self.lower.push(pkt)
    }

    fn pop(&mut self, now: &mut Now<'_>) -> Result<Option<Up>> {
        loop {
            let mut pkt = match self.lower.pop(now)? {
                None => return Ok(None),
                Some(Up::Packet(p)) => p,
                Some(Up::Icmp(rep)) => {
                    if self.is_ours(&rep) {
                        self.counters.icmp_delivered += 1;
                        return Ok(Some(Up::Icmp(rep)));
                    }
                    self.counters.icmp_not_for_flow += 1;
                    continue;
                }
            };
            let verdict = match self.lower.rx_bytes(&pkt).get(pkt.start..pkt.end) {
                Some(b) => self.check(b, pkt.meta.src_ip, pkt.meta.dst_ip),
                None => Verdict::BadLen,
            };
            match verdict {
                Verdict::Up {
                    src_port,
                    len,
                    no_checksum,
                } => {
                    if no_checksum {
                        self.counters.no_checksum += 1;
                    }
                    self.counters.rx_up += 1;
                    pkt.end = pkt.start + len;
                    pkt.start += UDP_HEADER;
                    pkt.meta.src_port = src_port;
                    return Ok(Some(Up::Packet(pkt)));
                }
                Verdict::BadLen => self.counters.bad_len += 1,
                Verdict::BadChecksum => self.counters.bad_checksum += 1,
                Verdict::WrongPort => self.counters.wrong_port += 1,
                Verdict::WrongSrc => self.counters.wrong_src += 1,
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
        out.udp = self.counters;
    }
}
