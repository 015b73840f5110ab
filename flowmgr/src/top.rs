//! `nemflow top`: the flows of a host, refreshed like `top` — what each sends and receives
//! (Mbit/s, packets/s), what it reserved, how much of the link's slack it takes, what it drops.
//!
//! Plain ANSI on the alternate screen (redrawn in place, lines cut to the terminal's width) and
//! the terminal in non-canonical mode so that `q` quits at once; no terminal UI crate, whose
//! layout engine this one table does not need. Without a terminal (or with `--batch`) it prints
//! one plain table per refresh, like `top -b`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nemflow_proto::app::{FlowInfo, FlowKind, StatsReport, Transport};
use nemflow_proto::ctl::FlowStats;
use nemflow_proto::flow::FlowId;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::termios::{self, LocalModes, OptionalActions, SpecialCodeIndex, Termios};

use crate::client::Client;

/// How `top` runs.
#[derive(Debug, Clone)]
pub struct TopOptions {
    /// Time between refreshes.
    pub interval: Duration,
    /// Stop after this many refreshes.
    pub iterations: Option<u64>,
    /// Plain tables on stdout, no screen handling.
    pub batch: bool,
}

/// One flow's rates over the last interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rates {
    /// Sent, bit/s (whole frames).
    pub tx_bps: f64,
    /// Received, bit/s.
    pub rx_bps: f64,
    /// Sent, packets/s.
    pub tx_pps: f64,
    /// Received, packets/s.
    pub rx_pps: f64,
    /// Share of wall time the flow used the wire from slack.
    pub slack_share: f64,
    /// Share of wall time the flow used the wire from its guarantee.
    pub guaranteed_share: f64,
    /// Receive drops per second.
    pub drops_ps: f64,
}

/// Rates of a flow between two reports `dt` apart.
pub fn rates(before: Option<&FlowStats>, now: &FlowStats, dt: Duration) -> Rates {
    let Some(b) = before else {
        return Rates::default();
    };
    let secs = dt.as_secs_f64().max(1e-6);
    let d = |n: u64, o: u64| n.saturating_sub(o) as f64 / secs;
    Rates {
        tx_bps: d(now.tx_bytes, b.tx_bytes) * 8.0,
        rx_bps: d(now.rx_bytes, b.rx_bytes) * 8.0,
        tx_pps: d(now.tx_packets, b.tx_packets),
        rx_pps: d(now.rx_packets, b.rx_packets),
        slack_share: d(now.sched_extra_ns, b.sched_extra_ns) / 1e9,
        guaranteed_share: d(now.sched_guaranteed_ns, b.sched_guaranteed_ns) / 1e9,
        drops_ps: d(now.rx_dropped_no_buffer, b.rx_dropped_no_buffer),
    }
}

fn mbit(bps: f64) -> String {
    format!("{:.2}", bps / 1e6)
}

fn transport(t: &Transport) -> String {
    match t {
        Transport::Udp => "udp".into(),
        Transport::Tcp => "tcp".into(),
        Transport::Raw { ethertype } => format!("raw/{ethertype:04x}"),
    }
}

/// The screen for `now` (with rates against `before`, taken `dt` earlier), as lines.
pub fn render(now: &StatsReport, before: Option<&StatsReport>, dt: Duration) -> Vec<String> {
    let prev: BTreeMap<FlowId, &FlowStats> = before
        .map(|b| b.flows.iter().map(|(f, s)| (f.id, s)).collect())
        .unwrap_or_default();
    let flows: Vec<&(FlowInfo, FlowStats)> = now
        .flows
        .iter()
        .filter(|(f, _)| matches!(f.kind, FlowKind::Flow | FlowKind::Host))
        .collect();
    let p = &now.port;
    let port_rates = before.map(|b| {
        let secs = dt.as_secs_f64().max(1e-6);
        (
            p.tx_bytes.saturating_sub(b.port.tx_bytes) as f64 * 8.0 / secs,
            p.rx_bytes.saturating_sub(b.port.rx_bytes) as f64 * 8.0 / secs,
        )
    });
    let admitted: f64 = flows.iter().map(|(f, _)| f.qos.share()).sum();
    let mut lines = Vec::new();
    lines.push(format!(
        "nemflow top  port {} link {} {} Mbit/s  flows {}  reserved {:.1}%  tx {} rx {} Mbit/s   (q quits)",
        p.name,
        if p.link_up { "up" } else { "down" },
        mbit(p.rate_bps as f64),
        flows.len(),
        admitted * 100.0,
        port_rates.map_or("-".into(), |r| mbit(r.0)),
        port_rates.map_or("-".into(), |r| mbit(r.1)),
    ));
    let dropped_before_flows: u64 = p.drops.iter().map(|(_, c)| c).sum();
    lines.push(format!(
        "port: rx {} pkts, tx {} pkts, missed {}, dropped before any flow {}",
        p.rx_packets, p.tx_packets, p.rx_missed, dropped_before_flows
    ));
    lines.push(String::new());
    lines.push(format!(
        "{:>5} {:<16} {:<8} {:<21} {:<21} {:>9} {:>9} {:>8} {:>8} {:>7} {:>6} {:>6} {:>10} {:>6}",
        "FLOW",
        "APP",
        "PROTO",
        "LOCAL",
        "REMOTE",
        "TX Mb/s",
        "RX Mb/s",
        "TX pk/s",
        "RX pk/s",
        "RESV%",
        "GUAR%",
        "SLACK%",
        "RX DROPS",
        "VIOL",
    ));
    let mut sorted = flows;
    sorted.sort_by_key(|(f, _)| f.id);
    for (f, s) in sorted {
        let r = rates(prev.get(&f.id).copied(), s, dt);
        let app = match (&f.kind, &f.owner) {
            (FlowKind::Host, _) => "(flow manager)".to_owned(),
            (_, Some(o)) => format!("{}[{}]", o.comm, o.pid),
            (_, None) => "-".to_owned(),
        };
        let mut app = app;
        app.truncate(16);
        lines.push(format!(
            "{:>5} {:<16} {:<8} {:<21} {:<21} {:>9} {:>9} {:>8.0} {:>8.0} {:>7.2} {:>6.2} {:>6.2} {:>10} {:>6}",
            f.id.0,
            app,
            transport(&f.transport),
            f.local.to_string(),
            f.remote.map_or("-".into(), |a| a.to_string()),
            mbit(r.tx_bps),
            mbit(r.rx_bps),
            r.tx_pps,
            r.rx_pps,
            f.qos.share() * 100.0,
            r.guaranteed_share * 100.0,
            r.slack_share * 100.0,
            s.rx_dropped_no_buffer,
            s.tx_template_violations,
        ));
    }
    lines
}

/// The terminal in non-canonical, no-echo mode for as long as it lives.
struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.local_modes
            .remove(LocalModes::ICANON | LocalModes::ECHO);
        raw.special_codes[SpecialCodeIndex::VMIN] = 0;
        raw.special_codes[SpecialCodeIndex::VTIME] = 0;
        termios::tcsetattr(&stdin, OptionalActions::Now, &raw).ok()?;
        // Alternate screen, cursor hidden.
        print!("\x1b[?1049h\x1b[?25l");
        let _ = std::io::stdout().flush();
        Some(Self { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
    }
}

/// Waits up to `timeout` for a key; true if it was `q` (or Ctrl-C, Ctrl-D, Esc).
fn quit_key(timeout: Duration) -> bool {
    let stdin = std::io::stdin();
    let ts = Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let deadline = Instant::now() + timeout;
    loop {
        let mut fds = [PollFd::new(&stdin, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) => return false,
            Ok(_) => {
                let mut b = [0u8; 64];
                let n = stdin.lock().read(&mut b).unwrap_or(0);
                if n == 0 {
                    // End of input: nothing more will come; keep refreshing until the interval ends.
                    let left = deadline.saturating_duration_since(Instant::now());
                    std::thread::sleep(left);
                    return false;
                }
                if b[..n]
                    .iter()
                    .any(|&c| matches!(c, b'q' | b'Q' | 3 | 4 | 0x1b))
                {
                    return true;
                }
            }
            Err(rustix::io::Errno::INTR) => return false,
            Err(_) => {
                std::thread::sleep(timeout);
                return false;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

fn terminal_size() -> (usize, usize) {
    termios::tcgetwinsize(std::io::stdout())
        .map(|w| (usize::from(w.ws_col.max(20)), usize::from(w.ws_row.max(5))))
        .unwrap_or((200, 50))
}

/// Runs `top` until `q`, `iterations`, or `stop` (SIGINT/SIGTERM).
pub fn run(client: &mut Client, opts: &TopOptions, stop: &AtomicBool) -> Result<(), String> {
    let interactive =
        !opts.batch && std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    let _raw = if interactive {
        RawTerminal::enter()
    } else {
        None
    };
    let mut before: Option<(StatsReport, Instant)> = None;
    let mut done = 0u64;
    let mut out = std::io::stdout();
    loop {
        let report = client.stats().map_err(|e| e.to_string())?;
        let now = Instant::now();
        let dt = before.as_ref().map_or(opts.interval, |(_, t)| now - *t);
        let lines = render(&report, before.as_ref().map(|(r, _)| r), dt);
        let mut screen = String::new();
        if _raw.is_some() {
            let (cols, rows) = terminal_size();
            screen.push_str("\x1b[H");
            for line in lines.iter().take(rows) {
                let cut: String = line.chars().take(cols).collect();
                let _ = write!(screen, "{cut}\x1b[K\r\n");
            }
            screen.push_str("\x1b[J");
        } else {
            for line in &lines {
                let _ = writeln!(screen, "{line}");
            }
            screen.push('\n');
        }
        out.write_all(screen.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())?;
        before = Some((report, now));
        done += 1;
        if opts.iterations.is_some_and(|n| done >= n) || stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let quit = if _raw.is_some() {
            quit_key(opts.interval)
        } else {
            std::thread::sleep(opts.interval);
            false
        };
        if quit || stop.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn rates_over_an_interval() {
        let a = FlowStats {
            tx_bytes: 1_000,
            tx_packets: 10,
            sched_extra_ns: 0,
            ..FlowStats::default()
        };
        let b = FlowStats {
            tx_bytes: 126_000,
            tx_packets: 110,
            sched_extra_ns: 250_000_000,
            rx_dropped_no_buffer: 5,
            ..FlowStats::default()
        };
        let r = rates(Some(&a), &b, Duration::from_millis(500));
        assert_eq!(r.tx_bps, 2_000_000.0);
        assert_eq!(r.tx_pps, 200.0);
        assert_eq!(r.slack_share, 0.5);
        assert_eq!(r.drops_ps, 10.0);
        assert_eq!(rates(None, &b, Duration::from_secs(1)), Rates::default());
    }
}
