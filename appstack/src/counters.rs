//! Per-flow stack counters: what was sent and delivered, and every received frame dropped, by
//! reason. Plain numbers, private to the flow; each layer keeps its own section.
//!
//! Accounting holds exactly: every frame popped from the RX channel ends in one *disposition*
//! (see [`StackCounters::unaccounted_frames`]), which the fuzz target and tests assert.

/// The channel endpoints as the stack sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelCounters {
    /// Frames popped from the RX channel.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Iorecs the driver returned that did not name a posted buffer (discarded; rbuf counts them
    /// by kind).
    pub rx_invalid_iorecs: u64,
    /// Frames pushed on the TX channel.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Times the TX FIFO had no room for all frames of a datagram at once (the rest waited).
    pub tx_fifo_full: u64,
}

/// Ethernet receive checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EthCounters {
    /// Frames passed up.
    pub rx_up: u64,
    /// Dropped: shorter than an Ethernet header.
    pub truncated: u64,
    /// Dropped: unicast to another MAC.
    pub wrong_dst: u64,
    /// Dropped: not the flow's ethertype.
    pub wrong_ethertype: u64,
}

impl EthCounters {
    /// Frames this layer dropped.
    pub fn dropped(&self) -> u64 {
        self.truncated + self.wrong_dst + self.wrong_ethertype
    }
}

/// IPv4 receive checks (per frame).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ipv4Counters {
    /// Unfragmented datagrams passed up.
    pub rx_up: u64,
    /// Dropped: shorter than its header or total length, header length < 20, or total length <
    /// header length.
    pub truncated: u64,
    /// Dropped: version is not 4.
    pub bad_version: u64,
    /// Dropped: header checksum wrong.
    pub bad_checksum: u64,
    /// Dropped: destination is not this flow's address (nor a broadcast or multicast address).
    pub wrong_dst: u64,
    /// Dropped: source is not the connected flow's remote.
    pub wrong_src: u64,
    /// Dropped: protocol is neither the flow's nor ICMP.
    pub wrong_proto: u64,
    /// Frames handed to ICMP error processing.
    pub icmp: u64,
    /// Frames handed to reassembly.
    pub fragments: u64,
    /// Datagrams sent.
    pub tx_datagrams: u64,
    /// Of those, datagrams sent as several fragments.
    pub tx_fragmented: u64,
    /// Fragments sent (frames of fragmented datagrams).
    pub tx_fragments: u64,
}

impl Ipv4Counters {
    /// Frames this layer dropped itself (fragments and ICMP are accounted separately).
    pub fn dropped(&self) -> u64 {
        self.truncated
            + self.bad_version
            + self.bad_checksum
            + self.wrong_dst
            + self.wrong_src
            + self.wrong_proto
    }
}

/// Reassembly: one disposition per fragment (`queued` or a drop reason), plus what happened to
/// datagrams in progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReasmCounters {
    /// Fragments accepted into a datagram in progress.
    pub queued: u64,
    /// Fragments dropped: the same offset and length as one already held (the datagram goes on).
    pub duplicate: u64,
    /// Fragments dropped: a non-final fragment whose length is zero or not a multiple of 8.
    pub bad_len: u64,
    /// Fragments dropped: the protocol is not one the flow reassembles.
    pub unsupported: u64,
    /// Fragments that overlapped one already held: the whole datagram was discarded (RFC 5722
    /// practice, as Linux does for IPv4).
    pub overlap: u64,
    /// Fragments that would make the datagram longer than 65535 bytes: datagram discarded.
    pub oversize: u64,
    /// Fragments that contradict the datagram's known end (a second last fragment, data past the
    /// end): datagram discarded.
    pub inconsistent: u64,
    /// Fragments whose datagram alone would exceed the byte budget: datagram discarded.
    pub over_budget: u64,
    /// Datagrams completed and passed up.
    pub reassembled: u64,
    /// Datagrams discarded because their timeout passed.
    pub timed_out: u64,
    /// Datagrams discarded to make room (byte budget or datagram limit).
    pub evicted: u64,
}

impl ReasmCounters {
    /// Fragments dropped on arrival (the fragment itself, not counting datagrams discarded later).
    pub fn dropped(&self) -> u64 {
        self.duplicate
            + self.bad_len
            + self.unsupported
            + self.overlap
            + self.oversize
            + self.inconsistent
            + self.over_budget
    }
}

/// ICMP error processing: one disposition per ICMP frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IcmpCounters {
    /// Errors about a datagram from this flow's address and protocol, passed to the transport
    /// layer (which matches the ports).
    pub passed_up: u64,
    /// Dropped: too short, or the quoted header is unusable.
    pub malformed: u64,
    /// Dropped: ICMP checksum wrong.
    pub bad_checksum: u64,
    /// Dropped: not an error message this stack handles (echo, redirect, ...), or fragmented.
    pub ignored: u64,
    /// Dropped: the quoted datagram was not from this flow's address and protocol.
    pub not_for_flow: u64,
}

impl IcmpCounters {
    /// ICMP frames dropped.
    pub fn dropped(&self) -> u64 {
        self.malformed + self.bad_checksum + self.ignored + self.not_for_flow
    }
}

/// UDP receive checks (per datagram, reassembled or not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpCounters {
    /// Datagrams passed to the application.
    pub rx_up: u64,
    /// Dropped: shorter than 8 bytes, or the length field is < 8 or past the IP payload.
    pub bad_len: u64,
    /// Dropped: checksum wrong.
    pub bad_checksum: u64,
    /// Dropped: destination port is not the flow's.
    pub wrong_port: u64,
    /// Dropped: source port is not the connected flow's remote port.
    pub wrong_src: u64,
    /// Accepted with checksum 0 (none computed by the sender, RFC 768).
    pub no_checksum: u64,
    /// ICMP errors whose quoted UDP header is this flow's: surfaced to the application.
    pub icmp_delivered: u64,
    /// ICMP errors whose quoted UDP header is not this flow's.
    pub icmp_not_for_flow: u64,
    /// Datagrams sent.
    pub tx_datagrams: u64,
    /// Payload bytes sent.
    pub tx_bytes: u64,
}

impl UdpCounters {
    /// Datagrams dropped.
    pub fn dropped(&self) -> u64 {
        self.bad_len + self.bad_checksum + self.wrong_port + self.wrong_src
    }
}

/// What the application side of the flow saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowCounters {
    /// Datagrams (or raw frames) handed to the application.
    pub rx_delivered: u64,
    /// Payload bytes handed to the application.
    pub rx_bytes: u64,
    /// `recv` calls whose buffer was smaller than the datagram (the rest was discarded).
    pub rx_truncated: u64,
    /// ICMP error events dropped because the application did not read them (queue full).
    pub events_overflowed: u64,
}

/// All counters of one flow's stack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackCounters {
    /// The channel.
    pub channel: ChannelCounters,
    /// Ethernet.
    pub eth: EthCounters,
    /// IPv4.
    pub ipv4: Ipv4Counters,
    /// IPv4 reassembly.
    pub reasm: ReasmCounters,
    /// ICMP errors.
    pub icmp: IcmpCounters,
    /// UDP.
    pub udp: UdpCounters,
    /// The flow's application interface.
    pub flow: FlowCounters,
}

impl StackCounters {
    /// Frames dropped anywhere on the receive path (fragments and datagrams discarded as a whole
    /// count each of their frames once, when it arrived or when its datagram was discarded).
    pub fn rx_dropped(&self) -> u64 {
        self.eth.dropped()
            + self.ipv4.dropped()
            + self.reasm.dropped()
            + self.icmp.dropped()
            + self.udp.dropped()
            + self.udp.icmp_not_for_flow
    }

    /// Frames popped from the channel whose disposition is not recorded: 0 for a correct stack
    /// on an Ethernet/IPv4 flow. Every frame is dropped by Ethernet, passed up by it; every frame
    /// IPv4 gets is dropped by it, passed up whole, handed to ICMP or handed to reassembly; every
    /// datagram UDP gets (whole or reassembled) is dropped by it or passed up.
    /// (Returned signed so a test sees a double count, too.)
    pub fn unaccounted_frames(&self) -> i64 {
        let eth = self.channel.rx_frames as i64 - (self.eth.dropped() + self.eth.rx_up) as i64;
        let ip = self.eth.rx_up as i64
            - (self.ipv4.dropped() + self.ipv4.rx_up + self.ipv4.icmp + self.ipv4.fragments) as i64;
        let icmp = self.ipv4.icmp as i64 - (self.icmp.dropped() + self.icmp.passed_up) as i64;
        let icmp_udp = self.icmp.passed_up as i64
            - (self.udp.icmp_delivered + self.udp.icmp_not_for_flow) as i64;
        let frag = self.ipv4.fragments as i64 - (self.reasm.dropped() + self.reasm.queued) as i64;
        let udp = (self.ipv4.rx_up + self.reasm.reassembled) as i64
            - (self.udp.dropped() + self.udp.rx_up) as i64;
        eth.abs() + ip.abs() + icmp.abs() + icmp_udp.abs() + frag.abs() + udp.abs()
    }
}
