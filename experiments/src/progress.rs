//! The one-line progress report each measurement prints on stderr while it runs.

use std::io::IsTerminal;

/// Prints `  <label>: <t>/<total> s[, <extra>]` once per whole second of a run: over the same
/// line (`\r`) on a terminal, one line each into a log. Silent when not `enabled`.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total_s: f64,
    enabled: bool,
    tty: bool,
    /// The last whole second printed, if any.
    last: Option<u64>,
}

impl Progress {
    /// A report for a run of `total_s` seconds.
    pub fn new(label: impl Into<String>, total_s: f64, enabled: bool) -> Self {
        Progress {
            label: label.into(),
            total_s,
            enabled,
            tty: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    /// Reports `t_s` seconds into the run, with `extra` after it (may be empty), if a new whole
    /// second began since the last report.
    pub fn tick(&mut self, t_s: f64, extra: &str) {
        let whole = t_s.max(0.0) as u64;
        if !self.enabled || self.last.is_some_and(|l| l >= whole) {
            return;
        }
        self.last = Some(whole);
        let sep = if extra.is_empty() { "" } else { ", " };
        let line = format!(
            "  {}: {whole:>3}/{:.0} s{sep}{extra}",
            self.label, self.total_s
        );
        if self.tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    }

    /// Ends the report's line (on a terminal).
    pub fn finish(&mut self) {
        if self.enabled && self.tty && self.last.is_some() {
            eprintln!();
        }
        self.enabled = false;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
