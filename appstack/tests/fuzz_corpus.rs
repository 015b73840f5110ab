//! Replays the `rx_frames` fuzz target's corpus (seeds from `fuzz/gen_corpus.py`, plus whatever
//! the fuzzer found and was kept) through the same body the fuzzer runs.

use std::path::Path;

#[test]
fn rx_frames_corpus_replays_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/rx_frames");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        nemflow_appstack::testing::fuzz_rx(&data);
        n += 1;
    }
    assert!(n >= 24, "only {n} corpus files in {}", dir.display());
}

/// The seeds exercise what they are named for, checked through what the flow delivered and
/// its counters (so the corpus is not all drop paths).
#[test]
fn seeds_reach_their_paths() {
    use nemflow_appstack::testing::fuzz_rx;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/rx_frames");
    let run = |name: &str| fuzz_rx(&std::fs::read(dir.join(name)).expect("seed")).expect(name);
    assert_eq!(run("udp_hello").delivered, 1);
    assert_eq!(run("udp_hello_connected").delivered, 1);
    assert_eq!(run("udp_zero_checksum").counters.udp.no_checksum, 1);
    assert_eq!(run("udp_empty").delivered, 1);
    assert_eq!(run("ip_options").delivered, 1);
    assert_eq!(run("ip_padding").delivered, 1);
    assert_eq!(run("ip_broadcast").delivered, 1);
    assert_eq!(run("udp_bad_checksum").counters.udp.bad_checksum, 1);
    assert_eq!(run("udp_len_too_big").counters.udp.bad_len, 1);
    assert_eq!(run("ip_bad_checksum").counters.ipv4.bad_checksum, 1);
    assert_eq!(run("ip_wrong_src").counters.ipv4.wrong_src, 1);
    assert_eq!(run("eth_wrong_dst").counters.eth.wrong_dst, 1);
    assert_eq!(run("eth_vlan").counters.eth.wrong_ethertype, 1);
    for name in [
        "frag_in_order",
        "frag_reverse",
        "frag_duplicate",
        "frag_mtu68",
    ] {
        let o = run(name);
        assert_eq!(
            (o.delivered, o.counters.reasm.reassembled),
            (1, 1),
            "{name}"
        );
    }
    assert_eq!(run("frag_duplicate").counters.reasm.duplicate, 1);
    assert_eq!(run("frag_overlap").counters.reasm.overlap, 1);
    assert_eq!(run("frag_missing_timeout").counters.reasm.timed_out, 1);
    assert_eq!(run("frag_oversize").counters.reasm.oversize, 1);
    assert_eq!(run("frag_two_interleaved").delivered, 2);
    let o = run("icmp_port_unreachable");
    assert_eq!((o.refused, o.events), (1, 1));
    assert_eq!(run("icmp_frag_needed").events, 1);
    assert_eq!(run("icmp_host_unreachable_unconnected").events, 1);
    assert_eq!(run("icmp_echo").counters.icmp.ignored, 1);
    assert_eq!(run("icmp_bad_checksum").counters.icmp.bad_checksum, 1);
    assert_eq!(run("icmp_short_quote").counters.icmp.malformed, 1);
}
