//! TCP through nemflow side by side with Linux, in one run:
//! - **nemflow**: this process is the app (its own smoltcp stack per connection over its
//!   flow's Rbuf channels, the real driver on net_tap, the real flow manager); the peer is a
//!   Linux socket program in the tap's remote-host namespace.
//! - **Linux**: the same peer program, and a Linux socket client in a second namespace, over a
//!   veth pair (the same kind of link: a kernel software device between two hosts).
//!
//! Measured: bulk throughput each way (one connection, 128 MiB), request/response latency
//! (64-byte request, 64-byte answer, one connection), and connection set-up (from the call
//! until the connection is established: for nemflow the flow manager's flow set-up and the
//! handshake, for Linux `connect()`).
//!
//! `cargo build --release --workspace --bins && cargo bench -p nemflow-appstack --bench tcp`
//! (`-- --quick` for a short run). The driver paces to 10 Gbit/s (so the link does not
//! limit either side). Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failing loudly is the point

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use nemflow_appstack::tcp::{FlowManager, TcpConfig, TcpStream as NfStream};
use nemflow_testkit::driver::DriverOptions;
use nemflow_testkit::system::{stop_child, NemflowHost};
use nemflow_testkit::{ip, Netns};

const PEER_PORT: u16 = 5201;
const MSG: usize = 64;

// ---------------------------------------------------------------- the Linux peer (server)

/// `peer`: serves on PEER_PORT: the first byte of a connection picks what it does:
/// `s` sink (read to EOF), `o` source (write the 8-byte big-endian length that follows, then
/// close), `e` echo of MSG-byte messages, `c` close at once (connection set-up).
fn peer() {
    let l = TcpListener::bind(("0.0.0.0", PEER_PORT)).unwrap();
    println!("ready");
    let _ = std::io::stdout().flush();
    for c in l.incoming() {
        let Ok(mut c) = c else { continue };
        std::thread::spawn(move || {
            let _ = c.set_nodelay(true);
            let mut kind = [0u8; 1];
            if c.read_exact(&mut kind).is_err() {
                return;
            }
            let mut buf = vec![0u8; 1 << 16];
            match kind[0] {
                b's' => while c.read(&mut buf).is_ok_and(|n| n > 0) {},
                b'o' => {
                    let mut len = [0u8; 8];
                    if c.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut left = u64::from_be_bytes(len);
                    while left > 0 {
                        let n = (buf.len() as u64).min(left) as usize;
                        if c.write_all(&buf[..n]).is_err() {
                            return;
                        }
                        left -= n as u64;
                    }
                    let _ = c.shutdown(Shutdown::Write);
                    while c.read(&mut buf).is_ok_and(|n| n > 0) {}
                }
                b'e' => {
                    let mut m = [0u8; MSG];
                    while c.read_exact(&mut m).is_ok() {
                        if c.write_all(&m).is_err() {
                            return;
                        }
                    }
                }
                _ => while c.read(&mut buf).is_ok_and(|n| n > 0) {},
            }
        });
    }
}

// ---------------------------------------------------------------- the clients

/// What a client does on a connection (std's or nemflow's).
trait Conn: Read + Write {}
impl Conn for TcpStream {}
impl Conn for NfStream {}

/// Sends `bytes` to the sink; returns bit/s.
fn bulk_tx(c: &mut dyn Conn, bytes: u64) -> f64 {
    c.write_all(b"s").unwrap();
    let buf = vec![0x5au8; 1 << 16];
    let t0 = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        c.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    bytes as f64 * 8.0 / t0.elapsed().as_secs_f64()
}

/// Receives `bytes` from the source; returns bit/s.
fn bulk_rx(c: &mut dyn Conn, bytes: u64) -> f64 {
    let mut req = vec![b'o'];
    req.extend_from_slice(&bytes.to_be_bytes());
    c.write_all(&req).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let t0 = Instant::now();
    let mut got = 0u64;
    while got < bytes {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "source closed early");
        got += n as u64;
    }
    bytes as f64 * 8.0 / t0.elapsed().as_secs_f64()
}

/// `rounds` request/response exchanges; returns each round trip in µs.
fn rr(c: &mut dyn Conn, rounds: usize) -> Vec<f64> {
    c.write_all(b"e").unwrap();
    let mut m = [7u8; MSG];
    let mut out = Vec::with_capacity(rounds);
    for i in 0..rounds + rounds / 10 {
        let t0 = Instant::now();
        c.write_all(&m).unwrap();
        c.read_exact(&mut m).unwrap();
        if i >= rounds / 10 {
            out.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    out
}

#[derive(Debug, Default, Clone)]
struct Results {
    tx_bps: Vec<f64>,
    rx_bps: Vec<f64>,
    rr_us: Vec<f64>,
    connect_us: Vec<f64>,
    /// nemflow: of the set-up, the flow manager's open and the stack's creation.
    open_us: Vec<f64>,
    /// nemflow: frames the driver dropped on the bulk connections' flows.
    drops: u64,
}

struct Sizes {
    bulk: u64,
    runs: usize,
    rounds: usize,
    connects: usize,
}

fn run_linux(peer: SocketAddrV4, z: &Sizes) -> Results {
    let mut r = Results::default();
    let conn = || {
        let s = TcpStream::connect(peer).unwrap();
        s.set_nodelay(true).unwrap();
        s
    };
    for _ in 0..z.runs {
        let mut s = conn();
        r.tx_bps.push(bulk_tx(&mut s, z.bulk));
        s.shutdown(Shutdown::Write).unwrap();
        let mut s = conn();
        r.rx_bps.push(bulk_rx(&mut s, z.bulk));
    }
    r.rr_us = rr(&mut conn(), z.rounds);
    for _ in 0..z.connects {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(peer).unwrap();
        r.connect_us.push(t0.elapsed().as_secs_f64() * 1e6);
        let _ = s.write_all(b"c");
    }
    r
}

fn run_nemflow(fm: &FlowManager, peer: SocketAddrV4, z: &Sizes) -> Results {
    let mut r = Results::default();
    let cfg = TcpConfig::default();
    let conn = || NfStream::connect_with(fm, peer, &cfg).unwrap();
    // Frames the driver dropped for want of an RX buffer, on the bulk connections.
    let drops = |s: &NfStream| {
        let st = fm.lock().stats().unwrap();
        st.flows
            .iter()
            .filter(|(f, _)| f.id == s.flow())
            .map(|(_, c)| c.rx_dropped_no_buffer + c.tx_dropped)
            .sum::<u64>()
    };
    for _ in 0..z.runs {
        let mut s = conn();
        r.tx_bps.push(bulk_tx(&mut s, z.bulk));
        s.wait_acked(std::time::Duration::from_secs(30)).unwrap();
        r.drops += drops(&s);
        s.close().unwrap();
        let mut s = conn();
        r.rx_bps.push(bulk_rx(&mut s, z.bulk));
        r.drops += drops(&s);
        s.close().unwrap();
    }
    let mut s = conn();
    r.rr_us = rr(&mut s, z.rounds);
    s.close().unwrap();
    for _ in 0..z.connects {
        let t0 = Instant::now();
        // The flow (flow manager), the stack, the SYN out ...
        let mut s = NfStream::start_connect(fm, peer, &cfg).unwrap();
        r.open_us.push(t0.elapsed().as_secs_f64() * 1e6);
        // ... and the handshake (a write waits for it).
        s.write_all(b"c").unwrap();
        r.connect_us.push(t0.elapsed().as_secs_f64() * 1e6);
        let _ = s.abort();
    }
    r
}

/// `linux-client ADDR bulk runs rounds connects`: runs the Linux client, prints its results.
fn linux_client(args: &[String]) {
    let peer: SocketAddrV4 = args[0].parse().unwrap();
    let n = |i: usize| args[i].parse::<u64>().unwrap();
    let z = Sizes {
        bulk: n(1),
        runs: n(2) as usize,
        rounds: n(3) as usize,
        connects: n(4) as usize,
    };
    let r = run_linux(peer, &z);
    let line = |name: &str, v: &[f64]| {
        let s: Vec<String> = v.iter().map(|x| format!("{x:.3}")).collect();
        println!("{name} {}", s.join(" "));
    };
    line("tx", &r.tx_bps);
    line("rx", &r.rx_bps);
    line("rr", &r.rr_us);
    line("connect", &r.connect_us);
}

fn parse_results(text: &str) -> Results {
    let mut r = Results::default();
    for l in text.lines() {
        let mut it = l.split_whitespace();
        let name = it.next().unwrap_or("");
        let v: Vec<f64> = it.map(|x| x.parse().unwrap()).collect();
        match name {
            "tx" => r.tx_bps = v,
            "rx" => r.rx_bps = v,
            "rr" => r.rr_us = v,
            "connect" => r.connect_us = v,
            _ => {}
        }
    }
    r
}

// ---------------------------------------------------------------- the harness

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn start_peer(cmd: &mut Command) -> Child {
    let mut c = cmd
        .arg("peer")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = c.stdout.take().unwrap();
    let mut b = [0u8; 6];
    out.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ready\n");
    c
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("peer") => return peer(),
        Some("linux-client") => return linux_client(&args[1..]),
        _ => {}
    }
    nemflow_testkit::require_root();
    let quick = args.iter().any(|a| a == "--quick");
    let z = if quick {
        Sizes {
            bulk: 32 << 20,
            runs: 1,
            rounds: 2_000,
            connects: 50,
        }
    } else {
        Sizes {
            bulk: 128 << 20,
            runs: 3,
            rounds: 20_000,
            connects: 300,
        }
    };
    let exe = std::env::current_exe().unwrap();

    // Linux to Linux over a veth pair.
    let a = Netns::new("tba").unwrap();
    let b = Netns::new("tbb").unwrap();
    let (va, vb) = (
        nemflow_testkit::unique_name("tva"),
        nemflow_testkit::unique_name("tvb"),
    );
    ip(&[
        "link", "add", "name", &va, "type", "veth", "peer", "name", &vb,
    ])
    .unwrap();
    a.adopt(&va).unwrap();
    b.adopt(&vb).unwrap();
    a.exec(&["ip", "addr", "add", "10.88.0.1/24", "dev", &va])
        .unwrap();
    b.exec(&["ip", "addr", "add", "10.88.0.2/24", "dev", &vb])
        .unwrap();
    a.exec(&["ip", "link", "set", &va, "up"]).unwrap();
    b.exec(&["ip", "link", "set", &vb, "up"]).unwrap();
    let mut linux_peer = start_peer(&mut b.command(exe.to_str().unwrap()));
    let linux = {
        let out = a
            .command(exe.to_str().unwrap())
            .arg("linux-client")
            .arg(format!("10.88.0.2:{PEER_PORT}"))
            .args([
                z.bulk.to_string(),
                z.runs.to_string(),
                z.rounds.to_string(),
                z.connects.to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_results(&String::from_utf8_lossy(&out.stdout))
    };
    stop_child(&mut linux_peer);

    // nemflow: this process as the app, the peer on the tap's remote host.
    let host = NemflowHost::start(
        &DriverOptions {
            rate_bps: 10_000_000_000,
            idle: if args.iter().any(|a| a == "--busy") {
                "busy"
            } else {
                "adaptive"
            },
            ..DriverOptions::default()
        },
        "",
    )
    .unwrap();
    let mut tap_peer = start_peer(
        Command::new("ip")
            .args(["netns", "exec", &host.driver.netns])
            .arg(&exe),
    );
    let fm =
        FlowManager::from_client(nemflow_flowmgr::client::Client::connect(&host.socket).unwrap());
    let nemflow = run_nemflow(&fm, SocketAddrV4::new([10, 77, 0, 2].into(), PEER_PORT), &z);
    stop_child(&mut tap_peer);
    drop(fm);
    drop(host);

    let med = |v: &[f64]| pct(v, 0.5);
    println!(
        "\nTCP, one connection, {} MiB bulk x{}, {} round trips of {MSG} B, {} connects",
        z.bulk >> 20,
        z.runs,
        z.rounds,
        z.connects
    );
    println!("| measure | nemflow (app stack over net_tap) | Linux (veth) | nemflow / Linux |");
    println!("|---|---:|---:|---:|");
    let row = |name: &str, n: f64, l: f64, unit: &str| {
        println!("| {name} | {n:.1} {unit} | {l:.1} {unit} | {:.2} |", n / l);
    };
    row(
        "bulk, app sends (median)",
        med(&nemflow.tx_bps) / 1e6,
        med(&linux.tx_bps) / 1e6,
        "Mbit/s",
    );
    row(
        "bulk, app receives (median)",
        med(&nemflow.rx_bps) / 1e6,
        med(&linux.rx_bps) / 1e6,
        "Mbit/s",
    );
    row(
        "request/response RTT p50",
        pct(&nemflow.rr_us, 0.5),
        pct(&linux.rr_us, 0.5),
        "µs",
    );
    row(
        "request/response RTT p99",
        pct(&nemflow.rr_us, 0.99),
        pct(&linux.rr_us, 0.99),
        "µs",
    );
    row(
        "connection set-up p50",
        pct(&nemflow.connect_us, 0.5),
        pct(&linux.connect_us, 0.5),
        "µs",
    );
    row(
        "connection set-up p99",
        pct(&nemflow.connect_us, 0.99),
        pct(&linux.connect_us, 0.99),
        "µs",
    );
    println!(
        "| … of which the flow (open, attach, stack, SYN out) p50 / p99 | {:.1} / {:.1} µs | | |",
        pct(&nemflow.open_us, 0.5),
        pct(&nemflow.open_us, 0.99)
    );
    println!(
        "\nnemflow bulk connections: {} frames dropped by the driver on their flows",
        nemflow.drops
    );
}
