//! The SVG plot of lateness distributions (empirical CDFs on a logarithmic time axis).

use std::path::Path;

use plotters::prelude::*;

use crate::stats::Distribution;
use crate::{err, Result};

/// Line colours, one per series in order.
const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Writes an SVG with one CDF line per `(name, distribution)` (lateness in µs, shown in ms on a
/// log axis) to `path`.
///
/// # Errors
/// When the file cannot be written or every distribution is empty.
pub fn lateness_cdf(path: &Path, title: &str, series: &[(&str, &Distribution)]) -> Result<()> {
    let non_empty: Vec<&(&str, &Distribution)> =
        series.iter().filter(|(_, d)| !d.is_empty()).collect();
    if non_empty.is_empty() {
        return Err(err("nothing to plot: every distribution is empty"));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    // The axis spans from the smallest positive lateness (at least 1 µs) to the largest.
    let lo_us = non_empty
        .iter()
        .filter_map(|(_, d)| d.samples().iter().find(|&&v| v > 0).copied())
        .min()
        .unwrap_or(1)
        .max(1);
    let hi_us = non_empty
        .iter()
        .filter_map(|(_, d)| d.max())
        .max()
        .unwrap_or(1)
        .max(lo_us * 10);
    let lo = decade_below(lo_us as f64 / 1000.0);
    let hi = decade_above(hi_us as f64 / 1000.0);
    let draw = |e: &dyn std::fmt::Display| err(format!("cannot draw {}: {e}", path.display()));

    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..1.0)
        .map_err(|e| draw(&e))?;
    chart
        .configure_mesh()
        .x_desc("lateness = handler start - scheduled instant (ms, log scale)")
        .y_desc("fraction of fires at or below")
        .x_label_formatter(&|v| format_ms(*v))
        .draw()
        .map_err(|e| draw(&e))?;
    for (i, (name, dist)) in series.iter().enumerate() {
        if dist.is_empty() {
            continue;
        }
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = dist
            .cdf(2_000)
            .into_iter()
            .map(|(us, f)| ((us as f64 / 1000.0).max(lo), f))
            .collect();
        let p99 = dist.quantile(0.99).unwrap_or(0) as f64 / 1000.0;
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| draw(&e))?
            .label(format!("{name}: p99 {}", format_ms(p99)))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| draw(&e))?;
    root.present().map_err(|e| draw(&e))?;
    Ok(())
}

/// Writes an SVG of claimed fires per second against the burst size (log axis), one point per
/// step of the `registry` search, with the raw primitive's writes per second as a flat line.
///
/// # Errors
/// When the file cannot be written or there is no step.
pub fn throughput_by_burst(
    path: &Path,
    title: &str,
    steps: &[(usize, f64)],
    raw_per_s: f64,
) -> Result<()> {
    if steps.is_empty() {
        return Err(err("nothing to plot: no step"));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let draw = |e: &dyn std::fmt::Display| err(format!("cannot draw {}: {e}", path.display()));
    let lo = steps.iter().map(|s| s.0).min().unwrap_or(1).max(1) as f64 / 2.0;
    let hi = steps.iter().map(|s| s.0).max().unwrap_or(1).max(1) as f64 * 2.0;
    let top = steps.iter().map(|s| s.1).fold(raw_per_s, f64::max).max(1.0) * 1.15;
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..top)
        .map_err(|e| draw(&e))?;
    chart
        .configure_mesh()
        .x_desc("burst: fires in one instant on one node (log scale)")
        .y_desc("writes or claimed fires per second")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| draw(&e))?;
    let claimed = COLORS[0];
    let points: Vec<(f64, f64)> = steps.iter().map(|(b, r)| (*b as f64, *r)).collect();
    chart
        .draw_series(LineSeries::new(points.clone(), claimed.stroke_width(2)))
        .map_err(|e| draw(&e))?
        .label("claimed fires/s (dcron)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], claimed.stroke_width(2)));
    chart
        .draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, claimed.filled())),
        )
        .map_err(|e| draw(&e))?;
    let raw = COLORS[1];
    chart
        .draw_series(LineSeries::new(
            vec![(lo, raw_per_s), (hi, raw_per_s)],
            raw.stroke_width(2),
        ))
        .map_err(|e| draw(&e))?
        .label(format!("raw primitive: {raw_per_s:.0} writes/s"))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], raw.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| draw(&e))?;
    root.present().map_err(|e| draw(&e))?;
    Ok(())
}

fn decade_below(v: f64) -> f64 {
    10f64.powf(v.max(1e-3).log10().floor())
}

fn decade_above(v: f64) -> f64 {
    10f64
        .powf(v.max(1e-3).log10().ceil())
        .max(decade_below(v) * 10.0)
}

fn format_ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0} s", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_both_series() {
        let dir = std::env::temp_dir().join(format!("dcron-bench-plot-{}", std::process::id()));
        let path = dir.join("p.svg");
        let a = Distribution::new((1..=1000).collect());
        let b = Distribution::new((1..=1000).map(|v| v * 500).collect());
        lateness_cdf(&path, "test", &[("a", &a), ("b", &b)]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("a: p99") && svg.contains("b: p99"));
        std::fs::remove_dir_all(&dir).unwrap();
        let empty = Distribution::default();
        assert!(lateness_cdf(&path, "t", &[("e", &empty)]).is_err());
    }

    #[test]
    fn writes_a_throughput_svg() {
        let dir = std::env::temp_dir().join(format!("dcron-bench-tput-{}", std::process::id()));
        let path = dir.join("t.svg");
        throughput_by_burst(&path, "test", &[(256, 1000.0), (512, 2000.0)], 5000.0).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("raw primitive: 5000"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(throughput_by_burst(&path, "t", &[], 1.0).is_err());
    }

    #[test]
    fn decades() {
        assert_eq!(decade_below(0.25), 0.1);
        assert_eq!(decade_above(250.0), 1000.0);
        assert_eq!(decade_above(100.0), 1000.0);
        assert_eq!(format_ms(2000.0), "2 s");
    }
}
