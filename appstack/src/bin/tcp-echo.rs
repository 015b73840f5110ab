//! A TCP echo server on a nemflow flow: every byte of every connection goes back to its sender.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use nemflow_appstack::tcp::apps::{self, ServeOptions};
use nemflow_appstack::tcp::{FlowManager, TcpConfig, TcpListener};

/// Echo TCP connections on a nemflow port (each connection is a flow of its own; the flow
/// manager calls this app back for every SYN to the port).
#[derive(Debug, Parser)]
#[command(name = "tcp-echo", version)]
struct Args {
    /// Local TCP port to listen on (0: any; the port is printed).
    #[arg(long)]
    port: u16,
    /// Connections being set up at most (SYNs waiting, handshakes, not yet served); a SYN
    /// flood beyond it costs this port only.
    #[arg(long, default_value_t = 64)]
    backlog: u32,
    /// Stop after this many connections (once they are done).
    #[arg(long)]
    connections: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    seconds: Option<f64>,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let run = || -> nemflow_appstack::Result<_> {
        let fm = FlowManager::connect_default()?;
        let mut l = TcpListener::bind_with(&fm, a.port, a.backlog, &TcpConfig::default())?;
        println!("listening on tcp port {}", l.local_port());
        let opts = ServeOptions {
            connections: a.connections,
            duration: a.seconds.map(Duration::from_secs_f64),
        };
        apps::echo_server(&mut l, &opts, &nemflow_appstack::apps::stop_on_signals())
    };
    match run() {
        Ok(r) => {
            eprintln!(
                "tcp-echo: {} connections, {} bytes echoed ({} ended with an error)",
                r.connections, r.bytes_out, r.errors
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tcp-echo: {e}");
            ExitCode::FAILURE
        }
    }
}
