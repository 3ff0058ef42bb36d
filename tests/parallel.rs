//! `compare` runs its (workload, scheme) runs in parallel: the reports must not depend on the
//! number of threads, and come back grouped by workload in the order of the schemes.

mod common;

use memvirt::run::{compare, compare_parallel};
use memvirt::scheme::SchemeKind;
use memvirt::workload::WorkloadKind;

#[test]
fn parallel_compare_gives_the_sequential_reports_in_order_for_any_thread_count() {
    let schemes = [SchemeKind::Ssp, SchemeKind::Nested, SchemeKind::Tsp];
    let specs: Vec<_> = [WorkloadKind::Fork, WorkloadKind::Random, WorkloadKind::Threads]
        .into_iter()
        .map(|w| common::spec(SchemeKind::Ssp, w, &common::small(w), "riscv-sv39"))
        .collect();
    let sequential: Vec<_> =
        specs.iter().map(|s| compare(s, &schemes, &mut |_, _, _| {}).unwrap()).collect();
    let json = |r: &Vec<Vec<memvirt::report::Report>>| serde_json::to_string(r).unwrap();
    for jobs in [1, 2, 3] {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let finished = |_: usize, total: usize| {
            assert_eq!(total, 3 * 4, "three schemes and native per workload");
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        let parallel = compare_parallel(&specs, &schemes, jobs, &finished).unwrap();
        assert_eq!(json(&parallel), json(&sequential), "{jobs} threads");
        assert_eq!(calls.into_inner(), 12);
        let names: Vec<_> = parallel[0].iter().map(|r| r.scheme.as_str()).collect();
        assert_eq!(names, ["ssp", "nested", "tsp"]);
        assert!(parallel[1][0].overhead_vs_native.is_some());
    }
}
