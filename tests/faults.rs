//! Faults through the whole machine: accessed/dirty handling by the walker or by a fault
//! (a profile choice), superpage alignment, permissions, and their architectural causes.

use memvirt::addr::{Asid, Gva, PageSize};
use memvirt::fixture::{self, Guest, USER_RW};
use memvirt::machine::{ArchConfig, Machine, Stop};
use memvirt::mmu::{MmuConfig, TranslationFault};
use memvirt::paging::mapper;
use memvirt::paging::{
    Access, AdPolicy, ArchCause, FaultKind, Format, LeafAttrs, Perms, Pfec, Regime, Stage,
};
use memvirt::scheme::{Native, Nested, NestedOptions};

const VA: Gva = Gva::new(0x0000_0040_0000_0000 >> 4);
const CLEAN: LeafAttrs = LeafAttrs { perms: USER_RW, global: false, accessed: false, dirty: false };

fn machine(arch: ArchConfig) -> (Machine<Native>, Guest) {
    let p = fixture::platform(arch, MmuConfig::default()).unwrap();
    let mut m = Machine::new(p, Native);
    let g = Guest::new(&mut m, Asid(1)).unwrap();
    (m, g)
}

fn fault(r: Result<memvirt::addr::Hpa, Stop>) -> TranslationFault {
    match r {
        Err(Stop::GuestFault(f)) => f,
        other => panic!("expected a guest fault, got {other:?}"),
    }
}

fn leaf_raw(m: &mut Machine<Native>, g: &Guest, va: Gva) -> u64 {
    let table = g.root.table;
    let mut store =
        m.guest_tables(|| Err(memvirt::mem::MemError::GuestExhausted { frames: 0, mib: 0 }));
    mapper::find_leaf(&table, &mut store, va).unwrap().raw
}

#[test]
fn svadu_walker_sets_accessed_then_dirty_with_one_write_each() {
    let (mut m, mut g) = machine(fixture::arch(Format::SV39, Format::SV39X4));
    let gfn = g.alloc().unwrap();
    g.map(&mut m, VA, gfn.addr(), PageSize::Size4K, CLEAN).unwrap();
    m.access(VA, Access::USER_LOAD).unwrap();
    let t = &m.platform.mmu.trace;
    assert_eq!((t.reads(), t.total() - t.reads()), (3, 1), "3 reads and the A update");
    assert_eq!(leaf_raw(&mut m, &g, VA) & 0xc0, 0x40, "A set, D clear");
    // The first store hits a TLB entry that withholds stores from a clean page: a re-walk sets D.
    let walks = m.platform.mmu.stats().walks;
    m.access(VA, Access::USER_STORE).unwrap();
    assert_eq!(m.platform.mmu.stats().walks, walks + 1);
    assert_eq!(leaf_raw(&mut m, &g, VA) & 0xc0, 0xc0, "A and D set");
    m.access(VA, Access::USER_STORE).unwrap();
    assert_eq!(m.platform.mmu.stats().walks, walks + 1, "now dirty: stores hit the TLB");
}

#[test]
fn svade_raises_page_faults_for_accessed_and_dirty() {
    let svade = Regime { ad: AdPolicy::Fault, ..Regime::default() };
    let arch = ArchConfig { guest_regime: svade, ..fixture::arch(Format::SV39, Format::SV39X4) };
    let (mut m, mut g) = machine(arch);
    let gfn = g.alloc().unwrap();
    g.map(&mut m, VA, gfn.addr(), PageSize::Size4K, CLEAN).unwrap();
    let f = fault(m.access(VA, Access::USER_LOAD));
    assert_eq!((f.kind, f.cause), (FaultKind::AccessedDirty, ArchCause::RiscV(13)));
    let f = fault(m.access(VA, Access::USER_STORE));
    assert_eq!(f.cause, ArchCause::RiscV(15));
    assert_eq!(leaf_raw(&mut m, &g, VA) & 0xc0, 0, "the walker never writes A/D under Svade");
    assert_eq!(m.platform.stats.guest_faults, 2);
}

#[test]
fn misaligned_superpage_is_a_page_fault_of_the_access_type() {
    let (mut m, mut g) = machine(fixture::arch(Format::SV39, Format::SV39X4));
    // Map a 2 MiB page properly, then make its PPN[0] non-zero with an ordinary store.
    let gfn = g.alloc_aligned(PageSize::Size2M).unwrap();
    g.map(&mut m, VA, gfn.addr(), PageSize::Size2M, LeafAttrs::new(USER_RW)).unwrap();
    let table = g.root.table;
    let mut store =
        m.guest_tables(|| Err(memvirt::mem::MemError::GuestExhausted { frames: 0, mib: 0 }));
    let (_, flush) = mapper::update_leaf(&table, &mut store, VA, |raw| raw + (1 << 10)).unwrap();
    flush.ignore();
    let f = fault(m.access(VA, Access::USER_STORE));
    assert_eq!(
        (f.kind, f.cause, f.stage),
        (FaultKind::MisalignedSuperpage, ArchCause::RiscV(15), Stage::First)
    );
}

#[test]
fn permission_faults_carry_riscv_codes_and_x86_error_codes() {
    let read_only = LeafAttrs::new(Perms::R | Perms::U);
    let (mut m, mut g) = machine(fixture::arch(Format::SV48, Format::SV48X4));
    let gfn = g.alloc().unwrap();
    g.map(&mut m, VA, gfn.addr(), PageSize::Size4K, read_only).unwrap();
    assert!(m.access(VA, Access::USER_LOAD).is_ok());
    assert_eq!(fault(m.access(VA, Access::USER_STORE)).cause, ArchCause::RiscV(15));
    assert_eq!(fault(m.access(VA, Access::USER_FETCH)).cause, ArchCause::RiscV(12));
    assert_eq!(
        fault(m.access(VA.wrapping_add(1 << 30), Access::USER_LOAD)).cause,
        ArchCause::RiscV(13)
    );

    let (mut m, mut g) = machine(fixture::arch(Format::X86_64_4LEVEL, Format::EPT_4LEVEL));
    let gfn = g.alloc().unwrap();
    g.map(&mut m, VA, gfn.addr(), PageSize::Size4K, read_only).unwrap();
    let pf = |c| ArchCause::X86PageFault(Pfec(c));
    assert_eq!(fault(m.access(VA, Access::USER_STORE)).cause, pf(Pfec::P | Pfec::W | Pfec::U));
    assert_eq!(fault(m.access(VA.wrapping_add(1 << 30), Access::USER_LOAD)).cause, pf(Pfec::U));
    let non_canonical = Gva::new(0x0000_8000_0000_0000);
    assert_eq!(
        fault(m.access(non_canonical, Access::USER_LOAD)).cause,
        ArchCause::X86GeneralProtection
    );
}

#[test]
fn a_guest_pointing_outside_its_memory_gets_an_access_fault_not_a_panic() {
    let mut p =
        fixture::platform(fixture::arch(Format::SV39, Format::SV39X4), MmuConfig::default())
            .unwrap();
    let scheme = Nested::new(&mut p, NestedOptions::default()).unwrap();
    let mut m = Machine::new(p, scheme);
    let mut g = Guest::new(&mut m, Asid(1)).unwrap();
    let beyond = memvirt::addr::Gpa::new(fixture::GUEST_BYTES + (64 << 20));
    g.map(&mut m, VA, beyond, PageSize::Size4K, LeafAttrs::new(USER_RW)).unwrap();
    let f = fault(m.access(VA, Access::USER_LOAD));
    assert_eq!((f.kind, f.cause), (FaultKind::AccessFault, ArchCause::RiscV(5)));
}

/// A 2D walk over an empty nested table faults on the GPA of the guest's root table entry: a
/// guest-page fault with the original access type on RISC-V (cause 21 for a load, 23 for a
/// store), an EPT violation qualified as a data read of a guest paging entry on x86.
#[test]
fn nested_faults_name_the_guest_table_gpa_and_the_architectural_cause() {
    use memvirt::paging::EptQual;
    for (guest, host, load, store) in [
        (Format::SV39, Format::SV39X4, ArchCause::RiscV(21), ArchCause::RiscV(23)),
        (
            Format::X86_64_4LEVEL,
            Format::EPT_4LEVEL,
            ArchCause::EptViolation(EptQual(EptQual::READ | EptQual::GLA_VALID)),
            ArchCause::EptViolation(EptQual(EptQual::READ | EptQual::GLA_VALID)),
        ),
    ] {
        let mut p = fixture::platform(fixture::arch(guest, host), MmuConfig::default()).unwrap();
        let nested = Nested::new(&mut p, NestedOptions::default()).unwrap();
        let mut m = Machine::new(p, Native);
        let g = Guest::new(&mut m, Asid(1)).unwrap();
        let arch = m.platform.arch;
        for (access, want) in [(Access::USER_LOAD, load), (Access::KERNEL_STORE, store)] {
            let f = m
                .platform
                .mmu
                .walk_2d(
                    &mut m.platform.host,
                    &g.root.table,
                    &arch.guest_regime,
                    nested.table(),
                    &arch.nested_regime,
                    VA,
                    access,
                )
                .unwrap_err();
            assert_eq!(
                (f.stage, f.kind, f.final_translation),
                (Stage::Nested, FaultKind::NotPresent, false),
                "{guest}"
            );
            let root_index = guest.index(VA.as_u64(), guest.root_level());
            assert_eq!(
                f.gpa.map(|g| g.as_u64()),
                Some(g.root.table.root().as_u64() + 8 * root_index)
            );
            assert_eq!(f.cause, want, "{guest} {access:?}");
        }
    }
}
