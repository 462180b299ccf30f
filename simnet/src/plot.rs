//! PNG plots next to the report (plotters): lookup and delivery latency CDFs, and the workload
//! phase over time.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Report;

const SIZE: (u32, u32) = (900, 560);

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

/// Writes `lookup_latency_cdf.png`, `delivery_latency_cdf.png` and `timeline.png` into `dir`.
pub fn write_all(
    report: &Report,
    lookup_ms: &[f64],
    delivery_ms: &[f64],
    dir: &Path,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for (name, title, values) in [
        (
            "lookup_latency_cdf.png",
            "DHT lookup latency (CDF)",
            lookup_ms,
        ),
        (
            "delivery_latency_cdf.png",
            "Message delivery latency (CDF)",
            delivery_ms,
        ),
    ] {
        let path = dir.join(name);
        cdf(&path, &format!("{title}, {}", report.scenario), values)?;
        out.push(path);
    }
    let path = dir.join("timeline.png");
    timeline(&path, report)?;
    out.push(path);
    Ok(out)
}

fn cdf(path: &Path, title: &str, values: &[f64]) -> anyhow::Result<()> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let max = v.last().copied().unwrap_or(1.0).max(1.0);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..max * 1.05, 0f64..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds")
        .y_desc("fraction ≤ x")
        .draw()
        .map_err(err)?;
    let n = v.len().max(1) as f64;
    chart
        .draw_series(LineSeries::new(
            v.iter().enumerate().map(|(i, x)| (*x, (i + 1) as f64 / n)),
            &BLUE,
        ))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn timeline(path: &Path, report: &Report) -> anyhow::Result<()> {
    let secs = report.timeline.len().max(1) as f64;
    let top = report
        .timeline
        .iter()
        .map(|s| s.live_nodes.max(s.messages_sent).max(s.messages_delivered))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Live nodes and messages per second, {}", report.scenario),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..secs, 0f64..top * 1.1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the workload")
        .draw()
        .map_err(err)?;
    let series = [
        ("live nodes", &BLACK, 0usize),
        ("messages sent", &BLUE, 1),
        ("messages delivered", &GREEN, 2),
    ];
    for (label, color, which) in series {
        chart
            .draw_series(LineSeries::new(
                report.timeline.iter().map(|s| {
                    let y = match which {
                        0 => s.live_nodes,
                        1 => s.messages_sent,
                        _ => s.messages_delivered,
                    };
                    (s.t_secs as f64, y as f64)
                }),
                color,
            ))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
