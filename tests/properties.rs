//! Property tests: whatever the TLB and walk caches hold, an access translates exactly as a fresh
//! walk with every cache off does.

use memvirt::addr::{Asid, Gva, Hpa};
use memvirt::fixture::{self, Guest};
use memvirt::machine::{Machine, Scheme, Stop};
use memvirt::mmu::{FlushOp, Geometry, MmuConfig, TlbConfig};
use memvirt::paging::{Access, Format};
use memvirt::scheme::{Native, Nested, NestedOptions};
use proptest::prelude::*;

const BASE: Gva = Gva::new(0x0010_0000_0000);
const PAGE: u64 = 4096;

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

fn build<S: Scheme>(mut m: Machine<S>, pages: &[u64]) -> Machine<S> {
    let mut g = Guest::new(&mut m, Asid(3)).unwrap();
    for &page in pages {
        g.map_fresh(&mut m, BASE.wrapping_add(page * PAGE), 1).unwrap();
    }
    m
}

fn native(guest: Format, mmu: MmuConfig, pages: &[u64]) -> Machine<Native> {
    build(
        Machine::new(fixture::platform(fixture::arch(guest, Format::SV48X4), mmu).unwrap(), Native),
        pages,
    )
}

fn nested(guest: Format, host: Format, mmu: MmuConfig, pages: &[u64]) -> Machine<Nested> {
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
    proptest::collection::btree_set(0u64..2048, 1..40).prop_map(|s| s.into_iter().collect())
}

fn accesses() -> impl Strategy<Value = Vec<(u64, bool, bool)>> {
    // (page, store?, flush that page first?)
    proptest::collection::vec((0u64..2048, any::<bool>(), proptest::bool::weighted(0.1)), 1..300)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn cached_native_translation_equals_a_fresh_walk(pages in pages(), accesses in accesses(), x86 in any::<bool>()) {
        let format = if x86 { Format::X86_64_4LEVEL } else { Format::SV39 };
        let mut cached = native(format, small(), &pages);
        let mut fresh = native(format, uncached(), &pages);
        for (page, store, flush) in accesses {
            let va = BASE.wrapping_add(page * PAGE + 8);
            if flush {
                cached.guest_flush(FlushOp::SfenceVma { va: Some(va), asid: None }).unwrap();
            }
            prop_assert_eq!(outcome(&mut cached, va, store), outcome(&mut fresh, va, store), "at {}", va);
        }
    }

    #[test]
    fn cached_nested_translation_equals_a_fresh_2d_walk(pages in pages(), accesses in accesses(), x86 in any::<bool>()) {
        let (guest, host) = if x86 { (Format::X86_64_4LEVEL, Format::EPT_4LEVEL) } else { (Format::SV39, Format::SV39X4) };
        let mut cached = nested(guest, host, small(), &pages);
        let mut fresh = nested(guest, host, uncached(), &pages);
        for (page, store, _) in accesses {
            let va = BASE.wrapping_add(page * PAGE + 16);
            prop_assert_eq!(outcome(&mut cached, va, store), outcome(&mut fresh, va, store), "at {}", va);
        }
        prop_assert_eq!(cached.platform.stats.total_exits(), fresh.platform.stats.total_exits());
    }
}
