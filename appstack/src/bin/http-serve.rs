//! A small HTTP/1.1 file server on nemflow TCP flows: GET and HEAD of files under a directory,
//! keep-alive, Content-Length, 404.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use nemflow_appstack::tcp::apps::{self, ServeOptions};
use nemflow_appstack::tcp::{FlowManager, TcpConfig, TcpListener};

/// Serve the files under a directory over HTTP/1.1 from a nemflow port (each connection is a
/// flow of its own, with its own TCP stack in this process).
#[derive(Debug, Parser)]
#[command(name = "http-serve", version)]
struct Args {
    /// Local TCP port to listen on (0: any; the port is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Directory whose files are served (`/name` is `DIR/name`, `/` is `DIR/index.html`).
    #[arg(long)]
    root: PathBuf,
    /// Connections being set up at most (see tcp-echo --help).
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
    if !a.root.is_dir() {
        eprintln!("http-serve: {} is not a directory", a.root.display());
        return ExitCode::from(2);
    }
    let run = || -> nemflow_appstack::Result<_> {
        let fm = FlowManager::connect_default()?;
        let mut l = TcpListener::bind_with(&fm, a.port, a.backlog, &TcpConfig::default())?;
        println!(
            "serving {} on tcp port {}",
            a.root.display(),
            l.local_port()
        );
        let opts = ServeOptions {
            connections: a.connections,
            duration: a.seconds.map(Duration::from_secs_f64),
        };
        apps::http_server(
            &mut l,
            &a.root,
            &opts,
            &nemflow_appstack::apps::stop_on_signals(),
        )
    };
    match run() {
        Ok(r) => {
            eprintln!(
                "http-serve: {} connections, {} requests, {} bytes sent ({} ended with an error)",
                r.connections, r.requests, r.bytes_out, r.errors
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("http-serve: {e}");
            ExitCode::FAILURE
        }
    }
}
