//! Receives UDP datagrams, logging each one's size and arrival time, optionally spending CPU per
//! datagram on a schedule (the paper's overloaded receiver).

use std::io::{BufWriter, Write};
use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use nemflow_appstack::apps::{self, FlowRequest, SinkOptions, Slowdown};
use nemflow_proto::Qos;

/// Receive UDP datagrams on a nemflow flow and log one line per datagram to stdout:
/// `arrival_ns size seq`. Optionally spend CPU per datagram, more of it every N datagrams.
#[derive(Debug, Parser)]
#[command(name = "udp-sink", version)]
struct Args {
    /// Local UDP port to receive on.
    #[arg(long)]
    port: u16,
    /// Only accept datagrams from this address and port (a connected flow).
    #[arg(long)]
    remote: Option<SocketAddrV4>,
    /// Stop after this many datagrams.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    seconds: Option<f64>,
    /// Processing time per datagram in microseconds (busy, as real work would be).
    #[arg(long, default_value_t = 0.0)]
    cost_us: f64,
    /// Every this many datagrams, slow down for good (e.g. 20000, as the paper's receiver).
    #[arg(long)]
    slow_every: Option<u64>,
    /// What each slowdown adds to the processing time per datagram, in microseconds.
    #[arg(long, default_value_t = 100.0)]
    step_us: f64,
    /// Do not log each datagram, only the summary.
    #[arg(long)]
    quiet: bool,
    /// Receive FIFO slots (frames the driver may queue for this app before it drops).
    #[arg(long, default_value_t = 1024)]
    rx_slots: u32,
    /// Receive without blocking: poll the flow every millisecond, as an app with other work
    /// would (the flow's liveness is then checked when a receive would block).
    #[arg(long)]
    nonblocking: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let req = FlowRequest {
        local_port: a.port,
        remote: a.remote,
        buffers: apps::buffers_for(None, Some(a.rx_slots)),
        qos: Qos::BEST_EFFORT,
    };
    let mut app = match apps::open_flow(&req) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("udp-sink: {e}");
            return ExitCode::from(2);
        }
    };
    if a.nonblocking {
        app.flow.set_nonblocking(true);
    }
    let opts = SinkOptions {
        count: a.count,
        duration: a.seconds.map(Duration::from_secs_f64),
        cost: Duration::from_secs_f64(a.cost_us.max(0.0) * 1e-6),
        slowdown: a.slow_every.map(|every| Slowdown {
            every,
            step: Duration::from_secs_f64(a.step_us.max(0.0) * 1e-6),
        }),
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut sink_log = std::io::sink();
    let log: &mut dyn Write = if a.quiet { &mut sink_log } else { &mut out };
    match apps::sink(&mut app.flow, &opts, &apps::stop_on_signals(), log) {
        Ok(r) => {
            let _ = out.flush();
            eprintln!(
                "received {} datagrams, {} bytes in {:.3} s (lost {}, reordered {})",
                r.datagrams,
                r.bytes,
                r.elapsed.as_secs_f64(),
                r.lost,
                r.reordered
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("udp-sink: {e}");
            ExitCode::FAILURE
        }
    }
}
