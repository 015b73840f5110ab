//! The Prometheus endpoint (`flowmgr.metrics`, e.g. `127.0.0.1:9464`, `GET /metrics`).
//!
//! # Shape
//! A thread of its own serves HTTP on a loopback address. On a scrape it asks the flow manager
//! for a [`StatsReport`] over the flow manager's own application socket, exactly as `nemflow
//! stats` does (the driver's per-flow and port counters, the flow table, the daemon's own
//! counters), and encodes it with `prometheus-client`. So the endpoint shares nothing with the
//! daemon's loop: the loop answers one more request, and a slow or stuck scraper only ever holds
//! this thread. A report younger than [`MIN_REFRESH`] is reused, so a scrape storm costs the loop
//! at most a few requests per second.
//!
//! # HTTP
//! A minimal HTTP/1.1 `GET` handler rather than a server crate: one method, two paths, one
//! connection at a time, `Connection: close`, the request head capped at 8 KiB and a 2 s read and
//! write timeout per connection. That is all a Prometheus scraper needs, and it leaves nothing to
//! configure or to keep up to date; `tiny_http` would add four crates for features unused here.
//!
//! # Names
//! `nemflow_` prefix, base units (bytes, seconds, ratios), counters end in `_total` (OpenMetrics
//! text, which Prometheus reads natively). Labels are bounded: `port` (the NIC), `reason` (a
//! fixed list), and per flow `flow` (the id), `app` (the owner's command name), `transport` and
//! `local_port`; series exist only while their flow does.

use std::borrow::Cow;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nemflow_proto::app::{FlowKind, StatsReport, Transport};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::client::Client;

/// A report younger than this is served again rather than asked for anew.
pub const MIN_REFRESH: Duration = Duration::from_millis(250);
/// Read and write timeout of one HTTP connection.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head read.
const MAX_HEAD: usize = 8 << 10;
/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the last refresh brought, and the endpoint's own counters.
#[derive(Debug, Default)]
struct State {
    report: Option<StatsReport>,
    refreshed: Option<Instant>,
    ok: bool,
    scrapes: u64,
    refresh_errors: u64,
    refresh_seconds: f64,
}

/// Encodes the state on each scrape.
#[derive(Debug)]
struct ReportCollector(Arc<Mutex<State>>);

type Labels = Vec<(Cow<'static, str>, String)>;

/// One metric family: a descriptor, then one sample per label set (no braces when unlabeled).
fn family<M: EncodeMetric, V: Copy>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    series: &[(Labels, V)],
    make: fn(V) -> M,
) -> Result<(), std::fmt::Error> {
    let Some((_, first)) = series.first() else {
        return Ok(());
    };
    let mut m = enc.encode_descriptor(name, help, unit.as_ref(), make(*first).metric_type())?;
    match series {
        [(labels, v)] if labels.is_empty() => make(*v).encode(m),
        _ => {
            for (labels, v) in series {
                make(*v).encode(m.encode_family(labels)?)?;
            }
            Ok(())
        }
    }
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    series: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    family(enc, name, help, unit, series, ConstCounter::new)
}

fn counter_f(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    series: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    family(enc, name, help, unit, series, ConstCounter::new)
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    series: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    family(enc, name, help, unit, series, ConstGauge::new)
}

/// Nanoseconds as seconds.
fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// A name made of `[a-z0-9_]` only.
fn metric_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

impl Collector for ReportCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let none: Labels = Vec::new();
        gauge(
            &mut enc,
            "up",
            "1 if the last refresh reached the flow manager and the driver, else 0",
            None,
            &[(none.clone(), f64::from(u8::from(st.ok)))],
        )?;
        counter(
            &mut enc,
            "metrics_scrapes",
            "Scrapes of this endpoint",
            None,
            &[(none.clone(), st.scrapes)],
        )?;
        counter(
            &mut enc,
            "metrics_refresh_errors",
            "Refreshes that failed (flow manager or driver unreachable)",
            None,
            &[(none.clone(), st.refresh_errors)],
        )?;
        gauge(
            &mut enc,
            "metrics_refresh_duration",
            "How long the last refresh took",
            Some(Unit::Seconds),
            &[(none.clone(), st.refresh_seconds)],
        )?;
        let Some(r) = &st.report else {
            return Ok(());
        };
        encode_report(&mut enc, r)
    }
}

fn encode_report(enc: &mut DescriptorEncoder, r: &StatsReport) -> Result<(), std::fmt::Error> {
    let p = &r.port;
    let port: Labels = vec![("port".into(), p.name.clone())];
    let one = |v: u64| [(port.clone(), v)];
    counter(
        enc,
        "port_rx_packets",
        "Frames the port received",
        None,
        &one(p.rx_packets),
    )?;
    counter(
        enc,
        "port_tx_packets",
        "Frames the port sent",
        None,
        &one(p.tx_packets),
    )?;
    counter(
        enc,
        "port_rx",
        "Bytes the port received",
        Some(Unit::Bytes),
        &one(p.rx_bytes),
    )?;
    counter(
        enc,
        "port_tx",
        "Bytes the port sent",
        Some(Unit::Bytes),
        &one(p.tx_bytes),
    )?;
    counter(
        enc,
        "port_rx_missed_packets",
        "Frames the NIC dropped for lack of receive descriptors",
        None,
        &one(p.rx_missed),
    )?;
    counter(
        enc,
        "port_rx_nombuf_errors",
        "Receive buffer (mbuf) allocation failures",
        None,
        &one(p.rx_nombuf),
    )?;
    counter(
        enc,
        "port_tx_errors",
        "Frames the port refused to send while its link was down (dropped and counted)",
        None,
        &one(p.tx_errors),
    )?;
    counter(
        enc,
        "port_link_changes",
        "Times the port's link went down or came up",
        None,
        &one(p.link_changes),
    )?;
    let drops: Vec<(Labels, u64)> = p
        .drops
        .iter()
        .map(|(reason, v)| {
            (
                vec![
                    ("port".into(), p.name.clone()),
                    ("reason".into(), reason.clone()),
                ],
                *v,
            )
        })
        .collect();
    counter(
        enc,
        "port_dropped_packets",
        "Frames the driver dropped before any flow, by reason",
        None,
        &drops,
    )?;
    gauge(
        enc,
        "port_link_up",
        "1 if the port's link is up",
        None,
        &[(port.clone(), f64::from(u8::from(p.link_up)))],
    )?;
    gauge(
        enc,
        "port_link_rate",
        "Link rate the driver paces to",
        Some(Unit::Other("bytes_per_second".into())),
        &[(port.clone(), p.rate_bps as f64 / 8.0)],
    )?;
    gauge(
        enc,
        "flows",
        "Flows installed in the driver (the flow manager's own included)",
        None,
        &[(port.clone(), f64::from(p.flows))],
    )?;

    let flows: Vec<_> = r
        .flows
        .iter()
        .filter(|(f, _)| matches!(f.kind, FlowKind::Flow | FlowKind::Host))
        .map(|(f, s)| {
            let app = match (&f.kind, &f.owner) {
                (FlowKind::Host, _) => "nemflow-flowmgr".to_owned(),
                (_, Some(o)) => o.comm.clone(),
                (_, None) => String::new(),
            };
            let transport = match f.transport {
                Transport::Udp => "udp",
                Transport::Tcp => "tcp",
                Transport::Raw { .. } => "raw",
            };
            let labels: Labels = vec![
                ("flow".into(), f.id.0.to_string()),
                ("app".into(), app),
                ("transport".into(), transport.to_owned()),
                ("local_port".into(), f.local.port().to_string()),
            ];
            (labels, f, s)
        })
        .collect();
    type Pick<T> = fn(&nemflow_proto::app::FlowInfo, &nemflow_proto::ctl::FlowStats) -> T;
    let c = |enc: &mut DescriptorEncoder,
             name: &str,
             help: &str,
             unit: Option<Unit>,
             pick: Pick<u64>| {
        let series: Vec<(Labels, u64)> = flows
            .iter()
            .map(|(l, f, s)| (l.clone(), pick(f, s)))
            .collect();
        counter(enc, name, help, unit, &series)
    };
    c(
        enc,
        "flow_tx_packets",
        "Frames the flow sent",
        None,
        |_, s| s.tx_packets,
    )?;
    c(
        enc,
        "flow_tx",
        "Bytes the flow sent (whole frames)",
        Some(Unit::Bytes),
        |_, s| s.tx_bytes,
    )?;
    c(
        enc,
        "flow_rx_packets",
        "Frames delivered to the flow",
        None,
        |_, s| s.rx_packets,
    )?;
    c(
        enc,
        "flow_rx",
        "Bytes delivered to the flow (whole frames)",
        Some(Unit::Bytes),
        |_, s| s.rx_bytes,
    )?;
    c(
        enc,
        "flow_rx_dropped_packets",
        "Frames for the flow dropped because it had no empty receive buffer",
        None,
        |_, s| s.rx_dropped_no_buffer,
    )?;
    c(
        enc,
        "flow_tx_template_violations",
        "Frames the flow tried to send that did not match its template (dropped)",
        None,
        |_, s| s.tx_template_violations,
    )?;
    c(
        enc,
        "flow_invalid_iorecs",
        "Iorecs from the application that failed validation",
        None,
        |_, s| s.invalid_iorecs,
    )?;
    c(
        enc,
        "flow_tx_dropped_packets",
        "Frames dropped after scheduling (no mbuf, port refused)",
        None,
        |_, s| s.tx_dropped,
    )?;
    c(
        enc,
        "flow_sched_deadline_misses",
        "Periods whose slice was not delivered while the flow was backlogged",
        None,
        |_, s| s.sched_deadline_misses,
    )?;
    let cf = |enc: &mut DescriptorEncoder, name: &str, help: &str, pick: Pick<f64>| {
        let series: Vec<(Labels, f64)> = flows
            .iter()
            .map(|(l, f, s)| (l.clone(), pick(f, s)))
            .collect();
        counter_f(enc, name, help, Some(Unit::Seconds), &series)
    };
    cf(
        enc,
        "flow_sched_guaranteed",
        "Wire time the flow used from its guaranteed slices",
        |_, s| secs(s.sched_guaranteed_ns),
    )?;
    cf(
        enc,
        "flow_sched_extra",
        "Wire time the flow used from slack (beyond its slices)",
        |_, s| secs(s.sched_extra_ns),
    )?;
    let g = |enc: &mut DescriptorEncoder,
             name: &str,
             help: &str,
             unit: Option<Unit>,
             pick: Pick<f64>| {
        let series: Vec<(Labels, f64)> = flows
            .iter()
            .map(|(l, f, s)| (l.clone(), pick(f, s)))
            .collect();
        gauge(enc, name, help, unit, &series)
    };
    g(
        enc,
        "flow_reserved",
        "Share of the link guaranteed to the flow (slice / period)",
        Some(Unit::Other("ratio".into())),
        |f, _| f.qos.share(),
    )?;
    g(
        enc,
        "flow_slice",
        "The flow's guaranteed slice per period",
        Some(Unit::Seconds),
        |f, _| secs(f.qos.slice_ns),
    )?;
    g(
        enc,
        "flow_period",
        "The flow's scheduling period",
        Some(Unit::Seconds),
        |f, _| secs(f.qos.period_ns),
    )?;
    g(
        enc,
        "flow_channel",
        "Channel memory of the flow (both directions)",
        Some(Unit::Bytes),
        |f, _| f.channel_bytes as f64,
    )?;
    g(
        enc,
        "flow_broken",
        "1 if the flow's channels were marked broken",
        None,
        |_, s| f64::from(u8::from(s.broken)),
    )?;

    for (name, v) in &r.flowmgr {
        let name = metric_name(name);
        let name = name.strip_suffix("_total").unwrap_or(&name);
        counter(
            enc,
            &format!("flowmgr_{name}"),
            "The flow manager's own counter (see nemflow stats)",
            None,
            &[(Vec::new(), *v)],
        )?;
    }
    Ok(())
}

/// The running endpoint.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    _thread: JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` and serves metrics from the flow manager at `socket` on a thread of its own.
    pub fn spawn(addr: SocketAddr, socket: PathBuf) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let mut registry = Registry::with_prefix("nemflow");
        registry.register_collector(Box::new(ReportCollector(Arc::clone(&state))));
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&listener, &registry, &state, &socket))?;
        tracing::info!(%addr, "metrics endpoint: GET http://{addr}/metrics");
        Ok(Self {
            addr,
            _thread: thread,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn serve(listener: &TcpListener, registry: &Registry, state: &Mutex<State>, socket: &PathBuf) {
    let mut client: Option<Client> = None;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if let Err(e) = handle(stream, registry, state, socket, &mut client) {
            tracing::debug!("metrics connection: {e}");
        }
    }
}

/// Asks the flow manager for a fresh report unless the last one is recent.
fn refresh(state: &Mutex<State>, socket: &PathBuf, client: &mut Option<Client>) {
    let fresh = {
        let st = state.lock().unwrap_or_else(PoisonError::into_inner);
        st.refreshed.is_some_and(|t| t.elapsed() < MIN_REFRESH)
    };
    if fresh {
        return;
    }
    let started = Instant::now();
    let result = (|| {
        if client.is_none() {
            let mut c = Client::connect_as(socket, "nemflow-metrics").map_err(|e| e.to_string())?;
            c.set_timeout(IO_TIMEOUT);
            *client = Some(c);
        }
        let c = client.as_mut().ok_or("no connection")?;
        c.stats().map_err(|e| e.to_string())
    })();
    let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
    st.refreshed = Some(Instant::now());
    st.refresh_seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(r) => {
            st.report = Some(r);
            st.ok = true;
        }
        Err(e) => {
            // A stale report would look live: serve only the endpoint's own metrics.
            st.report = None;
            st.ok = false;
            st.refresh_errors += 1;
            *client = None;
            tracing::debug!("metrics refresh failed: {e}");
        }
    }
}

fn handle(
    mut stream: TcpStream,
    registry: &Registry,
    state: &Mutex<State>,
    socket: &PathBuf,
    client: &mut Option<Client>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() >= MAX_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request head too large\n",
                true,
            );
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut words = text.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let path = target.split('?').next().unwrap_or_default();
    let body_wanted = method != "HEAD";
    if method != "GET" && method != "HEAD" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"only GET\n",
            true,
        );
    }
    match path {
        "/metrics" => {
            refresh(state, socket, client);
            state.lock().unwrap_or_else(PoisonError::into_inner).scrapes += 1;
            let mut body = String::new();
            if prometheus_client::encoding::text::encode(&mut body, registry).is_err() {
                return respond(
                    &mut stream,
                    "500 Internal Server Error",
                    "text/plain",
                    b"encoding failed\n",
                    body_wanted,
                );
            }
            respond(
                &mut stream,
                "200 OK",
                CONTENT_TYPE,
                body.as_bytes(),
                body_wanted,
            )
        }
        "/" => respond(
            &mut stream,
            "200 OK",
            "text/plain; charset=utf-8",
            b"nemflow flow manager: metrics at /metrics\n",
            body_wanted,
        ),
        _ => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            b"not found: try /metrics\n",
            body_wanted,
        ),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    with_body: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if with_body {
        stream.write_all(body)?;
    }
    stream.flush()
}

/// Fetches `http://addr/metrics` (a tiny client for tests and `nemflow`): the body.
pub fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT * 2))?;
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: {CONTENT_TYPE}\r\n\r\n")
            .as_bytes(),
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP head"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "HTTP: {}",
            head.lines().next().unwrap_or_default()
        )));
    }
    Ok(body.to_owned())
}
