//! SVG plots (plotters, SVG backend only: no font files or system libraries needed):
//! CDFs (one or several overlaid), a histogram on [0, 1], and x-y line charts. Non-finite
//! samples are left out; an empty series still produces a labelled, empty chart.

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use std::path::Path;

const SIZE: (u32, u32) = (900, 540);

/// A plotting error that names the file (plotters writes the SVG on `present`, so a full
/// disk shows up here).
fn err_at<E: std::fmt::Debug>(path: &Path) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow!("writing {}: {e:?}", path.display())
}

/// A named set of (x, y) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// Empirical CDF points (x sorted, y = rank / n) of `values`.
pub fn cdf_points(values: &[f64]) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    v.iter()
        .enumerate()
        .map(|(i, &x)| (x, (i + 1) as f64 / n))
        .collect()
}

/// Overlaid CDFs of several samples.
pub fn cdf(path: &Path, title: &str, x_label: &str, samples: &[(&str, &[f64])]) -> Result<()> {
    let series: Vec<Series> = samples
        .iter()
        .map(|(name, values)| Series {
            name,
            points: step_points(&cdf_points(values)),
        })
        .collect();
    lines(
        path,
        title,
        x_label,
        "fraction ≤ x",
        &series,
        Some((0.0, 1.0)),
    )
}

/// Turns CDF points into a staircase so the line is the true step function.
fn step_points(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len() * 2 + 1);
    let mut previous_y = 0.0;
    for &(x, y) in points {
        out.push((x, previous_y));
        out.push((x, y));
        previous_y = y;
    }
    out
}

/// Line chart of several series. `y_range` fixes the y axis; otherwise it fits the data.
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    y_range: Option<(f64, f64)>,
) -> Result<()> {
    let all = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let (x0, x1) = padded(all().map(|p| p.0));
    let (y0, y1) = y_range.unwrap_or_else(|| padded(all().map(|p| p.1)));
    let err = err_at(path);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(&err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(&err)?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(&err)?
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    if series.len() > 1 || series.iter().any(|s| !s.name.is_empty()) {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(&err)?;
    }
    root.present().map_err(&err)?;
    Ok(())
}

/// Histogram of values in [0, 1] with `bins` equal bins (the last one closed).
pub fn unit_histogram(
    path: &Path,
    title: &str,
    x_label: &str,
    values: &[f64],
    bins: usize,
) -> Result<()> {
    let bins = bins.max(1);
    let mut counts = vec![0u32; bins];
    for v in values.iter().filter(|v| v.is_finite()) {
        let i = ((v.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        counts[i] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(0).max(1);
    let err = err_at(path);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..1f64, 0u32..top + top / 10 + 1)
        .map_err(&err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("requests")
        .draw()
        .map_err(&err)?;
    let width = 1.0 / bins as f64;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, &c)| {
            let x = i as f64 * width;
            Rectangle::new([(x, 0), (x + width, c)], Palette99::pick(0).filled())
        }))
        .map_err(&err)?;
    root.present().map_err(&err)?;
    Ok(())
}

/// A range covering the values with a little room; a unit range when there are none.
fn padded(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let lo = lo.min(0.0);
    let span = (hi - lo).max(1e-9);
    (lo, hi + span * 0.05)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_svgs_even_for_empty_or_odd_data() {
        let dir = std::env::temp_dir().join(format!("metrum-bench-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cdf_path = dir.join("cdf.svg");
        cdf(
            &cdf_path,
            "TTFT",
            "s",
            &[("a", &[0.1, 0.2, f64::NAN]), ("b", &[])],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&cdf_path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("TTFT"));
        unit_histogram(
            &dir.join("h.svg"),
            "fluidity",
            "index",
            &[0.0, 1.0, 0.5],
            10,
        )
        .unwrap();
        lines(&dir.join("l.svg"), "curve", "x", "y", &[], None).unwrap();
        assert_eq!(cdf_points(&[3.0, 1.0]), vec![(1.0, 0.5), (3.0, 1.0)]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
