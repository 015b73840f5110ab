//! Results: one row per flow (reservation, measured mean/min/max over the judged windows, error,
//! PASS/FAIL with the reason), printed as a table and written as `summary.json`.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::series::WindowStats;

/// The verdict on one flow.
#[derive(Debug, Clone, Serialize)]
pub struct FlowResult {
    /// Which system: `nemflow` or `linux`.
    pub system: String,
    /// The flow's label.
    pub flow: String,
    /// What it was promised or sent, Mbit/s (None: best effort).
    pub reserved_mbps: Option<f64>,
    /// Statistics over the judged windows.
    pub stats: WindowStats,
    /// Worst relative error of a window against the target, if there is a target.
    pub worst_window_error: Option<f64>,
    /// Relative error of the mean against the target.
    pub mean_error: Option<f64>,
    /// Whether it met the criteria (None: reported only, not judged).
    pub pass: Option<bool>,
    /// What the criterion was, or what else was seen.
    pub note: String,
}

/// An experiment-wide check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// Whether it held (informational checks always hold).
    pub pass: bool,
    /// Whether it counts for the verdict, or is reported only.
    pub judged: bool,
    /// The numbers behind it.
    pub detail: String,
}

impl Check {
    /// A check.
    pub fn new(name: impl Into<String>, pass: bool, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            pass,
            judged: true,
            detail: detail.into(),
        }
    }

    /// A finding reported but not judged.
    pub fn info(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            judged: false,
            ..Self::new(name, true, detail)
        }
    }
}

/// Everything an experiment run concluded.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Which experiment.
    pub experiment: String,
    /// Link rate, bit/s.
    pub link_rate_bps: u64,
    /// Length of the run, s.
    pub duration_s: f64,
    /// Per-flow results.
    pub flows: Vec<FlowResult>,
    /// Experiment-wide checks.
    pub checks: Vec<Check>,
    /// Whether everything judged passed.
    pub pass: bool,
}

impl Summary {
    /// A summary whose overall verdict is computed from its parts.
    pub fn new(
        experiment: &str,
        link_rate_bps: u64,
        duration_s: f64,
        flows: Vec<FlowResult>,
        checks: Vec<Check>,
    ) -> Self {
        let pass = flows.iter().all(|f| f.pass != Some(false)) && checks.iter().all(|c| c.pass);
        Self {
            experiment: experiment.into(),
            link_rate_bps,
            duration_s,
            flows,
            checks,
            pass,
        }
    }

    /// The table a person reads.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "experiment {} at {} Mbit/s, {:.0} s: {}",
            self.experiment,
            self.link_rate_bps as f64 / 1e6,
            self.duration_s,
            if self.pass { "PASS" } else { "FAIL" }
        );
        let _ = writeln!(
            out,
            "{:<8} {:<22} {:>9} {:>9} {:>9} {:>9} {:>8} {:>6}  criterion",
            "system", "flow", "reserved", "mean", "min", "max", "error", "result"
        );
        for f in &self.flows {
            let reserved = f
                .reserved_mbps
                .map_or("-".to_string(), |r| format!("{r:.2}"));
            let err = f
                .worst_window_error
                .map_or("-".to_string(), |e| format!("{:.2}%", e * 100.0));
            let verdict = match f.pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "-",
            };
            let _ = writeln!(
                out,
                "{:<8} {:<22} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>6}  {}",
                f.system,
                f.flow,
                reserved,
                f.stats.mean,
                f.stats.min,
                f.stats.max,
                err,
                verdict,
                f.note
            );
        }
        for c in &self.checks {
            let verdict = match (c.judged, c.pass) {
                (false, _) => "INFO",
                (true, true) => "PASS",
                (true, false) => "FAIL",
            };
            let _ = writeln!(out, "check {}: {verdict} ({})", c.name, c.detail);
        }
        out
    }

    /// Writes `summary.json` into `dir`.
    pub fn write_json(&self, dir: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("summary.json"), text).map_err(|e| e.to_string())
    }
}

/// A flow judged against a target rate: every window within `window_tol` and the mean within
/// `mean_tol` (relative).
pub fn judge(
    system: &str,
    flow: &str,
    target_mbps: f64,
    stats: WindowStats,
    window_tol: f64,
    mean_tol: Option<f64>,
) -> FlowResult {
    let worst = stats.worst_error(target_mbps);
    let mean_error = if target_mbps > 0.0 {
        (stats.mean - target_mbps).abs() / target_mbps
    } else {
        0.0
    };
    let pass = stats.windows > 0 && worst <= window_tol && mean_tol.is_none_or(|t| mean_error <= t);
    let note = match mean_tol {
        Some(t) => format!(
            "every window ±{:.0}%, mean ±{:.0}%",
            window_tol * 100.0,
            t * 100.0
        ),
        None => format!("every window ±{:.0}%", window_tol * 100.0),
    };
    FlowResult {
        system: system.into(),
        flow: flow.into(),
        reserved_mbps: Some(target_mbps),
        stats,
        worst_window_error: Some(worst),
        mean_error: Some(mean_error),
        pass: Some(pass),
        note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judging_and_table() {
        let good = judge(
            "nemflow",
            "a",
            10.0,
            WindowStats::of(&[9.8, 10.1, 10.0]),
            0.03,
            Some(0.01),
        );
        assert_eq!(good.pass, Some(true));
        let bad = judge(
            "nemflow",
            "b",
            10.0,
            WindowStats::of(&[9.0, 10.0]),
            0.03,
            None,
        );
        assert_eq!(bad.pass, Some(false));
        let s = Summary::new("5a", 100_000_000, 10.0, vec![good, bad], vec![]);
        assert!(!s.pass);
        let t = s.table();
        assert!(t.contains("FAIL") && t.contains("PASS"), "{t}");
    }
}
