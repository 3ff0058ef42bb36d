//! `memvirt reproduce PAPER`: a seed paper's experiment run as closely as memvirt can (workloads
//! of the paper's kind, steady state, the paper's metric), each published claim set beside
//! memvirt's figure with a verdict.
//!
//! A claim's verdict is computed, never written in: `reproduced` when memvirt's figure lies in
//! the published range (a bound such as "under 5.5 %" is the range from 0; a point value is
//! widened by its stated precision), `trend` when it misses the range but shows the published
//! effect's direction, `differs` otherwise. Every claim carries the reason memvirt gives for a
//! difference, so a reader can judge it. The experiments are in [`papers`], the chart in
//! [`chart`].

pub mod chart;
pub mod papers;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::profile::Profile;
use crate::report::Report;
use crate::run::{self, RunError, RunSpec};
use crate::scheme::SchemeKind;
use crate::workload::WorkloadKind;

/// The papers `memvirt reproduce` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Paper {
    /// Lazy Shadow Paging on RISC-V (Li et al., Journal of Software 2025).
    Lsp,
    /// Swift Shadow Paging (Sha et al., VEE 2021).
    Ssp,
    /// SNP, SSP and ASP in hardware mode (Sha et al., IEEE TC 2022) and swFNPT (JCRD 2022).
    Tc22,
    /// Flat nested and speculative inverted shadow paging (Ahn, Jin and Huh, ISCA 2012).
    Isca12,
    /// Embedded shadow page tables for cross-ISA emulation (HSPT, VEE 2015).
    Hspt,
}

impl Paper {
    /// Every paper, in the order `all` runs them.
    pub const ALL: [Paper; 5] = [Paper::Lsp, Paper::Ssp, Paper::Tc22, Paper::Isca12, Paper::Hspt];

    /// The command-line name.
    pub const fn name(self) -> &'static str {
        match self {
            Paper::Lsp => "lsp",
            Paper::Ssp => "ssp",
            Paper::Tc22 => "tc22",
            Paper::Isca12 => "isca12",
            Paper::Hspt => "hspt",
        }
    }

    /// Title and venue.
    pub const fn title(self) -> &'static str {
        match self {
            Paper::Lsp => "Lazy Shadow Paging under RISC-V (Li et al., Journal of Software 2025)",
            Paper::Ssp => "Swift Shadow Paging (Sha et al., VEE 2021)",
            Paper::Tc22 => {
                "Accelerating address translation by leveraging hardware mode (Sha et al., IEEE \
                 TC 2022) and swFNPT (JCRD 2022)"
            }
            Paper::Isca12 => {
                "Revisiting hardware-assisted page walks for virtualized systems (Ahn, Jin and \
                 Huh, ISCA 2012)"
            }
            Paper::Hspt => {
                "Embedded shadow page tables for cross-ISA system emulation (HSPT, VEE 2015)"
            }
        }
    }
}

/// How a claim's figures are judged against the published range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// Every figure must lie in the range ("under 5.5 % for all workloads").
    Every,
    /// Their mean must ("+7 % on average").
    Mean,
    /// The largest must ("up to 50 % fewer").
    Largest,
}

/// The verdict on one claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// memvirt's figure lies in the published range.
    Reproduced,
    /// It misses the range but shows the published effect's direction.
    Trend,
    /// Neither: the reason is in the claim's `why`.
    Differs,
}

impl Verdict {
    /// The word printed.
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Reproduced => "reproduced",
            Verdict::Trend => "trend",
            Verdict::Differs => "differs",
        }
    }
}

/// One figure memvirt measured for a claim.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// What it was measured on (a workload, a setting).
    pub label: String,
    /// The value, in the claim's unit.
    pub value: f64,
    /// Shown but not judged (a what-if beside the experiment, such as another setting).
    #[serde(default)]
    pub aside: bool,
}

/// A published claim with memvirt's figures and verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    /// `lsp-1`, ...
    pub id: String,
    /// The claim, in a few words.
    pub claim: String,
    /// The unit of the figures.
    pub unit: String,
    /// The published figure as stated.
    pub published: String,
    /// The published range the figures are judged against.
    pub range: [f64; 2],
    /// How.
    pub rule: Rule,
    /// The figure above which the published effect's direction holds (`None`: a bound, with no
    /// direction to speak of).
    pub direction_above: Option<f64>,
    /// memvirt's figures.
    pub figures: Vec<Figure>,
    /// The judged figure (by `rule`).
    pub judged: f64,
    /// The verdict.
    pub verdict: Verdict,
    /// How memvirt set the experiment up, and why it differs where it does.
    pub why: String,
}

/// A claim before its figures are judged.
#[derive(Clone, Copy, Debug)]
pub struct ClaimSpec {
    /// `lsp-1`, ...
    pub id: &'static str,
    /// The claim.
    pub claim: &'static str,
    /// The unit.
    pub unit: &'static str,
    /// The published figure as stated.
    pub published: &'static str,
    /// The range judged against.
    pub range: [f64; 2],
    /// How.
    pub rule: Rule,
    /// See [`Claim::direction_above`].
    pub direction_above: Option<f64>,
    /// See [`Claim::why`].
    pub why: &'static str,
}

impl ClaimSpec {
    /// The claim judged on `figures` (asides left out of the judgement).
    pub fn judge(&self, figures: Vec<Figure>) -> Claim {
        let judged_values: Vec<f64> =
            figures.iter().filter(|f| !f.aside).map(|f| f.value).collect();
        let [lo, hi] = self.range;
        let inside = |v: f64| v >= lo - 1e-9 && v <= hi + 1e-9;
        let judged = match self.rule {
            Rule::Mean => judged_values.iter().sum::<f64>() / judged_values.len().max(1) as f64,
            Rule::Largest => judged_values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            // The figure farthest outside the range (or any, when all are inside).
            Rule::Every => judged_values
                .iter()
                .copied()
                .max_by(|a, b| outside(*a, lo, hi).total_cmp(&outside(*b, lo, hi)))
                .unwrap_or(f64::NAN),
        };
        let verdict = if judged.is_finite() && inside(judged) {
            Verdict::Reproduced
        } else if self.direction_above.is_some_and(|d| judged > d) {
            Verdict::Trend
        } else {
            Verdict::Differs
        };
        Claim {
            id: self.id.to_owned(),
            claim: self.claim.to_owned(),
            unit: self.unit.to_owned(),
            published: self.published.to_owned(),
            range: self.range,
            rule: self.rule,
            direction_above: self.direction_above,
            figures,
            judged,
            verdict,
            why: self.why.to_owned(),
        }
    }
}

/// How far `v` lies outside [`lo`, `hi`] (0 inside).
fn outside(v: f64, lo: f64, hi: f64) -> f64 {
    (lo - v).max(v - hi).max(0.0)
}

/// One paper's reproduction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reproduction {
    /// `lsp`, ...
    pub paper: String,
    /// Title and venue.
    pub title: String,
    /// How it was run: profiles, lengths, seed.
    pub setup: String,
    /// The claims.
    pub claims: Vec<Claim>,
}

/// How long the experiments run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    /// Each workload's steady-state length and warm-up (`--length steady`).
    Steady,
    /// The short defaults, warmed up for half their accesses (for tests and a first look).
    Quick,
}

/// What every experiment shares: the seed, the length, and a progress callback.
pub struct Lab<'a> {
    /// The seed of every run.
    pub seed: u64,
    /// The length.
    pub length: Length,
    /// Called after every run.
    pub tick: &'a (dyn Fn() + Sync),
}

impl std::fmt::Debug for Lab<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab").field("seed", &self.seed).field("length", &self.length).finish()
    }
}

/// One comparison to run: `schemes` (native is added for the overhead baseline) on a workload.
#[derive(Clone, Debug)]
pub struct Job {
    /// The workload.
    pub workload: WorkloadKind,
    /// The built-in profile.
    pub profile: &'static str,
    /// `profile` settings on top of it.
    pub profile_sets: Vec<(&'static str, String)>,
    /// Workload settings, after the length's.
    pub workload_sets: Vec<(&'static str, &'static str)>,
    /// Scheme settings.
    pub scheme_sets: Vec<(&'static str, &'static str)>,
    /// Counted from the start (no warm-up, the short defaults): for counts of whole runs.
    pub whole: bool,
    /// The schemes.
    pub schemes: Vec<SchemeKind>,
}

impl Job {
    /// `schemes` on `workload` under `profile`, in steady state.
    pub fn new(workload: WorkloadKind, profile: &'static str, schemes: &[SchemeKind]) -> Self {
        Job {
            workload,
            profile,
            profile_sets: Vec::new(),
            workload_sets: Vec::new(),
            scheme_sets: Vec::new(),
            whole: false,
            schemes: schemes.to_vec(),
        }
    }

    /// The same job, counted over its whole short run.
    pub fn whole(mut self) -> Self {
        self.whole = true;
        self
    }

    /// With a profile setting.
    pub fn set(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.profile_sets.push((key, value.into()));
        self
    }

    /// With a workload setting.
    pub fn workload_set(mut self, key: &'static str, value: &'static str) -> Self {
        self.workload_sets.push((key, value));
        self
    }

    /// With a scheme setting.
    pub fn scheme_set(mut self, key: &'static str, value: &'static str) -> Self {
        self.scheme_sets.push((key, value));
        self
    }

    fn spec(&self, lab: &Lab<'_>) -> Result<RunSpec, RunError> {
        let mut profile = Profile::builtin(self.profile).map_err(RunError::Config)?;
        let sets: Vec<(String, String)> =
            self.profile_sets.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        profile.set_all(&sets).map_err(RunError::Config)?;
        let owned = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let steady = self.workload.steady_state();
        let (mut workload_sets, warmup) = match (self.whole, lab.length) {
            (true, _) => (Vec::new(), 0),
            (false, Length::Steady) => (steady.owned_sets(), steady.warmup),
            (false, Length::Quick) => (Vec::new(), steady.warmup / 2),
        };
        workload_sets.extend(owned(&self.workload_sets));
        let mut spec = RunSpec::new(SchemeKind::Native, self.workload, profile);
        spec.workload_sets = workload_sets;
        spec.scheme_sets = owned(&self.scheme_sets);
        spec.seed = lab.seed;
        spec.warmup = warmup;
        Ok(spec)
    }
}

/// The reports of every job, in job order (each in its schemes' order, native's overhead
/// filled in), the runs spread over every core.
pub fn run_jobs(lab: &Lab<'_>, jobs: &[Job]) -> Result<Vec<Vec<Report>>, RunError> {
    let specs: Vec<RunSpec> = jobs.iter().map(|j| j.spec(lab)).collect::<Result<_, _>>()?;
    // Every (job, scheme) run, native included once per job, in parallel.
    let mut runs: Vec<(usize, SchemeKind)> = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        runs.push((j, SchemeKind::Native));
        runs.extend(job.schemes.iter().filter(|&&s| s != SchemeKind::Native).map(|&s| (j, s)));
    }
    let reports: Vec<Report> = runs
        .par_iter()
        .map(|&(j, scheme)| {
            let r = run::run(&RunSpec { scheme, ..specs[j].clone() }, &mut |_, _| {});
            (lab.tick)();
            r
        })
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(jobs.len());
    for (j, job) in jobs.iter().enumerate() {
        let of = |s: SchemeKind| runs.iter().position(|&r| r == (j, s)).map(|i| reports[i].clone());
        let native = of(SchemeKind::Native).map_or(0, |r| r.cycles);
        let mut row = Vec::with_capacity(job.schemes.len());
        for &s in &job.schemes {
            let mut r = of(s).ok_or_else(|| {
                RunError::Config(crate::config::ConfigError::Invalid(format!(
                    "internal: no run of {} in job {j}",
                    s.name()
                )))
            })?;
            r.set_native(native);
            row.push(r);
        }
        out.push(row);
    }
    Ok(out)
}

/// Runs `paper`'s experiment and judges its claims.
pub fn reproduce(paper: Paper, lab: &Lab<'_>) -> Result<Reproduction, RunError> {
    let jobs = papers::plan(paper);
    let rows = run_jobs(lab, &jobs)?;
    let mut profiles: Vec<&str> = jobs.iter().map(|j| j.profile).collect();
    profiles.dedup();
    let compute = rows.first().and_then(|r| r.first()).map(|r| r.compute.describe());
    let length = match lab.length {
        Length::Steady => "steady state (each workload's --length steady and warm-up)",
        Length::Quick => {
            "quick (short defaults, warmed up for half of them; not the figures to quote)"
        }
    };
    Ok(Reproduction {
        paper: paper.name().to_owned(),
        title: paper.title().to_owned(),
        setup: format!(
            "{}, seed {}, {length}; exit counts from whole runs; compute model: {}",
            profiles.join(", "),
            lab.seed,
            compute.unwrap_or_default()
        ),
        claims: papers::judge(paper, &rows),
    })
}

/// `N claims: R reproduced, T trend, D differ`.
pub fn tally(reproductions: &[Reproduction]) -> String {
    let claims: Vec<&Claim> = reproductions.iter().flat_map(|r| &r.claims).collect();
    let count = |v: Verdict| claims.iter().filter(|c| c.verdict == v).count();
    format!(
        "{} claims: {} reproduced, {} trend only, {} differ (each with memvirt's reason)",
        claims.len(),
        count(Verdict::Reproduced),
        count(Verdict::Trend),
        count(Verdict::Differs)
    )
}

/// The runs `jobs` will make, for a progress bar.
pub fn runs_in(jobs: &[Job]) -> usize {
    jobs.iter().map(|j| 1 + j.schemes.iter().filter(|&&s| s != SchemeKind::Native).count()).sum()
}

/// A report's overhead over native, in percent.
pub fn overhead_percent(r: &Report) -> f64 {
    r.overhead_vs_native.unwrap_or(f64::NAN) * 100.0
}

/// The reproduction as text: a summary table, then each claim's figures and reasons.
pub fn render(r: &Reproduction) -> String {
    let mut out = format!("memvirt reproduce {}: {}\n{}\n\n", r.paper, r.title, r.setup);
    let width = r.claims.iter().map(|c| c.claim.chars().count()).max().unwrap_or(0).min(60);
    for c in &r.claims {
        out.push_str(&format!(
            "{:<7} {:<width$}  published {:<14} memvirt {:<10} {}\n",
            c.id,
            c.claim,
            c.published,
            tidy(c.judged),
            c.verdict.name(),
        ));
    }
    for c in &r.claims {
        out.push_str(&format!("\n{} {} ({}; {}):\n", c.id, c.claim, c.unit, rule_words(c.rule)));
        let figures: Vec<String> = c
            .figures
            .iter()
            .map(|f| {
                let aside = if f.aside { ", not judged" } else { "" };
                format!("{} {}{aside}", f.label, tidy(f.value))
            })
            .collect();
        out.push_str(&format!("  memvirt: {}\n", figures.join("; ")));
        out.push_str(&format!("  {}\n", c.why));
    }
    out
}

fn rule_words(rule: Rule) -> &'static str {
    match rule {
        Rule::Every => "every figure judged",
        Rule::Mean => "their mean judged",
        Rule::Largest => "the largest judged",
    }
}

/// A figure with sensible digits: `2.00`, `49.5`, `1,412`.
pub fn tidy(x: f64) -> String {
    if !x.is_finite() {
        return "-".to_owned();
    }
    // No "-0.00".
    let x = if x.abs() < 5e-3 { 0.0 } else { x };
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(range: [f64; 2], rule: Rule, direction_above: Option<f64>) -> ClaimSpec {
        ClaimSpec {
            id: "t-1",
            claim: "c",
            unit: "%",
            published: "p",
            range,
            rule,
            direction_above,
            why: "w",
        }
    }

    fn figures(values: &[f64]) -> Vec<Figure> {
        values.iter().map(|&v| Figure { label: "w".into(), value: v, aside: false }).collect()
    }

    #[test]
    fn a_bound_holds_only_if_every_figure_is_under_it() {
        let s = spec([0.0, 5.5], Rule::Every, None);
        assert_eq!(s.judge(figures(&[1.0, 5.5])).verdict, Verdict::Reproduced);
        let c = s.judge(figures(&[1.0, 9.0, 6.0]));
        assert_eq!((c.verdict, c.judged), (Verdict::Differs, 9.0));
    }

    #[test]
    fn a_mean_outside_the_range_in_the_right_direction_is_a_trend() {
        let s = spec([5.6, 8.4], Rule::Mean, Some(0.0));
        assert_eq!(s.judge(figures(&[6.0, 8.0])).verdict, Verdict::Reproduced);
        assert_eq!(s.judge(figures(&[1.0, 3.0])).verdict, Verdict::Trend);
        assert_eq!(s.judge(figures(&[-1.0, -3.0])).verdict, Verdict::Differs);
    }

    #[test]
    fn asides_are_shown_but_not_judged() {
        let s = spec([14.0, 32.0], Rule::Largest, Some(0.0));
        let mut f = figures(&[0.0]);
        f.push(Figure { label: "flushing exits".into(), value: 20.0, aside: true });
        let c = s.judge(f);
        assert_eq!((c.verdict, c.judged), (Verdict::Differs, 0.0));
    }
}
