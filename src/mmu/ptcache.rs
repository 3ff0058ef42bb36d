//! The data-cache model that page-table reads go through: inclusive L1, L2 and LLC of 64-byte
//! lines, each with its latency. Only page-table references use it; guest data accesses are not
//! modelled here, so the sizes are the *effective* capacity page-table lines get.

use super::setassoc::{GeometryError, SetAssoc};
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

/// The cache hierarchy for page-table reads.
#[derive(Debug, Clone)]
pub struct PtCache {
    levels: [SetAssoc<u64>; 3],
}

impl PtCache {
    /// A hierarchy with the given geometry.
    pub fn new(cfg: &PtCacheConfig) -> Result<Self, GeometryError> {
        Ok(PtCache {
            levels: [
                SetAssoc::new("ptcache.l1", cfg.l1.entries, cfg.l1.ways)?,
                SetAssoc::new("ptcache.l2", cfg.l2.entries, cfg.l2.ways)?,
                SetAssoc::new("ptcache.llc", cfg.llc.entries, cfg.llc.ways)?,
            ],
        })
    }

    /// Serves one reference: returns where it hit and fills the levels above (inclusive).
    pub fn access(&mut self, hpa: Hpa) -> MemLevel {
        let line = hpa.as_u64() >> 6;
        let mut served = MemLevel::Memory;
        for (i, level) in self.levels.iter_mut().enumerate() {
            if level.lookup(line, |&l| l == line).is_some() {
                served = MemLevel::ALL[i];
                break;
            }
        }
        for level in self.levels.iter_mut().take(served.index()) {
            level.insert(line, line, |&l| l == line);
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
