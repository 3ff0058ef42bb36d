//! The search words of a set's ways, as the specialised tables keep them (the TLB, the nested
//! TLB and the page-walk caches): per set, every way's tag, then every way's context word, then
//! every way's LRU stamp, so that a lookup reads contiguous words and the entries themselves,
//! which only hits, fills and flushes read, sit apart.
//!
//! An empty way has the tag [`EMPTY_TAG`] and the stamp 0: no table's tags equal the first, and
//! the second is older than any stamp a table's clock gives, so the first empty way is also the
//! least recently used one and a fill needs a single scan for its victim.

/// The tag of an empty way. Each table's tags leave bits clear that this one has set (a TLB
/// tag's offset bits above the size index, a page-walk-cache prefix's top bits), which the
/// tables check where they build their tags.
pub(super) const EMPTY_TAG: u64 = u64::MAX;

/// The words of `sets` sets of `ways` empty ways.
pub(super) fn empty_table(sets: usize, ways: usize) -> Vec<u64> {
    let mut words = vec![0; 3 * sets * ways];
    for set in words.chunks_exact_mut(3 * ways.max(1)) {
        set[..ways].fill(EMPTY_TAG);
    }
    words
}

/// The words of one set: way `w` has `tags[w]`, `contexts[w]` and `stamps[w]`.
#[derive(Debug)]
pub(super) struct SetWords<'a> {
    /// Each way's tag ([`EMPTY_TAG`] when empty).
    pub(super) tags: &'a mut [u64],
    /// Each way's context word (what else a lookup must match; stale in an empty way).
    pub(super) contexts: &'a mut [u64],
    /// Each way's LRU stamp: the table's clock at its last hit or fill, 0 when empty.
    pub(super) stamps: &'a mut [u64],
}

impl<'a> SetWords<'a> {
    /// The words of set `set` in `words`, a table of `ways` ways.
    #[inline(always)]
    pub(super) fn of(words: &'a mut [u64], set: usize, ways: usize) -> Self {
        Self::split(&mut words[set * 3 * ways..][..3 * ways], ways)
    }

    /// The words of one set, `3 * ways` long.
    #[inline(always)]
    pub(super) fn split(set: &'a mut [u64], ways: usize) -> Self {
        let (tags, rest) = set.split_at_mut(ways);
        let (contexts, stamps) = rest.split_at_mut(ways);
        SetWords { tags, contexts, stamps }
    }

    /// The first way whose tag and context word are `tag` and `context`.
    #[inline(always)]
    pub(super) fn find(&self, tag: u64, context: u64) -> Option<usize> {
        self.tags.iter().zip(&*self.contexts).position(|(&t, &c)| t == tag && c == context)
    }

    /// The least recently used way (see [`least_recent`]).
    #[inline(always)]
    pub(super) fn least_recent(&self) -> usize {
        least_recent(self.stamps)
    }
}

/// The least recently used of ways stamped `stamps`: the first of the smallest stamp, as
/// `SetAssoc` chose (only empty ways share a stamp, 0).
#[inline(always)]
pub(super) fn least_recent(stamps: &[u64]) -> usize {
    let mut oldest = 0;
    for (way, &stamp) in stamps.iter().enumerate().skip(1) {
        if stamp < stamps[oldest] {
            oldest = way;
        }
    }
    oldest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_empty_way_is_the_least_recent_and_sets_do_not_overlap() {
        let mut words = empty_table(2, 3);
        let set1 = SetWords::of(&mut words, 1, 3);
        assert!(set1.tags.iter().all(|&t| t == EMPTY_TAG));
        assert_eq!(set1.least_recent(), 0);
        (set1.tags[0], set1.contexts[0], set1.stamps[0]) = (7, 9, 5);
        assert_eq!(set1.find(7, 9), Some(0));
        assert_eq!(set1.find(7, 8), None, "the context word must match too");
        assert_eq!(set1.least_recent(), 1, "the first empty way after a filled one");
        assert_eq!(SetWords::of(&mut words, 0, 3).find(7, 9), None, "set 0 is untouched");
        assert_eq!(least_recent(&[4, 2, 3, 2]), 1, "the first of the smallest stamps");
    }
}
