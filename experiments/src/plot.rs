//! Figures in the style of the paper's: one line per flow, Mbit/s over time, labelled.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::series::Series;

/// Where Debian's `fonts-dejavu-core` puts its sans-serif font.
const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Plotting failed.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// No font to label the figure with.
    #[error("cannot read {FONT_PATH}: {0} (apt-get install fonts-dejavu-core)")]
    Font(std::io::Error),
    /// Drawing failed.
    #[error("drawing {0}")]
    Draw(String),
}

fn register_font() -> Result<(), PlotError> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = std::fs::read(FONT_PATH).map_err(|e| e.to_string())?;
        // The font registry wants 'static bytes; the font lives as long as the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "not a usable TrueType font".to_string())
    })
    .clone()
    .map_err(|e| PlotError::Font(std::io::Error::other(e)))
}

/// Draws `series` to a PNG at `path` with `title`; the y axis spans 0 to `y_max` Mbit/s.
pub fn draw(series: &Series, title: &str, y_max: f64, path: &Path) -> Result<(), PlotError> {
    register_font()?;
    let err = |e: &dyn std::fmt::Display| PlotError::Draw(format!("{}: {e}", path.display()));
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let times = series.times_s();
    let t_end = times
        .last()
        .map_or(1.0, |t| t + series.window_ns as f64 / 1e9);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_end, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("throughput (Mbit/s)")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, name) in series.flows.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = times
            .iter()
            .zip(&series.mbps[i])
            .map(|(&t, &y)| (t + series.window_ns as f64 / 2e9, y))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png() {
        let s = Series {
            window_ns: 200_000_000,
            flows: vec!["flow 1 (4 Mbit/s)".into(), "flow 2 (8 Mbit/s)".into()],
            mbps: vec![vec![4.0, 4.1, 3.9], vec![8.0, 8.0, 8.1]],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fig.png");
        draw(&s, "test", 10.0, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        if let Ok(keep) = std::env::var("NEMFLOW_KEEP_PLOT") {
            std::fs::copy(&path, keep).unwrap();
        }
    }
}
