//! IPv4 reassembly with bounded memory: a byte budget over everything held (fragment data plus a
//! fixed per-fragment charge), a limit on datagrams in progress, and a timeout per datagram.
//!
//! Policy (RFC 791, RFC 5722 practice as Linux applies it to IPv4):
//! - an exact duplicate (same offset and length as a fragment held) is dropped, the datagram goes on;
//! - any other overlap discards the whole datagram (no guessing which bytes are right);
//! - a fragment reaching past 65 535 bytes of datagram, or contradicting the known end (a second
//!   last fragment, data past the end), discards the datagram;
//! - a non-final fragment whose length is not a multiple of 8, or any empty fragment, is dropped;
//! - a new datagram when the limit is reached, or a fragment that does not fit the budget, evicts
//!   the oldest datagrams in progress; a datagram that alone exceeds the budget is discarded;
//! - a datagram not complete `timeout` after its first fragment is discarded.
//!
//! Time is passed in (no clock is read here), so tests drive it.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::counters::ReasmCounters;

/// Largest IPv4 payload: total length 65 535 minus a 20-byte header.
pub const MAX_PAYLOAD: usize = 65_535 - 20;

/// Bytes charged per fragment held on top of its data (its bookkeeping), so that a flood of tiny
/// fragments is not cheap.
pub const FRAGMENT_OVERHEAD: usize = 64;

/// Limits of one flow's reassembly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// Bytes held at most, over all datagrams in progress (data + [`FRAGMENT_OVERHEAD`] per
    /// fragment). Must exceed 65 535 + overhead to ever complete a maximal datagram.
    pub max_bytes: usize,
    /// Datagrams in progress at most.
    pub max_datagrams: usize,
    /// How long a datagram may take to complete, from its first fragment (Linux: 30 s).
    pub timeout: Duration,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        ReassemblyLimits {
            max_bytes: 512 * 1024,
            max_datagrams: 16,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Identifies the datagram a fragment belongs to (RFC 791: source, destination, protocol, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol.
    pub proto: u8,
    /// Identification.
    pub id: u16,
}

#[derive(Debug)]
struct Frag {
    offset: usize,
    data: Vec<u8>,
}

impl Frag {
    fn end(&self) -> usize {
        self.offset + self.data.len()
    }
}

#[derive(Debug)]
struct Entry {
    key: FragKey,
    first_seen: Instant,
    /// The datagram's payload length, once the last fragment arrived.
    end: Option<usize>,
    /// Disjoint, sorted by offset.
    frags: Vec<Frag>,
    received: usize,
    charged: usize,
}

/// Why a fragment was refused, for the counters.
enum Refused {
    Duplicate,
    Overlap,
    Inconsistent,
}

/// One flow's reassembly state.
#[derive(Debug)]
pub struct Reassembler {
    limits: ReassemblyLimits,
    entries: Vec<Entry>,
    bytes: usize,
    peak_bytes: usize,
    counters: ReasmCounters,
}

impl Reassembler {
    /// Empty, with `limits`.
    pub fn new(limits: ReassemblyLimits) -> Self {
        Reassembler {
            limits,
            entries: Vec::new(),
            bytes: 0,
            peak_bytes: 0,
            counters: ReasmCounters::default(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> &ReassemblyLimits {
        &self.limits
    }

    /// Bytes charged now (never above `limits.max_bytes`).
    pub fn bytes_in_use(&self) -> usize {
        self.bytes
    }

    /// The most bytes ever charged at once.
    pub fn peak_bytes(&self) -> usize {
        self.peak_bytes
    }

    /// Datagrams in progress (never above `limits.max_datagrams`).
    pub fn in_progress(&self) -> usize {
        self.entries.len()
    }

    /// The counters.
    pub fn counters(&self) -> ReasmCounters {
        self.counters
    }

    /// Counts a fragment of a protocol the flow does not reassemble (dropped by the caller).
    pub fn count_unsupported(&mut self) {
        self.counters.unsupported += 1;
    }

    /// When the oldest datagram in progress times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries
            .iter()
            .map(|e| e.first_seen + self.limits.timeout)
            .min()
    }

    /// Discards datagrams whose timeout passed at `now`.
    pub fn expire(&mut self, now: Instant) {
        let timeout = self.limits.timeout;
        let before = self.entries.len();
        let mut freed = 0;
        self.entries.retain(|e| {
            let keep = now.saturating_duration_since(e.first_seen) < timeout;
            if !keep {
                freed += e.charged;
            }
            keep
        });
        self.bytes -= freed;
        self.counters.timed_out += (before - self.entries.len()) as u64;
    }

    /// Takes one fragment: `data` at byte `offset` of the datagram's payload, `more` = the MF
    /// flag. Returns the whole payload when this fragment completes the datagram.
    pub fn insert(
        &mut self,
        key: FragKey,
        offset: usize,
        more: bool,
        data: &[u8],
        now: Instant,
    ) -> Option<Vec<u8>> {
        self.expire(now);
        let len = data.len();
        if len == 0 || (more && !len.is_multiple_of(8)) {
            self.counters.bad_len += 1;
            return None;
        }
        let end = offset + len;
        let found = self.entries.iter().position(|e| e.key == key);
        if end > MAX_PAYLOAD {
            self.counters.oversize += 1;
            if let Some(i) = found {
                self.discard(i);
            }
            return None;
        }
        let cost = len + FRAGMENT_OVERHEAD;
        if cost > self.limits.max_bytes {
            self.counters.over_budget += 1;
            if let Some(i) = found {
                self.discard(i);
            }
            return None;
        }
        let idx = match found {
            Some(i) => i,
            None => {
                while !self.entries.is_empty() && self.entries.len() >= self.limits.max_datagrams {
                    self.evict_oldest(None);
                }
                if self.limits.max_datagrams == 0 {
                    self.counters.over_budget += 1;
                    return None;
                }
                self.entries.push(Entry {
                    key,
                    first_seen: now,
                    end: None,
                    frags: Vec::new(),
                    received: 0,
                    charged: 0,
                });
                self.entries.len() - 1
            }
        };
        // Where the fragment goes, and whether it fits what is known.
        let pos = {
            let e = &self.entries[idx];
            match check(e, offset, end, more) {
                Ok(pos) => pos,
                Err(why) => {
                    match why {
                        Refused::Duplicate => self.counters.duplicate += 1,
                        Refused::Overlap => {
                            self.counters.overlap += 1;
                            self.discard(idx);
                        }
                        Refused::Inconsistent => {
                            self.counters.inconsistent += 1;
                            self.discard(idx);
                        }
                    }
                    return None;
                }
            }
        };
        if self.entries[idx].charged + cost > self.limits.max_bytes {
            self.counters.over_budget += 1;
            self.discard(idx);
            return None;
        }
        while self.bytes + cost > self.limits.max_bytes {
            if !self.evict_oldest(Some(key)) {
                break;
            }
        }
        let idx = self.entries.iter().position(|e| e.key == key)?;
        let e = &mut self.entries[idx];
        e.frags.insert(
            pos,
            Frag {
                offset,
                data: data.to_vec(),
            },
        );
        if !more {
            e.end = Some(end);
        }
        e.received += len;
        e.charged += cost;
        self.bytes += cost;
        self.peak_bytes = self.peak_bytes.max(self.bytes);
        self.counters.queued += 1;
        if e.end == Some(e.received) {
            let e = self.entries.swap_remove(idx);
            self.bytes -= e.charged;
            self.counters.reassembled += 1;
            let mut out = Vec::with_capacity(e.received);
            for f in e.frags {
                out.extend_from_slice(&f.data);
            }
            return Some(out);
        }
        None
    }

    fn discard(&mut self, idx: usize) {
        let e = self.entries.swap_remove(idx);
        self.bytes -= e.charged;
    }

    /// Evicts the oldest datagram other than `keep`; false if there is none.
    fn evict_oldest(&mut self, keep: Option<FragKey>) -> bool {
        let oldest = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| Some(e.key) != keep)
            .min_by_key(|(_, e)| e.first_seen)
            .map(|(i, _)| i);
        match oldest {
            Some(i) => {
                self.discard(i);
                self.counters.evicted += 1;
                true
            }
            None => false,
        }
    }
}

/// Checks a fragment `[offset, end)` against a datagram in progress; returns where it goes.
fn check(e: &Entry, offset: usize, end: usize, more: bool) -> Result<usize, Refused> {
    if let Some(known) = e.end {
        if end > known || (!more && end != known) {
            return Err(Refused::Inconsistent);
        }
    } else if !more && e.frags.last().is_some_and(|f| f.end() > end) {
        return Err(Refused::Inconsistent);
    }
    let pos = e.frags.partition_point(|f| f.offset < offset);
    if let Some(next) = e.frags.get(pos) {
        if next.offset == offset && next.end() == end {
            return Err(Refused::Duplicate);
        }
        if next.offset < end {
            return Err(Refused::Overlap);
        }
    }
    if let Some(prev) = pos.checked_sub(1).and_then(|p| e.frags.get(p)) {
        if prev.end() > offset {
            return Err(Refused::Overlap);
        }
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u16) -> FragKey {
        FragKey {
            src: Ipv4Addr::new(10, 0, 0, 2),
            dst: Ipv4Addr::new(10, 0, 0, 1),
            proto: 17,
            id,
        }
    }

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_add(seed)).collect()
    }

    #[test]
    fn in_order_and_reverse_order() {
        let t = Instant::now();
        let whole = data(3000, 7);
        for rev in [false, true] {
            let mut r = Reassembler::new(ReassemblyLimits::default());
            let mut chunks: Vec<(usize, &[u8], bool)> = whole
                .chunks(1480)
                .enumerate()
                .map(|(i, c)| (i * 1480, c, (i + 1) * 1480 < whole.len()))
                .collect();
            if rev {
                chunks.reverse();
            }
            let mut out = None;
            for (off, c, more) in chunks {
                assert!(out.is_none());
                out = r.insert(key(1), off, more, c, t);
            }
            assert_eq!(out.as_deref(), Some(&whole[..]));
            assert_eq!(r.bytes_in_use(), 0);
            assert_eq!(r.in_progress(), 0);
        }
    }

    #[test]
    fn a_hole_filled_late_completes() {
        let t = Instant::now();
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let d = data(24, 1);
        assert!(r.insert(key(1), 0, true, &d[..8], t).is_none());
        assert!(r.insert(key(1), 16, false, &d[16..], t).is_none());
        assert_eq!(
            r.insert(key(1), 8, true, &d[8..16], t).as_deref(),
            Some(&d[..])
        );
    }

    #[test]
    fn every_fragment_has_one_disposition() {
        let t = Instant::now();
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let d = data(32, 0);
        r.insert(key(1), 0, true, &d[..8], t); // queued
        r.insert(key(1), 0, true, &d[..8], t); // duplicate
        r.insert(key(1), 8, true, &d[..7], t); // bad_len
        r.insert(key(1), 4, true, &d[..8], t); // overlap → datagram gone
        r.insert(key(2), 65_512, false, &d[..8], t); // oversize
        let c = r.counters();
        assert_eq!(
            (c.queued, c.duplicate, c.bad_len, c.overlap, c.oversize),
            (1, 1, 1, 1, 1)
        );
        assert_eq!(r.in_progress(), 0);
        assert_eq!(r.bytes_in_use(), 0);
    }
}
