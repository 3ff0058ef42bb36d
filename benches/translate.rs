//! The translation path: a TLB hit, a native miss, and a nested (2D) miss with warm and with
//! cold page-walk caches. Figures are recorded in BENCHMARKS.md with the command that
//! reproduces them.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use memvirt::addr::{Asid, Gva};
use memvirt::fixture::{self, Guest};
use memvirt::machine::{Machine, Scheme};
use memvirt::mem::HostPage;
use memvirt::mmu::{FlushOp, MmuConfig};
use memvirt::paging::{Access, Format};
use memvirt::scheme::{
    FlatNested, FlatNestedOptions, Native, Nested, NestedOptions, Shadow, ShadowOptions,
    SpecShadow, SpecShadowOptions,
};

const BASE: Gva = Gva::new(0x4000_0000);
const PAGE: u64 = 4096;
/// Pages walked in turn by the miss benchmarks: more than the L2 TLB holds is not needed since
/// every iteration flushes the TLB entry it is about to miss on.
const PAGES: u64 = 256;

fn native(guest: Format, mmu: MmuConfig) -> Machine<Native> {
    let p = fixture::platform(fixture::arch(guest, Format::SV48X4), mmu).unwrap();
    let mut m = Machine::new(p, Native);
    let mut g = Guest::new(&mut m, Asid(1)).unwrap();
    g.map_fresh(&mut m, BASE, PAGES).unwrap();
    m
}

fn nested(guest: Format, host: Format, mmu: MmuConfig) -> Machine<Nested> {
    let mut p = fixture::platform(fixture::arch(guest, host), mmu).unwrap();
    let scheme = Nested::new(
        &mut p,
        NestedOptions { prepopulate: true, host_page: HostPage::Size4K, ..Default::default() },
    )
    .unwrap();
    let mut m = Machine::new(p, scheme);
    let mut g = Guest::new(&mut m, Asid(1)).unwrap();
    g.map_fresh(&mut m, BASE, PAGES).unwrap();
    m
}

/// A shadow scheme (`ssp`) whose shadow table already holds every page: the miss path is the
/// hardware's one-dimensional walk of the shadow table.
fn shadow(guest: Format, mmu: MmuConfig) -> Machine<Shadow> {
    let mut p = fixture::platform(fixture::arch(guest, Format::SV48X4), mmu).unwrap();
    let scheme = Shadow::new(&mut p, "ssp", ShadowOptions::SSP).unwrap();
    let mut m = Machine::new(p, scheme);
    let mut g = Guest::new(&mut m, Asid(1)).unwrap();
    g.map_fresh(&mut m, BASE, PAGES).unwrap();
    for i in 0..PAGES {
        m.access(BASE.wrapping_add(i * PAGE), Access::USER_LOAD).unwrap();
    }
    m
}

fn flat_nested(guest: Format, host: Format, mmu: MmuConfig) -> Machine<FlatNested> {
    let mut p = fixture::platform(fixture::arch(guest, host), mmu).unwrap();
    let scheme = FlatNested::new(&mut p, FlatNestedOptions { prepopulate: true }).unwrap();
    let mut m = Machine::new(p, scheme);
    let mut g = Guest::new(&mut m, Asid(1)).unwrap();
    g.map_fresh(&mut m, BASE, PAGES).unwrap();
    m
}

fn spec_shadow(guest: Format, host: Format, mmu: MmuConfig) -> Machine<SpecShadow> {
    let mut p = fixture::platform(fixture::arch(guest, host), mmu).unwrap();
    let scheme = SpecShadow::new(&mut p, SpecShadowOptions::default(), true).unwrap();
    let mut m = Machine::new(p, scheme);
    let mut g = Guest::new(&mut m, Asid(1)).unwrap();
    g.map_fresh(&mut m, BASE, PAGES).unwrap();
    m
}

/// Misses on page after page: each iteration drops the page's TLB entry (sfence.vma va, which
/// keeps the page-walk caches) and accesses it.
fn miss_loop<S: Scheme>(m: &mut Machine<S>, i: &mut u64) {
    let va = BASE.wrapping_add((*i % PAGES) * PAGE);
    *i += 1;
    m.platform.mmu.flush(&FlushOp::SfenceVma { va: Some(va), asid: None });
    black_box(m.access(va, Access::USER_LOAD).unwrap());
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("translate");

    let mut m = native(Format::SV48, MmuConfig::default());
    m.access(BASE, Access::USER_LOAD).unwrap();
    g.bench_function("tlb_hit", |b| {
        b.iter(|| black_box(m.access(black_box(BASE), Access::USER_LOAD).unwrap()))
    });

    // The TLB-hit path does not depend on the scheme: the same code, statically dispatched.
    let mut m = shadow(Format::SV48, MmuConfig::default());
    m.access(BASE, Access::USER_LOAD).unwrap();
    g.bench_function("ssp_tlb_hit", |b| {
        b.iter(|| black_box(m.access(black_box(BASE), Access::USER_LOAD).unwrap()))
    });

    let mut m = native(Format::SV48, MmuConfig::default());
    let mut i = 0;
    g.bench_function("native_sv48_miss_warm_pwc", |b| b.iter(|| miss_loop(&mut m, &mut i)));

    let mut m = shadow(Format::SV48, MmuConfig::default());
    let mut i = 0;
    g.bench_function("ssp_sv48_miss_warm_pwc", |b| b.iter(|| miss_loop(&mut m, &mut i)));

    let mut m = nested(Format::SV48, Format::SV48X4, MmuConfig::default());
    let mut i = 0;
    g.bench_function("nested_sv48x4_miss_warm_pwc", |b| b.iter(|| miss_loop(&mut m, &mut i)));

    let mut m = nested(Format::SV48, Format::SV48X4, MmuConfig::default().without_walk_caches());
    let mut i = 0;
    g.bench_function("nested_sv48x4_miss_no_walk_caches", |b| b.iter(|| miss_loop(&mut m, &mut i)));

    let mut m = flat_nested(Format::SV48, Format::SV48X4, MmuConfig::default());
    let mut i = 0;
    g.bench_function("flat_nested_sv48_miss_warm_pwc", |b| b.iter(|| miss_loop(&mut m, &mut i)));

    // After the first round every probe hits a right speculation: probe, then the verifying walk.
    let mut m = spec_shadow(Format::SV48, Format::SV48X4, MmuConfig::default());
    let mut i = 0;
    g.bench_function("spec_shadow_sv48_miss_warm", |b| b.iter(|| miss_loop(&mut m, &mut i)));

    // Cold: every TLB, page-walk cache, the nested TLB and the page-table-read cache empty
    // before each miss (the reset is not timed).
    let mut m = nested(Format::SV48, Format::SV48X4, MmuConfig::default());
    g.bench_function("nested_sv48x4_miss_cold_mmu", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                m.platform.mmu.reset();
                let start = Instant::now();
                black_box(m.access(BASE, Access::USER_LOAD).unwrap());
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
