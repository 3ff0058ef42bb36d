//! Every built-in workload under every scheme, and counts derived by hand for small scenarios.

mod common;

use common::small;
use memvirt::run::{run, RunSpec};
use memvirt::scheme::SchemeKind;
use memvirt::workload::WorkloadKind;

fn spec(scheme: SchemeKind, workload: WorkloadKind, sets: &[(&str, &str)]) -> RunSpec {
    common::spec(scheme, workload, sets, "riscv-sv39")
}

#[test]
fn every_workload_runs_under_every_scheme_with_the_same_guest_history() {
    for w in WorkloadKind::ALL {
        let mut histories = Vec::new();
        for &s in SchemeKind::ALL {
            let r = run(&spec(s, w, &small(w)), &mut |_, _| {})
                .unwrap_or_else(|e| panic!("{} on {}: {e}", s.name(), w.name()));
            assert!(r.accesses > 0, "{} on {} made no access", s.name(), w.name());
            assert_eq!(r.guest.killed, 0, "{} on {}: {:?}", s.name(), w.name(), r.guest.kill_log);
            histories.push((s.name(), r.guest.history.clone(), r.guest_page_faults));
        }
        let first = &histories[0];
        for h in &histories[1..] {
            assert_eq!(
                (&h.1, h.2),
                (&first.1, first.2),
                "{}: {} differs from {}",
                w.name(),
                h.0,
                first.0
            );
        }
    }
}

/// The estimate that bounds and warns about long runs is of the right size: for every workload
/// (small parameters), the user accesses it counts are at least a fifth of what a native run
/// simulates, the rest being the guest kernel's (3 accesses per demand fault at these sizes).
#[test]
fn the_estimated_accesses_are_close_to_the_simulated_ones() {
    for w in WorkloadKind::ALL {
        let sets: Vec<(String, String)> =
            small(w).iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let estimate = w.estimated_accesses(&sets).expect("valid parameters");
        let r = run(&spec(SchemeKind::Native, w, &small(w)), &mut |_, _| {}).expect("runs");
        let simulated = u128::from(r.accesses);
        assert!(
            estimate <= simulated && simulated <= 5 * estimate,
            "{}: estimated {estimate}, simulated {simulated}",
            w.name()
        );
    }
    // The bound: ctxsw.turns x accesses_per_turn beyond 2^46 is refused, naming the count.
    let huge = [("turns".to_owned(), "1099511627776".to_owned())];
    let e = WorkloadKind::Ctxsw.build(1, &huge).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("simulated accesses") && e.contains("2^46"), "{e}");
}
