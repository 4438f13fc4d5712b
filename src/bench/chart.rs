//! `chart.svg` of `tollgate compare`, drawn with plotters' SVG backend (no font files:
//! text goes into the SVG as `<text>` and the viewer renders it). Two panels: latency
//! percentile curves per scenario on a "nines" axis (p50, p90, p99, p99.9, p99.99; one
//! step per nine, latency on a log scale), and requests/s bars per scenario. Colour
//! names the mode; keep-alive is solid, a new connection per request dashed / pale.

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

/// One scenario as the chart sees it.
#[derive(Debug, Clone)]
pub struct ChartSeries {
    /// Scenario name (legend and bar label).
    pub name: String,
    /// Which colour (the mode: 0 direct-plain ... 4 terminate-pooled).
    pub colour: usize,
    /// Keep-alive (solid) or a new connection per request (dashed / pale).
    pub keepalive: bool,
    /// (percentile, ms) at 50, 90, 99, 99.9, 99.99.
    pub latency_curve: Vec<(f64, f64)>,
    /// Throughput.
    pub requests_per_sec: f64,
}

const COLOURS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

/// Room right of the latency panel for the legend.
const LEGEND_WIDTH: u32 = 270;

const PERCENTILE_LABELS: [&str; 5] = ["p50", "p90", "p99", "p99.9", "p99.99"];

fn colour(index: usize) -> RGBColor {
    COLOURS[index % COLOURS.len()]
}

/// Renders the chart; returns the SVG text.
pub fn render_svg(series: &[ChartSeries]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let height = 560 + 60 + 34 * series.len().max(1) as u32;
        let root = SVGBackend::with_string(&mut svg, (1200, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (top, bottom) = root.split_vertically(560);
        let (curves, legend) = top.split_horizontally(1200 - LEGEND_WIDTH);
        draw_latency(&curves, series).map_err(|e| format!("latency panel: {e}"))?;
        draw_legend(&legend, series).map_err(|e| format!("legend: {e}"))?;
        draw_throughput(&bottom, series).map_err(|e| format!("throughput panel: {e}"))?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type DrawResult<'a> =
    Result<(), DrawingAreaErrorKind<<SVGBackend<'a> as DrawingBackend>::ErrorType>>;

/// The legend, drawn by hand in its own area right of the curves (plotters clips a
/// legend's line samples to the plotting area).
fn draw_legend<'a>(area: &Area<'a>, series: &[ChartSeries]) -> DrawResult<'a> {
    for (i, s) in series.iter().enumerate() {
        let c = colour(s.colour);
        let y = 50 + 22 * i as i32;
        let style = ShapeStyle::from(&c).stroke_width(2);
        if s.keepalive {
            area.draw(&PathElement::new(vec![(4, y), (36, y)], style))?;
        } else {
            area.draw(&plotters::element::DashedPathElement::new(
                vec![(4, y), (36, y)],
                6,
                4,
                style,
            ))?;
        }
        area.draw(&Text::new(
            s.name.clone(),
            (44, y),
            ("sans-serif", 14).into_font().color(&BLACK).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Left,
                    plotters::style::text_anchor::VPos::Center,
                ),
            ),
        ))?;
    }
    Ok(())
}

fn draw_latency<'a>(area: &Area<'a>, series: &[ChartSeries]) -> DrawResult<'a> {
    // Log axis bounds from the positive, finite values; a fixed range when there are none
    // (an unbounded log range would never finish laying out its labels).
    let values = series
        .iter()
        .flat_map(|s| s.latency_curve.iter().map(|(_, ms)| *ms))
        .filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = values.fold((None, None), |(lo, hi): (Option<f64>, Option<f64>), v| {
        (
            Some(lo.map_or(v, |l| l.min(v))),
            Some(hi.map_or(v, |h| h.max(v))),
        )
    });
    let lo = lo.map_or(0.01, |l| (l * 0.7).max(0.001));
    let hi = hi.map_or(1.0, |h| (h * 1.5).max(lo * 10.0));
    let mut chart = ChartBuilder::on(area)
        .caption("Latency by percentile (ms, log scale)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.2f64..4.2f64, (lo..hi).log_scale())?;
    let x_label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && (0.0..=4.0).contains(&i) {
            PERCENTILE_LABELS[i as usize].to_string()
        } else {
            String::new()
        }
    };
    let y_label = |y: &f64| {
        if *y >= 10.0 {
            format!("{y:.0}")
        } else if *y >= 1.0 {
            format!("{y:.1}")
        } else {
            format!("{y:.3}")
        }
    };
    chart
        .configure_mesh()
        .x_labels(5)
        .y_labels(12)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .x_desc("percentile (one step per nine)")
        .y_desc("latency ms")
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for s in series {
        let c = colour(s.colour);
        let points: Vec<(f64, f64)> = s
            .latency_curve
            .iter()
            .enumerate()
            .map(|(i, (_, ms))| (i as f64, ms.max(lo)))
            .collect();
        let style = ShapeStyle::from(&c).stroke_width(2);
        if s.keepalive {
            chart
                .draw_series(LineSeries::new(points.clone(), style))?
                .label(s.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(
                        vec![(x, y), (x + 24, y)],
                        ShapeStyle::from(&c).stroke_width(2),
                    )
                });
        } else {
            chart
                .draw_series(DashedLineSeries::new(points.clone(), 6, 4, style))?
                .label(s.name.as_str())
                .legend(move |(x, y)| {
                    plotters::element::DashedPathElement::new(
                        vec![(x, y), (x + 24, y)],
                        5,
                        3,
                        ShapeStyle::from(&c).stroke_width(2),
                    )
                });
        }
        chart.draw_series(
            points
                .iter()
                .map(|p| Circle::new(*p, 3, ShapeStyle::from(&c).filled())),
        )?;
    }
    Ok(())
}

fn draw_throughput<'a>(area: &Area<'a>, series: &[ChartSeries]) -> DrawResult<'a> {
    let n = series.len().max(1) as i32;
    let max = series
        .iter()
        .map(|s| s.requests_per_sec)
        .fold(0.0f64, f64::max);
    let x_max = if max > 0.0 { max * 1.2 } else { 1.0 };
    let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption("Throughput (requests/s)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(230)
        .build_cartesian_2d(0f64..x_max, (0..n).into_segmented())?;
    // Row i (from the top) is segment n-1-i, so the first scenario is drawn first at the top.
    let row = |i: usize| n - 1 - i as i32;
    let y_label = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(k) if (0..n).contains(k) => names
            .get((n - 1 - k) as usize)
            .map_or(String::new(), |s| s.to_string()),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(series.len().max(1))
        .y_label_formatter(&y_label)
        .x_label_formatter(&|x: &f64| format!("{x:.0}"))
        .x_desc("requests/s")
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    chart.draw_series(series.iter().enumerate().map(|(i, s)| {
        let c = colour(s.colour);
        let fill = if s.keepalive {
            ShapeStyle::from(&c).filled()
        } else {
            ShapeStyle::from(&c.mix(0.45)).filled()
        };
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(row(i))),
                (s.requests_per_sec, SegmentValue::Exact(row(i) + 1)),
            ],
            fill,
        );
        bar.set_margin(5, 5, 0, 0);
        bar
    }))?;
    chart.draw_series(series.iter().enumerate().map(|(i, s)| {
        Text::new(
            format!(" {:.0}", s.requests_per_sec),
            (s.requests_per_sec, SegmentValue::CenterOf(row(i))),
            ("sans-serif", 14).into_font().color(&BLACK).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Left,
                    plotters::style::text_anchor::VPos::Center,
                ),
            ),
        )
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, colour: usize, keepalive: bool, scale: f64) -> ChartSeries {
        ChartSeries {
            name: name.to_string(),
            colour,
            keepalive,
            latency_curve: [50.0, 90.0, 99.0, 99.9, 99.99]
                .iter()
                .zip([0.2, 0.4, 1.0, 3.0, 9.0])
                .map(|(p, ms)| (*p, ms * scale))
                .collect(),
            requests_per_sec: 10_000.0 / scale,
        }
    }

    #[test]
    fn draws_both_panels_with_text() {
        let svg = render_svg(&[
            series("direct-plain-keepalive", 0, true, 1.0),
            series("passthrough-newconn", 2, false, 4.0),
        ])
        .unwrap();
        assert!(svg.contains("<svg"));
        for text in [
            "direct-plain-keepalive",
            "passthrough-newconn",
            "p99.9",
            "Throughput",
            "Latency",
            "10000",
        ] {
            assert!(svg.contains(text), "{text} missing from the SVG");
        }
    }

    #[test]
    fn survives_empty_and_zero_input() {
        assert!(render_svg(&[]).unwrap().contains("<svg"));
        let mut zero = series("x", 1, true, 1.0);
        zero.requests_per_sec = 0.0;
        zero.latency_curve.iter_mut().for_each(|p| p.1 = 0.0);
        assert!(render_svg(&[zero]).unwrap().contains("<svg"));
    }
}
