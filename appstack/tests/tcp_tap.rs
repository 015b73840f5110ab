//! TCP end to end on net_tap: the real driver and flow manager (testkit's `NemflowHost`), the
//! TCP example apps as real processes, and Linux's own tools on the remote host (a network
//! namespace): curl, nc, Python sockets, scapy. Needs root and the workspace's binaries
//! (`./run test` builds them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use nemflow_testkit::driver::{DriverOptions, HOST_IP};
use nemflow_testkit::system::{stop_child, NemflowHost};

/// The host, with helpers for the remote side.
struct Tap {
    host: NemflowHost,
}

/// A child process killed and reaped when dropped (also when a test fails midway).
struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        stop_child(&mut self.0);
    }
}

impl Tap {
    fn start(rate_bps: u64) -> Tap {
        let opts = DriverOptions {
            rate_bps,
            ..DriverOptions::default()
        };
        Tap {
            host: NemflowHost::start(&opts, "  time_wait_ms: 20000\n").unwrap(),
        }
    }

    /// Starts a workspace app and waits for the first line it prints (its port).
    fn app(&self, name: &str, args: &[&str]) -> (App, String) {
        let mut child = self
            .host
            .app(name)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "{name} printed nothing (did it fail?)");
        (App(child), line)
    }

    /// A command in the remote host's namespace.
    fn remote(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host.driver.netns, prog]);
        c
    }

    /// Runs Python (the system's, which has scapy) in the remote namespace.
    fn python(&self, script: &str) -> Output {
        self.remote("/usr/bin/python3")
            .args(["-c", script])
            .output()
            .unwrap()
    }

    fn flowmgr_counter(&self, name: &str) -> u64 {
        let mut c = nemflow_flowmgr::client::Client::connect(&self.host.socket).unwrap();
        let s = c.stats().unwrap();
        s.flowmgr
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no counter {name}"))
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sha256(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn nc_round_trips_lines_with_tcp_echo() {
    let t = Tap::start(1_000_000_000);
    let (_echo, line) = t.app("tcp-echo", &["--port", "7007"]);
    assert!(line.contains("7007"), "{line}");
    // Line by line, interactively: each line comes back before the next goes.
    let script = format!(
        "import socket\ns=socket.create_connection(('{HOST_IP}',7007),timeout=5)\nf=s.makefile('rwb')\nfor i in range(20):\n    l=b'line %d of the echo test\\n'%i\n    f.write(l); f.flush()\n    assert f.readline()==l, i\ns.shutdown(socket.SHUT_WR)\nassert f.read()==b''\nprint('ok')\n"
    );
    let o = t.python(&script);
    assert!(o.status.success(), "{}", text(&o));
    // nc: stdin to the server, what comes back to stdout, closes when the server does.
    let input: String = (0..200).map(|i| format!("nc line {i}\n")).collect();
    let mut nc = t
        .remote("nc")
        .args(["-N", "-w", "5", HOST_IP, "7007"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    nc.stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = nc.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), input);
    assert!(t.flowmgr_counter("tcp_accepts") >= 2);
}

#[test]
fn curl_downloads_a_10_mib_file_intact_over_keep_alive() {
    let t = Tap::start(1_000_000_000);
    let root = t.host.dir().join("www");
    std::fs::create_dir(&root).unwrap();
    let file = root.join("big.bin");
    let data: Vec<u8> = (0..10u64 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    std::fs::write(&file, &data).unwrap();
    std::fs::write(root.join("small.txt"), b"hello over nemflow\n").unwrap();
    let (_srv, line) = t.app(
        "http-serve",
        &["--port", "8080", "--root", root.to_str().unwrap()],
    );
    assert!(line.contains("8080"), "{line}");
    let out = t.host.dir().join("got");
    std::fs::create_dir(&out).unwrap();
    let url = |p: &str| format!("http://{HOST_IP}:8080/{p}");
    // Three downloads and a 404, one curl, one connection (keep-alive).
    let o = t
        .remote("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            "-w",
            "%{http_code} %{num_connects} %{size_download}\\n",
        ])
        .arg("-o")
        .arg(out.join("1"))
        .arg(url("big.bin"))
        .arg("-o")
        .arg(out.join("2"))
        .arg(url("small.txt"))
        .arg("-o")
        .arg(out.join("3"))
        .arg(url("big.bin"))
        .arg("-o")
        .arg(out.join("4"))
        .arg(url("missing"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let want_len = (10u64 << 20).to_string();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0], format!("200 1 {want_len}"), "{lines:?}");
    assert_eq!(lines[1], "200 0 19", "kept alive: {lines:?}");
    assert_eq!(lines[2], format!("200 0 {want_len}"), "{lines:?}");
    assert!(lines[3].starts_with("404 0 "), "{lines:?}");
    let want = sha256(&file);
    assert_eq!(sha256(&out.join("1")), want);
    assert_eq!(sha256(&out.join("3")), want);
    assert_eq!(
        std::fs::read(out.join("2")).unwrap(),
        b"hello over nemflow\n"
    );
    // HTTP/1.0 without keep-alive: the server closes, curl sees a complete body.
    let o = t
        .remote("curl")
        .args([
            "-sS",
            "-0",
            "--max-time",
            "30",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
        ])
        .arg(url("small.txt"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "200 19", "{}", text(&o));
}

/// Python (in the remote namespace) for the test pattern: byte i is (i mod 251) + seed.
const PATTERN_PY: &str = "def pattern(n, seed):\n    blk = bytes(((i + seed) & 0xff) for i in range(251))\n    return (blk * (n // 251 + 1))[:n]\n";

/// Starts a Python script in the remote namespace and waits for its first line.
fn remote_script(t: &Tap, script: &str) -> (App, BufReader<std::process::ChildStdout>, String) {
    remote_script_niced(t, script, 0)
}

/// [`remote_script`] at a nice level (a load generator standing for a remote host, whose
/// CPUs would not be ours).
fn remote_script_niced(
    t: &Tap,
    script: &str,
    nice: i32,
) -> (App, BufReader<std::process::ChildStdout>, String) {
    let mut child = t
        .remote("nice")
        .args(["-n", &nice.to_string(), "/usr/bin/python3"])
        .args(["-u", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    (App(child), out, line)
}

#[test]
fn an_app_connects_out_and_exchanges_10_mib_both_ways() {
    let t = Tap::start(1_000_000_000);
    let n = 10u64 << 20;
    // The remote server sends pattern 5 while it reads pattern 3 to the end, then checks it.
    let script = format!(
        "{PATTERN_PY}import socket, threading, hashlib\nl=socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\nl.bind(('0.0.0.0', 9000)); l.listen(1); print('listening', flush=True)\nc,_=l.accept()\ndef tx():\n    c.sendall(pattern({n}, 5)); c.shutdown(socket.SHUT_WR)\nth=threading.Thread(target=tx); th.start()\nh=hashlib.sha256(); got=0\nwhile True:\n    b=c.recv(1<<16)\n    if not b: break\n    h.update(b); got+=len(b)\nth.join(); c.close()\nprint('received', got, h.hexdigest()==hashlib.sha256(pattern({n}, 3)).hexdigest(), flush=True)\n"
    );
    let (_srv, mut out, line) = remote_script(&t, &script);
    assert_eq!(line.trim(), "listening");
    let o = t
        .host
        .app("tcp-bulk")
        .args([
            "--connect",
            "10.77.0.2:9000",
            "--send-seed",
            "3",
            "--recv-seed",
            "5",
        ])
        .args(["--send", &n.to_string(), "--recv", &n.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(
        report.contains(&format!("sent {n} received {n} mismatched 0")),
        "{report}"
    );
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), format!("received {n} True"));
    eprintln!("{}", report.trim());
}

#[test]
fn kill_9_mid_transfer_resets_the_remote_connection_within_1_s() {
    let t = Tap::start(1_000_000_000);
    // The remote reads until the connection ends and says how.
    let script = "import socket, time\nl=socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\nl.bind(('0.0.0.0', 9001)); l.listen(1); print('listening', flush=True)\nc,_=l.accept(); got=0; said=False\ntry:\n    while True:\n        b=c.recv(1<<16)\n        if not b:\n            print('eof', flush=True); break\n        got+=len(b)\n        if got > (1<<20) and not said:\n            print('flowing', flush=True); said=True\nexcept ConnectionResetError:\n    print('reset', got, flush=True)\n";
    let (_srv, mut out, line) = remote_script(&t, script);
    assert_eq!(line.trim(), "listening");
    let mut app = App(t
        .host
        .app("tcp-bulk")
        .args(["--connect", "10.77.0.2:9001", "--send", "100000000000"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "flowing");
    let killed = std::time::Instant::now();
    app.0.kill().unwrap(); // SIGKILL
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let took = killed.elapsed();
    assert!(
        line.starts_with("reset"),
        "the connection ended with {line:?}"
    );
    eprintln!("kill -9 to reset at the remote: {took:?} ({})", line.trim());
    assert!(
        took < std::time::Duration::from_secs(1),
        "reset took {took:?}"
    );
    assert!(t.flowmgr_counter("tcp_resets_on_close") >= 1);
}

/// Python on the remote host: a request from source port 45000 (reused at once, as TCP
/// allows after a passive close); prints the status line or the error.
fn request_from_45000(t: &Tap, port: u16) -> String {
    let script = format!(
        "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('10.77.0.2', 45000)); s.settimeout(5)\ntry:\n    s.connect(('{HOST_IP}', {port}))\n    s.sendall(b'GET /small.txt HTTP/1.1\\r\\nConnection: close\\r\\n\\r\\n')\n    d=b''\n    while True:\n        b=s.recv(4096)\n        if not b: break\n        d+=b\n    print(d.split(b'\\r\\n')[0].decode(), d.endswith(b'hello over nemflow\\n'))\nexcept Exception as e:\n    print(type(e).__name__)\ns.close()\n"
    );
    let o = t.python(&script);
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

#[test]
fn a_4_tuple_in_time_wait_is_answered_as_tcp_requires() {
    let t = Tap::start(1_000_000_000);
    let root = t.host.dir().join("www");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("small.txt"), b"hello over nemflow\n").unwrap();
    let serve = || {
        t.app(
            "http-serve",
            &["--port", "8081", "--root", root.to_str().unwrap()],
        )
    };
    // 1. One request with Connection: close: the server closes first (active close), the
    //    app ends, the flow manager holds the 4-tuple in TIME_WAIT with its sequence state.
    let (mut first, _) = serve();
    assert_eq!(request_from_45000(&t, 8081), "HTTP/1.1 200 OK True");
    stop_child(&mut first.0);
    assert_eq!(t.flowmgr_counter("tcp_time_waits"), 1);
    let mut c = nemflow_flowmgr::client::Client::connect(&t.host.socket).unwrap();
    let tw = c
        .all_flows()
        .unwrap()
        .into_iter()
        .filter(|f| f.kind == nemflow_proto::app::FlowKind::TimeWait)
        .map(|f| f.remote.map(|r| r.to_string()))
        .collect::<Vec<_>>();
    assert_eq!(tw, vec![Some("10.77.0.2:45000".to_owned())]);
    // 2. Segments for the old connection get its final ACK again; a SYN that is an old
    //    duplicate (not above the old receive point) too; a new SYN with no listener: RST.
    // (scapy's sr1 would not match these answers to their probes: sniff for them.)
    let probe = format!("IFACE='{}'\n", t.host.driver.iface)
        + "from scapy.all import IP, TCP, send, conf, AsyncSniffer\nimport time\nconf.verb=0\nip=IP(src='10.77.0.2', dst='10.77.0.1')\ndef ask(p):\n    s=AsyncSniffer(iface=IFACE, filter='tcp and src host 10.77.0.1 and src port 8081', count=1, timeout=3)\n    s.start(); time.sleep(0.3); send(p); s.join()\n    return s.results[0]\na=ask(ip/TCP(sport=45000, dport=8081, flags='A', seq=1, ack=1))\nrcv=a[TCP].ack; snd=a[TCP].seq\nprint('ack', a[TCP].flags, snd, rcv)\nb=ask(ip/TCP(sport=45000, dport=8081, flags='S', seq=(rcv-1000) % (1<<32)))\nprint('old-syn', b[TCP].flags, b[TCP].seq==snd, b[TCP].ack==rcv)\nc=ask(ip/TCP(sport=45000, dport=8081, flags='S', seq=(rcv+100000) % (1<<32)))\nprint('new-syn', c[TCP].flags)\n";
    let o = t.python(&probe);
    let lines: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 3, "{}", text(&o));
    assert!(lines[0].starts_with("ack A "), "{lines:?}");
    assert_eq!(lines[1], "old-syn A True True", "{lines:?}");
    assert_eq!(lines[2], "new-syn RA", "{lines:?}");
    // A real client reconnecting from the same port with nobody listening: refused.
    assert_eq!(request_from_45000(&t, 8081), "ConnectionRefusedError");
    // 3. A new server on the port: the same 4-tuple reopens from TIME_WAIT (RFC 1122), the
    //    app's new initial sequence number above the old one, and the request is served.
    let (_second, _) = serve();
    assert_eq!(request_from_45000(&t, 8081), "HTTP/1.1 200 OK True");
    assert!(t.flowmgr_counter("time_wait_reopens") >= 1);
}

/// A SYN flood generator for the remote namespace: raw Ethernet frames, SYNs from the ports
/// 1024.. of a spoofed host (10.77.0.99, a MAC nobody has) to `port`, at about `pps` for
/// `seconds`, from precomputed frames. The spoofed host first announces itself with an ARP
/// request for our address (so our ARP cache knows its MAC, as it would for a real host):
/// our SYN-ACKs then go to a station that does not exist, and nothing answers them, as with
/// a real spoofed flood.
fn flood_script(iface: &str, port: u16, pps: u32, seconds: u32) -> String {
    format!(
        "import socket, struct, time, random\nIFACE='{iface}'\nfake=bytes.fromhex('02000000aa99')\ndst=bytes.fromhex('024e46000001')\ndef csum(b):\n    if len(b)%2: b+=b'\\0'\n    s=sum(struct.unpack('!%dH' % (len(b)//2), b))\n    while s>>16: s=(s&0xffff)+(s>>16)\n    return (~s)&0xffff\nsrc=socket.inet_aton('10.77.0.99'); dip=socket.inet_aton('10.77.0.1')\ns=socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind((IFACE, 0))\narp=b'\\xff'*6+fake+b'\\x08\\x06'+struct.pack('!HHBBH', 1, 0x0800, 6, 4, 1)+fake+src+b'\\0'*6+dip\ns.send(arp); time.sleep(0.3)\nframes=[]\nfor i in range(4096):\n    sport=1024+i; seq=random.getrandbits(32)\n    tcp=struct.pack('!HHIIBBHHH', sport, {port}, seq, 0, 5<<4, 0x02, 64240, 0, 0)\n    ck=csum(src+dip+struct.pack('!BBH', 0, 6, len(tcp))+tcp)\n    tcp=tcp[:16]+struct.pack('!H', ck)+tcp[18:]\n    iph=struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20+len(tcp), i, 0, 64, 6, 0, src, dip)\n    iph=iph[:10]+struct.pack('!H', csum(iph))+iph[12:]\n    frames.append(dst+fake+b'\\x08\\x00'+iph+tcp)\nprint('flooding', flush=True)\nt0=time.time(); n=0\nwhile time.time()-t0 < {seconds}:\n    for f in frames[n % 4096:(n % 4096)+256]:\n        s.send(f)\n    n+=256\n    ahead=n/{pps}-(time.time()-t0)\n    if ahead>0: time.sleep(ahead)\nprint('sent', n, flush=True)\n"
    )
}

/// Average download rate (bytes/s) of `runs` downloads of `url` by curl on the remote host.
fn download_rate(t: &Tap, url: &str, runs: usize) -> f64 {
    let mut rates = Vec::new();
    for _ in 0..runs {
        let o = t
            .remote("curl")
            .args([
                "-sS",
                "--max-time",
                "60",
                "-o",
                "/dev/null",
                "-w",
                "%{speed_download}",
            ])
            .arg(url)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        rates.push(
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .unwrap(),
        );
    }
    eprintln!("download rates {url}: {rates:?} bytes/s");
    rates.iter().sum::<f64>() / rates.len() as f64
}

#[test]
fn a_syn_flood_on_one_port_leaves_other_transfer_rates_alone() {
    // 100 Mbit/s: the transfer runs at the link's rate, so what it gets is what the system
    // gives it, not what the (shared, 2-core) machine has left.
    let t = Tap::start(100_000_000);
    let root = t.host.dir().join("www");
    std::fs::create_dir(&root).unwrap();
    let data: Vec<u8> = (0..(16u64 << 20))
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    std::fs::write(root.join("f.bin"), &data).unwrap();
    let (_srv, _) = t.app(
        "http-serve",
        &["--port", "8080", "--root", root.to_str().unwrap()],
    );
    let (mut echo, _) = t.app("tcp-echo", &["--port", "7007", "--backlog", "8"]);
    let url = format!("http://{HOST_IP}:8080/f.bin");
    let iface = t.host.driver.iface.clone();
    // Unloaded and flooded downloads in turn, compared pair by pair, so that the machine's
    // other load (a shared 2-core box) weighs on both alike; the median pair decides.
    let mut ratios = Vec::new();
    let (mut unloaded, mut loaded) = (0.0, 0.0);
    for _ in 0..5 {
        let u = download_rate(&t, &url, 1);
        // The generator stands for another host: it must not take this machine's CPUs from
        // the system under test, so it runs at the lowest priority.
        let (mut flood, _, line) =
            remote_script_niced(&t, &flood_script(&iface, 7007, 5_000, 30), 19);
        assert_eq!(line.trim(), "flooding");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let l = download_rate(&t, &url, 1);
        stop_child(&mut flood.0);
        ratios.push(l / u);
        unloaded += u / 5.0;
        loaded += l / 5.0;
    }
    ratios.sort_by(f64::total_cmp);
    let ratio = ratios[2];
    // Where the flood went: the flooded port's own flow in the driver, full, dropping.
    let mut c = nemflow_flowmgr::client::Client::connect(&t.host.socket).unwrap();
    let stats = c.stats().unwrap();
    let Some((listen, flood_stats)) = stats
        .flows
        .iter()
        .find(|(f, _)| f.kind == nemflow_proto::app::FlowKind::Listen && f.local.port() == 7007)
        .cloned()
    else {
        let mut err = String::new();
        if let Some(mut e) = echo.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        panic!(
            "the flooded port's flow is gone; tcp-echo: {:?} {err}",
            echo.0.try_wait()
        );
    };
    let callbacks = t.flowmgr_counter("syn_callbacks");
    eprintln!(
        "unloaded {:.2} MB/s, under a SYN flood of 5000/s {:.2} MB/s (means); median pair {:+.1}% (pairs {ratios:.3?}); flooded port (flow {}): {} SYNs delivered, {} dropped in the driver, {callbacks} call-backs",
        unloaded / 1e6,
        loaded / 1e6,
        (ratio - 1.0) * 100.0,
        listen.id,
        flood_stats.rx_packets,
        flood_stats.rx_dropped_no_buffer,
    );
    assert!(
        flood_stats.rx_dropped_no_buffer > 5_000,
        "the flood filled the flooded port's flow: {flood_stats:?}"
    );
    assert!(
        callbacks < 200,
        "the flooded port was called back within its backlog: {callbacks}"
    );
    assert!(
        (ratio - 1.0).abs() <= 0.05,
        "rate under the flood / unloaded, pair by pair: {ratios:.3?}"
    );
}
