//! The trace commands of the `memvirt` binary: `trace convert`, `trace info`, `run`/`compare
//! --trace`, clear errors for bad traces and a missing valgrind, and `memvirt record` of a real
//! program under valgrind, replayed under every scheme with `--verify`.
//!
//! The recording test needs valgrind (Debian package `valgrind`; `scripts/test.sh` installs it).
//! Without it the test says so and passes, unless `MEMVIRT_REQUIRE_VALGRIND=1`, which
//! `scripts/test.sh` sets whenever valgrind is installed.

mod tracegen;

use std::ffi::OsStr;
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

/// Bytes that are no trace: a fixed pseudo-random stream (the test must not depend on luck).
fn noise(n: usize) -> Vec<u8> {
    let mut rng = memvirt::rng::Rng::new(17, 3);
    (0..n).map(|_| rng.below(256).to_le_bytes()[0]).collect()
}

#[test]
fn input_that_is_no_trace_is_refused_with_the_way_to_force_a_format() {
    let dir = Dir::new("cli-detect");
    let junk = noise(640);
    // A `.mvt` name promises the compact format.
    let mvt = dir.file("r.mvt", &junk);
    let err = fails(&memvirt(&["run", "--scheme", "nested", "--trace", p(&mvt)]));
    assert!(err.contains("r.mvt: byte 0: not a memvirt compact trace"), "{err}");
    let zst = dir.file("r.mvt.zst", &zstd::bulk::compress(&junk, 1).expect("zstd"));
    let err = fails(&memvirt(&["run", "--scheme", "nested", "--trace", p(&zst)]));
    assert!(err.contains("r.mvt.zst: byte 0: not a memvirt compact trace"), "{err}");
    // Without a telling name, `auto` refuses what is neither lackey nor plausible ChampSim.
    let bin = dir.file("r.bin", &junk);
    let err = fails(&memvirt(&["run", "--scheme", "nested", "--trace", p(&bin)]));
    assert!(err.contains("r.bin: byte 0: not a trace memvirt recognises"), "{err}");
    assert!(err.contains("--trace-format"), "{err}");
    // A damaged magic is no longer taken for ChampSim either.
    let good = dir.path("g.mvt");
    let lackey = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/small.lackey");
    ok(&memvirt(&["trace", "convert", p(&lackey), p(&good)]));
    let mut bytes = std::fs::read(&good).expect("written");
    bytes[3] ^= 0x40;
    let damaged = dir.file("damaged.trace", &bytes);
    let err = fails(&memvirt(&["run", "--scheme", "nested", "--trace", p(&damaged)]));
    assert!(err.contains("not a trace memvirt recognises"), "{err}");
    // Forcing the format reads the bytes as asked.
    let forced = memvirt(&["trace", "info", "--trace-format", "champsim", p(&bin)]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
}

#[test]
fn empty_input_and_replay_options_that_replay_nothing_are_errors() {
    let dir = Dir::new("cli-empty");
    let empty = dir.file("e.champsimtrace", b"");
    let xz = dir.file("e.champsimtrace.xz", &tracegen::xz(b""));
    let gz = dir.file("e.lackey.gz", &tracegen::gzip(b""));
    let zst = dir.file("e.trace.zst", &zstd::bulk::compress(b"", 1).expect("zstd"));
    for f in [&empty, &xz, &gz, &zst] {
        let err = fails(&memvirt(&["run", "--scheme", "native", "--trace", p(f)]));
        assert!(err.contains("empty input"), "{}: {err}", f.display());
        let err = fails(&memvirt(&["trace", "convert", p(f), p(&dir.path("o.mvt"))]));
        assert!(err.contains("empty input"), "{err}");
    }
    let stdin = Command::new(env!("CARGO_BIN_EXE_memvirt"))
        .args(["run", "--scheme", "native", "--trace", "-"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("runs");
    assert!(fails(&stdin).contains("<stdin>: byte 0: empty input"));
    // Lackey text with no access at all.
    let quiet = dir.file("q.lackey", b"==1== Command: ./q\n==1== done\n");
    let err = fails(&memvirt(&["run", "--scheme", "native", "--trace", p(&quiet)]));
    assert!(err.contains("no memory accesses"), "{err}");
    let lackey = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/small.lackey");
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--scheme", "native", "--trace", p(&lackey)];
        args.extend_from_slice(extra);
        memvirt(&args)
    };
    // small.lackey holds 6 records.
    let err = fails(&run(&["--skip", "6"]));
    assert!(err.contains("--skip 6 is past the end of every stream (the longest holds 6"), "{err}");
    ok(&run(&["--skip", "5"]));
    let zero = run(&["--limit", "0"]);
    assert_eq!(zero.status.code(), Some(2), "{}", text(&zero.stderr));
    assert!(text(&zero.stderr).contains("--limit"));
    let err = fails(&memvirt(&["run", "--scheme", "native", "--trace", "-", "--trace", "-"]));
    assert!(err.contains("can be read only once"), "{err}");
}

#[test]
fn verify_and_info_fail_on_a_damaged_trace() {
    let dir = Dir::new("cli-verify");
    let lackey = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/small.lackey");
    let good = dir.path("s.mvt");
    ok(&memvirt(&["trace", "convert", p(&lackey), p(&good)]));
    let out = ok(&memvirt(&["trace", "verify", p(&good)]));
    assert!(out.contains("s.mvt: ok: compact trace v2, 1 streams, 1 blocks, 6 records"), "{out}");
    let bytes = std::fs::read(&good).expect("written");
    // A bit in the block's compressed records, one in the directory.
    for (at, what) in [(100, "corrupt block"), (bytes.len() - 3, "corrupt directory")] {
        let mut bad = bytes.clone();
        bad[at] ^= 1;
        let f = dir.file("bad.mvt", &bad);
        for cmd in ["verify", "info"] {
            let err = fails(&memvirt(&["trace", cmd, p(&f)]));
            assert!(err.contains("bad.mvt: byte ") && err.contains(what), "{cmd} {at}: {err}");
        }
    }
    // A version-1 file verifies with a warning.
    let v1 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/small-v1.mvt");
    let out = memvirt(&["trace", "verify", p(&v1)]);
    assert!(text(&out.stdout).contains("ok: compact trace v1"), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("warning") && text(&out.stderr).contains("no checksums"));
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

#[test]
fn a_report_never_replaces_the_trace_it_came_from() {
    let dir = Dir::new("cli-output-is-input");
    let body = b"I  0401000,3\n L 7ff000100,8\n S 7ff000200,8\n";
    let trace = dir.file("t.lackey", body);
    let other_name = dir.path("same-file.lackey");
    std::fs::hard_link(&trace, &other_name).expect("a hard link");
    for output in [&trace, &other_name] {
        let err = fails(&memvirt(&[
            "run",
            "--scheme",
            "nested",
            "--trace",
            p(&trace),
            "--output",
            p(output),
        ]));
        assert!(err.contains("also an input"), "{err}");
    }
    assert_eq!(std::fs::read(&trace).expect("the trace"), body, "the trace is intact");
}

/// SIGTERM during `trace convert` removes `OUT.PID.tmp` and exits as the signal would (143);
/// likewise the temporary compact file of `run --trace -`.
#[test]
fn an_interrupted_conversion_leaves_no_temporary_file() {
    use std::io::Write;
    let dir = Dir::new("cli-convert-stop");
    let out = dir.path("o.mvt");
    for args in [
        vec!["trace".to_owned(), "convert".into(), "-".into(), p(&out).into()],
        vec!["run".to_owned(), "--scheme".into(), "native".into(), "--trace".into(), "-".into()],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_memvirt"))
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the binary runs");
        // One record, then the input stays open: the conversion waits with its file open.
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(b"I  0401000,3\n L 7ff000100,8\n").expect("write the trace");
        input.flush().expect("flush");
        let pid = child.id();
        let temporary = |dir: &Path| {
            std::fs::read_dir(dir).expect("a directory").flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("o.mvt.") || name.starts_with(&format!("memvirt-replay-{pid}-"))
            })
        };
        let started = std::time::Instant::now();
        while !temporary(dir.0.as_path()) && !temporary(&std::env::temp_dir()) {
            assert!(started.elapsed().as_secs() < 30, "{args:?}: no temporary file appeared");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let killed = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        assert!(killed.is_ok_and(|s| s.success()));
        let status = child.wait().expect("memvirt ends");
        drop(input);
        assert_eq!(status.code(), Some(128 + 15), "{args:?}: {status}");
        assert!(!temporary(dir.0.as_path()), "{args:?} left its temporary file");
        assert!(!temporary(&std::env::temp_dir()), "{args:?} left its temporary file");
        assert!(!out.exists());
    }
}

/// SIGTERM to memvirt alone stops every process of the recorded program, not only valgrind:
/// here a `sleep` the shell started in the background, under a valgrind of its own.
#[test]
fn an_interrupted_recording_stops_the_whole_process_group() {
    if !have_valgrind() {
        return;
    }
    let dir = Dir::new("cli-record-group");
    let trace = dir.path("never.mvt");
    // A number no other process on the machine has in its command line.
    let mark = format!("{}", 700_000_000 + std::process::id());
    let script = format!("sleep {mark} & while :; do :; done");
    // Messages go to a file, not a pipe: a surviving process holding the pipe would make the
    // test wait for it instead of failing.
    let messages = dir.path("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_memvirt"))
        .args(["record", "--output", p(&trace), "--", "/bin/sh", "-c", &script])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&messages).expect("a message file"))
        .spawn()
        .expect("the binary runs");
    let sleeping = || {
        std::fs::read_dir("/proc").expect("/proc").flatten().any(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.windows(2).any(|w| w[0].ends_with(b"sleep") && w[1] == mark.as_bytes())
        })
    };
    let started = std::time::Instant::now();
    while !sleeping() {
        assert!(started.elapsed().as_secs() < 60, "the background sleep never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(killed.is_ok_and(|s| s.success()));
    let status = child.wait().expect("memvirt ends");
    let err = std::fs::read_to_string(&messages).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    // SIGKILL is delivered before memvirt exits; give the kernel a moment to reap.
    let started = std::time::Instant::now();
    while sleeping() {
        assert!(started.elapsed().as_secs() < 10, "the background sleep {mark} is still running");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn guest_replay_refuses_a_trace_that_is_not_full_system() {
    let v1 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/small-v1.mvt");
    let out = memvirt(&[OsStr::new("guest"), OsStr::new("replay"), v1.as_os_str()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("small-v1.mvt: not a full-system trace"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
