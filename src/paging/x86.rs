//! x86-64 4- and 5-level paging entries (Intel SDM Vol. 3A ch. 4 "Paging": §4.5 for the entry
//! formats, §4.6 for access rights, §4.7 for the #PF error code; bit names as in Linux
//! `arch/x86/include/asm/pgtable_types.h`).
//!
//! The control-register state the rules depend on is fixed, not configurable:
//! - IA32_EFER.NXE = 1: bit 63 is XD, a permission bit, never a reserved bit;
//! - CR0.WP = 1: read-only pages are read-only to the supervisor too (Linux requires it);
//! - CR4.SMEP = 1 and CR4.SMAP = 1, with EFLAGS.AC modelled by [`Regime::sum`];
//! - CR4.PKE = CR4.PKS = 0: protection keys (bits 62:59) are ignored;
//! - 1 GiB pages are supported (CPUID.80000001H:EDX.Page1GB = 1);
//! - MAXPHYADDR is [`MAXPHYADDR`].

use bitflags::bitflags;

use super::entry::{
    Access, AccessKind, ArchCause, Decoded, FaultKind, FaultSite, LeafAttrs, Perms, Pfec,
    Privilege, Regime,
};
use crate::addr::{bits, Level, PAGE_SHIFT};

bitflags! {
    /// x86-64 paging-structure entry bits (PML5E, PML4E, PDPTE, PDE, PTE).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct X86Pte: u64 {
        /// P: present; when clear every other bit is ignored.
        const P = 1 << 0;
        /// R/W: writes allowed to the region this entry controls.
        const RW = 1 << 1;
        /// U/S: user-mode (CPL 3) accesses allowed to the region this entry controls.
        const US = 1 << 2;
        /// PWT: page-level write-through (memory-type index bit 0).
        const PWT = 1 << 3;
        /// PCD: page-level cache disable (memory-type index bit 1).
        const PCD = 1 << 4;
        /// A: accessed; set by the walker in every entry it uses.
        const A = 1 << 5;
        /// D: dirty; set in the leaf on a write, ignored in table entries.
        const D = 1 << 6;
        /// PS: maps a page in a PDE (2 MiB) or PDPTE (1 GiB); PAT index bit 2 in a PTE (L0).
        const PS = 1 << 7;
        /// G: global translation (leaves only, with CR4.PGE=1); ignored in table entries.
        const G = 1 << 8;
        /// AVL: bits 11:9, ignored by hardware and available to software.
        const AVL = 0b111 << 9;
        /// PAT: PAT index bit 2 of a 2 MiB or 1 GiB leaf (an address bit everywhere else).
        const PAT_LARGE = 1 << 12;
        /// PKEY: protection key, bits 62:59 of a leaf (ignored here: CR4.PKE = CR4.PKS = 0).
        const PKEY = 0xf << 59;
        /// XD: execute-disable for the region this entry controls (IA32_EFER.NXE = 1).
        const XD = 1 << 63;
    }
}

/// Physical-address width in bits. Assumption: 46, as reported by CPUID.80000008H:EAX bits 7:0 on
/// Skylake-server parts; address bits 51:46 of every entry are therefore reserved.
pub const MAXPHYADDR: u32 = 46;

/// Highest bit of the architectural address field (SDM 4.5: bits 51:12, MAXPHYADDR at most 52).
pub(super) const ADDR_FIELD_HI: u32 = 51;
/// Lowest address bit of a 2 MiB or 1 GiB leaf that must be zero: bit 12 below it is PAT.
const LARGE_RESERVED_LO: u32 = 13;
/// Bits 51:MAXPHYADDR: address bits beyond the physical-address width, reserved in every entry.
pub(super) const RESERVED_ADDR: u64 = mask(ADDR_FIELD_HI, MAXPHYADDR);

/// A mask of bits `hi..=lo`.
pub(super) const fn mask(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

/// The physical address held by an entry whose address field starts at bit `lo` (12 for tables
/// and 4 KiB pages, 21 for 2 MiB pages, 30 for 1 GiB pages). Call after the reserved-bit checks.
#[inline]
pub(super) const fn address(raw: u64, lo: u32) -> u64 {
    raw & mask(MAXPHYADDR - 1, lo)
}

/// The rights one present entry grants (SDM 4.6): reads always, writes with R/W, user access
/// with U/S, fetches unless XD. The walker ANDs them over the levels.
#[inline]
fn entry_perms(e: X86Pte) -> Perms {
    let mut perms = Perms::R;
    perms.set(Perms::W, e.contains(X86Pte::RW));
    perms.set(Perms::U, e.contains(X86Pte::US));
    perms.set(Perms::X, !e.contains(X86Pte::XD));
    perms
}

/// Decodes one entry read at `level` (SDM 4.5 and its entry-format tables). Reserved bits give
/// [`FaultKind::Reserved`]; a superpage's misaligned address shows up as reserved bits 20:13 or
/// 29:13, so x86 never reports [`FaultKind::MisalignedSuperpage`].
// Always inlined: left to itself the compiler calls it out of line from the walker, whose
// per-entry decode is meant to be a static, inlined call (`entry::EntryRules`).
#[inline(always)]
pub fn decode(raw: u64, level: Level) -> Result<Decoded, FaultKind> {
    let e = X86Pte::from_bits_retain(raw);
    // SDM 4.5: P=0 maps nothing; every other bit is ignored.
    if !e.contains(X86Pte::P) {
        return Ok(Decoded::Invalid);
    }
    // SDM 4.5: bits 51:MAXPHYADDR are reserved in every entry.
    if raw & RESERVED_ADDR != 0 {
        return Err(FaultKind::Reserved);
    }
    let leaf = match level {
        // SDM 4.5: a PTE always maps a 4 KiB page; its bit 7 is PAT, not PS.
        Level::L0 => true,
        // SDM 4.5: a PDE or PDPTE with PS=1 maps a 2 MiB or 1 GiB page.
        Level::L1 | Level::L2 => e.contains(X86Pte::PS),
        // SDM 4.5: PS is reserved (must be 0) in a PML4E and a PML5E.
        Level::L3 | Level::L4 if e.contains(X86Pte::PS) => return Err(FaultKind::Reserved),
        Level::L3 | Level::L4 => false,
    };
    let perms = entry_perms(e);
    if !leaf {
        // SDM 4.5: D and G are ignored in entries that reference a table.
        return Ok(Decoded::Table {
            next: address(raw, PAGE_SHIFT),
            perms,
            global: false,
            accessed: e.contains(X86Pte::A),
        });
    }
    // SDM 4.5: a 2 MiB page's address starts at bit 21 and a 1 GiB page's at bit 30; the bits
    // between PAT (bit 12) and the address, 20:13 or 29:13, are reserved.
    if level != Level::L0 && bits(raw, level.shift() - 1, LARGE_RESERVED_LO) != 0 {
        return Err(FaultKind::Reserved);
    }
    Ok(Decoded::Leaf {
        base: address(raw, level.shift()),
        attrs: LeafAttrs {
            perms,
            global: e.contains(X86Pte::G),
            accessed: e.contains(X86Pte::A),
            dirty: e.contains(X86Pte::D),
        },
    })
}

/// Access rights (SDM 4.6) for `perms` already ANDed over the levels, one rule per line in the
/// order the SDM lists them. SMEP, SMAP and CR0.WP are assumed on (see the module header).
#[inline]
pub fn check_permissions(perms: Perms, access: Access, regime: &Regime) -> Result<(), FaultKind> {
    let user_page = perms.contains(Perms::U);
    let supervisor = access.privilege == Privilege::Supervisor;
    // SDM 4.6: user-mode accesses need U/S=1 at every level.
    if access.privilege == Privilege::User && !user_page {
        return Err(FaultKind::Permission);
    }
    // SDM 4.6: with CR4.SMEP=1 the supervisor may not fetch from a user page.
    if supervisor && user_page && access.kind == AccessKind::Fetch {
        return Err(FaultKind::Permission);
    }
    // SDM 4.6: with CR4.SMAP=1 the supervisor may not read or write a user page unless
    // EFLAGS.AC=1 (`regime.sum`).
    if supervisor && user_page && !regime.sum {
        return Err(FaultKind::Permission);
    }
    // SDM 4.6: writes need R/W=1 at every level; with CR0.WP=1 that binds the supervisor too.
    if access.kind == AccessKind::Store && !perms.contains(Perms::W) {
        return Err(FaultKind::Permission);
    }
    // SDM 4.6: with IA32_EFER.NXE=1 fetches need XD=0 at every level.
    if access.kind == AccessKind::Fetch && !perms.contains(Perms::X) {
        return Err(FaultKind::Permission);
    }
    // SDM 4.6: a present translation is always readable.
    Ok(())
}

/// Encodes an entry referencing the table at `next`: P|RW|US|A, as Linux's `_PAGE_TABLE`, so
/// that table entries never restrict the AND over the levels. Address bits 51:MAXPHYADDR are
/// kept, as in [`encode_leaf`].
pub fn encode_table(next: u64) -> u64 {
    (next & mask(ADDR_FIELD_HI, PAGE_SHIFT))
        | (X86Pte::P | X86Pte::RW | X86Pte::US | X86Pte::A).bits()
}

/// Encodes a leaf at `level` mapping `base`, which must be aligned to the level's page size:
/// bits below the level's address field have no place in the entry and are dropped (bit 12 is
/// PAT at L1/L2). Address bits 51:MAXPHYADDR are kept so that [`decode`] reports a too-wide
/// address as reserved instead of mapping a truncated one.
pub fn encode_leaf(base: u64, level: Level, attrs: LeafAttrs) -> u64 {
    let mut e = X86Pte::P;
    e.set(X86Pte::RW, attrs.perms.contains(Perms::W));
    e.set(X86Pte::US, attrs.perms.contains(Perms::U));
    e.set(X86Pte::G, attrs.global);
    e.set(X86Pte::A, attrs.accessed);
    e.set(X86Pte::D, attrs.dirty);
    e.set(X86Pte::XD, !attrs.perms.contains(Perms::X));
    // PS above L0 (bit 7 is PAT in a PTE); an impossible leaf at L3/L4 thus decodes as reserved.
    e.set(X86Pte::PS, level != Level::L0);
    (base & mask(ADDR_FIELD_HI, level.shift())) | e.bits()
}

/// Sets A, and D if `dirty`, as the walker's locked update does (SDM 4.8).
pub fn with_accessed_dirty(raw: u64, dirty: bool) -> u64 {
    let mut e = X86Pte::from_bits_retain(raw) | X86Pte::A;
    e.set(X86Pte::D, dirty || e.contains(X86Pte::D));
    e.bits()
}

/// The exception a fault raises: #GP for a non-canonical address (the canonical check precedes
/// paging, so it is never a #PF), else a #PF whose error code (SDM 4.7) says whether the entry
/// was present, whether a reserved bit was set, and what kind of access at what privilege
/// faulted.
#[cold]
pub fn cause(site: FaultSite) -> ArchCause {
    let mut code = match site.kind {
        FaultKind::NonCanonical => return ArchCause::X86GeneralProtection,
        FaultKind::NotPresent => 0,
        // Misaligned superpages are reserved-bit violations on x86 (bits 20:13 / 29:13).
        FaultKind::Reserved | FaultKind::MisalignedSuperpage => Pfec::P | Pfec::RSVD,
        // x86 paging has no access faults and sets A/D in hardware, so AccessFault and
        // AccessedDirty cannot arise; should a profile produce them, report a protection #PF.
        FaultKind::Permission | FaultKind::AccessFault | FaultKind::AccessedDirty => Pfec::P,
    };
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
    use proptest::prelude::*;

    use super::super::entry::AdPolicy;
    use super::*;

    /// A 4 KiB frame for the worked PTE.
    const FRAME_4K: u64 = 0x1234_5000;
    /// User read-write, not executable, accessed and dirty at [`FRAME_4K`], by hand:
    /// XD (bit 63) | address | D (0x40) | A (0x20) | U/S (0x4) | R/W (0x2) | P (0x1).
    const USER_RW_PTE: u64 = 0x8000_0000_1234_5067;
    /// A 2 MiB frame (0x201 × 2 MiB) for the worked PDE.
    const FRAME_2M: u64 = 0x4020_0000;
    /// Supervisor read-execute, global, accessed and dirty 2 MiB page at [`FRAME_2M`], by hand:
    /// address | G (0x100) | PS (0x80) | D (0x40) | A (0x20) | P (0x1); XD, U/S and R/W clear.
    const KERNEL_RX_GLOBAL_PDE: u64 = 0x4020_01e1;
    /// A 1 GiB frame (5 GiB) for the worked PDPTE.
    const FRAME_1G: u64 = 0x1_4000_0000;
    /// User read-only, not executable, accessed but clean 1 GiB page at [`FRAME_1G`], by hand:
    /// XD | address | PS (0x80) | A (0x20) | U/S (0x4) | P (0x1).
    const USER_RO_PDPTE: u64 = 0x8000_0001_4000_00a5;
    /// A page-table page for pointer entries.
    const TABLE: u64 = 0x7000;
    /// The lowest reserved bit of a 2 MiB or 1 GiB leaf: the one above PAT (bit 12).
    const FIRST_BIT_ABOVE_PAT: u32 = 13;
    /// `encode_table(TABLE)` by hand: address | A (0x20) | U/S | R/W | P.
    const TABLE_ENTRY: u64 = 0x7027;

    const USER_RW: Perms = Perms::R.union(Perms::W).union(Perms::U);
    const USER_RWX: Perms = USER_RW.union(Perms::X);
    const KERNEL_RWX: Perms = Perms::R.union(Perms::W).union(Perms::X);
    const KERNEL_FETCH: Access =
        Access { kind: AccessKind::Fetch, privilege: Privilege::Supervisor };
    const EVERY_ACCESS: [Access; 6] = [
        Access::USER_LOAD,
        Access::USER_STORE,
        Access::USER_FETCH,
        Access::KERNEL_LOAD,
        Access::KERNEL_STORE,
        KERNEL_FETCH,
    ];
    const SMAP_ON: Regime = Regime { sum: false, mxr: false, ad: AdPolicy::Hardware };
    const SMAP_OVERRIDDEN: Regime = Regime { sum: true, ..SMAP_ON };

    fn leaf(raw: u64, level: Level) -> (u64, LeafAttrs) {
        match decode(raw, level) {
            Ok(Decoded::Leaf { base, attrs }) => (base, attrs),
            other => panic!("{raw:#x} at {level:?}: expected a leaf, got {other:?}"),
        }
    }

    fn allowed(perms: Perms, access: Access, regime: &Regime) -> bool {
        match check_permissions(perms, access, regime) {
            Ok(()) => true,
            Err(FaultKind::Permission) => false,
            Err(other) => panic!("a permission check returned {other:?}"),
        }
    }

    fn site(kind: FaultKind, access: Access) -> FaultSite {
        FaultSite { kind, access, final_translation: true, perms: Perms::empty() }
    }

    fn pfec(kind: FaultKind, access: Access) -> u32 {
        match cause(site(kind, access)) {
            ArchCause::X86PageFault(Pfec(code)) => code,
            other => panic!("{kind:?} on {access:?}: expected a #PF, got {other:?}"),
        }
    }

    #[test]
    fn a_4k_user_read_write_pte_matches_the_hand_encoding() {
        assert_eq!(encode_leaf(FRAME_4K, Level::L0, LeafAttrs::new(USER_RW)), USER_RW_PTE);
        let (base, attrs) = leaf(USER_RW_PTE, Level::L0);
        assert_eq!(base, FRAME_4K);
        assert_eq!(attrs, LeafAttrs::new(USER_RW));
    }

    #[test]
    fn a_2m_pde_with_ps_matches_the_hand_encoding() {
        let attrs = LeafAttrs { global: true, ..LeafAttrs::new(Perms::R | Perms::X) };
        assert_eq!(encode_leaf(FRAME_2M, Level::L1, attrs), KERNEL_RX_GLOBAL_PDE);
        assert_eq!(leaf(KERNEL_RX_GLOBAL_PDE, Level::L1), (FRAME_2M, attrs));
    }

    #[test]
    fn a_1g_pdpte_with_ps_matches_the_hand_encoding() {
        let attrs = LeafAttrs { dirty: false, ..LeafAttrs::new(Perms::R | Perms::U) };
        assert_eq!(encode_leaf(FRAME_1G, Level::L2, attrs), USER_RO_PDPTE);
        assert_eq!(leaf(USER_RO_PDPTE, Level::L2), (FRAME_1G, attrs));
    }

    #[test]
    fn a_table_entry_is_p_rw_us_a_and_restricts_nothing() {
        assert_eq!(encode_table(TABLE), TABLE_ENTRY);
        for level in [Level::L1, Level::L2, Level::L3, Level::L4] {
            assert_eq!(
                decode(TABLE_ENTRY, level),
                Ok(Decoded::Table {
                    next: TABLE,
                    perms: Perms::all(),
                    global: false,
                    accessed: true
                })
            );
        }
    }

    #[test]
    fn table_entries_report_their_own_rights_and_accessed_bit_but_never_global() {
        // Read-only, supervisor, XD, not accessed, with the ignored G and D bits set.
        let raw = TABLE | (X86Pte::P | X86Pte::XD | X86Pte::G | X86Pte::D).bits();
        assert_eq!(
            decode(raw, Level::L3),
            Ok(Decoded::Table { next: TABLE, perms: Perms::R, global: false, accessed: false })
        );
    }

    #[test]
    fn not_present_entries_are_invalid_whatever_else_is_set() {
        for level in Level::ALL {
            assert_eq!(decode(!X86Pte::P.bits(), level), Ok(Decoded::Invalid));
            assert_eq!(decode(0, level), Ok(Decoded::Invalid));
        }
    }

    #[test]
    fn address_bits_51_to_maxphyaddr_are_reserved_at_every_level() {
        assert_eq!(MAXPHYADDR, 46);
        for bit in MAXPHYADDR..=ADDR_FIELD_HI {
            assert_eq!(decode(USER_RW_PTE | 1 << bit, Level::L0), Err(FaultKind::Reserved));
            assert_eq!(
                decode(KERNEL_RX_GLOBAL_PDE | 1 << bit, Level::L1),
                Err(FaultKind::Reserved)
            );
            assert_eq!(decode(USER_RO_PDPTE | 1 << bit, Level::L2), Err(FaultKind::Reserved));
            assert_eq!(decode(TABLE_ENTRY | 1 << bit, Level::L3), Err(FaultKind::Reserved));
            assert_eq!(decode(TABLE_ENTRY | 1 << bit, Level::L4), Err(FaultKind::Reserved));
        }
        // The highest implemented address bit is an address bit.
        let top = 1 << (MAXPHYADDR - 1);
        assert_eq!(leaf(USER_RW_PTE | top, Level::L0).0, FRAME_4K | top);
    }

    #[test]
    fn ps_in_a_pml4e_or_pml5e_is_reserved() {
        for level in [Level::L3, Level::L4] {
            assert_eq!(decode(TABLE_ENTRY | X86Pte::PS.bits(), level), Err(FaultKind::Reserved));
        }
    }

    #[test]
    fn ps_clear_in_a_pde_or_pdpte_references_a_table() {
        let ps = X86Pte::PS.bits();
        for (level, large, frame) in
            [(Level::L1, KERNEL_RX_GLOBAL_PDE, FRAME_2M), (Level::L2, USER_RO_PDPTE, FRAME_1G)]
        {
            let table = decode(large & !ps, level);
            assert!(matches!(table, Ok(Decoded::Table { next, .. }) if next == frame), "{table:?}");
        }
    }

    #[test]
    fn bits_20_to_13_of_a_2m_leaf_are_reserved() {
        for bit in FIRST_BIT_ABOVE_PAT..=20 {
            assert_eq!(
                decode(KERNEL_RX_GLOBAL_PDE | 1 << bit, Level::L1),
                Err(FaultKind::Reserved)
            );
        }
        // Bit 21 is the lowest address bit.
        assert_eq!(leaf(KERNEL_RX_GLOBAL_PDE | 1 << 21, Level::L1).0, FRAME_2M | 1 << 21);
    }

    #[test]
    fn bits_29_to_13_of_a_1g_leaf_are_reserved() {
        for bit in FIRST_BIT_ABOVE_PAT..=29 {
            assert_eq!(decode(USER_RO_PDPTE | 1 << bit, Level::L2), Err(FaultKind::Reserved));
        }
        // Bit 30 is the lowest address bit.
        assert_eq!(leaf(USER_RO_PDPTE | 1 << 30, Level::L2).0, FRAME_1G | 1 << 30);
    }

    #[test]
    fn bit_12_of_a_large_leaf_is_pat_not_address() {
        let pat = X86Pte::PAT_LARGE.bits();
        assert_eq!(leaf(KERNEL_RX_GLOBAL_PDE | pat, Level::L1).0, FRAME_2M);
        assert_eq!(leaf(USER_RO_PDPTE | pat, Level::L2).0, FRAME_1G);
        // In a PTE, bit 12 is an address bit.
        assert_eq!(leaf(USER_RW_PTE & !pat, Level::L0).0, FRAME_4K & !pat);
    }

    #[test]
    fn bit_7_of_a_pte_is_pat_and_bits_20_to_13_are_address() {
        let raw = USER_RW_PTE | X86Pte::PS.bits() | 1 << FIRST_BIT_ABOVE_PAT;
        assert_eq!(
            leaf(raw, Level::L0),
            (FRAME_4K | 1 << FIRST_BIT_ABOVE_PAT, LeafAttrs::new(USER_RW))
        );
    }

    #[test]
    fn a_large_leaf_drops_the_offset_bits_of_its_base_rather_than_setting_pat() {
        let attrs = LeafAttrs { global: true, ..LeafAttrs::new(Perms::R | Perms::X) };
        let offset = 1 << PAGE_SHIFT;
        assert_eq!(encode_leaf(FRAME_2M | offset, Level::L1, attrs), KERNEL_RX_GLOBAL_PDE);
    }

    #[test]
    fn addresses_beyond_maxphyaddr_encode_to_reserved_entries() {
        let too_wide = 1 << MAXPHYADDR;
        assert_eq!(decode(encode_table(too_wide), Level::L3), Err(FaultKind::Reserved));
        let leaf = encode_leaf(too_wide, Level::L0, LeafAttrs::new(USER_RW));
        assert_eq!(decode(leaf, Level::L0), Err(FaultKind::Reserved));
    }

    #[test]
    fn a_leaf_above_the_pdpt_encodes_to_a_reserved_entry() {
        for level in [Level::L3, Level::L4] {
            let raw = encode_leaf(0, level, LeafAttrs::new(USER_RW));
            assert_eq!(decode(raw, level), Err(FaultKind::Reserved), "{level:?}");
        }
    }

    #[test]
    fn ignored_and_unmodelled_bits_do_not_fault() {
        let ignored = X86Pte::PWT | X86Pte::PCD | X86Pte::AVL | X86Pte::PKEY;
        let software = mask(58, 52);
        let (base, attrs) = leaf(USER_RW_PTE | ignored.bits() | software, Level::L0);
        assert_eq!((base, attrs), (FRAME_4K, LeafAttrs::new(USER_RW)));
        assert!(decode(TABLE_ENTRY | ignored.bits() | software, Level::L3).is_ok());
    }

    #[test]
    fn xd_is_a_permission_bit_at_every_level() {
        let (_, attrs) = leaf(USER_RW_PTE, Level::L0);
        assert!(!attrs.perms.contains(Perms::X));
        let (_, attrs) = leaf(USER_RW_PTE & !X86Pte::XD.bits(), Level::L0);
        assert!(attrs.perms.contains(Perms::X));
        let Ok(Decoded::Table { perms, .. }) = decode(TABLE_ENTRY | X86Pte::XD.bits(), Level::L4)
        else {
            panic!("expected a table")
        };
        assert_eq!(perms, USER_RW);
    }

    #[test]
    fn user_access_to_a_supervisor_page_faults() {
        for access in [Access::USER_LOAD, Access::USER_STORE, Access::USER_FETCH] {
            assert!(!allowed(KERNEL_RWX, access, &SMAP_OVERRIDDEN), "{access:?}");
            assert!(allowed(KERNEL_RWX | Perms::U, access, &SMAP_ON), "{access:?}");
        }
    }

    #[test]
    fn supervisor_fetch_from_a_user_page_faults_under_smep() {
        assert!(!allowed(USER_RWX, KERNEL_FETCH, &SMAP_OVERRIDDEN));
        assert!(allowed(KERNEL_RWX, KERNEL_FETCH, &SMAP_ON));
    }

    #[test]
    fn supervisor_data_access_to_a_user_page_needs_ac_under_smap() {
        for access in [Access::KERNEL_LOAD, Access::KERNEL_STORE] {
            assert!(!allowed(USER_RWX, access, &SMAP_ON), "{access:?}");
            assert!(allowed(USER_RWX, access, &SMAP_OVERRIDDEN), "{access:?}");
        }
    }

    #[test]
    fn stores_need_rw_in_both_modes_under_cr0_wp() {
        let user_rx = Perms::R | Perms::X | Perms::U;
        assert!(!allowed(user_rx, Access::USER_STORE, &SMAP_ON));
        assert!(!allowed(Perms::R | Perms::X, Access::KERNEL_STORE, &SMAP_ON));
        assert!(!allowed(user_rx, Access::KERNEL_STORE, &SMAP_OVERRIDDEN));
        assert!(allowed(USER_RW, Access::USER_STORE, &SMAP_ON));
        assert!(allowed(KERNEL_RWX, Access::KERNEL_STORE, &SMAP_ON));
    }

    #[test]
    fn fetches_need_xd_clear_in_both_modes() {
        assert!(!allowed(USER_RW, Access::USER_FETCH, &SMAP_ON));
        assert!(!allowed(Perms::R | Perms::W, KERNEL_FETCH, &SMAP_ON));
        assert!(allowed(USER_RWX, Access::USER_FETCH, &SMAP_ON));
    }

    #[test]
    fn present_pages_are_readable_without_w_or_x() {
        assert!(allowed(Perms::R | Perms::U, Access::USER_LOAD, &SMAP_ON));
        assert!(allowed(Perms::R, Access::KERNEL_LOAD, &SMAP_ON));
    }

    #[test]
    fn not_present_faults_clear_pfec_p_and_others_set_it() {
        for access in EVERY_ACCESS {
            assert_eq!(pfec(FaultKind::NotPresent, access) & Pfec::P, 0, "{access:?}");
            assert_eq!(pfec(FaultKind::Permission, access) & Pfec::P, Pfec::P, "{access:?}");
        }
    }

    #[test]
    fn reserved_bit_faults_set_rsvd_and_p() {
        for kind in [FaultKind::Reserved, FaultKind::MisalignedSuperpage] {
            assert_eq!(pfec(kind, Access::KERNEL_LOAD), Pfec::P | Pfec::RSVD, "{kind:?}");
        }
        assert_eq!(pfec(FaultKind::Permission, Access::KERNEL_LOAD) & Pfec::RSVD, 0);
        assert_eq!(pfec(FaultKind::NotPresent, Access::KERNEL_LOAD) & Pfec::RSVD, 0);
    }

    #[test]
    fn pfec_w_u_and_i_describe_the_access() {
        for access in EVERY_ACCESS {
            let code = pfec(FaultKind::NotPresent, access);
            let store = access.kind == AccessKind::Store;
            let user = access.privilege == Privilege::User;
            let fetch = access.kind == AccessKind::Fetch;
            assert_eq!(code & Pfec::W != 0, store, "W for {access:?}");
            assert_eq!(code & Pfec::U != 0, user, "U for {access:?}");
            assert_eq!(code & Pfec::I != 0, fetch, "I for {access:?}");
        }
        assert_eq!(pfec(FaultKind::Permission, Access::USER_STORE), Pfec::P | Pfec::W | Pfec::U);
        assert_eq!(pfec(FaultKind::Permission, KERNEL_FETCH), Pfec::P | Pfec::I);
    }

    #[test]
    fn non_canonical_addresses_raise_gp_not_pf() {
        for access in EVERY_ACCESS {
            assert_eq!(
                cause(site(FaultKind::NonCanonical, access)),
                ArchCause::X86GeneralProtection
            );
        }
    }

    #[test]
    fn faults_x86_cannot_raise_become_protection_page_faults() {
        for kind in [FaultKind::AccessFault, FaultKind::AccessedDirty] {
            assert_eq!(pfec(kind, Access::USER_LOAD), Pfec::P | Pfec::U, "{kind:?}");
        }
    }

    #[test]
    fn the_update_sets_a_and_sets_d_only_when_asked() {
        let clean = encode_leaf(
            FRAME_4K,
            Level::L0,
            LeafAttrs { accessed: false, dirty: false, ..LeafAttrs::new(USER_RW) },
        );
        let a = X86Pte::A.bits();
        let d = X86Pte::D.bits();
        assert_eq!(with_accessed_dirty(clean, false), clean | a);
        assert_eq!(with_accessed_dirty(clean, true), clean | a | d);
        // A dirty entry stays dirty on a load.
        assert_eq!(with_accessed_dirty(clean | d, false), clean | a | d);
        assert_eq!(with_accessed_dirty(TABLE_ENTRY & !a, false), TABLE_ENTRY);
    }

    fn leaf_level() -> impl Strategy<Value = Level> {
        prop_oneof![Just(Level::L0), Just(Level::L1), Just(Level::L2)]
    }

    proptest! {
        #[test]
        fn leaves_round_trip_through_encode_and_decode(
            frame in any::<u64>(),
            level in leaf_level(),
            w in any::<bool>(), x in any::<bool>(), u in any::<bool>(),
            global in any::<bool>(), accessed in any::<bool>(), dirty in any::<bool>(),
        ) {
            let base = frame & mask(MAXPHYADDR - 1, level.shift());
            let mut perms = Perms::R;
            perms.set(Perms::W, w);
            perms.set(Perms::X, x);
            perms.set(Perms::U, u);
            let attrs = LeafAttrs { perms, global, accessed, dirty };
            let raw = encode_leaf(base, level, attrs);
            prop_assert_eq!(decode(raw, level), Ok(Decoded::Leaf { base, attrs }));
        }

        #[test]
        fn tables_round_trip_through_encode_and_decode(frame in any::<u64>(), l in 1usize..5) {
            let next = frame & mask(MAXPHYADDR - 1, PAGE_SHIFT);
            let level = Level::ALL[l];
            prop_assert_eq!(
                decode(encode_table(next), level),
                Ok(Decoded::Table { next, perms: Perms::all(), global: false, accessed: true })
            );
        }

        #[test]
        fn decoded_addresses_are_aligned_and_below_maxphyaddr(raw in any::<u64>(), l in 0usize..5) {
            let level = Level::ALL[l];
            match decode(raw, level) {
                Ok(Decoded::Leaf { base, .. }) => {
                    prop_assert_eq!(base & !mask(MAXPHYADDR - 1, level.shift()), 0);
                }
                Ok(Decoded::Table { next, .. }) => {
                    prop_assert_eq!(next & !mask(MAXPHYADDR - 1, PAGE_SHIFT), 0);
                }
                Ok(Decoded::Invalid) => prop_assert_eq!(raw & X86Pte::P.bits(), 0),
                Err(kind) => prop_assert_eq!(kind, FaultKind::Reserved),
            }
        }
    }
}
