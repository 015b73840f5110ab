//! The example apps' library functions over real channels, with a thread playing the wire, and
//! the binaries' `--help` and their honest failure without a flow manager.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, not only #[test] fns

use std::net::SocketAddrV4;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nemflow_appstack::apps::{self, BlastOptions, EchoOptions, SinkOptions, Slowdown};
use nemflow_appstack::testing::{self, IP_A, IP_B, MAC_A, MAC_B, PORT_A, PORT_B};
use nemflow_appstack::FlowConfig;

#[test]
fn blast_into_sink_logs_every_datagram() {
    let ((mut a, da), (mut b, db)) =
        testing::connected_pair(1500, 64, FlowConfig::default()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let wire = testing::spawn_wire(da, db, stop.clone());
    let sink = std::thread::spawn(move || {
        let mut log = Vec::new();
        let opts = SinkOptions {
            count: Some(3000),
            duration: Some(Duration::from_secs(20)),
            ..SinkOptions::default()
        };
        let r = apps::sink(&mut b, &opts, &AtomicBool::new(false), &mut log).unwrap();
        (r, log)
    });
    let opts = BlastOptions {
        count: Some(3000),
        ..BlastOptions::default()
    };
    let sent = apps::blast(&mut a, &opts, &AtomicBool::new(false)).unwrap();
    let (got, log) = sink.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    wire.join().unwrap().unwrap();
    assert_eq!(sent.datagrams, 3000);
    assert_eq!(
        sent.bytes,
        3000 * 1472,
        "MTU-sized: 1500 − 28 bytes of payload"
    );
    assert!(sent.datagrams_per_sec() > 0.0);
    assert_eq!((got.datagrams, got.lost, got.reordered), (3000, 0, 0));
    let log = String::from_utf8(log).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3000);
    let mut last_t = 0u128;
    for (i, l) in lines.iter().enumerate() {
        let f: Vec<&str> = l.split(' ').collect();
        let t: u128 = f[0].parse().unwrap();
        assert!(t >= last_t, "arrival times go forward");
        last_t = t;
        assert_eq!(f[1], "1472");
        assert_eq!(f[2], i.to_string());
    }
}

#[test]
fn sink_cost_schedule_slows_down_every_n_packets() {
    let o = SinkOptions {
        cost: Duration::from_micros(1),
        slowdown: Some(Slowdown {
            every: 20_000,
            step: Duration::from_micros(300),
        }),
        ..SinkOptions::default()
    };
    assert_eq!(o.cost_of(0), Duration::from_micros(1));
    assert_eq!(o.cost_of(19_999), Duration::from_micros(1));
    assert_eq!(o.cost_of(20_000), Duration::from_micros(301));
    assert_eq!(o.cost_of(39_999), Duration::from_micros(301));
    assert_eq!(
        o.cost_of(40_000),
        Duration::from_micros(601),
        "each slowdown adds, for good"
    );

    // And the time is really spent: 40 datagrams, the last 20 at 2 ms each.
    let ((mut a, mut da), (mut b, mut db)) =
        testing::connected_pair(1500, 64, FlowConfig::default()).unwrap();
    for i in 0..40u8 {
        a.send(&[i; 32]).unwrap();
    }
    da.pump_to(&mut db).unwrap();
    let opts = SinkOptions {
        count: Some(40),
        cost: Duration::ZERO,
        slowdown: Some(Slowdown {
            every: 20,
            step: Duration::from_millis(2),
        }),
        ..SinkOptions::default()
    };
    let t = std::time::Instant::now();
    let r = apps::sink(&mut b, &opts, &AtomicBool::new(false), &mut std::io::sink()).unwrap();
    assert_eq!(r.datagrams, 40);
    assert!(t.elapsed() >= Duration::from_millis(40));
}

#[test]
fn echo_server_answers_a_connected_client() {
    // B is an unconnected echo server that has never heard of A: it learns A's MAC from the frame.
    let a_addr = SocketAddrV4::new(IP_A, PORT_A);
    let b_addr = SocketAddrV4::new(IP_B, PORT_B);
    let (mut a, da) = testing::udp_flow(
        testing::fib(a_addr, MAC_A, Some(b_addr), Some(MAC_B), 1500),
        64,
        FlowConfig::default(),
    )
    .unwrap();
    let (mut b, db) = testing::udp_flow(
        testing::fib(b_addr, MAC_B, None, None, 1500),
        64,
        FlowConfig::default(),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let wire = testing::spawn_wire(da, db, stop.clone());
    let server = std::thread::spawn(move || {
        let opts = EchoOptions {
            count: Some(4),
            duration: Some(Duration::from_secs(20)),
        };
        apps::echo(&mut b, &opts, &AtomicBool::new(false)).unwrap()
    });
    a.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = vec![0u8; 70_000];
    for (i, len) in [1usize, 100, 1472, 20_000].into_iter().enumerate() {
        let msg: Vec<u8> = (0..len).map(|j| (j + i) as u8).collect();
        a.send(&msg).unwrap();
        let (n, src) = a.recv(&mut buf).unwrap();
        assert_eq!(src, b_addr);
        assert_eq!(&buf[..n], &msg[..], "echo of {len} bytes");
    }
    let r = server.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    wire.join().unwrap().unwrap();
    assert_eq!((r.datagrams, r.failed), (4, 0));
}

#[test]
fn binaries_have_help_and_say_when_the_flow_manager_is_absent() {
    for (bin, args) in [
        (
            env!("CARGO_BIN_EXE_udp-blast"),
            vec!["--remote", "10.9.0.2:7"],
        ),
        (env!("CARGO_BIN_EXE_udp-sink"), vec!["--port", "9000"]),
        (env!("CARGO_BIN_EXE_udp-echo"), vec!["--port", "7"]),
    ] {
        let help = Command::new(bin).arg("--help").output().unwrap();
        assert!(help.status.success());
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(
            text.contains("Usage:") && text.contains("nemflow"),
            "{text}"
        );
        let run = Command::new(bin)
            .args(&args)
            .env("NEMFLOW_FLOWMGR_SOCKET", "/nonexistent/flowmgr.sock")
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(2), "{bin}");
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(
            err.contains("no flow manager at /nonexistent/flowmgr.sock"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(run.stdout.is_empty(), "no fake output");
    }
}
