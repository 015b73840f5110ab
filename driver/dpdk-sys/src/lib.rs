//! Raw bindings to the system DPDK, generated at build time (see `build.rs`).
//!
//! DPDK's `static inline` functions (`rte_eth_rx_burst`, `rte_pktmbuf_alloc`, …) are reachable
//! through the wrappers bindgen generates; they keep their names. `nemflow_rte_errno` reads the
//! per-lcore `rte_errno`. Everything here is `unsafe`: use the safe layer in `nemflow-driver`.

#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code
)]
#![allow(clippy::all, clippy::undocumented_unsafe_blocks)]
#![allow(unsafe_op_in_unsafe_fn, missing_debug_implementations)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
