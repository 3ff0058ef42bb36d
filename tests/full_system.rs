//! Full-system recording and replay (issue 18): boots the unmodified Debian riscv64 kernel
//! under QEMU with memvirt's plugin, runs `touch-pages 64` (guest/touch-pages.c: maps 64 fresh
//! pages and stores one byte to each between markers 1 and 2), and replays the recording
//! under every scheme with the translation oracle on.
//!
//! Hand-derived facts for the marked window: the program makes exactly 64 user stores, each to
//! a page Linux has not mapped yet, so the kernel takes exactly 64 store page faults; every
//! access the guest completed translates, through the tables the kernel wrote, to the
//! guest-physical address QEMU recorded (which also proves the recorded `satp` roots are the
//! tables' roots); all 15 schemes see the same guest history.
//!
//! Needs QEMU 10 and the guest kit (`scripts/guest-kit.sh fetch`, which `scripts/test.sh`
//! runs). Without them the test says so and skips, unless MEMVIRT_REQUIRE_GUEST is set (the
//! test script sets it once the kit is installed), when it fails.

use std::path::PathBuf;
use std::process::Command;

fn memvirt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_memvirt"))
}

fn kit_ready() -> bool {
    let kit = std::env::var_os("MEMVIRT_KIT").map(PathBuf::from).or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(cache.join("memvirt/guest-kit"))
    });
    let qemu = Command::new("qemu-system-riscv64").arg("--version").output().is_ok();
    qemu && kit.is_some_and(|k| k.join("riscv64/kernel").is_file())
}

#[test]
fn a_real_guest_replays_oracle_clean_under_every_scheme() -> Result<(), Box<dyn std::error::Error>>
{
    if !kit_ready() {
        if std::env::var_os("MEMVIRT_REQUIRE_GUEST").is_some() {
            return Err("MEMVIRT_REQUIRE_GUEST is set but QEMU or the guest kit is missing".into());
        }
        eprintln!("skipped: no QEMU or guest kit (scripts/guest-kit.sh fetch installs them)");
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("memvirt-fullsys-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let trace = dir.join("touch.mvt");
    let rec = memvirt()
        .args(["guest", "record", "--paging", "sv39", "--timeout", "600", "-o"])
        .arg(&trace)
        .args(["--", "touch-pages", "64"])
        .output()?;
    let stderr = String::from_utf8_lossy(&rec.stderr);
    assert!(rec.status.success(), "recording failed: {stderr}");
    assert!(stderr.contains("memvirt-guest: exit 0"), "{stderr}");

    let out = memvirt()
        .args(["guest", "replay", "--from-marker", "1", "--to-marker", "2", "--verify"])
        .args(["--format", "json"])
        .arg(&trace)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "replay failed: {stderr}");
    let reports: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    assert_eq!(reports.len(), 15, "every scheme ran");
    let history = &reports[0]["guest"]["history"];
    for r in &reports {
        let scheme = r["scheme"].as_str().unwrap_or("?");
        let s = &r["system"];
        assert_eq!(s["user_stores"], 64, "{scheme}: the program's stores");
        assert_eq!(s["page_faults"]["store"], 64, "{scheme}: one fault per page");
        assert_eq!(r["guest_page_faults"], 64, "{scheme}: each replayed fault faults");
        assert_eq!(s["spurious_faults"], 0, "{scheme}");
        assert_eq!(s["pa_mismatches"], 0, "{scheme}: {}", s["first_discrepancy"]);
        assert_eq!(s["unexpected_faults"], 0, "{scheme}: {}", s["first_discrepancy"]);
        assert_eq!(s["guest_format"], "Sv39");
        assert_eq!(&r["guest"]["history"], history, "{scheme}: same guest history");
        assert!(r["oracle"]["checks"].as_u64().unwrap_or(0) > 0, "{scheme}: oracle checked");
    }
    let by = |name: &str| reports.iter().find(|r| r["scheme"] == name);
    let nested = by("nested").ok_or("no nested")?;
    assert_eq!(nested["vm_exits"]["write_protect"], 0, "nested paging never write-protects");
    let tsp = by("tsp").ok_or("no tsp")?;
    assert!(
        tsp["vm_exits"]["write_protect"].as_u64().unwrap_or(0) >= 63,
        "tsp exits for the leaf PTE stores into shadowed table pages: {}",
        tsp["vm_exits"]
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
