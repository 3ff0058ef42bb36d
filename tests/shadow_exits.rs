//! VM exits and hardware-mode traps of the shadow schemes in tiny scenarios, derived by hand from
//! each scheme's protocol (DESIGN.md §3) and asserted exactly.

use std::collections::BTreeMap;

use memvirt::addr::Gva;
use memvirt::guest::Os;
use memvirt::machine::{Machine, Platform};
use memvirt::paging::Perms;
use memvirt::profile::Profile;
use memvirt::scheme::{SchemeKind, Shadow, ShadowOptions};
use memvirt::stats::{ExitCause, TrapCause};

const RW: Perms = Perms::R.union(Perms::W);

fn boot(kind: SchemeKind, opts: ShadowOptions) -> Os<Shadow> {
    let profile = Profile::builtin("riscv-sv39").unwrap();
    let mut platform = Platform::new(&profile.platform_config().unwrap(), profile.costs).unwrap();
    let scheme = Shadow::new(&mut platform, kind.name(), opts).unwrap();
    let mut os = Os::boot(Machine::new(platform, scheme), profile.kernel).unwrap();
    os.reset_counters();
    os
}

fn preset(kind: SchemeKind) -> Os<Shadow> {
    boot(kind, kind.shadow_options().unwrap())
}

/// Exits and traps by cause name, zero counts left out.
fn events(os: &Os<Shadow>) -> BTreeMap<String, u64> {
    let s = &os.machine.platform.stats;
    let mut out = BTreeMap::new();
    for &c in ExitCause::ALL {
        out.insert(format!("exit:{}", c.name()), s.exits_for(c));
    }
    for &c in TrapCause::ALL {
        out.insert(format!("trap:{}", c.name()), s.traps_for(c));
    }
    out
}

/// What happened between two snapshots.
fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    after
        .iter()
        .map(|(k, &v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|&(_, d)| d != 0)
        .collect()
}

fn expect(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = pairs.iter().map(|&(k, n)| (k.to_owned(), n)).collect();
    v.sort();
    v
}

/// One process with one mapped, touched page whose shadow entry and TLB entry are warm.
fn one_warm_page(os: &mut Os<Shadow>) -> (memvirt::guest::Pid, Gva) {
    let pid = os.spawn().unwrap();
    let va = os.mmap(pid, 1, RW).unwrap();
    os.store(va, 7).unwrap();
    assert_eq!(os.load(va).unwrap(), 7);
    (pid, va)
}

/// The PTE update of a page migration, its single-address flush and one access.
#[test]
fn one_pte_update_its_flush_and_an_access() {
    let cases = [
        // Write protection: the store exits and is emulated into the shadow entry (the guest
        // entry is accessed and dirty, so it is copied ahead of use); the flush exits; the
        // access walks the updated shadow entry.
        (SchemeKind::Tsp, expect(&[("exit:write_protect", 1), ("exit:flush", 1)])),
        // The first write to the leaf page makes it out of sync (an exit, no emulation); the
        // flush exits and re-syncs that one entry; the access finds it.
        (SchemeKind::TspUnsync, expect(&[("exit:write_protect", 1), ("exit:flush", 1)])),
        // No protection: the flush is a hardware-mode trap that invalidates; the access takes a
        // shadow fault that syncs from the latest guest entry.
        (SchemeKind::Ssp, expect(&[("trap:flush", 1), ("exit:shadow_fault", 1)])),
        (SchemeKind::Lsp, expect(&[("trap:flush", 1), ("exit:shadow_fault", 1)])),
        // Trap-and-emulate: the flush itself exits.
        (SchemeKind::Rvirt, expect(&[("exit:flush", 1), ("exit:shadow_fault", 1)])),
    ];
    for (kind, want) in cases {
        let mut os = preset(kind);
        let (pid, va) = one_warm_page(&mut os);
        let before = events(&os);
        os.migrate_page(pid, va).unwrap();
        assert_eq!(os.load(va).unwrap(), 7, "{}: the migrated page keeps its content", kind.name());
        assert_eq!(delta(&before, &events(&os)), want, "{}", kind.name());
    }
}

/// Two PTE updates of the same page before one flush, then an access: lazy schemes sync once.
#[test]
fn a_page_modified_twice_before_its_flush() {
    let cases = [
        (SchemeKind::Tsp, expect(&[("exit:write_protect", 2), ("exit:flush", 1)])),
        (SchemeKind::TspUnsync, expect(&[("exit:write_protect", 1), ("exit:flush", 1)])),
        (SchemeKind::Ssp, expect(&[("trap:flush", 1), ("exit:shadow_fault", 1)])),
        (SchemeKind::Lsp, expect(&[("trap:flush", 1), ("exit:shadow_fault", 1)])),
        (SchemeKind::Rvirt, expect(&[("exit:flush", 1), ("exit:shadow_fault", 1)])),
    ];
    for (kind, want) in cases {
        let mut os = preset(kind);
        let (pid, va) = one_warm_page(&mut os);
        let before = events(&os);
        os.migrate_pages(pid, &[va, va]).unwrap();
        assert_eq!(os.load(va).unwrap(), 7);
        assert_eq!(delta(&before, &events(&os)), want, "{}", kind.name());
    }
}

/// A PTE update and its flush, and the page never touched again: lazy schemes never sync it.
#[test]
fn a_page_modified_and_never_accessed_again() {
    let cases = [
        (SchemeKind::Tsp, expect(&[("exit:write_protect", 1), ("exit:flush", 1)])),
        (SchemeKind::TspUnsync, expect(&[("exit:write_protect", 1), ("exit:flush", 1)])),
        (SchemeKind::Ssp, expect(&[("trap:flush", 1)])),
        (SchemeKind::Lsp, expect(&[("trap:flush", 1)])),
        (SchemeKind::Rvirt, expect(&[("exit:flush", 1)])),
    ];
    for (kind, want) in cases {
        let mut os = preset(kind);
        let (pid, va) = one_warm_page(&mut os);
        let before = events(&os);
        os.migrate_page(pid, va).unwrap();
        assert_eq!(delta(&before, &events(&os)), want, "{}", kind.name());
    }
}

/// Back to a process whose shadow root is in SSP's buffer (a trap), and with a one-entry buffer
/// that the other process displaced (an exit); LSP's `satp` writes always exit.
#[test]
fn context_switch_with_a_buffer_hit_and_with_a_miss() {
    let one_entry = ShadowOptions { root_buffer: 1, ..ShadowOptions::SSP };
    let cases = [
        (boot(SchemeKind::Ssp, ShadowOptions::SSP), expect(&[("trap:root_switch", 1)])),
        (boot(SchemeKind::Ssp, one_entry), expect(&[("exit:buffer_miss", 1)])),
        (preset(SchemeKind::Lsp), expect(&[("exit:root_switch", 1)])),
        (preset(SchemeKind::Tsp), expect(&[("exit:root_switch", 1)])),
    ];
    for (i, (mut os, want)) in cases.into_iter().enumerate() {
        let a = os.spawn().unwrap();
        let b = os.spawn().unwrap();
        let va = os.mmap(a, 1, RW).unwrap();
        os.store(va, 1).unwrap();
        os.switch_to(b).unwrap();
        // Two pages, so b's first page lies below a's: RISC-V Linux flushes a filled PTE with
        // `sfence.vma va, x0`, which would also invalidate a's entry at the same address.
        let vb = os.mmap(b, 2, RW).unwrap();
        assert_ne!(vb, va);
        os.store(vb, 2).unwrap();
        let before = events(&os);
        os.switch_to(a).unwrap();
        assert_eq!(os.load(va).unwrap(), 1, "case {i}: the shadow table of a survived");
        assert_eq!(delta(&before, &events(&os)), want, "case {i}");
    }
}

/// RVirt's single table is wiped at every root switch: going back to a process re-faults every
/// page it touches.
#[test]
fn rvirt_refills_after_every_switch() {
    let mut os = preset(SchemeKind::Rvirt);
    let a = os.spawn().unwrap();
    let b = os.spawn().unwrap();
    let va = os.mmap(a, 3, RW).unwrap();
    for i in 0..3 {
        os.store(va.wrapping_add(i * 4096), i).unwrap();
    }
    os.switch_to(b).unwrap();
    let before = events(&os);
    os.switch_to(a).unwrap();
    for i in 0..3 {
        assert_eq!(os.load(va.wrapping_add(i * 4096)).unwrap(), i);
    }
    // One root-switch exit; the kernel-stack access and the three pages each take a shadow
    // fault in the emptied table.
    assert_eq!(
        delta(&before, &events(&os)),
        expect(&[("exit:root_switch", 1), ("exit:shadow_fault", 4)])
    );
}

/// KVM's write-flood detection (`scheme.write_flood = 3`): five PTE updates of one page with no
/// shadow fault in between. The first two writes to the leaf table page exit and are emulated;
/// the third exits and unshadows the page; the fourth and fifth reach the unprotected guest
/// page without an exit. The flush exits (TSP intercepts every flush) and the access after it
/// takes a shadow fault, since the page's shadow is gone. Without detection (`tsp`'s default)
/// all five writes exit and the access finds the emulated entry.
#[test]
fn a_write_flooded_table_page_is_unshadowed_at_the_third_write() {
    let flooding = ShadowOptions { write_flood: 3, ..ShadowOptions::TSP };
    let cases = [
        (
            boot(SchemeKind::Tsp, flooding),
            expect(&[("exit:write_protect", 3), ("exit:flush", 1), ("exit:shadow_fault", 1)]),
            1,
        ),
        (preset(SchemeKind::Tsp), expect(&[("exit:write_protect", 5), ("exit:flush", 1)]), 0),
    ];
    for (mut os, want, unshadowed) in cases {
        let (pid, va) = one_warm_page(&mut os);
        let before = events(&os);
        os.migrate_pages(pid, &[va; 5]).unwrap();
        assert_eq!(os.load(va).unwrap(), 7);
        assert_eq!(delta(&before, &events(&os)), want);
        assert_eq!(os.machine.scheme.stats.unshadowed, unshadowed);
    }
}

/// A shadow fault through the table page restarts its count: two updates (counts 1, 2), a
/// demand fault on a second page of the same leaf table (the shadow fault's guest walk resets
/// the count to 0; the kernel's new PTE is the next write, 1, emulated into the shadow, so the
/// retried access needs no shadow fault), two more updates (2, then 3: unshadowed). All five
/// writes exit and the page is unshadowed at the last; without the reset the count would reach
/// 3 at the new PTE and the last two updates would not exit (3 exits).
#[test]
fn a_shadow_fault_through_the_table_page_restarts_the_flood_count() {
    let mut os = boot(SchemeKind::Tsp, ShadowOptions { write_flood: 3, ..ShadowOptions::TSP });
    let pid = os.spawn().unwrap();
    let va = os.mmap(pid, 2, RW).unwrap();
    os.store(va, 7).unwrap();
    assert_eq!(os.load(va).unwrap(), 7);
    let before = events(&os);
    os.migrate_pages(pid, &[va, va]).unwrap();
    os.store(Gva::new(va.as_u64() + 4096), 9).unwrap();
    os.migrate_pages(pid, &[va, va]).unwrap();
    assert_eq!(os.load(va).unwrap(), 7);
    let d: BTreeMap<String, u64> = delta(&before, &events(&os)).into_iter().collect();
    assert_eq!(d.get("exit:write_protect"), Some(&5), "{d:?}");
    assert_eq!(os.machine.scheme.stats.unshadowed, 1);
}
