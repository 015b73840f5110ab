//! Sends every UDP datagram it receives back to its sender.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use nemflow_appstack::apps::{self, EchoOptions, FlowRequest};
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
}

fn main() -> ExitCode {
    let a = Args::parse();
    let req = FlowRequest {
        local_port: a.port,
        remote: None,
        qos: Qos::BEST_EFFORT,
    };
    let mut app = match apps::open_flow(&req) {
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
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("udp-echo: {e}");
            ExitCode::FAILURE
        }
    }
}
