//! The `memvirt` command line.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use memvirt::addr::{Asid, Gva, PageSize};
use memvirt::fixture::{self, Guest};
use memvirt::machine::{Machine, Scheme};
use memvirt::mmu::MmuConfig;
use memvirt::paging::{Access, Format};
use memvirt::scheme::{Native, Nested, NestedOptions, SchemeKind};

/// memvirt: a fast, bit-accurate simulator of memory virtualization.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compare schemes on a built-in page-walk workload: random loads over a footprint of
    /// 4 KiB pages, every page mapped up front.
    Compare(CompareArgs),
    /// List schemes and paging formats.
    List,
}

#[derive(clap::Args, Debug)]
struct CompareArgs {
    /// Schemes to compare (comma-separated; default: every implemented scheme).
    #[arg(long, value_delimiter = ',')]
    schemes: Vec<SchemeKind>,
    /// Guest (first-stage) format: sv39, sv48, sv57, x86-64-4level, x86-64-5level.
    #[arg(long, default_value = "sv39")]
    guest_format: String,
    /// Nested format: sv39x4, sv48x4, sv57x4, ept-4level, ept-5level.
    #[arg(long, default_value = "sv39x4")]
    nested_format: String,
    /// Footprint in 4 KiB pages.
    #[arg(long, default_value_t = 16_384)]
    pages: u64,
    /// Accesses to simulate.
    #[arg(long, default_value_t = 2_000_000)]
    accesses: u64,
    /// Seed of the access sequence.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Turn off every page-walk cache and the nested TLB.
    #[arg(long)]
    no_walk_caches: bool,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memvirt: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => match Cli::parse_from(["memvirt", "compare"]).command {
            Some(Command::Compare(args)) => compare(&args),
            _ => bail!("internal error: the default command line did not parse as compare"),
        },
        Some(Command::Compare(args)) => compare(&args),
        Some(Command::List) => {
            println!("schemes:");
            for s in SchemeKind::ALL {
                println!("  {:<8} {}", s.name(), s.description());
            }
            println!("formats:");
            for f in Format::ALL {
                println!("  {:<16} {} levels, {}-bit input", f.name, f.levels, f.input_bits());
            }
            Ok(())
        }
    }
}

fn format_arg(name: &str, what: &str) -> Result<Format> {
    match Format::by_name(name) {
        Some(f) => Ok(f),
        None => {
            let known: Vec<&str> = Format::ALL.iter().map(|f| f.name).collect();
            bail!("unknown {what} format '{name}'; known formats: {}", known.join(", "))
        }
    }
}

/// One row of the comparison table.
struct Row {
    scheme: &'static str,
    accesses: u64,
    misses: u64,
    refs_per_miss: f64,
    exits: u64,
    cycles: u64,
}

fn compare(args: &CompareArgs) -> Result<()> {
    let guest = format_arg(&args.guest_format, "guest")?;
    let nested = format_arg(&args.nested_format, "nested")?;
    if guest.stage != memvirt::paging::Stage::First {
        bail!("--guest-format {} is a nested format", guest.name);
    }
    if nested.stage != memvirt::paging::Stage::Nested {
        bail!("--nested-format {} is not a nested format", nested.name);
    }
    let max_pages = fixture::GUEST_BYTES / PageSize::Size4K.bytes() / 2;
    if args.pages == 0 || args.pages > max_pages {
        bail!(
            "--pages must be between 1 and {max_pages} (the guest has {} MiB)",
            fixture::GUEST_BYTES >> 20
        );
    }
    let mmu = if args.no_walk_caches {
        MmuConfig::default().without_walk_caches()
    } else {
        MmuConfig::default()
    };
    let arch = fixture::arch(guest, nested);
    let schemes =
        if args.schemes.is_empty() { SchemeKind::ALL.to_vec() } else { args.schemes.clone() };
    let mut rows = Vec::new();
    for kind in schemes {
        let mut p = fixture::platform(arch, mmu)?;
        let row = match kind {
            SchemeKind::Native => drive(Machine::new(p, Native), args)?,
            SchemeKind::Nested => {
                let scheme = Nested::new(&mut p, NestedOptions::default())?;
                drive(Machine::new(p, scheme), args)?
            }
        };
        rows.push(row);
    }
    println!(
        "workload: {} random loads over {} pages; guest {} over {}; seed {}",
        args.accesses, args.pages, guest.name, nested.name, args.seed
    );
    println!(
        "{:<8} {:>12} {:>10} {:>14} {:>9} {:>14} {:>10}",
        "scheme", "accesses", "tlb_misses", "refs_per_miss", "vm_exits", "cycles", "overhead"
    );
    let native = rows.iter().find(|r| r.scheme == "native").map(|r| r.cycles);
    for r in &rows {
        let overhead = native.map_or("-".to_string(), |n| {
            format!("{:+.1}%", (r.cycles as f64 / n as f64 - 1.0) * 100.0)
        });
        println!(
            "{:<8} {:>12} {:>10} {:>14.2} {:>9} {:>14} {:>10}",
            r.scheme, r.accesses, r.misses, r.refs_per_miss, r.exits, r.cycles, overhead
        );
    }
    Ok(())
}

/// Maps the footprint, then runs the random loads.
fn drive<S: Scheme>(mut m: Machine<S>, args: &CompareArgs) -> Result<Row> {
    const BASE: Gva = Gva::new(0x4000_0000);
    let mut g = Guest::new(&mut m, Asid(1)).context("creating the guest address space")?;
    g.map_fresh(&mut m, BASE, args.pages).context("mapping the footprint")?;
    let mut state = args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for _ in 0..args.accesses {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let va = BASE.wrapping_add((state % args.pages) * PageSize::Size4K.bytes());
        if let Err(stop) = m.access(va, Access::USER_LOAD) {
            bail!("{} stopped at {va}: {stop:?}", m.scheme.name());
        }
    }
    let s = &m.platform.stats;
    let mmu = &m.platform.mmu.stats;
    Ok(Row {
        scheme: m.scheme.name(),
        accesses: s.accesses,
        misses: mmu.misses,
        refs_per_miss: (mmu.guest_refs + mmu.nested_refs) as f64 / mmu.walks.max(1) as f64,
        exits: s.total_exits(),
        cycles: s.cycles.total(),
    })
}
