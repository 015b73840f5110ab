//! Ethernet II: a 14-byte header template (next-hop MAC, source MAC, ethertype) copied in front
//! of every frame; on receive, the destination MAC and the ethertype are checked.

use nemflow_rbuf::Extent;
use smoltcp::wire::{EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr};

use crate::channel::ETH_HEADER;
use crate::counters::{EthCounters, StackCounters};
use crate::error::{Error, Result};
use crate::layer::{Layer, Now, RxPacket, TxDst, TxPacket, Up};

/// The Ethernet layer over `L` (the channel).
#[derive(Debug)]
pub struct Ethernet<L> {
    lower: L,
    template: [u8; ETH_HEADER],
    src_mac: EthernetAddress,
    ethertype: u16,
    counters: EthCounters,
}

impl<L: Layer> Ethernet<L> {
    /// A layer sending from `src_mac` to `dst_mac` (all zeros if every packet names its next hop)
    /// frames of `ethertype`, and receiving frames of that ethertype for `src_mac`, broadcast or
    /// multicast.
    pub fn new(lower: L, src_mac: [u8; 6], dst_mac: Option<[u8; 6]>, ethertype: u16) -> Self {
        let mut template = [0u8; ETH_HEADER];
        EthernetRepr {
            src_addr: EthernetAddress(src_mac),
            dst_addr: EthernetAddress(dst_mac.unwrap_or([0; 6])),
            ethertype: EthernetProtocol::from(ethertype),
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut template[..]));
        Ethernet {
            lower,
            template,
            src_mac: EthernetAddress(src_mac),
            ethertype,
            counters: EthCounters::default(),
        }
    }

    /// The header template.
    pub fn template(&self) -> &[u8; ETH_HEADER] {
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
}

/// What the receive check decided.
enum Verdict {
    Up([u8; 6]),
    Truncated,
    WrongDst,
    WrongType,
}

impl<L: Layer> Layer for Ethernet<L> {
    fn max_data_len(&self, dst: &TxDst) -> usize {
        self.lower.max_data_len(dst).saturating_sub(ETH_HEADER)
    }

    fn frames_needed(&self, len: usize, dst: &TxDst) -> usize {
        self.lower.frames_needed(len + ETH_HEADER, dst)
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
        Ok(self.lower.alloc(len + ETH_HEADER, dst)?.map(|mut p| {
            p.first += ETH_HEADER as u32;
            p.rest += ETH_HEADER as u32;
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
        let h = ETH_HEADER as u32;
        for i in 0..pkt.frames.len() {
            let f = pkt.frames[i];
            let off = pkt.offset(i).checked_sub(h).ok_or_else(|| {
                Error::InvalidSetup("packet has no room for the Ethernet header".into())
            })?;
            let hdr = self.lower.tx_bytes_mut(Extent::new(f.offset + off, h))?;
            hdr.copy_from_slice(&self.template);
            if let Some(mac) = pkt.dst.mac {
                hdr[..6].copy_from_slice(&mac);
            }
        }
        pkt.first -= h;
        pkt.rest -= h;
        self.lower.push(pkt)
    }

    fn pop(&mut self, now: &mut Now<'_>) -> Result<Option<Up>> {
        loop {
            let mut pkt = match self.lower.pop(now)? {
                None => return Ok(None),
                Some(Up::Packet(p)) => p,
                Some(up @ Up::Icmp(_)) => return Ok(Some(up)),
            };
            let verdict = {
                let bytes = self.lower.rx_bytes(&pkt).get(pkt.start..pkt.end);
                match bytes.map(EthernetFrame::new_checked) {
                    None | Some(Err(_)) => Verdict::Truncated,
                    Some(Ok(frame)) => {
                        let dst = frame.dst_addr();
                        if dst != self.src_mac && !dst.is_multicast() {
                            Verdict::WrongDst
                        } else if u16::from(frame.ethertype()) != self.ethertype {
                            Verdict::WrongType
                        } else {
                            Verdict::Up(frame.src_addr().0)
                        }
                    }
                }
            };
            match verdict {
                Verdict::Up(src) => {
                    pkt.start += ETH_HEADER;
                    pkt.meta.src_mac = src;
                    self.counters.rx_up += 1;
                    return Ok(Some(Up::Packet(pkt)));
                }
                Verdict::Truncated => self.counters.truncated += 1,
                Verdict::WrongDst => self.counters.wrong_dst += 1,
                Verdict::WrongType => self.counters.wrong_ethertype += 1,
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
        out.eth = self.counters;
    }
}
