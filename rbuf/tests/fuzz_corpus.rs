//! Replays the committed cargo-fuzz corpora (`fuzz/corpus/<target>/`) through the same bodies the
//! fuzz targets run, so every seed (and every crash found and added later) is an ordinary test.

#![allow(clippy::unwrap_used)] // a test helper outside #[test] fns

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_file() {
            body(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n >= 20, "{target}: only {n} corpus files");
}

#[test]
fn iorec_corpus() {
    replay("iorec", nemflow_rbuf::testing::fuzz_iorec);
}

#[test]
fn control_corpus() {
    replay("control", nemflow_rbuf::testing::fuzz_control);
}
