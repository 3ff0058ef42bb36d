//! `flat-nested`: walk reference counts derived by hand (2n + 1 with every cache off), the lazy
//! fill of the flat table, guest superpages, and the table's reported size.

use memvirt::addr::{Asid, Gva, PageSize};
use memvirt::fixture::{self, Guest, GUEST_BYTES};
use memvirt::machine::Machine;
use memvirt::mmu::MmuConfig;
use memvirt::paging::{Access, Dim, Format, LeafAttrs};
use memvirt::scheme::{FlatNested, FlatNestedOptions};
use memvirt::stats::ExitCause;

/// A 2 MiB-aligned user address well inside every format's lower half.
const VA: Gva = Gva::new(0x0000_0012_3460_0000);
const PAGE: u64 = 4096;

fn flat(
    guest: Format,
    nested: Format,
    mmu: MmuConfig,
    prepopulate: bool,
) -> (Machine<FlatNested>, Guest) {
    let mut p = fixture::platform(fixture::arch(guest, nested), mmu).unwrap();
    let scheme = FlatNested::new(&mut p, FlatNestedOptions { prepopulate }).unwrap();
    let mut m = Machine::new(p, scheme);
    let g = Guest::new(&mut m, Asid(1)).unwrap();
    (m, g)
}

/// Reads of the walk behind one access that must miss the TLB: (total, guest dim, nested dim).
fn walk_reads(m: &mut Machine<FlatNested>, va: Gva) -> (usize, usize, usize) {
    m.access(va, Access::USER_LOAD).unwrap();
    let t = &m.platform.mmu.trace;
    (t.reads(), t.reads_in(Dim::Guest), t.reads_in(Dim::Nested))
}

/// With every cache off, each of the n guest entries' GPAs and the final GPA costs one flat
/// read: n guest reads + (n + 1) nested reads = 2n + 1.
#[test]
fn flat_nested_walks_read_2n_plus_1_entries() {
    for (guest, nested, expected) in [
        (Format::SV39, Format::SV39X4, 7),
        (Format::SV48, Format::SV48X4, 9),
        (Format::SV57, Format::SV57X4, 11),
        (Format::X86_64_4LEVEL, Format::EPT_4LEVEL, 9),
        (Format::X86_64_5LEVEL, Format::EPT_5LEVEL, 11),
    ] {
        let (mut m, mut g) = flat(guest, nested, MmuConfig::default().without_walk_caches(), true);
        g.map_fresh(&mut m, VA, 1).unwrap();
        let n = guest.levels as usize;
        assert_eq!(2 * n + 1, expected);
        assert_eq!(walk_reads(&mut m, VA), (expected, n, n + 1), "{guest} over flat {nested}");
        assert_eq!(m.platform.stats.total_exits(), 0, "a prepopulated flat table never faults");
    }
}

/// Sv39 over a flat table with page-walk caches and the nested TLB on: the first miss reads all
/// 3 guest entries and 4 flat entries (root, level-1 and leaf tables, data page: each a
/// different frame, each a nested-TLB miss) = 7; a neighbouring page then costs the guest leaf
/// (level-1 pointer cached, its table's GPA in the nested TLB) and one flat read for the new data
/// page = 2. Against 9 and 2 with the radix Sv39x4 table (tests/walk_counts.rs).
#[test]
fn flat_walk_caches_cut_sv39_misses_to_7_then_2() {
    let (mut m, mut g) = flat(Format::SV39, Format::SV39X4, MmuConfig::default(), true);
    g.map_fresh(&mut m, VA, 2).unwrap();
    assert_eq!(walk_reads(&mut m, VA), (7, 3, 4));
    assert_eq!(walk_reads(&mut m, VA.wrapping_add(PAGE)), (2, 1, 1));
    assert_eq!(m.platform.mmu.stats().nested_pwc.lookups, 0, "a flat table has no upper levels");
}

/// An empty flat table costs one nested-fault exit per guest frame the guest touches first: the
/// three table pages when the guest zeroes them, then each data page at its first access.
#[test]
fn empty_flat_table_costs_one_exit_per_guest_frame_touched() {
    const N: u64 = 10;
    let (mut m, mut g) = flat(Format::SV39, Format::SV39X4, MmuConfig::default(), false);
    g.map_fresh(&mut m, VA, N).unwrap();
    assert_eq!(m.platform.stats.exits_for(ExitCause::NestedFault), 3);
    for i in 0..N {
        m.access(VA.wrapping_add(i * PAGE), Access::USER_STORE).unwrap();
    }
    for i in 0..N {
        m.access(VA.wrapping_add(i * PAGE), Access::USER_LOAD).unwrap();
    }
    assert_eq!(m.platform.stats.total_exits(), 3 + N);
    assert_eq!(m.scheme.leaves(), 3 + N);
    // The handler writes one entry: an exit costs vm_exit + 1 × hv_per_entry.
    let c = m.platform.costs;
    assert_eq!(m.platform.stats.cycles.vm_exit, (3 + N) * (c.vm_exit + c.hv_per_entry));
}

/// A 2 MiB guest page over 4 KiB flat entries: the walk stops at the guest's level-1 leaf
/// (2 guest reads + 3 flat reads), reaches the right host frame, and fills a 4 KiB TLB entry, so
/// each of the 512 pages of the superpage is a miss of its own (one flat read each once the
/// guest's walk is cached).
#[test]
fn a_guest_superpage_is_translated_4k_at_a_time() {
    let (mut m, mut g) = flat(Format::SV39, Format::SV39X4, MmuConfig::default(), true);
    let gfn = g.alloc_aligned(PageSize::Size2M).unwrap();
    g.map(&mut m, VA, gfn.addr(), PageSize::Size2M, LeafAttrs::new(fixture::USER_RW)).unwrap();
    assert_eq!(walk_reads(&mut m, VA), (5, 2, 3));
    let walks = m.platform.mmu.stats().walks;
    for i in 1..512 {
        let va = VA.wrapping_add(i * PAGE);
        let hpa = m.access(va, Access::USER_LOAD).unwrap();
        let gpa = gfn.addr().wrapping_add(i * PAGE);
        assert_eq!(Some(hpa), m.platform.gpa_to_hpa(gpa).unwrap(), "page {i}");
    }
    assert_eq!(m.platform.mmu.stats().walks, walks + 511, "one 4 KiB TLB entry per page");
}

#[test]
fn the_flat_table_is_8_bytes_per_guest_frame() {
    let (m, _) = flat(Format::X86_64_4LEVEL, Format::EPT_4LEVEL, MmuConfig::default(), false);
    assert_eq!(m.scheme.table().bytes(), GUEST_BYTES / PAGE * 8);
    let mut counters = std::collections::BTreeMap::new();
    memvirt::machine::Scheme::counters(&m.scheme, &mut counters);
    assert_eq!(counters["flat_table_bytes"], 2 << 20, "1 GiB of guest: 2 MiB of table");
}
