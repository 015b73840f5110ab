//! Framing: every message is an 8-byte header — magic `NF`, protocol version, payload length —
//! followed by the payload, a `postcard`-encoded serde value. File descriptors travel with
//! `SCM_RIGHTS` attached to the first byte of their message.
//!
//! The decoder is incremental, so a daemon can read from a non-blocking socket and a peer that
//! trickles bytes costs it nothing but a buffer. Everything a peer sends is checked: magic,
//! version, a length above [`MAX_PAYLOAD`], fds arriving anywhere but at a message's start, or
//! more fds than the reader allows are errors, never panics.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nemflow_rbuf::fdpass;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// First two bytes of every message.
pub const MAGIC: [u8; 2] = *b"NF";
/// The protocol version this build speaks. Raised whenever a message's encoding changes, so that
/// a driver, flow manager or app of another build is refused with this version in the error
/// instead of failing to decode (2: staged channel pairs, `PortInfo::staged`, `TcpSeen::ends`).
pub const VERSION: u16 = 2;
/// Bytes of the header: magic (2), version (2, little endian), payload length (4, LE).
pub const HEADER_BYTES: usize = 8;
/// Largest payload accepted (a 4 GiB length prefix is an error, not an allocation).
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// Most fds one message may carry.
pub const MAX_FDS: usize = fdpass::MAX_FDS;

/// What can go wrong moving messages.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer closed the connection (cleanly, between messages).
    #[error("connection closed")]
    Closed,
    /// The peer closed the connection in the middle of a message.
    #[error("connection closed mid-message ({0} bytes pending)")]
    Truncated(usize),
    /// Not a nemflow message.
    #[error("bad magic {0:02x?}: not a nemflow control message")]
    BadMagic([u8; 2]),
    /// A protocol version this build does not speak.
    #[error("unsupported protocol version {got} (this side speaks {VERSION})")]
    Version {
        /// The peer's version.
        got: u16,
    },
    /// The length prefix is larger than [`MAX_PAYLOAD`].
    #[error("message of {0} bytes exceeds the limit of {MAX_PAYLOAD}")]
    TooLarge(u64),
    /// The payload does not decode as the expected message type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Fds arrived that the reader does not accept, or not at a message start.
    #[error("unexpected file descriptors: {0}")]
    Fds(String),
    /// Timed out waiting for a whole message.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A socket call failed.
    #[error("{op}: {source}")]
    Io {
        /// The call.
        op: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

impl From<nemflow_rbuf::Error> for WireError {
    fn from(e: nemflow_rbuf::Error) -> Self {
        match e {
            nemflow_rbuf::Error::TooManyFds { .. } | nemflow_rbuf::Error::FdPass(_) => {
                WireError::Fds(e.to_string())
            }
            other => WireError::Io {
                op: "recvmsg",
                source: std::io::Error::other(other.to_string()),
            },
        }
    }
}

/// Encodes `msg` as one framed message.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    let mut out = vec![0u8; HEADER_BYTES];
    out = postcard::to_extend(msg, out).map_err(|e| WireError::Malformed(e.to_string()))?;
    let len = out.len() - HEADER_BYTES;
    if len > MAX_PAYLOAD {
        return Err(WireError::TooLarge(len as u64));
    }
    out[..2].copy_from_slice(&MAGIC);
    out[2..4].copy_from_slice(&VERSION.to_le_bytes());
    out[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// Decodes a payload (without header) as `T`; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, WireError> {
    let (msg, rest) =
        postcard::take_from_bytes(payload).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Sends `msg` with `fds` attached, blocking until all of it is written.
pub fn send<T: Serialize>(
    sock: &std::os::unix::net::UnixStream,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), WireError> {
    send_timeout(sock, msg, fds, None)
}

/// [`send`], giving up with [`WireError::Timeout`] if the peer does not make room for the
/// message within `timeout` (a peer that stops reading must not stall a daemon).
pub fn send_timeout<T: Serialize>(
    sock: &std::os::unix::net::UnixStream,
    msg: &T,
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> Result<(), WireError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let bytes = encode(msg)?;
    let n = loop {
        match fdpass::send_fds(sock, &bytes, fds) {
            Ok(n) => break n,
            Err(nemflow_rbuf::Error::Os { source, .. })
                if source.kind() == std::io::ErrorKind::WouldBlock =>
            {
                wait_writable(sock, deadline, timeout)?;
            }
            Err(e) => {
                return Err(WireError::Io {
                    op: "sendmsg",
                    source: std::io::Error::other(e.to_string()),
                })
            }
        }
    };
    // The fds went with the first byte; the rest is plain data.
    let mut rest = &bytes[n..];
    let mut writer = sock;
    while !rest.is_empty() {
        match writer.write(rest) {
            Ok(0) => return Err(WireError::Closed),
            Ok(k) => rest = &rest[k..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                wait_writable(sock, deadline, timeout)?;
            }
            Err(source) => {
                return Err(WireError::Io {
                    op: "write",
                    source,
                })
            }
        }
    }
    Ok(())
}

fn wait_writable(
    sock: &impl AsFd,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
) -> Result<(), WireError> {
    let left = match deadline {
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WireError::Timeout(timeout.unwrap_or_default()));
            }
            Some(rustix::event::Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            })
        }
        None => None,
    };
    let mut fds = [rustix::event::PollFd::new(
        sock,
        rustix::event::PollFlags::OUT,
    )];
    rustix::event::poll(&mut fds, left.as_ref()).map_err(|e| WireError::Io {
        op: "poll",
        source: e.into(),
    })?;
    Ok(())
}

/// One whole message taken off the wire: its payload and the fds that came with it.
#[derive(Debug)]
pub struct Frame {
    /// The payload (postcard bytes).
    pub payload: Vec<u8>,
    /// Fds attached to the message.
    pub fds: Vec<OwnedFd>,
}

impl Frame {
    /// Decodes the payload as `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, WireError> {
        decode(&self.payload)
    }
}

/// Incremental reader of framed messages from one stream socket.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Fds received, with the byte range of `buf` (offset, length) of the read that brought
    /// them. The kernel may glue a message without fds and the start of the next one, which
    /// carries fds, into one read (and delivers the fds with it, stopping the read after that
    /// message's first piece): fds belong to the last message that starts in their read.
    fds: Vec<(usize, usize, Vec<OwnedFd>)>,
    max_fds: usize,
}

impl Decoder {
    /// A decoder that accepts at most `max_fds` fds per message (≤ [`MAX_FDS`]).
    pub fn new(max_fds: usize) -> Self {
        Self {
            buf: Vec::new(),
            fds: Vec::new(),
            max_fds: max_fds.min(MAX_FDS),
        }
    }

    /// Appends bytes received by other means (a test, a fuzzer, a transport without fds).
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered for a message not yet complete.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Reads once from `sock` (which may be non-blocking). `Ok(false)` means nothing was
    /// available (would block); `Ok(true)` that bytes arrived; [`WireError::Closed`] or
    /// [`WireError::Truncated`] that the peer closed.
    pub fn read_from(&mut self, sock: impl AsFd) -> Result<bool, WireError> {
        let start = self.buf.len();
        let want = self.bytes_wanted().max(512);
        self.buf.resize(start + want, 0);
        let result = fdpass::recv_fds(&sock, &mut self.buf[start..], MAX_FDS);
        let (n, fds) = match result {
            Ok(r) => r,
            Err(nemflow_rbuf::Error::Os { source, .. })
                if source.kind() == std::io::ErrorKind::WouldBlock =>
            {
                self.buf.truncate(start);
                return Ok(false);
            }
            Err(e) => {
                self.buf.truncate(start);
                return Err(e.into());
            }
        };
        self.buf.truncate(start + n);
        if !fds.is_empty() {
            if fds.len() > self.max_fds {
                return Err(WireError::Fds(format!(
                    "{} fds on one message, at most {} accepted",
                    fds.len(),
                    self.max_fds
                )));
            }
            self.fds.push((start, n, fds));
        }
        if n == 0 {
            return match self.buf.len() {
                0 => Err(WireError::Closed),
                k => Err(WireError::Truncated(k)),
            };
        }
        Ok(true)
    }

    /// How many more bytes complete the message being read (at least a header's worth).
    fn bytes_wanted(&self) -> usize {
        if self.buf.len() < HEADER_BYTES {
            return HEADER_BYTES - self.buf.len();
        }
        let len = u32::from_le_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
        (HEADER_BYTES + len.min(MAX_PAYLOAD)).saturating_sub(self.buf.len())
    }

    /// Takes the next complete message out of the buffer, if there is one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        if self.buf.len() < HEADER_BYTES {
            self.check_stray_fds(self.buf.len())?;
            return Ok(None);
        }
        let magic = [self.buf[0], self.buf[1]];
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let version = u16::from_le_bytes([self.buf[2], self.buf[3]]);
        if version != VERSION {
            return Err(WireError::Version { got: version });
        }
        let len = u32::from_le_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        if len as usize > MAX_PAYLOAD {
            return Err(WireError::TooLarge(u64::from(len)));
        }
        let total = HEADER_BYTES + len as usize;
        if self.buf.len() < total {
            self.check_stray_fds(self.buf.len())?;
            return Ok(None);
        }
        let mut fds = Vec::new();
        let mut rest = Vec::new();
        for (offset, len, group) in std::mem::take(&mut self.fds) {
            let end = offset + len;
            if offset >= total {
                // A later read: shift it with the buffer.
                rest.push((offset - total, len, group));
            } else if end > total {
                // The read ran on into the next message: the fds are that message's (or a
                // later one's, decided when it is taken).
                rest.push((0, end - total, group));
            } else if offset == 0 {
                fds.extend(group);
            } else {
                return Err(WireError::Fds(format!(
                    "fds attached at byte {offset} of a message, not its start"
                )));
            }
        }
        self.fds = rest;
        let payload = self.buf[HEADER_BYTES..total].to_vec();
        self.buf.drain(..total);
        Ok(Some(Frame { payload, fds }))
    }

    /// Fds must arrive with the first byte of a message: any that arrived at an offset inside
    /// `[1, upto)` of the current message is a protocol error.
    fn check_stray_fds(&self, upto: usize) -> Result<(), WireError> {
        match self.fds.iter().find(|(off, _, _)| *off > 0 && *off < upto) {
            Some((off, _, _)) => Err(WireError::Fds(format!(
                "fds attached at byte {off} of a message, not its start"
            ))),
            None => Ok(()),
        }
    }

    /// Blocks until one whole message arrived on a blocking `sock`, or `timeout` passed.
    pub fn recv(
        &mut self,
        sock: &std::os::unix::net::UnixStream,
        timeout: Option<Duration>,
    ) -> Result<Frame, WireError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(frame) = self.next_frame()? {
                return Ok(frame);
            }
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(WireError::Timeout(timeout.unwrap_or_default()));
                }
                let ts = rustix::event::Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: i64::from(left.subsec_nanos()),
                };
                let mut fds = [rustix::event::PollFd::new(
                    sock,
                    rustix::event::PollFlags::IN,
                )];
                let ready =
                    rustix::event::poll(&mut fds, Some(&ts)).map_err(|e| WireError::Io {
                        op: "poll",
                        source: e.into(),
                    })?;
                if ready == 0 {
                    continue;
                }
            }
            self.read_from(sock)?;
        }
    }
}

/// Sends `request` and waits for one reply (blocking socket), for simple clients.
pub fn call<Req: Serialize, Rep: DeserializeOwned>(
    sock: &std::os::unix::net::UnixStream,
    request: &Req,
    fds: &[BorrowedFd<'_>],
    max_reply_fds: usize,
    timeout: Option<Duration>,
) -> Result<(Rep, Vec<OwnedFd>), WireError> {
    send(sock, request, fds)?;
    let frame = Decoder::new(max_reply_fds).recv(sock, timeout)?;
    Ok((frame.decode()?, frame.fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Msg {
        Ping(u32),
        Text(String),
    }

    #[test]
    fn round_trip_with_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        send(&a, &Msg::Ping(7), &[r.as_fd(), w.as_fd()]).unwrap();
        send(&a, &Msg::Text("hello".into()), &[]).unwrap();
        let mut dec = Decoder::new(2);
        let f1 = dec.recv(&b, Some(Duration::from_secs(1))).unwrap();
        assert_eq!(f1.decode::<Msg>().unwrap(), Msg::Ping(7));
        assert_eq!(f1.fds.len(), 2);
        let f2 = dec.recv(&b, Some(Duration::from_secs(1))).unwrap();
        assert_eq!(f2.decode::<Msg>().unwrap(), Msg::Text("hello".into()));
        assert!(f2.fds.is_empty());
    }

    #[test]
    fn fds_glued_behind_a_message_without_fds_belong_to_the_next_one() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        // An event, then a reply with fds, both sent before the reader reads: one read takes
        // the event and the reply's start together, with the reply's fds.
        send(&a, &Msg::Text("event".into()), &[]).unwrap();
        send(&a, &Msg::Ping(9), &[r.as_fd(), w.as_fd()]).unwrap();
        send(&a, &Msg::Text("after".into()), &[]).unwrap();
        let mut dec = Decoder::new(2);
        dec.read_from(&b).unwrap();
        let mut frames = Vec::new();
        while frames.len() < 3 {
            match dec.next_frame().unwrap() {
                Some(f) => frames.push(f),
                None => {
                    dec.read_from(&b).unwrap();
                }
            }
        }
        assert_eq!(
            frames[0].decode::<Msg>().unwrap(),
            Msg::Text("event".into())
        );
        assert!(frames[0].fds.is_empty(), "the event carries no fds");
        assert_eq!(frames[1].decode::<Msg>().unwrap(), Msg::Ping(9));
        assert_eq!(frames[1].fds.len(), 2, "the reply gets its fds");
        assert!(frames[2].fds.is_empty());
    }

    #[test]
    fn trickled_bytes_assemble() {
        let (mut a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let bytes = encode(&Msg::Text("slowly".into())).unwrap();
        let mut dec = Decoder::new(0);
        for chunk in bytes.chunks(1) {
            assert!(dec.next_frame().unwrap().is_none());
            a.write_all(chunk).unwrap();
            assert!(dec.read_from(&b).unwrap());
        }
        let frame = dec.next_frame().unwrap().unwrap();
        assert_eq!(frame.decode::<Msg>().unwrap(), Msg::Text("slowly".into()));
        assert!(!dec.read_from(&b).unwrap(), "would block");
    }

    #[test]
    fn hostile_headers_are_errors() {
        type Check = fn(&WireError) -> bool;
        let cases: [(&[u8], Check); 3] = [
            (b"XX\x01\x00\x00\x00\x00\x00", |e| {
                matches!(e, WireError::BadMagic(_))
            }),
            (b"NF\x09\x00\x00\x00\x00\x00", |e| {
                matches!(e, WireError::Version { got: 9 })
            }),
            (b"NF\x02\x00\xff\xff\xff\xff", |e| {
                matches!(e, WireError::TooLarge(0xffff_ffff))
            }),
        ];
        for (bytes, is) in cases {
            let (mut a, b) = UnixStream::pair().unwrap();
            a.write_all(bytes).unwrap();
            let mut dec = Decoder::new(0);
            dec.read_from(&b).unwrap();
            let err = dec.next_frame().unwrap_err();
            assert!(is(&err), "{err}");
        }
    }

    #[test]
    fn unwanted_fds_and_truncation_are_errors() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, _w) = rustix::pipe::pipe().unwrap();
        send(&a, &Msg::Ping(1), &[r.as_fd()]).unwrap();
        let mut dec = Decoder::new(0);
        assert!(matches!(dec.read_from(&b), Err(WireError::Fds(_))));

        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&encode(&Msg::Text("cut".into())).unwrap()[..9])
            .unwrap();
        drop(a);
        let mut dec = Decoder::new(0);
        let err = dec.recv(&b, Some(Duration::from_secs(1))).unwrap_err();
        assert!(matches!(err, WireError::Truncated(9)), "{err}");
    }

    #[test]
    fn garbage_payload_is_malformed() {
        let mut bytes = encode(&Msg::Ping(1)).unwrap();
        bytes[HEADER_BYTES] = 0xee; // no such variant
        let frame = Frame {
            payload: bytes[HEADER_BYTES..].to_vec(),
            fds: Vec::new(),
        };
        assert!(matches!(
            frame.decode::<Msg>(),
            Err(WireError::Malformed(_))
        ));
    }
}
