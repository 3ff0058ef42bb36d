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

fn have_valgrind() -> bool {
    Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success())
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
        assert!(
            std::env::var("MEMVIRT_REQUIRE_VALGRIND").is_err(),
            "valgrind is required (MEMVIRT_REQUIRE_VALGRIND is set) but does not run"
        );
        eprintln!("skipped: valgrind is not installed (Debian package `valgrind`)");
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
