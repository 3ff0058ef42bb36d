//! Full-system recording and replay (issue 18): boots the unmodified Debian riscv64 kernel
//! under QEMU with memvirt's plugin, runs `touch-pages 64` (guest/touch-pages.c: maps 64 fresh
//! pages at 128 GiB and stores one byte to each between markers 1 and 2), and replays the
//! recording under every scheme with the translation oracle on, cold, and under four schemes
//! warm (the scheme runs the boot first).
//!
//! Hand-derived facts for the marked window: the program makes exactly 64 user stores, each to
//! a page Linux has not mapped yet, so the kernel takes exactly 64 store page faults; the
//! 1 GiB-aligned range at 128 GiB has no tables below the root yet, so under Sv39 the kernel
//! stores exactly 66 entries into the process's tables: one root entry (the new middle
//! table), one middle entry (the new leaf table) and 64 leaf PTEs (the new tables' zeroing
//! happens before they are linked in, so it is not a table store); every access the guest
//! completed translates, through the tables the kernel wrote, to the guest-physical address
//! QEMU recorded (which also proves the recorded `satp` roots are the tables' roots); all
//! schemes see the same guest history, warm or cold.
//!
//! The same program under the x86-64 guest (Debian's amd64 kernel, 4-level paging): the range
//! at 128 GiB lies under the first PML4 entry, which the program's own mappings already use,
//! so again exactly one PDPT entry (the new page directory), one page-directory entry (the
//! new page table) and 64 PTEs: 66 table stores; the kernel's first tables come from the
//! loader's copy of vmlinux (the plugin's `image=`), and the warm replay checks every access
//! of the boot against them.
//!
//! Needs QEMU 10 and the guest kit (`scripts/guest-kit.sh fetch`, which `scripts/test.sh`
//! runs). Without them the tests say so and skip, unless MEMVIRT_REQUIRE_GUEST is set (the
//! test script sets it once the kit is installed), when they fail.

use std::path::PathBuf;
use std::process::Command;

fn memvirt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_memvirt"))
}

fn kit_ready(arch: &str) -> bool {
    let kit = std::env::var_os("MEMVIRT_KIT").map(PathBuf::from).or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(cache.join("memvirt/guest-kit"))
    });
    let qemu = Command::new(format!("qemu-system-{arch}")).arg("--version").output().is_ok();
    qemu && kit.is_some_and(|k| k.join(arch).join("kernel").is_file())
}

/// Whether the guest tests can run for `arch`; an error if they must and cannot.
fn guest_available(arch: &str) -> Result<bool, String> {
    if kit_ready(arch) {
        return Ok(true);
    }
    if std::env::var_os("MEMVIRT_REQUIRE_GUEST").is_some() {
        return Err(format!(
            "MEMVIRT_REQUIRE_GUEST is set but QEMU or the {arch} guest kit is missing"
        ));
    }
    eprintln!("skipped: no QEMU or {arch} guest kit (scripts/guest-kit.sh fetch installs them)");
    Ok(false)
}

/// Records `touch-pages 64` in a guest of `arch` (`riscv64` or `x86-64`) into a fresh
/// temporary directory; returns the directory and the trace in it.
fn record_touch_pages(arch: &str) -> std::io::Result<(PathBuf, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("memvirt-fullsys-{arch}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let trace = dir.join("touch.mvt");
    let rec = memvirt()
        .args(["guest", "record", "--arch", arch, "--timeout", "600", "-o"])
        .arg(&trace)
        .args(["--", "touch-pages", "64"])
        .output()?;
    let stderr = String::from_utf8_lossy(&rec.stderr);
    assert!(rec.status.success(), "recording failed: {stderr}");
    assert!(stderr.contains("memvirt-guest: exit 0"), "{stderr}");
    Ok((dir, trace))
}

/// Replays `trace` between touch-pages' markers with the oracle on, plus `extra` arguments.
fn replay_window(trace: &std::path::Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let out = memvirt()
        .args(["guest", "replay", "--from-marker", "1", "--to-marker", "2", "--verify"])
        .args(["--format", "json"])
        .args(extra)
        .arg(trace)
        .output()
        .expect("memvirt runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "replay {extra:?} failed: {stderr}");
    serde_json::from_slice(&out.stdout).expect("JSON reports")
}

/// The hand-derived facts of the touch-pages window (module doc), for every report.
fn check_touch_pages(
    reports: &[serde_json::Value],
    start: &str,
    format: &str,
    history: &serde_json::Value,
) {
    for r in reports {
        let scheme = format!("{} ({start})", r["scheme"].as_str().unwrap_or("?"));
        let s = &r["system"];
        assert_eq!(s["start"], start, "{scheme}");
        assert_eq!(s["user_stores"], 64, "{scheme}: the program's stores");
        assert_eq!(s["page_faults"]["store"], 64, "{scheme}: one fault per page");
        assert_eq!(s["table_stores"], 66, "{scheme}: two upper entries and 64 leaf entries");
        assert_eq!(r["guest_page_faults"], 64, "{scheme}: each replayed fault faults");
        assert_eq!(s["spurious_faults"], 0, "{scheme}: {}", s["first_discrepancy"]);
        assert_eq!(s["pa_mismatches"], 0, "{scheme}: {}", s["first_discrepancy"]);
        assert_eq!(s["unexpected_faults"], 0, "{scheme}: {}", s["first_discrepancy"]);
        assert_eq!(s["guest_format"], format, "{scheme}");
        assert_eq!(&r["guest"]["history"], history, "{scheme}: same guest history");
        assert!(r["oracle"]["checks"].as_u64().unwrap_or(0) > 0, "{scheme}: oracle checked");
    }
}

#[test]
fn a_real_guest_replays_oracle_clean_under_every_scheme() -> Result<(), Box<dyn std::error::Error>>
{
    if !guest_available("riscv64")? {
        return Ok(());
    }
    let (dir, trace) = record_touch_pages("riscv64")?;
    let cold = replay_window(&trace, &["--cold"]);
    let warm = replay_window(&trace, &["--schemes", "native,nested,tsp,ssp"]);
    assert_eq!(cold.len(), 15, "every scheme ran");
    assert_eq!(warm.len(), 4);
    let history = &cold[0]["guest"]["history"];
    check_touch_pages(&cold, "cold", "Sv39", history);
    check_touch_pages(&warm, "warm", "Sv39", history);
    let exits = |reports: &[serde_json::Value], name: &str, cause: &str| {
        let r = reports.iter().find(|r| r["scheme"] == name);
        r.and_then(|r| r["vm_exits"][cause].as_u64()).unwrap_or(u64::MAX)
    };
    // A warm nested table already maps what the boot touched; a cold one maps nothing.
    assert!(
        exits(&warm, "nested", "nested_fault") < exits(&cold, "nested", "nested_fault"),
        "warm nested paging takes fewer nested faults than cold"
    );
    let reports = cold;
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

#[test]
fn an_x86_64_guest_replays_oracle_clean_under_each_design() -> Result<(), Box<dyn std::error::Error>>
{
    if !guest_available("x86_64")? {
        return Ok(());
    }
    let (dir, trace) = record_touch_pages("x86-64")?;
    // One scheme of each design (the riscv64 test runs all 15), to keep the suite short.
    let families = "native,nested,flat-nested,spec-shadow,tsp,ssp,asp,snp,hspt-private,softmmu";
    let cold = replay_window(&trace, &["--cold", "--schemes", families]);
    // Warm, the native replay checks every access of the boot too (its correctness counts
    // cover the warm-up).
    let warm = replay_window(&trace, &["--schemes", "native"]);
    assert_eq!(cold.len(), 10, "every scheme named ran");
    let history = &cold[0]["guest"]["history"];
    check_touch_pages(&cold, "cold", "x86-64 4-level", history);
    check_touch_pages(&warm, "warm", "x86-64 4-level", history);
    for r in &cold {
        assert_eq!(r["profile"], "x86-64", "an x86 guest replays on the x86-64 machine");
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
