//! Creating a channel (flow manager) and the attach steps every endpoint shares.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use rustix::event::EventfdFlags;

use crate::counters::Counters;
use crate::error::{Error, FifoId, IndexError, IoRecError, RegionError, Result};
use crate::event::Waker;
use crate::iorec::{IoRec, Limits};
use crate::region::{self, Mapping};
use crate::ring::{ConsCursor, FifoView, ProdCursor, Slot};
use crate::spec::{ChannelSpec, ControlHeader, HEADER_BYTES, MAGIC, VERSION};

/// The four fds of a channel, in the order they travel over a socket: data area, control area,
/// producer-side eventfd, consumer-side eventfd.
#[derive(Debug)]
pub struct ChannelFds {
    /// The data area (memfd). For a receiving side, a read-only reopening of it.
    pub data: OwnedFd,
    /// The control area (memfd): header and both FIFOs. Both sides map it read-write.
    pub control: OwnedFd,
    /// Readable when the data producer's side has work (room on the full FIFO, empties to take).
    pub prod_event: OwnedFd,
    /// Readable when the data consumer's side has work (iorecs on the full FIFO).
    pub cons_event: OwnedFd,
}

/// Number of fds a channel travels as.
pub const CHANNEL_FDS: usize = 4;

impl ChannelFds {
    /// Duplicates all four fds.
    pub fn try_clone(&self) -> Result<Self> {
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|source| Error::Os { op: "dup", source })
        };
        Ok(ChannelFds {
            data: dup(&self.data)?,
            control: dup(&self.control)?,
            prod_event: dup(&self.prod_event)?,
            cons_event: dup(&self.cons_event)?,
        })
    }

    /// A copy whose data fd is a read-only reopening (`/proc/self/fd/N`, `O_RDONLY`): what the
    /// flow manager hands to the side that only reads the data area.
    pub fn with_read_only_data(&self) -> Result<Self> {
        let mut c = self.try_clone()?;
        c.data = region::reopen_read_only(self.data.as_fd())?;
        Ok(c)
    }

    /// The fds in travel order, borrowed (for [`crate::fdpass::send_fds`]).
    pub fn as_fds(&self) -> [BorrowedFd<'_>; CHANNEL_FDS] {
        [
            self.data.as_fd(),
            self.control.as_fd(),
            self.prod_event.as_fd(),
            self.cons_event.as_fd(),
        ]
    }

    /// Rebuilds the set from fds received in travel order.
    pub fn from_vec(fds: Vec<OwnedFd>) -> Result<Self> {
        let got = fds.len();
        let arr: [OwnedFd; CHANNEL_FDS] = fds.try_into().map_err(|_| Error::WrongFdCount {
            expected: CHANNEL_FDS,
            got,
        })?;
        let [data, control, prod_event, cons_event] = arr;
        Ok(ChannelFds {
            data,
            control,
            prod_event,
            cons_event,
        })
    }

    /// The fds in travel order, owned.
    pub fn into_vec(self) -> Vec<OwnedFd> {
        vec![self.data, self.control, self.prod_event, self.cons_event]
    }

    /// Whether the data area is backed by huge pages (`hugetlbfs`).
    pub fn data_is_hugetlb(&self) -> bool {
        const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
        rustix::fs::fstatfs(&self.data)
            .map(|s| s.f_type == HUGETLBFS_MAGIC)
            .unwrap_or(false)
    }
}

/// Creates a channel: the data and control memfds, sealed before anyone maps them, the control
/// header written (magic, version, geometry; all indices 0), and the two eventfds.
/// Used by the flow manager; the fds then go to the two sides ([`ChannelFds::with_read_only_data`]
/// for the side that only reads the data area).
pub fn create(spec: &ChannelSpec) -> Result<ChannelFds> {
    spec.validate()?;
    let (data, _huge) =
        region::create_sealed_memfd("nemflow-rbuf-data", spec.data_bytes, spec.hugetlb)?;
    let (control, _) =
        region::create_sealed_memfd("nemflow-rbuf-control", spec.control_bytes(), false)?;
    // The header goes in with one pwrite, before anyone else holds the fd (passing it over a
    // socket orders it before the receiver's mapping). No mapping here: an mmap/munmap pair costs
    // ~5 µs, and the munmap a TLB shoot-down IPI in a multi-threaded flow manager.
    let mut hdr = [0u8; HEADER_INIT_BYTES];
    for (offset, value) in [
        (std::mem::offset_of!(ControlHeader, magic), MAGIC),
        (
            std::mem::offset_of!(ControlHeader, version_slots),
            u64::from(VERSION) | u64::from(spec.slots) << 32,
        ),
        (
            std::mem::offset_of!(ControlHeader, data_bytes),
            spec.data_bytes,
        ),
        (
            std::mem::offset_of!(ControlHeader, max_packet_bytes),
            u64::from(spec.max_packet_bytes),
        ),
    ] {
        hdr[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
    }
    let n = rustix::io::pwrite(&control, &hdr, 0).map_err(|e| Error::os("pwrite header", e))?;
    if n != hdr.len() {
        return Err(Error::FdPass("short write of the control header"));
    }
    let ev = || {
        rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| Error::os("eventfd", e))
    };
    Ok(ChannelFds {
        data,
        control,
        prod_event: ev()?,
        cons_event: ev()?,
    })
}

/// The four geometry words at the start of [`ControlHeader`] (magic, version and slots, data
/// bytes, packet limit): what `create` writes; the rest of the area starts zeroed.
const HEADER_INIT_BYTES: usize = 32;
const _: () =
    assert!(std::mem::offset_of!(ControlHeader, max_packet_bytes) + 8 == HEADER_INIT_BYTES);

/// Where an endpoint's fds come from, which decides how closely attaching checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdSource {
    /// Anyone, e.g. an application: every fd is checked exactly (memfds: seals and size;
    /// eventfds: by their `/proc/self/fd` link).
    Any,
    /// The channel's creator, trusted and reached over a socket only it can write: the driver
    /// receiving from the flow manager over its root-only control socket, an application
    /// receiving its flow's channels from the flow manager it connected to (and trusts with its
    /// flows anyway). The memfds are still checked (seals and size: mapping a short one would
    /// fault later); the eventfds only by `fstat` (an anonymous-inode file), which saves a
    /// `/proc` lookup of ~3 µs per eventfd. The shared memory itself stays hostile either way:
    /// the peer (an application, or the driver) may write anything into it.
    Creator,
}

/// Which half of the channel an endpoint is: the data's producer or its consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Producer,
    Consumer,
}

/// What every endpoint holds: its mappings, its waker, its counters, its broken flag.
#[derive(Debug)]
pub(crate) struct Core {
    pub limits: Limits,
    pub data: Mapping,
    /// Keeps the control mapping (FIFO views point into it) alive, and the data mapping when it
    /// is a view of the same range ([`region::map_areas`]).
    pub _control: Mapping,
    pub counters: Counters,
    pub broken: Option<String>,
    pub full: FifoView,
    pub empty: FifoView,
}

impl Core {
    /// Checks the fds against the trusted spec, maps them and finds the FIFOs.
    pub(crate) fn attach(
        spec: &ChannelSpec,
        fds: ChannelFds,
        side: Side,
        data_writable: bool,
        source: FdSource,
    ) -> Result<(Self, Waker)> {
        spec.validate()?;
        region::check_region("data", fds.data.as_fd(), spec.data_bytes)?;
        region::check_region("control", fds.control.as_fd(), spec.control_bytes())?;
        let check_event = match source {
            FdSource::Any => region::check_eventfd,
            FdSource::Creator => region::check_anon_inode,
        };
        check_event("producer event", fds.prod_event.as_fd())?;
        check_event("consumer event", fds.cons_event.as_fd())?;
        let (control, data) = region::map_areas(
            fds.control.as_fd(),
            spec.control_bytes(),
            fds.data.as_fd(),
            spec.data_bytes,
            data_writable,
            spec.hugetlb,
        )?;
        // SAFETY: as in `create`: the mapping holds the header, is page-aligned, and every field
        // is an atomic, valid for any bytes. The reference lives no longer than `control`.
        let hdr = unsafe { control.ptr().cast::<ControlHeader>().as_ref() };
        check_header(hdr, spec)?;
        let hdr_ptr = control.ptr().cast::<ControlHeader>();
        let field = |f: fn(&ControlHeader) -> &AtomicU32| -> NonNull<AtomicU32> {
            // SAFETY: `hdr_ptr` is valid as shown above; `f` only projects to a field.
            NonNull::from(f(unsafe { hdr_ptr.as_ref() }))
        };
        // SAFETY: the full FIFO's slots follow the header and the empty FIFO's follow those;
        // `control_bytes()` covers both, so both offsets stay inside the mapping, and they are
        // 16-byte aligned (the header is a multiple of 64 bytes, slots are 16).
        let (full_slots, empty_slots) = unsafe {
            let base = control.ptr().as_ptr().add(HEADER_BYTES).cast::<Slot>();
            (base, base.add(spec.slots as usize))
        };
        let view = |id, head, tail, slots: *mut Slot| FifoView {
            id,
            head,
            tail,
            // SAFETY: derived from the non-null mapping pointer by an in-bounds `add`.
            slots: unsafe { NonNull::new_unchecked(slots) },
            size: spec.slots,
        };
        let full = view(
            FifoId::Full,
            field(|h| &h.full_head),
            field(|h| &h.full_tail),
            full_slots,
        );
        let empty = view(
            FifoId::Empty,
            field(|h| &h.empty_head),
            field(|h| &h.empty_tail),
            empty_slots,
        );
        let prod_flag = field(|h| &h.prod_sleeping);
        let cons_flag = field(|h| &h.cons_sleeping);
        let waker = match side {
            Side::Producer => Waker::new(prod_flag, cons_flag, fds.prod_event, fds.cons_event),
            Side::Consumer => Waker::new(cons_flag, prod_flag, fds.cons_event, fds.prod_event),
        };
        let core = Core {
            limits: spec.limits(),
            data,
            _control: control,
            counters: Counters::default(),
            broken: None,
            full,
            empty,
        };
        Ok((core, waker))
    }

    /// Fails if the channel was marked broken.
    #[inline]
    pub(crate) fn check(&self) -> Result<()> {
        match &self.broken {
            None => Ok(()),
            Some(why) => Err(Error::Broken(why.clone())),
        }
    }

    /// Counts an index violation and marks the channel broken.
    #[cold]
    pub(crate) fn index_violation(&mut self, e: IndexError) -> Error {
        self.counters.count_index(&e);
        self.broken = Some(e.to_string());
        Error::Index(e)
    }

    /// Counts an invalid iorec.
    #[cold]
    pub(crate) fn invalid(&mut self, e: IoRecError) -> Error {
        self.counters.count_iorec(&e);
        Error::InvalidIoRec(e)
    }

    /// Copies the bytes of `rec`'s extents, in order, to `dst` (at most `cap` bytes).
    ///
    /// # Safety
    /// `dst` must be valid for writes of `cap` bytes and not overlap the data mapping.
    pub(crate) unsafe fn gather(&self, rec: &IoRec, dst: *mut u8, cap: usize) -> Result<usize> {
        let total = self.check_extents(rec)?;
        if total > cap {
            return Err(Error::TooLarge {
                requested: total,
                max: cap,
            });
        }
        let mut at = 0usize;
        for e in rec.extents() {
            // SAFETY: `check_extents` proved `offset + len ≤ data_bytes` = mapping length, so the
            // source range is inside the mapping; `at + len ≤ total ≤ cap`, so the destination
            // range is inside the caller's buffer (caller's contract), and the two cannot overlap.
            // The source bytes may change under us (the peer writes them): we copy them as plain
            // bytes, every value valid, and make no reference to them.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.data.ptr().as_ptr().add(e.offset as usize),
                    dst.add(at),
                    e.len as usize,
                );
            }
            at += e.len as usize;
        }
        Ok(at)
    }

    /// Copies `len` bytes from `src` into `rec`'s extents, in order (the data mapping must be
    /// writable).
    ///
    /// # Safety
    /// `src` must be valid for reads of `len` bytes and not overlap the data mapping.
    pub(crate) unsafe fn scatter(&self, rec: &IoRec, src: *const u8, len: usize) -> Result<()> {
        let total = self.check_extents(rec)?;
        if len > total {
            return Err(Error::TooLarge {
                requested: len,
                max: total,
            });
        }
        let mut at = 0usize;
        for e in rec.extents() {
            let n = (e.len as usize).min(len - at);
            // SAFETY: the destination is inside the (writable) mapping by `check_extents`; the
            // source range `at..at + n` is inside the caller's `len` bytes. No reference to the
            // shared bytes is made.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src.add(at),
                    self.data.ptr().as_ptr().add(e.offset as usize),
                    n,
                );
            }
            at += n;
            if at == len {
                break;
            }
        }
        Ok(())
    }

    /// Re-checks an iorec's extents against the data area (callers may pass any `IoRec`);
    /// returns the total length.
    #[inline]
    pub(crate) fn check_extents(&self, rec: &IoRec) -> Result<usize> {
        if rec.count == 0 || usize::from(rec.count) > crate::MAX_EXTENTS {
            return Err(IoRecError::BadCount { count: rec.count }.into());
        }
        let mut total = 0usize;
        for (i, e) in rec.extents().iter().enumerate() {
            e.check_bounds(i, self.data.len() as u64)?;
            total += e.len as usize;
        }
        Ok(total)
    }
}

fn check_header(hdr: &ControlHeader, spec: &ChannelSpec) -> Result<()> {
    let expect = |field, found: u64, expected: u64| {
        if found == expected {
            Ok(())
        } else {
            Err(RegionError::BadHeader {
                field,
                found,
                expected,
            })
        }
    };
    // `create` wrote the header (pwrite) before the fd left its process; the socket that carried
    // the fd orders that write before this read. Acquire costs nothing here and keeps the read
    // ordered before the slot reads even if a future creator writes through a mapping.
    expect("magic", hdr.magic.load(Ordering::Acquire), MAGIC)?;
    expect(
        "version_slots",
        hdr.version_slots.load(Ordering::Relaxed),
        u64::from(VERSION) | u64::from(spec.slots) << 32,
    )?;
    expect(
        "data_bytes",
        hdr.data_bytes.load(Ordering::Relaxed),
        spec.data_bytes,
    )?;
    expect(
        "max_packet_bytes",
        hdr.max_packet_bytes.load(Ordering::Relaxed),
        u64::from(spec.max_packet_bytes),
    )?;
    Ok(())
}

/// How many slots a consuming side may take now from `input` (the full FIFO for a TMM consumer,
/// the empty FIFO for an RMM producer): available there, with room on `output` to hand back
/// their iorecs and everything already held (`held` slots), and no more than `want` iorecs can
/// take (two slots each).
#[inline(always)]
pub(crate) fn consumable(
    core: &mut Core,
    input: &mut ConsCursor,
    output: &mut ProdCursor,
    held: u32,
    want: u32,
) -> Result<u32> {
    let avail = input.avail(want).map_err(|e| core.index_violation(e))?;
    if avail == 0 {
        return Ok(0);
    }
    // Up to two slots per iorec: read the peer's index again unless the cached room covers the
    // most this call could take (else a stale view could keep a two-slot record waiting).
    let want = want.saturating_mul(2).min(avail);
    let room = output
        .room(held.saturating_add(want))
        .map_err(|e| core.index_violation(e))?;
    Ok(want.min(room.saturating_sub(held)))
}

/// Whether a consuming side could take something now: the channel is not broken and
/// [`consumable`] allows at least the next record at `input`'s head.
#[inline]
pub(crate) fn can_consume(
    core: &mut Core,
    input: &mut ConsCursor,
    output: &mut ProdCursor,
    held: u32,
) -> Result<bool> {
    core.check()?;
    let limit = consumable(core, input, output, held, 1)?;
    Ok(input.head_fits(limit))
}

/// The calls all four endpoints share, for a type with fields `core: Core` and `waker: Waker`
/// and a `ready(&mut self) -> Result<bool>` of its own: the event-loop pair `prepare_wait` /
/// `finish_wait`, `counters`, `broken`, and its [`AsFd`] (documented by `$fd_doc`).
macro_rules! endpoint_common {
    ($t:ident, $fd_doc:literal) => {
        impl $t {
            /// For event loops: arms the wake-up and says whether work is already there (`true`:
            /// do not sleep). On `false`, sleep until [`AsFd::as_fd`](std::os::fd::AsFd::as_fd)
            /// is readable (poll/epoll), then call [`finish_wait`](Self::finish_wait).
            pub fn prepare_wait(&mut self) -> $crate::error::Result<bool> {
                self.waker.arm();
                let r = self.ready();
                if !matches!(r, Ok(false)) {
                    self.waker.disarm();
                }
                r
            }

            /// Disarms the wake-up and drains the eventfd after a sleep.
            pub fn finish_wait(&mut self) {
                self.waker.disarm();
            }

            /// This endpoint's counters.
            pub fn counters(&self) -> $crate::counters::Counters {
                self.waker.fill(self.core.counters)
            }

            /// Why the channel is broken, if it is.
            pub fn broken(&self) -> Option<&str> {
                self.core.broken.as_deref()
            }
        }

        impl std::os::fd::AsFd for $t {
            #[doc = $fd_doc]
            fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
                self.waker.fd()
            }
        }
    };
}
pub(crate) use endpoint_common;
