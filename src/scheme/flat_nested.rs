//! `flat-nested`: nested paging over a flat nested table (Ahn, Jin and Huh, ISCA 2012). The
//! hardware 2D walker is the one `nested` uses — first-dimension page-walk caches, nested TLB —
//! but every guest-physical address the nested TLB misses costs one read of a one-level table
//! indexed by guest frame number ([`FlatTable`]) instead of a walk of a radix nested table: a
//! miss reads at most 2n + 1 entries (7 for Sv39, 9 for x86-64 4-level), against
//! (n + 1)(m + 1) − 1.
//!
//! The hypervisor keeps the flat table as `nested` keeps its radix table: filled lazily, one
//! nested-fault VM exit per guest frame at its first touch (the handler writes one entry), or
//! prepopulated. Guest page-table writes, flushes and root switches need no hypervisor.
//!
//! **Superpages.** A flat entry maps one 4 KiB guest frame, so a guest superpage is translated
//! (and cached in the TLB) 4 KiB at a time, as `nested` with 4 KiB nested leaves does. Guest
//! memory is host-contiguous in 2 MiB chunks, so a 2 MiB TLB entry would be correct, but the
//! walker only read the one flat entry of the frame it needed and cannot know that its 511
//! neighbours are contiguous without a contiguity hint in the entry (Svnapot-like), which neither
//! the paper (as far as its abstract says) nor the entry formats provide.
//!
//! [`FlatNestedMap`] (the hypervisor's side of the flat table, with the 2D walk and its nested
//! faults) is shared with `spec-shadow`, whose verification walks use the same table.

use crate::addr::{Gfn, Gpa, Gva, Hpa};
use crate::machine::{HostTableStore, Platform, Scheme, SimError, Stop};
use crate::mem::TablePool;
use crate::mmu::Combined;
use crate::paging::mapper::MapError;
use crate::paging::{Access, FaultKind, FlatTable, LeafAttrs, NestedTable, Perms, Stage};
use crate::stats::Charge;
use crate::stats::ExitCause;

/// Options of the flat-nested scheme.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlatNestedOptions {
    /// Map all of guest memory before the guest runs (no nested-fault exits at all), as
    /// [`NestedOptions::prepopulate`](super::NestedOptions::prepopulate).
    pub prepopulate: bool,
}

/// The hypervisor's flat nested table of one VM: one entry per guest frame, filled at the
/// frame's first touch.
#[derive(Debug)]
pub struct FlatNestedMap {
    table: FlatTable,
    name: &'static str,
    /// Flat entries filled.
    pub leaves: u64,
}

impl FlatNestedMap {
    /// An empty flat table sized to the platform's guest memory (a full one with `prepopulate`),
    /// whose entries use the platform's nested format; `name` is the scheme's, for errors.
    pub fn new(p: &mut Platform, prepopulate: bool, name: &'static str) -> Result<Self, SimError> {
        let format = p.arch.nested_format;
        if format.stage != Stage::Nested {
            return Err(SimError::Config(format!("{format} is not a nested (G-stage/EPT) format")));
        }
        // One entry per guest frame: the hypervisor maps guest memory with 4 KiB pages.
        p.set_host_page(crate::mem::HostPage::Size4K);
        let table = FlatTable::alloc(&mut p.host, p.guest_mem.frames(), format)?;
        let mut map = FlatNestedMap { table, name, leaves: 0 };
        if prepopulate {
            for gfn in 0..map.table.entries() {
                map.map(p, Gfn::new(gfn))?;
            }
        }
        Ok(map)
    }

    /// The flat table.
    pub fn table(&self) -> &FlatTable {
        &self.table
    }

    /// Maps `gfn` to the host frame backing it; `false` if `gfn` is outside guest memory.
    fn map(&mut self, p: &mut Platform, gfn: Gfn) -> Result<bool, SimError> {
        let Some(hfn) = p.back(gfn)? else { return Ok(false) };
        let attrs = LeafAttrs::new(Perms::R | Perms::W | Perms::X | Perms::U);
        let mut store = HostTableStore { host: &mut p.host, pool: TablePool::Nested };
        match self.table.map(&mut store, gfn, hfn, attrs) {
            // A new entry needs no flush: nothing could have cached its absence (as `nested`).
            Ok(flush) => flush.ignore(),
            Err(MapError::Memory(e)) => return Err(e.into()),
            Err(e) => return Err(SimError::Internal { scheme: self.name, detail: e.to_string() }),
        }
        self.leaves += 1;
        Ok(true)
    }

    /// A nested fault for `gfn`: one VM exit whose handler writes one flat entry. `false` if
    /// `gfn` is outside guest memory.
    pub fn nested_fault(&mut self, p: &mut Platform, gfn: Gfn) -> Result<bool, SimError> {
        p.vm_exit(ExitCause::NestedFault);
        p.stats.cycles.vm_exit.charge(p.costs.vm_exit + p.costs.hv_per_entry);
        self.map(p, gfn)
    }

    /// Maps the frame of `gpa` (a nested fault) if the guest touches it for the first time.
    pub fn ensure_mapped(&mut self, p: &mut Platform, gpa: Gpa) -> Result<(), SimError> {
        if p.guest_mem.contains(gpa.page()) && !self.table.is_mapped(&p.host, gpa.page()) {
            self.nested_fault(p, gpa.page())?;
        }
        Ok(())
    }

    /// The hardware 2D walk of the current guest table × the flat table for `gva`, retried after
    /// each nested fault; `account` is called after every attempt, with the attempt's references
    /// in the MMU's trace. A guest fault is counted and returned as [`Stop::GuestFault`].
    pub fn walk(
        &mut self,
        p: &mut Platform,
        gva: Gva,
        access: Access,
        mut account: impl FnMut(&mut Platform),
    ) -> Result<Combined, Stop> {
        let root = p.current_root()?;
        let (guest_regime, nested_regime) = (p.arch.guest_regime, p.arch.nested_regime);
        // Each retry follows one nested fault; a walk meets at most levels+1 unmapped GPAs.
        for _ in 0..=(root.table.format().levels as usize + 1) {
            let result = p.mmu.walk_2d_over(
                &mut p.host,
                &root.table,
                &guest_regime,
                NestedTable::Flat(&self.table),
                &nested_regime,
                gva,
                access,
            );
            account(p);
            match result {
                Ok(c) => return Ok(c),
                Err(f) if f.stage == Stage::Nested && f.kind == FaultKind::NotPresent => {
                    let gpa = f.gpa.unwrap_or(Gpa::ZERO);
                    if !self.nested_fault(p, gpa.page())? {
                        // The guest pointed outside its memory: the hypervisor reflects an
                        // access fault to the guest.
                        p.stats.guest_faults += 1;
                        return Err(Stop::GuestFault(f.reflected(root.table.format())));
                    }
                }
                Err(f) if f.stage == Stage::Nested => {
                    return Err(Stop::Error(SimError::Internal {
                        scheme: self.name,
                        detail: format!("unexpected nested fault {f:?}"),
                    }));
                }
                Err(f) => {
                    p.stats.guest_faults += 1;
                    return Err(Stop::GuestFault(f));
                }
            }
        }
        Err(Stop::Error(SimError::Internal {
            scheme: self.name,
            detail: format!("nested faults did not converge for {gva}"),
        }))
    }
}

/// Nested paging over a flat nested table.
#[derive(Debug)]
pub struct FlatNested {
    map: FlatNestedMap,
}

impl FlatNested {
    /// The scheme for the platform's guest, with an empty flat table (or a full one).
    pub fn new(p: &mut Platform, opts: FlatNestedOptions) -> Result<Self, SimError> {
        Ok(FlatNested { map: FlatNestedMap::new(p, opts.prepopulate, "flat-nested")? })
    }

    /// The flat table.
    pub fn table(&self) -> &FlatTable {
        self.map.table()
    }

    /// Flat entries filled so far.
    pub fn leaves(&self) -> u64 {
        self.map.leaves
    }
}

impl Scheme for FlatNested {
    fn name(&self) -> &'static str {
        "flat-nested"
    }

    fn tlb_miss(&mut self, p: &mut Platform, gva: Gva, access: Access) -> Result<Hpa, Stop> {
        let c = self.map.walk(p, gva, access, |p| {
            p.account_walk();
        })?;
        let regime = p.arch.guest_regime;
        let allow = p.arch.guest_format.allow_mask(c.guest.perms, c.guest.dirty, &regime);
        // c.size is 4 KiB: a flat entry maps one frame (see the module documentation).
        p.fill_tlb(gva, c.size, c.hpa, c.guest.global, allow)?;
        Ok(c.hpa)
    }

    fn guest_store(
        &mut self,
        p: &mut Platform,
        gpa: Gpa,
        _old: u64,
        _new: u64,
    ) -> Result<(), SimError> {
        self.map.ensure_mapped(p, gpa)
    }

    fn guest_frame_written(&mut self, p: &mut Platform, gfn: Gfn) -> Result<(), SimError> {
        self.map.ensure_mapped(p, gfn.addr())
    }

    fn counters(&self, out: &mut std::collections::BTreeMap<&'static str, u64>) {
        out.insert("flat_leaves", self.map.leaves);
        out.insert("flat_table_bytes", self.map.table.bytes());
    }
}
