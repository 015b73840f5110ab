//! The flow manager's link to the driver ([`nemflow_proto::ctl`] on the driver's control socket).

use std::os::fd::{BorrowedFd, OwnedFd};
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
}
