//! Rendering reports for people and programs: an aligned table, JSON and CSV.
//!
//! The JSON form is the [`Report`] struct serialized as it is, a pretty-printed array; its field
//! names are the contract documented in `docs/json.md` (fields may be added, never renamed or
//! removed). The CSV form flattens the headline numbers of each report into one row. Both are
//! deterministic: identical reports render to identical bytes.
//!
//! [`render_bench`] does the same for the wall-clock timings of `memvirt bench`, and
//! [`render_sweep`] for the metric matrix of `memvirt sweep`.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use crate::report::Report;
use crate::sweep::{Metric, Sweep};

/// How reports are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal, after a title line.
    #[default]
    Table,
    /// Pretty-printed JSON (`docs/json.md`): an array of report objects (`sweep`: one object).
    Json,
    /// A header row, then one row per report (`sweep`: per value).
    Csv,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Table => "table",
            Format::Json => "json",
            Format::Csv => "csv",
        })
    }
}

/// Why rendering failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// serde_json refused a value (a report holds nothing it should refuse).
    #[error("cannot serialize as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The output has no form in the format asked for.
    #[error("{0}")]
    Unsupported(String),
}

/// The wall-clock timing of one run, as `memvirt bench` measures it on the current machine.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchRow {
    /// Workload name.
    pub workload: String,
    /// Scheme name.
    pub scheme: String,
    /// Profile name.
    pub profile: String,
    /// Seed.
    pub seed: u64,
    /// Guest accesses simulated.
    pub accesses: u64,
    /// Wall-clock seconds of the run (building the workload, booting, running, reporting).
    pub wall_seconds: f64,
    /// Millions of simulated accesses per wall-clock second.
    pub maccesses_per_second: f64,
}

impl BenchRow {
    /// A row from a run's report and its wall-clock time.
    pub fn new(report: &Report, wall_seconds: f64) -> Self {
        let rate =
            if wall_seconds > 0.0 { report.accesses as f64 / wall_seconds / 1e6 } else { 0.0 };
        BenchRow {
            workload: report.workload.clone(),
            scheme: report.scheme.clone(),
            profile: report.profile.clone(),
            seed: report.seed,
            accesses: report.accesses,
            wall_seconds,
            maccesses_per_second: rate,
        }
    }
}

/// `reports` in `format`. `title` is the first line of a table; JSON and CSV leave it out so
/// that they stay machine-readable. The result ends with a newline.
pub fn render(reports: &[Report], format: Format, title: &str) -> Result<String, RenderError> {
    match format {
        Format::Table => Ok(report_table(reports, title)),
        Format::Json => json(reports),
        Format::Csv => Ok(report_csv(reports)),
    }
}

/// A comparison with its cost sensitivity (`compare --sensitivity`): the table followed by the
/// analysis, or one JSON object `{"reports": [...], "sensitivity": {...}}`. CSV has no place for
/// it: an error.
pub fn render_with_sensitivity(
    reports: &[Report],
    sensitivity: &crate::sensitivity::Sensitivity,
    format: Format,
    title: &str,
) -> Result<String, RenderError> {
    #[derive(serde::Serialize)]
    struct WithSensitivity<'a> {
        reports: &'a [Report],
        sensitivity: &'a crate::sensitivity::Sensitivity,
    }
    match format {
        Format::Table => {
            Ok(report_table(reports, title) + &crate::sensitivity::render(sensitivity))
        }
        Format::Json => json(&WithSensitivity { reports, sensitivity }),
        Format::Csv => Err(RenderError::Unsupported(
            "--sensitivity has no CSV form: use --format table or json".into(),
        )),
    }
}

/// Bench timings in `format`, like [`render`].
pub fn render_bench(rows: &[BenchRow], format: Format, title: &str) -> Result<String, RenderError> {
    match format {
        Format::Table => {
            let mut t = Table::new(&[
                ("workload", Align::Left),
                ("scheme", Align::Left),
                ("accesses", Align::Right),
                ("wall_s", Align::Right),
                ("Macc/s", Align::Right),
            ]);
            for r in rows {
                t.row(vec![
                    r.workload.clone(),
                    r.scheme.clone(),
                    r.accesses.to_string(),
                    format!("{:.3}", r.wall_seconds),
                    format!("{:.1}", r.maccesses_per_second),
                ]);
            }
            Ok(t.render(title))
        }
        Format::Json => json(rows),
        Format::Csv => {
            let mut out = String::from(
                "workload,scheme,profile,seed,accesses,wall_seconds,maccesses_per_second\n",
            );
            for r in rows {
                let cells = [
                    r.workload.clone(),
                    r.scheme.clone(),
                    r.profile.clone(),
                    r.seed.to_string(),
                    r.accesses.to_string(),
                    r.wall_seconds.to_string(),
                    r.maccesses_per_second.to_string(),
                ];
                csv_line(&mut out, &cells);
            }
            Ok(out)
        }
    }
}

/// A sweep in `format`: a table with one row per value and one column per scheme (after
/// `title`), the [`Sweep`] as one JSON object (`docs/json.md`), or CSV with the table's rows and
/// the metric's plain numbers (an unknown overhead is an empty cell).
pub fn render_sweep(sweep: &Sweep, format: Format, title: &str) -> Result<String, RenderError> {
    let mut header = vec![sweep.key.as_str()];
    header.extend(sweep.schemes.iter().map(|s| s.name()));
    let rows = sweep.values.iter().zip(&sweep.matrix);
    match format {
        Format::Table => {
            let columns: Vec<(&str, Align)> = header.iter().map(|&h| (h, Align::Right)).collect();
            let mut t = Table::new(&columns);
            for (value, row) in rows {
                let mut cells = vec![value.clone()];
                cells.extend(row.iter().map(|&m| metric_cell(sweep.metric, m)));
                t.row(cells);
            }
            let reports: Vec<Report> = sweep.reports.iter().flatten().cloned().collect();
            Ok(t.render(title) + &compute_and_warmup(&reports))
        }
        Format::Json => json(sweep),
        Format::Csv => {
            let mut out = String::new();
            csv_line(&mut out, &header.iter().map(|&h| h.to_owned()).collect::<Vec<_>>());
            for (value, row) in rows {
                let mut cells = vec![value.clone()];
                cells.extend(row.iter().map(|m| m.map(|m| m.to_string()).unwrap_or_default()));
                csv_line(&mut out, &cells);
            }
            Ok(out)
        }
    }
}

/// A metric value in a table cell: counts whole, overhead in percent, means to two places.
fn metric_cell(metric: Metric, value: Option<f64>) -> String {
    match (metric, value) {
        (Metric::Overhead, v) => overhead_percent(v),
        (_, None) => "-".to_owned(),
        (Metric::RefsPerMiss, Some(v)) => format!("{v:.2}"),
        (_, Some(v)) => format!("{v:.0}"),
    }
}

fn json<T: Serialize + ?Sized>(value: &T) -> Result<String, RenderError> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    Ok(text)
}

/// `+12.3%`, or `-` when the native baseline is unknown.
pub fn overhead_percent(overhead: Option<f64>) -> String {
    overhead.map_or_else(|| "-".to_owned(), |o| format!("{:+.1}%", o * 100.0))
}

/// Reports with `columns` in front of their own (`(name, one cell per report)`), as a table or
/// CSV: the rows of `memvirt experiment collect`, whose columns say each point's settings. JSON
/// has its own form there (an error here).
pub fn render_with_columns(
    reports: &[Report],
    columns: &[(String, Vec<String>)],
    format: Format,
    title: &str,
) -> Result<String, RenderError> {
    match format {
        Format::Table => Ok(table_with(reports, columns, title)),
        Format::Csv => Ok(csv_with(reports, columns)),
        Format::Json => Err(RenderError::Unsupported("JSON of points is the experiment's".into())),
    }
}

/// The cells of row `i` of `columns`.
fn leading_cells(columns: &[(String, Vec<String>)], i: usize) -> Vec<String> {
    columns.iter().map(|(_, cells)| cells.get(i).cloned().unwrap_or_default()).collect()
}

fn report_table(reports: &[Report], title: &str) -> String {
    table_with(reports, &[], title)
}

fn table_with(reports: &[Report], columns: &[(String, Vec<String>)], title: &str) -> String {
    let mut header: Vec<(&str, Align)> =
        columns.iter().map(|(name, _)| (name.as_str(), Align::Left)).collect();
    header.extend([
        ("workload", Align::Left),
        ("scheme", Align::Left),
        ("accesses", Align::Right),
        ("tlb_misses", Align::Right),
        ("refs/miss", Align::Right),
        ("vm_exits", Align::Right),
        ("hw_traps", Align::Right),
        ("guest_faults", Align::Right),
        ("cycles", Align::Right),
        ("overhead", Align::Right),
    ]);
    let mut t = Table::new(&header);
    for (i, r) in reports.iter().enumerate() {
        let mut row = leading_cells(columns, i);
        row.extend([
            r.workload.clone(),
            r.scheme.clone(),
            r.accesses.to_string(),
            r.tlb_misses.to_string(),
            format!("{:.2}", r.walk_refs_per_miss),
            r.vm_exits.total.to_string(),
            r.hw_traps.total.to_string(),
            r.guest_page_faults.to_string(),
            r.cycles.to_string(),
            overhead_percent(r.overhead_vs_native),
        ]);
        t.row(row);
    }
    let mut text = t.render(title);
    text.push_str(&compute_and_warmup(reports));
    let verified: Vec<_> = reports.iter().filter_map(|r| r.oracle).collect();
    if !verified.is_empty() {
        let checks: u64 = verified.iter().map(|o| o.checks).sum();
        let stale: u64 = verified.iter().map(|o| o.stale_allowed).sum();
        text.push_str(&format!(
            "translation oracle: {checks} TLB fills checked, {stale} stale but allowed, no \
             violation\n"
        ));
    }
    text
}

/// The lines under a table that say what its cycles assume: the compute model (every overhead
/// depends on it) and, per workload, what its warm-up ran uncounted.
fn compute_and_warmup(reports: &[Report]) -> String {
    let mut models: Vec<String> = Vec::new();
    let mut warmups: Vec<String> = Vec::new();
    for r in reports {
        let model = r.compute.describe();
        if !r.compute.model.is_empty() && !models.contains(&model) {
            models.push(model);
        }
        if let Some(w) = &r.warmup {
            let what = match w.instructions {
                Some(i) => format!(
                    "{}: {i} instructions ({} accesses) until every stream ran {}",
                    r.workload, w.accesses, w.requested
                ),
                None => format!("{}: {} user accesses", r.workload, w.accesses),
            };
            if !warmups.contains(&what) {
                warmups.push(what);
            }
        }
    }
    let mut text = String::new();
    if !models.is_empty() {
        text.push_str(&format!("compute model: {}\n", models.join("; ")));
    }
    if !warmups.is_empty() {
        text.push_str(&format!("warm-up, not counted: {}\n", warmups.join("; ")));
    }
    text
}

/// The `cycles_by_category` fields, in declaration order, with their values.
fn cycle_categories(r: &Report) -> [(&'static str, u64); 7] {
    let c = &r.cycles_by_category;
    [
        ("tlb", c.tlb),
        ("walk", c.walk),
        ("vm_exit", c.vm_exit),
        ("hw_trap", c.hw_trap),
        ("guest_kernel", c.guest_kernel),
        ("compute", c.compute),
        ("emulator", c.emulator),
    ]
}

/// The CSV columns, derived from the reports: the cause columns are every cause any report
/// names (each report names every cause, so in practice those of the first).
fn csv_header(reports: &[Report]) -> (Vec<String>, Vec<&str>, Vec<&str>) {
    let exits: BTreeSet<&str> =
        reports.iter().flat_map(|r| r.vm_exits.by_cause.keys().map(String::as_str)).collect();
    let traps: BTreeSet<&str> =
        reports.iter().flat_map(|r| r.hw_traps.by_cause.keys().map(String::as_str)).collect();
    let exits: Vec<_> = exits.into_iter().collect();
    let traps: Vec<_> = traps.into_iter().collect();
    let mut header: Vec<String> = [
        "scheme",
        "workload",
        "profile",
        "seed",
        "accesses",
        "tlb_misses",
        "walk_refs_per_miss",
        "vm_exits_total",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    header.extend(exits.iter().map(|c| format!("vm_exits_{c}")));
    header.push("hw_traps_total".to_owned());
    header.extend(traps.iter().map(|c| format!("hw_traps_{c}")));
    header.extend(["guest_page_faults", "cycles", "overhead_vs_native"].map(str::to_owned));
    header.extend(cycle_categories(&Report::default()).iter().map(|(c, _)| format!("cycles_{c}")));
    header.extend(["tlb_l1_hits", "tlb_l2_hits", "context_switches", "history"].map(str::to_owned));
    (header, exits, traps)
}

fn report_csv(reports: &[Report]) -> String {
    csv_with(reports, &[])
}

fn csv_with(reports: &[Report], columns: &[(String, Vec<String>)]) -> String {
    let (mut header, exits, traps) = csv_header(reports);
    header.splice(0..0, columns.iter().map(|(name, _)| name.clone()));
    let mut out = String::new();
    csv_line(&mut out, &header);
    // A cause a report lacks (none does) is an empty cell rather than an invented 0.
    let count = |map: &std::collections::BTreeMap<String, u64>, c: &str| {
        map.get(c).map(u64::to_string).unwrap_or_default()
    };
    for (i, r) in reports.iter().enumerate() {
        let mut row = leading_cells(columns, i);
        row.extend([
            r.scheme.clone(),
            r.workload.clone(),
            r.profile.clone(),
            r.seed.to_string(),
            r.accesses.to_string(),
            r.tlb_misses.to_string(),
            r.walk_refs_per_miss.to_string(),
            r.vm_exits.total.to_string(),
        ]);
        row.extend(exits.iter().map(|c| count(&r.vm_exits.by_cause, c)));
        row.push(r.hw_traps.total.to_string());
        row.extend(traps.iter().map(|c| count(&r.hw_traps.by_cause, c)));
        row.push(r.guest_page_faults.to_string());
        row.push(r.cycles.to_string());
        row.push(r.overhead_vs_native.map(|o| o.to_string()).unwrap_or_default());
        row.extend(cycle_categories(r).iter().map(|(_, n)| n.to_string()));
        row.push(r.tlb.l1_hits.to_string());
        row.push(r.tlb.l2_hits.to_string());
        row.push(r.guest.context_switches.to_string());
        row.push(r.guest.history.clone());
        csv_line(&mut out, &row);
    }
    out
}

/// Appends one CSV record (RFC 4180: a field holding a comma, quote or line break is quoted,
/// quotes doubled).
fn csv_line(out: &mut String, cells: &[String]) {
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if cell.contains([',', '"', '\n', '\r']) {
            out.push('"');
            out.push_str(&cell.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(cell);
        }
    }
    out.push('\n');
}

/// Column alignment.
#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// A table whose columns are as wide as their widest cell.
struct Table {
    header: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[(&str, Align)]) -> Self {
        let header = header.iter().map(|&(name, align)| (name.to_owned(), align)).collect();
        Table { header, rows: Vec::new() }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, title: &str) -> String {
        let widths: Vec<usize> = self
            .header
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let cells = self.rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count());
                cells.fold(name.len(), usize::max)
            })
            .collect();
        let mut out = String::new();
        if !title.is_empty() {
            out.push_str(title);
            out.push('\n');
        }
        let names: Vec<String> = self.header.iter().map(|(n, _)| n.clone()).collect();
        self.line(&mut out, &names, &widths);
        for r in &self.rows {
            self.line(&mut out, r, &widths);
        }
        out
    }

    fn line(&self, out: &mut String, cells: &[String], widths: &[usize]) {
        let mut line = String::new();
        for (i, ((cell, width), (_, align))) in
            cells.iter().zip(widths).zip(&self.header).enumerate()
        {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = " ".repeat(width.saturating_sub(cell.chars().count()));
            match align {
                Align::Left => {
                    line.push_str(cell);
                    line.push_str(&pad);
                }
                Align::Right => {
                    line.push_str(&pad);
                    line.push_str(cell);
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::OracleCounts;
    use crate::report::CauseCounts;
    use crate::stats::{ExitCause, Stats, TrapCause};

    fn report(scheme: &str, cycles: u64, overhead: Option<f64>) -> Report {
        let mut r = Report {
            scheme: scheme.to_owned(),
            workload: "pagefault".to_owned(),
            profile: "riscv-sv39".to_owned(),
            seed: 7,
            accesses: 1000,
            tlb_misses: 40,
            walk_refs_per_miss: 14.5,
            vm_exits: CauseCounts::exits(&Stats::default()),
            hw_traps: CauseCounts::traps(&Stats::default()),
            guest_page_faults: 20,
            cycles,
            overhead_vs_native: overhead,
            ..Report::default()
        };
        r.guest.history = "00000000deadbeef".to_owned();
        r.cycles_by_category.walk = 123;
        r
    }

    fn two_reports() -> Vec<Report> {
        vec![report("native", 1000, Some(0.0)), report("nested", 1123, Some(0.123))]
    }

    fn render_ok(reports: &[Report], format: Format) -> String {
        match render(reports, format, "title line") {
            Ok(text) => text,
            Err(e) => panic!("render failed: {e}"),
        }
    }

    #[test]
    fn overhead_is_a_signed_percentage_or_a_dash() {
        assert_eq!(overhead_percent(Some(0.123)), "+12.3%");
        assert_eq!(overhead_percent(Some(-0.05)), "-5.0%");
        assert_eq!(overhead_percent(Some(0.0)), "+0.0%");
        assert_eq!(overhead_percent(None), "-");
    }

    #[test]
    fn table_has_title_header_and_aligned_rows() {
        let mut reports = two_reports();
        reports[1].overhead_vs_native = None;
        let text = render_ok(&reports, Format::Table);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0], "title line");
        assert!(lines[1].starts_with("workload") && lines[1].ends_with("overhead"), "{text}");
        assert!(lines[2].contains("14.50") && lines[2].ends_with("+0.0%"), "{text}");
        assert!(lines[3].ends_with(" -"), "{text}");
        // The last column is right-aligned, so every line ends in the same column.
        assert!(lines[2..].iter().all(|l| l.len() == lines[1].len()), "{text}");
    }

    #[test]
    fn table_sums_the_oracle_counts_of_verified_reports_only() {
        let mut reports = two_reports();
        assert!(!render_ok(&reports, Format::Table).contains("oracle"));
        let counts = |checks, stale_allowed| OracleCounts { checks, stale_allowed };
        reports[0].oracle = Some(counts(10, 1));
        reports[1].oracle = Some(counts(20, 0));
        let text = render_ok(&reports, Format::Table);
        let last = text.lines().last().unwrap_or_default();
        assert_eq!(
            last,
            "translation oracle: 30 TLB fills checked, 1 stale but allowed, no violation"
        );
    }

    #[test]
    fn json_is_an_array_of_reports_and_deterministic() -> Result<(), serde_json::Error> {
        let reports = two_reports();
        let text = render_ok(&reports, Format::Json);
        assert_eq!(text, render_ok(&reports, Format::Json));
        let value: serde_json::Value = serde_json::from_str(&text)?;
        let array = value.as_array().map(Vec::len);
        assert_eq!(array, Some(2));
        assert_eq!(value[1]["scheme"], "nested");
        assert_eq!(value[1]["vm_exits"]["total"], 0);
        assert_eq!(value[0]["overhead_vs_native"], 0.0);
        assert!(!text.contains("title line"));
        Ok(())
    }

    #[test]
    fn csv_has_a_column_per_cause_and_category() {
        let text = render_ok(&two_reports(), Format::Csv);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let header: Vec<&str> = lines[0].split(',').collect();
        for c in ExitCause::ALL {
            assert!(header.contains(&format!("vm_exits_{}", c.name()).as_str()), "{c:?}");
        }
        for c in TrapCause::ALL {
            assert!(header.contains(&format!("hw_traps_{}", c.name()).as_str()), "{c:?}");
        }
        for row in &lines[1..] {
            assert_eq!(row.split(',').count(), header.len(), "{row}");
        }
        let col = |name: &str| header.iter().position(|h| *h == name);
        let row: Vec<&str> = lines[2].split(',').collect();
        assert_eq!(col("cycles_walk").and_then(|i| row.get(i).copied()), Some("123"));
        assert_eq!(col("overhead_vs_native").and_then(|i| row.get(i).copied()), Some("0.123"));
        assert_eq!(col("history").and_then(|i| row.get(i).copied()), Some("00000000deadbeef"));
        assert_eq!(header.first(), Some(&"scheme"));
    }

    #[test]
    fn csv_covers_every_cycle_category() -> Result<(), serde_json::Error> {
        // A field added to `Cycles` must get a column too.
        let value = serde_json::to_value(Report::default().cycles_by_category)?;
        let fields = value.as_object().map(|o| o.len());
        assert_eq!(fields, Some(cycle_categories(&Report::default()).len()));
        for (name, _) in cycle_categories(&Report::default()) {
            assert!(value.get(name).is_some(), "{name}");
        }
        Ok(())
    }

    #[test]
    fn csv_leaves_unknown_overhead_empty_and_quotes_when_needed() {
        let mut r = report("native", 10, None);
        r.workload = "a,\"b\"".to_owned();
        let text = render_ok(&[r], Format::Csv);
        let row = text.lines().nth(1).unwrap_or_default();
        assert!(row.contains(",\"a,\"\"b\"\"\","), "{row}");
        assert!(row.contains(",10,,"), "{row}");
    }

    #[test]
    fn bench_rows_give_millions_of_accesses_per_second() -> Result<(), RenderError> {
        let row = BenchRow::new(&report("native", 1, None), 0.0005);
        assert!((row.maccesses_per_second - 2.0).abs() < 1e-9);
        assert_eq!(BenchRow::new(&report("native", 1, None), 0.0).maccesses_per_second, 0.0);
        let table = render_bench(std::slice::from_ref(&row), Format::Table, "bench")?;
        assert!(table.lines().nth(2).is_some_and(|l| l.ends_with("2.0")), "{table}");
        let csv = render_bench(&[row], Format::Csv, "bench")?;
        assert_eq!(csv.lines().count(), 2);
        assert!(csv.starts_with("workload,scheme,"));
        Ok(())
    }

    fn sweep_of(metric: Metric, matrix: Vec<Vec<Option<f64>>>) -> Sweep {
        use crate::scheme::SchemeKind;
        Sweep {
            workload: "lsp-micro".to_owned(),
            profile: "riscv-sv39".to_owned(),
            seed: 1,
            key: "workload.modify_ratio".to_owned(),
            values: vec!["0".to_owned(), "0.5".to_owned()],
            schemes: vec![SchemeKind::Tsp, SchemeKind::Lsp],
            metric,
            matrix,
            reports: Vec::new(),
        }
    }

    #[test]
    fn sweeps_render_a_row_per_value_and_a_column_per_scheme() -> Result<(), RenderError> {
        let counts = vec![vec![Some(134.0), Some(99.0)], vec![Some(334.0), Some(199.0)]];
        let s = sweep_of(Metric::ExitsAndTraps, counts);
        let table = render_sweep(&s, Format::Table, "title line")?;
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines,
            [
                "title line",
                "workload.modify_ratio  tsp  lsp",
                "                    0  134   99",
                "                  0.5  334  199",
            ]
        );
        let csv = render_sweep(&s, Format::Csv, "title line")?;
        assert_eq!(csv, "workload.modify_ratio,tsp,lsp\n0,134,99\n0.5,334,199\n");
        let json: serde_json::Value = serde_json::from_str(&render_sweep(&s, Format::Json, "")?)?;
        assert_eq!(json["matrix"][1][0].as_u64(), Some(334), "whole numbers as integers");
        assert_eq!(json["schemes"][1], "lsp");
        assert_eq!(json["metric"], "exits-and-traps");

        let s =
            sweep_of(Metric::Overhead, vec![vec![Some(0.25), None], vec![Some(0.5), Some(1.0)]]);
        let table = render_sweep(&s, Format::Table, "")?;
        let row: Vec<&str> = table.lines().nth(1).unwrap_or_default().split_whitespace().collect();
        assert_eq!(row, ["0", "+25.0%", "-"], "{table}");
        let csv = render_sweep(&s, Format::Csv, "")?;
        assert!(csv.contains("\n0,0.25,\n"), "{csv}");
        Ok(())
    }

    #[test]
    fn format_displays_its_command_line_name() {
        for f in [Format::Table, Format::Json, Format::Csv] {
            let value = clap::ValueEnum::to_possible_value(&f).map(|v| v.get_name().to_owned());
            assert_eq!(value, Some(f.to_string()));
        }
    }
}
