//! RISC-V Sv39/Sv48/Sv57 entries and their x4 G-stage use (priv spec "Supervisor-Level ISA",
//! §"Sv32: Page-Based 32-bit Virtual-Memory Systems" for the algorithm, and the hypervisor
//! chapter for G-stage translation).

use bitflags::bitflags;

use super::entry::{
    Access, AccessKind, Decoded, FaultKind, FaultSite, LeafAttrs, Perms, Privilege, Regime,
};
use super::format::Stage;
use crate::addr::{bits, Level, PAGE_SHIFT};

bitflags! {
    /// RISC-V PTE bits 9:0 and the high attribute bits.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct RvPte: u64 {
        /// V: the entry is valid.
        const V = 1 << 0;
        /// R: readable.
        const R = 1 << 1;
        /// W: writable.
        const W = 1 << 2;
        /// X: executable.
        const X = 1 << 3;
        /// U: accessible to user mode.
        const U = 1 << 4;
        /// G: global mapping.
        const G = 1 << 5;
        /// A: accessed.
        const A = 1 << 6;
        /// D: dirty.
        const D = 1 << 7;
        /// RSW: reserved for supervisor software, ignored by hardware.
        const RSW = 0b11 << 8;
        /// Bits 60:54, reserved: must be zero.
        const RESERVED = 0x7f << 54;
        /// PBMT (Svpbmt) page-based memory type.
        const PBMT = 0b11 << 61;
        /// N (Svnapot): NAPOT contiguity.
        const N = 1 << 63;
    }
}

/// PPN field: bits 53:10 (44 bits).
const PPN_SHIFT: u32 = 10;
const PPN_MASK: u64 = ((1 << 44) - 1) << PPN_SHIFT;

#[inline]
fn ppn(raw: u64) -> u64 {
    (raw & PPN_MASK) >> PPN_SHIFT
}

/// Decodes one entry (priv spec §4.3.2, steps 3–5). Svpbmt is implemented (PBMT=3 is reserved);
/// Svnapot is not (N=1 is reserved) — an assumption that matches a plain Sv39 core.
#[inline]
pub fn decode(raw: u64, level: Level, stage: Stage) -> Result<Decoded, FaultKind> {
    let pte = RvPte::from_bits_retain(raw);
    // Step 3: V=0 -> page fault.
    if !pte.contains(RvPte::V) {
        return Ok(Decoded::Invalid);
    }
    // Step 3: R=0 with W=1 is reserved.
    if !pte.contains(RvPte::R) && pte.contains(RvPte::W) {
        return Err(FaultKind::Reserved);
    }
    // Step 3: reserved bits 60:54, the reserved PBMT encoding, N without Svnapot.
    if pte.intersects(RvPte::RESERVED | RvPte::N) || bits(raw, 62, 61) == 3 {
        return Err(FaultKind::Reserved);
    }
    let base = ppn(raw) << PAGE_SHIFT;
    if !pte.intersects(RvPte::R | RvPte::X) {
        // Step 4: a pointer. D, A, U, N and PBMT are reserved in non-leaf entries.
        if pte.intersects(RvPte::D | RvPte::A | RvPte::U | RvPte::PBMT) {
            return Err(FaultKind::Reserved);
        }
        // Step 4: a pointer at level 0 (i < 0 after decrement) -> page fault.
        if level == Level::L0 {
            return Err(FaultKind::NotPresent);
        }
        let global = stage == Stage::First && pte.contains(RvPte::G);
        return Ok(Decoded::Table { next: base, perms: Perms::all(), global, accessed: true });
    }
    // Step 5: a superpage's low PPN fields must be zero.
    let low_ppn_bits = 9 * level.index();
    if ppn(raw) & ((1u64 << low_ppn_bits) - 1) != 0 {
        return Err(FaultKind::MisalignedSuperpage);
    }
    let mut perms = Perms::empty();
    perms.set(Perms::R, pte.contains(RvPte::R));
    perms.set(Perms::W, pte.contains(RvPte::W));
    perms.set(Perms::X, pte.contains(RvPte::X));
    perms.set(Perms::U, pte.contains(RvPte::U));
    Ok(Decoded::Leaf {
        base,
        attrs: LeafAttrs {
            perms,
            // Hypervisor spec: the G bit of G-stage entries is ignored.
            global: stage == Stage::First && pte.contains(RvPte::G),
            accessed: pte.contains(RvPte::A),
            dirty: pte.contains(RvPte::D),
        },
    })
}

/// Steps 6 and 8 of the translation algorithm for first-stage tables; for G-stage tables every
/// access is checked as a user-mode access (hypervisor spec, "Guest Physical Address Translation").
#[inline]
pub fn check_permissions(
    perms: Perms,
    access: Access,
    regime: &Regime,
    stage: Stage,
) -> Result<(), FaultKind> {
    let privilege = match stage {
        Stage::First => access.privilege,
        Stage::Nested => Privilege::User,
    };
    // Step 6: the U bit against the current privilege.
    match privilege {
        Privilege::User if !perms.contains(Perms::U) => return Err(FaultKind::Permission),
        // S-mode may never execute user pages; loads/stores need SUM.
        Privilege::Supervisor
            if perms.contains(Perms::U) && (access.kind == AccessKind::Fetch || !regime.sum) =>
        {
            return Err(FaultKind::Permission)
        }
        _ => {}
    }
    // Step 8: R/W/X against the access type (MXR makes X-only pages readable).
    let allowed = match access.kind {
        AccessKind::Fetch => perms.contains(Perms::X),
        AccessKind::Load => perms.contains(Perms::R) || (regime.mxr && perms.contains(Perms::X)),
        AccessKind::Store => perms.contains(Perms::W),
    };
    if allowed {
        Ok(())
    } else {
        Err(FaultKind::Permission)
    }
}

/// Encodes a non-leaf entry.
pub fn encode_table(next: u64) -> u64 {
    ((next >> PAGE_SHIFT) << PPN_SHIFT) | RvPte::V.bits()
}

/// Encodes a leaf entry.
pub fn encode_leaf(base: u64, attrs: LeafAttrs) -> u64 {
    let mut pte = RvPte::V;
    pte.set(RvPte::R, attrs.perms.contains(Perms::R));
    pte.set(RvPte::W, attrs.perms.contains(Perms::W));
    pte.set(RvPte::X, attrs.perms.contains(Perms::X));
    pte.set(RvPte::U, attrs.perms.contains(Perms::U));
    pte.set(RvPte::G, attrs.global);
    pte.set(RvPte::A, attrs.accessed);
    pte.set(RvPte::D, attrs.dirty);
    ((base >> PAGE_SHIFT) << PPN_SHIFT) | pte.bits()
}

/// Sets A (and D) in a leaf.
pub fn with_accessed_dirty(raw: u64, dirty: bool) -> u64 {
    let mut v = raw | RvPte::A.bits();
    if dirty {
        v |= RvPte::D.bits();
    }
    v
}

/// The exception code: page faults 12/13/15, guest-page faults 20/21/23, access faults 1/5/7.
pub fn cause_code(site: FaultSite, stage: Stage) -> u8 {
    let (fetch, load, store) = match (site.kind, stage) {
        (FaultKind::AccessFault, _) => (1, 5, 7),
        (_, Stage::First) => (12, 13, 15),
        (_, Stage::Nested) => (20, 21, 23),
    };
    match site.access.kind {
        AccessKind::Fetch => fetch,
        AccessKind::Load => load,
        AccessKind::Store => store,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The PTE that maps PPN 0x80200 read-write-execute with A and D set, as the spec lays it out:
    /// PPN in 53:10, flags DAGUXWRV = 1100_1111.
    const RWX_AD_PTE: u64 = (0x80200 << 10) | 0xcf;

    #[test]
    fn leaf_fields_decode_as_the_spec_figure_lays_them_out() {
        let d = decode(RWX_AD_PTE, Level::L0, Stage::First).unwrap();
        let Decoded::Leaf { base, attrs } = d else { panic!("expected a leaf, got {d:?}") };
        assert_eq!(base, 0x8020_0000);
        assert_eq!(attrs.perms, Perms::R | Perms::W | Perms::X);
        assert!(attrs.accessed && attrs.dirty && !attrs.global);
    }

    #[test]
    fn write_without_read_is_reserved() {
        assert_eq!(decode(0x5, Level::L0, Stage::First), Err(FaultKind::Reserved));
        // W+X without R is reserved too.
        assert_eq!(decode(0xd, Level::L0, Stage::First), Err(FaultKind::Reserved));
    }

    #[test]
    fn reserved_high_bits_and_napot_fault() {
        assert_eq!(decode(RWX_AD_PTE | 1 << 54, Level::L0, Stage::First), Err(FaultKind::Reserved));
        assert_eq!(decode(RWX_AD_PTE | 1 << 60, Level::L0, Stage::First), Err(FaultKind::Reserved));
        assert_eq!(decode(RWX_AD_PTE | 1 << 63, Level::L0, Stage::First), Err(FaultKind::Reserved));
        assert_eq!(decode(RWX_AD_PTE | 3 << 61, Level::L0, Stage::First), Err(FaultKind::Reserved));
        // PBMT=NC on a leaf is legal; on a pointer it is reserved.
        assert!(decode(RWX_AD_PTE | 1 << 61, Level::L0, Stage::First).is_ok());
        assert_eq!(
            decode(encode_table(0x1000) | 1 << 61, Level::L1, Stage::First),
            Err(FaultKind::Reserved)
        );
        // RSW is ignored.
        assert!(decode(RWX_AD_PTE | 0x300, Level::L0, Stage::First).is_ok());
    }

    #[test]
    fn pointer_with_a_d_or_u_is_reserved() {
        let ptr = encode_table(0x8000_1000);
        for bit in [RvPte::A, RvPte::D, RvPte::U] {
            assert_eq!(decode(ptr | bit.bits(), Level::L2, Stage::First), Err(FaultKind::Reserved));
        }
        assert_eq!(
            decode(ptr, Level::L2, Stage::First),
            Ok(Decoded::Table {
                next: 0x8000_1000,
                perms: Perms::all(),
                global: false,
                accessed: true
            })
        );
    }

    #[test]
    fn pointer_at_level_zero_is_a_page_fault() {
        assert_eq!(
            decode(encode_table(0x1000), Level::L0, Stage::First),
            Err(FaultKind::NotPresent)
        );
    }

    #[test]
    fn superpages_must_be_physically_aligned() {
        let attrs = LeafAttrs::new(Perms::R | Perms::W);
        // A 2 MiB leaf whose PPN[0] is non-zero.
        let misaligned = encode_leaf(0x8020_1000, attrs);
        assert_eq!(
            decode(misaligned, Level::L1, Stage::First),
            Err(FaultKind::MisalignedSuperpage)
        );
        assert!(decode(encode_leaf(0x8020_0000, attrs), Level::L1, Stage::First).is_ok());
        // 1 GiB needs PPN[1:0] zero.
        assert_eq!(
            decode(encode_leaf(0x8020_0000, attrs), Level::L2, Stage::First),
            Err(FaultKind::MisalignedSuperpage)
        );
        assert!(decode(encode_leaf(0x4000_0000, attrs), Level::L2, Stage::First).is_ok());
    }

    #[test]
    fn user_bit_rules_follow_step_six() {
        let regime = Regime::default();
        let user_rw = Perms::R | Perms::W | Perms::U;
        let kernel_rwx = Perms::R | Perms::W | Perms::X;
        let first = Stage::First;
        assert!(check_permissions(user_rw, Access::USER_LOAD, &regime, first).is_ok());
        assert!(check_permissions(kernel_rwx, Access::USER_LOAD, &regime, first).is_err());
        // Supervisor load of a user page needs SUM.
        assert!(check_permissions(user_rw, Access::KERNEL_LOAD, &regime, first).is_err());
        let sum = Regime { sum: true, ..regime };
        assert!(check_permissions(user_rw, Access::KERNEL_LOAD, &sum, first).is_ok());
        // ... and never executes it, SUM or not.
        let fetch = Access { kind: AccessKind::Fetch, privilege: Privilege::Supervisor };
        assert!(check_permissions(user_rw | Perms::X, fetch, &sum, first).is_err());
    }

    #[test]
    fn g_stage_checks_every_access_as_user() {
        let regime = Regime::default();
        let no_u = Perms::R | Perms::W | Perms::X;
        assert!(check_permissions(no_u, Access::KERNEL_LOAD, &regime, Stage::Nested).is_err());
        assert!(
            check_permissions(no_u | Perms::U, Access::KERNEL_LOAD, &regime, Stage::Nested).is_ok()
        );
    }

    #[test]
    fn mxr_makes_execute_only_pages_readable() {
        let x_only = Perms::X | Perms::U;
        let regime = Regime::default();
        assert!(check_permissions(x_only, Access::USER_LOAD, &regime, Stage::First).is_err());
        let mxr = Regime { mxr: true, ..regime };
        assert!(check_permissions(x_only, Access::USER_LOAD, &mxr, Stage::First).is_ok());
    }

    #[test]
    fn causes_are_12_13_15_and_20_21_23() {
        let site = |kind, access| FaultSite {
            kind,
            access,
            final_translation: true,
            perms: Perms::empty(),
        };
        let fetch = Access::USER_FETCH;
        assert_eq!(cause_code(site(FaultKind::NotPresent, fetch), Stage::First), 12);
        assert_eq!(cause_code(site(FaultKind::NotPresent, Access::USER_LOAD), Stage::First), 13);
        assert_eq!(cause_code(site(FaultKind::Permission, Access::USER_STORE), Stage::First), 15);
        assert_eq!(cause_code(site(FaultKind::NotPresent, fetch), Stage::Nested), 20);
        assert_eq!(cause_code(site(FaultKind::NotPresent, Access::USER_LOAD), Stage::Nested), 21);
        assert_eq!(cause_code(site(FaultKind::Reserved, Access::USER_STORE), Stage::Nested), 23);
        assert_eq!(cause_code(site(FaultKind::AccessFault, Access::USER_LOAD), Stage::Nested), 5);
    }

    #[test]
    fn encode_decode_round_trips() {
        for perms in [Perms::R, Perms::R | Perms::W, Perms::X, Perms::R | Perms::X | Perms::U] {
            let attrs = LeafAttrs { perms, global: true, accessed: false, dirty: false };
            let raw = encode_leaf(0x1234_5000, attrs);
            assert_eq!(
                decode(raw, Level::L0, Stage::First),
                Ok(Decoded::Leaf { base: 0x1234_5000, attrs })
            );
        }
    }
}
