//! A fake driver for tests and the benchmark: a thread serving [`nemflow_proto::ctl`] on a Unix
//! socket, as the real driver does, with no NIC behind it.
//!
//! It attaches to every flow's channels as the driver would (so a bad fd, a wrong spec or an
//! unsealed memfd fails the install), keeps staged channel pairs for later installs and drops
//! them with the connection (`StageChannels`, `InstallStaged`, `DropStaged`), drains what apps and the flow manager transmit (counting
//! it per flow), records the flow manager's own frames, answers ARP for the neighbours a test
//! declares, and delivers frames a test injects to the flow manager's default flow.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nemflow_proto::ctl::{DriverReply, DriverRequest, ErrorKind, FlowStats, PortInfo};
use nemflow_proto::flow::{Filter, FlowId, Qos, Template};
use nemflow_proto::wire::{self, Decoder, WireError};
use nemflow_rbuf::{rmm, tmm, ChannelFds, ChannelSpec, FdSource, CHANNEL_FDS};

/// MAC the fake port reports.
pub const FAKE_PORT_MAC: [u8; 6] = [0x02, 0x4e, 0x46, 0x00, 0x00, 0x01];

/// A flow as the fake driver installed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Installed {
    /// Receive filter.
    pub filter: Filter,
    /// Transmit template.
    pub template: Template,
    /// QoS.
    pub qos: Qos,
    /// Transmit channel geometry.
    pub tx: ChannelSpec,
    /// Receive channel geometry.
    pub rx: ChannelSpec,
    /// When it was installed.
    pub at: Instant,
}

/// What the fake driver saw; tests read it through [`FakeDriver::state`].
#[derive(Debug, Default)]
pub struct FakeState {
    /// Installed flows.
    pub flows: BTreeMap<FlowId, Installed>,
    /// Removed flows, in order, with the time of removal.
    pub removed: Vec<(FlowId, Instant)>,
    /// Requests by kind.
    pub requests: BTreeMap<&'static str, u64>,
    /// Installs refused, and why.
    pub refused: Vec<String>,
    /// Frames the flow manager sent on its own flow.
    pub sent: Vec<Vec<u8>>,
    /// Frames to deliver to the default flow.
    inject: VecDeque<Vec<u8>>,
    /// Frames to deliver to one flow each, as if its filter matched them.
    deliver: VecDeque<(FlowId, Vec<u8>)>,
    /// Frames for a flow that could not be delivered (no such flow, no empty buffer).
    pub deliver_dropped: u64,
    /// Injected frames dropped: no empty buffer on the default flow.
    pub inject_dropped: u64,
    /// Neighbours whose ARP the fake answers.
    pub neighbours: HashMap<Ipv4Addr, [u8; 6]>,
    /// Per-flow counters of what apps transmitted.
    pub stats: BTreeMap<FlowId, FlowStats>,
    /// Connections from flow managers.
    pub connections: u64,
    /// Channel pairs staged now (`StageChannels`, not yet installed).
    pub staged: usize,
    /// Installs still to refuse (`Admission`), as a driver short of something would.
    pub refuse_installs: u32,
}

/// The fake driver thread and its socket.
#[derive(Debug)]
pub struct FakeDriver {
    path: PathBuf,
    state: Arc<Mutex<FakeState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Ends {
    tx: tmm::Consumer,
    rx: rmm::Producer,
}

impl FakeDriver {
    /// Starts serving at `path` (removed first if it exists).
    pub fn start(path: &Path) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let state = Arc::new(Mutex::new(FakeState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("fake-driver".into())
            .spawn(move || serve(&listener, &s, &st))?;
        Ok(Self {
            path: path.to_owned(),
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// The control socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded state.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers ARP requests for `ip` with `mac`.
    pub fn add_neighbour(&self, ip: Ipv4Addr, mac: [u8; 6]) {
        self.state().neighbours.insert(ip, mac);
    }

    /// Delivers `frame` to the default (flow manager's) flow, as an unmatched received frame.
    pub fn inject(&self, frame: Vec<u8>) {
        self.state().inject.push_back(frame);
    }

    /// Delivers `frame` to flow `flow`'s receive channel, as if its filter had matched it.
    pub fn deliver(&self, flow: FlowId, frame: Vec<u8>) {
        self.state().deliver.push_back((flow, frame));
    }

    /// Takes the frames the flow manager sent so far.
    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.state().sent)
    }

    /// Waits until `pred` holds on the state, or `timeout`; returns whether it held.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&FakeState) -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if pred(&self.state()) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for FakeDriver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn lock(s: &Mutex<FakeState>) -> MutexGuard<'_, FakeState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn serve(listener: &UnixListener, state: &Mutex<FakeState>, stop: &AtomicBool) {
    let mut conn: Option<(UnixStream, Decoder)> = None;
    let mut ends: HashMap<FlowId, Ends> = HashMap::new();
    let mut staged: HashMap<u32, (Ends, ChannelSpec, ChannelSpec)> = HashMap::new();
    let mut default_flow: Option<FlowId> = None;
    let mut frame = vec![0u8; 1 << 16];
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            if let Ok((s, _)) = listener.accept() {
                if s.set_nonblocking(true).is_ok() {
                    lock(state).connections += 1;
                    conn = Some((s, Decoder::new(nemflow_proto::ctl::INSTALL_FLOW_FDS)));
                }
            }
        }
        let mut lost = false;
        if let Some((sock, dec)) = &mut conn {
            let ready = {
                let mut p = [rustix::event::PollFd::new(
                    sock,
                    rustix::event::PollFlags::IN,
                )];
                let ts = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 500_000,
                };
                rustix::event::poll(&mut p, Some(&ts)).unwrap_or(0) > 0
            };
            if ready {
                match dec.read_from(&*sock) {
                    Ok(_) => {}
                    Err(_) => lost = true,
                }
            }
            while !lost {
                match dec.next_frame() {
                    Ok(Some(f)) => {
                        let reply = match f.decode::<DriverRequest>() {
                            Ok(req) => {
                                handle(req, f.fds, state, &mut ends, &mut staged, &mut default_flow)
                            }
                            Err(e) => DriverReply::Error {
                                kind: ErrorKind::Invalid,
                                message: e.to_string(),
                            },
                        };
                        // The flow manager blocks on this reply: a blocking send is fine.
                        if sock.set_nonblocking(false).is_err()
                            || wire::send(sock, &reply, &[]).is_err()
                            || sock.set_nonblocking(true).is_err()
                        {
                            lost = true;
                        }
                    }
                    Ok(None) => break,
                    Err(WireError::Closed) | Err(_) => {
                        lost = true;
                    }
                }
            }
        } else {
            std::thread::sleep(Duration::from_micros(500));
        }
        if lost {
            conn = None;
            ends.clear();
            // Staged pairs go with the connection that staged them, as in the driver.
            staged.clear();
            lock(state).staged = 0;
            default_flow = None;
        }
        data_path(state, &mut ends, default_flow, &mut frame);
    }
}

fn count(state: &Mutex<FakeState>, what: &'static str) {
    *lock(state).requests.entry(what).or_default() += 1;
}

/// Checks and attaches a pair's eight fds, as the driver does.
fn attach(
    tx: &ChannelSpec,
    rx: &ChannelSpec,
    mut fds: Vec<std::os::fd::OwnedFd>,
) -> Result<Ends, String> {
    if fds.len() != 2 * CHANNEL_FDS {
        return Err(format!("{} fds, expected {}", fds.len(), 2 * CHANNEL_FDS));
    }
    let rx_fds = fds.split_off(CHANNEL_FDS);
    let ends = || -> Result<Ends, nemflow_rbuf::Error> {
        Ok(Ends {
            tx: tmm::Consumer::attach_from(tx, ChannelFds::from_vec(fds)?, FdSource::Creator)?,
            rx: rmm::Producer::attach_from(rx, ChannelFds::from_vec(rx_fds)?, FdSource::Creator)?,
        })
    };
    ends().map_err(|e| e.to_string())
}

fn handle(
    req: DriverRequest,
    fds: Vec<std::os::fd::OwnedFd>,
    state: &Mutex<FakeState>,
    ends: &mut HashMap<FlowId, Ends>,
    staged: &mut HashMap<u32, (Ends, ChannelSpec, ChannelSpec)>,
    default_flow: &mut Option<FlowId>,
) -> DriverReply {
    let err = |kind, message: String| DriverReply::Error { kind, message };
    let refuse = |m: String| {
        lock(state).refused.push(m.clone());
        err(ErrorKind::BadChannel, m)
    };
    if !fds.is_empty()
        && !matches!(
            req,
            DriverRequest::InstallFlow { .. } | DriverRequest::StageChannels { .. }
        )
    {
        return err(ErrorKind::Invalid, format!("{} unexpected fds", fds.len()));
    }
    // An install: its channels (attached now, or staged before) and where they came from.
    let (id, filter, template, qos, channels) = match req {
        DriverRequest::Hello { .. } => {
            count(state, "hello");
            return DriverReply::Hello(port_info(state));
        }
        DriverRequest::StageChannels { id, tx, rx } => {
            count(state, "stage");
            if staged.contains_key(&id) {
                return err(ErrorKind::Exists, format!("pair {id} staged already"));
            }
            if staged.len() >= nemflow_proto::ctl::MAX_STAGED {
                return err(ErrorKind::Exhausted, "too many staged pairs".into());
            }
            return match attach(&tx, &rx, fds) {
                Ok(e) => {
                    staged.insert(id, (e, tx, rx));
                    lock(state).staged = staged.len();
                    DriverReply::Ok
                }
                Err(m) => refuse(m),
            };
        }
        DriverRequest::InstallFlow {
            id,
            filter,
            template,
            qos,
            tx,
            rx,
        } => {
            count(state, "install");
            (
                id,
                filter,
                template,
                qos,
                attach(&tx, &rx, fds).map(|e| (e, tx, rx)),
            )
        }
        DriverRequest::InstallStaged {
            id,
            staged: pair,
            filter,
            template,
            qos,
        } => {
            count(state, "install");
            let e = staged.remove(&pair);
            lock(state).staged = staged.len();
            let Some(e) = e else {
                return err(ErrorKind::NotFound, format!("no staged pair {pair}"));
            };
            (id, filter, template, qos, Ok(e))
        }
        DriverRequest::DropStaged { id } => {
            count(state, "drop_staged");
            let e = staged.remove(&id);
            lock(state).staged = staged.len();
            return match e {
                Some(_) => DriverReply::Ok,
                None => err(ErrorKind::NotFound, format!("no staged pair {id}")),
            };
        }
        other => return handle_other(other, state, ends, default_flow),
    };
    {
        let mut s = lock(state);
        if s.refuse_installs > 0 {
            s.refuse_installs -= 1;
            return err(ErrorKind::Admission, "refused as the test asked".into());
        }
        if s.flows.contains_key(&id) {
            return err(ErrorKind::Exists, format!("flow {id} exists"));
        }
    }
    if filter == Filter::Default && default_flow.is_some() {
        return err(ErrorKind::Exists, "a default flow exists".into());
    }
    let (e, tx, rx) = match channels {
        Ok(c) => c,
        Err(m) => return refuse(m),
    };
    ends.insert(id, e);
    if filter == Filter::Default {
        *default_flow = Some(id);
    }
    let mut s = lock(state);
    s.stats.insert(
        id,
        FlowStats {
            id,
            ..FlowStats::default()
        },
    );
    s.flows.insert(
        id,
        Installed {
            filter,
            template,
            qos,
            tx,
            rx,
            at: Instant::now(),
        },
    );
    DriverReply::Ok
}

/// Requests other than hello, staging and installs.
fn handle_other(
    req: DriverRequest,
    state: &Mutex<FakeState>,
    ends: &mut HashMap<FlowId, Ends>,
    default_flow: &mut Option<FlowId>,
) -> DriverReply {
    let err = |kind, message: String| DriverReply::Error { kind, message };
    match req {
        DriverRequest::SetQos { id, qos } => {
            count(state, "set_qos");
            match lock(state).flows.get_mut(&id) {
                Some(f) => {
                    f.qos = qos;
                    DriverReply::Ok
                }
                None => err(ErrorKind::NotFound, format!("no flow {id}")),
            }
        }
        DriverRequest::RemoveFlow { id } => {
            count(state, "remove");
            ends.remove(&id);
            if *default_flow == Some(id) {
                *default_flow = None;
            }
            let mut s = lock(state);
            let last = s.stats.remove(&id);
            match s.flows.remove(&id) {
                Some(_) => {
                    s.removed.push((id, Instant::now()));
                    // As the driver: the flow's last counters.
                    DriverReply::FlowStats(vec![last.unwrap_or(FlowStats {
                        id,
                        ..FlowStats::default()
                    })])
                }
                None => err(ErrorKind::NotFound, format!("no flow {id}")),
            }
        }
        DriverRequest::FlowStats { id } => {
            count(state, "flow_stats");
            let s = lock(state);
            DriverReply::FlowStats(
                s.stats
                    .values()
                    .filter(|f| id.is_none_or(|i| i == f.id))
                    .cloned()
                    .collect(),
            )
        }
        DriverRequest::PortInfo => {
            count(state, "port_info");
            DriverReply::PortInfo(port_info(state))
        }
        DriverRequest::DropLog { .. } => {
            count(state, "drop_log");
            DriverReply::DropLog(Vec::new())
        }
        DriverRequest::CaptureStart { .. }
        | DriverRequest::CaptureStats { .. }
        | DriverRequest::CaptureStop { .. } => DriverReply::Error {
            kind: ErrorKind::Invalid,
            message: "the fake driver does not capture".into(),
        },
        DriverRequest::Hello { .. }
        | DriverRequest::InstallFlow { .. }
        | DriverRequest::StageChannels { .. }
        | DriverRequest::InstallStaged { .. }
        | DriverRequest::DropStaged { .. } => err(ErrorKind::Invalid, "not here".into()),
    }
}

fn port_info(state: &Mutex<FakeState>) -> PortInfo {
    let s = lock(state);
    PortInfo {
        name: "fake0".into(),
        mac: FAKE_PORT_MAC,
        link_up: true,
        rate_bps: 100_000_000,
        tx_packets: s.stats.values().map(|f| f.tx_packets).sum(),
        tx_bytes: s.stats.values().map(|f| f.tx_bytes).sum(),
        rx_packets: s.stats.values().map(|f| f.rx_packets).sum(),
        rx_bytes: s.stats.values().map(|f| f.rx_bytes).sum(),
        flows: s.flows.len() as u32,
        staged: s.staged as u32,
        ..PortInfo::default()
    }
}

/// Drains every flow's transmit channel; answers ARP for known neighbours; delivers injected
/// frames to the default flow, and frames for a flow to that flow.
fn data_path(
    state: &Mutex<FakeState>,
    ends: &mut HashMap<FlowId, Ends>,
    default_flow: Option<FlowId>,
    frame: &mut [u8],
) {
    let mut sent_by_host = Vec::new();
    let mut counts = Vec::new();
    for (&id, e) in ends.iter_mut() {
        let (mut pkts, mut bytes) = (0u64, 0u64);
        while let Ok(Some(rec)) = e.tx.pop() {
            if let Ok(n) = e.tx.copy_out(&rec, frame) {
                pkts += 1;
                bytes += n as u64;
                if Some(id) == default_flow {
                    sent_by_host.push(frame[..n].to_vec());
                }
            }
            let _ = e.tx.release(rec);
        }
        if pkts > 0 {
            counts.push((id, pkts, bytes));
        }
    }
    let mut s = lock(state);
    for (id, p, b) in counts {
        if let Some(st) = s.stats.get_mut(&id) {
            st.tx_packets += p;
            st.tx_bytes += b;
        }
    }
    for f in &sent_by_host {
        if let Some(reply) = arp_answer(f, &s.neighbours) {
            s.inject.push_back(reply);
        }
    }
    s.sent.extend(sent_by_host);
    while let Some((id, f)) = s.deliver.pop_front() {
        let delivered = ends.get_mut(&id).is_some_and(|e| match e.rx.take_empty() {
            Ok(Some(buf)) if e.rx.copy_in(&buf, &f).is_ok() => e.rx.push_full(buf, f.len()).is_ok(),
            _ => false,
        });
        if delivered {
            if let Some(st) = s.stats.get_mut(&id) {
                st.rx_packets += 1;
                st.rx_bytes += f.len() as u64;
            }
        } else {
            s.deliver_dropped += 1;
        }
    }
    let Some(e) = default_flow.and_then(|id| ends.get_mut(&id)) else {
        return;
    };
    while let Some(f) = s.inject.pop_front() {
        match e.rx.take_empty() {
            Ok(Some(buf)) if e.rx.copy_in(&buf, &f).is_ok() => {
                let _ = e.rx.push_full(buf, f.len());
            }
            _ => s.inject_dropped += 1,
        }
    }
}

/// The ARP reply a neighbour would send to `frame`, if it is a request for one.
fn arp_answer(frame: &[u8], neighbours: &HashMap<Ipv4Addr, [u8; 6]>) -> Option<Vec<u8>> {
    let a = crate::arp::parse(frame).ok()?;
    if !a.request {
        return None;
    }
    let mac = *neighbours.get(&a.tpa)?;
    Some(crate::arp::reply(&a, mac, a.tpa))
}
