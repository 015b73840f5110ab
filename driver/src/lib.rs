//! The nemflow driver: owns the NIC through DPDK and does only what must be shared —
//! demultiplex received frames to per-flow channels, check and schedule transmissions.
//!
//! [`dpdk`] is the safe layer over DPDK (the only module that calls `dpdk_sys`); [`port`] is the
//! trait the data path is written against, with the DPDK port and an in-memory port for tests.
//! [`telemetry`] answers DPDK telemetry from snapshots the data path publishes, logs what its
//! counters did (rate-limited), and tells systemd when the driver is ready; [`capture`] copies a
//! captured flow's frames into the capturing tool's channel.

pub mod capture;
pub mod classify;
pub mod control;
pub mod datapath;
pub mod dpdk;
pub mod droplog;
pub mod flowtable;
pub mod fuzzing;
pub mod port;
pub mod preflight;
pub mod run;
pub mod smoke;
pub mod tap_peer;
pub mod telemetry;
pub mod template;
