//! The trace commands of the `memvirt` binary: `trace convert`, `trace info`, `run`/`compare
//! --trace`, clear errors for bad traces and a missing valgrind, and `memvirt record` of a real
//! program under valgrind, replayed under every scheme with `--verify`.
//!
//! The recording test needs valgrind (Debian package `valgrind`; `scripts/test.sh` installs it).
//! Without it the test says so and passes, unless `MEMVIRT_REQUIRE_VALGRIND=1`, which
//! `scripts/test.sh` sets whenever valgrind is installed.

mod tracegen;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use tracegen::Dir;

fn memvirt<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memvirt")).args(args).output().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

fn fails(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{}{}", text(&out.stdout), text(&out.stderr));
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

#[test]
fn convert_info_and_replay_a_champsim_trace() {
    let dir = Dir::new("cli-convert");
    let prog = tracegen::program(21, 4_000);
    let xz = dir.file("t.champsimtrace.xz", &tracegen::xz(&tracegen::champsim(&prog)));
    let mvt = dir.path("t.mvt");
    let out = ok(&memvirt(&["trace", "convert", p(&xz), p(&mvt)]));
    assert!(out.contains("1 streams, "), "{out}");
    let info = ok(&memvirt(&["trace", "info", p(&mvt)]));
    let records = tracegen::expected(&prog, false).len();
    assert!(info.contains("source champsim, 47-bit addresses"), "{info}");
    assert!(info.contains(&format!("{records} records")), "{info}");
    assert!(info.contains("footprint ") && info.contains("compression ratio"), "{info}");
    // The ChampSim file itself replays too (converted on the way), with the same result.
    for input in [&mvt, &xz] {
        let out = ok(&memvirt(&[
            "run",
            "--scheme",
            "nested",
            "--trace",
            p(input),
            "--limit",
            "3000",
            "--format",
            "json",
        ]));
        let v: Value = serde_json::from_str(&out).expect("JSON");
        let r = &v[0];
        assert_eq!(r["trace"]["streams"][0]["replayed"], 3000);
        assert_eq!(r["trace"]["streams"][0]["relocation"]["method"], "gib-regions");
        assert_eq!(r["guest"]["killed"], 0);
    }
}

#[test]
fn bad_traces_fail_with_the_file_and_place() {
    let dir = Dir::new("cli-bad");
    let garbage = dir.file("g.lackey", b"I  0401000,3\nhello\n");
    let err = fails(&memvirt(&["run", "--scheme", "native", "--trace", p(&garbage)]));
    assert!(err.contains("g.lackey: line 2: not a lackey line"), "{err}");
    let mut mvt = Vec::from(&b"MVTRACE\0"[..]);
    mvt.extend_from_slice(&[9, 0]);
    mvt.resize(100, 0);
    let v9 = dir.file("v9.mvt", &mvt);
    let err = fails(&memvirt(&["trace", "info", p(&v9)]));
    assert!(err.contains("v9.mvt: byte 8: compact trace version 9"), "{err}");
    let err = fails(&memvirt(&["compare", "--trace", p(&dir.path("missing.mvt"))]));
    assert!(err.contains("missing.mvt: cannot open"), "{err}");
    // --workload and --trace exclude each other; --skip needs --trace.
    let both = memvirt(&["run", "--scheme", "native", "--workload", "fork", "--trace", p(&v9)]);
    assert_eq!(both.status.code(), Some(2));
    let err = fails(&memvirt(&["run", "--scheme", "native", "--workload", "fork", "--skip", "3"]));
    assert!(err.contains("need --trace"), "{err}");
}

#[test]
fn record_without_valgrind_names_the_package() {
    let err =
        fails(&memvirt(&["record", "--valgrind", "/nonexistent/valgrind", "--", "/bin/true"]));
    assert!(
        err.contains("valgrind is not installed") && err.contains("Debian package `valgrind`"),
        "{err}"
    );
}

/// Whether valgrind runs; without it a recording test is skipped, unless
/// `MEMVIRT_REQUIRE_VALGRIND` is set.
fn have_valgrind() -> bool {
    if Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(
        std::env::var("MEMVIRT_REQUIRE_VALGRIND").is_err(),
        "valgrind is required (MEMVIRT_REQUIRE_VALGRIND is set) but does not run"
    );
    eprintln!("skipped: valgrind is not installed (Debian package `valgrind`)");
    false
}

/// Valgrind's `%n` restarts at every exec, so each image of one process used to reopen (and
/// truncate) the same log: a process that execs twice must still give three streams, in order.
#[test]
fn record_keeps_every_image_of_an_exec_chain_in_order() {
    if !have_valgrind() {
        return;
    }
    let dir = Dir::new("cli-record-exec");
    let trace = dir.path("chain.mvt");
    let chain = "exec /bin/sh -c 'exec /bin/true'";
    let out = ok(&memvirt(&["record", "--output", p(&trace), "--", "/bin/sh", "-c", chain]));
    assert!(out.contains("3 process images"), "{out}");
    let info = ok(&memvirt(&["trace", "info", p(&trace)]));
    // Stream rows: stream, pid, ppid, asid, records, instructions, pages, lowest, highest, name.
    let rows: Vec<Vec<&str>> = info
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("stream "))
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{info}");
    let name = |r: &[&str]| r[9..].join(" ");
    assert!(name(&rows[0]).starts_with("/bin/sh -c exec"), "{info}");
    assert!(name(&rows[1]).contains("exec") && name(&rows[1]).contains("true"), "{info}");
    assert_eq!(name(&rows[2]), "/bin/true", "{info}");
    assert!(rows.iter().all(|r| r[1] == rows[0][1]), "one process: {info}");
    assert!(rows.iter().all(|r| r[4].parse::<u64>().unwrap_or(0) > 1000), "{info}");
}

/// SIGTERM stops valgrind, writes no trace and removes the log directory.
#[test]
fn an_interrupted_recording_leaves_nothing_behind() {
    if !have_valgrind() {
        return;
    }
    let dir = Dir::new("cli-record-stop");
    let trace = dir.path("never.mvt");
    let child = Command::new(env!("CARGO_BIN_EXE_memvirt"))
        .args(["record", "--output", p(&trace), "--", "/bin/sh", "-c", "while :; do :; done"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    // The log directory exists once the signal handlers are in place and valgrind starts.
    let logs = format!("memvirt-record-{}-", child.id());
    let started = std::time::Instant::now();
    let logs_exist = || {
        std::fs::read_dir(std::env::temp_dir())
            .expect("temp dir")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&logs))
    };
    while !logs_exist() {
        assert!(started.elapsed().as_secs() < 30, "no log directory {logs}*");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(killed.is_ok_and(|s| s.success()));
    let out = child.wait_with_output().expect("memvirt ends");
    let err = fails(&out);
    assert!(err.contains("interrupted"), "{err}");
    assert!(!trace.exists(), "a trace was written");
    assert!(!logs_exist(), "the log directory {logs}* is left behind");
}

/// A program that forks: the parent and the child write a heap array, the parent waits.
const PROGRAM: &str = r#"
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    volatile long *a = malloc(64 * 4096);
    for (int i = 0; i < 64 * 512; i += 8) a[i] = i;
    pid_t c = fork();
    if (c == 0) { for (int i = 0; i < 64 * 512; i += 16) a[i] += 1; _exit(0); }
    waitpid(c, 0, 0);
    return a[8] == 8 ? 0 : 1;
}
"#;

#[test]
fn record_a_real_program_and_replay_it_under_every_scheme_verified() {
    if !have_valgrind() {
        return;
    }
    let dir = Dir::new("cli-record");
    let source = dir.file("prog.c", PROGRAM.as_bytes());
    let exe = dir.path("prog");
    let compiled = Command::new("cc").args(["-O1", "-o", p(&exe), p(&source)]).status();
    let (cmd, processes): (Vec<&str>, usize) = if compiled.is_ok_and(|s| s.success()) {
        (vec![p(&exe)], 2)
    } else {
        eprintln!("no C compiler: recording /bin/true instead");
        (vec!["/bin/true"], 1)
    };
    let trace = dir.path("prog.mvt");
    let mut args = vec!["record", "--output", p(&trace), "--"];
    args.extend(&cmd);
    let out = ok(&memvirt(&args));
    assert!(out.contains("memvirt record: ") && out.contains("exited with status 0"), "{out}");
    let info = ok(&memvirt(&["trace", "info", p(&trace)]));
    assert!(info.contains(&format!("{processes} streams")), "{info}");
    let out = ok(&memvirt(&["compare", "--trace", p(&trace), "--verify", "--format", "json"]));
    let v: Value = serde_json::from_str(&out).expect("JSON");
    let reports = v.as_array().expect("an array");
    assert_eq!(reports.len(), memvirt::scheme::SchemeKind::ALL.len());
    let history = &reports[0]["guest"]["history"];
    for r in reports {
        assert!(r["oracle"]["checks"].as_u64().unwrap_or(0) > 0, "{}", r["scheme"]);
        assert_eq!(r["guest"]["killed"], 0, "{}", r["scheme"]);
        assert_eq!(r["guest"]["processes"], processes, "{}", r["scheme"]);
        assert_eq!(&r["guest"]["history"], history, "{}", r["scheme"]);
        assert_eq!(r["workload"], "prog.mvt");
    }
}
