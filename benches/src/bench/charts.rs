//! The charts, as SVG: plotters' SVG backend writes text as `<text>` elements, so no font
//! file or system font library is needed to draw them (the viewer renders the text).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::harness::Results;
use crate::report::{stats, Table};
use crate::system::{Mode, Variant, Workload};
use crate::Result;

/// Every chart written, with what it shows.
pub(crate) const CHARTS: [(&str, &str); 4] = [
    (
        "latency_add.svg",
        "sequential `add` latency percentiles per system",
    ),
    (
        "latency_p50_by_size.svg",
        "sequential echo p50 by payload size per system",
    ),
    ("throughput.svg", "`add` throughput per system and load mode"),
    ("cpu_per_call.svg", "server CPU time per call per system and mode"),
];

/// Write every chart of [`CHARTS`] into `dir`.
pub(crate) fn write_all(dir: &Path, results: &Results) -> Result<()> {
    let t = stats(results);
    let seq = Mode::SEQUENTIAL;
    let loads: Vec<Mode> = {
        let mut m: Vec<Mode> = t.keys().map(|k| k.0).filter(|m| !m.sequential).collect();
        m.dedup();
        m
    };
    // Latency percentiles of `add`.
    let variants = present(&t, |v| t.contains_key(&(seq, Workload::Add, v)));
    let pick = |f: fn(&crate::report::Stats) -> f64| -> Vec<Option<f64>> {
        variants
            .iter()
            .map(|v| t.get(&(seq, Workload::Add, *v)).map(f))
            .collect()
    };
    grouped_hbars(
        &dir.join(CHARTS[0].0),
        "Sequential add: latency percentiles (one connection, one call at a time)",
        "microseconds (log scale)",
        &labels(&variants),
        &[
            ("p50".into(), pick(|s| s.p50)),
            ("p90".into(), pick(|s| s.p90)),
            ("p99".into(), pick(|s| s.p99)),
            ("p99.9".into(), pick(|s| s.p999)),
        ],
    )?;
    by_size(&dir.join(CHARTS[1].0), &t)?;
    // Throughput per load mode.
    let variants = present(&t, |v| {
        loads.iter().any(|m| t.contains_key(&(*m, Workload::Add, v)))
    });
    let series: Vec<(String, Vec<Option<f64>>)> = loads
        .iter()
        .map(|m| {
            (
                m.to_string(),
                variants
                    .iter()
                    .map(|v| t.get(&(*m, Workload::Add, *v)).map(|s| s.tput))
                    .collect(),
            )
        })
        .collect();
    grouped_hbars(
        &dir.join(CHARTS[2].0),
        "add throughput, closed loop",
        "calls per second (log scale)",
        &labels(&variants),
        &series,
    )?;
    // CPU per call, sequential and under load.
    let modes: Vec<Mode> = std::iter::once(seq).chain(loads.iter().copied()).collect();
    let variants = present(&t, |v| {
        modes.iter().any(|m| t.contains_key(&(*m, Workload::Add, v)))
    });
    let series: Vec<(String, Vec<Option<f64>>)> = modes
        .iter()
        .map(|m| {
            (
                m.to_string(),
                variants
                    .iter()
                    .map(|v| t.get(&(*m, Workload::Add, *v)).map(|s| s.cpu_us))
                    .collect(),
            )
        })
        .collect();
    grouped_hbars(
        &dir.join(CHARTS[3].0),
        "add: server CPU time per call (user + system)",
        "microseconds per call (log scale)",
        &labels(&variants),
        &series,
    )?;
    Ok(())
}

fn present(_t: &Table, keep: impl Fn(Variant) -> bool) -> Vec<Variant> {
    Variant::ALL.into_iter().filter(|v| keep(*v)).collect()
}

fn labels(v: &[Variant]) -> Vec<String> {
    v.iter().map(|v| v.label().to_string()).collect()
}

/// The decade just below `lo` and just above `hi`, for a log axis.
fn decades(lo: f64, hi: f64) -> (f64, f64) {
    let lo = 10f64.powf(lo.max(1e-3).log10().floor());
    let hi = 10f64.powf(hi.max(lo * 10.0).log10().ceil());
    (lo, hi)
}

/// 1, 10, 100, 1k, 10k, 100k, 1M: log-axis labels.
fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{}k", v / 1e3)
    } else {
        format!("{v}")
    }
}

fn color(i: usize) -> RGBColor {
    // One per client (`Variant::ALL`), so that no two lines of a chart share a colour.
    const COLORS: [RGBColor; 9] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
    ];
    COLORS[i % COLORS.len()]
}

/// Horizontal bars, one group per category (top to bottom), one bar per series, on a log
/// axis; each bar carries its value.
fn grouped_hbars(
    path: &Path,
    title: &str,
    axis: &str,
    cats: &[String],
    series: &[(String, Vec<Option<f64>>)],
) -> Result<()> {
    let values: Vec<f64> = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied())
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    if cats.is_empty() || values.is_empty() {
        return Ok(());
    }
    // Room on the right for the value printed after the longest bar.
    let (lo, hi) = decades(
        values.iter().copied().fold(f64::INFINITY, f64::min),
        values.iter().copied().fold(0.0, f64::max) * 2.0,
    );
    let n = cats.len() as f64;
    let per = series.len().max(1) as f64;
    let height = 120 + cats.len() as u32 * (series.len() as u32 * 16 + 18);
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(180)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..n)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc(axis)
        .x_label_formatter(&|v| si(*v))
        .draw()?;
    let bar = 0.8 / per;
    for (k, (name, vals)) in series.iter().enumerate() {
        let c = color(k);
        // The first series on top of each group.
        let y = |ci: usize| n - ci as f64 - 0.1 - (k + 1) as f64 * bar;
        chart
            .draw_series(vals.iter().enumerate().filter_map(|(ci, v)| {
                let v = (*v)?.max(lo);
                Some(Rectangle::new([(lo, y(ci)), (v, y(ci) + bar * 0.9)], c.filled()))
            }))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        chart.draw_series(vals.iter().enumerate().filter_map(|(ci, v)| {
            let v = (*v)?;
            let text = if v >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            };
            let style =
                TextStyle::from(("sans-serif", 11).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
            Some(Text::new(text, (v.max(lo) * 1.03, y(ci) + bar * 0.45), style))
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    for (ci, cat) in cats.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(lo, n - ci as f64 - 0.5));
        let style = TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
        root.draw(&Text::new(cat.clone(), (px - 8, py), style))?;
    }
    root.present()?;
    Ok(())
}

/// p50 of the sequential echo against the payload size, one line per system (log-log).
fn by_size(path: &Path, t: &Table) -> Result<()> {
    let seq = Mode::SEQUENTIAL;
    let sizes = benches::ECHO_SIZES;
    let lines: Vec<(Variant, Vec<(f64, f64)>)> = Variant::ALL
        .into_iter()
        .map(|v| {
            let pts = sizes
                .iter()
                .filter_map(|n| t.get(&(seq, Workload::Echo(*n), v)).map(|s| (*n as f64, s.p50)))
                .collect::<Vec<_>>();
            (v, pts)
        })
        .filter(|(_, p)| !p.is_empty())
        .collect();
    let ys: Vec<f64> = lines.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)).collect();
    if ys.is_empty() {
        return Ok(());
    }
    let (lo, hi) = decades(
        ys.iter().copied().fold(f64::INFINITY, f64::min),
        ys.iter().copied().fold(0.0, f64::max),
    );
    let root = SVGBackend::new(path, (1000, 650)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Sequential echo: p50 latency by payload size", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((8f64..2.0 * (1 << 20) as f64).log_scale(), (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("payload bytes (log scale)")
        .y_desc("p50 microseconds (log scale)")
        .x_label_formatter(&|v| format!("{} B", si(*v)))
        .y_label_formatter(&|v| si(*v))
        .draw()?;
    for (i, (v, pts)) in lines.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
            .label(v.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
