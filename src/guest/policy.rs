//! Where Linux issues TLB maintenance, per architecture (DESIGN.md §4).
//!
//! RISC-V (`arch/riscv/mm/tlbflush.c`, `include/asm/pgtable.h`): `update_mmu_cache` flushes the
//! page after every PTE it fills, with `sfence.vma va` (rs2 = x0), because an `sfence.vma` orders
//! even a fill of an invalid entry; clearing a present entry (`ptep_clear_flush`) flushes
//! `sfence.vma va, asid`; a range above `tlb_flush_all_threshold` pages becomes
//! `sfence.vma x0, asid`. x86-64 (`arch/x86/mm/tlb.c`): a new entry over a non-present one needs
//! no flush (x86 never caches non-present entries); a changed present entry is INVLPG'd; a range
//! above `tlb_single_page_flush_ceiling` (33) reloads CR3 without the no-flush bit, which drops
//! the current PCID's non-global entries.

use crate::addr::{Asid, Gva};
use crate::mmu::FlushOp;
use crate::paging::{Family, Format};

/// The flush instructions of one architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlbPolicy {
    /// `sfence.vma` (also used for the Sunway-like profile, whose `tbivpn`/`tbisasid` have the
    /// same scopes).
    RiscV,
    /// INVLPG and CR3 reloads with PCIDs.
    X86,
}

/// Up to two flush instructions (no event needs more), without allocating.
pub type Flushes = arrayvec_lite::Pair<FlushOp>;

impl TlbPolicy {
    /// The policy of the guest's first-stage format.
    pub fn for_format(format: &Format) -> Self {
        match format.family {
            Family::X86 | Family::Ept => TlbPolicy::X86,
            Family::RiscV => TlbPolicy::RiscV,
        }
    }

    /// After filling an entry that was not present (demand fault, zero page).
    pub fn after_fill(self, va: Gva) -> Flushes {
        match self {
            TlbPolicy::RiscV => Flushes::one(FlushOp::SfenceVma { va: Some(va), asid: None }),
            TlbPolicy::X86 => Flushes::none(),
        }
    }

    /// After upgrading a present entry in place (write access after a COW reuse, A/D bits): no
    /// stale entry can grant more than the new one, so x86 flushes nothing and relies on a
    /// spurious fault; RISC-V's `update_mmu_cache` still fences the page.
    pub fn after_upgrade(self, va: Gva) -> Flushes {
        self.after_fill(va)
    }

    /// After replacing a present entry with one for another frame (COW copy):
    /// `ptep_clear_flush`, then (RISC-V) `update_mmu_cache`.
    pub fn after_replace(self, va: Gva, asid: Asid) -> Flushes {
        match self {
            TlbPolicy::RiscV => Flushes::two(
                FlushOp::SfenceVma { va: Some(va), asid: Some(asid) },
                FlushOp::SfenceVma { va: Some(va), asid: None },
            ),
            TlbPolicy::X86 => Flushes::one(FlushOp::Invlpg { va }),
        }
    }

    /// One page of a range flush (munmap, mprotect) below the threshold.
    pub fn page(self, va: Gva, asid: Asid) -> FlushOp {
        match self {
            TlbPolicy::RiscV => FlushOp::SfenceVma { va: Some(va), asid: Some(asid) },
            TlbPolicy::X86 => FlushOp::Invlpg { va },
        }
    }

    /// Every non-global entry of the current address space (`flush_tlb_mm`, or a range past the
    /// threshold).
    pub fn whole_mm(self, asid: Asid) -> FlushOp {
        match self {
            TlbPolicy::RiscV => FlushOp::SfenceVma { va: None, asid: Some(asid) },
            TlbPolicy::X86 => FlushOp::MovCr3 { pcid: asid, noflush: false },
        }
    }

    /// Everything, globals included (RISC-V ASID-generation rollover).
    pub fn everything(self) -> FlushOp {
        match self {
            TlbPolicy::RiscV => FlushOp::SfenceVma { va: None, asid: None },
            TlbPolicy::X86 => FlushOp::Invpcid {
                kind: crate::mmu::InvpcidType::AllIncludingGlobal,
                pcid: Asid(0),
                va: Gva::ZERO,
            },
        }
    }
}

/// A tiny fixed-capacity list, so that the fault path never allocates.
pub mod arrayvec_lite {
    /// Zero, one or two values.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Pair<T: Copy> {
        items: [Option<T>; 2],
    }

    impl<T: Copy> Pair<T> {
        /// No value.
        pub fn none() -> Self {
            Pair { items: [None, None] }
        }
        /// One value.
        pub fn one(a: T) -> Self {
            Pair { items: [Some(a), None] }
        }
        /// Two values, in order.
        pub fn two(a: T, b: T) -> Self {
            Pair { items: [Some(a), Some(b)] }
        }
        /// The values in order.
        pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
            self.items.iter().flatten().copied()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VA: Gva = Gva::new(0x1000);

    #[test]
    fn riscv_fences_after_every_fill_and_x86_never_does() {
        let r: Vec<_> = TlbPolicy::RiscV.after_fill(VA).iter().collect();
        assert_eq!(r, [FlushOp::SfenceVma { va: Some(VA), asid: None }]);
        assert_eq!(TlbPolicy::X86.after_fill(VA).iter().count(), 0);
    }

    #[test]
    fn a_replaced_entry_is_flushed_once_on_x86_and_twice_on_riscv() {
        assert_eq!(TlbPolicy::X86.after_replace(VA, Asid(3)).iter().count(), 1);
        let r: Vec<_> = TlbPolicy::RiscV.after_replace(VA, Asid(3)).iter().collect();
        assert_eq!(r[0], FlushOp::SfenceVma { va: Some(VA), asid: Some(Asid(3)) });
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn whole_mm_flushes_one_asid() {
        assert_eq!(
            TlbPolicy::X86.whole_mm(Asid(2)),
            FlushOp::MovCr3 { pcid: Asid(2), noflush: false }
        );
        assert_eq!(
            TlbPolicy::RiscV.whole_mm(Asid(2)),
            FlushOp::SfenceVma { va: None, asid: Some(Asid(2)) }
        );
    }
}
