//! One generic set-associative table with pluggable replacement: the specification of every
//! hardware cache memvirt models. The L1/L2 TLBs, the page-walk caches, the nested TLB and the
//! page-table-read cache each answer exactly as one of these with [`Lru`] would, holding their
//! own entry type (as ChampSim reuses one LRU table for all of them), but keep a layout of their
//! own for the TLB-miss path; a differential test per structure drives it and this table through
//! random operations and compares every answer.

use std::fmt::Debug;

/// Why a table geometry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    /// Entries must split into a power-of-two number of sets of `ways` entries.
    #[error("{name}: {entries} entries in {ways} ways is not a power-of-two number of sets")]
    BadGeometry {
        /// The structure's name.
        name: String,
        /// Requested entries.
        entries: usize,
        /// Requested ways.
        ways: usize,
    },
    /// More entries than any structure may have (see [`MAX_ENTRIES`]).
    #[error("{name}: {entries} entries is more than the {max} a structure may have", max = MAX_ENTRIES)]
    TooLarge {
        /// The structure's name.
        name: String,
        /// Requested entries.
        entries: usize,
    },
}

/// The most entries one structure may have: 2^22, as many as QEMU's largest dynamic software
/// TLB and four times the lines of a 64 MiB cache. The bound keeps a mistyped geometry from
/// exhausting host memory (or overflowing an allocation size) before the run starts.
pub const MAX_ENTRIES: usize = 1 << 22;

/// A replacement policy. Each slot carries one `u64` of policy state.
pub trait Replacement: Debug + Clone + Default {
    /// A slot was hit.
    fn on_hit(&mut self, meta: &mut u64);
    /// A slot was filled.
    fn on_fill(&mut self, meta: &mut u64);
    /// Chooses the victim among the (all valid) slots of a set.
    fn victim(&mut self, metas: impl Iterator<Item = u64>) -> usize;
}

/// Least recently used: a global clock stamped on every hit and fill.
#[derive(Debug, Clone, Default)]
pub struct Lru {
    clock: u64,
}

impl Replacement for Lru {
    #[inline]
    fn on_hit(&mut self, meta: &mut u64) {
        self.clock += 1;
        *meta = self.clock;
    }
    #[inline]
    fn on_fill(&mut self, meta: &mut u64) {
        self.on_hit(meta);
    }
    fn victim(&mut self, metas: impl Iterator<Item = u64>) -> usize {
        metas.enumerate().min_by_key(|&(_, m)| m).map_or(0, |(i, _)| i)
    }
}

/// First in, first out: stamped on fill only.
#[derive(Debug, Clone, Default)]
pub struct Fifo {
    clock: u64,
}

impl Replacement for Fifo {
    #[inline]
    fn on_hit(&mut self, _: &mut u64) {}
    #[inline]
    fn on_fill(&mut self, meta: &mut u64) {
        self.clock += 1;
        *meta = self.clock;
    }
    fn victim(&mut self, metas: impl Iterator<Item = u64>) -> usize {
        metas.enumerate().min_by_key(|&(_, m)| m).map_or(0, |(i, _)| i)
    }
}

/// Pseudo-random victims from a fixed-seed xorshift generator, so runs stay deterministic.
#[derive(Debug, Clone)]
pub struct Random {
    state: u64,
}

impl Default for Random {
    fn default() -> Self {
        Random { state: 0x9e37_79b9_7f4a_7c15 }
    }
}

impl Replacement for Random {
    #[inline]
    fn on_hit(&mut self, _: &mut u64) {}
    #[inline]
    fn on_fill(&mut self, _: &mut u64) {}
    fn victim(&mut self, metas: impl Iterator<Item = u64>) -> usize {
        let ways = metas.count().max(1);
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        crate::addr::u64_to_usize(self.state % ways as u64)
    }
}

/// Checks that `entries` (non-zero, at most [`MAX_ENTRIES`]) split into a power-of-two number of
/// sets of `ways`; returns the number of sets.
pub(crate) fn check_geometry(
    name: &str,
    entries: usize,
    ways: usize,
) -> Result<usize, GeometryError> {
    if entries > MAX_ENTRIES {
        return Err(GeometryError::TooLarge { name: name.to_string(), entries });
    }
    if ways == 0 || entries % ways != 0 || !(entries / ways).is_power_of_two() {
        return Err(GeometryError::BadGeometry { name: name.to_string(), entries, ways });
    }
    Ok(entries / ways)
}

/// A set-associative table of `E`. The caller supplies a set key (usually the page number) and a
/// predicate that says which entry matches: tags differ per structure (ASID/global for TLBs,
/// level for page-walk caches), so matching stays with the entry type.
#[derive(Debug, Clone)]
pub struct SetAssoc<E: Copy + Debug, R: Replacement = Lru> {
    /// The entry of each way (`None` when empty); set `s` is `slots[s * ways..(s + 1) * ways]`.
    slots: Vec<Option<E>>,
    /// Each way's replacement state, apart from the entries so that lookups scan only entries.
    metas: Vec<u64>,
    set_mask: u64,
    ways: usize,
    live: usize,
    policy: R,
}

impl<E: Copy + Debug, R: Replacement> SetAssoc<E, R> {
    /// A table of `entries` entries in sets of `ways`. Zero entries is a disabled structure that
    /// never hits. `ways == entries` is fully associative.
    pub fn new(name: &str, entries: usize, ways: usize) -> Result<Self, GeometryError> {
        if entries == 0 {
            return Ok(SetAssoc {
                slots: Vec::new(),
                metas: Vec::new(),
                set_mask: 0,
                ways: 0,
                live: 0,
                policy: R::default(),
            });
        }
        check_geometry(name, entries, ways)?;
        Ok(SetAssoc {
            slots: vec![None; entries],
            metas: vec![0; entries],
            set_mask: (entries / ways) as u64 - 1,
            ways,
            live: 0,
            policy: R::default(),
        })
    }

    /// A disabled table.
    pub fn disabled() -> Self {
        SetAssoc {
            slots: Vec::new(),
            metas: Vec::new(),
            set_mask: 0,
            ways: 0,
            live: 0,
            policy: R::default(),
        }
    }

    #[inline]
    fn set_range(&self, key: u64) -> std::ops::Range<usize> {
        let set = crate::addr::u64_to_usize(key & self.set_mask);
        set * self.ways..(set + 1) * self.ways
    }

    /// Capacity in entries.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Whether the structure is disabled (zero entries).
    #[inline]
    pub fn is_disabled(&self) -> bool {
        self.slots.is_empty()
    }

    /// Valid entries.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no entry is valid.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Finds the entry matching `hit` in the set of `key`, updating replacement state.
    #[inline]
    pub fn lookup(&mut self, key: u64, hit: impl Fn(&E) -> bool) -> Option<E> {
        let range = self.set_range(key);
        let start = range.start;
        let (way, e) = self
            .slots
            .get(range)?
            .iter()
            .enumerate()
            .find_map(|(w, s)| s.filter(|e| hit(e)).map(|e| (w, e)))?;
        self.policy.on_hit(&mut self.metas[start + way]);
        Some(e)
    }

    /// Finds the entry matching `hit` without touching replacement state.
    pub fn probe(&self, key: u64, hit: impl Fn(&E) -> bool) -> Option<E> {
        self.slots.get(self.set_range(key))?.iter().flatten().find(|e| hit(e)).copied()
    }

    /// Inserts `entry` into the set of `key`, replacing an entry that `same` matches, else the
    /// first free way, else the policy's victim. Returns the evicted entry, if any.
    pub fn insert(&mut self, key: u64, entry: E, same: impl Fn(&E) -> bool) -> Option<E> {
        if self.slots.is_empty() {
            return None;
        }
        let range = self.set_range(key);
        let start = range.start;
        // One pass finds a matching entry (which wins) and remembers the first free way.
        let mut free = None;
        let mut matching = None;
        for (w, slot) in self.slots[range.clone()].iter().enumerate() {
            match slot {
                Some(e) if same(e) => {
                    matching = Some(w);
                    break;
                }
                Some(_) => {}
                None => {
                    free = free.or(Some(w));
                }
            }
        }
        let way = match matching.or(free) {
            Some(w) => w,
            None => self.policy.victim(self.metas[range].iter().copied()).min(self.ways - 1),
        };
        let old = self.slots[start + way].replace(entry);
        self.policy.on_fill(&mut self.metas[start + way]);
        if old.is_none() {
            self.live += 1;
        }
        old
    }

    /// Drops every entry `keep` rejects; returns how many were dropped.
    pub fn retain(&mut self, mut keep: impl FnMut(&E) -> bool) -> usize {
        let mut dropped = 0;
        for slot in &mut self.slots {
            if slot.is_some_and(|e| !keep(&e)) {
                *slot = None;
                dropped += 1;
            }
        }
        self.live -= dropped;
        dropped
    }

    /// Like [`retain`](Self::retain) but only in the set of `key`.
    pub fn retain_in_set(&mut self, key: u64, mut keep: impl FnMut(&E) -> bool) -> usize {
        if self.slots.is_empty() {
            return 0;
        }
        let range = self.set_range(key);
        let mut dropped = 0;
        for slot in &mut self.slots[range] {
            if slot.is_some_and(|e| !keep(&e)) {
                *slot = None;
                dropped += 1;
            }
        }
        self.live -= dropped;
        dropped
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.slots.fill(None);
        self.live = 0;
    }

    /// Every valid entry.
    pub fn iter(&self) -> impl Iterator<Item = &E> + '_ {
        self.slots.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table<R: Replacement>(entries: usize, ways: usize) -> SetAssoc<u64, R> {
        SetAssoc::new("test", entries, ways).unwrap()
    }

    #[test]
    fn lru_evicts_the_least_recently_used_way() {
        let mut t = table::<Lru>(2, 2);
        t.insert(0, 10, |&e| e == 10);
        t.insert(0, 20, |&e| e == 20);
        assert_eq!(t.lookup(0, |&e| e == 10), Some(10));
        assert_eq!(t.insert(0, 30, |&e| e == 30), Some(20));
        assert_eq!(t.probe(0, |&e| e == 10), Some(10));
    }

    #[test]
    fn fifo_ignores_hits() {
        let mut t = table::<Fifo>(2, 2);
        t.insert(0, 10, |&e| e == 10);
        t.insert(0, 20, |&e| e == 20);
        assert_eq!(t.lookup(0, |&e| e == 10), Some(10));
        assert_eq!(t.insert(0, 30, |&e| e == 30), Some(10));
    }

    #[test]
    fn random_replacement_is_deterministic() {
        let run = || {
            let mut t = table::<Random>(4, 4);
            (0..20u64).filter_map(|i| t.insert(0, i, |&e| e == i)).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn sets_are_selected_by_the_low_key_bits() {
        let mut t = table::<Lru>(4, 1);
        for k in 0..4u64 {
            t.insert(k, k, |_| false);
        }
        assert_eq!(t.len(), 4, "four keys in four direct-mapped sets do not conflict");
        assert_eq!(t.insert(4, 4, |_| false), Some(0));
    }

    #[test]
    fn reinserting_a_matching_entry_replaces_it() {
        let mut t = table::<Lru>(4, 4);
        t.insert(0, 1, |_| false);
        assert_eq!(t.insert(0, 2, |&e| e == 1), Some(1));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn retain_drops_exactly_the_rejected_entries() {
        let mut t = table::<Lru>(8, 2);
        for k in 0..8u64 {
            t.insert(k, k, |_| false);
        }
        assert_eq!(t.retain(|&e| e % 2 == 0), 4);
        assert_eq!(t.len(), 4);
        assert!(t.iter().all(|e| e % 2 == 0));
    }

    #[test]
    fn bad_geometries_are_refused_and_zero_disables() {
        assert!(SetAssoc::<u64>::new("x", 12, 5).is_err());
        assert!(SetAssoc::<u64>::new("x", 24, 2).is_err(), "12 sets is not a power of two");
        assert!(SetAssoc::<u64>::new("x", 1536, 12).is_ok());
        let mut off = SetAssoc::<u64>::new("x", 0, 0).unwrap();
        assert_eq!(off.insert(0, 1, |_| false), None);
        assert_eq!(off.lookup(0, |_| true), None);
    }

    #[test]
    fn geometries_beyond_the_entry_bound_are_refused_before_allocating() {
        assert!(check_geometry("x", MAX_ENTRIES, 4).is_ok());
        let err = check_geometry("ntlb", MAX_ENTRIES * 2, 4).unwrap_err();
        assert_eq!(err, GeometryError::TooLarge { name: "ntlb".into(), entries: MAX_ENTRIES * 2 });
        assert!(err.to_string().starts_with("ntlb: 8388608 entries is more than the 4194304"));
        // A size no allocation could hold is refused too, not overflowed.
        assert!(SetAssoc::<u64>::new("x", 1 << 62, 4).is_err());
    }
}
