//! Intel EPT entries (SDM Vol. 3C §29.3; Linux `vmx.h` `VMX_EPT_*`).

use bitflags::bitflags;

use super::entry::{
    Access, AccessKind, ArchCause, Decoded, EptQual, FaultKind, FaultSite, LeafAttrs, Perms,
};
use crate::addr::{bits, Level};

bitflags! {
    /// EPT paging-structure entry bits.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct EptEntry: u64 {
        /// R: reads allowed.
        const R = 1 << 0;
        /// W: writes allowed.
        const W = 1 << 1;
        /// X: instruction fetches allowed.
        const X = 1 << 2;
        /// Memory type of a leaf (bits 5:3).
        const MEMTYPE = 0b111 << 3;
        /// IPAT: ignore the guest PAT (leaf).
        const IPAT = 1 << 6;
        /// PS: 2 MiB / 1 GiB leaf in a PDE / PDPTE.
        const PS = 1 << 7;
        /// A: accessed (EPTP bit 6 set).
        const A = 1 << 8;
        /// D: dirty (leaf, EPTP bit 6 set).
        const D = 1 << 9;
        /// UX: user-mode execute (mode-based execute control).
        const UX = 1 << 10;
        /// SVE: suppress #VE.
        const SVE = 1 << 63;
    }
}

/// Physical-address width, as for x86 paging (assumption: 46 bits).
pub const MAXPHYADDR: u32 = super::x86::MAXPHYADDR;
/// Write-back memory type (`VMX_EPT_MT` 6).
pub const MEMTYPE_WB: u64 = 6;

const ADDR_MASK: u64 = ((1 << MAXPHYADDR) - 1) & !0xfff;
const RESERVED_HIGH: u64 = ((1 << 52) - 1) & !((1 << MAXPHYADDR) - 1);

/// Decodes one entry. Misconfigurations (SDM §29.3.3.1) are reported as [`FaultKind::Reserved`].
/// Execute-only entries are legal (IA32_VMX_EPT_VPID_CAP bit 0 assumed 1).
pub fn decode(raw: u64, level: Level) -> Result<Decoded, FaultKind> {
    let e = EptEntry::from_bits_retain(raw);
    // Not present: bits 2:0 all clear.
    if !e.intersects(EptEntry::R | EptEntry::W | EptEntry::X) {
        return Ok(Decoded::Invalid);
    }
    // Misconfiguration: write without read (010b, 110b).
    if e.contains(EptEntry::W) && !e.contains(EptEntry::R) {
        return Err(FaultKind::Reserved);
    }
    // Misconfiguration: reserved address bits.
    if raw & RESERVED_HIGH != 0 {
        return Err(FaultKind::Reserved);
    }
    let mut perms = Perms::U;
    perms.set(Perms::R, e.contains(EptEntry::R));
    perms.set(Perms::W, e.contains(EptEntry::W));
    perms.set(Perms::X, e.contains(EptEntry::X));
    let leaf = match level {
        Level::L0 => true,
        Level::L1 | Level::L2 => e.contains(EptEntry::PS),
        // PS is reserved in an EPT PML4E/PML5E.
        Level::L3 | Level::L4 => {
            if e.contains(EptEntry::PS) {
                return Err(FaultKind::Reserved);
            }
            false
        }
    };
    if !leaf {
        // Bits 6:3 are reserved in non-leaf entries.
        if bits(raw, 6, 3) != 0 {
            return Err(FaultKind::Reserved);
        }
        return Ok(Decoded::Table {
            next: raw & ADDR_MASK,
            perms,
            global: false,
            accessed: e.contains(EptEntry::A),
        });
    }
    // Memory types 2, 3 and 7 are invalid.
    if matches!(bits(raw, 5, 3), 2 | 3 | 7) {
        return Err(FaultKind::Reserved);
    }
    // A large leaf's address bits below its size are reserved.
    if level != Level::L0 && bits(raw, level.shift() - 1, 12) != 0 {
        return Err(FaultKind::Reserved);
    }
    Ok(Decoded::Leaf {
        base: raw & ADDR_MASK,
        attrs: LeafAttrs {
            perms,
            global: false,
            accessed: e.contains(EptEntry::A),
            dirty: e.contains(EptEntry::D),
        },
    })
}

/// Reads need R, writes W, fetches X (mode-based execute control not modelled).
pub fn check_permissions(perms: Perms, access: Access) -> Result<(), FaultKind> {
    let needed = match access.kind {
        AccessKind::Load => Perms::R,
        AccessKind::Store => Perms::W,
        AccessKind::Fetch => Perms::X,
    };
    if perms.contains(needed) {
        Ok(())
    } else {
        Err(FaultKind::Permission)
    }
}

/// A pointer entry: R|W|X (A left clear for the walker to set).
pub fn encode_table(next: u64) -> u64 {
    (next & ADDR_MASK) | (EptEntry::R | EptEntry::W | EptEntry::X).bits()
}

/// A write-back leaf at `level` (PS at levels 1 and 2).
pub fn encode_leaf(base: u64, level: Level, attrs: LeafAttrs) -> u64 {
    let mut e = EptEntry::empty();
    e.set(EptEntry::R, attrs.perms.contains(Perms::R));
    e.set(EptEntry::W, attrs.perms.contains(Perms::W));
    e.set(EptEntry::X, attrs.perms.contains(Perms::X));
    e.set(EptEntry::PS, level != Level::L0);
    e.set(EptEntry::A, attrs.accessed);
    e.set(EptEntry::D, attrs.dirty);
    (base & ADDR_MASK) | e.bits() | MEMTYPE_WB << 3
}

/// Sets A (bit 8) and D (bit 9).
pub fn with_accessed_dirty(raw: u64, dirty: bool) -> u64 {
    raw | EptEntry::A.bits() | if dirty { EptEntry::D.bits() } else { 0 }
}

/// EPT misconfiguration (exit 49) for illegal entries, else an EPT violation (exit 48) with its
/// qualification.
pub fn cause(site: FaultSite) -> ArchCause {
    if matches!(site.kind, FaultKind::Reserved | FaultKind::MisalignedSuperpage) {
        return ArchCause::EptMisconfig;
    }
    let mut q = match site.access.kind {
        AccessKind::Load => EptQual::READ,
        AccessKind::Store => EptQual::WRITE,
        AccessKind::Fetch => EptQual::FETCH,
    };
    for (perm, bit) in [
        (Perms::R, EptQual::READABLE),
        (Perms::W, EptQual::WRITABLE),
        (Perms::X, EptQual::EXECUTABLE),
    ] {
        if site.perms.contains(perm) {
            q |= bit;
        }
    }
    q |= EptQual::GLA_VALID;
    if site.final_translation {
        q |= EptQual::FINAL_TRANSLATION;
    }
    ArchCause::EptViolation(EptQual(q))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4 KiB read-write-execute write-back leaf at 0x7654_3000: RWX=7, MT=6<<3.
    const RWX_WB_LEAF: u64 = 0x7654_3000 | 0x7 | 6 << 3;

    #[test]
    fn a_4k_leaf_decodes_as_the_sdm_lays_it_out() {
        let Ok(Decoded::Leaf { base, attrs }) = decode(RWX_WB_LEAF, Level::L0) else { panic!() };
        assert_eq!(base, 0x7654_3000);
        assert_eq!(attrs.perms, Perms::R | Perms::W | Perms::X | Perms::U);
        let attrs = LeafAttrs {
            accessed: false,
            dirty: false,
            ..LeafAttrs::new(Perms::R | Perms::W | Perms::X)
        };
        assert_eq!(encode_leaf(0x7654_3000, Level::L0, attrs), RWX_WB_LEAF);
    }

    #[test]
    fn bits_2_to_0_clear_means_not_present_and_write_only_is_a_misconfiguration() {
        assert_eq!(decode(0x7654_3000 | 6 << 3, Level::L0), Ok(Decoded::Invalid));
        assert_eq!(decode(0x7654_3000 | 0b010 | 6 << 3, Level::L0), Err(FaultKind::Reserved));
        assert_eq!(decode(0x7654_3000 | 0b110 | 6 << 3, Level::L0), Err(FaultKind::Reserved));
        assert!(
            decode(0x7654_3000 | 0b100 | 6 << 3, Level::L0).is_ok(),
            "execute-only is supported"
        );
    }

    #[test]
    fn invalid_memory_types_and_reserved_bits_are_misconfigurations() {
        for mt in [2u64, 3, 7] {
            assert_eq!(
                decode(0x1000 | 0x7 | mt << 3, Level::L0),
                Err(FaultKind::Reserved),
                "memory type {mt}"
            );
        }
        assert_eq!(
            decode(encode_table(0x1000) | 1 << 3, Level::L1),
            Err(FaultKind::Reserved),
            "bits 6:3 in a table"
        );
        assert_eq!(
            decode(encode_table(0x1000) | 1 << 7, Level::L3),
            Err(FaultKind::Reserved),
            "PS in a PML4E"
        );
        assert_eq!(decode(RWX_WB_LEAF | 1 << 47, Level::L0), Err(FaultKind::Reserved));
        let two_m = encode_leaf(0x20_0000, Level::L1, LeafAttrs::new(Perms::R));
        assert_eq!(decode(two_m | 1 << 12, Level::L1), Err(FaultKind::Reserved));
        assert!(matches!(decode(two_m, Level::L1), Ok(Decoded::Leaf { base: 0x20_0000, .. })));
    }

    #[test]
    fn permissions_ignore_privilege() {
        assert!(check_permissions(Perms::R | Perms::U, Access::KERNEL_LOAD).is_ok());
        assert!(check_permissions(Perms::R | Perms::U, Access::USER_STORE).is_err());
        assert!(check_permissions(Perms::X | Perms::U, Access::USER_FETCH).is_ok());
    }

    #[test]
    fn qualification_reports_access_permissions_and_which_translation() {
        let site = FaultSite {
            kind: FaultKind::Permission,
            access: Access::USER_STORE,
            final_translation: true,
            perms: Perms::R | Perms::X,
        };
        let want = EptQual::WRITE
            | EptQual::READABLE
            | EptQual::EXECUTABLE
            | EptQual::GLA_VALID
            | EptQual::FINAL_TRANSLATION;
        assert_eq!(cause(site), ArchCause::EptViolation(EptQual(want)));
        let walk = FaultSite {
            kind: FaultKind::NotPresent,
            access: Access::USER_LOAD,
            final_translation: false,
            perms: Perms::empty(),
        };
        assert_eq!(
            cause(walk),
            ArchCause::EptViolation(EptQual(EptQual::READ | EptQual::GLA_VALID))
        );
        assert_eq!(cause(FaultSite { kind: FaultKind::Reserved, ..walk }), ArchCause::EptMisconfig);
    }
}
