//! Throughput over time, measured outside the system under test: frames captured with kernel
//! timestamps at the remote host, integrated per flow over fixed windows (200 ms, as the paper).
//!
//! Rates are wire rates: every frame counts its length plus 24 bytes (preamble, inter-frame
//! gap, FCS), so that a flow holding `s` of every `p` of a link of rate `R` measures `R·s/p`.

use serde::Serialize;

/// Bytes on the wire beyond a frame's captured length.
pub const WIRE_OVERHEAD_BYTES: u64 = 24;

/// One captured frame, attributed to a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Kernel receive timestamp, ns.
    pub t_ns: u64,
    /// Index of the flow it belongs to.
    pub flow: usize,
    /// Captured frame length (without FCS).
    pub len: u32,
}

/// Per-flow rates in consecutive windows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// Window length, ns.
    pub window_ns: u64,
    /// Flow names, in flow-index order.
    pub flows: Vec<String>,
    /// `mbps[flow][window]`.
    pub mbps: Vec<Vec<f64>>,
}

impl Series {
    /// Integrates `samples` with timestamps in `[start_ns, start_ns + windows·window_ns)`.
    pub fn integrate(
        samples: &[Sample],
        flows: &[String],
        start_ns: u64,
        window_ns: u64,
        windows: usize,
    ) -> Self {
        let mut bytes = vec![vec![0u64; windows]; flows.len()];
        for s in samples {
            if s.t_ns < start_ns || s.flow >= flows.len() {
                continue;
            }
            let w = ((s.t_ns - start_ns) / window_ns) as usize;
            if w < windows {
                bytes[s.flow][w] += u64::from(s.len) + WIRE_OVERHEAD_BYTES;
            }
        }
        let secs = window_ns as f64 / 1e9;
        let mbps = bytes
            .iter()
            .map(|f| f.iter().map(|&b| b as f64 * 8.0 / secs / 1e6).collect())
            .collect();
        Self {
            window_ns,
            flows: flows.to_vec(),
            mbps,
        }
    }

    /// Window start times in seconds from the start.
    pub fn times_s(&self) -> Vec<f64> {
        let n = self.mbps.first().map_or(0, Vec::len);
        (0..n)
            .map(|w| w as f64 * self.window_ns as f64 / 1e9)
            .collect()
    }

    /// CSV: `time_s,flow,mbps`, one row per window and flow.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("time_s,flow,mbps\n");
        for (w, t) in self.times_s().iter().enumerate() {
            for (f, name) in self.flows.iter().enumerate() {
                out.push_str(&format!("{t:.3},{name},{:.4}\n", self.mbps[f][w]));
            }
        }
        out
    }

    /// Statistics of one flow over windows `from..to`.
    pub fn stats(&self, flow: usize, from: usize, to: usize) -> WindowStats {
        let xs: Vec<f64> = self
            .mbps
            .get(flow)
            .map(|v| v[from.min(v.len())..to.min(v.len())].to_vec())
            .unwrap_or_default();
        WindowStats::of(&xs)
    }
}

/// Mean, extremes and spread of a set of window rates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WindowStats {
    /// Windows counted.
    pub windows: usize,
    /// Mean, Mbit/s.
    pub mean: f64,
    /// Smallest window, Mbit/s.
    pub min: f64,
    /// Largest window, Mbit/s.
    pub max: f64,
    /// Coefficient of variation (standard deviation / mean; 0 when the mean is 0).
    pub cv: f64,
}

impl WindowStats {
    /// Statistics of `xs` (all zero when empty).
    pub fn of(xs: &[f64]) -> Self {
        if xs.is_empty() {
            return Self {
                windows: 0,
                mean: 0.0,
                min: 0.0,
                max: 0.0,
                cv: 0.0,
            };
        }
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        Self {
            windows: xs.len(),
            mean,
            min: xs.iter().copied().fold(f64::INFINITY, f64::min),
            max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            cv: if mean > 0.0 { var.sqrt() / mean } else { 0.0 },
        }
    }

    /// Largest relative deviation of any window from `target` (0.01 = 1%).
    pub fn worst_error(&self, target: f64) -> f64 {
        if target <= 0.0 {
            return 0.0;
        }
        ((self.min - target).abs()).max((self.max - target).abs()) / target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrates_wire_bytes_per_window() {
        let flows = vec!["a".to_string(), "b".to_string()];
        // 1538 wire bytes every 1 ms for flow a over 400 ms = 12.304 Mbit/s.
        let samples: Vec<Sample> = (0..400)
            .map(|i| Sample {
                t_ns: 1_000 + i * 1_000_000,
                flow: 0,
                len: 1514,
            })
            .collect();
        let s = Series::integrate(&samples, &flows, 0, 200_000_000, 2);
        assert_eq!(s.mbps[0].len(), 2);
        for w in 0..2 {
            assert!((s.mbps[0][w] - 12.304).abs() < 1e-9, "{}", s.mbps[0][w]);
            assert_eq!(s.mbps[1][w], 0.0);
        }
        let st = s.stats(0, 0, 2);
        assert_eq!(st.windows, 2);
        assert!(st.cv < 1e-12);
        assert!(s
            .to_csv()
            .starts_with("time_s,flow,mbps\n0.000,a,12.3040\n0.000,b,0.0000\n"));
    }

    #[test]
    fn stats_and_errors() {
        let st = WindowStats::of(&[9.0, 10.0, 11.0]);
        assert_eq!((st.min, st.mean, st.max), (9.0, 10.0, 11.0));
        assert!((st.worst_error(10.0) - 0.1).abs() < 1e-12);
        assert!((st.cv - (2.0f64 / 3.0).sqrt() / 10.0).abs() < 1e-12);
        assert_eq!(WindowStats::of(&[]).windows, 0);
    }
}
