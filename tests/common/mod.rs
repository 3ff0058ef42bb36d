//! Helpers shared by the integration tests that run whole workloads.

use memvirt::profile::Profile;
use memvirt::run::RunSpec;
use memvirt::scheme::SchemeKind;
use memvirt::workload::WorkloadKind;

/// Parameters that keep each workload small enough for a test.
#[allow(dead_code)] // every test binary compiles its own copy of this module; not all use it
pub fn small(w: WorkloadKind) -> Vec<(&'static str, &'static str)> {
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
        WorkloadKind::Threads => {
            vec![("threads", "3"), ("pages", "256"), ("accesses", "2000"), ("buffer_every", "200")]
        }
    }
}

/// `scheme` on `workload` with the `sets` parameters under the built-in `profile`, seed 1, not
/// verified.
#[allow(dead_code)] // see `small`
pub fn spec(
    scheme: SchemeKind,
    workload: WorkloadKind,
    sets: &[(&str, &str)],
    profile: &str,
) -> RunSpec {
    RunSpec {
        workload_sets: sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..RunSpec::new(scheme, workload, Profile::builtin(profile).expect("built-in profile"))
    }
}

/// Every file in `dir/points` (an experiment's results directory), name and bytes, sorted.
#[allow(dead_code)] // every test binary compiles its own copy of this module; not all use it
pub fn result_files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("points"))
        .expect("a results directory")
        .map(|e| {
            let e = e.expect("a directory entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("a result file"),
            )
        })
        .collect();
    files.sort();
    files
}
