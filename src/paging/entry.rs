//! The family-independent view of page-table entries, accesses and faults. Each family module
//! (`riscv`, `x86`, `ept`) decodes its bits into these types; the walker only sees these.

use bitflags::bitflags;

use super::format::{Family, Format, Stage};
use super::{ept, riscv, x86};
use crate::addr::Level;

bitflags! {
    /// Effective permissions of a translation, after combining every level the format combines.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Perms: u8 {
        /// Loads allowed.
        const R = 1 << 0;
        /// Stores allowed.
        const W = 1 << 1;
        /// Instruction fetches allowed.
        const X = 1 << 2;
        /// User-mode accessible (RISC-V U, x86 U/S). EPT entries always carry it.
        const U = 1 << 3;
    }
}

/// What an access does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessKind {
    /// A data load.
    Load,
    /// A data store (or AMO).
    Store,
    /// An instruction fetch.
    Fetch,
}

/// The privilege an access is made with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Privilege {
    /// User mode (RISC-V U/VU, x86 CPL 3).
    User,
    /// Supervisor mode (RISC-V S/VS, x86 CPL 0).
    Supervisor,
}

/// One memory access as the MMU sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    /// Load, store or fetch.
    pub kind: AccessKind,
    /// Privilege of the access.
    pub privilege: Privilege,
}

impl Access {
    /// A user-mode load.
    pub const USER_LOAD: Access = Access { kind: AccessKind::Load, privilege: Privilege::User };
    /// A user-mode store.
    pub const USER_STORE: Access = Access { kind: AccessKind::Store, privilege: Privilege::User };
    /// A user-mode instruction fetch.
    pub const USER_FETCH: Access = Access { kind: AccessKind::Fetch, privilege: Privilege::User };
    /// A supervisor load.
    pub const KERNEL_LOAD: Access =
        Access { kind: AccessKind::Load, privilege: Privilege::Supervisor };
    /// A supervisor store.
    pub const KERNEL_STORE: Access =
        Access { kind: AccessKind::Store, privilege: Privilege::Supervisor };

    /// Bit of this access in an [`AllowMask`].
    #[inline]
    pub const fn class_bit(self) -> u8 {
        1 << self.class_index()
    }

    /// The access's class (kind × privilege), 0 to [`Access::CLASSES`] − 1: its bit's index in
    /// an [`AllowMask`].
    #[inline]
    pub const fn class_index(self) -> usize {
        let k = match self.kind {
            AccessKind::Load => 0,
            AccessKind::Store => 1,
            AccessKind::Fetch => 2,
        };
        let p = match self.privilege {
            Privilege::User => 0,
            Privilege::Supervisor => 3,
        };
        k + p
    }

    /// The number of access classes.
    pub const CLASSES: usize = 6;
}

/// A bit set of the six (kind × privilege) access classes a cached translation allows; a TLB hit
/// checks one bit instead of re-running the permission rules.
pub type AllowMask = u8;

/// How accessed/dirty bits are maintained for one translation stage (a profile choice).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdPolicy {
    /// The walker sets A (and D on a store) with an atomic update (RISC-V Svadu, x86, EPT with
    /// EPTP.AD=1).
    Hardware,
    /// A missing A, or D on a store, raises a page fault and software sets it (RISC-V Svade).
    Fault,
    /// The bits are not maintained at all (EPT with EPTP.AD=0).
    Ignore,
}

/// Translation-regime settings that affect the permission rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Regime {
    /// Supervisor may load/store user pages (RISC-V sstatus.SUM; on x86, SMAP off or EFLAGS.AC).
    pub sum: bool,
    /// Execute-only pages are readable (RISC-V MXR).
    pub mxr: bool,
    /// Accessed/dirty maintenance.
    pub ad: AdPolicy,
}

impl Default for Regime {
    fn default() -> Self {
        Regime { sum: false, mxr: false, ad: AdPolicy::Hardware }
    }
}

/// Attributes of a leaf entry, used both when decoding and when building entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeafAttrs {
    /// Permissions granted by this entry alone.
    pub perms: Perms,
    /// Global mapping (RISC-V G, x86 G); ignored by nested formats.
    pub global: bool,
    /// Accessed bit.
    pub accessed: bool,
    /// Dirty bit.
    pub dirty: bool,
}

impl LeafAttrs {
    /// Attributes with A and D already set, as Linux writes most entries.
    pub const fn new(perms: Perms) -> Self {
        LeafAttrs { perms, global: false, accessed: true, dirty: true }
    }
}

/// A decoded entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decoded {
    /// Not valid/present: the walk faults.
    Invalid,
    /// A pointer to the next-level table.
    Table {
        /// Physical address (in the table's output space) of the next table.
        next: u64,
        /// Permissions this level allows (x86/EPT AND them across levels; RISC-V grants all).
        perms: Perms,
        /// RISC-V non-leaf G: everything below is global.
        global: bool,
        /// Accessed bit (x86/EPT set it at every level).
        accessed: bool,
    },
    /// A leaf mapping a page of the level's size.
    Leaf {
        /// Physical base address of the page.
        base: u64,
        /// Its attributes.
        attrs: LeafAttrs,
    },
}

/// Why a translation failed, independent of the architecture's encoding of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// The input address is not canonical / wider than the format allows.
    NonCanonical,
    /// An entry read was not valid/present.
    NotPresent,
    /// An entry had reserved bits or an illegal encoding set.
    Reserved,
    /// A superpage's physical address was not aligned to its size.
    MisalignedSuperpage,
    /// The translation exists but does not permit this access.
    Permission,
    /// A or D needed setting and the profile makes software do it (Svade).
    AccessedDirty,
    /// A table entry lies outside the memory that backs the table's space (RISC-V access fault).
    AccessFault,
}

/// An x86 #PF error code (Intel SDM Vol. 3A §4.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pfec(pub u32);

impl Pfec {
    /// Protection violation (0 = not present).
    pub const P: u32 = 1 << 0;
    /// The access was a write.
    pub const W: u32 = 1 << 1;
    /// The access was made at CPL 3.
    pub const U: u32 = 1 << 2;
    /// A reserved bit was set in a paging-structure entry.
    pub const RSVD: u32 = 1 << 3;
    /// The access was an instruction fetch.
    pub const I: u32 = 1 << 4;
}

/// An EPT-violation exit qualification (SDM Vol. 3C Table 28-7; Linux `EPT_VIOLATION_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EptQual(pub u64);

impl EptQual {
    /// The access was a data read.
    pub const READ: u64 = 1 << 0;
    /// The access was a data write.
    pub const WRITE: u64 = 1 << 1;
    /// The access was an instruction fetch.
    pub const FETCH: u64 = 1 << 2;
    /// The GPA was readable (AND of R over the levels walked).
    pub const READABLE: u64 = 1 << 3;
    /// The GPA was writable.
    pub const WRITABLE: u64 = 1 << 4;
    /// The GPA was executable.
    pub const EXECUTABLE: u64 = 1 << 5;
    /// The guest linear address field is valid.
    pub const GLA_VALID: u64 = 1 << 7;
    /// With GLA_VALID: the access was to the final translated GPA (0: to a guest paging entry).
    pub const FINAL_TRANSLATION: u64 = 1 << 8;
}

/// The architectural form of a fault, as the trapped-to software would see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArchCause {
    /// RISC-V exception code: 1/5/7 access faults, 12/13/15 page faults, 20/21/23 guest-page
    /// faults (priv spec Table "Machine cause register values").
    RiscV(u8),
    /// x86 #PF (vector 14) with its error code.
    X86PageFault(Pfec),
    /// x86 #GP: a non-canonical linear address.
    X86GeneralProtection,
    /// EPT violation (VM-exit reason 48) with its qualification.
    EptViolation(EptQual),
    /// EPT misconfiguration (VM-exit reason 49).
    EptMisconfig,
}

/// What the walker knows when it builds the architectural cause of a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FaultSite {
    /// The fault.
    pub kind: FaultKind,
    /// The access that started the translation (the *original* access for a nested fault taken
    /// while reading a guest entry).
    pub access: Access,
    /// For nested faults: whether it hit the final GPA (`true`) or a guest table entry's GPA.
    pub final_translation: bool,
    /// Permissions accumulated up to the faulting level (EPT reports them).
    pub perms: Perms,
}

/// One entry family's rules, bound at compile time: [`walk`](super::walk::walk) matches on
/// [`Format::family`] once per walk and runs the walker instantiated for the family's type, so
/// that decoding, the permission check and the A/D update of every entry are static calls the
/// compiler inlines instead of a dispatch per entry. The [`Format`] methods below dispatch to
/// the same types, so each family's binding to its module is written once, here.
pub(super) trait EntryRules {
    /// Whether the hardware sets A in non-leaf entries too (x86, EPT), not only in leaves.
    const SETS_ACCESSED_IN_TABLES: bool;
    /// The family's decoder, before the format's largest-leaf rule ([`Format::decode_as`]).
    fn decode(raw: u64, level: Level, stage: Stage) -> Result<Decoded, FaultKind>;
    /// The family's permission rules for leaf permissions combined over the levels.
    fn check_permissions(
        perms: Perms,
        access: Access,
        regime: &Regime,
        stage: Stage,
    ) -> Result<(), FaultKind>;
    /// Sets A, and D if `dirty`.
    fn with_accessed_dirty(raw: u64, dirty: bool) -> u64;
}

/// The RISC-V rules ([`riscv`]).
pub(super) enum RiscVRules {}
/// The x86-64 paging rules ([`x86`]).
pub(super) enum X86Rules {}
/// The EPT rules ([`ept`]).
pub(super) enum EptRules {}

impl EntryRules for RiscVRules {
    const SETS_ACCESSED_IN_TABLES: bool = false;
    #[inline(always)]
    fn decode(raw: u64, level: Level, stage: Stage) -> Result<Decoded, FaultKind> {
        riscv::decode(raw, level, stage)
    }
    #[inline(always)]
    fn check_permissions(p: Perms, a: Access, r: &Regime, stage: Stage) -> Result<(), FaultKind> {
        riscv::check_permissions(p, a, r, stage)
    }
    #[inline(always)]
    fn with_accessed_dirty(raw: u64, dirty: bool) -> u64 {
        riscv::with_accessed_dirty(raw, dirty)
    }
}

impl EntryRules for X86Rules {
    const SETS_ACCESSED_IN_TABLES: bool = true;
    #[inline(always)]
    fn decode(raw: u64, level: Level, _: Stage) -> Result<Decoded, FaultKind> {
        x86::decode(raw, level)
    }
    #[inline(always)]
    fn check_permissions(p: Perms, a: Access, r: &Regime, _: Stage) -> Result<(), FaultKind> {
        x86::check_permissions(p, a, r)
    }
    #[inline(always)]
    fn with_accessed_dirty(raw: u64, dirty: bool) -> u64 {
        x86::with_accessed_dirty(raw, dirty)
    }
}

impl EntryRules for EptRules {
    const SETS_ACCESSED_IN_TABLES: bool = true;
    #[inline(always)]
    fn decode(raw: u64, level: Level, _: Stage) -> Result<Decoded, FaultKind> {
        ept::decode(raw, level)
    }
    #[inline(always)]
    fn check_permissions(p: Perms, a: Access, _: &Regime, _: Stage) -> Result<(), FaultKind> {
        ept::check_permissions(p, a)
    }
    #[inline(always)]
    fn with_accessed_dirty(raw: u64, dirty: bool) -> u64 {
        ept::with_accessed_dirty(raw, dirty)
    }
}

impl Format {
    /// Decodes `raw` read at `level`, applying the format's reserved-bit, encoding and superpage
    /// alignment rules (RISC-V priv spec §4.3.2 steps 3–5 and the x86/EPT equivalents).
    #[inline]
    pub fn decode(&self, raw: u64, level: Level) -> Result<Decoded, FaultKind> {
        match self.family {
            Family::RiscV => self.decode_as::<RiscVRules>(raw, level, self.stage),
            Family::X86 => self.decode_as::<X86Rules>(raw, level, self.stage),
            Family::Ept => self.decode_as::<EptRules>(raw, level, self.stage),
        }
    }

    /// [`Format::decode`] with the family `R` and the `stage` already known (both must be the
    /// format's).
    #[inline(always)]
    pub(super) fn decode_as<R: EntryRules>(
        &self,
        raw: u64,
        level: Level,
        stage: Stage,
    ) -> Result<Decoded, FaultKind> {
        let decoded = R::decode(raw, level, stage)?;
        if let Decoded::Leaf { .. } = decoded {
            if !self.leaf_allowed(level) {
                return Err(FaultKind::Reserved);
            }
        }
        Ok(decoded)
    }

    /// Encodes a pointer to the next-level table at physical address `next`.
    pub fn encode_table(&self, next: u64) -> u64 {
        match self.family {
            Family::RiscV => riscv::encode_table(next),
            Family::X86 => x86::encode_table(next),
            Family::Ept => ept::encode_table(next),
        }
    }

    /// Encodes a leaf at `level` mapping physical address `base` (aligned to the level's size).
    pub fn encode_leaf(&self, base: u64, level: Level, attrs: LeafAttrs) -> u64 {
        match self.family {
            Family::RiscV => riscv::encode_leaf(base, attrs),
            Family::X86 => x86::encode_leaf(base, level, attrs),
            Family::Ept => ept::encode_leaf(base, level, attrs),
        }
    }

    /// Sets the accessed bit, and the dirty bit if `dirty`, in a leaf or table entry.
    pub fn with_accessed_dirty(&self, raw: u64, dirty: bool) -> u64 {
        match self.family {
            Family::RiscV => RiscVRules::with_accessed_dirty(raw, dirty),
            Family::X86 => X86Rules::with_accessed_dirty(raw, dirty),
            Family::Ept => EptRules::with_accessed_dirty(raw, dirty),
        }
    }

    /// Whether the hardware sets A in non-leaf entries too (x86, EPT), not only in leaves.
    pub const fn sets_accessed_in_tables(&self) -> bool {
        match self.family {
            Family::RiscV => RiscVRules::SETS_ACCESSED_IN_TABLES,
            Family::X86 => X86Rules::SETS_ACCESSED_IN_TABLES,
            Family::Ept => EptRules::SETS_ACCESSED_IN_TABLES,
        }
    }

    /// Checks the leaf permissions `perms` (already combined over the levels) against `access`,
    /// rule by rule in the order of the family's specification.
    #[inline]
    pub fn check_permissions(
        &self,
        perms: Perms,
        access: Access,
        regime: &Regime,
    ) -> Result<(), FaultKind> {
        match self.family {
            Family::RiscV => RiscVRules::check_permissions(perms, access, regime, self.stage),
            Family::X86 => X86Rules::check_permissions(perms, access, regime, self.stage),
            Family::Ept => EptRules::check_permissions(perms, access, regime, self.stage),
        }
    }

    /// The set of access classes `perms` allows, for caching in a TLB entry. `dirty == false`
    /// withholds stores so that the first store re-walks and sets D.
    pub fn allow_mask(&self, perms: Perms, dirty: bool, regime: &Regime) -> AllowMask {
        let mut mask = 0;
        for kind in [AccessKind::Load, AccessKind::Store, AccessKind::Fetch] {
            for privilege in [Privilege::User, Privilege::Supervisor] {
                let access = Access { kind, privilege };
                if kind == AccessKind::Store && !dirty && regime.ad != AdPolicy::Ignore {
                    continue;
                }
                if self.check_permissions(perms, access, regime).is_ok() {
                    mask |= access.class_bit();
                }
            }
        }
        mask
    }

    /// The architectural cause of a fault in a table of this format.
    pub fn arch_cause(&self, site: FaultSite) -> ArchCause {
        match self.family {
            Family::RiscV => ArchCause::RiscV(riscv::cause_code(site, self.stage)),
            Family::X86 => x86::cause(site),
            Family::Ept => ept::cause(site),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_classes_are_distinct_bits() {
        let mut seen = 0u8;
        for kind in [AccessKind::Load, AccessKind::Store, AccessKind::Fetch] {
            for privilege in [Privilege::User, Privilege::Supervisor] {
                let bit = Access { kind, privilege }.class_bit();
                assert_eq!(bit.count_ones(), 1);
                assert_eq!(seen & bit, 0);
                seen |= bit;
            }
        }
        assert_eq!(seen, 0b11_1111);
    }

    #[test]
    fn clean_pages_withhold_stores_from_the_tlb() {
        let f = Format::SV39;
        let rw = Perms::R | Perms::W | Perms::U;
        let regime = Regime::default();
        assert_eq!(f.allow_mask(rw, false, &regime) & Access::USER_STORE.class_bit(), 0);
        assert_ne!(f.allow_mask(rw, true, &regime) & Access::USER_STORE.class_bit(), 0);
        assert_ne!(f.allow_mask(rw, false, &regime) & Access::USER_LOAD.class_bit(), 0);
    }
}
