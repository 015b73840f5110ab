//! Every field of the configuration, given an invalid value, is refused with one line that
//! names the file, the line, and the field.

#![allow(clippy::unwrap_used, clippy::expect_used)] // in tests, a failed expectation is the failure

use std::path::Path;

use nemflow_config::Config;

/// A valid base: a device, nothing else.
const BASE: &str = "port:\n  vdev: net_tap0,iface=nft0\n";

/// (section, `key: value` lines under it, the line the bad value is on counting from 1 in the
/// whole file, what the message must name).
fn cases() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        ("eal", "  file_prefix: \"a/b\"", "file_prefix"),
        ("eal", "  lcores: [1, 2]", "lcores"),
        ("eal", "  no_huge: maybe", "no_huge"),
        ("eal", "  memory_mb: -1", "memory_mb"),
        ("eal", "  extra_args: 12", "extra_args"),
        ("port", "  pci: [1]", "pci"),
        ("port", "  rx_desc: 0", "rx_desc"),
        ("port", "  tx_desc: 70000", "tx_desc"),
        ("port", "  mbufs: 10", "mbufs"),
        ("port", "  max_frame_bytes: 20", "max_frame_bytes"),
        (
            "port",
            "  tap_peer:\n    netns: \"x/y\"\n    ip: 10.77.0.2/24",
            "netns",
        ),
        (
            "port",
            "  tap_peer:\n    netns: ok\n    ip: 10.78.0.2/24",
            "ip",
        ),
        ("host", "  ip: 10.77.0.1", "ip"),
        ("host", "  mac: 02:00:00:00:00", "mac"),
        ("host", "  gateway: 10.1.1.1", "gateway"),
        (
            "host",
            "  routes:\n    - { dest: 10.9.0.0/16, via: 10.8.0.1 }",
            "routes",
        ),
        (
            "host",
            "  routes:\n    - { dest: 10.9.0.0, via: 10.77.0.9 }",
            "dest",
        ),
        ("link", "  rate_bps: 5", "rate_bps"),
        ("driver", "  control_socket: [1]", "control_socket"),
        ("driver", "  idle: lazy", "idle"),
        ("driver", "  max_sleep_us: -3", "max_sleep_us"),
        ("driver", "  spin_us: x", "spin_us"),
        ("driver", "  lookahead_us: 5000000", "lookahead_us"),
        ("driver", "  realtime_priority: 0", "realtime_priority"),
        ("driver", "  burst: 0", "burst"),
        ("driver", "  drop_log_entries: -1", "drop_log_entries"),
        ("flowmgr", "  socket: {}", "socket"),
        ("flowmgr", "  socket_mode: 0o7777", "socket_mode"),
        ("flowmgr", "  reserve: 0.9", "reserve"),
        (
            "flowmgr",
            "  ephemeral_ports: [9000, 10]",
            "ephemeral_ports",
        ),
        ("flowmgr", "  allowed_uids: [-1]", "allowed_uids"),
        (
            "flowmgr",
            "  privileged_port_uids: x",
            "privileged_port_uids",
        ),
        ("flowmgr", "  max_flows_per_uid: 0", "max_flows_per_uid"),
        (
            "flowmgr",
            "  max_channel_bytes_per_uid: 0",
            "max_channel_bytes_per_uid",
        ),
        ("flowmgr", "  max_clients: 0", "max_clients"),
        ("flowmgr", "  client_timeout_ms: 0", "client_timeout_ms"),
        ("flowmgr", "  driver_timeout_ms: 0", "driver_timeout_ms"),
        ("flowmgr", "  channel_bytes: 1000", "channel_bytes"),
        ("flowmgr", "  channel_slots: 3", "channel_slots"),
        ("flowmgr", "  max_channel_bytes: 5", "max_channel_bytes"),
        ("flowmgr", "  arp_timeout_ms: 0", "arp_timeout_ms"),
        ("flowmgr", "  arp_retry_ms: 0", "arp_retry_ms"),
        ("flowmgr", "  arp_retries: 0", "arp_retries"),
        ("flowmgr", "  time_wait_ms: -5", "time_wait_ms"),
        ("flowmgr", "  icmp_errors_per_sec: x", "icmp_errors_per_sec"),
        ("flowmgr", "  icmp_errors_burst: x", "icmp_errors_burst"),
        (
            "flowmgr",
            "  echo_replies_per_sec: x",
            "echo_replies_per_sec",
        ),
        ("flowmgr", "  metrics: 10.0.0.1:9464", "metrics"),
    ]
}

#[test]
fn every_field_has_a_located_named_error() {
    let mut failures = Vec::new();
    for (section, body, field) in cases() {
        let text = if section == "port" {
            format!("port:\n  vdev: net_tap0,iface=nft0\n{body}\n")
        } else {
            format!("{BASE}{section}:\n{body}\n")
        };
        let err = match Config::parse(&text, Path::new("bad.yaml")) {
            Ok(_) => {
                failures.push(format!("{section}.{field}: accepted `{body}`"));
                continue;
            }
            Err(e) => e.to_string(),
        };
        // The line of the offending key, in the whole file.
        let key_line = text
            .lines()
            .position(|l| {
                l.trim_start()
                    .trim_start_matches("- {")
                    .trim_start()
                    .starts_with(field)
                    || l.trim_start().starts_with(&format!("{field}:"))
            })
            .map(|i| i + 1);
        let located = key_line.is_some_and(|n| {
            err.starts_with(&format!("bad.yaml:{n}:"))
                || err.starts_with(&format!("bad.yaml:{}:", n + 1))
        });
        let one_line = !err.contains('\n');
        if !(located && err.contains(field) && one_line) {
            failures.push(format!(
                "{section}.{field}: `{err}` (field on line {key_line:?})"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "errors without file, line or field:\n{}",
        failures.join("\n")
    );
}
