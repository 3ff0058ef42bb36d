//! Transparent huge pages in the guest kernel (`kernel.thp`): huge fills, the huge zero page,
//! splitting on partial `munmap`/`mprotect` and copy-on-write, and the fallback to 4 KiB, with
//! every count derived by hand from Linux's `mm/huge_memory.c` behaviour (see `guest::thp`).

use memvirt::addr::Gva;
use memvirt::guest::{FaultResolution, Os, Pid};
use memvirt::machine::{Machine, Platform};
use memvirt::paging::Perms;
use memvirt::profile::Profile;
use memvirt::scheme::{Nested, NestedOptions};

const RW: Perms = Perms::R.union(Perms::W);
const PAGE: u64 = 4096;
/// Small pages in a huge page.
const HUGE_PAGES: u64 = 512;

/// A guest under nested paging with `kernel.thp = thp` (and any other `sets`), the oracle on
/// so that every fill of a huge or split page is checked, counters zeroed after boot.
fn boot(thp: &str, sets: &[(&str, &str)]) -> Os<Nested> {
    let mut profile = Profile::builtin("riscv-sv39").unwrap();
    profile.set("kernel.thp", thp).unwrap();
    for (k, v) in sets {
        profile.set(k, v).unwrap();
    }
    let mut platform = Platform::new(&profile.platform_config().unwrap(), profile.costs).unwrap();
    let scheme = Nested::new(&mut platform, NestedOptions::default()).unwrap();
    let mut machine = Machine::new(platform, scheme);
    machine.enable_oracle();
    let mut os = Os::boot(machine, profile.kernel).unwrap();
    os.reset_counters();
    os
}

fn faults(os: &Os<Nested>, r: FaultResolution) -> u64 {
    os.stats.faults[r as usize]
}

fn total_faults(os: &Os<Nested>) -> u64 {
    os.stats.faults.iter().sum()
}

fn page(base: Gva, i: u64) -> Gva {
    base.wrapping_add(i * PAGE)
}

/// A process with a fresh `huge_pages` × 2 MiB anonymous mapping (placed 2 MiB-aligned).
fn region(os: &mut Os<Nested>, huge_pages: u64) -> (Pid, Gva) {
    let pid = os.spawn().unwrap();
    let base = os.mmap(pid, huge_pages * HUGE_PAGES, RW).unwrap();
    (pid, base)
}

#[test]
fn a_first_store_maps_one_huge_page_for_the_whole_aligned_2m() {
    let mut os = boot("always", &[]);
    let (_, base) = region(&mut os, 2);
    assert_eq!(base.as_u64() % (2 << 20), 0, "a 2 MiB mapping is placed 2 MiB-aligned");
    let frames = os.frames.in_use();
    os.store(page(base, 0), 1).unwrap();
    assert_eq!(faults(&os, FaultResolution::HugeDemandZero), 1);
    assert_eq!(os.thp.fault_alloc, 1);
    // 512 frames of the huge page and one new level-1 table (the root existed).
    assert_eq!(os.frames.in_use() - frames, HUGE_PAGES + 1);
    for i in 1..HUGE_PAGES {
        os.store(page(base, i), 1).unwrap();
    }
    assert_eq!(total_faults(&os), 1, "one fault for 512 pages");
    let walks = os.machine.platform.mmu.stats().walks;
    os.store(page(base, HUGE_PAGES), 1).unwrap();
    assert_eq!(os.thp.fault_alloc, 2, "the second 2 MiB is a second huge page");
    assert!(os.machine.platform.mmu.stats().walks > walks);
}

#[test]
fn never_maps_small_pages_and_places_mappings_as_before() {
    let mut os = boot("never", &[]);
    let (_, base) = region(&mut os, 1);
    os.store(page(base, 0), 1).unwrap();
    os.store(page(base, 1), 1).unwrap();
    assert_eq!(faults(&os, FaultResolution::DemandZero), 2);
    assert_eq!(os.thp.fault_alloc, 0);
}

#[test]
fn a_first_read_maps_the_huge_zero_page_and_a_store_splits_it_then_copies() {
    let mut os = boot("always", &[]);
    let (_, base) = region(&mut os, 1);
    os.load(page(base, 3)).unwrap();
    assert_eq!(faults(&os, FaultResolution::HugeZeroPage), 1);
    assert_eq!(os.thp.fault_alloc, 0, "the huge zero page is not a THP allocation");
    os.load(page(base, 400)).unwrap();
    assert_eq!(total_faults(&os), 1);
    // The store faults on the read-only huge zero page: split into 512 entries for the small
    // zero page, then the retried store copies (zeroes) one small page.
    os.store(page(base, 3), 7).unwrap();
    assert_eq!(faults(&os, FaultResolution::HugeSplit), 1);
    assert_eq!(faults(&os, FaultResolution::CowCopy), 1);
    assert_eq!(os.thp.split_pmd, 1);
    assert_eq!(os.load(page(base, 3)).unwrap(), 7);
    os.load(page(base, 4)).unwrap();
    assert_eq!(total_faults(&os), 3, "the other 511 pages read the small zero page");
}

#[test]
fn a_partial_munmap_splits_the_huge_page_and_frees_one_frame() {
    let mut os = boot("always", &[]);
    let (pid, base) = region(&mut os, 1);
    os.store(page(base, 0), 1).unwrap();
    let frames = os.frames.in_use();
    let flushes = os.machine.platform.stats.flushes.clone();
    os.munmap(pid, page(base, 5), 1).unwrap();
    assert_eq!(os.thp.split_pmd, 1);
    // One new level-0 table, one page freed.
    assert_eq!(os.frames.in_use(), frames);
    // The split's flush of the huge page, then the unmapped page's.
    let after = &os.machine.platform.stats.flushes;
    let n = |m: &std::collections::BTreeMap<&str, u64>| m.get("sfence.vma va,asid").copied();
    assert_eq!(n(after).unwrap_or(0) - n(&flushes).unwrap_or(0), 2);
    // The other 511 pages keep their frames and contents.
    os.store(page(base, 6), 9).unwrap();
    assert_eq!(os.load(page(base, 6)).unwrap(), 9);
    assert_eq!(total_faults(&os), 1, "the split pages fault no more");
    // The other 511 frames go; the level-0 table stays until the address space goes.
    os.munmap(pid, base, HUGE_PAGES).unwrap();
    assert_eq!(os.frames.in_use(), frames - (HUGE_PAGES - 1));
}

#[test]
fn munmap_of_whole_huge_pages_flushes_once_per_huge_page() {
    let mut os = boot("always", &[]);
    let (pid, base) = region(&mut os, 3);
    for h in 0..3 {
        os.store(page(base, h * HUGE_PAGES), 1).unwrap();
    }
    let frames = os.frames.in_use();
    let before = os.machine.platform.stats.flushes.get("sfence.vma va,asid").copied();
    os.munmap(pid, base, 3 * HUGE_PAGES).unwrap();
    let after = os.machine.platform.stats.flushes.get("sfence.vma va,asid").copied();
    // Three entries at a 2 MiB stride: 3 single-address flushes, under the threshold of 64.
    assert_eq!(after.unwrap_or(0) - before.unwrap_or(0), 3);
    assert_eq!(os.thp.split_pmd, 0);
    assert_eq!(frames - os.frames.in_use(), 3 * HUGE_PAGES);
}

#[test]
fn mprotect_of_a_whole_huge_page_keeps_it_and_a_later_store_reuses_it_in_place() {
    let mut os = boot("always", &[]);
    let (pid, base) = region(&mut os, 1);
    os.store(page(base, 0), 1).unwrap();
    os.mprotect(pid, base, HUGE_PAGES, Perms::R).unwrap();
    os.mprotect(pid, base, HUGE_PAGES, RW).unwrap();
    assert_eq!(os.thp.split_pmd, 0);
    os.store(page(base, 100), 2).unwrap();
    // Nothing else maps it: the huge entry is made writable again (wp reuse), no split.
    assert_eq!(faults(&os, FaultResolution::CowReuse), 1);
    assert_eq!(os.thp.split_pmd, 0);
    // A partial mprotect splits.
    os.mprotect(pid, page(base, 8), 8, Perms::R).unwrap();
    assert_eq!(os.thp.split_pmd, 1);
}

#[test]
fn copy_on_write_of_a_shared_huge_page_splits_and_copies_one_small_page() {
    let mut os = boot("always", &[]);
    let (parent, base) = region(&mut os, 1);
    os.store(page(base, 0), 1).unwrap();
    let child = os.fork(parent).unwrap();
    os.switch_to(child).unwrap();
    os.reset_counters();
    os.store(page(base, 3), 2).unwrap();
    assert_eq!(faults(&os, FaultResolution::HugeSplit), 1);
    assert_eq!(faults(&os, FaultResolution::CowCopy), 1, "the child's page 3 is copied");
    assert_eq!(os.thp.split_pmd, 1);
    os.switch_to(parent).unwrap();
    // The parent's huge page is still shared (511 frames): split, then page 3, now mapped
    // only by the parent, is reused in place.
    os.store(page(base, 3), 3).unwrap();
    assert_eq!(faults(&os, FaultResolution::HugeSplit), 2);
    assert_eq!(faults(&os, FaultResolution::CowReuse), 1);
    assert_eq!(os.load(page(base, 3)).unwrap(), 3);
    os.switch_to(child).unwrap();
    assert_eq!(os.load(page(base, 3)).unwrap(), 2, "the child keeps its copy");
    assert_eq!(os.load(page(base, 0)).unwrap(), 1, "and shares the rest");
}

#[test]
fn madvise_mode_maps_huge_pages_only_where_the_program_asked() {
    let mut os = boot("madvise", &[]);
    let pid = os.spawn().unwrap();
    let plain = os.mmap(pid, HUGE_PAGES, RW).unwrap();
    let advised = os.mmap_data(pid, HUGE_PAGES, RW).unwrap();
    os.store(plain, 1).unwrap();
    assert_eq!(faults(&os, FaultResolution::DemandZero), 1);
    os.store(advised, 1).unwrap();
    assert_eq!(faults(&os, FaultResolution::HugeDemandZero), 1);
}

#[test]
fn with_no_free_2m_block_a_fault_falls_back_to_a_small_page() {
    // 8 MiB of guest: four 2 MiB blocks, the first holding the kernel's own frames, so at most
    // three huge pages.
    let mut os = boot("always", &[("memory.guest_mib", "8")]);
    let (_, base) = region(&mut os, 4);
    for h in 0..4 {
        os.store(page(base, h * HUGE_PAGES), 1).unwrap();
    }
    let (alloc, fallback) = (os.thp.fault_alloc, os.thp.fault_fallback);
    assert_eq!((alloc, fallback), (3, 1), "blocks at 2, 4 and 6 MiB, then none");
    assert_eq!(faults(&os, FaultResolution::DemandZero), fallback);
}
