//! Blocking, non-blocking and timeouts, shared by the flow types (the semantics of
//! `std::net::UdpSocket`: blocking by default, optional read and write timeouts).

use std::time::{Duration, Instant};

use crate::channel::FlowChannels;
use crate::error::{Error, Result};

/// Longest single sleep: a blocking call re-checks its deadline at least this often.
const STEP: Duration = Duration::from_millis(100);

/// A flow's blocking mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Mode {
    pub nonblocking: bool,
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
}

/// When a blocking call gives up (`None`: never).
pub(crate) fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

/// How long to sleep now: `Err(TimedOut)` once the deadline passed.
fn step(deadline: Option<Instant>) -> Result<Duration> {
    match deadline {
        None => Ok(STEP),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(Error::TimedOut)
            } else {
                Ok(left.min(STEP))
            }
        }
    }
}

/// Sleeps until the RX channel may have a frame, or for one step.
pub(crate) fn wait_rx(chan: &mut FlowChannels, deadline: Option<Instant>) -> Result<()> {
    match chan.wait_rx(step(deadline)?) {
        Err(Error::TimedOut) => Ok(()),
        r => r,
    }
}

/// Sleeps until the driver made TX progress, or for one step. `need` > 1 buffers: the channel
/// wakes on the first one returned, so this polls gently instead of spinning (rbuf has no
/// "wait for n free buffers").
pub(crate) fn wait_tx(
    chan: &mut FlowChannels,
    deadline: Option<Instant>,
    need: usize,
) -> Result<()> {
    let s = step(deadline)?;
    let t0 = Instant::now();
    match chan.wait_tx(s) {
        Err(Error::TimedOut) => Ok(()),
        Err(e) => Err(e),
        Ok(()) => {
            if need > 1 && t0.elapsed() < Duration::from_micros(20) {
                std::thread::sleep(Duration::from_micros(50).min(s));
            }
            Ok(())
        }
    }
}
