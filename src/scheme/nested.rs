//! `nested`: two-dimensional paging (RISC-V G-stage, Intel EPT, AMD NPT). The hardware walks the
//! guest table and translates every guest-physical address it meets through the nested table,
//! with page-walk caches and a nested TLB. The hypervisor fills the nested table lazily: a guest
//! touch of an unmapped guest-physical page is a nested fault (a VM exit) after which the
//! hypervisor maps it. Guest page-table writes, flushes and root switches need no hypervisor.

use serde::{Deserialize, Serialize};

use super::flat_nested::FlatNestedMap;
use crate::addr::{u64_to_usize, Gfn, Gpa, GuestPhys, Gva, HostPhys, Hpa, PageSize};
use crate::config::ConfigError;
use crate::machine::{HostTableStore, Platform, Refill, Scheme, SimError, Stop};
use crate::mem::{HostPage, TablePool};
use crate::paging::flat::NestedTable;
use crate::paging::mapper::{self, MapError};
use crate::paging::walk::PageTable;
use crate::paging::{Access, FaultKind, LeafAttrs, Perms, Stage};
use crate::stats::ExitCause;

/// Who performs the two-dimensional walk on a TLB miss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NestedWalk {
    /// The hardware 2D walker, with page-walk caches and the nested TLB (`nested`).
    #[default]
    Hardware,
    /// A hardware-mode handler, in software, with no walk caches (`snp`): every walk is a
    /// `tlb_refill` trap plus the per-entry software cost.
    Software,
}

/// `nested`'s settings (`--set scheme.KEY=VALUE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NestedSettings {
    /// Page size of nested leaves.
    pub host_page: HostPage,
}

impl NestedSettings {
    /// Applies `scheme.KEY=VALUE` settings (prefix stripped).
    pub fn with_sets(self, sets: &[(String, String)]) -> Result<Self, ConfigError> {
        crate::config::set_all(self, sets)
    }
}

/// Options of the nested scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NestedOptions {
    /// Map all of guest memory before the guest runs (no nested-fault exits at all).
    pub prepopulate: bool,
    /// Who walks.
    pub walk: NestedWalk,
    /// Software walk only: the nested table is flat, one entry per guest frame (2n+1 reads per
    /// miss; the Sunway flat nested page table paper), instead of the profile's radix format.
    pub flat: bool,
    /// Page size of nested leaves (`scheme.host_page`): 4 KiB (default), 2 MiB or 1 GiB, a
    /// smaller one where the aligned range would leave guest memory.
    pub host_page: HostPage,
}

impl Default for NestedOptions {
    fn default() -> Self {
        NestedOptions {
            prepopulate: false,
            walk: NestedWalk::Hardware,
            flat: false,
            host_page: HostPage::Size4K,
        }
    }
}

/// Nested paging.
#[derive(Debug)]
pub struct Nested {
    name: &'static str,
    table: PageTable<GuestPhys, HostPhys>,
    /// With `flat`: the flat table the software walk uses instead of `table`.
    flat: Option<FlatNestedMap>,
    opts: NestedOptions,
    /// One bit per nested leaf: whether the hypervisor has mapped it (the hypervisor's own
    /// bookkeeping, so that it need not walk its table to know).
    mapped: Vec<u64>,
    /// Nested-table leaves created.
    pub leaves: u64,
}

impl Nested {
    /// Builds an empty nested table (or a full one with `prepopulate`) for the platform's guest.
    pub fn new(p: &mut Platform, opts: NestedOptions) -> Result<Self, SimError> {
        let format = p.arch.nested_format;
        if format.stage != Stage::Nested {
            return Err(SimError::Config(format!("{format} is not a nested (G-stage/EPT) format")));
        }
        let largest = opts.host_page.size();
        if !format.leaf_allowed(largest.level()) {
            return Err(SimError::Config(format!(
                "scheme.host_page: {format} has no {} leaves",
                largest.name()
            )));
        }
        if opts.flat && opts.host_page != HostPage::Size4K {
            return Err(SimError::Config(
                "scheme.host_page: a flat nested table maps 4K pages only (one entry per guest \
                 frame)"
                    .into(),
            ));
        }
        p.set_host_page(opts.host_page);
        let frames = format.root_bytes() / PageSize::Size4K.bytes();
        let root = p.host.alloc_contiguous(frames, frames)?.addr();
        let guest_frames = p.guest_mem.frames();
        let name = match opts.walk {
            NestedWalk::Hardware => "nested",
            NestedWalk::Software => "snp",
        };
        let flat = match (opts.flat, opts.walk) {
            (false, _) => None,
            (true, NestedWalk::Software) => Some(FlatNestedMap::new(p, opts.prepopulate, name)?),
            (true, NestedWalk::Hardware) => {
                return Err(SimError::Config(
                    "a flat nested table with the hardware walker is the flat-nested scheme".into(),
                ))
            }
        };
        let mut nested = Nested {
            name,
            table: PageTable::new(root, format),
            flat,
            opts,
            mapped: vec![0; u64_to_usize(guest_frames.div_ceil(64))],
            leaves: 0,
        };
        if opts.prepopulate {
            let mut gfn = 0;
            while gfn < guest_frames {
                nested.map(p, Gfn::new(gfn))?;
                gfn += p.host_page_at(Gfn::new(gfn)).bytes() / PageSize::Size4K.bytes();
            }
        }
        Ok(nested)
    }

    /// The nested table.
    pub fn table(&self) -> &PageTable<GuestPhys, HostPhys> {
        &self.table
    }

    fn is_mapped(&self, gfn: Gfn) -> bool {
        let frame = gfn.as_u64();
        self.mapped.get(u64_to_usize(frame / 64)).is_some_and(|w| w & (1 << (frame % 64)) != 0)
    }

    /// Maps the nested leaf containing `gfn`, of the host page size that fits there; `false`
    /// if `gfn` is outside guest memory.
    fn map(&mut self, p: &mut Platform, gfn: Gfn) -> Result<bool, SimError> {
        let size = p.host_page_at(gfn);
        let gpa = gfn.addr().align_down(size);
        let Some(hfn) = p.back(gpa.page())? else { return Ok(false) };
        let attrs = LeafAttrs::new(Perms::R | Perms::W | Perms::X | Perms::U);
        let mut store = HostTableStore { host: &mut p.host, pool: TablePool::Nested };
        match mapper::map(&self.table, &mut store, gpa, hfn.addr(), size, attrs) {
            // A new nested entry needs no flush: nothing could have cached its absence
            // (assumption: the nested TLB does not cache invalid entries).
            Ok(flush) => flush.ignore(),
            Err(MapError::Memory(e)) => return Err(e.into()),
            Err(e) => return Err(SimError::Internal { scheme: self.name, detail: e.to_string() }),
        }
        let first = gpa.page().as_u64();
        let count = size.bytes() / PageSize::Size4K.bytes();
        for frame in first..first + count {
            if let Some(word) = self.mapped.get_mut(u64_to_usize(frame / 64)) {
                *word |= 1 << (frame % 64);
            }
        }
        self.leaves += 1;
        Ok(true)
    }

    /// A nested fault for `gfn`: one VM exit, after which the hypervisor maps it. `false` if
    /// `gfn` is outside guest memory.
    pub fn nested_fault(&mut self, p: &mut Platform, gfn: Gfn) -> Result<bool, SimError> {
        if let Some(flat) = &mut self.flat {
            return flat.nested_fault(p, gfn);
        }
        p.exit_with_work(ExitCause::NestedFault, u64::from(self.table.format().levels));
        self.map(p, gfn)
    }

    fn ensure_mapped(&mut self, p: &mut Platform, gpa: Gpa) -> Result<(), SimError> {
        if let Some(flat) = &mut self.flat {
            return flat.ensure_mapped(p, gpa);
        }
        if p.guest_mem.contains(gpa.page()) && !self.is_mapped(gpa.page()) {
            self.nested_fault(p, gpa.page())?;
        }
        Ok(())
    }
}

impl Scheme for Nested {
    fn name(&self) -> &'static str {
        self.name
    }

    fn tlb_miss(&mut self, p: &mut Platform, gva: Gva, access: Access) -> Result<Hpa, Stop> {
        let root = p.current_root()?;
        let (guest_regime, nested_regime) = (p.arch.guest_regime, p.arch.nested_regime);
        // Each retry follows one nested fault; a walk meets at most levels+1 unmapped GPAs.
        for _ in 0..=(root.table.format().levels as usize + 1) {
            let result = match self.opts.walk {
                NestedWalk::Hardware => p.mmu.walk_2d(
                    &mut p.host,
                    &root.table,
                    &guest_regime,
                    &self.table,
                    &nested_regime,
                    gva,
                    access,
                ),
                NestedWalk::Software => {
                    let nested = match &self.flat {
                        Some(f) => NestedTable::Flat(f.table()),
                        None => NestedTable::Radix(&self.table),
                    };
                    super::snp::soft_walk_2d(p, &root.table, nested, gva, access)
                }
            };
            p.account_walk();
            if self.opts.walk == NestedWalk::Software && p.arch.refill == Refill::Hardware {
                // The walk ran in the hardware-mode handler even on a hardware-refilled TLB.
                p.charge_refill_trap();
            }
            match result {
                Ok(c) => {
                    let allow =
                        root.table.format().allow_mask(c.guest.perms, c.guest.dirty, &guest_regime);
                    p.fill_tlb(gva, c.size, c.hpa, c.guest.global, allow)?;
                    return Ok(c.hpa);
                }
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

    fn guest_store(
        &mut self,
        p: &mut Platform,
        gpa: Gpa,
        _old: u64,
        _new: u64,
    ) -> Result<(), SimError> {
        self.ensure_mapped(p, gpa)
    }

    fn guest_frame_written(&mut self, p: &mut Platform, gfn: Gfn) -> Result<(), SimError> {
        self.ensure_mapped(p, gfn.addr())
    }

    fn counters(&self, out: &mut std::collections::BTreeMap<&'static str, u64>) {
        if let Some(flat) = &self.flat {
            out.insert("flat_leaves", flat.leaves);
            out.insert("flat_table_bytes", flat.table().bytes());
            return;
        }
        out.insert("nested_leaves", self.leaves);
    }
}
