//! What the `nemflow` tool prints, in the shapes operators know: `ss -tuna` for flows,
//! `tc -s qdisc show` for statistics, `ip neigh` for ARP and `ip route` for routes.

use std::fmt::Write;

use nemflow_proto::app::{
    ArpEntry, ArpState, FlowInfo, FlowKind, RouteEntry, StatsReport, Transport,
};
use nemflow_proto::Qos;

use crate::host::fmt_mac;

fn users(f: &FlowInfo) -> String {
    match (&f.owner, f.kind) {
        (_, FlowKind::TimeWait) => format!("timer:(timewait,{}ms)", f.age_ms),
        (Some(o), _) => format!("users:((\"{}\",pid={},uid={}))", o.comm, o.pid, o.uid),
        (None, _) => String::new(),
    }
}

fn netid_state(f: &FlowInfo) -> (String, &'static str) {
    let netid = match (f.kind, f.transport) {
        (FlowKind::Host, _) => "host".to_string(),
        (FlowKind::Reserved, _) => "-".to_string(),
        (_, Transport::Udp) => "udp".into(),
        (_, Transport::Tcp) => "tcp".into(),
        (_, Transport::Raw { .. }) => "raw".into(),
    };
    let state = match f.kind {
        FlowKind::Listen => "LISTEN",
        FlowKind::TimeWait => "TIME-WAIT",
        FlowKind::Host => "UNCONN",
        FlowKind::Reserved => "RESERVED",
        FlowKind::Flow if f.remote.is_some() => "ESTAB",
        FlowKind::Flow => "UNCONN",
    };
    (netid, state)
}

fn local(f: &FlowInfo) -> String {
    match (f.kind, f.transport) {
        (FlowKind::Host, _) => format!("{}:*", f.local.ip()),
        (FlowKind::Reserved, _) => "-".into(),
        (_, Transport::Raw { ethertype }) => format!("*:{ethertype:#06x}"),
        _ => f.local.to_string(),
    }
}

fn peer(f: &FlowInfo) -> String {
    match f.remote {
        Some(r) => r.to_string(),
        None => "0.0.0.0:*".into(),
    }
}

/// `nemflow flows`: one line per flow, like `ss -tuna` (with the owning process, like `-p`).
/// The queue columns of `ss` are left out: the flow manager does not see the data path.
pub fn flows(list: &[FlowInfo]) -> String {
    let mut rows = vec![[
        "Netid".to_string(),
        "State".into(),
        "Local Address:Port".into(),
        "Peer Address:Port".into(),
        "Flow".into(),
        "Process".into(),
    ]];
    for f in list {
        let (netid, state) = netid_state(f);
        let id = if f.id.0 == 0 {
            "-".to_string()
        } else {
            f.id.to_string()
        };
        rows.push([netid, state.into(), local(f), peer(f), id, users(f)]);
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$} ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn qos(q: &Qos) -> String {
    let ms = |ns: u64| {
        if ns.is_multiple_of(1_000_000) {
            format!("{}ms", ns / 1_000_000)
        } else {
            format!("{}us", ns / 1_000)
        }
    };
    if q.slice_ns == 0 {
        format!("best-effort period {}", ms(q.period_ns))
    } else {
        format!(
            "slice {} period {}{}",
            ms(q.slice_ns),
            ms(q.period_ns),
            if q.extra { " extra" } else { "" }
        )
    }
}

/// `nemflow stats`: per flow, like `tc -s qdisc show`.
pub fn stats(r: &StatsReport) -> String {
    let mut out = String::new();
    for (f, s) in &r.flows {
        let (netid, _) = netid_state(f);
        let _ = writeln!(
            out,
            "flow {} {netid} {} -> {} {} {}",
            f.id,
            local(f),
            peer(f),
            qos(&f.qos),
            users(f)
        );
        let _ = writeln!(
            out,
            " Sent {} bytes {} pkt (dropped {}, template_violations {}, invalid_iorecs {})",
            s.tx_bytes, s.tx_packets, s.tx_dropped, s.tx_template_violations, s.invalid_iorecs
        );
        let _ = writeln!(
            out,
            " Rcvd {} bytes {} pkt (dropped {}){}",
            s.rx_bytes,
            s.rx_packets,
            s.rx_dropped_no_buffer,
            if s.broken { " BROKEN" } else { "" }
        );
        let _ = writeln!(
            out,
            " sched guaranteed {}us extra {}us deadline_misses {}",
            s.sched_guaranteed_ns / 1000,
            s.sched_extra_ns / 1000,
            s.sched_deadline_misses
        );
    }
    let p = &r.port;
    let _ = writeln!(
        out,
        "port {} {} link {} rate {}bit flows {}",
        p.name,
        fmt_mac(p.mac),
        if p.link_up { "up" } else { "down" },
        p.rate_bps,
        p.flows
    );
    let dropped: u64 = p.drops.iter().map(|(_, n)| n).sum();
    let _ = writeln!(
        out,
        " Sent {} bytes {} pkt (dropped {}, link changes {})",
        p.tx_bytes, p.tx_packets, p.tx_errors, p.link_changes
    );
    let mut detail = String::new();
    for (name, n) in p.drops.iter().filter(|(_, n)| *n > 0) {
        let _ = write!(detail, ", {name} {n}");
    }
    let _ = writeln!(
        out,
        " Rcvd {} bytes {} pkt (dropped {dropped}, missed {}, nombuf {}{detail})",
        p.rx_bytes, p.rx_packets, p.rx_missed, p.rx_nombuf
    );
    let _ = writeln!(out, "flowmgr");
    let nonzero: Vec<String> = r
        .flowmgr
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    for chunk in nonzero.chunks(4) {
        let _ = writeln!(out, " {}", chunk.join(", "));
    }
    out
}

/// `nemflow stats -j`.
pub fn stats_json(r: &StatsReport) -> String {
    let flows: Vec<serde_json::Value> = r
        .flows
        .iter()
        .map(|(f, s)| {
            serde_json::json!({
                "flow": f.id.0,
                "netid": netid_state(f).0,
                "local": local(f),
                "peer": f.remote.map(|r| r.to_string()),
                "qos": {"period_ns": f.qos.period_ns, "slice_ns": f.qos.slice_ns, "extra": f.qos.extra},
                "owner": f.owner.as_ref().map(|o| serde_json::json!({"uid": o.uid, "pid": o.pid, "comm": o.comm})),
                "tx_bytes": s.tx_bytes, "tx_packets": s.tx_packets, "tx_dropped": s.tx_dropped,
                "tx_template_violations": s.tx_template_violations,
                "invalid_iorecs": s.invalid_iorecs,
                "rx_bytes": s.rx_bytes, "rx_packets": s.rx_packets,
                "rx_dropped_no_buffer": s.rx_dropped_no_buffer,
                "sched_guaranteed_ns": s.sched_guaranteed_ns, "sched_extra_ns": s.sched_extra_ns,
                "sched_deadline_misses": s.sched_deadline_misses, "broken": s.broken,
            })
        })
        .collect();
    let p = &r.port;
    let fm: serde_json::Map<String, serde_json::Value> = r
        .flowmgr
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::from(*v)))
        .collect();
    let v = serde_json::json!({
        "port": {
            "name": p.name, "mac": fmt_mac(p.mac), "link_up": p.link_up, "rate_bps": p.rate_bps,
            "tx_bytes": p.tx_bytes, "tx_packets": p.tx_packets, "rx_bytes": p.rx_bytes,
            "rx_packets": p.rx_packets, "rx_missed": p.rx_missed, "rx_nombuf": p.rx_nombuf,
            "drops": p.drops.iter().map(|(k, n)| (k.clone(), serde_json::Value::from(*n))).collect::<serde_json::Map<_, _>>(),
            "flows": p.flows,
        },
        "flows": flows,
        "flowmgr": fm,
    });
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// `nemflow arp`, like `ip neigh`.
pub fn arp(entries: &[ArpEntry]) -> String {
    let mut out = String::new();
    for e in entries {
        let state = match e.state {
            ArpState::Reachable => "REACHABLE",
            ArpState::Stale => "STALE",
            ArpState::Incomplete => "INCOMPLETE",
            ArpState::Failed => "FAILED",
        };
        match e.mac {
            Some(m) => {
                let _ = writeln!(
                    out,
                    "{} lladdr {} {state} age {}ms",
                    e.ip,
                    fmt_mac(m),
                    e.age_ms
                );
            }
            None => {
                let _ = writeln!(out, "{} {state}", e.ip);
            }
        }
    }
    out
}

/// `nemflow routes`, like `ip route`.
pub fn routes(entries: &[RouteEntry]) -> String {
    let mut out = String::new();
    for r in entries {
        let dest = if r.prefix_len == 0 {
            "default".to_string()
        } else {
            format!("{}/{}", r.dest, r.prefix_len)
        };
        match r.via {
            Some(via) => {
                let _ = writeln!(out, "{dest} via {via} src {}", r.src);
            }
            None => {
                let _ = writeln!(out, "{dest} proto kernel scope link src {}", r.src);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use nemflow_proto::app::Owner;
    use nemflow_proto::ctl::{FlowStats, PortInfo};
    use nemflow_proto::FlowId;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn info(
        id: u32,
        kind: FlowKind,
        transport: Transport,
        remote: Option<SocketAddrV4>,
    ) -> FlowInfo {
        FlowInfo {
            id: FlowId(id),
            kind,
            transport,
            local: SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 5000),
            remote,
            qos: Qos::BEST_EFFORT,
            owner: Some(Owner {
                uid: 1000,
                pid: 42,
                comm: "app".into(),
            }),
            channel_bytes: 0,
            age_ms: 7,
        }
    }

    #[test]
    fn flows_look_like_ss() {
        let r = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 2), 53);
        let text = flows(&[
            info(2, FlowKind::Flow, Transport::Udp, None),
            info(3, FlowKind::Flow, Transport::Udp, Some(r)),
            info(0, FlowKind::Listen, Transport::Tcp, None),
            info(
                4,
                FlowKind::Flow,
                Transport::Raw { ethertype: 0x88b5 },
                None,
            ),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("Netid State"), "{text}");
        assert!(
            lines[1].starts_with("udp   UNCONN 10.77.0.1:5000"),
            "{text}"
        );
        assert!(
            lines[1].ends_with("users:((\"app\",pid=42,uid=1000))"),
            "{text}"
        );
        assert!(
            lines[2].contains("ESTAB") && lines[2].contains("10.77.0.2:53"),
            "{text}"
        );
        assert!(lines[3].starts_with("tcp   LISTEN"), "{text}");
        assert!(lines[4].contains("*:0x88b5"), "{text}");
    }

    #[test]
    fn a_reserved_pair_is_listed_without_an_address() {
        let text = flows(&[info(
            0,
            FlowKind::Reserved,
            Transport::Raw { ethertype: 0 },
            None,
        )]);
        let line = text.lines().nth(1).unwrap_or_default();
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[..3], ["-", "RESERVED", "-"], "{text}");
        assert!(
            line.ends_with("users:((\"app\",pid=42,uid=1000))"),
            "{text}"
        );
    }

    #[test]
    fn stats_look_like_tc() {
        let r = StatsReport {
            port: PortInfo::default(),
            flows: vec![(
                info(2, FlowKind::Flow, Transport::Udp, None),
                FlowStats {
                    id: FlowId(2),
                    tx_bytes: 1500,
                    tx_packets: 1,
                    rx_dropped_no_buffer: 3,
                    ..FlowStats::default()
                },
            )],
            flowmgr: vec![("requests".into(), 5), ("clients_closed".into(), 0)],
        };
        let text = stats(&r);
        assert!(
            text.contains(
                "\n Sent 1500 bytes 1 pkt (dropped 0, template_violations 0, invalid_iorecs 0)\n"
            ),
            "{text}"
        );
        assert!(text.contains(" Rcvd 0 bytes 0 pkt (dropped 3)"), "{text}");
        assert!(
            text.contains("requests 5") && !text.contains("clients_closed"),
            "{text}"
        );
        let j: serde_json::Value = serde_json::from_str(&stats_json(&r)).unwrap();
        assert_eq!(j["flows"][0]["tx_bytes"], 1500);
        assert_eq!(j["flowmgr"]["requests"], 5);
    }
}
