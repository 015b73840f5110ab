//! Test helpers (feature `test-utils`): playing the flow manager (channels and FIBs for a pair of
//! hosts) and the driver (moving frames from one flow's TX channel into another's RX channel, or
//! taking and injecting raw frames), and the fuzz body for the receive path.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use nemflow_proto::{Fib, FlowId};
use nemflow_rbuf::{create, rmm, tmm, ChannelSpec, IoRec};

use crate::{FlowChannels, FlowConfig, Ipv4Config, RawFlow, ReassemblyLimits, Result, UdpFlow};

/// MAC of test host A.
pub const MAC_A: [u8; 6] = [0x02, 0x4e, 0x46, 0x00, 0x00, 0x0a];
/// MAC of test host B.
pub const MAC_B: [u8; 6] = [0x02, 0x4e, 0x46, 0x00, 0x00, 0x0b];
/// Address of test host A.
pub const IP_A: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
/// Address of test host B.
pub const IP_B: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
/// The test hosts' UDP ports.
pub const PORT_A: u16 = 5001;
/// The test hosts' UDP ports.
pub const PORT_B: u16 = 6002;

/// A channel geometry for tests: `slots` buffers of 2048 bytes (frames up to 1500 + 14).
pub fn spec(slots: u32) -> ChannelSpec {
    ChannelSpec {
        data_bytes: (u64::from(slots) * 2048).div_ceil(4096) * 4096,
        slots,
        max_packet_bytes: 2048,
        hugetlb: false,
    }
}

/// A FIB for a flow from `local` (MAC `mac`) on 10.9.0.0/24 with IP MTU `mtu`; connected to
/// `remote` (next hop `peer_mac`) if given.
pub fn fib(
    local: SocketAddrV4,
    mac: [u8; 6],
    remote: Option<SocketAddrV4>,
    peer_mac: Option<[u8; 6]>,
    mtu: u16,
) -> Fib {
    Fib {
        flow: FlowId(1),
        local,
        remote,
        src_mac: mac,
        next_hop_mac: peer_mac,
        subnet: (Ipv4Addr::new(10, 9, 0, 0), 24),
        gateway: None,
        mtu,
    }
}

/// A flow config with a fixed first IP identification (golden bytes) and `limits`.
pub fn config(initial_id: u16, limits: ReassemblyLimits) -> FlowConfig {
    FlowConfig {
        ip: Ipv4Config {
            initial_id,
            reassembly: limits,
            ..Ipv4Config::default()
        },
        ..FlowConfig::default()
    }
}

/// The driver's ends of one flow's channels.
#[derive(Debug)]
pub struct DriverEnds {
    /// Transmit channel, consumer side.
    pub tx: tmm::Consumer,
    /// Receive channel, producer side.
    pub rx: rmm::Producer,
    /// Frames dropped because the flow had no empty RX buffer (or they were too large).
    pub rx_dropped: u64,
    /// Largest frame the RX buffers hold.
    pub max_frame: usize,
}

/// Creates a flow's two channels (`slots` buffers each) and attaches the app's ends.
pub fn channels(fib: Fib, slots: u32) -> Result<(FlowChannels, DriverEnds)> {
    channels_with(fib, spec(slots))
}

/// Creates a flow's two channels of geometry `s` and attaches the app's ends.
pub fn channels_with(fib: Fib, s: ChannelSpec) -> Result<(FlowChannels, DriverEnds)> {
    let tx = create(&s)?;
    let rx = create(&s)?;
    let drv = DriverEnds {
        tx: tmm::Consumer::attach(&s, tx.with_read_only_data()?)?,
        rx: rmm::Producer::attach(&s, rx.try_clone()?)?,
        rx_dropped: 0,
        max_frame: s.max_packet_bytes as usize,
    };
    let app = FlowChannels::attach(fib, &s, tx, &s, rx.with_read_only_data()?)?;
    Ok((app, drv))
}

/// The bare app-side endpoints of a flow's channels (no stack), with the driver ends: the
/// benchmark's anchor for what the channel alone costs.
pub fn bare_endpoints(slots: u32) -> Result<(tmm::Producer, rmm::Consumer, DriverEnds)> {
    let s = spec(slots);
    let tx = create(&s)?;
    let rx = create(&s)?;
    let drv = DriverEnds {
        tx: tmm::Consumer::attach(&s, tx.with_read_only_data()?)?,
        rx: rmm::Producer::attach(&s, rx.try_clone()?)?,
        rx_dropped: 0,
        max_frame: s.max_packet_bytes as usize,
    };
    let app_tx = tmm::Producer::attach(&s, tx)?;
    let mut app_rx = rmm::Consumer::attach(&s, rx.with_read_only_data()?)?;
    app_rx.post_free()?;
    Ok((app_tx, app_rx, drv))
}

/// A UDP flow over fresh channels, with its driver ends.
pub fn udp_flow(fib: Fib, slots: u32, cfg: FlowConfig) -> Result<(UdpFlow, DriverEnds)> {
    let (ch, drv) = channels(fib, slots)?;
    Ok((UdpFlow::new(ch, cfg)?, drv))
}

/// A raw flow over fresh channels, with its driver ends.
pub fn raw_flow(fib: Fib, ethertype: u16, slots: u32) -> Result<(RawFlow, DriverEnds)> {
    let (ch, drv) = channels(fib, slots)?;
    Ok((RawFlow::new(ch, ethertype), drv))
}

/// Two connected flows A ⇄ B with IP MTU `mtu`.
pub fn connected_pair(
    mtu: u16,
    slots: u32,
    cfg: FlowConfig,
) -> Result<((UdpFlow, DriverEnds), (UdpFlow, DriverEnds))> {
    let a = SocketAddrV4::new(IP_A, PORT_A);
    let b = SocketAddrV4::new(IP_B, PORT_B);
    Ok((
        udp_flow(fib(a, MAC_A, Some(b), Some(MAC_B), mtu), slots, cfg)?,
        udp_flow(fib(b, MAC_B, Some(a), Some(MAC_A), mtu), slots, cfg)?,
    ))
}

impl DriverEnds {
    /// Pops every frame the flow pushed and returns their bytes (buffers go back to the flow).
    pub fn take_frames(&mut self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        while let Some(rec) = self.tx.pop()? {
            let n = self.tx.copy_out(&rec, &mut buf)?;
            out.push(buf[..n].to_vec());
            self.tx.release(rec)?;
        }
        Ok(out)
    }

    /// Delivers `frame` to the flow's RX channel; `false` if the flow had no empty buffer (the
    /// frame is dropped and counted, as the driver does).
    pub fn inject(&mut self, frame: &[u8]) -> Result<bool> {
        if frame.len() > self.max_frame {
            // The driver drops frames larger than the flow's buffers.
            self.rx_dropped += 1;
            return Ok(false);
        }
        match self.rx.take_empty()? {
            Some(rec) => {
                self.rx.copy_in(&rec, frame)?;
                self.rx.push_full(rec, frame.len())?;
                Ok(true)
            }
            None => {
                self.rx_dropped += 1;
                Ok(false)
            }
        }
    }

    /// Plays the wire from this flow to `to`: moves every frame this flow pushed into `to`'s RX
    /// channel (dropping what does not fit, as the driver does). Returns frames moved.
    pub fn pump_to(&mut self, to: &mut DriverEnds) -> Result<usize> {
        let mut buf = vec![0u8; 1 << 16];
        let mut recs = [IoRec::default(); 32];
        let mut moved = 0;
        loop {
            let k = self.tx.pop_batch(&mut recs)?;
            if k == 0 {
                return Ok(moved);
            }
            for rec in &recs[..k] {
                let n = self.tx.copy_out(rec, &mut buf)?;
                if to.inject(&buf[..n])? {
                    moved += 1;
                }
            }
            self.tx.release_batch(&recs[..k])?;
        }
    }
}

impl DriverEnds {
    /// Like [`pump_to`](Self::pump_to), but only while `to` has an empty buffer: nothing is
    /// dropped, frames wait in this flow's TX FIFO (back-pressure). Returns frames moved.
    pub fn forward_lossless(&mut self, to: &mut DriverEnds) -> Result<usize> {
        let mut buf = vec![0u8; 1 << 16];
        let mut moved = 0;
        while to.rx.ready()? {
            let Some(rec) = self.tx.pop()? else { break };
            let n = self.tx.copy_out(&rec, &mut buf)?;
            to.inject(&buf[..n])?;
            self.tx.release(rec)?;
            moved += 1;
        }
        Ok(moved)
    }
}

/// A thread playing the wire between two flows in both directions, without loss, until `stop`;
/// returns the driver ends when joined.
pub fn spawn_wire(
    mut a: DriverEnds,
    mut b: DriverEnds,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Result<(DriverEnds, DriverEnds)>> {
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let n = a.forward_lossless(&mut b)? + b.forward_lossless(&mut a)?;
            if n == 0 {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
        Ok((a, b))
    })
}

/// Fuzz body shared by `fuzz/fuzz_targets/rx_frames.rs` and the corpus replay test: a fresh
/// flow (byte 0 chooses connected or not, byte 1 the MTU and reassembly limits) receives the
/// frames in the rest of `data` (each a 2-byte big-endian length then the bytes; a length with
/// the top bit set advances the clock by its low bits in seconds instead). Nothing may panic,
/// every frame must have exactly one disposition in the counters, and reassembly must stay
/// within its bounds.
pub fn fuzz_rx(data: &[u8]) -> Option<FuzzOutcome> {
    if data.len() < 2 {
        return None;
    }
    let connected = data[0] & 1 == 1;
    let mtu = [1500u16, 576, 68, 1000][usize::from(data[1] & 3)];
    let limits = ReassemblyLimits {
        max_bytes: [512 * 1024, 70_000, 4096, 100][usize::from((data[1] >> 2) & 3)],
        max_datagrams: 1 + usize::from((data[1] >> 4) & 7),
        timeout: std::time::Duration::from_secs(30),
    };
    let local = SocketAddrV4::new(IP_A, PORT_A);
    let remote = SocketAddrV4::new(IP_B, PORT_B);
    let f = if connected {
        fib(local, MAC_A, Some(remote), Some(MAC_B), mtu)
    } else {
        fib(local, MAC_A, None, None, mtu)
    };
    let Ok((mut flow, mut drv)) = udp_flow(f, 64, config(7, limits)) else {
        return None;
    };
    flow.set_nonblocking(true);
    let t0 = Instant::now();
    let clock = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c2 = clock.clone();
    flow.set_clock(move || {
        t0 + std::time::Duration::from_secs(c2.load(std::sync::atomic::Ordering::Relaxed))
    });
    let mut rest = &data[2..];
    let mut buf = vec![0u8; 1 << 16];
    let mut delivered = 0u64;
    let mut injected = 0u64;
    let mut refused = 0u64;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
        if len & 0x8000 != 0 {
            clock.fetch_add((len & 0xff) as u64, std::sync::atomic::Ordering::Relaxed);
            continue;
        }
        let n = len.min(rest.len()).min(2048);
        let (frame, tail) = rest.split_at(n);
        rest = tail;
        if drv.inject(frame).unwrap_or(false) {
            injected += 1;
        }
        loop {
            match flow.recv(&mut buf) {
                Ok(_) => delivered += 1,
                Err(crate::Error::WouldBlock) => break,
                // A connected flow reports an ICMP error once; keep draining.
                Err(
                    crate::Error::ConnectionRefused { .. }
                    | crate::Error::Unreachable { .. }
                    | crate::Error::MessageTooLong { .. },
                ) => refused += 1,
                Err(e) => panic!("unexpected receive error: {e}"),
            }
        }
        let reasm = flow.stack().lower().reassembler();
        assert!(reasm.bytes_in_use() <= limits.max_bytes);
        assert!(reasm.in_progress() <= limits.max_datagrams);
    }
    let c = flow.counters();
    assert_eq!(c.channel.rx_frames, injected, "every injected frame popped");
    assert_eq!(
        c.unaccounted_frames(),
        0,
        "one disposition per frame: {c:#?}"
    );
    assert_eq!(
        c.udp.rx_up, delivered,
        "every datagram passed up was delivered"
    );
    let mut events = 0;
    while flow.take_error().is_some() {
        events += 1;
    }
    Some(FuzzOutcome {
        delivered,
        refused,
        events,
        counters: c,
    })
}

/// What one [`fuzz_rx`] run saw, for tests of the seeds.
#[derive(Debug, Clone, Copy)]
pub struct FuzzOutcome {
    /// Datagrams delivered to the application.
    pub delivered: u64,
    /// `recv` calls that reported an ICMP error (connected flows).
    pub refused: u64,
    /// ICMP error events queued.
    pub events: u64,
    /// The flow's counters at the end.
    pub counters: crate::StackCounters,
}
