//! Rbuf TMM channel, both ends in one thread (no cross-core traffic): the time each side spends
//! per iorec at a given batch, producer (`alloc_batch` + `push_extents`, with the reclaims those
//! make) and consumer (`pop_batch` + `release_batch`) apart, to see where each nanosecond goes.
//!
//! `rbuf_split [--iters N] [--batch B] [--rounds R]`: prints ns per iorec of each side and of
//! each call, medians over R rounds.

use std::time::Instant;

use clap::Parser;

use nemflow_rbuf::{create, tmm, ChannelSpec, Extent, IoRec};

/// Both ends of an rbuf TMM channel in one thread: ns per iorec of the producer's and the
/// consumer's calls, apart (no cross-core traffic).
#[derive(Parser, Debug)]
#[command(name = "rbuf_split")]
struct Args {
    /// Iorecs per round.
    #[arg(long, default_value_t = 20_000_000)]
    iters: u64,
    /// Iorecs per batch call.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Rounds (medians are printed).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// Time-stamp counter, or the monotonic clock off x86_64 (only differences are used).
#[inline(always)]
fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC is available on every x86_64 CPU and has no memory effects.
        unsafe { std::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
    }
}

/// Ticks per nanosecond, measured against the monotonic clock.
fn ticks_per_ns() -> f64 {
    let (t0, c0) = (Instant::now(), ticks());
    while t0.elapsed().as_millis() < 50 {
        std::hint::spin_loop();
    }
    (ticks() - c0) as f64 / t0.elapsed().as_nanos() as f64
}

/// One round: `iters` iorecs through the channel; returns ticks per iorec of `alloc_batch`,
/// `push_extents` (with its reclaims), `pop_batch` and `release_batch`.
fn round(iters: u64, batch: usize) -> Result<[f64; 4], String> {
    let s = |e: nemflow_rbuf::Error| e.to_string();
    let spec = ChannelSpec {
        data_bytes: 4 << 20,
        slots: 1024,
        max_packet_bytes: 64,
        hugetlb: false,
    };
    let fds = create(&spec).map_err(s)?;
    let mut p = tmm::Producer::attach(&spec, fds.try_clone().map_err(s)?).map_err(s)?;
    let mut c = tmm::Consumer::attach(&spec, fds.with_read_only_data().map_err(s)?).map_err(s)?;
    let mut exts = vec![Extent::default(); batch];
    let mut recs = vec![IoRec::default(); batch];
    let mut t = [0u64; 4];
    let mut sent = 0u64;
    while sent < iters {
        let t0 = ticks();
        let k = p.alloc_batch(64, &mut exts).map_err(s)?;
        let t1 = ticks();
        let k = p.push_extents(&exts[..k], 0).map_err(s)?;
        let t2 = ticks();
        let m = c.pop_batch(&mut recs).map_err(s)?;
        let t3 = ticks();
        c.release_batch(&recs[..m]).map_err(s)?;
        let t4 = ticks();
        if k != batch || m != batch {
            return Err(format!("pushed {k}, popped {m} of {batch}"));
        }
        for (i, d) in [t1 - t0, t2 - t1, t3 - t2, t4 - t3].into_iter().enumerate() {
            t[i] += d;
        }
        sent += k as u64;
    }
    Ok(t.map(|x| x as f64 / sent as f64))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let Args {
        iters,
        batch,
        rounds,
    } = Args::parse();
    let tpn = ticks_per_ns();
    let mut parts: [Vec<f64>; 4] = Default::default();
    for _ in 0..rounds {
        match round(iters, batch) {
            Ok(t) => {
                for (v, x) in parts.iter_mut().zip(t) {
                    v.push(x / tpn);
                }
            }
            Err(e) => {
                eprintln!("rbuf_split: {e}");
                std::process::exit(1);
            }
        }
    }
    let sum = |a: usize, b: usize| -> Vec<f64> {
        parts[a].iter().zip(&parts[b]).map(|(x, y)| x + y).collect()
    };
    let (mut ps, mut cs) = (sum(0, 1), sum(2, 3));
    eprintln!("producer {ps:.2?}\nconsumer {cs:.2?}");
    let m: Vec<f64> = parts.iter_mut().map(|v| median(v)).collect();
    println!(
        "batch {batch}: producer {:.2} ns/iorec (alloc_batch {:.2}, push_extents {:.2}), consumer {:.2} (pop_batch {:.2}, release_batch {:.2})",
        median(&mut ps),
        m[0],
        m[1],
        median(&mut cs),
        m[2],
        m[3]
    );
}
