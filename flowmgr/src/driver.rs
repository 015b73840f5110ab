//! The flow manager's link to the driver ([`nemflow_proto::ctl`] on the driver's control socket).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nemflow_proto::ctl::{DriverReply, DriverRequest};
use nemflow_proto::wire::{self, WireError};

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
pub trait DriverLink {
    /// Sends one request (with `fds` attached) and returns the driver's one reply.
    fn call(
        &mut self,
        req: &DriverRequest,
        fds: &[BorrowedFd<'_>],
    ) -> Result<DriverReply, LinkError>;

    /// An fd the daemon's loop polls between calls: the driver never speaks unasked, so any
    /// event on it (end of stream above all) means the driver is gone. `None`: nothing to watch.
    fn watch_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

/// The real link: a Unix stream socket to the driver, one request at a time.
#[derive(Debug)]
pub struct SocketDriver {
    sock: UnixStream,
    timeout: Duration,
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
        Ok(Self { sock, timeout })
    }
}

impl DriverLink for SocketDriver {
    fn call(
        &mut self,
        req: &DriverRequest,
        fds: &[BorrowedFd<'_>],
    ) -> Result<DriverReply, LinkError> {
        let (reply, extra): (DriverReply, Vec<OwnedFd>) =
            wire::call(&self.sock, req, fds, 0, Some(self.timeout))?;
        drop(extra);
        Ok(reply)
    }

    fn watch_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.sock.as_fd())
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
