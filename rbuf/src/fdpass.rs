//! Passing fds over a Unix stream socket with `SCM_RIGHTS`, refusing unexpected or excess fds.
//!
//! One call sends one message of payload bytes with its fds attached to its first byte (a stream
//! socket needs at least one byte to carry them). The receiver says how many fds it accepts; any
//! more, or any when it accepts none, and every fd of that message is closed and the call fails.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::error::{Error, Result};

/// Most fds one message may carry (the kernel's own limit is 253).
pub const MAX_FDS: usize = 16;

/// Sends `payload` (non-empty) with `fds` attached. Returns the payload bytes sent (a stream
/// socket may send fewer; the fds went with the first byte).
pub fn send_fds(sock: impl AsFd, payload: &[u8], fds: &[BorrowedFd<'_>]) -> Result<usize> {
    if payload.is_empty() {
        return Err(Error::FdPass(
            "payload must be at least one byte to carry fds",
        ));
    }
    if fds.len() > MAX_FDS {
        return Err(Error::TooManyFds {
            got: fds.len(),
            max: MAX_FDS,
        });
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Error::FdPass("control buffer too small"));
    }
    loop {
        match rustix::net::sendmsg(
            &sock,
            &[IoSlice::new(payload)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::os("sendmsg", e)),
        }
    }
}

/// Receives into `buf` with at most `max_fds` fds (≤ [`MAX_FDS`]). Returns the bytes read (0 =
/// peer closed) and the fds, close-on-exec. More fds than `max_fds`, or a truncated control
/// message: every fd that arrived is closed and the call fails.
pub fn recv_fds(sock: impl AsFd, buf: &mut [u8], max_fds: usize) -> Result<(usize, Vec<OwnedFd>)> {
    let max_fds = max_fds.min(MAX_FDS);
    // Room for MAX_FDS, not just max_fds: so that excess fds arrive (and are closed by us) rather
    // than being silently dropped with MSG_CTRUNC.
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match rustix::net::recvmsg(
            &sock,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => break m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::os("recvmsg", e)),
        }
    };
    // Take ownership of every fd first: dropping the Vec on an error path closes them all.
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(iter) = m {
            fds.extend(iter);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err(Error::FdPass(
            "control message truncated (too many fds); all closed",
        ));
    }
    if fds.len() > max_fds {
        return Err(Error::TooManyFds {
            got: fds.len(),
            max: max_fds,
        });
    }
    Ok((msg.bytes, fds))
}

/// [`recv_fds`] expecting exactly `n` fds (anything else: all closed, error).
pub fn recv_exact_fds(sock: impl AsFd, buf: &mut [u8], n: usize) -> Result<(usize, Vec<OwnedFd>)> {
    let (len, fds) = recv_fds(sock, buf, n)?;
    if fds.len() != n {
        return Err(Error::WrongFdCount {
            expected: n,
            got: fds.len(),
        });
    }
    Ok((len, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn passes_fds_and_refuses_excess() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        send_fds(&a, b"x", &[r.as_fd(), w.as_fd()]).unwrap();
        let mut buf = [0u8; 8];
        let (n, fds) = recv_exact_fds(&b, &mut buf, 2).unwrap();
        assert_eq!((n, fds.len()), (1, 2));
        rustix::io::write(&fds[1], b"hi").unwrap();
        let mut got = [0u8; 2];
        rustix::io::read(&r, &mut got).unwrap();
        assert_eq!(&got, b"hi");

        // Three fds to a receiver that accepts one: error, none leak.
        send_fds(&a, b"y", &[r.as_fd(), w.as_fd(), r.as_fd()]).unwrap();
        assert!(matches!(
            recv_fds(&b, &mut buf, 1),
            Err(Error::TooManyFds { got: 3, max: 1 })
        ));
        // Fds to a receiver that accepts none.
        send_fds(&a, b"z", &[r.as_fd()]).unwrap();
        assert!(matches!(
            recv_fds(&b, &mut buf, 0),
            Err(Error::TooManyFds { got: 1, max: 0 })
        ));
        // Plain data still works.
        send_fds(&a, b"w", &[]).unwrap();
        let (n, fds) = recv_fds(&b, &mut buf, 0).unwrap();
        assert_eq!((n, fds.len()), (1, 0));
    }
}
