//! The Linux anchor of experiment 6: send MTU-sized UDP datagrams from a kernel socket as fast
//! as the kernel lets us, for a while, then print what was sent.

use std::net::{SocketAddrV4, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

/// Send UDP datagrams through a Linux socket as fast as possible.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Local address and port to bind.
    #[arg(long)]
    bind: SocketAddrV4,
    /// Destination.
    #[arg(long)]
    remote: SocketAddrV4,
    /// Payload bytes per datagram.
    #[arg(long, default_value_t = 1472)]
    payload: usize,
    /// Seconds to send for.
    #[arg(long)]
    seconds: f64,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let sock = match UdpSocket::bind(a.bind).and_then(|s| s.connect(a.remote).map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("linux-udp-blast: {}: {e}", a.bind);
            return ExitCode::FAILURE;
        }
    };
    let payload = vec![0x42u8; a.payload];
    let end = Instant::now() + Duration::from_secs_f64(a.seconds);
    let (mut sent, mut refused) = (0u64, 0u64);
    while Instant::now() < end {
        match sock.send(&payload) {
            Ok(_) => sent += 1,
            // ENOBUFS (qdisc full) or ECONNREFUSED (an ICMP error came back): keep going.
            Err(_) => refused += 1,
        }
    }
    println!("sent {sent} datagrams ({refused} refused by the kernel)");
    ExitCode::SUCCESS
}
