//! The driver binary's answers to bad input: one readable line on stderr and a non-zero exit,
//! never a panic or a backtrace.

#![allow(clippy::unwrap_used, clippy::expect_used)] // in tests, a failed expectation is the failure

use std::path::Path;
use std::process::{Command, Output};

use nemflow_testkit::{dpdk_runtime_dir, require_root, unique_name, DpdkPrefixGuard};

fn driver(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nemflow-driver"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run nemflow-driver")
}

/// Asserts a failed run that printed exactly one line, starting `nemflow-driver: `, containing
/// `needle`; returns the line.
fn one_error_line(out: &Output, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail: {stderr}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit code 1, not a signal or panic: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line, got: {stderr}");
    assert!(lines[0].starts_with("nemflow-driver: "), "{stderr}");
    assert!(lines[0].contains(needle), "`{needle}` in: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    lines[0].to_owned()
}

fn write_config(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write config");
    path.to_string_lossy().into_owned()
}

fn tap_config(iface: &str, extra_eal: &str) -> String {
    format!(
        "eal:\n  memory_mb: 256\n  extra_args: [{extra_eal}]\nport:\n  vdev: net_tap0,iface={iface}\n"
    )
}

#[test]
fn bad_eal_argument_is_one_clear_line() {
    require_root();
    let dir = tempdir();
    let prefix = DpdkPrefixGuard::new("cli");
    let config = write_config(
        &dir,
        "bad.yaml",
        &tap_config(&unique_name("nfc"), "\"--bogus-option\""),
    );
    let out = driver(&[
        "--config",
        &config,
        "--smoke",
        "--file-prefix",
        &prefix.prefix,
    ]);
    let line = one_error_line(&out, "--bogus-option");
    assert!(line.contains("EAL"), "{line}");
    assert!(
        !dpdk_runtime_dir(&prefix.prefix).exists(),
        "nothing left behind"
    );
}

#[test]
fn malformed_configs_are_one_clear_line() {
    let dir = tempdir();
    let cases = [
        ("syntax.yaml", "port: [\n", ":1:"),
        (
            "unknown.yaml",
            "port:\n  vdev: net_tap0\n  bogus: 1\n",
            "unknown field `bogus`",
        ),
        (
            "vdev.yaml",
            "port:\n  vdev: net_nosuch0\n",
            "unknown vdev driver `net_nosuch`",
        ),
        (
            "rate.yaml",
            "port:\n  vdev: net_tap0\nlink:\n  rate_bps: 12\n",
            "link.rate_bps",
        ),
        ("nodev.yaml", "eal:\n  no_huge: true\n", "names no device"),
    ];
    for (name, text, needle) in cases {
        let config = write_config(&dir, name, text);
        let out = driver(&["--config", &config, "--check-config"]);
        let line = one_error_line(&out, needle);
        assert!(line.contains(name), "names the file: {line}");
    }
    let out = driver(&["--config", "/nonexistent/nemflow.yaml", "--check-config"]);
    one_error_line(&out, "cannot read config");
}

#[test]
fn check_config_accepts_the_shipped_default() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/tap.yaml");
    let out = driver(&["--config", &config.to_string_lossy(), "--check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn busy_interface_is_refused_before_dpdk_starts() {
    require_root();
    let dir = tempdir();
    let config = write_config(&dir, "busy.yaml", &tap_config("lo", ""));
    let out = driver(&["--config", &config, "--smoke"]);
    one_error_line(&out, "`lo` already exists");
}

#[test]
fn smoke_run_talks_to_the_kernel_side() {
    require_root();
    let dir = tempdir();
    let iface = unique_name("nfs");
    let prefix = DpdkPrefixGuard::new("smk");
    let _guard = nemflow_testkit::IfaceGuard(iface.clone());
    let config = write_config(&dir, "smoke.yaml", &tap_config(&iface, ""));
    let child = Command::new(env!("CARGO_BIN_EXE_nemflow-driver"))
        .args([
            "--config",
            &config,
            "--smoke",
            "--pings",
            "2",
            "--file-prefix",
            &prefix.prefix,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run nemflow-driver");
    let netns = Path::new("/var/run/netns").join(format!("nemflow-smoke-{}", child.id()));
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ARP: 10.77.0.2 is at 02:4e:46:ff:00:02"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("echo reply from 10.77.0.2").count(),
        2,
        "{stdout}"
    );
    assert!(!nemflow_testkit::iface_exists(&iface), "tap removed");
    assert!(
        !dpdk_runtime_dir(&prefix.prefix).exists(),
        "runtime dir removed by the driver"
    );
    assert!(!netns.exists(), "{} removed", netns.display());
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

#[test]
fn not_root_is_one_clear_line() {
    require_root(); // to be able to drop to another uid
    use std::os::unix::process::CommandExt;
    let dir = tempdir();
    let config = write_config(&dir, "user.yaml", &tap_config(&unique_name("nfu"), ""));
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nemflow-driver"))
        .args(["--config", &config, "--smoke"])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run nemflow-driver as nobody");
    one_error_line(&out, "must run as root");
}

#[test]
fn missing_tun_device_is_one_clear_line() {
    require_root();
    let dir = tempdir();
    let config = write_config(&dir, "tun.yaml", &tap_config(&unique_name("nft"), ""));
    // A private mount namespace in which /dev/net is empty: no tun device.
    let script = format!(
        "mount -t tmpfs none /dev/net && exec {} --config {config} --smoke",
        env!("CARGO_BIN_EXE_nemflow-driver")
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    one_error_line(&out, "/dev/net/tun");
}
