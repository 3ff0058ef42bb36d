//! The nested TLB: cached GPA→HPA leaves of the nested (G-stage/EPT) table, tagged with the VMID.
//!
//! It answers exactly as a [`SetAssoc`](super::setassoc::SetAssoc) of (guest frame, size, VMID)
//! entries with LRU replacement did (the tests keep that implementation and compare the two over
//! random operations):
//!
//! - a lookup probes, smallest first, each page size the table ever held; for a size, the set its
//!   guest frame number maps to, and there the first way, in way order, holding that frame at that
//!   size for the VMID. A hit becomes the most recently used way of its set even when it is then
//!   refused because a store needs the dirty bit the entry lacks; only accepted hits are counted;
//! - a fill replaces the way holding the same frame, size and VMID, else takes the first empty
//!   way, else evicts the least recently used way (the first in way order of equal age);
//! - a flush empties exactly the ways its scope selects, wherever they are.
//!
//! Only the layout is specialised, for the TLB-miss path, which looks every guest-entry GPA and
//! the final GPA up here (several times per guest TLB miss) and fills the table after each
//! nested walk:
//!
//! - each way has three words, kept together per set: a tag (the page's guest base with the
//!   size's index in its offset bits, `page_tag`, so one comparison checks frame and size), the
//!   VMID, compared only where the tag matched, and an LRU stamp;
//! - an empty way's tag is `EMPTY_TAG`, which no page's tag equals, and its stamp 0, older than
//!   any stamp from the table's clock, so the first empty way is the least recently used one and
//!   a fill finds its victim in one scan;
//! - the cached leaves, which only hits and flushes read, are apart;
//! - the default associativity (4) is a constant in the scans, so they are unrolled for it.

use super::flush::NestedScope;
use super::setassoc::{check_geometry, GeometryError};
use super::tlb::{page_tag, Geometry, PageSizes};
use super::ways::{self, SetWords, EMPTY_TAG};
use crate::addr::{u64_to_usize, Gpa, HostPhys, Hpa, PageSize, Vmid};
use crate::paging::walk::Leaf;
use crate::paging::Perms;

/// Nested-TLB counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NtlbStats {
    /// Lookups (every lookup of an enabled nested TLB).
    pub lookups: u64,
    /// Hits (lookups that returned an entry: a store's lookup that found a clean entry did not).
    pub hits: u64,
}

/// The leaf cached in a way that holds nothing.
const NO_LEAF: Leaf<HostPhys> = Leaf {
    base: Hpa::ZERO,
    size: PageSize::Size4K,
    perms: Perms::empty(),
    global: false,
    dirty: false,
};

/// The tag of the `size` page holding `gpa`.
#[inline]
fn tag_of(gpa: Gpa, size: PageSize) -> u64 {
    page_tag(gpa.as_u64() & !size.offset_mask(), size)
}

/// The nested TLB.
///
/// Set `s` of the search words is `words[s * 3 * ways..][..3 * ways]`: its ways' tags, then their
/// VMIDs, then their LRU stamps (the table's clock at the way's last hit or fill, 0 when empty).
/// Way `w` of set `s` caches `leaves[s * ways + w]`.
#[derive(Debug, Clone)]
pub struct NestedTlb {
    words: Vec<u64>,
    leaves: Vec<Leaf<HostPhys>>,
    clock: u64,
    /// Every size the table ever held (flushes do not forget any): lookups probe these only,
    /// once when it holds one size, as most tables do.
    held: PageSizes,
    set_mask: u64,
    /// Associativity; 0 for a disabled table.
    ways: usize,
    /// Valid entries.
    live: usize,
    /// Counters.
    pub stats: NtlbStats,
}

impl NestedTlb {
    /// A nested TLB of `g.entries` entries in sets of `g.ways`; zero entries is a disabled table
    /// that never hits, counts nothing and keeps nothing.
    pub fn new(g: Geometry) -> Result<Self, GeometryError> {
        let (sets, ways) = match g.entries {
            0 => (0, 0),
            entries => (check_geometry("ntlb", entries, g.ways)?, g.ways),
        };
        Ok(NestedTlb {
            words: ways::empty_table(sets, ways),
            leaves: vec![NO_LEAF; sets * ways],
            clock: 0,
            held: PageSizes::default(),
            set_mask: (sets as u64).saturating_sub(1),
            ways,
            live: 0,
            stats: NtlbStats::default(),
        })
    }

    /// The set the `size` page holding `gpa` maps to.
    #[inline]
    fn set_of(&self, gpa: Gpa, size: PageSize) -> usize {
        u64_to_usize((gpa.as_u64() >> size.shift()) & self.set_mask)
    }

    /// The cached leaf for `gpa` in `vmid`, as a leaf of no global mapping. A hit that a store
    /// (`store`: the access needs the dirty bit) cannot use — the entry is clean — is a miss, but
    /// still the most recently used way of its set. Inlined: the callers are few and hot, and
    /// the hit returns in registers.
    #[inline(always)]
    pub(super) fn lookup(&mut self, gpa: Gpa, vmid: Vmid, store: bool) -> Option<Leaf<HostPhys>> {
        if self.ways == 0 {
            return None;
        }
        self.stats.lookups += 1;
        if self.live == 0 {
            return None;
        }
        let index = match self.ways {
            4 => self.find(4, gpa, vmid),
            ways => self.find(ways, gpa, vmid),
        }?;
        let leaf = self.leaves[index];
        if store && !leaf.dirty {
            return None;
        }
        self.stats.hits += 1;
        Some(leaf)
    }

    /// Finds `gpa`'s page for `vmid` over the sizes held, smallest first, and stamps its way;
    /// returns its index in `leaves`.
    #[inline(always)]
    fn find(&mut self, ways: usize, gpa: Gpa, vmid: Vmid) -> Option<usize> {
        match self.held.single() {
            Some(size) => self.probe(ways, gpa, size, vmid),
            None => self.held.iter().find_map(|size| self.probe(ways, gpa, size, vmid)),
        }
    }

    /// Looks for the `size` page holding `gpa` for `vmid` in its set; stamps its way on a hit.
    #[inline(always)]
    fn probe(&mut self, ways: usize, gpa: Gpa, size: PageSize, vmid: Vmid) -> Option<usize> {
        let set = self.set_of(gpa, size);
        let words = SetWords::of(&mut self.words, set, ways);
        let way = words.find(tag_of(gpa, size), u64::from(vmid.0))?;
        self.clock += 1;
        words.stamps[way] = self.clock;
        Some(set * ways + way)
    }

    /// Caches `leaf`, the translation of `gpa` in `vmid` (its global flag is dropped), over the
    /// entry of the same page and VMID if there is one, else in the first empty way, else over
    /// the least recently used one. A disabled table is left alone.
    #[inline]
    pub(super) fn insert(&mut self, gpa: Gpa, vmid: Vmid, leaf: Leaf<HostPhys>) {
        match self.ways {
            0 => {}
            4 => self.insert_in(4, gpa, vmid, leaf),
            ways => self.insert_in(ways, gpa, vmid, leaf),
        }
    }

    #[inline(always)]
    fn insert_in(&mut self, ways: usize, gpa: Gpa, vmid: Vmid, leaf: Leaf<HostPhys>) {
        let (tag, vmid) = (tag_of(gpa, leaf.size), u64::from(vmid.0));
        let set = self.set_of(gpa, leaf.size);
        let words = SetWords::of(&mut self.words, set, ways);
        let way = words.find(tag, vmid).unwrap_or_else(|| words.least_recent());
        if words.tags[way] == EMPTY_TAG {
            self.live += 1;
        }
        self.clock += 1;
        words.tags[way] = tag;
        words.contexts[way] = vmid;
        words.stamps[way] = self.clock;
        self.leaves[set * ways + way] = Leaf { global: false, ..leaf };
        self.held.insert(leaf.size);
    }

    /// Removes the entries `scope` selects (of its VMID, or all; covering its GPA, or all);
    /// returns how many.
    pub fn flush(&mut self, scope: &NestedScope) -> usize {
        let ways = self.ways;
        if self.live == 0 {
            return 0;
        }
        let vmid = scope.vmid.map(|v| u64::from(v.0));
        let mut dropped = 0;
        let sets = self.words.chunks_exact_mut(3 * ways).zip(self.leaves.chunks_exact(ways));
        for (words, leaves) in sets {
            let words = SetWords::split(words, ways);
            for (way, leaf) in leaves.iter().enumerate() {
                let tag = words.tags[way];
                let selected = tag != EMPTY_TAG
                    && vmid.is_none_or(|v| v == words.contexts[way])
                    && scope.gpa.is_none_or(|g| tag_of(g, leaf.size) == tag);
                if selected {
                    words.tags[way] = EMPTY_TAG;
                    words.stamps[way] = 0;
                    dropped += 1;
                }
            }
        }
        self.live -= dropped;
        dropped
    }

    /// Valid entries.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmu::setassoc::SetAssoc;
    use crate::rng::Rng;

    /// One cached GPA→HPA translation, as the first nested TLB kept it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct NtlbEntry {
        gpn: u64,
        size: PageSize,
        vmid: Vmid,
        base: Hpa,
        perms: Perms,
        dirty: bool,
    }

    impl NtlbEntry {
        fn leaf(&self) -> Leaf<HostPhys> {
            Leaf {
                base: self.base,
                size: self.size,
                perms: self.perms,
                global: false,
                dirty: self.dirty,
            }
        }
    }

    /// The nested TLB as it was first written: one `SetAssoc<NtlbEntry>` with LRU stamps.
    struct Reference {
        table: SetAssoc<NtlbEntry>,
        sizes: u8,
        stats: NtlbStats,
    }

    impl Reference {
        fn new(g: Geometry) -> Self {
            Reference {
                table: SetAssoc::new("ntlb", g.entries, g.ways).unwrap(),
                sizes: 0,
                stats: NtlbStats::default(),
            }
        }

        fn lookup(&mut self, gpa: Gpa, vmid: Vmid, store: bool) -> Option<NtlbEntry> {
            if self.table.is_disabled() {
                return None;
            }
            self.stats.lookups += 1;
            for size in PageSize::ALL {
                if self.sizes & (1 << size.level().index()) == 0 {
                    continue;
                }
                let gpn = gpa.as_u64() >> size.shift();
                let hit =
                    self.table.lookup(gpn, |e| e.gpn == gpn && e.size == size && e.vmid == vmid);
                if let Some(e) = hit {
                    if store && !e.dirty {
                        return None;
                    }
                    self.stats.hits += 1;
                    return Some(e);
                }
            }
            None
        }

        fn insert(&mut self, e: NtlbEntry) {
            if self.table.is_disabled() {
                return;
            }
            self.sizes |= 1 << e.size.level().index();
            self.table.insert(e.gpn, e, |o| o.gpn == e.gpn && o.size == e.size && o.vmid == e.vmid);
        }

        fn flush(&mut self, scope: &NestedScope) -> usize {
            self.table.retain(|e| {
                let vmid_hit = scope.vmid.is_none_or(|v| v == e.vmid);
                let gpa_hit = scope.gpa.is_none_or(|g| g.as_u64() >> e.size.shift() == e.gpn);
                !(vmid_hit && gpa_hit)
            })
        }
    }

    impl NestedTlb {
        /// Every valid entry in way order, as the reference's `SetAssoc::iter` lists its own.
        fn entries(&self) -> Vec<NtlbEntry> {
            let ways = self.ways.max(1);
            let sets = self.words.chunks_exact(3 * ways).zip(self.leaves.chunks_exact(ways));
            let mut entries = Vec::new();
            for (words, leaves) in sets {
                let (tags, vmids) = (&words[..ways], &words[ways..2 * ways]);
                for ((&tag, &vmid), leaf) in tags.iter().zip(vmids).zip(leaves) {
                    if tag == EMPTY_TAG {
                        continue;
                    }
                    assert_eq!(tag & leaf.size.offset_mask(), u64::from(leaf.size.level().index()));
                    entries.push(NtlbEntry {
                        gpn: tag >> leaf.size.shift(),
                        size: leaf.size,
                        vmid: Vmid(u16::try_from(vmid).unwrap()),
                        base: leaf.base,
                        perms: leaf.perms,
                        dirty: leaf.dirty,
                    });
                }
            }
            entries
        }
    }

    /// Random operands from small pools, so that pages, sizes, VMIDs and sets collide often.
    struct Draw {
        rng: Rng,
    }

    impl Draw {
        /// A GPA in one of a few regions (low, at 2^39 and 2^48, near the top of a 56-bit
        /// space), with a few choices of each frame-number field and any offset.
        fn gpa(&mut self) -> Gpa {
            let region = self.rng.pick(&[0, 0, 1 << 39, 1 << 48, 0x00ff_ff00_0000_0000]);
            let fields = (self.rng.below(12) << 12)
                | (self.rng.below(4) << 21)
                | (self.rng.below(3) << 30)
                | (self.rng.below(2) << 39);
            Gpa::new(region | fields | self.rng.below(1 << 12))
        }

        fn vmid(&mut self) -> Vmid {
            Vmid(self.rng.pick(&[0, 1, 1, 2, 0x3fff]))
        }

        /// A leaf of any size for `gpa`, as a nested walk returns it (any global flag).
        fn leaf(&mut self) -> Leaf<HostPhys> {
            let size = self.rng.pick(&PageSize::TEST_MIX);
            let base = Hpa::new(self.rng.next_u64() & !size.offset_mask() & ((1 << 52) - 1));
            let perms = Perms::from_bits_truncate(u8::try_from(self.rng.below(16)).unwrap());
            let (global, dirty) = (self.rng.below(2) == 0, self.rng.below(3) != 0);
            Leaf { base, size, perms, global, dirty }
        }

        fn scope(&mut self) -> NestedScope {
            NestedScope {
                vmid: self.rng.pick(&[None, Some(Vmid(0)), Some(Vmid(1)), Some(Vmid(0x3fff))]),
                // A wide flush empties most of the table: keep them rarer than one GPA's.
                gpa: if self.rng.below(6) == 0 { None } else { Some(self.gpa()) },
            }
        }
    }

    /// What a comparison run exercised, to check that it reached the cases that matter.
    #[derive(Debug, Default)]
    struct Exercised {
        /// Stores refused by a clean entry.
        refused_stores: u64,
        /// Entries flushed.
        flushed: usize,
    }

    /// Drives a `NestedTlb` and a [`Reference`] of geometry `g` with the same `steps` random
    /// operations and panics at the first difference: a lookup's answer, a flush's count, the
    /// counters or the entry count after every step, the entries and their ways every 500 steps.
    fn compare_with_reference(g: Geometry, seed: u64, steps: usize) -> (NtlbStats, Exercised) {
        let (mut ntlb, mut reference) = (NestedTlb::new(g).unwrap(), Reference::new(g));
        let mut draw = Draw { rng: Rng::new(seed, 0) };
        let mut exercised = Exercised::default();
        for step in 0..steps {
            let at = || format!("step {step} of {g:?} (seed {seed})");
            let (gpa, vmid) = (draw.gpa(), draw.vmid());
            match draw.rng.below(100) {
                // A translation as the nested path makes it: a lookup, then a walk's fill.
                0..50 => {
                    let store = draw.rng.below(3) == 0;
                    let hits = reference.stats.hits;
                    let hit = ntlb.lookup(gpa, vmid, store);
                    let expected = reference.lookup(gpa, vmid, store);
                    assert_eq!(hit, expected.map(|e| e.leaf()), "lookup, {}", at());
                    let probe = |e: &NtlbEntry| e.gpn == gpa.as_u64() >> e.size.shift();
                    let clean = |e: &NtlbEntry| probe(e) && e.vmid == vmid && !e.dirty;
                    if store && hits == reference.stats.hits && reference.table.iter().any(clean) {
                        exercised.refused_stores += 1;
                    }
                    if hit.is_none() && draw.rng.below(4) != 0 {
                        let leaf = draw.leaf();
                        ntlb.insert(gpa, vmid, leaf);
                        let gpn = gpa.as_u64() >> leaf.size.shift();
                        let (size, base, perms, dirty) =
                            (leaf.size, leaf.base, leaf.perms, leaf.dirty);
                        reference.insert(NtlbEntry { gpn, size, vmid, base, perms, dirty });
                    }
                }
                50..96 => {
                    let leaf = draw.leaf();
                    ntlb.insert(gpa, vmid, leaf);
                    let gpn = gpa.as_u64() >> leaf.size.shift();
                    let (size, base, perms, dirty) = (leaf.size, leaf.base, leaf.perms, leaf.dirty);
                    reference.insert(NtlbEntry { gpn, size, vmid, base, perms, dirty });
                }
                _ => {
                    let scope = draw.scope();
                    let flushed = ntlb.flush(&scope);
                    assert_eq!(flushed, reference.flush(&scope), "flush, {}", at());
                    exercised.flushed += flushed;
                }
            }
            assert_eq!(ntlb.stats, reference.stats, "counters, {}", at());
            assert_eq!(ntlb.len(), reference.table.len(), "len, {}", at());
            assert_eq!(ntlb.is_empty(), reference.table.is_empty(), "is_empty, {}", at());
            if step % 500 == 499 || step + 1 == steps {
                let expected: Vec<_> = reference.table.iter().copied().collect();
                assert_eq!(ntlb.entries(), expected, "entries, {}", at());
            }
        }
        (ntlb.stats, exercised)
    }

    #[test]
    fn every_operation_answers_as_the_set_assoc_reference_does() {
        let geometries = [(32, 4), (8, 8), (4, 1), (64, 4), (16, 2), (0, 0), (0, 4)];
        for (entries, ways) in geometries {
            for seed in 0..4 {
                let (stats, exercised) =
                    compare_with_reference(Geometry { entries, ways }, seed, 20_000);
                if entries == 0 {
                    assert_eq!(stats, NtlbStats::default(), "a disabled table counts nothing");
                } else {
                    // Hits, stores refused by clean entries and flushes all happened.
                    assert!(stats.hits > 500, "{entries}/{ways}: {stats:?}");
                    assert!(exercised.refused_stores > 50, "{entries}/{ways}: {exercised:?}");
                    assert!(exercised.flushed > 100, "{entries}/{ways}: {exercised:?}");
                }
            }
        }
    }

    #[test]
    fn geometry_errors_name_the_table() {
        let err = NestedTlb::new(Geometry { entries: 24, ways: 2 }).unwrap_err().to_string();
        assert!(err.starts_with("ntlb: 24 entries in 2 ways"), "{err}");
    }

    #[test]
    fn a_clean_hit_refused_to_a_store_still_becomes_the_most_recent() {
        // One set of two ways: A, then B; a store's lookup of clean A is refused but renews A,
        // so C evicts B.
        let mut ntlb = NestedTlb::new(Geometry { entries: 2, ways: 2 }).unwrap();
        let leaf = |dirty| Leaf {
            base: Hpa::new(0x8000_0000),
            size: PageSize::Size4K,
            perms: Perms::R | Perms::W,
            global: false,
            dirty,
        };
        let (a, b, c) = (Gpa::new(0x1000), Gpa::new(0x2000), Gpa::new(0x3000));
        ntlb.insert(a, Vmid(1), leaf(false));
        ntlb.insert(b, Vmid(1), leaf(true));
        assert_eq!(ntlb.lookup(a, Vmid(1), true), None);
        assert_eq!(ntlb.stats, NtlbStats { lookups: 1, hits: 0 });
        ntlb.insert(c, Vmid(1), leaf(true));
        assert_eq!(ntlb.lookup(a, Vmid(1), false), Some(leaf(false)));
        assert_eq!(ntlb.lookup(b, Vmid(1), false), None);
        assert_eq!(ntlb.stats, NtlbStats { lookups: 3, hits: 1 });
    }
}
