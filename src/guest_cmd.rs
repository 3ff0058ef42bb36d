//! `memvirt guest`: record a real Linux guest under QEMU with memvirt's plugin, and replay the
//! full-system trace under the schemes (docs/full-system.md).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use memvirt::fullsys::{self, Start, SystemSpec};
use memvirt::report::Report;
use memvirt::scheme::SchemeKind;
use memvirt::workload::Length;
use rayon::prelude::*;

use super::{
    check_output, runnable_schemes, selected, write_reports, MachineArgs, OutputArgs, Setup,
    SharedBar,
};

/// The marker the guest's init places just before the command, and just after it.
pub const COMMAND_START: u64 = 100;
/// See [`COMMAND_START`].
pub const COMMAND_END: u64 = 101;

#[derive(Args, Debug)]
pub(super) struct GuestArgs {
    #[command(subcommand)]
    command: GuestCommand,
}

#[derive(Subcommand, Debug)]
enum GuestCommand {
    /// Boot an unmodified Debian kernel (riscv64, or x86-64 with --arch) under QEMU with
    /// memvirt's plugin, run a program in it and write the full-system trace.
    ///
    /// The first use installs QEMU 10 (and OpenSBI) from bookworm-backports and the compilers
    /// and fetches the kernel and busybox (scripts/guest-kit.sh). The guest's init places
    /// marker 100 before the command and 101 after it.
    Record(RecordArgs),
    /// Replay a full-system trace under every scheme (or --schemes) and print them side by
    /// side; by default only the command (markers 100 to 101), each scheme warm (it runs the
    /// boot first, uncounted).
    Replay(ReplayArgs),
    /// Record, then replay: one command from a program to the comparison table.
    Run(RunArgs),
}

/// The built-in guest programs (guest/*.c, and busybox), each the real counterpart of a model
/// workload (`memvirt list`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Program {
    /// Map 256 fresh pages and store one byte to each: one page fault per page (`pagefault`).
    TouchPages,
    /// GUPS-like random read-modify-writes over 16 MiB, 200,000 updates (`random`).
    Gups,
    /// Dependent loads over a random cycle of 4,096 pages, 200,000 loads (`pointer-chase`).
    Chase,
    /// STREAM triad over three 4 MiB arrays, 2 passes (`stream`).
    Stream,
    /// The LSP micro-benchmark: 20,000 operations over 1,024 pages, half of them mprotect
    /// (one PTE modification and one sfence.vma each) and half loads (`lsp-micro`).
    LspMicro,
    /// A shell loop that forks and execs /bin/true 50 times (`exec`).
    Forkexec,
    /// A pipeline of real utilities: the shell prints 2,000 lines into sort, gzip, gzip -d and
    /// md5sum (processes, pipes, page cache).
    Pipeline,
    /// All of the above in one boot, each between its own markers (10, 11, ...): one
    /// recording, one replay per scheme, one row per program.
    Suite,
}

impl Program {
    /// The programs of [`Program::Suite`], in order.
    const SUITE: [Program; 7] = [
        Program::TouchPages,
        Program::Gups,
        Program::Chase,
        Program::Stream,
        Program::LspMicro,
        Program::Forkexec,
        Program::Pipeline,
    ];
    /// The marker before the suite's first program; program k runs between markers
    /// `SUITE_MARKER + k` and `SUITE_MARKER + k + 1`.
    const SUITE_MARKER: u64 = 10;

    fn name(self) -> String {
        self.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
    }

    fn command(self) -> String {
        match self {
            Program::TouchPages => "touch-pages 256".into(),
            Program::Gups => "gups 16 200000".into(),
            Program::Chase => "chase 4096 200000".into(),
            Program::Stream => "stream 1024 2".into(),
            Program::LspMicro => "lsp-micro 1024 20000 50".into(),
            Program::Forkexec => "i=0; while [ $i -lt 50 ]; do /bin/true; i=$((i+1)); done".into(),
            Program::Pipeline => "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done \
                | sort -r | gzip -c | gzip -dc | md5sum"
                .into(),
            Program::Suite => {
                let mut c = String::new();
                for (k, p) in Program::SUITE.iter().enumerate() {
                    c += &format!(
                        "memvirt-mark {}; {}; ",
                        Program::SUITE_MARKER + k as u64,
                        p.command()
                    );
                }
                c + &format!("memvirt-mark {}", Program::SUITE_MARKER + Program::SUITE.len() as u64)
            }
        }
    }

    /// The windows a replay of this program counts: its markers and a name for each.
    fn windows(self) -> Option<(Vec<u64>, Vec<String>)> {
        (self == Program::Suite).then(|| {
            let n = Program::SUITE.len() as u64;
            let marks = (Program::SUITE_MARKER..=Program::SUITE_MARKER + n).collect();
            (marks, Program::SUITE.iter().map(|p| p.name()).collect())
        })
    }
}

/// The guest's instruction set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Arch {
    /// Debian trixie's riscv64 kernel under qemu-system-riscv64 (virt, OpenSBI).
    Riscv64,
    /// Debian bookworm's amd64 kernel under qemu-system-x86_64 (pc, qemu64 CPU, no KASLR).
    #[value(name = "x86-64")]
    X86_64,
}

impl Arch {
    /// The kit's name for it.
    fn kit_name(self) -> &'static str {
        match self {
            Arch::Riscv64 => "riscv64",
            Arch::X86_64 => "x86_64",
        }
    }
}

/// The guest's first-stage paging mode (the RISC-V kernel picks Sv57 unless told otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Paging {
    /// RISC-V Sv39 (kernel option no4lvl); the riscv64 default.
    Sv39,
    /// RISC-V Sv48 (no5lvl).
    Sv48,
    /// RISC-V Sv57.
    Sv57,
    /// x86-64 4-level paging; the x86-64 default (QEMU's qemu64 CPU has no LA57).
    #[value(name = "4level")]
    Level4,
}

#[derive(Args, Debug)]
struct RecordArgs {
    /// The trace to write.
    #[arg(long, short, value_name = "FILE", default_value = "guest.mvt")]
    output: PathBuf,
    #[command(flatten)]
    guest: GuestSpec,
}

#[derive(Args, Debug)]
struct GuestSpec {
    /// A built-in program to run in the guest (ignored when a command follows `--`).
    #[arg(long, value_enum, default_value_t = Program::TouchPages)]
    program: Program,
    /// The guest's instruction set.
    #[arg(long, value_enum, default_value_t = Arch::Riscv64)]
    arch: Arch,
    /// The guest kernel's paging mode [default: sv39 for riscv64, 4level for x86-64].
    #[arg(long, value_enum)]
    paging: Option<Paging>,
    /// Stop the guest after this many seconds (the trace is still written).
    #[arg(long, value_name = "SECONDS", default_value_t = 900)]
    timeout: u64,
    /// A shell command line to run in the guest instead of --program (busybox sh; the
    /// built-in programs are in /bin).
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Args, Debug)]
struct ReplayArgs {
    /// The full-system trace (`memvirt guest record`).
    trace: PathBuf,
    #[command(flatten)]
    replay: ReplaySpec,
}

#[derive(Args, Debug)]
struct ReplaySpec {
    /// The schemes to run [default: every scheme the profile can run].
    #[arg(long, value_enum, value_delimiter = ',')]
    schemes: Vec<SchemeKind>,
    /// Count from this marker on (before it, stores only build the guest's memory image).
    #[arg(long, value_name = "N", default_value_t = COMMAND_START, conflicts_with = "whole")]
    from_marker: u64,
    /// Stop at this marker.
    #[arg(long, value_name = "N", default_value_t = COMMAND_END, conflicts_with = "whole")]
    to_marker: u64,
    /// Replay and count everything, the boot included.
    #[arg(long)]
    whole: bool,
    /// Count several windows in one replay: markers in the order they occur, each pair of
    /// neighbours one window and one row per scheme (e.g. 10,11,12 for two programs).
    #[arg(long, value_name = "M1,M2,...", value_delimiter = ',', num_args = 1..,
          conflicts_with_all = ["whole", "from_marker", "to_marker"])]
    windows: Vec<u64>,
    /// The windows' names in the table (one per window).
    #[arg(long, value_name = "NAME,...", value_delimiter = ',', requires = "windows")]
    labels: Vec<String>,
    /// Start every scheme cold at --from-marker (empty TLBs, nested and shadow tables, as a VM
    /// just restored) instead of warm (the scheme runs the boot and counts from the marker).
    /// Faster: the boot only builds the memory image.
    #[arg(long, conflicts_with = "whole")]
    cold: bool,
    #[command(flatten)]
    machine: MachineArgs,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Where the trace goes (kept).
    #[arg(long, value_name = "FILE", default_value = "guest.mvt")]
    trace: PathBuf,
    #[command(flatten)]
    guest: GuestSpec,
    #[command(flatten)]
    replay: ReplaySpec,
}

pub(super) fn guest(args: &GuestArgs) -> Result<()> {
    match &args.command {
        GuestCommand::Record(a) => record(&a.output, &a.guest),
        GuestCommand::Replay(a) => replay(&a.trace, &a.replay, None),
        GuestCommand::Run(a) => {
            check_output(&a.replay.out, &[a.trace.as_path()])?;
            record(&a.trace, &a.guest)?;
            let windows = if a.guest.command.is_empty() { a.guest.program.windows() } else { None };
            replay(&a.trace, &a.replay, windows)
        }
    }
}

/// The kit script shipped with memvirt.
fn kit_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/guest-kit.sh")
}

fn record(output: &Path, g: &GuestSpec) -> Result<()> {
    let command = if g.command.is_empty() { g.program.command() } else { g.command.join(" ") };
    if output.is_dir() {
        bail!("{}: is a directory; give the trace's file name", output.display());
    }
    let paging = match (g.arch, g.paging) {
        (Arch::Riscv64, None) => Paging::Sv39,
        (Arch::X86_64, None) => Paging::Level4,
        (Arch::Riscv64, Some(Paging::Level4)) => {
            bail!("--paging 4level is x86-64's; riscv64 takes sv39, sv48 or sv57")
        }
        (Arch::X86_64, Some(p)) if p != Paging::Level4 => bail!(
            "--paging {}: x86-64 guests run with 4level",
            p.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
        ),
        (_, Some(p)) => p,
    };
    let paging = paging.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default();
    eprintln!(
        "memvirt guest: recording `{command}` under QEMU ({}, {paging}) into {}",
        g.arch.kit_name(),
        output.display()
    );
    let status = Command::new(kit_script())
        .arg("record")
        .arg(g.arch.kit_name())
        .arg(output)
        .arg(&paging)
        .arg(g.timeout.to_string())
        .arg(&command)
        .status()
        .with_context(|| format!("cannot run {}", kit_script().display()))?;
    if !status.success() {
        bail!("the guest recording failed ({status}); see the messages above");
    }
    Ok(())
}

/// Replays `trace` under the schemes of `r`; `suite` gives the windows of a built-in program
/// when the command line names none.
fn replay(trace: &Path, r: &ReplaySpec, suite: Option<(Vec<u64>, Vec<String>)>) -> Result<()> {
    let mut inputs = r.machine.inputs();
    inputs.push(trace);
    check_output(&r.out, &inputs)?;
    let reader = fullsys::open(trace)?;
    // An x86-64 guest gets the x86-64 machine unless the command line names another.
    let mut machine = r.machine.clone();
    if machine.profile == memvirt::profile::DEFAULT && fullsys::is_x86(&reader)? {
        eprintln!("memvirt guest replay: an x86-64 guest: profile x86-64");
        machine.profile = "x86-64".to_owned();
    }
    let schemes =
        if r.schemes.is_empty() { runnable_schemes(&machine)? } else { selected(&r.schemes, &[]) };
    let setup = Setup::new(&machine, &schemes, &[])?;
    if !setup.workload_sets.is_empty() {
        bail!("full-system replay takes no workload.* settings");
    }
    if machine.warmup.is_some() || machine.length == Length::Steady {
        bail!(
            "--warmup and --length do not apply to full-system replay: each window is counted \
             from its first marker, after the boot and everything before it ran warm (--cold \
             starts the scheme at the marker instead)"
        );
    }
    let (boundaries, labels) = if r.whole {
        (Vec::new(), Vec::new())
    } else if !r.windows.is_empty() {
        if r.windows.len() < 2 {
            bail!(
                "--windows {}: give at least two markers (a window's start and end)",
                r.windows[0]
            );
        }
        let windows = r.windows.len() - 1;
        if !r.labels.is_empty() && r.labels.len() != windows {
            bail!("--labels gives {} names for {windows} windows", r.labels.len());
        }
        (r.windows.clone(), r.labels.clone())
    } else if let Some(suite) = suite {
        suite
    } else {
        (vec![r.from_marker, r.to_marker], Vec::new())
    };
    let mut order = schemes.clone();
    if !order.contains(&SchemeKind::Native) {
        order.insert(0, SchemeKind::Native);
    }
    let start = if r.cold { Start::Cold } else { Start::Warm };
    let name = reader.name.clone();
    // The schemes replay the same file independently, so they run in parallel (rayon keeps
    // their order); the bar shows the events replayed out of all schemes' events.
    let total = reader.streams[0].records;
    let done: Vec<AtomicU64> = order.iter().map(|_| AtomicU64::new(0)).collect();
    let bar = SharedBar::new(format!("guest replay: {} schemes", order.len()), SharedBar::SHARE);
    let results: Vec<Result<Vec<Report>>> = order
        .par_iter()
        .enumerate()
        .map(|(i, &scheme)| {
            let spec = SystemSpec {
                scheme,
                scheme_sets: setup.scheme_sets.clone(),
                profile: setup.profile.clone(),
                verify: setup.verify,
                boundaries: boundaries.clone(),
                start,
                labels: labels.clone(),
            };
            fullsys::replay(&spec, &reader, &mut |d, _| {
                done[i].store(d, Ordering::Relaxed);
                let all: u64 = done.iter().map(|d| d.load(Ordering::Relaxed)).sum();
                let of = total.saturating_mul(order.len() as u64);
                bar.update(
                    usize::try_from(all).unwrap_or(usize::MAX),
                    usize::try_from(of).unwrap_or(usize::MAX),
                );
            })
            .map_err(|e| anyhow!(e))
        })
        .collect();
    bar.finish();
    // Window-major, as compare is workload-major: each window's schemes side by side.
    let mut by_scheme = Vec::new();
    for result in results {
        by_scheme.push(result?);
    }
    let windows = by_scheme.first().map_or(0, Vec::len);
    let mut reports: Vec<Report> = Vec::new();
    for w in 0..windows {
        let native =
            order.iter().position(|&k| k == SchemeKind::Native).map(|i| by_scheme[i][w].cycles);
        let mut window: Vec<Report> = order
            .iter()
            .zip(&by_scheme)
            .filter(|(k, _)| schemes.contains(k))
            .map(|(_, r)| r[w].clone())
            .collect();
        if let Some(native) = native {
            for rep in &mut window {
                rep.set_native(native);
            }
        }
        check_consistent(&window)?;
        reports.extend(window);
    }
    let span = match boundaries.as_slice() {
        [a, b] => format!("markers {a} to {b}, {} start", start.name()),
        [a, .., b] => format!("{windows} windows, markers {a} to {b}, {} start", start.name()),
        _ => "whole run".to_owned(),
    };
    let title = format!("memvirt guest replay: {name} ({span}), {}", setup.describe());
    write_reports(&reports, &r.out, &title)
}

/// Every scheme must have seen the same guest: the same history digest, and no access that
/// translated elsewhere than under QEMU.
fn check_consistent(reports: &[Report]) -> Result<()> {
    for r in reports {
        if let Some(s) = &r.system {
            if s.pa_mismatches != 0 || s.unexpected_faults != 0 {
                eprintln!(
                    "memvirt guest: warning: {}: {} accesses translated elsewhere than under QEMU, \
                     {} faulted that did not; first: {}",
                    r.scheme,
                    s.pa_mismatches,
                    s.unexpected_faults,
                    s.first_discrepancy.as_deref().unwrap_or("-")
                );
            }
        }
    }
    if let Some(first) = reports.first() {
        for r in reports {
            if r.guest.history != first.guest.history {
                bail!(
                    "{} and {} saw different guest histories ({} vs {}): a scheme translated \
                     differently",
                    first.scheme,
                    r.scheme,
                    first.guest.history,
                    r.guest.history
                );
            }
        }
    }
    Ok(())
}
