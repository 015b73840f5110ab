//! What the driver tells the outside while it runs, without ever letting the outside touch the
//! data path: DPDK telemetry commands, rate-limited log events, and readiness for systemd.
//!
//! # DPDK telemetry
//! The driver registers its own commands with `rte_telemetry_register_cmd`, so
//! `dpdk-telemetry.py -f <file-prefix>` lists and answers them next to DPDK's `/ethdev/stats`:
//!
//! | command | answer |
//! |---|---|
//! | `/nemflow/flows` | the installed flows' ids |
//! | `/nemflow/flow,<id>` | one flow's counters, QoS and scheduler accounting |
//! | `/nemflow/port` | the port, its counters and the drops before any flow, by reason |
//! | `/nemflow/sched` | link rate, reserve, admitted share, and per flow slice, period, time used |
//!
//! The callbacks run on DPDK's telemetry thread. They never see the data path's state: every
//! [`PUBLISH_EVERY`] the data path builds a [`Snapshot`] and swaps it in behind a mutex it only
//! ever `try_lock`s (if a callback holds it, the data path keeps the old snapshot and tries again
//! next round); a callback locks, clones the `Arc` and unlocks at once. Each answer says how old
//! its snapshot is (`snapshot_age_ms`).
//!
//! # Log events
//! Never one per packet: on the same tick, at most every [`LOG_EVERY`], the driver compares the
//! counters with those it last reported and logs what moved — receive drops, template violations
//! (spoof attempts), invalid iorecs, frames dropped before any flow — one line per flow and kind,
//! at most [`LOG_LINES`] lines per interval, then one line saying how many more were held back.
//!
//! # Readiness
//! [`notify_ready`] tells systemd (`Type=notify`, `$NOTIFY_SOCKET`) that the driver serves its
//! control socket.

use std::ffi::{c_char, c_int, CStr, CString};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::{Duration, Instant};

use nemflow_proto::ctl::{FlowStats, PortInfo};
use nemflow_proto::flow::{FlowId, Qos};

use crate::datapath::Datapath;
use crate::port::Port;

/// How often the data path publishes a snapshot.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// How often counters that moved are logged at most.
pub const LOG_EVERY: Duration = Duration::from_secs(1);
/// Most event lines per log interval.
pub const LOG_LINES: usize = 8;
/// Most flows listed in one answer (DPDK's array limit is 512; the sched arrays are 7 wide).
const MAX_LISTED: usize = 128;

/// What the telemetry callbacks answer from: a copy of the data path's counters.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When it was taken.
    pub taken: Instant,
    /// The port.
    pub port: PortInfo,
    /// Every flow's counters, by id.
    pub flows: Vec<FlowStats>,
    /// Every flow's QoS, by id.
    pub qos: Vec<(FlowId, Qos)>,
    /// Link rate, bit/s.
    pub rate_bps: u64,
    /// Share of the link kept out of admission, ppm.
    pub reserve_ppm: u32,
}

impl Snapshot {
    /// The guaranteed share admitted, ppm (Σ slice/period).
    pub fn admitted_ppm(&self) -> u64 {
        self.qos.iter().map(|(_, q)| (q.share() * 1e6) as u64).sum()
    }
}

/// The latest snapshot. The data path only `try_lock`s it; callbacks hold it for a clone.
static SNAPSHOT: Mutex<Option<Arc<Snapshot>>> = Mutex::new(None);
static REGISTER: Once = Once::new();

/// The data path's side: publishes snapshots and logs what moved.
#[derive(Debug)]
pub struct Telemetry {
    rate_bps: u64,
    reserve_ppm: u32,
    next_publish_ns: u64,
    next_log_ns: u64,
    logged: Option<Arc<Snapshot>>,
    logged_port: Option<PortInfo>,
}

impl Telemetry {
    /// Registers the commands with DPDK telemetry (once per process; a failure is logged, the
    /// driver runs on without them).
    pub fn register(rate_bps: u64, reserve_ppm: u32) -> Self {
        REGISTER.call_once(register_commands);
        Self {
            rate_bps,
            reserve_ppm,
            next_publish_ns: 0,
            next_log_ns: LOG_EVERY.as_nanos() as u64,
            logged: None,
            logged_port: None,
        }
    }

    /// Called every loop round: one comparison unless a snapshot is due.
    #[inline]
    pub fn tick<P: Port>(&mut self, dp: &Datapath<P>, now_ns: u64) {
        if now_ns >= self.next_publish_ns {
            self.publish(dp, now_ns);
        }
    }

    #[cold]
    #[inline(never)]
    fn publish<P: Port>(&mut self, dp: &Datapath<P>, now_ns: u64) {
        self.next_publish_ns = now_ns + PUBLISH_EVERY.as_nanos() as u64;
        let snap = Arc::new(Snapshot {
            taken: Instant::now(),
            port: dp.port_info(),
            flows: dp.flow_stats(None).unwrap_or_default(),
            qos: dp.flow_qos(),
            rate_bps: self.rate_bps,
            reserve_ppm: self.reserve_ppm,
        });
        if let Ok(mut slot) = SNAPSHOT.try_lock() {
            let old = slot.replace(Arc::clone(&snap));
            drop(slot);
            drop(old);
        }
        if now_ns >= self.next_log_ns {
            self.next_log_ns = now_ns + LOG_EVERY.as_nanos() as u64;
            self.log_changes(&snap);
            self.logged = Some(snap);
        }
    }

    /// One line per flow and kind of trouble that moved since the last report.
    fn log_changes(&mut self, snap: &Snapshot) {
        let mut lines = 0usize;
        let mut held = 0usize;
        let mut emit = |f: &mut dyn FnMut()| {
            if lines < LOG_LINES {
                lines += 1;
                f();
            } else {
                held += 1;
            }
        };
        let before = self.logged.as_deref();
        for s in &snap.flows {
            let old = before
                .and_then(|b| b.flows.iter().find(|o| o.id == s.id))
                .cloned()
                .unwrap_or(FlowStats {
                    id: s.id,
                    ..FlowStats::default()
                });
            let d = |now: u64, then: u64| now.saturating_sub(then);
            let rx_drops = d(s.rx_dropped_no_buffer, old.rx_dropped_no_buffer);
            if rx_drops > 0 {
                emit(&mut || {
                    tracing::warn!(
                        flow = %s.id,
                        dropped = rx_drops,
                        total = s.rx_dropped_no_buffer,
                        "receive drops: the flow had no empty buffer"
                    )
                });
            }
            let spoofs = d(s.tx_template_violations, old.tx_template_violations);
            if spoofs > 0 {
                emit(&mut || {
                    tracing::warn!(
                        flow = %s.id,
                        refused = spoofs,
                        total = s.tx_template_violations,
                        "template violations: frames not matching the flow's template were dropped (spoof attempt?)"
                    )
                });
            }
            let invalid = d(s.invalid_iorecs, old.invalid_iorecs);
            if invalid > 0 {
                emit(&mut || {
                    tracing::warn!(
                        flow = %s.id,
                        invalid,
                        total = s.invalid_iorecs,
                        broken = s.broken,
                        "invalid iorecs from the application"
                    )
                });
            }
            let tx_drops = d(s.tx_dropped, old.tx_dropped);
            if tx_drops > 0 {
                emit(
                    &mut || tracing::warn!(flow = %s.id, dropped = tx_drops, total = s.tx_dropped, "transmit drops: no mbuf or the port refused"),
                );
            }
        }
        if let Some(old) = &self.logged_port {
            for (reason, count) in &snap.port.drops {
                let then = old
                    .drops
                    .iter()
                    .find(|(r, _)| r == reason)
                    .map_or(0, |(_, c)| *c);
                let moved = count.saturating_sub(then);
                if moved > 0 {
                    emit(
                        &mut || tracing::warn!(reason = %reason, dropped = moved, total = count, "frames dropped before reaching a flow"),
                    );
                }
            }
        }
        if held > 0 {
            tracing::warn!(
                more = held,
                "further drop events this interval not logged (see nemflow stats)"
            );
        }
        self.logged_port = Some(snap.port.clone());
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        // Callbacks after this answer "no data" rather than a stale picture.
        let old = SNAPSHOT
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(old);
    }
}

/// The latest snapshot, if the data path published one.
pub fn snapshot() -> Option<Arc<Snapshot>> {
    SNAPSHOT
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Tells systemd the daemon is ready, when it runs under `Type=notify` (`$NOTIFY_SOCKET`).
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|a| sock.send_to_addr(b"READY=1", &a))
        }
        None => sock.send_to(b"READY=1", &path),
    };
    if let Err(e) = sent {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

type Callback =
    unsafe extern "C" fn(*const c_char, *const c_char, *mut dpdk_sys::rte_tel_data) -> c_int;

fn register_commands() {
    let commands: [(&CStr, Callback, &CStr); 4] = [
        (
            c"/nemflow/flows",
            cb_flows,
            c"Returns the ids of nemflow's installed flows. Takes no parameters",
        ),
        (
            c"/nemflow/flow",
            cb_flow,
            c"Returns one nemflow flow's counters and QoS. Parameters: int flow_id",
        ),
        (
            c"/nemflow/port",
            cb_port,
            c"Returns nemflow's port counters and drops before any flow. Takes no parameters",
        ),
        (
            c"/nemflow/sched",
            cb_sched,
            c"Returns nemflow's transmit scheduler: rate, reserve, admitted share, per-flow QoS and use",
        ),
    ];
    for (cmd, cb, help) in commands {
        // SAFETY: `cmd` and `help` are NUL-terminated strings that DPDK copies; `cb` is an
        // `extern "C"` function with the `telemetry_cb` signature that lives for the whole
        // process (DPDK cannot unregister commands).
        let rc =
            unsafe { dpdk_sys::rte_telemetry_register_cmd(cmd.as_ptr(), Some(cb), help.as_ptr()) };
        if rc != 0 {
            tracing::warn!(
                command = %cmd.to_string_lossy(),
                "DPDK telemetry refused the command: {}",
                crate::dpdk::strerror(-rc)
            );
        }
    }
}

/// A `rte_tel_data` being filled by a callback: the only way the callbacks touch it.
struct TelData(*mut dpdk_sys::rte_tel_data);

impl TelData {
    fn start_dict(&mut self) {
        // SAFETY: `self.0` is the non-null data DPDK handed the callback (or one allocated with
        // rte_tel_data_alloc), valid until the callback returns.
        unsafe { dpdk_sys::rte_tel_data_start_dict(self.0) };
    }

    fn start_array_u64(&mut self) {
        // SAFETY: as in `start_dict`.
        unsafe {
            dpdk_sys::rte_tel_data_start_array(self.0, dpdk_sys::rte_tel_value_type_RTE_TEL_U64_VAL)
        };
    }

    fn start_array_int(&mut self) {
        // SAFETY: as in `start_dict`.
        unsafe {
            dpdk_sys::rte_tel_data_start_array(self.0, dpdk_sys::rte_tel_value_type_RTE_TEL_INT_VAL)
        };
    }

    fn u64(&mut self, name: &CStr, v: u64) {
        // SAFETY: `self.0` valid (see `start_dict`), `name` NUL-terminated and copied by DPDK.
        unsafe { dpdk_sys::rte_tel_data_add_dict_u64(self.0, name.as_ptr(), v) };
    }

    fn str(&mut self, name: &CStr, v: &str) {
        let v = CString::new(v.replace('\0', "")).unwrap_or_default();
        // SAFETY: as in `u64`; `v` is NUL-terminated and copied (truncated at 128 bytes).
        unsafe { dpdk_sys::rte_tel_data_add_dict_string(self.0, name.as_ptr(), v.as_ptr()) };
    }

    fn push_u64(&mut self, v: u64) {
        // SAFETY: `self.0` valid and started as a u64 array.
        unsafe { dpdk_sys::rte_tel_data_add_array_u64(self.0, v) };
    }

    fn push_int(&mut self, v: i32) {
        // SAFETY: `self.0` valid and started as an int array.
        unsafe { dpdk_sys::rte_tel_data_add_array_int(self.0, v) };
    }

    /// Adds a u64 array under `name` in this dict.
    fn u64_array(&mut self, name: &CStr, values: impl Iterator<Item = u64>) {
        // SAFETY: allocation only; null is checked below.
        let raw = unsafe { dpdk_sys::rte_tel_data_alloc() };
        if raw.is_null() {
            return;
        }
        let mut a = TelData(raw);
        a.start_array_u64();
        for v in values {
            a.push_u64(v);
        }
        // SAFETY: `raw` is a filled array container; with keep = 0, DPDK owns and frees it from
        // here on, whether or not the call succeeds.
        let rc =
            unsafe { dpdk_sys::rte_tel_data_add_dict_container(self.0, name.as_ptr(), raw, 0) };
        if rc != 0 {
            // SAFETY: DPDK did not take it: ours to free, exactly once.
            unsafe { dpdk_sys::rte_tel_data_free(raw) };
        }
    }
}

/// Runs a callback body; a panic (there should be none) becomes an error reply, never an unwind
/// across the C frame.
fn guarded(
    d: *mut dpdk_sys::rte_tel_data,
    params: *const c_char,
    f: fn(&mut TelData, &str, &Snapshot) -> c_int,
) -> c_int {
    if d.is_null() {
        return -libc::EINVAL;
    }
    let params = if params.is_null() {
        String::new()
    } else {
        // SAFETY: DPDK passes a NUL-terminated parameter string (or null, handled above).
        unsafe { CStr::from_ptr(params) }
            .to_string_lossy()
            .into_owned()
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let Some(snap) = snapshot() else {
            return -libc::EAGAIN;
        };
        let mut data = TelData(d);
        f(&mut data, params.trim(), &snap)
    }))
    .unwrap_or(-libc::EINVAL)
}

fn age_ms(snap: &Snapshot) -> u64 {
    snap.taken.elapsed().as_millis() as u64
}

unsafe extern "C" fn cb_flows(
    _cmd: *const c_char,
    params: *const c_char,
    d: *mut dpdk_sys::rte_tel_data,
) -> c_int {
    guarded(d, params, |d, _, snap| {
        d.start_array_int();
        for s in snap
            .flows
            .iter()
            .take(dpdk_sys::RTE_TEL_MAX_ARRAY_ENTRIES as usize)
        {
            d.push_int(i32::try_from(s.id.0).unwrap_or(i32::MAX));
        }
        0
    })
}

unsafe extern "C" fn cb_flow(
    _cmd: *const c_char,
    params: *const c_char,
    d: *mut dpdk_sys::rte_tel_data,
) -> c_int {
    guarded(d, params, |d, params, snap| {
        let Ok(id) = params.parse::<u32>() else {
            return -libc::EINVAL;
        };
        let Some(s) = snap.flows.iter().find(|s| s.id.0 == id) else {
            return -libc::ENOENT;
        };
        let qos = snap.qos.iter().find(|(f, _)| f.0 == id).map(|(_, q)| *q);
        d.start_dict();
        d.u64(c"flow_id", u64::from(id));
        d.u64(c"tx_packets", s.tx_packets);
        d.u64(c"tx_bytes", s.tx_bytes);
        d.u64(c"rx_packets", s.rx_packets);
        d.u64(c"rx_bytes", s.rx_bytes);
        d.u64(c"rx_dropped_no_buffer", s.rx_dropped_no_buffer);
        d.u64(c"tx_template_violations", s.tx_template_violations);
        d.u64(c"invalid_iorecs", s.invalid_iorecs);
        d.u64(c"tx_dropped", s.tx_dropped);
        d.u64(c"sched_guaranteed_ns", s.sched_guaranteed_ns);
        d.u64(c"sched_extra_ns", s.sched_extra_ns);
        d.u64(c"sched_deadline_misses", s.sched_deadline_misses);
        d.u64(c"broken", u64::from(s.broken));
        if let Some(q) = qos {
            d.u64(c"period_ns", q.period_ns);
            d.u64(c"slice_ns", q.slice_ns);
            d.u64(c"extra", u64::from(q.extra));
            d.u64(c"latency_hint_ns", q.latency_hint_ns.unwrap_or(0));
        }
        d.u64(c"snapshot_age_ms", age_ms(snap));
        0
    })
}

unsafe extern "C" fn cb_port(
    _cmd: *const c_char,
    params: *const c_char,
    d: *mut dpdk_sys::rte_tel_data,
) -> c_int {
    guarded(d, params, |d, _, snap| {
        let p = &snap.port;
        d.start_dict();
        d.str(c"name", &p.name);
        d.str(c"mac", &nemflow_config::MacAddr(p.mac).to_string());
        d.u64(c"link_up", u64::from(p.link_up));
        d.u64(c"rate_bps", p.rate_bps);
        d.u64(c"rx_packets", p.rx_packets);
        d.u64(c"tx_packets", p.tx_packets);
        d.u64(c"rx_bytes", p.rx_bytes);
        d.u64(c"tx_bytes", p.tx_bytes);
        d.u64(c"rx_missed", p.rx_missed);
        d.u64(c"rx_nombuf", p.rx_nombuf);
        d.u64(c"tx_errors", p.tx_errors);
        d.u64(c"link_changes", p.link_changes);
        d.u64(c"flows", u64::from(p.flows));
        for (reason, count) in &p.drops {
            let key: String = format!("dropped_{reason}")
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            if let Ok(key) = CString::new(key) {
                d.u64(&key, *count);
            }
        }
        d.u64(c"snapshot_age_ms", age_ms(snap));
        0
    })
}

unsafe extern "C" fn cb_sched(
    _cmd: *const c_char,
    params: *const c_char,
    d: *mut dpdk_sys::rte_tel_data,
) -> c_int {
    guarded(d, params, |d, _, snap| {
        d.start_dict();
        d.u64(c"rate_bps", snap.rate_bps);
        d.u64(c"reserve_ppm", u64::from(snap.reserve_ppm));
        d.u64(c"admitted_ppm", snap.admitted_ppm());
        d.u64(c"flows", snap.qos.len() as u64);
        let qos = || snap.qos.iter().take(MAX_LISTED);
        let stats = |id: FlowId| snap.flows.iter().find(|s| s.id == id);
        d.u64_array(c"flow_id", qos().map(|(id, _)| u64::from(id.0)));
        d.u64_array(c"period_ns", qos().map(|(_, q)| q.period_ns));
        d.u64_array(c"slice_ns", qos().map(|(_, q)| q.slice_ns));
        d.u64_array(c"extra", qos().map(|(_, q)| u64::from(q.extra)));
        d.u64_array(
            c"guaranteed_ns",
            qos().map(|(id, _)| stats(*id).map_or(0, |s| s.sched_guaranteed_ns)),
        );
        d.u64_array(
            c"extra_ns",
            qos().map(|(id, _)| stats(*id).map_or(0, |s| s.sched_extra_ns)),
        );
        d.u64_array(
            c"deadline_misses",
            qos().map(|(id, _)| stats(*id).map_or(0, |s| s.sched_deadline_misses)),
        );
        d.u64(c"snapshot_age_ms", age_ms(snap));
        0
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn snap(flows: u32, violations: u64, drops: u64) -> Snapshot {
        Snapshot {
            taken: Instant::now(),
            port: PortInfo {
                drops: vec![("unmatched".into(), drops)],
                ..PortInfo::default()
            },
            flows: (1..=flows)
                .map(|i| FlowStats {
                    id: FlowId(i),
                    tx_template_violations: violations,
                    ..FlowStats::default()
                })
                .collect(),
            qos: Vec::new(),
            rate_bps: 1,
            reserve_ppm: 0,
        }
    }

    #[test]
    fn what_moved_is_logged_once_per_interval_and_bounded() {
        let out = Lines::default();
        let w = out.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(sub, || {
            let mut t = Telemetry {
                rate_bps: 1,
                reserve_ppm: 0,
                next_publish_ns: 0,
                next_log_ns: 0,
                logged: None,
                logged_port: None,
            };
            // First report: two flows with 1000 violations each, then nothing new.
            let s = Arc::new(snap(2, 1000, 0));
            t.log_changes(&s);
            t.logged = Some(s);
            let s = Arc::new(snap(2, 1000, 0));
            t.log_changes(&s);
            t.logged = Some(s);
            // Then 20 flows misbehave at once, and frames before any flow are dropped.
            let s = Arc::new(snap(20, 2000, 7));
            t.log_changes(&s);
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let first: Vec<&&str> = lines.iter().take(2).collect();
        assert!(
            first
                .iter()
                .all(|l| l.contains("template violations") && l.contains("refused=1000")),
            "{text}"
        );
        // 2 lines, nothing for the quiet interval, then LOG_LINES and one summary.
        assert_eq!(lines.len(), 2 + LOG_LINES + 1, "{text}");
        assert!(lines.last().unwrap().contains("more=13"), "{text}");
    }
}
