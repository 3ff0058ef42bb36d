//! The guest kernel model, checked against counts derived by hand from the Linux behaviour it
//! follows (DESIGN.md §4).

use memvirt::addr::{Gva, PageSize};
use memvirt::guest::{FaultResolution, Os, OsError};
use memvirt::machine::{Machine, Platform, Scheme};
use memvirt::paging::Perms;
use memvirt::profile::Profile;
use memvirt::run::{run, RunSpec};
use memvirt::scheme::{Native, Nested, NestedOptions, SchemeKind};
use memvirt::stats::ExitCause;
use memvirt::workload::WorkloadKind;

const PAGE: u64 = PageSize::Size4K.bytes();
const RW: Perms = Perms::R.union(Perms::W);

fn platform(profile: &str) -> Platform {
    let p = Profile::builtin(profile).unwrap();
    Platform::new(&p.platform_config().unwrap(), p.costs).unwrap()
}

fn boot<S: Scheme>(profile: &str, scheme: impl FnOnce(&mut Platform) -> S) -> Os<S> {
    let p = Profile::builtin(profile).unwrap();
    let mut platform = platform(profile);
    let s = scheme(&mut platform);
    let mut os = Os::boot(Machine::new(platform, s), p.kernel).unwrap();
    os.reset_counters();
    os
}

fn native(profile: &str) -> Os<Native> {
    boot(profile, |_| Native)
}

fn faults<S: Scheme>(os: &Os<S>, r: FaultResolution) -> u64 {
    os.stats.faults[r as usize]
}

fn flushes<S: Scheme>(os: &Os<S>, kind: &str) -> u64 {
    os.machine.platform.stats.flushes.get(kind).copied().unwrap_or(0)
}

fn page(base: Gva, i: u64) -> Gva {
    base.wrapping_add(i * PAGE)
}

#[test]
fn n_first_touches_under_native_are_n_faults_and_n_leaf_writes() {
    const N: u64 = 300;
    for profile in ["riscv-sv39", "x86-64"] {
        let mut os = native(profile);
        let pid = os.spawn().unwrap();
        let base = os.mmap(pid, N, RW).unwrap();
        let before = os.stats.leaf_pte_writes;
        for i in 0..N {
            os.store(page(base, i), i + 1).unwrap();
        }
        assert_eq!(os.machine.platform.stats.guest_faults, N, "{profile}");
        assert_eq!(faults(&os, FaultResolution::DemandZero), N, "{profile}");
        assert_eq!(os.stats.leaf_pte_writes - before, N, "{profile}");
        // update_mmu_cache fences each filled page on RISC-V; x86 never flushes a fill.
        let fence = if profile == "riscv-sv39" { N } else { 0 };
        assert_eq!(flushes(&os, "sfence.vma va,x0"), fence, "{profile}");
        assert_eq!(flushes(&os, "invlpg"), 0, "{profile}");
        // A second pass hits mapped pages: no fault.
        for i in 0..N {
            assert_eq!(os.load(page(base, i)).unwrap(), i + 1);
        }
        assert_eq!(os.machine.platform.stats.guest_faults, N);
    }
}

#[test]
fn nested_faults_on_an_empty_nested_table_are_one_per_guest_frame_first_used() {
    // After boot (whose frames are mapped then), the process's first frames are: its root
    // (zeroed by the kernel: one exit) and its kernel stack (first read by the walk at the
    // first kernel entry: one exit). Each first touch of a data page zeroes a fresh frame (one
    // exit), and the first touch in a 2 MiB region also zeroes a level-0 table page, the first
    // in a 1 GiB region a level-1 table page (Sv39). The mmap area ends 1 GiB-aligned, so N
    // pages need one level-1 table and ceil(N / 512) level-0 tables.
    for n in [300u64, 600] {
        let mut os = boot("riscv-sv39", |p| Nested::new(p, NestedOptions::default()).unwrap());
        let pid = os.spawn().unwrap();
        let base = os.mmap(pid, n, RW).unwrap();
        for i in 0..n {
            os.store(page(base, i), 1).unwrap();
        }
        let exits = os.machine.platform.stats.exits_for(ExitCause::NestedFault);
        assert_eq!(exits, 2 + n + 1 + n.div_ceil(512), "n = {n}");
        assert_eq!(os.machine.platform.stats.total_exits(), exits);
    }
}

#[test]
fn fork_shares_pages_copy_on_write_and_the_last_owner_reuses_them() {
    const H: u64 = 40;
    const W: u64 = 10;
    let mut os = native("riscv-sv39");
    let parent = os.spawn().unwrap();
    os.brk(parent, H).unwrap();
    let heap = os.layout().heap;
    for i in 0..H {
        os.store(page(heap, i), 100 + i).unwrap();
    }
    let leaf_writes = os.stats.leaf_pte_writes;
    let child = os.fork(parent).unwrap();
    // Each present writable parent entry is write-protected and copied: 2 leaf stores.
    assert_eq!(os.stats.leaf_pte_writes - leaf_writes, 2 * H);
    assert_eq!(flushes(&os, "sfence.vma x0,asid"), 1, "dup_mmap ends with flush_tlb_mm");
    os.switch_to(child).unwrap();
    for i in 0..W {
        assert_eq!(os.load(page(heap, i)).unwrap(), 100 + i, "the child sees the parent's data");
        os.store(page(heap, i), 200 + i).unwrap();
    }
    assert_eq!(faults(&os, FaultResolution::CowCopy), W);
    os.switch_to(parent).unwrap();
    for i in 0..W {
        assert_eq!(os.load(page(heap, i)).unwrap(), 100 + i, "the parent keeps its data");
    }
    // The child copied pages 0..W, so the parent is their only owner: reuse in place.
    for i in 0..W {
        os.store(page(heap, i), 300 + i).unwrap();
    }
    assert_eq!(faults(&os, FaultResolution::CowReuse), W);
    // Pages the child did not write are still shared: copies.
    os.store(page(heap, W), 1).unwrap();
    assert_eq!(faults(&os, FaultResolution::CowCopy), W + 1);
    os.exit(child).unwrap();
    os.exit(parent).unwrap();
    // Everything but the boot frames (zero page, kernel root and direct-map tables) is free.
    assert!(os.frames.in_use() < 8, "{} frames leaked", os.frames.in_use());
}

#[test]
fn range_flushes_switch_to_a_full_flush_past_the_linux_thresholds() {
    for (profile, threshold, page_kind, full_kind) in [
        ("riscv-sv39", 64, "sfence.vma va,asid", "sfence.vma x0,asid"),
        ("x86-64", 33, "invlpg", "mov cr3"),
    ] {
        for n in [threshold, threshold + 1] {
            let mut os = native(profile);
            let pid = os.spawn().unwrap();
            let base = os.mmap(pid, n, RW).unwrap();
            for i in 0..n {
                os.store(page(base, i), 1).unwrap();
            }
            let (pages0, full0) = (flushes(&os, page_kind), flushes(&os, full_kind));
            os.munmap(pid, base, n).unwrap();
            let (pages, full) = (flushes(&os, page_kind) - pages0, flushes(&os, full_kind) - full0);
            if n <= threshold {
                assert_eq!((pages, full), (n, 0), "{profile} n = {n}");
            } else {
                assert_eq!((pages, full), (0, 1), "{profile} n = {n}");
            }
            // The unmapped range is gone: touching it kills the process.
            let err = os.load(base).unwrap_err();
            assert!(matches!(err, OsError::Killed { .. }), "{err}");
        }
    }
}

#[test]
fn a_store_to_a_read_only_page_kills_the_process_and_is_reported() {
    let mut os = native("riscv-sv39");
    let pid = os.spawn().unwrap();
    let base = os.mmap(pid, 4, RW).unwrap();
    os.store(base, 7).unwrap();
    os.mprotect(pid, base, 4, Perms::R).unwrap();
    assert_eq!(os.load(base).unwrap(), 7);
    let err = os.store(base, 8).unwrap_err();
    assert!(matches!(err, OsError::Killed { va, .. } if va == base), "{err}");
    assert_eq!(os.stats.killed, 1);
    assert!(os.stats.kill_log[0].contains("killed"), "{:?}", os.stats.kill_log);
    assert_eq!(os.process_count(), 0);
}

#[test]
fn x86_recycles_six_pcids_and_flushes_the_recycled_one() {
    let mut os = native("x86-64");
    let pids: Vec<_> = (0..7).map(|_| os.spawn().unwrap()).collect();
    // spawn switched to the first process once (a fresh PCID: a flushing CR3 load).
    let base = flushes(&os, "mov cr3");
    for &p in &pids[1..] {
        os.switch_to(p).unwrap();
    }
    // Six PCIDs for seven address spaces: each first activation loads CR3 with a flush.
    assert_eq!(flushes(&os, "mov cr3") - base, 6);
    // Process 2 still owns its PCID; process 1's was recycled by process 7.
    os.switch_to(pids[1]).unwrap();
    assert_eq!(flushes(&os, "mov cr3 (no-flush)"), 1);
    os.switch_to(pids[0]).unwrap();
    assert_eq!(flushes(&os, "mov cr3") - base, 7);
}

#[test]
fn riscv_demand_reads_map_the_zero_page_and_the_first_write_replaces_it() {
    let mut os = native("riscv-sv39");
    let pid = os.spawn().unwrap();
    let base = os.mmap(pid, 2, RW).unwrap();
    assert_eq!(os.load(base).unwrap(), 0);
    assert_eq!(faults(&os, FaultResolution::ZeroPage), 1);
    os.store(base, 5).unwrap();
    // The zero page is never written: the write copies (zeroes) a private page.
    assert_eq!(faults(&os, FaultResolution::CowCopy), 1);
    assert_eq!(os.load(base).unwrap(), 5);
    assert_eq!(os.load(page(base, 1)).unwrap(), 0, "the zero page stays zero");
}

#[test]
fn svade_makes_software_set_accessed_and_dirty_bits() {
    let mut p = Profile::builtin("riscv-sv39").unwrap();
    p.set("arch.ad", "fault").unwrap();
    let platform = Platform::new(&p.platform_config().unwrap(), p.costs).unwrap();
    let mut os = Os::boot(Machine::new(platform, Native), p.kernel).unwrap();
    let parent = os.spawn().unwrap();
    let base = os.mmap(parent, 1, RW).unwrap();
    os.store(base, 1).unwrap();
    // The fill sets A and D: no A/D fault yet.
    assert_eq!(faults(&os, FaultResolution::AccessedDirty), 0);
    // fork leaves the child's entry old (A clear): its first read takes an A/D fault.
    let child = os.fork(parent).unwrap();
    os.switch_to(child).unwrap();
    assert_eq!(os.load(base).unwrap(), 1);
    assert_eq!(faults(&os, FaultResolution::AccessedDirty), 1);
}

#[test]
fn the_guest_running_out_of_memory_is_a_clear_error() {
    let mut profile = Profile::builtin("riscv-sv39").unwrap();
    profile.set("memory.guest_mib", "16").unwrap();
    let spec = RunSpec {
        scheme: SchemeKind::Native,
        workload: WorkloadKind::Pagefault,
        workload_sets: vec![("pages".into(), "10000".into())],
        scheme_sets: Vec::new(),
        profile,
        seed: 1,
        verify: false,
        traces: None,
        warmup: 0,
    };
    let err = run(&spec, &mut |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("guest") && err.contains("memory"), "{err}");
}

#[test]
fn the_same_seed_gives_the_same_report_and_another_seed_another() {
    let spec = |seed| RunSpec {
        scheme: SchemeKind::Nested,
        workload: WorkloadKind::Random,
        workload_sets: vec![("pages".into(), "2000".into()), ("updates".into(), "20000".into())],
        scheme_sets: Vec::new(),
        profile: Profile::builtin("riscv-sv39").unwrap(),
        seed,
        verify: false,
        traces: None,
        warmup: 0,
    };
    let json = |seed| serde_json::to_string(&run(&spec(seed), &mut |_, _| {}).unwrap()).unwrap();
    assert_eq!(json(3), json(3));
    assert_ne!(json(3), json(4));
}
