//! Flat nested tables (Ahn, Jin and Huh, ISCA 2012): the nested dimension as a single level, an
//! array indexed by guest frame number, so that translating a guest-physical address reads one
//! entry instead of one per nested level. A hardware 2D walk over an n-level guest table then
//! reads at most n guest entries plus n + 1 flat entries: 2n + 1 (7 for Sv39, 9 for x86-64
//! 4-level), against (n + 1)(m + 1) − 1 for an m-level radix nested table.
//!
//! A [`FlatTable`] is a one-level radix table in host memory whose root holds one entry per guest
//! frame: its [`Format`] is the VM's nested format cut down to level 0 with enough extra root
//! index bits to cover guest memory, so every entry is a real level-0 leaf of that format (RISC-V
//! G-stage or EPT bits), decoded, permission-checked and A/D-updated by the one generic
//! [`walk`] like any other table, and every read lands in the caller's [`EntryMemory`] (and so
//! in its [`WalkTrace`](super::walk::WalkTrace)). The table is sized to guest memory; a
//! guest-physical address beyond it finds no entry (a not-present fault, with no read), as a
//! bound register would give.
//!
//! [`NestedTable`] lets a two-dimensional walker (the hardware one in
//! [`crate::mmu`], or a software one) take either kind of nested table.

use super::entry::{Access, Decoded, LeafAttrs, Perms, Regime};
use super::format::{Family, Format, Stage, INDEX_BITS, PTE_BYTES};
use super::mapper::{MapError, PendingFlush, TableStore};
use super::walk::{
    walk, EntryMemory, Leaf, NoWalkCache, PageTable, WalkCache, WalkError, WalkFault,
};
use crate::addr::{Gfn, Gpa, GuestPhys, Hfn, HostPhys, Hpa, Level, PageSize};
use crate::mem::{HostMemory, MemError};
use crate::paging::FaultKind;

/// A flat nested table: one level-0 leaf of the nested format per guest frame, in host memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlatTable {
    table: PageTable<GuestPhys, HostPhys>,
    entries: u64,
}

impl FlatTable {
    /// A flat table at `base` with `entries` entries (one per guest frame) encoded in `nested`'s
    /// level-0 leaf format.
    ///
    /// # Panics
    /// If `nested` is not a nested (G-stage/EPT) format, `entries` is 0, or `base` is not aligned
    /// to the table's power-of-two span (see [`FlatTable::alignment_frames`]). All are
    /// programming errors, never input-dependent.
    pub fn new(base: Hpa, entries: u64, nested: Format) -> Self {
        assert!(entries > 0, "a flat table needs at least one entry");
        FlatTable { table: PageTable::new(base, Self::format_for(nested, entries)), entries }
    }

    /// Allocates a zeroed flat table of `entries` entries in `host` (contiguous frames, aligned as
    /// [`FlatTable::new`] needs).
    pub fn alloc(host: &mut HostMemory, entries: u64, nested: Format) -> Result<Self, MemError> {
        let entries = entries.max(1);
        let frames = Self::frames_for(entries);
        let base = host.alloc_contiguous(frames, Self::alignment_frames(entries))?;
        Ok(FlatTable::new(base.addr(), entries, nested))
    }

    /// Host frames a table of `entries` entries occupies.
    pub const fn frames_for(entries: u64) -> u64 {
        (entries * PTE_BYTES).div_ceil(PageSize::Size4K.bytes())
    }

    /// The alignment, in frames, of a table of `entries` entries: its index covers a power of two
    /// of entries (the walker's root index is a bit field), so its base is aligned to that span.
    pub const fn alignment_frames(entries: u64) -> u64 {
        let span = 1u64 << (INDEX_BITS + Self::extra_bits(entries));
        span * PTE_BYTES / PageSize::Size4K.bytes()
    }

    /// Index bits beyond the usual 9 that cover `entries` entries.
    const fn extra_bits(entries: u64) -> u32 {
        let bits = u64::BITS - entries.saturating_sub(1).leading_zeros();
        bits.saturating_sub(INDEX_BITS)
    }

    /// The one-level format of a flat table of `entries` entries whose leaves are `nested`'s.
    fn format_for(nested: Format, entries: u64) -> Format {
        assert_eq!(nested.stage, Stage::Nested, "{nested} is not a nested format");
        let name = match nested.family {
            Family::Ept => "flat (EPT leaves)",
            Family::RiscV | Family::X86 => "flat (RISC-V G-stage leaves)",
        };
        let extra = u8::try_from(Self::extra_bits(entries)).unwrap_or(u8::MAX);
        Format { name, levels: 1, root_extra_bits: extra, largest_leaf: Level::L0, ..nested }
    }

    /// The table's one-level format.
    #[inline]
    pub const fn format(&self) -> &Format {
        self.table.format()
    }

    /// The first entry's host address.
    #[inline]
    pub const fn base(&self) -> Hpa {
        self.table.root()
    }

    /// Entries (guest frames covered).
    #[inline]
    pub const fn entries(&self) -> u64 {
        self.entries
    }

    /// The table's size in bytes: 8 per guest frame (8 MiB for a 4 GiB guest).
    #[inline]
    pub const fn bytes(&self) -> u64 {
        self.entries * PTE_BYTES
    }

    /// The host address of the entry for `gfn`, or `None` beyond the table.
    #[inline]
    pub fn entry_addr(&self, gfn: Gfn) -> Option<Hpa> {
        (gfn.as_u64() < self.entries)
            .then(|| self.table.entry_addr(self.base(), gfn.addr(), Level::L0))
    }

    /// Maps `gfn` to `hfn` with `attrs`, storing one level-0 leaf. Refuses a frame beyond the
    /// table and an entry already valid.
    pub fn map<T: TableStore<HostPhys>>(
        &self,
        store: &mut T,
        gfn: Gfn,
        hfn: Hfn,
        attrs: LeafAttrs,
    ) -> Result<PendingFlush<GuestPhys>, MapError> {
        let Some(entry) = self.entry_addr(gfn) else {
            return Err(MapError::BeyondTable { gpa: gfn.addr().as_u64(), entries: self.entries });
        };
        if !matches!(self.format().decode(store.load(entry), Level::L0), Ok(Decoded::Invalid)) {
            return Err(MapError::AlreadyMapped { va: gfn.addr().as_u64() });
        }
        store.store(entry, self.format().encode_leaf(hfn.addr().as_u64(), Level::L0, attrs));
        Ok(PendingFlush { addr: gfn.addr(), size: PageSize::Size4K, was_valid: false })
    }

    /// Whether the entry for `gfn` is a valid leaf (a software read that records nothing: the
    /// hypervisor's own check).
    pub fn is_mapped(&self, host: &HostMemory, gfn: Gfn) -> bool {
        self.entry_addr(gfn).is_some_and(|entry| {
            matches!(
                self.format().decode(host.read_u64(entry), Level::L0),
                Ok(Decoded::Leaf { .. })
            )
        })
    }

    /// Translates `gpa` for `access`: one entry read through `mem` (so it is recorded wherever
    /// `mem` records), decoded, checked and A/D-updated by the generic walker. A GPA beyond the
    /// table is a not-present fault at level 0 with no read.
    #[inline]
    pub fn translate<M: EntryMemory<HostPhys>>(
        &self,
        gpa: Gpa,
        access: Access,
        regime: &Regime,
        mem: &mut M,
    ) -> Result<Leaf<HostPhys>, WalkError<M::Error>> {
        if gpa.page().as_u64() >= self.entries {
            let fault =
                WalkFault { kind: FaultKind::NotPresent, level: Level::L0, perms: Perms::empty() };
            return Err(WalkError::Fault(fault));
        }
        walk(&self.table, gpa, access, regime, mem, &mut NoWalkCache)
    }
}

/// The nested dimension of a two-dimensional walk: a radix nested table (G-stage, EPT) or a flat
/// one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NestedTable<'a> {
    /// A radix table of the nested format, walked level by level (page-walk caches apply).
    Radix(&'a PageTable<GuestPhys, HostPhys>),
    /// A flat table: one read per translation (no upper levels, so no page-walk cache).
    Flat(&'a FlatTable),
}

impl NestedTable<'_> {
    /// The format faults are encoded in.
    #[inline]
    pub fn format(&self) -> &Format {
        match self {
            NestedTable::Radix(t) => t.format(),
            NestedTable::Flat(t) => t.format(),
        }
    }

    /// Translates `gpa` through the table: a walk of the radix table with `cache`, or the flat
    /// table's single read (`cache` unused).
    #[inline]
    pub fn translate<M, C>(
        &self,
        gpa: Gpa,
        access: Access,
        regime: &Regime,
        mem: &mut M,
        cache: &mut C,
    ) -> Result<Leaf<HostPhys>, WalkError<M::Error>>
    where
        M: EntryMemory<HostPhys>,
        C: WalkCache<GuestPhys, HostPhys>,
    {
        match self {
            NestedTable::Radix(t) => walk(t, gpa, access, regime, mem, cache),
            NestedTable::Flat(t) => t.translate(gpa, access, regime, mem),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::HostTableStore;
    use crate::mem::HostTableMemory;
    use crate::mem::TablePool;
    use crate::paging::walk::{Dim, WalkTrace};
    use crate::paging::{AccessKind, AdPolicy, Privilege};

    const RW: Perms = Perms::R.union(Perms::W).union(Perms::X).union(Perms::U);
    const LOAD: Access = Access { kind: AccessKind::Load, privilege: Privilege::User };
    const STORE: Access = Access { kind: AccessKind::Store, privilege: Privilege::User };
    const HW_AD: Regime = Regime { sum: false, mxr: false, ad: AdPolicy::Hardware };

    fn table(nested: Format, entries: u64) -> (HostMemory, FlatTable) {
        let mut host = HostMemory::new(1 << 16);
        let flat = FlatTable::alloc(&mut host, entries, nested).unwrap();
        (host, flat)
    }

    fn translate(
        host: &mut HostMemory,
        flat: &FlatTable,
        gpa: Gpa,
        access: Access,
    ) -> (Result<Leaf<HostPhys>, WalkFault>, WalkTrace) {
        let mut trace = WalkTrace::default();
        let mut mem = HostTableMemory { host, trace: &mut trace, dim: Dim::Nested };
        let r = flat.translate(gpa, access, &HW_AD, &mut mem).map_err(|e| match e {
            WalkError::Fault(f) => f,
            WalkError::Memory(never) => match never {},
        });
        (r, trace)
    }

    #[test]
    fn a_gigabyte_guest_needs_a_two_megabyte_table_of_real_leaves() {
        for nested in [Format::SV39X4, Format::EPT_4LEVEL] {
            let (mut host, flat) = table(nested, 1 << 18);
            assert_eq!((flat.bytes(), FlatTable::frames_for(1 << 18)), (2 << 20, 512));
            assert_eq!(flat.base().as_u64() % (2 << 20), 0, "aligned to its span");
            let gfn = Gfn::new(0x1_2345);
            let hfn = Hfn::new(0xabcd);
            let mut store = HostTableStore { host: &mut host, pool: TablePool::Nested };
            flat.map(&mut store, gfn, hfn, LeafAttrs::new(RW)).unwrap().ignore();
            let entry = flat.entry_addr(gfn).unwrap();
            assert_eq!(entry.as_u64(), flat.base().as_u64() + 8 * 0x1_2345);
            let raw = host.read_u64(entry);
            assert_eq!(raw, nested.encode_leaf(hfn.addr().as_u64(), Level::L0, LeafAttrs::new(RW)));
            assert!(flat.is_mapped(&host, gfn));
            assert!(!flat.is_mapped(&host, Gfn::new(0x1_2346)));
        }
    }

    #[test]
    fn a_translation_reads_exactly_one_entry_and_sets_accessed_and_dirty() {
        let (mut host, flat) = table(Format::SV39X4, 1000);
        let mut store = HostTableStore { host: &mut host, pool: TablePool::Nested };
        let fresh = LeafAttrs { accessed: false, dirty: false, ..LeafAttrs::new(RW) };
        flat.map(&mut store, Gfn::new(7), Hfn::new(99), fresh).unwrap().ignore();
        let gpa = Gpa::new(7 * 4096 + 0x123);
        let (leaf, trace) = translate(&mut host, &flat, gpa, LOAD);
        let leaf = leaf.unwrap();
        assert_eq!(leaf.output(gpa), Hpa::new(99 * 4096 + 0x123));
        assert_eq!(leaf.size, PageSize::Size4K);
        assert_eq!((trace.reads(), trace.total()), (1, 2), "one read, one A update");
        let (leaf, trace) = translate(&mut host, &flat, gpa, STORE);
        assert!(leaf.unwrap().dirty);
        assert_eq!((trace.reads(), trace.total()), (1, 2), "one read, one D update");
        let (_, trace) = translate(&mut host, &flat, gpa, STORE);
        assert_eq!(trace.total(), 1, "A and D already set");
    }

    #[test]
    fn frames_beyond_the_table_and_empty_entries_are_not_present() {
        let (mut host, flat) = table(Format::EPT_4LEVEL, 1000);
        let (r, trace) = translate(&mut host, &flat, Gpa::new(1000 * 4096), LOAD);
        assert_eq!(r.unwrap_err().kind, FaultKind::NotPresent);
        assert_eq!(trace.total(), 0, "beyond the bound: nothing read");
        let (r, trace) = translate(&mut host, &flat, Gpa::new(999 * 4096), LOAD);
        assert_eq!(r.unwrap_err().kind, FaultKind::NotPresent);
        assert_eq!(trace.reads(), 1);
        let mut store = HostTableStore { host: &mut host, pool: TablePool::Nested };
        let beyond = flat.map(&mut store, Gfn::new(1000), Hfn::new(1), LeafAttrs::new(RW));
        assert!(beyond.is_err());
        flat.map(&mut store, Gfn::new(3), Hfn::new(1), LeafAttrs::new(RW)).unwrap().ignore();
        let again = flat.map(&mut store, Gfn::new(3), Hfn::new(2), LeafAttrs::new(RW));
        assert!(matches!(again, Err(MapError::AlreadyMapped { .. })));
    }

    #[test]
    fn nested_permissions_are_checked_as_the_format_says() {
        let (mut host, flat) = table(Format::EPT_4LEVEL, 64);
        let mut store = HostTableStore { host: &mut host, pool: TablePool::Nested };
        let read_only = LeafAttrs::new(Perms::R);
        flat.map(&mut store, Gfn::new(5), Hfn::new(9), read_only).unwrap().ignore();
        let (r, _) = translate(&mut host, &flat, Gpa::new(5 * 4096), STORE);
        assert_eq!(r.unwrap_err().kind, FaultKind::Permission);
        assert!(translate(&mut host, &flat, Gpa::new(5 * 4096), LOAD).0.is_ok());
    }

    #[test]
    fn the_table_is_sized_to_guest_memory_and_aligned_to_its_index_span() {
        // 1,000 entries: 8,000 bytes in 2 frames; the index covers 1,024 entries (8 KiB).
        assert_eq!((FlatTable::frames_for(1000), FlatTable::alignment_frames(1000)), (2, 2));
        assert_eq!((FlatTable::frames_for(512), FlatTable::alignment_frames(512)), (1, 1));
        // 1.5 GiB of guest: a 3 MiB table whose index spans 4 MiB.
        let entries = 3 << 17;
        assert_eq!(
            (FlatTable::frames_for(entries), FlatTable::alignment_frames(entries)),
            (768, 1024)
        );
        let (_, flat) = table(Format::SV39X4, 1000);
        assert_eq!(flat.bytes(), 8000);
        assert_eq!(flat.format().levels, 1);
    }
}
