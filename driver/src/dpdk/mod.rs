//! The safe layer over DPDK: the EAL, mempools, mbufs and ethdev ports.
//!
//! Lifetimes tie every DPDK object to the [`Eal`] that made it, so nothing can outlive
//! `rte_eal_cleanup`. This module and [`crate::port`]'s DPDK implementation are the only places
//! in the driver that call into `dpdk_sys`.

mod eal;
mod ethdev;
mod mbuf;

use std::ffi::CStr;

pub use eal::{remove_stale_runtime_dir, Eal};
pub use ethdev::{EthPort, LinkStatus, PortConf};
pub use mbuf::{Mbuf, Mempool};

/// A DPDK call failed.
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    /// `rte_eal_init` refused its arguments or the environment; the text is DPDK's own reason.
    #[error("DPDK EAL init failed: {0}")]
    EalInit(String),
    /// The EAL can start only once per process.
    #[error("the DPDK EAL was already initialised in this process (it starts once per process)")]
    EalTwice,
    /// An EAL argument contained a NUL byte.
    #[error("EAL argument {0:?} contains a NUL byte")]
    BadArgument(String),
    /// No ethdev has this name.
    #[error("no DPDK port named `{0}`: the device did not probe (check the vdev/PCI address in the config)")]
    NoSuchPort(String),
    /// A DPDK function returned an error.
    #[error("{op} failed: {msg} (errno {code})")]
    Call {
        /// The function, with the object it was called on.
        op: String,
        /// Positive errno value.
        code: i32,
        /// `rte_strerror(code)`.
        msg: String,
    },
}

/// DPDK's description of an errno value (covers DPDK's own codes too).
pub fn strerror(code: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string
    // that stays valid at least until the next call on this thread; we copy it at once.
    let ptr = unsafe { dpdk_sys::rte_strerror(code) };
    if ptr.is_null() {
        return format!("error {code}");
    }
    // SAFETY: non-null and NUL-terminated, as above.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

/// The calling thread's `rte_errno`.
pub fn errno() -> i32 {
    // SAFETY: reads a thread-local int through DPDK's own accessor; no preconditions.
    unsafe { dpdk_sys::nemflow_rte_errno() }
}

/// Turns a DPDK return value into a `Result`: negative values are `-errno`, except `-1`,
/// which (by DPDK convention) means "see `rte_errno`".
pub(crate) fn check(op: impl FnOnce() -> String, ret: i32) -> Result<i32, DpdkError> {
    if ret >= 0 {
        return Ok(ret);
    }
    let code = match (ret, errno()) {
        (-1, e) if e > 0 => e,
        _ => -ret,
    };
    Err(DpdkError::Call {
        op: op(),
        code,
        msg: strerror(code),
    })
}

/// Calls a DPDK function returning an `int` and maps a negative return to [`DpdkError::Call`]:
/// `rte_try!("rte_eth_dev_start", port, unsafe { ... })`.
macro_rules! rte_try {
    ($op:expr, $obj:expr, $call:expr) => {
        $crate::dpdk::check(|| format!("{}({})", $op, $obj), $call)
    };
}
pub(crate) use rte_try;
