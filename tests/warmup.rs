//! Warm-up (`--warmup`, `--length steady`) and the one compute model (issue 19, items 1 and 7),
//! on scenarios small enough to count by hand.

mod common;

use memvirt::report::Report;
use memvirt::run::{self, RunError, RunSpec};
use memvirt::scheme::SchemeKind;
use memvirt::workload::WorkloadKind;

fn pagefault(scheme: SchemeKind, pages: &str, warmup: u64) -> RunSpec {
    let sets = [("pages", pages)];
    RunSpec { warmup, ..common::spec(scheme, WorkloadKind::Pagefault, &sets, "riscv-sv39") }
}

#[test]
fn a_warm_up_of_n_accesses_leaves_exactly_the_rest_counted() -> Result<(), RunError> {
    // pagefault stores once to each of 100 fresh pages: each store faults once. A warm-up of 40
    // accesses leaves the last 60 stores, and so 60 faults, counted; the compute model charges
    // 2 instructions per user access at 1 cycle each: 120 cycles.
    for scheme in [SchemeKind::Native, SchemeKind::Nested, SchemeKind::Tsp, SchemeKind::Ssp] {
        let r = run::run(&pagefault(scheme, "100", 40), &mut |_, _| {})?;
        assert_eq!(r.guest_page_faults, 60, "{}", scheme.name());
        let demand: u64 = r.guest.faults.values().sum();
        assert_eq!(demand, 60, "{}", scheme.name());
        assert_eq!(r.cycles_by_category.compute, 120, "{}", scheme.name());
        assert_eq!(r.compute.instructions, 120);
        let w = r.warmup.as_ref().ok_or("no warmup section").map_err(sim)?;
        assert_eq!((w.unit.as_str(), w.requested, w.accesses), ("accesses", 40, 40));
    }
    // Without a warm-up all 100 count, and there is no warmup section.
    let r = run::run(&pagefault(SchemeKind::Native, "100", 0), &mut |_, _| {})?;
    assert_eq!((r.guest_page_faults, r.cycles_by_category.compute), (100, 200));
    assert!(r.warmup.is_none());
    Ok(())
}

fn sim(e: &str) -> RunError {
    RunError::Config(memvirt::config::ConfigError::Invalid(e.to_owned()))
}

#[test]
fn a_warm_up_zeroes_the_schemes_own_counters_too() -> Result<(), RunError> {
    // Under TSP each demand fault of pagefault stores one PTE into a write-protected leaf table:
    // one write-protect exit and one emulated write; the teardown at exit then clears the 100
    // PTEs and the directory entries, which the warm-up cannot hide. Warming up for 99 stores
    // therefore leaves exactly 99 fewer of each, one injected fault instead of 100, and no
    // shadow table created (the one there is was built during the warm-up).
    let all = run::run(&pagefault(SchemeKind::Tsp, "100", 0), &mut |_, _| {})?;
    let last = run::run(&pagefault(SchemeKind::Tsp, "100", 99), &mut |_, _| {})?;
    let exits = |r: &Report, c: &str| r.vm_exits.by_cause.get(c).copied().unwrap_or(0);
    let counter = |r: &Report, c: &str| r.scheme_counters.get(c).copied().unwrap_or(0);
    assert_eq!(exits(&all, "guest_fault_injection"), 100);
    assert_eq!(exits(&last, "guest_fault_injection"), 1);
    assert_eq!(exits(&last, "write_protect") + 99, exits(&all, "write_protect"));
    assert_eq!(counter(&last, "emulated_writes") + 99, counter(&all, "emulated_writes"));
    assert_eq!(counter(&all, "shadow_tables_created"), 1);
    assert_eq!(counter(&last, "shadow_tables_created"), 0);
    // The guest did the same: one history.
    assert_eq!(all.guest.history, last.guest.history);
    Ok(())
}

#[test]
fn a_warm_up_as_long_as_the_workload_is_an_error() {
    let e = run::run(&pagefault(SchemeKind::Native, "100", 100), &mut |_, _| {})
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("--warmup 100 is not shorter than the workload"), "{e}");
    assert!(e.contains("the whole run made 100"), "{e}");
}

#[test]
fn retried_accesses_are_not_charged_as_compute_twice() -> Result<(), RunError> {
    // Every store of pagefault faults and is made again: the MMU sees 200 user accesses (and
    // the kernel's own), the program made 100. With 3 instructions per access at 2 cycles each
    // the compute is 100 x 3 x 2.
    let mut spec = pagefault(SchemeKind::Native, "100", 0);
    spec.profile.set("costs.instructions_per_access", "3").map_err(RunError::Config)?;
    spec.profile.set("costs.cycles_per_instruction", "2").map_err(RunError::Config)?;
    let r = run::run(&spec, &mut |_, _| {})?;
    assert_eq!(r.cycles_by_category.compute, 600);
    assert_eq!(r.compute.model, "per-access");
    assert_eq!(r.compute.instructions_per_access, Some(3));
    assert!(r.accesses >= 200);
    Ok(())
}

#[test]
fn steady_state_lengths_are_longer_and_warm_up_over_the_short_run() -> Result<(), RunError> {
    for w in WorkloadKind::ALL {
        let steady = w.steady_state();
        let short = w.estimated_accesses(&[])?;
        let long = w.estimated_accesses(&steady.owned_sets())?;
        assert_eq!(u128::from(steady.warmup), short, "{}", w.name());
        // The counted part is at least three times the warm-up.
        assert!(long >= 4 * short, "{}: {long} vs {short}", w.name());
        // Its settings are the workload's own parameters.
        w.build(1, &steady.owned_sets())?;
    }
    Ok(())
}

#[test]
fn a_warm_up_changes_what_is_counted_never_what_the_guest_does() -> Result<(), RunError> {
    for w in WorkloadKind::ALL {
        let sets = common::small(w);
        let cold = common::spec(SchemeKind::Nested, w, &sets, "riscv-sv39");
        let half = u64::try_from(w.estimated_accesses(&cold.workload_sets)? / 2).unwrap_or(0);
        let warm = RunSpec { warmup: half, ..cold.clone() };
        let (a, b) = (run::run(&cold, &mut |_, _| {})?, run::run(&warm, &mut |_, _| {})?);
        assert_eq!(a.guest.history, b.guest.history, "{}", w.name());
        assert!(b.accesses < a.accesses, "{}", w.name());
        assert!(b.cycles < a.cycles, "{}", w.name());
        assert_eq!(b.warmup.as_ref().map(|w| w.accesses), Some(half), "{}", w.name());
        // Deterministic: the same warm run again gives the same report.
        assert_eq!(run::run(&warm, &mut |_, _| {})?, b, "{}", w.name());
    }
    Ok(())
}

/// The TLB's hit memo is off while a warm-up counts user accesses, so that every access reaches
/// the count: on runs of repeated L1 hits, with one vCPU and with two, the warm-up ends after
/// exactly the accesses asked for; and the counters, memo hits included, add up to the accesses.
#[test]
fn a_warm_up_of_l1_hits_ends_after_exactly_its_accesses() -> Result<(), RunError> {
    let stream = [("pages", "8"), ("passes", "40")];
    // Three threads over 8 shared pages, on two vCPUs.
    let threads = [("threads", "3"), ("pages", "8"), ("accesses", "8000"), ("buffer_every", "0")];
    for (w, sets, vcpus) in
        [(WorkloadKind::Stream, &stream[..], 1), (WorkloadKind::Threads, &threads[..], 2)]
    {
        let mut spec = common::spec(SchemeKind::Nested, w, sets, "riscv-sv39");
        spec.profile.set("smp.vcpus", &vcpus.to_string()).expect("a valid vCPU count");
        let cold = run::run(&spec, &mut |_, _| {})?;
        spec.warmup = 5_000;
        let warm = run::run(&spec, &mut |_, _| {})?;
        for r in [&cold, &warm] {
            let t = &r.tlb;
            assert_eq!(t.l1_hits + t.l2_hits + t.misses, r.accesses, "{}", w.name());
            // Mostly hits: most of them are the memo's.
            assert!(t.l1_hits * 10 > r.accesses * 9, "{}: {t:?}", w.name());
        }
        assert_eq!(warm.warmup.as_ref().map(|w| w.accesses), Some(5_000), "{}", w.name());
        assert_eq!(cold.guest.history, warm.guest.history, "{}", w.name());
    }
    Ok(())
}
