//! nemflow's control protocols.
//!
//! - [`flow`]: how a flow is described — receive filter, transmit template, QoS, and the flow
//!   information block an application's stack is built from.
//! - [`ctl`]: the flow manager ⇄ driver protocol (flows, QoS, statistics, drop log).
//! - [`app`]: the application ⇄ flow manager protocol (open, close, QoS, listings, events).
//! - [`wire`]: the framing both protocols use on Unix stream sockets: a versioned,
//!   length-prefixed header, a `postcard` payload, fds with `SCM_RIGHTS`.
//!
//! Nothing here trusts its peer: decoding a message never panics, whatever the bytes.

#![forbid(unsafe_code)]

pub mod app;
pub mod ctl;
pub mod flow;
pub mod fuzzing;
pub mod wire;

pub use flow::{Fib, Filter, FlowId, Qos, Template, TemplateKind};
