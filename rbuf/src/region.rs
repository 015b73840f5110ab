//! Shared regions: sealed memfds, the checks an attaching side makes on them, and mappings.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

use crate::error::{Error, RegionError, Result};

/// Seals every region carries before anyone maps it: its size is fixed for good.
pub const REQUIRED_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// Creates a memfd of `len` bytes, sealed with [`REQUIRED_SEALS`]. With `hugetlb`, tries huge
/// pages first (reserving them all with `fallocate`, so a later fault cannot fail) and falls back
/// to small pages; the returned flag says which it got.
pub(crate) fn create_sealed_memfd(name: &str, len: u64, hugetlb: bool) -> Result<(OwnedFd, bool)> {
    if hugetlb {
        if let Ok(fd) = try_create(name, len, MemfdFlags::HUGETLB) {
            return Ok((fd, true));
        }
    }
    Ok((try_create(name, len, MemfdFlags::empty())?, false))
}

fn try_create(name: &str, len: u64, extra: MemfdFlags) -> Result<OwnedFd> {
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | extra;
    let fd = rustix::fs::memfd_create(name, flags).map_err(|e| Error::os("memfd_create", e))?;
    rustix::fs::ftruncate(&fd, len).map_err(|e| Error::os("ftruncate memfd", e))?;
    if extra.contains(MemfdFlags::HUGETLB) {
        rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::empty(), 0, len)
            .map_err(|e| Error::os("fallocate huge pages", e))?;
    }
    rustix::fs::fcntl_add_seals(&fd, REQUIRED_SEALS).map_err(|e| Error::os("F_ADD_SEALS", e))?;
    Ok(fd)
}

/// Checks that `fd` is a memfd sealed with [`REQUIRED_SEALS`] and of exactly `expected` bytes.
pub fn check_region(region: &'static str, fd: BorrowedFd<'_>, expected: u64) -> Result<()> {
    let seals =
        rustix::fs::fcntl_get_seals(fd).map_err(|errno| RegionError::NotMemfd { region, errno })?;
    if !seals.contains(REQUIRED_SEALS) {
        return Err(RegionError::NotSealed {
            region,
            have: seals.bits(),
            need: REQUIRED_SEALS.bits(),
        }
        .into());
    }
    let st = rustix::fs::fstat(fd).map_err(|e| Error::os("fstat", e))?;
    let actual = u64::try_from(st.st_size).unwrap_or(0);
    if actual != expected {
        return Err(RegionError::WrongSize {
            region,
            expected,
            actual,
        }
        .into());
    }
    Ok(())
}

/// Checks that `fd` is an eventfd (by its `/proc/self/fd` link, `anon_inode:[eventfd]`): exact,
/// for fds from a party that is not trusted to have made them.
pub fn check_eventfd(which: &'static str, fd: BorrowedFd<'_>) -> Result<()> {
    use std::os::fd::AsRawFd;
    let link = rustix::fs::readlink(format!("/proc/self/fd/{}", fd.as_raw_fd()), Vec::new())
        .map_err(|e| Error::os("readlink /proc/self/fd", e))?;
    let link = link.to_string_lossy().into_owned();
    if link != "anon_inode:[eventfd]" {
        return Err(RegionError::NotEventfd { which, what: link }.into());
    }
    Ok(())
}

/// Checks, with one `fstat`, that `fd` is an anonymous-inode file (the inode every eventfd of
/// this kernel shares; also epoll, timerfd and signalfd fds, which `fstat` cannot tell apart).
/// Enough for fds whose creator is trusted ([`crate::channel::FdSource::Creator`]): it rules out
/// pipes, sockets, memfds and files, and costs ~0.3 µs where the `/proc` lookup of
/// [`check_eventfd`] costs ~3 µs.
pub fn check_anon_inode(which: &'static str, fd: BorrowedFd<'_>) -> Result<()> {
    let st = rustix::fs::fstat(fd).map_err(|e| Error::os("fstat", e))?;
    let reference = anon_inode().map_err(|e| Error::os("eventfd", e))?;
    if (st.st_dev, st.st_ino) != reference {
        return Err(RegionError::NotEventfd {
            which,
            what: format!(
                "not an anonymous-inode file (mode {:#o}, inode {})",
                st.st_mode, st.st_ino
            ),
        }
        .into());
    }
    Ok(())
}

/// Device and inode number of the kernel's shared anonymous inode, learnt once from an eventfd
/// this process makes and closes.
fn anon_inode() -> rustix::io::Result<(rustix::fs::Dev, u64)> {
    static INODE: std::sync::OnceLock<(rustix::fs::Dev, u64)> = std::sync::OnceLock::new();
    if let Some(i) = INODE.get() {
        return Ok(*i);
    }
    let fd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?;
    let st = rustix::fs::fstat(&fd)?;
    Ok(*INODE.get_or_init(|| (st.st_dev, st.st_ino)))
}

/// Reopens `fd` through `/proc/self/fd` read-only: what a receiving side is given for its data area.
pub(crate) fn reopen_read_only(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    rustix::fs::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::os("reopen memfd read-only", e))
}

/// A shared mapping of a whole region, unmapped on drop (or a view of one, see [`map_areas`]).
/// Holds only a raw pointer: nothing in the crate makes a Rust reference to its bytes except to
/// atomics (control area) or to the master's own buffers.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    /// Bytes from `ptr` unmapped on drop: `len`, more when the mapping owns its neighbour's
    /// range too, 0 for a view into a range another `Mapping` owns.
    unmap_len: usize,
}

fn map_len(len: u64) -> Result<usize> {
    usize::try_from(len).map_err(|_| Error::InvalidSpec("region too large".into()))
}

fn prot(writable: bool) -> ProtFlags {
    if writable {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    }
}

impl Mapping {
    /// Maps `len` bytes of `fd`, shared, read-only unless `writable`.
    pub(crate) fn map(fd: impl AsFd, len: u64, writable: bool) -> Result<Self> {
        let len = map_len(len)?;
        // SAFETY: a fresh mapping chosen by the kernel (null hint) aliases no Rust object; the fd
        // was checked to be a sealed memfd of at least `len` bytes, so no access within `len` can
        // fault on truncation (the seals forbid it).
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                prot(writable),
                MapFlags::SHARED,
                fd,
                0,
            )
        }
        .map_err(|e| Error::os("mmap", e))?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Error::FdPass("mmap returned null"))?;
        Ok(Mapping {
            ptr,
            len,
            unmap_len: len,
        })
    }

    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// Maps a channel's control area (read-write) and its data area (read-only unless
/// `data_writable`) side by side, control first, so that one `munmap` (one TLB shoot-down in a
/// multi-threaded process) undoes both: the control memfd is mapped for both lengths (the part
/// past its end is never touched) and the data memfd replaces that part (`MAP_FIXED`). The
/// control [`Mapping`] owns the whole range; the data one is a view of it. With `apart` (a
/// huge-page data area, which needs an aligned address) they are mapped separately. Both fds
/// must have been checked by [`check_region`] for these lengths.
pub(crate) fn map_areas(
    control: BorrowedFd<'_>,
    control_len: u64,
    data: BorrowedFd<'_>,
    data_len: u64,
    data_writable: bool,
    apart: bool,
) -> Result<(Mapping, Mapping)> {
    if apart {
        return Ok((
            Mapping::map(control, control_len, true)?,
            Mapping::map(data, data_len, data_writable)?,
        ));
    }
    let (clen, dlen) = (map_len(control_len)?, map_len(data_len)?);
    let total = clen
        .checked_add(dlen)
        .ok_or_else(|| Error::InvalidSpec("regions too large".into()))?;
    let mut whole = Mapping::map(control, total as u64, true)?;
    whole.len = clen;
    // SAFETY: `clen < total`, the length `whole` maps: the result stays inside it.
    let at = unsafe { whole.ptr.as_ptr().add(clen) };
    // SAFETY: `clen` is a multiple of the page size (`ChannelSpec::control_bytes`), so `at` is
    // page-aligned, and `[at, at + dlen)` is the tail of the range `whole` just mapped, which
    // nothing references yet: replacing it aliases no Rust object. The data fd was checked to be
    // a sealed memfd of `dlen` bytes.
    let got = unsafe {
        rustix::mm::mmap(
            at.cast(),
            dlen,
            prot(data_writable),
            MapFlags::SHARED | MapFlags::FIXED,
            data,
            0,
        )
    }
    .map_err(|e| Error::os("mmap", e))?;
    if got.cast::<u8>() != at {
        return Err(Error::FdPass("mmap did not map the data area where asked"));
    }
    let data = Mapping {
        // Non-null: inside `whole`.
        ptr: NonNull::new(at).ok_or(Error::FdPass("mmap returned null"))?,
        len: dlen,
        unmap_len: 0,
    };
    Ok((whole, data))
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.unmap_len == 0 {
            return;
        }
        // SAFETY: `ptr`/`unmap_len` cover what a successful mmap (plus, for a pair, the
        // `MAP_FIXED` one inside it) mapped; it is unmapped exactly once, here, and every pointer
        // into it (views included) is owned by the endpoint that owns this `Mapping`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.unmap_len) };
    }
}

// SAFETY: a mapping is plain process memory, usable from any thread; the endpoint that owns it
// moves with it.
unsafe impl Send for Mapping {}
