//! `hspt-shared`, `hspt-prefill`, `hspt-private`: hosted (embedded) shadow page tables in a
//! cross-ISA emulator (HSPT, VEE 2015; papers.md, "Paper 5").
//!
//! Translated code accesses guest virtual address `x` as host virtual address `base + x`, so the
//! *host* MMU translates guest accesses directly, with no software-TLB lookup. The embedded
//! shadow table is the emulator process's own page table ([`HostProcess`]): in the host
//! profile's format (`scheme.host`, x86-64 by default), in host memory, walked on a host TLB
//! miss by the host profile's MMU, which replaces the platform's.
//!
//! - A host walk that finds no usable entry is a host page fault delivered to the emulator as
//!   SIGSEGV (`costs.host_signal`). Its handler walks the guest table in software, setting A/D as
//!   the guest architecture would (`costs.emu_walk_per_entry` per entry), and either raises the
//!   guest's fault or maps the page (`costs.host_mmap`): writable only once the guest entry is
//!   dirty, so a first store faults again and remaps it.
//! - Coherence follows the guest's TLB maintenance, with no write protection: a single-address
//!   operation unmaps that page (`mprotect`, `costs.host_mprotect`) in the regions it covers; a
//!   wider one empties them (one call for the whole region, plus `costs.hv_per_entry` per page
//!   mapped in it, the host kernel's work).
//!
//! The three organizations:
//!
//! - **shared**: one region for the whole guest, emptied at every root switch.
//! - **prefill**: shared, plus a per-process record (HSPT: a bitmap per guest page-table base) of
//!   the pages mapped in earlier time slices; when the process is switched back in those are
//!   mapped eagerly (one guest walk and one `mmap` each; pages the guest no longer maps, or has
//!   not marked accessed, are dropped from the record). The refill runs at the first host miss
//!   after the switch, so it reads the guest's table as it is once the switch is complete.
//! - **private**: one region per guest ASID (HSPT: 256 regions of 4 GiB, one per ARM ASID),
//!   switched by reloading the segment base, with no invalidation. When every region is taken the
//!   least recently used is emptied and given to the new ASID (HSPT's `ASID_MANAGE` variant).
//!
//! Host TLB entries are keyed by guest virtual address and tagged with the guest ASID, which
//! stands for the region's distinct host addresses: a region holds one ASID at a time and a
//! recycled region is flushed, and regions are aligned to their size, so the TLB's set index
//! and reach are those of the Hva. Every host entry is filled non-global. The page-walk caches
//! see the Hva itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::host::after_edit;
use super::host::{HostProcess, AUTO_HOST};
use super::shadow::tables::{GuestPath, HvGuestMemory, HvMemError, ShadowLeaf};
use crate::addr::{Asid, Gva, Hpa, PageSize};
use crate::config::ConfigError;
use crate::machine::{GuestRoot, Platform, Scheme, SimError, Stop};
use crate::mem::backing::CHUNK_SIZE;
use crate::mmu::flush::{AsidScope, TlbScope};
use crate::mmu::{FlushOp, TranslationFault};
use crate::paging::walk::{walk, NoWalkCache, PageTable, WalkError, WalkFault};
use crate::paging::{Access, AdPolicy, Decoded, FaultKind, Leaf, Perms, Privilege};
use crate::stats::Charge;

/// Most regions `hspt-private` accepts.
pub const MAX_REGIONS: u64 = 4096;

/// How the embedded shadow tables are organized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Organization {
    /// One region, emptied at every root switch.
    Shared,
    /// One region plus a per-process record of pages to map eagerly at switch-in.
    Prefill,
    /// One region per guest ASID, LRU-recycled.
    Private,
}

impl Organization {
    /// The scheme's name.
    pub fn name(self) -> &'static str {
        match self {
            Organization::Shared => "hspt-shared",
            Organization::Prefill => "hspt-prefill",
            Organization::Private => "hspt-private",
        }
    }
}

/// Options of the HSPT schemes (`--set scheme.KEY=VALUE`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsptOptions {
    /// `hspt-private`'s regions (HSPT code: `asid_count` = 256, one 4 GiB region per ARM ASID).
    pub regions: u64,
    /// The host: a built-in profile, a profile file, or `auto` (`x86-64`, HSPT's host, if the
    /// guest's address space fits its user half `regions` times, else `x86-64-la57`).
    pub host: String,
    /// `hspt-prefill`: the most pages mapped eagerly at a switch-in, the ones the process mapped
    /// most recently; 0 maps every page on record (HSPT's bitmap per process keeps them all; its
    /// code also has a `FILL_SPT_WINDOW_SIZE` profiling knob whose effect was not retrieved).
    pub prefill_limit: u64,
}

impl Default for HsptOptions {
    fn default() -> Self {
        HsptOptions { regions: 256, host: AUTO_HOST.to_owned(), prefill_limit: 0 }
    }
}

impl HsptOptions {
    /// The host regions organization `org` needs: `regions` for private, else one.
    pub fn regions_for(&self, org: Organization) -> u64 {
        if org == Organization::Private {
            self.regions
        } else {
            1
        }
    }

    /// Applies `scheme.KEY=VALUE` settings (without the prefix) and validates the result.
    pub fn with_sets(mut self, sets: &[(String, String)]) -> Result<Self, ConfigError> {
        self = crate::config::set_all(self, sets)?;
        if !(1..=MAX_REGIONS).contains(&self.regions) {
            return Err(ConfigError::Invalid(format!(
                "scheme.regions = {} must be between 1 and {MAX_REGIONS}",
                self.regions
            )));
        }
        Ok(self)
    }
}

/// Counters of the HSPT schemes, reported under `scheme_counters`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HsptStats {
    /// Host faults (SIGSEGVs) taken by the emulator.
    pub host_faults: u64,
    /// Host faults that became guest faults.
    pub guest_faults: u64,
    /// `mmap` calls: pages mapped at faults and by prefill.
    pub maps: u64,
    /// `mprotect` calls: single pages and whole regions invalidated.
    pub mprotects: u64,
    /// Whole regions emptied (a subset of `mprotects`).
    pub region_wipes: u64,
    /// Pages mapped eagerly by prefill (a subset of `maps`).
    pub prefilled: u64,
    /// Regions taken from one ASID for another.
    pub regions_recycled: u64,
}

/// One host region (region `i` of the host process, at index `i`) and the guest address space
/// it holds.
#[derive(Clone, Copy, Debug)]
struct Region {
    asid: Asid,
    last_used: u64,
    /// Pages mapped since it was last emptied (HSPT's per-SPT `map_count`/dirty flag).
    mapped: u64,
}

/// `hspt-prefill`'s record of one process (HSPT: a bitmap per guest page-table base): the pages
/// it had mapped (bit 0 set if the kernel used the page), each with when it was last mapped, so
/// that a limit keeps the newest.
#[derive(Clone, Debug, Default)]
struct PrefillRecord {
    stamps: BTreeMap<u64, u64>,
    /// The same pages by stamp, oldest first.
    by_age: BTreeMap<u64, u64>,
}

impl PrefillRecord {
    /// Records `page` as mapped at `stamp`, dropping the oldest pages beyond `limit` (0: none).
    fn record(&mut self, page: u64, stamp: u64, limit: u64) {
        if let Some(old) = self.stamps.insert(page, stamp) {
            self.by_age.remove(&old);
        }
        self.by_age.insert(stamp, page);
        while limit > 0 && self.stamps.len() as u64 > limit {
            let Some((_, oldest)) = self.by_age.pop_first() else { break };
            self.stamps.remove(&oldest);
        }
    }

    fn forget(&mut self, page: u64) {
        if let Some(stamp) = self.stamps.remove(&page) {
            self.by_age.remove(&stamp);
        }
    }

    /// The pages on record, in address order.
    fn pages(&self) -> Vec<u64> {
        self.stamps.keys().copied().collect()
    }
}

/// A software walk of the guest table by the emulator.
enum GuestWalk {
    Leaf { leaf: Leaf<crate::addr::GuestPhys>, path: GuestPath },
    Fault { fault: WalkFault },
    Unbacked,
}

/// An HSPT organization.
#[derive(Debug)]
pub struct Hspt {
    org: Organization,
    opts: HsptOptions,
    host: HostProcess,
    regions: Vec<Region>,
    /// Index in `regions` of the region the host walks now.
    current: Option<usize>,
    /// `hspt-prefill`: pages mapped for each guest root.
    used: BTreeMap<u64, PrefillRecord>,
    /// `hspt-prefill`: stamps for [`PrefillRecord`].
    maps_made: u64,
    /// `hspt-prefill`: the root switched to whose pages are still to be mapped.
    pending_prefill: Option<GuestRoot>,
    /// Logical clock for LRU.
    clock: u64,
    /// Counters.
    pub stats: HsptStats,
}

impl Hspt {
    /// An HSPT scheme of organization `org` (`opts.regions` matters to `Private` only) on the
    /// host `opts.host`, whose MMU replaces the platform's (walk caches off when the run's
    /// profile turns them off).
    pub fn new(
        p: &mut Platform,
        org: Organization,
        opts: HsptOptions,
        walk_caches: bool,
    ) -> Result<Self, SimError> {
        let bits = p.arch.guest_format.input_bits();
        let (host, mut mmu) = HostProcess::new(
            &mut p.host,
            p.arch.guest_regime,
            &opts.host,
            bits,
            opts.regions_for(org),
            walk_caches,
        )?;
        // The host MMU translates the guest's accesses: it replaces the platform's.
        mmu.set_context(p.mmu.vmid(), p.mmu.asid());
        p.mmu = mmu;
        Ok(Hspt {
            org,
            opts,
            host,
            regions: Vec::new(),
            current: None,
            used: BTreeMap::new(),
            maps_made: 0,
            pending_prefill: None,
            clock: 0,
            stats: HsptStats::default(),
        })
    }

    /// The host process.
    pub fn host(&self) -> &HostProcess {
        &self.host
    }

    /// The organization.
    pub fn organization(&self) -> Organization {
        self.org
    }

    /// Regions in use.
    pub fn regions(&self) -> usize {
        self.regions.len()
    }

    fn ad_by_hardware(p: &Platform) -> bool {
        p.arch.guest_regime.ad != AdPolicy::Ignore
    }

    /// The emulator's software walk of `root` for `gva`; with `emulate_ad` it sets A/D as the
    /// guest's hardware would (the access happened).
    fn guest_walk(
        p: &mut Platform,
        root: &PageTable<crate::addr::GuestVirt, crate::addr::GuestPhys>,
        gva: Gva,
        access: Access,
        emulate_ad: bool,
    ) -> Result<GuestWalk, SimError> {
        let mut regime = p.arch.guest_regime;
        if !emulate_ad {
            regime.ad = AdPolicy::Ignore;
        }
        let mut mem = HvGuestMemory {
            host: &mut p.host,
            backing: &mut p.guest_mem,
            path: GuestPath::default(),
        };
        let result = walk(root, gva, access, &regime, &mut mem, &mut NoWalkCache);
        let path = mem.path;
        let work = u64::from(path.reads + path.writes);
        p.stats.cycles.emulator.charge(p.costs.emu_walk_per_entry * work);
        Ok(match result {
            Ok(leaf) => GuestWalk::Leaf { leaf, path },
            Err(WalkError::Fault(fault)) => GuestWalk::Fault { fault },
            Err(WalkError::Memory(HvMemError::Unbacked)) => GuestWalk::Unbacked,
            Err(WalkError::Memory(HvMemError::Host(e))) => return Err(e.into()),
        })
    }

    /// The host mapping for a guest translation of `gva`, or `None` outside guest memory: the
    /// guest page (at most a backing chunk, and a size the host format maps) and its
    /// permissions, writable only once the guest entry is dirty.
    fn host_leaf(
        &self,
        p: &mut Platform,
        gva: Gva,
        leaf: &Leaf<crate::addr::GuestPhys>,
    ) -> Result<Option<ShadowLeaf>, SimError> {
        let mut size = leaf.size.min(CHUNK_SIZE);
        if !self.host.format().leaf_allowed(size.level()) {
            size = PageSize::Size4K;
        }
        let gpa = leaf.output(gva).align_down(size);
        let Some(hfn) = p.back(gpa.page())? else { return Ok(None) };
        let mut perms = leaf.perms;
        if !leaf.dirty && Self::ad_by_hardware(p) {
            perms.remove(Perms::W);
        }
        Ok(Some(ShadowLeaf { base: hfn.addr(), size, perms, global: false }))
    }

    /// Maps `gva` in region `r`: one `mmap`.
    fn map(
        &mut self,
        p: &mut Platform,
        r: usize,
        gva: Gva,
        leaf: ShadowLeaf,
    ) -> Result<(), SimError> {
        let Some(region) = self.regions.get_mut(r) else { return Ok(()) };
        region.mapped += 1;
        let hva = self.host.hva(r, gva.align_down(leaf.size));
        let edit = self.host.map(&mut p.host, hva, leaf.base, leaf.size, leaf.perms)?;
        after_edit(&mut p.mmu, edit);
        self.stats.maps += 1;
        p.stats.cycles.emulator.charge(p.costs.host_mmap);
        Ok(())
    }

    /// A host fault on `gva` in region `r`: the SIGSEGV handler walks the guest table and maps
    /// the page, or raises the guest's fault.
    fn host_fault(
        &mut self,
        p: &mut Platform,
        r: usize,
        gva: Gva,
        access: Access,
    ) -> Result<(), Stop> {
        self.stats.host_faults += 1;
        p.stats.cycles.emulator.charge(p.costs.host_signal);
        let root = p.current_root()?;
        let format = root.table.format();
        let guest_fault = |this: &mut Self, p: &mut Platform, fault: TranslationFault| {
            this.stats.guest_faults += 1;
            p.stats.guest_faults += 1;
            Err(Stop::GuestFault(fault))
        };
        match Self::guest_walk(p, &root.table, gva, access, true)? {
            GuestWalk::Fault { fault } => {
                guest_fault(self, p, TranslationFault::first_stage(gva, access, format, fault))
            }
            GuestWalk::Unbacked => guest_fault(self, p, access_fault(gva, access, format)),
            GuestWalk::Leaf { leaf, .. } => {
                let Some(host) = self.host_leaf(p, gva, &leaf)? else {
                    return guest_fault(self, p, access_fault(gva, access, format));
                };
                self.map(p, r, gva, host)?;
                if self.org == Organization::Prefill {
                    // The page, and in bit 0 whether the kernel used it (its prefill walk then
                    // checks kernel permissions).
                    let page = gva.as_u64() & !PageSize::Size4K.offset_mask();
                    let kernel = u64::from(access.privilege != Privilege::User);
                    self.maps_made += 1;
                    let record = self.used.entry(root.table.root().as_u64()).or_default();
                    record.record(page | kernel, self.maps_made, self.opts.prefill_limit);
                }
                Ok(())
            }
        }
    }

    /// Empties region `r`: one `mprotect` of the whole region (none if nothing is mapped), and
    /// the host TLB entries of its addresses go.
    fn wipe(&mut self, p: &mut Platform, r: usize) {
        let Some(region) = self.regions.get_mut(r) else { return };
        let (asid, mapped) = (region.asid, region.mapped);
        region.mapped = 0;
        let edit = self.host.wipe(&mut p.host, r);
        if edit.writes == 0 && mapped == 0 {
            return;
        }
        after_edit(&mut p.mmu, edit);
        self.stats.region_wipes += 1;
        self.stats.mprotects += 1;
        p.stats.cycles.emulator.charge(p.costs.host_mprotect + p.costs.hv_per_entry * mapped);
        let scope = match self.org {
            // One region serves every ASID.
            Organization::Shared | Organization::Prefill => AsidScope::All,
            Organization::Private => AsidScope::One(asid),
        };
        p.mmu.tlb.flush(&TlbScope { vmid: None, va: None, asid: scope, globals: true });
    }

    /// The region for `asid`, created, or recycled from the least recently used one.
    fn region_for(&mut self, p: &mut Platform, root: GuestRoot) -> Result<usize, SimError> {
        self.clock += 1;
        let now = self.clock;
        let shared = self.org != Organization::Private;
        let found = if shared {
            (!self.regions.is_empty()).then_some(0)
        } else {
            self.regions.iter().position(|r| r.asid == root.asid)
        };
        let r = match found {
            Some(r) => r,
            None if shared || (self.regions.len() as u64) < self.opts.regions => {
                self.regions.push(Region { asid: root.asid, last_used: now, mapped: 0 });
                self.regions.len() - 1
            }
            None => {
                let lru = (0..self.regions.len())
                    .min_by_key(|&i| self.regions[i].last_used)
                    .unwrap_or_default();
                self.wipe(p, lru);
                self.stats.regions_recycled += 1;
                lru
            }
        };
        if let Some(region) = self.regions.get_mut(r) {
            region.asid = root.asid;
            region.last_used = now;
        }
        Ok(r)
    }

    fn current_region(&mut self, p: &mut Platform) -> Result<usize, SimError> {
        if let Some(r) = self.current {
            return Ok(r);
        }
        let root = p.current_root()?;
        let r = self.region_for(p, root)?;
        self.current = Some(r);
        Ok(r)
    }

    /// `hspt-prefill`: maps every page `root`'s process had mapped in earlier time slices (the
    /// newest `prefill_limit`, if set) and the guest still maps (and has marked accessed), one
    /// walk and one `mmap` each.
    fn prefill(&mut self, p: &mut Platform, r: usize, root: GuestRoot) -> Result<(), SimError> {
        let key = root.table.root().as_u64();
        let Some(pages) = self.used.get(&key).map(PrefillRecord::pages) else { return Ok(()) };
        let format = root.table.format();
        let mut gone = Vec::new();
        for page in pages {
            let gva = Gva::new(page & !PageSize::Size4K.offset_mask());
            let read = if page & 1 == 0 { Access::USER_LOAD } else { Access::KERNEL_LOAD };
            if self.host.find(&p.host, self.host.hva(r, gva)).is_some() {
                continue; // a superpage mapped for an earlier page of the record
            }
            let GuestWalk::Leaf { leaf, path } =
                Self::guest_walk(p, &root.table, gva, read, false)?
            else {
                gone.push(page);
                continue;
            };
            let level = leaf.size.level();
            let accessed = !Self::ad_by_hardware(p)
                || matches!(
                    format.decode(path.raw[level.index() as usize], level),
                    Ok(Decoded::Leaf { attrs, .. }) if attrs.accessed
                );
            match self.host_leaf(p, gva, &leaf)? {
                Some(host) if accessed => {
                    self.map(p, r, gva, host)?;
                    self.stats.prefilled += 1;
                }
                _ => gone.push(page),
            }
        }
        if let Some(record) = self.used.get_mut(&key) {
            for page in gone {
                record.forget(page);
            }
        }
        Ok(())
    }
}

/// The access fault a guest gets for a translation to memory it does not have.
fn access_fault(gva: Gva, access: Access, format: &crate::paging::Format) -> TranslationFault {
    let f = WalkFault {
        kind: FaultKind::AccessFault,
        level: crate::addr::Level::L0,
        perms: Perms::empty(),
    };
    TranslationFault::first_stage(gva, access, format, f)
}

impl Scheme for Hspt {
    fn name(&self) -> &'static str {
        self.org.name()
    }

    fn tlb_miss(&mut self, p: &mut Platform, gva: Gva, access: Access) -> Result<Hpa, Stop> {
        let r = self.current_region(p)?;
        if let Some(root) = self.pending_prefill.take() {
            self.prefill(p, r, root)?;
        }
        // A host fault maps the page with every permission the access needs (the handler's
        // walk set A and, for a store, D): the second host walk succeeds.
        let hva = self.host.hva(r, gva);
        for _ in 0..3 {
            let walked = self.host.walk(&mut p.mmu, &mut p.host, hva, access);
            p.account_walk();
            match walked {
                Ok(leaf) => {
                    let allow = self.host.allow(leaf.perms);
                    p.fill_tlb(gva, leaf.size, leaf.base, false, allow)?;
                    return Ok(leaf.output(hva));
                }
                Err(_) => self.host_fault(p, r, gva, access)?,
            }
        }
        Err(Stop::Error(SimError::Internal {
            scheme: self.org.name(),
            detail: format!("host faults did not converge for {gva} ({access:?})"),
        }))
    }

    fn guest_flush(&mut self, p: &mut Platform, op: FlushOp) -> Result<(), SimError> {
        // The host TLB follows the host mappings the emulator changes below; entries are tagged
        // by guest ASID (region), so the guest's own scope covers them.
        p.mmu.flush(&op);
        if matches!(op, FlushOp::HfenceGvma { .. }) {
            return Ok(());
        }
        let Some(scope) = op.effect(p.mmu.vmid(), p.mmu.asid()).tlb else { return Ok(()) };
        let covered: Vec<usize> = match (self.org, scope.asid) {
            (Organization::Private, AsidScope::One(asid)) if !scope.globals => {
                self.regions.iter().position(|g| g.asid == asid).into_iter().collect()
            }
            _ => (0..self.regions.len()).collect(),
        };
        for r in covered {
            match scope.va {
                Some(va) => {
                    let hva = self.host.hva(r, va);
                    if let Some(edit) = self.host.unmap(&mut p.host, hva) {
                        self.stats.mprotects += 1;
                        p.stats.cycles.emulator.charge(p.costs.host_mprotect);
                        after_edit(&mut p.mmu, edit);
                    }
                }
                None => self.wipe(p, r),
            }
        }
        Ok(())
    }

    fn guest_root_switch(&mut self, p: &mut Platform, root: GuestRoot) -> Result<(), SimError> {
        p.root = Some(root);
        p.mmu.set_asid(root.asid);
        let r = self.region_for(p, root)?;
        self.current = Some(r);
        match self.org {
            Organization::Shared => self.wipe(p, r),
            Organization::Prefill => {
                self.wipe(p, r);
                self.pending_prefill = Some(root);
            }
            // Reloading the segment base: no host work at all.
            Organization::Private => {}
        }
        Ok(())
    }

    fn guest_address_space_freed(
        &mut self,
        p: &mut Platform,
        root: GuestRoot,
    ) -> Result<(), SimError> {
        let _ = p;
        self.used.remove(&root.table.root().as_u64());
        if self.pending_prefill.is_some_and(|g| g.table == root.table) {
            self.pending_prefill = None;
        }
        Ok(())
    }

    fn reset_counters(&mut self) {
        self.stats = Default::default();
    }

    fn counters(&self, out: &mut BTreeMap<&'static str, u64>) {
        let s = &self.stats;
        let t = &self.host;
        for (k, v) in [
            ("host_faults", s.host_faults),
            ("host_fault_guest_faults", s.guest_faults),
            ("host_maps", s.maps),
            ("host_mprotects", s.mprotects),
            ("region_wipes", s.region_wipes),
            ("prefilled_pages", s.prefilled),
            ("regions", self.regions.len() as u64),
            ("regions_recycled", s.regions_recycled),
            ("host_table_levels", u64::from(t.format().levels)),
            ("region_table_pages", t.pages),
            ("region_table_pages_peak", t.peak_pages),
        ] {
            out.insert(k, v);
        }
    }
}
