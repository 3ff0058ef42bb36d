//! Building and editing tables entry by entry, as an OS or a hypervisor does: allocate missing
//! intermediate tables, write the leaf, and hand back the TLB-maintenance obligation the change
//! creates.

use super::entry::{Decoded, LeafAttrs};
use super::walk::PageTable;
use crate::addr::{Addr, Level, PageSize, Space};
use crate::mem::MemError;

/// Where a table's pages live, as the code that edits them sees it: plain loads and stores, and
/// an allocator of zeroed table pages.
pub trait TableStore<S: Space> {
    /// Loads the entry at `addr`.
    fn load(&mut self, addr: Addr<S>) -> u64;
    /// Stores `value` at `addr`: an ordinary store, which a scheme may intercept.
    fn store(&mut self, addr: Addr<S>, value: u64);
    /// Allocates a zeroed, naturally aligned table of `bytes` (4 KiB, or 16 KiB for an x4 root).
    fn alloc_table(&mut self, bytes: u64) -> Result<Addr<S>, MemError>;
}

/// Why a table edit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// The address does not fit the format.
    #[error("address {addr:#x} is not canonical for {format}")]
    NonCanonical {
        /// The raw input address.
        addr: u64,
        /// The format's name.
        format: &'static str,
    },
    /// The format has no leaves of this size.
    #[error("{format} cannot map {size} pages")]
    SizeUnsupported {
        /// Format name.
        format: &'static str,
        /// Requested size name.
        size: &'static str,
    },
    /// The virtual or physical address is not aligned to the page size.
    #[error("mapping of {size} page at {va:#x} -> {pa:#x} is misaligned")]
    Misaligned {
        /// Raw input address.
        va: u64,
        /// Raw output address.
        pa: u64,
        /// Page size.
        size: &'static str,
    },
    /// A valid entry (leaf or a table where a superpage was asked for) is already there.
    #[error("{va:#x} is already mapped")]
    AlreadyMapped {
        /// Raw input address.
        va: u64,
    },
    /// A guest frame beyond the end of a flat table (which is sized to guest memory).
    #[error("guest-physical {gpa:#x} lies beyond the {entries}-entry flat table")]
    BeyondTable {
        /// Raw guest-physical address.
        gpa: u64,
        /// Entries of the table.
        entries: u64,
    },
    /// A superpage already covers the address where a smaller mapping was asked for.
    #[error("{va:#x} lies inside an existing superpage")]
    InsideSuperpage {
        /// Raw input address.
        va: u64,
    },
    /// An existing entry on the path is malformed.
    #[error("malformed entry at level {level} on the path to {va:#x}")]
    Malformed {
        /// Raw input address.
        va: u64,
        /// Level of the entry.
        level: u32,
    },
    /// Allocating a table failed.
    #[error(transparent)]
    Memory(#[from] MemError),
}

/// A change to a translation that the hardware may still cache. It must be flushed (by whatever
/// maintenance the OS model issues) or explicitly ignored, as x86_64's `MapperFlush` does.
#[must_use = "page-table changes must be followed by a TLB flush or explicitly ignored"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingFlush<In: Space> {
    /// The start of the changed page.
    pub addr: Addr<In>,
    /// Its size.
    pub size: PageSize,
    /// Whether the entry was valid before the change. Architectures that never cache invalid
    /// entries (x86) need no flush when this is `false`.
    pub was_valid: bool,
}

impl<In: Space> PendingFlush<In> {
    /// Declares that no flush is needed (or that the caller issues a wider one).
    pub fn ignore(self) {}
}

/// The location and contents of a leaf entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafSlot<Out: Space> {
    /// Address of the entry.
    pub entry: Addr<Out>,
    /// Its raw value.
    pub raw: u64,
    /// Its level.
    pub level: Level,
}

/// Maps `va` to `pa` with a `size` page, allocating intermediate tables as needed.
pub fn map<In: Space, Out: Space, T: TableStore<Out>>(
    table: &PageTable<In, Out>,
    store: &mut T,
    va: Addr<In>,
    pa: Addr<Out>,
    size: PageSize,
    attrs: LeafAttrs,
) -> Result<PendingFlush<In>, MapError> {
    let format = *table.format();
    if !format.input_is_valid(va.as_u64()) {
        return Err(MapError::NonCanonical { addr: va.as_u64(), format: format.name });
    }
    if !format.leaf_allowed(size.level()) {
        return Err(MapError::SizeUnsupported { format: format.name, size: size.name() });
    }
    if !va.is_aligned(size) || !pa.is_aligned(size) {
        return Err(MapError::Misaligned { va: va.as_u64(), pa: pa.as_u64(), size: size.name() });
    }
    let mut level = format.root_level();
    let mut table_addr = table.root();
    while level > size.level() {
        let entry = table.entry_addr(table_addr, va, level);
        let raw = store.load(entry);
        table_addr = match format.decode(raw, level) {
            Ok(Decoded::Table { next, .. }) => Addr::new(next),
            Ok(Decoded::Invalid) => {
                let next = store.alloc_table(1 << crate::addr::PAGE_SHIFT)?;
                store.store(entry, format.encode_table(next.as_u64()));
                next
            }
            Ok(Decoded::Leaf { .. }) => return Err(MapError::InsideSuperpage { va: va.as_u64() }),
            Err(_) => return Err(MapError::Malformed { va: va.as_u64(), level: level.index() }),
        };
        level = match level.down() {
            Some(l) => l,
            None => return Err(MapError::Malformed { va: va.as_u64(), level: 0 }),
        };
    }
    let entry = table.entry_addr(table_addr, va, level);
    let old = store.load(entry);
    if !matches!(format.decode(old, level), Ok(Decoded::Invalid)) {
        return Err(MapError::AlreadyMapped { va: va.as_u64() });
    }
    store.store(entry, format.encode_leaf(pa.as_u64(), level, attrs));
    Ok(PendingFlush { addr: va, size, was_valid: false })
}

/// Finds the leaf entry for `va` by a software walk that records nothing.
pub fn find_leaf<In: Space, Out: Space, T: TableStore<Out>>(
    table: &PageTable<In, Out>,
    store: &mut T,
    va: Addr<In>,
) -> Option<LeafSlot<Out>> {
    let format = *table.format();
    if !format.input_is_valid(va.as_u64()) {
        return None;
    }
    let mut level = format.root_level();
    let mut table_addr = table.root();
    loop {
        let entry = table.entry_addr(table_addr, va, level);
        let raw = store.load(entry);
        match format.decode(raw, level) {
            Ok(Decoded::Table { next, .. }) => {
                table_addr = Addr::new(next);
                level = level.down()?;
            }
            Ok(Decoded::Leaf { .. }) => return Some(LeafSlot { entry, raw, level }),
            _ => return None,
        }
    }
}

/// Whether nothing maps or leads below `va`'s entry at `level`: the entry is invalid, or a
/// table above it is missing (Linux's `pmd_none` for level 1). A leaf above `level` is not empty.
pub fn entry_is_empty<In: Space, Out: Space, T: TableStore<Out>>(
    table: &PageTable<In, Out>,
    store: &mut T,
    va: Addr<In>,
    level: Level,
) -> bool {
    let format = *table.format();
    let mut at = format.root_level();
    let mut table_addr = table.root();
    loop {
        let raw = store.load(table.entry_addr(table_addr, va, at));
        match format.decode(raw, at) {
            Ok(Decoded::Invalid) => return true,
            Ok(Decoded::Table { next, .. }) if at > level => {
                table_addr = Addr::new(next);
                match at.down() {
                    Some(down) => at = down,
                    None => return false,
                }
            }
            _ => return false,
        }
    }
}

/// Replaces the leaf for `va` with `update(old)`, returning the flush obligation.
pub fn update_leaf<In: Space, Out: Space, T: TableStore<Out>>(
    table: &PageTable<In, Out>,
    store: &mut T,
    va: Addr<In>,
    update: impl FnOnce(u64) -> u64,
) -> Option<(LeafSlot<Out>, PendingFlush<In>)> {
    let slot = find_leaf(table, store, va)?;
    store.store(slot.entry, update(slot.raw));
    let size = PageSize::at_level(slot.level);
    Some((slot, PendingFlush { addr: va.align_down(size), size, was_valid: true }))
}

/// Clears the leaf for `va`, returning what it held and the flush obligation.
pub fn unmap<In: Space, Out: Space, T: TableStore<Out>>(
    table: &PageTable<In, Out>,
    store: &mut T,
    va: Addr<In>,
) -> Option<(LeafSlot<Out>, PendingFlush<In>)> {
    update_leaf(table, store, va, |_| 0)
}
