//! Parameter sweeps: one setting takes a list of values, every selected scheme runs at each, and
//! one metric of each report is gathered into a (value × scheme) matrix for a table or a plot
//! ([`crate::plot`]). The first use is the LSP paper's micro-benchmark series (`memvirt sweep
//! --lsp-micro`, README).
//!
//! The points are independent runs, so they run in parallel (rayon); each is deterministic and the
//! results are gathered in a fixed order, so a sweep gives the same [`Sweep`] whatever the thread
//! timing. Every value is checked before any simulation, so a bad one fails the sweep at once.

mod journal;

use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;
use serde::Serialize;

use crate::config::ConfigError;
use crate::report::Report;
use crate::run::{self, RunError, RunSpec};
use crate::scheme::SchemeKind;

pub use journal::{default_name as default_journal_name, Journal, JournalError};

/// Why a sweep failed.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// A value or a run failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The journal could not be written.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl From<ConfigError> for SweepError {
    fn from(e: ConfigError) -> Self {
        SweepError::Run(RunError::Config(e))
    }
}

/// The most values one `--vary` may give: far beyond any plot, small enough to refuse a typo
/// such as `0:1:0.000001` before it starts a million runs.
pub const MAX_VALUES: usize = 1_000;

/// What a sweep gathers from each report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// VM exits (`vm_exits.total`).
    Exits,
    /// Hardware-mode traps (`hw_traps.total`).
    Traps,
    /// VM exits plus hardware-mode traps: every entry into the hypervisor or its hardware-mode
    /// handler (LSP's flush fast path is a trap, not an exit).
    #[default]
    ExitsAndTraps,
    /// Total modelled cycles.
    Cycles,
    /// Cycles over native's on the same workload, settings and seed, minus 1.
    Overhead,
    /// TLB misses (both levels).
    TlbMisses,
    /// Mean page-table entries read per walk, both dimensions.
    RefsPerMiss,
}

impl Metric {
    /// The name the command line and JSON use.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Exits => "exits",
            Metric::Traps => "traps",
            Metric::ExitsAndTraps => "exits-and-traps",
            Metric::Cycles => "cycles",
            Metric::Overhead => "overhead",
            Metric::TlbMisses => "tlb-misses",
            Metric::RefsPerMiss => "refs-per-miss",
        }
    }

    /// What the metric counts, for axis labels and titles.
    pub fn label(self) -> &'static str {
        match self {
            Metric::Exits => "VM exits",
            Metric::Traps => "hardware-mode traps",
            Metric::ExitsAndTraps => "VM exits + hardware-mode traps",
            Metric::Cycles => "cycles",
            Metric::Overhead => "overhead vs native",
            Metric::TlbMisses => "TLB misses",
            Metric::RefsPerMiss => "page-table references per walk",
        }
    }

    /// Whether the metric is a count (printed as an integer).
    pub fn is_count(self) -> bool {
        !matches!(self, Metric::Overhead | Metric::RefsPerMiss)
    }

    /// The metric of `r`; `None` only for an overhead whose native baseline is unknown. Counts
    /// below 2^53 convert exactly.
    pub fn of(self, r: &Report) -> Option<f64> {
        let count = |n: u64| Some(n as f64);
        match self {
            Metric::Exits => count(r.vm_exits.total),
            Metric::Traps => count(r.hw_traps.total),
            Metric::ExitsAndTraps => count(r.vm_exits.total.saturating_add(r.hw_traps.total)),
            Metric::Cycles => count(r.cycles),
            Metric::Overhead => r.overhead_vs_native,
            Metric::TlbMisses => count(r.tlb_misses),
            Metric::RefsPerMiss => Some(r.walk_refs_per_miss),
        }
    }
}

/// A `--vary` argument that cannot be used; each message quotes the bad part.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VaryError {
    /// No `=`, or nothing before it.
    #[error("`{0}` is not KEY=V1,V2,... or KEY=START:END:STEP")]
    Malformed(String),
    /// Nothing after the `=`.
    #[error("`{0}` gives no values")]
    NoValues(String),
    /// An empty item in a list (`a,,b`, a trailing comma).
    #[error("`{arg}`: value {position} is empty")]
    EmptyValue {
        /// The whole argument.
        arg: String,
        /// 1-based position of the empty item.
        position: usize,
    },
    /// A range part that is not a finite number.
    #[error("`{arg}`: the range {part} `{text}` is not a number")]
    NotANumber {
        /// The whole argument.
        arg: String,
        /// `start`, `end` or `step`.
        part: &'static str,
        /// The text of that part.
        text: String,
    },
    /// A range that is not `START:END:STEP` with a positive step and `START <= END`.
    #[error("`{arg}`: {why}")]
    BadRange {
        /// The whole argument.
        arg: String,
        /// What is wrong with it.
        why: String,
    },
    /// More values than [`MAX_VALUES`].
    #[error("`{arg}` gives {count} values; at most {MAX_VALUES} are allowed")]
    TooMany {
        /// The whole argument.
        arg: String,
        /// How many it gives.
        count: u128,
    },
}

/// Parses `KEY=V1,V2,...` (values as written, trimmed) or `KEY=START:END:STEP` (a numeric range
/// with its end included, each value printed with no more decimals than the three numbers
/// have, so `0:1:0.1` gives `0, 0.1, ..., 0.9, 1` and never `0.30000000000000004`).
pub fn parse_vary(arg: &str) -> Result<(String, Vec<String>), VaryError> {
    let Some((key, rest)) = arg.split_once('=') else {
        return Err(VaryError::Malformed(arg.to_owned()));
    };
    let (key, rest) = (key.trim(), rest.trim());
    if key.is_empty() {
        return Err(VaryError::Malformed(arg.to_owned()));
    }
    if rest.is_empty() {
        return Err(VaryError::NoValues(arg.to_owned()));
    }
    let values = if rest.contains(':') && !rest.contains(',') {
        range(arg, rest)?
    } else {
        let items: Vec<String> = rest.split(',').map(|v| v.trim().to_owned()).collect();
        if let Some(i) = items.iter().position(String::is_empty) {
            return Err(VaryError::EmptyValue { arg: arg.to_owned(), position: i + 1 });
        }
        items
    };
    if values.len() > MAX_VALUES {
        let count = u128::try_from(values.len()).unwrap_or(u128::MAX);
        return Err(VaryError::TooMany { arg: arg.to_owned(), count });
    }
    Ok((key.to_owned(), values))
}

/// The values of `START:END:STEP` (`text`), for [`parse_vary`].
fn range(arg: &str, text: &str) -> Result<Vec<String>, VaryError> {
    let bad = |why: String| VaryError::BadRange { arg: arg.to_owned(), why };
    let parts: Vec<&str> = text.split(':').map(str::trim).collect();
    let [start, end, step] = parts[..] else {
        return Err(bad(format!("`{text}` is not START:END:STEP (three numbers)")));
    };
    // Whole numbers are counted and stepped exactly (an i128 holds any u64 or i64 setting and
    // their differences), so 9007199254740993:9007199254740995:1 is three exact values.
    let whole = |text: &str| text.parse::<i128>().ok();
    if let (Some(a), Some(b), Some(s)) = (whole(start), whole(end), whole(step)) {
        if s <= 0 {
            return Err(bad(format!("the step `{step}` must be positive")));
        }
        if b < a {
            return Err(bad(format!("the end `{end}` is below the start `{start}`")));
        }
        let count = (b - a) / s + 1;
        if count > MAX_VALUES as i128 {
            return Err(VaryError::TooMany {
                arg: arg.to_owned(),
                count: u128::try_from(count).unwrap_or(u128::MAX),
            });
        }
        // In range: count <= MAX_VALUES.
        return Ok((0..count).map(|i| (a + i * s).to_string()).collect());
    }
    let number =
        |part: &'static str, text: &str| {
            text.parse::<f64>().ok().filter(|x| x.is_finite()).ok_or_else(|| {
                VaryError::NotANumber { arg: arg.to_owned(), part, text: text.to_owned() }
            })
        };
    let (a, b, s) = (number("start", start)?, number("end", end)?, number("step", step)?);
    if s <= 0.0 {
        return Err(bad(format!("the step `{step}` must be positive")));
    }
    if b < a {
        return Err(bad(format!("the end `{end}` is below the start `{start}`")));
    }
    // A relative tolerance so that 0:1:0.1 (10.000000000000002 steps) includes 1 and
    // 0:0.3:0.1 (2.9999999999999996 steps) includes 0.3.
    let steps = (b - a) / s;
    let steps = (steps + steps.abs() * 1e-9 + 1e-9).floor();
    if steps >= MAX_VALUES as f64 {
        // `as` saturates: a count beyond u128 (a step of 1e-300) reads as u128::MAX.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let count = (steps as u128).saturating_add(1);
        return Err(VaryError::TooMany { arg: arg.to_owned(), count });
    }
    // In range: 0 <= steps < MAX_VALUES.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let count = steps as usize + 1;
    let places = [start, end, step].iter().map(|t| decimals(t)).max().unwrap_or(0);
    Ok((0..count).map(|i| plain(a + i as f64 * s, places)).collect())
}

/// Decimal places `text` is written with (`0.25` 2, `1e-3` 3, `5` 0), capped at 15.
fn decimals(text: &str) -> usize {
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().unwrap_or(0)),
        None => (text, 0),
    };
    let fraction = mantissa.split_once('.').map_or(0, |(_, f)| f.len());
    let places = i64::try_from(fraction).unwrap_or(i64::MAX).saturating_sub(exponent);
    usize::try_from(places.clamp(0, 15)).unwrap_or(0)
}

/// `x` rounded to `places` decimals, trailing zeros (and a trailing point) dropped, `-0` as `0`.
fn plain(x: f64, places: usize) -> String {
    let text = format!("{x:.places$}");
    let text =
        if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// What to sweep.
#[derive(Clone, Debug)]
pub struct SweepSpec {
    /// The run every point starts from (its `scheme` is ignored).
    pub base: RunSpec,
    /// The schemes, one line of the plot each, in column order.
    pub schemes: Vec<SchemeKind>,
    /// The swept setting: `workload.KEY` for a workload parameter, `scheme.KEY` for a
    /// shadow-scheme option, any other key for a profile key (`memvirt list --keys`).
    pub key: String,
    /// Its values, as text, in row order.
    pub values: Vec<String>,
    /// What each report contributes to the matrix.
    pub metric: Metric,
}

impl SweepSpec {
    /// The run of `scheme` at `value`: the base with the swept setting applied last (so it wins
    /// over a `--set` of the same key). A profile key is applied and validated here; a workload
    /// key when the workload is built (see [`SweepSpec::check_value`]).
    pub fn point(&self, value: &str, scheme: SchemeKind) -> Result<RunSpec, ConfigError> {
        let mut spec = RunSpec { scheme, ..self.base.clone() };
        if let Some(k) = self.key.strip_prefix("workload.") {
            spec.workload_sets.push((k.to_owned(), value.to_owned()));
        } else if let Some(k) = self.key.strip_prefix("scheme.") {
            spec.scheme_sets.push((k.to_owned(), value.to_owned()));
        } else {
            spec.profile.set(&self.key, value)?;
        }
        Ok(spec)
    }

    /// Checks `value` without simulating: the key exists (else the error lists the valid keys),
    /// the value has its type and range, and the machine it gives can be built.
    pub fn check_value(&self, value: &str) -> Result<(), ConfigError> {
        let spec = self.point(value, SchemeKind::Native)?;
        spec.workload.build(spec.seed, &spec.workload_sets)?;
        spec.profile.platform_config()?;
        crate::scheme::check_scheme_sets(&spec.scheme_sets, &self.schemes)
    }

    /// Checks the whole spec: some values, some schemes, every value valid.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.values.is_empty() {
            return Err(ConfigError::Invalid(format!("the sweep of `{}` has no values", self.key)));
        }
        if self.schemes.is_empty() {
            return Err(ConfigError::Invalid("the sweep has no schemes".to_owned()));
        }
        self.values.iter().try_for_each(|v| self.check_value(v))
    }

    /// The schemes each value runs: the selected ones, then `native` as the overhead baseline if
    /// it is not among them.
    fn runs_per_value(&self) -> Vec<SchemeKind> {
        let mut runs = self.schemes.clone();
        if !runs.contains(&SchemeKind::Native) {
            runs.push(SchemeKind::Native);
        }
        runs
    }

    /// How many runs [`sweep`] makes (the unit of its progress).
    pub fn runs(&self) -> usize {
        self.values.len() * self.runs_per_value().len()
    }
}

/// The result of a sweep: a (value × scheme) matrix of one metric, and every report behind it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sweep {
    /// Workload name.
    pub workload: String,
    /// Profile name (before the swept setting, if it is a profile key).
    pub profile: String,
    /// Seed.
    pub seed: u64,
    /// The swept key, as given (`workload.modify_ratio`).
    pub key: String,
    /// Its values, in row order.
    pub values: Vec<String>,
    /// The schemes, in column order.
    pub schemes: Vec<SchemeKind>,
    /// The metric.
    pub metric: Metric,
    /// `matrix[v][s]`: the metric of scheme `s` at value `v` (`None`: overhead unknown). JSON
    /// writes whole numbers without a fraction (`204104`, not `204104.0`).
    #[serde(serialize_with = "whole_as_integers")]
    pub matrix: Vec<Vec<Option<f64>>>,
    /// `reports[v][s]`: the full report behind `matrix[v][s]`.
    pub reports: Vec<Vec<Report>>,
}

impl Sweep {
    /// The values as numbers, if every one is a number (the plot's x positions).
    pub fn numeric_values(&self) -> Option<Vec<f64>> {
        self.values.iter().map(|v| v.parse::<f64>().ok().filter(|x| x.is_finite())).collect()
    }
}

/// Serializes the matrix with whole numbers (below 2^53, where `f64` is exact) as integers.
fn whole_as_integers<S: serde::Serializer>(
    matrix: &[Vec<Option<f64>>],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Number {
        Whole(i64),
        Real(f64),
    }
    const EXACT: f64 = 9_007_199_254_740_992.0;
    let number = |x: f64| {
        if x.fract() == 0.0 && x.abs() < EXACT {
            // Whole and within ±2^53: exact as an i64.
            #[allow(clippy::cast_possible_truncation)]
            let whole = x as i64;
            Number::Whole(whole)
        } else {
            Number::Real(x)
        }
    };
    let rows: Vec<Vec<Option<Number>>> =
        matrix.iter().map(|row| row.iter().map(|m| m.map(number)).collect()).collect();
    rows.serialize(serializer)
}

/// Runs every (value, scheme) point of `spec`, plus `native` at each value for the overhead
/// baseline, in parallel. `progress(done, total)` is called from the worker threads as runs
/// finish. Every value is checked first ([`SweepSpec::check`]); on a failed run, the error of
/// the first failed point in (value, scheme) order is returned.
pub fn sweep(
    spec: &SweepSpec,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Sweep, SweepError> {
    sweep_journaled(spec, None, progress)
}

/// [`sweep`], taking the points `journal` holds from it instead of running them, and appending
/// every point it runs to it as soon as that point finishes (failed points are not recorded).
/// The result is the same as an uninterrupted sweep's.
pub fn sweep_journaled(
    spec: &SweepSpec,
    journal: Option<&Journal>,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Sweep, SweepError> {
    spec.check()?;
    let per_value = spec.runs_per_value();
    let mut points = Vec::with_capacity(spec.runs());
    for value in &spec.values {
        for &scheme in &per_value {
            points.push((value, scheme, spec.point(value, scheme)?));
        }
    }
    let total = points.len();
    let done = AtomicUsize::new(0);
    let results: Vec<Result<Report, SweepError>> = points
        .par_iter()
        .map(|(value, scheme, point)| {
            let earlier = journal.and_then(|j| j.finished(value, *scheme)).cloned();
            let report = match earlier {
                Some(report) => Ok(report),
                None => run::run(point, &mut |_, _| {}).map_err(SweepError::from).and_then(|r| {
                    journal.map_or(Ok(()), |j| j.record(value, *scheme, &r))?;
                    Ok(r)
                }),
            };
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
            report
        })
        .collect();
    let mut results = results.into_iter();
    let mut matrix = Vec::with_capacity(spec.values.len());
    let mut reports = Vec::with_capacity(spec.values.len());
    for _ in &spec.values {
        let mut row: Vec<Report> =
            results.by_ref().take(per_value.len()).collect::<Result<_, _>>()?;
        // `per_value` ends with native's run; drop it unless it was selected.
        let native = row.iter().find(|r| r.scheme == SchemeKind::Native.name()).map(|r| r.cycles);
        row.truncate(spec.schemes.len());
        for r in &mut row {
            if let Some(cycles) = native {
                r.set_native(cycles);
            }
        }
        matrix.push(row.iter().map(|r| spec.metric.of(r)).collect());
        reports.push(row);
    }
    Ok(Sweep {
        workload: spec.base.workload.name().to_owned(),
        profile: spec.base.profile.name.clone(),
        seed: spec.base.seed,
        key: spec.key.clone(),
        values: spec.values.clone(),
        schemes: spec.schemes.clone(),
        metric: spec.metric,
        matrix,
        reports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(arg: &str) -> Vec<String> {
        match parse_vary(arg) {
            Ok((_, v)) => v,
            Err(e) => panic!("{arg}: {e}"),
        }
    }

    #[test]
    fn a_list_keeps_its_values_as_written() {
        assert_eq!(
            parse_vary(" workload.pages = 32, 64 ,1_024"),
            Ok(("workload.pages".to_owned(), vec!["32".into(), "64".into(), "1_024".into()]))
        );
        assert_eq!(values("walk_caches=on,off"), ["on", "off"]);
        assert_eq!(values("k=0.5"), ["0.5"]);
    }

    #[test]
    fn a_range_includes_its_end_without_float_noise() {
        assert_eq!(
            values("k=0:1:0.1"),
            ["0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1"]
        );
        assert_eq!(values("k=0:0.3:0.1"), ["0", "0.1", "0.2", "0.3"]);
        assert_eq!(values("k=1024:4096:1024"), ["1024", "2048", "3072", "4096"]);
        assert_eq!(values("k=0.25:1:0.25"), ["0.25", "0.5", "0.75", "1"]);
        assert_eq!(values("k=-1:1:1"), ["-1", "0", "1"]);
        assert_eq!(values("k=0:1e-3:5e-4"), ["0", "0.0005", "0.001"]);
        // An end the steps do not reach is left out; a one-point range is fine.
        assert_eq!(values("k=0:10:4"), ["0", "4", "8"]);
        assert_eq!(values("k=3:3:1"), ["3"]);
        // Whole numbers beyond 2^53 stay exact.
        assert_eq!(
            values("k=9007199254740993:9007199254740995:1"),
            ["9007199254740993", "9007199254740994", "9007199254740995"]
        );
        assert_eq!(values("k=18446744073709551614:18446744073709551615:1").len(), 2);
    }

    #[test]
    fn bad_vary_arguments_name_the_bad_part() {
        let err = |arg: &str| match parse_vary(arg) {
            Ok(v) => panic!("{arg} parsed as {v:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err("workload.pages").contains("`workload.pages` is not KEY=V1"));
        assert!(err("=1,2").contains("is not KEY="));
        assert!(err("k=").contains("gives no values"));
        assert!(err("k=1,,2").contains("value 2 is empty"));
        assert!(err("k=1,2,").contains("value 3 is empty"));
        assert!(err("k=0:x:0.1").contains("the range end `x` is not a number"));
        assert!(err("k=0:1:nan").contains("the range step `nan` is not a number"));
        assert!(err("k=0:1").contains("`0:1` is not START:END:STEP"));
        assert!(err("k=0:1:0").contains("the step `0` must be positive"));
        assert!(err("k=0:1:-0.1").contains("must be positive"));
        assert!(err("k=1:0:0.1").contains("the end `0` is below the start `1`"));
        assert!(err("k=0:1:0.000001").contains("gives 1000001 values; at most 1000"));
        assert!(err("k=1:1000000:1").contains("gives 1000000 values"));
        assert!(err("k=0:1:1e-300").contains("at most 1000"));
    }

    #[test]
    fn plain_numbers_drop_trailing_zeros_and_negative_zero() {
        assert_eq!(plain(0.30000000000000004, 1), "0.3");
        assert_eq!(plain(2.0, 3), "2");
        assert_eq!(plain(-0.0000001, 2), "0");
        assert_eq!(plain(1500.0, 0), "1500");
        assert_eq!(decimals("1.250"), 3);
        assert_eq!(decimals("2.5e1"), 0);
        assert_eq!(decimals("1e-20"), 15);
    }

    #[test]
    fn metrics_read_their_report_fields() {
        let mut r =
            Report { cycles: 7, tlb_misses: 3, walk_refs_per_miss: 1.5, ..Report::default() };
        r.vm_exits.total = 10;
        r.hw_traps.total = 4;
        assert_eq!(Metric::Exits.of(&r), Some(10.0));
        assert_eq!(Metric::Traps.of(&r), Some(4.0));
        assert_eq!(Metric::ExitsAndTraps.of(&r), Some(14.0));
        assert_eq!(Metric::Cycles.of(&r), Some(7.0));
        assert_eq!(Metric::TlbMisses.of(&r), Some(3.0));
        assert_eq!(Metric::RefsPerMiss.of(&r), Some(1.5));
        assert_eq!(Metric::Overhead.of(&r), None);
        r.set_native(5);
        assert!(Metric::Overhead.of(&r).is_some_and(|o| (o - 0.4).abs() < 1e-12));
    }

    #[test]
    fn metric_names_are_the_command_line_names() {
        use clap::ValueEnum;
        for m in Metric::value_variants() {
            let name = m.to_possible_value().map(|v| v.get_name().to_owned());
            assert_eq!(name.as_deref(), Some(m.name()));
        }
    }
}
