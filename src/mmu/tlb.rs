//! The combined TLB (GVA→HPA, or native VA→PA): per-page-size L1 tables and a unified L2, tagged
//! with VMID, ASID/PCID and the global bit.
//!
//! Each table answers exactly as a [`SetAssoc<TlbEntry>`](super::setassoc::SetAssoc) with LRU
//! replacement did (the tests keep that implementation and compare the two over random
//! operations): a lookup returns the first way, in way order, of the probed set whose entry
//! matches, whatever that entry's size; a fill replaces the entry of the same page and context,
//! else takes the first empty way, else evicts the least recently used entry. Only the layout is
//! specialised, for the TLB-miss path, which searches several sets per translation:
//!
//! - each way has three words, kept together per set: a tag (the page's base address with the
//!   size's index in its offset bits, so that one comparison checks page and size), a context
//!   word (VMID and ASID, or VMID and a global flag) and an LRU stamp;
//! - a lookup compares the address's tag for each size the table ever held (usually one), and
//!   the context word only where the tag matched: a 12-way miss is twelve compare-and-branch
//!   pairs over 96 contiguous bytes;
//! - the entries themselves, which only hits, fills, flushes and [`Tlb::entries`] read, are apart;
//! - the four tables' words live in one vector, and their LRU stamps come from one clock for
//!   the TLB, which orders each set's ways as a clock per table did; an empty way's stamp is 0,
//!   so the first empty way is the least recently used one and a fill needs a single scan for
//!   its victim;
//! - in front of the L1 tables, a hit memo (`HitMemo`) answers a repeated hit in the current
//!   context with one compare, touching the hit way's stamp by its index in that vector; the
//!   clock's ticks are then the memo hits' count, so that a hit counts nothing else.

use super::flush::TlbScope;
use super::setassoc::{check_geometry, GeometryError};
use super::ways::{self, SetWords, EMPTY_TAG};
use crate::addr::{u64_to_usize, Asid, Gva, Hfn, Hpa, Level, PageSize, Vmid, PAGE_SHIFT};
use crate::paging::{Access, AllowMask};

/// One cached translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TlbEntry {
    /// Virtual page number at the entry's size (`va >> size.shift()`).
    pub vpn: u64,
    /// Page size.
    pub size: PageSize,
    /// VMID tag.
    pub vmid: Vmid,
    /// ASID/PCID tag (ignored when `global`).
    pub asid: Asid,
    /// Global: matches every ASID of its VMID.
    pub global: bool,
    /// Host physical base of the page.
    pub base: Hpa,
    /// Access classes allowed without a walk.
    pub allow: AllowMask,
}

impl TlbEntry {
    /// An entry for the page of `size` containing `va`.
    pub fn new(
        va: Gva,
        size: PageSize,
        base: Hpa,
        tags: (Vmid, Asid, bool),
        allow: AllowMask,
    ) -> Self {
        let (vmid, asid, global) = tags;
        TlbEntry { vpn: va.as_u64() >> size.shift(), size, vmid, asid, global, base, allow }
    }

    /// Whether the entry translates `va` in context (`vmid`, `asid`).
    #[inline]
    pub fn matches(&self, va: Gva, vmid: Vmid, asid: Asid) -> bool {
        self.vpn == va.as_u64() >> self.size.shift()
            && self.vmid == vmid
            && (self.global || self.asid == asid)
    }

    /// Whether the entry covers `va` (any context).
    #[inline]
    pub fn covers(&self, va: Gva) -> bool {
        self.vpn == va.as_u64() >> self.size.shift()
    }

    /// The translation of `va`.
    #[inline]
    pub fn translate(&self, va: Gva) -> Hpa {
        Hpa::new(self.base.as_u64() | va.page_offset(self.size))
    }

    /// Whether a flush of `scope` removes the entry: its context is selected and, for a
    /// single-address scope, it covers that address.
    fn flushed_by(&self, scope: &TlbScope) -> bool {
        scope.selects(self.vmid, self.asid, self.global)
            && scope.va.is_none_or(|va| self.covers(va))
    }

    fn same_slot(&self, other: &TlbEntry) -> bool {
        self.vpn == other.vpn
            && self.size == other.size
            && self.vmid == other.vmid
            && self.global == other.global
            && (self.global || self.asid == other.asid)
    }

    /// The tag and context word of the way holding the entry.
    fn way_tags(&self) -> WayTags {
        let shift = self.size.shift();
        let base = self.vpn << shift;
        // A `vpn` with bits that shifting it back into an address loses is in no address's page
        // ([`TlbEntry::new`] never builds one).
        let tag =
            if base >> shift == self.vpn { page_tag(base, self.size) } else { UNMATCHABLE_TAG };
        let context = if self.global {
            global_context(self.vmid)
        } else {
            tagged_context(self.vmid, self.asid)
        };
        WayTags { tag, context }
    }
}

/// What a way keeps of its entry for searches.
#[derive(Clone, Copy, Debug)]
struct WayTags {
    /// The [`page_tag`] of the entry's page, which a lookup compares.
    tag: u64,
    /// The entry's context word: the lookup contexts it matches are exactly those whose
    /// [`Context::tagged`] or [`Context::global`] equals it.
    context: u64,
}

/// The tag of the `size` page based at `base`: the base with the size's index in its offset
/// bits, so that one comparison checks both page and size.
#[inline]
pub(super) fn page_tag(base: u64, size: PageSize) -> u64 {
    base | u64::from(size.level().index())
}

/// The tag of the `size` page containing `va`.
#[inline]
fn page_tag_of(va: Gva, size: PageSize) -> u64 {
    page_tag(va.as_u64() & !size.offset_mask(), size)
}

/// The tag of an entry no address can match (see [`TlbEntry::way_tags`]). It and [`EMPTY_TAG`]
/// have offset bits set above the size index, so no [`page_tag`], hence no address, ever equals
/// them.
const UNMATCHABLE_TAG: u64 = u64::MAX - 1;

/// The context word of a non-global entry: VMID and ASID side by side (under 2^32).
#[inline]
fn tagged_context(vmid: Vmid, asid: Asid) -> u64 {
    (u64::from(vmid.0) << 16) | u64::from(asid.0)
}

/// The context word of a global entry: a flag above the 32 bits of [`tagged_context`], and the
/// VMID alone.
#[inline]
fn global_context(vmid: Vmid) -> u64 {
    (1 << 32) | (u64::from(vmid.0) << 16)
}

/// The context a lookup is made in, as the two context words an entry may carry to match it.
#[derive(Clone, Copy, Debug)]
struct Context {
    /// The word of a non-global entry of this VMID and ASID.
    tagged: u64,
    /// The word of a global entry of this VMID.
    global: u64,
}

impl Context {
    #[inline]
    fn new(vmid: Vmid, asid: Asid) -> Self {
        Context { tagged: tagged_context(vmid, asid), global: global_context(vmid) }
    }

    #[inline]
    fn admits(self, word: u64) -> bool {
        word == self.tagged || word == self.global
    }
}

/// A set of page sizes, a bit per size, with the one size it holds if it holds exactly one
/// (kept at each insert, so that the tables' searches, which ask on every probe, read it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct PageSizes {
    bits: u8,
    single: Option<PageSize>,
}

impl PageSizes {
    #[inline]
    fn bit(size: PageSize) -> u8 {
        1 << size.level().index()
    }

    #[inline]
    pub(super) fn insert(&mut self, size: PageSize) {
        if !self.contains(size) {
            self.bits |= Self::bit(size);
            self.single = if self.bits.is_power_of_two() { Some(size) } else { None };
        }
    }

    #[inline]
    pub(super) fn contains(self, size: PageSize) -> bool {
        self.bits & Self::bit(size) != 0
    }

    /// The size, if the set holds exactly one.
    #[inline]
    pub(super) fn single(self) -> Option<PageSize> {
        self.single
    }

    /// The sizes, smallest first.
    #[inline]
    pub(super) fn iter(self) -> impl Iterator<Item = PageSize> {
        let mut left = self.bits;
        std::iter::from_fn(move || {
            let level = Level::from_index(left.trailing_zeros())?;
            left &= left - 1;
            Some(PageSize::at_level(level))
        })
    }
}

/// Geometry of one table: entries and ways (`ways == entries`: fully associative).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Geometry {
    /// Total entries (0 disables the structure).
    pub entries: usize,
    /// Associativity.
    pub ways: usize,
}

impl Geometry {
    /// A disabled structure.
    pub const OFF: Geometry = Geometry { entries: 0, ways: 0 };
}

/// TLB geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlbConfig {
    /// L1 for 4 KiB pages.
    pub l1_4k: Geometry,
    /// L1 for 2 MiB pages.
    pub l1_2m: Geometry,
    /// L1 for 1 GiB and larger pages.
    pub l1_1g: Geometry,
    /// Unified L2 (every size).
    pub l2: Geometry,
}

impl Default for TlbConfig {
    /// Skylake-like defaults (arch.md §4.8: 64-entry 4-way L1 DTLB, 32-entry 2M, 4-entry 1G,
    /// 1536-entry 12-way STLB) — sizes from the Intel optimization manual, not re-verified.
    fn default() -> Self {
        TlbConfig {
            l1_4k: Geometry { entries: 64, ways: 4 },
            l1_2m: Geometry { entries: 32, ways: 4 },
            l1_1g: Geometry { entries: 4, ways: 4 },
            l2: Geometry { entries: 1536, ways: 12 },
        }
    }
}

/// Which level of the TLB hierarchy answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlbLevel {
    /// An L1 table.
    L1,
    /// The L2.
    L2,
}

/// The words of every table of a TLB, one table after another, and the clock their LRU stamps
/// come from: one vector, so that the hit memo names the stamp of a way of any table by one
/// index, and one clock, which orders the stamps of each set as a clock per table would.
#[derive(Debug, Clone, Default)]
struct Words {
    words: Vec<u64>,
    clock: u64,
    /// The clock's ticks made by searches, fills and counted memo hits: the others are the
    /// memo hits the MMU counts as L1 hits ([`Tlb::memo_hits`]).
    counted_ticks: u64,
}

impl Words {
    /// Makes the way whose stamp is `words[stamp]` the most recently used of its set, as a
    /// search that found it does: a hit the memo answers ([`HitMemo`]). The tick is the hit's
    /// count ([`Tlb::memo_hits`]).
    #[inline(always)]
    fn touch(&mut self, stamp: usize) {
        self.clock += 1;
        if let Some(word) = self.words.get_mut(stamp) {
            *word = self.clock;
        }
    }
}

/// A run of memo hits ([`Tlb::memo_run`]): each answers and touches as [`Tlb::memo_hit`]
/// does, with the clock's ticks counted in `now` and written back when the run ends.
#[derive(Debug)]
pub struct MemoRun<'a> {
    now: u64,
    clock: &'a mut u64,
    words: &'a mut Vec<u64>,
    memo: &'a HitMemo,
}

impl MemoRun<'_> {
    /// The hits so far.
    #[inline(always)]
    pub fn hits(&self) -> u64 {
        self.now - *self.clock
    }

    /// [`Tlb::memo_hit`].
    #[inline(always)]
    pub fn hit(&mut self, va: Gva, access: Access) -> Option<Hfn> {
        let vpage = va.as_u64() >> PAGE_SHIFT;
        let m = &self.memo.slots[access.class_index()][HitMemo::slot(vpage)];
        if m.key != self.memo.key(vpage) {
            return None;
        }
        self.now += 1;
        if let Some(word) = self.words.get_mut(m.stamp) {
            *word = self.now;
        }
        Some(m.frame)
    }
}

impl Drop for MemoRun<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        *self.clock = self.now;
    }
}

/// One set-associative table of TLB entries with LRU replacement.
///
/// The words searches read are kept per set, together, in the TLB's [`Words`] from `base` on:
/// set `s` is `words[base + s * 3 * ways..][..3 * ways]`, its ways' tags ([`WayTags::tag`],
/// [`EMPTY_TAG`] for an empty way), then their context words ([`WayTags::context`]), then their
/// LRU stamps (the clock at the way's last hit or fill, 0 for an empty way). The entries are
/// apart, way `w` of set `s` at `entries[s * ways + w]`.
#[derive(Debug, Clone)]
struct TlbTable {
    /// Where its words start in the TLB's.
    base: usize,
    entries: Vec<Option<TlbEntry>>,
    /// Every size the table ever held: a search looks for the tags of these sizes only (one
    /// search when it holds one size, as every L1 table but the 1G one and most L2s do).
    held: PageSizes,
    set_mask: u64,
    ways: usize,
    /// Valid entries.
    live: usize,
    /// Bytes the valid entries cover (the table's reach).
    bytes: u64,
}

/// The first way of `words` holding an entry of a size in `held` that translates `va` in
/// `context`; `single` is `held.single()`.
#[inline(always)]
fn first_match(
    words: &SetWords,
    held: PageSizes,
    single: Option<PageSize>,
    va: Gva,
    context: Context,
) -> Option<usize> {
    let find = |size| {
        let tag = page_tag_of(va, size);
        let mut ways = words.tags.iter().zip(&*words.contexts);
        ways.position(|(&t, &word)| t == tag && context.admits(word))
    };
    // Most tables only ever hold one size: one search.
    if let Some(size) = single {
        return find(size);
    }
    // Else the first way that holds any size's match.
    held.iter().filter_map(find).min()
}

/// The way of `words` that `entry` goes to: the one holding an entry of the same page and
/// context (`new` are `entry`'s tags) if there is one, else the least recently used, which is
/// the first empty way if there is one. `entries` are the set's entries.
#[inline(always)]
fn way_for(
    words: &SetWords,
    entry: &TlbEntry,
    new: WayTags,
    entries: &[Option<TlbEntry>],
) -> usize {
    // Equal tags and context words are necessary for the same slot and, unless the tag is
    // `UNMATCHABLE_TAG`, sufficient: the entry itself settles that case.
    let same_slot = || {
        let mut ways = words.tags.iter().zip(&*words.contexts).zip(entries);
        ways.position(|((&tag, &context), old)| {
            tag == new.tag && context == new.context && old.is_some_and(|old| old.same_slot(entry))
        })
    };
    // Most fills find no entry of the same page: rule that out with one comparison a way.
    let maybe_same = words.tags.contains(&new.tag);
    maybe_same.then(same_slot).flatten().unwrap_or_else(|| words.least_recent())
}

impl TlbTable {
    /// A table of `g.entries` entries in sets of `g.ways`; zero entries is a disabled table that
    /// never hits and keeps nothing.
    /// Its words go at the end of `words`.
    fn new(name: &str, g: Geometry, words: &mut Words) -> Result<Self, GeometryError> {
        let (sets, ways) = match g.entries {
            0 => (0, 0),
            entries => (check_geometry(name, entries, g.ways)?, g.ways),
        };
        let base = words.words.len();
        words.words.extend(ways::empty_table(sets, ways));
        Ok(TlbTable {
            base,
            entries: vec![None; g.entries],
            held: PageSizes::default(),
            set_mask: (sets as u64).saturating_sub(1),
            ways,
            live: 0,
            bytes: 0,
        })
    }

    /// The set `key` (a page number) maps to.
    #[inline]
    fn set_of(&self, key: u64) -> usize {
        u64_to_usize(key & self.set_mask)
    }

    /// Looks `va` up in the set its `probe`-size page maps to: the first way, in way order,
    /// whose entry (of any size) translates `va` in `context`. A hit becomes the most recently
    /// used entry of the set.
    #[inline]
    fn lookup(
        &mut self,
        w: &mut Words,
        va: Gva,
        probe: PageSize,
        context: Context,
    ) -> Option<TlbEntry> {
        self.lookup_slot(w, va, probe, context).map(|(e, _)| e)
    }

    /// [`lookup`](Self::lookup), with the index of the hit way's stamp in `w`'s words.
    #[inline]
    fn lookup_slot(
        &mut self,
        w: &mut Words,
        va: Gva,
        probe: PageSize,
        context: Context,
    ) -> Option<(TlbEntry, usize)> {
        let single = self.held.single();
        self.lookup_as(w, va, probe, single, context)
    }

    /// [`lookup`](Self::lookup) in a table that holds `single`-size pages only if `single` is
    /// given (an L1 table of one size: a constant size makes the tag a constant mask).
    #[inline(always)]
    fn lookup_as(
        &mut self,
        w: &mut Words,
        va: Gva,
        probe: PageSize,
        single: Option<PageSize>,
        context: Context,
    ) -> Option<(TlbEntry, usize)> {
        if self.live == 0 {
            return None;
        }
        // The default associativities as constants, so that the scans are unrolled for them.
        match self.ways {
            4 => self.lookup_in(w, 4, va, probe, single, context),
            12 => self.lookup_in(w, 12, va, probe, single, context),
            ways => self.lookup_in(w, ways, va, probe, single, context),
        }
    }

    #[inline(always)]
    fn lookup_in(
        &mut self,
        w: &mut Words,
        ways: usize,
        va: Gva,
        probe: PageSize,
        single: Option<PageSize>,
        context: Context,
    ) -> Option<(TlbEntry, usize)> {
        let set = self.set_of(va.as_u64() >> probe.shift());
        let words = SetWords::of(&mut w.words[self.base..], set, ways);
        let way = first_match(&words, self.held, single, va, context)?;
        w.clock += 1;
        w.counted_ticks += 1;
        words.stamps[way] = w.clock;
        // The way's stamp in `w`'s words (see the layout above), for the hit memo.
        let stamp = self.base + set * 3 * ways + 2 * ways + way;
        self.entries[set * ways + way].map(|e| (e, stamp))
    }

    /// Inserts `entry`, whose tag and context word are `tags`, into its set: over the entry of
    /// the same page and context if there is one, else into the first empty way, else over the
    /// least recently used entry. A disabled table is left alone.
    #[inline]
    fn insert(&mut self, w: &mut Words, entry: TlbEntry, tags: WayTags) {
        match self.ways {
            0 => {}
            4 => self.insert_in(w, 4, entry, tags),
            12 => self.insert_in(w, 12, entry, tags),
            ways => self.insert_in(w, ways, entry, tags),
        }
    }

    #[inline(always)]
    fn insert_in(&mut self, w: &mut Words, ways: usize, entry: TlbEntry, new: WayTags) {
        let set = self.set_of(entry.vpn);
        let words = SetWords::of(&mut w.words[self.base..], set, ways);
        let entries = &mut self.entries[set * ways..][..ways];
        let way = way_for(&words, &entry, new, entries);
        if words.tags[way] == EMPTY_TAG {
            self.live += 1;
        } else if let Some(old) = entries[way] {
            self.bytes -= old.size.bytes();
        }
        self.bytes += entry.size.bytes();
        entries[way] = Some(entry);
        w.clock += 1;
        w.counted_ticks += 1;
        words.tags[way] = new.tag;
        words.contexts[way] = new.context;
        words.stamps[way] = w.clock;
        self.held.insert(entry.size);
    }

    /// Empties the ways of `sets` whose entry `keep` rejects; returns how many.
    fn retain_sets(
        &mut self,
        w: &mut Words,
        sets: std::ops::Range<usize>,
        keep: impl Fn(&TlbEntry) -> bool,
    ) -> usize {
        if self.live == 0 {
            return 0;
        }
        let ways = self.ways;
        let mut dropped = 0;
        for set in sets {
            let entries = &mut self.entries[set * ways..][..ways];
            for (way, slot) in entries.iter_mut().enumerate() {
                if let Some(e) = slot.filter(|e| !keep(e)) {
                    self.bytes -= e.size.bytes();
                    *slot = None;
                    let words = SetWords::of(&mut w.words[self.base..], set, ways);
                    words.tags[way] = EMPTY_TAG;
                    words.stamps[way] = 0;
                    dropped += 1;
                }
            }
        }
        self.live -= dropped;
        dropped
    }

    /// Empties every way whose entry `keep` rejects; returns how many.
    fn retain(&mut self, w: &mut Words, keep: impl Fn(&TlbEntry) -> bool) -> usize {
        self.retain_sets(w, 0..self.entries.len() / self.ways.max(1), keep)
    }

    /// Like [`retain`](Self::retain), only in the set `va`'s `probe`-size page maps to, for a
    /// flush of `va`: `keep` must keep every entry that does not cover `va`.
    fn retain_covering(
        &mut self,
        w: &mut Words,
        va: Gva,
        probe: PageSize,
        keep: impl Fn(&TlbEntry) -> bool,
    ) -> usize {
        if self.live == 0 {
            return 0;
        }
        let set = self.set_of(va.as_u64() >> probe.shift());
        // An entry covering `va` has `va`'s tag at its size: in a table of one size, a set
        // without that tag (most sets a single-page flush visits) loses nothing.
        if let Some(size) = self.held.single() {
            let tag = page_tag_of(va, size);
            let words = &mut w.words[self.base..];
            let mut has_tag = |ways| SetWords::of(words, set, ways).tags.contains(&tag);
            let maybe = match self.ways {
                4 => has_tag(4),
                12 => has_tag(12),
                ways => has_tag(ways),
            };
            if !maybe {
                return 0;
            }
        }
        self.retain_sets(w, set..set + 1, keep)
    }

    /// Every valid entry, in way order.
    fn iter(&self) -> impl Iterator<Item = &TlbEntry> + '_ {
        self.entries.iter().flatten()
    }
}

/// The combined TLB of one vCPU.
#[derive(Debug, Clone)]
pub struct Tlb {
    l1: [TlbTable; 3],
    l2: TlbTable,
    /// The four tables' words and LRU clock.
    words: Words,
    memo: HitMemo,
}

/// The offset bits of a 4 KiB page.
const PAGE_OFFSET_MASK: u64 = (1 << PAGE_SHIFT) - 1;

/// Where a memo key's generation starts: a 4 KiB page number (`va >> 12`) has 52 bits at most.
const MEMO_GENERATION_SHIFT: u32 = u64::BITS - PAGE_SHIFT;

/// The generation the memo never uses (all ones, kept shifted), so that no key equals an empty
/// slot's [`u64::MAX`], not even the top page's (`va` `0xffff_ffff_ffff_f000`).
const MEMO_SPARE_GENERATION: u64 = u64::MAX << MEMO_GENERATION_SHIFT;

/// The 4 KiB pages the memo remembers: as many as the default L1 4K table holds.
const MEMO_PAGES: usize = 64;

/// A direct-mapped memo of recent L1 hits in the current context, per access class (load,
/// store, fetch; user or supervisor), one 4 KiB virtual page per slot (the low bits of its page
/// number), so that a repeated hit costs one compare instead of a set search and a permission
/// check: a slot is filled only for a class its entry allows. It is a shortcut of the simulator,
/// not a modelled structure: a memo hit touches exactly the way the search found and answers
/// what the search answered, and every change to an L1 table or to the current context makes
/// the memo forget every hit, so what is simulated does not depend on it
/// (`memo_hits_are_searches` checks that against the search alone).
#[derive(Debug, Clone)]
struct HitMemo {
    slots: Box<[[MemoSlot; MEMO_PAGES]; Access::CLASSES]>,
    /// The generation in a key's top bits ([`HitMemo::key`]), kept shifted. Bumped by every
    /// change to an L1 table and of context: a slot is valid only in the generation it was
    /// filled in, so that forgetting every hit costs one addition, not a sweep (L1 fills and
    /// flushes are frequent on miss-bound workloads).
    generation: u64,
    /// The context word ([`tagged_context`]) of the current context: the only one the memo
    /// answers for, so that its keys need not hold one.
    context: u64,
    /// Whether searches remember their hits: off, the memo answers nothing
    /// ([`Tlb::set_memo`]).
    on: bool,
}

/// One remembered hit.
#[derive(Debug, Clone, Copy)]
struct MemoSlot {
    /// The 4 KiB virtual page number with the memo's generation then in the bits above
    /// ([`HitMemo::key`]); [`u64::MAX`] for an empty slot.
    key: u64,
    /// The host frame of that page.
    frame: Hfn,
    /// The index of its way's stamp in the TLB's [`Words`].
    stamp: usize,
}

impl MemoSlot {
    const EMPTY: MemoSlot = MemoSlot { key: u64::MAX, frame: Hfn::new(0), stamp: 0 };
}

impl HitMemo {
    fn new(vmid: Vmid, asid: Asid) -> Self {
        HitMemo {
            slots: Box::new([[MemoSlot::EMPTY; MEMO_PAGES]; Access::CLASSES]),
            generation: 0,
            context: tagged_context(vmid, asid),
            on: true,
        }
    }

    #[inline(always)]
    fn slot(vpage: u64) -> usize {
        u64_to_usize(vpage) % MEMO_PAGES
    }

    /// The key of the 4 KiB page `vpage` now: the generation above the page number.
    #[inline(always)]
    fn key(&self, vpage: u64) -> u64 {
        vpage | self.generation
    }

    /// Forgets every hit: an L1 table or the context changed.
    #[inline]
    fn clear(&mut self) {
        self.generation += 1 << MEMO_GENERATION_SHIFT;
        // The generation has 12 bits in a key, the last spare: before it would reach that, the
        // slots are emptied and counting starts over at 0 (once every 4,095 changes), so that
        // no old slot's key comes back either.
        if self.generation == MEMO_SPARE_GENERATION {
            self.slots.fill([MemoSlot::EMPTY; MEMO_PAGES]);
            self.generation = 0;
        }
    }
}

#[inline]
fn l1_index(size: PageSize) -> usize {
    match size {
        PageSize::Size4K => 0,
        PageSize::Size2M => 1,
        _ => 2,
    }
}

impl Tlb {
    /// A TLB with the given geometry, in context (`Vmid::HOST`, ASID 0).
    pub fn new(cfg: &TlbConfig) -> Result<Self, GeometryError> {
        let mut words = Words::default();
        let l1 = [
            TlbTable::new("tlb.l1_4k", cfg.l1_4k, &mut words)?,
            TlbTable::new("tlb.l1_2m", cfg.l1_2m, &mut words)?,
            TlbTable::new("tlb.l1_1g", cfg.l1_1g, &mut words)?,
        ];
        let l2 = TlbTable::new("tlb.l2", cfg.l2, &mut words)?;
        Ok(Tlb { l1, l2, words, memo: HitMemo::new(Vmid::HOST, Asid(0)) })
    }

    /// Makes (`vmid`, `asid`) the current context, the one [`Tlb::memo_hit`] answers for (the
    /// MMU's: [`Mmu::set_context`](super::Mmu::set_context)).
    #[inline]
    pub fn set_context(&mut self, vmid: Vmid, asid: Asid) {
        let context = tagged_context(vmid, asid);
        if context != self.memo.context {
            self.memo.clear();
            self.memo.context = context;
        }
    }

    /// Turns the hit memo on or off. Off, it forgets every hit and remembers none, so that
    /// every L1 lookup takes [`Tlb::search_l1`]: a guest kernel that must see each access (a
    /// warm-up counting them) turns it off meanwhile.
    pub fn set_memo(&mut self, on: bool) {
        if !on {
            self.memo.clear();
        }
        self.memo.on = on;
    }

    /// Whether the hit memo is on ([`Tlb::set_memo`]).
    pub fn memo_on(&self) -> bool {
        self.memo.on
    }

    /// Looks `va` up in the L1 tables. A hit whose entry does not allow `access` (a store to a
    /// clean page, say) is reported as a miss so that the hardware re-walks.
    #[inline(always)]
    pub fn lookup_l1(&mut self, va: Gva, access: Access, vmid: Vmid, asid: Asid) -> Option<Hpa> {
        if tagged_context(vmid, asid) == self.memo.context {
            if let Some(frame) = self.memo_hit(va, access) {
                // Not one of the memo hits `memo_hits` counts for the MMU.
                self.words.counted_ticks += 1;
                return Some(Hpa::new(frame.addr().as_u64() | (va.as_u64() & PAGE_OFFSET_MASK)));
            }
        }
        self.search_l1(va, access, vmid, asid)
    }

    /// The memo hits [`Tlb::memo_hit`] answered since the TLB was built: the LRU clock's ticks
    /// that no search, fill or [`Tlb::lookup_l1`] made, so that a hit costs no count of its
    /// own.
    #[inline]
    pub fn memo_hits(&self) -> u64 {
        self.words.clock - self.words.counted_ticks
    }

    /// The host frame of the L1 hit the hit memo answers in the current context, if it does
    /// (see the module's `HitMemo`); `None` says nothing about the tables. Counted by
    /// [`Tlb::memo_hits`].
    #[inline(always)]
    pub fn memo_hit(&mut self, va: Gva, access: Access) -> Option<Hfn> {
        let vpage = va.as_u64() >> PAGE_SHIFT;
        let m = &self.memo.slots[access.class_index()][HitMemo::slot(vpage)];
        if m.key == self.memo.key(vpage) {
            let (stamp, frame) = (m.stamp, m.frame);
            self.words.touch(stamp);
            return Some(frame);
        }
        None
    }

    /// Whether [`Tlb::memo_hit`] would answer `va`, without touching anything.
    #[inline(always)]
    pub fn memo_holds(&self, va: Gva, access: Access) -> bool {
        let vpage = va.as_u64() >> PAGE_SHIFT;
        self.memo.slots[access.class_index()][HitMemo::slot(vpage)].key == self.memo.key(vpage)
    }

    /// A run of [`Tlb::memo_hit`]s that keeps the LRU clock in a local until the run ends
    /// (dropped): nothing but memo hits happens to the TLB meanwhile, which the borrow ensures.
    #[inline(always)]
    pub fn memo_run(&mut self) -> MemoRun<'_> {
        let Words { words, clock, .. } = &mut self.words;
        MemoRun { now: *clock, clock, words, memo: &self.memo }
    }

    /// The L1 lookup by searching the tables' sets, out of line so that the memo's hit stays
    /// small; a hit in the current context is remembered. After a [`Tlb::memo_hit`] that said
    /// `None`, this is the rest of [`Tlb::lookup_l1`].
    #[inline(never)]
    pub fn search_l1(&mut self, va: Gva, access: Access, vmid: Vmid, asid: Asid) -> Option<Hpa> {
        let context = Context::new(vmid, asid);
        // The 4K table holds 4K pages only.
        let (e, stamp) = match self.l1[0].lookup_as(
            &mut self.words,
            va,
            PageSize::Size4K,
            Some(PageSize::Size4K),
            context,
        ) {
            Some(hit) => hit,
            // Most runs map no large page.
            None if self.l1[1].live == 0 && self.l1[2].live == 0 => return None,
            None => self.lookup_l1_large(va, context)?,
        };
        if e.allow & access.class_bit() == 0 {
            return None;
        }
        if context.tagged == self.memo.context && self.memo.on {
            let vpage = va.as_u64() >> PAGE_SHIFT;
            self.memo.slots[access.class_index()][HitMemo::slot(vpage)] =
                MemoSlot { key: self.memo.key(vpage), frame: e.translate(va).page(), stamp };
        }
        Some(e.translate(va))
    }

    /// The L1 lookup's probes of the large-page tables: the entry, its table and its stamp.
    fn lookup_l1_large(&mut self, va: Gva, context: Context) -> Option<(TlbEntry, usize)> {
        let [_, l1_2m, l1_1g] = &mut self.l1;
        let w = &mut self.words;
        // The 2M table holds 2M pages only.
        if let Some(hit) = l1_2m.lookup_as(w, va, PageSize::Size2M, Some(PageSize::Size2M), context)
        {
            return Some(hit);
        }
        // Larger pages share the 1G table.
        [PageSize::Size1G, PageSize::Size512G, PageSize::Size256T]
            .into_iter()
            .find_map(|size| l1_1g.lookup_slot(w, va, size, context))
    }

    /// Looks `va` up in the L2; a usable hit is copied into the L1.
    #[cold]
    pub fn lookup_l2(&mut self, va: Gva, access: Access, vmid: Vmid, asid: Asid) -> Option<Hpa> {
        let context = Context::new(vmid, asid);
        // Only the sets of sizes the L2 holds.
        let (l2, w) = (&mut self.l2, &mut self.words);
        let e = match l2.held.single() {
            Some(size) => l2.lookup_as(w, va, size, Some(size), context).map(|(e, _)| e),
            None => l2.held.iter().find_map(|size| l2.lookup(w, va, size, context)),
        }?;
        if e.allow & access.class_bit() == 0 {
            return None;
        }
        self.insert_l1(e, e.way_tags());
        Some(e.translate(va))
    }

    #[inline(always)]
    fn insert_l1(&mut self, e: TlbEntry, tags: WayTags) {
        self.memo.clear();
        self.l1[l1_index(e.size)].insert(&mut self.words, e, tags);
    }

    /// Inserts a fresh translation into both levels. Inlined into its one caller on the miss
    /// path, [`Mmu::fill`](super::Mmu::fill), so that the entry stays in registers.
    #[inline(always)]
    pub fn insert(&mut self, e: TlbEntry) {
        let tags = e.way_tags();
        self.insert_l1(e, tags);
        self.l2.insert(&mut self.words, e, tags);
    }

    /// Removes exactly the entries `scope` selects; returns how many went. A single-address
    /// scope only visits the sets that address maps to.
    pub fn flush(&mut self, scope: &TlbScope) -> usize {
        self.memo.clear();
        let keep = |e: &TlbEntry| !e.flushed_by(scope);
        let Some(va) = scope.va else {
            let w = &mut self.words;
            return self.l1.iter_mut().map(|t| t.retain(w, keep)).sum::<usize>()
                + self.l2.retain(w, keep);
        };
        let mut dropped = 0;
        let w = &mut self.words;
        for size in PageSize::ALL {
            dropped += self.l1[l1_index(size)].retain_covering(w, va, size, keep);
            if self.l2.held.contains(size) {
                dropped += self.l2.retain_covering(w, va, size, keep);
            }
        }
        dropped
    }

    /// The bytes of address space the TLB's entries cover now (its reach): the L2's, which
    /// every fill enters, or the L1 tables' together without an L2.
    #[inline]
    pub fn reach_bytes(&self) -> u64 {
        if self.l2.ways > 0 {
            self.l2.bytes
        } else {
            self.l1.iter().map(|t| t.bytes).sum()
        }
    }

    /// Every entry of both levels (L1 first), for tests and the oracle.
    pub fn entries(&self) -> impl Iterator<Item = &TlbEntry> + '_ {
        self.l1.iter().flat_map(TlbTable::iter).chain(self.l2.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmu::flush::AsidScope;
    use crate::mmu::setassoc::SetAssoc;
    use crate::paging::{AccessKind, Privilege};
    use crate::rng::Rng;

    /// The TLB as it was first written: one `SetAssoc<TlbEntry>` with LRU stamps per table.
    struct Reference {
        l1: [SetAssoc<TlbEntry>; 3],
        l2: SetAssoc<TlbEntry>,
        l2_sizes: u8,
    }

    impl Reference {
        fn new(cfg: &TlbConfig) -> Self {
            let mk = |g: Geometry| SetAssoc::new("reference", g.entries, g.ways).unwrap();
            Reference {
                l1: [mk(cfg.l1_4k), mk(cfg.l1_2m), mk(cfg.l1_1g)],
                l2: mk(cfg.l2),
                l2_sizes: 0,
            }
        }

        fn lookup_l1(&mut self, va: Gva, access: Access, vmid: Vmid, asid: Asid) -> Option<Hpa> {
            let bit = access.class_bit();
            for (i, size) in
                [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G].into_iter().enumerate()
            {
                let table = &mut self.l1[i];
                if table.is_empty() {
                    continue;
                }
                let key = va.as_u64() >> size.shift();
                if let Some(e) = table.lookup(key, |e| e.matches(va, vmid, asid)) {
                    return (e.allow & bit != 0).then(|| e.translate(va));
                }
                if i == 2 {
                    for big in [PageSize::Size512G, PageSize::Size256T] {
                        let key = va.as_u64() >> big.shift();
                        if let Some(e) = table.lookup(key, |e| e.matches(va, vmid, asid)) {
                            return (e.allow & bit != 0).then(|| e.translate(va));
                        }
                    }
                }
            }
            None
        }

        fn lookup_l2(&mut self, va: Gva, access: Access, vmid: Vmid, asid: Asid) -> Option<Hpa> {
            let bit = access.class_bit();
            for size in PageSize::ALL {
                if self.l2_sizes & (1 << size.level().index()) == 0 {
                    continue;
                }
                let key = va.as_u64() >> size.shift();
                if let Some(e) = self.l2.lookup(key, |e| e.matches(va, vmid, asid)) {
                    if e.allow & bit == 0 {
                        return None;
                    }
                    self.insert_l1(e);
                    return Some(e.translate(va));
                }
            }
            None
        }

        fn insert_l1(&mut self, e: TlbEntry) {
            self.l1[l1_index(e.size)].insert(e.vpn, e, |o| o.same_slot(&e));
        }

        fn insert(&mut self, e: TlbEntry) {
            self.insert_l1(e);
            if !self.l2.is_disabled() {
                self.l2.insert(e.vpn, e, |o| o.same_slot(&e));
                self.l2_sizes |= 1 << e.size.level().index();
            }
        }

        fn flush(&mut self, scope: &TlbScope) -> usize {
            let keep = |e: &TlbEntry| !e.flushed_by(scope);
            let Some(va) = scope.va else {
                return self.l1.iter_mut().map(|t| t.retain(keep)).sum::<usize>()
                    + self.l2.retain(keep);
            };
            let mut dropped = 0;
            for size in PageSize::ALL {
                let key = va.as_u64() >> size.shift();
                dropped += self.l1[l1_index(size)].retain_in_set(key, keep);
                if self.l2_sizes & (1 << size.level().index()) != 0 {
                    dropped += self.l2.retain_in_set(key, keep);
                }
            }
            dropped
        }

        fn entries(&self) -> impl Iterator<Item = &TlbEntry> + '_ {
            self.l1.iter().flat_map(|t| t.iter()).chain(self.l2.iter())
        }
    }

    /// The geometries the two implementations are compared on.
    fn geometries() -> Vec<(&'static str, TlbConfig)> {
        let g = |entries, ways| Geometry { entries, ways };
        vec![
            ("default", TlbConfig::default()),
            // softmmu: a direct-mapped 4K table and a fully associative victim TLB.
            (
                "softmmu",
                TlbConfig {
                    l1_4k: g(256, 1),
                    l1_2m: Geometry::OFF,
                    l1_1g: Geometry::OFF,
                    l2: g(8, 8),
                },
            ),
            (
                "fully associative",
                TlbConfig { l1_4k: g(8, 8), l1_2m: g(4, 4), l1_1g: g(2, 2), l2: g(32, 32) },
            ),
            // Few sets, so that pages of every size collide; 512G and 256T pages land in other
            // sets of the 1G table than the 1G probe.
            (
                "small, no L2",
                TlbConfig { l1_4k: g(16, 2), l1_2m: g(8, 1), l1_1g: g(8, 2), l2: Geometry::OFF },
            ),
            (
                "small, no 2M L1",
                TlbConfig { l1_4k: g(8, 2), l1_2m: Geometry::OFF, l1_1g: g(4, 1), l2: g(48, 3) },
            ),
        ]
    }

    const ACCESSES: [Access; 6] = [
        Access { kind: AccessKind::Load, privilege: Privilege::User },
        Access { kind: AccessKind::Store, privilege: Privilege::User },
        Access { kind: AccessKind::Fetch, privilege: Privilege::User },
        Access { kind: AccessKind::Load, privilege: Privilege::Supervisor },
        Access { kind: AccessKind::Store, privilege: Privilege::Supervisor },
        Access { kind: AccessKind::Fetch, privilege: Privilege::Supervisor },
    ];

    /// Random operands drawn from small pools, so that pages, contexts and sets collide often.
    struct Draw {
        rng: Rng,
        /// Addresses drawn lately, which half the draws reuse so that lookups hit.
        recent: Vec<Gva>,
        /// The sizes entries are drawn from.
        sizes: &'static [PageSize],
    }

    impl Draw {
        fn new(seed: u64, sizes: &'static [PageSize]) -> Self {
            Draw { rng: Rng::new(seed, 0), recent: Vec::new(), sizes }
        }

        /// A recent address, or one in one of a few regions (low, just below 2^47,
        /// sign-extended high) with a few choices of each page-number field; any offset.
        fn va(&mut self) -> Gva {
            const RECENT: usize = 32;
            let offset = self.rng.below(1 << 12);
            if self.recent.len() == RECENT && self.rng.below(2) == 0 {
                let page = self.rng.pick(&self.recent.clone()).align_down(PageSize::Size4K);
                return Gva::new(page.as_u64() | offset);
            }
            let region = self.rng.pick(&[0, 0x0000_7f80_0000_0000, 0xffff_ff80_0000_0000, 1 << 48]);
            let fields = (self.rng.below(24) << 12)
                | (self.rng.below(6) << 21)
                | (self.rng.below(4) << 30)
                | (self.rng.below(3) << 39);
            let va = Gva::new(region | fields | offset);
            if self.recent.len() == RECENT {
                let slot = u64_to_usize(self.rng.below(RECENT as u64));
                self.recent[slot] = va;
            } else {
                self.recent.push(va);
            }
            va
        }

        fn context(&mut self) -> (Vmid, Asid) {
            (Vmid(self.rng.pick(&[0, 1, 2])), Asid(self.rng.pick(&[0, 1, 2, 0xffff])))
        }

        fn entry(&mut self, va: Gva) -> TlbEntry {
            let size = self.rng.pick(self.sizes);
            let (vmid, asid) = self.context();
            let global = self.rng.below(5) == 0;
            let base = Hpa::new(self.rng.next_u64() & !size.offset_mask() & ((1 << 52) - 1));
            let allow = self.rng.pick(&[0xff, 0x3f, 0x3d, 0x01, 0x08, 0x00]);
            let mut entry = TlbEntry::new(va, size, base, (vmid, asid, global), allow);
            if self.rng.below(64) == 0 {
                // A page number no address has (the fields are public): it never matches.
                entry.vpn |= 1 << 60;
            }
            entry
        }

        fn scope(&mut self) -> TlbScope {
            TlbScope {
                vmid: self.rng.pick(&[None, Some(Vmid(0)), Some(Vmid(1))]),
                // A wide flush empties most of the TLB: keep them rarer than single addresses.
                va: if self.rng.below(8) == 0 { None } else { Some(self.va()) },
                asid: self.rng.pick(&[
                    AsidScope::All,
                    AsidScope::One(Asid(0)),
                    AsidScope::One(Asid(1)),
                ]),
                globals: self.rng.below(2) == 0,
            }
        }
    }

    /// Drives a `Tlb` and a [`Reference`] of geometry `cfg` with the same `steps` random
    /// operations, filling pages of `sizes`, and panics at the first difference: a lookup's
    /// answer, a flush's count, or the entries and their order every 1000 steps and at the end.
    fn compare_with_reference(
        name: &str,
        cfg: &TlbConfig,
        seed: u64,
        sizes: &'static [PageSize],
        steps: usize,
    ) {
        let (mut tlb, mut reference) = (Tlb::new(cfg).unwrap(), Reference::new(cfg));
        let mut draw = Draw::new(seed, sizes);
        for step in 0..steps {
            let at = || format!("step {step} of {name} (seed {seed}, sizes {sizes:?})");
            let va = draw.va();
            let (vmid, asid) = draw.context();
            let access = draw.rng.pick(&ACCESSES);
            match draw.rng.below(100) {
                // A translation as the MMU makes it: L1, then L2, then a walk's fill.
                0..45 => {
                    let hit = tlb.lookup_l1(va, access, vmid, asid);
                    assert_eq!(hit, reference.lookup_l1(va, access, vmid, asid), "L1, {}", at());
                    if hit.is_none() {
                        let hit = tlb.lookup_l2(va, access, vmid, asid);
                        let expected = reference.lookup_l2(va, access, vmid, asid);
                        assert_eq!(hit, expected, "L2, {}", at());
                        if hit.is_none() {
                            let e = draw.entry(va);
                            tlb.insert(e);
                            reference.insert(e);
                        }
                    }
                }
                45..60 => {
                    let hit = tlb.lookup_l2(va, access, vmid, asid);
                    assert_eq!(hit, reference.lookup_l2(va, access, vmid, asid), "L2, {}", at());
                }
                60..97 => {
                    let e = draw.entry(va);
                    tlb.insert(e);
                    reference.insert(e);
                }
                _ => {
                    let scope = draw.scope();
                    assert_eq!(tlb.flush(&scope), reference.flush(&scope), "flush, {}", at());
                }
            }
            if step % 1000 == 999 || step + 1 == steps {
                let entries: Vec<_> = tlb.entries().collect();
                assert_eq!(entries, reference.entries().collect::<Vec<_>>(), "entries, {}", at());
                // The incremental reach is the sum over the L2's entries (the L1's without one).
                let bytes = |t: &TlbTable| t.iter().map(|e| e.size.bytes()).sum::<u64>();
                let reach =
                    if tlb.l2.ways > 0 { bytes(&tlb.l2) } else { tlb.l1.iter().map(bytes).sum() };
                assert_eq!(tlb.reach_bytes(), reach, "reach, {}", at());
            }
        }
    }

    #[test]
    fn every_operation_answers_as_the_set_assoc_reference_does() {
        for (name, cfg) in geometries() {
            for seed in 0..4 {
                compare_with_reference(name, &cfg, seed, &PageSize::TEST_MIX, 25_000);
            }
            // Tables that only ever hold one size search and flush on their own paths.
            for sizes in [&[PageSize::Size4K][..], &[PageSize::Size1G]] {
                compare_with_reference(name, &cfg, 4, sizes, 25_000);
            }
        }
    }

    /// Mostly repeated lookups of a few recent pages in a context that changes now and then,
    /// as a program makes them, so that most L1 hits are the memo's: answers, and the entries
    /// in LRU order (which only the memo's touches of the hit ways keep right), are the
    /// reference's.
    #[test]
    fn memo_hits_are_searches() {
        for (name, cfg) in geometries() {
            let (mut tlb, mut reference) = (Tlb::new(&cfg).unwrap(), Reference::new(&cfg));
            let mut draw = Draw::new(11, &PageSize::TEST_MIX);
            let mut pool: Vec<Gva> = Vec::new();
            let mut current = draw.context();
            let mut memo_hits = 0;
            for step in 0..40_000 {
                let access = draw.rng.pick(&ACCESSES);
                if pool.len() < 24 || draw.rng.below(40) == 0 {
                    let va = draw.va();
                    let mut e = draw.entry(va);
                    // Most entries are the current context's; the others' never hit in it,
                    // unless global.
                    if draw.rng.below(4) != 0 {
                        (e.vmid, e.asid) = current;
                    }
                    tlb.insert(e);
                    reference.insert(e);
                    pool.push(va);
                    if pool.len() > 24 {
                        pool.remove(0);
                    }
                } else if draw.rng.below(400) == 0 {
                    let scope = draw.scope();
                    assert_eq!(tlb.flush(&scope), reference.flush(&scope), "{name} step {step}");
                } else if draw.rng.below(300) == 0 {
                    current = draw.context();
                } else {
                    let base = pool[u64_to_usize(draw.rng.below(24)) % pool.len()];
                    let va = Gva::new(base.as_u64() ^ draw.rng.below(1 << 12));
                    // `lookup_l1` in its two steps, as the MMU makes them in its context,
                    // counting the memo's answers.
                    let (vmid, asid) = current;
                    tlb.set_context(vmid, asid);
                    let hit = match tlb.memo_hit(va, access) {
                        Some(frame) => {
                            memo_hits += 1;
                            let offset = va.as_u64() & PAGE_OFFSET_MASK;
                            Some(Hpa::new(frame.addr().as_u64() | offset))
                        }
                        None => tlb.search_l1(va, access, vmid, asid),
                    };
                    assert_eq!(hit, reference.lookup_l1(va, access, vmid, asid), "{name} {step}");
                }
            }
            let entries: Vec<_> = tlb.entries().collect();
            assert_eq!(entries, reference.entries().collect::<Vec<_>>(), "{name}");
            assert_eq!(tlb.memo_hits(), memo_hits, "{name}: the memo's own count");
            // 514 to 2,263 of about 37,000 lookups, by geometry (softmmu's L1 holds 4K pages
            // only; a lookup's class is one of six drawn at random, and each has its slots).
            assert!(memo_hits > 400, "{name}: only {memo_hits} memo hits");
        }
    }

    #[test]
    fn the_memo_empties_its_slots_before_its_generation_would_wrap() {
        let mut memo = HitMemo::new(Vmid::HOST, Asid(0));
        let step = 1 << MEMO_GENERATION_SHIFT;
        let last = MEMO_SPARE_GENERATION - step;
        memo.slots[1][3] = MemoSlot { key: 3, ..MemoSlot::EMPTY };
        memo.generation = last - step;
        memo.clear();
        assert_eq!((memo.slots[1][3].key, memo.generation), (3, last));
        memo.clear();
        assert_eq!((memo.slots[1][3].key, memo.generation), (u64::MAX, 0));
    }

    /// An empty slot's key is all ones: the top page's key in the last generation would be the
    /// same, and the memo would answer for a page it never saw.
    #[test]
    fn an_empty_slot_answers_for_no_page_in_any_generation() {
        let mut tlb = Tlb::new(&TlbConfig::default()).unwrap();
        let top = Gva::new(!PAGE_OFFSET_MASK);
        for _ in 0..2 * (1 << PAGE_SHIFT) {
            assert_eq!(tlb.memo_hit(top, Access::KERNEL_LOAD), None, "{:#x}", tlb.memo.generation);
            tlb.memo.clear();
        }
    }

    #[test]
    fn a_context_change_forgets_the_memo() {
        let mut tlb = Tlb::new(&TlbConfig::default()).unwrap();
        let va = Gva::new(0x5000);
        let tags = (Vmid(1), Asid(7), false);
        tlb.insert(TlbEntry::new(va, PageSize::Size4K, Hpa::new(0x9000), tags, 0xff));
        tlb.set_context(Vmid(1), Asid(7));
        assert_eq!(tlb.search_l1(va, Access::USER_LOAD, Vmid(1), Asid(7)), Some(Hpa::new(0x9000)));
        assert_eq!(tlb.memo_hit(va, Access::USER_LOAD), Some(Hfn::new(9)));
        // The same page in another address space is another translation: no memo answer.
        tlb.set_context(Vmid(1), Asid(8));
        assert_eq!(tlb.memo_hit(va, Access::USER_LOAD), None);
        assert_eq!(tlb.lookup_l1(va, Access::USER_LOAD, Vmid(1), Asid(8)), None);
        // Back again: forgotten all the same, until a search remembers it.
        tlb.set_context(Vmid(1), Asid(7));
        assert_eq!(tlb.memo_hit(va, Access::USER_LOAD), None);
        assert_eq!(tlb.lookup_l1(va, Access::USER_LOAD, Vmid(1), Asid(7)), Some(Hpa::new(0x9000)));
        assert_eq!(tlb.memo_hit(va, Access::USER_LOAD), Some(Hfn::new(9)));
    }

    #[test]
    fn a_run_of_memo_hits_answers_and_touches_as_memo_hits_do() {
        // Eight pages, two in each of four sets of the 4-way L1 (16 sets) and each in a memo slot
        // of its own, each remembered by a search; then hits on them in another order, one at
        // a time and as a run.
        let mut tlb = Tlb::new(&TlbConfig::default()).unwrap();
        tlb.set_context(Vmid(1), Asid(7));
        let tags = (Vmid(1), Asid(7), false);
        let page = |i: u64| Gva::new(0x40_0000 + (i % 4) * 0x1000 + (i / 4) * 0x1_0000);
        for i in 0..8 {
            tlb.insert(TlbEntry::new(page(i), PageSize::Size4K, Hpa::new(i << 20), tags, 0xff));
        }
        // (Every fill makes the memo forget, so the searches come after the fills.)
        for i in 0..8 {
            assert!(tlb.search_l1(page(i), Access::USER_STORE, Vmid(1), Asid(7)).is_some());
        }
        let (mut one, mut run) = (tlb.clone(), tlb);
        let order = [3u64, 0, 7, 7, 1, 5, 2, 6, 4, 0, 3];
        let singly: Vec<_> =
            order.iter().map(|&i| one.memo_hit(page(i), Access::USER_STORE)).collect();
        let mut memo = run.memo_run();
        let in_run: Vec<_> = order.iter().map(|&i| memo.hit(page(i), Access::USER_STORE)).collect();
        // A class no search remembered, and a page never filled: no answer, no touch.
        assert_eq!(memo.hit(page(2), Access::USER_FETCH), None);
        assert_eq!(memo.hit(page(9), Access::USER_STORE), None);
        drop(memo);
        assert_eq!(in_run, singly);
        assert!(singly.iter().all(Option::is_some));
        assert_eq!((run.words.clock, run.memo_hits()), (one.words.clock, one.memo_hits()));
        assert_eq!(run.words.words, one.words.words, "the same LRU stamps");
    }

    #[test]
    fn geometry_errors_name_the_table() {
        let cfg = TlbConfig { l2: Geometry { entries: 24, ways: 2 }, ..TlbConfig::default() };
        let err = Tlb::new(&cfg).unwrap_err().to_string();
        assert!(err.starts_with("tlb.l2: 24 entries in 2 ways"), "{err}");
    }

    #[test]
    fn an_entry_of_another_size_in_the_probed_set_answers_first() {
        // A one-set L2 and no L1: the 4K probe meets the 2M entry, filled first, in way 0.
        let cfg = TlbConfig {
            l1_4k: Geometry::OFF,
            l1_2m: Geometry::OFF,
            l1_1g: Geometry::OFF,
            l2: Geometry { entries: 4, ways: 4 },
        };
        let mut tlb = Tlb::new(&cfg).unwrap();
        let va = Gva::new(0x20_1000);
        let tags = (Vmid(1), Asid(1), false);
        tlb.insert(TlbEntry::new(va, PageSize::Size2M, Hpa::new(0x4000_0000), tags, 0xff));
        tlb.insert(TlbEntry::new(va, PageSize::Size4K, Hpa::new(0x8000_0000), tags, 0xff));
        let hit = tlb.lookup_l2(va, Access::USER_LOAD, Vmid(1), Asid(1));
        assert_eq!(hit, Some(Hpa::new(0x4000_1000)));
    }
}
