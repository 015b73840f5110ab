//! `flowmgr-bench`: flow set-up and tear-down latency through the flow manager, side by side
//! with Linux `socket() + bind() + connect()` for UDP, in the same run.
//!
//! One cycle is: open a connected UDP flow (port 0, a resolved neighbour), attach its channels,
//! put one 64-byte frame on its transmit FIFO (the first usable send), then close it (the flow
//! manager removes it from the driver before it answers). The Linux cycle is: `socket`,
//! `bind(0)`, `connect`, `send` 64 bytes, then `close`. The flow manager runs in this process on
//! its own thread, serving its real Unix socket; the driver is the in-process fake driver
//! (`nemflow_flowmgr::testing`) unless `--config` names a configuration whose driver is running.
//!
//! With `--reserve`, every cycle starts (before the pause, outside the open's timing) with
//! `Client::reserve`: the app takes a staged channel pair and attaches it, so the open that
//! follows is a request and a reply without fds, and attaching returns the endpoints it has.

#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use nemflow_config::Config;
use nemflow_flowmgr::client::Client;
use nemflow_flowmgr::daemon::{bind_app_socket, Daemon};
use nemflow_flowmgr::driver::{DriverLink, LinkError, SocketDriver};
use nemflow_flowmgr::testing::FakeDriver;
use nemflow_proto::app::OpenFlow;
use nemflow_proto::ctl::{DriverReply, DriverRequest};
use nemflow_rbuf::IoRec;

/// Flow set-up/tear-down latency through the flow manager against Linux UDP sockets.
#[derive(Debug, Parser)]
#[command(name = "flowmgr-bench")]
struct Args {
    /// Measured cycles of each kind.
    #[arg(long, default_value_t = 10_000)]
    cycles: usize,
    /// Warm-up cycles (not measured).
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// Flows held open at once for the memory figure.
    #[arg(long, default_value_t = 500)]
    hold: usize,
    /// Use this configuration's (running) driver instead of the fake one; the flow manager's
    /// socket goes to a temporary directory.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Pause between cycles, µs (0: back to back). With a pause of a few ms the flow manager
    /// has idle time to prepare channels ahead, as it has between real applications' opens.
    #[arg(long, default_value_t = 0)]
    gap_us: u64,
    /// Reserve a channel pair before each cycle (timed on its own line, outside the open), so
    /// that the open runs on channels the app attached already.
    #[arg(long)]
    reserve: bool,
    /// Remote of the flows (must answer ARP; with the fake driver it always does).
    #[arg(long, default_value = "10.77.0.2:9")]
    remote: SocketAddrV4,
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowmgr-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

const FAKE_CONFIG: &str = "port:\n  vdev: net_null0\nhost:\n  ip: 10.77.0.1/24\n  mac: \"02:4e:46:00:00:01\"\nflowmgr:\n  max_flows_per_uid: 100000\n  max_channel_bytes_per_uid: 1099511627776\n";

fn run(args: Args) -> Result<(), String> {
    let dir = tempfile_dir()?;
    let mut fake = None;
    let mut config = match &args.config {
        Some(p) => Config::load(p).map_err(|e| e.to_string())?,
        None => {
            let f = FakeDriver::start(&dir.join("driver.sock")).map_err(|e| e.to_string())?;
            f.add_neighbour(*args.remote.ip(), [2, 0x4e, 0x46, 0xff, 0, 2]);
            let mut c =
                Config::parse(FAKE_CONFIG, &dir.join("bench.yaml")).map_err(|e| e.to_string())?;
            c.driver.control_socket = f.path().to_owned();
            fake = Some(f);
            c
        }
    };
    config.flowmgr.socket = dir.join("fm.sock");
    config.flowmgr.max_flows_per_uid = config.flowmgr.max_flows_per_uid.max(100_000);
    config.flowmgr.max_channel_bytes_per_uid = u64::MAX;
    raise_fd_limit();

    let listener = bind_app_socket(&config.flowmgr.socket, 0o600).map_err(|e| e.to_string())?;
    let (stop_rx, mut stop_tx) = UnixStream::pair().map_err(|e| e.to_string())?;
    let cfg = config.clone();
    let installs_timed = Arc::new(Mutex::new(Vec::new()));
    let timed = installs_timed.clone();
    let daemon = std::thread::spawn(move || -> Result<(), String> {
        let link = SocketDriver::connect(&cfg.driver.control_socket, Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        let link = Timed {
            link,
            installs: timed,
            sent: Default::default(),
        };
        let mut d = Daemon::start(&cfg, link, listener).map_err(|e| e.to_string())?;
        d.set_stop_fd(stop_rx.into());
        d.run().map_err(|e| e.to_string())
    });
    let mut client = connect(&config.flowmgr.socket)?;
    let req = OpenFlow::udp(0, Some(args.remote));

    let mut nf_reply = Vec::new();
    let mut close_reply = Vec::new();
    let mut nf_attach = Vec::new();
    let mut on_reserve = 0usize;
    let mut flow_cycle = |c: &mut Client| -> Result<(Duration, Duration), String> {
        let t0 = Instant::now();
        let flow = c.open(&req).map_err(|e| e.to_string())?;
        nf_reply.push(t0.elapsed());
        on_reserve += usize::from(flow.reserved());
        let id = flow.id();
        let ta = Instant::now();
        let (mut tx, rx) = flow.attach().map_err(|e| e.to_string())?;
        nf_attach.push(ta.elapsed());
        let ext = tx
            .alloc(64)
            .map_err(|e| e.to_string())?
            .ok_or("no transmit buffer")?;
        tx.buf_mut(ext).map_err(|e| e.to_string())?.fill(0x5a);
        tx.push(IoRec::single(ext, 0)).map_err(|e| e.to_string())?;
        let t1 = Instant::now();
        c.close(id).map_err(|e| e.to_string())?;
        close_reply.push(t1.elapsed());
        drop((tx, rx));
        let t2 = Instant::now();
        Ok((t1 - t0, t2 - t1))
    };
    let dst = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, args.remote.port()));
    let linux_cycle = || -> Result<(Duration, Duration), String> {
        let t0 = Instant::now();
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
        s.connect(dst).map_err(|e| e.to_string())?;
        s.send(&[0x5a; 64]).map_err(|e| e.to_string())?;
        let t1 = Instant::now();
        drop(s);
        let t2 = Instant::now();
        Ok((t1 - t0, t2 - t1))
    };

    let mut reserves = Vec::new();
    let mut reserve = |c: &mut Client| -> Result<(), String> {
        if args.reserve {
            let t = Instant::now();
            c.reserve().map_err(|e| e.to_string())?;
            reserves.push(t.elapsed());
        }
        Ok(())
    };
    for _ in 0..args.warmup {
        reserve(&mut client)?;
        flow_cycle(&mut client)?;
        linux_cycle()?;
    }
    let (mut nf_open, mut nf_close, mut lx_open, mut lx_close) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let warm = args.warmup;
    let start = Instant::now();
    let mut nf_total = Duration::ZERO;
    // Interleaved, so both see the same machine state.
    for _ in 0..args.cycles {
        reserve(&mut client)?;
        if args.gap_us > 0 {
            std::thread::sleep(Duration::from_micros(args.gap_us));
        }
        let t = Instant::now();
        let (o, c) = flow_cycle(&mut client)?;
        nf_total += t.elapsed();
        nf_open.push(o);
        nf_close.push(c);
        let (o, c) = linux_cycle()?;
        lx_open.push(o);
        lx_close.push(c);
    }
    let wall = start.elapsed();

    // Memory: hold many flows at once.
    let rss0 = rss_bytes();
    let mut held = Vec::new();
    let mut channel_bytes = 0u64;
    for _ in 0..args.hold {
        let flow = client.open(&req).map_err(|e| e.to_string())?;
        channel_bytes = flow.tx_spec.data_bytes
            + flow.tx_spec.control_bytes()
            + flow.rx_spec.data_bytes
            + flow.rx_spec.control_bytes();
        held.push(flow.attach().map_err(|e| e.to_string())?);
    }
    let rss1 = rss_bytes();
    drop(held);
    drop(client);

    let _ = std::io::Write::write_all(&mut stop_tx, b"x");
    daemon
        .join()
        .map_err(|_| "flow manager thread panicked".to_string())??;
    let installs = fake.as_ref().map(|f| {
        let s = f.state();
        let n = |k| s.requests.get(k).copied().unwrap_or(0);
        (n("install"), n("stage"))
    });
    drop(fake);
    let _ = std::fs::remove_dir_all(&dir);

    let driver = if args.config.is_some() {
        "real driver"
    } else {
        "fake driver"
    };
    println!(
        "flow set-up/tear-down, {} cycles each, interleaved, {} µs apart ({driver}{}; {} s wall)",
        args.cycles,
        args.gap_us,
        if args.reserve {
            ", a pair reserved before each cycle"
        } else {
            ""
        },
        wall.as_secs_f64().round()
    );
    println!();
    println!("| | p50 µs | p99 µs | max µs |");
    println!("|---|---:|---:|---:|");
    let mut nf_reply: Vec<Duration> = nf_reply.split_off(warm.min(nf_reply.len()));
    let mut close_reply: Vec<Duration> = close_reply.split_off(warm.min(close_reply.len()));
    let mut nf_attach: Vec<Duration> = nf_attach.split_off(warm.min(nf_attach.len()));
    // The host flow's install first; then every open that found no staged pair.
    let mut install: Vec<Duration> = installs_timed
        .lock()
        .map_err(|_| "poisoned")?
        .drain(..)
        .skip(1)
        .collect();
    let mut reserves: Vec<Duration> = reserves.split_off(warm.min(reserves.len()));
    let reserved_line = format!(
        "reserve (app takes and attaches a pair, before the cycle; {} of {} opens ran on one)",
        on_reserve,
        args.warmup + args.cycles
    );
    let waited = format!(
        "… opens without a staged pair ({} of {}): the driver's InstallFlow, waited for",
        install.len(),
        args.warmup + args.cycles + args.hold
    );
    for (name, v) in [
        ("nemflow open + attach + first send", &mut nf_open),
        (
            "… of which the open request (FIB and fds received)",
            &mut nf_reply,
        ),
        (waited.as_str(), &mut install),
        ("… of which attaching both channels (app)", &mut nf_attach),
        (reserved_line.as_str(), &mut reserves),
        ("Linux socket + bind + connect + send (UDP)", &mut lx_open),
        ("nemflow close (reply + unmap)", &mut nf_close),
        ("… of which the close request", &mut close_reply),
        ("Linux close (UDP)", &mut lx_close),
    ] {
        if v.is_empty() && name.starts_with("reserve") {
            continue;
        }
        let (p50, p99, max) = percentiles(v);
        println!("| {name} | {p50:.1} | {p99:.1} | {max:.1} |");
    }
    let ratio = percentiles(&mut nf_open).0 / percentiles(&mut lx_open).0.max(0.001);
    println!();
    println!("open p50 ratio nemflow/Linux: {ratio:.1}x");
    println!(
        "nemflow flows per second sustained (open + first send + close): {:.0}",
        args.cycles as f64 / nf_total.as_secs_f64()
    );
    println!(
        "memory per open flow: {} KiB of channels (memfd, both directions, data + control); resident growth {:.1} KiB per flow over {} flows (app + flow manager + driver ends, one process)",
        channel_bytes / 1024,
        (rss1.saturating_sub(rss0)) as f64 / 1024.0 / args.hold.max(1) as f64,
        args.hold
    );
    if let Some((installs, staged)) = installs {
        println!("driver installs: {installs}; channel pairs staged ahead: {staged}");
    }
    Ok(())
}

fn connect(path: &std::path::Path) -> Result<Client, String> {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match Client::connect_as(path, "flowmgr-bench") {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > end => return Err(e.to_string()),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn percentiles(v: &mut [Duration]) -> (f64, f64, f64) {
    v.sort();
    let at = |q: f64| {
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    (at(0.5), at(0.99), at(1.0))
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn raise_fd_limit() {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let new = rustix::process::Rlimit {
        current: lim.maximum,
        maximum: lim.maximum,
    };
    let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, new);
}

fn tempfile_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("flowmgr-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// The driver link, timing each `InstallFlow` (an open the flow manager waits for: one that
/// found no staged pair; an `InstallStaged` is not waited for).
struct Timed {
    link: SocketDriver,
    installs: Arc<Mutex<Vec<Duration>>>,
    /// When each request in flight was sent, if it is an `InstallFlow`.
    sent: std::collections::VecDeque<Option<Instant>>,
}

impl DriverLink for Timed {
    fn send(&mut self, req: &DriverRequest, fds: &[BorrowedFd<'_>]) -> Result<(), LinkError> {
        let install = matches!(req, DriverRequest::InstallFlow { .. });
        self.link.send(req, fds)?;
        self.sent.push_back(install.then(Instant::now));
        Ok(())
    }

    fn recv(&mut self) -> Result<DriverReply, LinkError> {
        let r = self.link.recv();
        if let Some(Some(t)) = self.sent.pop_front() {
            if let Ok(mut v) = self.installs.lock() {
                v.push(t.elapsed());
            }
        }
        r
    }

    fn watch_fd(&self) -> Option<BorrowedFd<'_>> {
        self.link.watch_fd()
    }
}
