//! A misbehaving receiver for fault tests: keeps the buffers of the datagrams it receives and
//! takes transmit buffers it never sends, then waits to be killed.

use std::io::Write;
use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use nemflow_appstack::apps::{self, FlowRequest};
use nemflow_appstack::Error;
use nemflow_proto::Qos;

/// Open a UDP flow connected to `--remote`, receive `--hold-rx` datagrams without giving their
/// buffers back to the driver, allocate `--hold-tx` transmit buffers without sending them, print
/// `holding RX TX` on stdout, and sleep until killed: what the driver and the flow manager find
/// when an app dies in the middle of its work.
#[derive(Debug, Parser)]
#[command(name = "udp-hold", version)]
struct Args {
    /// Local UDP port.
    #[arg(long)]
    port: u16,
    /// The remote the flow is connected to (datagrams are accepted only from it).
    #[arg(long)]
    remote: SocketAddrV4,
    /// Received datagrams whose buffers are kept.
    #[arg(long, default_value_t = 8)]
    hold_rx: u32,
    /// Transmit buffers allocated and never sent.
    #[arg(long, default_value_t = 8)]
    hold_tx: u32,
    /// Receive and transmit FIFO slots.
    #[arg(long, default_value_t = 64)]
    slots: u32,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let req = FlowRequest {
        local_port: a.port,
        remote: Some(a.remote),
        buffers: apps::buffers_for(Some(a.slots), Some(a.slots)),
        qos: Qos::BEST_EFFORT,
    };
    let mut app = match apps::open_flow(&req) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("udp-hold: {e}");
            return ExitCode::from(2);
        }
    };
    println!("open {}", app.flow.local_addr());
    let _ = std::io::stdout().flush();
    let flow = &mut app.flow;
    flow.set_read_timeout(Some(Duration::from_millis(100)));
    let mut rx = 0;
    while rx < a.hold_rx {
        match flow.recv_datagram() {
            Ok(d) => {
                // Never dropped: the buffer stays the app's until the process dies.
                std::mem::forget(d);
                rx += 1;
            }
            Err(Error::TimedOut) => {}
            Err(e) => {
                eprintln!("udp-hold: receive: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    for _ in 0..a.hold_tx {
        match flow.tx_buf(1000) {
            // Allocated and never pushed: the driver never sees it.
            Ok(b) => std::mem::forget(b),
            Err(e) => {
                eprintln!("udp-hold: transmit buffer: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("holding {rx} {}", a.hold_tx);
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
