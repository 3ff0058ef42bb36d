//! The shadow-paging family: `tsp`, `tsp-unsync`, `ssp`, `lsp` and `rvirt` (DESIGN.md §3).
//!
//! The hardware walks a shadow table (GVA→HPA, one dimension) that the hypervisor keeps in step
//! with the guest's tables. The schemes differ only in how the hypervisor learns of guest changes
//! and where it reacts, so one [`Shadow`] scheme implements all of them, steered by
//! [`ShadowOptions`]:
//!
//! - **write protection** (`tsp`): a store to a shadowed guest table page exits and is emulated
//!   into every mirror of that page; with `unsync` (`tsp-unsync`) a leaf page instead goes out of
//!   sync at its first write and is re-synced at the guest's flushes and root switches;
//! - **flush interception** (`ssp`, `lsp`, `rvirt`): nothing is protected; a guest flush
//!   invalidates the shadow entries it covers (in hardware mode or in the hypervisor), and the
//!   next miss re-syncs them from the latest guest entry (a shadow fault).
//!
//! Every scheme handles true guest faults (a VM exit that injects the fault), emulates the dirty
//! bit (a shadow leaf is writable only once the guest entry is dirty) and tears shadow tables down
//! when the guest frees an address space.

pub mod options;
pub mod tables;

use std::collections::{BTreeMap, VecDeque};

pub use options::{Granularity, HandlerAt, Notice, ShadowOptions, Sharing, SyncAt, WideFlush};
use tables::{
    Edit, GuestPath, HvGuestMemory, HvMemError, ShadowLeaf, ShadowTables, TableStats, TreeId,
};

use super::nested::{Nested, NestedOptions};
use crate::addr::{Asid, Gfn, Gpa, Gva, Hpa, PageSize};
use crate::machine::{GuestRoot, Platform, Scheme, SimError, Stop};
use crate::mmu::flush::{AsidScope, TlbScope};
use crate::mmu::{FlushOp, TranslationFault};
use crate::paging::flat::NestedTable;
use crate::paging::walk::{walk, NoWalkCache, WalkError};
use crate::paging::{Access, AccessKind, AdPolicy, FaultKind, Perms, Regime, Stage};
use crate::stats::Charge;
use crate::stats::{ExitCause, TrapCause};

/// Counters of the shadow schemes, reported under `scheme_counters`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowStats {
    /// Shadow faults that filled a shadow leaf.
    pub fills: u64,
    /// Shadow leaves made writable after the guest entry became dirty.
    pub dirty_emulations: u64,
    /// Guest stores to protected table pages emulated into the shadow tables.
    pub emulated_writes: u64,
    /// Guest table pages unshadowed because writes flooded them (`write_flood`).
    pub unshadowed: u64,
    /// Guest table pages that went out of sync.
    pub unsyncs: u64,
    /// Out-of-sync pages re-synced and protected again.
    pub resyncs: u64,
    /// Shadow entries invalidated at guest flushes.
    pub invalidations: u64,
    /// Shadow entries re-synced eagerly at guest flushes.
    pub eager_syncs: u64,
    /// Shadow tables wiped whole.
    pub wipes: u64,
    /// Root switches served by the shadow-root buffer.
    pub buffer_hits: u64,
    /// Root switches that missed it.
    pub buffer_misses: u64,
    /// Shadow faults filled in hardware mode (ASP).
    pub hw_fills: u64,
    /// Shadow faults ASP's hardware-mode handler forwarded to the hypervisor (a new shadow-table
    /// page was needed, or the guest frame is outside guest memory).
    pub hw_forwarded: u64,
    /// True guest faults delivered from hardware mode (ASP).
    pub hw_guest_faults: u64,
}

/// What each vCPU's hardware holds of a shadow scheme: the tree it walks, its root buffer and
/// its previous roots, parked in [`Shadow::parked`] while another vCPU runs.
#[derive(Debug, Default)]
struct VcpuShadow {
    /// With `sharing = "vcpu"`: the vCPU's own shadow tables.
    tables: Option<ShadowTables>,
    current: Option<TreeId>,
    buffer: VecDeque<(Gpa, Asid)>,
    previous: VecDeque<TreeId>,
    switched: Option<Asid>,
}

/// Drops every vCPU's cached walk pointers into shadow tables (shared tables may be walked by
/// any vCPU).
fn drop_walk_pointers(p: &mut Platform) {
    for mmu in p.mmus_mut() {
        let vmid = mmu.vmid();
        mmu.pwc.flush(&TlbScope {
            vmid: Some(vmid),
            va: None,
            asid: AsidScope::All,
            globals: true,
        });
    }
}

/// A shadow-paging scheme. The shadow tables are the VM's, shared by its vCPUs (KVM, SSP);
/// with `granularity = vcpu` each vCPU has one of its own (RVirt).
#[derive(Debug)]
pub struct Shadow {
    name: &'static str,
    opts: ShadowOptions,
    tables: ShadowTables,
    /// The tree the hardware walks now.
    current: Option<TreeId>,
    /// Shadow-root buffer: (guest root, ASID) keys, most recent last.
    buffer: VecDeque<(Gpa, Asid)>,
    /// Out-of-sync guest table pages: frame → order in which they went out of sync.
    unsync: BTreeMap<u64, u64>,
    /// Emulated writes to each protected guest table page since a shadow fault last walked
    /// through it (`write_flood`).
    flood: std::collections::HashMap<u64, u64>,
    /// Trees most recently switched away from, newest last (`prev_roots`).
    previous: VecDeque<TreeId>,
    /// Logical clock for LRU.
    clock: u64,
    /// The ASID of a root switch just made, until the next flush (x86: its MOV CR3).
    switched: Option<Asid>,
    /// The regime the hardware walks shadow tables with: A/D already set in every shadow leaf.
    regime: Regime,
    /// The nested table ASP's hardware-mode handler walks (`leaf_fill = hardware` only).
    nested: Option<Nested>,
    /// The other vCPUs' `current`, `buffer`, `previous` and `switched`, by vCPU (`None` at
    /// the running one's index, or before any switch).
    parked: Vec<Option<VcpuShadow>>,
    /// Counters.
    pub stats: ShadowStats,
}

impl Shadow {
    /// A shadow scheme named `name` with `opts`, for the platform's guest format.
    pub fn new(
        p: &mut Platform,
        name: &'static str,
        opts: ShadowOptions,
    ) -> Result<Self, SimError> {
        opts.validate().map_err(|e| SimError::Config(e.to_string()))?;
        let format = p.arch.guest_format;
        p.set_host_page(opts.host_page);
        let nested = match opts.leaf_fill {
            HandlerAt::Hardware => Some(Nested::new(
                p,
                NestedOptions { host_page: opts.host_page, ..NestedOptions::default() },
            )?),
            HandlerAt::Hypervisor => None,
        };
        Ok(Shadow {
            name,
            opts,
            tables: ShadowTables::new(format, opts.write_protects()),
            current: None,
            buffer: VecDeque::new(),
            unsync: BTreeMap::new(),
            flood: std::collections::HashMap::new(),
            previous: VecDeque::new(),
            clock: 0,
            switched: None,
            regime: Regime { ad: AdPolicy::Ignore, ..p.arch.guest_regime },
            nested,
            parked: Vec::new(),
            stats: ShadowStats::default(),
        })
    }

    /// The options in force.
    pub fn options(&self) -> &ShadowOptions {
        &self.opts
    }

    /// Shadow pages in use.
    pub fn shadow_pages(&self) -> u64 {
        let parked = self.parked.iter().flatten().filter_map(|v| v.tables.as_ref());
        self.tables.pages() + parked.map(ShadowTables::pages).sum::<u64>()
    }

    /// Whether each vCPU keeps shadow tables of its own.
    fn per_vcpu(&self) -> bool {
        self.opts.granularity == Granularity::Vcpu || self.opts.sharing == Sharing::Vcpu
    }

    fn ad_by_hardware(p: &Platform) -> bool {
        p.arch.guest_regime.ad != AdPolicy::Ignore
    }

    /// Cached walk pointers may lead into shadow pages that changed or were freed: drop them.
    /// Guest pages no longer mirrored stop being out of sync.
    fn after_edit(&mut self, p: &mut Platform, edit: Edit) {
        if edit.structural {
            if !self.unsync.is_empty() {
                let tables = &self.tables;
                self.unsync.retain(|&g, _| tables.is_mirrored(Gfn::new(g)));
            }
            drop_walk_pointers(p);
        }
    }

    fn work(edit: Edit) -> u64 {
        u64::from(edit.reads + edit.writes)
    }

    // ----- guest walks --------------------------------------------------------------------------

    /// The hypervisor's software walk of the guest table of tree `id` for `gva`. With
    /// `emulate_ad`, it sets accessed/dirty bits as the hardware walker would (the access
    /// happened); without, it only reads (a re-sync ahead of use).
    fn guest_walk(
        &self,
        p: &mut Platform,
        id: TreeId,
        gva: Gva,
        access: Access,
        emulate_ad: bool,
    ) -> Result<GuestWalk, SimError> {
        let Some(tree) = self.tables.tree(id).copied() else {
            return Err(SimError::Internal { scheme: self.name, detail: "no shadow tree".into() });
        };
        let mut regime = p.arch.guest_regime;
        if !emulate_ad {
            regime.ad = AdPolicy::Ignore;
        }
        let mut mem = HvGuestMemory {
            host: &mut p.host,
            backing: &mut p.guest_mem,
            path: GuestPath::default(),
        };
        let result = walk(&tree.guest_root, gva, access, &regime, &mut mem, &mut NoWalkCache);
        let path = mem.path;
        Ok(match result {
            Ok(leaf) => GuestWalk::Leaf { leaf, path },
            Err(WalkError::Fault(f)) => GuestWalk::Fault { fault: f, path },
            Err(WalkError::Memory(HvMemError::Unbacked)) => GuestWalk::Unbacked { path },
            Err(WalkError::Memory(HvMemError::Host(e))) => return Err(e.into()),
        })
    }

    /// The shadow leaf for a guest translation found by a walk of `gva`.
    fn shadow_leaf(
        p: &mut Platform,
        gva: Gva,
        leaf: &crate::paging::Leaf<crate::addr::GuestPhys>,
        writable: bool,
    ) -> Result<Option<ShadowLeaf>, SimError> {
        // Splintering: no larger than the host page mapping the guest page.
        let size = leaf.size.min(p.host_page_at(leaf.output(gva).page()));
        let gpa = leaf.output(gva).align_down(size);
        let Some(hfn) = p.back(gpa.page())? else { return Ok(None) };
        let mut perms = leaf.perms;
        if !writable {
            perms.remove(Perms::W);
        }
        Ok(Some(ShadowLeaf { base: hfn.addr(), size, perms, global: leaf.global }))
    }

    // ----- the miss path ---------------------------------------------------------------------

    /// A shadow fault: one VM exit. The hypervisor walks the guest table (setting A/D as the
    /// hardware would), then either injects the guest's fault or writes the shadow leaf.
    fn shadow_fault(
        &mut self,
        p: &mut Platform,
        id: TreeId,
        gva: Gva,
        access: Access,
        shadow_kind: FaultKind,
    ) -> Result<(), Stop> {
        let format = p.arch.guest_format;
        let walked = self.guest_walk(p, id, gva, access, true)?;
        if self.opts.write_flood > 0 {
            // The hypervisor used these table pages: their writes are no flood (KVM clears
            // the count of every shadow page a fault walks through).
            let path = match &walked {
                GuestWalk::Fault { path, .. }
                | GuestWalk::Unbacked { path }
                | GuestWalk::Leaf { path, .. } => path,
            };
            for gfn in &path.tables[..(path.reads as usize).min(path.tables.len())] {
                self.flood.remove(&gfn.as_u64());
            }
        }
        match walked {
            GuestWalk::Fault { fault, path } => {
                p.exit_with_work(
                    ExitCause::GuestFaultInjection,
                    u64::from(path.reads + path.writes),
                );
                p.stats.guest_faults += 1;
                Err(Stop::GuestFault(TranslationFault::first_stage(gva, access, &format, fault)))
            }
            GuestWalk::Unbacked { path } => {
                p.exit_with_work(ExitCause::GuestFaultInjection, u64::from(path.reads));
                p.stats.guest_faults += 1;
                Err(Stop::GuestFault(access_fault(gva, access, &format)))
            }
            GuestWalk::Leaf { leaf, path } => {
                let writable = leaf.dirty || !Self::ad_by_hardware(p);
                let Some(shadow) = Self::shadow_leaf(p, gva, &leaf, writable)? else {
                    p.exit_with_work(ExitCause::GuestFaultInjection, u64::from(path.reads));
                    p.stats.guest_faults += 1;
                    return Err(Stop::GuestFault(access_fault(gva, access, &format)));
                };
                let guest_level = leaf.size.level();
                let edit = self.tables.install(&mut p.host, id, gva, &path, guest_level, shadow)?;
                self.after_edit(p, edit);
                let dirty_emulation = shadow_kind == FaultKind::Permission
                    && access.kind == AccessKind::Store
                    && leaf.perms.contains(Perms::W);
                let cause = if dirty_emulation {
                    self.stats.dirty_emulations += 1;
                    ExitCause::DirtyEmulation
                } else {
                    self.stats.fills += 1;
                    ExitCause::ShadowFault
                };
                p.exit_with_work(cause, u64::from(path.reads + path.writes) + Self::work(edit));
                Ok(())
            }
        }
    }

    /// The tree for the current guest root, created on demand (before the first root switch
    /// there is none).
    fn current_tree(&mut self, p: &mut Platform) -> Result<TreeId, Stop> {
        if let Some(id) = self.current.filter(|&id| self.tables.tree(id).is_some()) {
            return Ok(id);
        }
        let root = p.current_root()?;
        let id = self.tree_for(p, root)?;
        self.current = Some(id);
        Ok(id)
    }

    /// ASP: the hardware-mode handler walks guest × nested table in software and writes the
    /// shadow leaf if its shadow table exists, with no VM exit; a true guest fault is delivered
    /// from hardware mode. A nested fault, or a leaf needing a new shadow page, goes to the
    /// hypervisor.
    fn hw_leaf_fill(
        &mut self,
        p: &mut Platform,
        id: TreeId,
        gva: Gva,
        access: Access,
    ) -> Result<HwFill, Stop> {
        let (Some(nested), Some(tree)) = (self.nested.as_mut(), self.tables.tree(id).copied())
        else {
            return Ok(HwFill::Forward);
        };
        let walked = super::snp::soft_walk_2d(
            p,
            &tree.guest_root,
            NestedTable::Radix(nested.table()),
            gva,
            access,
        );
        // The handler's reads go through the cache model like a walk's; its software work per
        // entry is a refill handler's (`costs.refill_per_entry`).
        let reads = p.mmu.trace.total() as u64;
        let latency = p.costs.pt_latency();
        p.stats.cycles.walk.charge(p.mmu.account_walk(&latency));
        let handler = p.costs.refill_per_entry * reads;
        match walked {
            Ok(c) => {
                // The entries' guest frames, for the mirrors (simulator bookkeeping: the 2D walk
                // above is what the handler paid for).
                let GuestWalk::Leaf { path, .. } = self.guest_walk(p, id, gva, access, false)?
                else {
                    return Ok(HwFill::Forward);
                };
                let guest_level = c.guest.size.level();
                let writable = c.guest.dirty || !Self::ad_by_hardware(p);
                let shadow = Self::shadow_leaf(p, gva, &c.guest, writable)?;
                let fits = shadow.is_some_and(|s| {
                    self.tables.fits(&p.host, id, gva, &path, guest_level, s.size.level())
                });
                let Some(shadow) = shadow.filter(|_| fits) else {
                    // The attempt's cycles are paid; the fault is counted where it is handled.
                    p.stats.cycles.hw_trap.charge(p.costs.hw_trap + handler);
                    self.stats.hw_forwarded += 1;
                    return Ok(HwFill::Forward);
                };
                let edit = self.tables.install(&mut p.host, id, gva, &path, guest_level, shadow)?;
                self.after_edit(p, edit);
                self.stats.hw_fills += 1;
                p.hw_trap(TrapCause::LeafFill);
                p.stats.cycles.hw_trap.charge(
                    p.costs.hw_trap + handler + p.costs.refill_per_entry * Self::work(edit),
                );
                Ok(HwFill::Filled)
            }
            Err(f) if f.stage == Stage::Nested && f.kind == FaultKind::NotPresent => {
                p.stats.cycles.hw_trap.charge(p.costs.hw_trap + handler);
                let gpa = f.gpa.unwrap_or(Gpa::ZERO);
                Ok(if nested.nested_fault(p, gpa.page())? {
                    HwFill::Retry
                } else {
                    HwFill::Forward
                })
            }
            Err(f) if f.stage == Stage::Nested => Err(Stop::Error(SimError::Internal {
                scheme: self.name,
                detail: format!("unexpected nested fault {f:?}"),
            })),
            Err(f) => {
                self.stats.hw_guest_faults += 1;
                p.hw_trap(TrapCause::GuestFault);
                p.stats.cycles.hw_trap.charge(p.costs.hw_trap + handler);
                p.stats.guest_faults += 1;
                Err(Stop::GuestFault(f))
            }
        }
    }

    // ----- re-syncing -------------------------------------------------------------------------

    /// Re-derives the shadow leaf of `gva` in tree `id` from the latest guest entry, without
    /// touching the guest's A/D bits: written if the guest entry is valid and accessed, cleared
    /// otherwise. Returns the entries the hypervisor read and wrote.
    fn resync_va(&mut self, p: &mut Platform, id: TreeId, gva: Gva) -> Result<u64, SimError> {
        let ad = Self::ad_by_hardware(p);
        // The walk checks permissions at the leaf; a user load and then a supervisor load find
        // every readable page. Anything else is invalidated, which is always safe.
        let mut walked = self.guest_walk(p, id, gva, Access::USER_LOAD, false)?;
        if let GuestWalk::Fault { fault, .. } = &walked {
            if fault.kind == FaultKind::Permission {
                walked = self.guest_walk(p, id, gva, Access::KERNEL_LOAD, false)?;
            }
        }
        let (edit, reads) = match walked {
            GuestWalk::Leaf { leaf, path } => {
                let level = leaf.size.level();
                let raw = path.raw[level.index() as usize];
                let accessed = !ad || accessed_bit(p, raw, level);
                // A splintered page is invalidated, to be shadowed piece by piece at its faults.
                let unsplintered = leaf.size <= p.host_page_at(leaf.output(gva).page());
                let shadow = if accessed && unsplintered {
                    Self::shadow_leaf(p, gva, &leaf, leaf.dirty || !ad)?
                } else {
                    None
                };
                let edit = match shadow {
                    Some(s) => self.tables.install(&mut p.host, id, gva, &path, level, s)?,
                    None => self.tables.invalidate(&mut p.host, id, gva),
                };
                (edit, path.reads)
            }
            GuestWalk::Fault { path, .. } | GuestWalk::Unbacked { path } => {
                (self.tables.invalidate(&mut p.host, id, gva), path.reads)
            }
        };
        self.after_edit(p, edit);
        self.stats.eager_syncs += 1;
        Ok(u64::from(reads) + Self::work(edit))
    }

    /// Re-syncs every entry of out-of-sync guest page `gfn` into all its mirrors and protects it
    /// again (KVM's `kvm_sync_page`, Xen's `_sh_resync`). Returns the entries touched.
    fn resync_page(&mut self, p: &mut Platform, gfn: u64) -> u64 {
        self.unsync.remove(&gfn);
        self.stats.resyncs += 1;
        let ad = Self::ad_by_hardware(p);
        let mut work = 0;
        for hfn in self.tables.mirrors(Gfn::new(gfn)) {
            for index in 0..512 {
                let gpa = Gpa::new((gfn << 12) + index * 8);
                let raw = p
                    .guest_mem
                    .lookup(gpa.page())
                    .map_or(0, |h| p.host.read_u64(Hpa::new(h.addr().as_u64() + index * 8)));
                let edit =
                    self.tables.apply_guest_entry(&mut p.host, &p.guest_mem, hfn, index, raw, ad);
                self.after_edit(p, edit);
                work += 1 + u64::from(edit.writes);
            }
        }
        work
    }

    /// Re-syncs every out-of-sync page mirrored in tree `id` (all of them with `None`).
    fn resync_unsync(&mut self, p: &mut Platform, id: Option<TreeId>) -> u64 {
        let pages: Vec<u64> = self
            .unsync
            .keys()
            .copied()
            .filter(|&g| {
                id.is_none_or(|t| {
                    self.tables.mirrors(Gfn::new(g)).iter().any(|&h| {
                        self.tables.page_of(Hpa::new(h << 12)).is_some_and(|i| i.tree == t)
                    })
                })
            })
            .collect();
        pages.into_iter().map(|g| self.resync_page(p, g)).sum()
    }

    /// A single-address flush under `unsync`: re-reads that one guest entry into the mirrors in
    /// the current and `prev_roots` previous trees, if its leaf page is out of sync.
    fn resync_unsync_entry(&mut self, p: &mut Platform, gva: Gva) -> u64 {
        let Some(current) = self.current else { return 0 };
        let ad = Self::ad_by_hardware(p);
        let mut trees = vec![current];
        let prev = usize::try_from(self.opts.prev_roots).unwrap_or(usize::MAX);
        trees.extend(self.previous.iter().rev().take(prev).copied());
        let mut work = 0;
        for id in trees {
            // No shadow leaf: nothing can be stale.
            let Some((entry, level)) = self.tables.find_leaf(&p.host, id, gva) else { continue };
            let Some(info) = self.tables.page_of(entry).copied() else { continue };
            let tables::Mirror::Guest(g) = info.mirror else { continue };
            if !self.unsync.contains_key(&g.as_u64()) {
                continue;
            }
            let index = (entry.as_u64() & 0xfff) / 8;
            let raw = p
                .guest_mem
                .lookup(g)
                .map_or(0, |h| p.host.read_u64(Hpa::new(h.addr().as_u64() + index * 8)));
            let hfn = entry.page().as_u64();
            let edit =
                self.tables.apply_guest_entry(&mut p.host, &p.guest_mem, hfn, index, raw, ad);
            self.after_edit(p, edit);
            work += 1 + u64::from(edit.writes) + u64::from(level.index());
        }
        work
    }

    // ----- trees and roots ----------------------------------------------------------------------

    /// The tree shadowing `root`, created (evicting the least recently used beyond
    /// `cached_roots`) if there is none.
    fn tree_for(&mut self, p: &mut Platform, root: GuestRoot) -> Result<TreeId, SimError> {
        self.clock += 1;
        if self.opts.granularity == Granularity::Vcpu {
            // This vCPU's own table, retargeted at the new root.
            let existing = self.current.filter(|&id| self.tables.tree(id).is_some());
            if let Some(id) = existing {
                let edit = self.tables.retarget(&mut p.host, id, root.table, root.asid);
                if edit.writes > 0 {
                    self.stats.wipes += 1;
                }
                self.after_edit(p, Edit { structural: true, ..edit });
                self.tables.touch(id, self.clock);
                return Ok(id);
            }
        } else if let Some(id) = self.tables.find(root.table.root(), root.asid) {
            self.tables.touch(id, self.clock);
            return Ok(id);
        }
        let in_use = self.trees_in_use();
        // Per-vCPU tables: one each, never evicted for another vCPU's.
        let limit = match self.opts.granularity {
            Granularity::Process => self.opts.cached_roots,
            Granularity::Vcpu => self.opts.cached_roots.max(in_use.len() as u64 + 1),
        };
        while self.tables.len() as u64 >= limit {
            let Some(victim) = self.tables.lru(&in_use) else { break };
            self.forget_tree(p, victim);
            self.tables.stats.trees_evicted += 1;
        }
        let id = self.tables.create(&mut p.host, root.table, root.asid, self.clock)?;
        Ok(id)
    }

    fn forget_tree(&mut self, p: &mut Platform, id: TreeId) {
        let key = self.tables.tree(id).map(|t| (t.guest_root.root(), t.asid));
        let forget = |current: &mut Option<TreeId>,
                      buffer: &mut VecDeque<(Gpa, Asid)>,
                      previous: &mut VecDeque<TreeId>| {
            if let Some(key) = key {
                buffer.retain(|&k| k != key);
            }
            previous.retain(|&t| t != id);
            if *current == Some(id) {
                *current = None;
            }
        };
        forget(&mut self.current, &mut self.buffer, &mut self.previous);
        for v in self.parked.iter_mut().flatten() {
            forget(&mut v.current, &mut v.buffer, &mut v.previous);
        }
        let edit = self.tables.drop_tree(&mut p.host, id);
        self.after_edit(p, edit);
    }

    /// The trees some vCPU walks now: never evicted.
    fn trees_in_use(&self) -> Vec<TreeId> {
        let parked = self.parked.iter().flatten().filter_map(|v| v.current);
        self.current.into_iter().chain(parked).collect()
    }

    /// Trees a flush with ASID scope `asids` covers.
    fn trees_in(&self, asids: AsidScope) -> Vec<TreeId> {
        self.tables
            .tree_ids()
            .filter(|&id| match asids {
                AsidScope::All => true,
                AsidScope::One(a) => self.tables.tree(id).is_some_and(|t| t.asid == a),
            })
            .collect()
    }

    // ----- write protection -------------------------------------------------------------------

    fn is_protected(&self, gfn: Gfn) -> bool {
        self.tables.is_mirrored(gfn) && !self.unsync.contains_key(&gfn.as_u64())
    }

    /// Whether every mirror of `gfn` is a leaf-level page (only those may go out of sync).
    fn only_leaf_mirrors(&self, gfn: Gfn) -> bool {
        self.tables.mirrors(gfn).iter().all(|&h| {
            self.tables
                .page_of(Hpa::new(h << 12))
                .is_some_and(|i| i.level == crate::addr::Level::L0)
        })
    }

    /// Stops shadowing guest table page `gfn`: its shadow pages are dropped (the entries
    /// above them cleared), and a shadow root mirroring it takes its whole tree along (KVM
    /// zaps the root; a later switch to that guest root builds a new one), so the frame is no
    /// longer protected. Returns the handler's work.
    fn drop_mirrors(&mut self, p: &mut Platform, gfn: Gfn) -> u64 {
        let mut work = 1;
        for hfn in self.tables.mirrors(gfn) {
            let Some(info) = self.tables.page_of(Hpa::new(hfn << 12)).copied() else { continue };
            if info.parent.is_none() {
                let before = self.tables.stats.pages;
                self.forget_tree(p, info.tree);
                work += before.saturating_sub(self.tables.stats.pages);
                continue;
            }
            let edit = self.tables.drop_page(&mut p.host, hfn);
            self.after_edit(p, edit);
            work += Self::work(edit);
        }
        self.unsync.remove(&gfn.as_u64());
        self.flood.remove(&gfn.as_u64());
        work
    }

    fn go_out_of_sync(&mut self, p: &mut Platform, gfn: Gfn) -> u64 {
        let mut work = 0;
        let limit = self.opts.unsync_limit;
        while limit > 0 && self.unsync.len() as u64 >= limit {
            // Xen evicts an out-of-sync page when its table is full: the oldest.
            let Some((&oldest, _)) = self.unsync.iter().min_by_key(|(_, &order)| order) else {
                break;
            };
            work += self.resync_page(p, oldest);
        }
        self.clock += 1;
        self.unsync.insert(gfn.as_u64(), self.clock);
        self.stats.unsyncs += 1;
        work
    }
}

/// What ASP's hardware-mode handler did with a shadow fault.
enum HwFill {
    /// The shadow leaf is in place.
    Filled,
    /// A nested fault was fixed by the hypervisor; walk again.
    Retry,
    /// The hypervisor must handle it (a VM exit).
    Forward,
}

/// What the hypervisor's walk of a guest table found.
enum GuestWalk {
    Leaf { leaf: crate::paging::Leaf<crate::addr::GuestPhys>, path: GuestPath },
    Fault { fault: crate::paging::WalkFault, path: GuestPath },
    Unbacked { path: GuestPath },
}

fn accessed_bit(p: &Platform, raw: u64, level: crate::addr::Level) -> bool {
    matches!(
        p.arch.guest_format.decode(raw, level),
        Ok(crate::paging::Decoded::Leaf { attrs, .. }) if attrs.accessed
    )
}

/// The access fault a guest gets for a translation to memory it does not have.
fn access_fault(gva: Gva, access: Access, format: &crate::paging::Format) -> TranslationFault {
    let f = crate::paging::WalkFault {
        kind: FaultKind::AccessFault,
        level: crate::addr::Level::L0,
        perms: Perms::empty(),
    };
    TranslationFault::first_stage(gva, access, format, f)
}

impl Scheme for Shadow {
    fn name(&self) -> &'static str {
        self.name
    }

    fn tlb_miss(&mut self, p: &mut Platform, gva: Gva, access: Access) -> Result<Hpa, Stop> {
        let id = self.current_tree(p)?;
        // Each retry follows one shadow fault: a fill, then possibly a dirty-bit upgrade (and,
        // for ASP, the nested faults of a hardware-mode walk).
        for _ in 0..(8 + p.arch.guest_format.levels as usize) {
            let Some(tree) = self.tables.tree(id).copied() else { break };
            let walked = p.mmu.walk_host_table(&mut p.host, &tree.table, &self.regime, gva, access);
            p.account_walk();
            match walked {
                Ok(leaf) => {
                    let allow = p.arch.guest_format.allow_mask(leaf.perms, true, &self.regime);
                    let hpa = leaf.output(gva);
                    p.fill_tlb(gva, leaf.size, leaf.base, leaf.global, allow)?;
                    return Ok(hpa);
                }
                Err(f) => {
                    if self.opts.leaf_fill == HandlerAt::Hardware {
                        match self.hw_leaf_fill(p, id, gva, access)? {
                            HwFill::Filled | HwFill::Retry => continue,
                            HwFill::Forward => {}
                        }
                    }
                    self.shadow_fault(p, id, gva, access, f.kind)?
                }
            }
        }
        Err(Stop::Error(SimError::Internal {
            scheme: self.name,
            detail: format!("shadow faults did not converge for {gva} ({access:?})"),
        }))
    }

    fn guest_store(
        &mut self,
        p: &mut Platform,
        gpa: Gpa,
        _old: u64,
        new: u64,
    ) -> Result<(), SimError> {
        let gfn = gpa.page();
        if !self.opts.write_protects() || !self.is_protected(gfn) {
            return Ok(());
        }
        if self.opts.unsync && self.only_leaf_mirrors(gfn) {
            // KVM/Xen: unprotect the leaf page and let the write through; its mirrors are stale
            // until the guest's next flush of it.
            let work = self.go_out_of_sync(p, gfn);
            p.exit_with_work(ExitCause::WriteProtect, 1 + work);
            return Ok(());
        }
        if self.opts.write_flood > 0 {
            let writes = self.flood.entry(gfn.as_u64()).or_insert(0);
            *writes += 1;
            if *writes >= self.opts.write_flood {
                // Flooded: stop shadowing the page; this write and the following ones reach
                // the guest page directly.
                self.flood.remove(&gfn.as_u64());
                self.stats.unshadowed += 1;
                let work = self.drop_mirrors(p, gfn);
                p.exit_with_work(ExitCause::WriteProtect, work);
                return Ok(());
            }
        }
        let ad = Self::ad_by_hardware(p);
        let index = gpa.page_offset(PageSize::Size4K) / 8;
        let mut work = 1;
        for hfn in self.tables.mirrors(gfn) {
            let edit =
                self.tables.apply_guest_entry(&mut p.host, &p.guest_mem, hfn, index, new, ad);
            self.after_edit(p, edit);
            work += u64::from(edit.writes);
        }
        self.stats.emulated_writes += 1;
        p.exit_with_work(ExitCause::WriteProtect, work);
        Ok(())
    }

    fn guest_frame_written(&mut self, p: &mut Platform, gfn: Gfn) -> Result<(), SimError> {
        if !self.opts.write_protects() || !self.tables.is_mirrored(gfn) {
            return Ok(());
        }
        // The guest rewrote a whole shadowed page (reusing a table page as data): the first
        // store exits and the hypervisor stops shadowing the page.
        let work = self.drop_mirrors(p, gfn);
        p.exit_with_work(ExitCause::WriteProtect, work);
        Ok(())
    }

    fn guest_flush(&mut self, p: &mut Platform, op: FlushOp) -> Result<(), SimError> {
        p.mmu.flush(&op);
        // x86 switches roots with MOV CR3, whose flush is part of the same intercepted
        // instruction; any other MOV CR3 is a flush of its own.
        let part_of_switch =
            matches!(op, FlushOp::MovCr3 { pcid, .. } if self.switched == Some(pcid));
        self.switched = None;
        if matches!(op, FlushOp::HfenceGvma { .. }) {
            return Ok(());
        }
        let Some(scope) = op.effect(p.mmu.vmid(), p.mmu.asid()).tlb else { return Ok(()) };
        let (at, work) = self.handle_flush(p, scope)?;
        if part_of_switch {
            p.stats.cycles.vm_exit.charge(p.costs.hv_per_entry * work);
        } else {
            match at {
                HandlerAt::Hypervisor => p.exit_with_work(ExitCause::Flush, work),
                HandlerAt::Hardware => p.trap_with_work(TrapCause::Flush, work),
            }
        }
        Ok(())
    }

    fn guest_root_switch(&mut self, p: &mut Platform, root: GuestRoot) -> Result<(), SimError> {
        p.root = Some(root);
        p.mmu.set_asid(root.asid);
        let old = self.current;
        let key = (root.table.root(), root.asid);
        let buffered = self.opts.root_buffer > 0
            && self.buffer.contains(&key)
            && self.tables.find(key.0, key.1).is_some();
        let id = self.tree_for(p, root)?;
        if self.opts.granularity == Granularity::Vcpu {
            // RVirt flushes the hardware TLB along with its single shadow table.
            p.mmu.flush(&FlushOp::SfenceVma { va: None, asid: None });
        }
        let work = if self.opts.unsync { self.resync_unsync(p, Some(id)) } else { 0 };
        if buffered {
            self.stats.buffer_hits += 1;
            self.buffer.retain(|&k| k != key);
            self.buffer.push_back(key);
            p.trap_with_work(TrapCause::RootSwitch, work);
        } else {
            if self.opts.root_buffer > 0 {
                self.stats.buffer_misses += 1;
                self.buffer.retain(|&k| k != key);
                self.buffer.push_back(key);
                while self.buffer.len() as u64 > self.opts.root_buffer {
                    self.buffer.pop_front();
                }
                p.exit_with_work(ExitCause::BufferMiss, work);
            } else {
                p.exit_with_work(ExitCause::RootSwitch, work);
            }
        }
        if let Some(prev) = old.filter(|&o| o != id) {
            self.previous.retain(|&t| t != prev && t != id);
            self.previous.push_back(prev);
            while self.previous.len() > 16 {
                self.previous.pop_front();
            }
        }
        self.current = Some(id);
        self.switched = Some(root.asid);
        Ok(())
    }

    /// The remote fence is intercepted where the scheme handles flushes: in hardware mode
    /// (SSP and LSP intercept the SBI call in M-mode) or in the hypervisor; a scope the scheme
    /// syncs in the hypervisor (LSP's wide flushes) makes it a VM exit. Shared tables are
    /// maintained once, here, for every target.
    fn remote_fence_call(&mut self, p: &mut Platform, ops: &[FlushOp]) -> Result<(), SimError> {
        let mut at = self.opts.flush_handler;
        let mut work = 0;
        if !self.per_vcpu() {
            for op in ops {
                let Some(scope) = op.effect(p.mmu.vmid(), p.mmu.asid()).tlb else { continue };
                let (handled_at, w) = self.handle_flush(p, scope)?;
                work += w;
                if handled_at == HandlerAt::Hypervisor {
                    at = HandlerAt::Hypervisor;
                }
            }
        }
        match at {
            HandlerAt::Hypervisor => p.exit_with_work(ExitCause::RemoteFence, work),
            HandlerAt::Hardware => p.trap_with_work(TrapCause::RemoteFence, work),
        }
        Ok(())
    }

    /// Each target's TLB is fenced; another vCPU is reached by an M-mode interrupt (hardware
    /// mode) or kicked out by the hypervisor. A per-vCPU shadow table is maintained on its own
    /// vCPU.
    fn remote_fence_apply(
        &mut self,
        p: &mut Platform,
        ops: &[FlushOp],
        local: bool,
    ) -> Result<(), SimError> {
        p.fence(ops);
        let mut work = 0;
        if self.per_vcpu() {
            for op in ops {
                let Some(scope) = op.effect(p.mmu.vmid(), p.mmu.asid()).tlb else { continue };
                work += self.handle_flush(p, scope)?.1;
            }
        }
        if !local || work > 0 {
            match self.opts.flush_handler {
                HandlerAt::Hypervisor => p.exit_with_work(ExitCause::RemoteFence, work),
                HandlerAt::Hardware => p.trap_with_work(TrapCause::RemoteFence, work),
            }
        }
        Ok(())
    }

    /// A broadcast invalidation reaches this vCPU: its own shadow tables (per-vCPU sharing) are
    /// maintained by the hypervisor that intercepted the initiator's flush, within that exit.
    fn broadcast_received(&mut self, p: &mut Platform, ops: &[FlushOp]) -> Result<(), SimError> {
        if !self.per_vcpu() {
            return Ok(());
        }
        let mut work = 0;
        for op in ops {
            let Some(scope) = op.effect(p.mmu.vmid(), p.mmu.asid()).tlb else { continue };
            work += self.handle_flush(p, scope)?.1;
        }
        p.stats.cycles.vm_exit.charge(p.costs.hv_per_entry * work);
        Ok(())
    }

    fn vcpu_switched(&mut self, from: usize, to: usize) {
        if self.parked.len() <= from.max(to) {
            self.parked.resize_with(from.max(to) + 1, || None);
        }
        let own_tables = self.opts.sharing == Sharing::Vcpu;
        let running = VcpuShadow {
            tables: None,
            current: self.current.take(),
            buffer: std::mem::take(&mut self.buffer),
            previous: std::mem::take(&mut self.previous),
            switched: self.switched.take(),
        };
        let mut running = running;
        let mut next = self.parked[to].take().unwrap_or_default();
        if own_tables {
            let fresh = || ShadowTables::new(self.tables.format(), self.opts.write_protects());
            let theirs = next.tables.take().unwrap_or_else(fresh);
            running.tables = Some(std::mem::replace(&mut self.tables, theirs));
        }
        self.parked[from] = Some(running);
        self.current = next.current;
        self.buffer = next.buffer;
        self.previous = next.previous;
        self.switched = next.switched;
    }

    fn guest_address_space_freed(
        &mut self,
        p: &mut Platform,
        root: GuestRoot,
    ) -> Result<(), SimError> {
        let gone: Vec<TreeId> = self
            .tables
            .tree_ids()
            .filter(|&id| self.tables.tree(id).is_some_and(|t| t.guest_root == root.table))
            .collect();
        for id in gone {
            if self.opts.granularity == Granularity::Vcpu {
                let edit = self.tables.wipe(&mut p.host, id);
                self.after_edit(p, edit);
            } else {
                self.forget_tree(p, id);
            }
        }
        // Other vCPUs' own tables shadowing the space go too: a new space may get its root.
        for v in self.parked.iter_mut().flatten() {
            let Some(tables) = v.tables.as_mut() else { continue };
            let gone: Vec<TreeId> = tables
                .tree_ids()
                .filter(|&id| tables.tree(id).is_some_and(|t| t.guest_root == root.table))
                .collect();
            for id in gone {
                let key = tables.tree(id).map(|t| (t.guest_root.root(), t.asid));
                v.buffer.retain(|&k| Some(k) != key);
                v.previous.retain(|&t| t != id);
                if v.current == Some(id) {
                    v.current = None;
                }
                if tables.drop_tree(&mut p.host, id).structural {
                    drop_walk_pointers(p);
                }
            }
        }
        Ok(())
    }

    fn reset_counters(&mut self) {
        self.stats = Default::default();
        let parked = self.parked.iter_mut().flatten().filter_map(|v| v.tables.as_mut());
        for tables in std::iter::once(&mut self.tables).chain(parked) {
            let t = &mut tables.stats;
            *t = TableStats { pages: t.pages, peak_pages: t.pages, ..TableStats::default() };
        }
    }

    fn counters(&self, out: &mut BTreeMap<&'static str, u64>) {
        let mut t = self.tables.stats;
        for other in self.parked.iter().flatten().filter_map(|v| v.tables.as_ref()) {
            let o = &other.stats;
            t.pages += o.pages;
            t.peak_pages += o.peak_pages;
            t.trees_created += o.trees_created;
            t.trees_evicted += o.trees_evicted;
        }
        let s = &self.stats;
        for (k, v) in [
            ("shadow_pages", t.pages),
            ("shadow_pages_peak", t.peak_pages),
            ("shadow_tables_created", t.trees_created),
            ("shadow_tables_evicted", t.trees_evicted),
            ("shadow_fills", s.fills),
            ("dirty_emulations", s.dirty_emulations),
            ("emulated_writes", s.emulated_writes),
            ("unshadowed", s.unshadowed),
            ("unsyncs", s.unsyncs),
            ("resyncs", s.resyncs),
            ("invalidations", s.invalidations),
            ("eager_syncs", s.eager_syncs),
            ("wipes", s.wipes),
            ("buffer_hits", s.buffer_hits),
            ("buffer_misses", s.buffer_misses),
        ] {
            out.insert(k, v);
        }
        if let Some(nested) = &self.nested {
            out.insert("hw_fills", s.hw_fills);
            out.insert("hw_forwarded", s.hw_forwarded);
            out.insert("hw_guest_faults", s.hw_guest_faults);
            nested.counters(out);
        }
    }
}

impl Shadow {
    /// Applies an intercepted guest flush of `scope` to the shadow tables. Returns where the
    /// flush was handled and the entries its handler touched (an eager sync at the flush exits
    /// on its own).
    fn handle_flush(
        &mut self,
        p: &mut Platform,
        scope: TlbScope,
    ) -> Result<(HandlerAt, u64), SimError> {
        let at = self.opts.flush_handler;
        if self.opts.write_protects() {
            // The shadow tables are in sync except for out-of-sync leaf pages.
            let work = match (self.opts.unsync, scope.va) {
                (false, _) => 0,
                (true, Some(va)) => self.resync_unsync_entry(p, va),
                (true, None) => self.resync_unsync(p, None),
            };
            return Ok((at, work));
        }
        let trees = self.trees_in(scope.asid);
        let mut work = 0;
        match (scope.va, self.opts.flush_sync, self.opts.wide_flush) {
            (Some(va), SyncAt::Lazy, _) => {
                for id in trees {
                    let edit = self.tables.invalidate(&mut p.host, id, va);
                    if edit.writes > 0 {
                        self.stats.invalidations += 1;
                    }
                    self.after_edit(p, edit);
                    work += Self::work(edit);
                }
                Ok((at, work))
            }
            (Some(va), SyncAt::Eager, _) => {
                let covered: Vec<TreeId> = trees
                    .into_iter()
                    .filter(|&id| self.tables.find_leaf(&p.host, id, va).is_some())
                    .collect();
                if !covered.is_empty() {
                    let mut sync = 0;
                    for id in covered {
                        sync += self.resync_va(p, id, va)?;
                    }
                    p.exit_with_work(ExitCause::Flush, sync);
                }
                Ok((at, 0))
            }
            (None, _, WideFlush::Invalidate | WideFlush::Wipe) => {
                for id in trees {
                    let edit = self.tables.wipe(&mut p.host, id);
                    self.stats.wipes += 1;
                    self.after_edit(p, edit);
                    work += u64::from(edit.writes);
                }
                let at = match self.opts.wide_flush {
                    WideFlush::Invalidate => at,
                    _ => HandlerAt::Hypervisor,
                };
                Ok((at, work))
            }
            (None, _, WideFlush::EagerSync) => {
                for id in trees {
                    let leaves = self.tables.leaves(&p.host, id);
                    work += leaves.len() as u64;
                    for (va, _, _) in leaves {
                        if scope.globals || !self.leaf_is_global(p, id, va) {
                            work += self.resync_va(p, id, va)?;
                        }
                    }
                }
                Ok((HandlerAt::Hypervisor, work))
            }
        }
    }

    fn leaf_is_global(&self, p: &Platform, id: TreeId, va: Gva) -> bool {
        self.tables.find_leaf(&p.host, id, va).is_some_and(|(entry, level)| {
            matches!(
                p.arch.guest_format.decode(p.host.read_u64(entry), level),
                Ok(crate::paging::Decoded::Leaf { attrs, .. }) if attrs.global
            )
        })
    }
}
