//! x86-64 4- and 5-level paging entries (Intel SDM Vol. 3A ch. 4; Linux `pgtable_types.h`).

use bitflags::bitflags;

use super::entry::{
    Access, AccessKind, ArchCause, Decoded, FaultKind, FaultSite, LeafAttrs, Perms, Pfec,
    Privilege, Regime,
};
use crate::addr::{bits, Level};

bitflags! {
    /// x86-64 paging-structure entry bits.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct X86Pte: u64 {
        /// P: present.
        const P = 1 << 0;
        /// R/W: writes allowed.
        const RW = 1 << 1;
        /// U/S: user-mode accessible.
        const US = 1 << 2;
        /// PWT: page-level write-through.
        const PWT = 1 << 3;
        /// PCD: page-level cache disable.
        const PCD = 1 << 4;
        /// A: accessed.
        const A = 1 << 5;
        /// D: dirty (leaves only).
        const D = 1 << 6;
        /// PS: page size in a PDE/PDPTE (PAT in a 4 KiB PTE).
        const PS = 1 << 7;
        /// G: global (leaves only).
        const G = 1 << 8;
        /// AVL: ignored, available to software.
        const AVL = 0b111 << 9;
        /// PAT of a 2 MiB/1 GiB leaf.
        const PAT_LARGE = 1 << 12;
        /// Protection key (leaves).
        const PKEY = 0xf << 59;
        /// XD: execute-disable (EFER.NXE=1).
        const XD = 1 << 63;
    }
}

/// Physical-address width. Assumption: 46 bits, as on Skylake-server parts; bits 51:46 of an
/// address field are reserved.
pub const MAXPHYADDR: u32 = 46;

/// Address field of a table pointer or 4 KiB leaf: bits MAXPHYADDR-1:12.
const ADDR_MASK: u64 = ((1 << MAXPHYADDR) - 1) & !0xfff;
/// Reserved address bits 51:MAXPHYADDR.
const RESERVED_HIGH: u64 = ((1 << 52) - 1) & !((1 << MAXPHYADDR) - 1);

/// Decodes one entry (SDM §4.5, Tables 4-15 to 4-20).
pub fn decode(raw: u64, level: Level) -> Result<Decoded, FaultKind> {
    let e = X86Pte::from_bits_retain(raw);
    // Not present: every other bit is ignored.
    if !e.contains(X86Pte::P) {
        return Ok(Decoded::Invalid);
    }
    // Reserved: address bits above MAXPHYADDR.
    if raw & RESERVED_HIGH != 0 {
        return Err(FaultKind::Reserved);
    }
    let mut perms = Perms::R;
    perms.set(Perms::W, e.contains(X86Pte::RW));
    perms.set(Perms::U, e.contains(X86Pte::US));
    perms.set(Perms::X, !e.contains(X86Pte::XD));
    let leaf = match level {
        Level::L0 => true,
        Level::L1 | Level::L2 => e.contains(X86Pte::PS),
        // PS is reserved in a PML4E/PML5E.
        Level::L3 | Level::L4 => {
            if e.contains(X86Pte::PS) {
                return Err(FaultKind::Reserved);
            }
            false
        }
    };
    if !leaf {
        return Ok(Decoded::Table {
            next: raw & ADDR_MASK,
            perms,
            global: false,
            accessed: e.contains(X86Pte::A),
        });
    }
    // A 2 MiB leaf's address starts at bit 21 and a 1 GiB leaf's at bit 30: bits 20:13 / 29:13
    // between PAT (bit 12) and the address are reserved.
    if level != Level::L0 && bits(raw, level.shift() - 1, 13) != 0 {
        return Err(FaultKind::Reserved);
    }
    let base = raw & ADDR_MASK & !((1u64 << level.shift()) - 1);
    Ok(Decoded::Leaf {
        base,
        attrs: LeafAttrs {
            perms,
            global: e.contains(X86Pte::G),
            accessed: e.contains(X86Pte::A),
            dirty: e.contains(X86Pte::D),
        },
    })
}

/// Access rights (SDM §4.6), one rule per line.
pub fn check_permissions(perms: Perms, access: Access, regime: &Regime) -> Result<(), FaultKind> {
    let user_page = perms.contains(Perms::U);
    match access.privilege {
        // SDM 4.6: user-mode accesses need U/S=1 at every level.
        Privilege::User if !user_page => return Err(FaultKind::Permission),
        // SDM 4.6 (SMEP, assumed on): no supervisor fetch from user pages.
        Privilege::Supervisor if user_page && access.kind == AccessKind::Fetch => {
            return Err(FaultKind::Permission)
        }
        // SDM 4.6 (SMAP, assumed on unless `sum`, i.e. EFLAGS.AC=1): no supervisor data access.
        Privilege::Supervisor if user_page && !regime.sum => return Err(FaultKind::Permission),
        _ => {}
    }
    match access.kind {
        // SDM 4.6 (CR0.WP=1 assumed): writes need R/W=1 at every level, supervisor too.
        AccessKind::Store if !perms.contains(Perms::W) => Err(FaultKind::Permission),
        // SDM 4.6 (EFER.NXE=1): fetches need XD=0 at every level.
        AccessKind::Fetch if !perms.contains(Perms::X) => Err(FaultKind::Permission),
        _ => Ok(()),
    }
}

/// A pointer entry: P|RW|US|A, as Linux's `_PAGE_TABLE`, so tables never restrict.
pub fn encode_table(next: u64) -> u64 {
    (next & ADDR_MASK) | (X86Pte::P | X86Pte::RW | X86Pte::US | X86Pte::A).bits()
}

/// A leaf at `level` (PS set at levels 1 and 2).
pub fn encode_leaf(base: u64, level: Level, attrs: LeafAttrs) -> u64 {
    let mut e = X86Pte::P;
    e.set(X86Pte::RW, attrs.perms.contains(Perms::W));
    e.set(X86Pte::US, attrs.perms.contains(Perms::U));
    e.set(X86Pte::XD, !attrs.perms.contains(Perms::X));
    e.set(X86Pte::G, attrs.global);
    e.set(X86Pte::A, attrs.accessed);
    e.set(X86Pte::D, attrs.dirty);
    e.set(X86Pte::PS, level != Level::L0);
    (base & ADDR_MASK) | e.bits()
}

/// Sets A (and D).
pub fn with_accessed_dirty(raw: u64, dirty: bool) -> u64 {
    raw | X86Pte::A.bits() | if dirty { X86Pte::D.bits() } else { 0 }
}

/// #PF with its error code (SDM §4.7), or #GP for a non-canonical address.
pub fn cause(site: FaultSite) -> ArchCause {
    let mut code = 0;
    match site.kind {
        FaultKind::NonCanonical => return ArchCause::X86GeneralProtection,
        FaultKind::NotPresent => {}
        FaultKind::Reserved | FaultKind::MisalignedSuperpage => code |= Pfec::P | Pfec::RSVD,
        // Access faults and A/D faults do not exist in x86 paging; report a protection #PF.
        FaultKind::Permission | FaultKind::AccessedDirty | FaultKind::AccessFault => {
            code |= Pfec::P
        }
    }
    if site.access.kind == AccessKind::Store {
        code |= Pfec::W;
    }
    if site.access.privilege == Privilege::User {
        code |= Pfec::U;
    }
    if site.access.kind == AccessKind::Fetch {
        code |= Pfec::I;
    }
    ArchCause::X86PageFault(Pfec(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4 KiB user read-write page at 0x1234_5000, accessed and dirty: P|RW|US|A|D = 0x67, XD.
    const USER_RW_PTE: u64 = 0x8000_0000_1234_5067;

    #[test]
    fn a_4k_user_page_decodes_as_the_sdm_lays_it_out() {
        let Ok(Decoded::Leaf { base, attrs }) = decode(USER_RW_PTE, Level::L0) else { panic!() };
        assert_eq!(base, 0x1234_5000);
        assert_eq!(attrs.perms, Perms::R | Perms::W | Perms::U);
        assert!(attrs.accessed && attrs.dirty && !attrs.global);
        let rw_user = LeafAttrs::new(Perms::R | Perms::W | Perms::U);
        assert_eq!(encode_leaf(0x1234_5000, Level::L0, rw_user), USER_RW_PTE);
    }

    #[test]
    fn ps_makes_2m_and_1g_leaves_and_is_reserved_in_pml4e() {
        let two_m = encode_leaf(0x4020_0000, Level::L1, LeafAttrs::new(Perms::R | Perms::X));
        assert_eq!(two_m & X86Pte::PS.bits(), X86Pte::PS.bits());
        assert!(matches!(decode(two_m, Level::L1), Ok(Decoded::Leaf { base: 0x4020_0000, .. })));
        let one_g = encode_leaf(0x8000_0000, Level::L2, LeafAttrs::new(Perms::R));
        assert!(matches!(decode(one_g, Level::L2), Ok(Decoded::Leaf { base: 0x8000_0000, .. })));
        assert_eq!(decode(0x1000 | 0x81, Level::L3), Err(FaultKind::Reserved));
        assert!(matches!(
            decode(encode_table(0x1000), Level::L3),
            Ok(Decoded::Table { next: 0x1000, .. })
        ));
    }

    #[test]
    fn reserved_bits_fault() {
        // Address bit 46 with MAXPHYADDR 46.
        assert_eq!(decode(USER_RW_PTE | 1 << 46, Level::L0), Err(FaultKind::Reserved));
        // A 2 MiB leaf with bit 13 set (between PAT and the address).
        let two_m = encode_leaf(0x4020_0000, Level::L1, LeafAttrs::new(Perms::R));
        assert_eq!(decode(two_m | 1 << 13, Level::L1), Err(FaultKind::Reserved));
        assert!(decode(two_m | X86Pte::PAT_LARGE.bits(), Level::L1).is_ok(), "bit 12 is PAT");
        let one_g = encode_leaf(0x4000_0000, Level::L2, LeafAttrs::new(Perms::R));
        assert_eq!(decode(one_g | 1 << 29, Level::L2), Err(FaultKind::Reserved));
        // Ignored bits are ignored.
        assert!(decode(USER_RW_PTE | X86Pte::AVL.bits() | 1 << 52, Level::L0).is_ok());
    }

    #[test]
    fn permission_rules_follow_sdm_4_6() {
        let regime = Regime::default();
        let user_ro = Perms::R | Perms::U | Perms::X;
        assert!(check_permissions(user_ro, Access::USER_LOAD, &regime).is_ok());
        assert!(check_permissions(user_ro, Access::USER_STORE, &regime).is_err());
        assert!(check_permissions(Perms::R | Perms::W, Access::USER_LOAD, &regime).is_err());
        assert!(check_permissions(Perms::R, Access::KERNEL_STORE, &regime).is_err(), "CR0.WP=1");
        assert!(check_permissions(user_ro, Access::KERNEL_LOAD, &regime).is_err(), "SMAP");
        assert!(check_permissions(user_ro, Access::KERNEL_LOAD, &Regime { sum: true, ..regime })
            .is_ok());
        let kfetch = Access { kind: AccessKind::Fetch, privilege: Privilege::Supervisor };
        assert!(
            check_permissions(user_ro, kfetch, &Regime { sum: true, ..regime }).is_err(),
            "SMEP"
        );
        assert!(check_permissions(Perms::R | Perms::U, Access::USER_FETCH, &regime).is_err(), "XD");
    }

    #[test]
    fn error_codes_carry_p_w_u_rsvd_i() {
        let site = |kind, access| FaultSite {
            kind,
            access,
            final_translation: true,
            perms: Perms::empty(),
        };
        let code = |kind, access| match cause(site(kind, access)) {
            ArchCause::X86PageFault(Pfec(c)) => c,
            other => panic!("{other:?}"),
        };
        assert_eq!(code(FaultKind::NotPresent, Access::USER_LOAD), Pfec::U);
        assert_eq!(code(FaultKind::Permission, Access::USER_STORE), Pfec::P | Pfec::W | Pfec::U);
        assert_eq!(code(FaultKind::Reserved, Access::KERNEL_LOAD), Pfec::P | Pfec::RSVD);
        assert_eq!(code(FaultKind::NotPresent, Access::USER_FETCH), Pfec::U | Pfec::I);
        assert_eq!(
            cause(site(FaultKind::NonCanonical, Access::USER_LOAD)),
            ArchCause::X86GeneralProtection
        );
    }

    #[test]
    fn accessed_and_dirty_are_set_by_the_update() {
        let clean = encode_leaf(
            0x5000,
            Level::L0,
            LeafAttrs { perms: Perms::R, global: false, accessed: false, dirty: false },
        );
        assert_eq!(with_accessed_dirty(clean, false), clean | X86Pte::A.bits());
        assert_eq!(with_accessed_dirty(clean, true), clean | (X86Pte::A | X86Pte::D).bits());
    }
}
