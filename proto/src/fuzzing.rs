//! The control protocols under arbitrary bytes: the body of the `proto/fuzz` target (replayed
//! from its corpus by `proto/tests/wire_fuzz.rs`), and a sample of every message for round trips.

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::app::{
    AcceptFlow, AppError, AppErrorKind, AppEvent, AppReply, AppRequest, Buffers, OpenFlow,
    ServerMsg,
};
use crate::ctl::{
    CaptureDirection, DriverReply, DriverRequest, DropEntry, DropReason, FlowStats, PortInfo,
};
use crate::flow::{ip_proto, Filter, FlowId, Qos, Template, TemplateKind};
use crate::wire::{self, Decoder};

/// Feeds `data` to a decoder as a byte stream and decodes every complete message as each of the
/// four message types. Nothing may panic; whatever decodes must encode and decode back to itself.
pub fn decode_stream(data: &[u8]) {
    let mut decoder = Decoder::new(0);
    // Arrive in uneven pieces, as a stream does.
    for chunk in data.chunks(7) {
        decoder.feed(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    fixpoint::<DriverRequest>(&frame.payload);
                    fixpoint::<DriverReply>(&frame.payload);
                    fixpoint::<AppRequest>(&frame.payload);
                    fixpoint::<ServerMsg>(&frame.payload);
                }
                Ok(None) => break,
                // A broken stream: the daemons hang up here.
                Err(_) => return,
            }
        }
    }
}

/// If `payload` decodes as `T`, its encoding decodes to the same value.
fn fixpoint<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(payload: &[u8]) {
    if let Ok(msg) = wire::decode::<T>(payload) {
        let bytes = wire::encode(&msg).unwrap_or_default();
        let again: Option<T> = bytes
            .get(wire::HEADER_BYTES..)
            .and_then(|p| wire::decode(p).ok());
        assert_eq!(
            again.as_ref(),
            Some(&msg),
            "decode(encode(decode(x))) differs"
        );
    }
}

/// One value of every request and reply variant, for round trips and seed corpora.
pub fn samples() -> (
    Vec<DriverRequest>,
    Vec<DriverReply>,
    Vec<AppRequest>,
    Vec<ServerMsg>,
) {
    let sap = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 7001);
    let peer = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 2), 9);
    let spec = nemflow_rbuf::ChannelSpec {
        data_bytes: 1 << 16,
        slots: 64,
        max_packet_bytes: 2048,
        hugetlb: false,
    };
    let qos = Qos {
        period_ns: 100_000_000,
        slice_ns: 4_000_000,
        extra: false,
        latency_hint_ns: Some(1_000),
    };
    // A UDP template from `sap`, to `dst` if connected.
    let template = |dst| Template {
        src_mac: [2, 0, 0, 0, 0, 1],
        kind: TemplateKind::Ipv4 {
            src: *sap.ip(),
            proto: ip_proto::UDP,
            src_port: 7001,
            dst,
        },
    };
    let driver = vec![
        DriverRequest::Hello {
            client: "fm".into(),
        },
        DriverRequest::InstallFlow {
            id: FlowId(7),
            filter: Filter::Connected {
                proto: ip_proto::UDP,
                local: sap,
                remote: peer,
            },
            template: template(Some(peer)),
            qos,
            tx: spec,
            rx: spec,
        },
        DriverRequest::SetQos {
            id: FlowId(7),
            qos: Qos::BEST_EFFORT,
        },
        DriverRequest::RemoveFlow { id: FlowId(7) },
        DriverRequest::FlowStats { id: None },
        DriverRequest::PortInfo,
        DriverRequest::DropLog { after: 3, max: 10 },
        DriverRequest::CaptureStart {
            flow: FlowId(7),
            direction: CaptureDirection::Both,
            spec,
        },
        DriverRequest::CaptureStats { id: 1 },
        DriverRequest::CaptureStop { id: 1 },
        DriverRequest::StageChannels {
            id: 3,
            tx: spec,
            rx: spec,
        },
        DriverRequest::InstallStaged {
            id: FlowId(8),
            staged: 3,
            filter: Filter::Bound {
                proto: ip_proto::UDP,
                local: sap,
                broadcast: false,
            },
            template: template(None),
            qos,
        },
        DriverRequest::DropStaged { id: 3 },
    ];
    let replies = vec![
        DriverReply::Ok,
        DriverReply::Hello(PortInfo::default()),
        DriverReply::Error {
            kind: crate::ctl::ErrorKind::Admission,
            message: "full".into(),
        },
        DriverReply::FlowStats(vec![FlowStats::default()]),
        DriverReply::PortInfo(PortInfo {
            drops: vec![("runt".into(), 1)],
            ..PortInfo::default()
        }),
        DriverReply::DropLog(vec![DropEntry {
            seq: 1,
            time_ns: 2,
            flow: Some(FlowId(7)),
            reason: DropReason::RxNoBuffer,
            len: 60,
        }]),
    ];
    let open = OpenFlow::udp(7001, Some(peer));
    let app = vec![
        AppRequest::Hello {
            client: "app".into(),
        },
        AppRequest::Open(open.clone()),
        AppRequest::Open(OpenFlow {
            buffers: Buffers {
                tx_bytes: 1 << 20,
                tx_slots: 512,
                rx_bytes: 1 << 20,
                rx_slots: 512,
            },
            ..OpenFlow::tcp(0, peer)
        }),
        AppRequest::SetQos {
            flow: FlowId(7),
            qos,
        },
        AppRequest::Close { flow: FlowId(7) },
        AppRequest::Listen {
            local_ip: None,
            port: 80,
        },
        AppRequest::Unlisten { port: 80 },
        AppRequest::ListFlows,
        AppRequest::Resolve { ip: *peer.ip() },
        AppRequest::AllFlows,
        AppRequest::Stats,
        AppRequest::Arp,
        AppRequest::Routes,
        AppRequest::ListenBacklog {
            local_ip: Some(*sap.ip()),
            port: 8080,
            backlog: 16,
        },
        AppRequest::Accept(AcceptFlow {
            listen_port: 8080,
            remote: peer,
            qos,
            buffers: Buffers::default(),
        }),
        AppRequest::Reject {
            listen_port: 8080,
            remote: peer,
            reset: true,
        },
        AppRequest::Reserve,
        AppRequest::OpenReserved {
            open: open.clone(),
            reserved: 3,
        },
        AppRequest::Unreserve { reserved: 3 },
    ];
    let server = vec![
        ServerMsg::Reply(AppReply::Ok),
        ServerMsg::Reply(AppReply::Error(AppError {
            kind: AppErrorKind::AddrInUse,
            message: "port 7001 is taken".into(),
            max_slice_ns: None,
        })),
        ServerMsg::Reply(AppReply::Reserved {
            id: 3,
            tx: spec,
            rx: spec,
        }),
        ServerMsg::Reply(AppReply::Error(AppError {
            kind: AppErrorKind::NotReady,
            message: "no channel pair ready".into(),
            max_slice_ns: None,
        })),
        ServerMsg::Event(AppEvent::Revoked {
            flow: FlowId(7),
            reason: "the driver went away".into(),
        }),
    ];
    (driver, replies, app, server)
}
