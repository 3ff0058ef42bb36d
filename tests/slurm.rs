//! `memvirt experiment submit` on a real Slurm: a one-node cluster on localhost
//! (`scripts/slurm-cluster.sh start`: munged, slurmctld and slurmd with a generated slurm.conf,
//! all inside a scratch directory) runs an experiment as a job array, and its result files and
//! collected table are byte for byte those of a local run.
//!
//! `scripts/test.sh` installs Debian's `slurm-wlm` and `munge` and sets MEMVIRT_REQUIRE_SLURM,
//! so that there a cluster that cannot start fails the test. Elsewhere the test says why it
//! cannot run and passes.

mod common;

use common::result_files;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-cluster.sh")
}

/// The cluster of one test, stopped when dropped.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
}

impl Cluster {
    /// Starts a cluster in `dir`, or says why it cannot.
    fn start(dir: &Path) -> Result<Cluster, String> {
        let out = Command::new(script())
            .args(["start", dir.to_str().unwrap()])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
        if !out.status.success() {
            let _ = Command::new(script()).args(["stop", dir.to_str().unwrap()]).status();
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        let conf = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(Cluster { dir: dir.to_owned(), conf })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).args(["stop", self.dir.to_str().unwrap()]).status();
    }
}

fn memvirt(args: &[&str], conf: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_memvirt"));
    command.args(args);
    if let Some(conf) = conf {
        command.env("SLURM_CONF", conf);
    }
    command.output().expect("the binary runs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// 2 seeds × 2 exit costs × 2 workloads × (nested, ssp, native) = 24 points.
const EXPERIMENT: &str = r#"
name = "slurm-test"
schemes = ["nested", "ssp"]
workloads = ["pagefault", "fork"]
seeds = [1, 2]
[set]
workload.pages = 200
workload.forks = 5
[vary]
"costs.vm_exit" = [1000, 2000]
"#;

#[test]
fn a_job_array_gives_the_local_run_s_results_byte_for_byte() {
    let dir = std::env::temp_dir().join(format!("memvirt-slurm-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("cluster")).unwrap();
    let cluster = match Cluster::start(&dir.join("cluster")) {
        Ok(c) => c,
        Err(why) => {
            assert!(
                std::env::var_os("MEMVIRT_REQUIRE_SLURM").is_none(),
                "MEMVIRT_REQUIRE_SLURM is set but the one-node Slurm cluster did not start: {why}"
            );
            eprintln!("skipped: no one-node Slurm cluster here ({why}); scripts/slurm-cluster.sh install sets one up");
            let _ = fs::remove_dir_all(&dir);
            return;
        }
    };
    let file = dir.join("slurm-test.toml");
    fs::write(&file, EXPERIMENT).unwrap();
    let f = file.to_str().unwrap();
    let local = dir.join("local");
    ok(&memvirt(&["experiment", "run", f, "--results", local.to_str().unwrap()], None));

    let remote = dir.join("remote");
    let submitted = ok(&memvirt(
        &[
            "experiment",
            "submit",
            f,
            "--results",
            remote.to_str().unwrap(),
            "--tasks",
            "3",
            "--wait",
        ],
        Some(&cluster.conf),
    ));
    assert!(submitted.contains("24 points as job"), "{submitted}");
    assert!(submitted.contains("3 array tasks"), "{submitted}");
    // One log per array task, each saying it ran its third of the points.
    let logs: Vec<String> = fs::read_dir(remote.join("slurm"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "out"))
        .map(|p| fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(logs.len(), 3, "{logs:?}");
    assert!(
        logs.iter().all(|l| l.contains("8 of them), 0 done before, 8 run now, 0 failed")),
        "{logs:?}"
    );

    assert_eq!(result_files(&remote), result_files(&local));
    for format in ["json", "csv"] {
        let collect = |d: &Path| {
            ok(&memvirt(&["experiment", "collect", d.to_str().unwrap(), "--format", format], None))
        };
        assert_eq!(collect(&remote), collect(&local), "collect --format {format}");
    }
    drop(cluster);
    let _ = fs::remove_dir_all(&dir);
}
