//! Every built-in workload under every scheme, and counts derived by hand for small scenarios.

use memvirt::profile::Profile;
use memvirt::run::{run, RunSpec};
use memvirt::scheme::SchemeKind;
use memvirt::workload::WorkloadKind;

fn spec(scheme: SchemeKind, workload: WorkloadKind, sets: &[(&str, &str)]) -> RunSpec {
    RunSpec {
        scheme,
        workload,
        workload_sets: sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        scheme_sets: Vec::new(),
        profile: Profile::builtin("riscv-sv39").expect("built-in profile"),
        seed: 1,
    }
}

/// Parameters that keep each workload small enough for a test.
fn small(w: WorkloadKind) -> Vec<(&'static str, &'static str)> {
    match w {
        WorkloadKind::Pagefault => vec![("pages", "300")],
        WorkloadKind::Fork => {
            vec![("heap_pages", "64"), ("forks", "5"), ("child_writes", "8"), ("child_reads", "8")]
        }
        WorkloadKind::Exec => vec![("processes", "5"), ("pages", "8")],
        WorkloadKind::Mmap => vec![("iterations", "20"), ("pages", "70")],
        WorkloadKind::Ctxsw => vec![("processes", "3"), ("turns", "20")],
        WorkloadKind::Random => vec![("pages", "512"), ("updates", "5000")],
        WorkloadKind::Stream => vec![("pages", "64"), ("passes", "2")],
        WorkloadKind::PointerChase => vec![("pages", "512"), ("loads", "5000")],
        WorkloadKind::Server => vec![("workers", "3"), ("requests", "10"), ("shared_pages", "128")],
        WorkloadKind::LspMicro => vec![("pages", "64"), ("operations", "1000")],
    }
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
