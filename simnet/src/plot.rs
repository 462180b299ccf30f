//! PNG plots next to the report (plotters): lookup and delivery latency CDFs, and the workload
//! phase over time (live nodes, messages, delivery rate), and the hole-punch matrix of `netns` runs.

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
    group_ms: &[f64],
    dir: &Path,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    if report.groups.is_some() {
        let path = dir.join("group_latency_cdf.png");
        let title = "Group message, send to last member (CDF)";
        cdf(&path, &format!("{title}, {}", report.scenario), group_ms)?;
        out.push(path);
    }
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
    let path = dir.join("hole_punch_matrix.png");
    if matrix(&path, report)? {
        out.push(path);
    }
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
    let root = BitMapBackend::new(path, (SIZE.0, SIZE.1 + 300)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (upper, lower) = root.split_vertically(SIZE.1);
    let mut chart = ChartBuilder::on(&upper)
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
        ("messages sent (group: a copy per member)", &BLUE, 1),
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
    let mut rate = ChartBuilder::on(&lower)
        .caption(
            "Delivery rate of messages sent to online nodes, by second sent",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..secs, 0f64..105f64)
        .map_err(err)?;
    rate.configure_mesh()
        .x_desc("seconds into the workload")
        .y_desc("% delivered")
        .draw()
        .map_err(err)?;
    rate.draw_series(LineSeries::new(
        report
            .timeline
            .iter()
            .filter_map(|s| s.delivery_rate.map(|r| (s.t_secs as f64, r * 100.0))),
        &RED,
    ))
    .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// `hole_punch_matrix.png`: per NAT-type pair, the share of node pairs that ended direct, and
/// the punches that succeeded over those tried.
pub fn matrix(path: &Path, report: &Report) -> anyhow::Result<bool> {
    let Some(pairs) = &report.nat_pairs else {
        return Ok(false);
    };
    let mut types: Vec<&str> = pairs
        .iter()
        .flat_map(|p| [p.a.as_str(), p.b.as_str()])
        .collect();
    types.sort_unstable();
    types.dedup();
    let n = types.len().max(1);
    let cell = 130u32;
    let size = (cell * (n as u32 + 1) + 40, cell * (n as u32 + 1) + 80);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let title = format!("Hole punching by NAT type, {}", report.scenario);
    root.draw(&Text::new(title, (20, 15), ("sans-serif", 22)))
        .map_err(err)?;
    let origin = (20 + cell as i32, 60 + cell as i32 / 2);
    for (k, t) in types.iter().enumerate() {
        let off = (k as i32) * cell as i32;
        root.draw(&Text::new(
            t.to_string(),
            (origin.0 + off + 10, origin.1 - 25),
            ("sans-serif", 18),
        ))
        .map_err(err)?;
        root.draw(&Text::new(
            t.to_string(),
            (25, origin.1 + off + cell as i32 / 2 - 10),
            ("sans-serif", 18),
        ))
        .map_err(err)?;
    }
    for p in pairs {
        let (Some(i), Some(j)) = (
            types.iter().position(|t| *t == p.a),
            types.iter().position(|t| *t == p.b),
        ) else {
            continue;
        };
        let direct = if p.pairs == 0 {
            0.0
        } else {
            p.direct as f64 / p.pairs as f64
        };
        let color = RGBColor(
            (230.0 - 150.0 * direct) as u8,
            (120.0 + 100.0 * direct) as u8,
            120,
        );
        for (r, c) in [(i, j), (j, i)] {
            let x = origin.0 + (c as i32) * cell as i32;
            let y = origin.1 + (r as i32) * cell as i32;
            root.draw(&Rectangle::new(
                [(x, y), (x + cell as i32 - 4, y + cell as i32 - 4)],
                color.filled(),
            ))
            .map_err(err)?;
            let lines = [
                if p.direct == p.pairs && p.pairs > 0 {
                    "direct".to_owned()
                } else if p.relayed == p.pairs && p.pairs > 0 {
                    "relayed".to_owned()
                } else {
                    format!("{}/{} direct", p.direct, p.pairs)
                },
                format!("punch {}/{}", p.successes, p.attempts),
                format!("msgs {}/{}", p.messages_delivered, p.messages_sent),
            ];
            for (l, text) in lines.iter().enumerate() {
                root.draw(&Text::new(
                    text.clone(),
                    (x + 8, y + 12 + 30 * l as i32),
                    ("sans-serif", 17),
                ))
                .map_err(err)?;
            }
        }
    }
    root.present().map_err(err)?;
    Ok(true)
}
