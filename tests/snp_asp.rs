//! Software Nested Paging, Accelerated Shadow Paging and the software-refilled TLB: counts
//! derived by hand for tiny scenarios.

use memvirt::guest::Os;
use memvirt::machine::{Machine, Platform, Scheme};
use memvirt::mmu::FlushOp;
use memvirt::paging::Perms;
use memvirt::profile::Profile;
use memvirt::scheme::{Native, Nested, NestedOptions, NestedWalk, SchemeKind, Shadow};
use memvirt::stats::{ExitCause, TrapCause};

const RW: Perms = Perms::R.union(Perms::W);

fn boot<S: Scheme>(profile: &str, make: impl FnOnce(&mut Platform) -> S) -> Os<S> {
    let mut p = Profile::builtin(profile).unwrap();
    p.set("walk_caches", "false").unwrap();
    let mut platform = Platform::new(&p.platform_config().unwrap(), p.costs).unwrap();
    let scheme = make(&mut platform);
    let mut os = Os::boot(Machine::new(platform, scheme), p.kernel).unwrap();
    os.reset_counters();
    os
}

fn exits<S: Scheme>(os: &Os<S>) -> u64 {
    ExitCause::ALL.iter().map(|&c| os.machine.platform.stats.exits_for(c)).sum()
}

fn traps<S: Scheme>(os: &Os<S>, cause: TrapCause) -> u64 {
    os.machine.platform.stats.traps_for(cause)
}

/// With every TLB entry dropped, one access to a mapped page is one software walk of
/// (n+1)(m+1)−1 entries with a radix nested table, 2n+1 with a flat one, in one `tlb_refill`
/// trap, and no VM exit.
#[test]
fn one_snp_miss_reads_every_entry_of_the_2d_walk_in_one_trap() {
    for (profile, flat, refs) in [
        ("riscv-sv39", false, 15),
        ("x86-64", false, 24),
        ("riscv-sv48", false, 24),
        ("riscv-sv39", true, 7),
        ("x86-64", true, 9),
    ] {
        let mut os = boot(profile, |p| {
            let opts =
                NestedOptions { walk: NestedWalk::Software, flat, ..NestedOptions::default() };
            Nested::new(p, opts).unwrap()
        });
        let pid = os.spawn().unwrap();
        let va = os.mmap(pid, 1, RW).unwrap();
        os.store(va, 5).unwrap();
        os.machine.platform.mmu.tlb.flush(&memvirt::mmu::flush::TlbScope {
            vmid: None,
            va: None,
            asid: memvirt::mmu::flush::AsidScope::All,
            globals: true,
        });
        let s = os.machine.platform.mmu.stats();
        let (exits_before, traps_before) = (exits(&os), traps(&os, TrapCause::TlbRefill));
        assert_eq!(os.load(va).unwrap(), 5);
        let after = os.machine.platform.mmu.stats();
        assert_eq!(after.walks - s.walks, 1, "{profile}");
        let read = after.guest_refs + after.nested_refs - s.guest_refs - s.nested_refs;
        assert_eq!(read, refs, "{profile} (flat: {flat}): entries read");
        assert_eq!(traps(&os, TrapCause::TlbRefill) - traps_before, 1, "{profile}");
        assert_eq!(exits(&os), exits_before, "{profile}: no VM exit");
        assert_eq!(os.machine.scheme.name(), "snp");
    }
}

/// On the software-refilled `sunway-like` profile every walk of a native run is a refill trap.
#[test]
fn a_software_refilled_tlb_traps_once_per_walk() {
    let mut os = boot("sunway-like", |_| Native);
    let pid = os.spawn().unwrap();
    let va = os.mmap(pid, 64, RW).unwrap();
    for i in 0..64 {
        os.store(va.wrapping_add(i * 4096), i).unwrap();
    }
    let walks = os.machine.platform.mmu.stats().walks;
    assert!(walks >= 64);
    assert_eq!(traps(&os, TrapCause::TlbRefill), walks);
    assert_eq!(exits(&os), 0, "native has no hypervisor");
}

/// A shadow leaf re-synced after a flush: under ASP the hardware-mode handler fills it (one
/// `leaf_fill` trap, no VM exit) because its shadow table exists; under SSP it is a VM exit.
#[test]
fn an_asp_leaf_fault_costs_one_trap_and_no_exit() {
    for kind in [SchemeKind::Asp, SchemeKind::Ssp] {
        let mut os = boot("riscv-sv39", |p| {
            Shadow::new(p, kind.name(), kind.shadow_options().unwrap()).unwrap()
        });
        let pid = os.spawn().unwrap();
        let va = os.mmap(pid, 1, RW).unwrap();
        os.store(va, 9).unwrap();
        // Move the page away and back, so that its frame is one the nested table already maps.
        os.migrate_page(pid, va).unwrap();
        os.migrate_page(pid, va).unwrap();
        assert_eq!(os.load(va).unwrap(), 9);
        let (e, fills, flushes) =
            (exits(&os), traps(&os, TrapCause::LeafFill), traps(&os, TrapCause::Flush));
        os.machine.platform.mmu.flush(&FlushOp::SfenceVma { va: None, asid: None });
        os.migrate_page(pid, va).unwrap();
        os.migrate_page(pid, va).unwrap();
        assert_eq!(traps(&os, TrapCause::Flush) - flushes, 2, "{}", kind.name());
        assert_eq!(os.load(va).unwrap(), 9);
        match kind {
            SchemeKind::Asp => {
                assert_eq!(exits(&os) - e, 0, "asp: no VM exit");
                assert_eq!(traps(&os, TrapCause::LeafFill) - fills, 1, "asp: one leaf fill");
            }
            _ => {
                assert_eq!(exits(&os) - e, 1, "ssp: the re-sync is a VM exit");
            }
        }
    }
}
