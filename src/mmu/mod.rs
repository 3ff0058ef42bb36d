//! The per-vCPU hardware: combined TLB, page-walk caches for each dimension, the nested TLB and
//! the page-table-read cache, each a set-associative table that answers as a
//! [`setassoc::SetAssoc`] with LRU replacement would, in a layout of its own for the TLB-miss
//! path (tested against `SetAssoc`). The [`Mmu`] runs the hardware walks (one- and
//! two-dimensional) with these structures and counts what they cost.

pub mod flush;
pub mod handler;
pub mod nested;
pub mod ntlb;
pub mod ptcache;
pub mod pwc;
pub mod setassoc;
pub mod tlb;
mod ways;

use serde::Serialize;

pub use flush::{FlushOp, InvpcidType};
pub use handler::{HandlerFootprint, Handlers};
pub use ptcache::{MemLevel, PtCacheConfig};
pub use tlb::{Geometry, TlbConfig, TlbEntry};

use self::nested::{NestedFault, NestedPath, NestedTlb, TwoDimMemory};
use self::ptcache::PtCache;
use self::pwc::{PageWalkCache, PwcConfig};
use self::setassoc::GeometryError;
use self::tlb::Tlb;
use crate::addr::{
    Asid, Gpa, GuestPhys, GuestVirt, Gva, Hfn, HostPhys, Hpa, Level, PageSize, Space, Vmid,
};
use crate::mem::{GuestBacking, GuestTableMemory, HostMemory, HostTableMemory, OutsideGuestMemory};
use crate::paging::walk::{walk, Leaf, PageTable, WalkError, WalkFault, WalkRef, WalkTrace};
use crate::paging::{
    Access, AllowMask, ArchCause, Family, FaultKind, Format, NestedTable, Regime, Stage,
};

/// Geometry of every structure of the MMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmuConfig {
    /// Combined TLB.
    pub tlb: TlbConfig,
    /// First-dimension page-walk caches, for entries at levels 1..4.
    pub pwc: PwcConfig,
    /// Nested-dimension page-walk caches.
    pub nested_pwc: PwcConfig,
    /// Nested TLB.
    pub ntlb: Geometry,
    /// Page-table-read cache.
    pub ptcache: PtCacheConfig,
}

impl Default for MmuConfig {
    /// Defaults: a Skylake-like TLB (see [`TlbConfig`]); page-walk caches of 32/4/2/2 entries for
    /// levels 1–4 (Intel's PDE/PDPTE/PML4E caches, sizes an assumption in line with Bhargava et
    /// al.'s PWC study); a 32-entry nested TLB (assumption).
    fn default() -> Self {
        let pwc = [
            Geometry { entries: 32, ways: 4 },
            Geometry { entries: 4, ways: 4 },
            Geometry { entries: 2, ways: 2 },
            Geometry { entries: 2, ways: 2 },
        ];
        MmuConfig {
            tlb: TlbConfig::default(),
            pwc,
            nested_pwc: pwc,
            ntlb: Geometry { entries: 32, ways: 4 },
            ptcache: PtCacheConfig::default(),
        }
    }
}

impl MmuConfig {
    /// The same TLB with every page-walk cache and the nested TLB turned off (cold-walk analysis).
    pub fn without_walk_caches(mut self) -> Self {
        self.pwc = [Geometry::OFF; 4];
        self.nested_pwc = [Geometry::OFF; 4];
        self.ntlb = Geometry::OFF;
        self
    }
}

/// What the MMU counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MmuStats {
    /// Translations answered by an L1 TLB.
    pub l1_hits: u64,
    /// Translations answered by the L2 TLB.
    pub l2_hits: u64,
    /// Translations that missed both levels.
    pub misses: u64,
    /// Walks accounted (hardware or software).
    pub walks: u64,
    /// Entry reads in the first dimension.
    pub guest_refs: u64,
    /// Entry reads in the nested dimension.
    pub nested_refs: u64,
    /// A/D updates written back.
    pub ad_writes: u64,
    /// References served by each level of the page-table-read cache (l1, l2, llc, memory).
    pub refs_by_level: [u64; 4],
    /// Histogram of reads per walk.
    pub refs_histogram: RefHistogram,
    /// First-dimension page-walk-cache counters.
    pub pwc: pwc::PwcStats,
    /// Nested page-walk-cache counters.
    pub nested_pwc: pwc::PwcStats,
    /// Nested TLB counters.
    pub ntlb: nested::NtlbStats,
    /// TLB fills by page size: 4 KiB, 2 MiB, 1 GiB and larger.
    pub fills_by_size: [u64; 3],
    /// The sum over fills of the TLB's reach just after each (bytes; u128: a long run of
    /// gigabyte entries overflows 64 bits).
    pub reach_sum: u128,
}

impl MmuStats {
    /// The translations asked of the TLB: each ends in exactly one L1 hit, L2 hit or miss.
    pub fn lookups(&self) -> u64 {
        self.l1_hits + self.l2_hits + self.misses
    }

    /// Adds another vCPU's counters to these (a VM's MMUs counted together). The page-walk
    /// caches' and nested TLB's counters add up too, so their hit rates are the VM's.
    pub fn add(&mut self, o: &MmuStats) {
        self.l1_hits += o.l1_hits;
        self.l2_hits += o.l2_hits;
        self.misses += o.misses;
        self.walks += o.walks;
        self.guest_refs += o.guest_refs;
        self.nested_refs += o.nested_refs;
        self.ad_writes += o.ad_writes;
        for (a, b) in self.refs_by_level.iter_mut().zip(o.refs_by_level) {
            *a += b;
        }
        for (a, b) in self.refs_histogram.0.iter_mut().zip(o.refs_histogram.0) {
            *a += b;
        }
        for (a, b) in [(&mut self.pwc, o.pwc), (&mut self.nested_pwc, o.nested_pwc)] {
            a.lookups += b.lookups;
            a.hits += b.hits;
        }
        self.ntlb.lookups += o.ntlb.lookups;
        self.ntlb.hits += o.ntlb.hits;
        for (a, b) in self.fills_by_size.iter_mut().zip(o.fills_by_size) {
            *a += b;
        }
        self.reach_sum += o.reach_sum;
    }

    /// The TLB's reach averaged over its fills, in bytes, or `now` (the reach now) without
    /// any fill.
    pub fn mean_reach(&self, now: u64) -> u64 {
        let fills: u64 = self.fills_by_size.iter().sum();
        if fills == 0 {
            now
        } else {
            u64::try_from(self.reach_sum / u128::from(fills)).unwrap_or(u64::MAX)
        }
    }
}

/// Walks by number of entry reads: bucket `i` counts walks that read `i` entries; the last bucket
/// collects the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefHistogram(pub [u64; 48]);

impl Default for RefHistogram {
    fn default() -> Self {
        RefHistogram([0; 48])
    }
}

impl Serialize for RefHistogram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Trailing empty buckets are noise in reports.
        let used = self.0.iter().rposition(|&n| n != 0).map_or(0, |i| i + 1);
        self.0[..used].serialize(s)
    }
}

/// A fault found by a hardware walk, in the form the scheme and the guest need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TranslationFault {
    /// The address being translated.
    pub gva: Gva,
    /// The access.
    pub access: Access,
    /// Which table faulted.
    pub stage: Stage,
    /// Why.
    pub kind: FaultKind,
    /// The level of the faulting entry.
    pub level: Level,
    /// For nested faults, the GPA whose translation failed.
    pub gpa: Option<Gpa>,
    /// For nested faults, whether that GPA was the final one (not a guest table entry).
    pub final_translation: bool,
    /// The architectural encoding.
    pub cause: ArchCause,
}

impl TranslationFault {
    /// A fault in a first-stage table of `format`.
    pub fn first_stage(gva: Gva, access: Access, format: &Format, f: WalkFault) -> Self {
        TranslationFault {
            gva,
            access,
            stage: Stage::First,
            kind: f.kind,
            level: f.level,
            gpa: None,
            final_translation: true,
            cause: format.arch_cause(f.site(access, true)),
        }
    }

    /// What the guest sees when a nested fault names a GPA outside its memory: the hypervisor
    /// reflects it as a first-stage access fault, encoded in the guest's `format`.
    pub fn reflected(self, format: &Format) -> Self {
        let site = crate::paging::entry::FaultSite {
            kind: FaultKind::AccessFault,
            access: self.access,
            final_translation: self.final_translation,
            perms: crate::paging::Perms::empty(),
        };
        TranslationFault {
            kind: FaultKind::AccessFault,
            stage: Stage::First,
            cause: format.arch_cause(site),
            ..self
        }
    }

    /// A fault in the nested dimension of a 2D walk (hardware or software).
    pub fn nested(gva: Gva, access: Access, format: &Format, f: NestedFault) -> Self {
        // RISC-V reports guest-page faults with the original access type; EPT qualifies the
        // access actually made (a data read of a guest paging entry).
        let reported = if format.family == Family::Ept { f.checked } else { access };
        TranslationFault {
            gva,
            access,
            stage: Stage::Nested,
            kind: f.fault.kind,
            level: f.fault.level,
            gpa: Some(f.gpa),
            final_translation: f.final_translation,
            cause: format.arch_cause(f.fault.site(reported, f.final_translation)),
        }
    }
}

/// A complete GVA→HPA translation from a 2D walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Combined {
    /// The guest leaf (GVA→GPA).
    pub guest: Leaf<GuestPhys>,
    /// The nested leaf for the final GPA.
    pub nested: Leaf<HostPhys>,
    /// The GPA the guest leaf gives.
    pub gpa: Gpa,
    /// The HPA.
    pub hpa: Hpa,
    /// TLB entry size: the smaller of the two pages.
    pub size: PageSize,
}

/// The vCPU's translation hardware.
#[derive(Debug, Clone)]
pub struct Mmu {
    /// Combined TLB.
    pub tlb: Tlb,
    /// First-dimension page-walk caches.
    pub pwc: PageWalkCache,
    /// Nested page-walk caches.
    pub nested_pwc: PageWalkCache,
    /// Nested TLB.
    pub ntlb: NestedTlb,
    /// Page-table-read cache.
    pub ptcache: PtCache,
    /// The references of the walk in progress (reused, never reallocated).
    pub trace: WalkTrace,
    /// Current VMID (`Vmid::HOST` natively), set through [`Mmu::set_context`] so that the
    /// TLB's hit memo knows.
    vmid: Vmid,
    /// Current ASID/PCID, likewise.
    asid: Asid,
    /// Counters, but for the L1 hits the TLB's hit memo answered ([`Mmu::stats`] adds those).
    stats: MmuStats,
    /// [`Tlb::memo_hits`] when counting last started.
    memo_hits_before: u64,
    cfg: MmuConfig,
}

impl Mmu {
    /// The geometry it was built with.
    pub fn config(&self) -> &MmuConfig {
        &self.cfg
    }

    /// Empties every structure (keeping the context and the counters), as after a cold start.
    pub fn reset(&mut self) {
        if let Ok(fresh) = Mmu::new(&self.cfg) {
            let (vmid, asid, stats) = (self.vmid, self.asid, self.stats());
            let memo = self.tlb.memo_on();
            *self = Mmu { stats, ..fresh };
            self.set_context(vmid, asid);
            self.tlb.set_memo(memo);
        }
    }

    /// An MMU with the given geometry, every structure empty.
    pub fn new(cfg: &MmuConfig) -> Result<Self, GeometryError> {
        Ok(Mmu {
            tlb: Tlb::new(&cfg.tlb)?,
            pwc: PageWalkCache::new("pwc", &cfg.pwc)?,
            nested_pwc: PageWalkCache::new("nested_pwc", &cfg.nested_pwc)?,
            ntlb: NestedTlb::new(cfg.ntlb)?,
            ptcache: PtCache::new(&cfg.ptcache)?,
            trace: WalkTrace::default(),
            vmid: Vmid::HOST,
            asid: Asid(0),
            stats: MmuStats::default(),
            memo_hits_before: 0,
            cfg: *cfg,
        })
    }

    /// The current VMID.
    #[inline]
    pub fn vmid(&self) -> Vmid {
        self.vmid
    }

    /// The current ASID/PCID.
    #[inline]
    pub fn asid(&self) -> Asid {
        self.asid
    }

    /// Makes (`vmid`, `asid`) the current context: the tags of fills and of lookups.
    #[inline]
    pub fn set_context(&mut self, vmid: Vmid, asid: Asid) {
        (self.vmid, self.asid) = (vmid, asid);
        self.tlb.set_context(vmid, asid);
    }

    /// Changes the current VMID only.
    #[inline]
    pub fn set_vmid(&mut self, vmid: Vmid) {
        self.set_context(vmid, self.asid);
    }

    /// Changes the current ASID only (a guest's root switch).
    #[inline]
    pub fn set_asid(&mut self, asid: Asid) {
        self.set_context(self.vmid, asid);
    }

    /// What the MMU counted since counting last started.
    pub fn stats(&self) -> MmuStats {
        let mut stats = self.stats;
        stats.l1_hits += self.tlb.memo_hits() - self.memo_hits_before;
        stats
    }

    /// Starts counting again from zero (the structures keep their contents).
    pub fn reset_counts(&mut self) {
        self.stats = MmuStats::default();
        self.memo_hits_before = self.tlb.memo_hits();
    }

    /// The host frame of an L1 hit the TLB's hit memo answers, or `None` (then
    /// [`Mmu::search_l1`] searches). Counted as an L1 hit, by the TLB ([`Mmu::stats`]).
    #[inline(always)]
    pub fn memo_hit(&mut self, gva: Gva, access: Access) -> Option<Hfn> {
        self.tlb.memo_hit(gva, access)
    }

    /// The L1 lookup past the hit memo: the tables' sets searched.
    #[inline]
    pub fn search_l1(&mut self, gva: Gva, access: Access) -> Option<Hpa> {
        let hit = self.tlb.search_l1(gva, access, self.vmid, self.asid);
        self.count_l1(hit)
    }

    /// An L1 lookup whole: the hit memo, else the search.
    #[inline]
    pub fn lookup_l1(&mut self, gva: Gva, access: Access) -> Option<Hpa> {
        if let Some(frame) = self.memo_hit(gva, access) {
            return Some(Hpa::new(frame.addr().as_u64() | gva.page_offset(PageSize::Size4K)));
        }
        self.search_l1(gva, access)
    }

    /// Counts an L1 hit.
    #[inline(always)]
    fn count_l1(&mut self, hit: Option<Hpa>) -> Option<Hpa> {
        if hit.is_some() {
            self.stats.l1_hits += 1;
        }
        hit
    }

    /// The L2 lookup after an L1 miss; counts a miss when it fails too.
    #[cold]
    pub fn lookup_l2(&mut self, gva: Gva, access: Access) -> Option<Hpa> {
        let hit = self.tlb.lookup_l2(gva, access, self.vmid, self.asid);
        match hit {
            Some(_) => self.stats.l2_hits += 1,
            None => self.stats.misses += 1,
        }
        hit
    }

    /// Inserts a translation of `gva` tagged with the current context.
    pub fn fill(&mut self, gva: Gva, size: PageSize, base: Hpa, global: bool, allow: AllowMask) {
        let base = Hpa::new(base.as_u64() & !size.offset_mask());
        self.stats.fills_by_size[(size.level().index() as usize).min(2)] += 1;
        self.tlb.insert(TlbEntry::new(gva, size, base, (self.vmid, self.asid, global), allow));
        self.stats.reach_sum += u128::from(self.tlb.reach_bytes());
    }

    /// Applies a TLB-maintenance operation with its exact architectural scope.
    pub fn flush(&mut self, op: &FlushOp) {
        let effect = op.effect(self.vmid, self.asid);
        if let Some(scope) = effect.tlb {
            self.tlb.flush(&scope);
        }
        if let Some(scope) = effect.walk_cache {
            self.pwc.flush(&scope);
        }
        if let Some(scope) = effect.nested {
            self.ntlb.flush(&scope);
            self.nested_pwc.flush_vmid(scope.vmid);
        }
    }

    /// The native walk: a guest table read straight from guest-physical memory (which is the
    /// machine's memory), with the first-dimension page-walk caches. Clears the trace first.
    pub fn walk_native(
        &mut self,
        host: &mut HostMemory,
        backing: &mut GuestBacking,
        table: &PageTable<GuestVirt, GuestPhys>,
        regime: &Regime,
        gva: Gva,
        access: Access,
    ) -> Result<Leaf<GuestPhys>, WalkError<OutsideGuestMemory>> {
        self.trace.clear();
        let mut mem = GuestTableMemory { host, backing, trace: &mut self.trace };
        let mut port = self.pwc.port(self.vmid, self.asid);
        walk(table, gva, access, regime, &mut mem, &mut port)
    }

    /// A one-dimensional walk of a table in host memory (a shadow table, or a host process's
    /// table), with the first-dimension page-walk caches. Clears the trace first.
    pub fn walk_host_table<In: Space>(
        &mut self,
        host: &mut HostMemory,
        table: &PageTable<In, HostPhys>,
        regime: &Regime,
        input: crate::addr::Addr<In>,
        access: Access,
    ) -> Result<Leaf<HostPhys>, WalkFault> {
        self.trace.clear();
        let mut mem =
            HostTableMemory { host, trace: &mut self.trace, dim: crate::paging::Dim::Guest };
        let mut port = self.pwc.port(self.vmid, self.asid);
        walk(table, input, access, regime, &mut mem, &mut port).map_err(|e| match e {
            WalkError::Fault(f) => f,
            WalkError::Memory(never) => match never {},
        })
    }

    /// The hardware two-dimensional walk: the guest table with every entry's GPA translated by
    /// the nested dimension (nested TLB, nested page-walk caches, nested table), then the final
    /// GPA. The trace is cleared first and holds every reference afterwards.
    #[allow(clippy::too_many_arguments)]
    pub fn walk_2d(
        &mut self,
        host: &mut HostMemory,
        guest: &PageTable<GuestVirt, GuestPhys>,
        guest_regime: &Regime,
        nested: &PageTable<GuestPhys, HostPhys>,
        nested_regime: &Regime,
        gva: Gva,
        access: Access,
    ) -> Result<Combined, TranslationFault> {
        let nested = NestedTable::Radix(nested);
        self.walk_2d_over(host, guest, guest_regime, nested, nested_regime, gva, access)
    }

    /// [`Mmu::walk_2d`] over either kind of nested table: a radix one, or a flat one (one read
    /// per guest-physical address the nested TLB misses: 2n + 1 reads with every cache off).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn walk_2d_over(
        &mut self,
        host: &mut HostMemory,
        guest: &PageTable<GuestVirt, GuestPhys>,
        guest_regime: &Regime,
        nested: NestedTable<'_>,
        nested_regime: &Regime,
        gva: Gva,
        access: Access,
    ) -> Result<Combined, TranslationFault> {
        self.trace.clear();
        let (vmid, asid) = (self.vmid, self.asid);
        let mut mem = TwoDimMemory {
            nested: NestedPath {
                host,
                table: nested,
                regime: *nested_regime,
                vmid,
                ntlb: &mut self.ntlb,
                npwc: &mut self.nested_pwc,
                trace: &mut self.trace,
            },
        };
        let mut port = self.pwc.port(vmid, asid);
        let guest_leaf = match walk(guest, gva, access, guest_regime, &mut mem, &mut port) {
            Ok(leaf) => leaf,
            Err(WalkError::Fault(f)) => {
                return Err(TranslationFault::first_stage(gva, access, guest.format(), f))
            }
            Err(WalkError::Memory(f)) => {
                return Err(TranslationFault::nested(gva, access, nested.format(), f))
            }
        };
        let gpa = guest_leaf.output(gva);
        let nested_leaf = mem
            .nested
            .translate(gpa, access, true)
            .map_err(|f| TranslationFault::nested(gva, access, nested.format(), f))?;
        let hpa = nested_leaf.output(gpa);
        let size = guest_leaf.size.min(nested_leaf.size);
        Ok(Combined { guest: guest_leaf, nested: nested_leaf, gpa, hpa, size })
    }

    /// Charges the references in the trace to the page-table-read cache and the counters, and
    /// returns the cycles they cost with `latency` per cache level.
    pub fn account_walk(&mut self, latency: &[u64; 4]) -> u64 {
        let mut cycles = 0;
        let mut reads = 0usize;
        for r in self.trace.refs() {
            cycles += charge(&mut self.ptcache, &mut self.stats, r, latency);
            reads += usize::from(!r.write);
        }
        self.stats.walks += 1;
        let bucket = reads.min(self.stats.refs_histogram.0.len() - 1);
        self.stats.refs_histogram.0[bucket] += 1;
        self.stats.pwc = self.pwc.stats;
        self.stats.nested_pwc = self.nested_pwc.stats;
        self.stats.ntlb = self.ntlb.stats;
        cycles
    }

    /// Charges references made outside any walk (a probe of an in-memory translation table) as a
    /// walk's are charged — through the page-table-read cache, into the reference counters —
    /// without counting a walk, and returns the cycles they cost with `latency` per cache level.
    pub fn account_refs(&mut self, refs: &[WalkRef], latency: &[u64; 4]) -> u64 {
        refs.iter().map(|r| charge(&mut self.ptcache, &mut self.stats, r, latency)).sum()
    }
}

/// Charges one reference to the page-table-read cache and the counters; returns its cycles.
#[inline(always)]
fn charge(ptcache: &mut PtCache, stats: &mut MmuStats, r: &WalkRef, latency: &[u64; 4]) -> u64 {
    let level = ptcache.access(r.hpa);
    stats.refs_by_level[level.index()] += 1;
    if r.write {
        stats.ad_writes += 1;
    } else {
        match r.dim {
            crate::paging::Dim::Guest => stats.guest_refs += 1,
            crate::paging::Dim::Nested => stats.nested_refs += 1,
        }
    }
    latency[level.index()]
}
