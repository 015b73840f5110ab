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
