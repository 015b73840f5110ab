//! Internet checksum arithmetic (RFC 1071) for header templates: a running ones' complement sum
//! that per-packet fields are added to, so a header's checksum is its template's precomputed sum
//! plus a few words (RFC 1624 style incremental update). Bulk data goes through
//! `smoltcp::wire::checksum::data`.

use std::net::Ipv4Addr;

use smoltcp::wire::checksum;

/// A ones' complement sum in progress. Words added with [`Csum::word`] are 16-bit fields at even
/// offsets of their header; bytes added with [`Csum::bytes`] are consecutive data, and an odd
/// number of them shifts what follows by one byte (handled by byte-swapping, RFC 1071 §2(B)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Csum {
    acc: u64,
    odd: bool,
}

impl Csum {
    /// The empty sum.
    pub const fn new() -> Self {
        Csum { acc: 0, odd: false }
    }

    /// Adds one 16-bit header field.
    #[inline]
    pub fn word(&mut self, w: u16) {
        self.acc += u64::from(w);
    }

    /// Adds an IPv4 address (two words).
    #[inline]
    pub fn addr(&mut self, a: Ipv4Addr) {
        let o = a.octets();
        self.word(u16::from_be_bytes([o[0], o[1]]));
        self.word(u16::from_be_bytes([o[2], o[3]]));
    }

    /// Adds consecutive data bytes.
    #[inline]
    pub fn bytes(&mut self, b: &[u8]) {
        let s = checksum::data(b);
        self.acc += u64::from(if self.odd { s.swap_bytes() } else { s });
        if b.len() % 2 == 1 {
            self.odd = !self.odd;
        }
    }

    /// Adds another sum (of words at even positions).
    #[inline]
    pub fn add(&mut self, other: Csum) {
        self.acc += u64::from(other.fold());
    }

    /// The folded 16-bit ones' complement sum.
    #[inline]
    pub fn fold(&self) -> u16 {
        let mut s = self.acc;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// The checksum field's value: the complement of the sum.
    #[inline]
    pub fn finish(&self) -> u16 {
        !self.fold()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example_header() {
        // The classic IPv4 header whose checksum is 0xb861.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let mut c = Csum::new();
        c.bytes(&hdr);
        assert_eq!(c.finish(), 0xb861);
        // Incrementally: the template without length, plus the length word.
        let mut t = hdr;
        t[2] = 0;
        t[3] = 0;
        let mut c = Csum::new();
        c.bytes(&t);
        c.word(0x0073);
        assert_eq!(c.finish(), 0xb861);
    }

    #[test]
    fn odd_segments_sum_like_one_buffer() {
        let data: Vec<u8> = (0..=250u8).map(|i| i.wrapping_mul(37)).collect();
        let mut whole = Csum::new();
        whole.bytes(&data);
        for cut in [1usize, 2, 3, 7, 8, 100, 249] {
            for cut2 in [cut, cut + 1, 250] {
                let mut parts = Csum::new();
                parts.bytes(&data[..cut]);
                parts.bytes(&data[cut..cut2]);
                parts.bytes(&data[cut2..]);
                assert_eq!(parts.fold(), whole.fold(), "cuts {cut} {cut2}");
            }
        }
    }
}
