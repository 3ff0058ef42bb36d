//! The `memvirt` binary end to end: listing, the JSON and CSV contracts, determinism, `--output`,
//! and clear errors with a non-zero exit (never a panic) for bad input. Every run uses small
//! workload parameters so the suite stays fast; the default `memvirt` (no arguments) is left to
//! the README's manual check.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Small enough that a run takes milliseconds, large enough to fault, walk and exit.
const SMALL_PAGES: &str = "workload.pages=200";
/// The flag before [`SMALL_PAGES`].
const SMALL_PAGES_SET: &str = "--set";

fn memvirt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memvirt")).args(args).output().expect("the binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `args`, asserts success, returns standard output.
fn ok(args: &[&str]) -> String {
    let out = memvirt(args);
    assert!(out.status.success(), "{args:?} failed:\n{}", stderr(&out));
    stdout(&out)
}

/// Runs `args`, asserts a clean failure (exit code 1, no panic, nothing on stdout) whose message
/// contains every one of `needles`; returns the message.
fn fails(args: &[&str], needles: &[&str]) -> String {
    let out = memvirt(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?} should fail with exit code 1:\n{err}");
    assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    assert!(err.starts_with("memvirt: error: "), "{args:?}:\n{err}");
    assert!(out.stdout.is_empty(), "{args:?} printed:\n{}", stdout(&out));
    for needle in needles {
        assert!(err.contains(needle), "{args:?}: `{needle}` missing from:\n{err}");
    }
    err
}

fn json(text: &str) -> Vec<Value> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(reports)) => reports,
        other => panic!("not a JSON array ({other:?}):\n{text}"),
    }
}

/// A fresh, empty directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the scratch directory")
        .map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

const SCHEMES: [&str; 2] = ["native", "nested"];
const PROFILES: [&str; 5] = ["riscv-sv39", "riscv-sv48", "x86-64", "x86-64-la57", "sunway-like"];
const WORKLOADS: [&str; 10] = [
    "pagefault",
    "fork",
    "exec",
    "mmap",
    "ctxsw",
    "random",
    "stream",
    "pointer-chase",
    "server",
    "lsp-micro",
];

#[test]
fn list_names_every_scheme_profile_workload_and_parameter() {
    let text = ok(&["list"]);
    for name in SCHEMES.iter().chain(&PROFILES).chain(&WORKLOADS) {
        assert!(text.contains(&format!("  {name} ")), "{name} missing from:\n{text}");
    }
    assert!(text.contains("workload.modify_ratio = 0.5"), "{text}");
    assert!(text.contains("--set") && text.contains("memvirt list --keys"), "{text}");
}

#[test]
fn list_keys_prints_every_profile_key_with_its_value() {
    let text = ok(&["list", "--keys"]);
    assert!(text.lines().any(|l| l.starts_with("costs.vm_exit = ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("walk_caches = true")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("memory.guest_mib = ")), "{text}");
}

#[test]
fn run_json_has_the_contract_fields() {
    let text = ok(&[
        "run",
        "--scheme",
        "nested",
        "--workload",
        "pagefault",
        "--set",
        SMALL_PAGES,
        "--format",
        "json",
    ]);
    let reports = json(&text);
    assert_eq!(reports.len(), 1, "run prints the named scheme only");
    let r = &reports[0];
    for field in [
        "scheme",
        "workload",
        "profile",
        "accesses",
        "tlb_misses",
        "walk_refs_per_miss",
        "guest_page_faults",
        "cycles",
        "overhead_vs_native",
    ] {
        assert!(r.get(field).is_some(), "{field} missing");
    }
    assert_eq!(r["scheme"], "nested");
    assert_eq!(r["workload"], "pagefault");
    assert_eq!(r["profile"], "riscv-sv39");
    assert_eq!(r["guest_page_faults"], 200);
    // Native ran as the baseline, so the overhead is known.
    assert!(r["overhead_vs_native"].as_f64().is_some_and(|o| o > 0.0), "{r}");
    for (counts, causes) in [("vm_exits", 10), ("hw_traps", 6)] {
        let map = r[counts].as_object().expect("an object of counts");
        assert_eq!(map.len(), causes + 1, "{counts}: one key per cause plus total: {map:?}");
        let total = map.get("total").and_then(Value::as_u64).expect("a total");
        let sum: u64 =
            map.iter().filter(|(k, _)| *k != "total").filter_map(|(_, v)| v.as_u64()).sum();
        assert_eq!(total, sum, "{counts}");
    }
    assert!(r["vm_exits"]["nested_fault"].as_u64().is_some_and(|n| n >= 200), "{r}");
}

#[test]
fn the_same_seed_gives_byte_identical_json_and_another_seed_differs() {
    let args = |seed: &'static str| {
        [
            "run",
            "--scheme",
            "nested",
            "--workload",
            "random",
            "--set",
            SMALL_PAGES,
            "--set",
            "workload.updates=2000",
            "--seed",
            seed,
            "--format",
            "json",
        ]
    };
    let first = ok(&args("7"));
    assert_eq!(first, ok(&args("7")));
    let other = ok(&args("8"));
    assert_ne!(first, other);
    assert_eq!(json(&other)[0]["seed"], 8);
}

/// `compare` of native and nested over two workloads; `workload.operations` is lsp-micro's
/// alone, and applies to it.
const SMALL_COMPARE: [&str; 10] = [
    "compare",
    "--schemes",
    "native,nested",
    "--workloads",
    "pagefault,lsp-micro",
    "--set",
    SMALL_PAGES,
    "--set",
    "workload.operations=1000",
    "--seed=3",
];

#[test]
fn compare_csv_has_a_header_and_a_row_per_scheme_and_workload() {
    let mut args = SMALL_COMPARE.to_vec();
    args.extend(["--format", "csv"]);
    let text = ok(&args);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 2 * 2, "{text}");
    let header: Vec<&str> = lines[0].split(',').collect();
    for column in ["scheme", "workload", "vm_exits_total", "vm_exits_nested_fault", "cycles_walk"] {
        assert!(header.contains(&column), "{column} missing from {header:?}");
    }
    let rows: Vec<(String, String)> = lines[1..]
        .iter()
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            assert_eq!(cells.len(), header.len(), "{l}");
            (cells[1].to_owned(), cells[0].to_owned())
        })
        .collect();
    let want: Vec<(String, String)> = ["pagefault", "lsp-micro"]
        .iter()
        .flat_map(|w| SCHEMES.iter().map(move |s| ((*w).to_owned(), (*s).to_owned())))
        .collect();
    assert_eq!(rows, want);
}

#[test]
fn compare_table_names_the_profile_and_seed_and_shows_overheads() {
    let text = ok(&SMALL_COMPARE);
    let mut lines = text.lines();
    let title = lines.next().unwrap_or_default();
    assert!(title.contains("riscv-sv39") && title.contains("seed 3"), "{title}");
    let header = lines.next().unwrap_or_default();
    assert!(header.contains("refs/miss") && header.contains("overhead"), "{header}");
    let rows: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("compute model")).collect();
    assert_eq!(rows.len(), 4, "{text}");
    // Under the table: what the cycles assume.
    assert!(text.contains("compute model: 2 instructions per user access at CPI 1"), "{text}");
    assert!(rows.iter().filter(|r| r.contains("native")).all(|r| r.ends_with("+0.0%")), "{text}");
    assert!(rows.iter().filter(|r| r.contains("nested")).all(|r| r.ends_with('%')), "{text}");
}

#[test]
fn a_workload_setting_no_selected_workload_has_is_an_error() {
    fails(
        &["compare", "--workloads", "pagefault,stream", "--set", "workload.modify_ratio=0.1"],
        &["workload.modify_ratio", "pagefault", "stream"],
    );
}

#[test]
fn every_cause_key_is_documented_in_json_md() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/json.md"))
        .expect("docs/json.md");
    let section = |title: &str| {
        let start = doc.find(title).unwrap_or_else(|| panic!("no section {title}"));
        let rest = &doc[start + title.len()..];
        rest[..rest.find("\n### ").unwrap_or(rest.len())].to_owned()
    };
    let reports = json(&ok(&[
        "run",
        "--scheme",
        "ssp",
        "--workload",
        "stream",
        "--set",
        SMALL_PAGES,
        "--format",
        "json",
    ]));
    for (field, title) in
        [("vm_exits", "### `vm_exits` causes"), ("hw_traps", "### `hw_traps` causes")]
    {
        let text = section(title);
        let causes = reports[0][field].as_object().expect("an object");
        for key in causes.keys().filter(|k| *k != "total") {
            assert!(text.contains(&format!("`{key}`")), "{field}.{key} is not in docs/json.md");
        }
    }
}

#[test]
fn dependent_settings_may_come_in_any_order() {
    let guest = "memory.guest_mib=8192";
    let host = "memory.host_mib=10000";
    let run = |first: &str, second: &str| {
        ok(&["run", "--scheme", "native", "--workload", "stream", "--set", SMALL_PAGES]
            .into_iter()
            .chain(["--set", first, "--set", second, "--format", "json"])
            .collect::<Vec<_>>())
    };
    assert_eq!(run(guest, host), run(host, guest));
    // Still refused when the host is too small, whatever the order, naming the setting.
    fails(
        &["run", "--scheme", "native", "--workload", "stream", "--set", guest],
        &["memory.guest_mib", "memory.host_mib"],
    );
}

#[test]
fn a_cost_whose_products_could_overflow_the_totals_is_refused() {
    let huge = "costs.vm_exit=100000000000000000";
    fails(&["run", "--scheme", "nested", "--workload", "random", "--set", huge], &[huge, "2^32"]);
    fails(
        &[
            "run",
            "--scheme",
            "spec-shadow",
            "--workload",
            "random",
            "--set",
            "scheme.squash_penalty=4294967297",
        ],
        &["scheme.squash_penalty", "4294967297", "2^32"],
    );
    // The largest cost is accepted.
    ok(&["run", "--scheme", "nested", "--workload", "stream", "--set", "costs.vm_exit=4294967296"]);
}

#[test]
fn output_writes_the_file_atomically_and_nothing_on_stdout() {
    let dir = scratch("output");
    let file = dir.join("reports.json");
    std::fs::write(&file, "old contents").expect("seed the file");
    let path = file.to_string_lossy().into_owned();
    let mut args = SMALL_COMPARE.to_vec();
    args.extend(["--format", "json", "--output", &path]);
    let printed = ok(&args);
    assert!(printed.is_empty(), "{printed}");
    let written = std::fs::read_to_string(&file).expect("the output file");
    assert_eq!(json(&written).len(), 4);
    assert_eq!(entries(&dir), ["reports.json"], "no temporary file left behind");
}

#[test]
fn output_into_a_missing_directory_fails_naming_it_and_leaves_nothing() {
    let dir = scratch("missing-dir");
    let target = dir.join("no-such-dir").join("out.csv");
    let path = target.to_string_lossy().into_owned();
    let mut args = SMALL_COMPARE.to_vec();
    args.extend(["--format", "csv", "--output", &path]);
    fails(&args, &[&path]);
    assert!(entries(&dir).is_empty(), "{:?}", entries(&dir));
}

#[test]
fn an_output_that_is_a_link_fifo_device_or_input_is_refused_before_the_run() {
    let dir = scratch("output-kinds");
    let target = dir.join("target.json");
    std::fs::write(&target, "precious").expect("seed the file");
    let link = dir.join("link.json");
    std::os::unix::fs::symlink(&target, &link).expect("a symbolic link");
    let fifo = dir.join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs");
    assert!(made.success());
    let run = |out: &Path| {
        let out = out.to_string_lossy().into_owned();
        ["run", "--scheme", "native", "--workload", "stream", SMALL_PAGES_SET, SMALL_PAGES]
            .into_iter()
            .map(str::to_owned)
            .chain(["--output".to_owned(), out])
            .collect::<Vec<_>>()
    };
    let args = run(&link);
    fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), &["link.json", "symbolic link"]);
    assert!(std::fs::symlink_metadata(&link).expect("the link").file_type().is_symlink());
    let args = run(&fifo);
    fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), &["fifo", "not a regular file"]);
    let args = run(Path::new("/dev/null"));
    fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), &["/dev/null", "regular file"]);
    // /proc takes no new files even for root: the run must not start.
    let args = run(Path::new("/proc/memvirt-report.json"));
    fails(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &["/proc", "does not take new files"],
    );
    // A profile file given as the output would be replaced by the report.
    let profile = dir.join("p.toml");
    std::fs::write(&profile, "base = \"x86-64\"\n").expect("a profile");
    let p = profile.to_string_lossy().into_owned();
    fails(
        &["run", "--scheme", "native", "--workload", "stream", "--profile", &p, "--output", &p],
        &["p.toml", "also an input"],
    );
    assert_eq!(std::fs::read_to_string(&target).ok().as_deref(), Some("precious"));
    let svg = dir.join("same").to_string_lossy().into_owned();
    fails(
        &["sweep", "--workload", "stream", "--vary", "workload.pages=8,16", "--schemes", "native"]
            .into_iter()
            .chain(["--output", &svg, "--svg", &svg])
            .collect::<Vec<_>>(),
        &["--svg and --output"],
    );
}

#[test]
fn help_and_version_that_cannot_be_written_fail() {
    for args in [&["--help"][..], &["--version"], &["run", "--help"]] {
        let full = std::fs::File::create("/dev/full").expect("/dev/full");
        let out = Command::new(env!("CARGO_BIN_EXE_memvirt"))
            .args(args)
            .stdout(full)
            .output()
            .expect("the binary runs");
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("No space left"), "{args:?}: {}", stderr(&out));
    }
    let help = memvirt(&["--help"]);
    assert!(help.status.success() && stdout(&help).contains("Usage"));
}

#[test]
fn a_failed_run_keeps_an_existing_output_file() {
    let dir = scratch("keep");
    let file = dir.join("out.json");
    std::fs::write(&file, "precious").expect("seed the file");
    let path = file.to_string_lossy().into_owned();
    fails(
        &["run", "--scheme", "nested", "--workload", "pagefault", "--set", "workload.pages=0"]
            .into_iter()
            .chain(["--output", &path])
            .collect::<Vec<_>>(),
        &["workload.pages"],
    );
    assert_eq!(std::fs::read_to_string(&file).ok().as_deref(), Some("precious"));
    assert_eq!(entries(&dir), ["out.json"]);
}

#[test]
fn cold_nested_walks_read_at_most_fifteen_entries_and_complete_with_fifteen() {
    let text = ok(&[
        "run",
        "--scheme",
        "nested",
        "--workload",
        "pagefault",
        "--set",
        "walk_caches=off",
        "--set",
        SMALL_PAGES,
        "--format",
        "json",
    ]);
    let r = &json(&text)[0];
    let refs = r["walk_refs_per_miss"].as_f64().expect("a number");
    // Walks that fault stop early; none reads more than (3+1)(3+1)-1 = 15 entries.
    assert!(refs > 3.0 && refs <= 15.0, "{refs}");
    let histogram: Vec<u64> = r["walk"]["histogram"]
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(histogram.len(), 16, "the longest walk reads 15 entries: {histogram:?}");
    // Every page is stored to once, and that store's walk completes: 15 reads with no caches.
    assert!(histogram[15] >= 200, "{histogram:?}");
    // With the walk caches on, the same walks read far fewer entries.
    let warm = ok(&[
        "run",
        "--scheme",
        "nested",
        "--workload",
        "pagefault",
        "--set",
        SMALL_PAGES,
        "--format",
        "json",
    ]);
    let warm = json(&warm)[0]["walk_refs_per_miss"].as_f64().expect("a number");
    assert!(warm < refs / 2.0, "warm {warm} vs cold {refs}");
}

#[test]
fn verify_checks_the_run_and_reports_oracle_counts_only_when_asked() {
    let verified = small_run(&["--verify", "--format", "json"]);
    let reports = json(&ok(&verified.iter().map(String::as_str).collect::<Vec<_>>()));
    let oracle = &reports[0]["oracle"];
    // One fill per page after its fault is resolved, at least.
    assert!(oracle["checks"].as_u64().is_some_and(|n| n >= 200), "{oracle}");
    assert_eq!(oracle["stale_allowed"], 0, "{oracle}");
    let plain = small_run(&["--format", "json"]);
    let reports = json(&ok(&plain.iter().map(String::as_str).collect::<Vec<_>>()));
    assert!(reports[0].get("oracle").is_none(), "unverified runs keep the old JSON");
    let table = ok(&["compare", "--verify", "--workloads", "pagefault,fork", "--set", SMALL_PAGES]);
    assert!(table.contains(", --verify"), "{table}");
    assert!(table.contains("TLB fills checked, 0 stale but allowed, no violation"), "{table}");
    ok(&["bench", "--verify", "--workloads", "pagefault", "--set", SMALL_PAGES]);
}

#[test]
fn bench_prints_accesses_per_second_for_each_run() {
    let text = ok(&["bench", "--workloads", "pagefault", "--set", SMALL_PAGES, "--format", "csv"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].ends_with("accesses,wall_seconds,maccesses_per_second"), "{text}");
    assert!(lines[1].starts_with("pagefault,native,") && lines[2].starts_with("pagefault,nested,"));
    let table = ok(&["bench", "--workloads", "pagefault", "--set", SMALL_PAGES]);
    assert!(table.contains("Macc/s") && table.contains("wall-clock"), "{table}");
    assert!(!table.contains("median"), "{table}");
}

#[test]
fn bench_repeat_reports_one_row_per_run_with_the_median_time() {
    let args = ["bench", "--workloads", "pagefault,ctxsw", "--schemes", "nested", "--repeat", "3"];
    let table = ok(&[&args[..], &["--set", SMALL_PAGES]].concat());
    assert!(table.starts_with("memvirt bench: wall-clock on this machine, median of 3 runs"));
    let csv = ok(&[&args[..], &["--set", SMALL_PAGES, "--format", "csv"]].concat());
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "one row per workload and scheme, not per round:\n{csv}");
    assert!(rows[0].starts_with("pagefault,nested,") && rows[1].starts_with("ctxsw,nested,"));
}

/// A small `run` with extra arguments.
fn small_run(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        ["run", "--scheme", "nested", "--workload", "pagefault", "--set", SMALL_PAGES]
            .map(str::to_owned)
            .to_vec();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

#[test]
fn bad_settings_fail_cleanly_naming_the_key_value_or_file() {
    let cases: [(Vec<String>, &[&str]); 11] = [
        (small_run(&["--set", "nosuch=1"]), &["nosuch", "costs.vm_exit"]),
        // Absurd structure sizes are refused before anything is allocated.
        (small_run(&["--set", "mmu.ntlb.entries=4611686018427387904"]), &["ntlb", "entries"]),
        (small_run(&["--set", "mmu.tlb.l2.entries=1099511627776"]), &["l2", "1099511627776"]),
        (small_run(&["--set", "workload.nosuch=1"]), &["nosuch", "pages"]),
        (small_run(&["--set", "costs.vm_exit=abc"]), &["costs.vm_exit", "abc", "integer"]),
        (small_run(&["--set", "noequals"]), &["noequals"]),
        (small_run(&["--profile", "missing.toml"]), &["missing.toml"]),
        (small_run(&["--profile", "nosuchprofile"]), &["nosuchprofile", "riscv-sv39"]),
        (small_run(&["--set", "memory.guest_mib=0"]), &["memory.guest_mib"]),
        (small_run(&["--set", "workload.pages=0"]), &["workload.pages"]),
        (
            ["run", "--scheme", "nested", "--workload", "lsp-micro", "--set"]
                .into_iter()
                .chain(["workload.modify_ratio=2"])
                .map(str::to_owned)
                .collect(),
            &["modify_ratio"],
        ),
    ];
    for (args, needles) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&args, needles);
    }
}

#[test]
fn a_profile_file_with_bad_toml_is_named_with_the_line() {
    let dir = scratch("bad-toml");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "base = \"riscv-sv39\"\n[costs]\nvm_exit = = 3\n").expect("write");
    let path = file.to_string_lossy().into_owned();
    fails(
        &small_run(&["--profile", &path]).iter().map(String::as_str).collect::<Vec<_>>(),
        &[&path, "line 3"],
    );
}

#[test]
fn a_workload_too_big_for_guest_memory_fails_saying_so() {
    let err = fails(
        &["run", "--scheme", "nested", "--workload", "pagefault", "--set"]
            .into_iter()
            .chain(["workload.pages=1000000"])
            .collect::<Vec<_>>(),
        &["pagefault"],
    );
    assert!(err.contains("memory"), "{err}");
}

#[test]
fn usage_errors_keep_clap_exit_code_two() {
    for args in [
        &["run", "--scheme", "bogus", "--workload", "pagefault"][..],
        &["run", "--scheme", "nested", "--workload", "bogus"],
        &["compare", "--schemes", "native,bogus"],
        &["compare", "--format", "xml"],
        &["run", "--workload", "pagefault"],
        &["bench", "--repeat", "0"],
        &["bench", "--repeat", "x"],
    ] {
        let out = memvirt(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}:\n{err}");
        assert!(!err.contains("panicked"), "{args:?}:\n{err}");
    }
    let err = stderr(&memvirt(&["compare", "--workloads", "pagefault,bogus"]));
    assert!(err.contains("bogus"), "{err}");
}

#[test]
fn progress_never_reaches_a_stderr_that_is_not_a_terminal() {
    let out = memvirt(&small_run(&[]).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success());
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

#[test]
fn scheme_settings_move_a_shadow_scheme_and_bad_ones_are_refused() {
    let run = |buffer: &str| {
        let set = format!("scheme.root_buffer={buffer}");
        let text = ok(&[
            "run",
            "--scheme",
            "ssp",
            "--workload",
            "ctxsw",
            "--set",
            "workload.processes=4",
            "--set",
            "workload.turns=20",
            "--set",
            &set,
            "--format",
            "json",
        ]);
        json(&text).into_iter().find(|r| r["scheme"] == "ssp").expect("an ssp report")
    };
    // Four processes: a buffer of 8 holds every root, so switches back stay in hardware mode;
    // a buffer of 1 misses on every switch between different processes.
    let roomy = run("8");
    let tiny = run("1");
    assert_eq!(roomy["vm_exits"]["buffer_miss"], 4, "one miss per process, the first time");
    assert!(tiny["vm_exits"]["buffer_miss"].as_u64() > Some(60), "{}", tiny["vm_exits"]);
    assert_eq!(roomy["guest"]["history"], tiny["guest"]["history"]);
    fails(
        &["run", "--scheme", "native", "--workload", "ctxsw", "--set", "scheme.root_buffer=1"],
        &["scheme.root_buffer", "only these schemes have scheme settings"],
    );
    fails(
        &["run", "--scheme", "nested", "--workload", "ctxsw", "--set", "scheme.root_buffer=1"],
        &["unknown key `root_buffer`", "host_page"],
    );
    fails(
        &["run", "--scheme", "nested", "--workload", "ctxsw", "--set", "scheme.host_page=3m"],
        &["host_page = 3m", "`4k`, `2m`, `1g`"],
    );
    fails(
        &[
            "run",
            "--scheme",
            "snp",
            "--workload",
            "ctxsw",
            "--set",
            "scheme.nested_table=flat",
            "--set",
            "scheme.host_page=2m",
        ],
        &["scheme.host_page must be \"4k\"", "flat"],
    );
    fails(
        &["run", "--scheme", "lsp", "--workload", "ctxsw", "--set", "scheme.colour=red"],
        &["unknown key `colour`", "root_buffer"],
    );
    fails(
        &["run", "--scheme", "tsp", "--workload", "ctxsw", "--set", "scheme.notice=sometimes"],
        &["notice", "sometimes"],
    );
}

/// A 57-bit guest fits no x86-64 host process: the default `compare` leaves the HSPT schemes out
/// with a note and runs the rest; naming one is an error that says why.
#[test]
fn compare_leaves_out_schemes_the_profile_cannot_host() {
    let args =
        ["compare", "--profile", "x86-64-la57", "--workloads", "pagefault", "--set", SMALL_PAGES];
    let out = memvirt(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let (text, notes) = (stdout(&out), stderr(&out));
    for s in ["hspt-shared", "hspt-prefill", "hspt-private"] {
        assert!(notes.contains(&format!("note: {s} left out")), "{notes}");
        assert!(!text.contains(s), "{text}");
    }
    assert!(text.contains("softmmu") && text.contains("spec-shadow"), "{text}");
    let mut named = args.to_vec();
    named.extend(["--schemes", "native,hspt-private"]);
    fails(&named, &["hspt-private", "57-bit address space"]);
}

#[test]
fn compare_sensitivity_names_every_costs_range_and_gives_json_an_object() {
    let mut args = SMALL_COMPARE.to_vec();
    args[2] = "native,nested,tsp,ssp";
    args.push("--sensitivity");
    let text = ok(&args);
    for cost in ["costs.vm_exit 500..2,600", "costs.hw_trap 20..200", "costs.pt_memory"] {
        assert!(text.contains(cost), "{cost} missing:\n{text}");
    }
    // Each workload's ranking leaves native out.
    let ranking = text.lines().find(|l| l.starts_with("pagefault: ")).unwrap_or_default();
    assert!(ranking.contains("nested") && !ranking.contains("native"), "{text}");
    args.extend(["--format", "json"]);
    let value: Value = serde_json::from_str(&ok(&args)).expect("JSON");
    assert_eq!(value["reports"].as_array().map(Vec::len), Some(8));
    let s = &value["sensitivity"];
    assert_eq!(s["corners"], 16384);
    assert_eq!(s["workloads"].as_array().map(Vec::len), Some(2));
    assert_eq!(s["workloads"][0]["ranking"].as_array().map(Vec::len), Some(3));
    // CSV has no place for it: refused before any run.
    let mut csv = SMALL_COMPARE.to_vec();
    csv.extend(["--sensitivity", "--format", "csv"]);
    fails(&csv, &["--sensitivity has no CSV form"]);
}

#[test]
fn reproduce_judges_each_claim_and_draws_them() {
    let dir = scratch("reproduce");
    let svg = dir.join("lsp.svg");
    let svg_arg = svg.to_string_lossy().into_owned();
    let text = ok(&["reproduce", "lsp", "--quick", "--format", "json", "--svg", &svg_arg]);
    let value: Value = serde_json::from_str(&text).expect("JSON");
    let claims = value[0]["claims"].as_array().cloned().unwrap_or_default();
    let claim = |id: &str| claims.iter().find(|c| c["id"] == id).cloned().unwrap_or_default();
    assert_eq!(claims.len(), 5, "{text}");
    // Derived by hand: TSP pays a write-protect and a flush exit per modification, and a
    // complete Sv39-over-Sv39x4 walk reads 15 entries against the shadow table's 3.
    assert_eq!(claim("lsp-1")["judged"], 2.0);
    assert_eq!(claim("lsp-1")["verdict"], "reproduced");
    assert_eq!(claim("lsp-5")["judged"], 12.0);
    assert_eq!(claim("lsp-5")["verdict"], "reproduced");
    for c in &claims {
        assert!(["reproduced", "trend", "differs"].contains(&c["verdict"].as_str().unwrap_or("")));
        assert!(!c["why"].as_str().unwrap_or("").is_empty());
    }
    let chart = std::fs::read_to_string(&svg).expect("the SVG was written");
    assert!(
        chart.starts_with("<svg") && chart.contains("lsp-5"),
        "{}",
        &chart[..200.min(chart.len())]
    );
    // The table form ends with the tally.
    let table = ok(&["reproduce", "isca12", "--quick"]);
    assert!(table.contains("isca12-3"), "{table}");
    assert!(table.trim_end().ends_with("(each with memvirt's reason)"), "{table}");
    let flat = table.lines().find(|l| l.starts_with("isca12-3 ")).unwrap_or_default();
    assert!(flat.contains("9.00") && flat.ends_with("reproduced"), "{flat}");
    fails(&["reproduce", "lsp", "--format", "csv"], &["no CSV form"]);
}

#[test]
fn warm_up_length_and_footprint_mistakes_are_clear_errors() {
    let pagefault = |extra: &[&'static str]| {
        let mut args = vec!["run", "--scheme", "native", "--workload", "pagefault"];
        args.extend_from_slice(extra);
        args
    };
    fails(
        &pagefault(&["--set", "workload.pages=100", "--warmup", "100"]),
        &["--warmup 100 is not shorter than the workload", "the whole run made 100"],
    );
    let usage = memvirt(&pagefault(&["--warmup", "lots"]));
    assert_eq!(usage.status.code(), Some(2));
    assert!(stderr(&usage).contains("'--warmup <N>'"), "{}", stderr(&usage));
    fails(
        &["compare", "--trace", "/dev/null", "--length", "steady"],
        &["--length steady", "--warmup N (instructions per stream)"],
    );
    fails(
        &pagefault(&["--set", "handlers.exit.tlb_pages=100000"]),
        &["handlers.exit.tlb_pages must be at most 65536, not 100000"],
    );
    fails(&pagefault(&["--set", "memory.table_pool_frames=0"]), &["memory.table_pool_frames"]);
    // `memvirt list` shows both lengths of every workload.
    let list = ok(&["list"]);
    assert_eq!(list.matches("length: short ~").count(), 11, "{list}");
}

#[test]
fn compare_draws_its_bars_and_runs_in_parallel_with_the_same_output() {
    let dir = scratch("compare-svg");
    let svg = dir.join("bars.svg");
    let svg_arg = svg.to_str().expect("utf-8 path");
    let args =
        ["compare", "--workloads", "fork", "--schemes", "nested,ssp", "--set", "workload.forks=3"];
    let one = ok(&[&args[..], &["--jobs", "1", "--format", "json", "--svg", svg_arg]].concat());
    let two = ok(&[&args[..], &["--jobs", "2", "--format", "json"]].concat());
    assert_eq!(one, two, "the same reports for any thread count");
    let chart = std::fs::read_to_string(&svg).expect("the SVG was written");
    assert!(
        chart.starts_with("<svg") && chart.contains("\nssp\n"),
        "{}",
        &chart[..200.min(chart.len())]
    );
    fails(
        &[&args[..], &["--svg", svg_arg, "--output", svg_arg]].concat(),
        &["--svg and --output both name"],
    );
}
