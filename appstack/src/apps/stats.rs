//! The flow's stack counters as an app prints them on request (`--stats`): one `name=value` line
//! each, so a test or a script on the other side of a real link can check what the stack did
//! (reassembly's memory bound included) without reaching into the process.

use std::fmt::Write;

use crate::UdpFlow;

/// The flow's counters and reassembly state, one `name=value` line each.
pub fn stats_text(flow: &UdpFlow) -> String {
    let c = flow.counters();
    let reasm = flow.stack().lower().reassembler();
    let limits = reasm.limits();
    let lines: [(&str, u64); 38] = [
        ("channel.rx_frames", c.channel.rx_frames),
        ("channel.tx_frames", c.channel.tx_frames),
        ("channel.tx_fifo_full", c.channel.tx_fifo_full),
        ("eth.rx_up", c.eth.rx_up),
        ("eth.dropped", c.eth.dropped()),
        ("ipv4.rx_up", c.ipv4.rx_up),
        ("ipv4.fragments", c.ipv4.fragments),
        ("ipv4.bad_checksum", c.ipv4.bad_checksum),
        ("ipv4.truncated", c.ipv4.truncated),
        ("ipv4.icmp", c.ipv4.icmp),
        ("ipv4.tx_datagrams", c.ipv4.tx_datagrams),
        ("ipv4.tx_fragmented", c.ipv4.tx_fragmented),
        ("ipv4.tx_fragments", c.ipv4.tx_fragments),
        ("reasm.queued", c.reasm.queued),
        ("reasm.duplicate", c.reasm.duplicate),
        ("reasm.bad_len", c.reasm.bad_len),
        ("reasm.overlap", c.reasm.overlap),
        ("reasm.oversize", c.reasm.oversize),
        ("reasm.inconsistent", c.reasm.inconsistent),
        ("reasm.over_budget", c.reasm.over_budget),
        ("reasm.reassembled", c.reasm.reassembled),
        ("reasm.timed_out", c.reasm.timed_out),
        ("reasm.evicted", c.reasm.evicted),
        ("reasm.bytes_in_use", reasm.bytes_in_use() as u64),
        ("reasm.peak_bytes", reasm.peak_bytes() as u64),
        ("reasm.in_progress", reasm.in_progress() as u64),
        ("reasm.max_bytes", limits.max_bytes as u64),
        ("reasm.max_datagrams", limits.max_datagrams as u64),
        ("reasm.timeout_ms", limits.timeout.as_millis() as u64),
        ("udp.rx_up", c.udp.rx_up),
        ("udp.bad_len", c.udp.bad_len),
        ("udp.bad_checksum", c.udp.bad_checksum),
        ("udp.tx_datagrams", c.udp.tx_datagrams),
        ("udp.tx_bytes", c.udp.tx_bytes),
        ("flow.rx_delivered", c.flow.rx_delivered),
        ("flow.rx_bytes", c.flow.rx_bytes),
        ("rx_dropped", c.rx_dropped()),
        ("unaccounted_frames", c.unaccounted_frames().unsigned_abs()),
    ];
    let mut out = String::new();
    for (name, value) in lines {
        let _ = writeln!(out, "{name}={value}");
    }
    out
}

/// Reads `name=value` lines as [`stats_text`] writes them (other lines are skipped).
pub fn parse_stats(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}
