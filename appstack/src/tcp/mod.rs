//! TCP flows: smoltcp's TCP engine run per connection, in the application, over the
//! connection's own Rbuf channels (DESIGN.md §6; the Nemesis paper §3.2 for the flow manager's
//! part).
//!
//! Every TCP connection is a flow of its own: a 5-tuple filter in the driver, a transmit
//! template fixing our address and port and the peer's, its own channels and QoS. The app runs
//! the whole protocol — handshake, retransmission timers (on the app's own thread: every call
//! polls the engine with the current time, and waits no longer than its next timer), window
//! scaling, SACK as smoltcp offers it, congestion control — and the flow manager owns only what
//! must precede or outlive the app:
//! - **active open** ([`TcpStream::connect`]): the flow manager allocates the port and installs
//!   the flow; the app sends the SYN.
//! - **passive open** ([`TcpListener`]): the app registers the port (`Listen`); a SYN for it
//!   finds no flow and reaches the flow manager, which calls the app back with it
//!   ([`nemflow_proto::app::AppEvent::Incoming`]); the app accepts (the flow manager creates the
//!   connection's flow and the app's engine answers the SYN) or leaves it waiting. At most
//!   `backlog` requests wait per port, in the flow manager and in the app, so a SYN flood costs
//!   only the flooded service.
//! - **close**: the app runs the FIN exchange, then gives the flow back; the flow manager holds
//!   TIME_WAIT for the 4-tuple and answers for it. If the app dies with the connection open
//!   (crash, `kill -9`), the flow manager resets it, at the sequence number the driver saw last.
//!
//! # Pacing
//! smoltcp gets a transmit buffer only while one is free and no frame waits for FIFO room, so a
//! burst never outruns the channel (a refused segment stays in smoltcp's buffer and goes on the
//! next poll, where a dropped one would cost a retransmission timeout). On receive, the window
//! smoltcp offers is at most half of what the RX channel holds, and the data in flight (hence
//! the ACKs that can come back at once) at most the other half, so the peer cannot overrun it
//! either.
//!
//! # API
//! [`TcpStream`] (`std::io::Read`/`Write`, blocking by default, non-blocking and timeouts, and
//! direct access to the socket buffers: [`TcpStream::recv_with`], [`TcpStream::send_with`]);
//! [`TcpListener`]; readiness through an fd ([`TcpStream::prepare_wait`] and
//! [`std::os::fd::AsFd`]: an epoll fd over the channels' eventfds and a timerfd for the engine's
//! next timer). [`FlowManager`] is the shared connection to the flow manager: a connection's
//! flow lives as long as the connection that opened it.

pub mod apps;
mod device;
mod isn;
mod listener;
mod stream;
#[cfg(all(test, feature = "test-utils"))]
mod tests;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nemflow_flowmgr::client::{Client, ClientError};
use nemflow_proto::app::Buffers;
use nemflow_proto::Qos;

pub use device::DeviceCounters;
pub use listener::{ListenerCounters, TcpListener};
pub use stream::{TcpCounters, TcpStream};

/// smoltcp's congestion controllers.
pub use smoltcp::socket::tcp::CongestionControl;

/// Settings of a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpConfig {
    /// Receive buffer, bytes: the most window offered. Capped at half the RX channel's
    /// buffers' worth of full segments, so the peer's data never overruns the channel.
    pub rx_buffer: usize,
    /// Send buffer, bytes: the most data in flight. Capped the same way, so the peer's ACKs
    /// (one per segment at most) never overrun the channel either.
    pub tx_buffer: usize,
    /// Send small segments at once (Nagle's algorithm off), as `TCP_NODELAY`.
    pub nodelay: bool,
    /// Congestion control.
    pub congestion: CongestionControl,
    /// Keep-alive interval (`None`: off).
    pub keep_alive: Option<Duration>,
    /// Abort when the peer stays silent this long with data outstanding (`None`: never).
    pub user_timeout: Option<Duration>,
    /// How long a connection may take to be established (connect, and accepted handshakes).
    pub connect_timeout: Duration,
    /// How long `close` (and dropping an open stream) waits for the FIN exchange before it
    /// resets the connection.
    pub linger: Duration,
    /// The connection's transmit QoS.
    pub qos: Qos,
    /// The connection's channel sizes.
    pub buffers: Buffers,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            rx_buffer: 512 << 10,
            tx_buffer: 1 << 20,
            nodelay: true,
            congestion: CongestionControl::Cubic,
            keep_alive: None,
            user_timeout: None,
            connect_timeout: Duration::from_secs(10),
            linger: Duration::from_secs(2),
            qos: Qos::BEST_EFFORT,
            // A deep receive channel (the window and the data in flight are capped at half of
            // it each, see `rx_buffer`); the flow manager's default transmit channel.
            buffers: Buffers {
                rx_bytes: 1 << 20,
                rx_slots: 512,
                ..Buffers::default()
            },
        }
    }
}

/// A connection to the flow manager shared by an app's listeners and streams: flows are owned
/// by the connection that opened them and closed when it closes.
#[derive(Debug, Clone)]
pub struct FlowManager(Arc<Mutex<Client>>);

impl FlowManager {
    /// Connects to the flow manager named by `NEMFLOW_FLOWMGR_SOCKET` (or the default socket).
    pub fn connect_default() -> Result<Self, ClientError> {
        Ok(Self::from_client(Client::connect_default()?))
    }

    /// Wraps an existing connection.
    pub fn from_client(client: Client) -> Self {
        FlowManager(Arc::new(Mutex::new(client)))
    }

    /// The connection, locked (a poisoned lock only means another thread panicked).
    pub fn lock(&self) -> MutexGuard<'_, Client> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether other handles (streams, listeners) share this connection.
    pub(crate) fn shared(&self) -> bool {
        Arc::strong_count(&self.0) > 1
    }
}
