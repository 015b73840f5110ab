//! Test and benchmark peer: plays one endpoint of an Rbuf channel in its own process, from fds
//! received over a Unix socket (SCM_RIGHTS), so tests exercise real cross-process channels.
//!
//! `rbuf-peer <abstract-socket-name> <role> <data_bytes> <slots> <max_packet_bytes> <n> <batch>
//! <blocking 0|1> [extra]`. Prints one result line on stdout; exits non-zero on failure.
//!
//! Roles: `tmm-producer` (the app sending n payloads; extra `bp` first pushes until full and
//! reports it), `rmm-consumer` (the app receiving and checking n payloads), `hostile-tmm <kind>`
//! and `hostile-rmm <kind>` (an app attacking the driver's side: kinds `random`, `backward`,
//! `far`, `extents`, `truncate`).

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::time::{Duration, Instant};

use nemflow_rbuf::testing::{check_payload, fill_payload, IndexWord, RawControl, XorShift};
use nemflow_rbuf::{
    fdpass, rmm, tmm, ChannelFds, ChannelSpec, Error, Extent, FifoId, IoRec, CHANNEL_FDS,
};

const WAIT: Duration = Duration::from_secs(20);

struct Args {
    role: String,
    spec: ChannelSpec,
    n: u64,
    batch: usize,
    blocking: bool,
    extra: String,
}

fn parse() -> Result<(String, Args), String> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 9 {
        return Err(
            "usage: rbuf-peer SOCKET ROLE DATA_BYTES SLOTS MAX_PACKET N BATCH BLOCKING [EXTRA]"
                .into(),
        );
    }
    let num = |i: usize| {
        a[i].parse::<u64>()
            .map_err(|e| format!("argument {i} ({}): {e}", a[i]))
    };
    let spec = ChannelSpec {
        data_bytes: num(3)?,
        slots: num(4)? as u32,
        max_packet_bytes: num(5)? as u32,
        hugetlb: false,
    };
    let args = Args {
        role: a[2].clone(),
        spec,
        n: num(6)?,
        batch: num(7)?.max(1) as usize,
        blocking: num(8)? != 0,
        extra: a.get(9).cloned().unwrap_or_default(),
    };
    Ok((a[1].clone(), args))
}

fn main() {
    let code = match run() {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            println!("FAIL {e}");
            1
        }
    };
    std::process::exit(code);
}

fn run() -> Result<String, String> {
    let (sock_name, args) = parse()?;
    let addr = SocketAddr::from_abstract_name(sock_name.as_bytes()).map_err(|e| e.to_string())?;
    let mut sock = UnixStream::connect_addr(&addr).map_err(|e| format!("connect: {e}"))?;
    let mut buf = [0u8; 16];
    let (_, fds) =
        fdpass::recv_exact_fds(&sock, &mut buf, CHANNEL_FDS).map_err(|e| e.to_string())?;
    let fds = ChannelFds::from_vec(fds).map_err(|e| e.to_string())?;
    let s = |e: Error| e.to_string();
    match args.role.as_str() {
        "tmm-producer" => tmm_producer(
            &args,
            &mut sock,
            tmm::Producer::attach(&args.spec, fds).map_err(s)?,
        ),
        "rmm-consumer" => rmm_consumer(&args, rmm::Consumer::attach(&args.spec, fds).map_err(s)?),
        "hostile-tmm" | "hostile-rmm" => hostile(&args, &mut sock, fds),
        r => Err(format!("unknown role {r}")),
    }
}

fn idle(
    blocking: bool,
    spins: &mut u32,
    wait: impl FnOnce(Duration) -> nemflow_rbuf::Result<()>,
) -> Result<(), String> {
    if blocking {
        match wait(WAIT) {
            Ok(()) => Ok(()),
            Err(e) => Err(format!("wait: {e}")),
        }
    } else {
        *spins += 1;
        if *spins & 63 == 0 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
        Ok(())
    }
}

fn tmm_producer(a: &Args, sock: &mut UnixStream, mut p: tmm::Producer) -> Result<String, String> {
    let s = |e: Error| e.to_string();
    let mut seq = 0u64;
    let mut spins = 0;
    let mut report = String::new();
    if a.extra == "bp" {
        // Back-pressure: push one at a time, never waiting, until the channel refuses.
        while let Some(ext) = p.alloc(64).map_err(s)? {
            let len = fill_payload(seq, p.buf_mut(ext).map_err(s)?);
            match p.push(IoRec::single(Extent::new(ext.offset, len as u32), 0)) {
                Ok(()) => seq += 1,
                Err(Error::Full) => {
                    p.free(ext).map_err(s)?;
                    break;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        report = format!("full after {seq} ");
        sock.write_all(report.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut go = [0u8; 1];
        sock.read_exact(&mut go).map_err(|e| e.to_string())?;
    }
    let mut batch = Vec::with_capacity(a.batch);
    while seq < a.n {
        while batch.len() < a.batch && seq + (batch.len() as u64) < a.n {
            let Some(ext) = p.alloc(64).map_err(s)? else {
                break;
            };
            let len = fill_payload(seq + batch.len() as u64, p.buf_mut(ext).map_err(s)?);
            batch.push(IoRec::single(Extent::new(ext.offset, len as u32), 0));
        }
        let k = p.push_batch(&batch).map_err(s)?;
        batch.drain(..k);
        seq += k as u64;
        if k == 0 {
            idle(a.blocking, &mut spins, |t| p.wait_ready(t))?;
        }
    }
    // Wait until the consumer returned every buffer.
    let deadline = Instant::now() + WAIT;
    loop {
        p.reclaim().map_err(s)?;
        let (total, free) = p.buffers();
        if free == total {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {free} of {total} buffers came back"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let c = p.counters();
    Ok(format!(
        "{report}sent {seq} invalid {} sleeps {} wakeups {}",
        c.invalid_iorecs(),
        c.sleeps,
        c.wakeups_sent
    ))
}

fn rmm_consumer(a: &Args, mut c: rmm::Consumer) -> Result<String, String> {
    let s = |e: Error| e.to_string();
    let mut expect = 0u64;
    let mut spins = 0;
    let mut pkts = Vec::with_capacity(a.batch);
    c.post_free().map_err(s)?;
    while expect < a.n {
        let k = c.pop_batch(&mut pkts, a.batch).map_err(s)?;
        for pkt in pkts.drain(..) {
            let seq =
                check_payload(c.payload(&pkt)).map_err(|e| format!("packet {expect}: {e}"))?;
            if seq != expect {
                return Err(format!("expected sequence {expect}, got {seq}"));
            }
            expect += 1;
            c.release(pkt).map_err(s)?;
        }
        c.post_free().map_err(s)?;
        if k == 0 {
            idle(a.blocking, &mut spins, |t| c.wait_ready(t))?;
        }
    }
    let n = c.counters();
    Ok(format!(
        "received {expect} invalid {} sleeps {} wakeups {}",
        n.invalid_iorecs(),
        n.sleeps,
        n.wakeups_sent
    ))
}

/// Waits for the parent's go-ahead byte.
fn go(sock: &mut UnixStream) -> Result<(), String> {
    let mut b = [0u8; 1];
    sock.read_exact(&mut b)
        .map_err(|e| format!("waiting for go: {e}"))
}

fn hostile(a: &Args, sock: &mut UnixStream, fds: ChannelFds) -> Result<String, String> {
    let raw = RawControl::map(&fds.control, &a.spec).map_err(|e| e.to_string())?;
    let tx = a.role == "hostile-tmm";
    // The FIFO this app produces on, and its index word: the full FIFO for TMM, the empty FIFO
    // for RMM (an RMM app posts empty buffers).
    let (fifo, head) = if tx {
        (FifoId::Full, IndexWord::FullHead)
    } else {
        (FifoId::Empty, IndexWord::EmptyHead)
    };
    let ext = |off: u32, len: u32| IoRec::single(Extent::new(off, len), 0).encode();
    match a.extra.as_str() {
        "random" => {
            let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
            let until = Instant::now() + Duration::from_millis(a.n);
            let mut rounds = 0u64;
            while Instant::now() < until {
                let mut bytes = vec![0u8; raw.len()];
                for chunk in bytes.chunks_mut(8) {
                    let r = rng.next_u64().to_ne_bytes();
                    chunk.copy_from_slice(&r[..chunk.len()]);
                }
                raw.write_bytes(0, &bytes);
                rounds += 1;
                std::thread::sleep(Duration::from_micros(50));
            }
            Ok(format!("random rounds {rounds}"))
        }
        "backward" => {
            for i in 0..4 {
                raw.write_slot(fifo, i, ext(i * 256, 64));
            }
            raw.set_index(head, 4);
            sock.write_all(b"p").map_err(|e| e.to_string())?;
            go(sock)?;
            raw.set_index(head, 1);
            Ok("moved head 4 -> 1".into())
        }
        "far" => {
            raw.set_index(head, a.spec.slots + 1);
            Ok(format!("moved head 0 -> {}", a.spec.slots + 1))
        }
        "extents" => {
            let mut bad_count = ext(0, 64);
            bad_count[0] = 7 << 16;
            let mut zero_count = ext(0, 64);
            zero_count[0] = 0;
            let recs = [
                ext(0xFFFF_FFFE, 4),                  // overflow
                ext(a.spec.data_bytes as u32 - 8, 9), // past the end
                ext(a.spec.data_bytes as u32, 1),     // starts at the end
                bad_count,                            // count 7
                zero_count,                           // count 0
                ext(0, a.spec.max_packet_bytes + 1),  // too long
                ext(512, 64),                         // valid
            ];
            // One after the other: the one with count 7 takes two slots.
            let mut at = 0;
            for w in &recs {
                at += raw.write_slot(fifo, at, *w);
            }
            raw.set_index(head, at);
            Ok(format!("wrote {} iorecs", recs.len()))
        }
        "truncate" => {
            let errno = |r: rustix::io::Result<()>| match r {
                Ok(()) => "ok".to_string(),
                Err(e) => e.raw_os_error().to_string(),
            };
            let d = errno(rustix::fs::ftruncate(&fds.data, 0));
            let g = errno(rustix::fs::ftruncate(&fds.data, a.spec.data_bytes * 2));
            let c = errno(rustix::fs::ftruncate(&fds.control, 0));
            let s = errno(rustix::fs::fcntl_add_seals(
                &fds.data,
                rustix::fs::SealFlags::WRITE,
            ));
            Ok(format!(
                "shrink-data {d} grow-data {g} shrink-control {c} add-seal {s}"
            ))
        }
        k => Err(format!("unknown hostile kind {k}")),
    }
}
