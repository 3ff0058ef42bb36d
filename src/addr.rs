//! Typed addresses: one type per address space, so that a guest table (`Gva → Gpa`), a nested
//! table (`Gpa → Hpa`) and a shadow table (`Gva → Hpa`) cannot be mixed up.
//!
//! Addresses are raw 64-bit values tagged with a zero-sized [`Space`] marker. Whether a value is
//! *legal* (canonical, within the physical-address width) is a property of the paging format that
//! consumes it, so construction never fails; the format checks it during a walk. Operators between
//! addresses are deliberately absent: arithmetic goes through named methods
//! ([`Addr::checked_add`], [`Addr::align_down`], [`Addr::page_offset`]).

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

/// Bits of the 4 KiB base page offset.
pub const PAGE_SHIFT: u32 = 12;
/// Bytes in a 4 KiB base page.
pub const PAGE_BYTES: u64 = 1 << PAGE_SHIFT;

/// An address space: a zero-sized marker naming what an [`Addr`] means.
pub trait Space: Copy + Eq + Ord + Hash + fmt::Debug + Default + Send + Sync + 'static {
    /// Short lowercase name used in messages ("gva", "gpa", ...).
    const NAME: &'static str;
    /// Whether tables translating this space are nested (G-stage/EPT) tables.
    const NESTED_INPUT: bool;
}

macro_rules! space {
    ($(#[$doc:meta])* $marker:ident, $name:literal, $nested:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $marker;
        impl Space for $marker {
            const NAME: &'static str = $name;
            const NESTED_INPUT: bool = $nested;
        }
    };
}

space!(
    /// Guest virtual addresses, translated by the guest's page tables.
    GuestVirt,
    "gva",
    false
);
space!(
    /// Guest physical addresses, translated by the hypervisor's nested table or memory map.
    GuestPhys,
    "gpa",
    true
);
space!(
    /// Host physical addresses: what the MMU finally needs.
    HostPhys,
    "hpa",
    false
);
space!(
    /// Host virtual addresses of an emulator process (HSPT only).
    HostVirt,
    "hva",
    false
);

/// A byte address in space `S`.
#[repr(transparent)]
pub struct Addr<S: Space>(u64, PhantomData<S>);

/// Guest virtual address.
pub type Gva = Addr<GuestVirt>;
/// Guest physical address.
pub type Gpa = Addr<GuestPhys>;
/// Host physical address.
pub type Hpa = Addr<HostPhys>;
/// Host virtual address (emulator process).
pub type Hva = Addr<HostVirt>;

/// A 4 KiB page (or frame) number in space `S`: the address shifted right by [`PAGE_SHIFT`].
#[repr(transparent)]
pub struct PageNum<S: Space>(u64, PhantomData<S>);

/// Guest virtual page number.
pub type Gvpn = PageNum<GuestVirt>;
/// Guest physical frame number.
pub type Gfn = PageNum<GuestPhys>;
/// Host physical frame number.
pub type Hfn = PageNum<HostPhys>;

// Manual impls: derives would demand `S: Clone` etc. on the phantom parameter's bounds anyway,
// and writing them out keeps `Addr` `Copy` for every space.
macro_rules! raw_newtype_impls {
    ($ty:ident) => {
        impl<S: Space> Clone for $ty<S> {
            #[inline]
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<S: Space> Copy for $ty<S> {}
        impl<S: Space> PartialEq for $ty<S> {
            #[inline]
            fn eq(&self, other: &Self) -> bool {
                self.0 == other.0
            }
        }
        impl<S: Space> Eq for $ty<S> {}
        impl<S: Space> PartialOrd for $ty<S> {
            #[inline]
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        impl<S: Space> Ord for $ty<S> {
            #[inline]
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.0.cmp(&other.0)
            }
        }
        impl<S: Space> Hash for $ty<S> {
            #[inline]
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.0.hash(state)
            }
        }
        impl<S: Space> Default for $ty<S> {
            #[inline]
            fn default() -> Self {
                Self(0, PhantomData)
            }
        }
    };
}
raw_newtype_impls!(Addr);
raw_newtype_impls!(PageNum);

impl<S: Space> Addr<S> {
    /// The zero address.
    pub const ZERO: Self = Self(0, PhantomData);

    /// Wraps a raw value; every 64-bit value is representable, legality is checked by formats.
    #[inline]
    pub const fn new(raw: u64) -> Self {
        Self(raw, PhantomData)
    }

    /// The raw value, for encoding into entries and registers.
    #[inline]
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// `self + bytes`, or `None` on overflow.
    #[inline]
    pub const fn checked_add(self, bytes: u64) -> Option<Self> {
        match self.0.checked_add(bytes) {
            Some(raw) => Some(Self::new(raw)),
            None => None,
        }
    }

    /// `self + bytes`, wrapping at 2^64 (for sign-extended virtual addresses).
    #[inline]
    pub const fn wrapping_add(self, bytes: u64) -> Self {
        Self::new(self.0.wrapping_add(bytes))
    }

    /// Distance in bytes from `base` up to `self`, or `None` if `self` lies below `base`.
    #[inline]
    pub const fn offset_from(self, base: Self) -> Option<u64> {
        self.0.checked_sub(base.0)
    }

    /// The start of the `size` page containing this address.
    #[inline]
    pub const fn align_down(self, size: PageSize) -> Self {
        Self::new(self.0 & !size.offset_mask())
    }

    /// Whether the address is a multiple of `size`.
    #[inline]
    pub const fn is_aligned(self, size: PageSize) -> bool {
        self.0 & size.offset_mask() == 0
    }

    /// The offset of this address inside its `size` page.
    #[inline]
    pub const fn page_offset(self, size: PageSize) -> u64 {
        self.0 & size.offset_mask()
    }

    /// The 4 KiB page number containing this address.
    #[inline]
    pub const fn page(self) -> PageNum<S> {
        PageNum::new(self.0 >> PAGE_SHIFT)
    }

    /// Bits `hi..=lo` of the address, numbered as in the specifications' field tables.
    #[inline]
    pub const fn bits(self, hi: u32, lo: u32) -> u64 {
        bits(self.0, hi, lo)
    }
}

impl<S: Space> PageNum<S> {
    /// Wraps a raw page number.
    #[inline]
    pub const fn new(raw: u64) -> Self {
        Self(raw, PhantomData)
    }

    /// The raw page number.
    #[inline]
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The first byte of the page.
    #[inline]
    pub const fn addr(self) -> Addr<S> {
        Addr::new(self.0 << PAGE_SHIFT)
    }

    /// `self + pages`, or `None` on overflow.
    #[inline]
    pub const fn checked_add(self, pages: u64) -> Option<Self> {
        match self.0.checked_add(pages) {
            Some(raw) => Some(Self::new(raw)),
            None => None,
        }
    }
}

impl<S: Space> fmt::Debug for Addr<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:#x}", S::NAME, self.0)
    }
}
impl<S: Space> fmt::Display for Addr<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:#x}", S::NAME, self.0)
    }
}
impl<S: Space> fmt::LowerHex for Addr<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}
impl<S: Space> fmt::Debug for PageNum<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} page {:#x}", S::NAME, self.0)
    }
}
impl<S: Space> fmt::Display for PageNum<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} page {:#x}", S::NAME, self.0)
    }
}

/// Bits `hi..=lo` of `x` (inclusive, `hi >= lo`), in the `[hi:lo]` order of the spec tables.
#[inline]
pub const fn bits(x: u64, hi: u32, lo: u32) -> u64 {
    let width = hi - lo + 1;
    if width >= 64 {
        x >> lo
    } else {
        (x >> lo) & ((1u64 << width) - 1)
    }
}

/// `u64` to `usize`; memvirt targets 64-bit hosts only, where this never truncates.
#[inline]
#[allow(clippy::cast_possible_truncation)]
pub const fn u64_to_usize(x: u64) -> usize {
    x as usize
}

/// A page size. Walks discover it at run time, so it is an enum rather than a type parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB: a leaf at level 0.
    Size4K,
    /// 2 MiB: a leaf at level 1 (RISC-V megapage, x86 PDE with PS).
    Size2M,
    /// 1 GiB: a leaf at level 2 (RISC-V gigapage, x86 PDPTE with PS).
    Size1G,
    /// 512 GiB: a leaf at level 3 (RISC-V Sv48/Sv57 terapage).
    Size512G,
    /// 256 TiB: a leaf at level 4 (RISC-V Sv57 petapage).
    Size256T,
}

impl PageSize {
    /// Every size, smallest first.
    pub const ALL: [PageSize; 5] =
        [Self::Size4K, Self::Size2M, Self::Size1G, Self::Size512G, Self::Size256T];

    /// Every size, the small ones more often: the sizes the translation structures' randomised
    /// tests fill, so that sets mix sizes the way real runs do (mostly 4K, some 2M).
    #[cfg(test)]
    pub(crate) const TEST_MIX: [PageSize; 8] = [
        Self::Size4K,
        Self::Size4K,
        Self::Size4K,
        Self::Size2M,
        Self::Size2M,
        Self::Size1G,
        Self::Size512G,
        Self::Size256T,
    ];

    /// log2 of the size in bytes.
    #[inline]
    pub const fn shift(self) -> u32 {
        PAGE_SHIFT + 9 * self.level().index()
    }

    /// The size in bytes.
    #[inline]
    pub const fn bytes(self) -> u64 {
        1 << self.shift()
    }

    /// Mask of the in-page offset bits.
    #[inline]
    pub const fn offset_mask(self) -> u64 {
        self.bytes() - 1
    }

    /// The level whose leaf entries map pages of this size (9 index bits per level).
    #[inline]
    pub const fn level(self) -> Level {
        match self {
            Self::Size4K => Level::L0,
            Self::Size2M => Level::L1,
            Self::Size1G => Level::L2,
            Self::Size512G => Level::L3,
            Self::Size256T => Level::L4,
        }
    }

    /// The size a leaf at `level` maps.
    #[inline]
    pub const fn at_level(level: Level) -> Self {
        match level {
            Level::L0 => Self::Size4K,
            Level::L1 => Self::Size2M,
            Level::L2 => Self::Size1G,
            Level::L3 => Self::Size512G,
            Level::L4 => Self::Size256T,
        }
    }

    /// Short human name ("4K", "2M", ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Size4K => "4K",
            Self::Size2M => "2M",
            Self::Size1G => "1G",
            Self::Size512G => "512G",
            Self::Size256T => "256T",
        }
    }
}

/// A page-table level, numbered as the RISC-V specification does: `L0` holds 4 KiB leaves and the
/// root is `L(levels-1)`. (x86 names them PT, PD, PDPT, PML4, PML5.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// 4 KiB leaves (RISC-V level 0, x86 PT).
    L0,
    /// RISC-V level 1, x86 PD.
    L1,
    /// RISC-V level 2, x86 PDPT.
    L2,
    /// RISC-V level 3, x86 PML4.
    L3,
    /// RISC-V level 4, x86 PML5.
    L4,
}

/// The deepest radix table memvirt models (Sv57, x86 5-level, EPT 5-level).
pub const MAX_LEVELS: usize = 5;

impl Level {
    /// Every level, leaf first.
    pub const ALL: [Level; MAX_LEVELS] = [Self::L0, Self::L1, Self::L2, Self::L3, Self::L4];

    /// The level's number (0 for the leaf level).
    #[inline]
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// The level numbered `i`, if there is one.
    #[inline]
    pub const fn from_index(i: u32) -> Option<Self> {
        match i {
            0 => Some(Self::L0),
            1 => Some(Self::L1),
            2 => Some(Self::L2),
            3 => Some(Self::L3),
            4 => Some(Self::L4),
            _ => None,
        }
    }

    /// The level below (towards the leaves), or `None` at `L0`.
    #[inline]
    pub const fn down(self) -> Option<Self> {
        match self {
            Self::L0 => None,
            Self::L1 => Some(Self::L0),
            Self::L2 => Some(Self::L1),
            Self::L3 => Some(Self::L2),
            Self::L4 => Some(Self::L3),
        }
    }

    /// Bit position of this level's lowest index bit (12 + 9·level).
    #[inline]
    pub const fn shift(self) -> u32 {
        PAGE_SHIFT + 9 * self.index()
    }
}

/// An address-space identifier: RISC-V ASID (16 bits) or x86 PCID (12 bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Asid(pub u16);

/// A virtual-machine identifier: RISC-V VMID (14 bits) or x86 VPID. `Vmid(0)` is the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vmid(pub u16);

impl Vmid {
    /// The host's own translations (native runs, hypervisor mappings).
    pub const HOST: Vmid = Vmid(0);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn page_size_shifts_follow_the_nine_bit_radix() {
        assert_eq!(PageSize::Size4K.bytes(), 4096);
        assert_eq!(PageSize::Size2M.bytes(), 2 << 20);
        assert_eq!(PageSize::Size1G.bytes(), 1 << 30);
        assert_eq!(PageSize::Size512G.bytes(), 512 << 30);
        assert_eq!(PageSize::Size256T.bytes(), 256 << 40);
        for size in PageSize::ALL {
            assert_eq!(PageSize::at_level(size.level()), size);
            assert_eq!(size.level().shift(), size.shift());
        }
    }

    #[test]
    fn bits_extracts_inclusive_fields() {
        assert_eq!(bits(0xABCD, 7, 4), 0xC);
        assert_eq!(bits(u64::MAX, 63, 0), u64::MAX);
        assert_eq!(bits(1 << 63, 63, 63), 1);
    }

    #[test]
    fn levels_step_down_to_the_leaf() {
        assert_eq!(Level::L4.down(), Some(Level::L3));
        assert_eq!(Level::L0.down(), None);
        assert_eq!(Level::from_index(5), None);
    }

    proptest! {
        #[test]
        fn align_down_plus_offset_is_identity(raw in any::<u64>(), s in 0usize..5) {
            let size = PageSize::ALL[s];
            let a = Gva::new(raw);
            let base = a.align_down(size);
            prop_assert!(base.is_aligned(size));
            prop_assert_eq!(base.checked_add(a.page_offset(size)), Some(a));
            prop_assert!(a.page_offset(size) < size.bytes());
        }

        #[test]
        fn page_number_round_trips(raw in any::<u64>()) {
            let a = Hpa::new(raw);
            prop_assert_eq!(a.page().addr(), a.align_down(PageSize::Size4K));
            prop_assert_eq!(a.offset_from(a.align_down(PageSize::Size4K)), Some(a.page_offset(PageSize::Size4K)));
        }

        #[test]
        fn checked_add_detects_overflow(raw in any::<u64>(), add in any::<u64>()) {
            let a = Gpa::new(raw);
            prop_assert_eq!(a.checked_add(add).is_none(), raw.checked_add(add).is_none());
        }
    }
}
