//! Passive open: a listening port registered with the flow manager, the SYN call-backs it sends,
//! and the handshakes of the connections accepted from them.

use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nemflow_flowmgr::client::ClientError;
use nemflow_proto::app::{AcceptFlow, AppErrorKind, AppEvent, Incoming};
use rustix::event::epoll;

use super::stream::TcpStream;
use super::{FlowManager, TcpConfig};
use crate::error::{Error, Result};
use crate::wait::{self, Mode};

/// A request older than this is no longer waiting in the flow manager: not worth accepting.
const STALE: Duration = Duration::from_millis(2900);

/// Longest sleep while other threads share the flow manager connection (they may take an
/// event off the socket while this one sleeps on it).
const SHARED_STEP: Duration = Duration::from_millis(10);

/// Longest single sleep.
const STEP: Duration = Duration::from_millis(100);

/// What a listener counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerCounters {
    /// Connection requests called back.
    pub incoming: u64,
    /// Connections whose handshake completed.
    pub established: u64,
    /// Handshakes that failed (reset, timed out).
    pub handshakes_failed: u64,
    /// Requests dropped before they were accepted: too old, or the flow manager had let them go.
    pub stale: u64,
    /// Events of the flow manager connection that were not for this listener.
    pub other_events: u64,
}

/// A listening TCP port.
///
/// At most `backlog` connections are in the making at a time: requests waiting in the flow
/// manager, handshakes in progress here, and established connections not yet taken by
/// [`accept`](Self::accept). Beyond that the flow manager drops further SYNs for the port
/// (and counts them), which is all a SYN flood can achieve: this service slows, no other does.
///
/// The listener takes every event of its flow manager connection: give each listener a
/// connection of its own ([`TcpListener::bind`] does). Streams it accepts share it, and are
/// closed with it.
#[derive(Debug)]
pub struct TcpListener {
    fm: FlowManager,
    port: u16,
    backlog: usize,
    cfg: TcpConfig,
    mode: Mode,
    waiting: VecDeque<(Incoming, Instant)>,
    handshaking: Vec<(TcpStream, Instant)>,
    ready: VecDeque<TcpStream>,
    epoll: OwnedFd,
    /// The flow manager socket (a duplicate in `epoll`, so it can be waited on without
    /// holding the lock).
    _events_fd: OwnedFd,
    counters: ListenerCounters,
}

fn os(op: &'static str) -> impl Fn(rustix::io::Errno) -> Error {
    move |e| Error::Os {
        op,
        source: e.into(),
    }
}

impl TcpListener {
    /// Listens on `port` (0: any) on a flow manager connection of its own, with the default
    /// backlog and connection settings.
    pub fn bind(port: u16) -> Result<Self> {
        let fm = FlowManager::connect_default()?;
        Self::bind_with(
            &fm,
            port,
            nemflow_proto::app::DEFAULT_BACKLOG,
            &TcpConfig::default(),
        )
    }

    /// Listens on `port` (0: any) through `fm`, with at most `backlog` connections in the
    /// making; accepted connections get `cfg`.
    pub fn bind_with(fm: &FlowManager, port: u16, backlog: u32, cfg: &TcpConfig) -> Result<Self> {
        let (port, events_fd) = {
            let mut c = fm.lock();
            let port = c.listen_backlog(port, backlog)?;
            let fd = c
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| Error::Os { op: "dup", source })?;
            (port, fd)
        };
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(os("epoll_create"))?;
        epoll::add(
            &ep,
            &events_fd,
            epoll::EventData::new_u64(0),
            epoll::EventFlags::IN,
        )
        .map_err(os("epoll_ctl"))?;
        Ok(TcpListener {
            fm: fm.clone(),
            port,
            backlog: backlog.max(1) as usize,
            cfg: *cfg,
            mode: Mode::default(),
            waiting: VecDeque::new(),
            handshaking: Vec::new(),
            ready: VecDeque::new(),
            epoll: ep,
            _events_fd: events_fd,
            counters: ListenerCounters::default(),
        })
    }

    /// The listening port.
    pub fn local_port(&self) -> u16 {
        self.port
    }

    /// The flow manager connection (shared with the accepted streams).
    pub fn flow_manager(&self) -> &FlowManager {
        &self.fm
    }

    /// Counters.
    pub fn counters(&self) -> ListenerCounters {
        self.counters
    }

    /// Connections in the making (waiting, handshaking, established and not yet accepted).
    pub fn in_progress(&self) -> usize {
        self.waiting.len() + self.handshaking.len() + self.ready.len()
    }

    /// Non-blocking: `accept` returns `Error::WouldBlock` instead of waiting.
    pub fn set_nonblocking(&mut self, nonblocking: bool) {
        self.mode.nonblocking = nonblocking;
    }

    /// A blocking `accept` gives up after `timeout` (`None`: waits forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.mode.read_timeout = timeout;
    }

    /// The next established connection, and its peer.
    pub fn accept(&mut self) -> Result<(TcpStream, SocketAddrV4)> {
        let deadline = wait::deadline(self.mode.read_timeout);
        loop {
            self.step()?;
            if let Some(s) = self.ready.pop_front() {
                let peer = s.peer_addr();
                return Ok((s, peer));
            }
            if self.mode.nonblocking {
                return Err(Error::WouldBlock);
            }
            if self.prepare_wait()? {
                continue;
            }
            let mut t = if self.fm.shared() { SHARED_STEP } else { STEP };
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    self.finish_wait();
                    return Err(Error::TimedOut);
                }
                t = t.min(left);
            }
            let mut events: Vec<epoll::Event> = Vec::with_capacity(8);
            let ts = rustix::time::Timespec {
                tv_sec: t.as_secs() as i64,
                tv_nsec: i64::from(t.subsec_nanos()),
            };
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                Some(&ts),
            ) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    self.finish_wait();
                    return Err(os("epoll_wait")(e));
                }
            }
            self.finish_wait();
        }
    }

    /// Takes the flow manager's call-backs, accepts what there is room for, and runs the
    /// handshakes in progress.
    fn step(&mut self) -> Result<()> {
        let now = Instant::now();
        loop {
            let ev = self.fm.lock().poll_event()?;
            match ev {
                Some(AppEvent::Incoming(i)) if i.listen_port == self.port => {
                    self.counters.incoming += 1;
                    self.waiting.push_back((i, now));
                }
                Some(_) => self.counters.other_events += 1,
                None => break,
            }
        }
        while self.handshaking.len() + self.ready.len() < self.backlog {
            let Some((inc, since)) = self.waiting.pop_front() else {
                break;
            };
            if now.saturating_duration_since(since) > STALE {
                self.counters.stale += 1;
                continue;
            }
            let req = AcceptFlow {
                listen_port: self.port,
                remote: inc.remote,
                qos: self.cfg.qos,
                buffers: self.cfg.buffers,
            };
            let flow = self.fm.lock().accept(&req);
            match flow {
                Ok(flow) => {
                    let id = flow.id();
                    // One connection failing to start (no memory for its stack, say) fails
                    // that connection, not the listener.
                    let started =
                        TcpStream::accepted(flow, &inc, &self.fm, &self.cfg).and_then(|s| {
                            epoll::add(
                                &self.epoll,
                                s.as_fd(),
                                epoll::EventData::new_u64(1),
                                epoll::EventFlags::IN,
                            )
                            .map_err(os("epoll_ctl"))?;
                            Ok(s)
                        });
                    match started {
                        Ok(s) => self.handshaking.push((s, now)),
                        Err(_) => {
                            self.counters.handshakes_failed += 1;
                            let _ = self.fm.lock().close(id);
                        }
                    }
                }
                // The flow manager let the request go (expired), or another 5-tuple holds it.
                Err(ClientError::Refused(e))
                    if matches!(e.kind, AppErrorKind::Invalid | AppErrorKind::AddrInUse) =>
                {
                    self.counters.stale += 1;
                }
                // The flow manager could not make the connection's flow (the peer's MAC did
                // not resolve, a limit of this uid, admission): that connection fails.
                Err(ClientError::Refused(_)) => self.counters.handshakes_failed += 1,
                // The flow manager connection itself failed: the listener is gone.
                Err(e) => return Err(e.into()),
            }
        }
        let mut i = 0;
        while i < self.handshaking.len() {
            let (s, since) = &mut self.handshaking[i];
            let outcome = match s.handshake() {
                Ok(true) => Some(true),
                Ok(false) if since.elapsed() > self.cfg.connect_timeout => Some(false),
                Ok(false) => None,
                Err(_) => Some(false),
            };
            match outcome {
                None => i += 1,
                Some(ok) => {
                    let (s, _) = self.handshaking.swap_remove(i);
                    let _ = epoll::delete(&self.epoll, s.as_fd());
                    if ok {
                        self.counters.established += 1;
                        self.ready.push_back(s);
                    } else {
                        self.counters.handshakes_failed += 1;
                        let _ = s.abort();
                    }
                }
            }
        }
        Ok(())
    }

    /// For event loops: takes call-backs and runs handshakes; `true` when a connection is
    /// ready to be accepted (or something else needs a turn at once). On `false`, wait for
    /// [`AsFd::as_fd`] to be readable, call [`finish_wait`](Self::finish_wait), and
    /// `accept` (non-blocking).
    pub fn prepare_wait(&mut self) -> Result<bool> {
        self.step()?;
        if !self.ready.is_empty() || self.fm.lock().queued_events() > 0 {
            return Ok(true);
        }
        if !self.waiting.is_empty() && self.handshaking.len() + self.ready.len() < self.backlog {
            return Ok(true);
        }
        for (s, _) in &mut self.handshaking {
            if s.prepare_wait(false)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Disarms the wake-ups after a sleep.
    pub fn finish_wait(&mut self) {
        for (s, _) in &mut self.handshaking {
            s.finish_wait();
        }
    }
}

impl AsFd for TcpListener {
    /// An epoll fd over the flow manager connection and the handshakes in progress.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        // Connections in the making go with it; established ones already accepted stay.
        self.handshaking.clear();
        self.ready.clear();
        let _ = self.fm.lock().unlisten(self.port);
    }
}
