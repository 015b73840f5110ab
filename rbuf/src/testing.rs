//! Raw access to a control area, for hostile-peer tests, fuzzing and the `rbuf-peer` helper.
//!
//! Grants nothing beyond what holding the control fd already grants (any holder can map it and
//! write anything): it exists so tests can *be* the hostile peer.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::channel::{create, ChannelFds};
use crate::error::{Error, FifoId, Result};
use crate::iorec::{slots_of_header, Extent, IoRec, Limits, RECORD_BYTES, SLOT_BYTES};
use crate::region::Mapping;
use crate::spec::{ChannelSpec, ControlHeader, HEADER_BYTES};
use crate::{rmm, tmm};

/// The index words of a control area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexWord {
    /// Full FIFO head (written by the data producer).
    FullHead,
    /// Full FIFO tail (written by the data consumer).
    FullTail,
    /// Empty FIFO head (written by the data consumer).
    EmptyHead,
    /// Empty FIFO tail (written by the data producer).
    EmptyTail,
}

/// A raw read-write mapping of a control area.
#[derive(Debug)]
pub struct RawControl {
    map: Mapping,
    slots: u32,
}

// SAFETY: every access through a `RawControl` is an atomic operation on the mapping, so sharing
// it between threads cannot race in the Rust sense (the mapping itself is plain memory).
unsafe impl Sync for RawControl {}

impl RawControl {
    /// Maps `fd` (any size ≥ the header) read-write, without checks.
    pub fn map(fd: impl AsFd, spec: &ChannelSpec) -> Result<Self> {
        Ok(RawControl {
            map: Mapping::map(fd, spec.control_bytes(), true)?,
            slots: spec.slots,
        })
    }

    /// Length of the mapping.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the mapping is empty (never).
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    fn hdr(&self) -> &ControlHeader {
        // SAFETY: the mapping covers the header, is page-aligned, and the header is all atomics.
        unsafe { self.map.ptr().cast::<ControlHeader>().as_ref() }
    }

    /// Writes raw bytes at `offset` (clipped to the mapping).
    pub fn write_bytes(&self, offset: usize, bytes: &[u8]) {
        let offset = offset.min(self.map.len());
        let n = bytes.len().min(self.map.len() - offset);
        for (i, b) in bytes[..n].iter().enumerate() {
            // SAFETY: `offset + i < len`, inside the mapping; every byte of the control area is
            // part of an atomic and accepts any value, and a byte-sized atomic has alignment 1.
            let a = unsafe { &*self.map.ptr().as_ptr().add(offset + i).cast::<AtomicU8>() };
            a.store(*b, Ordering::Relaxed);
        }
    }

    /// Stores an index word.
    pub fn set_index(&self, which: IndexWord, value: u32) {
        let h = self.hdr();
        let a = match which {
            IndexWord::FullHead => &h.full_head,
            IndexWord::FullTail => &h.full_tail,
            IndexWord::EmptyHead => &h.empty_head,
            IndexWord::EmptyTail => &h.empty_tail,
        };
        // Release: like a real producer's publish, so slots written before become visible.
        a.store(value, Ordering::Release);
    }

    /// Loads an index word.
    pub fn index(&self, which: IndexWord) -> u32 {
        let h = self.hdr();
        let a = match which {
            IndexWord::FullHead => &h.full_head,
            IndexWord::FullTail => &h.full_tail,
            IndexWord::EmptyHead => &h.empty_head,
            IndexWord::EmptyTail => &h.empty_tail,
        };
        a.load(Ordering::Acquire)
    }

    /// Clears both sides' "sleeping" flags (a peer trying to make the other side miss wake-ups).
    pub fn clear_sleep_flags(&self) {
        self.hdr().prod_sleeping.store(0, Ordering::Relaxed);
        self.hdr().cons_sleeping.store(0, Ordering::Relaxed);
    }

    /// Writes a record image ([`IoRec::encode`]) from free-running slot index `index` of a FIFO
    /// on: one slot, or two when its header word says so (the second at `index + 1`, wrapping
    /// like the ring). Returns the slots written, to place the next record after it.
    pub fn write_slot(&self, fifo: FifoId, index: u32, words: [u64; 4]) -> u32 {
        self.write_raw_slot(fifo, index, [words[0], words[1]]);
        if slots_of_header(words[0]) == 1 {
            return 1;
        }
        self.write_raw_slot(fifo, index.wrapping_add(1), [words[2], words[3]]);
        2
    }

    /// Writes the two words of one slot at free-running index `index` of a FIFO.
    pub fn write_raw_slot(&self, fifo: FifoId, index: u32, words: [u64; 2]) {
        let off = self.slots_offset(fifo) + (index & (self.slots - 1)) as usize * SLOT_BYTES;
        let mut b = [0u8; SLOT_BYTES];
        for (i, w) in words.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&w.to_ne_bytes());
        }
        self.write_bytes(off, &b);
    }

    /// Offset of the first slot of a FIFO.
    pub fn slots_offset(&self, fifo: FifoId) -> usize {
        HEADER_BYTES
            + match fifo {
                FifoId::Full => 0,
                FifoId::Empty => self.slots as usize * SLOT_BYTES,
            }
    }
}

/// Fuzz body shared by `fuzz/fuzz_targets/iorec.rs` and the corpus replay test: decodes a record
/// image (two slots' worth of bytes, the second used only if the header says so) and limits from
/// `data`, validates, and checks that a valid iorec really is in bounds.
pub fn fuzz_iorec(data: &[u8]) {
    if data.len() < RECORD_BYTES + 8 {
        return;
    }
    let mut image = [0u8; RECORD_BYTES];
    image.copy_from_slice(&data[..RECORD_BYTES]);
    let rec = IoRec::decode_bytes(&image);
    let word = |i: usize| u32::from_ne_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    let limits = Limits {
        data_bytes: u64::from(word(RECORD_BYTES)),
        max_packet_bytes: word(RECORD_BYTES + 4),
    };
    assert_eq!(
        rec.slots(),
        slots_of_header(u64::from_ne_bytes([
            image[0], image[1], image[2], image[3], image[4], image[5], image[6], image[7]
        ])),
        "the record takes the slots its header says"
    );
    assert_eq!(
        IoRec::decode(rec.encode()),
        rec,
        "decode ∘ encode is the identity on decoded values"
    );
    if rec.validate(&limits).is_ok() {
        assert!((1..=crate::MAX_EXTENTS).contains(&usize::from(rec.count)));
        for e in rec.extents() {
            assert!(u64::from(e.offset) + u64::from(e.len) <= limits.data_bytes);
        }
        assert!(rec.total_len() <= u64::from(limits.max_packet_bytes));
    }
}

const FUZZ_SPEC: ChannelSpec = ChannelSpec {
    data_bytes: 16384,
    slots: 8,
    max_packet_bytes: 2000,
    hugetlb: false,
};

struct FuzzChannels {
    tx: ChannelFds,
    rx: ChannelFds,
    pristine: Vec<u8>,
}

fn fuzz_channels() -> Option<&'static FuzzChannels> {
    static CH: OnceLock<Option<FuzzChannels>> = OnceLock::new();
    CH.get_or_init(|| {
        let tx = create(&FUZZ_SPEC).ok()?;
        let rx = create(&FUZZ_SPEC).ok()?;
        let raw = RawControl::map(&tx.control, &FUZZ_SPEC).ok()?;
        let mut pristine = vec![0u8; raw.len()];
        // SAFETY: reads the whole mapping (len bytes) into a private Vec of the same length.
        unsafe {
            std::ptr::copy_nonoverlapping(raw.map.ptr().as_ptr(), pristine.as_mut_ptr(), raw.len())
        };
        Some(FuzzChannels { tx, rx, pristine })
    })
    .as_ref()
}

/// Fuzz body shared by `fuzz/fuzz_targets/control.rs` and the corpus replay test: all four
/// endpoints of two fresh channels, driven by `data` as a script of operations interleaved with
/// arbitrary writes over the control areas. Nothing may panic; every iorec an endpoint hands out
/// must be inside the data area.
pub fn fuzz_control(data: &[u8]) {
    let Some(ch) = fuzz_channels() else { return };
    let _ = run_script(ch, data);
}

fn run_script(ch: &FuzzChannels, data: &[u8]) -> Result<()> {
    let tx_raw = RawControl::map(&ch.tx.control, &FUZZ_SPEC)?;
    let rx_raw = RawControl::map(&ch.rx.control, &FUZZ_SPEC)?;
    tx_raw.write_bytes(0, &ch.pristine);
    rx_raw.write_bytes(0, &ch.pristine);
    let mut app_tx = tmm::Producer::attach(&FUZZ_SPEC, ch.tx.try_clone()?)?;
    let mut drv_tx = tmm::Consumer::attach(&FUZZ_SPEC, ch.tx.with_read_only_data()?)?;
    let mut drv_rx = rmm::Producer::attach(&FUZZ_SPEC, ch.rx.try_clone()?)?;
    let mut app_rx = rmm::Consumer::attach(&FUZZ_SPEC, ch.rx.with_read_only_data()?)?;
    let mut held_tx: Vec<IoRec> = Vec::new();
    let mut held_rx: Vec<IoRec> = Vec::new();
    let mut pkts = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut it = data.iter().copied();
    let mut next = || it.next();
    let in_bounds = |r: &IoRec| {
        r.extents()
            .iter()
            .all(|e| u64::from(e.offset) + u64::from(e.len) <= FUZZ_SPEC.data_bytes)
    };
    while let Some(op) = next() {
        let raw = if op & 0x80 != 0 { &rx_raw } else { &tx_raw };
        match op & 0x0f {
            0 => {
                let off = usize::from(next().unwrap_or(0)) | usize::from(next().unwrap_or(0)) << 8;
                let n = usize::from(next().unwrap_or(0) % 40);
                let bytes: Vec<u8> = (0..n).map(|_| next().unwrap_or(0xff)).collect();
                raw.write_bytes(off % raw.len(), &bytes);
            }
            1 => {
                let which = [
                    IndexWord::FullHead,
                    IndexWord::FullTail,
                    IndexWord::EmptyHead,
                    IndexWord::EmptyTail,
                ][usize::from(next().unwrap_or(0) % 4)];
                let v = u32::from_le_bytes([
                    next().unwrap_or(0),
                    next().unwrap_or(0),
                    next().unwrap_or(0),
                    next().unwrap_or(0),
                ]);
                raw.set_index(which, v);
            }
            2 => {
                let mut out = [IoRec::default(); 8];
                if let Ok(k) = drv_tx.pop_batch(&mut out[..usize::from(next().unwrap_or(1) % 9)]) {
                    for r in &out[..k] {
                        assert!(in_bounds(r));
                        let _ = drv_tx.copy_out(r, &mut buf);
                    }
                    held_tx.extend_from_slice(&out[..k]);
                }
            }
            3 => {
                if let Some(r) = held_tx.pop() {
                    let _ = drv_tx.release(r);
                }
            }
            4 => {
                let len = usize::from(next().unwrap_or(0)) * 8;
                if let Ok(Some(e)) = app_tx.alloc(len) {
                    if let Ok(b) = app_tx.buf_mut(e) {
                        b.fill(op);
                    }
                    let _ = app_tx.push(IoRec::single(e, 0));
                }
            }
            5 => {
                let _ = app_tx.reclaim();
            }
            6 => {
                let mut out = [IoRec::default(); 8];
                if let Ok(k) =
                    drv_rx.take_empty_batch(&mut out[..usize::from(next().unwrap_or(1) % 9)])
                {
                    for r in &out[..k] {
                        assert!(in_bounds(r));
                        let _ = drv_rx.copy_in(r, &buf[..usize::from(next().unwrap_or(0)) * 4]);
                    }
                    held_rx.extend_from_slice(&out[..k]);
                }
            }
            7 => {
                if let Some(r) = held_rx.pop() {
                    let _ = drv_rx.push_full(r, usize::from(next().unwrap_or(0)) * 8);
                }
            }
            8 => {
                let _ = app_rx.post_free();
            }
            9 => {
                if let Ok(Some(p)) = app_rx.pop() {
                    assert!(in_bounds(p.iorec()));
                    let _ = app_rx.payload(&p).len();
                    let _ = app_rx.copy_out(&p, &mut buf);
                    pkts.push(p);
                }
            }
            10 => {
                if let Some(p) = pkts.pop() {
                    let _ = app_rx.repost(p);
                }
            }
            11 => {
                let z = Duration::ZERO;
                let _ = (
                    drv_tx.wait_ready(z),
                    drv_rx.wait_ready(z),
                    app_tx.wait_ready(z),
                    app_rx.wait_ready(z),
                );
            }
            12 => {
                let _ = drv_tx.pop().map(|r| r.inspect(|r| held_tx.push(*r)));
                let _ = drv_rx.take_empty().map(|r| r.inspect(|r| held_rx.push(*r)));
            }
            14 => {
                // An iorec of two or three extents (two slots), each in a buffer of its own.
                let n = 2 + usize::from(next().unwrap_or(0) & 1);
                let mut exts = [Extent::default(); 3];
                let got = app_tx.alloc_batch(usize::from(next().unwrap_or(0)), &mut exts[..n]);
                if let Ok(k) = got {
                    match IoRec::from_extents(&exts[..k], u16::from(op)) {
                        Some(rec) if k > 1 => {
                            let _ = app_tx.push(rec);
                        }
                        _ => {
                            for e in &exts[..k] {
                                let _ = app_tx.free(*e);
                            }
                        }
                    }
                }
            }
            _ => {
                let e = Extent::new(
                    u32::from(next().unwrap_or(0)) << 8,
                    u32::from(next().unwrap_or(0)),
                );
                let _ = drv_tx.copy_extent_out(e, &mut buf);
            }
        }
    }
    let _ = (
        app_tx.counters(),
        drv_tx.counters(),
        drv_rx.counters(),
        app_rx.counters(),
    );
    Ok::<(), Error>(())
}

/// Fills `buf` with the test payload for sequence number `seq`: `seq` (8 bytes LE), a checksum
/// (8 bytes LE) and `len - 16` body bytes derived from `seq`. Returns the payload length
/// (16..=16 + 47, varying with `seq`, capped by `buf.len()`).
pub fn fill_payload(seq: u64, buf: &mut [u8]) -> usize {
    let len = (16 + (seq % 48) as usize).min(buf.len());
    if len < 16 {
        return 0;
    }
    for (i, b) in buf[16..len].iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    let sum = checksum(seq, &buf[16..len]);
    buf[8..16].copy_from_slice(&sum.to_le_bytes());
    len
}

/// Checks a test payload: returns its sequence number, or what is wrong.
pub fn check_payload(p: &[u8]) -> std::result::Result<u64, &'static str> {
    if p.len() < 16 {
        return Err("payload shorter than 16 bytes");
    }
    let mut w = [0u8; 8];
    w.copy_from_slice(&p[..8]);
    let seq = u64::from_le_bytes(w);
    w.copy_from_slice(&p[8..16]);
    if u64::from_le_bytes(w) != checksum(seq, &p[16..]) {
        return Err("checksum mismatch");
    }
    if p.len() != 16 + (seq % 48) as usize {
        return Err("length does not match sequence number");
    }
    Ok(seq)
}

fn checksum(seq: u64, body: &[u8]) -> u64 {
    // FNV-1a over the sequence number and the body.
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in seq.to_le_bytes().iter().chain(body) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A small xorshift generator for hostile peers and tests (no dependency, reproducible).
#[derive(Debug, Clone)]
pub struct XorShift(pub u64);

impl XorShift {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}
