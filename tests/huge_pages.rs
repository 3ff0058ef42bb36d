//! Huge pages in both stages: cold walk counts derived by hand for every combination of guest
//! page and host page (`scheme.host_page`), the size of the TLB entry each fill makes, and the
//! oracle checking those sizes.
//!
//! A walk that ends at a guest leaf of level `lg` reads `n_g = levels - lg` guest entries. Under
//! nested paging each of them, and the final guest-physical address, is translated by a nested
//! walk that ends at the host page's level `lh`, reading `n_h = levels - lh` entries: a cold 2D
//! walk reads `n_g (n_h + 1) + n_h` entries (Sv39 4K over 4K: 3 × 4 + 3 = 15; 4K over 2M:
//! 3 × 3 + 2 = 11; 4K over 1G: 3 × 2 + 1 = 7). A shadow walk reads one entry per level down to
//! the shadow leaf, which is no larger than min(guest page, host page). Either way the TLB
//! entry covers min(guest page, host page).

use memvirt::addr::{Asid, Gpa, Gva, PageSize};
use memvirt::fixture::{self, Guest};
use memvirt::machine::{Machine, Scheme};
use memvirt::mem::HostPage;
use memvirt::mmu::MmuConfig;
use memvirt::paging::{Access, Dim, Format, LeafAttrs};
use memvirt::scheme::{Nested, NestedOptions, Shadow, ShadowOptions};

/// A 1 GiB-aligned user address inside every format's lower half.
const VA: Gva = Gva::new(0x0000_0012_4000_0000);
const PAGE: u64 = 4096;

const SIZES: [(PageSize, HostPage); 3] = [
    (PageSize::Size4K, HostPage::Size4K),
    (PageSize::Size2M, HostPage::Size2M),
    (PageSize::Size1G, HostPage::Size1G),
];

const FORMATS: [(Format, Format); 2] =
    [(Format::SV39, Format::SV39X4), (Format::X86_64_4LEVEL, Format::EPT_4LEVEL)];

/// Entries a walk reads from the root of `format` down to a leaf of `size`.
fn levels_to(format: Format, size: PageSize) -> usize {
    usize::from(format.levels) - size.level().index() as usize
}

/// Maps a user read-write guest page of `size` at [`VA`]: the guest's single 1 GiB page is
/// guest memory itself (at GPA 0, over the guest's own tables, which only loads touch).
fn map_guest_page<S: Scheme>(m: &mut Machine<S>, g: &mut Guest, size: PageSize) {
    let gpa = match size {
        PageSize::Size1G => Gpa::ZERO,
        PageSize::Size2M => g.alloc_aligned(size).unwrap().addr(),
        _ => g.alloc().unwrap().addr(),
    };
    g.map(m, VA, gpa, size, LeafAttrs::new(fixture::USER_RW)).unwrap();
}

/// Loads `va` and returns the walk behind it: (total reads, guest-dimension reads).
fn walk_reads<S: Scheme>(m: &mut Machine<S>, va: Gva) -> (usize, usize) {
    m.access(va, Access::USER_LOAD).unwrap();
    let t = &m.platform.mmu.trace;
    (t.reads(), t.reads_in(Dim::Guest))
}

/// Checks that the TLB entry behind [`VA`] covers exactly `covered` bytes: the last 4 KiB
/// page inside it hits, the first one past it (if still inside the guest's page) walks.
fn assert_tlb_covers<S: Scheme>(m: &mut Machine<S>, covered: u64, guest: PageSize, what: &str) {
    let walks = m.platform.mmu.stats().walks;
    m.access(VA.wrapping_add(covered - PAGE), Access::USER_LOAD).unwrap();
    assert_eq!(m.platform.mmu.stats().walks, walks, "{what}: the entry covers {covered} bytes");
    if covered < guest.bytes() {
        m.access(VA.wrapping_add(covered), Access::USER_LOAD).unwrap();
        assert!(m.platform.mmu.stats().walks > walks, "{what}: the entry covers no more");
    }
}

fn nested(guest: Format, host: Format, host_page: HostPage) -> (Machine<Nested>, Guest) {
    let cold = MmuConfig::default().without_walk_caches();
    let mut p = fixture::platform(fixture::arch(guest, host), cold).unwrap();
    let opts = NestedOptions { prepopulate: true, host_page, ..NestedOptions::default() };
    let scheme = Nested::new(&mut p, opts).unwrap();
    let mut m = Machine::new(p, scheme);
    m.enable_oracle();
    let g = Guest::new(&mut m, Asid(1)).unwrap();
    (m, g)
}

#[test]
fn cold_nested_walks_read_ng_times_nh_plus_one_plus_nh_entries_for_every_page_pair() {
    for (guest_format, host_format) in FORMATS {
        for (guest_page, _) in SIZES {
            for (host_size, host_page) in SIZES {
                let what = format!(
                    "{guest_format} {} over {host_format} {}",
                    guest_page.name(),
                    host_size.name()
                );
                let (mut m, mut g) = nested(guest_format, host_format, host_page);
                map_guest_page(&mut m, &mut g, guest_page);
                let n_g = levels_to(guest_format, guest_page);
                let n_h = levels_to(host_format, host_size);
                let expected = n_g * (n_h + 1) + n_h;
                assert_eq!(walk_reads(&mut m, VA), (expected, n_g), "{what}");
                assert_tlb_covers(&mut m, guest_page.min(host_size).bytes(), guest_page, &what);
                assert_eq!(m.platform.stats.total_exits(), 0, "{what}: prepopulated");
            }
        }
    }
}

#[test]
fn the_hand_derived_sv39_counts_are_the_formula_s() {
    // The formula above, spelled out for Sv39 over Sv39x4 so that a wrong formula cannot pass.
    let cases = [
        (PageSize::Size4K, HostPage::Size4K, 15),
        (PageSize::Size4K, HostPage::Size2M, 11),
        (PageSize::Size4K, HostPage::Size1G, 7),
        (PageSize::Size2M, HostPage::Size4K, 11),
        (PageSize::Size2M, HostPage::Size2M, 8),
        (PageSize::Size2M, HostPage::Size1G, 5),
        (PageSize::Size1G, HostPage::Size4K, 7),
        (PageSize::Size1G, HostPage::Size2M, 5),
        (PageSize::Size1G, HostPage::Size1G, 3),
    ];
    for (guest_page, host_page, expected) in cases {
        let (mut m, mut g) = nested(Format::SV39, Format::SV39X4, host_page);
        map_guest_page(&mut m, &mut g, guest_page);
        assert_eq!(walk_reads(&mut m, VA).0, expected, "{} over {host_page:?}", guest_page.name());
    }
}

#[test]
fn a_nested_fault_maps_one_host_page_of_the_configured_size() {
    for (host_size, host_page) in SIZES {
        let mut p =
            fixture::platform(fixture::arch(Format::SV39, Format::SV39X4), MmuConfig::default())
                .unwrap();
        let scheme =
            Nested::new(&mut p, NestedOptions { host_page, ..NestedOptions::default() }).unwrap();
        let mut m = Machine::new(p, scheme);
        m.enable_oracle();
        let mut g = Guest::new(&mut m, Asid(1)).unwrap();
        // 600 pages on 600 consecutive guest frames: frames 1..=603 with the root and tables.
        g.map_fresh(&mut m, VA, 600).unwrap();
        for i in 0..600 {
            m.access(VA.wrapping_add(i * PAGE), Access::USER_LOAD).unwrap();
        }
        // Guest frames 0..=603 in use: 604 4K leaves, two 2M leaves (frames 0..512 and
        // 512..1024), or the one 1G leaf.
        let leaves = match host_size {
            PageSize::Size4K => 604,
            PageSize::Size2M => 2,
            _ => 1,
        };
        assert_eq!(m.scheme.leaves, leaves, "{}", host_size.name());
        assert_eq!(m.platform.stats.total_exits(), leaves, "one nested fault per leaf");
    }
}

fn shadow(guest: Format, host: Format, host_page: HostPage) -> (Machine<Shadow>, Guest) {
    let cold = MmuConfig::default().without_walk_caches();
    let mut p = fixture::platform(fixture::arch(guest, host), cold).unwrap();
    let opts = ShadowOptions { host_page, ..ShadowOptions::SSP };
    let scheme = Shadow::new(&mut p, "ssp", opts).unwrap();
    let mut m = Machine::new(p, scheme);
    m.enable_oracle();
    let g = Guest::new(&mut m, Asid(1)).unwrap();
    (m, g)
}

#[test]
fn shadow_entries_splinter_to_the_smaller_of_guest_and_host_page() {
    for (guest_format, host_format) in FORMATS {
        for (guest_page, _) in SIZES {
            for (host_size, host_page) in SIZES {
                let what =
                    format!("{guest_format} {} over {}", guest_page.name(), host_size.name());
                let (mut m, mut g) = shadow(guest_format, host_format, host_page);
                map_guest_page(&mut m, &mut g, guest_page);
                // The first access takes the shadow fault that builds the shadow entry.
                m.access(VA, Access::USER_LOAD).unwrap();
                assert_eq!(m.scheme.stats.fills, 1, "{what}");
                m.platform.mmu.reset();
                let shadow_leaf = guest_page.min(host_size);
                let expected = levels_to(guest_format, shadow_leaf);
                assert_eq!(walk_reads(&mut m, VA).0, expected, "{what}: a cold shadow walk");
                assert_tlb_covers(&mut m, shadow_leaf.bytes(), guest_page, &what);
            }
        }
    }
}
