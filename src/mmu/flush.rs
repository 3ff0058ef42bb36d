//! TLB-maintenance operations and the exact architectural scope of each.
//!
//! Every operation resolves to a [`FlushEffect`]: which combined (GVA→HPA) TLB entries, which
//! first-dimension page-walk-cache entries and which nested (GPA→HPA) entries it removes. The
//! tables in `reference/arch.md` §1.6, §2.7 and §3.4 are the source of every rule here.

use crate::addr::{Asid, Gpa, Gva, Vmid};

/// INVPCID types (Linux/Xen `INVPCID_TYPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvpcidType {
    /// Type 0: one (PCID, linear address), globals excluded.
    IndividualAddress,
    /// Type 1: every mapping of one PCID, globals excluded.
    SingleContext,
    /// Type 2: everything, globals included.
    AllIncludingGlobal,
    /// Type 3: everything except globals.
    AllNonGlobal,
}

/// A TLB-maintenance operation, as executed by the guest (or native OS) on the current vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlushOp {
    /// RISC-V `sfence.vma rs1, rs2`: `None` stands for the register x0.
    SfenceVma {
        /// rs1: one virtual address, or x0 for all.
        va: Option<Gva>,
        /// rs2: one ASID, or x0 for all (including globals).
        asid: Option<Asid>,
    },
    /// RISC-V `hfence.vvma`: as `sfence.vma` in VS-mode, for the current VMID.
    HfenceVvma {
        /// Guest virtual address, or x0.
        va: Option<Gva>,
        /// Guest ASID, or x0.
        asid: Option<Asid>,
    },
    /// RISC-V `hfence.gvma`: G-stage translations.
    HfenceGvma {
        /// Guest physical address (rs1 holds it shifted right by 2), or x0.
        gpa: Option<Gpa>,
        /// VMID, or x0 for all.
        vmid: Option<Vmid>,
    },
    /// x86 `INVLPG m` for the current PCID.
    Invlpg {
        /// The linear address.
        va: Gva,
    },
    /// x86 `INVPCID`.
    Invpcid {
        /// The type operand.
        kind: InvpcidType,
        /// The descriptor's PCID (ignored by types 2 and 3).
        pcid: Asid,
        /// The descriptor's linear address (type 0 only).
        va: Gva,
    },
    /// x86 `MOV CR3` to a root with PCID `pcid`; `noflush` is bit 63.
    MovCr3 {
        /// The new PCID.
        pcid: Asid,
        /// Bit 63 set: no invalidation.
        noflush: bool,
    },
}

impl FlushOp {
    /// A short name for statistics ("sfence.vma va,asid", "invlpg", ...).
    pub fn name(&self) -> &'static str {
        match self {
            FlushOp::SfenceVma { va: None, asid: None } => "sfence.vma x0,x0",
            FlushOp::SfenceVma { va: None, asid: Some(_) } => "sfence.vma x0,asid",
            FlushOp::SfenceVma { va: Some(_), asid: None } => "sfence.vma va,x0",
            FlushOp::SfenceVma { va: Some(_), asid: Some(_) } => "sfence.vma va,asid",
            FlushOp::HfenceVvma { .. } => "hfence.vvma",
            FlushOp::HfenceGvma { .. } => "hfence.gvma",
            FlushOp::Invlpg { .. } => "invlpg",
            FlushOp::Invpcid { kind: InvpcidType::IndividualAddress, .. } => "invpcid 0",
            FlushOp::Invpcid { kind: InvpcidType::SingleContext, .. } => "invpcid 1",
            FlushOp::Invpcid { kind: InvpcidType::AllIncludingGlobal, .. } => "invpcid 2",
            FlushOp::Invpcid { kind: InvpcidType::AllNonGlobal, .. } => "invpcid 3",
            FlushOp::MovCr3 { noflush: false, .. } => "mov cr3",
            FlushOp::MovCr3 { noflush: true, .. } => "mov cr3 (no-flush)",
        }
    }

    /// The single address the operation targets, if it targets exactly one.
    pub fn single_address(&self) -> Option<Gva> {
        match *self {
            FlushOp::SfenceVma { va, .. } | FlushOp::HfenceVvma { va, .. } => va,
            FlushOp::Invlpg { va } => Some(va),
            FlushOp::Invpcid { kind: InvpcidType::IndividualAddress, va, .. } => Some(va),
            _ => None,
        }
    }
}

/// Which address spaces a scope selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AsidScope {
    /// Every ASID/PCID.
    All,
    /// One ASID/PCID.
    One(Asid),
}

/// Entries of the combined TLB (and the first-dimension walk caches) an operation removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TlbScope {
    /// `None`: every VMID.
    pub vmid: Option<Vmid>,
    /// `None`: every address.
    pub va: Option<Gva>,
    /// Which non-global entries.
    pub asid: AsidScope,
    /// Whether global entries (of the selected addresses) go too.
    pub globals: bool,
}

impl TlbScope {
    /// Whether an entry tagged (`vmid`, `asid`, `global`) falls in the scope (address aside).
    #[inline]
    pub fn selects(&self, vmid: Vmid, asid: Asid, global: bool) -> bool {
        if self.vmid.is_some_and(|v| v != vmid) {
            return false;
        }
        if global {
            return self.globals;
        }
        match self.asid {
            AsidScope::All => true,
            AsidScope::One(a) => a == asid,
        }
    }
}

/// Entries of the nested (GPA→HPA) structures an operation removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NestedScope {
    /// `None`: every VMID.
    pub vmid: Option<Vmid>,
    /// `None`: every guest physical address.
    pub gpa: Option<Gpa>,
}

/// Everything one operation removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlushEffect {
    /// Leaf (combined) TLB entries.
    pub tlb: Option<TlbScope>,
    /// First-dimension page-walk-cache entries (the address is ignored: whole contexts go).
    pub walk_cache: Option<TlbScope>,
    /// Nested TLB and nested page-walk-cache entries.
    pub nested: Option<NestedScope>,
}

impl FlushOp {
    /// The exact scope of the operation on a vCPU running `vmid` with ASID/PCID `current`.
    pub fn effect(&self, vmid: Vmid, current: Asid) -> FlushEffect {
        let none = FlushEffect { tlb: None, walk_cache: None, nested: None };
        let scope = |va, asid, globals| TlbScope { vmid: Some(vmid), va, asid, globals };
        match *self {
            // Priv spec §"SFENCE.VMA": rs1=x0 orders every level, so walk caches go too; rs1≠x0
            // orders only the leaf entries for that address. rs2≠x0 spares global mappings.
            FlushOp::SfenceVma { va, asid } | FlushOp::HfenceVvma { va, asid } => {
                let (asids, globals) = match asid {
                    None => (AsidScope::All, true),
                    Some(a) => (AsidScope::One(a), false),
                };
                let tlb = scope(va, asids, globals);
                FlushEffect {
                    tlb: Some(tlb),
                    walk_cache: va.is_none().then_some(tlb),
                    nested: None,
                }
            }
            // Hypervisor spec §"HFENCE.GVMA": G-stage entries of the VMID(s); combined entries of
            // those VMIDs are flushed whatever the address (their GPA is not kept).
            FlushOp::HfenceGvma { gpa, vmid: target } => FlushEffect {
                tlb: Some(TlbScope { vmid: target, va: None, asid: AsidScope::All, globals: true }),
                walk_cache: None,
                nested: Some(NestedScope { vmid: target, gpa }),
            },
            // SDM §4.10.4.1: INVLPG drops the page's entries for the current PCID and global
            // entries for the page under any PCID, plus every walk-cache entry of the PCID.
            FlushOp::Invlpg { va } => FlushEffect {
                tlb: Some(scope(Some(va), AsidScope::One(current), true)),
                walk_cache: Some(scope(None, AsidScope::One(current), false)),
                nested: None,
            },
            FlushOp::Invpcid { kind, pcid, va } => {
                let tlb = match kind {
                    InvpcidType::IndividualAddress => scope(Some(va), AsidScope::One(pcid), false),
                    InvpcidType::SingleContext => scope(None, AsidScope::One(pcid), false),
                    InvpcidType::AllIncludingGlobal => scope(None, AsidScope::All, true),
                    InvpcidType::AllNonGlobal => scope(None, AsidScope::All, false),
                };
                FlushEffect {
                    tlb: Some(tlb),
                    walk_cache: Some(TlbScope { va: None, ..tlb }),
                    nested: None,
                }
            }
            // SDM §4.10.4.1: MOV CR3 with bit 63 clear invalidates the new PCID's non-global
            // entries and its walk-cache entries; with bit 63 set, nothing.
            FlushOp::MovCr3 { noflush: true, .. } => none,
            FlushOp::MovCr3 { pcid, noflush: false } => {
                let tlb = scope(None, AsidScope::One(pcid), false);
                FlushEffect { tlb: Some(tlb), walk_cache: Some(tlb), nested: None }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{Hpa, PageSize};
    use crate::mmu::tlb::{Tlb, TlbConfig, TlbEntry};

    const A: Gva = Gva::new(0x1000);
    const B: Gva = Gva::new(0x2000);
    const VM: Vmid = Vmid(1);
    const OTHER_VM: Vmid = Vmid(2);
    const CUR: Asid = Asid(1);
    const OTHER: Asid = Asid(2);

    /// The population every case starts from, each entry with a distinct name.
    const POPULATION: [(&str, Vmid, Asid, bool, Gva); 6] = [
        ("a.cur", VM, CUR, false, A),
        ("a.other", VM, OTHER, false, A),
        ("a.global", VM, CUR, true, A),
        ("b.cur", VM, CUR, false, B),
        ("b.global", VM, OTHER, true, B),
        ("a.othervm", OTHER_VM, CUR, false, A),
    ];

    /// Applies `op` (on a vCPU running VM/CUR) and returns the names of the surviving entries.
    fn survivors(op: FlushOp) -> Vec<&'static str> {
        let mut tlb = Tlb::new(&TlbConfig::default()).unwrap();
        for (i, (_, vmid, asid, global, va)) in POPULATION.iter().enumerate() {
            let base = Hpa::new((i as u64 + 1) << 12);
            tlb.insert(TlbEntry::new(*va, PageSize::Size4K, base, (*vmid, *asid, *global), 0xff));
        }
        if let Some(scope) = op.effect(VM, CUR).tlb {
            tlb.flush(&scope);
        }
        let mut names: Vec<_> = POPULATION
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let base = Hpa::new((*i as u64 + 1) << 12);
                tlb.entries().any(|e| e.base == base)
            })
            .map(|(_, p)| p.0)
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    fn sorted(mut v: Vec<&'static str>) -> Vec<&'static str> {
        v.sort_unstable();
        v
    }

    #[test]
    fn sfence_vma_x0_x0_flushes_the_whole_vm_including_globals() {
        assert_eq!(survivors(FlushOp::SfenceVma { va: None, asid: None }), ["a.othervm"]);
    }

    #[test]
    fn sfence_vma_x0_asid_spares_globals_and_other_asids() {
        let left = survivors(FlushOp::SfenceVma { va: None, asid: Some(CUR) });
        assert_eq!(left, sorted(vec!["a.other", "a.global", "b.global", "a.othervm"]));
    }

    #[test]
    fn sfence_vma_va_x0_flushes_that_page_in_every_asid_including_globals() {
        let left = survivors(FlushOp::SfenceVma { va: Some(A), asid: None });
        assert_eq!(left, sorted(vec!["b.cur", "b.global", "a.othervm"]));
    }

    #[test]
    fn sfence_vma_va_asid_flushes_one_page_of_one_asid_sparing_globals() {
        let left = survivors(FlushOp::SfenceVma { va: Some(A), asid: Some(CUR) });
        assert_eq!(left, sorted(vec!["a.other", "a.global", "b.cur", "b.global", "a.othervm"]));
    }

    #[test]
    fn hfence_vvma_acts_like_sfence_in_the_current_vm() {
        for (va, asid) in [(None, None), (Some(A), Some(CUR)), (None, Some(OTHER))] {
            assert_eq!(
                survivors(FlushOp::HfenceVvma { va, asid }),
                survivors(FlushOp::SfenceVma { va, asid })
            );
        }
    }

    #[test]
    fn hfence_gvma_flushes_combined_entries_of_the_named_vmid_only() {
        let left = survivors(FlushOp::HfenceGvma { gpa: None, vmid: Some(OTHER_VM) });
        assert_eq!(left, sorted(vec!["a.cur", "a.other", "a.global", "b.cur", "b.global"]));
        assert!(survivors(FlushOp::HfenceGvma { gpa: None, vmid: None }).is_empty());
    }

    #[test]
    fn invlpg_flushes_the_page_for_the_current_pcid_and_its_globals() {
        let left = survivors(FlushOp::Invlpg { va: A });
        assert_eq!(left, sorted(vec!["a.other", "b.cur", "b.global", "a.othervm"]));
    }

    #[test]
    fn invpcid_types_0_to_3_have_their_sdm_scopes() {
        let op = |kind, pcid, va| FlushOp::Invpcid { kind, pcid, va };
        assert_eq!(
            survivors(op(InvpcidType::IndividualAddress, OTHER, A)),
            sorted(vec!["a.cur", "a.global", "b.cur", "b.global", "a.othervm"])
        );
        assert_eq!(
            survivors(op(InvpcidType::SingleContext, CUR, A)),
            sorted(vec!["a.other", "a.global", "b.global", "a.othervm"])
        );
        assert_eq!(survivors(op(InvpcidType::AllIncludingGlobal, CUR, A)), ["a.othervm"]);
        assert_eq!(
            survivors(op(InvpcidType::AllNonGlobal, CUR, A)),
            sorted(vec!["a.global", "b.global", "a.othervm"])
        );
    }

    #[test]
    fn mov_cr3_flushes_the_new_pcid_unless_noflush() {
        let left = survivors(FlushOp::MovCr3 { pcid: OTHER, noflush: false });
        assert_eq!(left, sorted(vec!["a.cur", "a.global", "b.cur", "b.global", "a.othervm"]));
        assert_eq!(survivors(FlushOp::MovCr3 { pcid: CUR, noflush: true }).len(), POPULATION.len());
    }

    #[test]
    fn only_full_context_flushes_reach_the_walk_caches() {
        assert!(FlushOp::SfenceVma { va: Some(A), asid: None }
            .effect(VM, CUR)
            .walk_cache
            .is_none());
        assert!(FlushOp::SfenceVma { va: None, asid: Some(CUR) }
            .effect(VM, CUR)
            .walk_cache
            .is_some());
        assert!(FlushOp::MovCr3 { pcid: CUR, noflush: true }.effect(VM, CUR).walk_cache.is_none());
        // INVLPG drops every walk-cache entry of the current PCID, whatever the address.
        let invlpg = FlushOp::Invlpg { va: A }.effect(VM, CUR).walk_cache.unwrap();
        assert_eq!((invlpg.va, invlpg.asid, invlpg.globals), (None, AsidScope::One(CUR), false));
        // Only hfence.gvma touches the nested structures.
        assert!(FlushOp::HfenceGvma { gpa: None, vmid: Some(VM) }.effect(VM, CUR).nested.is_some());
        assert!(FlushOp::SfenceVma { va: None, asid: None }.effect(VM, CUR).nested.is_none());
    }
}
