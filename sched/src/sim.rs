//! Virtual-time simulator: runs the [`Scheduler`] over a scenario (flows with QoS, start and
//! stop times, offered load) and measures each flow's throughput in fixed bins, as the paper's
//! receiving machine did (§5.1: "integrated over 200 ms intervals"). The `sched-sim` binary is
//! a thin shell over [`Scenario::from_yaml`], [`run`] and [`SimResult::write_csv`].
//!
//! Time jumps from event to event (a flow starts or stops, a frame arrives, the wire goes free,
//! an allocation starts), so a minute of a 100 Mbit/s link is a few hundred thousand steps. The
//! result is exact and deterministic: the same scenario always gives the same CSV.
//!
//! A frame counts in the bin in which its last bit leaves the wire.

use std::fmt;
use std::io::{self, Write};
use std::path::Path;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use thiserror::Error;

use crate::{FlowStats, Pick, Qos, SchedError, Scheduler};

/// A simulation scenario, as read from YAML (`deny_unknown_fields` throughout).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name (used in summaries).
    #[serde(default)]
    pub name: String,
    /// What the scenario reproduces.
    #[serde(default)]
    pub description: String,
    /// Link rate, bit/s.
    pub link_rate_bps: u64,
    /// Admission reserve, parts per million of the link kept free of guarantees.
    #[serde(default)]
    pub reserve_ppm: u32,
    /// Frame length of every flow unless the flow says otherwise, bytes (1514: MTU-sized UDP
    /// in Ethernet, without FCS).
    pub frame_bytes: u32,
    /// Simulated time, s.
    pub duration_s: f64,
    /// Width of a throughput bin, ms (default 200, as in the paper).
    #[serde(default = "default_bin_ms")]
    pub bin_ms: f64,
    /// What a bin's Mbit/s counts (default `frame`).
    #[serde(default)]
    pub rate_basis: RateBasis,
    /// The flows.
    pub flows: Vec<FlowSpec>,
}

fn default_bin_ms() -> f64 {
    200.0
}

fn default_queue_frames() -> u32 {
    1024
}

/// What throughput counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateBasis {
    /// Frame bytes as a receiver counts them (`L × 8` bits per frame).
    #[default]
    Frame,
    /// Wire occupancy, the unit of the guarantees: `(L + 24) × 8` bits per frame (preamble,
    /// inter-frame gap and FCS included), so `s` ms per 100 ms on a 100 Mbit/s link is
    /// exactly `s` Mbit/s.
    Wire,
}

/// One flow of a scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    /// Name, used as the CSV `flow` column.
    pub name: String,
    /// Scheduler flow id (default: position in the list, from 1).
    #[serde(default)]
    pub id: Option<u32>,
    /// Period, ms.
    pub period_ms: f64,
    /// Guaranteed slice per period, ms (0 = best effort).
    #[serde(default)]
    pub slice_ms: f64,
    /// May use slack time.
    #[serde(default)]
    pub extra: bool,
    /// Latency hint, ms.
    #[serde(default)]
    pub latency_hint_ms: Option<f64>,
    /// When the flow is added and starts offering load, s.
    #[serde(default)]
    pub start_s: f64,
    /// When it is removed, s (default: runs to the end).
    #[serde(default)]
    pub stop_s: Option<f64>,
    /// Offered load: `saturate` (always a frame waiting) or bit/s of frames (`L × 8` bits each).
    pub load: Load,
    /// Frame length, bytes (default: the scenario's).
    #[serde(default)]
    pub frame_bytes: Option<u32>,
    /// Frames the flow's queue holds before arrivals are dropped (offered-load flows).
    #[serde(default = "default_queue_frames")]
    pub queue_frames: u32,
}

/// A flow's offered load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// Always backlogged, like the paper's "as fast as possible" sender.
    Saturate,
    /// Frames arrive evenly spaced at this rate, bit/s.
    BitsPerSecond(u64),
}

impl<'de> Deserialize<'de> for Load {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Load;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`saturate` or an offered load in bit/s (a positive integer)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Load, E> {
                if v == "saturate" {
                    Ok(Load::Saturate)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Load, E> {
                if v == 0 {
                    Err(E::invalid_value(de::Unexpected::Unsigned(v), &self))
                } else {
                    Ok(Load::BitsPerSecond(v))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Load, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Load, E> {
                if v.is_finite() && v >= 1.0 && v.fract() == 0.0 && v <= 1e15 {
                    Ok(Load::BitsPerSecond(v as u64))
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Why a scenario could not be simulated.
#[derive(Debug, Error)]
pub enum SimError {
    /// The scenario file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The YAML does not parse or does not match the scenario's shape.
    #[error("scenario {path}: {message}")]
    Parse {
        /// The file (or `<string>`).
        path: String,
        /// The parser's report, with location.
        message: String,
    },
    /// A field has a value outside what is allowed.
    #[error("scenario field `{field}`: {problem}")]
    Invalid {
        /// Where, e.g. `flows[2].slice_ms`.
        field: String,
        /// What is wrong and what is allowed.
        problem: String,
    },
    /// The scheduler refused a flow (admission control, or a QoS it cannot take).
    #[error("flow `{flow}`: {source}")]
    Sched {
        /// The flow's name.
        flow: String,
        /// The scheduler's reason.
        #[source]
        source: SchedError,
    },
}

impl Scenario {
    /// Parses a scenario from YAML text; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, SimError> {
        serde_saphyr::from_str(text).map_err(|e| SimError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads a scenario file.
    pub fn from_file(path: &Path) -> Result<Self, SimError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SimError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_yaml(&text, &shown)
    }
}

/// A flow with every time converted to ns and checked.
#[derive(Debug, Clone)]
struct Plan {
    name: String,
    id: u32,
    qos: Qos,
    start_ns: u64,
    stop_ns: u64,
    load: Load,
    frame_bytes: u32,
    queue_frames: u32,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> SimError {
    SimError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// `value` in `unit_ns` units as whole ns; finite, ≥ 0 and at most ~10^7 s.
fn to_ns(field: &str, value: f64, unit_ns: f64) -> Result<u64, SimError> {
    let ns = value * unit_ns;
    if !value.is_finite() || value < 0.0 || ns > 1e16 {
        return Err(invalid(
            field,
            format!("{value} is not a time between 0 and 10^7 s"),
        ));
    }
    Ok(ns.round() as u64)
}

const MS: f64 = 1e6;
const S: f64 = 1e9;

fn plan(sc: &Scenario) -> Result<(Vec<Plan>, u64, u64), SimError> {
    let duration_ns = to_ns("duration_s", sc.duration_s, S)?;
    if duration_ns == 0 {
        return Err(invalid("duration_s", "must be > 0"));
    }
    let bin_ns = to_ns("bin_ms", sc.bin_ms, MS)?;
    if bin_ns == 0 {
        return Err(invalid("bin_ms", "must be > 0"));
    }
    if duration_ns / bin_ns > 10_000_000 {
        return Err(invalid(
            "bin_ms",
            "more than 10^7 bins: use wider bins or a shorter duration",
        ));
    }
    if sc.frame_bytes == 0 || sc.frame_bytes > crate::MAX_FRAME_BYTES {
        return Err(invalid(
            "frame_bytes",
            format!("must be 1..={}", crate::MAX_FRAME_BYTES),
        ));
    }
    let mut plans = Vec::with_capacity(sc.flows.len());
    for (i, f) in sc.flows.iter().enumerate() {
        let at = |field: &str| format!("flows[{i}].{field}");
        let id = match f.id {
            Some(id) => id,
            None => u32::try_from(i + 1).map_err(|_| invalid(at("id"), "too many flows"))?,
        };
        if plans.iter().any(|p: &Plan| p.id == id) {
            return Err(invalid(
                at("id"),
                format!("id {id} is used by another flow"),
            ));
        }
        if f.name.is_empty() || f.name.contains(['\n', '\r']) {
            return Err(invalid(at("name"), "must be a non-empty single line"));
        }
        let latency_hint_ns = match f.latency_hint_ms {
            Some(l) => Some(to_ns(&at("latency_hint_ms"), l, MS)?),
            None => None,
        };
        let qos = Qos {
            period_ns: to_ns(&at("period_ms"), f.period_ms, MS)?,
            slice_ns: to_ns(&at("slice_ms"), f.slice_ms, MS)?,
            extra: f.extra,
            latency_hint_ns,
        };
        qos.validate().map_err(|e| {
            let field = match e {
                SchedError::ZeroPeriod | SchedError::PeriodTooLong { .. } => "period_ms",
                SchedError::ZeroLatencyHint => "latency_hint_ms",
                _ => "slice_ms",
            };
            invalid(at(field), e.to_string())
        })?;
        let start_ns = to_ns(&at("start_s"), f.start_s, S)?;
        let stop_ns = match f.stop_s {
            Some(s) => to_ns(&at("stop_s"), s, S)?,
            None => u64::MAX,
        };
        if stop_ns <= start_ns {
            return Err(invalid(at("stop_s"), "must be after start_s"));
        }
        let frame_bytes = f.frame_bytes.unwrap_or(sc.frame_bytes);
        if frame_bytes == 0 || frame_bytes > crate::MAX_FRAME_BYTES {
            return Err(invalid(
                at("frame_bytes"),
                format!("must be 1..={}", crate::MAX_FRAME_BYTES),
            ));
        }
        if f.queue_frames == 0 {
            return Err(invalid(at("queue_frames"), "must be > 0"));
        }
        plans.push(Plan {
            name: f.name.clone(),
            id,
            qos,
            start_ns,
            stop_ns,
            load: f.load,
            frame_bytes,
            queue_frames: f.queue_frames,
        });
    }
    Ok((plans, duration_ns, bin_ns))
}

/// One flow's measurements.
#[derive(Debug, Clone)]
pub struct FlowResult {
    /// The flow's name.
    pub name: String,
    /// Its scheduler id.
    pub id: u32,
    /// When it was added, ns.
    pub start_ns: u64,
    /// When it was removed, ns (`u64::MAX`: ran to the end).
    pub stop_ns: u64,
    /// Bits counted in each bin (per the scenario's [`RateBasis`]).
    pub bits_per_bin: Vec<u64>,
    /// Frames sent.
    pub frames_sent: u64,
    /// Arrivals dropped because the flow's queue was full.
    pub frames_dropped: u64,
    /// The scheduler's accounting at removal or at the end of the run.
    pub stats: Option<FlowStats>,
}

/// The outcome of [`run`].
#[derive(Debug, Clone)]
pub struct SimResult {
    /// Bin width, ns.
    pub bin_ns: u64,
    /// Simulated time, ns.
    pub duration_ns: u64,
    /// What the bits count.
    pub rate_basis: RateBasis,
    /// Per flow, in scenario order.
    pub flows: Vec<FlowResult>,
}

impl SimResult {
    /// Number of bins (the last may be partial).
    pub fn bins(&self) -> usize {
        self.flows.first().map_or(0, |f| f.bits_per_bin.len())
    }

    /// Start of bin `bin`, ns.
    pub fn bin_start_ns(&self, bin: usize) -> u64 {
        self.bin_ns * bin as u64
    }

    /// Width of bin `bin`, ns (the last one can be cut short by the duration).
    pub fn bin_width_ns(&self, bin: usize) -> u64 {
        let start = self.bin_start_ns(bin);
        (start + self.bin_ns).min(self.duration_ns) - start
    }

    /// Flow `flow`'s throughput in bin `bin`, Mbit/s.
    pub fn mbps(&self, flow: usize, bin: usize) -> f64 {
        let bits = self.flows[flow].bits_per_bin[bin] as f64;
        bits * 1e3 / self.bin_width_ns(bin) as f64
    }

    /// Writes `time_s,flow,mbps` rows: every flow in every bin, `time_s` the bin's start.
    pub fn write_csv(&self, mut w: impl Write) -> io::Result<()> {
        writeln!(w, "time_s,flow,mbps")?;
        for bin in 0..self.bins() {
            for (i, f) in self.flows.iter().enumerate() {
                writeln!(
                    w,
                    "{:.3},{},{:.4}",
                    self.bin_start_ns(bin) as f64 / S,
                    csv_field(&f.name),
                    self.mbps(i, bin)
                )?;
            }
        }
        Ok(())
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Per-flow simulation state.
#[derive(Debug)]
struct Live {
    added: bool,
    removed: bool,
    queued: u64,
    arrivals: u64,
    next_arrival_ns: u64,
}

/// Runs a scenario in virtual time.
pub fn run(sc: &Scenario) -> Result<SimResult, SimError> {
    let (plans, duration_ns, bin_ns) = plan(sc)?;
    let mut sched = Scheduler::new(sc.link_rate_bps, sc.reserve_ppm)
        .map_err(|e| invalid("link_rate_bps/reserve_ppm", e.to_string()))?;
    let bins = usize::try_from(duration_ns.div_ceil(bin_ns))
        .map_err(|_| invalid("bin_ms", "too many bins"))?;
    let mut out: Vec<FlowResult> = plans
        .iter()
        .map(|p| FlowResult {
            name: p.name.clone(),
            id: p.id,
            start_ns: p.start_ns,
            stop_ns: p.stop_ns,
            bits_per_bin: vec![0; bins],
            frames_sent: 0,
            frames_dropped: 0,
            stats: None,
        })
        .collect();
    let mut live: Vec<Live> = plans
        .iter()
        .map(|_| Live {
            added: false,
            removed: false,
            queued: 0,
            arrivals: 0,
            next_arrival_ns: u64::MAX,
        })
        .collect();
    let by_id: std::collections::HashMap<u32, usize> =
        plans.iter().enumerate().map(|(i, p)| (p.id, i)).collect();
    let sched_err = |p: &Plan, source: SchedError| SimError::Sched {
        flow: p.name.clone(),
        source,
    };

    let mut t = 0u64;
    loop {
        // Events due at t: removals, additions, arrivals.
        for (i, p) in plans.iter().enumerate() {
            let l = &mut live[i];
            if l.added && !l.removed && p.stop_ns <= t {
                l.removed = true;
                out[i].stats = Some(sched.remove_flow(p.id).map_err(|e| sched_err(p, e))?);
            }
        }
        for (i, p) in plans.iter().enumerate() {
            let l = &mut live[i];
            if !l.added && p.start_ns <= t && p.stop_ns > t {
                l.added = true;
                sched
                    .add_flow(p.id, p.qos, t)
                    .map_err(|e| sched_err(p, e))?;
                match p.load {
                    Load::Saturate => sched
                        .set_backlogged(p.id, true, t)
                        .map_err(|e| sched_err(p, e))?,
                    Load::BitsPerSecond(_) => l.next_arrival_ns = t,
                }
            }
            if l.added && !l.removed {
                if let Load::BitsPerSecond(bps) = p.load {
                    let was_empty = l.queued == 0;
                    while l.next_arrival_ns <= t {
                        if l.queued < u64::from(p.queue_frames) {
                            l.queued += 1;
                        } else {
                            out[i].frames_dropped += 1;
                        }
                        l.arrivals += 1;
                        // Arrival k at start + k·L·8/bps, exactly (no accumulated rounding).
                        let offset =
                            u128::from(l.arrivals) * u128::from(p.frame_bytes) * 8 * 1_000_000_000
                                / u128::from(bps);
                        l.next_arrival_ns = p
                            .start_ns
                            .saturating_add(u64::try_from(offset).unwrap_or(u64::MAX));
                    }
                    if was_empty && l.queued > 0 {
                        sched
                            .set_backlogged(p.id, true, t)
                            .map_err(|e| sched_err(p, e))?;
                    }
                }
            }
        }
        if t >= duration_ns {
            break;
        }
        let next_event = plans
            .iter()
            .zip(&live)
            .map(|(p, l)| {
                if !l.added {
                    p.start_ns
                } else if l.removed {
                    u64::MAX
                } else {
                    let arrival = match p.load {
                        Load::Saturate => u64::MAX,
                        Load::BitsPerSecond(_) => l.next_arrival_ns,
                    };
                    arrival.min(p.stop_ns)
                }
            })
            .min()
            .unwrap_or(u64::MAX)
            .min(duration_ns);
        match sched.pick(t) {
            Pick::Send(id) => {
                let Some(&i) = by_id.get(&id) else {
                    return Err(invalid(
                        "flows",
                        format!("scheduler picked unknown flow {id}"),
                    ));
                };
                let p = &plans[i];
                sched
                    .charge(id, p.frame_bytes, t)
                    .map_err(|e| sched_err(p, e))?;
                let end = sched.wire_free_at();
                // The bin in which the last bit leaves: a frame ending exactly on a boundary
                // belongs to the bin before it.
                let bin = (end.ceil_ns().saturating_sub(1) / bin_ns) as usize;
                if bin < bins {
                    let bits = match sc.rate_basis {
                        RateBasis::Frame => u64::from(p.frame_bytes) * 8,
                        RateBasis::Wire => crate::wire::wire_bits(p.frame_bytes),
                    };
                    out[i].bits_per_bin[bin] += bits;
                }
                out[i].frames_sent += 1;
                if let Load::BitsPerSecond(_) = p.load {
                    let l = &mut live[i];
                    l.queued = l.queued.saturating_sub(1);
                    if l.queued == 0 {
                        sched
                            .set_backlogged(id, false, t)
                            .map_err(|e| sched_err(p, e))?;
                    }
                }
            }
            // Always move forward, even if asked to wait for a time already reached.
            Pick::WaitUntil(w) => t = w.min(next_event).max(t + 1),
            Pick::Idle => t = next_event.max(t + 1),
        }
    }
    for (i, p) in plans.iter().enumerate() {
        if live[i].added && !live[i].removed {
            out[i].stats = Some(sched.stats(p.id).map_err(|e| sched_err(p, e))?);
        }
    }
    Ok(SimResult {
        bin_ns,
        duration_ns,
        rate_basis: sc.rate_basis,
        flows: out,
    })
}
