//! The simulator: scenario parsing and validation, offered loads, CSV, the `sched-sim` binary.

// A test crate: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use nemflow_sched::sim::{self, Load, RateBasis, Scenario, SimError};
use nemflow_sched::SchedError;

const BASE: &str = "
link_rate_bps: 100000000
frame_bytes: 1514
duration_s: 2
";

fn parse(flows: &str) -> Result<Scenario, SimError> {
    Scenario::from_yaml(&format!("{BASE}flows:\n{flows}"), "test.yaml")
}

#[test]
fn parses_loads_and_defaults() {
    let sc = parse(
        "  - { name: a, period_ms: 100, slice_ms: 4, load: saturate }
  - { name: b, period_ms: 10, load: 2000000, extra: true, start_s: 0.5, stop_s: 1.5, latency_hint_ms: 0.5 }
  - { name: c, period_ms: 10, load: 5.0e6, extra: true, frame_bytes: 64, queue_frames: 8 }",
    )
    .unwrap();
    assert_eq!(sc.bin_ms, 200.0);
    assert_eq!(sc.rate_basis, RateBasis::Frame);
    assert_eq!(sc.reserve_ppm, 0);
    assert_eq!(sc.flows[0].load, Load::Saturate);
    assert_eq!(sc.flows[1].load, Load::BitsPerSecond(2_000_000));
    assert_eq!(sc.flows[2].load, Load::BitsPerSecond(5_000_000));
    assert_eq!(sc.flows[1].latency_hint_ms, Some(0.5));
    assert_eq!(sc.flows[2].queue_frames, 8);
}

#[test]
fn unknown_fields_are_rejected() {
    let err =
        Scenario::from_yaml(&format!("{BASE}link_speed: 10\nflows: []\n"), "x.yaml").unwrap_err();
    assert!(matches!(&err, SimError::Parse { .. }), "{err}");
    assert!(err.to_string().contains("link_speed"), "{err}");
    let err = parse("  - { name: a, period_ms: 100, slice: 4, load: saturate }").unwrap_err();
    assert!(err.to_string().contains("slice"), "{err}");
}

#[test]
fn bad_loads_are_rejected() {
    for load in ["fast", "0", "-5", "1.5"] {
        let err = parse(&format!(
            "  - {{ name: a, period_ms: 100, slice_ms: 4, load: {load} }}"
        ))
        .unwrap_err();
        assert!(matches!(err, SimError::Parse { .. }), "load {load}: {err}");
    }
}

#[test]
fn invalid_values_name_the_field() {
    let cases = [
        ("  - { name: a, period_ms: 100, slice_ms: -4, load: saturate }", "flows[0].slice_ms"),
        ("  - { name: a, period_ms: 100, slice_ms: 200, load: saturate }", "flows[0].slice_ms"),
        ("  - { name: a, period_ms: 100, load: saturate }", "flows[0].slice_ms"),
        ("  - { name: a, period_ms: 0, slice_ms: 0, extra: true, load: saturate }", "flows[0].period_ms"),
        ("  - { name: a, period_ms: 10, slice_ms: 1, latency_hint_ms: 0, load: saturate }", "flows[0].latency_hint_ms"),
        ("  - { name: a, period_ms: 100, slice_ms: 4, load: saturate, start_s: 2, stop_s: 1 }", "flows[0].stop_s"),
        ("  - { name: a, period_ms: 100, slice_ms: 4, load: saturate, queue_frames: 0 }", "flows[0].queue_frames"),
        ("  - { name: a, period_ms: 100, slice_ms: 4, load: saturate, frame_bytes: 0 }", "flows[0].frame_bytes"),
        (
            "  - { name: a, period_ms: 100, slice_ms: 4, load: saturate, id: 3 }\n  - { name: b, period_ms: 100, slice_ms: 4, load: saturate, id: 3 }",
            "flows[1].id",
        ),
    ];
    for (flows, field) in cases {
        let err = sim::run(&parse(flows).unwrap()).unwrap_err();
        match &err {
            SimError::Invalid { field: f, .. } => assert_eq!(f, field, "{err}"),
            other => panic!("{flows}: expected an invalid field, got {other}"),
        }
    }
}

#[test]
fn admission_failure_is_reported_for_the_flow() {
    let sc = parse(
        "  - { name: big, period_ms: 100, slice_ms: 70, load: saturate }
  - { name: late, period_ms: 100, slice_ms: 40, load: saturate, start_s: 1 }",
    )
    .unwrap();
    match sim::run(&sc).unwrap_err() {
        SimError::Sched {
            flow,
            source: SchedError::Admission { max_slice_ns, .. },
        } => {
            assert_eq!(flow, "late");
            assert_eq!(max_slice_ns, 30_000_000);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn offered_load_below_the_guarantee_passes_and_above_is_policed() {
    let mut sc = parse(
        "  - { name: light, period_ms: 10, slice_ms: 1, load: 2000000 }
  - { name: heavy, period_ms: 10, slice_ms: 1, load: 20000000, queue_frames: 16 }
  - { name: stopper, period_ms: 10, slice_ms: 0, extra: true, load: saturate, stop_s: 1 }",
    )
    .unwrap();
    sc.rate_basis = RateBasis::Frame;
    let r = sim::run(&sc).unwrap();
    assert_eq!(r.bins(), 10);
    for b in 1..r.bins() {
        // 2 Mbit/s of frames offered, 10 Mbit/s of wire guaranteed: all of it gets through.
        let light = r.mbps(0, b);
        assert!((light - 2.0).abs() < 0.07, "light bin {b}: {light}");
        // 20 Mbit/s offered, no slack: held to the 10% guarantee (9.84 Mbit/s of frame bytes).
        let heavy = r.mbps(1, b);
        assert!(
            (heavy - 10.0 * 1514.0 / 1538.0).abs() < 0.1,
            "heavy bin {b}: {heavy}"
        );
    }
    assert!(
        r.flows[1].frames_dropped > 0,
        "the heavy flow's queue overflows"
    );
    assert_eq!(r.flows[0].frames_dropped, 0);
    // The best-effort flow took the rest while it ran, and nothing after it stopped (the frame
    // on the wire at 1 s ends in the bin after).
    assert!(r.mbps(2, 2) > 70.0);
    assert!(r.flows[2].bits_per_bin[5] <= 1514 * 8);
    for b in 6..10 {
        assert_eq!(r.flows[2].bits_per_bin[b], 0);
    }
    assert!(r.flows[2].stats.is_some());
}

#[test]
fn csv_has_one_row_per_flow_and_bin() {
    let sc = parse(
        "  - { name: a, period_ms: 100, slice_ms: 4, load: saturate }
  - { name: \"b,c\", period_ms: 100, slice_ms: 8, load: saturate }",
    )
    .unwrap();
    let r = sim::run(&sc).unwrap();
    let mut buf = Vec::new();
    r.write_csv(&mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "time_s,flow,mbps");
    assert_eq!(lines.len(), 1 + 10 * 2);
    let mbps = |line: &str| line.rsplit(',').next().unwrap().parse::<f64>().unwrap();
    assert!(lines[1].starts_with("0.000,a,"), "{}", lines[1]);
    assert!((mbps(lines[1]) - r.mbps(0, 0)).abs() < 1e-4);
    assert!(lines[2].starts_with("0.000,\"b,c\","), "{}", lines[2]);
    assert!((mbps(lines[2]) - r.mbps(1, 0)).abs() < 1e-4);
    assert!(lines[20].starts_with("1.800,\"b,c\","), "{}", lines[20]);
}

#[test]
fn binary_runs_a_shipped_scenario() {
    let exe = env!("CARGO_BIN_EXE_sched-sim");
    let help = Command::new(exe).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--basis"));
    let dir = std::env::temp_dir().join(format!("sched-sim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("fig5a.csv");
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/fig5a.yaml");
    let run = Command::new(exe)
        .args([scenario, "--basis", "wire", "--summary", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let csv = std::fs::read_to_string(&out).unwrap();
    assert_eq!(csv.lines().count(), 1 + 100 * 6);
    assert!(csv.lines().any(|l| l.starts_with("19.800,24ms,")));
    assert!(String::from_utf8_lossy(&run.stderr).contains("24ms"));
    let bad = Command::new(exe)
        .arg(dir.join("missing.yaml"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("sched-sim: cannot read scenario"));
    std::fs::remove_dir_all(&dir).unwrap();
}
