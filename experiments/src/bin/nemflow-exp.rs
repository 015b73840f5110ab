//! `experiments/run`: reproduce the Nemesis paper's crosstalk experiments on nemflow and Linux.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use nemflow_experiments::definition::Definition;
use nemflow_experiments::experiments;
use nemflow_experiments::run::RunOptions;

/// Reproduce the crosstalk experiments of the Nemesis paper (figures 5a, 5b, 6, 7) on nemflow,
/// side by side with Linux where the paper compares. Each run sets up its own topology (net_tap
/// with the remote host in a network namespace; a tc-shaped veth pair for Linux), measures at
/// the remote host, writes CSV, PNG and summary.json into --out, prints a PASS/FAIL table, and
/// tears everything down, also on Ctrl-C. Exit status 0 when everything judged passed.
#[derive(Debug, Parser)]
#[command(name = "experiments/run", version)]
struct Args {
    /// Which experiment: 5a, 5b, 6, 7, or all; or `soak` (90% of the link reserved across
    /// eight flows offered twice their share while flows come and go every 100 ms; resources
    /// must end at their baseline; default 300 s).
    experiment: String,
    /// Length of each run in seconds (default: the definition's).
    #[arg(long)]
    duration: Option<f64>,
    /// Link rate in bit/s; shares stay, absolute rates scale (default: the definition's).
    #[arg(long)]
    link_rate: Option<u64>,
    /// Output directory (one subdirectory per experiment).
    #[arg(long, default_value = "experiments/out")]
    out: PathBuf,
    /// Keep the remote host's capture of a nemflow run as pcap (one file per experiment:
    /// FILE with the experiment's name added).
    #[arg(long, value_name = "FILE.pcap")]
    capture: Option<PathBuf>,
    /// Where the experiment definitions are.
    #[arg(long, default_value = "config/experiments")]
    definitions: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            eprintln!("experiments/run: cannot handle signal {sig}: {e}");
            return ExitCode::FAILURE;
        }
    }
    if args.experiment == "soak" {
        let opts = nemflow_experiments::soak::SoakOptions {
            duration: std::time::Duration::from_secs_f64(args.duration.unwrap_or(300.0)),
            window: std::time::Duration::from_secs(10),
            rate_bps: args.link_rate.unwrap_or(100_000_000),
        };
        let run = RunOptions {
            out: args.out.join("soak"),
            capture: None,
            progress: true,
            stop: Arc::clone(&stop),
        };
        return match nemflow_experiments::soak::soak(&opts, &run) {
            Ok(summary) => {
                println!("{}", summary.table());
                if summary.pass {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("experiments/run: soak failed to run: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let names: Vec<&str> = match args.experiment.as_str() {
        "all" => vec!["5a", "5b", "6", "7"],
        one @ ("5a" | "5b" | "6" | "7") => vec![one],
        other => {
            eprintln!("experiments/run: no experiment `{other}`: choose 5a, 5b, 6, 7 or all");
            return ExitCode::from(2);
        }
    };
    let mut all_pass = true;
    for name in names {
        let path = args.definitions.join(format!("{name}.yaml"));
        let mut def = match Definition::load(&path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("experiments/run: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(rate) = args.link_rate {
            def = def.with_link_rate(rate);
        }
        if let Some(d) = args.duration {
            def = def.with_duration(d);
        }
        let out = args.out.join(name);
        let capture = args.capture.as_ref().map(|c| {
            let stem = c
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            c.with_file_name(format!("{stem}-{name}.pcap"))
        });
        eprintln!(
            "experiment {name}: {} ({} s at {} Mbit/s) → {}",
            def.title,
            def.duration_s,
            def.link_rate_bps / 1_000_000,
            out.display()
        );
        let opts = RunOptions {
            out: out.clone(),
            capture,
            progress: true,
            stop: Arc::clone(&stop),
        };
        match experiments::run(&def, &opts) {
            Ok(summary) => {
                println!("{}", summary.table());
                all_pass &= summary.pass;
            }
            Err(e) => {
                eprintln!("experiments/run: experiment {name} failed to run: {e}");
                all_pass = false;
            }
        }
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!("experiments/run: interrupted; everything torn down");
            return ExitCode::from(130);
        }
    }
    if all_pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
