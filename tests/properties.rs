//! Property tests: whatever the TLB and walk caches hold, an access translates exactly as a fresh
//! walk with every cache off does.

use memvirt::addr::{Asid, Gva, Hpa, Level, PageSize};
use memvirt::fixture::{self, Guest};
use memvirt::machine::{Machine, Scheme, Stop};
use memvirt::mmu::{FlushOp, Geometry, MmuConfig, TlbConfig};
use memvirt::paging::mapper;
use memvirt::paging::{Access, Format};
use memvirt::paging::{Decoded, LeafAttrs, Perms};
use memvirt::scheme::{Native, Nested, NestedOptions};
use proptest::prelude::*;

const BASE: Gva = Gva::new(0x0010_0000_0000);
const PAGE: u64 = 4096;
/// Pages the tests map and touch: most of them mapped, so that flushes and TLB reach matter.
const SPAN: u64 = 96;

/// No TLB and no walk caches: every access is a fresh walk.
fn uncached() -> MmuConfig {
    let off = TlbConfig {
        l1_4k: Geometry::OFF,
        l1_2m: Geometry::OFF,
        l1_1g: Geometry::OFF,
        l2: Geometry::OFF,
    };
    MmuConfig { tlb: off, ..MmuConfig::default().without_walk_caches() }
}

/// A small TLB so that evictions happen.
fn small() -> MmuConfig {
    let tlb = TlbConfig {
        l1_4k: Geometry { entries: 4, ways: 2 },
        l1_2m: Geometry { entries: 2, ways: 2 },
        l1_1g: Geometry { entries: 1, ways: 1 },
        l2: Geometry { entries: 16, ways: 4 },
    };
    MmuConfig { tlb, ..MmuConfig::default() }
}

/// Two 2 MiB pages live here, next to the 4 KiB pages at `BASE`.
const HUGE: Gva = Gva::new(0x0020_0000_0000);

fn build<S: Scheme>(mut m: Machine<S>, pages: &[u64]) -> (Machine<S>, Guest) {
    let mut g = Guest::new(&mut m, Asid(3)).unwrap();
    for &page in pages {
        g.map_fresh(&mut m, BASE.wrapping_add(page * PAGE), 1).unwrap();
    }
    for i in 0..2 {
        let gfn = g.alloc_aligned(PageSize::Size2M).unwrap();
        let va = HUGE.wrapping_add(i * PageSize::Size2M.bytes());
        g.map(&mut m, va, gfn.addr(), PageSize::Size2M, LeafAttrs::new(fixture::USER_RW)).unwrap();
    }
    (m, g)
}

/// What the property tests do to both machines.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Access a 4 KiB page (`true`: store).
    Access(u64, bool),
    /// Access a byte offset in the 2 MiB region.
    AccessHuge(u64),
    /// Clear a page's leaf, then `sfence.vma va`.
    Unmap(u64),
    /// Make a page read-only, then `sfence.vma va`.
    Protect(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u64..SPAN, any::<bool>()).prop_map(|(p, s)| Step::Access(p, s)),
        2 => (0u64..(4 << 20)).prop_map(Step::AccessHuge),
        1 => (0u64..SPAN).prop_map(Step::Unmap),
        1 => (0u64..SPAN).prop_map(Step::Protect),
    ]
}

/// Runs one step on a machine and returns what the guest observed.
fn apply<S: Scheme>(m: &mut Machine<S>, g: &Guest, step: Step) -> Result<Hpa, String> {
    let edit = |m: &mut Machine<S>, page: u64, f: &dyn Fn(u64) -> u64| {
        let va = BASE.wrapping_add(page * PAGE);
        let table = g.root.table;
        let mut store =
            m.guest_tables(|| Err(memvirt::mem::MemError::GuestExhausted { frames: 0, mib: 0 }));
        if let Some((_, flush)) = mapper::update_leaf(&table, &mut store, va, f) {
            flush.ignore();
            m.guest_flush(FlushOp::SfenceVma { va: Some(va), asid: None }).unwrap();
        }
        Ok(Hpa::ZERO)
    };
    match step {
        Step::Access(page, store) => outcome(m, BASE.wrapping_add(page * PAGE + 8), store),
        Step::AccessHuge(offset) => outcome(m, HUGE.wrapping_add(offset), false),
        Step::Unmap(page) => edit(m, page, &|_| 0),
        Step::Protect(page) => {
            let format = *g.root.table.format();
            edit(m, page, &|raw| match format.decode(raw, Level::L0) {
                Ok(Decoded::Leaf { base, attrs }) => {
                    let attrs = LeafAttrs { perms: attrs.perms - Perms::W, ..attrs };
                    format.encode_leaf(base, Level::L0, attrs)
                }
                _ => raw,
            })
        }
    }
}

fn native(guest: Format, mmu: MmuConfig, pages: &[u64]) -> (Machine<Native>, Guest) {
    build(
        Machine::new(fixture::platform(fixture::arch(guest, Format::SV48X4), mmu).unwrap(), Native),
        pages,
    )
}

fn nested(guest: Format, host: Format, mmu: MmuConfig, pages: &[u64]) -> (Machine<Nested>, Guest) {
    let mut p = fixture::platform(fixture::arch(guest, host), mmu).unwrap();
    let s = Nested::new(&mut p, NestedOptions::default()).unwrap();
    build(Machine::new(p, s), pages)
}

fn outcome<S: Scheme>(m: &mut Machine<S>, va: Gva, store: bool) -> Result<Hpa, String> {
    let access = if store { Access::USER_STORE } else { Access::USER_LOAD };
    m.access(va, access).map_err(|e| match e {
        Stop::GuestFault(f) => format!("{:?}", f.cause),
        Stop::Error(e) => panic!("simulator error: {e}"),
    })
}

fn pages() -> impl Strategy<Value = Vec<u64>> {
    proptest::collection::btree_set(0u64..SPAN, 1..80).prop_map(|s| s.into_iter().collect())
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(step(), 1..300)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn cached_native_translation_equals_a_fresh_walk(pages in pages(), steps in steps(), x86 in any::<bool>()) {
        let format = if x86 { Format::X86_64_4LEVEL } else { Format::SV39 };
        let (mut cached, cg) = native(format, small(), &pages);
        let (mut fresh, fg) = native(format, uncached(), &pages);
        for step in steps {
            prop_assert_eq!(apply(&mut cached, &cg, step), apply(&mut fresh, &fg, step), "{:?}", step);
        }
    }

    #[test]
    fn cached_nested_translation_equals_a_fresh_2d_walk(pages in pages(), steps in steps(), x86 in any::<bool>()) {
        let (guest, host) = if x86 { (Format::X86_64_4LEVEL, Format::EPT_4LEVEL) } else { (Format::SV39, Format::SV39X4) };
        let (mut cached, cg) = nested(guest, host, small(), &pages);
        let (mut fresh, fg) = nested(guest, host, uncached(), &pages);
        for step in steps {
            prop_assert_eq!(apply(&mut cached, &cg, step), apply(&mut fresh, &fg, step), "{:?}", step);
        }
        prop_assert_eq!(cached.platform.stats.total_exits(), fresh.platform.stats.total_exits());
    }
}
