//! The DPDK environment abstraction layer: started once per process, cleaned up on drop.

use std::ffi::{c_char, c_int, CString};
use std::io::{Read, Seek};
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::DpdkError;

/// Set by the first `Eal::init`; DPDK cannot start twice in a process, even after cleanup.
static STARTED: AtomicBool = AtomicBool::new(false);

/// The running EAL. Dropping it calls `rte_eal_cleanup`, which also removes virtual devices
/// (a net_tap interface disappears with it) and DPDK's runtime files.
///
/// It is neither `Send` nor `Sync`: the thread that started the EAL is DPDK's main lcore.
#[derive(Debug)]
pub struct Eal {
    _not_send: PhantomData<*const ()>,
}

impl Eal {
    /// Starts the EAL with `args` (`args[0]` is the program name), as `rte_eal_init` would.
    ///
    /// DPDK's own messages during start-up are captured: on success they go to the log at
    /// debug level; on failure the most telling line becomes the error, so a bad argument is
    /// one readable line and not DPDK's usage text.
    pub fn init<S: AsRef<str>>(args: &[S]) -> Result<Self, DpdkError> {
        if STARTED.swap(true, Ordering::SeqCst) {
            return Err(DpdkError::EalTwice);
        }
        let owned: Vec<CString> = args
            .iter()
            .map(|a| {
                CString::new(a.as_ref()).map_err(|_| DpdkError::BadArgument(a.as_ref().into()))
            })
            .collect::<Result<_, _>>()?;
        // rte_eal_init may permute argv; it gets its own array of pointers into `owned`.
        let mut argv: Vec<*mut c_char> = owned.iter().map(|a| a.as_ptr().cast_mut()).collect();
        let argc =
            c_int::try_from(argv.len()).map_err(|_| DpdkError::BadArgument("too many".into()))?;
        let (ret, output) = with_captured_stdio(|| {
            // SAFETY: argv holds argc pointers to NUL-terminated strings that outlive the call
            // (`owned` lives to the end of this function); DPDK keeps no pointer into them after
            // init except for its copies. STARTED guarantees a single call per process.
            unsafe { dpdk_sys::rte_eal_init(argc, argv.as_mut_ptr()) }
        });
        for line in output.lines().filter(|l| !l.trim().is_empty()) {
            tracing::debug!(target: "dpdk", "{line}");
        }
        if ret < 0 {
            let errno = super::errno();
            return Err(DpdkError::EalInit(explain_failure(&output, errno)));
        }
        Ok(Self {
            _not_send: PhantomData,
        })
    }

    /// DPDK's runtime directory (`/var/run/dpdk/<file-prefix>`), where its telemetry socket is.
    pub fn runtime_dir(&self) -> Option<std::path::PathBuf> {
        // SAFETY: the EAL is initialised; returns a pointer to a static NUL-terminated string.
        let ptr = unsafe { dpdk_sys::rte_eal_get_runtime_dir() };
        if ptr.is_null() {
            return None;
        }
        // SAFETY: non-null, NUL-terminated, static.
        let text = unsafe { std::ffi::CStr::from_ptr(ptr) };
        Some(std::path::PathBuf::from(
            text.to_string_lossy().into_owned(),
        ))
    }

    /// TSC cycles per second, for converting `rte_rdtsc` readings.
    pub fn tsc_hz(&self) -> u64 {
        // SAFETY: the EAL is initialised (we hold `self`); this reads a calibrated constant.
        unsafe { dpdk_sys::rte_get_tsc_hz() }
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        let runtime_dir = self.runtime_dir();
        // SAFETY: called once, from the thread that started the EAL (Eal is !Send); every DPDK
        // object borrows `self`, so none is still alive here.
        let ret = unsafe { dpdk_sys::rte_eal_cleanup() };
        if ret < 0 {
            tracing::warn!("rte_eal_cleanup failed: {}", super::strerror(-ret));
        }
        // DPDK leaves its runtime directory behind; we were its primary process, so nobody
        // else can be using it.
        if let Some(dir) =
            runtime_dir.filter(|d| d.starts_with("/var/run/dpdk/") || d.starts_with("/run/dpdk/"))
        {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::debug!("cannot remove {}: {e}", dir.display());
            }
        }
    }
}

/// Removes `/var/run/dpdk/<prefix>` if a driver that did not exit cleanly (killed) left it:
/// no process holds the lock a DPDK primary keeps on its `config` file there for as long as it
/// lives. Returns whether a directory was removed. A live primary's directory is left alone
/// (its EAL start then fails with DPDK's own "is another primary process running?").
pub fn remove_stale_runtime_dir(prefix: &str) -> bool {
    if prefix.is_empty() || prefix.contains('/') || prefix.starts_with('.') {
        return false;
    }
    let dir = std::path::Path::new("/var/run/dpdk").join(prefix);
    if !dir.is_dir() {
        return false;
    }
    let config = dir.join("config");
    if config.exists() && config_locked(&config) {
        return false;
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {
            tracing::warn!(
                dir = %dir.display(),
                "removed DPDK's runtime directory a driver that did not exit cleanly left behind"
            );
            true
        }
        Err(e) => {
            tracing::warn!("cannot remove stale {}: {e}", dir.display());
            false
        }
    }
}

/// Whether a process holds a lock on DPDK's `config` file (a live primary process). When the
/// file cannot be opened or asked, it counts as locked: better left alone.
fn config_locked(path: &std::path::Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    else {
        return true;
    };
    // SAFETY: flock is plain data; all-zero is a valid value before the fields are set.
    let mut lk: libc::flock = unsafe { std::mem::zeroed() };
    lk.l_type = libc::F_WRLCK as libc::c_short;
    lk.l_whence = libc::SEEK_SET as libc::c_short;
    lk.l_start = 0;
    lk.l_len = 0;
    // SAFETY: F_GETLK on an fd we own with a valid flock to fill in; it takes no lock, so
    // closing the file afterwards releases nothing of ours.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lk) };
    r != 0 || lk.l_type != libc::F_UNLCK as libc::c_short
}

/// Picks the line of DPDK's start-up output that says why it failed.
fn explain_failure(output: &str, errno: i32) -> String {
    let telling = [
        "unrecognized option",
        "invalid option",
        "Invalid",
        "invalid",
        "failed to parse device",
        "Cannot",
        "cannot",
        "Unable",
        "not supported",
        "FATAL",
        "Error",
        "failed",
    ];
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let reason = telling
        .iter()
        .find_map(|word| lines.iter().find(|l| l.contains(word)))
        .map(|l| l.trim_start_matches("EAL: ").to_owned());
    let errno_text = if errno > 0 {
        super::strerror(errno)
    } else {
        "unknown error".into()
    };
    match reason {
        Some(reason) => format!("{reason} ({errno_text})"),
        None => errno_text,
    }
}

/// Runs `f` with file descriptors 1 and 2 redirected into an anonymous file and returns what
/// was written. C's stdio buffers are flushed before the descriptors are restored.
fn with_captured_stdio<R>(f: impl FnOnce() -> R) -> (R, String) {
    let Some(capture) = anon_file() else {
        return (f(), String::new());
    };
    // SAFETY: dup of the standard descriptors; failure is reported as -1 and handled.
    let saved = unsafe { [libc::dup(1), libc::dup(2)] };
    if saved.iter().any(|&fd| fd < 0) {
        for fd in saved.into_iter().filter(|&fd| fd >= 0) {
            // SAFETY: fd came from dup above and is closed once.
            unsafe { libc::close(fd) };
        }
        return (f(), String::new());
    }
    // SAFETY: flushes C stdio and Rust's stdout buffer before the descriptors change, so
    // nothing written earlier lands in the capture; dup2 onto 1 and 2 with a valid descriptor.
    unsafe {
        libc::fflush(std::ptr::null_mut());
        libc::dup2(capture.as_raw_fd(), 1);
        libc::dup2(capture.as_raw_fd(), 2);
    }
    let ret = f();
    // SAFETY: flush what C code buffered into the capture, then put back the saved descriptors
    // (valid: returned by dup above) and close the copies exactly once.
    unsafe {
        libc::fflush(std::ptr::null_mut());
        libc::dup2(saved[0], 1);
        libc::dup2(saved[1], 2);
        libc::close(saved[0]);
        libc::close(saved[1]);
    }
    let mut file = std::fs::File::from(capture);
    let mut text = String::new();
    if file.rewind().is_ok() {
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_ok() {
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    (ret, text)
}

/// An anonymous in-memory file.
fn anon_file() -> Option<OwnedFd> {
    // SAFETY: memfd_create with a static NUL-terminated name; returns -1 on failure.
    let fd = unsafe { libc::memfd_create(c"nemflow-eal-log".as_ptr(), libc::MFD_CLOEXEC) };
    // SAFETY: fd is a fresh descriptor we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_line_is_the_telling_one() {
        let out = "EAL: Detected CPU lcores: 2\nnemflow: unrecognized option '--bogus'\nEAL: FATAL: Invalid 'command line' arguments.\n\nUsage: ...\n";
        assert_eq!(
            explain_failure(out, 22),
            "nemflow: unrecognized option '--bogus' (Invalid argument)"
        );
        assert_eq!(explain_failure("", 0), "unknown error");
    }
}
