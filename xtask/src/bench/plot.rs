//! The benchmark's two pictures: the receive rate every 100 ms of a
//! download by curl and by aria2c over eight connections, per contender,
//! against the limit; and achieved/limit and waste for every case.
//!
//! Both are scaled to say what the benchmark found at a glance: the rate
//! axis is a few times the limit, with what goes off it marked at the
//! edge, and every contender is drawn over the same time window.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use plotters::{
    coord::{Shift, types::RangedCoordf64},
    prelude::*,
    style::{FontStyle, register_font},
};

use super::report::{Contender, Row};

/// A font for the labels; plotters is built without a system font loader.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The rate axis ends at this many times the limit.
const RATE_SCALE: f64 = 3.0;
/// The axis of achieved/limit ends here, and that of waste at this percent.
const RATIO_END: f64 = 2.0;
const WASTE_END: f64 = 100.0;

/// One panel of the rate picture: a client's traces, per contender, as
/// (seconds, bytes/s) every 100 ms.
pub struct Traces {
    pub title: String,
    pub traces: Vec<(Contender, Vec<(f64, f64)>)>,
}

fn font() -> Result<()> {
    let font = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT} (fonts-dejavu-core; see scripts/setup.sh)"))?;
    register_font("sans-serif", FontStyle::Normal, font.leak())
        .map_err(|_| anyhow!("{FONT} is not a usable font"))
}

fn color(contender: Contender) -> RGBColor {
    match contender {
        Contender::Throttle => BLUE,
        Contender::Trickle => RED,
        Contender::Bare => GREEN,
        Contender::Link => BLACK,
    }
}

fn plotting<T>(result: Result<T, impl std::fmt::Display>) -> Result<T> {
    result.map_err(|e| anyhow!("plotting: {e}"))
}

/// The rate picture: one panel per client, side by side, over `window`
/// seconds.
pub fn rates(path: &Path, limit: u64, window: f64, panels: &[Traces]) -> Result<()> {
    font()?;
    let root = BitMapBackend::new(path, (700 * panels.len() as u32, 520)).into_drawing_area();
    plotting(root.fill(&WHITE))?;
    let areas = root.split_evenly((1, panels.len()));
    for (area, panel) in areas.iter().zip(panels) {
        rate_panel(area, limit, window, panel)?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))
}

fn rate_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    limit: u64,
    window: f64,
    panel: &Traces,
) -> Result<()> {
    let mib = (1u64 << 20) as f64;
    let limit = limit as f64 / mib;
    let top = limit * RATE_SCALE;
    let mut chart = plotting(
        ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..window, 0.0..top),
    )?;
    plotting(
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("MiB/s")
            .label_style(("sans-serif", 14))
            .draw(),
    )?;
    for (k, (contender, trace)) in panel.traces.iter().enumerate() {
        let scale = Scale { mib, window, top };
        draw_trace(&mut chart, &scale, k, *contender, trace)?;
    }
    // Over the traces, so a contender on the limit leaves it visible.
    plotting(chart.draw_series(LineSeries::new(
        [(0.0, limit), (window, limit)],
        BLACK.stroke_width(1),
    )))?
    .label("limit")
    .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(1)));
    plotting(
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw(),
    )?;
    Ok(())
}

/// The rate panel's axes: its unit, its time window and its top.
struct Scale {
    mib: f64,
    window: f64,
    top: f64,
}

type RateChart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One contender's trace, the `k`th of its panel, with what goes off the
/// axis marked and a note if it ran past the window.
fn draw_trace(
    chart: &mut RateChart<'_, '_>,
    scale: &Scale,
    k: usize,
    contender: Contender,
    trace: &[(f64, f64)],
) -> Result<()> {
    let Scale { mib, window, top } = *scale;
    let color = color(contender);
    let inside: Vec<(f64, f64)> = trace
        .iter()
        .filter(|(t, _)| *t <= window)
        .map(|(t, r)| (*t, r / mib))
        .collect();
    plotting(chart.draw_series(LineSeries::new(
        inside.iter().map(|(t, r)| (*t, r.min(top))),
        color.stroke_width(2),
    )))?
    .label(contender.label())
    .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    // What goes off the axis is marked where it leaves, with the
    // highest value it reached.
    let off: Vec<(f64, f64)> = inside.iter().copied().filter(|(_, r)| *r > top).collect();
    plotting(
        chart.draw_series(
            off.iter()
                .map(|(t, _)| TriangleMarker::new((*t, top * 0.985), 6, color.filled())),
        ),
    )?;
    if let Some((t, peak)) = off
        .iter()
        .copied()
        .reduce(|a, b| if b.1 > a.1 { b } else { a })
    {
        plotting(chart.draw_series(std::iter::once(Text::new(
            format!("{} peak {peak:.0} MiB/s ▲", contender.label()),
            (t.min(window * 0.55), top * 0.93),
            ("sans-serif", 14).into_font().color(&color),
        ))))?;
    }
    // A contender that had not finished by the window's end says so.
    if trace.last().is_some_and(|(t, _)| *t > window) {
        let end = trace.last().map_or(0.0, |p| p.0);
        plotting(chart.draw_series(std::iter::once(Text::new(
            format!("{}: still running, ended at {end:.0} s", contender.label()),
            (window * 0.3, top * (0.05 + 0.06 * k as f64)),
            ("sans-serif", 14).into_font().color(&color),
        ))))?;
    }
    Ok(())
}

/// The cases picture: per case, achieved/limit and waste, one dot per
/// contender, in two panels side by side under one legend.
pub fn cases(path: &Path, rows: &[Row], contenders: &[Contender]) -> Result<()> {
    font()?;
    let mut labels: Vec<String> = Vec::new();
    for row in rows {
        let label = row.case.label();
        if !labels.contains(&label) {
            labels.push(label);
        }
    }
    let height = 130 + 22 * labels.len() as u32;
    let root = BitMapBackend::new(path, (1400, height)).into_drawing_area();
    plotting(root.fill(&WHITE))?;
    let (legend, body) = root.split_vertically(40);
    draw_legend(&legend, contenders)?;
    let (left, right) = body.split_horizontally(820);
    let n = labels.len();
    // The first case at the top.
    let y_of = |label: &str| {
        labels
            .iter()
            .position(|l| l == label)
            .map(|i| (n - 1 - i) as f64)
    };
    for (area, waste, end, title) in [
        (&left, false, RATIO_END, "achieved / limit (1 = the limit)"),
        (&right, true, WASTE_END, "waste, % of delivered"),
    ] {
        let mut chart = plotting(
            ChartBuilder::on(area)
                .caption(title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(30)
                .y_label_area_size(if waste { 10 } else { 330 })
                .build_cartesian_2d(0.0..end, -0.5..n as f64 - 0.5),
        )?;
        let names = labels.clone();
        plotting(
            chart
                .configure_mesh()
                .y_labels(n)
                .y_label_formatter(&|y: &f64| {
                    let i = y.round();
                    if waste || (y - i).abs() > 1e-6 || i < 0.0 || i as usize >= n {
                        return String::new();
                    }
                    names[n - 1 - i as usize].clone()
                })
                .label_style(("sans-serif", 13))
                .draw(),
        )?;
        if !waste {
            plotting(chart.draw_series(LineSeries::new(
                [(1.0, -0.5), (1.0, n as f64 - 0.5)],
                BLACK.stroke_width(1),
            )))?;
        }
        for (k, contender) in contenders.iter().enumerate() {
            let color = color(*contender);
            let offset = (0.5 - k as f64) * 0.3;
            for row in rows.iter().filter(|r| r.contender == *contender) {
                let Some(y) = y_of(&row.case.label()) else {
                    continue;
                };
                let value = if waste { row.waste * 100.0 } else { row.ratio };
                let y = y + offset;
                let mark = if row.failed > 0 || !value.is_finite() {
                    Cross::new((0.0, y), 5, color.stroke_width(2)).into_dyn()
                } else if value > end {
                    TriangleMarker::new((end * 0.985, y), 6, color.filled()).into_dyn()
                } else {
                    Circle::new((value, y), 4, color.filled()).into_dyn()
                };
                plotting(chart.draw_series(std::iter::once(mark)))?;
            }
        }
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))
}

/// The cases picture's legend: a dot per contender, then the marks for
/// what is off the scale and what failed.
fn draw_legend(
    legend: &DrawingArea<BitMapBackend<'_>, Shift>,
    contenders: &[Contender],
) -> Result<()> {
    let mut x = 340;
    for (contender, mark) in contenders.iter().map(|c| (Some(*c), "●")).chain([
        (None, "▲ off the scale (drawn at its edge)"),
        (None, "× failed (see the report)"),
    ]) {
        let color = contender.map_or(BLACK, color);
        let text = match contender {
            Some(c) => format!("{mark} {}", c.label()),
            None => mark.to_string(),
        };
        plotting(legend.draw(&Text::new(
            text.clone(),
            (x, 12),
            ("sans-serif", 16).into_font().color(&color),
        )))?;
        x += 24 + 8 * text.chars().count() as i32;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::report::{Bars, Case, Dir, Link, Traffic};
    use super::*;

    const MIB: f64 = 1048576.0;

    /// Both pictures render from made-up figures with every feature: a
    /// spike off the axis, a contender still running at the window's end,
    /// off-scale dots and a failed row.
    #[test]
    fn both_pictures_render() {
        let dir = std::env::temp_dir().join(format!("throttle-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let steady: Vec<(f64, f64)> = (1..=100).map(|i| (i as f64 / 10.0, MIB)).collect();
        let mut spiky = steady.clone();
        spiky[0].1 = 75.0 * MIB;
        spiky.extend((101..=480).map(|i| (i as f64 / 10.0, 0.2 * MIB)));
        let panel = |title: &str| Traces {
            title: title.into(),
            traces: vec![
                (Contender::Throttle, steady.clone()),
                (Contender::Trickle, spiky.clone()),
            ],
        };
        let rates_png = dir.join("rates.png");
        rates(&rates_png, 1 << 20, 15.0, &[panel("curl"), panel("aria2c")]).unwrap();
        let case = |limit| {
            Case::new(
                Link::Veth,
                Traffic::Curl { whole_file: false },
                Dir::Down,
                limit,
            )
        };
        let row = |limit, contender, ratio, waste, failed| Row {
            case: case(limit),
            contender,
            failed,
            failure: None,
            ratio,
            waste,
            cv: None,
            cpu: 0.0,
            fairness: None,
            bars: Bars::Veth { ping_ms: None },
            link: None,
        };
        let rows = [
            row(1 << 20, Contender::Throttle, 0.99, 0.01, 0),
            row(1 << 20, Contender::Trickle, 2.6, 1.5, 0),
            row(8 << 20, Contender::Throttle, 1.0, 0.0, 0),
            row(8 << 20, Contender::Trickle, f64::NAN, f64::NAN, 1),
        ];
        let cases_png = dir.join("cases.png");
        cases(
            &cases_png,
            &rows,
            &[Contender::Throttle, Contender::Trickle],
        )
        .unwrap();
        for png in [rates_png, cases_png] {
            assert!(std::fs::metadata(&png).unwrap().len() > 1000);
        }
        if std::env::var_os("THROTTLE_KEEP_PLOTS").is_none() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
