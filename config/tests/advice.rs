//! Valid settings that are likely to hurt are reported as advice, not refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // in tests, a failed expectation is the failure

use std::path::Path;

use nemflow_config::Config;

#[test]
fn a_pool_smaller_than_both_rings_and_two_bursts_is_advised_against() {
    // 64 + 64 + 2 × 256 = 640 mbufs wanted; 128 passes validation (twice the larger ring).
    let text = "port:\n  vdev: net_tap0,iface=nft0\n  rx_desc: 64\n  tx_desc: 64\n  mbufs: 128\n\
                driver:\n  burst: 256\n";
    let config = Config::parse(text, Path::new("small.yaml")).unwrap();
    let advice = config.advice();
    assert_eq!(advice.len(), 1, "{advice:?}");
    assert!(advice[0].contains("port.mbufs = 128"), "{}", advice[0]);
    assert!(advice[0].contains("use at least 640"), "{}", advice[0]);
}

#[test]
fn the_defaults_and_the_shipped_config_need_no_advice() {
    let config =
        Config::parse("port:\n  vdev: net_tap0,iface=nft0\n", Path::new("d.yaml")).unwrap();
    assert_eq!(config.advice(), Vec::<String>::new());
    let shipped = Config::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tap.yaml")).unwrap();
    assert_eq!(shipped.advice(), Vec::<String>::new());
}
