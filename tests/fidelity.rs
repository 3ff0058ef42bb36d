//! Cost-model fidelity (issue 19): hypervisor table pages come from pools of their own, and VM
//! exits and hardware-mode traps leave their handler's footprint in the TLB and caches.

mod common;

use memvirt::addr::{Gva, Hpa, PageSize, Vmid};
use memvirt::machine::Platform;
use memvirt::profile::Profile;
use memvirt::report::Report;
use memvirt::run::{self, RunError, RunSpec};
use memvirt::scheme::SchemeKind;
use memvirt::stats::{ExitCause, TrapCause};
use memvirt::workload::WorkloadKind;

/// `scheme` on the default `random` (65,536 pages, over 2 M updates), counted after its first
/// touches and a million updates, with `sets` applied to the profile.
fn random_steady(scheme: SchemeKind, sets: &[(&str, &str)]) -> Result<Report, RunError> {
    let mut spec = RunSpec {
        warmup: 1_065_536,
        ..common::spec(scheme, WorkloadKind::Random, &[], "riscv-sv39")
    };
    for (k, v) in sets {
        spec.profile.set(k, v).map_err(RunError::Config)?;
    }
    run::run(&spec, &mut |_, _| {})
}

fn walk_cycles_per_walk(r: &Report) -> f64 {
    r.cycles_by_category.walk as f64 / r.walk.walks.max(1) as f64
}

#[test]
fn equal_shadow_tables_give_asp_and_ssp_equal_walk_costs() -> Result<(), RunError> {
    // After the warm-up every shadow leaf exists, so both walk only their shadow tables, which
    // hold the same entries. With table pools those tables also sit at the same offsets of
    // their 2 MiB regions, so every walk reads the same cache sets. They may differ only in the
    // LLC, the level ASP's nested-table lines share with its shadow lines: 3 of 2.28 M
    // references since the host-page change of 2026-12-07.
    let ssp = random_steady(SchemeKind::Ssp, &[])?;
    let asp = random_steady(SchemeKind::Asp, &[])?;
    assert_eq!(ssp.walk.walks, asp.walk.walks);
    assert_eq!(ssp.walk.guest_refs, asp.walk.guest_refs);
    let (s, a) = (ssp.walk.refs_by_level, asp.walk.refs_by_level);
    assert_eq!(s[..2], a[..2], "the private cache levels see the same lines");
    assert!(s[2].abs_diff(a[2]) <= 10 && s[3].abs_diff(a[3]) <= 10, "{s:?} vs {a:?}");
    let walk_ratio = walk_cycles_per_walk(&asp) / walk_cycles_per_walk(&ssp);
    assert!((walk_ratio - 1.0).abs() < 1e-4, "ASP walks cost {walk_ratio}x SSP's");
    // Allocated one by one, ASP's shadow pages alternate with its nested pages, use half the
    // cache sets, and its walks cost more (the artefact the pools remove).
    let interleaved = [("memory.table_pool_frames", "1")];
    let ssp1 = random_steady(SchemeKind::Ssp, &interleaved)?;
    let asp1 = random_steady(SchemeKind::Asp, &interleaved)?;
    let ratio = walk_cycles_per_walk(&asp1) / walk_cycles_per_walk(&ssp1);
    assert!(ratio > 1.05, "interleaved ASP walks cost only {ratio:.3}x SSP's");
    Ok(())
}

/// A platform of `profile` running as the guest (VMID 1), with its guest TLB full: every L2
/// set holds as many guest 4 KiB entries as it has ways.
fn platform_with_full_tlb(profile: &str) -> Platform {
    let p = Profile::builtin(profile).expect("built-in profile");
    let mut platform = Platform::new(&p.platform_config().expect("valid"), p.costs).expect("fits");
    platform.mmu.set_vmid(Vmid(1));
    for page in 0..p.mmu.tlb.l2.entries as u64 {
        let va = Gva::new(page << 12);
        platform.mmu.fill(va, PageSize::Size4K, Hpa::new(page << 12), false, 0xff);
    }
    platform
}

fn guest_entries(p: &Platform) -> usize {
    p.mmu.tlb.entries().filter(|e| e.vmid == Vmid(1)).count()
}

#[test]
fn a_vm_exit_evicts_its_handler_pages_once_and_a_machine_mode_trap_none() {
    // riscv-sv39: an exit's handler touches 8 pages (handlers.exit.tlb_pages), each filled into
    // a full L1 and a full L2, evicting 8 guest entries from each; the next exit finds them.
    let mut p = platform_with_full_tlb("riscv-sv39");
    let full = guest_entries(&p);
    p.vm_exit(ExitCause::ShadowFault);
    assert_eq!(guest_entries(&p), full - 16);
    p.vm_exit(ExitCause::Flush);
    assert_eq!(guest_entries(&p), full - 16);
    // M-mode runs untranslated: a trap takes no TLB entry.
    p.hw_trap(TrapCause::Flush);
    assert_eq!(guest_entries(&p), full - 16);
    assert_eq!(p.stats.total_exits(), 2);
    assert_eq!(p.stats.total_traps(), 1);
    // A hypervisor that flushes the guest's TLB at every exit leaves none of its entries.
    let mut profile = Profile::builtin("riscv-sv39").expect("built-in");
    profile.set("handlers.exit.flush_guest_tlb", "true").unwrap();
    let mut p = platform_with_full_tlb("riscv-sv39");
    p.handlers = profile.handlers;
    p.vm_exit(ExitCause::Flush);
    assert_eq!(guest_entries(&p), 0);
}

#[test]
fn exits_that_flush_the_tlb_give_lsp_more_misses_than_nested_and_tagged_ones_do_not(
) -> Result<(), RunError> {
    // ctxsw in steady state: nested takes no exit, LSP a root-switch exit per turn. With a
    // VMID-tagged TLB and a handler footprint that stays resident, LSP misses no more than
    // nested; when exits flush the guest's TLB, every turn starts cold.
    let sets = [("processes", "3"), ("turns", "400"), ("pages", "16")];
    let ctxsw = |scheme, flush: &str| {
        let mut spec = RunSpec {
            warmup: 20_000,
            ..common::spec(scheme, WorkloadKind::Ctxsw, &sets, "riscv-sv39")
        };
        spec.profile.set("handlers.exit.flush_guest_tlb", flush).map_err(RunError::Config)?;
        run::run(&spec, &mut |_, _| {})
    };
    let nested = ctxsw(SchemeKind::Nested, "false")?;
    let lsp = ctxsw(SchemeKind::Lsp, "false")?;
    // Every counted switch is a root-switch exit under LSP (no shadow-root buffer).
    let switches = lsp.guest.context_switches;
    assert!(switches > 800, "{switches}");
    assert_eq!(lsp.vm_exits.by_cause.get("root_switch").copied(), Some(switches));
    assert_eq!(nested.vm_exits.total, 0);
    assert!(lsp.tlb_misses <= nested.tlb_misses, "{} vs {}", lsp.tlb_misses, nested.tlb_misses);
    let lsp_flushed = ctxsw(SchemeKind::Lsp, "true")?;
    let nested_flushed = ctxsw(SchemeKind::Nested, "true")?;
    assert_eq!(nested_flushed.tlb_misses, nested.tlb_misses, "nested takes no exit here");
    // After each switch's flushing exit the next process finds an empty TLB: each of its 16
    // pages misses at least once per turn.
    assert!(lsp_flushed.tlb_misses >= 16 * switches, "{} for {switches}", lsp_flushed.tlb_misses);
    assert_eq!(lsp_flushed.guest.history, lsp.guest.history);
    Ok(())
}

#[test]
fn cycles_are_exactly_linear_in_the_costs_so_a_predicted_corner_is_what_a_run_gives(
) -> Result<(), RunError> {
    use memvirt::sensitivity::{self, Linear};
    // Emulator costs are probed for the emulators only: the corners, run whole with every cost
    // moved, show that the others really never charge them.
    let schemes = [
        SchemeKind::Native,
        SchemeKind::Nested,
        SchemeKind::Tsp,
        SchemeKind::Ssp,
        SchemeKind::Asp,
        SchemeKind::Softmmu,
        SchemeKind::HsptPrivate,
    ];
    for (profile, workload) in
        [("riscv-sv39", WorkloadKind::Fork), ("sunway-like", WorkloadKind::LspMicro)]
    {
        let spec = common::spec(SchemeKind::Native, workload, &common::small(workload), profile);
        let reports = run::compare(&spec, &schemes, &mut |_, _, _| {})?;
        let ranges = sensitivity::ranges_for(&spec.profile.costs).map_err(RunError::Config)?;
        let lines: Vec<Linear> =
            sensitivity::fit_lines(&spec, &schemes, &reports, &ranges, &|| {})?;
        // The corner with every cost at its high end, and the one alternating low and high.
        let defaults: Vec<f64> = ranges.iter().map(|r| r.default as f64).collect();
        for pick in [|_: usize| true, |k: usize| k % 2 == 0] {
            let mut corner = spec.clone();
            let mut point = Vec::new();
            for (k, r) in ranges.iter().enumerate() {
                let v = if pick(k) { r.high } else { r.low };
                corner
                    .profile
                    .set(&format!("costs.{}", r.cost), &v.to_string())
                    .map_err(RunError::Config)?;
                point.push(v as f64);
            }
            for (line, &scheme) in lines.iter().zip(&schemes[1..]) {
                let run = run::run(&RunSpec { scheme, ..corner.clone() }, &mut |_, _| {})?;
                let predicted = line.at(&point, &defaults);
                assert!(
                    (predicted - run.cycles as f64).abs() < 0.5,
                    "{} on {}: predicted {predicted}, ran {}",
                    line.scheme,
                    workload.name(),
                    run.cycles
                );
            }
        }
    }
    Ok(())
}
