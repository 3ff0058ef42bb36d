//! Walk reference counts, derived by hand from the specifications, for every format pair, with
//! every cache off and with the page-walk caches and nested TLB on.

use memvirt::addr::{Asid, Gva, PageSize};
use memvirt::fixture::{self, Guest};
use memvirt::machine::{Machine, Scheme};
use memvirt::mmu::MmuConfig;
use memvirt::paging::{Access, Dim, Format};
use memvirt::scheme::{Native, Nested, NestedOptions};
use memvirt::stats::ExitCause;

/// A 2 MiB-aligned user address well inside every format's lower half.
const VA: Gva = Gva::new(0x0000_0012_3460_0000);
const PAGE: u64 = 4096;

fn cold() -> MmuConfig {
    MmuConfig::default().without_walk_caches()
}

fn native(format: Format, mmu: MmuConfig) -> (Machine<Native>, Guest) {
    let p = fixture::platform(fixture::arch(format, Format::SV39X4), mmu).unwrap();
    let mut m = Machine::new(p, Native);
    let g = Guest::new(&mut m, Asid(1)).unwrap();
    (m, g)
}

fn nested(
    guest: Format,
    nested: Format,
    mmu: MmuConfig,
    prepopulate: bool,
) -> (Machine<Nested>, Guest) {
    let mut p = fixture::platform(fixture::arch(guest, nested), mmu).unwrap();
    let opts = NestedOptions { prepopulate, ..NestedOptions::default() };
    let scheme = Nested::new(&mut p, opts).unwrap();
    let mut m = Machine::new(p, scheme);
    let g = Guest::new(&mut m, Asid(1)).unwrap();
    (m, g)
}

/// Reads of the walk behind one access that must miss the TLB: (total, guest dim, nested dim).
fn walk_reads<S: Scheme>(m: &mut Machine<S>, va: Gva) -> (usize, usize, usize) {
    m.access(va, Access::USER_LOAD).unwrap();
    let t = &m.platform.mmu.trace;
    (t.reads(), t.reads_in(Dim::Guest), t.reads_in(Dim::Nested))
}

#[test]
fn native_walks_read_one_entry_per_level() {
    for (format, levels) in [
        (Format::SV39, 3),
        (Format::SV48, 4),
        (Format::SV57, 5),
        (Format::X86_64_4LEVEL, 4),
        (Format::X86_64_5LEVEL, 5),
    ] {
        let (mut m, mut g) = native(format, cold());
        g.map_fresh(&mut m, VA, 1).unwrap();
        assert_eq!(walk_reads(&mut m, VA), (levels, levels, 0), "{format}");
    }
}

#[test]
fn nested_walks_read_n_plus_one_times_m_plus_one_minus_one_entries() {
    for (guest, host, expected) in [
        (Format::SV39, Format::SV39X4, 15),
        (Format::SV39, Format::SV48X4, 19),
        (Format::SV48, Format::SV39X4, 19),
        (Format::SV48, Format::SV48X4, 24),
        (Format::SV57, Format::SV57X4, 35),
        (Format::X86_64_4LEVEL, Format::EPT_4LEVEL, 24),
        (Format::X86_64_5LEVEL, Format::EPT_5LEVEL, 35),
        (Format::X86_64_4LEVEL, Format::EPT_5LEVEL, 29),
    ] {
        let (mut m, mut g) = nested(guest, host, cold(), true);
        g.map_fresh(&mut m, VA, 1).unwrap();
        let n = guest.levels as usize;
        assert_eq!(walk_reads(&mut m, VA), (expected, n, expected - n), "{guest} over {host}");
        assert_eq!(m.platform.stats.total_exits(), 0, "a prepopulated nested table never faults");
    }
}

#[test]
fn native_page_walk_caches_skip_the_levels_they_hold() {
    let (mut m, mut g) = native(Format::SV39, MmuConfig::default());
    // Two pages in the same 2 MiB region, and one in another 2 MiB region of the same 1 GiB.
    g.map_fresh(&mut m, VA, 2).unwrap();
    let far = VA.wrapping_add(4 << 20);
    g.map_fresh(&mut m, far, 1).unwrap();
    assert_eq!(walk_reads(&mut m, VA).0, 3, "cold: root, level 1, leaf");
    assert_eq!(walk_reads(&mut m, VA.wrapping_add(PAGE)).0, 1, "level-1 pointer cached: leaf only");
    assert_eq!(walk_reads(&mut m, far).0, 2, "root pointer cached: level 1 and leaf");
}

/// Sv39 over Sv39x4 with page-walk caches and the nested TLB on. The fixture allocates the
/// guest's three table pages and its data pages from consecutive frames, all in one 2 MiB
/// region, so the nested walk for the root table's GPA reads 3 entries and every later nested
/// walk hits the nested level-1 pointer and reads 1:
/// first miss = 3 guest + (3 + 1 + 1 + 1) nested = 9; a neighbouring page then costs the guest
/// leaf (guest level-1 pointer cached, its table's GPA in the nested TLB) plus 1 nested read for
/// the new data page = 2.
#[test]
fn nested_walk_caches_cut_sv39_misses_to_9_then_2() {
    let (mut m, mut g) = nested(Format::SV39, Format::SV39X4, MmuConfig::default(), true);
    g.map_fresh(&mut m, VA, 2).unwrap();
    assert_eq!(walk_reads(&mut m, VA), (9, 3, 6));
    assert_eq!(walk_reads(&mut m, VA.wrapping_add(PAGE)), (2, 1, 1));
    // The same page again hits the TLB: no walk.
    let walks = m.platform.mmu.stats().walks;
    m.access(VA, Access::USER_LOAD).unwrap();
    assert_eq!(m.platform.mmu.stats().walks, walks);
}

/// With an empty nested table every guest frame costs exactly one nested-fault exit the first
/// time the guest touches it: the 3 table pages when the guest zeroes them, then each of the N
/// data pages at its first access.
#[test]
fn empty_nested_table_costs_one_exit_per_guest_frame_touched() {
    const N: u64 = 10;
    let (mut m, mut g) = nested(Format::SV39, Format::SV39X4, MmuConfig::default(), false);
    g.map_fresh(&mut m, VA, N).unwrap();
    assert_eq!(
        m.platform.stats.exits_for(ExitCause::NestedFault),
        3,
        "root + level-1 + leaf tables"
    );
    for i in 0..N {
        m.access(VA.wrapping_add(i * PAGE), Access::USER_STORE).unwrap();
    }
    assert_eq!(m.platform.stats.exits_for(ExitCause::NestedFault), 3 + N);
    assert_eq!(m.platform.stats.total_exits(), 3 + N);
    assert_eq!(m.scheme.leaves, 3 + N);
    // Touching them again costs nothing more.
    for i in 0..N {
        m.access(VA.wrapping_add(i * PAGE), Access::USER_LOAD).unwrap();
    }
    assert_eq!(m.platform.stats.total_exits(), 3 + N);
}

#[test]
fn a_superpage_walk_stops_early_and_fills_one_tlb_entry_for_the_region() {
    let (mut m, mut g) = native(Format::SV39, cold());
    let gfn = g.alloc_aligned(PageSize::Size2M).unwrap();
    let attrs = memvirt::paging::LeafAttrs::new(fixture::USER_RW);
    g.map(&mut m, VA, gfn.addr(), PageSize::Size2M, attrs).unwrap();
    assert_eq!(walk_reads(&mut m, VA).0, 2, "root and a level-1 leaf");
    let walks = m.platform.mmu.stats().walks;
    for i in 1..512 {
        m.access(VA.wrapping_add(i * PAGE), Access::USER_LOAD).unwrap();
    }
    assert_eq!(m.platform.mmu.stats().walks, walks, "one 2 MiB TLB entry covers all 512 pages");
}
