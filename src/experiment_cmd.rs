//! `memvirt experiment`, part of the binary: runs an experiment file's points (all cores, or one
//! chunk of them as a Slurm task does), merges their result files, and submits them as a Slurm
//! job array. The file format, the points and the result files are [`memvirt::experiment`]'s;
//! turning a point into a run uses the command line's own rules for `--set` ([`Setup`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use memvirt::experiment::{
    self, slurm, Experiment, Point, PointRecord, PointWorkload, POINTS_DIR, SNAPSHOT,
};
use memvirt::outfile;
use memvirt::output::{self, Format};
use memvirt::report::Report;
use memvirt::run::{self, RunSpec};
use memvirt::scheme::SchemeKind;
use memvirt::sweep::{Metric, Sweep};
use memvirt::trace::decode::Window;
use memvirt::workload::{TraceParams, TraceSet, WorkloadKind, DEFAULT_KEEP_DECODED_BYTES};
use rayon::prelude::*;
use serde::Serialize;

use super::{emit, has_param, write_atomically, MachineArgs, Setup, SharedBar};

#[derive(Args, Debug)]
pub(super) struct ExperimentArgs {
    #[command(subcommand)]
    command: ExperimentCommand,
}

#[derive(Subcommand, Debug)]
enum ExperimentCommand {
    /// Run the points of an experiment file that have no result yet, in parallel, one result
    /// file per point in the results directory (an interrupted run resumes where it stopped).
    Run(RunArgs),
    /// Merge a results directory into one table (table, JSON or CSV), and charts with --svg.
    Collect(CollectArgs),
    /// Run the experiment as a Slurm job array (sbatch): task I runs every N-th point from I.
    Submit(SubmitArgs),
    /// Say how many points an experiment has and how many are done, without running any.
    Status(StatusArgs),
}

/// Where the results go.
#[derive(Args, Debug)]
struct ResultsArg {
    /// The results directory [default: NAME.results beside the experiment file, NAME its stem;
    /// the directory itself when FILE is a results directory's experiment.toml].
    #[arg(long, value_name = "DIR")]
    results: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The experiment file (docs/experiments.md).
    file: PathBuf,
    #[command(flatten)]
    results: ResultsArg,
    /// Runs at once. 0: one per core.
    #[arg(long, value_name = "N", default_value_t = 0)]
    jobs: usize,
    /// Run only chunk I of N: every N-th point from point I (from 0), as Slurm array task I does.
    #[arg(long, value_name = "I/N", value_parser = parse_chunk)]
    chunk: Option<(usize, usize)>,
}

#[derive(Args, Debug)]
struct CollectArgs {
    /// The results directory (`experiment run` prints it).
    dir: PathBuf,
    /// Output format: `json` gives every point's settings and full report.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Write to FILE instead of standard output (replaced whole).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Also draw charts into DIR (created if missing): the overhead and exits of every scheme
    /// and workload as grouped bars per combination, and for each numeric [vary] key the
    /// overhead against its values, one line per scheme.
    #[arg(long, value_name = "DIR")]
    svg: Option<PathBuf>,
    /// Collect the points that have results and leave the others out, instead of failing.
    #[arg(long)]
    partial: bool,
}

#[derive(Args, Debug)]
struct SubmitArgs {
    /// The experiment file.
    file: PathBuf,
    #[command(flatten)]
    results: ResultsArg,
    /// Points per array task (the tasks are ceil(points / this)).
    #[arg(long, value_name = "K", default_value_t = 10, conflicts_with = "tasks")]
    points_per_task: usize,
    /// Array tasks, instead of --points-per-task.
    #[arg(long, value_name = "N")]
    tasks: Option<usize>,
    /// CPUs per task; a task runs its points on that many threads.
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus_per_task: usize,
    /// The Slurm partition [default: the cluster's].
    #[arg(long)]
    partition: Option<String>,
    /// Each task's time limit, in Slurm's form (`30`, `2:00:00`) [default: the partition's].
    #[arg(long)]
    time: Option<String>,
    /// One more `#SBATCH` option (`--sbatch-arg=--mem=2G`); repeatable.
    #[arg(long = "sbatch-arg", value_name = "OPTION", allow_hyphen_values = true)]
    sbatch_args: Vec<String>,
    /// Print the batch script and submit nothing (nothing is written either).
    #[arg(long)]
    dry_run: bool,
    /// Wait until every task has ended (`sbatch --wait`); fails if one failed.
    #[arg(long)]
    wait: bool,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The experiment file, or a results directory.
    path: PathBuf,
    #[command(flatten)]
    results: ResultsArg,
}

fn parse_chunk(text: &str) -> Result<(usize, usize), String> {
    experiment::parse_chunk(text)
}

pub(super) fn experiment(args: &ExperimentArgs) -> Result<()> {
    match &args.command {
        ExperimentCommand::Run(a) => run(a),
        ExperimentCommand::Collect(a) => collect(a),
        ExperimentCommand::Submit(a) => submit(a),
        ExperimentCommand::Status(a) => status(a),
    }
}

// ---------------------------------------------------------------------------------------------
// planning: points to runs

/// A point that can run, with its run and where its result goes.
struct Planned {
    point: Point,
    spec: RunSpec,
    /// The digest of the spec's identity.
    identity: String,
    /// The result file's name inside the points directory.
    file: String,
}

/// The experiment's runnable points, in its order, and what was left out.
struct Plan {
    experiment: Experiment,
    points: Vec<Planned>,
    /// Schemes left out of some points, with why (`softmmu`: it emulates one guest CPU, not 2).
    left_out: Vec<String>,
}

/// What a plan is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Running points: traces are opened (checked, decoded once) for the runs.
    Run,
    /// Naming their result files (`status`, `collect`): traces are only fingerprinted.
    Name,
}

/// Checks every point of `experiment` and builds its run, before any simulation: a bad setting,
/// profile or trace fails the whole experiment at once, naming the point. For
/// [`Purpose::Name`] a trace point's spec has no traces: only its identity is needed.
fn plan(experiment: Experiment, purpose: Purpose) -> Result<Plan> {
    let schemes: Vec<SchemeKind> = experiment.point_schemes().iter().map(|&(s, _)| s).collect();
    let traces = prepare_traces(&experiment, purpose)?;
    let builtin = experiment.workloads.clone();
    let trace_keys = memvirt::config::keys(&TraceParams::default());
    // One setup per (profile, settings, seed), kept with the first point that needed it.
    let mut setups: Vec<(Point, Setup)> = Vec::new();
    let mut planned = Vec::new();
    let mut left_out: Vec<(SchemeKind, String, usize)> = Vec::new();
    for point in experiment.points() {
        let known = setups.iter().position(|(q, _)| {
            q.profile == point.profile && q.settings == point.settings && q.seed == point.seed
        });
        let index = match known {
            Some(i) => i,
            None => {
                let setup = setup_for(&experiment, &point, &schemes, &builtin, &trace_keys)
                    .with_context(|| settings_of(&point))?;
                setups.push((point.clone(), setup));
                setups.len() - 1
            }
        };
        let setup = &setups[index].1;
        if let Some(why) = run::unavailable(point.scheme, &setup.profile, &setup.scheme_sets) {
            match left_out.iter_mut().find(|(s, w, _)| *s == point.scheme && *w == why) {
                Some((_, _, n)) => *n += 1,
                None => left_out.push((point.scheme, why, 1)),
            }
            continue;
        }
        let (spec, workload_identity) = match &point.workload {
            PointWorkload::Builtin(w) => {
                (setup.spec(point.scheme, *w, false), serde_json::json!(w.name()))
            }
            PointWorkload::Trace(path) => {
                let (set, fingerprint) = &traces[path];
                let sets: Vec<(String, String)> = setup
                    .workload_sets
                    .iter()
                    .filter(|(k, _)| trace_keys.contains(k))
                    .cloned()
                    .collect();
                TraceParams::with_sets(&sets).with_context(|| combination(&point))?;
                let spec = RunSpec {
                    workload_sets: sets,
                    traces: set.clone(),
                    warmup: experiment.warmup.unwrap_or(0),
                    ..setup.spec(point.scheme, WorkloadKind::Pagefault, false)
                };
                (spec, fingerprint.clone())
            }
        };
        let identity = run::digest(&spec.identity(workload_identity).to_string());
        let file = point.file_name(&identity);
        planned.push(Planned { point, spec, identity, file });
    }
    let left_out = left_out
        .into_iter()
        .map(|(scheme, why, n)| {
            let plural = if n == 1 { "" } else { "s" };
            format!("{} left out of {n} point{plural}: {why}", scheme.name())
        })
        .collect();
    Ok(Plan { experiment, points: planned, left_out })
}

/// The profile, settings and seed of `point`'s combination, checked as `--set` checks them.
fn setup_for(
    experiment: &Experiment,
    point: &Point,
    schemes: &[SchemeKind],
    builtin: &[WorkloadKind],
    trace_keys: &[String],
) -> Result<Setup> {
    let sets = point.sets(experiment);
    // A workload setting applies to the workloads (and traces) that have the parameter; one
    // that none has is a mistake.
    for raw in &sets {
        let (key, _) = memvirt::config::parse_assignment(raw)?;
        if let Some(k) = key.strip_prefix("workload.") {
            let builtin_has = builtin.iter().any(|&w| has_param(w, k));
            let trace_has = !experiment.traces.is_empty() && trace_keys.iter().any(|t| t == k);
            if !builtin_has && !trace_has {
                bail!(
                    "{raw}: no workload of the experiment has a parameter `{k}` (`memvirt list` \
                     shows them)"
                );
            }
        }
    }
    let machine = MachineArgs {
        profile: point.profile.clone(),
        sets,
        seed: point.seed,
        verify: experiment.verify,
        warmup: experiment.warmup,
        length: experiment.length,
        vcpus: None,
    };
    // No workloads for Setup to check: the keys were checked above, each workload is built below
    // with the settings it has.
    let setup = Setup::new(&machine, schemes, &[])?;
    for &w in builtin {
        let sets = setup.sets_for(w, false);
        w.build(point.seed, &sets).with_context(|| format!("workload {}", w.name()))?;
    }
    Ok(setup)
}

/// `profile P, K=V, seed S`: the settings of a point, for messages.
fn settings_of(point: &Point) -> String {
    let mut text = format!("profile {}", point.profile);
    for (k, v) in &point.settings {
        text.push_str(&format!(", {k}={v}"));
    }
    text.push_str(&format!(", seed {}", point.seed));
    text
}

/// `profile P, K=V, seed S, workload W`: the combination a point belongs to, for messages.
fn combination(point: &Point) -> String {
    format!("{}, workload {}", settings_of(point), point.workload.name())
}

/// Every trace of the experiment with what identifies its content (its path, length and
/// CRC-32), and for [`Purpose::Run`] opened once and shared by all its points (a compact trace
/// is checked whole once, any other converted once).
fn prepare_traces(
    experiment: &Experiment,
    purpose: Purpose,
) -> Result<BTreeMap<PathBuf, (Option<TraceSet>, serde_json::Value)>> {
    let mut traces = BTreeMap::new();
    // The records the points replay, if [set] says (a varied skip or limit decodes per run).
    let sets: Vec<(String, String)> = experiment
        .set
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("workload.")?.to_owned(), v.clone())))
        .filter(|(k, _)| k == "skip" || k == "limit")
        .collect();
    let window = TraceParams::with_sets(&sets).map_or(Window::ALL, |p| p.window());
    for path in &experiment.traces {
        let (bytes, crc32) = checksum(path).with_context(|| format!("trace {}", path.display()))?;
        let fingerprint = serde_json::json!({
            "trace": path.display().to_string(),
            "bytes": bytes,
            "crc32": crc32,
        });
        let set = match purpose {
            Purpose::Name => None,
            Purpose::Run => {
                let set = TraceSet::prepare_keeping(
                    std::slice::from_ref(path),
                    Default::default(),
                    DEFAULT_KEEP_DECODED_BYTES,
                    window,
                )?;
                super::trace_cmd::warn(&set.warnings());
                Some(set)
            }
        };
        traces.insert(path.clone(), (set, fingerprint));
    }
    Ok(traces)
}

/// The length and CRC-32 of the file at `path`, read a megabyte at a time (a trace can be far
/// larger than memory).
fn checksum(path: &Path) -> std::io::Result<(u64, u32)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let (mut hasher, mut bytes) = (crc32fast::Hasher::new(), 0u64);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok((bytes, hasher.finalize())),
            Ok(n) => {
                hasher.update(&buf[..n]);
                bytes += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// run

/// The results directory: `--results`, the directory of a snapshot given as FILE, or
/// `NAME.results` beside FILE.
fn results_dir(file: &Path, results: &ResultsArg) -> PathBuf {
    if let Some(dir) = &results.results {
        return dir.clone();
    }
    let dir = outfile::parent_dir(file);
    if file.file_name().is_some_and(|n| n == SNAPSHOT) && dir.join(POINTS_DIR).is_dir() {
        return dir.to_path_buf();
    }
    let stem = file.file_stem().map_or_else(|| "experiment".into(), |s| s.to_string_lossy());
    dir.join(format!("{stem}.results"))
}

/// Creates the results directory and its points directory, and writes the snapshot (unless
/// FILE is the snapshot). A directory holding another experiment's snapshot is refused.
fn prepare_results(file: &Path, dir: &Path, experiment: &Experiment) -> Result<()> {
    std::fs::create_dir_all(dir.join(POINTS_DIR))
        .with_context(|| format!("cannot create the results directory {}", dir.display()))?;
    let snapshot = dir.join(SNAPSHOT);
    if snapshot.exists() {
        let theirs = Experiment::load(&snapshot)?;
        if theirs.name != experiment.name {
            bail!(
                "{} holds the results of experiment `{}`, not `{}`: give another --results",
                dir.display(),
                theirs.name,
                experiment.name
            );
        }
        let same_file = std::fs::canonicalize(file).ok() == std::fs::canonicalize(&snapshot).ok();
        if same_file {
            return Ok(());
        }
    }
    write_atomically(&snapshot, &experiment.to_toml().context("cannot write the snapshot")?)
}

fn run(args: &RunArgs) -> Result<()> {
    let start = Instant::now();
    let experiment = Experiment::load(&args.file)?;
    let dir = results_dir(&args.file, &args.results);
    let plan = plan(experiment, Purpose::Run)?;
    for note in &plan.left_out {
        eprintln!("memvirt: note: {note}");
    }
    prepare_results(&args.file, &dir, &plan.experiment)?;
    let points_dir = dir.join(POINTS_DIR);
    let mine: Vec<usize> = match args.chunk {
        Some((i, n)) => experiment::chunk(plan.points.len(), i, n).collect(),
        None => (0..plan.points.len()).collect(),
    };
    let mut pending = Vec::new();
    for &i in &mine {
        let p = &plan.points[i];
        if PointRecord::read(&points_dir.join(&p.file), &p.identity)?.is_none() {
            pending.push(i);
        }
    }
    let done_before = mine.len() - pending.len();
    let bar = SharedBar::new(
        format!("experiment {}: {} points", plan.experiment.name, pending.len()),
        SharedBar::RUNS,
    );
    let finished = AtomicUsize::new(0);
    let failures: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    let one = |&i: &usize| {
        let p = &plan.points[i];
        let outcome = run_point(p, &points_dir);
        if let Err(e) = outcome {
            let mut failed = failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            failed.push((
                i,
                format!(
                    "{}, {}: {}",
                    combination(&p.point),
                    p.point.scheme.name(),
                    super::chain(&e)
                ),
            ));
        }
        bar.update(finished.fetch_add(1, Ordering::Relaxed) + 1, pending.len());
    };
    match rayon::ThreadPoolBuilder::new().num_threads(args.jobs).build() {
        Ok(pool) => pool.install(|| pending.par_iter().for_each(one)),
        Err(_) => pending.iter().for_each(one),
    }
    bar.finish();
    let mut failed = failures.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    failed.sort();
    let scope = match args.chunk {
        Some((i, n)) => format!(" (chunk {i}/{n}: {} of them)", mine.len()),
        None => String::new(),
    };
    println!(
        "experiment {}: {} points{scope}, {done_before} done before, {} run now, {} failed, in {:.1} s; results in {}",
        plan.experiment.name,
        plan.points.len(),
        pending.len() - failed.len(),
        failed.len(),
        start.elapsed().as_secs_f64(),
        dir.display()
    );
    if !failed.is_empty() {
        for (_, why) in &failed {
            eprintln!("memvirt: point failed: {why}");
        }
        bail!(
            "{} of {} points failed (the others' results are written); fix the cause and run again \
             to run only what is missing",
            failed.len(),
            pending.len()
        );
    }
    if args.chunk.is_none() {
        println!("merge them with: memvirt experiment collect {}", dir.display());
    }
    Ok(())
}

/// Runs one point and writes its result file whole.
fn run_point(p: &Planned, points_dir: &Path) -> Result<()> {
    let report = run::run(&p.spec, &mut |_, _| {}).map_err(|e| anyhow!(e))?;
    let record = PointRecord {
        memvirt_experiment_point: experiment::POINT_FORMAT,
        identity: p.identity.clone(),
        point: p.point.label(),
        report,
    };
    write_atomically(&points_dir.join(&p.file), &record.to_json()?)
}

// ---------------------------------------------------------------------------------------------
// status

fn status(args: &StatusArgs) -> Result<()> {
    let (file, dir) = if args.path.is_dir() {
        (args.path.join(SNAPSHOT), args.path.clone())
    } else {
        (args.path.clone(), results_dir(&args.path, &args.results))
    };
    let plan = plan(Experiment::load(&file)?, Purpose::Name)?;
    let points_dir = dir.join(POINTS_DIR);
    let mut missing = Vec::new();
    for p in &plan.points {
        if PointRecord::read(&points_dir.join(&p.file), &p.identity)?.is_none() {
            missing.push(p);
        }
    }
    let mut text = format!(
        "experiment {}: {} points, {} done, {} to run (results: {})\n",
        plan.experiment.name,
        plan.points.len(),
        plan.points.len() - missing.len(),
        missing.len(),
        dir.display()
    );
    for note in &plan.left_out {
        text.push_str(&format!("note: {note}\n"));
    }
    const SHOWN: usize = 20;
    for p in missing.iter().take(SHOWN) {
        text.push_str(&format!("  to run: {}, {}\n", combination(&p.point), p.point.scheme.name()));
    }
    if missing.len() > SHOWN {
        text.push_str(&format!("  ... and {} more\n", missing.len() - SHOWN));
    }
    emit(&text, None)
}

// ---------------------------------------------------------------------------------------------
// collect

/// One collected point: its settings and its report, overhead filled.
#[derive(Serialize)]
struct Row {
    #[serde(flatten)]
    point: experiment::PointLabel,
    report: Report,
}

/// `collect --format json`.
#[derive(Serialize)]
struct Collected<'a> {
    memvirt_experiment: &'a str,
    description: &'a str,
    /// The `[vary]` keys, in column order.
    vary: Vec<&'a str>,
    points: usize,
    collected: usize,
    results: &'a [Row],
}

fn collect(args: &CollectArgs) -> Result<()> {
    let snapshot = args.dir.join(SNAPSHOT);
    if !snapshot.is_file() {
        bail!(
            "{} is not a results directory: it has no {SNAPSHOT} (`memvirt experiment run FILE` \
             makes one)",
            args.dir.display()
        );
    }
    if let Some(out) = &args.output {
        outfile::check(out, &[snapshot.as_path()])?;
    }
    let plan = plan(Experiment::load(&snapshot)?, Purpose::Name)?;
    let points_dir = args.dir.join(POINTS_DIR);
    let mut records: Vec<Option<Report>> = Vec::with_capacity(plan.points.len());
    for p in &plan.points {
        records.push(PointRecord::read(&points_dir.join(&p.file), &p.identity)?.map(|r| r.report));
    }
    let missing: Vec<&Planned> =
        plan.points.iter().zip(&records).filter(|(_, r)| r.is_none()).map(|(p, _)| p).collect();
    if !missing.is_empty() && !args.partial {
        let first = missing[0];
        bail!(
            "{} of {} points have no result yet (the first: {}, {}); run `memvirt experiment run \
             {}` to finish them, or collect what there is with --partial",
            missing.len(),
            plan.points.len(),
            combination(&first.point),
            first.point.scheme.name(),
            snapshot.display()
        );
    }
    // Each point's overhead is over native's at its combination.
    let mut rows = Vec::new();
    for (i, p) in plan.points.iter().enumerate() {
        let Some(report) = &records[i] else { continue };
        if p.point.baseline_only {
            continue;
        }
        let native = plan.points.iter().zip(&records).find_map(|(q, r)| {
            (q.point.scheme == SchemeKind::Native && q.point.same_combination(&p.point))
                .then_some(r.as_ref())
                .flatten()
        });
        let mut report = report.clone();
        match native {
            Some(n) => report.set_native(n.cycles),
            None => report.overhead_vs_native = None,
        }
        rows.push((p, Row { point: p.point.label(), report }));
    }
    let e = &plan.experiment;
    let title = format!(
        "memvirt experiment {}: {} of {} points ({})",
        e.name,
        rows.len(),
        plan.points.iter().filter(|p| !p.point.baseline_only).count(),
        args.dir.display()
    );
    if let Some(dir) = &args.svg {
        draw_charts(e, &rows, dir)?;
    }
    let text = match args.format {
        Format::Json => {
            let results: Vec<Row> = rows.into_iter().map(|(_, r)| r).collect();
            let collected = Collected {
                memvirt_experiment: &e.name,
                description: &e.description,
                vary: e.vary.iter().map(|(k, _)| k.as_str()).collect(),
                points: plan.points.iter().filter(|p| !p.point.baseline_only).count(),
                collected: results.len(),
                results: &results,
            };
            let mut text = serde_json::to_string_pretty(&collected)?;
            text.push('\n');
            text
        }
        format => {
            let columns = point_columns(e, &rows, format);
            let reports: Vec<Report> = rows.into_iter().map(|(_, r)| r.report).collect();
            output::render_with_columns(&reports, &columns, format, &title)?
        }
    };
    emit(&text, args.output.as_deref())
}

/// The columns that tell the points apart besides workload and scheme: the profile when there
/// are several, each `[vary]` key, the seed when there are several. CSV rows have the profile's
/// name and the seed already: there the profile as the experiment gives it (a built-in name or
/// a file) is `point_profile`, and the seed is not repeated.
fn point_columns(
    e: &Experiment,
    rows: &[(&Planned, Row)],
    format: Format,
) -> Vec<(String, Vec<String>)> {
    let csv = format == Format::Csv;
    let mut columns = Vec::new();
    if e.profiles.len() > 1 {
        let name = if csv { "point_profile" } else { "profile" };
        columns
            .push((name.to_owned(), rows.iter().map(|(p, _)| p.point.profile.clone()).collect()));
    }
    for (i, (key, _)) in e.vary.iter().enumerate() {
        let cells = rows.iter().map(|(p, _)| p.point.settings[i].1.clone()).collect();
        columns.push((key.clone(), cells));
    }
    if e.seeds.len() > 1 && !csv {
        columns.push((
            "seed".to_owned(),
            rows.iter().map(|(p, _)| p.point.seed.to_string()).collect(),
        ));
    }
    columns
}

/// `collect --svg DIR`: grouped bars per (profile, combination, seed), and per numeric `[vary]`
/// key a line chart of the overhead against its values per (profile, other settings, seed,
/// workload).
fn draw_charts(e: &Experiment, rows: &[(&Planned, Row)], dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = 0;
    // Grouped bars: one chart per combination.
    let mut groups: Vec<(&Point, Vec<Report>)> = Vec::new();
    for (p, row) in rows {
        let same = |q: &Point| {
            q.profile == p.point.profile && q.settings == p.point.settings && q.seed == p.point.seed
        };
        match groups.iter_mut().find(|(q, _)| same(q)) {
            Some((_, reports)) => reports.push(row.report.clone()),
            None => groups.push((&p.point, vec![row.report.clone()])),
        }
    }
    for (point, reports) in &groups {
        let label = chart_label(e, point, &point.settings);
        let title = format!("memvirt experiment {}: {}", e.name, label.join(", "));
        let chart = memvirt::plot::compare::svg(reports, &title)?;
        write_atomically(&dir.join(format!("bars{}.svg", slug(&label.join("_")))), &chart)?;
        written += 1;
    }
    // Lines: one chart per numeric key and everything else fixed.
    for (k, (key, values)) in e.vary.iter().enumerate() {
        if values.len() < 2 || values.iter().any(|v| v.parse::<f64>().is_err()) {
            continue;
        }
        let mut series: Vec<(&Point, Vec<&Row>)> = Vec::new();
        for (p, row) in rows {
            let same = |q: &Point| {
                q.profile == p.point.profile
                    && q.seed == p.point.seed
                    && q.workload == p.point.workload
                    && q.settings
                        .iter()
                        .enumerate()
                        .all(|(j, s)| j == k || *s == p.point.settings[j])
            };
            match series.iter_mut().find(|(q, _)| same(q)) {
                Some((_, rs)) => rs.push(row),
                None => series.push((&p.point, vec![row])),
            }
        }
        for (point, rs) in series {
            let schemes: Vec<SchemeKind> = {
                let mut s: Vec<SchemeKind> = Vec::new();
                for r in &rs {
                    if let Some(kind) = SchemeKind::ALL.iter().find(|k| k.name() == r.report.scheme)
                    {
                        if !s.contains(kind) {
                            s.push(*kind);
                        }
                    }
                }
                s
            };
            let cell = |value: &str, scheme: SchemeKind| {
                rs.iter().find(|r| {
                    r.point.settings.get(key).is_some_and(|v| v == value)
                        && r.report.scheme == scheme.name()
                })
            };
            let matrix = values
                .iter()
                .map(|v| {
                    schemes
                        .iter()
                        .map(|&s| cell(v, s).and_then(|r| Metric::Overhead.of(&r.report)))
                        .collect()
                })
                .collect();
            let reports = values
                .iter()
                .map(|v| {
                    schemes
                        .iter()
                        .map(|&s| cell(v, s).map(|r| r.report.clone()).unwrap_or_default())
                        .collect()
                })
                .collect();
            let others: Vec<(String, String)> = point
                .settings
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != k)
                .map(|(_, s)| s.clone())
                .collect();
            let label = chart_label(e, point, &others);
            let sweep = Sweep {
                workload: point.workload.name(),
                profile: rs.first().map_or_else(String::new, |r| r.report.profile.clone()),
                seed: point.seed,
                key: key.clone(),
                values: values.clone(),
                schemes,
                metric: Metric::Overhead,
                matrix,
                reports,
            };
            let subtitle = format!("experiment {}: {}", e.name, label.join(", "));
            let chart = memvirt::plot::svg(&sweep, &subtitle)?;
            let name = format!(
                "{}{}{}.svg",
                safe(key),
                slug(&point.workload.name()),
                slug(&label.join("_"))
            );
            write_atomically(&dir.join(name), &chart)?;
            written += 1;
        }
    }
    eprintln!("memvirt: {written} charts in {}", dir.display());
    Ok(())
}

/// What sets a chart's points apart from the rest: the profile if there are several, the given
/// settings, the seed if there are several (none when nothing does).
fn chart_label(e: &Experiment, point: &Point, settings: &[(String, String)]) -> Vec<String> {
    let mut parts = Vec::new();
    if e.profiles.len() > 1 {
        parts.push(
            Path::new(&point.profile)
                .file_stem()
                .map_or_else(|| point.profile.clone(), |s| s.to_string_lossy().into_owned()),
        );
    }
    parts.extend(settings.iter().map(|(k, v)| format!("{k}={v}")));
    if e.seeds.len() > 1 {
        parts.push(format!("seed={}", point.seed));
    }
    parts
}

/// `text` made safe for a file name.
fn safe(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_=.".contains(c) { c } else { '_' })
        .collect()
}

/// `-` and `text` made safe for a file name (empty for empty text).
fn slug(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!("-{}", safe(text))
    }
}

// ---------------------------------------------------------------------------------------------
// submit

fn submit(args: &SubmitArgs) -> Result<()> {
    let experiment = Experiment::load(&args.file)?;
    let dir = results_dir(&args.file, &args.results);
    let plan = plan(experiment, Purpose::Run)?;
    for note in &plan.left_out {
        eprintln!("memvirt: note: {note}");
    }
    let points = plan.points.len();
    if points == 0 {
        bail!("the experiment has no point that can run");
    }
    if args.cpus_per_task == 0 {
        bail!("--cpus-per-task 0: a task needs at least one CPU");
    }
    let tasks = match args.tasks {
        Some(0) => bail!("--tasks 0: give at least one task"),
        Some(n) => n.min(points),
        None if args.points_per_task == 0 => bail!("--points-per-task 0: give at least one"),
        None => points.div_ceil(args.points_per_task),
    };
    // Absolute paths: the tasks start in whatever directory Slurm gives them.
    let absolute = |p: &Path| -> Result<PathBuf> {
        Ok(if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir()?.join(p) })
    };
    let dir = absolute(dir.strip_prefix(".").unwrap_or(&dir))?;
    let job = slurm::Job {
        name: format!("memvirt-{}", plan.experiment.name),
        tasks,
        cpus_per_task: args.cpus_per_task,
        memvirt: std::env::current_exe().context("cannot tell where this memvirt binary is")?,
        experiment: dir.join(SNAPSHOT),
        results: dir.clone(),
        logs: dir.join("slurm"),
        partition: args.partition.clone(),
        time: args.time.clone(),
        extra: args.sbatch_args.clone(),
    };
    let script = job.script()?;
    if args.dry_run {
        return emit(&script, None);
    }
    prepare_results(&args.file, &dir, &plan.experiment)?;
    std::fs::create_dir_all(&job.logs)
        .with_context(|| format!("cannot create {}", job.logs.display()))?;
    let script_path = job.logs.join(format!("{}.sbatch", plan.experiment.name));
    write_atomically(&script_path, &script)?;
    let mut sbatch = Command::new("sbatch");
    sbatch.arg("--parsable");
    if args.wait {
        sbatch.arg("--wait");
    }
    sbatch.arg(&script_path);
    let out = sbatch.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!("sbatch not found: Slurm's client commands are not installed here (--dry-run prints the script without them)")
        } else {
            anyhow!("cannot start sbatch: {e}")
        }
    })?;
    let job_id =
        String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap_or("").to_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if job_id.is_empty() {
            bail!(
                "sbatch did not take the job ({}): {} (is this a Slurm cluster's login node, or \
                 SLURM_CONF set? --dry-run prints the script)",
                out.status,
                stderr.trim()
            );
        }
        bail!(
            "job {job_id} failed ({}): {}; task logs in {}",
            out.status,
            stderr.trim(),
            job.logs.display()
        );
    }
    println!(
        "experiment {}: {points} points as job {job_id}, {tasks} array tasks of {} CPU{} ({}); logs in {}",
        plan.experiment.name,
        args.cpus_per_task,
        if args.cpus_per_task == 1 { "" } else { "s" },
        script_path.display(),
        job.logs.display()
    );
    let next = if args.wait { "merge them with" } else { "when it has ended, merge them with" };
    println!("{next}: memvirt experiment collect {}", dir.display());
    Ok(())
}
