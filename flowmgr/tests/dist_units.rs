//! The systemd units in `dist/systemd/`: ordered and bound as the daemons need, started from
//! `/etc/nemflow/nemflow.yaml`, and valid for systemd itself (`systemd-analyze verify`, with the
//! binaries pointed at the workspace's).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use nemflow_testkit::driver::workspace_binary;

fn unit(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dist/systemd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn has(text: &str, line: &str) -> bool {
    text.lines().any(|l| l.trim() == line)
}

#[test]
fn units_order_the_daemons_and_use_the_system_config() {
    let driver = unit("nemflow-driver.service");
    let flowmgr = unit("nemflow-flowmgr.service");
    for (text, bin) in [(&driver, "nemflow-driver"), (&flowmgr, "nemflow-flowmgr")] {
        assert!(
            has(
                text,
                &format!(
                    "ExecStart=/usr/bin/{bin} --config /etc/nemflow/nemflow.yaml --log-format json"
                )
            ),
            "{bin}: ExecStart"
        );
        assert!(
            has(
                text,
                &format!(
                    "ExecStartPre=/usr/bin/{bin} --config /etc/nemflow/nemflow.yaml --check-config"
                )
            ),
            "{bin}: config checked first"
        );
        assert!(has(text, "Type=notify"), "{bin}: readiness from the daemon");
    }
    assert!(has(&flowmgr, "Requires=nemflow-driver.service"));
    assert!(has(&flowmgr, "After=nemflow-driver.service"));
    assert!(has(&flowmgr, "BindsTo=nemflow-driver.service"));
    assert!(has(&driver, "Before=nemflow-flowmgr.service"));
    // Restarts: both come back after a crash, and a restarted driver brings a fresh flow
    // manager with it (the old one exits when it loses the driver).
    for text in [&driver, &flowmgr] {
        assert!(has(text, "Restart=on-failure"));
    }
    assert!(has(&driver, "Wants=nemflow-flowmgr.service"));
    assert!(has(&flowmgr, "PartOf=nemflow-driver.service"));

    let dir = tempfile::tempdir().unwrap();
    let bin_dir = workspace_binary("nemflow-driver")
        .parent()
        .unwrap()
        .to_owned();
    for (name, text) in [
        ("nemflow-driver.service", &driver),
        ("nemflow-flowmgr.service", &flowmgr),
    ] {
        let local = text.replace("/usr/bin/", &format!("{}/", bin_dir.display()));
        std::fs::write(dir.path().join(name), local).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("nemflow-driver.service"))
        .arg(dir.path().join("nemflow-flowmgr.service"))
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify: {err}"
    );
}
