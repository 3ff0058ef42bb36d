//! The nested dimension: the path a guest-physical address takes to host-physical — the nested
//! TLB ([`NestedTlb`]), else a nested walk — and the memory view through which the hardware
//! two-dimensional walk reads guest entries, translating each entry's GPA first.

use super::pwc::PageWalkCache;
use crate::addr::{Asid, Gpa, GuestPhys, HostPhys, Level, Vmid};
use crate::mem::{HostMemory, HostTableMemory};
use crate::paging::walk::{Dim, EntryMemory, Leaf, WalkError, WalkFault, WalkRef, WalkTrace};
use crate::paging::{Access, AccessKind, AdPolicy, NestedTable, Perms, Privilege, Regime};

pub use super::ntlb::{NestedTlb, NtlbStats};

/// A fault in the nested dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NestedFault {
    /// The fault in the nested table.
    pub fault: WalkFault,
    /// The GPA being translated.
    pub gpa: Gpa,
    /// `true` for the final data GPA, `false` for the GPA of a guest table entry.
    pub final_translation: bool,
    /// The access the nested walk checked (an implicit load/store for guest-entry accesses).
    pub checked: Access,
}

/// The nested dimension's state, borrowed for one translation.
#[derive(Debug)]
pub struct NestedPath<'a> {
    /// Host memory.
    pub host: &'a mut HostMemory,
    /// The nested table: radix (walked with the nested page-walk caches) or flat.
    pub table: NestedTable<'a>,
    /// Nested-table A/D policy and regime.
    pub regime: Regime,
    /// Current VMID.
    pub vmid: Vmid,
    /// Nested TLB.
    pub ntlb: &'a mut NestedTlb,
    /// Nested page-walk caches.
    pub npwc: &'a mut PageWalkCache,
    /// Reference recorder.
    pub trace: &'a mut WalkTrace,
}

impl NestedPath<'_> {
    /// Translates `gpa` for `checked`: the nested TLB, else a nested walk (filling the TLB).
    #[inline(always)]
    pub fn translate(
        &mut self,
        gpa: Gpa,
        checked: Access,
        final_translation: bool,
    ) -> Result<Leaf<HostPhys>, NestedFault> {
        let store = checked.kind == AccessKind::Store && self.regime.ad != AdPolicy::Ignore;
        match self.ntlb.lookup(gpa, self.vmid, store) {
            Some(leaf) if nested_allows(leaf.perms, checked.kind) => Ok(leaf),
            _ => self.walk(gpa, checked, final_translation),
        }
    }

    /// The nested walk after a nested-TLB miss, and the fill. Out of line so that the hit path,
    /// inlined into the callers, saves no registers for it.
    #[inline(never)]
    fn walk(
        &mut self,
        gpa: Gpa,
        checked: Access,
        final_translation: bool,
    ) -> Result<Leaf<HostPhys>, NestedFault> {
        let mut mem = HostTableMemory { host: self.host, trace: self.trace, dim: Dim::Nested };
        let mut port = self.npwc.port(self.vmid, Asid(0));
        match self.table.translate(gpa, checked, &self.regime, &mut mem, &mut port) {
            Ok(leaf) => {
                self.ntlb.insert(gpa, self.vmid, leaf);
                Ok(leaf)
            }
            Err(WalkError::Fault(fault)) => {
                Err(NestedFault { fault, gpa, final_translation, checked })
            }
            Err(WalkError::Memory(never)) => match never {},
        }
    }
}

/// Nested permission check for a cached entry: G-stage/EPT permissions ignore privilege.
#[inline]
fn nested_allows(perms: Perms, kind: AccessKind) -> bool {
    match kind {
        AccessKind::Load => perms.contains(Perms::R),
        AccessKind::Store => perms.contains(Perms::W),
        AccessKind::Fetch => perms.contains(Perms::X),
    }
}

/// Guest tables read by the hardware 2D walker: every entry's GPA goes through the nested
/// dimension before the entry itself is read.
#[derive(Debug)]
pub struct TwoDimMemory<'a> {
    /// The nested dimension.
    pub nested: NestedPath<'a>,
}

/// Implicit accesses to guest tables are checked as loads (stores for A/D updates) at user
/// privilege (hypervisor spec: G-stage checks VS-table accesses as implicit loads/stores; SDM:
/// guest paging-structure accesses are data reads/writes for EPT).
const IMPLICIT_LOAD: Access = Access { kind: AccessKind::Load, privilege: Privilege::User };
const IMPLICIT_STORE: Access = Access { kind: AccessKind::Store, privilege: Privilege::User };

impl EntryMemory<GuestPhys> for TwoDimMemory<'_> {
    type Error = NestedFault;

    /// Inlined into the guest walk's loop, whose registers are saved already: out of line it
    /// saved its own around the nested walk it may call.
    #[inline(always)]
    fn read_entry(&mut self, addr: Gpa, level: Level) -> Result<u64, NestedFault> {
        let leaf = self.nested.translate(addr, IMPLICIT_LOAD, false)?;
        let hpa = leaf.output(addr);
        self.nested.trace.push(WalkRef { hpa, level, dim: Dim::Guest, write: false });
        Ok(self.nested.host.read_u64(hpa))
    }

    fn write_entry(&mut self, addr: Gpa, level: Level, value: u64) -> Result<(), NestedFault> {
        let leaf = self.nested.translate(addr, IMPLICIT_STORE, false)?;
        let hpa = leaf.output(addr);
        self.nested.trace.push(WalkRef { hpa, level, dim: Dim::Guest, write: true });
        self.nested.host.write_u64(hpa, value);
        Ok(())
    }
}
