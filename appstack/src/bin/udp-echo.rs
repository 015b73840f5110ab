//! Sends every UDP datagram it receives back to its sender.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use nemflow_appstack::apps::{self, EchoOptions, FlowRequest};
use nemflow_appstack::{FlowConfig, ReassemblyLimits};
use nemflow_proto::Qos;

/// Echo UDP datagrams on a nemflow flow back to their senders.
#[derive(Debug, Parser)]
#[command(name = "udp-echo", version)]
struct Args {
    /// Local UDP port to serve on.
    #[arg(long)]
    port: u16,
    /// Stop after this many datagrams.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    seconds: Option<f64>,
    /// Reassembly: bytes held at most over all datagrams in progress (default 512 KiB).
    #[arg(long)]
    reasm_max_bytes: Option<usize>,
    /// Reassembly: datagrams in progress at most (default 16).
    #[arg(long)]
    reasm_max_datagrams: Option<usize>,
    /// Reassembly: milliseconds a datagram may take to complete (default 30 000).
    #[arg(long)]
    reasm_timeout_ms: Option<u64>,
    /// At exit, also print the flow's stack counters as `name=value` lines (stderr).
    #[arg(long)]
    stats: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let req = FlowRequest {
        local_port: a.port,
        remote: None,
        buffers: apps::buffers_for(None, None),
        qos: Qos::BEST_EFFORT,
    };
    let mut cfg = FlowConfig::default();
    let d = ReassemblyLimits::default();
    cfg.ip.reassembly = ReassemblyLimits {
        max_bytes: a.reasm_max_bytes.unwrap_or(d.max_bytes),
        max_datagrams: a.reasm_max_datagrams.unwrap_or(d.max_datagrams),
        timeout: a.reasm_timeout_ms.map_or(d.timeout, Duration::from_millis),
    };
    let mut app = match apps::open_flow_with(&req, cfg) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("udp-echo: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = EchoOptions {
        count: a.count,
        duration: a.seconds.map(Duration::from_secs_f64),
    };
    match apps::echo(&mut app.flow, &opts, &apps::stop_on_signals()) {
        Ok(r) => {
            eprintln!(
                "echoed {} datagrams, {} bytes ({} could not be sent back)",
                r.datagrams, r.bytes, r.failed
            );
            if a.stats {
                eprint!("{}", apps::stats_text(&app.flow));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("udp-echo: {e}");
            ExitCode::FAILURE
        }
    }
}
