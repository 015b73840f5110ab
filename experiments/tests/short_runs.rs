//! Short versions of the four experiments (a few seconds each), judged by the same criteria as
//! the full runs. Their names match `_rates`, so nextest runs each with the machine to itself.

#![allow(clippy::unwrap_used, clippy::expect_used)] // in tests, a failed expectation is the failure

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use nemflow_experiments::definition::Definition;
use nemflow_experiments::experiments;
use nemflow_experiments::run::RunOptions;

fn short(name: &str, duration_s: f64) {
    nemflow_testkit::require_root();
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../config/experiments/{name}.yaml"));
    let def = Definition::load(&path).unwrap().with_duration(duration_s);
    let out = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        out: out.path().to_path_buf(),
        capture: None,
        progress: false,
        stop: Arc::new(AtomicBool::new(false)),
    };
    let summary = experiments::run(&def, &opts).unwrap();
    let table = summary.table();
    eprintln!("{table}");
    for file in ["summary.json", "summary.txt"] {
        assert!(out.path().join(file).exists(), "{file} written");
    }
    let pngs = std::fs::read_dir(out.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "png")
        })
        .count();
    assert!(pngs >= 1, "a figure was drawn");
    assert!(
        summary.pass,
        "experiment {name} failed its criteria:\n{table}"
    );
}

#[test]
fn fig5a_rates_short() {
    short("5a", 5.0);
}

#[test]
fn fig5b_rates_short() {
    short("5b", 10.0);
}

#[test]
fn fig6_rates_short() {
    short("6", 5.0);
}

#[test]
fn fig7_rates_short() {
    short("7", 8.0);
}

#[test]
fn soak_rates_short() {
    nemflow_testkit::require_root();
    let out = tempfile::tempdir().unwrap();
    let opts = nemflow_experiments::soak::SoakOptions {
        duration: std::time::Duration::from_secs(20),
        window: std::time::Duration::from_secs(10),
        rate_bps: 100_000_000,
    };
    let run = RunOptions {
        out: out.path().to_path_buf(),
        capture: None,
        progress: false,
        stop: Arc::new(AtomicBool::new(false)),
    };
    let summary = nemflow_experiments::soak::soak(&opts, &run).unwrap();
    let table = summary.table();
    eprintln!("{table}");
    assert!(summary.pass, "the soak failed its criteria:\n{table}");
}
