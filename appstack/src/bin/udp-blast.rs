//! Sends MTU-sized UDP datagrams as fast as the flow's QoS allows and reports the achieved rate.

use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use nemflow_appstack::apps::{self, BlastOptions, FlowRequest};
use nemflow_proto::Qos;

/// Send MTU-sized UDP datagrams over a nemflow flow as fast as its QoS allows, then print the
/// achieved rate (datagrams/s, payload Mbit/s).
#[derive(Debug, Parser)]
#[command(name = "udp-blast", version)]
struct Args {
    /// Destination address and port (the flow is connected to it).
    #[arg(long)]
    remote: SocketAddrV4,
    /// Local UDP port (0: let the flow manager choose).
    #[arg(long, default_value_t = 0)]
    local_port: u16,
    /// Payload bytes per datagram (default: MTU − 28, one frame each).
    #[arg(long)]
    payload: Option<usize>,
    /// Stop after this many datagrams.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    seconds: Option<f64>,
    /// QoS period in milliseconds.
    #[arg(long, default_value_t = 100.0)]
    period_ms: f64,
    /// Guaranteed wire time per period in milliseconds (0: best effort).
    #[arg(long, default_value_t = 0.0)]
    slice_ms: f64,
    /// May also use slack time beyond the slice.
    #[arg(long)]
    extra: bool,
    /// Transmit FIFO slots (frames queued for the driver): deep enough to ride out scheduling
    /// hiccups at full rate.
    #[arg(long, default_value_t = 1024)]
    tx_slots: u32,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let req = FlowRequest {
        local_port: a.local_port,
        remote: Some(a.remote),
        buffers: apps::buffers_for(Some(a.tx_slots), None),
        qos: Qos {
            period_ns: (a.period_ms * 1e6) as u64,
            slice_ns: (a.slice_ms * 1e6) as u64,
            extra: a.extra || a.slice_ms == 0.0,
            latency_hint_ns: None,
        },
    };
    let mut app = match apps::open_flow(&req) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("udp-blast: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = BlastOptions {
        payload_len: a.payload,
        count: a.count,
        duration: a.seconds.map(Duration::from_secs_f64),
        dst: None,
    };
    match apps::blast(&mut app.flow, &opts, &apps::stop_on_signals()) {
        Ok(r) => {
            println!(
                "sent {} datagrams, {} payload bytes in {:.3} s: {:.0} datagrams/s, {:.2} Mbit/s",
                r.datagrams,
                r.bytes,
                r.elapsed.as_secs_f64(),
                r.datagrams_per_sec(),
                r.payload_mbit_per_sec()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("udp-blast: {e}");
            ExitCode::FAILURE
        }
    }
}
