//! `memvirt sweep` on a tiny LSP micro-benchmark (32 pages, 200 operations, ratios 0, 0.5 and
//! 1, schemes tsp and lsp), checked against counts derived by hand, and the command line's
//! SVG, JSON and error handling. Each run takes milliseconds.
//!
//! The counts: the workload first touches its `PAGES` pages (a demand fault each, and the
//! `sfence.vma va` Linux issues after filling a non-present entry), then runs `OPS` operations
//! on page `i mod PAGES`: a modification moves the page to a new frame (one PTE store, one
//! `sfence.vma va, asid`), any other operation loads from it; the process's exit flushes its
//! ASID (`sfence.vma x0, asid`). Under TSP every guest page-table store to a write-protected
//! page and every flush is a VM exit, so a modification costs exactly 2 exits. Under LSP the
//! single-address flush is a hardware-mode trap and the PTE store is not intercepted, so a
//! modification costs 1 trap, plus a re-sync exit only if the page is accessed again before
//! the next flush. With an even page count and ratio 0.5 the operations alternate, so the
//! modified pages are never the loaded ones, and at ratio 1 nothing is loaded: LSP never
//! re-syncs in this sweep.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use memvirt::profile::Profile;
use memvirt::report::Report;
use memvirt::run::RunSpec;
use memvirt::scheme::SchemeKind;
use memvirt::sweep::{self, Metric, Sweep, SweepSpec};
use memvirt::workload::WorkloadKind;
use serde_json::Value;

const PAGES: u64 = 32;
const OPS: u64 = 200;
const RATIOS: [&str; 3] = ["0", "0.5", "1"];
/// Modifications at each ratio: `floor(OPS * ratio)`.
const MODIFIED: [u64; 3] = [0, 100, 200];
/// Guest flushes that are not the operations': one per demand fault, one at exit.
const SETUP_FLUSHES: u64 = PAGES + 1;

fn spec(metric: Metric) -> SweepSpec {
    let profile = Profile::builtin("riscv-sv39").expect("the default profile loads");
    SweepSpec {
        base: RunSpec {
            scheme: SchemeKind::Tsp,
            workload: WorkloadKind::LspMicro,
            workload_sets: vec![
                ("pages".to_owned(), PAGES.to_string()),
                ("operations".to_owned(), OPS.to_string()),
            ],
            scheme_sets: Vec::new(),
            profile,
            seed: 1,
            verify: false,
            traces: None,
            warmup: 0,
        },
        schemes: vec![SchemeKind::Tsp, SchemeKind::Lsp],
        key: "workload.modify_ratio".to_owned(),
        values: RATIOS.iter().map(|r| (*r).to_owned()).collect(),
        metric,
    }
}

fn run(metric: Metric) -> Sweep {
    match sweep::sweep(&spec(metric), &|_, _| {}) {
        Ok(s) => s,
        Err(e) => panic!("the sweep fails: {e}"),
    }
}

fn cause(counts: &memvirt::report::CauseCounts, name: &str) -> u64 {
    counts.by_cause.get(name).copied().unwrap_or_else(|| panic!("no cause `{name}`"))
}

fn flush_entries(r: &Report) -> u64 {
    cause(&r.vm_exits, "flush") + cause(&r.hw_traps, "flush")
}

/// `(tsp, lsp)` reports at ratio index `v`.
fn pair(s: &Sweep, v: usize) -> (&Report, &Report) {
    (&s.reports[v][0], &s.reports[v][1])
}

#[test]
fn the_sweep_has_one_row_per_value_and_one_column_per_scheme_in_order() {
    let s = run(Metric::ExitsAndTraps);
    assert_eq!(s.values, RATIOS);
    assert_eq!(s.schemes, [SchemeKind::Tsp, SchemeKind::Lsp]);
    assert_eq!(s.matrix.len(), RATIOS.len());
    for (row, reports) in s.matrix.iter().zip(&s.reports) {
        let names: Vec<&str> = reports.iter().map(|r| r.scheme.as_str()).collect();
        assert_eq!(names, ["tsp", "lsp"]);
        for (m, r) in row.iter().zip(reports) {
            assert_eq!(*m, Some((r.vm_exits.total + r.hw_traps.total) as f64));
            // Native ran as the baseline, though not selected.
            assert!(r.overhead_vs_native.is_some());
        }
    }
}

#[test]
fn at_ratio_zero_no_operation_flushes() {
    let s = run(Metric::ExitsAndTraps);
    let (tsp, lsp) = pair(&s, 0);
    for r in [tsp, lsp] {
        assert_eq!(r.flushes.get("sfence.vma va,asid"), None, "{}", r.scheme);
        assert_eq!(r.flushes.values().sum::<u64>(), SETUP_FLUSHES, "{}", r.scheme);
        assert_eq!(flush_entries(r), SETUP_FLUSHES, "{}: only the set-up's flushes", r.scheme);
    }
    // TSP: every flush exits; LSP: all but the exit's ASID-wide flush trap.
    assert_eq!(cause(&tsp.vm_exits, "flush"), SETUP_FLUSHES);
    assert_eq!(cause(&lsp.hw_traps, "flush"), PAGES);
}

#[test]
fn tsp_pays_two_exits_per_modification() {
    let s = run(Metric::Exits);
    let base = s.reports[0][0].vm_exits.total;
    for (v, &m) in MODIFIED.iter().enumerate() {
        let tsp = &s.reports[v][0];
        assert_eq!(tsp.vm_exits.total, base + 2 * m, "ratio {}", s.values[v]);
        assert_eq!(tsp.hw_traps.total, 0);
        assert_eq!(s.matrix[v][0], Some((base + 2 * m) as f64));
    }
    assert!(s.matrix[0][0] < s.matrix[1][0] && s.matrix[1][0] < s.matrix[2][0]);
}

#[test]
fn lsp_pays_one_trap_per_modification_and_never_resyncs_here() {
    let s = run(Metric::ExitsAndTraps);
    let (_, lsp0) = pair(&s, 0);
    for (v, &m) in MODIFIED.iter().enumerate() {
        let (tsp, lsp) = pair(&s, v);
        assert_eq!(lsp.hw_traps.total, lsp0.hw_traps.total + m, "ratio {}", s.values[v]);
        assert_eq!(lsp.vm_exits.total, lsp0.vm_exits.total, "ratio {}", s.values[v]);
        assert!(
            lsp.vm_exits.total + lsp.hw_traps.total <= tsp.vm_exits.total + tsp.hw_traps.total,
            "ratio {}",
            s.values[v]
        );
    }
    // At ratio 1: TSP 2 per modification, LSP 1, so LSP saves exactly one per modification.
    let (tsp, lsp) = pair(&s, 2);
    let saved =
        (tsp.vm_exits.total + tsp.hw_traps.total) - (lsp.vm_exits.total + lsp.hw_traps.total);
    let (tsp0, lsp0) = pair(&s, 0);
    let saved0 =
        (tsp0.vm_exits.total + tsp0.hw_traps.total) - (lsp0.vm_exits.total + lsp0.hw_traps.total);
    assert_eq!(saved - saved0, MODIFIED[2]);
}

#[test]
fn sweeps_are_deterministic_whatever_the_thread_timing() {
    let a = run(Metric::Cycles);
    let b = run(Metric::Cycles);
    assert_eq!(a, b);
}

#[test]
fn a_bad_value_or_key_fails_before_simulating() {
    let mut bad = spec(Metric::Exits);
    bad.values.push("1.5".to_owned());
    let err = sweep::sweep(&bad, &|_, _| panic!("nothing may run")).map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("modify_ratio"), "{err}");
    let mut unknown = spec(Metric::Exits);
    unknown.key = "workload.no_such_key".to_owned();
    let err = sweep::sweep(&unknown, &|_, _| panic!("nothing may run")).map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("valid keys") && err.to_string().contains("pages"), "{err}");
    let mut empty = spec(Metric::Exits);
    empty.values.clear();
    assert!(sweep::sweep(&empty, &|_, _| {}).is_err());
}

// ---------------------------------------------------------------------------------------------
// the journal

#[test]
fn an_interrupted_sweep_resumes_from_its_journal_to_the_same_result() {
    let dir = scratch("journal");
    let path = dir.join("j.partial.jsonl");
    let spec = spec(Metric::Cycles);
    let uninterrupted = run(Metric::Cycles);
    let journal = sweep::Journal::open(&path, &spec, false).expect("a new journal");
    let full = sweep::sweep_journaled(&spec, Some(&journal), &|_, _| {}).expect("the sweep runs");
    assert_eq!(full, uninterrupted, "keeping a journal changes nothing");
    drop(journal);
    // One line names the sweep, one per run: 3 values x (tsp, lsp, native).
    let text = std::fs::read_to_string(&path).expect("the journal");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 9, "{text}");

    // Interrupted after four points, the fifth half written.
    let cut = lines[..5].join("\n") + "\n" + &lines[5][..lines[5].len() / 2];
    std::fs::write(&path, &cut).expect("cut the journal");
    // Without --resume the earlier work is not thrown away.
    let e = sweep::Journal::open(&path, &spec, false).unwrap_err().to_string();
    assert!(e.contains("4 finished points") && e.contains("--resume"), "{e}");
    // Tamper with one kept point: resuming must take it from the journal, not run it again.
    // Of any four points at least one is not native's (3 of the 9), so one of them is reported.
    let point = |l: &str| serde_json::from_str::<Value>(l).expect("a point line");
    let k = (1..5).find(|&k| point(lines[k])["scheme"] != "native").expect("a reported point");
    let mut tampered = point(lines[k]);
    tampered["report"]["cycles"] = Value::from(7);
    let mut kept_lines: Vec<String> = lines[..5].iter().map(|l| (*l).to_owned()).collect();
    kept_lines[k] = tampered.to_string();
    let half = &lines[5][..lines[5].len() / 2];
    std::fs::write(&path, kept_lines.join("\n") + "\n" + half).expect("tamper");
    let journal = sweep::Journal::open(&path, &spec, true).expect("resume");
    assert_eq!(journal.resumed(), 4);
    let resumed = sweep::sweep_journaled(&spec, Some(&journal), &|_, _| {}).expect("resumed");
    drop(journal);
    let v = RATIOS.iter().position(|r| *r == tampered["value"]).expect("a swept value");
    let s = resumed.schemes.iter().position(|k| k.name() == tampered["scheme"]);
    let s = s.expect("a reported scheme");
    assert_eq!(resumed.reports[v][s].cycles, 7, "the kept point was not run again");
    // The cut line was dropped and every missing point appended: 9 points again.
    let text = std::fs::read_to_string(&path).expect("the journal");
    assert_eq!(text.lines().count(), 1 + 9, "{text}");
    assert!(text.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()), "{text}");
    // Untampered, a resumed sweep equals the uninterrupted one.
    std::fs::write(&path, lines[..5].join("\n") + "\n").expect("cut again");
    let journal = sweep::Journal::open(&path, &spec, true).expect("resume");
    let resumed = sweep::sweep_journaled(&spec, Some(&journal), &|_, _| {}).expect("resumed");
    assert_eq!(resumed, uninterrupted);
}

#[test]
fn a_journal_of_another_sweep_is_refused_naming_what_differs() {
    let dir = scratch("journal-other");
    let path = dir.join("j.partial.jsonl");
    let spec = spec(Metric::Cycles);
    drop(sweep::Journal::open(&path, &spec, false).expect("a new journal"));
    let mut other = spec.clone();
    other.base.seed = 2;
    let e = sweep::Journal::open(&path, &other, true).unwrap_err().to_string();
    assert!(e.contains("another sweep") && e.contains("seed is 1") && e.contains("is 2"), "{e}");
    let mut other = spec.clone();
    other.base.profile.set("costs.vm_exit", "1").expect("a valid cost");
    let e = sweep::Journal::open(&path, &other, true).unwrap_err().to_string();
    assert!(e.contains("profile.costs.vm_exit"), "{e}");
    // A warm-up changes every point's counts.
    let mut other = spec.clone();
    other.base.warmup = 100;
    let e = sweep::Journal::open(&path, &other, true).unwrap_err().to_string();
    assert!(e.contains("warmup is 0") && e.contains("is 100"), "{e}");
    // Another metric, more values or other schemes are the same sweep.
    let mut same = spec.clone();
    same.metric = Metric::Exits;
    same.values.push("0.25".to_owned());
    same.schemes.push(SchemeKind::Ssp);
    sweep::Journal::open(&path, &same, true).expect("the same sweep");
    std::fs::write(&path, "not json\n").expect("garbage");
    let e = sweep::Journal::open(&path, &spec, true).unwrap_err().to_string();
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn the_command_keeps_the_journal_only_until_the_results_are_written() {
    let dir = scratch("journal-cli");
    let out = dir.join("s.json").to_string_lossy().into_owned();
    let journal = format!("{out}.partial.jsonl");
    let mut args = TINY.to_vec();
    args.extend(["json", "--output", &out]);
    let first = memvirt(&args);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(!Path::new(&journal).exists(), "removed once the output is written");
    let text = std::fs::read_to_string(&out).expect("the output");
    std::fs::write(&journal, "").expect("an empty journal is a new one");
    let mut resumed = args.clone();
    resumed.push("--resume");
    let again = memvirt(&resumed);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(std::fs::read_to_string(&out).expect("the output"), text);
    // A sweep whose second value runs out of guest memory keeps the first value's two points
    // (nested and native) and says how to resume.
    let failing = [
        "sweep",
        "--workload",
        "pagefault",
        "--vary",
        "workload.pages=16,100000",
        "--schemes",
        "nested",
        "--set",
        "memory.guest_mib=64",
        "--set",
        "memory.host_mib=200",
        "--output",
        &out,
    ];
    fails(&failing, &["memory exhausted", "2 finished points are kept", &journal, "--resume"]);
    let kept = std::fs::read_to_string(&journal).expect("the journal is kept");
    assert_eq!(kept.lines().count(), 1 + 2, "{kept}");
    assert_eq!(std::fs::read_to_string(&out).expect("the output"), text, "output untouched");
}

// the command line

/// Runs the binary in the target's scratch directory, where a sweep without `--output` keeps
/// its journal.
fn memvirt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memvirt"))
        .args(args)
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .output()
        .expect("the binary runs")
}

fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sweep-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir
}

const TINY: [&str; 12] = [
    "sweep",
    "--workload",
    "lsp-micro",
    "--vary",
    "workload.modify_ratio=0:1:0.5",
    "--schemes",
    "tsp,lsp",
    "--set",
    "workload.pages=32",
    "--set",
    "workload.operations=200",
    "--format",
];

#[test]
fn the_command_writes_the_svg_and_prints_the_sweep_as_json() {
    let dir = scratch("svg");
    let svg = dir.join("chart.svg");
    let svg_arg = svg.to_string_lossy().into_owned();
    let mut args = TINY.to_vec();
    args.extend(["json", "--svg", &svg_arg]);
    let out = memvirt(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(json["key"], "workload.modify_ratio");
    assert_eq!(json["values"], serde_json::json!(["0", "0.5", "1"]));
    assert_eq!(json["schemes"], serde_json::json!(["tsp", "lsp"]));
    assert_eq!(json["metric"], "exits-and-traps");
    let library = run(Metric::ExitsAndTraps);
    for (v, row) in library.reports.iter().enumerate() {
        for (s, r) in row.iter().enumerate() {
            let entries = r.vm_exits.total + r.hw_traps.total;
            assert_eq!(json["matrix"][v][s].as_u64(), Some(entries), "an integer in the JSON");
            assert_eq!(json["reports"][v][s]["scheme"], library.schemes[s].name());
        }
    }

    let text = std::fs::read_to_string(&svg).expect("the SVG file is written");
    assert!(text.starts_with("<svg") || text.starts_with("<?xml"), "{}", &text[..80]);
    assert!(text.trim_end().ends_with("</svg>"));
    for name in ["tsp", "lsp", "workload.modify_ratio"] {
        assert!(text.contains(name), "{name} missing from the SVG");
    }
    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("read the scratch directory")
        .map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["chart.svg"], "no temporary file left behind");
}

#[test]
fn the_table_has_a_row_per_value_and_a_column_per_scheme() {
    let mut args = TINY.to_vec();
    args.push("table");
    let out = memvirt(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("compute model"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["workload.modify_ratio", "tsp", "lsp"], "{text}");
    // Under the table: what its cycles assume.
    assert!(text.contains("compute model: 2 instructions per user access at CPI 1"), "{text}");
    let firsts: Vec<&str> = lines[1..].iter().map(|l| l[0]).collect();
    assert_eq!(firsts, RATIOS, "{text}");
}

/// Runs `args`, asserts a clean failure naming every one of `needles`.
fn fails(args: &[&str], needles: &[&str]) {
    let out = memvirt(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}:\n{err}");
    assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    for needle in needles {
        assert!(err.contains(needle), "{args:?}: `{needle}` missing from:\n{err}");
    }
}

#[test]
fn bad_vary_arguments_fail_cleanly_naming_the_bad_part() {
    let with = |vary: &'static str| ["sweep", "--workload", "lsp-micro", "--vary", vary];
    fails(&with("workload.modify_ratio"), &["--vary", "is not KEY=V1,V2"]);
    fails(&with("workload.modify_ratio="), &["gives no values"]);
    fails(&with("workload.modify_ratio=0,,1"), &["value 2 is empty"]);
    fails(&with("workload.modify_ratio=0:1:zero"), &["range step `zero` is not a number"]);
    fails(&with("workload.modify_ratio=1:0:0.5"), &["end `0` is below the start `1`"]);
    fails(&with("workload.modify_ratio=0,2"), &["--vary workload.modify_ratio=2", "modify_ratio"]);
    fails(&with("workload.nope=1,2"), &["--vary workload.nope=1", "unknown key `nope`", "pages"]);
    fails(&with("no_such_key=1"), &["unknown key `no_such_key`", "walk_caches"]);
    fails(&with("modify_ratio=0.5"), &["write `workload.modify_ratio`"]);
}
