//! The combined TLB (GVA→HPA, or native VA→PA): per-page-size L1 tables and a unified L2, tagged
//! with VMID, ASID/PCID and the global bit.

use super::flush::TlbScope;
use super::setassoc::{GeometryError, SetAssoc};
use crate::addr::{Asid, Gva, Hpa, PageSize, Vmid};
use crate::paging::{Access, AllowMask};

/// One cached translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TlbEntry {
    /// Virtual page number at the entry's size (`va >> size.shift()`).
    pub vpn: u64,
    /// Page size.
    pub size: PageSize,
    /// VMID tag.
    pub vmid: Vmid,
    /// ASID/PCID tag (ignored when `global`).
    pub asid: Asid,
    /// Global: matches every ASID of its VMID.
    pub global: bool,
    /// Host physical base of the page.
    pub base: Hpa,
    /// Access classes allowed without a walk.
    pub allow: AllowMask,
}

impl TlbEntry {
    /// An entry for the page of `size` containing `va`.
    pub fn new(
        va: Gva,
        size: PageSize,
        base: Hpa,
        tags: (Vmid, Asid, bool),
        allow: AllowMask,
    ) -> Self {
        let (vmid, asid, global) = tags;
        TlbEntry { vpn: va.as_u64() >> size.shift(), size, vmid, asid, global, base, allow }
    }

    /// Whether the entry translates `va` in context (`vmid`, `asid`).
    #[inline]
    pub fn matches(&self, va: Gva, vmid: Vmid, asid: Asid) -> bool {
        self.vpn == va.as_u64() >> self.size.shift()
            && self.vmid == vmid
            && (self.global || self.asid == asid)
    }

    /// Whether the entry covers `va` (any context).
    #[inline]
    pub fn covers(&self, va: Gva) -> bool {
        self.vpn == va.as_u64() >> self.size.shift()
    }

    /// The translation of `va`.
    #[inline]
    pub fn translate(&self, va: Gva) -> Hpa {
        Hpa::new(self.base.as_u64() | va.page_offset(self.size))
    }

    fn same_slot(&self, other: &TlbEntry) -> bool {
        self.vpn == other.vpn
            && self.size == other.size
            && self.vmid == other.vmid
            && self.global == other.global
            && (self.global || self.asid == other.asid)
    }
}

/// Geometry of one table: entries and ways (`ways == entries`: fully associative).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Geometry {
    /// Total entries (0 disables the structure).
    pub entries: usize,
    /// Associativity.
    pub ways: usize,
}

impl Geometry {
    /// A disabled structure.
    pub const OFF: Geometry = Geometry { entries: 0, ways: 0 };
}

/// TLB geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlbConfig {
    /// L1 for 4 KiB pages.
    pub l1_4k: Geometry,
    /// L1 for 2 MiB pages.
    pub l1_2m: Geometry,
    /// L1 for 1 GiB and larger pages.
    pub l1_1g: Geometry,
    /// Unified L2 (every size).
    pub l2: Geometry,
}

impl Default for TlbConfig {
    /// Skylake-like defaults (arch.md §4.8: 64-entry 4-way L1 DTLB, 32-entry 2M, 4-entry 1G,
    /// 1536-entry 12-way STLB) — sizes from the Intel optimization manual, not re-verified.
    fn default() -> Self {
        TlbConfig {
            l1_4k: Geometry { entries: 64, ways: 4 },
            l1_2m: Geometry { entries: 32, ways: 4 },
            l1_1g: Geometry { entries: 4, ways: 4 },
            l2: Geometry { entries: 1536, ways: 12 },
        }
    }
}

/// Which level of the TLB hierarchy answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlbLevel {
    /// An L1 table.
    L1,
    /// The L2.
    L2,
}

/// The combined TLB of one vCPU.
#[derive(Debug, Clone)]
pub struct Tlb {
    l1: [SetAssoc<TlbEntry>; 3],
    l2: SetAssoc<TlbEntry>,
    /// Bit per [`PageSize`] index present in the L2, so misses probe only sizes it holds.
    l2_sizes: u8,
}

#[inline]
fn l1_index(size: PageSize) -> usize {
    match size {
        PageSize::Size4K => 0,
        PageSize::Size2M => 1,
        _ => 2,
    }
}

impl Tlb {
    /// A TLB with the given geometry.
    pub fn new(cfg: &TlbConfig) -> Result<Self, GeometryError> {
        Ok(Tlb {
            l1: [
                SetAssoc::new("tlb.l1_4k", cfg.l1_4k.entries, cfg.l1_4k.ways)?,
                SetAssoc::new("tlb.l1_2m", cfg.l1_2m.entries, cfg.l1_2m.ways)?,
                SetAssoc::new("tlb.l1_1g", cfg.l1_1g.entries, cfg.l1_1g.ways)?,
            ],
            l2: SetAssoc::new("tlb.l2", cfg.l2.entries, cfg.l2.ways)?,
            l2_sizes: 0,
        })
    }

    /// Looks `va` up in the L1 tables. A hit whose entry does not allow `access` (a store to a
    /// clean page, say) is reported as a miss so that the hardware re-walks.
    #[inline]
    pub fn lookup_l1(&mut self, va: Gva, access: Access, vmid: Vmid, asid: Asid) -> Option<Hpa> {
        let bit = access.class_bit();
        for (i, size) in
            [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G].into_iter().enumerate()
        {
            let table = &mut self.l1[i];
            if table.is_empty() {
                continue;
            }
            let key = va.as_u64() >> size.shift();
            if let Some(e) = table.lookup(key, |e| e.matches(va, vmid, asid)) {
                return (e.allow & bit != 0).then(|| e.translate(va));
            }
            if i == 2 {
                // Larger pages share the 1G table.
                for big in [PageSize::Size512G, PageSize::Size256T] {
                    let key = va.as_u64() >> big.shift();
                    if let Some(e) = table.lookup(key, |e| e.matches(va, vmid, asid)) {
                        return (e.allow & bit != 0).then(|| e.translate(va));
                    }
                }
            }
        }
        None
    }

    /// Looks `va` up in the L2; a usable hit is copied into the L1.
    #[cold]
    pub fn lookup_l2(&mut self, va: Gva, access: Access, vmid: Vmid, asid: Asid) -> Option<Hpa> {
        let bit = access.class_bit();
        for size in PageSize::ALL {
            if self.l2_sizes & (1 << size.level().index()) == 0 {
                continue;
            }
            let key = va.as_u64() >> size.shift();
            if let Some(e) = self.l2.lookup(key, |e| e.matches(va, vmid, asid)) {
                if e.allow & bit == 0 {
                    return None;
                }
                self.insert_l1(e);
                return Some(e.translate(va));
            }
        }
        None
    }

    fn insert_l1(&mut self, e: TlbEntry) {
        self.l1[l1_index(e.size)].insert(e.vpn, e, |o| o.same_slot(&e));
    }

    /// Inserts a fresh translation into both levels.
    pub fn insert(&mut self, e: TlbEntry) {
        self.insert_l1(e);
        if !self.l2.is_disabled() {
            self.l2.insert(e.vpn, e, |o| o.same_slot(&e));
            self.l2_sizes |= 1 << e.size.level().index();
        }
    }

    /// Removes exactly the entries `scope` selects; returns how many went. A single-address
    /// scope only visits the sets that address maps to.
    pub fn flush(&mut self, scope: &TlbScope) -> usize {
        let keep = |e: &TlbEntry| {
            !(scope.selects(e.vmid, e.asid, e.global) && scope.va.is_none_or(|va| e.covers(va)))
        };
        let Some(va) = scope.va else {
            return self.l1.iter_mut().map(|t| t.retain(keep)).sum::<usize>()
                + self.l2.retain(keep);
        };
        let mut dropped = 0;
        for size in PageSize::ALL {
            let key = va.as_u64() >> size.shift();
            dropped += self.l1[l1_index(size)].retain_in_set(key, keep);
            if self.l2_sizes & (1 << size.level().index()) != 0 {
                dropped += self.l2.retain_in_set(key, keep);
            }
        }
        dropped
    }

    /// Every entry of both levels (L1 first), for tests and the oracle.
    pub fn entries(&self) -> impl Iterator<Item = &TlbEntry> + '_ {
        self.l1.iter().flat_map(|t| t.iter()).chain(self.l2.iter())
    }
}
