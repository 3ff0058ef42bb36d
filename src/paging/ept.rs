//! Intel EPT entries (SDM Vol. 3C §29.3: §29.3.2 for the entry formats, §29.3.3 for EPT
//! misconfigurations and violations; bit names as in Linux `arch/x86/include/asm/vmx.h`).
//!
//! The VMX capabilities the rules depend on are fixed, not configurable:
//! - execute-only entries are supported (IA32_VMX_EPT_VPID_CAP bit 0 = 1);
//! - 2 MiB and 1 GiB pages are supported (IA32_VMX_EPT_VPID_CAP bits 16 and 17 = 1);
//! - mode-based execute control is off: bit 10 is ignored and X governs every fetch;
//! - the physical-address width is [`MAXPHYADDR`].
//!
//! Whether A and D are maintained (EPTP bit 6) is the profile's [`super::entry::AdPolicy`].

use bitflags::bitflags;

use super::entry::{
    Access, AccessKind, ArchCause, Decoded, EptQual, FaultKind, FaultSite, LeafAttrs, Perms,
};
use super::x86::{address, mask, ADDR_FIELD_HI, RESERVED_ADDR};
use crate::addr::{bits, Level, PAGE_SHIFT};

bitflags! {
    /// EPT paging-structure entry bits (EPT PML5E, PML4E, PDPTE, PDE, PTE).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct EptEntry: u64 {
        /// R: reads allowed from the region this entry controls (`VMX_EPT_READABLE_MASK`).
        const R = 1 << 0;
        /// W: writes allowed to the region this entry controls (`VMX_EPT_WRITABLE_MASK`).
        const W = 1 << 1;
        /// X: instruction fetches allowed from the region (`VMX_EPT_EXECUTABLE_MASK`).
        const X = 1 << 2;
        /// MEMTYPE: bits 5:3, the EPT memory type of a leaf; reserved in table entries.
        const MEMTYPE = 0b111 << 3;
        /// IPAT: ignore the guest PAT memory type (leaf); reserved in table entries.
        const IPAT = 1 << 6;
        /// PS: maps a page in a PDE (2 MiB) or PDPTE (1 GiB); reserved in a PML4E/PML5E.
        const PS = 1 << 7;
        /// A: accessed, set at every level walked when EPTP bit 6 enables A/D.
        const A = 1 << 8;
        /// D: dirty, set in the leaf on a write when EPTP bit 6 enables A/D.
        const D = 1 << 9;
        /// UX: user-mode execute with mode-based execute control (ignored here).
        const UX = 1 << 10;
        /// SVE: suppress #VE for violations through this leaf.
        const SVE = 1 << 63;
    }
}

/// EPT entries share x86 paging's physical-address width (an assumption: 46 bits).
pub use super::x86::MAXPHYADDR;

/// The write-back memory type, 6 in the MTRR/PAT encoding (Linux `MTRR_TYPE_WRBACK`), given to
/// every leaf [`encode_leaf`] builds.
pub const MEMTYPE_WB: u64 = 6;
/// Lowest bit of the memory-type field (`VMX_EPT_MT_EPTE_SHIFT`).
const MEMTYPE_SHIFT: u32 = 3;
/// The rights one present entry grants: R, W and X from bits 2:0. EPT has no user bit, so every
/// entry carries [`Perms::U`] and G-stage-style checks that demand U pass.
#[inline]
fn entry_perms(e: EptEntry) -> Perms {
    let mut perms = Perms::U;
    perms.set(Perms::R, e.contains(EptEntry::R));
    perms.set(Perms::W, e.contains(EptEntry::W));
    perms.set(Perms::X, e.contains(EptEntry::X));
    perms
}

/// Decodes one entry read at `level` (SDM 29.3.2). Every EPT-misconfiguration condition of SDM
/// 29.3.3.1 gives [`FaultKind::Reserved`], including a superpage's misaligned address, which
/// shows up as reserved bits 20:12 or 29:12.
// Always inlined: left to itself the compiler calls it out of line from the walker, whose
// per-entry decode is meant to be a static, inlined call (`entry::EntryRules`).
#[inline(always)]
pub fn decode(raw: u64, level: Level) -> Result<Decoded, FaultKind> {
    let e = EptEntry::from_bits_retain(raw);
    // SDM 29.3.2: bits 2:0 = 000 is not present; bits 63:3 are ignored.
    if !e.intersects(EptEntry::R | EptEntry::W | EptEntry::X) {
        return Ok(Decoded::Invalid);
    }
    // SDM 29.3.3.1: write without read (bits 2:0 = 010b or 110b) is a misconfiguration.
    // Execute-only (100b) is legal: IA32_VMX_EPT_VPID_CAP bit 0 is assumed 1.
    if e.contains(EptEntry::W) && !e.contains(EptEntry::R) {
        return Err(FaultKind::Reserved);
    }
    // SDM 29.3.3.1: bits 51:MAXPHYADDR are reserved in every entry.
    if raw & RESERVED_ADDR != 0 {
        return Err(FaultKind::Reserved);
    }
    let leaf = match level {
        // SDM 29.3.2: an EPT PTE always maps a 4 KiB page.
        Level::L0 => true,
        // SDM 29.3.2: an EPT PDE or PDPTE with bit 7 set maps a 2 MiB or 1 GiB page.
        Level::L1 | Level::L2 => e.contains(EptEntry::PS),
        // SDM 29.3.3.1: bit 7 is reserved in an EPT PML4E and PML5E.
        Level::L3 | Level::L4 if e.contains(EptEntry::PS) => return Err(FaultKind::Reserved),
        Level::L3 | Level::L4 => false,
    };
    let perms = entry_perms(e);
    if !leaf {
        // SDM 29.3.3.1: bits 6:3 (memory type and IPAT) are reserved in a table entry.
        if e.intersects(EptEntry::MEMTYPE | EptEntry::IPAT) {
            return Err(FaultKind::Reserved);
        }
        return Ok(Decoded::Table {
            next: address(raw, PAGE_SHIFT),
            perms,
            global: false,
            accessed: e.contains(EptEntry::A),
        });
    }
    // SDM 29.3.3.1: memory types 2, 3 and 7 are reserved in a leaf.
    if matches!(bits(raw, 5, MEMTYPE_SHIFT), 2 | 3 | 7) {
        return Err(FaultKind::Reserved);
    }
    // SDM 29.3.3.1: a 2 MiB page's address starts at bit 21 and a 1 GiB page's at bit 30; bits
    // 20:12 or 29:12 are reserved.
    if level != Level::L0 && bits(raw, level.shift() - 1, PAGE_SHIFT) != 0 {
        return Err(FaultKind::Reserved);
    }
    Ok(Decoded::Leaf {
        base: address(raw, level.shift()),
        attrs: LeafAttrs {
            perms,
            global: false,
            accessed: e.contains(EptEntry::A),
            dirty: e.contains(EptEntry::D),
        },
    })
}

/// Access rights (SDM 29.3.3.2) for `perms` already ANDed over the levels. The privilege of the
/// access plays no part: mode-based execute control is off.
#[inline]
pub fn check_permissions(perms: Perms, access: Access) -> Result<(), FaultKind> {
    // SDM 29.3.3.2: a data read needs R=1 at every level.
    if access.kind == AccessKind::Load && !perms.contains(Perms::R) {
        return Err(FaultKind::Permission);
    }
    // SDM 29.3.3.2: a data write needs W=1 at every level.
    if access.kind == AccessKind::Store && !perms.contains(Perms::W) {
        return Err(FaultKind::Permission);
    }
    // SDM 29.3.3.2: an instruction fetch needs X=1 at every level.
    if access.kind == AccessKind::Fetch && !perms.contains(Perms::X) {
        return Err(FaultKind::Permission);
    }
    Ok(())
}

/// Encodes an entry referencing the table at `next`: R|W|X so that table entries never restrict
/// the AND over the levels; A is left clear for the walker to set. Address bits 51:MAXPHYADDR
/// are kept, as in [`encode_leaf`].
pub fn encode_table(next: u64) -> u64 {
    (next & mask(ADDR_FIELD_HI, PAGE_SHIFT)) | (EptEntry::R | EptEntry::W | EptEntry::X).bits()
}

/// Encodes a write-back leaf at `level` mapping `base`, which must be aligned to the level's
/// page size: bits below the level's address field have no place in the entry and are dropped.
/// Address bits 51:MAXPHYADDR are kept so that [`decode`] reports a too-wide address as a
/// misconfiguration instead of mapping a truncated one.
pub fn encode_leaf(base: u64, level: Level, attrs: LeafAttrs) -> u64 {
    let mut e = EptEntry::empty();
    e.set(EptEntry::R, attrs.perms.contains(Perms::R));
    e.set(EptEntry::W, attrs.perms.contains(Perms::W));
    e.set(EptEntry::X, attrs.perms.contains(Perms::X));
    // PS above L0; an impossible leaf at L3/L4 thus decodes as a misconfiguration.
    e.set(EptEntry::PS, level != Level::L0);
    e.set(EptEntry::A, attrs.accessed);
    e.set(EptEntry::D, attrs.dirty);
    (base & mask(ADDR_FIELD_HI, level.shift())) | MEMTYPE_WB << MEMTYPE_SHIFT | e.bits()
}

/// Sets A (bit 8), and D (bit 9) if `dirty`, as the walker does with EPTP bit 6 set.
pub fn with_accessed_dirty(raw: u64, dirty: bool) -> u64 {
    let mut e = EptEntry::from_bits_retain(raw) | EptEntry::A;
    e.set(EptEntry::D, dirty || e.contains(EptEntry::D));
    e.bits()
}

/// The VM exit a fault causes (SDM 29.3.3): an EPT misconfiguration (exit reason 49, no
/// qualification) for an illegal entry, else an EPT violation (exit reason 48) whose
/// qualification names the access, the rights the GPA had and which translation faulted.
#[cold]
pub fn cause(site: FaultSite) -> ArchCause {
    // SDM 29.3.3.1: illegal entries, misaligned superpages included, are misconfigurations.
    if matches!(site.kind, FaultKind::Reserved | FaultKind::MisalignedSuperpage) {
        return ArchCause::EptMisconfig;
    }
    // SDM Table 28-7, bits 2:0: the access that faulted.
    let mut q = match site.access.kind {
        AccessKind::Load => EptQual::READ,
        AccessKind::Store => EptQual::WRITE,
        AccessKind::Fetch => EptQual::FETCH,
    };
    // SDM Table 28-7, bits 5:3: the rights the GPA had (the AND over the levels walked).
    for (perm, bit) in [
        (Perms::R, EptQual::READABLE),
        (Perms::W, EptQual::WRITABLE),
        (Perms::X, EptQual::EXECUTABLE),
    ] {
        if site.perms.contains(perm) {
            q |= bit;
        }
    }
    // SDM Table 28-7, bits 8:7: every modelled access has a guest linear address; bit 8 tells
    // the final GPA from a guest paging-structure entry's GPA.
    q |= EptQual::GLA_VALID;
    if site.final_translation {
        q |= EptQual::FINAL_TRANSLATION;
    }
    ArchCause::EptViolation(EptQual(q))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::entry::Privilege;
    use super::*;

    /// A 4 KiB frame for the worked PTE.
    const FRAME_4K: u64 = 0x7654_3000;
    /// Read-write-execute write-back 4 KiB page at [`FRAME_4K`], accessed and dirty, by hand:
    /// address | D (0x200) | A (0x100) | memory type 6 << 3 (0x30) | X | W | R (0x7).
    const RWX_PTE: u64 = 0x7654_3337;
    /// A 2 MiB frame (0x91a × 2 MiB) for the worked PDE.
    const FRAME_2M: u64 = 0x1_2340_0000;
    /// Read-write write-back 2 MiB page at [`FRAME_2M`], accessed and dirty, by hand:
    /// address | D (0x200) | A (0x100) | PS (0x80) | memory type 6 << 3 (0x30) | W | R (0x3).
    const RW_PDE: u64 = 0x1_2340_03b3;
    /// A 1 GiB frame (512 GiB) for the worked PDPTE.
    const FRAME_1G: u64 = 0x80_0000_0000;
    /// Execute-only write-back 1 GiB page at [`FRAME_1G`], accessed but clean, by hand:
    /// address | A (0x100) | PS (0x80) | memory type 6 << 3 (0x30) | X (0x4).
    const X_ONLY_PDPTE: u64 = 0x80_0000_01b4;
    /// An EPT table page for pointer entries.
    const TABLE: u64 = 0x5000;
    /// `encode_table(TABLE)` by hand: address | X | W | R.
    const TABLE_ENTRY: u64 = 0x5007;
    /// The qualification of a store to a read-execute final GPA, by hand: FINAL_TRANSLATION
    /// (0x100) | GLA_VALID (0x80) | EXECUTABLE (0x20) | READABLE (0x8) | WRITE (0x2).
    const STORE_TO_RX_FINAL_QUAL: u64 = 0x1aa;

    const RWX: Perms = Perms::R.union(Perms::W).union(Perms::X);
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

    fn leaf(raw: u64, level: Level) -> (u64, LeafAttrs) {
        match decode(raw, level) {
            Ok(Decoded::Leaf { base, attrs }) => (base, attrs),
            other => panic!("{raw:#x} at {level:?}: expected a leaf, got {other:?}"),
        }
    }

    fn allowed(perms: Perms, access: Access) -> bool {
        match check_permissions(perms, access) {
            Ok(()) => true,
            Err(FaultKind::Permission) => false,
            Err(other) => panic!("a permission check returned {other:?}"),
        }
    }

    fn site(kind: FaultKind, access: Access, perms: Perms, final_translation: bool) -> FaultSite {
        FaultSite { kind, access, final_translation, perms }
    }

    fn qual(site: FaultSite) -> u64 {
        match cause(site) {
            ArchCause::EptViolation(EptQual(q)) => q,
            other => panic!("{site:?}: expected an EPT violation, got {other:?}"),
        }
    }

    fn with_memtype(raw: u64, memtype: u64) -> u64 {
        (raw & !EptEntry::MEMTYPE.bits()) | memtype << MEMTYPE_SHIFT
    }

    #[test]
    fn a_4k_rwx_pte_matches_the_hand_encoding() {
        assert_eq!(encode_leaf(FRAME_4K, Level::L0, LeafAttrs::new(RWX)), RWX_PTE);
        assert_eq!(leaf(RWX_PTE, Level::L0), (FRAME_4K, LeafAttrs::new(RWX | Perms::U)));
    }

    #[test]
    fn a_2m_pde_with_ps_matches_the_hand_encoding() {
        let rw = Perms::R | Perms::W;
        assert_eq!(encode_leaf(FRAME_2M, Level::L1, LeafAttrs::new(rw)), RW_PDE);
        assert_eq!(leaf(RW_PDE, Level::L1), (FRAME_2M, LeafAttrs::new(rw | Perms::U)));
    }

    #[test]
    fn a_1g_execute_only_pdpte_matches_the_hand_encoding() {
        let attrs = LeafAttrs { dirty: false, ..LeafAttrs::new(Perms::X) };
        assert_eq!(encode_leaf(FRAME_1G, Level::L2, attrs), X_ONLY_PDPTE);
        let decoded = LeafAttrs { perms: Perms::X | Perms::U, ..attrs };
        assert_eq!(leaf(X_ONLY_PDPTE, Level::L2), (FRAME_1G, decoded));
    }

    #[test]
    fn a_table_entry_is_rwx_with_a_clear_and_restricts_nothing() {
        assert_eq!(encode_table(TABLE), TABLE_ENTRY);
        for level in [Level::L1, Level::L2, Level::L3, Level::L4] {
            assert_eq!(
                decode(TABLE_ENTRY, level),
                Ok(Decoded::Table {
                    next: TABLE,
                    perms: Perms::all(),
                    global: false,
                    accessed: false
                })
            );
        }
        let accessed = with_accessed_dirty(TABLE_ENTRY, false);
        assert!(matches!(decode(accessed, Level::L3), Ok(Decoded::Table { accessed: true, .. })));
    }

    #[test]
    fn table_entries_report_their_own_rights() {
        let read_only = TABLE | EptEntry::R.bits();
        assert_eq!(
            decode(read_only, Level::L2),
            Ok(Decoded::Table {
                next: TABLE,
                perms: Perms::R | Perms::U,
                global: false,
                accessed: false
            })
        );
    }

    #[test]
    fn bits_2_to_0_clear_is_not_present_whatever_else_is_set() {
        let rwx = (EptEntry::R | EptEntry::W | EptEntry::X).bits();
        for level in Level::ALL {
            assert_eq!(decode(!rwx, level), Ok(Decoded::Invalid));
            assert_eq!(decode(0, level), Ok(Decoded::Invalid));
        }
    }

    #[test]
    fn write_without_read_is_a_misconfiguration() {
        for rwx in [0b010, 0b110] {
            let leaf = (RWX_PTE & !0b111) | rwx;
            assert_eq!(decode(leaf, Level::L0), Err(FaultKind::Reserved), "{rwx:03b}");
            let table = TABLE | rwx;
            assert_eq!(decode(table, Level::L3), Err(FaultKind::Reserved), "{rwx:03b}");
        }
        // Every encoding with R set is legal.
        for rwx in [0b001, 0b011, 0b101, 0b111] {
            assert!(decode((RWX_PTE & !0b111) | rwx, Level::L0).is_ok(), "{rwx:03b}");
        }
    }

    #[test]
    fn execute_only_is_supported() {
        let x_only = (RWX_PTE & !0b111) | EptEntry::X.bits();
        assert_eq!(leaf(x_only, Level::L0).1.perms, Perms::X | Perms::U);
        assert!(matches!(
            decode(TABLE | EptEntry::X.bits(), Level::L1),
            Ok(Decoded::Table { perms, .. }) if perms == Perms::X | Perms::U
        ));
    }

    #[test]
    fn address_bits_51_to_maxphyaddr_are_misconfigurations() {
        assert_eq!(MAXPHYADDR, 46);
        for bit in MAXPHYADDR..=ADDR_FIELD_HI {
            assert_eq!(decode(RWX_PTE | 1 << bit, Level::L0), Err(FaultKind::Reserved));
            assert_eq!(decode(RW_PDE | 1 << bit, Level::L1), Err(FaultKind::Reserved));
            assert_eq!(decode(X_ONLY_PDPTE | 1 << bit, Level::L2), Err(FaultKind::Reserved));
            assert_eq!(decode(TABLE_ENTRY | 1 << bit, Level::L3), Err(FaultKind::Reserved));
            assert_eq!(decode(TABLE_ENTRY | 1 << bit, Level::L4), Err(FaultKind::Reserved));
        }
        // The highest implemented address bit is an address bit.
        let top = 1 << (MAXPHYADDR - 1);
        assert_eq!(leaf(RWX_PTE | top, Level::L0).0, FRAME_4K | top);
    }

    #[test]
    fn ps_in_an_ept_pml4e_or_pml5e_is_a_misconfiguration() {
        for level in [Level::L3, Level::L4] {
            assert_eq!(decode(TABLE_ENTRY | EptEntry::PS.bits(), level), Err(FaultKind::Reserved));
        }
    }

    #[test]
    fn ps_clear_in_a_pde_or_pdpte_references_a_table() {
        let ps = EptEntry::PS.bits();
        let memtype = EptEntry::MEMTYPE.bits();
        for (level, large, frame) in
            [(Level::L1, RW_PDE, FRAME_2M), (Level::L2, X_ONLY_PDPTE, FRAME_1G)]
        {
            // Clearing PS also needs the memory type cleared: it is reserved in table entries.
            let table = decode(large & !ps & !memtype, level);
            assert!(matches!(table, Ok(Decoded::Table { next, .. }) if next == frame), "{table:?}");
        }
    }

    #[test]
    fn bits_6_to_3_of_a_table_entry_are_reserved() {
        for level in [Level::L1, Level::L2, Level::L3, Level::L4] {
            for bit in 3..=6 {
                assert_eq!(
                    decode(TABLE_ENTRY | 1 << bit, level),
                    Err(FaultKind::Reserved),
                    "bit {bit} at {level:?}"
                );
            }
        }
    }

    #[test]
    fn memory_types_2_3_and_7_are_misconfigurations() {
        for (level, raw) in [(Level::L0, RWX_PTE), (Level::L1, RW_PDE), (Level::L2, X_ONLY_PDPTE)] {
            for memtype in 0..8 {
                let result = decode(with_memtype(raw, memtype), level);
                if matches!(memtype, 2 | 3 | 7) {
                    assert_eq!(result, Err(FaultKind::Reserved), "type {memtype} at {level:?}");
                } else {
                    assert!(result.is_ok(), "type {memtype} at {level:?}: {result:?}");
                }
            }
        }
    }

    #[test]
    fn bits_20_to_12_of_a_2m_leaf_are_reserved() {
        for bit in PAGE_SHIFT..=20 {
            assert_eq!(decode(RW_PDE | 1 << bit, Level::L1), Err(FaultKind::Reserved), "{bit}");
        }
        // Bit 21 is the lowest address bit.
        assert_eq!(leaf(RW_PDE | 1 << 21, Level::L1).0, FRAME_2M | 1 << 21);
    }

    #[test]
    fn bits_29_to_12_of_a_1g_leaf_are_reserved() {
        for bit in PAGE_SHIFT..=29 {
            assert_eq!(
                decode(X_ONLY_PDPTE | 1 << bit, Level::L2),
                Err(FaultKind::Reserved),
                "{bit}"
            );
        }
        // Bit 30 is the lowest address bit.
        assert_eq!(leaf(X_ONLY_PDPTE | 1 << 30, Level::L2).0, FRAME_1G | 1 << 30);
    }

    #[test]
    fn a_large_leaf_drops_the_offset_bits_of_its_base() {
        let rw = LeafAttrs::new(Perms::R | Perms::W);
        assert_eq!(encode_leaf(FRAME_2M | 1 << PAGE_SHIFT, Level::L1, rw), RW_PDE);
    }

    #[test]
    fn addresses_beyond_maxphyaddr_encode_to_misconfigured_entries() {
        let too_wide = 1 << MAXPHYADDR;
        assert_eq!(decode(encode_table(too_wide), Level::L3), Err(FaultKind::Reserved));
        let leaf = encode_leaf(too_wide, Level::L0, LeafAttrs::new(RWX));
        assert_eq!(decode(leaf, Level::L0), Err(FaultKind::Reserved));
    }

    #[test]
    fn a_leaf_above_the_pdpt_encodes_to_a_misconfigured_entry() {
        for level in [Level::L3, Level::L4] {
            let raw = encode_leaf(0, level, LeafAttrs::new(RWX));
            assert_eq!(decode(raw, level), Err(FaultKind::Reserved), "{level:?}");
        }
    }

    #[test]
    fn ignored_and_unmodelled_bits_do_not_fault() {
        let leaf_bits = (EptEntry::IPAT | EptEntry::UX | EptEntry::SVE).bits() | 1 << 11;
        let software = mask(62, 52);
        let (base, attrs) = leaf(RWX_PTE | leaf_bits | software, Level::L0);
        assert_eq!((base, attrs), (FRAME_4K, LeafAttrs::new(RWX | Perms::U)));
        let table_bits = (EptEntry::UX | EptEntry::D).bits() | 1 << 11 | mask(63, 52);
        assert!(decode(TABLE_ENTRY | table_bits, Level::L3).is_ok());
    }

    #[test]
    fn every_entry_carries_u_and_none_is_global() {
        for (raw, level) in [(RWX_PTE, Level::L0), (RW_PDE, Level::L1), (X_ONLY_PDPTE, Level::L2)] {
            let (_, attrs) = leaf(raw, level);
            assert!(attrs.perms.contains(Perms::U), "{level:?}");
            assert!(!attrs.global, "{level:?}");
        }
    }

    #[test]
    fn loads_need_r() {
        assert!(!allowed(Perms::W | Perms::X | Perms::U, Access::USER_LOAD));
        assert!(allowed(Perms::R | Perms::U, Access::USER_LOAD));
    }

    #[test]
    fn stores_need_w() {
        assert!(!allowed(Perms::R | Perms::X | Perms::U, Access::USER_STORE));
        assert!(allowed(Perms::R | Perms::W | Perms::U, Access::USER_STORE));
    }

    #[test]
    fn fetches_need_x() {
        assert!(!allowed(Perms::R | Perms::W | Perms::U, Access::USER_FETCH));
        assert!(allowed(Perms::X | Perms::U, Access::USER_FETCH));
    }

    #[test]
    fn privilege_plays_no_part() {
        for perms in [Perms::R, Perms::W, Perms::X, RWX, Perms::R | Perms::U, Perms::empty()] {
            for access in EVERY_ACCESS {
                let as_user = Access { privilege: Privilege::User, ..access };
                assert_eq!(allowed(perms, access), allowed(perms, as_user), "{perms:?} {access:?}");
            }
        }
    }

    #[test]
    fn illegal_entries_cause_misconfigurations() {
        for kind in [FaultKind::Reserved, FaultKind::MisalignedSuperpage] {
            for access in EVERY_ACCESS {
                assert_eq!(cause(site(kind, access, RWX, true)), ArchCause::EptMisconfig);
            }
        }
    }

    #[test]
    fn missing_entries_and_rights_cause_violations() {
        for kind in [
            FaultKind::NotPresent,
            FaultKind::Permission,
            FaultKind::NonCanonical,
            FaultKind::AccessedDirty,
            FaultKind::AccessFault,
        ] {
            let cause = cause(site(kind, Access::USER_LOAD, Perms::empty(), true));
            assert!(matches!(cause, ArchCause::EptViolation(_)), "{kind:?}: {cause:?}");
        }
    }

    #[test]
    fn a_store_to_a_read_execute_gpa_matches_the_hand_qualification() {
        let rx = Perms::R | Perms::X | Perms::U;
        let q = qual(site(FaultKind::Permission, Access::USER_STORE, rx, true));
        assert_eq!(q, STORE_TO_RX_FINAL_QUAL);
    }

    #[test]
    fn qualification_bits_2_to_0_name_the_access() {
        let access_bits = EptQual::READ | EptQual::WRITE | EptQual::FETCH;
        for (access, want) in [
            (Access::USER_LOAD, EptQual::READ),
            (Access::KERNEL_STORE, EptQual::WRITE),
            (KERNEL_FETCH, EptQual::FETCH),
        ] {
            let q = qual(site(FaultKind::NotPresent, access, Perms::empty(), true));
            assert_eq!(q & access_bits, want, "{access:?}");
        }
    }

    #[test]
    fn qualification_bits_5_to_3_report_the_rights_of_the_gpa() {
        let right_bits = EptQual::READABLE | EptQual::WRITABLE | EptQual::EXECUTABLE;
        for (perms, want) in [
            (Perms::empty(), 0),
            (Perms::R, EptQual::READABLE),
            (Perms::W, EptQual::WRITABLE),
            (Perms::X, EptQual::EXECUTABLE),
            (RWX | Perms::U, right_bits),
        ] {
            let q = qual(site(FaultKind::Permission, Access::USER_LOAD, perms, true));
            assert_eq!(q & right_bits, want, "{perms:?}");
        }
    }

    #[test]
    fn qualification_always_has_a_valid_guest_linear_address() {
        for final_translation in [false, true] {
            let q = qual(site(FaultKind::NotPresent, Access::USER_LOAD, RWX, final_translation));
            assert_ne!(q & EptQual::GLA_VALID, 0);
        }
    }

    #[test]
    fn qualification_bit_8_tells_the_final_gpa_from_a_guest_table_entry() {
        let fault = |final_translation| {
            qual(site(FaultKind::NotPresent, Access::USER_LOAD, Perms::empty(), final_translation))
        };
        assert_eq!(fault(true) & EptQual::FINAL_TRANSLATION, EptQual::FINAL_TRANSLATION);
        assert_eq!(fault(false) & EptQual::FINAL_TRANSLATION, 0);
        assert_eq!(fault(false), EptQual::READ | EptQual::GLA_VALID);
    }

    #[test]
    fn the_update_sets_bit_8_and_sets_bit_9_only_when_asked() {
        let clean = encode_leaf(
            FRAME_4K,
            Level::L0,
            LeafAttrs { accessed: false, dirty: false, ..LeafAttrs::new(RWX) },
        );
        let a = 1 << 8;
        let d = 1 << 9;
        assert_eq!(with_accessed_dirty(clean, false), clean | a);
        assert_eq!(with_accessed_dirty(clean, true), clean | a | d);
        // A dirty entry stays dirty on a load.
        assert_eq!(with_accessed_dirty(clean | d, false), clean | a | d);
    }

    fn leaf_level() -> impl Strategy<Value = Level> {
        prop_oneof![Just(Level::L0), Just(Level::L1), Just(Level::L2)]
    }

    /// The legal R/W/X combinations: every one with R, and execute-only.
    fn legal_rights() -> impl Strategy<Value = Perms> {
        prop_oneof![
            Just(Perms::R),
            Just(Perms::R | Perms::W),
            Just(Perms::R | Perms::X),
            Just(RWX),
            Just(Perms::X),
        ]
    }

    proptest! {
        #[test]
        fn leaves_round_trip_through_encode_and_decode(
            frame in any::<u64>(),
            level in leaf_level(),
            rights in legal_rights(),
            accessed in any::<bool>(), dirty in any::<bool>(),
        ) {
            let base = frame & mask(MAXPHYADDR - 1, level.shift());
            let attrs = LeafAttrs { perms: rights, global: false, accessed, dirty };
            let raw = encode_leaf(base, level, attrs);
            let decoded = LeafAttrs { perms: rights | Perms::U, ..attrs };
            prop_assert_eq!(decode(raw, level), Ok(Decoded::Leaf { base, attrs: decoded }));
        }

        #[test]
        fn tables_round_trip_through_encode_and_decode(frame in any::<u64>(), l in 1usize..5) {
            let next = frame & mask(MAXPHYADDR - 1, PAGE_SHIFT);
            let level = Level::ALL[l];
            prop_assert_eq!(
                decode(encode_table(next), level),
                Ok(Decoded::Table { next, perms: Perms::all(), global: false, accessed: false })
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
                Ok(Decoded::Invalid) => prop_assert_eq!(raw & 0b111, 0),
                Err(kind) => prop_assert_eq!(kind, FaultKind::Reserved),
            }
        }
    }
}
