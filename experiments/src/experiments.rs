//! The four experiments: run, judge against the criteria, write CSV, PNG and `summary.json`.

use crate::definition::Definition;
use crate::plot;
use crate::report::{judge, Check, FlowResult, Summary};
use crate::run::{senders_on_nemflow, RunOptions};
use crate::series::{Series, WindowStats};

/// Runs one experiment by its definition.
pub fn run(def: &Definition, opts: &RunOptions) -> Result<Summary, String> {
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    let summary = match def.experiment.as_str() {
        "5a" => fig5a(def, opts)?,
        "5b" => fig5b(def, opts)?,
        "6" => fig6(def, opts)?,
        "7" => fig7(def, opts)?,
        other => return Err(format!("no experiment {other}")),
    };
    summary.write_json(&opts.out)?;
    std::fs::write(opts.out.join("summary.txt"), summary.table()).map_err(|e| e.to_string())?;
    Ok(summary)
}

/// Writes the series as CSV and PNG under `name`.
fn write_series(
    series: &Series,
    name: &str,
    title: &str,
    y_max: f64,
    opts: &RunOptions,
) -> Result<(), String> {
    std::fs::write(opts.out.join(format!("{name}.csv")), series.to_csv())
        .map_err(|e| e.to_string())?;
    plot::draw(series, title, y_max, &opts.out.join(format!("{name}.png")))
        .map_err(|e| e.to_string())
}

/// 5a: every window of every flow within ±3% of its share, each mean within ±1%.
fn fig5a(def: &Definition, opts: &RunOptions) -> Result<Summary, String> {
    let measured = senders_on_nemflow(def, opts)?;
    let series = &measured.series;
    let link_mbps = def.link_rate_bps as f64 / 1e6;
    let top = def
        .senders
        .iter()
        .map(|s| s.reserved_mbps(def.link_rate_bps))
        .fold(0.0, f64::max);
    write_series(
        series,
        "5a",
        &def.title,
        (top * 1.25).max(link_mbps * 0.05),
        opts,
    )?;
    let (from, to) = (def.warmup_windows(), def.windows());
    let flows = def
        .senders
        .iter()
        .enumerate()
        .map(|(i, s)| {
            judge(
                "nemflow",
                &s.name,
                s.reserved_mbps(def.link_rate_bps),
                series.stats(i, from, to),
                0.03,
                Some(0.01),
            )
        })
        .collect();
    Ok(Summary::new(
        "5a",
        def.link_rate_bps,
        def.duration_s,
        flows,
        Vec::new(),
    ))
}

/// 5b: each guaranteed flow within ±3% in every window after it started; the best-effort flow
/// gets the link minus the active guarantees within ±3%.
fn fig5b(def: &Definition, opts: &RunOptions) -> Result<Summary, String> {
    let measured = senders_on_nemflow(def, opts)?;
    let series = &measured.series;
    let link_mbps = def.link_rate_bps as f64 / 1e6;
    write_series(series, "5b", &def.title, link_mbps * 1.1, opts)?;
    let window_s = def.window_ms as f64 / 1000.0;
    // A window is judged if it starts after the warm-up and after its flow started, and does
    // not contain another flow's start (the moment the shares change).
    let starts: Vec<f64> = def.senders.iter().map(|s| s.start_s).collect();
    let clean = |w: usize, since: f64| {
        let t0 = w as f64 * window_s;
        t0 >= def.warmup_s.max(since + window_s)
            && !starts.iter().any(|&s| s > t0 && s < t0 + window_s)
            && !starts.iter().any(|&s| s > 0.0 && (t0 - s).abs() < 1e-9)
    };
    let mut flows = Vec::new();
    for (i, s) in def.senders.iter().enumerate() {
        let windows: Vec<usize> = (0..def.windows())
            .filter(|&w| clean(w, s.start_s))
            .collect();
        if s.slice_ms > 0.0 {
            let xs: Vec<f64> = windows.iter().map(|&w| series.mbps[i][w]).collect();
            flows.push(judge(
                "nemflow",
                &s.name,
                s.reserved_mbps(def.link_rate_bps),
                WindowStats::of(&xs),
                0.03,
                None,
            ));
        } else {
            // Best effort: compare each window with the link minus the guarantees active then.
            let mut worst: f64 = 0.0;
            let xs: Vec<f64> = windows.iter().map(|&w| series.mbps[i][w]).collect();
            for &w in &windows {
                let t0 = w as f64 * window_s;
                let reserved: f64 = def
                    .senders
                    .iter()
                    .filter(|o| o.slice_ms > 0.0 && o.start_s <= t0)
                    .map(|o| o.reserved_mbps(def.link_rate_bps))
                    .sum();
                let target = link_mbps - reserved;
                worst = worst.max((series.mbps[i][w] - target).abs() / target);
            }
            let stats = WindowStats::of(&xs);
            flows.push(FlowResult {
                system: "nemflow".into(),
                flow: s.name.clone(),
                reserved_mbps: None,
                stats,
                worst_window_error: Some(worst),
                mean_error: None,
                pass: Some(!xs.is_empty() && worst <= 0.03),
                note: "link − active guarantees, every window ±3%".into(),
            });
        }
    }
    Ok(Summary::new(
        "5b",
        def.link_rate_bps,
        def.duration_s,
        flows,
        Vec::new(),
    ))
}

/// 6: two best-effort senders; nemflow's total ≥ 95% of the link and smoother (lower CV) than
/// the same senders on Linux UDP sockets over a shaped link.
fn fig6(def: &Definition, opts: &RunOptions) -> Result<Summary, String> {
    let n_measured = senders_on_nemflow(def, opts)?;
    let l_measured = crate::linux::senders_on_linux(def, opts)?;
    let (nemflow, linux) = (&n_measured.series, &l_measured.series);
    let link_mbps = def.link_rate_bps as f64 / 1e6;
    write_series(
        nemflow,
        "6-nemflow",
        &format!("{} (nemflow)", def.title),
        link_mbps * 1.1,
        opts,
    )?;
    write_series(
        linux,
        "6-linux",
        &format!("{} (Linux, tc-shaped)", def.title),
        link_mbps * 1.1,
        opts,
    )?;
    let (from, to) = (def.warmup_windows(), def.windows());
    let mut flows = Vec::new();
    let mut total = |series: &Series, system: &str| {
        let mut sum = vec![0.0; to.saturating_sub(from)];
        for (i, s) in def.senders.iter().enumerate() {
            let st = series.stats(i, from, to);
            flows.push(FlowResult {
                system: system.into(),
                flow: s.name.clone(),
                reserved_mbps: None,
                stats: st,
                worst_window_error: None,
                mean_error: None,
                pass: None,
                note: format!("CV {:.4}", st.cv),
            });
            for (k, w) in (from..to).enumerate() {
                sum[k] += series.mbps[i].get(w).copied().unwrap_or(0.0);
            }
        }
        WindowStats::of(&sum)
    };
    let n_total = total(nemflow, "nemflow");
    let l_total = total(linux, "linux");
    let cv = |series: &Series| {
        let cvs: Vec<f64> = (0..def.senders.len())
            .map(|i| series.stats(i, from, to).cv)
            .collect();
        cvs.iter().sum::<f64>() / cvs.len().max(1) as f64
    };
    let (n_cv, l_cv) = (cv(nemflow), cv(linux));
    let checks = vec![
        n_measured.check("nemflow"),
        l_measured.check("Linux"),
        Check::new(
            "nemflow total ≥ 95% of link",
            n_total.mean >= 0.95 * link_mbps,
            format!(
                "{:.2} of {:.2} Mbit/s (Linux: {:.2})",
                n_total.mean, link_mbps, l_total.mean
            ),
        ),
        Check::new(
            "nemflow smoother than Linux",
            n_cv < l_cv,
            format!("mean per-sender CV {n_cv:.4} vs Linux {l_cv:.4}"),
        ),
    ];
    Ok(Summary::new(
        "6",
        def.link_rate_bps,
        def.duration_s,
        flows,
        checks,
    ))
}

/// 7: receive overload; see [`crate::receive`].
fn fig7(def: &Definition, opts: &RunOptions) -> Result<Summary, String> {
    crate::receive::fig7(def, opts)
}
