//! A flow's lifeline: the application's connection to the flow manager. Liveness comes from the
//! socket itself (DESIGN.md §1): a flow lives as long as the connection that opened it, so
//! when that connection closes the app must stop using the flow — even, or above all, when it
//! is asleep in `recv` or in `send` on a full FIFO, where a dead driver would otherwise keep it
//! waiting forever.
//!
//! How the connection closed decides when the flow counts as revoked:
//! - **with a `Revoked` event** for the flow before the end of the stream (the flow manager shut
//!   down, or lost its driver and with it every flow): at once.
//! - **without one** (the flow manager crashed or was killed): the driver still carries the
//!   flow, so its data keeps moving. The flow is *orphaned*: its flow manager's socket is probed
//!   (at most every [`PROBE_INTERVAL`], the first time one interval after the hang-up, and
//!   only when the app waits or finds nothing to do),
//!   and once a flow manager listens there again the flow counts as revoked, since a flow
//!   manager removes at start every flow the driver still holds (`flowmgr` crate docs).
//!
//! Blocking waits poll the connection together with the channel's eventfd (a hang-up wakes
//! them); non-blocking calls check it when they would block, at most once per
//! [`CHECK_INTERVAL`], so an app that spins on `WouldBlock` pays one clock read per call.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nemflow_proto::app::{AppEvent, ServerMsg};
use nemflow_proto::wire::Decoder;
use nemflow_proto::FlowId;
use rustix::event::{PollFd, PollFlags, Timespec};

use crate::error::{Error, Result};

/// Non-blocking calls look at the connection at most this often.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(1);

/// An orphaned flow probes its flow manager's socket at most this often.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Most bytes of unread messages looked at for a `Revoked` event when the connection closes.
const PEEK_BYTES: usize = 64 << 10;

/// Where a flow stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LivenessState {
    /// The connection is open.
    Alive,
    /// The connection closed without revoking the flow (the flow manager died): the driver
    /// still carries it until a flow manager starts again.
    Orphaned,
    /// The flow is revoked; why.
    Revoked(String),
}

/// A flow's connection to the flow manager, watched: see the module docs.
#[derive(Debug)]
pub struct Liveness {
    /// The connection (a duplicate of the app's client socket: it keeps the connection, and
    /// so the flow, open as long as the flow's stack lives).
    sock: OwnedFd,
    flow: FlowId,
    /// The flow manager's socket, probed once orphaned (`None`: an orphan lives on).
    probe: Option<PathBuf>,
    state: LivenessState,
    last_check: Option<Instant>,
    last_probe: Option<Instant>,
}

impl Liveness {
    /// Watches `conn`, the connection that opened `flow` (e.g. a duplicate of
    /// `nemflow_flowmgr::client::Client`'s socket: `client.as_fd().try_clone_to_owned()`).
    pub fn new(conn: OwnedFd, flow: FlowId) -> Self {
        Liveness {
            sock: conn,
            flow,
            probe: None,
            state: LivenessState::Alive,
            last_check: None,
            last_probe: None,
        }
    }

    /// Once orphaned, counts the flow as revoked when a flow manager listens at `socket` again.
    pub fn with_probe(mut self, socket: impl Into<PathBuf>) -> Self {
        self.probe = Some(socket.into());
        self
    }

    /// Where the flow stands (as of the last check).
    pub fn state(&self) -> &LivenessState {
        &self.state
    }

    /// The fd a sleeping caller should also poll (any events: a hang-up is always reported):
    /// the connection while it is open, `None` once it closed.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        (self.state == LivenessState::Alive).then(|| self.sock.as_fd())
    }

    /// Looks at the connection now: `Err(Revoked)` once the flow is revoked.
    pub fn check(&mut self) -> Result<()> {
        let now = Instant::now();
        self.last_check = Some(now);
        match self.state {
            LivenessState::Alive => {
                if self.hung_up() {
                    self.state = match self.revocation() {
                        Some(reason) => LivenessState::Revoked(reason),
                        None => LivenessState::Orphaned,
                    };
                    // The first probe waits a full interval: a flow manager being killed
                    // closes our connection a moment before its listening socket, and a
                    // probe in that moment would take the dying one for a new one.
                    self.last_probe = Some(now);
                }
            }
            LivenessState::Orphaned => {
                let due = self
                    .last_probe
                    .is_none_or(|t| now.saturating_duration_since(t) >= PROBE_INTERVAL);
                if due {
                    self.last_probe = Some(now);
                    if let Some(path) = &self.probe {
                        if UnixStream::connect(path).is_ok() {
                            self.state = LivenessState::Revoked(format!(
                                "the flow manager restarted ({}): flows of its previous run are revoked",
                                path.display()
                            ));
                        }
                    }
                }
            }
            LivenessState::Revoked(_) => {}
        }
        match &self.state {
            LivenessState::Revoked(reason) => Err(Error::Revoked {
                flow: self.flow,
                reason: reason.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// [`check`](Self::check), but at most once per [`CHECK_INTERVAL`] (for calls that would
    /// block in non-blocking mode).
    pub fn check_cheap(&mut self) -> Result<()> {
        let due = match (&self.state, self.last_check) {
            (LivenessState::Revoked(_), _) | (_, None) => true,
            (_, Some(t)) => t.elapsed() >= CHECK_INTERVAL,
        };
        if due {
            self.check()
        } else {
            Ok(())
        }
    }

    /// Whether the connection's other end closed (or the socket failed).
    fn hung_up(&self) -> bool {
        let mut p = [PollFd::new(&self.sock, PollFlags::RDHUP)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match rustix::event::poll(&mut p, Some(&zero)) {
            Ok(n) if n > 0 => p[0]
                .revents()
                .intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR | PollFlags::NVAL),
            _ => false,
        }
    }

    /// The reason of a `Revoked` event for this flow among the messages left unread on the
    /// closed connection (peeked: the app's client still reads them). Bytes that do not parse
    /// (the client read part of a message) count as a revocation: better an error than a hang.
    fn revocation(&self) -> Option<String> {
        let mut buf = vec![0u8; PEEK_BYTES];
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        let n = rustix::net::recv(&self.sock, &mut buf[..], flags)
            .map(|(n, _)| n)
            .unwrap_or(0);
        let mut dec = Decoder::new(0);
        dec.feed(&buf[..n]);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => match f.decode::<ServerMsg>() {
                    Ok(ServerMsg::Event(AppEvent::Revoked { flow, reason }))
                        if flow == self.flow =>
                    {
                        return Some(reason)
                    }
                    Ok(_) => {}
                    Err(e) => return Some(format!("connection closed mid-message ({e})")),
                },
                Ok(None) => return None,
                Err(e) => return Some(format!("connection closed mid-message ({e})")),
            }
        }
    }
}

/// Sleeps until `chan_fd` (or `extra`) is readable, the connection watched by `live` closes,
/// or `timeout`; `Ok(false)` when the time ran out. The caller armed the channels' wake-ups
/// (`prepare_wait`) and disarms them afterwards.
pub(crate) fn poll_with(
    chan_fd: BorrowedFd<'_>,
    extra: Option<BorrowedFd<'_>>,
    live: Option<&Liveness>,
    timeout: Duration,
) -> Result<bool> {
    let ts = Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let mut fds = Vec::with_capacity(3);
    fds.push(PollFd::from_borrowed_fd(chan_fd, PollFlags::IN));
    if let Some(fd) = extra {
        fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
    }
    if let Some(fd) = live.and_then(Liveness::fd) {
        fds.push(PollFd::from_borrowed_fd(fd, PollFlags::RDHUP));
    }
    match rustix::event::poll(&mut fds, Some(&ts)) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(true),
        Err(e) => Err(Error::Os {
            op: "poll",
            source: e.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nemflow_proto::wire;

    fn pair(flow: FlowId) -> (Liveness, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Liveness::new(a.into(), flow), b)
    }

    #[test]
    fn open_connection_is_alive_and_events_do_not_count_as_a_hang_up() {
        let (mut l, peer) = pair(FlowId(7));
        l.check().unwrap();
        let ev = ServerMsg::Event(AppEvent::Revoked {
            flow: FlowId(8),
            reason: "other".into(),
        });
        wire::send(&peer, &ev, &[]).unwrap();
        l.check().unwrap();
        assert_eq!(l.state(), &LivenessState::Alive);
        assert!(l.fd().is_some());
    }

    #[test]
    fn a_revoked_event_before_the_end_revokes_at_once() {
        let (mut l, peer) = pair(FlowId(7));
        for flow in [FlowId(3), FlowId(7)] {
            let ev = ServerMsg::Event(AppEvent::Revoked {
                flow,
                reason: format!("driver lost ({flow})"),
            });
            wire::send(&peer, &ev, &[]).unwrap();
        }
        drop(peer);
        match l.check() {
            Err(Error::Revoked { flow, reason }) => {
                assert_eq!(flow, FlowId(7));
                assert_eq!(reason, "driver lost (7)");
            }
            other => panic!("{other:?}"),
        }
        assert!(l.fd().is_none());
        assert!(l.check_cheap().is_err(), "stays revoked");
    }

    #[test]
    fn a_silent_hang_up_orphans_until_a_flow_manager_listens_again() {
        let dir = tempfile_dir();
        let path = dir.join("fm.sock");
        let (l, peer) = pair(FlowId(7));
        let mut l = l.with_probe(&path);
        drop(peer);
        l.check().unwrap();
        assert_eq!(l.state(), &LivenessState::Orphaned);
        assert!(l.fd().is_none(), "a dead socket would wake every poll");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // Probed at most every PROBE_INTERVAL.
        std::thread::sleep(PROBE_INTERVAL);
        match l.check() {
            Err(Error::Revoked { reason, .. }) => assert!(reason.contains("restarted"), "{reason}"),
            other => panic!("{other:?}"),
        }
        drop(listener);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_first_probe_waits_an_interval_so_a_dying_listener_is_not_taken_for_a_new_one() {
        let dir = tempfile_dir();
        let path = dir.join("fm.sock");
        // The killed flow manager's listening socket outlives its connections for a moment.
        let dying = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let (l, peer) = pair(FlowId(7));
        let mut l = l.with_probe(&path);
        drop(peer);
        l.check().unwrap();
        l.check().unwrap();
        assert_eq!(l.state(), &LivenessState::Orphaned);
        drop(dying);
        std::thread::sleep(PROBE_INTERVAL);
        l.check().unwrap();
        assert_eq!(l.state(), &LivenessState::Orphaned, "nobody listens");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "nemflow-liveness-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
