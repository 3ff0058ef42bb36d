//! Cross-ISA emulation schemes (`softmmu`, `hspt-*`) in tiny scenarios whose counts are derived
//! by hand from each scheme's protocol (DESIGN.md, "Cross-ISA emulation") and asserted exactly.

use std::collections::BTreeMap;

use memvirt::addr::Gva;
use memvirt::guest::{Os, Pid};
use memvirt::machine::{Machine, Platform, Scheme};
use memvirt::mmu::flush::{AsidScope, TlbScope};
use memvirt::mmu::FlushOp;
use memvirt::paging::{Access, Perms};
use memvirt::profile::Profile;
use memvirt::scheme::{Hspt, HsptOptions, Organization, Softmmu, SoftmmuOptions};

const RW: Perms = Perms::R.union(Perms::W);
const PAGE: u64 = 4096;

fn profile() -> Profile {
    Profile::builtin("riscv-sv39").unwrap()
}

fn boot<S: Scheme>(make: impl FnOnce(&mut Platform) -> S) -> Os<S> {
    let profile = profile();
    let mut platform = Platform::new(&profile.platform_config().unwrap(), profile.costs).unwrap();
    let scheme = make(&mut platform);
    let mut os = Os::boot(Machine::new(platform, scheme), profile.kernel).unwrap();
    os.reset_counters();
    os
}

fn hspt(org: Organization, regions: u64) -> Os<Hspt> {
    boot(|p| Hspt::new(p, org, HsptOptions { regions, ..HsptOptions::default() }, true).unwrap())
}

fn softmmu_with(opts: SoftmmuOptions) -> Os<Softmmu> {
    let mmu = profile().platform_config().unwrap().mmu;
    boot(|p| Softmmu::new(p, &mmu, opts, true).unwrap())
}

fn softmmu() -> Os<Softmmu> {
    softmmu_with(SoftmmuOptions::default())
}

fn counters<S: Scheme>(os: &Os<S>) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    os.machine.scheme.counters(&mut out);
    out
}

/// `key` after minus `key` before.
fn grew<S: Scheme>(os: &Os<S>, before: &BTreeMap<&'static str, u64>, key: &str) -> u64 {
    counters(os)[key] - before[key]
}

/// Process `pid` gets `n` pages, each stored to once.
fn touched(os: &mut Os<impl Scheme>, pid: Pid, n: u64) -> Gva {
    let va = os.mmap(pid, n, RW).unwrap();
    for i in 0..n {
        os.store(va.wrapping_add(i * PAGE), i + 1).unwrap();
    }
    va
}

fn reads_back(os: &mut Os<impl Scheme>, va: Gva, n: u64) {
    for i in 0..n {
        assert_eq!(os.load(va.wrapping_add(i * PAGE)).unwrap(), i + 1);
    }
}

/// A process touches `n` pages, another runs, then the first comes back and reads them all:
/// the counters from just before it came back, to measure what coming back cost.
fn away_and_back<S: Scheme>(os: &mut Os<S>, n: u64) -> BTreeMap<&'static str, u64> {
    let (a, b) = (os.spawn().unwrap(), os.spawn().unwrap());
    os.switch_to(a).unwrap();
    let va = touched(os, a, n);
    os.switch_to(b).unwrap();
    let before = counters(os);
    os.switch_to(a).unwrap();
    reads_back(os, va, n);
    before
}

/// hspt-shared empties its one region at a switch: coming back, the switch's kernel-stack
/// access and each of the N pages take one host fault and one mmap; the switch is one mprotect.
#[test]
fn hspt_shared_refaults_every_page_after_a_context_switch() {
    const N: u64 = 5;
    let mut os = hspt(Organization::Shared, 256);
    let before = away_and_back(&mut os, N);
    assert_eq!(grew(&os, &before, "host_faults"), N + 1);
    assert_eq!(grew(&os, &before, "host_maps"), N + 1);
    assert_eq!(grew(&os, &before, "host_mprotects"), 1, "the switch empties the region once");
    assert_eq!(grew(&os, &before, "host_fault_guest_faults"), 0);
}

/// hspt-prefill maps the pages a process used in its earlier slices when it comes back: the N
/// pages and its kernel stack are mapped eagerly, and touching them takes no host fault.
#[test]
fn hspt_prefill_maps_earlier_pages_eagerly_at_switch_in() {
    const N: u64 = 5;
    let mut os = hspt(Organization::Prefill, 256);
    let before = away_and_back(&mut os, N);
    assert_eq!(grew(&os, &before, "host_faults"), 0);
    assert_eq!(grew(&os, &before, "prefilled_pages"), N + 1, "N pages and the kernel stack");
    assert_eq!(grew(&os, &before, "host_maps"), N + 1);
}

/// With `scheme.prefill_limit = L`, only the L pages mapped last (the last of the N touched) are
/// mapped eagerly; reading all N back faults on the other N - L, and on the kernel stack, which
/// was mapped before them.
#[test]
fn hspt_prefill_limit_keeps_the_newest_pages() {
    const N: u64 = 5;
    const L: u64 = 2;
    let opts = HsptOptions { prefill_limit: L, ..HsptOptions::default() };
    let mut os = boot(|p| Hspt::new(p, Organization::Prefill, opts, true).unwrap());
    let before = away_and_back(&mut os, N);
    assert_eq!(grew(&os, &before, "prefilled_pages"), L);
    assert_eq!(grew(&os, &before, "host_faults"), N - L + 1);
    assert_eq!(grew(&os, &before, "host_maps"), N + 1);
}

/// hspt-private with two regions: once both processes have their region, switching between
/// them costs no invalidation and no host fault.
#[test]
fn hspt_private_switches_between_two_processes_without_invalidation() {
    const N: u64 = 4;
    let mut os = hspt(Organization::Private, 2);
    let (a, b) = (os.spawn().unwrap(), os.spawn().unwrap());
    os.switch_to(a).unwrap();
    let va = touched(&mut os, a, N);
    os.switch_to(b).unwrap();
    let vb = touched(&mut os, b, N);
    // RISC-V Linux flushes each filled PTE with `sfence.vma va, x0` (every ASID), so b's
    // demand faults unmapped a's pages at the same addresses: one round re-maps them.
    os.switch_to(a).unwrap();
    reads_back(&mut os, va, N);
    let before = counters(&os);
    for _ in 0..3 {
        os.switch_to(a).unwrap();
        reads_back(&mut os, va, N);
        os.switch_to(b).unwrap();
        reads_back(&mut os, vb, N);
    }
    assert_eq!(grew(&os, &before, "host_mprotects"), 0);
    assert_eq!(grew(&os, &before, "host_faults"), 0);
    assert_eq!(grew(&os, &before, "regions_recycled"), 0);
    assert_eq!(counters(&os)["regions"], 2);
}

/// hspt-private with one region recycles it at every switch between two processes: one
/// mprotect (emptying it) per switch, then the switch's kernel stack and the pages refault.
#[test]
fn hspt_private_with_one_region_recycles_it_at_every_switch() {
    const N: u64 = 3;
    let mut os = hspt(Organization::Private, 1);
    let before = away_and_back(&mut os, N);
    assert_eq!(grew(&os, &before, "regions_recycled"), 1);
    assert_eq!(grew(&os, &before, "host_mprotects"), 1);
    assert_eq!(grew(&os, &before, "host_faults"), N + 1);
}

/// A single-address guest flush under HSPT unmaps that page only: the next access to it is one
/// host fault, its neighbours none.
#[test]
fn hspt_single_address_flush_unmaps_one_page() {
    for org in [Organization::Shared, Organization::Prefill, Organization::Private] {
        let mut os = hspt(org, 256);
        let a = os.spawn().unwrap();
        os.switch_to(a).unwrap();
        let va = touched(&mut os, a, 3);
        let asid = os.machine.platform.mmu.asid();
        let before = counters(&os);
        os.machine.guest_flush(FlushOp::SfenceVma { va: Some(va), asid: Some(asid) }).unwrap();
        assert_eq!(grew(&os, &before, "host_mprotects"), 1, "{}", org.name());
        reads_back(&mut os, va, 3);
        assert_eq!(grew(&os, &before, "host_faults"), 1, "{}", org.name());
    }
}

/// The software TLB is direct-mapped: two pages 256 pages apart share an entry and evict each
/// other, so alternating between them misses every time without a victim TLB; with QEMU's
/// 8-entry victim TLB each of those misses is a victim hit instead. A page elsewhere stays.
#[test]
fn softmmu_direct_mapped_conflicts_miss_or_hit_the_victim_tlb() {
    for victim in [0, 8] {
        let mut os = softmmu_with(SoftmmuOptions { victim, ..SoftmmuOptions::default() });
        let a = os.spawn().unwrap();
        os.switch_to(a).unwrap();
        let va = touched(&mut os, a, 257);
        let (x, y) = (va, va.wrapping_add(256 * PAGE));
        let stats = |os: &Os<Softmmu>| {
            let s = &os.machine.platform.mmu.stats();
            (s.misses, s.l2_hits)
        };
        os.load(x).unwrap();
        os.load(y).unwrap();
        os.load(x).unwrap();
        let before = stats(&os);
        for _ in 0..4 {
            os.load(y).unwrap();
            os.load(x).unwrap();
        }
        let after = stats(&os);
        let want = if victim == 0 { (8, 0) } else { (0, 8) };
        assert_eq!((after.0 - before.0, after.1 - before.1), want, "victim {victim}");
        let z = va.wrapping_add(PAGE);
        os.load(z).unwrap();
        let before = stats(&os);
        os.load(z).unwrap();
        assert_eq!(stats(&os), before, "victim {victim}");
    }
}

/// QEMU's flushes: a single-address flush drops exactly that page's entry (whatever the ASID),
/// a root switch drops every entry.
#[test]
fn softmmu_flushes_clear_exactly_the_right_entries() {
    let mut os = softmmu();
    let a = os.spawn().unwrap();
    os.switch_to(a).unwrap();
    let va = touched(&mut os, a, 4);
    reads_back(&mut os, va, 4);
    let entries = |os: &Os<Softmmu>| os.machine.platform.mmu.tlb.entries().count();
    let page_in = |os: &Os<Softmmu>, v: Gva| {
        os.machine.platform.mmu.tlb.entries().filter(|e| e.covers(v)).count()
    };
    let held = entries(&os);
    let of_va = page_in(&os, va);
    assert!(of_va >= 1);
    assert!((0..4).all(|i| page_in(&os, va.wrapping_add(i * PAGE)) >= 1));
    let before = counters(&os);
    // A flush naming another ASID still drops the page: QEMU's TLB has no ASID tags.
    let other = memvirt::addr::Asid(os.machine.platform.mmu.asid().0.wrapping_add(1));
    os.machine.guest_flush(FlushOp::SfenceVma { va: Some(va), asid: Some(other) }).unwrap();
    assert_eq!(entries(&os), held - of_va, "only the entries of that page went");
    assert_eq!(page_in(&os, va), 0);
    assert!((1..4).all(|i| page_in(&os, va.wrapping_add(i * PAGE)) >= 1));
    assert_eq!(grew(&os, &before, "soft_tlb_entries_flushed"), of_va as u64);
    let root = os.machine.platform.root.unwrap();
    os.machine.guest_root_switch(root).unwrap();
    assert_eq!(entries(&os), 0, "a satp write empties the software TLB");
    assert_eq!(grew(&os, &before, "soft_tlb_entries_flushed"), held as u64);
    assert_eq!(grew(&os, &before, "soft_tlb_full_flushes"), 1);
}

/// `softmmu`'s data accesses go through the host MMU at `ram_base + gpa`. With the host TLB
/// emptied, reading back N pages misses it once per distinct host page: N with 4 KiB host
/// pages, one per 2 MiB chunk of guest RAM with huge pages; the pages are mapped already, and a
/// second pass hits.
#[test]
fn softmmu_data_accesses_miss_the_host_tlb_once_per_host_page() {
    const N: u64 = 6;
    for huge in [false, true] {
        let mut os =
            softmmu_with(SoftmmuOptions { ram_huge_pages: huge, ..SoftmmuOptions::default() });
        let a = os.spawn().unwrap();
        os.switch_to(a).unwrap();
        let va = touched(&mut os, a, N);
        let mut chunks = std::collections::BTreeSet::new();
        for i in 0..N {
            let hpa = os.machine.access(va.wrapping_add(i * PAGE), Access::USER_LOAD).unwrap();
            chunks.insert(hpa.as_u64() >> 21);
        }
        let everything = TlbScope { vmid: None, va: None, asid: AsidScope::All, globals: true };
        os.machine.scheme.host_mmu.tlb.flush(&everything);
        let before = counters(&os);
        reads_back(&mut os, va, N);
        let want = if huge { chunks.len() as u64 } else { N };
        assert_eq!(grew(&os, &before, "host_tlb_misses"), want, "huge pages {huge}");
        assert_eq!(grew(&os, &before, "host_ram_maps"), 0, "huge pages {huge}");
        let before = counters(&os);
        reads_back(&mut os, va, N);
        assert_eq!(grew(&os, &before, "host_tlb_misses"), 0, "huge pages {huge}");
        assert_eq!(counters(&os)["host_table_levels"], 4, "an x86-64 host");
    }
}
