//! The two-dimensional walk done in software by a hardware-mode handler: Software Nested Paging
//! (`snp`, TC'22) and the leaf fills of Accelerated Shadow Paging (`asp`). The handler reads
//! the same entries the hardware 2D walker would — every guest entry's GPA translated by a walk
//! of the nested table, then the final GPA — but it has no page-walk caches and no nested TLB:
//! a miss reads (n+1)(m+1)−1 entries with a radix nested table, 2n+1 with a flat one.

use serde::{Deserialize, Serialize};

use crate::addr::{Gpa, GuestPhys, GuestVirt, Gva, HostPhys, Level};
use crate::config::ConfigError;
use crate::machine::Platform;
use crate::mem::{HostMemory, HostTableMemory};
use crate::mmu::nested::NestedFault;
use crate::mmu::{Combined, TranslationFault};
use crate::paging::flat::NestedTable;
use crate::paging::walk::{
    walk, Dim, EntryMemory, Leaf, NoWalkCache, PageTable, WalkError, WalkRef, WalkTrace,
};
use crate::paging::{Access, AccessKind, Privilege, Regime};

/// Which nested table `snp`'s handler walks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NestedTableKind {
    /// The profile's radix nested format (TC'22's SNP): (n+1)(m+1)−1 reads per miss.
    #[default]
    Radix,
    /// One entry per guest frame (the Sunway flat nested page table paper, swFNPT): 2n+1.
    Flat,
}

/// `snp`'s options (`--set scheme.KEY=VALUE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpOptions {
    /// The nested table the handler walks.
    pub nested_table: NestedTableKind,
    /// Page size of nested leaves (4K only with a flat table).
    pub host_page: crate::mem::HostPage,
}

impl SnpOptions {
    /// Applies `scheme.KEY=VALUE` settings (prefix stripped).
    pub fn with_sets(mut self, sets: &[(String, String)]) -> Result<Self, ConfigError> {
        self = crate::config::set_all(self, sets)?;
        if self.nested_table == NestedTableKind::Flat
            && self.host_page != crate::mem::HostPage::Size4K
        {
            return Err(ConfigError::Invalid(
                "scheme.host_page must be \"4k\" with scheme.nested_table = \"flat\" (one entry \
                 per guest frame)"
                    .into(),
            ));
        }
        Ok(self)
    }
}

/// Guest tables read by the software handler, each entry's GPA translated by a nested walk.
struct SoftTwoDim<'a> {
    host: &'a mut HostMemory,
    nested: NestedTable<'a>,
    regime: Regime,
    trace: &'a mut WalkTrace,
}

/// Accesses to guest tables are checked as implicit loads (stores for A/D updates), as the
/// hardware walker checks them.
const IMPLICIT_LOAD: Access = Access { kind: AccessKind::Load, privilege: Privilege::User };
const IMPLICIT_STORE: Access = Access { kind: AccessKind::Store, privilege: Privilege::User };

impl SoftTwoDim<'_> {
    fn translate(
        &mut self,
        gpa: Gpa,
        checked: Access,
        final_translation: bool,
    ) -> Result<Leaf<HostPhys>, NestedFault> {
        let mut mem = HostTableMemory { host: self.host, trace: self.trace, dim: Dim::Nested };
        match self.nested.translate(gpa, checked, &self.regime, &mut mem, &mut NoWalkCache) {
            Ok(leaf) => Ok(leaf),
            Err(WalkError::Fault(fault)) => {
                Err(NestedFault { fault, gpa, final_translation, checked })
            }
            Err(WalkError::Memory(never)) => match never {},
        }
    }
}

impl EntryMemory<GuestPhys> for SoftTwoDim<'_> {
    type Error = NestedFault;

    fn read_entry(&mut self, addr: Gpa, level: Level) -> Result<u64, NestedFault> {
        let hpa = self.translate(addr, IMPLICIT_LOAD, false)?.output(addr);
        self.trace.push(WalkRef { hpa, level, dim: Dim::Guest, write: false });
        Ok(self.host.read_u64(hpa))
    }

    fn write_entry(&mut self, addr: Gpa, level: Level, value: u64) -> Result<(), NestedFault> {
        let hpa = self.translate(addr, IMPLICIT_STORE, false)?.output(addr);
        self.trace.push(WalkRef { hpa, level, dim: Dim::Guest, write: true });
        self.host.write_u64(hpa, value);
        Ok(())
    }
}

/// The software 2D walk of `guest` × `nested` (radix or flat) for `gva`, recording every reference in the MMU's
/// trace (cleared first) for [`Platform::account_walk`]. Accessed/dirty bits are set as the
/// regimes say, as the hardware walker would.
pub fn soft_walk_2d(
    p: &mut Platform,
    guest: &PageTable<GuestVirt, GuestPhys>,
    nested: NestedTable<'_>,
    gva: Gva,
    access: Access,
) -> Result<Combined, TranslationFault> {
    p.mmu.trace.clear();
    let (guest_regime, nested_regime) = (p.arch.guest_regime, p.arch.nested_regime);
    let mut mem =
        SoftTwoDim { host: &mut p.host, nested, regime: nested_regime, trace: &mut p.mmu.trace };
    let guest_leaf = match walk(guest, gva, access, &guest_regime, &mut mem, &mut NoWalkCache) {
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
        .translate(gpa, access, true)
        .map_err(|f| TranslationFault::nested(gva, access, nested.format(), f))?;
    let hpa = nested_leaf.output(gpa);
    let size = guest_leaf.size.min(nested_leaf.size);
    Ok(Combined { guest: guest_leaf, nested: nested_leaf, gpa, hpa, size })
}
