//! One generic walker for every format and both dimensions.
//!
//! [`walk`] reads a table of any [`Format`] entry by entry. Where the entries physically live is
//! abstracted by [`EntryMemory`]: host memory for nested and shadow tables, guest memory through
//! the hypervisor's map for software walks, or guest memory translated by a nested walk for the
//! hardware two-dimensional walk. A [`WalkCache`] lets a page-walk cache skip upper levels. The
//! walker itself never allocates; every reference is recorded by the memory into a fixed-size
//! [`WalkTrace`].

use std::marker::PhantomData;

use super::entry::{
    Access, AdPolicy, Decoded, EntryRules, EptRules, FaultKind, FaultSite, Perms, Regime,
    RiscVRules, X86Rules,
};
use super::format::{Family, Format, Stage, PTE_BYTES};
use crate::addr::{Addr, Hpa, Level, PageSize, Space};

/// A page table: a root in the output space `Out` (tables live in the space their pointers name)
/// translating `In` addresses, read with `format`.
///
/// `PageTable<GuestVirt, GuestPhys>` is a guest table, `PageTable<GuestPhys, HostPhys>` a nested
/// table and `PageTable<GuestVirt, HostPhys>` a shadow table; they cannot be confused:
///
/// ```compile_fail
/// use memvirt::addr::{GuestPhys, GuestVirt, HostPhys, Gpa};
/// use memvirt::paging::{Format, PageTable};
/// let guest: PageTable<GuestVirt, GuestPhys> = PageTable::new(Gpa::ZERO, Format::SV39);
/// let shadow: PageTable<GuestVirt, HostPhys> = guest; // a guest table is not a shadow table
/// ```
///
/// ```compile_fail
/// use memvirt::addr::{Gpa, Hpa};
/// let gpa = Gpa::new(0x1000);
/// let hpa: Hpa = gpa; // guest-physical is not host-physical
/// ```
pub struct PageTable<In: Space, Out: Space> {
    root: Addr<Out>,
    format: Format,
    _in: PhantomData<In>,
}

impl<In: Space, Out: Space> Clone for PageTable<In, Out> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<In: Space, Out: Space> Copy for PageTable<In, Out> {}
impl<In: Space, Out: Space> PartialEq for PageTable<In, Out> {
    fn eq(&self, other: &Self) -> bool {
        self.root == other.root && self.format == other.format
    }
}
impl<In: Space, Out: Space> Eq for PageTable<In, Out> {}
impl<In: Space, Out: Space> std::fmt::Debug for PageTable<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} table {}->{} at {}", self.format, In::NAME, Out::NAME, self.root)
    }
}

impl<In: Space, Out: Space> PageTable<In, Out> {
    /// The stage of every table translating `In` addresses ([`PageTable::new`] checks that the
    /// format's agrees): a constant, so that the walker's stage-dependent rules fold away.
    const STAGE: Stage = if In::NESTED_INPUT { Stage::Nested } else { Stage::First };

    /// A table rooted at `root`.
    ///
    /// # Panics
    /// If the format's stage does not match the input space (a G-stage format for a virtual
    /// input, or the reverse), or the root is not aligned to the root table's size. Both are
    /// programming errors, never input-dependent.
    pub fn new(root: Addr<Out>, format: Format) -> Self {
        assert_eq!(
            In::NESTED_INPUT,
            format.stage == Stage::Nested,
            "{format} cannot translate {} addresses",
            In::NAME
        );
        assert!(root.as_u64() % format.root_bytes() == 0, "{format} root {root} is misaligned");
        PageTable { root, format, _in: PhantomData }
    }

    /// The root table's address.
    #[inline]
    pub const fn root(&self) -> Addr<Out> {
        self.root
    }

    /// The table's format.
    #[inline]
    pub const fn format(&self) -> &Format {
        &self.format
    }

    /// The address of the entry for `input` in the table at `table` of level `level`.
    #[inline]
    pub fn entry_addr(&self, table: Addr<Out>, input: Addr<In>, level: Level) -> Addr<Out> {
        table.wrapping_add(self.format.index(input.as_u64(), level) * PTE_BYTES)
    }
}

/// Which dimension of a two-dimensional walk a reference belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// The first (guest, shadow or native) dimension.
    Guest,
    /// The nested (G-stage/EPT) dimension.
    Nested,
}

/// One page-table reference of a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WalkRef {
    /// The host physical address read or written.
    pub hpa: Hpa,
    /// The level of the entry.
    pub level: Level,
    /// The dimension it belongs to.
    pub dim: Dim,
    /// `true` for an accessed/dirty update, `false` for a read.
    pub write: bool,
}

/// Capacity of a [`WalkTrace`]: the deepest 2D walk reads 35 entries (5×5); A/D updates and a
/// retried final translation fit in the rest.
pub const MAX_WALK_REFS: usize = 64;

/// The references of one walk, in order, without allocation.
#[derive(Clone, Debug)]
pub struct WalkTrace {
    refs: [WalkRef; MAX_WALK_REFS],
    len: usize,
    dropped: usize,
}

impl Default for WalkTrace {
    fn default() -> Self {
        const EMPTY: WalkRef =
            WalkRef { hpa: Hpa::ZERO, level: Level::L0, dim: Dim::Guest, write: false };
        WalkTrace { refs: [EMPTY; MAX_WALK_REFS], len: 0, dropped: 0 }
    }
}

impl WalkTrace {
    /// Forgets every recorded reference.
    #[inline]
    pub fn clear(&mut self) {
        self.len = 0;
        self.dropped = 0;
    }

    /// Records a reference. Past the capacity the reference is counted but not kept.
    #[inline]
    pub fn push(&mut self, r: WalkRef) {
        if let Some(slot) = self.refs.get_mut(self.len) {
            *slot = r;
            self.len += 1;
        } else {
            self.dropped += 1;
        }
    }

    /// The recorded references.
    #[inline]
    pub fn refs(&self) -> &[WalkRef] {
        &self.refs[..self.len]
    }

    /// Every reference, including any beyond the capacity.
    #[inline]
    pub fn total(&self) -> usize {
        self.len + self.dropped
    }

    /// Reads only (A/D updates excluded).
    pub fn reads(&self) -> usize {
        self.refs().iter().filter(|r| !r.write).count()
    }

    /// Reads in dimension `dim`.
    pub fn reads_in(&self, dim: Dim) -> usize {
        self.refs().iter().filter(|r| !r.write && r.dim == dim).count()
    }
}

/// Where a table's entries live. Implementations record each reference they make.
pub trait EntryMemory<S: Space> {
    /// Failure to reach an entry (for the 2D walk: a fault in the nested dimension).
    type Error;
    /// Reads the 8-byte entry at `addr`, an entry of `level`.
    fn read_entry(&mut self, addr: Addr<S>, level: Level) -> Result<u64, Self::Error>;
    /// Writes back an entry whose A/D bits the walker set.
    fn write_entry(&mut self, addr: Addr<S>, level: Level, value: u64) -> Result<(), Self::Error>;
}

/// A cached upper-level pointer: "the table at `level` for this input lives at `table`".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedPointer<Out: Space> {
    /// The level of the table the pointer leads to.
    pub level: Level,
    /// The table's address.
    pub table: Addr<Out>,
    /// Permissions combined over the levels above (x86/EPT).
    pub perms: Perms,
    /// Whether a level above was a RISC-V global pointer.
    pub global: bool,
}

/// A page-walk cache as the walker sees it.
pub trait WalkCache<In: Space, Out: Space> {
    /// The deepest cached pointer on the path to `input`, if any.
    fn lookup(&mut self, format: &Format, input: Addr<In>) -> Option<CachedPointer<Out>>;
    /// Remembers that the entry at `entry_level` on the path to `input` points at `ptr`.
    fn fill(
        &mut self,
        format: &Format,
        input: Addr<In>,
        entry_level: Level,
        ptr: CachedPointer<Out>,
    );
}

/// No page-walk cache: every walk starts at the root.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoWalkCache;

impl<In: Space, Out: Space> WalkCache<In, Out> for NoWalkCache {
    #[inline]
    fn lookup(&mut self, _: &Format, _: Addr<In>) -> Option<CachedPointer<Out>> {
        None
    }
    #[inline]
    fn fill(&mut self, _: &Format, _: Addr<In>, _: Level, _: CachedPointer<Out>) {}
}

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Leaf<Out: Space> {
    /// Base of the mapped page.
    pub base: Addr<Out>,
    /// The page size (from the level of the leaf).
    pub size: PageSize,
    /// Effective permissions, combined over the levels.
    pub perms: Perms,
    /// Global mapping.
    pub global: bool,
    /// Whether the leaf's D bit is set (after this walk's own update).
    pub dirty: bool,
}

impl<Out: Space> Leaf<Out> {
    /// The output address for `input`, which must be the address this leaf was walked for.
    #[inline]
    pub fn output<In: Space>(&self, input: Addr<In>) -> Addr<Out> {
        Addr::new(self.base.as_u64() | input.page_offset(self.size))
    }
}

/// A fault found by the walker in one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WalkFault {
    /// What went wrong.
    pub kind: FaultKind,
    /// The level of the entry that failed (the root level for a non-canonical input).
    pub level: Level,
    /// Permissions accumulated above the failing entry.
    pub perms: Perms,
}

/// Why a walk stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WalkError<E> {
    /// The table itself faulted.
    Fault(WalkFault),
    /// The memory holding the table could not be reached (a nested fault in a 2D walk).
    Memory(E),
}

impl WalkFault {
    /// The architectural fault site for this fault, for `format.arch_cause`.
    pub fn site(&self, access: Access, final_translation: bool) -> FaultSite {
        FaultSite { kind: self.kind, access, final_translation, perms: self.perms }
    }
}

/// Walks `table` for `input`, following the priv-spec algorithm (and its x86/EPT equivalents):
/// start at the root (or the deepest page-walk-cache hit), read an entry per level, decode it,
/// stop at a leaf, check permissions, then maintain A/D as `regime.ad` says.
#[inline]
pub fn walk<In, Out, M, C>(
    table: &PageTable<In, Out>,
    input: Addr<In>,
    access: Access,
    regime: &Regime,
    mem: &mut M,
    cache: &mut C,
) -> Result<Leaf<Out>, WalkError<M::Error>>
where
    In: Space,
    Out: Space,
    M: EntryMemory<Out>,
    C: WalkCache<In, Out>,
{
    let format = table.format();
    if !format.input_is_valid(input.as_u64()) {
        let fault = WalkFault {
            kind: FaultKind::NonCanonical,
            level: format.root_level(),
            perms: Perms::all(),
        };
        return Err(WalkError::Fault(fault));
    }
    let start = cache.lookup(format, input).unwrap_or_else(|| CachedPointer {
        level: format.root_level(),
        table: table.root(),
        perms: Perms::all(),
        global: false,
    });
    // The family is dispatched on once a walk, not once an entry (see `EntryRules`).
    match format.family {
        Family::RiscV => {
            descend::<RiscVRules, _, _, _, _>(table, start, input, access, regime, mem, cache)
        }
        Family::X86 => {
            descend::<X86Rules, _, _, _, _>(table, start, input, access, regime, mem, cache)
        }
        Family::Ept => {
            descend::<EptRules, _, _, _, _>(table, start, input, access, regime, mem, cache)
        }
    }
}

/// The levels of [`walk`] from `start` down, for a table whose format's family is `R`'s.
#[inline(always)]
fn descend<R: EntryRules, In: Space, Out: Space, M: EntryMemory<Out>, C: WalkCache<In, Out>>(
    table: &PageTable<In, Out>,
    start: CachedPointer<Out>,
    input: Addr<In>,
    access: Access,
    regime: &Regime,
    mem: &mut M,
    cache: &mut C,
) -> Result<Leaf<Out>, WalkError<M::Error>> {
    let format = table.format();
    let stage = PageTable::<In, Out>::STAGE;
    let fault = |kind, level, perms| WalkError::Fault(WalkFault { kind, level, perms });
    let (mut level, mut table_addr, mut perms, mut global) =
        (start.level, start.table, start.perms, start.global);
    loop {
        let entry_addr = table.entry_addr(table_addr, input, level);
        let raw = mem.read_entry(entry_addr, level).map_err(WalkError::Memory)?;
        match format.decode_as::<R>(raw, level, stage) {
            Err(kind) => return Err(fault(kind, level, perms)),
            // A not-present entry grants nothing: EPT reports the AND over the levels as 000.
            Ok(Decoded::Invalid) => {
                return Err(fault(FaultKind::NotPresent, level, Perms::empty()))
            }
            Ok(Decoded::Table { next, perms: p, global: g, accessed }) => {
                if !accessed && regime.ad == AdPolicy::Hardware && R::SETS_ACCESSED_IN_TABLES {
                    // x86/EPT set A in every entry the walk uses.
                    let updated = R::with_accessed_dirty(raw, false);
                    mem.write_entry(entry_addr, level, updated).map_err(WalkError::Memory)?;
                }
                perms &= p;
                global |= g;
                let Some(down) = level.down() else {
                    return Err(fault(FaultKind::NotPresent, level, perms));
                };
                let next = Addr::new(next);
                cache.fill(
                    format,
                    input,
                    level,
                    CachedPointer { level: down, table: next, perms, global },
                );
                level = down;
                table_addr = next;
            }
            Ok(Decoded::Leaf { base, attrs }) => {
                let effective = perms & attrs.perms;
                if let Err(kind) = R::check_permissions(effective, access, regime, stage) {
                    return Err(fault(kind, level, effective));
                }
                let store = access.kind == super::entry::AccessKind::Store;
                let needs_update = !attrs.accessed || (store && !attrs.dirty);
                let mut dirty = attrs.dirty;
                if needs_update {
                    match regime.ad {
                        // Priv spec step 9 (Svade): raise a page fault; software sets A/D.
                        AdPolicy::Fault => {
                            return Err(fault(FaultKind::AccessedDirty, level, effective))
                        }
                        // Step 9 (Svadu) / SDM 4.8: an atomic update of the entry.
                        AdPolicy::Hardware => {
                            let updated = R::with_accessed_dirty(raw, store);
                            mem.write_entry(entry_addr, level, updated)
                                .map_err(WalkError::Memory)?;
                            dirty |= store;
                        }
                        AdPolicy::Ignore => dirty = true,
                    }
                }
                return Ok(Leaf {
                    base: Addr::new(base),
                    size: PageSize::at_level(level),
                    perms: effective,
                    global: global || attrs.global,
                    dirty: dirty || regime.ad == AdPolicy::Ignore,
                });
            }
        }
    }
}
