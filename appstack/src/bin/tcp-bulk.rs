//! A TCP client on a nemflow flow: connects out, sends a test pattern and receives one at the
//! same time, checks what it received, and reports.

use std::process::ExitCode;

use clap::Parser;
use nemflow_appstack::tcp::apps::{self, BulkOptions};
use nemflow_appstack::tcp::{FlowManager, TcpConfig, TcpStream};

/// Connect to IP:PORT over nemflow and exchange a test pattern (byte i is (i mod 251) + seed):
/// send --send bytes while receiving --recv bytes (or until the peer closes), both at once.
#[derive(Debug, Parser)]
#[command(name = "tcp-bulk", version)]
struct Args {
    /// The server, IP:PORT.
    #[arg(long)]
    connect: String,
    /// Bytes to send (then the sending side is shut down).
    #[arg(long, default_value_t = 0)]
    send: u64,
    /// Pattern seed of what is sent.
    #[arg(long, default_value_t = 0)]
    send_seed: u8,
    /// Bytes to receive; without it, until the peer closes.
    #[arg(long)]
    recv: Option<u64>,
    /// Pattern seed of what is expected.
    #[arg(long, default_value_t = 0)]
    recv_seed: u8,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let remote = match apps::parse_addr(&a.connect) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tcp-bulk: {e}");
            return ExitCode::from(2);
        }
    };
    let run = || -> nemflow_appstack::Result<_> {
        let fm = FlowManager::connect_default()?;
        let mut s = TcpStream::connect_with(&fm, remote, &TcpConfig::default())?;
        println!("connected {} -> {}", s.local_addr(), s.peer_addr());
        let opts = BulkOptions {
            send_bytes: a.send,
            send_seed: a.send_seed,
            recv_bytes: a.recv,
            recv_seed: a.recv_seed,
        };
        let r = apps::bulk(&mut s, &opts, &nemflow_appstack::apps::stop_on_signals())?;
        s.close()?;
        Ok(r)
    };
    match run() {
        Ok(r) => {
            println!(
                "sent {} received {} mismatched {} seconds {:.3}",
                r.sent, r.received, r.mismatched, r.seconds
            );
            if r.mismatched == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("tcp-bulk: {e}");
            ExitCode::FAILURE
        }
    }
}
