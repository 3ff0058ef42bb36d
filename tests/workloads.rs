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
