//! The Linux anchor of experiment 7: receive on a kernel UDP socket, spending CPU per datagram
//! as `udp-sink` does, and log `arrival_ns size seq` per datagram.

use std::io::{BufWriter, Write};
use std::net::{SocketAddrV4, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

/// Receive UDP datagrams on a Linux socket, optionally slowly, logging each.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address and port to receive on.
    #[arg(long)]
    bind: SocketAddrV4,
    /// Seconds to receive for.
    #[arg(long)]
    seconds: f64,
    /// Processing time per datagram, µs.
    #[arg(long, default_value_t = 0.0)]
    cost_us: f64,
    /// Every this many datagrams the processing time grows by `--step-us`.
    #[arg(long)]
    slow_every: Option<u64>,
    /// Growth of the processing time, µs.
    #[arg(long, default_value_t = 0.0)]
    step_us: f64,
    /// Receive buffer in bytes (the kernel doubles it).
    #[arg(long, default_value_t = 212_992)]
    rcvbuf: usize,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let sock = match UdpSocket::bind(a.bind) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("linux-udp-sink: {}: {e}", a.bind);
            return ExitCode::FAILURE;
        }
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = set_rcvbuf(&sock, a.rcvbuf);
    // SIGTERM/SIGINT end the loop, so the log is flushed (a killed sink would lose its last lines).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, std::sync::Arc::clone(&stop));
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.seconds);
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut buf = vec![0u8; 65536];
    let mut n: u64 = 0;
    while Instant::now() < end {
        let Ok(len) = sock.recv(&mut buf) else {
            continue;
        };
        let at = start.elapsed().as_nanos();
        let seq = buf
            .get(..8)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])));
        let steps = a.slow_every.map_or(0, |e| n / e.max(1));
        let cost = Duration::from_secs_f64((a.cost_us + a.step_us * steps as f64) * 1e-6);
        let t = Instant::now();
        while t.elapsed() < cost {
            std::hint::spin_loop();
        }
        n += 1;
        let _ = match seq {
            Some(s) => writeln!(out, "{at} {len} {s}"),
            None => writeln!(out, "{at} {len} -"),
        };
    }
    let _ = out.flush();
    ExitCode::SUCCESS
}

fn set_rcvbuf(sock: &UdpSocket, bytes: usize) -> std::io::Result<()> {
    rustix::net::sockopt::set_socket_recv_buffer_size(sock, bytes).map_err(std::io::Error::from)
}
