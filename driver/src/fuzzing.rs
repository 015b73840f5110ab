//! Bodies of the driver's fuzz targets (`driver/fuzz`), also replayed from the committed corpus
//! by ordinary tests (`driver/tests/fuzz_corpus.rs`). Each drives the real data path over an
//! in-memory port and real Rbuf channels; any panic, hang or out-of-bounds access is a finding,
//! and each checks what must hold whatever the input.

use std::net::{Ipv4Addr, SocketAddrV4};

use nemflow_proto::flow::{ip_proto, Filter, FlowId, Qos, Template, TemplateKind};
use nemflow_rbuf::testing::{IndexWord, RawControl};
use nemflow_rbuf::{create, rmm, tmm, ChannelSpec, FifoId, IoRec};

use crate::datapath::{Datapath, DatapathConfig};
use crate::port::{MemPeer, MemPort};
use crate::template;

const HOST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const MAC: [u8; 6] = [2, 0x4e, 0x46, 0, 0, 1];
const SPEC: ChannelSpec = ChannelSpec {
    data_bytes: 64 * 2048,
    slots: 64,
    max_packet_bytes: 2048,
    hugetlb: false,
};

fn datapath() -> Option<(Datapath<MemPort>, MemPeer)> {
    let (port, peer) = MemPort::new(MAC);
    let dp = Datapath::new(
        port,
        DatapathConfig {
            rate_bps: 1_000_000_000,
            reserve_ppm: 20_000,
            max_frame_bytes: 1514,
            burst: 32,
            drop_log_entries: 256,
            subnet_broadcast: Ipv4Addr::new(10, 77, 0, 255),
            port_name: "fuzz0".into(),
        },
    )
    .ok()?;
    Some((dp, peer))
}

fn udp_template(port: u16) -> Template {
    Template {
        src_mac: MAC,
        kind: TemplateKind::Ipv4 {
            src: HOST,
            proto: ip_proto::UDP,
            src_port: port,
            dst: None,
        },
    }
}

/// Installs a flow and returns its app ends.
fn flow(
    dp: &mut Datapath<MemPort>,
    id: u32,
    filter: Filter,
    template: Template,
) -> Option<(tmm::Producer, rmm::Consumer, nemflow_rbuf::ChannelFds)> {
    let tx = create(&SPEC).ok()?;
    let rx = create(&SPEC).ok()?;
    let app_tx = tmm::Producer::attach(&SPEC, tx.try_clone().ok()?).ok()?;
    let mut app_rx = rmm::Consumer::attach(&SPEC, rx.with_read_only_data().ok()?).ok()?;
    app_rx.post_free().ok()?;
    let raw = tx.try_clone().ok()?;
    let mut fds = tx.with_read_only_data().ok()?.into_vec();
    fds.extend(rx.into_vec());
    dp.install(
        FlowId(id),
        filter,
        template,
        Qos::BEST_EFFORT,
        &SPEC,
        &SPEC,
        fds,
        0,
    )
    .ok()?;
    Some((app_tx, app_rx, raw))
}

/// Received frames: `data` is cut into frames (a length byte pair, then that many bytes) and
/// fed to a data path with a default flow and two UDP flows. Every frame ends up delivered
/// (to one or more flows) or dropped; nothing is lost silently.
pub fn rx_frames(data: &[u8]) {
    let Some((mut dp, peer)) = datapath() else {
        return;
    };
    let bound = |port| Filter::Bound {
        proto: ip_proto::UDP,
        local: SocketAddrV4::new(HOST, port),
        broadcast: true,
    };
    let any = Template {
        src_mac: MAC,
        kind: TemplateKind::Any,
    };
    let flows = [
        flow(&mut dp, 1, Filter::Default, any),
        flow(&mut dp, 2, bound(7001), udp_template(7001)),
        flow(&mut dp, 3, bound(7002), udp_template(7002)),
    ];
    let mut rest = data;
    let mut frames = 0u64;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        peer.inject(rest[2..2 + len].to_vec());
        rest = &rest[2 + len..];
        frames += 1;
        if frames.is_multiple_of(16) {
            dp.poll(frames * 1000);
        }
    }
    for t in 0..4 {
        dp.poll(frames * 1000 + t);
    }
    let port = dp.port_info();
    let delivered: u64 = dp
        .flow_stats(None)
        .map(|s| {
            s.iter()
                .map(|f| f.rx_packets + f.rx_dropped_no_buffer)
                .sum()
        })
        .unwrap_or(0);
    let before_flows: u64 =
        port.drops.iter().map(|(_, n)| n).sum::<u64>() + dp.fragments_held() as u64;
    // Broadcasts may reach several flows: at least every frame is accounted for once.
    assert!(
        delivered + before_flows >= port.rx_packets,
        "{} frames received, {delivered} reached flows, {before_flows} dropped or held before them",
        port.rx_packets
    );
    drop(flows);
}

/// A hostile transmitting app: `data` supplies frames written into the app's buffers, iorecs
/// pushed for them, raw words written over its FIFO slots and indices, in any order. Whatever
/// happens, every frame the port sends matches the flow's template, and the data path keeps
/// serving a well-behaved second flow.
pub fn tx_hostile(data: &[u8]) {
    let Some((mut dp, peer)) = datapath() else {
        return;
    };
    let Some((mut evil, _evil_rx, evil_fds)) = flow(
        &mut dp,
        1,
        Filter::Bound {
            proto: ip_proto::UDP,
            local: SocketAddrV4::new(HOST, 7001),
            broadcast: false,
        },
        udp_template(7001),
    ) else {
        return;
    };
    let Some((mut good, _good_rx, _)) = flow(
        &mut dp,
        2,
        Filter::Bound {
            proto: ip_proto::UDP,
            local: SocketAddrV4::new(HOST, 7002),
            broadcast: false,
        },
        udp_template(7002),
    ) else {
        return;
    };
    let Ok(raw) = RawControl::map(&evil_fds.control, &SPEC) else {
        return;
    };
    let good_frame = good_udp_frame(7002);
    let mut good_pushed = 0u64;
    let mut now = 0u64;
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op % 4 {
            0 => {
                // A frame of the fuzzer's bytes, pushed as a proper iorec.
                let len = usize::from(rest.first().copied().unwrap_or(0)) * 8;
                let bytes: Vec<u8> = rest.iter().skip(1).take(len).copied().collect();
                rest = &rest[(1 + bytes.len()).min(rest.len())..];
                let _ = evil.reclaim();
                if let Ok(Some(ext)) = evil.alloc(bytes.len().max(1)) {
                    if let Ok(buf) = evil.buf_mut(ext) {
                        let n = bytes.len().min(buf.len());
                        buf[..n].copy_from_slice(&bytes[..n]);
                    }
                    let _ = evil.push(IoRec::single(ext, 0));
                }
            }
            1 => {
                // Raw words over a FIFO slot.
                let mut words = [0u64; 5];
                for (i, w) in words.iter_mut().enumerate() {
                    let b: [u8; 8] =
                        std::array::from_fn(|k| rest.get(i * 8 + k).copied().unwrap_or(0));
                    *w = u64::from_le_bytes(b);
                }
                rest = &rest[40.min(rest.len())..];
                let fifo = if words[4] & 1 == 0 {
                    FifoId::Full
                } else {
                    FifoId::Empty
                };
                raw.write_slot(
                    fifo,
                    (words[4] >> 8) as u32,
                    [words[0], words[1], words[2], words[3]],
                );
            }
            2 => {
                // An index set anywhere.
                let b: [u8; 5] = std::array::from_fn(|k| rest.get(k).copied().unwrap_or(0));
                rest = &rest[5.min(rest.len())..];
                let which = match b[0] % 4 {
                    0 => IndexWord::FullHead,
                    1 => IndexWord::FullTail,
                    2 => IndexWord::EmptyHead,
                    _ => IndexWord::EmptyTail,
                };
                raw.set_index(which, u32::from_le_bytes([b[1], b[2], b[3], b[4]]));
            }
            _ => {
                let _ = good.reclaim();
                if let Ok(Some(ext)) = good.alloc(good_frame.len()) {
                    if let Ok(buf) = good.buf_mut(ext) {
                        buf.copy_from_slice(&good_frame);
                        if good.push(IoRec::single(ext, 0)).is_ok() {
                            good_pushed += 1;
                        }
                    }
                }
                now += 100_000;
                dp.poll(now);
            }
        }
    }
    for _ in 0..8 {
        now += 1_000_000;
        dp.poll(now);
    }
    let sent = peer.take_sent();
    for frame in &sent {
        let port = u16::from_be_bytes([
            frame.get(34).copied().unwrap_or(0),
            frame.get(35).copied().unwrap_or(0),
        ]);
        let tmpl = udp_template(port);
        assert!(
            (port == 7001 || port == 7002) && template::check(&tmpl, frame, 1514).is_ok(),
            "a frame off its template reached the wire"
        );
    }
    let good_sent = sent
        .iter()
        .filter(|f| f.get(34..36) == Some(&7002u16.to_be_bytes()[..]))
        .count() as u64;
    assert_eq!(
        good_sent, good_pushed,
        "the well-behaved flow sent everything it pushed"
    );
}

/// A UDP frame from `port` matching the host's template (checksums left zero: the driver does
/// not verify UDP checksums, only the IPv4 header's).
fn good_udp_frame(port: u16) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&[2, 0x4e, 0x46, 0xff, 0, 2]);
    f[6..12].copy_from_slice(&MAC);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&46u16.to_be_bytes());
    f[22] = 64;
    f[23] = ip_proto::UDP;
    f[26..30].copy_from_slice(&HOST.octets());
    f[30..34].copy_from_slice(&[10, 77, 0, 2]);
    let ck = !crate::classify::ones_complement_sum(&f[14..34]);
    f[24..26].copy_from_slice(&ck.to_be_bytes());
    f[34..36].copy_from_slice(&port.to_be_bytes());
    f[36..38].copy_from_slice(&9u16.to_be_bytes());
    f[38..40].copy_from_slice(&26u16.to_be_bytes());
    f
}
