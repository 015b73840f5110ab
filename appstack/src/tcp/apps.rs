//! The TCP example applications' logic, as library functions: `tcp-echo` (echo server),
//! `http-serve` (a small HTTP/1.1 file server: GET and HEAD, keep-alive, Content-Length, 404)
//! and `tcp-bulk` (a client that sends and receives a test pattern, both at once). The binaries
//! are thin `main`s over them.

use std::io::Read;
use std::net::SocketAddrV4;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{TcpListener, TcpStream};
use crate::error::{Error, Result};

/// How often a server blocked in `accept` looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Byte `i` of the test pattern with `seed` (a 251-byte cycle: no power-of-two alignment hides
/// a lost or repeated segment). In Python: `bytes((i % 251 + seed) & 0xff for i in ...)`.
pub fn pattern_byte(i: u64, seed: u8) -> u8 {
    ((i % 251) as u8).wrapping_add(seed)
}

/// Fills `buf` with the pattern from offset `at`.
pub fn fill_pattern(buf: &mut [u8], at: u64, seed: u8) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(at + k as u64, seed);
    }
}

/// What a server did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerReport {
    /// Connections accepted.
    pub connections: u64,
    /// Bytes received in all.
    pub bytes_in: u64,
    /// Bytes sent in all.
    pub bytes_out: u64,
    /// Requests answered (HTTP).
    pub requests: u64,
    /// Connections that ended with an error (reset, timeout).
    pub errors: u64,
}

#[derive(Debug, Default)]
struct Totals {
    connections: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
}

impl Totals {
    fn report(&self) -> ServerReport {
        ServerReport {
            connections: self.connections.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// How long a server runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeOptions {
    /// Stop accepting after this many connections (and return when they are done).
    pub connections: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// Accepts connections until `opts` or `stop`, each served by `serve` on a thread of its own;
/// waits for them and reports.
fn serve_each(
    listener: &mut TcpListener,
    opts: &ServeOptions,
    stop: &AtomicBool,
    serve: impl Fn(TcpStream, &Totals) -> Result<()> + Send + Sync + 'static,
) -> Result<ServerReport> {
    let totals = Arc::new(Totals::default());
    let serve = Arc::new(serve);
    let start = Instant::now();
    let mut threads = Vec::new();
    listener.set_timeout(Some(STOP_CHECK));
    while !stop.load(Ordering::Relaxed)
        && opts
            .connections
            .is_none_or(|c| totals.connections.load(Ordering::Relaxed) < c)
        && opts.duration.is_none_or(|d| start.elapsed() < d)
    {
        let (s, _) = match listener.accept() {
            Ok(x) => x,
            Err(Error::TimedOut | Error::WouldBlock) => continue,
            Err(e) => return Err(e),
        };
        totals.connections.fetch_add(1, Ordering::Relaxed);
        let (t, f) = (Arc::clone(&totals), Arc::clone(&serve));
        threads.push(std::thread::spawn(move || {
            if f(s, &t).is_err() {
                t.errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
        threads.retain(|h| !h.is_finished());
    }
    for h in threads {
        let _ = h.join();
    }
    Ok(totals.report())
}

/// `tcp-echo`: sends every byte of every connection back, until the peer closes.
pub fn echo_server(
    listener: &mut TcpListener,
    opts: &ServeOptions,
    stop: &AtomicBool,
) -> Result<ServerReport> {
    serve_each(listener, opts, stop, |mut s, t| {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            t.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            s.write_all(&buf[..n])?;
            t.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        }
        s.close()
    })
}

/// A parsed HTTP request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: String,
    /// Request target (path and query).
    pub target: String,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// Bytes of request body to skip.
    pub content_length: u64,
}

/// Why a request head could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadRequest {
    /// Not `METHOD TARGET HTTP/1.x` with valid headers (answered with 400).
    Malformed,
    /// An HTTP version other than 1.0 or 1.1 (answered with 505).
    Version,
}

/// Parses a request head (everything before the empty line, without it).
pub fn parse_request(head: &[u8]) -> std::result::Result<Request, BadRequest> {
    let text = std::str::from_utf8(head).map_err(|_| BadRequest::Malformed)?;
    let mut lines = text.split("\r\n");
    let line = lines.next().ok_or(BadRequest::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest::Malformed);
    };
    if method.is_empty() || !target.starts_with('/') {
        return Err(BadRequest::Malformed);
    }
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        v if v.starts_with("HTTP/") => return Err(BadRequest::Version),
        _ => return Err(BadRequest::Malformed),
    };
    let mut keep_alive = http11;
    let mut content_length = 0u64;
    for h in lines {
        let (name, value) = h.split_once(':').ok_or(BadRequest::Malformed)?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().map_err(|_| BadRequest::Malformed)?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // A chunked request body cannot be skipped without parsing it: refuse.
            return Err(BadRequest::Malformed);
        }
    }
    Ok(Request {
        method: method.to_owned(),
        target: target.to_owned(),
        keep_alive,
        content_length,
    })
}

/// The file under `root` a request target names: no `..`, no absolute escape; the query is
/// ignored; `/` is `index.html`.
pub fn resolve_target(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "index.html" } else { rel };
    let mut out = root.to_path_buf();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// How long a keep-alive connection may stay idle between requests.
pub const HTTP_IDLE: Duration = Duration::from_secs(30);

/// Bytes of a request head at most (a longer one is answered with 431 and the connection
/// closed).
pub const MAX_HEAD_BYTES: usize = 16 << 10;

/// Reads one request head from `s`, keeping bytes after it in `buf`; `Ok(None)` when the peer
/// closed between requests.
fn read_head(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Option<std::result::Result<Vec<u8>, u16>>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = buf[..end].to_vec();
            buf.drain(..end + 4);
            return Ok(Some(Ok(head)));
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Ok(Some(Err(431)));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(if buf.is_empty() { None } else { Some(Err(400)) });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn status_text(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// Writes a small complete response (an error page).
fn simple_response(s: &mut TcpStream, code: u16, keep_alive: bool, head_only: bool) -> Result<u64> {
    let body = format!("{code} {}\n", status_text(code));
    let mut out = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n",
        status_text(code),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    if code == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&body);
    }
    s.write_all(out.as_bytes())?;
    Ok(out.len() as u64)
}

/// Serves one HTTP connection: requests in turn until the peer closes or one asks to close.
pub fn serve_http_connection(s: &mut TcpStream, root: &Path) -> Result<(u64, u64)> {
    s.set_read_timeout(Some(HTTP_IDLE));
    let mut pending = Vec::new();
    let mut requests = 0u64;
    let mut sent = 0u64;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let head = match read_head(s, &mut pending) {
            // An idle keep-alive connection is closed after a while.
            Err(Error::TimedOut) if pending.is_empty() => break,
            Err(e) => return Err(e),
            Ok(None) => break,
            Ok(Some(h)) => h,
        };
        let head = match head {
            Ok(h) => h,
            Err(code) => {
                sent += simple_response(s, code, false, false)?;
                requests += 1;
                break;
            }
        };
        requests += 1;
        let req = match parse_request(&head) {
            Ok(r) => r,
            Err(bad) => {
                let code = if bad == BadRequest::Version { 505 } else { 400 };
                sent += simple_response(s, code, false, false)?;
                break;
            }
        };
        // Skip a request body (GET rarely has one).
        let mut skip = req.content_length;
        let take = (pending.len() as u64).min(skip) as usize;
        pending.drain(..take);
        skip -= take as u64;
        while skip > 0 {
            let want = (chunk.len() as u64).min(skip) as usize;
            let n = s.read(&mut chunk[..want])?;
            if n == 0 {
                return Ok((requests, sent));
            }
            skip -= n as u64;
        }
        let head_only = req.method == "HEAD";
        if req.method != "GET" && !head_only {
            sent += simple_response(s, 405, req.keep_alive, false)?;
            if !req.keep_alive {
                break;
            }
            continue;
        }
        let file = resolve_target(root, &req.target)
            .and_then(|p| std::fs::File::open(p).ok())
            .and_then(|f| {
                let meta = f.metadata().ok()?;
                meta.is_file().then_some((f, meta.len()))
            });
        let Some((mut f, len)) = file else {
            sent += simple_response(s, 404, req.keep_alive, head_only)?;
            if !req.keep_alive {
                break;
            }
            continue;
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: {}\r\n\r\n",
            if req.keep_alive { "keep-alive" } else { "close" }
        );
        s.write_all(head.as_bytes())?;
        sent += head.len() as u64;
        if !head_only {
            let mut left = len;
            while left > 0 {
                let want = (chunk.len() as u64).min(left) as usize;
                let n = f
                    .read(&mut chunk[..want])
                    .map_err(|source| Error::Os { op: "read", source })?;
                if n == 0 {
                    // The file shrank under us: the promised length cannot be kept; end the
                    // connection so the client sees a short body, not a wrong one.
                    return Err(Error::Closed);
                }
                s.write_all(&chunk[..n])?;
                left -= n as u64;
                sent += n as u64;
            }
        }
        if !req.keep_alive {
            break;
        }
    }
    s.shutdown(std::net::Shutdown::Write)?;
    Ok((requests, sent))
}

/// `http-serve`: serves files under `root` until `opts` or `stop`.
pub fn http_server(
    listener: &mut TcpListener,
    root: &Path,
    opts: &ServeOptions,
    stop: &AtomicBool,
) -> Result<ServerReport> {
    let root = root.to_path_buf();
    serve_each(listener, opts, stop, move |mut s, t| {
        let r = serve_http_connection(&mut s, &root);
        if let Ok((requests, sent)) = r {
            t.requests.fetch_add(requests, Ordering::Relaxed);
            t.bytes_out.fetch_add(sent, Ordering::Relaxed);
        }
        let closed = s.close();
        r.and(closed)
    })
}

/// What `tcp-bulk` does.
#[derive(Debug, Clone, Copy, Default)]
pub struct BulkOptions {
    /// Bytes of pattern to send (then the write side is shut down).
    pub send_bytes: u64,
    /// Pattern seed of what is sent.
    pub send_seed: u8,
    /// Bytes to receive (checked against the pattern), `None`: until the peer closes.
    pub recv_bytes: Option<u64>,
    /// Pattern seed of what is expected.
    pub recv_seed: u8,
}

/// What `tcp-bulk` did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BulkReport {
    /// Bytes sent.
    pub sent: u64,
    /// Bytes received.
    pub received: u64,
    /// Received bytes that differed from the pattern.
    pub mismatched: u64,
    /// Seconds from the first byte to the end.
    pub seconds: f64,
}

/// `tcp-bulk`: sends and receives the test pattern at once (one thread, non-blocking), then
/// closes.
pub fn bulk(s: &mut TcpStream, opts: &BulkOptions, stop: &AtomicBool) -> Result<BulkReport> {
    s.set_nonblocking(true);
    let t0 = Instant::now();
    let mut r = BulkReport::default();
    let mut out = vec![0u8; 64 << 10];
    let mut inbuf = vec![0u8; 64 << 10];
    let mut out_len = 0usize;
    let mut out_at = 0usize;
    let mut write_done = opts.send_bytes == 0;
    let mut read_done = opts.recv_bytes == Some(0);
    if write_done {
        s.shutdown(std::net::Shutdown::Write)?;
    }
    while !(write_done && read_done) {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let mut progress = false;
        if !write_done {
            if out_at == out_len {
                let want = (opts.send_bytes - r.sent).min(out.len() as u64) as usize;
                fill_pattern(&mut out[..want], r.sent, opts.send_seed);
                out_len = want;
                out_at = 0;
            }
            match s.write(&out[out_at..out_len]) {
                Ok(n) => {
                    out_at += n;
                    r.sent += n as u64;
                    progress = true;
                    if r.sent == opts.send_bytes {
                        write_done = true;
                        s.shutdown(std::net::Shutdown::Write)?;
                    }
                }
                Err(Error::WouldBlock) => {}
                Err(e) => return Err(e),
            }
        }
        if !read_done {
            let want = match opts.recv_bytes {
                Some(total) => (total - r.received).min(inbuf.len() as u64) as usize,
                None => inbuf.len(),
            };
            match s.read(&mut inbuf[..want]) {
                Ok(0) => read_done = true,
                Ok(n) => {
                    for (k, b) in inbuf[..n].iter().enumerate() {
                        if *b != pattern_byte(r.received + k as u64, opts.recv_seed) {
                            r.mismatched += 1;
                        }
                    }
                    r.received += n as u64;
                    progress = true;
                    if opts.recv_bytes == Some(r.received) {
                        read_done = true;
                    }
                }
                Err(Error::WouldBlock) => {}
                Err(e) => return Err(e),
            }
        }
        if !progress && !s.prepare_wait(!write_done)? {
            let mut fds = [rustix::event::PollFd::new(s, rustix::event::PollFlags::IN)];
            let ts = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 100_000_000,
            };
            let _ = rustix::event::poll(&mut fds, Some(&ts));
            s.finish_wait();
        }
    }
    r.seconds = t0.elapsed().as_secs_f64();
    s.set_nonblocking(false);
    Ok(r)
}

/// Parses `IP:PORT`.
pub fn parse_addr(s: &str) -> std::result::Result<SocketAddrV4, String> {
    s.parse()
        .map_err(|e| format!("{s:?} is not an IPv4 address and port: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_parse_and_targets_stay_under_the_root() {
        let r = parse_request(b"GET /a/b.bin?x=1 HTTP/1.1\r\nHost: h\r\nAccept: */*").unwrap();
        assert_eq!((r.method.as_str(), r.keep_alive), ("GET", true));
        let r = parse_request(b"GET / HTTP/1.1\r\nConnection: close").unwrap();
        assert!(!r.keep_alive);
        let r = parse_request(b"GET / HTTP/1.0").unwrap();
        assert!(!r.keep_alive);
        let r = parse_request(b"GET / HTTP/1.0\r\nconnection: Keep-Alive").unwrap();
        assert!(r.keep_alive);
        assert_eq!(parse_request(b"GET / HTTP/2.0"), Err(BadRequest::Version));
        for bad in [
            &b"GET /"[..],
            b"GET / HTTP/1.1 extra",
            b"GET x HTTP/1.1",
            b"GET / HTTP/1.1\r\nno colon",
            b"GET / HTTP/1.1\r\nContent-Length: x",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked",
            b"\xff\xfe",
        ] {
            assert_eq!(parse_request(bad), Err(BadRequest::Malformed), "{bad:?}");
        }
        let root = Path::new("/srv");
        assert_eq!(
            resolve_target(root, "/a/b.bin?x"),
            Some(PathBuf::from("/srv/a/b.bin"))
        );
        assert_eq!(
            resolve_target(root, "/"),
            Some(PathBuf::from("/srv/index.html"))
        );
        assert_eq!(resolve_target(root, "/../etc/passwd"), None);
        assert_eq!(resolve_target(root, "/a/../../x"), None);
        assert_eq!(
            resolve_target(root, "//etc/passwd"),
            Some(PathBuf::from("/srv/etc/passwd"))
        );
    }

    #[test]
    fn the_pattern_has_a_prime_cycle() {
        let mut b = [0u8; 600];
        fill_pattern(&mut b, 0, 7);
        assert_eq!(b[0], 7);
        assert_eq!(b[251], 7);
        assert_eq!(b[250], 250u8.wrapping_add(7));
        assert_eq!(pattern_byte(252, 0), 1);
    }
}
