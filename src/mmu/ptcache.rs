//! The data-cache model that page-table reads go through: inclusive L1, L2 and LLC of 64-byte
//! lines, each with its latency. Only page-table references use it; guest data accesses are not
//! modelled here, so the sizes are the *effective* capacity page-table lines get.

use super::setassoc::{check_geometry, GeometryError};
use super::tlb::Geometry;
use crate::addr::Hpa;

/// Where a page-table reference was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemLevel {
    /// L1 data cache.
    L1,
    /// L2 cache.
    L2,
    /// Last-level cache.
    Llc,
    /// DRAM.
    Memory,
}

impl MemLevel {
    /// Every level, nearest first.
    pub const ALL: [MemLevel; 4] = [MemLevel::L1, MemLevel::L2, MemLevel::Llc, MemLevel::Memory];

    /// Index 0..4 for counter arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            MemLevel::L1 => "l1",
            MemLevel::L2 => "l2",
            MemLevel::Llc => "llc",
            MemLevel::Memory => "memory",
        }
    }
}

/// Geometry of the three cache levels, in 64-byte lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PtCacheConfig {
    /// L1 lines available to page-table entries.
    pub l1: Geometry,
    /// L2 lines.
    pub l2: Geometry,
    /// LLC lines.
    pub llc: Geometry,
}

impl Default for PtCacheConfig {
    /// Assumption: page-table lines get 1/8 of a 32 KiB L1, 1/8 of a 1 MiB L2 and 1/8 of an 8 MiB
    /// LLC (the rest is taken by data this model does not simulate).
    fn default() -> Self {
        PtCacheConfig {
            l1: Geometry { entries: 64, ways: 8 },
            l2: Geometry { entries: 2048, ways: 16 },
            llc: Geometry { entries: 16384, ways: 16 },
        }
    }
}

/// One cache level: a set-associative array of line tags with LRU replacement.
///
/// It behaves exactly as a [`SetAssoc<u64>`](super::setassoc::SetAssoc) with [`Lru`] would (a
/// clock per level stamped on every hit and fill; a fill takes the first free way, else the way
/// with the oldest stamp) but is specialised for the page-table-read path, which runs several
/// times per TLB miss: tags and stamps sit in two flat arrays, so a lookup scans only the tags
/// (a 16-way set is two host cache lines instead of six `Option<u64>` slots with metadata).
/// Lines are never invalidated, so a set fills its ways in order and a count per set says which
/// way is the first free one without scanning for it.
///
/// [`Lru`]: super::setassoc::Lru
#[derive(Debug, Clone)]
struct LineCache {
    /// Line number held by each way, [`INVALID`] when empty; set `s` is
    /// `tags[s * ways..(s + 1) * ways]`.
    tags: Vec<u64>,
    /// The clock value of each way's last hit or fill.
    stamps: Vec<u64>,
    /// Ways in use in each set: ways `0..filled[s]` are valid, the rest empty.
    filled: Vec<usize>,
    set_mask: u64,
    ways: usize,
    clock: u64,
}

/// The tag of an empty way (no line number reaches it: lines are addresses shifted right by 6).
const INVALID: u64 = u64::MAX;

impl LineCache {
    fn new(name: &str, g: Geometry) -> Result<Self, GeometryError> {
        let (sets, ways) = match g.entries {
            0 => (0, 0),
            _ => (check_geometry(name, g.entries, g.ways)?, g.ways),
        };
        Ok(LineCache {
            tags: vec![INVALID; g.entries],
            stamps: vec![0; g.entries],
            filled: vec![0; sets],
            set_mask: (sets as u64).saturating_sub(1),
            ways,
            clock: 0,
        })
    }

    /// The set `line` maps to.
    #[inline]
    fn set_of(&self, line: u64) -> usize {
        crate::addr::u64_to_usize(line & self.set_mask)
    }

    /// The index of the first way of `line`'s set.
    #[inline]
    fn set_start(&self, line: u64) -> usize {
        self.set_of(line) * self.ways
    }

    /// Looks `line` up, stamping it on a hit. A disabled level (no ways) always misses.
    #[inline]
    fn lookup(&mut self, line: u64) -> bool {
        let start = self.set_start(line);
        let Some(set) = self.tags.get(start..start + self.ways) else { return false };
        match set.iter().position(|&t| t == line) {
            Some(way) => {
                self.clock += 1;
                self.stamps[start + way] = self.clock;
                true
            }
            None => false,
        }
    }

    /// Fills `line`, known to be absent (its lookup just missed), into the first free way of its
    /// set, else over the least recently stamped way. A disabled level is left alone.
    #[inline]
    fn fill_absent(&mut self, line: u64) {
        if self.ways == 0 {
            return;
        }
        let set = self.set_of(line);
        let start = set * self.ways;
        let way = if self.filled[set] < self.ways {
            self.filled[set] += 1;
            self.filled[set] - 1
        } else {
            // Stamps of a level are distinct, so the oldest is unique.
            let stamps = &self.stamps[start..start + self.ways];
            stamps.iter().enumerate().min_by_key(|&(_, s)| s).map_or(0, |(w, _)| w)
        };
        self.tags[start + way] = line;
        self.clock += 1;
        self.stamps[start + way] = self.clock;
    }
}

/// The cache hierarchy for page-table reads.
#[derive(Debug, Clone)]
pub struct PtCache {
    levels: [LineCache; 3],
}

impl PtCache {
    /// A hierarchy with the given geometry.
    pub fn new(cfg: &PtCacheConfig) -> Result<Self, GeometryError> {
        Ok(PtCache {
            levels: [
                LineCache::new("ptcache.l1", cfg.l1)?,
                LineCache::new("ptcache.l2", cfg.l2)?,
                LineCache::new("ptcache.llc", cfg.llc)?,
            ],
        })
    }

    /// Serves one reference: returns where it hit and fills the levels above (inclusive).
    #[inline]
    pub fn access(&mut self, hpa: Hpa) -> MemLevel {
        let line = hpa.as_u64() >> 6;
        let mut served = MemLevel::Memory;
        for (i, level) in self.levels.iter_mut().enumerate() {
            if level.lookup(line) {
                served = MemLevel::ALL[i];
                break;
            }
        }
        // Every level above the one that served the line missed it: fill without searching.
        for level in self.levels.iter_mut().take(served.index()) {
            level.fill_absent(line);
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_read_of_a_line_hits_l1_and_neighbouring_entries_share_lines() {
        let mut c = PtCache::new(&PtCacheConfig::default()).unwrap();
        assert_eq!(c.access(Hpa::new(0x1000)), MemLevel::Memory);
        assert_eq!(c.access(Hpa::new(0x1000)), MemLevel::L1);
        assert_eq!(c.access(Hpa::new(0x1038)), MemLevel::L1, "8 entries share a 64-byte line");
        assert_eq!(c.access(Hpa::new(0x1040)), MemLevel::Memory);
    }

    #[test]
    fn lines_evicted_from_l1_are_found_in_l2() {
        let cfg = PtCacheConfig {
            l1: Geometry { entries: 1, ways: 1 },
            l2: Geometry { entries: 4, ways: 4 },
            llc: Geometry { entries: 8, ways: 8 },
        };
        let mut c = PtCache::new(&cfg).unwrap();
        c.access(Hpa::new(0));
        c.access(Hpa::new(64));
        assert_eq!(c.access(Hpa::new(0)), MemLevel::L2);
    }
}
