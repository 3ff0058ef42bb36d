//! Experiments as files: one TOML file names profiles × `[vary]` settings × seeds × workloads
//! (built-in or traces) × schemes, and every combination is a *point*, one independent run.
//!
//! `memvirt experiment run FILE` runs the points (all cores) and writes one result file per point
//! into a results directory; a point whose file is there is not run again, so an interrupted
//! experiment resumes where it stopped, and an edited one runs only its new points. `memvirt
//! experiment collect DIR` merges the files into one table (JSON, CSV) and charts; `memvirt
//! experiment submit FILE` runs the same points as a Slurm job array. The file format is
//! documented in `docs/experiments.md`.
//!
//! This module is the part that needs no simulation: reading and checking the file
//! ([`Experiment::load`]), expanding its points in a fixed order ([`Experiment::points`]),
//! splitting them among tasks ([`chunk`]), naming and reading result files ([`PointRecord`]),
//! and the Slurm batch script ([`slurm`]). Turning a point into a [`crate::run::RunSpec`] is the
//! binary's (it shares the command line's rules for `--set`).

pub mod slurm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::report::Report;
use crate::scheme::SchemeKind;
use crate::workload::{Length, WorkloadKind};

/// The name of the experiment's copy inside its results directory: what `collect` reads and
/// what Slurm tasks run, with every file it names made absolute.
pub const SNAPSHOT: &str = "experiment.toml";

/// The subdirectory of a results directory that holds one file per finished point.
pub const POINTS_DIR: &str = "points";

/// The version of the result-file format, the first field of every file.
pub const POINT_FORMAT: u64 = 1;

/// The most points one experiment may have: far beyond what a cluster runs in a day at the
/// default lengths, small enough to refuse a `[vary]` whose product is a typo.
pub const MAX_POINTS: usize = 100_000;

/// Why an experiment file or a results directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a valid experiment, or a result file is not what it should be.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong (TOML errors carry their line and column).
        message: String,
    },
}

/// The experiment file as written; every key is optional.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawExperiment {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    profiles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    schemes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    workloads: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    traces: Vec<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    seeds: Vec<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    length: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warmup: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    verify: bool,
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    set: toml::Table,
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    vary: toml::Table,
}

/// A checked experiment.
#[derive(Clone, Debug, PartialEq)]
pub struct Experiment {
    /// Its name (`name`, default the file's stem): the Slurm job name and the charts' titles.
    pub name: String,
    /// One line saying what it is for (optional).
    pub description: String,
    /// Built-in profile names, or profile files made absolute (a relative path is relative to
    /// the experiment file's directory). Default: the default profile.
    pub profiles: Vec<String>,
    /// The schemes; empty: every scheme that can run at the point (as `compare` does).
    pub schemes: Vec<SchemeKind>,
    /// Built-in workloads. Default: the default mix of `compare`, unless traces are given.
    pub workloads: Vec<WorkloadKind>,
    /// Traces, each replayed alone as one workload, made absolute like profile files.
    pub traces: Vec<PathBuf>,
    /// The seeds. Default: 1.
    pub seeds: Vec<u64>,
    /// `--length` of every built-in workload.
    pub length: Length,
    /// `--warmup` of every run, if given.
    pub warmup: Option<u64>,
    /// `--verify`: every point runs under the translation oracle.
    pub verify: bool,
    /// `[set]`: `KEY=VALUE` applied to every point as `--set` does, in key order.
    pub set: Vec<(String, String)>,
    /// `[vary]`: each key (in key order) with its values, in the file's order; every
    /// combination is a point. Applied after `set`.
    pub vary: Vec<(String, Vec<String>)>,
}

/// What a point runs: a built-in workload or one trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PointWorkload {
    /// A built-in workload.
    Builtin(WorkloadKind),
    /// A trace file (absolute).
    Trace(PathBuf),
}

impl PointWorkload {
    /// The workload's name in file names and charts: the built-in name or the trace's file name.
    pub fn name(&self) -> String {
        match self {
            PointWorkload::Builtin(w) => w.name().to_owned(),
            PointWorkload::Trace(p) => p
                .file_name()
                .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into()),
        }
    }
}

/// One run of an experiment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Point {
    /// The profile, as [`Experiment::profiles`] holds it.
    pub profile: String,
    /// This point's `[vary]` values, in key order.
    pub settings: Vec<(String, String)>,
    /// The seed.
    pub seed: u64,
    /// The workload.
    pub workload: PointWorkload,
    /// The scheme.
    pub scheme: SchemeKind,
    /// Whether the point is only the overhead baseline: `native`, which runs at every
    /// combination even when `schemes` does not name it, and is then left out of the collected
    /// table.
    pub baseline_only: bool,
}

impl Point {
    /// The `--set` arguments of this point: the experiment's `[set]`, then its `[vary]` values.
    pub fn sets(&self, experiment: &Experiment) -> Vec<String> {
        experiment.set.iter().chain(&self.settings).map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// Whether `other` runs at the same combination (profile, settings, seed and workload), so
    /// that one's native run is the other's baseline.
    pub fn same_combination(&self, other: &Point) -> bool {
        self.profile == other.profile
            && self.settings == other.settings
            && self.seed == other.seed
            && self.workload == other.workload
    }

    /// What a result file records of the point, for people and `collect`.
    pub fn label(&self) -> PointLabel {
        PointLabel {
            profile: self.profile.clone(),
            settings: self.settings.iter().cloned().collect(),
            seed: self.seed,
            workload: match &self.workload {
                PointWorkload::Builtin(w) => w.name().to_owned(),
                PointWorkload::Trace(p) => p.display().to_string(),
            },
            scheme: self.scheme.name().to_owned(),
        }
    }

    /// The result file's name, inside [`POINTS_DIR`]: readable workload and scheme names, then
    /// `identity` (a digest of everything the report depends on) that makes it unique.
    pub fn file_name(&self, identity: &str) -> String {
        let workload: String = self
            .workload
            .name()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "-_".contains(c) { c } else { '_' })
            .collect();
        format!("{workload}.{}.{identity}.json", self.scheme.name())
    }
}

/// A point as its result file records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointLabel {
    /// The profile (built-in name or absolute file).
    pub profile: String,
    /// The `[vary]` values.
    pub settings: BTreeMap<String, String>,
    /// The seed.
    pub seed: u64,
    /// The built-in workload's name or the trace file.
    pub workload: String,
    /// The scheme.
    pub scheme: String,
}

/// One result file: the point, the digest of its full identity and its report (without
/// `overhead_vs_native`, which `collect` fills from the native point). Nothing in it depends on
/// where or when it ran, so the same point gives the same bytes on any machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointRecord {
    /// [`POINT_FORMAT`].
    pub memvirt_experiment_point: u64,
    /// The digest of everything the report depends on ([`crate::run::RunSpec::identity`]).
    pub identity: String,
    /// The point.
    pub point: PointLabel,
    /// The report.
    pub report: Report,
}

impl PointRecord {
    /// The file's bytes: pretty JSON and a newline.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        Ok(text)
    }

    /// Reads the result file `path` of the point whose identity is `identity`: `Ok(None)` when
    /// there is none yet, an error when it is unreadable or belongs to another point.
    pub fn read(path: &Path, identity: &str) -> Result<Option<PointRecord>, ExperimentError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ExperimentError::Io { path: shown(path), source }),
        };
        let invalid = |message: String| ExperimentError::Invalid {
            path: shown(path),
            message: format!("{message}; remove the file to run its point again"),
        };
        let record: PointRecord = serde_json::from_str(&text)
            .map_err(|e| invalid(format!("not a memvirt result file: {e}")))?;
        if record.memvirt_experiment_point != POINT_FORMAT {
            return Err(invalid(format!(
                "result format {} (this memvirt writes {POINT_FORMAT})",
                record.memvirt_experiment_point
            )));
        }
        if record.identity != identity {
            return Err(invalid(format!(
                "the result of point {}, not of {identity}",
                record.identity
            )));
        }
        Ok(Some(record))
    }
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

impl Experiment {
    /// Reads and checks the experiment file `path`. Profile files and traces it names relative
    /// to itself are made absolute.
    pub fn load(path: &Path) -> Result<Experiment, ExperimentError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ExperimentError::Io { path: shown(path), source })?;
        let base = crate::outfile::parent_dir(path);
        let base = std::fs::canonicalize(base)
            .map_err(|source| ExperimentError::Io { path: shown(base), source })?;
        let stem = path.file_stem().map_or_else(|| "experiment".into(), |s| s.to_string_lossy());
        Experiment::parse(&text, &stem, &base)
            .map_err(|message| ExperimentError::Invalid { path: shown(path), message })
    }

    /// Parses an experiment's `text`: `default_name` when it names none, relative files taken
    /// from `base`. The error is the message, without the file's name.
    pub fn parse(text: &str, default_name: &str, base: &Path) -> Result<Experiment, String> {
        let raw: RawExperiment =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        let name = raw.name.unwrap_or_else(|| default_name.to_owned());
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "name {name:?}: use letters, digits, `-`, `_` and `.` (it names the Slurm job)"
            ));
        }
        let absolute = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        let profiles = if raw.profiles.is_empty() {
            vec![crate::profile::DEFAULT.to_owned()]
        } else {
            let is_builtin = |p: &str| crate::profile::BUILTIN.iter().any(|(n, _)| *n == p);
            raw.profiles
                .iter()
                .map(|p| {
                    if is_builtin(p) {
                        p.clone()
                    } else {
                        absolute(Path::new(p)).display().to_string()
                    }
                })
                .collect()
        };
        let schemes = raw
            .schemes
            .iter()
            .map(|s| named(s, "scheme", SchemeKind::ALL, |k| k.name()))
            .collect::<Result<Vec<_>, _>>()?;
        let workloads = raw
            .workloads
            .iter()
            .map(|w| named(w, "workload", &WorkloadKind::ALL, |k| k.name()))
            .collect::<Result<Vec<_>, _>>()?;
        let traces: Vec<PathBuf> = raw.traces.iter().map(|p| absolute(p)).collect();
        let workloads = if workloads.is_empty() && traces.is_empty() {
            WorkloadKind::DEFAULT_MIX.to_vec()
        } else {
            workloads
        };
        let length = match raw.length.as_deref() {
            None | Some("short") => Length::Short,
            Some("steady") => Length::Steady,
            Some(other) => return Err(format!("length {other:?}: `short` or `steady`")),
        };
        if length == Length::Steady && !traces.is_empty() {
            return Err(
                "length = \"steady\" sets the built-in workloads' lengths; a trace's \
                        length is its own (give `warmup` and `[set]` workload.skip/limit instead)"
                    .into(),
            );
        }
        let seeds = if raw.seeds.is_empty() { vec![1] } else { raw.seeds };
        let mut set = Vec::new();
        flatten("", &raw.set, &mut |key, value| {
            set.push((key, scalar("set", &value)?));
            Ok(())
        })?;
        let mut vary: Vec<(String, Vec<String>)> = Vec::new();
        flatten("", &raw.vary, &mut |key, value| {
            let toml::Value::Array(items) = value else {
                return Err(format!("vary.{key}: give a list of values, e.g. [1, 2, 4]"));
            };
            if items.is_empty() {
                return Err(format!("vary.{key}: the list is empty"));
            }
            let what = format!("vary.{key}");
            let values = items.iter().map(|v| scalar(&what, v)).collect::<Result<Vec<_>, _>>()?;
            if let Some(v) =
                values.iter().enumerate().find_map(|(i, v)| values[..i].contains(v).then_some(v))
            {
                return Err(format!("vary.{key}: the value {v} is given twice"));
            }
            vary.push((key, values));
            Ok(())
        })?;
        if let Some((key, _)) = vary.iter().find(|(k, _)| set.iter().any(|(s, _)| s == k)) {
            return Err(format!("{key} is in both [set] and [vary]: keep one"));
        }
        duplicates("profiles", &profiles)?;
        duplicates("schemes", &schemes)?;
        duplicates("workloads", &workloads)?;
        duplicates("traces", &traces)?;
        duplicates("seeds", &seeds)?;
        let experiment = Experiment {
            name,
            description: raw.description,
            profiles,
            schemes,
            workloads,
            traces,
            seeds,
            length,
            warmup: raw.warmup,
            verify: raw.verify,
            set,
            vary,
        };
        let points = experiment.point_count();
        if points > MAX_POINTS {
            return Err(format!(
                "{points} points, more than the {MAX_POINTS} one experiment may have: split it"
            ));
        }
        Ok(experiment)
    }

    /// The experiment as a TOML file that stands on its own: every key written out, every
    /// file absolute. [`Experiment::parse`] of it gives the same experiment.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        let table = |pairs: Vec<(String, toml::Value)>| pairs.into_iter().collect::<toml::Table>();
        let raw = RawExperiment {
            name: Some(self.name.clone()),
            description: self.description.clone(),
            profiles: self.profiles.clone(),
            schemes: self.schemes.iter().map(|s| s.name().to_owned()).collect(),
            workloads: self.workloads.iter().map(|w| w.name().to_owned()).collect(),
            traces: self.traces.clone(),
            seeds: self.seeds.clone(),
            length: Some(match self.length {
                Length::Short => "short".to_owned(),
                Length::Steady => "steady".to_owned(),
            }),
            warmup: self.warmup,
            verify: self.verify,
            // Quoted dotted keys: `"smp.vcpus" = "2"` reads back as the one key it was.
            set: table(self.set.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect()),
            vary: table(
                self.vary
                    .iter()
                    .map(|(k, vs)| {
                        let values = vs.iter().cloned().map(toml::Value::from).collect();
                        (k.clone(), toml::Value::Array(values))
                    })
                    .collect(),
            ),
        };
        let mut text = format!(
            "# The experiment `{}` as memvirt ran it: every file absolute, every default \
             written out.\n",
            self.name
        );
        text.push_str(&toml::to_string(&raw)?);
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Ok(text)
    }

    /// The workloads of every combination: the built-in ones, then the traces.
    pub fn point_workloads(&self) -> Vec<PointWorkload> {
        let builtin = self.workloads.iter().map(|&w| PointWorkload::Builtin(w));
        builtin.chain(self.traces.iter().map(|t| PointWorkload::Trace(t.clone()))).collect()
    }

    /// The schemes of every combination, in order: the experiment's (every scheme when it names
    /// none), then `native` as the baseline when they leave it out.
    pub fn point_schemes(&self) -> Vec<(SchemeKind, bool)> {
        let named: &[SchemeKind] =
            if self.schemes.is_empty() { SchemeKind::ALL } else { &self.schemes };
        let mut schemes: Vec<(SchemeKind, bool)> = named.iter().map(|&s| (s, false)).collect();
        if !named.contains(&SchemeKind::Native) {
            schemes.push((SchemeKind::Native, true));
        }
        schemes
    }

    /// Every combination of the `[vary]` values, the first key varying slowest.
    pub fn combinations(&self) -> Vec<Vec<(String, String)>> {
        let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
        for (key, values) in &self.vary {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut next = c.clone();
                        next.push((key.clone(), v.clone()));
                        next
                    })
                })
                .collect();
        }
        combos
    }

    /// How many points [`Experiment::points`] gives.
    pub fn point_count(&self) -> usize {
        let combos: usize = self.vary.iter().map(|(_, v)| v.len()).product();
        self.profiles.len()
            * combos
            * self.seeds.len()
            * (self.workloads.len() + self.traces.len())
            * self.point_schemes().len()
    }

    /// Every point, in a fixed order: profiles, then `[vary]` combinations, seeds, workloads
    /// (built-in, then traces) and schemes, the last varying fastest. A point whose scheme
    /// cannot run there (an emulator given several vCPUs) is still listed; the runner leaves it
    /// out.
    pub fn points(&self) -> Vec<Point> {
        let mut points = Vec::with_capacity(self.point_count());
        let (workloads, schemes) = (self.point_workloads(), self.point_schemes());
        for profile in &self.profiles {
            for settings in self.combinations() {
                for &seed in &self.seeds {
                    for workload in &workloads {
                        for &(scheme, baseline_only) in &schemes {
                            points.push(Point {
                                profile: profile.clone(),
                                settings: settings.clone(),
                                seed,
                                workload: workload.clone(),
                                scheme,
                                baseline_only,
                            });
                        }
                    }
                }
            }
        }
        points
    }

    /// Files the experiment reads (profile files, traces), which no output may replace.
    pub fn inputs(&self) -> Vec<PathBuf> {
        let files = self.profiles.iter().map(PathBuf::from).filter(|p| p.is_absolute());
        files.chain(self.traces.iter().cloned()).collect()
    }
}

/// The indices of the points task `index` of `count` runs: every `count`-th point from `index`,
/// so that each task gets a share of every workload and scheme (their costs differ by orders of
/// magnitude) rather than a run of the slowest.
pub fn chunk(points: usize, index: usize, count: usize) -> impl Iterator<Item = usize> {
    (index..points).step_by(count.max(1))
}

/// Parses `--chunk I/N` (`I` from 0, as Slurm numbers array tasks).
pub fn parse_chunk(text: &str) -> Result<(usize, usize), String> {
    let parsed = text.split_once('/').and_then(|(i, n)| {
        Some((i.trim().parse::<usize>().ok()?, n.trim().parse::<usize>().ok()?))
    });
    match parsed {
        Some((i, n)) if n > 0 && i < n => Ok((i, n)),
        Some((i, n)) => Err(format!("--chunk {text}: needs 0 <= I < N, got I = {i}, N = {n}")),
        None => Err(format!("--chunk {text}: give I/N, e.g. 0/4 for the first of four tasks")),
    }
}

/// The kind called `text` among `all`, or an error listing the names.
fn named<T: Copy>(
    text: &str,
    what: &str,
    all: &[T],
    name: impl Fn(T) -> &'static str,
) -> Result<T, String> {
    all.iter().copied().find(|&k| name(k) == text).ok_or_else(|| {
        let names: Vec<&str> = all.iter().map(|&k| name(k)).collect();
        format!("unknown {what} {text:?}; known: {}", names.join(", "))
    })
}

/// An error naming the first item of `list` given twice (it would run the same points twice).
fn duplicates<T: PartialEq + std::fmt::Debug>(list: &str, items: &[T]) -> Result<(), String> {
    match items.iter().enumerate().find(|(i, item)| items[..*i].contains(item)) {
        Some((_, item)) => Err(format!("{list}: {item:?} is given twice")),
        None => Ok(()),
    }
}

/// Calls `each(dotted key, value)` for every leaf of `table`: `[vary] smp.vcpus = [...]` (a
/// nested table in TOML) and `"smp.vcpus" = [...]` (one quoted key) mean the same.
fn flatten(
    prefix: &str,
    table: &toml::Table,
    each: &mut dyn FnMut(String, toml::Value) -> Result<(), String>,
) -> Result<(), String> {
    for (key, value) in table {
        let full = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            toml::Value::Table(inner) => flatten(&full, inner, each)?,
            other => each(full, other.clone())?,
        }
    }
    Ok(())
}

/// A setting's value as `--set` takes it: a string as written, a number or boolean in TOML's
/// spelling.
fn scalar(what: &str, value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => {
            Err(format!("{what}: {other} is not a single value (a string, number or boolean)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Experiment, String> {
        Experiment::parse(text, "exp", Path::new("/base"))
    }

    const SMALL: &str = r#"
        profiles = ["riscv-sv39", "x86-64"]
        schemes = ["nested", "ssp"]
        workloads = ["pagefault"]
        seeds = [1, 2]
        [vary]
        smp.vcpus = [1, 2]
    "#;

    #[test]
    fn defaults_name_the_default_profile_mix_and_seed() {
        let e = parse("").unwrap();
        assert_eq!(e.name, "exp");
        assert_eq!(e.profiles, [crate::profile::DEFAULT]);
        assert_eq!(e.workloads, WorkloadKind::DEFAULT_MIX);
        assert_eq!(e.seeds, [1]);
        assert!(e.schemes.is_empty());
        // Every scheme (native among them) on each of the six workloads, one combination.
        assert_eq!(e.points().len(), SchemeKind::ALL.len() * 6);
    }

    #[test]
    fn points_are_the_product_in_a_fixed_order_with_native_as_baseline() {
        let e = parse(SMALL).unwrap();
        let points = e.points();
        // 2 profiles × 2 vCPU counts × 2 seeds × 1 workload × (nested, ssp, native).
        assert_eq!(points.len(), 2 * 2 * 2 * 3);
        assert_eq!(e.point_count(), points.len());
        let first: Vec<_> = points[..4]
            .iter()
            .map(|p| (p.profile.as_str(), p.settings[0].1.as_str(), p.seed, p.scheme.name()))
            .collect();
        assert_eq!(
            first,
            [
                ("riscv-sv39", "1", 1, "nested"),
                ("riscv-sv39", "1", 1, "ssp"),
                ("riscv-sv39", "1", 1, "native"),
                ("riscv-sv39", "1", 2, "nested"),
            ]
        );
        assert_eq!(points.iter().filter(|p| p.baseline_only).count(), 8);
        assert!(points.iter().all(|p| p.baseline_only == (p.scheme == SchemeKind::Native)));
        assert_eq!(points[23].profile, "x86-64");
        assert_eq!(points[23].sets(&e), ["smp.vcpus=2"]);
    }

    #[test]
    fn chunks_cover_every_point_exactly_once() {
        for (points, tasks) in [(24, 1), (24, 5), (7, 7), (3, 10), (0, 2)] {
            let mut seen = vec![0; points];
            for task in 0..tasks {
                for i in chunk(points, task, tasks) {
                    seen[i] += 1;
                }
            }
            assert!(seen.iter().all(|&n| n == 1), "{points} points in {tasks} tasks: {seen:?}");
        }
        assert_eq!(chunk(10, 1, 4).collect::<Vec<_>>(), [1, 5, 9]);
        assert_eq!(parse_chunk("2/4"), Ok((2, 4)));
        assert!(parse_chunk("4/4").unwrap_err().contains("0 <= I < N"));
        assert!(parse_chunk("1of4").unwrap_err().contains("I/N"));
    }

    #[test]
    fn the_snapshot_reads_back_as_the_same_experiment() {
        let text = r#"
            name = "round-trip"
            description = "quotes \" and all"
            profiles = ["x86-64", "mine.toml"]
            traces = ["t/a.mvt"]
            workloads = ["fork"]
            length = "short"
            warmup = 100
            verify = true
            [set]
            "kernel.thp" = "always"
            workload.forks = 3
            [vary]
            "scheme.host_page" = ["4k", "2m"]
            costs.vm_exit = [1000, 2500.5]
        "#;
        let e = parse(text).unwrap();
        assert_eq!(e.profiles[1], "/base/mine.toml");
        assert_eq!(e.traces, [PathBuf::from("/base/t/a.mvt")]);
        assert_eq!(e.vary[0], ("costs.vm_exit".to_owned(), vec!["1000".into(), "2500.5".into()]));
        assert_eq!(e.set[1], ("workload.forks".to_owned(), "3".to_owned()));
        let again = Experiment::parse(&e.to_toml().unwrap(), "other", Path::new("/elsewhere"));
        assert_eq!(again.unwrap(), e);
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("shemes = []", "unknown field `shemes`"),
            ("schemes = [\"nestd\"]", "unknown scheme \"nestd\"; known: native, nested"),
            ("workloads = [\"forks\"]", "unknown workload \"forks\""),
            ("seeds = [1, 1]", "seeds: 1 is given twice"),
            ("length = \"long\"", "`short` or `steady`"),
            ("name = \"a b\"", "name \"a b\""),
            ("[vary]\nsmp.vcpus = 2", "vary.smp.vcpus: give a list"),
            ("[vary]\nsmp.vcpus = []", "the list is empty"),
            ("[vary]\nsmp.vcpus = [1, 1]", "the value 1 is given twice"),
            ("[set]\nsmp.vcpus = [1]", "not a single value"),
            ("[set]\n\"smp.vcpus\" = 1\n[vary]\n\"smp.vcpus\" = [2]", "in both [set] and [vary]"),
            ("traces = [\"a\"]\nlength = \"steady\"", "a trace's length is its own"),
            ("seeds = 3", "line 1"),
        ];
        for (text, expected) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
        let values: Vec<String> = (0..400).map(|i| i.to_string()).collect();
        let huge = format!("[vary]\na.b = [{}]\nc.d = [{}]", values.join(","), values.join(","));
        assert!(parse(&huge).unwrap_err().contains("more than the 100000"));
    }

    #[test]
    fn a_result_file_is_checked_against_its_point() {
        let dir = std::env::temp_dir().join(format!("memvirt-exp-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.json");
        assert!(PointRecord::read(&path, "abc").unwrap().is_none());
        let point = parse(SMALL).unwrap().points().remove(0);
        let record = PointRecord {
            memvirt_experiment_point: POINT_FORMAT,
            identity: "abc".into(),
            point: point.label(),
            report: Report::default(),
        };
        std::fs::write(&path, record.to_json().unwrap()).unwrap();
        assert_eq!(PointRecord::read(&path, "abc").unwrap(), Some(record));
        let other = PointRecord::read(&path, "def").unwrap_err().to_string();
        assert!(other.contains("the result of point abc, not of def"), "{other}");
        std::fs::write(&path, "{\"truncated\": ").unwrap();
        let bad = PointRecord::read(&path, "abc").unwrap_err().to_string();
        assert!(bad.contains("p.json") && bad.contains("remove the file"), "{bad}");
        assert_eq!(point.file_name("0123"), "pagefault.nested.0123.json");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
