//! An SVG line chart of a [`Sweep`]: the swept value on the x axis, the metric on the y axis, one
//! line per scheme with a legend. Drawn with plotters' SVG backend into a string; the caller
//! writes it (the binary writes it atomically, like `--output`).
//!
//! Each scheme keeps its colour and marker in every chart (they follow [`SchemeKind::ALL`]), and
//! lines that coincide stay distinguishable by their markers. Values that are not all numbers
//! (`walk_caches=on,off`) are placed evenly and labelled with their text. The output is a pure
//! function of the sweep, so equal sweeps give byte-identical files.

pub mod compare;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::scheme::SchemeKind;
use crate::sweep::{Metric, Sweep};

/// Chart size in pixels.
const SIZE: (u32, u32) = (960, 600);
/// One colour per scheme, in [`SchemeKind::ALL`] order (the Okabe–Ito palette, readable with
/// the common colour-vision deficiencies).
const COLOURS: [RGBColor; 7] = [
    RGBColor(0, 0, 0),
    RGBColor(136, 136, 136),
    RGBColor(0, 114, 178),
    RGBColor(86, 180, 233),
    RGBColor(0, 158, 115),
    RGBColor(213, 94, 0),
    RGBColor(204, 121, 167),
];
const MARKER: i32 = 5;

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// A sweep with no value or no scheme has nothing to draw.
    #[error("nothing to plot: the sweep has no values or no schemes")]
    Empty,
    /// plotters failed (it does not, drawing into a string, short of a bug).
    #[error("cannot draw the chart: {0}")]
    Draw(String),
}

/// The chart of `sweep` as an SVG document. Its title says what was swept; `subtitle` (the
/// profile, seed and settings, say) goes on a smaller line under it, unless empty.
pub fn svg(sweep: &Sweep, subtitle: &str) -> Result<String, PlotError> {
    if sweep.values.is_empty() || sweep.schemes.is_empty() {
        return Err(PlotError::Empty);
    }
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, SIZE).into_drawing_area();
        draw(&root, sweep, subtitle).map_err(PlotError::Draw)?;
        root.present().map_err(|e| PlotError::Draw(e.to_string()))?;
    }
    Ok(text)
}

fn draw(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    sweep: &Sweep,
    subtitle: &str,
) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    area.fill(&WHITE).map_err(|e| fail(&e))?;
    let title = format!("{}: {} by {}", sweep.workload, sweep.metric.label(), sweep.key);
    let mut area = area.titled(&title, ("sans-serif", fit(&title, 22.0))).map_err(|e| fail(&e))?;
    if !subtitle.is_empty() {
        let style = ("sans-serif", fit(subtitle, 15.0)).into_font().color(&RGBColor(80, 80, 80));
        area = area.titled(subtitle, style).map_err(|e| fail(&e))?;
    }
    let numeric = sweep.numeric_values();
    // Not all numbers: evenly spaced, labelled with the values' text.
    let xs: Vec<f64> =
        numeric.clone().unwrap_or_else(|| (0..sweep.values.len()).map(|i| i as f64).collect());
    let (x_lo, x_hi) = padded(&xs, numeric.is_none());
    let ys: Vec<f64> =
        sweep.matrix.iter().flatten().flatten().copied().filter(|y| y.is_finite()).collect();
    let y_lo = ys.iter().copied().fold(0.0, f64::min);
    let y_top = ys.iter().copied().fold(0.0, f64::max);
    let y_hi = if y_top > y_lo { y_top + (y_top - y_lo) * 0.08 } else { y_lo + 1.0 };

    let mut chart = ChartBuilder::on(&area)
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
        .map_err(|e| fail(&e))?;
    let x_label = |x: &f64| match &numeric {
        Some(_) => tidy(*x),
        None => category(&sweep.values, *x),
    };
    let y_label = |y: &f64| y_tick(sweep.metric, *y);
    chart
        .configure_mesh()
        .x_labels(sweep.values.len().clamp(2, 12))
        .y_labels(10)
        .x_desc(sweep.key.as_str())
        .y_desc(sweep.metric.label())
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| fail(&e))?;

    for (column, &scheme) in sweep.schemes.iter().enumerate() {
        let points: Vec<(f64, f64)> = xs
            .iter()
            .zip(&sweep.matrix)
            .filter_map(|(&x, row)| row.get(column).copied().flatten().map(|y| (x, y)))
            .collect();
        let index = SchemeKind::ALL.iter().position(|&s| s == scheme).unwrap_or(column);
        let colour = COLOURS[index % COLOURS.len()];
        let line = colour.stroke_width(2);
        chart
            .draw_series(LineSeries::new(points.iter().copied(), line))
            .map_err(|e| fail(&e))?
            .label(scheme.name())
            .legend(move |(x, y)| {
                EmptyElement::at((x + 10, y))
                    + PathElement::new(vec![(-10, 0), (10, 0)], line)
                    + marker(index, (0, 0), colour)
            });
        chart
            .draw_series(points.iter().map(|&p| marker(index, p, colour)))
            .map_err(|e| fail(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .draw()
        .map_err(|e| fail(&e))
}

/// A font size no larger than `size` at which `text` fits across the chart. plotters sets SVG
/// text at `size / 1.24` px; a sans-serif character is about 0.55 of that wide on average, so
/// 0.47 × size per character leaves some room.
fn fit(text: &str, size: f64) -> f64 {
    let room = f64::from(SIZE.0) - 40.0;
    let chars = text.chars().count().max(1) as f64;
    size.min(room / (0.47 * chars)).max(9.0)
}

/// The x range: the values' span with a little room at each end (half a step for categories).
fn padded(xs: &[f64], categories: bool) -> (f64, f64) {
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if categories {
        return (lo - 0.5, hi + 0.5);
    }
    let room = if hi > lo { (hi - lo) * 0.03 } else { lo.abs().max(1.0) * 0.5 };
    (lo - room, hi + room)
}

/// One scheme's marker at `at`: a different shape for each scheme, so coinciding lines show.
fn marker<DB: DrawingBackend, C>(
    index: usize,
    at: C,
    colour: RGBColor,
) -> DynElement<'static, DB, C>
where
    C: Clone + 'static,
{
    match index % 4 {
        0 => Circle::new(at, MARKER, colour.filled()).into_dyn(),
        1 => TriangleMarker::new(at, MARKER + 2, colour.filled()).into_dyn(),
        2 => Cross::new(at, MARKER, colour.stroke_width(2)).into_dyn(),
        _ => Circle::new(at, MARKER, colour.stroke_width(2)).into_dyn(),
    }
}

/// `x` without float noise (`0.30000000000000004` is `0.3`).
fn tidy(x: f64) -> String {
    let rounded = (x * 1e9).round() / 1e9;
    if rounded == 0.0 {
        "0".to_owned()
    } else {
        rounded.to_string()
    }
}

/// The label of category position `x`: the value there, or nothing between values.
fn category(values: &[String], x: f64) -> String {
    let nearest = x.round();
    if (x - nearest).abs() > 1e-6 || nearest < 0.0 {
        return String::new();
    }
    // Checked non-negative above; positions beyond the values find nothing.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    values.get(nearest as usize).cloned().unwrap_or_default()
}

/// A y tick in the metric's own form: counts with thousands separators, overhead in percent.
fn y_tick(metric: Metric, y: f64) -> String {
    match metric {
        Metric::Overhead => format!("{:+.0}%", y * 100.0),
        Metric::RefsPerMiss => format!("{y:.2}"),
        _ if y.fract().abs() > 1e-9 || y.abs() >= 1e15 => tidy(y),
        _ => {
            // Whole and well below 2^53 here.
            #[allow(clippy::cast_possible_truncation)]
            let n = y as i64;
            thousands(n)
        }
    }
}

/// `n` with `,` between groups of three digits.
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep(values: &[&str], schemes: &[SchemeKind], metric: Metric) -> Sweep {
        let matrix = values
            .iter()
            .enumerate()
            .map(|(v, _)| (0..schemes.len()).map(|s| Some((v * 1000 + s * 10) as f64)).collect())
            .collect();
        Sweep {
            workload: "lsp-micro".to_owned(),
            profile: "riscv-sv39".to_owned(),
            seed: 1,
            key: "workload.modify_ratio".to_owned(),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
            schemes: schemes.to_vec(),
            metric,
            matrix,
            reports: Vec::new(),
        }
    }

    fn chart(s: &Sweep) -> String {
        match svg(s, "a subtitle") {
            Ok(text) => text,
            Err(e) => panic!("{e}"),
        }
    }

    /// The contents of the chart's `<text>` elements, trimmed.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = t.split_once('>')?.1;
                Some(body.split_once("</text>")?.0.trim().to_owned())
            })
            .collect()
    }

    #[test]
    fn the_chart_names_every_scheme_the_axes_and_the_title() {
        let s =
            sweep(&["0", "0.5", "1"], &[SchemeKind::Tsp, SchemeKind::Lsp], Metric::ExitsAndTraps);
        let text = chart(&s);
        assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(200)]);
        assert!(text.trim_end().ends_with("</svg>"));
        let texts = texts(&text);
        for needle in [
            "tsp",
            "lsp",
            "workload.modify_ratio",
            "lsp-micro: VM exits + hardware-mode traps by workload.modify_ratio",
            "a subtitle",
        ] {
            assert!(texts.iter().any(|t| t == needle), "{needle} missing from {texts:?}");
        }
        assert_eq!(text, chart(&s), "the chart is a pure function of the sweep");
    }

    #[test]
    fn non_numeric_values_become_labelled_categories() {
        let s = sweep(&["on", "off"], &[SchemeKind::Nested], Metric::Overhead);
        let text = chart(&s);
        let texts = texts(&text);
        assert!(texts.iter().any(|t| t == "on") && texts.iter().any(|t| t == "off"), "{texts:?}");
        assert!(text.contains('%'));
    }

    #[test]
    fn empty_sweeps_and_missing_points_do_not_panic() {
        let mut s = sweep(&["1"], &[SchemeKind::Tsp], Metric::Overhead);
        s.matrix = vec![vec![None]];
        assert!(svg(&s, "t").is_ok());
        s.values.clear();
        assert!(matches!(svg(&s, "t"), Err(PlotError::Empty)));
    }

    #[test]
    fn ticks_read_naturally() {
        assert_eq!(tidy(0.30000000000000004), "0.3");
        assert_eq!(tidy(-0.0), "0");
        assert_eq!(thousands(204_104), "204,104");
        assert_eq!(thousands(-1_000), "-1,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(y_tick(Metric::Overhead, 0.25), "+25%");
        assert_eq!(y_tick(Metric::Exits, 20_000.0), "20,000");
        assert_eq!(y_tick(Metric::Exits, 2.5), "2.5");
        assert_eq!(category(&["a".into(), "b".into()], 1.0), "b");
        assert_eq!(category(&["a".into(), "b".into()], 0.5), "");
        assert_eq!(category(&["a".into()], 3.0), "");
    }
}
