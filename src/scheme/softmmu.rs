//! `softmmu`: the baseline of cross-ISA system emulation, QEMU's software MMU.
//!
//! The guest runs as translated code in a host process. Every guest load or store first looks
//! the page up in a *software* TLB inline (`costs.soft_tlb_lookup`, charged by
//! [`Machine::access`](crate::machine::Machine::access) through [`Scheme::SOFTWARE_TLB`]); a miss
//! leaves translated code for a helper that walks the guest table in software, setting A/D as
//! the guest architecture says (`costs.soft_tlb_refill` plus `costs.emu_walk_per_entry` per
//! entry, on top of the reads themselves through the page-table-read cache), and refills.
//!
//! The machine's TLB *is* the software TLB here: [`Softmmu::new`] replaces the MMU with one
//! whose L1 TLB is a direct-mapped table of 2^`tlb_bits` 4 KiB entries (QEMU: 256 entries per
//! MMU index, `CPU_TLB_DYN_DEFAULT_BITS` = 8), whose L2 is a fully associative victim TLB of
//! `victim` entries (QEMU: `CPU_VTLB_SIZE` = 8), and whose page-walk caches are off (a software
//! walk has none). Guest pages of any size are cached 4 KiB at a time, as QEMU does. A victim
//! hit costs the failed inline lookup plus `costs.tlb_l2_hit` (assumption: QEMU probes the
//! victim TLB in the slow-path helper). memvirt fills the victim TLB with every refill (an
//! inclusive L2) rather than with the entries the main table evicts, as QEMU does.
//!
//! Flushes follow QEMU, which does not tag its TLB with ASIDs: a single-address operation
//! (`sfence.vma va`, `invlpg`) drops that page whatever its ASID (`tlb_flush_page`), any other
//! operation and every root switch (`satp`/CR3 write) drop everything (`tlb_flush`).
//!
//! Simplifications (DESIGN.md, "Cross-ISA emulation"): one software TLB for every privilege
//! (QEMU keeps one per MMU index); no dynamic resizing (QEMU grows and shrinks the table with
//! its use rate); the host TLB behind the data access is assumed to hit (guest RAM in host huge
//! pages) and is folded into the lookup cost.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::addr::{Gva, Hpa, PageSize};
use crate::config::ConfigError;
use crate::machine::{GuestRoot, Platform, Scheme, SimError, Stop};
use crate::mem::OutsideGuestMemory;
use crate::mmu::flush::{AsidScope, TlbScope};
use crate::mmu::tlb::{Geometry, TlbConfig};
use crate::mmu::{FlushOp, Mmu, MmuConfig, TranslationFault};
use crate::paging::walk::{WalkError, WalkFault};
use crate::paging::{Access, FaultKind};

/// Largest `tlb_bits` accepted (QEMU's dynamic TLB grows to 2^22 entries; memvirt stops at
/// 2^16 to keep the table small).
pub const MAX_TLB_BITS: u32 = 16;
/// Largest victim TLB accepted.
pub const MAX_VICTIM: usize = 64;

/// Options of `softmmu` (`--set scheme.KEY=VALUE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftmmuOptions {
    /// log2 of the software TLB's entries (QEMU: `CPU_TLB_DYN_DEFAULT_BITS` = 8, 256 entries).
    pub tlb_bits: u32,
    /// Entries of the fully associative victim TLB probed out of line after a miss (QEMU:
    /// `CPU_VTLB_SIZE` = 8); 0 turns it off.
    pub victim: usize,
}

impl Default for SoftmmuOptions {
    fn default() -> Self {
        SoftmmuOptions { tlb_bits: 8, victim: 8 }
    }
}

impl SoftmmuOptions {
    /// Applies `scheme.KEY=VALUE` settings (without the prefix) and validates the result.
    pub fn with_sets(mut self, sets: &[(String, String)]) -> Result<Self, ConfigError> {
        self = crate::config::set_all(self, sets)?;
        if !(1..=MAX_TLB_BITS).contains(&self.tlb_bits) {
            return Err(ConfigError::Invalid(format!(
                "scheme.tlb_bits = {} must be between 1 and {MAX_TLB_BITS}",
                self.tlb_bits
            )));
        }
        if self.victim > MAX_VICTIM {
            return Err(ConfigError::Invalid(format!(
                "scheme.victim = {} must be at most {MAX_VICTIM}",
                self.victim
            )));
        }
        Ok(self)
    }

    /// The MMU of the emulator: `mmu`'s page-table-read cache, a direct-mapped software TLB of
    /// 4 KiB entries and, as its second level, the victim TLB.
    pub fn mmu_config(&self, mmu: &MmuConfig) -> MmuConfig {
        let entries = 1usize << self.tlb_bits.min(MAX_TLB_BITS);
        let mut cfg = mmu.without_walk_caches();
        cfg.tlb = TlbConfig {
            l1_4k: Geometry { entries, ways: 1 },
            l1_2m: Geometry::OFF,
            l1_1g: Geometry::OFF,
            l2: match self.victim.min(MAX_VICTIM) {
                0 => Geometry::OFF,
                n => Geometry { entries: n, ways: n },
            },
        };
        cfg
    }
}

/// Counters of `softmmu`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SoftmmuStats {
    /// Software-TLB refills (misses that found a guest translation).
    pub refills: u64,
    /// `tlb_flush_page` calls (single-address guest flushes).
    pub page_flushes: u64,
    /// `tlb_flush` calls (wide guest flushes and root switches).
    pub full_flushes: u64,
    /// Software-TLB entries those flushes dropped.
    pub entries_flushed: u64,
}

/// The QEMU-like software MMU.
#[derive(Debug)]
pub struct Softmmu {
    opts: SoftmmuOptions,
    /// Counters.
    pub stats: SoftmmuStats,
}

impl Softmmu {
    /// Replaces the platform's MMU by the software TLB of `opts` (keeping `mmu`'s page-table
    /// read cache and the platform's VMID).
    pub fn new(p: &mut Platform, mmu: &MmuConfig, opts: SoftmmuOptions) -> Result<Self, SimError> {
        let vmid = p.mmu.vmid;
        p.mmu = Mmu::new(&opts.mmu_config(mmu))?;
        p.mmu.vmid = vmid;
        Ok(Softmmu { opts, stats: SoftmmuStats::default() })
    }

    /// The options.
    pub fn options(&self) -> &SoftmmuOptions {
        &self.opts
    }

    fn flush_all(&mut self, p: &mut Platform) {
        let scope = TlbScope { vmid: None, va: None, asid: AsidScope::All, globals: true };
        self.stats.entries_flushed += p.mmu.tlb.flush(&scope) as u64;
        self.stats.full_flushes += 1;
    }
}

impl Scheme for Softmmu {
    const SOFTWARE_TLB: bool = true;

    fn name(&self) -> &'static str {
        "softmmu"
    }

    fn tlb_miss(&mut self, p: &mut Platform, gva: Gva, access: Access) -> Result<Hpa, Stop> {
        let root = p.current_root()?;
        let regime = p.arch.guest_regime;
        let format = root.table.format();
        // The helper's software walk: the MMU has no walk caches, so this is every entry.
        let result =
            p.mmu.walk_native(&mut p.host, &mut p.guest_mem, &root.table, &regime, gva, access);
        let lat = p.costs.pt_latency();
        p.stats.cycles.walk += p.mmu.account_walk(&lat);
        let entries = p.mmu.trace.total() as u64;
        p.stats.cycles.emulator += p.costs.soft_tlb_refill + p.costs.emu_walk_per_entry * entries;
        let fault = |kind| {
            let f = WalkFault {
                kind,
                level: format.root_level(),
                perms: crate::paging::Perms::empty(),
            };
            Stop::GuestFault(TranslationFault::first_stage(gva, access, format, f))
        };
        let leaf = match result {
            Ok(leaf) => leaf,
            Err(WalkError::Fault(f)) => {
                p.stats.guest_faults += 1;
                return Err(Stop::GuestFault(TranslationFault::first_stage(
                    gva, access, format, f,
                )));
            }
            Err(WalkError::Memory(OutsideGuestMemory::Unbacked(_))) => {
                p.stats.guest_faults += 1;
                return Err(fault(FaultKind::AccessFault));
            }
            Err(WalkError::Memory(OutsideGuestMemory::Host(e))) => {
                return Err(Stop::Error(SimError::Memory(e)))
            }
        };
        let Some(hpa) = p.gpa_to_hpa(leaf.output(gva))? else {
            p.stats.guest_faults += 1;
            return Err(fault(FaultKind::AccessFault));
        };
        let allow = format.allow_mask(leaf.perms, leaf.dirty, &regime);
        // QEMU's TLB holds target pages: a superpage is cached one 4 KiB page at a time.
        p.fill_tlb(gva, PageSize::Size4K, hpa, leaf.global, allow)?;
        self.stats.refills += 1;
        Ok(hpa)
    }

    fn guest_flush(&mut self, p: &mut Platform, op: FlushOp) -> Result<(), SimError> {
        let Some(scope) = op.effect(p.mmu.vmid, p.mmu.asid).tlb else { return Ok(()) };
        match scope.va {
            Some(va) => {
                // tlb_flush_page: the page in every address space, globals included.
                let page =
                    TlbScope { vmid: None, va: Some(va), asid: AsidScope::All, globals: true };
                self.stats.entries_flushed += p.mmu.tlb.flush(&page) as u64;
                self.stats.page_flushes += 1;
            }
            None => self.flush_all(p),
        }
        Ok(())
    }

    fn guest_root_switch(&mut self, p: &mut Platform, root: GuestRoot) -> Result<(), SimError> {
        p.root = Some(root);
        p.mmu.asid = root.asid;
        // QEMU's write_satp and cpu_x86_update_cr3 call tlb_flush.
        self.flush_all(p);
        Ok(())
    }

    fn counters(&self, out: &mut BTreeMap<&'static str, u64>) {
        let s = &self.stats;
        for (k, v) in [
            ("soft_tlb_entries", 1u64 << self.opts.tlb_bits.min(MAX_TLB_BITS)),
            ("soft_tlb_refills", s.refills),
            ("soft_tlb_page_flushes", s.page_flushes),
            ("soft_tlb_full_flushes", s.full_flushes),
            ("soft_tlb_entries_flushed", s.entries_flushed),
        ] {
            out.insert(k, v);
        }
    }
}
