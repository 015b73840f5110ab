//! Rbuf channels: nemflow's cross-process packet channels between an application and the driver
//! (DESIGN.md §2, the Nemesis paper §2.2).
//!
//! A *simplex* channel is a **data area** (a sealed memfd, hugetlb-backed where available) and a
//! **control area** (a second sealed memfd) holding two FIFOs of fixed-size iorec slots: the
//! *full* FIFO (producer → consumer, "here is a packet") and the *empty* FIFO (consumer →
//! producer, "this buffer is yours again"). FIFO indices are free-running 32-bit event counts;
//! each side polls them (non-blocking) or sleeps on its eventfd until they move (blocking).
//!
//! # Who uses what
//! - The flow manager calls [`create`] and sends the [`ChannelFds`] (and the [`ChannelSpec`]) to
//!   both sides with [`fdpass::send_fds`]; the side that only reads the data area gets
//!   [`ChannelFds::with_read_only_data`].
//! - **TMM** (transmit master, app → driver): the app is [`tmm::Producer`] (it owns the buffer
//!   allocator), the driver is [`tmm::Consumer`].
//! - **RMM** (receive master, driver → app): the app is [`rmm::Consumer`] (it owns the allocator
//!   and posts empty buffers first; its data mapping is read-only), the driver is
//!   [`rmm::Producer`].
//!
//! # Trust
//! Each side treats the other as hostile. Attaching checks every fd (a memfd sealed with
//! `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`, of the size the trusted spec implies; eventfds are
//! eventfds, by their `/proc/self/fd` link). An endpoint whose fds come from the channel's
//! trusted creator over a socket only it can write (the driver or an app, from the flow manager)
//! may attach with [`FdSource::Creator`]: the memfd checks stay, the eventfds are only checked by
//! `fstat`. Each side keeps its own indices privately, reads the peer's index once (Acquire) and
//! rejects a backward move or a jump past what is possible ([`IndexError`]: the channel is then
//! marked broken). Each iorec is copied out of shared memory once into a plain [`IoRec`] and
//! validated (count, bounds with overflow-checked arithmetic, length); a master also checks that
//! what comes back is a buffer it handed out. Every violation is an [`Error`] and a [`Counters`]
//! entry; nothing panics and nothing reads outside a mapping. No Rust reference is ever made to
//! peer-writable bytes: the control area is all atomics, data is copied with raw pointers. (The
//! app's `&mut [u8]`/`&[u8]` views are of buffers it holds, which its trusted peer does not touch.)
//!
//! A hostile application can still punch holes in its own memfds (`fallocate`): on small pages
//! the driver then reads zeros; on huge pages a later fault could fail, which is why
//! hugetlb-backed areas are fully reserved at creation and should be given to trusted apps only.
//!
//! # Polling, blocking, event loops
//! Every endpoint is non-blocking: `pop`/`take_empty` return `Ok(None)` and `push` returns
//! `Err(Error::Full)` (back-pressure) instead of waiting. To wait, call `wait_ready(timeout)`
//! (sleeps on the endpoint's eventfd until the peer moves an index; `Err(Timeout)` otherwise), or,
//! in an event loop, `prepare_wait()` (returns `true` if work is already there), poll/epoll the
//! endpoint's fd ([`std::os::fd::AsFd`]) for readability, then `finish_wait()`. When nobody sleeps,
//! publishing costs no system call and no fence (see `event.rs`: asymmetric barriers with
//! `membarrier(2)`, [`uses_membarrier`]). A peer that stops serving only makes our waits time out.
//!
//! # Fd passing
//! [`fdpass::send_fds`] / [`fdpass::recv_fds`] / [`fdpass::recv_exact_fds`] move fds with
//! `SCM_RIGHTS` over a Unix stream socket; a receiver states how many it accepts and any excess
//! closes every fd of that message and fails. A channel travels as [`CHANNEL_FDS`] fds in the order
//! of [`ChannelFds::as_fds`] / [`ChannelFds::from_vec`].
//!
//! # Mappings
//! An endpoint maps its control area and its data area side by side, in one range, so that
//! dropping it is one `munmap` (in a multi-threaded process each costs a TLB shoot-down on every
//! other CPU running it); a huge-page data area, which needs an aligned address, is mapped apart.
//!
//! # Ring layout
//! The control area is a [`ChannelSpec`]-sized header (magic, version, geometry; the four indices
//! and two sleep flags each on its own cache line) followed by the full FIFO's slots and the empty
//! FIFO's, each slot 16 bytes (four to a cache line). An iorec of one extent takes one slot, of
//! two or three extents two consecutive slots (see [`iorec`] and [`IoRec::encode`]); indices
//! count slots. A consumer decides from its private copy of a record's header whether to read a
//! second slot, and a record that runs past the published index is an error (counted), not a
//! wait. A slave takes a record only while the FIFO it returns it on has room for its slots
//! (so `release`/`push_full` never find it full); a two-slot record at the head waits, and the
//! endpoint is not [`ready`](tmm::Consumer::ready), until there are two. See [`ring`] for the
//! ordering of every atomic.
//!
//! On a TMM channel's empty FIFO the consumer hands back iorecs it releases in the order it
//! popped them as *run* records, one slot per stretch of consecutive push numbers (the
//! producer's count of iorecs pushed; [`iorec::run_words`]): the producer frees their buffers
//! from a private record of what it pushed instead of reading a slot per iorec. Other release
//! orders go back one record per iorec. A run anywhere else, or naming iorecs that cannot be out,
//! is an invalid record ([`IoRecError::BadRun`], counted). Control layout version 3.
//!
//! # Example: TMM (app → driver)
//! ```
//! use nemflow_rbuf::{create, tmm, ChannelSpec, IoRec};
//! let spec = ChannelSpec { data_bytes: 1 << 16, slots: 64, max_packet_bytes: 2048, hugetlb: false };
//! let fds = create(&spec)?; // flow manager
//! let mut app = tmm::Producer::attach(&spec, fds.try_clone()?)?;
//! let mut drv = tmm::Consumer::attach(&spec, fds.with_read_only_data()?)?;
//!
//! let ext = app.alloc(5)?.expect("a free buffer");
//! app.buf_mut(ext)?.copy_from_slice(b"hello");
//! app.push(IoRec::single(ext, 0))?;
//!
//! let rec = drv.pop()?.expect("an iorec"); // validated
//! let mut frame = [0u8; 2048];
//! let n = drv.copy_out(&rec, &mut frame)?;
//! assert_eq!(&frame[..n], b"hello");
//! drv.release(rec)?;
//! assert_eq!(app.reclaim()?, 1);
//! # Ok::<(), nemflow_rbuf::Error>(())
//! ```
//!
//! # Example: RMM (driver → app)
//! ```
//! use nemflow_rbuf::{create, rmm, ChannelSpec};
//! use std::time::Duration;
//! let spec = ChannelSpec { data_bytes: 1 << 16, slots: 64, max_packet_bytes: 2048, hugetlb: false };
//! let fds = create(&spec)?;
//! let mut app = rmm::Consumer::attach(&spec, fds.with_read_only_data()?)?;
//! let mut drv = rmm::Producer::attach(&spec, fds.try_clone()?)?;
//!
//! app.post_free()?; // empty buffers first
//! match drv.take_empty()? {
//!     Some(buf) => {
//!         drv.copy_in(&buf, b"frame")?;
//!         drv.push_full(buf, 5)?;
//!     }
//!     None => { /* no buffer: drop the frame, count it for this flow */ }
//! }
//! app.wait_ready(Duration::from_millis(100))?; // or poll app.as_fd() in an event loop
//! let pkt = app.pop()?.expect("a packet");
//! assert_eq!(app.payload(&pkt), b"frame");
//! app.repost(pkt)?;
//! # Ok::<(), nemflow_rbuf::Error>(())
//! ```

pub mod channel;
pub mod counters;
pub mod error;
mod event;
pub mod fdpass;
pub mod iorec;
mod pool;
pub mod region;
pub mod ring;
pub mod rmm;
pub mod spec;
pub mod testing;
pub mod tmm;

pub use channel::{create, ChannelFds, FdSource, CHANNEL_FDS};
pub use counters::Counters;
pub use error::{Error, FifoId, IndexError, IoRecError, RegionError, Result};
pub use iorec::{Extent, IoRec, Limits, MAX_EXTENTS, RECORD_BYTES, SLOT_BYTES};
pub use spec::ChannelSpec;

/// Whether this process wakes peers with asymmetric barriers (`membarrier(2)`): notifying then
/// costs no fence on the fast path. See the `event` module notes in the crate source.
pub fn uses_membarrier() -> bool {
    event::asymmetric()
}
