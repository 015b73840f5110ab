//! Experiment definitions (`config/experiments/*.yaml`): the link, the flows with their QoS, the
//! paced source and the sinks, and the timing. What counts as a pass is each experiment's own
//! code; the numbers it judges come from here.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// One experiment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// Which experiment: `5a`, `5b`, `6` or `7`.
    pub experiment: String,
    /// Figure title.
    pub title: String,
    /// Link rate the driver paces to (and Linux's shaper is set to), bit/s.
    pub link_rate_bps: u64,
    /// Length of the run, seconds.
    pub duration_s: f64,
    /// Seconds at the start not judged.
    #[serde(default = "default_warmup")]
    pub warmup_s: f64,
    /// Measurement window, ms.
    #[serde(default = "default_window")]
    pub window_ms: u64,
    /// Transmitting flows (5a, 5b, 6).
    #[serde(default)]
    pub senders: Vec<Sender>,
    /// Receiving flows and what is sent to them (7).
    #[serde(default)]
    pub receivers: Vec<Receiver>,
}

fn default_warmup() -> f64 {
    1.0
}

fn default_window() -> u64 {
    200
}

fn default_rx_slots() -> u32 {
    256
}

/// A sending application and its flow's QoS.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sender {
    /// Label in figures and tables.
    pub name: String,
    /// Local UDP port (identifies the flow in the capture).
    pub port: u16,
    /// Atropos period, ms.
    pub period_ms: f64,
    /// Guaranteed slice per period, ms (0: best effort).
    pub slice_ms: f64,
    /// May use slack.
    pub extra: bool,
    /// When the sender starts, seconds from the start of the run.
    #[serde(default)]
    pub start_s: f64,
}

impl Sender {
    /// The guaranteed rate on a link of `link_bps`, Mbit/s.
    pub fn reserved_mbps(&self, link_bps: u64) -> f64 {
        if self.period_ms <= 0.0 {
            return 0.0;
        }
        self.slice_ms / self.period_ms * link_bps as f64 / 1e6
    }
}

/// A receiving application, the stream the source sends it, and how slowly it reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receiver {
    /// Label in figures and tables.
    pub name: String,
    /// Local UDP port it receives on.
    pub port: u16,
    /// Wire rate the source sends to it, bit/s (scaled with the link rate).
    pub rate_bps: u64,
    /// Processing time per datagram, µs.
    #[serde(default)]
    pub cost_us: f64,
    /// Every this many datagrams the processing time grows by `slowdown_step_us`.
    #[serde(default)]
    pub slowdown_every: Option<u64>,
    /// Growth of the processing time at each slowdown, µs.
    #[serde(default)]
    pub slowdown_step_us: f64,
    /// Receive buffers the receiver posts (its channel's FIFO slots): how far it may fall
    /// behind before the driver drops for it.
    #[serde(default = "default_rx_slots")]
    pub rx_slots: u32,
    /// Run the receiver at a real-time priority (SCHED_FIFO 5), on both systems alike: the
    /// CPU guarantee a Nemesis application had, for a receiver that needs little CPU.
    #[serde(default)]
    pub cpu_guarantee: bool,
}

impl Definition {
    /// Loads a definition; errors name the file, line and field.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let def: Definition = serde_saphyr::from_str(&text)
            .map_err(|e| format!("{}: {}", path.display(), e.without_snippet()))?;
        def.validate()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(def)
    }

    fn validate(&self) -> Result<(), String> {
        if !["5a", "5b", "6", "7"].contains(&self.experiment.as_str()) {
            return Err(format!(
                "experiment `{}`: allowed 5a, 5b, 6, 7",
                self.experiment
            ));
        }
        if self.duration_s <= self.warmup_s {
            return Err("duration_s must exceed warmup_s".into());
        }
        if self.window_ms == 0 {
            return Err("window_ms must be > 0".into());
        }
        for s in &self.senders {
            if s.slice_ms < 0.0 || s.slice_ms > s.period_ms || s.period_ms <= 0.0 {
                return Err(format!(
                    "sender {}: need 0 <= slice_ms <= period_ms, period_ms > 0",
                    s.name
                ));
            }
        }
        Ok(())
    }

    /// The same experiment on a link of `rate_bps`: time shares stay, absolute rates scale.
    pub fn with_link_rate(mut self, rate_bps: u64) -> Self {
        let scale = rate_bps as f64 / self.link_rate_bps as f64;
        for r in &mut self.receivers {
            r.rate_bps = (r.rate_bps as f64 * scale) as u64;
        }
        self.link_rate_bps = rate_bps;
        self
    }

    /// The same experiment lasting `duration_s`: start times and slowdown schedules keep their
    /// place in the run, the warm-up stays at most a quarter of it.
    pub fn with_duration(mut self, duration_s: f64) -> Self {
        let scale = duration_s / self.duration_s;
        for s in &mut self.senders {
            s.start_s *= scale;
        }
        for r in &mut self.receivers {
            r.slowdown_every = r.slowdown_every.map(|e| ((e as f64 * scale) as u64).max(1));
        }
        self.warmup_s = self.warmup_s.min(duration_s / 4.0);
        self.duration_s = duration_s;
        self
    }

    /// Measurement windows in the run.
    pub fn windows(&self) -> usize {
        (self.duration_s * 1000.0 / self.window_ms as f64) as usize
    }

    /// Windows in the warm-up.
    pub fn warmup_windows(&self) -> usize {
        (self.warmup_s * 1000.0 / self.window_ms as f64).ceil() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_definitions_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/experiments");
        for name in ["5a", "5b", "6", "7"] {
            let def = Definition::load(&dir.join(format!("{name}.yaml"))).unwrap();
            assert_eq!(def.experiment, name);
        }
    }

    #[test]
    fn scaling_keeps_shares() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/experiments");
        let def = Definition::load(&dir.join("7.yaml"))
            .unwrap()
            .with_link_rate(1_000_000_000);
        assert_eq!(def.receivers[0].rate_bps, 400_000_000);
        let def5a = Definition::load(&dir.join("5a.yaml")).unwrap();
        assert!((def5a.senders[5].reserved_mbps(100_000_000) - 24.0).abs() < 1e-9);
    }
}
