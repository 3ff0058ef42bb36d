//! Page-walk caches: per level, per dimension, caching upper-level pointers so that a walk can
//! start below the root (Intel's PML4E/PDPTE/PDE caches; AMD's PWC). Leaves are never cached here
//! (that is the TLB's job).

use super::flush::TlbScope;
use super::setassoc::{GeometryError, SetAssoc};
use super::tlb::Geometry;
use crate::addr::{Addr, Asid, Level, Space, Vmid};
use crate::paging::format::Format;
use crate::paging::walk::{CachedPointer, WalkCache};
use crate::paging::Perms;

/// One cached pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PwcEntry {
    /// Input bits selecting this entry and the ones above it.
    pub prefix: u64,
    /// VMID tag.
    pub vmid: Vmid,
    /// ASID/PCID tag (ignored when `global`).
    pub asid: Asid,
    /// Derived from a RISC-V global pointer.
    pub global: bool,
    /// Address of the table the entry points to (raw: guest- or host-physical by dimension).
    pub table: u64,
    /// Permissions combined down to this entry.
    pub perms: Perms,
}

/// Geometry of the caches for entries at levels 1 to 4 (index 0 is level 1: PDE-cache-like).
pub type PwcConfig = [Geometry; 4];

/// Hit counters of one page-walk cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PwcStats {
    /// Walks that consulted the cache.
    pub lookups: u64,
    /// Walks that found a cached pointer.
    pub hits: u64,
}

/// The page-walk caches of one dimension.
#[derive(Debug, Clone)]
pub struct PageWalkCache {
    levels: [SetAssoc<PwcEntry>; 4],
    /// Counters.
    pub stats: PwcStats,
}

impl PageWalkCache {
    /// Caches with the given geometry.
    pub fn new(name: &str, cfg: &PwcConfig) -> Result<Self, GeometryError> {
        let mk =
            |i: usize| SetAssoc::new(&format!("{name}.l{}", i + 1), cfg[i].entries, cfg[i].ways);
        Ok(PageWalkCache { levels: [mk(0)?, mk(1)?, mk(2)?, mk(3)?], stats: PwcStats::default() })
    }

    /// A port tagging lookups with (`vmid`, `asid`), for the walker.
    pub fn port(&mut self, vmid: Vmid, asid: Asid) -> PwcPort<'_> {
        PwcPort { pwc: self, vmid, asid }
    }

    /// Removes the entries of the contexts `scope` selects (addresses are not kept per entry).
    pub fn flush(&mut self, scope: &TlbScope) -> usize {
        self.levels.iter_mut().map(|t| t.retain(|e| !scope.selects(e.vmid, e.asid, e.global))).sum()
    }

    /// Removes every entry of `vmid` (or of every VMID).
    pub fn flush_vmid(&mut self, vmid: Option<Vmid>) -> usize {
        self.levels.iter_mut().map(|t| t.retain(|e| vmid.is_some_and(|v| v != e.vmid))).sum()
    }

    /// Valid entries over all levels.
    pub fn len(&self) -> usize {
        self.levels.iter().map(SetAssoc::len).sum()
    }

    /// Whether every level is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A page-walk cache seen through one context's tags.
#[derive(Debug)]
pub struct PwcPort<'a> {
    pwc: &'a mut PageWalkCache,
    vmid: Vmid,
    asid: Asid,
}

impl<In: Space, Out: Space> WalkCache<In, Out> for PwcPort<'_> {
    fn lookup(&mut self, format: &Format, input: Addr<In>) -> Option<CachedPointer<Out>> {
        let (vmid, asid) = (self.vmid, self.asid);
        if self.pwc.levels.iter().all(SetAssoc::is_empty) {
            return None;
        }
        self.pwc.stats.lookups += 1;
        // The deepest pointer saves the most reads: try level 1 first. Table `i` holds entries
        // of level `i + 1`, which point at tables of level `i`; an empty table cannot hit.
        let levels = format.root_level().index() as usize;
        let below = Level::ALL.into_iter().zip(Level::ALL.into_iter().skip(1));
        for (table, (level, entry_level)) in self.pwc.levels.iter_mut().zip(below).take(levels) {
            if table.is_empty() {
                continue;
            }
            let prefix = format.prefix(input.as_u64(), entry_level);
            let hit = table.lookup(prefix, |e| {
                e.prefix == prefix && e.vmid == vmid && (e.global || e.asid == asid)
            });
            if let Some(e) = hit {
                self.pwc.stats.hits += 1;
                return Some(CachedPointer {
                    level,
                    table: Addr::new(e.table),
                    perms: e.perms,
                    global: e.global,
                });
            }
        }
        None
    }

    fn fill(
        &mut self,
        format: &Format,
        input: Addr<In>,
        entry_level: Level,
        ptr: CachedPointer<Out>,
    ) {
        let Some(table) = self.pwc.levels.get_mut((entry_level.index() as usize).wrapping_sub(1))
        else {
            return;
        };
        let prefix = format.prefix(input.as_u64(), entry_level);
        let e = PwcEntry {
            prefix,
            vmid: self.vmid,
            asid: self.asid,
            global: ptr.global,
            table: ptr.table.as_u64(),
            perms: ptr.perms,
        };
        table.insert(prefix, e, |o| o.prefix == prefix && o.vmid == e.vmid && o.asid == e.asid);
    }
}
