//! Differential runs (DESIGN.md §7): every scheme, given the same workload, profile and seed,
//! must give the guest the same history — the faults it was delivered and the content tokens it
//! read. A difference is a bug in a scheme.

use memvirt::profile::Profile;
use memvirt::run::{run, RunSpec};
use memvirt::scheme::SchemeKind;
use memvirt::workload::WorkloadKind;

/// Parameters that keep each workload small enough for a test.
fn small(w: WorkloadKind) -> Vec<(String, String)> {
    let sets: &[(&str, &str)] = match w {
        WorkloadKind::Pagefault => &[("pages", "200")],
        WorkloadKind::Fork => {
            &[("heap_pages", "48"), ("forks", "4"), ("child_writes", "8"), ("child_reads", "8")]
        }
        WorkloadKind::Exec => &[("processes", "4"), ("pages", "8")],
        WorkloadKind::Mmap => &[("iterations", "12"), ("pages", "70")],
        WorkloadKind::Ctxsw => &[("processes", "10"), ("turns", "30")],
        WorkloadKind::Random => &[("pages", "400"), ("updates", "3000")],
        WorkloadKind::Stream => &[("pages", "64"), ("passes", "2")],
        WorkloadKind::PointerChase => &[("pages", "400"), ("loads", "3000")],
        WorkloadKind::Server => &[("workers", "3"), ("requests", "8"), ("shared_pages", "96")],
        WorkloadKind::LspMicro => &[("pages", "64"), ("operations", "1000")],
        WorkloadKind::Threads => {
            &[("threads", "3"), ("pages", "256"), ("accesses", "2000"), ("buffer_every", "200")]
        }
    };
    sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn every_scheme_gives_the_guest_the_same_history() {
    for profile in ["riscv-sv39", "x86-64"] {
        let profile = Profile::builtin(profile).unwrap();
        for seed in 1..=3 {
            for w in WorkloadKind::ALL {
                let mut seen: Option<(String, u64, &str)> = None;
                for &s in SchemeKind::ALL {
                    let spec = RunSpec {
                        scheme: s,
                        workload: w,
                        workload_sets: small(w),
                        scheme_sets: Vec::new(),
                        profile: profile.clone(),
                        seed,
                        verify: false,
                        traces: None,
                        warmup: 0,
                    };
                    let r = run(&spec, &mut |_, _| {}).unwrap_or_else(|e| {
                        panic!("{} on {} ({}, seed {seed}): {e}", s.name(), w.name(), profile.name)
                    });
                    let got = (r.guest.history.clone(), r.guest_page_faults);
                    match &seen {
                        None => seen = Some((got.0, got.1, s.name())),
                        Some((h, f, first)) => assert_eq!(
                            (&got.0, got.1),
                            (h, *f),
                            "{} on {} ({}, seed {seed}) differs from {first}",
                            s.name(),
                            w.name(),
                            profile.name
                        ),
                    }
                }
            }
        }
    }
}

/// Workloads large enough to hold whole 2 MiB pages, and the parts of THP each exercises:
/// copy-on-write splits (`fork`), whole and partial unmaps (`mmap`), huge fills and the huge
/// zero page (`random`), splits for page migration (`lsp-micro`).
fn huge(w: WorkloadKind) -> Vec<(String, String)> {
    let sets: &[(&str, &str)] = match w {
        WorkloadKind::Fork => {
            &[("heap_pages", "1100"), ("forks", "3"), ("child_writes", "40"), ("child_reads", "40")]
        }
        WorkloadKind::Mmap => &[("iterations", "4"), ("pages", "1024")],
        WorkloadKind::Random => &[("pages", "1200"), ("updates", "4000")],
        WorkloadKind::LspMicro => &[("pages", "1024"), ("operations", "600")],
        _ => &[],
    };
    sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn with_huge_pages_in_either_stage_every_scheme_still_gives_the_same_verified_history() {
    let workloads =
        [WorkloadKind::Fork, WorkloadKind::Mmap, WorkloadKind::Random, WorkloadKind::LspMicro];
    for profile in ["riscv-sv39", "x86-64"] {
        let mut profile = Profile::builtin(profile).unwrap();
        profile.set("kernel.thp", "always").unwrap();
        for w in workloads {
            let mut seen: Option<(String, u64, String)> = None;
            let mut huge_faults = 0;
            for host_page in ["4k", "2m", "1g"] {
                for &s in SchemeKind::ALL {
                    let spec = RunSpec {
                        scheme: s,
                        workload: w,
                        workload_sets: huge(w),
                        scheme_sets: vec![("host_page".into(), host_page.into())],
                        profile: profile.clone(),
                        seed: 1,
                        verify: true,
                        traces: None,
                        warmup: 0,
                    };
                    let who = format!(
                        "{} on {} ({}, host {host_page})",
                        s.name(),
                        w.name(),
                        profile.name
                    );
                    let r = run(&spec, &mut |_, _| {}).unwrap_or_else(|e| panic!("{who}: {e}"));
                    huge_faults = r.guest.faults["huge_demand_zero"];
                    let got = (r.guest.history.clone(), r.guest_page_faults);
                    match &seen {
                        None => seen = Some((got.0, got.1, who)),
                        Some((h, f, first)) => {
                            assert_eq!((&got.0, got.1), (h, *f), "{who} differs from {first}")
                        }
                    }
                }
            }
            assert!(huge_faults > 0, "{} maps huge pages on {}", w.name(), profile.name);
        }
    }
}
