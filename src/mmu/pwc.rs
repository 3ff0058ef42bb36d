//! Page-walk caches: per level, per dimension, caching upper-level pointers so that a walk can
//! start below the root (Intel's PML4E/PDPTE/PDE caches; AMD's PWC). Leaves are never cached here
//! (that is the TLB's job).
//!
//! Each level's table answers exactly as a [`SetAssoc<PwcEntry>`](super::setassoc::SetAssoc)
//! with LRU replacement did (the tests keep that implementation and compare the two over random
//! operations): a lookup returns the first way, in way order, of the prefix's set whose entry has
//! that prefix and matches the context (same VMID, and same ASID unless global); a fill replaces
//! the entry of the same prefix, VMID and ASID (global or not), else takes the first empty way,
//! else evicts the least recently used entry. Only the layout is specialised, for the TLB-miss
//! path, which looks the caches up once per walk of either dimension (every nested-TLB miss of a
//! two-dimensional walk walks, too) and fills them once per level walked:
//!
//! - each way has three words, kept together per set: a tag (the prefix, or `EMPTY_TAG`, which
//!   no prefix equals), a context word (global flag, VMID and ASID, so that one or two
//!   comparisons decide whether a lookup's context matches) and an LRU stamp;
//! - the entries themselves, which only hits, fills and flushes read, come after their set's
//!   words;
//! - LRU stamps come from a clock per table, as before; an empty way's stamp is 0, so the first
//!   empty way is the least recently used one and a fill needs a single scan for its victim;
//! - the sets of the default associativities (4 and 2 ways) are fixed-size arrays: their scans
//!   are unrolled and a set costs one bounds check; other associativities take a slower path;
//! - a lookup masks the input to the format's width once, and probes the tables in code written
//!   out per level, so that each level's prefix is one shift by a constant.

use super::flush::TlbScope;
use super::setassoc::{check_geometry, GeometryError};
use super::tlb::Geometry;
use super::ways::{self, least_recent, SetWords, EMPTY_TAG};
use crate::addr::{u64_to_usize, Addr, Asid, Level, Space, Vmid};
use crate::paging::format::Format;
use crate::paging::walk::{CachedPointer, WalkCache};
use crate::paging::Perms;

/// One cached pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PwcEntry {
    /// Input bits selecting this entry and the ones above it.
    pub prefix: u64,
    /// VMID tag.
    pub vmid: Vmid,
    /// ASID/PCID tag (ignored when `global`).
    pub asid: Asid,
    /// Derived from a RISC-V global pointer.
    pub global: bool,
    /// Address of the table the entry points to (raw: guest- or host-physical by dimension).
    pub table: u64,
    /// Permissions combined down to this entry.
    pub perms: Perms,
}

/// Geometry of the caches for entries at levels 1 to 4 (index 0 is level 1: PDE-cache-like).
pub type PwcConfig = [Geometry; 4];

/// Hit counters of one page-walk cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PwcStats {
    /// Walks that consulted the cache.
    pub lookups: u64,
    /// Walks that found a cached pointer.
    pub hits: u64,
}

// The tables hold entries of levels 1 to 4, whose prefixes drop at least the 21 bits below a
// level-1 entry's range, so no prefix equals the empty tag.
const _: () = assert!(u64::MAX >> Level::L1.shift() < EMPTY_TAG);

/// The global flag of a context word, above the VMID and the ASID.
const GLOBAL: u64 = 1 << 32;

/// The ASID bits of a context word.
const ASID_BITS: u64 = 0xffff;

/// The context word of an entry tagged (`vmid`, `asid`, `global`). A global entry keeps its
/// ASID: a fill of the same prefix, VMID and ASID replaces it whatever its global bit.
#[inline]
fn context_word(vmid: Vmid, asid: Asid, global: bool) -> u64 {
    (u64::from(global) << 32) | (u64::from(vmid.0) << 16) | u64::from(asid.0)
}

/// The context a lookup is made in, as the context words an entry may carry to match it.
#[derive(Clone, Copy, Debug)]
struct Context {
    /// The word of a non-global entry of this VMID and ASID.
    tagged: u64,
    /// The word of a global entry of this VMID, ASID bits clear.
    global: u64,
}

impl Context {
    #[inline]
    fn new(vmid: Vmid, asid: Asid) -> Self {
        Context {
            tagged: context_word(vmid, asid, false),
            global: context_word(vmid, Asid(0), true),
        }
    }

    /// Whether an entry whose context word is `word` matches: a non-global entry of this VMID
    /// and ASID, or a global entry of this VMID, whatever its ASID.
    #[inline]
    fn admits(self, word: u64) -> bool {
        word == self.tagged || word & !ASID_BITS == self.global
    }
}

/// The bits of an input that a `format` translates (the ones [`Format::prefix`] keeps before
/// shifting), as a mask computed once per lookup rather than once per level.
#[inline]
fn input_mask(format: &Format) -> u64 {
    // `input_bits` is at least 12, so the shift is below 64; 64 bits or more keep everything.
    u64::MAX >> 64u32.saturating_sub(format.input_bits())
}

/// The search words and entries of one set of `W` ways: way `w` has tag `tags[w]` (the entry's
/// prefix, [`EMPTY_TAG`] for an empty way), context word `contexts[w]` ([`context_word`]; stale
/// in an empty way, whose tag matches nothing), LRU stamp `stamps[w]` (the table's clock at the
/// way's last hit or fill, 0 for an empty way) and entry `entries[w]` (`None` exactly when the
/// tag is [`EMPTY_TAG`]). The words a search reads come first, together.
#[derive(Clone, Copy, Debug)]
struct Set<const W: usize> {
    tags: [u64; W],
    contexts: [u64; W],
    stamps: [u64; W],
    entries: [Option<PwcEntry>; W],
}

impl<const W: usize> Set<W> {
    /// A set of empty ways.
    const EMPTY: Self =
        Set { tags: [EMPTY_TAG; W], contexts: [0; W], stamps: [0; W], entries: [None; W] };

    /// The set's ways as slices.
    #[inline(always)]
    fn ways(&mut self) -> Ways<'_> {
        Ways {
            tags: &mut self.tags,
            contexts: &mut self.contexts,
            stamps: &mut self.stamps,
            entries: &mut self.entries,
        }
    }
}

/// The ways of one set, as slices of equal length (see [`Set`]): the same code serves sets of
/// fixed and of any associativity, and is unrolled for the fixed ones.
#[derive(Debug)]
struct Ways<'a> {
    tags: &'a mut [u64],
    contexts: &'a mut [u64],
    stamps: &'a mut [u64],
    entries: &'a mut [Option<PwcEntry>],
}

impl<'a> Ways<'a> {
    /// The ways of a set kept as [`SetWords`] and its entries.
    #[inline(always)]
    fn new(words: SetWords<'a>, entries: &'a mut [Option<PwcEntry>]) -> Self {
        let SetWords { tags, contexts, stamps } = words;
        Ways { tags, contexts, stamps, entries }
    }

    /// The entry of the first way, in way order, that has `prefix` and matches `context`; the
    /// way becomes the set's most recently used, stamped with the advanced `clock`.
    #[inline(always)]
    fn lookup(self, prefix: u64, context: Context, clock: &mut u64) -> Option<PwcEntry> {
        let mut ways = self.tags.iter().zip(&*self.contexts);
        let way = ways.position(|(&tag, &word)| tag == prefix && context.admits(word))?;
        *clock += 1;
        *self.stamps.get_mut(way)? = *clock;
        self.entries.get(way).copied().flatten()
    }

    /// Puts `entry` in the way [`way_for`](Self::way_for) chooses, stamped with the advanced
    /// `clock`; returns whether that way was empty. A set without ways keeps nothing.
    #[inline(always)]
    fn insert(self, entry: PwcEntry, clock: &mut u64) -> bool {
        let word = context_word(entry.vmid, entry.asid, entry.global);
        let way = self.way_for(entry.prefix, word);
        let (Some(tag), Some(context), Some(stamp), Some(slot)) = (
            self.tags.get_mut(way),
            self.contexts.get_mut(way),
            self.stamps.get_mut(way),
            self.entries.get_mut(way),
        ) else {
            return false;
        };
        let was_empty = *tag == EMPTY_TAG;
        *clock += 1;
        (*tag, *context, *stamp, *slot) = (entry.prefix, word, *clock, Some(entry));
        was_empty
    }

    /// The way an entry of `prefix` and context word `word` goes to: the first holding an entry
    /// of the same prefix, VMID and ASID (the global flag aside, as `SetAssoc`'s fills compared
    /// them) if there is one, else the least recently used, which is the first empty way if
    /// there is one (an empty way's stamp is 0, older than any entry's).
    #[inline(always)]
    fn way_for(&self, prefix: u64, word: u64) -> usize {
        let mut ways = self.tags.iter().zip(&*self.contexts);
        let same = ways.position(|(&tag, &old)| tag == prefix && (old | GLOBAL) == (word | GLOBAL));
        same.unwrap_or_else(|| least_recent(self.stamps))
    }

    /// Empties the ways whose entry `keep` rejects; returns how many.
    fn retain(self, keep: &impl Fn(&PwcEntry) -> bool) -> usize {
        let mut dropped = 0;
        let ways = self.entries.iter_mut().zip(self.tags.iter_mut().zip(self.stamps.iter_mut()));
        for (slot, (tag, stamp)) in ways {
            if slot.is_some_and(|e| !keep(&e)) {
                (*slot, *tag, *stamp) = (None, EMPTY_TAG, 0);
                dropped += 1;
            }
        }
        dropped
    }
}

/// The sets of a table: of the default associativities as fixed-size [`Set`]s, whose scans the
/// compiler unrolls and which cost one bounds check each; of any other in flat vectors, set `s`
/// at `words[s * 3 * ways..][..3 * ways]` (tags, context words, stamps) and
/// `entries[s * ways..][..ways]`. A disabled table has no sets.
#[derive(Debug, Clone)]
// An explicit tag byte: telling the variants apart is one byte comparison, not the decoding of
// a niche in a vector's capacity.
#[repr(u8)]
enum Sets {
    Four(Vec<Set<4>>),
    Two(Vec<Set<2>>),
    Any { ways: usize, words: Vec<u64>, entries: Vec<Option<PwcEntry>> },
}

impl Sets {
    fn new(sets: usize, ways: usize) -> Self {
        match ways {
            4 => Sets::Four(vec![Set::EMPTY; sets]),
            2 => Sets::Two(vec![Set::EMPTY; sets]),
            _ => Sets::Any {
                ways,
                words: ways::empty_table(sets, ways),
                entries: vec![None; ways * sets],
            },
        }
    }

    /// Applies `op` to the ways of set `set`; `absent` if there is no such set (a disabled
    /// table). `op` is inlined into each arm, so that the fixed ones get scans of constant
    /// length.
    #[inline(always)]
    fn with<R>(&mut self, set: usize, absent: R, op: impl FnOnce(Ways<'_>) -> R) -> R {
        let ways = match self {
            Sets::Four(sets) => sets.get_mut(set).map(|s| op(s.ways())),
            Sets::Two(sets) => sets.get_mut(set).map(|s| op(s.ways())),
            Sets::Any { ways, words, entries } => any_ways(*ways, words, entries, set).map(op),
        };
        ways.unwrap_or(absent)
    }

    /// Empties every way whose entry `keep` rejects; returns how many.
    fn retain(&mut self, keep: impl Fn(&PwcEntry) -> bool) -> usize {
        match self {
            Sets::Four(sets) => sets.iter_mut().map(|s| s.ways().retain(&keep)).sum(),
            Sets::Two(sets) => sets.iter_mut().map(|s| s.ways().retain(&keep)).sum(),
            Sets::Any { ways, words, entries } => {
                let sets = words.chunks_exact_mut(3 * *ways).zip(entries.chunks_exact_mut(*ways));
                let mut dropped = 0;
                for (words, entries) in sets {
                    dropped += Ways::new(SetWords::split(words, *ways), entries).retain(&keep);
                }
                dropped
            }
        }
    }

    /// Every valid entry, in way order.
    #[cfg(test)]
    fn entries(&self) -> Vec<PwcEntry> {
        match self {
            Sets::Four(sets) => sets.iter().flat_map(|s| s.entries).flatten().collect(),
            Sets::Two(sets) => sets.iter().flat_map(|s| s.entries).flatten().collect(),
            Sets::Any { entries, .. } => entries.iter().flatten().copied().collect(),
        }
    }
}

/// The ways of set `set` of a [`Sets::Any`] table, of `ways` ways (out of line: no default
/// geometry has one).
#[cold]
#[inline(never)]
fn any_ways<'a>(
    ways: usize,
    words: &'a mut [u64],
    entries: &'a mut [Option<PwcEntry>],
    set: usize,
) -> Option<Ways<'a>> {
    let words = words.get_mut(set * 3 * ways..)?.get_mut(..3 * ways)?;
    let entries = entries.get_mut(set * ways..)?.get_mut(..ways)?;
    Some(Ways::new(SetWords::split(words, ways), entries))
}

/// The cache for the entries of one level, set-associative with LRU replacement.
#[derive(Debug, Clone)]
struct PwcTable {
    sets: Sets,
    set_mask: u64,
    /// Advanced by every hit and fill, as `SetAssoc`'s LRU clock was.
    clock: u64,
    /// Valid entries.
    live: usize,
}

impl PwcTable {
    /// A table of `g.entries` entries in sets of `g.ways`; zero entries is a disabled table
    /// that never hits and keeps nothing.
    fn new(name: &str, g: Geometry) -> Result<Self, GeometryError> {
        let sets = match g.entries {
            0 => 0,
            entries => check_geometry(name, entries, g.ways)?,
        };
        Ok(PwcTable {
            sets: Sets::new(sets, g.ways),
            set_mask: (sets as u64).saturating_sub(1),
            clock: 0,
            live: 0,
        })
    }

    /// The first entry, in way order, of `prefix`'s set that has `prefix` and matches
    /// `context`. A hit becomes the most recently used entry of the set.
    #[inline(always)]
    fn lookup(&mut self, prefix: u64, context: Context) -> Option<PwcEntry> {
        let set = u64_to_usize(prefix & self.set_mask);
        let clock = &mut self.clock;
        self.sets.with(set, None, |ways| ways.lookup(prefix, context, clock))
    }

    /// [`lookup`](Self::lookup) if the walk `uses` this table (an empty one cannot hit).
    #[inline(always)]
    fn probe(&mut self, uses: bool, prefix: u64, context: Context) -> Option<PwcEntry> {
        if !uses || self.live == 0 {
            return None;
        }
        self.lookup(prefix, context)
    }

    /// Inserts `entry` into its set: over the entry of the same prefix, VMID and ASID if there
    /// is one, else into the first empty way, else over the least recently used entry. A
    /// disabled table is left alone.
    #[inline(always)]
    fn insert(&mut self, entry: PwcEntry) {
        let set = u64_to_usize(entry.prefix & self.set_mask);
        let clock = &mut self.clock;
        if self.sets.with(set, false, |ways| ways.insert(entry, clock)) {
            self.live += 1;
        }
    }

    /// Empties every way whose entry `keep` rejects; returns how many.
    fn retain(&mut self, keep: impl Fn(&PwcEntry) -> bool) -> usize {
        if self.live == 0 {
            return 0;
        }
        let dropped = self.sets.retain(keep);
        self.live -= dropped;
        dropped
    }
}

/// The page-walk caches of one dimension.
#[derive(Debug, Clone)]
pub struct PageWalkCache {
    /// Table `i` holds the entries of level `i + 1`, which point at tables of level `i`.
    tables: [PwcTable; 4],
    /// Counters.
    pub stats: PwcStats,
}

impl PageWalkCache {
    /// Caches with the given geometry.
    pub fn new(name: &str, cfg: &PwcConfig) -> Result<Self, GeometryError> {
        let mk = |i: usize| PwcTable::new(&format!("{name}.l{}", i + 1), cfg[i]);
        let tables = [mk(0)?, mk(1)?, mk(2)?, mk(3)?];
        Ok(PageWalkCache { tables, stats: PwcStats::default() })
    }

    /// A port tagging lookups with (`vmid`, `asid`), for the walker.
    pub fn port(&mut self, vmid: Vmid, asid: Asid) -> PwcPort<'_> {
        PwcPort { pwc: self, vmid, asid }
    }

    /// Removes the entries of the contexts `scope` selects (addresses are not kept per entry).
    pub fn flush(&mut self, scope: &TlbScope) -> usize {
        self.tables.iter_mut().map(|t| t.retain(|e| !scope.selects(e.vmid, e.asid, e.global))).sum()
    }

    /// Removes every entry of `vmid` (or of every VMID).
    pub fn flush_vmid(&mut self, vmid: Option<Vmid>) -> usize {
        self.tables.iter_mut().map(|t| t.retain(|e| vmid.is_some_and(|v| v != e.vmid))).sum()
    }

    /// Valid entries over all levels.
    pub fn len(&self) -> usize {
        self.tables.iter().map(|t| t.live).sum()
    }

    /// Whether every level is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every valid entry, level 1 first, each level in way order.
    #[cfg(test)]
    fn entries(&self) -> impl Iterator<Item = PwcEntry> + '_ {
        self.tables.iter().flat_map(|t| t.sets.entries())
    }
}

/// A page-walk cache seen through one context's tags.
#[derive(Debug)]
pub struct PwcPort<'a> {
    pwc: &'a mut PageWalkCache,
    vmid: Vmid,
    asid: Asid,
}

impl<In: Space, Out: Space> WalkCache<In, Out> for PwcPort<'_> {
    #[inline]
    fn lookup(&mut self, format: &Format, input: Addr<In>) -> Option<CachedPointer<Out>> {
        use Level::{L0, L1, L2, L3, L4};
        let pwc = &mut *self.pwc;
        if pwc.tables.iter().all(|t| t.live == 0) {
            return None;
        }
        pwc.stats.lookups += 1;
        let context = Context::new(self.vmid, self.asid);
        let masked = input.as_u64() & input_mask(format);
        // The deepest pointer saves the most reads: try level 1 first. Only the entries of
        // levels up to the root's are on a walk of `format`; an empty table cannot hit. Entries
        // of a level point at tables one level down.
        let root = format.root_level().index();
        let uses = |entry_level: Level| entry_level.index() <= root;
        let prefix = |entry_level: Level| masked >> entry_level.shift();
        // One probe per table, written out so that each is compiled with its level's constants.
        let [l1, l2, l3, l4] = &mut pwc.tables;
        let (level, e) = if let Some(e) = l1.probe(uses(L1), prefix(L1), context) {
            (L0, e)
        } else if let Some(e) = l2.probe(uses(L2), prefix(L2), context) {
            (L1, e)
        } else if let Some(e) = l3.probe(uses(L3), prefix(L3), context) {
            (L2, e)
        } else {
            (L3, l4.probe(uses(L4), prefix(L4), context)?)
        };
        pwc.stats.hits += 1;
        Some(CachedPointer { level, table: Addr::new(e.table), perms: e.perms, global: e.global })
    }

    #[inline]
    fn fill(
        &mut self,
        format: &Format,
        input: Addr<In>,
        entry_level: Level,
        ptr: CachedPointer<Out>,
    ) {
        let Some(table) = self.pwc.tables.get_mut((entry_level.index() as usize).wrapping_sub(1))
        else {
            return;
        };
        // Exactly `format.prefix(input, entry_level)` for the levels a walk fills (up to the
        // root's).
        let prefix = (input.as_u64() & input_mask(format)) >> entry_level.shift();
        table.insert(PwcEntry {
            prefix,
            vmid: self.vmid,
            asid: self.asid,
            global: ptr.global,
            table: ptr.table.as_u64(),
            perms: ptr.perms,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{Gva, HostPhys, Hpa};
    use crate::mmu::flush::AsidScope;
    use crate::mmu::setassoc::SetAssoc;
    use crate::rng::Rng;

    /// The page-walk caches as they were first written: one `SetAssoc<PwcEntry>` with LRU
    /// stamps per level.
    struct Reference {
        levels: [SetAssoc<PwcEntry>; 4],
        stats: PwcStats,
    }

    impl Reference {
        fn new(cfg: &PwcConfig) -> Self {
            let mk = |i: usize| SetAssoc::new("reference", cfg[i].entries, cfg[i].ways).unwrap();
            Reference { levels: [mk(0), mk(1), mk(2), mk(3)], stats: PwcStats::default() }
        }

        fn lookup(
            &mut self,
            format: &Format,
            input: Gva,
            vmid: Vmid,
            asid: Asid,
        ) -> Option<CachedPointer<HostPhys>> {
            if self.levels.iter().all(SetAssoc::is_empty) {
                return None;
            }
            self.stats.lookups += 1;
            let levels = format.root_level().index() as usize;
            let below = Level::ALL.into_iter().zip(Level::ALL.into_iter().skip(1));
            for (table, (level, entry_level)) in self.levels.iter_mut().zip(below).take(levels) {
                if table.is_empty() {
                    continue;
                }
                let prefix = format.prefix(input.as_u64(), entry_level);
                let hit = table.lookup(prefix, |e| {
                    e.prefix == prefix && e.vmid == vmid && (e.global || e.asid == asid)
                });
                if let Some(e) = hit {
                    self.stats.hits += 1;
                    return Some(CachedPointer {
                        level,
                        table: Addr::new(e.table),
                        perms: e.perms,
                        global: e.global,
                    });
                }
            }
            None
        }

        fn fill(
            &mut self,
            format: &Format,
            input: Gva,
            entry_level: Level,
            ptr: CachedPointer<HostPhys>,
            (vmid, asid): (Vmid, Asid),
        ) {
            let index = (entry_level.index() as usize).wrapping_sub(1);
            let Some(table) = self.levels.get_mut(index) else { return };
            let prefix = format.prefix(input.as_u64(), entry_level);
            let e = PwcEntry {
                prefix,
                vmid,
                asid,
                global: ptr.global,
                table: ptr.table.as_u64(),
                perms: ptr.perms,
            };
            table.insert(prefix, e, |o| o.prefix == prefix && o.vmid == e.vmid && o.asid == e.asid);
        }

        fn flush(&mut self, scope: &TlbScope) -> usize {
            let keep = |e: &PwcEntry| !scope.selects(e.vmid, e.asid, e.global);
            self.levels.iter_mut().map(|t| t.retain(keep)).sum()
        }

        fn flush_vmid(&mut self, vmid: Option<Vmid>) -> usize {
            self.levels.iter_mut().map(|t| t.retain(|e| vmid.is_some_and(|v| v != e.vmid))).sum()
        }

        fn len(&self) -> usize {
            self.levels.iter().map(SetAssoc::len).sum()
        }

        fn entries(&self) -> impl Iterator<Item = &PwcEntry> + '_ {
            self.levels.iter().flat_map(|t| t.iter())
        }
    }

    /// The geometries the two implementations are compared on.
    fn geometries() -> Vec<(&'static str, PwcConfig)> {
        let g = |entries, ways| Geometry { entries, ways };
        let off = Geometry::OFF;
        vec![
            ("default", crate::mmu::MmuConfig::default().pwc),
            ("profiles", [g(32, 4), g(16, 4), g(16, 4), g(2, 2)]),
            ("small", [g(8, 2), g(4, 1), g(4, 4), off]),
            ("fully associative", [g(16, 16), g(8, 8), g(4, 4), g(2, 2)]),
            ("direct-mapped", [g(8, 1), g(4, 1), g(2, 1), g(1, 1)]),
            ("three ways", [g(24, 3), g(6, 3), g(3, 3), g(1, 1)]),
            ("some disabled", [off, g(4, 4), off, g(2, 2)]),
            ("disabled", [off; 4]),
        ]
    }

    const FORMATS: [Format; 8] = [
        Format::SV39,
        Format::SV39,
        Format::SV39X4,
        Format::SV48,
        Format::SV48X4,
        Format::SV57,
        Format::X86_64_4LEVEL,
        Format::EPT_5LEVEL,
    ];

    /// Random operands drawn from small pools, so that prefixes, contexts and sets collide often.
    struct Draw {
        rng: Rng,
    }

    impl Draw {
        /// An address with a few choices of each index field (sets of a few ways overflow),
        /// low, high (sign-extended) or past 57 bits; any offset.
        fn input(&mut self) -> Gva {
            let region =
                self.rng.pick(&[0, 0, 0xffff_ff80_0000_0000, 0xfe00_0000_0000_0000, 1 << 58]);
            let fields = (self.rng.below(1 << 21))
                | (self.rng.below(12) << 21)
                | (self.rng.below(6) << 30)
                | (self.rng.below(4) << 39)
                | (self.rng.below(3) << 48);
            Gva::new(region ^ fields)
        }

        fn context(&mut self) -> (Vmid, Asid) {
            (Vmid(self.rng.pick(&[0, 1, 2, 0x3fff])), Asid(self.rng.pick(&[0, 1, 2, 0xffff])))
        }

        fn pointer(&mut self, level: Level) -> CachedPointer<HostPhys> {
            CachedPointer {
                level,
                table: Hpa::new(self.rng.next_u64() & 0x000f_ffff_ffff_f000),
                perms: Perms::from_bits_truncate(self.rng.next_u64().to_le_bytes()[0]),
                global: self.rng.below(5) == 0,
            }
        }

        fn scope(&mut self) -> TlbScope {
            TlbScope {
                vmid: self.rng.pick(&[None, Some(Vmid(0)), Some(Vmid(1))]),
                va: None,
                asid: self.rng.pick(&[
                    AsidScope::All,
                    AsidScope::One(Asid(0)),
                    AsidScope::One(Asid(1)),
                ]),
                globals: self.rng.below(2) == 0,
            }
        }
    }

    /// Drives a `PageWalkCache` and a [`Reference`] of geometry `cfg` with the same `steps`
    /// random operations and panics at the first difference: a lookup's answer, a flush's
    /// count, the stats or the length after every step, the entries and their order every 500
    /// steps and at the end.
    fn compare_with_reference(name: &str, cfg: &PwcConfig, seed: u64, steps: usize) {
        let (mut pwc, mut reference) =
            (PageWalkCache::new("pwc", cfg).unwrap(), Reference::new(cfg));
        let mut draw = Draw { rng: Rng::new(seed, 0) };
        for step in 0..steps {
            let at = || format!("step {step} of {name} (seed {seed})");
            let format = draw.rng.pick(&FORMATS);
            let input = draw.input();
            let (vmid, asid) = draw.context();
            let root = format.root_level();
            let mut port = pwc.port(vmid, asid);
            match draw.rng.below(100) {
                // A walk as the walker makes it: a lookup, then a fill of every level from the
                // one the walk starts at down to level 1 (most walks end in a 4K leaf).
                0..50 => {
                    let hit = WalkCache::<_, HostPhys>::lookup(&mut port, &format, input);
                    assert_eq!(hit, reference.lookup(&format, input, vmid, asid), "{}", at());
                    let start = hit.map_or(root, |p| p.level);
                    let last = Level::from_index(u32::from(draw.rng.below(4) == 0)).unwrap();
                    let mut level = start;
                    while level > last {
                        let ptr = draw.pointer(Level::from_index(level.index() - 1).unwrap());
                        port.fill(&format, input, level, ptr);
                        reference.fill(&format, input, level, ptr, (vmid, asid));
                        level = ptr.level;
                    }
                }
                50..70 => {
                    let hit = WalkCache::<_, HostPhys>::lookup(&mut port, &format, input);
                    assert_eq!(hit, reference.lookup(&format, input, vmid, asid), "{}", at());
                }
                // A fill at any level of the format, level 0 (which no table keeps) included.
                70..95 => {
                    let level = Level::from_index(
                        u32::try_from(draw.rng.below(u64::from(root.index()) + 1)).unwrap(),
                    )
                    .unwrap();
                    let ptr =
                        draw.pointer(Level::from_index(level.index().saturating_sub(1)).unwrap());
                    port.fill(&format, input, level, ptr);
                    reference.fill(&format, input, level, ptr, (vmid, asid));
                }
                95..98 => {
                    let scope = draw.scope();
                    assert_eq!(pwc.flush(&scope), reference.flush(&scope), "flush, {}", at());
                }
                _ => {
                    let vmid =
                        draw.rng.pick(&[None, Some(Vmid(0)), Some(Vmid(1)), Some(Vmid(0x3fff))]);
                    assert_eq!(pwc.flush_vmid(vmid), reference.flush_vmid(vmid), "flush, {}", at());
                }
            }
            assert_eq!(pwc.stats, reference.stats, "stats, {}", at());
            assert_eq!(pwc.len(), reference.len(), "len, {}", at());
            assert_eq!(pwc.is_empty(), reference.len() == 0, "is_empty, {}", at());
            if step % 500 == 499 || step + 1 == steps {
                let entries: Vec<_> = pwc.entries().collect();
                assert_eq!(
                    entries,
                    reference.entries().copied().collect::<Vec<_>>(),
                    "entries, {}",
                    at()
                );
            }
        }
    }

    #[test]
    fn every_operation_answers_as_the_set_assoc_reference_does() {
        for (name, cfg) in geometries() {
            for seed in 0..4 {
                compare_with_reference(name, &cfg, seed, 20_000);
            }
        }
    }

    #[test]
    fn geometry_errors_name_the_level() {
        let mut cfg = crate::mmu::MmuConfig::default().pwc;
        cfg[2] = Geometry { entries: 6, ways: 2 };
        let err = PageWalkCache::new("nested_pwc", &cfg).unwrap_err().to_string();
        assert!(err.starts_with("nested_pwc.l3: 6 entries in 2 ways"), "{err}");
    }

    #[test]
    fn a_global_entry_matches_every_asid_but_a_fill_replaces_only_its_own() {
        let cfg = [Geometry { entries: 2, ways: 2 }, Geometry::OFF, Geometry::OFF, Geometry::OFF];
        let mut pwc = PageWalkCache::new("pwc", &cfg).unwrap();
        let (format, input) = (Format::SV39, Gva::new(0x4020_0000));
        let ptr = |table, global| CachedPointer::<HostPhys> {
            level: Level::L0,
            table: Hpa::new(table),
            perms: Perms::all(),
            global,
        };
        pwc.port(Vmid(1), Asid(1)).fill(&format, input, Level::L1, ptr(0x1000, true));
        let hit = WalkCache::<_, HostPhys>::lookup(&mut pwc.port(Vmid(1), Asid(7)), &format, input);
        assert_eq!(hit, Some(ptr(0x1000, true)));
        // ASID 7's own entry goes to the other way; ASID 1's non-global one replaces the global.
        pwc.port(Vmid(1), Asid(7)).fill(&format, input, Level::L1, ptr(0x2000, false));
        pwc.port(Vmid(1), Asid(1)).fill(&format, input, Level::L1, ptr(0x3000, false));
        assert_eq!(pwc.len(), 2);
        let hit = WalkCache::<_, HostPhys>::lookup(&mut pwc.port(Vmid(1), Asid(7)), &format, input);
        assert_eq!(hit, Some(ptr(0x2000, false)));
        let hit = WalkCache::<_, HostPhys>::lookup(&mut pwc.port(Vmid(2), Asid(7)), &format, input);
        assert_eq!(hit, None, "another VMID's entries never match");
    }
}
