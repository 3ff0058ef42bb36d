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
//! The data access itself goes to guest RAM through the host: the software TLB yields a host
//! virtual address in QEMU's RAM block (`Hva = ram_base + gpa`), which the host MMU translates
//! ([`Scheme::host_data_access`]). The host is a [`HostProcess`] (`scheme.host`, default
//! x86-64) whose page table maps guest RAM with 2 MiB pages (`scheme.ram_huge_pages`: QEMU
//! advises transparent huge pages for guest RAM) or 4 KiB pages, mapped on first use at no cost
//! (assumption: RAM preallocated, QEMU's `-mem-prealloc`). A host L1 TLB hit is folded into the
//! inline lookup's cost; an L2 hit costs `costs.tlb_l2_hit`, a miss that and the host walk.
//!
//! Simplifications (DESIGN.md, "Cross-ISA emulation"): one software TLB for every privilege
//! (QEMU keeps one per MMU index); no dynamic resizing (QEMU grows and shrinks the table with
//! its use rate); the emulator's own code and data do not occupy the host TLB.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::host::{HostProcess, AUTO_HOST};
use crate::addr::{u64_to_usize, Gva, Hpa, PageSize};
use crate::config::ConfigError;
use crate::machine::{GuestRoot, Platform, Scheme, SimError, Stop};
use crate::mem::backing::{CHUNK_FRAMES, CHUNK_SIZE};
use crate::mem::OutsideGuestMemory;
use crate::mmu::flush::{AsidScope, TlbScope};
use crate::mmu::tlb::{Geometry, TlbConfig};
use crate::mmu::{FlushOp, Mmu, MmuConfig, TranslationFault};
use crate::paging::walk::{WalkError, WalkFault};
use crate::paging::{Access, AccessKind, FaultKind, Perms, Privilege};
use crate::stats::Charge;

/// log2 of a backing chunk's bytes.
const CHUNK_SHIFT: u32 = CHUNK_SIZE.shift();

/// Largest `tlb_bits` accepted (QEMU's dynamic TLB grows to 2^22 entries; memvirt stops at
/// 2^16 to keep the table small).
pub const MAX_TLB_BITS: u32 = 16;
/// Largest victim TLB accepted.
pub const MAX_VICTIM: usize = 64;

/// The host region holding guest RAM (region 0 is left unused, as address 0 is in a process).
const RAM_REGION: usize = 1;

/// Options of `softmmu` (`--set scheme.KEY=VALUE`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftmmuOptions {
    /// log2 of the software TLB's entries (QEMU: `CPU_TLB_DYN_DEFAULT_BITS` = 8, 256 entries).
    pub tlb_bits: u32,
    /// Entries of the fully associative victim TLB probed out of line after a miss (QEMU:
    /// `CPU_VTLB_SIZE` = 8); 0 turns it off.
    pub victim: usize,
    /// The host: a built-in profile, a profile file, or `auto` (x86-64).
    pub host: String,
    /// Guest RAM in host 2 MiB pages (QEMU's `madvise(MADV_HUGEPAGE)` on RAM blocks; assumption:
    /// transparent huge pages are granted), else 4 KiB pages.
    pub ram_huge_pages: bool,
}

impl Default for SoftmmuOptions {
    fn default() -> Self {
        SoftmmuOptions { tlb_bits: 8, victim: 8, host: AUTO_HOST.to_owned(), ram_huge_pages: true }
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
    /// Host TLB misses of data accesses (host walks).
    pub host_tlb_misses: u64,
    /// Guest RAM pages mapped in the host table (first use).
    pub host_ram_maps: u64,
}

/// The QEMU-like software MMU.
#[derive(Debug)]
pub struct Softmmu {
    opts: SoftmmuOptions,
    /// The emulator process, guest RAM in its region [`RAM_REGION`].
    host: HostProcess,
    /// The host MMU the data accesses go through (the platform's MMU is the software TLB).
    pub host_mmu: Mmu,
    /// For each 2 MiB chunk of host memory, the guest chunk it backs plus one (0: none seen):
    /// the host address the software TLB holds is turned back into the RAM block's Hva.
    ram_chunks: Vec<u64>,
    /// Counters.
    pub stats: SoftmmuStats,
}

impl Softmmu {
    /// Replaces the platform's MMU by the software TLB of `opts` (keeping `mmu`'s page-table
    /// read cache and the platform's VMID), and builds the host process (its walk caches off
    /// if `walk_caches` is false).
    pub fn new(
        p: &mut Platform,
        mmu: &MmuConfig,
        opts: SoftmmuOptions,
        walk_caches: bool,
    ) -> Result<Self, SimError> {
        let vmid = p.mmu.vmid();
        p.mmu = Mmu::new(&opts.mmu_config(mmu))?;
        p.mmu.set_vmid(vmid);
        let ram_bits =
            HostProcess::region_bits_for(p.guest_mem.frames() * PageSize::Size4K.bytes());
        let regions = RAM_REGION as u64 + 1;
        let (host, host_mmu) = HostProcess::new(
            &mut p.host,
            p.arch.guest_regime,
            &opts.host,
            ram_bits,
            regions,
            walk_caches,
        )?;
        let ram_chunks = vec![0; u64_to_usize(p.host.limit().div_ceil(CHUNK_FRAMES))];
        Ok(Softmmu { opts, host, host_mmu, ram_chunks, stats: SoftmmuStats::default() })
    }

    /// The host process.
    pub fn host(&self) -> &HostProcess {
        &self.host
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
        p.stats.cycles.walk.charge(p.mmu.account_walk(&lat));
        let entries = p.mmu.trace.total() as u64;
        p.stats
            .cycles
            .emulator
            .charge(p.costs.soft_tlb_refill + p.costs.emu_walk_per_entry * entries);
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
        let gpa = leaf.output(gva);
        if let Some(chunk) = self.ram_chunks.get_mut(u64_to_usize(hpa.as_u64() >> CHUNK_SHIFT)) {
            *chunk = (gpa.as_u64() >> CHUNK_SHIFT) + 1;
        }
        let allow = format.allow_mask(leaf.perms, leaf.dirty, &regime);
        // QEMU's TLB holds target pages: a superpage is cached one 4 KiB page at a time.
        p.fill_tlb(gva, PageSize::Size4K, hpa, leaf.global, allow)?;
        self.stats.refills += 1;
        Ok(hpa)
    }

    fn host_data_access(&mut self, p: &mut Platform, hpa: Hpa, access: Access) -> Result<(), Stop> {
        let chunk = self.ram_chunks.get(u64_to_usize(hpa.as_u64() >> CHUNK_SHIFT)).copied();
        let Some(guest_chunk) = chunk.and_then(|c| c.checked_sub(1)) else {
            return Err(Stop::Error(SimError::Internal {
                scheme: "softmmu",
                detail: format!("{hpa} was never handed to the software TLB"),
            }));
        };
        let offset = guest_chunk << CHUNK_SHIFT | hpa.as_u64() & ((1 << CHUNK_SHIFT) - 1);
        let hva = self.host.at(RAM_REGION, offset);
        // The emulator's own load or store, in user mode.
        let kind =
            if access.kind == AccessKind::Store { AccessKind::Store } else { AccessKind::Load };
        let host_access = Access { kind, privilege: Privilege::User };
        // The host TLB is keyed by the host virtual address.
        let key = Gva::new(hva.as_u64());
        if self.host_mmu.lookup_l1(key, host_access).is_some() {
            return Ok(());
        }
        p.stats.cycles.tlb.charge(p.costs.tlb_l2_hit);
        if self.host_mmu.lookup_l2(key, host_access).is_some() {
            return Ok(());
        }
        self.stats.host_tlb_misses += 1;
        let lat = p.costs.pt_latency();
        for _ in 0..2 {
            let walked = self.host.walk(&mut self.host_mmu, &mut p.host, hva, host_access);
            p.stats.cycles.walk.charge(self.host_mmu.account_walk(&lat));
            if let Ok(leaf) = walked {
                let allow = self.host.allow(leaf.perms);
                self.host_mmu.fill(key, leaf.size, leaf.base, false, allow);
                return Ok(());
            }
            // First use of this part of guest RAM: map it.
            let size = if self.opts.ram_huge_pages
                && self.host.format().leaf_allowed(CHUNK_SIZE.level())
            {
                CHUNK_SIZE
            } else {
                PageSize::Size4K
            };
            let page = hva.align_down(size);
            let base = Hpa::new(hpa.as_u64() & !size.offset_mask());
            let edit =
                self.host.map(&mut p.host, page, base, size, Perms::R | Perms::W | Perms::U)?;
            super::host::after_edit(&mut self.host_mmu, edit);
            self.stats.host_ram_maps += 1;
        }
        Err(Stop::Error(SimError::Internal {
            scheme: "softmmu",
            detail: format!("the host walk of {hva} failed after mapping it"),
        }))
    }

    fn guest_flush(&mut self, p: &mut Platform, op: FlushOp) -> Result<(), SimError> {
        let Some(scope) = op.effect(p.mmu.vmid(), p.mmu.asid()).tlb else { return Ok(()) };
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
        p.mmu.set_asid(root.asid);
        // QEMU's write_satp and cpu_x86_update_cr3 call tlb_flush.
        self.flush_all(p);
        Ok(())
    }

    fn reset_counters(&mut self) {
        self.stats = Default::default();
    }

    fn counters(&self, out: &mut BTreeMap<&'static str, u64>) {
        let s = &self.stats;
        for (k, v) in [
            ("soft_tlb_entries", 1u64 << self.opts.tlb_bits.min(MAX_TLB_BITS)),
            ("soft_tlb_refills", s.refills),
            ("soft_tlb_page_flushes", s.page_flushes),
            ("soft_tlb_full_flushes", s.full_flushes),
            ("soft_tlb_entries_flushed", s.entries_flushed),
            ("host_tlb_misses", s.host_tlb_misses),
            ("host_ram_maps", s.host_ram_maps),
            ("host_table_levels", u64::from(self.host.format().levels)),
            ("host_table_pages", self.host.pages),
        ] {
            out.insert(k, v);
        }
    }
}
