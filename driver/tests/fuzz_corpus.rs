//! Replays the committed cargo-fuzz corpora (`driver/fuzz/corpus/<target>/`) through the bodies
//! the fuzz targets run, so every seed (and every crash found and added later) is a test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // in tests, a failed expectation is the failure

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            body(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n >= 20, "{target}: only {n} corpus files");
}

#[test]
fn rx_frames_corpus() {
    replay("rx_frames", nemflow_driver::fuzzing::rx_frames);
}

#[test]
fn tx_hostile_corpus() {
    replay("tx_hostile", nemflow_driver::fuzzing::tx_hostile);
}
