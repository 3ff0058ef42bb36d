//! The `memvirt` binary end to end: the default job, and clear errors with a non-zero exit for
//! bad input.

use std::process::{Command, Output};

fn memvirt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memvirt")).args(args).output().expect("the binary runs")
}

#[test]
fn compare_prints_a_row_per_scheme_with_the_cold_walk_counts() {
    let out = memvirt(&["compare", "--accesses", "20000", "--pages", "4096", "--no-walk-caches"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let refs = |scheme: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(scheme)).expect("a row per scheme");
        line.split_whitespace().nth(3).and_then(|f| f.parse().ok()).expect("refs_per_miss column")
    };
    assert_eq!(refs("native"), 3.0);
    assert_eq!(refs("nested"), 15.0);
}

#[test]
fn the_same_seed_prints_the_same_table() {
    let args = ["compare", "--accesses", "5000", "--seed", "7"];
    assert_eq!(memvirt(&args).stdout, memvirt(&args).stdout);
}

#[test]
fn bad_input_fails_cleanly_naming_the_value() {
    for (args, needle) in [
        (vec!["compare", "--guest-format", "sv32"], "sv32"),
        (vec!["compare", "--guest-format", "sv39x4"], "nested format"),
        (vec!["compare", "--pages", "0"], "--pages"),
        (vec!["compare", "--schemes", "bogus"], "bogus"),
        (vec!["compare", "--accesses", "-1"], "-1"),
    ] {
        let out = memvirt(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn list_names_the_schemes_and_formats() {
    let out = memvirt(&["list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ["native", "nested", "Sv39x4", "EPT 5-level"] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}
