//! The `memvirt` command line: `list`, `run`, `compare` (the default) and `bench`.
//!
//! Everything here is plumbing over the library: arguments become a [`RunSpec`], runs go
//! through [`run::run`] and [`run::compare`], reports are rendered by [`memvirt::output`]. Errors
//! are `anyhow` here only, printed as `memvirt: error: ...` with exit code 1; clap's usage errors
//! keep clap's exit code 2.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use memvirt::config;
use memvirt::outfile;
use memvirt::output::{self, BenchRow, Format};
use memvirt::profile::{self, Profile};
use memvirt::report::Report;
use memvirt::run::{self, RunSpec};
use memvirt::scheme::SchemeKind;
use memvirt::sensitivity;
use memvirt::workload::{Length, TraceParams, WorkloadKind};

mod experiment_cmd;
mod guest_cmd;
mod reproduce_cmd;
mod sweep_cmd;
mod trace_cmd;

/// memvirt: a fast, bit-accurate simulator of memory virtualization.
///
/// With no subcommand, runs `compare` with its defaults: every scheme on the default workload mix.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the schemes, profiles and workloads (with their parameters and defaults).
    List(ListArgs),
    /// Run one scheme on one workload and print its report.
    ///
    /// The native scheme runs too, on the same workload, profile and seed, as the baseline of
    /// `overhead_vs_native`; only the named scheme's report is printed.
    Run(RunArgs),
    /// Run every scheme on each workload and print them side by side (the default command).
    ///
    /// One row per (workload, scheme). Native runs as the overhead baseline even when it is not
    /// among --schemes. A `--set workload.KEY=VALUE` applies to every selected workload that has
    /// the parameter KEY, and is an error only if none of them has it.
    Compare(CompareArgs),
    /// Measure simulator speed: wall-clock time of each run on the current machine.
    ///
    /// Times `run::run` for each workload and scheme with `std::time::Instant` and prints
    /// simulated accesses per wall-clock second (millions), the wall seconds and the accesses.
    /// The figures depend on this machine and its load; build with `--release`. `--set
    /// workload.KEY=VALUE` follows the rule of `compare`.
    Bench(BenchArgs),
    /// Sweep one setting over values, run the schemes at each, and tabulate (and plot) a metric.
    ///
    /// One row per value, one column per scheme. Points run in parallel (RAYON_NUM_THREADS
    /// caps the threads); the output does not depend on their timing. Native also runs at each
    /// value, as the overhead baseline. `memvirt sweep --lsp-micro --svg lsp-micro.svg`
    /// reproduces the LSP paper's micro-benchmark series (README).
    Sweep(SweepArgs),
    /// Convert, describe and time traces (`trace convert IN OUT`, `trace info FILE`, `trace
    /// bench FILE`).
    ///
    /// Reads ChampSim binary traces (`input_instr`, `cloudsuite_instr`), valgrind lackey text and
    /// memvirt's compact format (docs/trace-format.md), plain, gzip, xz or zstd, `-` for standard
    /// input.
    Trace(trace_cmd::TraceArgs),
    /// Record a real program with valgrind lackey into a compact trace: `memvirt record
    /// [--output FILE] -- CMD ARGS...`.
    ///
    /// Runs `valgrind --tool=lackey --trace-mem=yes --trace-children=yes` (Debian package
    /// `valgrind`), streams each process's output into the trace as it is written (one stream
    /// per process image) and prints a summary. Replay it with `run`/`compare --trace FILE`.
    Record(trace_cmd::RecordArgs),
    /// Real Linux guests under QEMU: `guest record` a full-system trace, `guest replay` it under
    /// the schemes, `guest run` both (docs/full-system.md).
    Guest(guest_cmd::GuestArgs),
    /// Run a seed paper's experiment and set each published claim beside memvirt's figure.
    ///
    /// `lsp`, `ssp`, `tc22`, `isca12`, `hspt` or `all`: workloads of the paper's kind in steady
    /// state, the paper's metric, and a verdict per claim (reproduced, trend, differs) with the
    /// reason memvirt gives; `--svg FILE` draws the claims. README's reproduction figures come
    /// from it.
    Reproduce(reproduce_cmd::ReproduceArgs),
    /// Experiments as files: profiles × settings × seeds × workloads × schemes, one result file
    /// per point (`experiment run FILE`, resumable), merged by `experiment collect DIR`, or run
    /// as a Slurm job array by `experiment submit FILE` (docs/experiments.md).
    Experiment(experiment_cmd::ExperimentArgs),
}

#[derive(Args, Debug)]
struct ListArgs {
    /// Print every profile key `--set` accepts, with its value in the default profile.
    #[arg(long)]
    keys: bool,
}

/// What every simulating command takes: the machine, the seed and whether to verify.
#[derive(Args, Clone, Debug)]
struct MachineArgs {
    /// A built-in profile name or a profile TOML file (see `memvirt list`).
    #[arg(long, value_name = "NAME|FILE", default_value = profile::DEFAULT)]
    profile: String,
    /// Override one setting: `workload.KEY=VALUE` for a workload parameter, `scheme.KEY=VALUE`
    /// for a scheme option (shadow schemes, spec-shadow: `memvirt list` shows them), any other KEY for a profile key
    /// (`memvirt list --keys`). Repeatable; applied in order.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Check every translation a scheme puts in the TLB against a reference walk of the guest's
    /// current page table (translation oracle): same host address, a page no larger than the
    /// guest's, no access the guest's entry denies. Only a translation the guest changed and has
    /// not flushed since may differ. A violation stops with an error naming the access, the
    /// scheme and both translations. JSON reports gain `oracle` counts. Slows runs down.
    #[arg(long)]
    verify: bool,
    /// Run without counting first, then zero every counter and count the rest (tables, TLBs
    /// and caches stay warm): N user accesses for a built-in workload, N instructions per stream
    /// for a trace (counting starts when every stream has run N, or ended). Reports gain a
    /// `warmup` section. [default: 0, or the steady-state warm-up with --length steady]
    #[arg(long, value_name = "N")]
    warmup: Option<u64>,
    /// `short`: each workload's defaults, no warm-up. `steady`: each workload's steady-state
    /// length and warm-up (`memvirt list` shows both), for steady-state overheads; --set and
    /// --warmup still apply on top.
    #[arg(long, value_enum, default_value_t = Length::Short)]
    length: Length,
    /// The guest's vCPUs, each with its own MMU (the profile key `smp.vcpus`; `--set
    /// smp.quantum=N` sets how many user accesses each runs before the next). [default: the
    /// profile's, 1]
    #[arg(long, value_name = "N")]
    vcpus: Option<u64>,
}

impl MachineArgs {
    /// Files this command reads (the profile, when it is a file), which no output may replace.
    fn inputs(&self) -> Vec<&Path> {
        let profile = Path::new(&self.profile);
        if profile.is_file() {
            vec![profile]
        } else {
            vec![]
        }
    }
}

/// Where and how results go.
#[derive(Args, Debug)]
struct OutputArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Write to FILE instead of standard output (replaced whole, only once the run succeeded).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The scheme.
    #[arg(long, value_enum)]
    scheme: SchemeKind,
    /// The workload [required unless --trace].
    #[arg(long, value_enum, required_unless_present = "traces", conflicts_with = "traces")]
    workload: Option<WorkloadKind>,
    #[command(flatten)]
    trace: trace_cmd::TraceInputArgs,
    #[command(flatten)]
    machine: MachineArgs,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
struct CompareArgs {
    /// Schemes to compare, comma-separated [default: every scheme].
    #[arg(long, value_enum, value_delimiter = ',')]
    schemes: Vec<SchemeKind>,
    /// Workloads, comma-separated [default: pagefault,fork,ctxsw,random,stream,lsp-micro].
    #[arg(long, value_enum, value_delimiter = ',', conflicts_with = "traces")]
    workloads: Vec<WorkloadKind>,
    #[command(flatten)]
    trace: trace_cmd::TraceInputArgs,
    /// Also vary every assumed cost across its documented range, alone and at every corner, and
    /// say per workload which ranking of the schemes holds and where it flips (cycles are linear
    /// in the costs, so one extra run per cost and scheme gives every point exactly; about ten
    /// times the runs). JSON becomes {"reports": [...], "sensitivity": {...}}. docs/costs.md
    /// lists the ranges and their sources.
    #[arg(long)]
    sensitivity: bool,
    /// Runs at once: each (workload, scheme) run is independent, so they run in parallel; the
    /// output is the same for any N. 0: one per core.
    #[arg(long, value_name = "N", default_value_t = 0)]
    jobs: usize,
    /// Also draw the overhead over native and the VM exits plus hardware-mode traps of every
    /// scheme on every workload as grouped bars, an SVG file written once every run succeeded.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    #[command(flatten)]
    machine: MachineArgs,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Schemes to time, comma-separated [default: native,nested].
    #[arg(long, value_enum, value_delimiter = ',')]
    schemes: Vec<SchemeKind>,
    /// Workloads, comma-separated [default: all eleven].
    #[arg(long, value_enum, value_delimiter = ',')]
    workloads: Vec<WorkloadKind>,
    /// Time every run N times, in N interleaved rounds (so that a change in the machine's load
    /// touches every row alike), and report the median wall-clock time.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    repeat: u32,
    #[command(flatten)]
    machine: MachineArgs,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
struct SweepArgs {
    /// The workload [required unless --lsp-micro].
    #[arg(long, value_enum, required_unless_present = "lsp_micro")]
    workload: Option<WorkloadKind>,
    /// The swept setting and its values: `KEY=V1,V2,...`, or `KEY=START:END:STEP` for numbers
    /// from START to END (included) by STEP. KEY is `workload.KEY` for a workload parameter or a
    /// profile key (`memvirt list --keys`); it is applied after every --set.
    #[arg(long, value_name = "KEY=VALUES", required_unless_present = "lsp_micro")]
    vary: Option<String>,
    /// Schemes, comma-separated, one column and line each [default: every scheme; with
    /// --lsp-micro: tsp,tsp-unsync,ssp,lsp,rvirt].
    #[arg(long, value_enum, value_delimiter = ',')]
    schemes: Vec<SchemeKind>,
    /// The metric tabulated and plotted.
    #[arg(long, value_enum, default_value_t = memvirt::sweep::Metric::ExitsAndTraps)]
    metric: memvirt::sweep::Metric,
    /// Also draw the chart (x: the values, one line per scheme) as an SVG file, replaced whole
    /// only once the sweep succeeded.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// The LSP paper's micro-benchmark: `--workload lsp-micro --vary
    /// workload.modify_ratio=0:1:0.1 --schemes tsp,tsp-unsync,ssp,lsp,rvirt` (--schemes,
    /// --metric and --set still apply).
    #[arg(long, conflicts_with_all = ["workload", "vary"])]
    lsp_micro: bool,
    /// Where each finished point is appended as it finishes (JSON Lines), so an interrupted
    /// sweep keeps its work; removed once the results are written [default: `OUTPUT.partial.jsonl`
    /// beside --output, else beside --svg, else `memvirt-sweep-DIGEST.partial.jsonl` here, DIGEST
    /// naming the sweep].
    #[arg(long, value_name = "FILE", conflicts_with = "no_journal")]
    journal: Option<PathBuf>,
    /// Continue an interrupted sweep: the points its journal holds are not run again (the
    /// journal must be of the same sweep: workload, profile, seed, --set values and key; values
    /// and schemes may differ). Without it, an existing journal is an error.
    #[arg(long, conflicts_with = "no_journal")]
    resume: bool,
    /// Keep no journal: an interrupted sweep loses every finished point.
    #[arg(long)]
    no_journal: bool,
    #[command(flatten)]
    machine: MachineArgs,
    #[command(flatten)]
    out: OutputArgs,
}

fn main() -> ExitCode {
    if let Err(e) = memvirt::interrupt::install() {
        eprintln!("memvirt: warning: cannot handle signals ({e}): an interrupted command may leave temporary files");
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage(&e),
    };
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memvirt: error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Prints clap's help, version or usage error; help that cannot be written (`--help >
/// /dev/full`) is a failure, not a silent success.
fn usage(e: &clap::Error) -> ExitCode {
    let printed = e.print().and_then(|()| std::io::stdout().flush());
    match printed {
        Ok(()) if e.exit_code() == 0 => ExitCode::SUCCESS,
        Ok(()) => ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2)),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("memvirt: error: cannot write to standard output: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-separated like `{e:#}`, leaving out a cause whose text the
/// message already holds (some library errors print their source and also expose it).
fn chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        None => {
            let default = Cli::try_parse_from(["memvirt", "compare"])
                .context("internal error: the default command line does not parse")?;
            match default.command {
                Some(Command::Compare(args)) => compare(&args),
                _ => bail!("internal error: the default command line is not `compare`"),
            }
        }
        Some(Command::List(args)) => list(&args),
        Some(Command::Run(args)) => run_one(&args),
        Some(Command::Compare(args)) => compare(&args),
        Some(Command::Bench(args)) => bench(&args),
        Some(Command::Sweep(args)) => sweep_cmd::sweep(&args),
        Some(Command::Trace(args)) => trace_cmd::trace(&args),
        Some(Command::Record(args)) => trace_cmd::record(&args),
        Some(Command::Guest(args)) => guest_cmd::guest(&args),
        Some(Command::Reproduce(args)) => reproduce_cmd::reproduce(&args),
        Some(Command::Experiment(args)) => experiment_cmd::experiment(&args),
    }
}

// ---------------------------------------------------------------------------------------------
// list

fn list(args: &ListArgs) -> Result<()> {
    let default = profile::builtin(profile::DEFAULT)?;
    let mut out = String::new();
    if args.keys {
        let tree = toml::Value::try_from(&default)
            .context("internal error: the default profile is not representable as TOML")?;
        for key in default.keys() {
            match lookup(&tree, &key) {
                Some(value) => out.push_str(&format!("{key} = {value}\n")),
                None => out.push_str(&format!("{key}\n")),
            }
        }
        return emit(&out, None);
    }
    out.push_str("schemes:\n");
    let width = SchemeKind::ALL.iter().map(|s| s.name().len()).max().unwrap_or(0);
    for s in SchemeKind::ALL {
        out.push_str(&format!("  {:<width$}  {}\n", s.name(), s.description()));
        let options = s.option_defaults();
        if !options.is_empty() {
            out.push_str(&format!("      scheme.{}\n", options.join(" scheme.")));
        }
    }
    out.push_str(&format!("\nprofiles (default {}):\n", profile::DEFAULT));
    let width = profile::BUILTIN.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    for (name, _) in profile::BUILTIN {
        let p = profile::builtin(name)?;
        out.push_str(&format!("  {name:<width$}  {}\n", p.description));
    }
    out.push_str("\nworkloads (default mix: ");
    out.push_str(&names(WorkloadKind::DEFAULT_MIX.iter().map(|w| w.name())));
    out.push_str("):\n");
    let width = WorkloadKind::ALL.iter().map(|w| w.name().len()).max().unwrap_or(0);
    for w in WorkloadKind::ALL {
        out.push_str(&format!("  {:<width$}  {}\n", w.name(), w.description()));
        if let toml::Value::Table(params) = w.default_params() {
            for (key, value) in params {
                out.push_str(&format!("      workload.{key} = {value}\n"));
            }
        }
        out.push_str(&format!("      {}\n", length_line(w)?));
    }
    out.push_str(
        "\ntraces (run/compare --trace FILE, repeatable; memvirt record -- CMD records one):\n  \
         ChampSim input_instr or cloudsuite_instr, valgrind lackey text, memvirt compact format\n",
    );
    if let Ok(toml::Value::Table(params)) = toml::Value::try_from(TraceParams::default()) {
        for (key, value) in params {
            out.push_str(&format!("      workload.{key} = {value}\n"));
        }
    }
    out.push_str(
        "\nOverride any of these with --set KEY=VALUE (e.g. --set workload.pages=1000, \
         --set scheme.root_buffer=4); `memvirt list --keys` prints every profile key.\n",
    );
    emit(&out, None)
}

/// A workload's two lengths in user accesses, for `memvirt list`: the short default and the
/// steady state (`--length steady`) with its warm-up.
fn length_line(w: WorkloadKind) -> Result<String> {
    let steady = w.steady_state();
    let short = w.estimated_accesses(&[])?;
    let long = w.estimated_accesses(&steady.owned_sets())?;
    let sets: Vec<String> = steady.sets.iter().map(|(k, v)| format!("workload.{k}={v}")).collect();
    Ok(format!(
        "length: short ~{short} user accesses; steady ({}) ~{long}, the first {} of them a \
         warm-up",
        sets.join(" "),
        steady.warmup
    ))
}

/// Checks `scheme.KEY=VALUE` settings against the selected schemes (each key must be an option
/// of one of them, and each must accept the values of its own keys), so that a bad one is
/// reported before any simulation.
fn check_scheme_sets(sets: &[(String, String)], schemes: &[SchemeKind]) -> Result<()> {
    Ok(memvirt::scheme::check_scheme_sets(sets, schemes)?)
}

/// The value at dotted `key` in a settings tree (array elements by number).
fn lookup<'a>(tree: &'a toml::Value, key: &str) -> Option<&'a toml::Value> {
    key.split('.').try_fold(tree, |node, seg| match node {
        toml::Value::Table(t) => t.get(seg),
        toml::Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

fn names<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(",")
}

// ---------------------------------------------------------------------------------------------
// settings

/// Estimated accesses of one run beyond which a command warns that it will take long: 10^11,
/// over an hour at the tens of millions of accesses a second BENCHMARKS.md records.
const LONG_RUN_ACCESSES: u128 = 100_000_000_000;

/// The profile, workload settings and seed every run of one command shares.
struct Setup {
    profile: Profile,
    /// `workload.KEY=VALUE` settings, prefix stripped, in command-line order.
    workload_sets: Vec<(String, String)>,
    /// `scheme.KEY=VALUE` settings (shadow-scheme options), prefix stripped.
    scheme_sets: Vec<(String, String)>,
    seed: u64,
    /// The `--set` arguments as given, for the title line.
    sets: Vec<String>,
    /// `--verify`.
    verify: bool,
    /// `--warmup`, when given.
    warmup: Option<u64>,
    /// `--length`.
    length: Length,
}

impl Setup {
    /// Loads the profile, applies the profile settings, splits off the workload settings and
    /// checks them against `workloads` (each key must belong to at least one), so that every
    /// bad setting is reported before any simulation.
    fn new(m: &MachineArgs, schemes: &[SchemeKind], workloads: &[WorkloadKind]) -> Result<Setup> {
        let mut profile = profile::load(&m.profile)?;
        let mut workload_sets = Vec::new();
        let mut scheme_sets = Vec::new();
        let mut profile_sets = Vec::new();
        if let Some(n) = m.vcpus {
            profile_sets.push(("smp.vcpus".to_owned(), n.to_string()));
        }
        for raw in &m.sets {
            let (key, value) = config::parse_assignment(raw)?;
            if let Some(k) = key.strip_prefix("workload.") {
                workload_sets.push((k.to_owned(), value));
            } else if let Some(k) = key.strip_prefix("scheme.") {
                scheme_sets.push((k.to_owned(), value));
            } else {
                profile_sets.push((key, value));
            }
        }
        // All at once, so that the order of dependent settings does not matter; the error names
        // the --set it is about.
        if let Err(e) = profile.set_all(&profile_sets) {
            let text = e.to_string();
            let culprit = m.sets.iter().rev().find(|raw| {
                config::parse_assignment(raw).is_ok_and(|(key, _)| text.contains(key.as_str()))
            });
            return Err(match culprit {
                Some(raw) => anyhow!(e).context(format!("--set {raw}")),
                None => anyhow!(e),
            });
        }
        profile.platform_config()?;
        check_scheme_sets(&scheme_sets, schemes)?;
        let setup = Setup {
            profile,
            workload_sets,
            scheme_sets,
            seed: m.seed,
            sets: m.sets.clone(),
            verify: m.verify,
            warmup: m.warmup,
            length: m.length,
        };
        if workloads.len() > 1 {
            for (key, _) in &setup.workload_sets {
                if !workloads.iter().any(|&w| has_param(w, key)) {
                    bail!(
                        "--set workload.{key}: none of the selected workloads has a parameter \
                         `{key}`; their parameters:\n  {}",
                        workloads
                            .iter()
                            .map(|&w| format!("{}: {}", w.name(), params_of(w).join(", ")))
                            .collect::<Vec<_>>()
                            .join("\n  ")
                    );
                }
            }
        }
        let single = workloads.len() == 1;
        for &w in workloads {
            let sets = setup.sets_for(w, single);
            w.build(setup.seed, &sets).with_context(|| format!("workload {}", w.name()))?;
            let accesses = w.estimated_accesses(&sets).unwrap_or(0);
            if accesses > LONG_RUN_ACCESSES {
                eprintln!(
                    "memvirt: warning: workload {} will simulate about {accesses:.1e} accesses per \
                     scheme, which takes hours at tens of millions a second",
                    w.name()
                );
            }
        }
        Ok(setup)
    }

    /// The workload settings that apply to `w`: when it is the `single` workload selected, all
    /// of them (so an unknown key is reported by the workload itself, with its valid keys);
    /// otherwise those naming one of its parameters.
    /// With `--length steady`, the workload's steady-state settings come first.
    fn sets_for(&self, w: WorkloadKind, single: bool) -> Vec<(String, String)> {
        let applies = |key: &str| single || has_param(w, key);
        let mut sets = match self.length {
            Length::Short => Vec::new(),
            Length::Steady => w.steady_state().owned_sets(),
        };
        sets.extend(self.workload_sets.iter().filter(|(k, _)| applies(k)).cloned());
        sets
    }

    /// The warm-up of `w`: `--warmup`, else the steady-state one with `--length steady`.
    fn warmup_for(&self, w: WorkloadKind) -> u64 {
        match (self.warmup, self.length) {
            (Some(n), _) => n,
            (None, Length::Short) => 0,
            (None, Length::Steady) => w.steady_state().warmup,
        }
    }

    /// The spec of `scheme` on `workload` (`single`: see [`Setup::sets_for`]).
    fn spec(&self, scheme: SchemeKind, workload: WorkloadKind, single: bool) -> RunSpec {
        RunSpec {
            scheme,
            workload,
            workload_sets: self.sets_for(workload, single),
            scheme_sets: self.scheme_sets.clone(),
            profile: self.profile.clone(),
            seed: self.seed,
            verify: self.verify,
            traces: None,
            warmup: self.warmup_for(workload),
        }
    }

    /// `profile NAME, seed N[, --length steady][, --warmup N][, --set ...][, --verify]`.
    fn describe(&self) -> String {
        let mut text = format!("profile {}, seed {}", self.profile.name, self.seed);
        if self.profile.smp.vcpus > 1 {
            text.push_str(&format!(", {} vCPUs", self.profile.smp.vcpus));
        }
        if self.length == Length::Steady {
            text.push_str(", --length steady");
        }
        if let Some(n) = self.warmup {
            text.push_str(&format!(", --warmup {n}"));
        }
        for s in &self.sets {
            text.push_str(&format!(", --set {s}"));
        }
        if self.verify {
            text.push_str(", --verify");
        }
        text
    }
}

fn params_of(w: WorkloadKind) -> Vec<String> {
    config::keys(&w.default_params())
}

fn has_param(w: WorkloadKind, key: &str) -> bool {
    params_of(w).iter().any(|k| k == key)
}

/// `items` without repeats, in first-seen order; `default` when empty.
fn selected<T: Copy + Ord>(items: &[T], default: &[T]) -> Vec<T> {
    let mut seen = BTreeSet::new();
    let items = if items.is_empty() { default } else { items };
    items.iter().copied().filter(|i| seen.insert(*i)).collect()
}

// ---------------------------------------------------------------------------------------------
// run, compare, bench

fn run_one(args: &RunArgs) -> Result<()> {
    if !args.trace.traces.is_empty() {
        let (m, t, out) = (&args.machine, &args.trace, &args.out);
        return trace_cmd::run_traces(m, &[args.scheme], t, out, "run", None);
    }
    args.trace.check_unused()?;
    let Some(workload) = args.workload else { bail!("run needs --workload or --trace") };
    check_output(&args.out, &args.machine.inputs())?;
    let setup = Setup::new(&args.machine, &[args.scheme], &[workload])?;
    let spec = setup.spec(args.scheme, workload, true);
    let runs = if args.scheme == SchemeKind::Native { 1 } else { 2 };
    let mut progress = Progress::new(runs);
    let reports = run::compare(&spec, &[args.scheme], &mut |s, d, t| {
        progress.update(s, workload, d, t);
    })
    .map_err(|e| anyhow!(e))?;
    progress.finish();
    let baseline = if runs > 1 { " (native ran too, as the overhead baseline)" } else { "" };
    let title = format!(
        "memvirt run: {} on {}, {}{baseline}",
        args.scheme.name(),
        workload.name(),
        setup.describe()
    );
    write_reports(&reports, &args.out, &title)
}

/// Every scheme that can run on the profile `m` describes; the others are named on stderr.
fn runnable_schemes(m: &MachineArgs) -> Result<Vec<SchemeKind>> {
    let setup = Setup::new(m, SchemeKind::ALL, &WorkloadKind::ALL)?;
    let mut schemes = Vec::new();
    for &s in SchemeKind::ALL {
        match run::unavailable(s, &setup.profile, &setup.scheme_sets) {
            None => schemes.push(s),
            Some(why) => eprintln!("memvirt: note: {} left out: {why}", s.name()),
        }
    }
    Ok(schemes)
}

fn compare(args: &CompareArgs) -> Result<()> {
    let schemes = if args.schemes.is_empty() {
        runnable_schemes(&args.machine)?
    } else {
        selected(&args.schemes, SchemeKind::ALL)
    };
    if args.sensitivity && !args.trace.traces.is_empty() {
        bail!("--sensitivity takes built-in workloads (--workloads), not --trace");
    }
    if args.sensitivity && args.out.format == Format::Csv {
        bail!("--sensitivity has no CSV form: use --format table or json");
    }
    if !args.trace.traces.is_empty() {
        let (m, t, out) = (&args.machine, &args.trace, &args.out);
        return trace_cmd::run_traces(m, &schemes, t, out, "compare", Some(args.jobs));
    }
    args.trace.check_unused()?;
    check_output(&args.out, &args.machine.inputs())?;
    if let Some(svg) = &args.svg {
        if args.out.output.as_ref().is_some_and(|o| o == svg) {
            bail!("--svg and --output both name {}: give each its own file", svg.display());
        }
        outfile::check(svg, &args.machine.inputs()).context("--svg")?;
    }
    let workloads = selected(&args.workloads, &WorkloadKind::DEFAULT_MIX);
    let setup = Setup::new(&args.machine, &schemes, &workloads)?;
    if schemes.is_empty() {
        bail!("--schemes names no scheme");
    }
    let single = workloads.len() == 1;
    let specs: Vec<_> = workloads.iter().map(|&w| setup.spec(schemes[0], w, single)).collect();
    let bar = SharedBar::new(
        format!("compare: {} schemes x {} workloads", schemes.len(), workloads.len()),
        SharedBar::RUNS,
    );
    let grouped = run::compare_parallel(&specs, &schemes, args.jobs, &|d, t| bar.update(d, t));
    bar.finish();
    let grouped = grouped?;
    let reports: Vec<_> = grouped.iter().flatten().cloned().collect();
    let per_workload_reports: Vec<_> = specs.into_iter().zip(grouped).collect();
    let title =
        format!("memvirt compare: {} (overhead vs native on the same workload)", setup.describe());
    if let Some(path) = &args.svg {
        let chart = memvirt::plot::compare::svg(&reports, &title)?;
        write_atomically(path, &chart)?;
    }
    if !args.sensitivity {
        return write_reports(&reports, &args.out, &title);
    }
    let sensitivity = cost_sensitivity(&setup, &schemes, &per_workload_reports)?;
    let text = output::render_with_sensitivity(&reports, &sensitivity, args.out.format, &title)?;
    emit(&text, args.out.output.as_deref())
}

/// `compare --sensitivity`: every workload's ranking across the cost ranges, one extra run per
/// cost and virtualized scheme, with a progress bar of its own.
fn cost_sensitivity(
    setup: &Setup,
    schemes: &[SchemeKind],
    runs: &[(RunSpec, Vec<Report>)],
) -> Result<sensitivity::Sensitivity> {
    let ranges = sensitivity::ranges_for(&setup.profile.costs)?;
    let total = (sensitivity::probe_runs(schemes) * runs.len()) as u64;
    let bar = if std::io::stderr().is_terminal() {
        let style =
            ProgressStyle::with_template("sensitivity [{bar:30}] {pos}/{len} runs {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()).with_style(style)
    } else {
        ProgressBar::hidden()
    };
    let tick = || bar.inc(1);
    let mut workloads = Vec::with_capacity(runs.len());
    for (spec, reports) in runs {
        workloads.push(sensitivity::workload_sensitivity(spec, schemes, reports, &ranges, &tick)?);
    }
    bar.finish_and_clear();
    let corners = 1u64 << ranges.len();
    Ok(sensitivity::Sensitivity { ranges, corners, workloads })
}

fn bench(args: &BenchArgs) -> Result<()> {
    check_output(&args.out, &args.machine.inputs())?;
    let schemes = selected(&args.schemes, &[SchemeKind::Native, SchemeKind::Nested]);
    let workloads = selected(&args.workloads, &WorkloadKind::ALL);
    let setup = Setup::new(&args.machine, &schemes, &workloads)?;
    let rounds = args.repeat as usize;
    let mut progress = Progress::new(rounds * schemes.len() * workloads.len());
    // Per (workload, scheme): the report of the first round and every round's wall time.
    let mut timed: Vec<(Report, Vec<f64>)> = Vec::new();
    for round in 0..rounds {
        let mut row = 0;
        for &w in &workloads {
            for &s in &schemes {
                let spec = setup.spec(s, w, workloads.len() == 1);
                let start = Instant::now();
                let report = run::run(&spec, &mut |d, t| progress.update(s, w, d, t))?;
                let seconds = start.elapsed().as_secs_f64();
                if round == 0 {
                    timed.push((report, vec![seconds]));
                } else {
                    let (first, times) = &mut timed[row];
                    // Runs are deterministic: a round that simulated something else would make
                    // the median meaningless.
                    if report.accesses != first.accesses {
                        bail!(
                            "{s:?} on {w:?} simulated {} accesses in round {} but {} in round 1",
                            report.accesses,
                            round + 1,
                            first.accesses
                        );
                    }
                    times.push(seconds);
                }
                row += 1;
            }
        }
    }
    progress.finish();
    let rows: Vec<BenchRow> =
        timed.iter().map(|(report, times)| BenchRow::new(report, median(times))).collect();
    let runs = if rounds == 1 { String::new() } else { format!(", median of {rounds} runs") };
    let title = format!("memvirt bench: wall-clock on this machine{runs}, {}", setup.describe());
    let mut text = output::render_bench(&rows, args.out.format, &title)?;
    if args.out.format == Format::Table {
        let accesses: u64 = rows.iter().map(|r| r.accesses).sum();
        let seconds: f64 = rows.iter().map(|r| r.wall_seconds).sum();
        let rate = if seconds > 0.0 { accesses as f64 / seconds / 1e6 } else { 0.0 };
        text.push_str(&format!("total: {accesses} accesses in {seconds:.3} s, {rate:.1} Macc/s\n"));
    }
    emit(&text, args.out.output.as_deref())
}

/// The median of `values` (the mean of the middle two for an even count; 0 for none).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn write_reports(reports: &[Report], out: &OutputArgs, title: &str) -> Result<()> {
    let text = output::render(reports, out.format, title)?;
    emit(&text, out.output.as_deref())
}

// ---------------------------------------------------------------------------------------------
// output

/// Fails early, before any simulation, if `--output` cannot be written or is one of `inputs`
/// (see [`memvirt::outfile::check`]).
fn check_output(out: &OutputArgs, inputs: &[&Path]) -> Result<()> {
    let Some(path) = &out.output else { return Ok(()) };
    Ok(outfile::check(path, inputs)?)
}

/// Writes `text` to `path`, or to standard output when there is none.
fn emit(text: &str, path: Option<&Path>) -> Result<()> {
    match path {
        Some(path) => write_atomically(path, text),
        None => {
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
                // A reader that stopped reading (`| head`) is not an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                other => other.context("cannot write to standard output"),
            }
        }
    }
}

/// Writes `text` whole to `path` or not at all (see [`memvirt::outfile::write_atomically`]).
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    Ok(outfile::write_atomically(path, text.as_bytes())?)
}

// ---------------------------------------------------------------------------------------------
// progress

/// A progress bar on standard error, only when it is a terminal and only once the command has
/// run for [`Progress::DELAY`]: short commands and redirected output never see it. The bar spans
/// every run of the command; each run's `progress(done, total)` moves it within that run's share.
struct Progress {
    enabled: bool,
    start: Instant,
    bar: Option<ProgressBar>,
    /// Runs in the command, and the one under way (1-based; 0 before the first).
    runs: u64,
    run: u64,
    current: Option<(SchemeKind, String)>,
}

impl Progress {
    const DELAY: Duration = Duration::from_secs(1);
    /// Bar units per run.
    const SHARE: u64 = 1000;

    fn new(runs: usize) -> Self {
        Progress {
            enabled: std::io::stderr().is_terminal(),
            start: Instant::now(),
            bar: None,
            runs: u64::try_from(runs).unwrap_or(u64::MAX),
            run: 0,
            current: None,
        }
    }

    fn update(&mut self, scheme: SchemeKind, workload: WorkloadKind, done: u64, total: u64) {
        self.update_named(scheme, workload.name(), done, total);
    }

    /// [`Progress::update`] for a workload known by name (traces).
    fn update_named(&mut self, scheme: SchemeKind, workload: &str, done: u64, total: u64) {
        let changed =
            self.current.as_ref().is_none_or(|(s, w)| (*s, w.as_str()) != (scheme, workload));
        if changed {
            self.current = Some((scheme, workload.to_owned()));
            self.run += 1;
        }
        if !self.enabled || (self.bar.is_none() && self.start.elapsed() < Self::DELAY) {
            return;
        }
        let (run, runs) = (self.run, self.runs);
        let message = format!("[{run}/{runs}] {} on {workload}", scheme.name());
        let bar = self.bar.get_or_insert_with(|| {
            let style = ProgressStyle::with_template("{msg:32} [{bar:30}] {percent:>3}% {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            let length = runs.saturating_mul(Self::SHARE);
            ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr())
                .with_style(style)
                .with_message(message.clone())
        });
        let within = match total {
            0 => 0,
            t => u128::from(done.min(t)) * u128::from(Self::SHARE) / u128::from(t),
        };
        let before = run.saturating_sub(1).saturating_mul(Self::SHARE);
        bar.set_position(before.saturating_add(u64::try_from(within).unwrap_or(Self::SHARE)));
        if changed {
            bar.set_message(message);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The progress bar of runs that go on in parallel (a sweep's points, a guest replay's
/// schemes), drawn like [`Progress`] (on a terminal, after [`Progress::DELAY`]). Runs finish on
/// rayon's threads, so the bar sits behind a mutex.
struct SharedBar {
    enabled: bool,
    start: Instant,
    message: String,
    template: &'static str,
    bar: std::sync::Mutex<Option<ProgressBar>>,
}

impl SharedBar {
    /// Counts whole runs: `update(done runs, runs)`.
    const RUNS: &'static str = "{msg:32} [{bar:30}] {pos}/{len} runs {elapsed}";
    /// Counts any unit, shown as a share: `update(done, total)`.
    const SHARE: &'static str = "{msg:32} [{bar:30}] {percent:>3}% {elapsed}";

    fn new(message: String, template: &'static str) -> Self {
        SharedBar {
            enabled: std::io::stderr().is_terminal(),
            start: Instant::now(),
            message,
            template,
            bar: std::sync::Mutex::new(None),
        }
    }

    fn update(&self, done: usize, total: usize) {
        if !self.enabled {
            return;
        }
        // A panicked holder leaves a usable bar: it only draws.
        let mut slot = self.bar.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() && self.start.elapsed() < Progress::DELAY {
            return;
        }
        let bar = slot.get_or_insert_with(|| {
            let style = ProgressStyle::with_template(self.template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            let length = u64::try_from(total).unwrap_or(u64::MAX);
            ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr())
                .with_style(style)
                .with_message(self.message.clone())
        });
        bar.set_position(u64::try_from(done).unwrap_or(u64::MAX));
    }

    fn finish(&self) {
        let mut slot = self.bar.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(bar) = slot.take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, ValueEnum};

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn value_enum_names_are_the_library_names() {
        for w in WorkloadKind::ALL {
            let name = w.to_possible_value().map(|v| v.get_name().to_owned());
            assert_eq!(name.as_deref(), Some(w.name()));
        }
        for s in SchemeKind::ALL {
            let name = s.to_possible_value().map(|v| v.get_name().to_owned());
            assert_eq!(name.as_deref(), Some(s.name()));
        }
    }

    #[test]
    fn selection_drops_repeats_and_defaults_when_empty() {
        assert_eq!(selected(&[3, 1, 3, 2, 1], &[9]), [3, 1, 2]);
        assert_eq!(selected::<u8>(&[], &[9, 8]), [9, 8]);
    }

    #[test]
    fn lookup_follows_tables_and_arrays() -> Result<()> {
        let tree: toml::Value = toml::from_str("a = { b = [ { c = 5 } ] }")?;
        assert_eq!(lookup(&tree, "a.b.0.c").and_then(toml::Value::as_integer), Some(5));
        assert!(lookup(&tree, "a.b.1.c").is_none());
        assert!(lookup(&tree, "a.x").is_none());
        Ok(())
    }
}
