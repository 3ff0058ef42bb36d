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
    /// Boot an unmodified Debian riscv64 kernel under QEMU with memvirt's plugin, run a
    /// program in it and write the full-system trace.
    ///
    /// The first use installs QEMU 10 and OpenSBI (bookworm-backports), the cross compiler and
    /// fetches the kernel and busybox (scripts/guest-kit.sh). The guest's init places marker
    /// 100 before the command and 101 after it.
    Record(RecordArgs),
    /// Replay a full-system trace under every scheme (or --schemes) and print them side by
    /// side; by default only the command (markers 100 to 101), not the boot.
    Replay(ReplayArgs),
    /// Record, then replay: one command from a program to the comparison table.
    Run(RunArgs),
}

/// The built-in guest programs (guest/*.c, and busybox).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Program {
    /// Map 256 fresh pages and store one byte to each: one page fault per page.
    TouchPages,
    /// GUPS-like random read-modify-writes over 16 MiB (200,000 updates).
    Gups,
    /// A shell loop that forks and execs /bin/true 50 times.
    Forkexec,
}

impl Program {
    fn command(self) -> &'static str {
        match self {
            Program::TouchPages => "touch-pages 256",
            Program::Gups => "gups 16 200000",
            Program::Forkexec => "i=0; while [ $i -lt 50 ]; do /bin/true; i=$((i+1)); done",
        }
    }
}

/// The guest's first-stage paging mode (the kernel picks Sv57 unless told otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Paging {
    /// Sv39 (kernel option no4lvl).
    Sv39,
    /// Sv48 (no5lvl).
    Sv48,
    /// Sv57.
    Sv57,
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
    /// The guest kernel's paging mode.
    #[arg(long, value_enum, default_value_t = Paging::Sv39)]
    paging: Paging,
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
        GuestCommand::Replay(a) => replay(&a.trace, &a.replay),
        GuestCommand::Run(a) => {
            check_output(&a.replay.out, &[a.trace.as_path()])?;
            record(&a.trace, &a.guest)?;
            replay(&a.trace, &a.replay)
        }
    }
}

/// The kit script shipped with memvirt.
fn kit_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/guest-kit.sh")
}

fn record(output: &Path, g: &GuestSpec) -> Result<()> {
    let command =
        if g.command.is_empty() { g.program.command().to_owned() } else { g.command.join(" ") };
    if output.is_dir() {
        bail!("{}: is a directory; give the trace's file name", output.display());
    }
    let paging = format!("{:?}", g.paging).to_lowercase();
    eprintln!(
        "memvirt guest: recording `{command}` under QEMU ({paging}) into {}",
        output.display()
    );
    let status = Command::new(kit_script())
        .arg("record")
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

fn replay(trace: &Path, r: &ReplaySpec) -> Result<()> {
    let mut inputs = r.machine.inputs();
    inputs.push(trace);
    check_output(&r.out, &inputs)?;
    let schemes = if r.schemes.is_empty() {
        runnable_schemes(&r.machine)?
    } else {
        selected(&r.schemes, &[])
    };
    let setup = Setup::new(&r.machine, &schemes, &[])?;
    if !setup.workload_sets.is_empty() {
        bail!("full-system replay takes no workload.* settings");
    }
    let reader = fullsys::open(trace)?;
    let (from_marker, to_marker) =
        if r.whole { (None, None) } else { (Some(r.from_marker), Some(r.to_marker)) };
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
    let results: Vec<Result<Report>> = order
        .par_iter()
        .enumerate()
        .map(|(i, &scheme)| {
            let spec = SystemSpec {
                scheme,
                scheme_sets: setup.scheme_sets.clone(),
                profile: setup.profile.clone(),
                verify: setup.verify,
                from_marker,
                start,
                to_marker,
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
    let mut reports: Vec<Report> = Vec::new();
    let mut native = None;
    for (&scheme, result) in order.iter().zip(results) {
        let report = result?;
        if scheme == SchemeKind::Native {
            native = Some(report.cycles);
        }
        if schemes.contains(&scheme) {
            reports.push(report);
        }
    }
    if let Some(native) = native {
        for rep in &mut reports {
            rep.set_native(native);
        }
    }
    check_consistent(&reports)?;
    let span = match (from_marker, to_marker) {
        (Some(a), Some(b)) => format!("markers {a} to {b}, {} start", start.name()),
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
