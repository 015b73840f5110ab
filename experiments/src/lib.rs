//! Reproductions of the Nemesis paper's crosstalk experiments (figures 5a, 5b, 6, 7), measured
//! outside the system under test and reported as CSV, PNG and a pass/fail table.
//!
//! Each run builds its own topology — nemflow's driver on net_tap with the kernel side of the
//! tap in a network namespace as the remote host, and for the Linux comparisons two namespaces
//! joined by a `tc`-shaped veth pair — runs every application as its own process, measures at
//! the remote host (AF_PACKET with kernel timestamps) or from the receivers' logs, and tears it
//! all down again, also on failure or Ctrl-C.

#![forbid(unsafe_code)]

pub mod capture;
pub mod definition;
pub mod experiments;
pub mod linux;
pub mod pacer;
pub mod plot;
pub mod progress;
pub mod receive;
pub mod report;
pub mod run;
pub mod series;
pub mod soak;
