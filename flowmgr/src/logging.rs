//! Logs of the flow manager and the `nemflow` tool: `tracing` to stderr, the level from
//! `RUST_LOG` (default `info`), as text for people or one JSON object per line for collectors;
//! and [`EventLimiter`], so that an event a peer can provoke at will (a refused request, a
//! conflicting ARP reply) is logged at most once per interval with a count of the ones held back —
//! never once per packet or per request.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use nemflow_proto::app::{AppError, AppErrorKind};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, fields, target).
    Json,
}

/// Installs the process's subscriber (stderr; level from `RUST_LOG`, default `info`). A second
/// call does nothing.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a person at a terminal: a log file or the journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => logs.try_init(),
        LogFormat::Json => logs.json().try_init(),
    };
}

/// Lets one kind of event through at most once per interval, counting the rest.
#[derive(Debug, Clone)]
pub struct EventLimiter {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl EventLimiter {
    /// At most one event per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held: 0,
        }
    }

    /// `Some(n)` if an event at `now` may be logged, `n` being how many were held back since the
    /// last one logged; `None` (and counted) otherwise.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

/// Refusals an application can provoke at will (admission, policy, quotas): one line per
/// second at most, across all clients.
static REFUSALS: Mutex<EventLimiter> = Mutex::new(EventLimiter::new(Duration::from_secs(1)));

/// Logs a refused request, rate-limited, when it is one an operator wants to see: admission
/// control, policy, or a quota. `who` is the client's uid, pid and command name.
pub fn refused(client: u64, who: Option<(u32, i32, &str)>, e: &AppError) {
    if !matches!(
        e.kind,
        AppErrorKind::Admission | AppErrorKind::PermissionDenied | AppErrorKind::NoBufferSpace
    ) {
        return;
    }
    let allowed = REFUSALS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .allow(Instant::now());
    if let Some(held_back) = allowed {
        let (uid, pid, app) = who.unwrap_or((u32::MAX, 0, "?"));
        tracing::warn!(
            client,
            uid,
            pid,
            app,
            kind = ?e.kind,
            held_back,
            "request refused: {}",
            e.message
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_interval_with_the_count_held_back() {
        let mut l = EventLimiter::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(l.allow(t0), Some(0));
        for i in 1..=99 {
            assert_eq!(l.allow(t0 + Duration::from_millis(i * 10)), None);
        }
        assert_eq!(l.allow(t0 + Duration::from_millis(1000)), Some(99));
        assert_eq!(l.allow(t0 + Duration::from_millis(1001)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(5)), Some(1));
    }
}
