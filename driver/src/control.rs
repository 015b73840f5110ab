//! The driver's control socket: the flow manager (root only) installs and removes flows,
//! changes QoS and reads statistics and the drop log (`nemflow_proto::ctl`).
//!
//! It is served from the data-path thread between bursts, non-blocking, so the data path needs
//! no lock. A client that sends garbage gets an error reply and is disconnected; one that stops
//! reading is disconnected after a short write timeout; a peer that is not root is refused at
//! accept time (SO_PEERCRED).
//!
//! **One flow manager at a time.** The first connection that changes flows (`InstallFlow`,
//! `RemoveFlow`, `SetQos`) becomes the driver's flow manager until it disconnects; while it is
//! connected, any other connection's change is refused with [`Kind::Busy`] and a message naming
//! the holder's pid, so a second flow manager stops at start-up with one clear line instead of
//! removing the first one's flows. Other requests (hello, statistics, drop log, port info,
//! captures) stay open to every root client: `nemflow capture`, `nemflow up` and tests read while
//! the flow manager runs. Once the flow manager's connection closes (it exited or was killed),
//! the next connection that changes flows takes its place; the flows it left stay installed and
//! keep moving until then (a new flow manager removes them first: `nemflow_flowmgr` docs). The
//! channel pairs it staged for future flows (`StageChannels`) serve no app yet: they are dropped
//! as soon as its connection closes. One pair is dropped on its own by `DropStaged` (an app
//! reserved it and left without using it); an unknown pair is a `NotFound` reply.

use std::io::ErrorKind;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nemflow_proto::ctl::{DriverReply, DriverRequest, ErrorKind as Kind, INSTALL_FLOW_FDS};
use nemflow_proto::wire::{self, Decoder, WireError};

use crate::datapath::{Datapath, FlowError};
use crate::port::Port;

/// How long a reply may wait for the client to make room.
const WRITE_TIMEOUT: Duration = Duration::from_millis(200);
/// Most requests served per client per poll, so that one busy client cannot hog the loop.
const REQUESTS_PER_POLL: usize = 64;
/// Most clients at once (the flow manager needs one; tools may add a few).
const MAX_CLIENTS: usize = 16;
/// Most drop-log entries per reply (keeps replies under the framing limit).
const MAX_DROP_ENTRIES: u32 = 2048;

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another process is serving this socket.
    #[error("control socket {0} is in use by a running driver: stop it first, or set driver.control_socket")]
    InUse(PathBuf),
    /// A filesystem or socket call failed.
    #[error("control socket {path}: {op}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        op: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

#[derive(Debug)]
struct Client {
    stream: UnixStream,
    decoder: Decoder,
    pid: i32,
    /// Captures this client started: stopped when it leaves.
    captures: Vec<u32>,
    /// This connection is the driver's flow manager (it changed flows first).
    manages: bool,
}

/// The listening control socket and its clients.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    clients: Vec<Client>,
    refused: u64,
}

impl ControlServer {
    /// Binds `path` (mode 0600, parent directory created 0755). A stale socket file left by a
    /// dead driver is replaced; a live one is an error.
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        let io = |op, source| ControlError::Io {
            path: path.to_owned(),
            op,
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| io("create directory", e))?;
        }
        if path.exists() {
            match UnixStream::connect(path) {
                Ok(_) => return Err(ControlError::InUse(path.to_owned())),
                Err(_) => std::fs::remove_file(path).map_err(|e| io("remove stale socket", e))?,
            }
        }
        let listener = UnixListener::bind(path).map_err(|e| io("bind", e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io("chmod 0600", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io("set non-blocking", e))?;
        Ok(Self {
            listener,
            path: path.to_owned(),
            clients: Vec::new(),
            refused: 0,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Connections refused (not root, or too many clients).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Accepts new clients and serves what they sent; returns the requests served.
    pub fn poll<P: Port>(&mut self, dp: &mut Datapath<P>, now_ns: u64) -> usize {
        self.accept();
        let mut served = 0;
        // The flow manager's pid, if a connection holds that role.
        let mut manager = self.clients.iter().find(|c| c.manages).map(|c| c.pid);
        self.clients.retain_mut(|client| {
            let keep = match serve(client, dp, now_ns, &mut manager) {
                Ok(n) => {
                    served += n;
                    true
                }
                Err(WireError::Closed) => {
                    tracing::debug!(pid = client.pid, "control client left");
                    false
                }
                Err(e) => {
                    tracing::warn!(pid = client.pid, "control client dropped: {e}");
                    false
                }
            };
            if !keep {
                for id in client.captures.drain(..) {
                    dp.capture_stop(id);
                }
                if client.manages {
                    manager = None;
                    // Staged pairs serve no app yet: they go with the connection that made them.
                    let staged = dp.drop_staged();
                    tracing::info!(
                        pid = client.pid,
                        flows = dp.port_info().flows,
                        staged,
                        "the flow manager's connection closed: its flows stay until a new flow manager removes them; its staged channel pairs are dropped"
                    );
                }
            }
            keep
        });
        served
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("accept on control socket: {e}");
                    return;
                }
            };
            let creds = rustix::net::sockopt::socket_peercred(&stream);
            let Ok(creds) = creds else {
                self.refused += 1;
                continue;
            };
            if creds.uid.as_raw() != 0 {
                self.refused += 1;
                tracing::warn!(
                    uid = creds.uid.as_raw(),
                    pid = creds.pid.as_raw_nonzero().get(),
                    "control socket: refused a non-root peer"
                );
                continue;
            }
            if self.clients.len() >= MAX_CLIENTS {
                self.refused += 1;
                tracing::warn!("control socket: too many clients, refused one");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            self.clients.push(Client {
                stream,
                decoder: Decoder::new(INSTALL_FLOW_FDS),
                pid: creds.pid.as_raw_nonzero().get(),
                captures: Vec::new(),
                manages: false,
            });
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads what the client sent and answers each complete request. `manager`: the pid of the
/// connection that holds the flow manager's role (see the module docs), updated when this
/// client takes it.
fn serve<P: Port>(
    client: &mut Client,
    dp: &mut Datapath<P>,
    now_ns: u64,
    manager: &mut Option<i32>,
) -> Result<usize, WireError> {
    let mut served = 0;
    loop {
        while served < REQUESTS_PER_POLL {
            let frame = match client.decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    // The stream is out of step: say why, then hang up.
                    let _ = reply(client, &error(Kind::Invalid, e.to_string()));
                    return Err(e);
                }
            };
            let answer = match frame.decode::<DriverRequest>() {
                Err(e) => error(Kind::Invalid, e.to_string()),
                Ok(request) => match claim(client, &request, manager) {
                    None => handle(request, frame.fds, dp, now_ns, &mut client.captures),
                    Some(refusal) => refusal,
                },
            };
            reply(client, &answer)?;
            served += 1;
        }
        if served >= REQUESTS_PER_POLL {
            return Ok(served);
        }
        match client.decoder.read_from(client.stream.as_fd()) {
            Ok(true) => {}
            Ok(false) => return Ok(served),
            Err(e @ WireError::Fds(_)) => {
                let _ = reply(client, &error(Kind::Invalid, e.to_string()));
                return Err(e);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Lets a request that changes flows through only from the flow manager's connection; the first
/// connection to send one while no other holds the role becomes the flow manager. `Some`: the
/// refusal to send instead.
fn claim(
    client: &mut Client,
    request: &DriverRequest,
    manager: &mut Option<i32>,
) -> Option<DriverReply> {
    if client.manages {
        return None;
    }
    let changes_flows = matches!(
        request,
        DriverRequest::InstallFlow { .. }
            | DriverRequest::RemoveFlow { .. }
            | DriverRequest::SetQos { .. }
            | DriverRequest::StageChannels { .. }
            | DriverRequest::InstallStaged { .. }
            | DriverRequest::DropStaged { .. }
    );
    if !changes_flows {
        return None;
    }
    match *manager {
        Some(pid) => {
            tracing::warn!(
                pid = client.pid,
                manager = pid,
                "control socket: refused a second flow manager"
            );
            Some(error(
                Kind::Busy,
                format!(
                    "another flow manager (pid {pid}) is connected to this driver: it serves one at a time (stop that one first)"
                ),
            ))
        }
        None => {
            client.manages = true;
            *manager = Some(client.pid);
            tracing::info!(pid = client.pid, "control client is the flow manager");
            None
        }
    }
}

fn reply(client: &Client, answer: &DriverReply) -> Result<(), WireError> {
    wire::send_timeout(&client.stream, answer, &[], Some(WRITE_TIMEOUT))
}

fn error(kind: Kind, message: String) -> DriverReply {
    DriverReply::Error { kind, message }
}

fn flow_error(e: FlowError) -> DriverReply {
    let kind = match &e {
        FlowError::Exists(_) => Kind::Exists,
        FlowError::NotFound(_) => Kind::NotFound,
        FlowError::Filter(crate::flowtable::FilterError::Exists) => Kind::Exists,
        FlowError::Filter(_) => Kind::Invalid,
        FlowError::Channel(_) | FlowError::FdCount { .. } => Kind::BadChannel,
        FlowError::NotStaged(_) => Kind::NotFound,
        FlowError::StagedExists(_) => Kind::Exists,
        FlowError::TooManyStaged(_) => Kind::Exhausted,
        FlowError::Sched(nemflow_sched::SchedError::Admission { .. }) => Kind::Admission,
        FlowError::Sched(_) => Kind::Invalid,
        FlowError::Capture(crate::capture::CaptureError::TooMany) => Kind::Exhausted,
        FlowError::Capture(crate::capture::CaptureError::Channel(_)) => Kind::BadChannel,
        FlowError::Capture(_) => Kind::Invalid,
    };
    error(kind, e.to_string())
}

/// Answers one request; `captures` are the ones this client started.
fn handle<P: Port>(
    request: DriverRequest,
    fds: Vec<OwnedFd>,
    dp: &mut Datapath<P>,
    now_ns: u64,
    captures: &mut Vec<u32>,
) -> DriverReply {
    if !matches!(
        request,
        DriverRequest::InstallFlow { .. }
            | DriverRequest::StageChannels { .. }
            | DriverRequest::CaptureStart { .. }
    ) && !fds.is_empty()
    {
        return error(
            Kind::Invalid,
            format!("{} unexpected fds (closed)", fds.len()),
        );
    }
    match request {
        DriverRequest::Hello { client } => {
            tracing::info!(%client, "control client says hello");
            DriverReply::Hello(dp.port_info())
        }
        DriverRequest::InstallFlow {
            id,
            filter,
            template,
            qos,
            tx,
            rx,
        } => match dp.install(id, filter, template, qos, &tx, &rx, fds, now_ns) {
            Ok(()) => DriverReply::Ok,
            Err(e) => flow_error(e),
        },
        DriverRequest::StageChannels { id, tx, rx } => match dp.stage(id, &tx, &rx, fds) {
            Ok(()) => DriverReply::Ok,
            Err(e) => flow_error(e),
        },
        DriverRequest::InstallStaged {
            id,
            staged,
            filter,
            template,
            qos,
        } => match dp.install_staged(id, staged, filter, template, qos, now_ns) {
            Ok(()) => DriverReply::Ok,
            Err(e) => flow_error(e),
        },
        DriverRequest::DropStaged { id } => match dp.drop_staged_pair(id) {
            Ok(()) => DriverReply::Ok,
            Err(e) => flow_error(e),
        },
        DriverRequest::SetQos { id, qos } => match dp.set_qos(id, qos, now_ns) {
            Ok(()) => DriverReply::Ok,
            Err(e) => flow_error(e),
        },
        // Answered with the flow's last counters: a TCP flow's sequence state as it stood when
        // the flow stopped sending, for the flow manager's RST.
        DriverRequest::RemoveFlow { id } => match dp.remove(id) {
            Ok(stats) => DriverReply::FlowStats(vec![stats]),
            Err(e) => flow_error(e),
        },
        DriverRequest::FlowStats { id } => match dp.flow_stats(id) {
            Ok(s) => DriverReply::FlowStats(s),
            Err(e) => flow_error(e),
        },
        DriverRequest::PortInfo => DriverReply::PortInfo(dp.port_info()),
        DriverRequest::DropLog { after, max } => {
            DriverReply::DropLog(dp.drop_log(after, max.min(MAX_DROP_ENTRIES) as usize))
        }
        DriverRequest::CaptureStart {
            flow,
            direction,
            spec,
        } => match dp.capture_start(flow, direction, &spec, fds) {
            Ok(id) => {
                captures.push(id);
                DriverReply::CaptureStarted { id }
            }
            Err(e) => flow_error(e),
        },
        DriverRequest::CaptureStats { id } => match dp.capture_stats(id) {
            Some(c) => DriverReply::Capture(c),
            None => error(Kind::NotFound, format!("no capture {id}")),
        },
        DriverRequest::CaptureStop { id } => {
            captures.retain(|&c| c != id);
            match dp.capture_stop(id) {
                Some(c) => DriverReply::Capture(c),
                None => error(Kind::NotFound, format!("no capture {id}")),
            }
        }
    }
}
