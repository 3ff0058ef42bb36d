//! `memvirt experiment`: an experiment file's points run into one result file each, resume after
//! an interruption, split into chunks that together give the same files, and collect into the
//! same reports `memvirt compare` prints; bad files, flags and directories are refused by name.

mod common;

use common::result_files;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn memvirt<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memvirt")).args(args).output().expect("the binary runs")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn failure(out: &Output) -> String {
    assert!(!out.status.success(), "should fail: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn scratch(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("memvirt-experiment-{test}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// 2 profiles × 2 vCPU counts × 2 seeds × 1 workload × (nested, ssp and native as the
/// baseline) = 24 points, 16 of them collected.
const SMALL: &str = r#"
description = "a test"
profiles = ["riscv-sv39", "x86-64"]
schemes = ["nested", "ssp"]
workloads = ["pagefault"]
seeds = [1, 2]
[set]
workload.pages = 300
[vary]
smp.vcpus = [1, 2]
"#;

fn write_experiment(dir: &Path, text: &str) -> PathBuf {
    let file = dir.join("small.toml");
    fs::write(&file, text).unwrap();
    file
}

#[test]
fn points_run_into_files_and_collect_into_the_reports_compare_prints() {
    let dir = scratch("collect");
    let file = write_experiment(&dir, SMALL);
    let out = ok(&memvirt(&["experiment", "run", file.to_str().unwrap(), "--jobs", "2"]));
    assert!(out.contains("24 points, 0 done before, 24 run now, 0 failed"), "{out}");
    let results = dir.join("small.results");
    assert_eq!(result_files(&results).len(), 24);
    assert!(results.join("experiment.toml").is_file());

    let json =
        ok(&memvirt(&["experiment", "collect", results.to_str().unwrap(), "--format", "json"]));
    let collected: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(collected["points"], 16);
    assert_eq!(collected["collected"], 16);
    let rows = collected["results"].as_array().unwrap();
    assert_eq!(rows.len(), 16);
    assert!(rows.iter().all(|r| r["scheme"] != "native"));

    // One combination, as `compare` runs it: the same reports, overhead included.
    let compare = ok(&memvirt(&[
        "compare",
        "--profile",
        "x86-64",
        "--vcpus",
        "2",
        "--seed",
        "2",
        "--schemes",
        "nested,ssp",
        "--workloads",
        "pagefault",
        "--set",
        "workload.pages=300",
        "--format",
        "json",
    ]));
    let compared: serde_json::Value = serde_json::from_str(&compare).unwrap();
    let picked: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r["profile"] == "x86-64" && r["settings"]["smp.vcpus"] == "2" && r["seed"] == 2)
        .map(|r| &r["report"])
        .collect();
    assert_eq!(picked.len(), 2);
    assert_eq!(picked[0], &compared[0]);
    assert_eq!(picked[1], &compared[1]);
    assert!(picked[1]["overhead_vs_native"].as_f64().is_some());

    // The table and CSV carry the settings that tell the points apart.
    let table = ok(&memvirt(&["experiment", "collect", results.to_str().unwrap()]));
    let header = table.lines().nth(1).unwrap();
    assert!(
        header.starts_with("profile") && header.contains("smp.vcpus") && header.contains("seed")
    );
    assert_eq!(table.lines().filter(|l| l.contains("pagefault")).count(), 16);
    let csv =
        ok(&memvirt(&["experiment", "collect", results.to_str().unwrap(), "--format", "csv"]));
    assert!(csv.starts_with("point_profile,smp.vcpus,scheme,workload,profile,seed,"), "{csv}");
    assert_eq!(csv.lines().count(), 17);

    // Charts: one bar chart per (profile, vCPUs, seed), one line per (profile, seed, workload)
    // over the numeric vCPU key.
    let charts = dir.join("charts");
    ok(&memvirt(&[
        "experiment",
        "collect",
        results.to_str().unwrap(),
        "--svg",
        charts.to_str().unwrap(),
    ]));
    let names: Vec<String> = fs::read_dir(&charts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert_eq!(names.iter().filter(|n| n.starts_with("bars-")).count(), 8, "{names:?}");
    assert_eq!(
        names.iter().filter(|n| n.starts_with("smp.vcpus-pagefault")).count(),
        4,
        "{names:?}"
    );
    assert!(names.iter().all(|n| fs::read_to_string(charts.join(n)).unwrap().starts_with("<svg")));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn an_interrupted_or_chunked_run_resumes_to_the_same_bytes() {
    let dir = scratch("resume");
    let file = write_experiment(&dir, SMALL);
    let whole = dir.join("whole");
    let f = file.to_str().unwrap();
    ok(&memvirt(&["experiment", "run", f, "--results", whole.to_str().unwrap(), "--jobs", "1"]));
    let expected = result_files(&whole);

    // In two chunks, as two array tasks run it; collect refuses the half-done directory.
    let chunked = dir.join("chunked");
    let c = chunked.to_str().unwrap();
    let first = ok(&memvirt(&["experiment", "run", f, "--results", c, "--chunk", "0/2"]));
    assert!(first.contains("(chunk 0/2: 12 of them), 0 done before, 12 run now"), "{first}");
    let err = failure(&memvirt(&["experiment", "collect", c]));
    assert!(err.contains("12 of 24 points have no result yet"), "{err}");
    let partial = ok(&memvirt(&["experiment", "collect", c, "--partial", "--format", "json"]));
    let partial: serde_json::Value = serde_json::from_str(&partial).unwrap();
    assert_eq!(partial["collected"], 8);
    let status = ok(&memvirt(&["experiment", "status", c]));
    assert!(status.contains("24 points, 12 done, 12 to run"), "{status}");
    ok(&memvirt(&["experiment", "run", f, "--results", c, "--chunk", "1/2"]));
    assert_eq!(result_files(&chunked), expected);

    // Lost results run again, and only they.
    let gone: Vec<PathBuf> =
        fs::read_dir(chunked.join("points")).unwrap().take(3).map(|e| e.unwrap().path()).collect();
    for g in &gone {
        fs::remove_file(g).unwrap();
    }
    let again = ok(&memvirt(&["experiment", "run", f, "--results", c]));
    assert!(again.contains("21 done before, 3 run now"), "{again}");
    assert_eq!(result_files(&chunked), expected);

    // An edited experiment keeps the results of the points it still has.
    fs::write(&file, SMALL.replace("seeds = [1, 2]", "seeds = [1, 2, 3]")).unwrap();
    let more = ok(&memvirt(&["experiment", "run", f, "--results", c]));
    assert!(more.contains("36 points, 24 done before, 12 run now"), "{more}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_trace_is_a_workload_of_the_experiment() {
    let dir = scratch("trace");
    let trace = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/small.lackey");
    fs::copy(&trace, dir.join("small.lackey")).unwrap();
    let file = write_experiment(
        &dir,
        "schemes = [\"nested\"]\ntraces = [\"small.lackey\"]\n[vary]\n\"costs.vm_exit\" = [1000, 3000]\n",
    );
    let out = ok(&memvirt(&["experiment", "run", file.to_str().unwrap()]));
    assert!(out.contains("4 points"), "{out}");
    let json = ok(&memvirt(&[
        "experiment",
        "collect",
        dir.join("small.results").to_str().unwrap(),
        "--format",
        "json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rows = v["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows[0]["workload"].as_str().unwrap().ends_with("small.lackey"));
    assert_eq!(rows[0]["report"]["workload"], "small.lackey");
    // The same trace under a dearer exit costs more.
    assert!(rows[1]["report"]["cycles"].as_u64() > rows[0]["report"]["cycles"].as_u64());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn submit_dry_run_prints_the_array_script_and_writes_nothing() {
    let dir = scratch("dry-run");
    let file = write_experiment(&dir, SMALL);
    let script = ok(&memvirt(&[
        "experiment",
        "submit",
        file.to_str().unwrap(),
        "--dry-run",
        "--points-per-task",
        "5",
        "--cpus-per-task",
        "2",
        "--sbatch-arg=--mem=1G",
    ]));
    // 24 points, 5 per task: 5 tasks.
    assert!(script.contains("#SBATCH --array=0-4\n"), "{script}");
    assert!(script.contains("#SBATCH --cpus-per-task=2\n"));
    assert!(script.contains("#SBATCH --mem=1G\n"));
    assert!(script.contains("--chunk \"${SLURM_ARRAY_TASK_ID}/5\""));
    assert!(script.contains("small.results/experiment.toml"));
    assert!(!dir.join("small.results").exists(), "a dry run writes nothing");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn bad_experiments_flags_and_directories_are_refused_by_name() {
    let dir = scratch("bad");
    let run = |text: &str| {
        let file = write_experiment(&dir, text);
        failure(&memvirt(&["experiment", "run", file.to_str().unwrap()]))
    };
    let e = run("schemes = [\"nested\"]\nworkload = [\"fork\"]\n");
    assert!(e.contains("small.toml") && e.contains("line 2") && e.contains("unknown field"), "{e}");
    let e = run("[vary]\n\"tlb.l1.entries\" = [64, -3]\n");
    assert!(e.contains("tlb.l1.entries") && e.contains("profile riscv-sv39"), "{e}");
    let e = run("workloads = [\"fork\"]\n[set]\n\"workload.pages\" = 3\n");
    assert!(e.contains("no workload of the experiment has a parameter `pages`"), "{e}");
    let e = run("profiles = [\"missing.toml\"]\n");
    assert!(e.contains("missing.toml"), "{e}");
    let e = run("traces = [\"nothing-here.mvt\"]\n");
    assert!(e.contains("nothing-here.mvt"), "{e}");
    assert!(!dir.join("small.results").exists(), "nothing runs before every point is checked");

    let file = write_experiment(&dir, SMALL);
    let f = file.to_str().unwrap();
    let e = failure(&memvirt(&["experiment", "run", f, "--chunk", "2/2"]));
    assert!(e.contains("0 <= I < N"), "{e}");
    let e = failure(&memvirt(&["experiment", "collect", dir.to_str().unwrap()]));
    assert!(e.contains("is not a results directory"), "{e}");

    // A directory of another experiment is not mixed into.
    let other = write_experiment(&dir, "name = \"other\"\nschemes = [\"nested\"]\nworkloads = [\"pagefault\"]\n[set]\nworkload.pages = 50\n");
    let shared = dir.join("shared");
    ok(&memvirt(&[
        "experiment",
        "run",
        other.to_str().unwrap(),
        "--results",
        shared.to_str().unwrap(),
    ]));
    fs::write(&file, SMALL).unwrap();
    let e = failure(&memvirt(&["experiment", "run", f, "--results", shared.to_str().unwrap()]));
    assert!(e.contains("holds the results of experiment `other`, not `small`"), "{e}");

    // A damaged result file is named, not trusted or silently replaced.
    let damaged = fs::read_dir(shared.join("points")).unwrap().next().unwrap().unwrap().path();
    fs::write(&damaged, "{").unwrap();
    let e = failure(&memvirt(&["experiment", "collect", shared.to_str().unwrap()]));
    assert!(
        e.contains(damaged.file_name().unwrap().to_str().unwrap()) && e.contains("remove the file"),
        "{e}"
    );
    let _ = fs::remove_dir_all(&dir);
}
