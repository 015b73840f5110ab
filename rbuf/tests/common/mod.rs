//! Shared helpers of the integration tests: spawning `rbuf-peer` as a real separate process and
//! handing it a channel's fds over a Unix socket with SCM_RIGHTS.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nemflow_rbuf::{fdpass, ChannelFds, ChannelSpec};

/// A peer process, killed and reaped on drop if it is still running.
pub struct Peer {
    child: Child,
    pub sock: UnixStream,
    stdout: BufReader<ChildStdout>,
}

/// How a peer is asked to run.
pub struct PeerArgs<'a> {
    pub role: &'a str,
    pub n: u64,
    pub batch: usize,
    pub blocking: bool,
    pub extra: &'a str,
}

impl Peer {
    /// Starts `rbuf-peer` in `role` and sends it `fds` over an abstract Unix socket.
    pub fn spawn(spec: &ChannelSpec, fds: ChannelFds, a: PeerArgs<'_>) -> Peer {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "nemflow-rbuf-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixListener::bind_addr(&addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_rbuf-peer"))
            .args([
                name.clone(),
                a.role.to_string(),
                spec.data_bytes.to_string(),
                spec.slots.to_string(),
                spec.max_packet_bytes.to_string(),
                a.n.to_string(),
                a.batch.to_string(),
                u8::from(a.blocking).to_string(),
                a.extra.to_string(),
            ])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let sock = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    if let Ok(Some(st)) = child.try_wait() {
                        panic!("peer exited before connecting: {st}");
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("accept: {e}");
                }
            }
        };
        sock.set_nonblocking(false).unwrap();
        fdpass::send_fds(&sock, b"c", &fds.as_fds()).unwrap();
        drop(fds);
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Peer {
            child,
            sock,
            stdout,
        }
    }

    /// Reads `n` bytes the peer wrote on the socket.
    pub fn read_sock(&mut self, n: usize) -> String {
        let mut b = vec![0u8; n];
        self.sock
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        self.sock.read_exact(&mut b).unwrap();
        String::from_utf8_lossy(&b).into_owned()
    }

    /// Writes one byte to the peer (a go-ahead).
    pub fn go(&mut self) {
        self.sock.write_all(b"g").unwrap();
    }

    /// Whether the peer has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// The peer's result line if it has exited (for failure messages).
    pub fn status(&mut self) -> String {
        if !self.exited() {
            return "peer still running".into();
        }
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        line
    }

    /// Waits for the peer's result line and exit; panics if it failed.
    pub fn finish(mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let status = self.child.wait().unwrap();
        assert!(
            status.success() && !line.starts_with("FAIL"),
            "peer failed ({status}): {line}"
        );
        line.trim().to_string()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A channel spec for tests: 1 MiB data area, `slots` slots, 128-byte packets.
pub fn spec(slots: u32) -> ChannelSpec {
    ChannelSpec {
        data_bytes: 1 << 20,
        slots,
        max_packet_bytes: 128,
        hugetlb: false,
    }
}

/// Spins or yields (non-blocking mode).
pub fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins & 63 == 0 {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// Iorecs each non-blocking cross-process test moves: 10 million (about 50 s in a debug build on
/// 2 cores, the two modes in parallel); the blocking tests move a tenth of it. `RBUF_TEST_ITERS`
/// overrides (e.g. for a quick local run).
pub fn iters() -> u64 {
    std::env::var("RBUF_TEST_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000)
}
