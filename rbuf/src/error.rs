//! The crate's error types: one variant per kind of failure a caller, a config or a peer can cause.

use std::io;

/// Why an iorec read from a FIFO was rejected. Each reason has its own counter in [`crate::Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IoRecError {
    /// The extent count is 0 or larger than [`crate::MAX_EXTENTS`].
    #[error("iorec has {count} extents (allowed 1..={max})", max = crate::MAX_EXTENTS)]
    BadCount {
        /// The count found in the slot.
        count: u8,
    },
    /// `offset + len` does not fit in 32 bits (e.g. `offset = 0xFFFF_FFFE, len = 4`).
    #[error("extent {index} overflows: offset {offset:#x} + len {len}")]
    Overflow {
        /// Which extent of the iorec.
        index: usize,
        /// Its offset.
        offset: u32,
        /// Its length.
        len: u32,
    },
    /// The extent ends past the end of the data area.
    #[error("extent {index} [{offset:#x}, +{len}) is outside the data area of {data_bytes} bytes")]
    OutOfBounds {
        /// Which extent of the iorec.
        index: usize,
        /// Its offset.
        offset: u32,
        /// Its length.
        len: u32,
        /// Size of the data area.
        data_bytes: u64,
    },
    /// The extents add up to more than the channel's `max_packet_bytes`.
    #[error("iorec carries {len} bytes, more than the channel's max_packet_bytes {max}")]
    TooLong {
        /// Sum of the extents' lengths.
        len: u64,
        /// The channel's limit.
        max: u32,
    },
    /// The header says the record has a second slot, but the producer published only its first
    /// (a correct producer publishes whole records); the one slot is consumed.
    #[error("iorec with {count} extents has two slots, the producer published one")]
    Truncated {
        /// The count found in the header.
        count: u8,
    },
    /// A run record ([`crate::iorec::run_words`]) where none may be (any FIFO but a TMM
    /// channel's empty FIFO), or naming iorecs that cannot be out: none (`n = 0`), more than
    /// were pushed since `first`, or pushed longer ago than the producer remembers. Discarded
    /// whole; iorecs of a run that are not out are [`IoRecError::NotOwned`] each.
    #[error("run of {n} iorecs from push number {first} is not a run of outstanding iorecs")]
    BadRun {
        /// The run's first push number.
        first: u32,
        /// Its length.
        n: u32,
    },
    /// The master got back an extent that is not a buffer it handed out (wrong offset, unknown or
    /// duplicated buffer, length past the buffer).
    #[error("extent {index} [{offset:#x}, +{len}) is not a buffer this side handed out")]
    NotOwned {
        /// Which extent of the iorec.
        index: usize,
        /// Its offset.
        offset: u32,
        /// Its length.
        len: u32,
    },
}

/// Which FIFO of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FifoId {
    /// Producer → consumer: "here is a packet".
    Full,
    /// Consumer → producer: "this buffer is yours again".
    Empty,
}

impl std::fmt::Display for FifoId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FifoId::Full => "full",
            FifoId::Empty => "empty",
        })
    }
}

/// A peer moved its index in a way a well-behaved peer cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// The peer's index went backwards (event counts only move forward).
    #[error("{fifo} FIFO: peer index moved backwards from {last} to {seen}")]
    Backward {
        /// The FIFO.
        fifo: FifoId,
        /// The value we had seen before.
        last: u32,
        /// The value read now.
        seen: u32,
    },
    /// The peer's index jumped further than the ring (or past our own index).
    #[error("{fifo} FIFO: peer index jumped from {last} to {seen} (limit {limit})")]
    TooFar {
        /// The FIFO.
        fifo: FifoId,
        /// The value we had seen before.
        last: u32,
        /// The value read now.
        seen: u32,
        /// The largest value that would have been valid.
        limit: u32,
    },
}

/// What is wrong with a file descriptor offered as a channel region.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    /// `F_GET_SEALS` failed: not a memfd (a pipe, `/dev/zero`, a socket, a regular file, ...).
    #[error("{region} fd is not a memfd (F_GET_SEALS: {errno})")]
    NotMemfd {
        /// "data" or "control".
        region: &'static str,
        /// The error `fcntl` returned.
        errno: rustix::io::Errno,
    },
    /// The memfd lacks `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`.
    #[error("{region} memfd is not sealed (seals {have:#x}, need {need:#x})")]
    NotSealed {
        /// "data" or "control".
        region: &'static str,
        /// The seals it has.
        have: u32,
        /// The seals required.
        need: u32,
    },
    /// The memfd has the wrong size for the channel spec.
    #[error("{region} memfd has {actual} bytes, the channel spec needs {expected}")]
    WrongSize {
        /// "data" or "control".
        region: &'static str,
        /// The size the spec implies.
        expected: u64,
        /// The size fstat reported.
        actual: u64,
    },
    /// The control header does not describe the expected channel.
    #[error("control header field {field}: found {found:#x}, expected {expected:#x}")]
    BadHeader {
        /// The field.
        field: &'static str,
        /// What the header holds.
        found: u64,
        /// What the spec implies.
        expected: u64,
    },
    /// An event fd is not an eventfd.
    #[error("{which} fd is not an eventfd ({what})")]
    NotEventfd {
        /// Which event fd.
        which: &'static str,
        /// What it is instead.
        what: String,
    },
}

/// Errors of the rbuf crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The channel spec is unusable.
    #[error("invalid channel spec: {0}")]
    InvalidSpec(String),
    /// A system call failed.
    #[error("{op}: {source}")]
    Os {
        /// What we were doing.
        op: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// An fd offered for attaching is not what the channel needs.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// The peer wrote an invalid iorec (it was discarded and counted).
    #[error("invalid iorec from peer: {0}")]
    InvalidIoRec(#[from] IoRecError),
    /// The peer moved an index illegally; the channel is now broken.
    #[error("peer index violation: {0}")]
    Index(#[from] IndexError),
    /// The channel was marked broken earlier; every operation now fails.
    #[error("channel is broken: {0}")]
    Broken(String),
    /// The FIFO has no room (back-pressure): try again later.
    #[error("FIFO full")]
    Full,
    /// A blocking call's timeout passed.
    #[error("timed out")]
    Timeout,
    /// The caller passed an iorec or extent this endpoint does not own (a local bug, not the peer).
    #[error("extent [{offset:#x}, +{len}) is not a buffer this endpoint holds")]
    NotHeld {
        /// The extent's offset.
        offset: u32,
        /// The extent's length.
        len: u32,
    },
    /// The caller asked for a buffer larger than the channel's buffers.
    #[error("requested {requested} bytes, buffers hold {max}")]
    TooLarge {
        /// Bytes requested.
        requested: usize,
        /// Largest possible.
        max: usize,
    },
    /// Fd passing: the peer sent more fds than allowed (they were closed).
    #[error("peer sent {got} fds, at most {max} allowed (all closed)")]
    TooManyFds {
        /// How many arrived.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// Fd passing: the peer sent a different number of fds than expected (they were closed).
    #[error("expected {expected} fds, got {got} (all closed)")]
    WrongFdCount {
        /// The number expected.
        expected: usize,
        /// The number received.
        got: usize,
    },
    /// Fd passing: the control message was truncated or unexpected.
    #[error("fd passing: {0}")]
    FdPass(&'static str),
}

impl Error {
    pub(crate) fn os(op: &'static str, e: rustix::io::Errno) -> Self {
        Error::Os {
            op,
            source: e.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
