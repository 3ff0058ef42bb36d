//! Sensitivity of a comparison to the assumed costs (`memvirt compare --sensitivity`).
//!
//! Costs never change what a run does, only what its events cost, so a scheme's cycles are an
//! exactly linear function of the costs: one run per cost, with that cost moved to the other
//! end of its range, gives the slope, and the cycles anywhere in the box of ranges follow
//! without running again. A pair of schemes keeps its order over the whole box exactly when it
//! keeps it at every corner (a linear function's extremes lie at corners), and where varying one
//! cost alone reverses it, the crossing point is exact.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::cost::Costs;
use crate::report::Report;
use crate::run::{self, RunError, RunSpec};
use crate::scheme::SchemeKind;

/// The plausible range of one assumed cost, with where it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CostRange {
    /// `costs.NAME`, without the prefix.
    pub name: &'static str,
    /// The low end, cycles.
    pub low: u64,
    /// The high end, cycles.
    pub high: u64,
    /// Why this range.
    pub source: &'static str,
    /// The schemes whose runs charge it (`None`: every scheme). A scheme outside the list
    /// never charges the cost, so its slope is 0 without a probe run; the linearity test's
    /// corners, run whole, would show a slope assumed wrongly.
    pub schemes: Option<&'static [SchemeKind]>,
}

/// The cross-ISA emulation schemes, the only ones that charge emulator costs.
const EMULATORS: &[SchemeKind] = &[
    SchemeKind::Softmmu,
    SchemeKind::HsptShared,
    SchemeKind::HsptPrefill,
    SchemeKind::HsptPrivate,
];

/// The assumed costs varied, with their ranges (docs/costs.md has the discussion).
pub const RANGES: &[CostRange] = &[
    CostRange {
        name: "vm_exit",
        low: 500,
        high: 2_600,
        source: "x86: bare VMX exit+entry ~500-1,000 on Sandy Bridge and later (Agesen et al., \
                 ATC 2012), AMD SVM VMRUN round trip ~1,350 and whole KVM_RUN path ~2,550 \
                 (LKML 2020); RISC-V: none measured, assumed the same",
        schemes: None,
    },
    CostRange {
        name: "hw_trap",
        low: 20,
        high: 200,
        source: "assumption: a RISC-V trap and xRET take tens of cycles on an in-order core \
                 (arch.md 4.9); papers.md suggests 50-200 for an M-mode trap and return",
        schemes: None,
    },
    CostRange {
        name: "hv_per_entry",
        low: 20,
        high: 200,
        source: "assumption: from a cached load or store plus checks to a memory access per \
                 entry the hypervisor touches",
        schemes: None,
    },
    CostRange {
        name: "refill_per_entry",
        low: 4,
        high: 20,
        source: "assumption: 4-20 instructions per level of a software TLB refill (Alpha \
                 PALcode TB-miss handler class, arch.md 5)",
        schemes: None,
    },
    CostRange {
        name: "pt_llc",
        low: 40,
        high: 70,
        source: "assumption: last-level-cache latency of current server parts (DMT uses 54)",
        schemes: None,
    },
    CostRange {
        name: "pt_memory",
        low: 150,
        high: 300,
        source: "assumption: DRAM latency of 50-100 ns at 3 GHz (DMT uses 200)",
        schemes: None,
    },
    CostRange {
        name: "page_fault",
        low: 500,
        high: 3_000,
        source: "assumption: a Linux anonymous fault without zeroing, 0.15-1 us at 3 GHz",
        schemes: None,
    },
    CostRange {
        name: "context_switch",
        low: 1_500,
        high: 6_000,
        source: "assumption: lmbench lat_ctx with tiny working sets, 0.5-2 us at 3 GHz",
        schemes: None,
    },
    CostRange {
        name: "cycles_per_instruction",
        low: 1,
        high: 3,
        source: "assumption: memory-bound programs run at an IPC between 1 and 1/3",
        schemes: None,
    },
    CostRange {
        name: "soft_tlb_lookup",
        low: 3,
        high: 8,
        source: "assumption: QEMU's inline softmmu lookup, ~10 host instructions at 1.25-3 per \
                 cycle",
        schemes: Some(EMULATORS),
    },
    CostRange {
        name: "soft_tlb_refill",
        low: 100,
        high: 400,
        source: "assumption: leaving translated code for QEMU's tlb_fill helper and back",
        schemes: Some(EMULATORS),
    },
    CostRange {
        name: "emu_walk_per_entry",
        low: 10,
        high: 40,
        source: "assumption: one level of the emulator's software walk (a load through QEMU's \
                 memory API plus checks)",
        schemes: Some(EMULATORS),
    },
    CostRange {
        name: "host_signal",
        low: 1_500,
        high: 10_000,
        source: "assumption: a Linux SIGSEGV delivery and sigreturn, 0.5-3 us at 3 GHz",
        schemes: Some(EMULATORS),
    },
    CostRange {
        name: "host_mmap",
        low: 1_500,
        high: 6_000,
        source: "assumption: an mmap(MAP_FIXED) system call installing one page, 0.5-2 us",
        schemes: Some(EMULATORS),
    },
];

/// A cost's value in `costs`, by name.
pub fn cost_value(costs: &Costs, name: &str) -> Result<u64, ConfigError> {
    let fields = serde_json::to_value(costs).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    fields
        .get(name)
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| ConfigError::Invalid(format!("costs.{name} is not a cost")))
}

/// Whether runs of `scheme` charge cost `k` of [`RANGES`].
pub fn charges(k: usize, scheme: SchemeKind) -> bool {
    RANGES.get(k).and_then(|r| r.schemes).is_none_or(|list| list.contains(&scheme))
}

/// The probe runs [`fit_lines`] makes for `schemes` (native makes none).
pub fn probe_runs(schemes: &[SchemeKind]) -> usize {
    schemes
        .iter()
        .filter(|&&s| s != SchemeKind::Native)
        .map(|&s| (0..RANGES.len()).filter(|&k| charges(k, s)).count())
        .sum()
}

/// [`RANGES`] with the profile's defaults.
pub fn ranges_for(costs: &Costs) -> Result<Vec<RangeUsed>, ConfigError> {
    RANGES
        .iter()
        .map(|r| {
            Ok(RangeUsed {
                cost: r.name.to_owned(),
                default: cost_value(costs, r.name)?,
                low: r.low,
                high: r.high,
                source: r.source.to_owned(),
            })
        })
        .collect()
}

/// Each virtualized scheme's cycles as a linear function of the costs: `reports` are
/// `schemes`' runs of `spec` at the defaults (in that order); every scheme but native runs once
/// more per cost, with that cost at [`probe_value`], in parallel. `tick` is called after each
/// run.
pub fn fit_lines(
    spec: &RunSpec,
    schemes: &[SchemeKind],
    reports: &[Report],
    ranges: &[RangeUsed],
    tick: &(dyn Fn() + Sync),
) -> Result<Vec<Linear>, RunError> {
    let probe_at: Vec<u64> =
        RANGES.iter().zip(ranges).map(|(r, used)| probe_value(r, used.default)).collect();
    let virtualized: Vec<(SchemeKind, &Report)> =
        schemes.iter().copied().zip(reports).filter(|(s, _)| *s != SchemeKind::Native).collect();
    let jobs: Vec<(usize, usize)> =
        (0..virtualized.len()).flat_map(|s| (0..ranges.len()).map(move |k| (s, k))).collect();
    let cycles: Vec<u64> = jobs
        .par_iter()
        .map(|&(s, k)| {
            let (scheme, base) = virtualized[s];
            if !charges(k, scheme) {
                // Never charged: the probe would equal the base.
                return Ok(base.cycles);
            }
            let mut probe = RunSpec { scheme, ..spec.clone() };
            let key = format!("costs.{}", ranges[k].cost);
            probe.profile.set(&key, &probe_at[k].to_string()).map_err(RunError::Config)?;
            let r = run::run(&probe, &mut |_, _| {})?;
            tick();
            Ok(r.cycles)
        })
        .collect::<Result<_, RunError>>()?;
    Ok(virtualized
        .iter()
        .enumerate()
        .map(|(s, (_, base))| {
            let probes = &cycles[s * ranges.len()..(s + 1) * ranges.len()];
            Linear::fit(base, probes, ranges, &probe_at)
        })
        .collect())
}

/// The sensitivity of one workload's comparison ([`fit_lines`], then [`analyse`]).
pub fn workload_sensitivity(
    spec: &RunSpec,
    schemes: &[SchemeKind],
    reports: &[Report],
    ranges: &[RangeUsed],
    tick: &(dyn Fn() + Sync),
) -> Result<WorkloadSensitivity, RunError> {
    let lines = fit_lines(spec, schemes, reports, ranges, tick)?;
    let workload = reports.first().map_or_else(String::new, |r| r.workload.clone());
    Ok(analyse(&workload, &lines, ranges))
}

/// Where a cost was probed: the end of its range farther from the default, so the slope is
/// measured over the largest step.
pub fn probe_value(range: &CostRange, default: u64) -> u64 {
    if default.abs_diff(range.low) > default.abs_diff(range.high) {
        range.low
    } else {
        range.high
    }
}

/// One cost as the analysis used it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RangeUsed {
    /// `costs.NAME`.
    pub cost: String,
    /// The profile's value.
    pub default: u64,
    /// The low end.
    pub low: u64,
    /// The high end.
    pub high: u64,
    /// Where the range comes from.
    pub source: String,
}

/// A scheme's cycles as a linear function of the varied costs.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// The scheme.
    pub scheme: String,
    /// Cycles at the defaults.
    pub base: f64,
    /// Cycles per cycle of each cost, in [`RANGES`] order.
    pub slopes: Vec<f64>,
}

impl Linear {
    /// From the report at the defaults and the cycles of each probe run (`probes[i]`: the
    /// cycles with cost `i` at `probe_at[i]`, the others at their defaults).
    pub fn fit(base: &Report, probes: &[u64], ranges: &[RangeUsed], probe_at: &[u64]) -> Self {
        let slopes = probes
            .iter()
            .zip(ranges.iter().zip(probe_at))
            .map(|(&cycles, (r, &at))| {
                let step = at as f64 - r.default as f64;
                if step == 0.0 {
                    0.0
                } else {
                    (cycles as f64 - base.cycles as f64) / step
                }
            })
            .collect();
        Linear { scheme: base.scheme.clone(), base: base.cycles as f64, slopes }
    }

    /// Cycles with every cost at `point` (in [`RANGES`] order), the defaults at `defaults`.
    pub fn at(&self, point: &[f64], defaults: &[f64]) -> f64 {
        let moved: f64 =
            self.slopes.iter().zip(point.iter().zip(defaults)).map(|(s, (x, d))| s * (x - d)).sum();
        self.base + moved
    }
}

/// Where one cost alone reverses a pair's order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    /// `costs.NAME`.
    pub cost: String,
    /// The crossing point, cycles.
    pub at: f64,
    /// `above` or `below`: on which side of `at` the slower scheme wins.
    pub side: String,
}

/// A pair of schemes whose order the ranges can reverse.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Flip {
    /// The faster of the two at the defaults.
    pub faster: String,
    /// The slower one, which wins somewhere in the ranges.
    pub slower: String,
    /// Single costs that reverse the pair on their own, and where.
    pub thresholds: Vec<Threshold>,
    /// Corners of the box (every cost at one end of its range) where the order is reversed.
    pub corners_reversed: u64,
}

impl Flip {
    /// One sentence: "nested beats ssp for costs.vm_exit > 1,412, and at 37 of 512 corners".
    pub fn describe(&self, corners: u64) -> String {
        let mut parts: Vec<String> = self
            .thresholds
            .iter()
            .map(|t| {
                let sign = if t.side == "above" { ">" } else { "<" };
                format!("for costs.{} {sign} {}", t.cost, group(t.at))
            })
            .collect();
        parts.push(format!("at {} of {corners} corners", self.corners_reversed));
        format!("{} beats {} {}", self.slower, self.faster, parts.join(", "))
    }
}

/// One workload's sensitivity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSensitivity {
    /// The workload.
    pub workload: String,
    /// Schemes other than native, fastest first, at the defaults.
    pub ranking: Vec<String>,
    /// The ranking holds over the whole box of ranges.
    pub ranking_holds: bool,
    /// Pairs (of `ranking`) whose order holds over the whole box.
    pub pairs_holding: u64,
    /// Pairs the ranges can reverse.
    pub flips: Vec<Flip>,
}

/// The whole analysis, as JSON gives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sensitivity {
    /// The costs varied.
    pub ranges: Vec<RangeUsed>,
    /// Corners of the box (2^costs).
    pub corners: u64,
    /// Each workload.
    pub workloads: Vec<WorkloadSensitivity>,
}

/// The analysis of one workload from its schemes' linear cycle functions (native left out).
pub fn analyse(workload: &str, lines: &[Linear], ranges: &[RangeUsed]) -> WorkloadSensitivity {
    let defaults: Vec<f64> = ranges.iter().map(|r| r.default as f64).collect();
    let mut order: Vec<&Linear> = lines.iter().filter(|l| l.scheme != "native").collect();
    // Stable: equal cycles keep the comparison's scheme order.
    order.sort_by(|a, b| a.base.total_cmp(&b.base));
    let corners = corner_points(ranges);
    let mut flips = Vec::new();
    let mut holding = 0;
    for (i, fast) in order.iter().enumerate() {
        for slow in &order[i + 1..] {
            // Positive where the faster scheme stays faster.
            let margin = |p: &[f64]| slow.at(p, &defaults) - fast.at(p, &defaults);
            let corners_reversed = corners.iter().filter(|p| margin(p) < 0.0).count() as u64;
            if corners_reversed == 0 {
                holding += 1;
                continue;
            }
            let thresholds = ranges
                .iter()
                .enumerate()
                .filter_map(|(k, r)| {
                    let slope = slow.slopes[k] - fast.slopes[k];
                    let at_base = slow.base - fast.base;
                    if slope == 0.0 {
                        return None;
                    }
                    let crossing = r.default as f64 - at_base / slope;
                    let side = if slope < 0.0 { "above" } else { "below" };
                    let inside = crossing > r.low as f64 && crossing < r.high as f64;
                    inside.then(|| Threshold {
                        cost: r.cost.clone(),
                        at: crossing,
                        side: side.into(),
                    })
                })
                .collect();
            flips.push(Flip {
                faster: fast.scheme.clone(),
                slower: slow.scheme.clone(),
                thresholds,
                corners_reversed,
            });
        }
    }
    WorkloadSensitivity {
        workload: workload.to_owned(),
        ranking: order.iter().map(|l| l.scheme.clone()).collect(),
        ranking_holds: flips.is_empty(),
        pairs_holding: holding,
        flips,
    }
}

/// Every corner of the box: each cost at its low or high end.
fn corner_points(ranges: &[RangeUsed]) -> Vec<Vec<f64>> {
    (0..1u64 << ranges.len())
        .map(|bits| {
            ranges
                .iter()
                .enumerate()
                .map(|(k, r)| if bits >> k & 1 == 1 { r.high as f64 } else { r.low as f64 })
                .collect()
        })
        .collect()
}

/// `1412.3` as `1,412`.
fn group(x: f64) -> String {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = x.round().max(0.0) as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The analysis as text, under the comparison's table.
pub fn render(s: &Sensitivity) -> String {
    let mut out = format!(
        "\nsensitivity: each assumed cost across its range, alone and at all {} corners (cycles \
         are linear in the costs, so every point is exact):\n",
        s.corners
    );
    for r in &s.ranges {
        out.push_str(&format!(
            "  costs.{} {}..{} (default {})\n",
            r.cost,
            group(r.low as f64),
            group(r.high as f64),
            group(r.default as f64)
        ));
    }
    for w in &s.workloads {
        out.push_str(&format!("{}: {}", w.workload, w.ranking.join(" < ")));
        if w.ranking_holds {
            out.push_str(" holds across every range and corner\n");
            continue;
        }
        out.push_str(&format!(
            "; {} of {} pairs hold everywhere, and\n",
            w.pairs_holding,
            w.pairs_holding + w.flips.len() as u64
        ));
        for f in &w.flips {
            out.push_str(&format!("  {}\n", f.describe(s.corners)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(cost: &str, default: u64, low: u64, high: u64) -> RangeUsed {
        RangeUsed { cost: cost.into(), default, low, high, source: String::new() }
    }

    fn line(scheme: &str, base: f64, slopes: &[f64]) -> Linear {
        Linear { scheme: scheme.into(), base, slopes: slopes.to_vec() }
    }

    #[test]
    fn a_crossing_inside_one_range_is_found_exactly() {
        // a: 1,000 + 10 per exit cycle above 1,000; b: 3,000 + 2 per exit cycle. Equal where
        // 1,000 + 10 d = 3,000 + 2 d, d = 250: vm_exit = 1,250. b wins above it.
        let ranges = [range("vm_exit", 1000, 500, 2600)];
        let lines = [line("a", 1000.0, &[10.0]), line("b", 3000.0, &[2.0])];
        let w = analyse("w", &lines, &ranges);
        assert_eq!(w.ranking, ["a", "b"]);
        assert!(!w.ranking_holds);
        let f = &w.flips[0];
        assert_eq!((f.faster.as_str(), f.slower.as_str()), ("a", "b"));
        assert_eq!(f.thresholds.len(), 1);
        assert!((f.thresholds[0].at - 1250.0).abs() < 1e-9);
        assert_eq!(f.thresholds[0].side, "above");
        // Of the two corners (500 and 2,600) only the high one reverses.
        assert_eq!(f.corners_reversed, 1);
        assert_eq!(f.describe(2), "b beats a for costs.vm_exit > 1,250, at 1 of 2 corners");
    }

    #[test]
    fn a_reversal_only_at_corners_has_no_single_threshold() {
        // Each cost alone moves b by at most 600 towards a (gap 1,000); together 1,200.
        let ranges = [range("x", 0, 0, 100), range("y", 0, 0, 100)];
        let lines = [line("a", 0.0, &[0.0, 0.0]), line("b", 1000.0, &[-6.0, -6.0])];
        let w = analyse("w", &lines, &ranges);
        let f = &w.flips[0];
        assert!(f.thresholds.is_empty());
        assert_eq!(f.corners_reversed, 1);
    }

    #[test]
    fn native_is_left_out_and_a_robust_ranking_holds() {
        let ranges = [range("vm_exit", 1000, 500, 2600)];
        let lines = [line("native", 1.0, &[0.0]), line("b", 50.0, &[1.0]), line("a", 10.0, &[1.0])];
        let w = analyse("w", &lines, &ranges);
        assert_eq!(w.ranking, ["a", "b"]);
        assert!(w.ranking_holds);
        assert_eq!(w.pairs_holding, 1);
    }

    #[test]
    fn every_range_names_a_cost_and_brackets_something() {
        let costs = Costs::default();
        for r in RANGES {
            assert!(cost_value(&costs, r.name).is_ok(), "{}", r.name);
            assert!(r.low < r.high, "{}", r.name);
            assert!(!r.source.is_empty());
        }
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(group(1412.4), "1,412");
        assert_eq!(group(999.0), "999");
        assert_eq!(group(1_234_567.0), "1,234,567");
    }
}
