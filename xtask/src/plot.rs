//! The benchmark's PNG: receive rate every 100 ms per contender, with the
//! limit drawn as a line.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use plotters::{
    prelude::*,
    style::{FontStyle, register_font},
};

use crate::report::Contender;

/// A font for the labels; plotters is built without a system font loader.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

pub fn rates(path: &Path, limit: u64, traces: &[(Contender, Vec<(f64, f64)>)]) -> Result<()> {
    let font = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT} (fonts-dejavu-core; see scripts/setup.sh)"))?;
    register_font("sans-serif", FontStyle::Normal, font.leak())
        .map_err(|_| anyhow!("{FONT} is not a usable font"))?;

    let mib = (1u64 << 20) as f64;
    let limit = limit as f64 / mib;
    let end = traces
        .iter()
        .flat_map(|(_, t)| t.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let top = traces
        .iter()
        .flat_map(|(_, t)| t.iter().map(|p| p.1 / mib))
        .fold(limit * 1.5, f64::max);

    let root = BitMapBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{limit} MiB/s download over veth, rate every 100 ms"),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..top)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("MiB/s")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, limit), (end, limit)],
            BLACK.stroke_width(2),
        ))
        .map_err(|e| anyhow!("{e}"))?
        .label("limit")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    for (contender, trace) in traces {
        let color = match contender {
            Contender::Throttle => BLUE,
            Contender::Trickle => RED,
            Contender::Bare => GREEN,
        };
        chart
            .draw_series(LineSeries::new(
                trace.iter().map(|(t, r)| (*t, r / mib)),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label(contender.label())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))
}
