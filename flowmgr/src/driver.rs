//! The flow manager's link to the driver ([`nemflow_proto::ctl`] on the driver's control socket).

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nemflow_proto::ctl::{DriverReply, DriverRequest};
use nemflow_proto::wire::{self, Decoder, WireError};

/// Why talking to the driver failed (as opposed to the driver refusing a request).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Connecting failed.
    #[error("cannot reach the driver at {}: {source}{hint}", path.display())]
    Connect {
        /// The control socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// The connection failed mid-call.
    #[error("driver connection: {0}")]
    Wire(#[from] WireError),
}

/// Something that answers [`DriverRequest`]s: the driver's control socket, or a test double.
/// The driver answers every request, in order, so requests may be sent ahead of the replies to
/// earlier ones: each [`recv`](Self::recv) reads the reply to the oldest one unanswered.
pub trait DriverLink {
    /// Sends one request (with `fds` attached) without waiting for its reply.
    fn send(&mut self, req: &DriverRequest, fds: &[BorrowedFd<'_>]) -> Result<(), LinkError>;

    /// Waits for the reply to the oldest request not answered yet.
    fn recv(&mut self) -> Result<DriverReply, LinkError>;

    /// Sends one request (with `fds` attached) and returns the driver's one reply (no other
    /// request may be unanswered).
    fn call(
        &mut self,
        req: &DriverRequest,
        fds: &[BorrowedFd<'_>],
    ) -> Result<DriverReply, LinkError> {
        self.send(req, fds)?;
        self.recv()
    }

    /// An fd the daemon's loop polls between calls: the driver never speaks unasked, so any
    /// event on it (end of stream above all) means the driver is gone. `None`: nothing to watch.
    fn watch_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

/// The real link: a Unix stream socket to the driver.
#[derive(Debug)]
pub struct SocketDriver {
    sock: UnixStream,
    timeout: Duration,
    /// Replies read and not yet taken (a read may bring more than one).
    replies: Decoder,
}

impl SocketDriver {
    /// Connects to the driver's control socket; each call may take up to `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, LinkError> {
        let sock = UnixStream::connect(path).map_err(|source| {
            use std::io::ErrorKind as K;
            let hint = match source.kind() {
                K::NotFound | K::ConnectionRefused => " (is nemflow-driver running?)",
                K::PermissionDenied => " (the driver's control socket is root only: run as root)",
                _ => "",
            };
            LinkError::Connect {
                path: path.to_owned(),
                source,
                hint,
            }
        })?;
        Ok(Self {
            sock,
            timeout,
            replies: Decoder::new(0),
        })
    }
}

impl DriverLink for SocketDriver {
    fn send(&mut self, req: &DriverRequest, fds: &[BorrowedFd<'_>]) -> Result<(), LinkError> {
        Ok(wire::send(&self.sock, req, fds)?)
    }

    fn recv(&mut self) -> Result<DriverReply, LinkError> {
        Ok(self
            .replies
            .recv(&self.sock, Some(self.timeout))?
            .decode()?)
    }

    fn watch_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.sock.as_fd())
    }
}

/// A driver link with requests in flight: [`send`](Self::send) tags a request and does not wait;
/// [`call`](Self::call) first reads the replies to every request in flight (the driver answers
/// in order) and keeps them, with their tags, for [`take_answered`](Self::take_answered).
#[derive(Debug)]
pub(crate) struct Pipeline<D, T> {
    link: D,
    in_flight: VecDeque<T>,
    /// When the oldest request in flight was sent.
    since: Option<Instant>,
    answered: VecDeque<(T, DriverReply)>,
}

impl<D: DriverLink, T> Pipeline<D, T> {
    pub(crate) fn new(link: D) -> Self {
        Self {
            link,
            in_flight: VecDeque::new(),
            since: None,
            answered: VecDeque::new(),
        }
    }

    /// Sends `req` without waiting; its reply comes back with the tag given to the result
    /// (which may own what `fds` borrowed).
    pub(crate) fn send(
        &mut self,
        req: &DriverRequest,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Sent<'_, T>, LinkError> {
        self.link.send(req, fds)?;
        self.since.get_or_insert_with(Instant::now);
        Ok(Sent(&mut self.in_flight))
    }

    /// Sends `req` and waits for its reply, after the replies to the requests in flight.
    pub(crate) fn call(
        &mut self,
        req: &DriverRequest,
        fds: &[BorrowedFd<'_>],
    ) -> Result<DriverReply, LinkError> {
        self.drain()?;
        self.link.call(req, fds)
    }

    /// Waits for the replies to every request in flight.
    pub(crate) fn drain(&mut self) -> Result<(), LinkError> {
        while !self.in_flight.is_empty() {
            let reply = self.link.recv()?;
            if let Some(tag) = self.in_flight.pop_front() {
                self.answered.push_back((tag, reply));
            }
        }
        self.since = None;
        Ok(())
    }

    /// Requests in flight, oldest first.
    pub(crate) fn in_flight(&self) -> impl Iterator<Item = &T> {
        self.in_flight.iter()
    }

    /// When the oldest request in flight was sent (`None`: none is).
    pub(crate) fn in_flight_since(&self) -> Option<Instant> {
        self.since
    }

    /// The oldest reply read and not taken yet, with its request's tag.
    pub(crate) fn take_answered(&mut self) -> Option<(T, DriverReply)> {
        self.answered.pop_front()
    }

    /// See [`DriverLink::watch_fd`]; readable too when a reply to a request in flight arrived.
    pub(crate) fn watch_fd(&self) -> Option<BorrowedFd<'_>> {
        self.link.watch_fd()
    }
}

/// A request sent ahead by [`Pipeline::send`], waiting for its tag.
#[must_use = "an untagged request would take another's reply"]
pub(crate) struct Sent<'a, T>(&'a mut VecDeque<T>);

impl<T> Sent<'_, T> {
    /// Tags the request: its reply will come back with `tag`.
    pub(crate) fn tag(self, tag: T) {
        self.0.push_back(tag);
    }
}

/// Why the driver's connection became readable between calls: `None` if it did not (a spurious
/// wake-up), else the one-line reason the daemon stops with.
pub fn why_readable(fd: BorrowedFd<'_>) -> Option<String> {
    let mut byte = [0u8; 1];
    let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
    match rustix::net::recv(fd, &mut byte[..], flags) {
        Ok((0, _)) => {
            Some("the driver closed its control connection (it exited or was killed)".into())
        }
        Ok(_) => Some("the driver sent a message nobody asked for".into()),
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => None,
        Err(e) => Some(format!("the driver's control connection failed: {e}")),
    }
}
