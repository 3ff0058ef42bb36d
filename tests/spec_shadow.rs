//! `spec-shadow`: probes, hits, mis-speculations and verification reads in tiny scenarios,
//! derived by hand; a mis-speculated translation never reaches the TLB.

use std::collections::BTreeMap;

use memvirt::addr::{Asid, Gva, Level, PageSize};
use memvirt::fixture::{self, Guest};
use memvirt::machine::{Machine, Scheme};
use memvirt::mmu::{FlushOp, MmuConfig};
use memvirt::paging::{mapper, Access, Format, LeafAttrs};
use memvirt::scheme::{SpecShadow, SpecShadowOptions};
use memvirt::stats::ExitCause;

const VA: Gva = Gva::new(0x0000_0012_3460_0000);

fn machine(opts: SpecShadowOptions) -> (Machine<SpecShadow>, Guest) {
    let arch = fixture::arch(Format::SV39, Format::SV39X4);
    let mut p = fixture::platform(arch, MmuConfig::default()).unwrap();
    let scheme = SpecShadow::new(&mut p, opts, true).unwrap();
    let mut m = Machine::new(p, scheme);
    let g = Guest::new(&mut m, Asid(1)).unwrap();
    (m, g)
}

fn counters(m: &Machine<SpecShadow>) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    m.scheme.counters(&mut out);
    out
}

/// (probes, hits, mis-speculations, verification reads, refills).
fn counts(m: &Machine<SpecShadow>) -> (u64, u64, u64, u64, u64) {
    let c = counters(m);
    (c["probes"], c["hits"], c["mis_speculations"], c["verification_reads"], c["refills"])
}

fn flush(m: &mut Machine<SpecShadow>) {
    m.guest_flush(FlushOp::SfenceVma { va: Some(VA), asid: None }).unwrap();
}

/// Sv39 over a prepopulated flat table, page-walk caches and nested TLB on:
/// 1. first access: the probe misses; the walk reads 3 guest + 4 flat entries (7) and refills;
/// 2. after `sfence.vma va` (which keeps the walk caches and the nested TLB): the probe hits,
///    the walk reads only the guest leaf (1) and agrees: nothing refilled;
/// 3. the guest points the page at another frame and flushes: the probe hits the stale entry,
///    the walk reads the guest leaf and one flat entry for the new frame (2) and disagrees: one
///    mis-speculation, squashed, refilled; the TLB gets the new frame;
/// 4. after another flush: a hit again, 1 read, right.
#[test]
fn a_remapped_page_mis_speculates_exactly_once() {
    let (mut m, mut g) = machine(SpecShadowOptions::default());
    g.map_fresh(&mut m, VA, 1).unwrap();
    let old = m.access(VA, Access::USER_LOAD).unwrap();
    assert_eq!(counts(&m), (1, 0, 0, 7, 1));

    flush(&mut m);
    assert_eq!(m.access(VA, Access::USER_LOAD).unwrap(), old);
    assert_eq!(counts(&m), (2, 1, 0, 8, 1));

    let frame = g.alloc().unwrap();
    let table = g.root.table;
    let new_leaf = Format::SV39.encode_leaf(
        frame.addr().as_u64(),
        Level::L0,
        LeafAttrs::new(fixture::USER_RW),
    );
    let mut store = m.guest_tables(|| g.alloc());
    let (_, pending) = mapper::update_leaf(&table, &mut store, VA, |_| new_leaf).unwrap();
    pending.ignore();
    flush(&mut m);
    let new = m.access(VA, Access::USER_LOAD).unwrap();
    assert_ne!(new, old);
    assert_eq!(Some(new), m.platform.gpa_to_hpa(frame.addr()).unwrap());
    assert_eq!(counts(&m), (3, 2, 1, 10, 2));
    assert_eq!(counters(&m)["squash_cycles"], 20);

    flush(&mut m);
    assert_eq!(m.access(VA, Access::USER_LOAD).unwrap(), new);
    assert_eq!(counts(&m), (4, 3, 1, 11, 2));
    assert_eq!(m.platform.stats.total_exits(), 0, "no write protection, no flush exits");
}

/// A correct speculation hides the verifying walk: the miss costs the probe alone. The probe's
/// line was read by the first miss, and the seven lines of its walk cannot have evicted it from
/// the page-table cache's 64-line L1, so it costs `pt_l1` = 4 cycles; the walk's cycles go to
/// `hidden_verification_cycles`. With `expose_verification` they are charged instead.
#[test]
fn a_correct_speculation_costs_only_the_probe_unless_verification_is_exposed() {
    for expose in [false, true] {
        let opts =
            SpecShadowOptions { expose_verification: expose, ..SpecShadowOptions::default() };
        let (mut m, mut g) = machine(opts);
        g.map_fresh(&mut m, VA, 1).unwrap();
        m.access(VA, Access::USER_LOAD).unwrap();
        flush(&mut m);
        let (walk, hidden) =
            (m.platform.stats.cycles.walk, counters(&m)["hidden_verification_cycles"]);
        assert_eq!(hidden, 0, "the first miss had nothing to speculate with");
        m.access(VA, Access::USER_LOAD).unwrap();
        let hidden = counters(&m)["hidden_verification_cycles"] - hidden;
        let charged = m.platform.stats.cycles.walk - walk;
        assert_eq!(counts(&m).1, 1, "one hit");
        if expose {
            assert_eq!(hidden, 0);
            assert!(charged > 4, "probe and walk: {charged}");
        } else {
            assert_eq!(charged, m.platform.costs.pt_l1);
            assert!(hidden > 0);
        }
    }
}

/// A store to a clean page cannot use an entry stored by a load of it: no speculation (not a
/// hit); the walk sets D and the refill records it, so the next store after a flush speculates.
#[test]
fn a_store_never_speculates_on_a_clean_entry() {
    let (mut m, mut g) = machine(SpecShadowOptions::default());
    let frame = g.alloc().unwrap();
    let clean = LeafAttrs { dirty: false, ..LeafAttrs::new(fixture::USER_RW) };
    g.map(&mut m, VA, frame.addr(), PageSize::Size4K, clean).unwrap();
    m.access(VA, Access::USER_LOAD).unwrap();
    flush(&mut m);
    m.access(VA, Access::USER_STORE).unwrap();
    assert_eq!((counts(&m).1, counts(&m).4), (0, 2), "no hit; refilled with D set");
    flush(&mut m);
    m.access(VA, Access::USER_STORE).unwrap();
    assert_eq!((counts(&m).1, counts(&m).2), (1, 0));
}

/// A page the guest unmapped and flushed: the stale entry speculates, the walk faults, the
/// speculation is squashed and the guest gets its page fault; the entry is dropped, so the
/// retry after the guest maps the page again does not mis-speculate a second time.
#[test]
fn an_unmapped_page_squashes_and_faults() {
    let (mut m, mut g) = machine(SpecShadowOptions::default());
    g.map_fresh(&mut m, VA, 1).unwrap();
    m.access(VA, Access::USER_LOAD).unwrap();
    let table = g.root.table;
    let mut store = m.guest_tables(|| g.alloc());
    mapper::unmap(&table, &mut store, VA).unwrap().1.ignore();
    flush(&mut m);
    assert!(m.access(VA, Access::USER_LOAD).is_err());
    assert_eq!(counts(&m).2, 1);
    assert_eq!(m.platform.stats.guest_faults, 1);
    g.map_fresh(&mut m, VA, 1).unwrap();
    m.access(VA, Access::USER_LOAD).unwrap();
    assert_eq!((counts(&m).0, counts(&m).1, counts(&m).2), (3, 1, 1), "probe missed");
}

/// Without prepopulation the flat table fills lazily, as `flat-nested`'s: one exit per frame.
#[test]
fn the_flat_table_behind_the_verification_fills_lazily() {
    let arch = fixture::arch(Format::SV39, Format::SV39X4);
    let mut p = fixture::platform(arch, MmuConfig::default()).unwrap();
    let scheme = SpecShadow::new(&mut p, SpecShadowOptions::default(), false).unwrap();
    let mut m = Machine::new(p, scheme);
    let mut g = Guest::new(&mut m, Asid(1)).unwrap();
    g.map_fresh(&mut m, VA, 1).unwrap();
    m.access(VA, Access::USER_LOAD).unwrap();
    assert_eq!(
        m.platform.stats.exits_for(ExitCause::NestedFault),
        4,
        "root, level-1 and leaf tables at their zeroing, the data page at its first access"
    );
}

/// `--set scheme.KEY=VALUE` reaches spec-shadow's own options; in a `compare` beside a shadow
/// preset each scheme takes the keys it has; a key no selected scheme has is refused.
#[test]
fn scheme_settings_reach_spec_shadow_and_mix_with_shadow_presets() {
    let memvirt = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_memvirt")).args(args).output().unwrap()
    };
    let small =
        ["--workloads", "ctxsw", "--set", "workload.processes=3", "--set", "workload.turns=5"];
    let mut args = vec!["compare", "--schemes", "ssp,spec-shadow", "--format", "json"];
    args.extend(small);
    args.extend(["--set", "scheme.root_buffer=1", "--set", "scheme.squash_penalty=99"]);
    let out = memvirt(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut args = vec!["compare", "--schemes", "spec-shadow"];
    args.extend(small);
    args.extend(["--set", "scheme.root_buffer=1"]);
    let out = memvirt(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("unknown key `root_buffer`") && err.contains("squash_penalty"), "{err}");
    let mut args = vec!["compare", "--schemes", "spec-shadow"];
    args.extend(small);
    args.extend(["--set", "scheme.ways=3"]);
    let err = String::from_utf8_lossy(&memvirt(&args).stderr).into_owned();
    assert!(err.contains("scheme.entries") && err.contains("spec-shadow"), "{err}");
}
