//! The nemflow flow manager (DESIGN.md §3; Nemesis §3.2, §4.1; the registry server of the Mach
//! user-level protocols paper, §3.4) and the client library applications link.
//!
//! Applications ask the flow manager for flows over a Unix stream socket
//! ([`nemflow_proto::app`]); it checks policy (`SO_PEERCRED`), allocates the port, runs
//! admission control with the scheduler's own rules, routes, resolves the next hop with ARP,
//! creates the flow's Rbuf channels, installs filter, template, QoS and channels in the driver
//! ([`nemflow_proto::ctl`]) and hands the app its FIB and channel fds. After that it steps aside:
//! data never passes through it. When an app's socket closes (exit, crash, `kill -9`), every flow
//! it held is removed from the driver and its ports are released (TCP 5-tuples after TIME_WAIT).
//!
//! It is also the host's **last-resort handler**: its own flow in the driver receives whatever
//! no filter matched, and it answers ARP for the host's address, resolves next hops, replies to
//! ICMP echo, and sends ICMP port unreachable for unmatched UDP and RST for unmatched TCP — rate
//! limited, and never to an ICMP error, an RST, a broadcast or multicast, a later fragment or an
//! invalid source (RFC 1122 §3.2.2, §4.2.2.13). An open is answered while the driver still
//! installs its filter; a datagram or segment for the flow that comes in that window reaches
//! the host flow and is dropped (counted in `for_installing_flow`), not refused.
//!
//! # Rooms
//! - [`client`]: the library apps link (always built; small: proto, rbuf, rustix, thiserror).
//! - With the default `daemon` feature: [`daemon`] (the event loop and the flow table),
//!   [`ports`], [`routing`], [`arp`], [`host`] (the last-resort handler: ARP, ICMP, RST on
//!   crafted frames, no I/O), [`driver`] (the link to the driver), [`policy`], [`testing`] (a
//!   fake driver speaking `proto::ctl`), [`show`] (the `nemflow` tool's output shapes).
//! - Operating it: [`metrics`] (the Prometheus endpoint, a thread asking the daemon over its own
//!   socket), [`logging`] (`--log-format`, rate-limited events), [`capture`] (`nemflow capture`),
//!   [`top`] (`nemflow top`), [`service`] (`nemflow up`/`down`, readiness for systemd).
//!
//! # Event loop
//! One thread, one non-blocking `poll` loop over the listening socket, every client socket, the
//! receive channel of the flow manager's own flow and a signal pipe. Each client has its own
//! [`nemflow_proto::wire::Decoder`] and output queue, so a client that trickles bytes costs a
//! buffer, one that stops mid-message is dropped after `client_timeout_ms`, and one that stops
//! reading its replies is dropped when its queue passes a bound — none of them delays anyone
//! else. A request that needs ARP is *parked* (the client is not read from meanwhile) and
//! finished when the reply or the last retry comes, so ARP never blocks the loop either. All
//! state (ports, ARP cache, admission, flow table) lives in that one thread, without locks, and
//! every change to it is one request's work from start to finish. The one blocking call is to
//! the trusted driver (bounded by `driver_timeout_ms`): most flow changes need it anyway, and a
//! driver that does not answer ends the daemon with one clear line rather than half-installed
//! state. A thread per client would have needed locks around every one of those tables for no
//! gain: control-path work per request is microseconds. The one other thread is a channel
//! factory that makes the next few flows' Rbuf channels ahead of time (creating a channel is
//! tens of µs of system calls); it shares nothing with the loop but a bounded queue of fds.
//!
//! # Flow set-up off the open's path
//! Making a flow's two channels and having the driver check and map them costs far more than
//! the open's own bookkeeping, so both happen before the open: the factory makes pairs, and a
//! turn of the loop with nothing else to do hands one to the driver (`StageChannels`,
//! [`nemflow_proto::ctl`]), which attaches it and keeps it for a later flow; a few stay staged.
//! While one is staged, staging waits until 300 µs after the last request, so that it does not
//! compete with an app that is attaching the channels it was just given. An open of the default
//! geometry then takes a staged pair and sends the driver only the filter, template and QoS
//! (`InstallStaged`), right after the open's reply. The driver serves requests in order, so that
//! request, like `StageChannels` and a close's `RemoveFlow`, is sent without waiting for its
//! reply: the open is answered while the driver installs the filter, and nothing the flow
//! manager asks later can overtake it. A datagram that reaches the host flow in that window is
//! dropped and counted (`for_installing_flow`), not refused. Replies are read when a request needs them (an open that
//! takes a pair still being staged, any call that waits) or after 1 ms; meanwhile the loop
//! polls the driver's connection for its end only, so a reply costs no wake-up of its own. The
//! flow manager has made every check the driver makes on an install (port, filter, admission),
//! so a refusal means a fault: the flow, already answered, is then revoked (`Revoked`, counter
//! `opens_revoked_by_driver`). A staged pair serves one flow only and is never reused after it
//! closes; the pairs still staged go with the flow manager's connection (the driver drops them
//! when it closes, see `nemflow_driver::control`). Opens of other geometries, or when no pair
//! is staged, hand the driver their channels and wait, as before.
//!
//! **Reserved pairs.** An app may also take a staged pair *ahead of its open*
//! ([`client::Client::reserve`], `AppRequest::Reserve`): the flow manager answers with the pair's
//! eight app-side fds, and the app attaches them (maps, posts its receive buffers, faults in the
//! buffer its first send takes) while it has nothing better to do. A later open of the default
//! geometry names the pair (`OpenReserved`) and is answered without fds; the driver gets the
//! same `InstallStaged` after the reply, and the first send goes straight to channels already
//! mapped. A reserved pair belongs to the connection that took it (at most
//! `MAX_RESERVED_PER_CLIENT`, one), counts against its uid's flows and channel memory from the
//! reserve on (the flow it becomes inherits that share), and goes back to the driver
//! (`DropStaged`, pipelined like `RemoveFlow`) when the connection closes without using it or
//! gives it back (`Unreserve`). An `OpenReserved` naming a pair the connection does not hold is
//! refused (`NoSuchFlow`, counter `opens_reserved_refused`); any other refusal (port in use,
//! admission, another geometry) leaves the pair reserved. With no pair staged the answer is
//! `NotReady` (`EAGAIN`, counter `reserves_unavailable`) and the app opens as before. Apps hold
//! at most `MAX_STAGED - STAGED_PAIRS` (12) pairs reserved at once, all together, so that the
//! flow manager's own staging never meets the driver's limit. `nemflow flows` lists each
//! reserved pair (`RESERVED`, with its owner and channel memory). Reserving is the app's choice,
//! never automatic: a held pair is ~0.5 MiB of channel memory (mostly not resident). Staging
//! keeps its rules: a pair taken by a reserve is replaced in a quiet moment, as one an open took.
//!
//! `Close` is answered before the flow is removed from the driver: the removal follows at once,
//! before anything else is served, so no later request can see the flow's port or share.
//!
//! # Restarts
//! - **The flow manager dies** (`kill -9`, a crash): the driver keeps every flow it installed,
//!   so apps' data keeps moving (and drops the channel pairs it had staged, which no app uses); their connections close without a `Revoked` event, which the
//!   app stacks take as *orphaned* (`nemflow_appstack::liveness`). Meanwhile a new request
//!   finds no listener: connecting is refused at once ([`client::ClientError::NotRunning`]:
//!   "no flow manager at …: Connection refused (is nemflow-flowmgr running?)"), never a hang.
//!   A new flow manager (its supervisor restarts it) replaces the stale socket file, asks the
//!   driver for every flow it holds and removes each one before it installs its own flow — at
//!   start it has created none, so all are stale — and logs how many ("removed N stale flows a
//!   previous flow manager left in the driver"). Their traffic stops and their share of the
//!   link and their channels return. A TCP connection among them that its app left open gets
//!   an RST at once, from the ends and sequence state the driver saw in its segments
//!   (`TcpSeen::ends`): its peer would otherwise wait on an idle connection. Orphaned apps, which probe the socket every 100 ms,
//!   count their flows revoked once it listens again, and open new ones.
//! - **The driver serves one flow manager at a time**: the first connection that changes flows
//!   holds the role until it closes; another one's change is refused (`Busy`, naming the
//!   holder's pid), so a second flow manager ends its start with "driver refused removing stale
//!   flows: another flow manager (pid N) is connected to this driver: it serves one at a time".
//!   Tools that only read (statistics, captures) are served alongside.
//! - **The driver dies**: the loop polls the driver's control connection too (the driver never
//!   speaks unasked, so any event there is its end). The flow manager then sends every app a
//!   `Revoked` event per flow ("flow manager stopped: driver lost: …") before closing its
//!   connection — blocked and non-blocking app calls fail with `Revoked` (`ECONNRESET`) at once
//!   — removes its socket file, and exits non-zero with one line: "nemflow-flowmgr: driver
//!   lost: the driver closed its control connection (it exited or was killed)". Its supervisor
//!   restarts it once the driver is back (`dist/systemd`). The dead driver's tap interface went
//!   with its process; the namespace and DPDK runtime directory it left are removed by the next
//!   driver start with the same configuration (or by `nemflow down`, or the test guards).

#![forbid(unsafe_code)]

pub mod client;

#[cfg(feature = "daemon")]
pub mod arp;
#[cfg(feature = "daemon")]
pub mod capture;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "daemon")]
pub mod driver;
#[cfg(feature = "daemon")]
pub mod host;
#[cfg(feature = "daemon")]
pub mod logging;
#[cfg(feature = "daemon")]
pub mod metrics;
#[cfg(feature = "daemon")]
pub mod policy;
#[cfg(feature = "daemon")]
pub mod ports;
#[cfg(feature = "daemon")]
pub mod routing;
#[cfg(feature = "daemon")]
pub mod service;
#[cfg(feature = "daemon")]
pub mod show;
#[cfg(feature = "daemon")]
pub mod testing;
#[cfg(feature = "daemon")]
pub mod top;
