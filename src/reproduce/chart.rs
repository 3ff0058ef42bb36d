//! The SVG of a reproduction: one panel per claim, its published range shaded and memvirt's
//! figures as dots on the claim's own axis (filled when judged, hollow for asides), so each
//! claim reads at a glance as inside, beside or far from what was published. A pure function
//! of the reproduction: equal runs give byte-identical files.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{tidy, Reproduction, Verdict};
use crate::plot::PlotError;

/// Width, and height of one claim's panel, in pixels.
const WIDTH: u32 = 960;
const PANEL: u32 = 150;
const HEADER: u32 = 60;

/// The chart of `r` as an SVG document.
pub fn svg(r: &Reproduction) -> Result<String, PlotError> {
    if r.claims.is_empty() {
        return Err(PlotError::Empty);
    }
    let height = HEADER + PANEL * u32::try_from(r.claims.len()).unwrap_or(1);
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (WIDTH, height)).into_drawing_area();
        draw(&root, r).map_err(PlotError::Draw)?;
        root.present().map_err(|e| PlotError::Draw(e.to_string()))?;
    }
    Ok(text)
}

fn draw(root: &DrawingArea<SVGBackend<'_>, Shift>, r: &Reproduction) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let title = format!("memvirt reproduce {}: published (shaded) against memvirt (dots)", r.paper);
    let (header, body) = root.split_vertically(HEADER);
    header.draw(&Text::new(title, (10, 12), ("sans-serif", 20))).map_err(|e| fail(&e))?;
    header
        .draw(&Text::new(
            r.setup.clone(),
            (10, 38),
            ("sans-serif", 13).into_font().color(&RGBColor(80, 80, 80)),
        ))
        .map_err(|e| fail(&e))?;
    let panels = body.split_evenly((r.claims.len(), 1));
    for (claim, area) in r.claims.iter().zip(&panels) {
        let values: Vec<f64> = claim
            .figures
            .iter()
            .map(|f| f.value)
            .chain(claim.range)
            .filter(|v| v.is_finite())
            .collect();
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let pad = ((hi - lo) * 0.08).max(lo.abs().max(1.0) * 0.05);
        let colour = match claim.verdict {
            Verdict::Reproduced => RGBColor(0, 158, 115),
            Verdict::Trend => RGBColor(230, 159, 0),
            Verdict::Differs => RGBColor(213, 94, 0),
        };
        let caption = format!(
            "{} [{}] {} — published {}, memvirt {}",
            claim.id,
            claim.verdict.name(),
            claim.claim,
            claim.published,
            tidy(claim.judged)
        );
        let mut chart = ChartBuilder::on(area)
            .margin(8)
            .caption(caption, ("sans-serif", 14).into_font().color(&colour))
            .x_label_area_size(34)
            .build_cartesian_2d((lo - pad)..(hi + pad), 0.0..1.0)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .disable_y_axis()
            .x_labels(8)
            .x_desc(claim.unit.as_str())
            .x_label_formatter(&|x: &f64| tidy(*x))
            .label_style(("sans-serif", 12))
            .axis_desc_style(("sans-serif", 12))
            .light_line_style(RGBColor(240, 240, 240))
            .draw()
            .map_err(|e| fail(&e))?;
        let [a, b] = claim.range;
        let band = RGBColor(120, 120, 120).mix(0.25);
        let width = if b > a { b - a } else { (hi - lo + 2.0 * pad) * 0.004 };
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(a, 0.05), (a + width, 0.95)],
                band.filled(),
            )))
            .map_err(|e| fail(&e))?;
        let n = claim.figures.len().max(1) as f64;
        for (i, f) in claim.figures.iter().enumerate().filter(|(_, f)| f.value.is_finite()) {
            // Spread the dots vertically so labels of close values do not overlap.
            let y = 0.15 + 0.7 * (i as f64 + 0.5) / n;
            let style = if f.aside { colour.stroke_width(2) } else { colour.filled() };
            // The label beside the dot, on its left in the right third of the axis.
            let right = f.value > lo - pad + (hi - lo + 2.0 * pad) * 0.66;
            let (offset, anchor) = if right { (-8, HPos::Right) } else { (8, HPos::Left) };
            let font =
                TextStyle::from(("sans-serif", 11).into_font()).pos(Pos::new(anchor, VPos::Center));
            let label = format!("{} {}", f.label, tidy(f.value));
            chart
                .draw_series(std::iter::once(
                    EmptyElement::at((f.value, y))
                        + Circle::new((0, 0), 5, style)
                        + Text::new(label, (offset, 0), font),
                ))
                .map_err(|e| fail(&e))?;
        }
    }
    Ok(())
}
