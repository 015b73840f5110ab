//! A smoke run: bring the port up and exchange frames with the host on the other end of the
//! link — resolve its MAC with ARP, then ping it — printing what happened.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Packet, Ipv4Repr,
};

use crate::port::{Frame, Port};

/// What the smoke run saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmokeReport {
    /// The peer's MAC address, from its ARP reply.
    pub peer_mac: [u8; 6],
    /// Round-trip time of the ARP exchange.
    pub arp_rtt: Duration,
    /// Round-trip times of the echo requests that were answered.
    pub ping_rtts: Vec<Duration>,
    /// Frames sent.
    pub sent: u64,
    /// Frames received (including unrelated ones).
    pub received: u64,
}

/// Why a smoke run failed.
#[derive(Debug, thiserror::Error)]
pub enum SmokeError {
    /// No buffer to send from.
    #[error("no transmit buffer available")]
    NoBuffer,
    /// The port did not take the frame.
    #[error("the port did not accept a frame for transmission")]
    TxFull,
    /// The peer did not answer ARP.
    #[error("no ARP reply from {0} within {1:?}: is the peer's interface up with that address?")]
    NoArpReply(Ipv4Addr, Duration),
    /// The peer did not answer pings.
    #[error("no echo reply from {0} within {1:?}")]
    NoEchoReply(Ipv4Addr, Duration),
}

const ECHO_IDENT: u16 = 0x4e46; // "NF"

/// ARP for `peer`, then send `pings` echo requests to it, waiting up to `timeout` for each.
pub fn run<P: Port>(
    port: &mut P,
    local_ip: Ipv4Addr,
    peer: Ipv4Addr,
    pings: u16,
    timeout: Duration,
) -> Result<SmokeReport, SmokeError> {
    let mac = EthernetAddress(port.mac());
    let mut report = SmokeReport {
        peer_mac: [0; 6],
        arp_rtt: Duration::ZERO,
        ping_rtts: Vec::new(),
        sent: 0,
        received: 0,
    };

    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: mac,
        source_protocol_addr: local_ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: peer,
    };
    let eth = EthernetRepr {
        src_addr: mac,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let start = Instant::now();
    send(
        port,
        &mut report,
        eth.buffer_len() + arp.buffer_len(),
        |buf| {
            let mut frame = EthernetFrame::new_unchecked(buf);
            eth.emit(&mut frame);
            arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
        },
    )?;
    let peer_mac = wait_for(port, &mut report, timeout, |bytes| {
        let frame = EthernetFrame::new_checked(bytes).ok()?;
        if frame.ethertype() != EthernetProtocol::Arp {
            return None;
        }
        match ArpRepr::parse(&ArpPacket::new_checked(frame.payload()).ok()?).ok()? {
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr,
                source_protocol_addr,
                ..
            } if source_protocol_addr == peer => Some(source_hardware_addr),
            _ => None,
        }
    })
    .ok_or(SmokeError::NoArpReply(peer, timeout))?;
    report.arp_rtt = start.elapsed();
    report.peer_mac = peer_mac.0;

    for seq in 0..pings {
        let payload = [0xa5u8; 56];
        let icmp = Icmpv4Repr::EchoRequest {
            ident: ECHO_IDENT,
            seq_no: seq,
            data: &payload,
        };
        let ip = Ipv4Repr {
            src_addr: local_ip,
            dst_addr: peer,
            next_header: IpProtocol::Icmp,
            payload_len: icmp.buffer_len(),
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: mac,
            dst_addr: peer_mac,
            ethertype: EthernetProtocol::Ipv4,
        };
        let caps = ChecksumCapabilities::default();
        let start = Instant::now();
        send(
            port,
            &mut report,
            eth.buffer_len() + ip.buffer_len() + icmp.buffer_len(),
            |buf| {
                let mut frame = EthernetFrame::new_unchecked(buf);
                eth.emit(&mut frame);
                let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
                ip.emit(&mut packet, &caps);
                icmp.emit(
                    &mut Icmpv4Packet::new_unchecked(packet.payload_mut()),
                    &caps,
                );
            },
        )?;
        wait_for(port, &mut report, timeout, |bytes| {
            let frame = EthernetFrame::new_checked(bytes).ok()?;
            let packet = Ipv4Packet::new_checked(frame.payload()).ok()?;
            if packet.next_header() != IpProtocol::Icmp || packet.src_addr() != peer {
                return None;
            }
            let icmp = Icmpv4Packet::new_checked(packet.payload()).ok()?;
            match Icmpv4Repr::parse(&icmp, &caps).ok()? {
                Icmpv4Repr::EchoReply { ident, seq_no, .. }
                    if ident == ECHO_IDENT && seq_no == seq =>
                {
                    Some(())
                }
                _ => None,
            }
        })
        .ok_or(SmokeError::NoEchoReply(peer, timeout))?;
        report.ping_rtts.push(start.elapsed());
    }
    Ok(report)
}

fn send<P: Port>(
    port: &mut P,
    report: &mut SmokeReport,
    len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Result<(), SmokeError> {
    // Pad to the Ethernet minimum of 60 bytes (without FCS).
    let mut frame = port.alloc(len.max(60)).ok_or(SmokeError::NoBuffer)?;
    let bytes = frame.bytes_mut();
    bytes.fill(0);
    fill(&mut bytes[..len]);
    let mut burst = vec![frame];
    if port.send(&mut burst) != 1 {
        return Err(SmokeError::TxFull);
    }
    report.sent += 1;
    Ok(())
}

fn wait_for<P: Port, T>(
    port: &mut P,
    report: &mut SmokeReport,
    timeout: Duration,
    mut matches: impl FnMut(&[u8]) -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut rx = Vec::new();
    while Instant::now() < deadline {
        rx.clear();
        report.received += port.recv(&mut rx, 32) as u64;
        if let Some(found) = rx.iter().find_map(|f| matches(f.bytes())) {
            return Some(found);
        }
        if rx.is_empty() {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::MemPort;

    #[test]
    fn silent_peer_is_a_clear_error() {
        let (mut port, peer) = MemPort::new([2, 0, 0, 0, 0, 1]);
        let err = run(
            &mut port,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            1,
            Duration::from_millis(20),
        )
        .unwrap_err();
        assert!(matches!(err, SmokeError::NoArpReply(..)), "{err}");
        let sent = peer.take_sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(&sent[0][12..14], &[0x08, 0x06], "an ARP request went out");
        assert_eq!(sent[0].len(), 60, "padded to the Ethernet minimum");
    }
}
