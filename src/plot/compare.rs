//! `compare --svg FILE`: the overhead over native, and the VM exits and hardware-mode traps, of
//! every scheme on every workload as grouped bars — one group per workload, one bar per scheme
//! in the order of the reports, a colour per scheme — readable as a figure in a paper. A pure
//! function of the reports: equal runs give byte-identical files.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::PlotError;
use crate::report::Report;

/// Chart size in pixels: two panels, the overhead above the exits and traps.
const SIZE: (u32, u32) = (1100, 820);
/// Space for the title, subtitle and legend.
const HEADER: u32 = 96;

/// Fifteen colours, one per scheme but native in order of first appearance (the Okabe–Ito
/// palette, then its colours darkened and greys).
const COLOURS: [RGBColor; 15] = [
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 158, 115),
    RGBColor(240, 228, 66),
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(204, 121, 167),
    RGBColor(136, 136, 136),
    RGBColor(115, 80, 0),
    RGBColor(20, 90, 120),
    RGBColor(0, 90, 65),
    RGBColor(120, 50, 0),
    RGBColor(120, 60, 100),
    RGBColor(190, 190, 190),
    RGBColor(60, 60, 60),
];

/// The grouped-bar chart of `reports` (as `compare` gives them: grouped by workload) as an SVG
/// document, `title` on top. Native, the baseline, has no bar.
pub fn svg(reports: &[Report], title: &str) -> Result<String, PlotError> {
    let mut workloads: Vec<&str> = Vec::new();
    let mut schemes: Vec<&str> = Vec::new();
    for r in reports {
        if !workloads.contains(&r.workload.as_str()) {
            workloads.push(&r.workload);
        }
        // Native is the baseline: no overhead, no exits, no bar.
        if r.scheme != "native" && !schemes.contains(&r.scheme.as_str()) {
            schemes.push(&r.scheme);
        }
    }
    if workloads.is_empty() {
        return Err(PlotError::Empty);
    }
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, SIZE).into_drawing_area();
        let grid = Grid { reports, workloads: &workloads, schemes: &schemes };
        draw(&root, &grid, title).map_err(PlotError::Draw)?;
        root.present().map_err(|e| PlotError::Draw(e.to_string()))?;
    }
    Ok(text)
}

/// The reports by (workload, scheme).
struct Grid<'a> {
    reports: &'a [Report],
    workloads: &'a [&'a str],
    schemes: &'a [&'a str],
}

impl Grid<'_> {
    fn get(&self, workload: &str, scheme: &str) -> Option<&Report> {
        self.reports.iter().find(|r| r.workload == workload && r.scheme == scheme)
    }
}

/// One panel's measure of a report.
type Measure = fn(&Report) -> Option<f64>;

fn draw(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    g: &Grid<'_>,
    title: &str,
) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let (header, body) = root.split_vertically(HEADER);
    header
        .draw(&Text::new(title.to_owned(), (12, 10), ("sans-serif", 16)))
        .map_err(|e| fail(&e))?;
    // The legend: a swatch and a name per scheme, in rows.
    for (i, s) in g.schemes.iter().enumerate() {
        let (col, row) = (i % 8, i / 8);
        let (x, y) =
            (12 + 134 * i32::try_from(col).unwrap_or(0), 40 + 24 * i32::try_from(row).unwrap_or(0));
        let colour = COLOURS[i % COLOURS.len()];
        header
            .draw(&Rectangle::new([(x, y), (x + 14, y + 14)], colour.filled()))
            .map_err(|e| fail(&e))?;
        header
            .draw(&Text::new((*s).to_owned(), (x + 20, y), ("sans-serif", 13)))
            .map_err(|e| fail(&e))?;
    }
    let (top, bottom) = body.split_vertically((SIZE.1 - HEADER) / 2);
    let overhead: Measure = |r| {
        if r.scheme == "native" {
            None
        } else {
            r.overhead_vs_native.map(|o| o * 100.0)
        }
    };
    let events: Measure = |r| Some((r.vm_exits.total + r.hw_traps.total) as f64);
    panel(&top, g, overhead, "overhead over native (%)", false)?;
    panel(&bottom, g, events, "VM exits + hardware-mode traps (log scale)", true)
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    g: &Grid<'_>,
    measure: Measure,
    label: &str,
    log: bool,
) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    let values: Vec<f64> = g.reports.iter().filter_map(measure).filter(|v| v.is_finite()).collect();
    let hi = values.iter().copied().fold(0.0_f64, f64::max);
    let lo = values.iter().copied().fold(0.0_f64, f64::min);
    let groups = g.workloads.len() as f64;
    // Log panels plot log10(1 + count) on a linear axis, labelled with the counts.
    let scale = |v: f64| if log { (1.0 + v.max(0.0)).log10() } else { v };
    let (y0, y1) = (scale(lo), scale(hi).max(scale(lo) + 1.0) * 1.08);
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..groups, y0..y1)
        .map_err(|e| fail(&e))?;
    let names = g.workloads;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(g.workloads.len() * 2 + 1)
        .x_label_formatter(&|x: &f64| group_label(names, *x))
        .y_desc(label)
        .y_label_formatter(&|y: &f64| if log { compact(10f64.powf(*y)) } else { format!("{y:.0}") })
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 13))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| fail(&e))?;
    let slots = g.schemes.len() as f64 + 1.0;
    for (w, workload) in g.workloads.iter().enumerate() {
        for (i, scheme) in g.schemes.iter().enumerate() {
            let Some(v) = g.get(workload, scheme).and_then(measure) else { continue };
            let x = w as f64 + (i as f64 + 0.5) / slots;
            let width = 0.8 / slots;
            let colour = COLOURS[i % COLOURS.len()];
            let bar =
                Rectangle::new([(x, scale(0.0).max(y0)), (x + width, scale(v))], colour.filled());
            chart.draw_series(std::iter::once(bar)).map_err(|e| fail(&e))?;
        }
    }
    Ok(())
}

/// The workload name at the middle of its group (`x` = index + 0.5), nothing elsewhere.
fn group_label(names: &[&str], x: f64) -> String {
    let i = x.floor();
    if (x - i - 0.5).abs() > 1e-9 || i < 0.0 {
        return String::new();
    }
    // Checked non-negative above; positions beyond the names find nothing.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    names.get(i as usize).map_or_else(String::new, |n| (*n).to_owned())
}

/// A count on the log axis: 1, 10, 100, 1k, 10k, 100k, 1M, ...
fn compact(v: f64) -> String {
    match v.round() {
        v if v >= 1e6 => format!("{:.0}M", v / 1e6),
        v if v >= 1e3 => format!("{:.0}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(workload: &str, scheme: &str, overhead: f64, exits: u64) -> Report {
        let mut r =
            Report { workload: workload.into(), scheme: scheme.into(), ..Report::default() };
        r.overhead_vs_native = Some(overhead);
        r.vm_exits.total = exits;
        r
    }

    #[test]
    fn one_bar_per_workload_and_scheme_and_a_legend_entry_per_scheme() {
        let reports = [
            report("fork", "native", 0.0, 0),
            report("fork", "nested", 0.1, 1000),
            report("fork", "ssp", 3.1, 34000),
            report("random", "native", 0.0, 0),
            report("random", "nested", 1.12, 65000),
            report("random", "ssp", 0.88, 131000),
        ];
        let svg = svg(&reports, "memvirt compare").unwrap();
        // nested has the second colour: a legend swatch, two overhead bars, two event bars.
        let nested = format!("fill=\"#{:02X}{:02X}{:02X}\"", 230, 159, 0);
        assert_eq!(svg.matches(&nested).count(), 1 + 2 + 2, "{nested}");
        // Native, the baseline, has neither a bar nor a legend entry.
        assert!(!svg.contains("\nnative\n"));
        for name in ["\nfork\n", "\nrandom\n", "\nssp\n"] {
            assert!(svg.contains(name), "{name}");
        }
        assert_eq!(svg, super::svg(&reports, "memvirt compare").unwrap(), "deterministic");
        assert!(matches!(super::svg(&[], "x"), Err(PlotError::Empty)));
    }
}
