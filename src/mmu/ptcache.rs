//! The data-cache model that page-table reads go through: inclusive L1, L2 and LLC of 64-byte
//! lines, each with its latency. Only page-table references use it; guest data accesses are not
//! modelled here, so the sizes are the *effective* capacity page-table lines get.

use super::setassoc::{check_geometry, GeometryError};
use super::tlb::Geometry;
use crate::addr::Hpa;
use crate::profile::MAX_HOST_MIB;

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
/// hit makes a line the most recently used; a fill takes a free way, else evicts the least
/// recently used line) but is specialised for the page-table-read path, which runs several times
/// per TLB miss and whose sets the host's own caches rarely hold:
///
/// - each set keeps its lines in recency order, most recent first, so no LRU stamps are stored:
///   a hit moves its line to the front, a fill shifts the set down one place (the last way, the
///   least recently used line or an empty way, drops out) and writes the new line in front.
///   Which way holds a line is never observable, only which lines a set holds and their order,
///   so the hits and evictions are those of stamp-based LRU;
/// - a tag is the line number without its set bits, in 32 bits (host memory is at most
///   [`MAX_HOST_MIB`], 2^32 lines), so a 16-way set is 64 bytes, aligned to one host cache line;
/// - an empty way holds [`EMPTY`], which no line's tag equals, so a lookup compares every way
///   without knowing how many are in use (lines are never invalidated: empty ways only ever
///   trail the valid ones).
///
/// [`Lru`]: super::setassoc::Lru
#[derive(Debug, Clone)]
struct LineCache {
    /// Tags, set `s` at `tags[base + s * ways..][..ways]`, most recently used first.
    tags: Vec<u32>,
    /// Where set 0 starts in `tags`: the vector has room to start the sets on a 64-byte boundary.
    base: usize,
    set_mask: u64,
    set_bits: u32,
    ways: usize,
}

/// Tags per host cache line.
const TAGS_PER_LINE: usize = 64 / std::mem::size_of::<u32>();

/// The tag of an empty way. The one line whose tag it would be (the last line of a 2^32-line
/// host memory, in a level with a single set) is treated like a line beyond 32-bit tags: no
/// level keeps it.
const EMPTY: u32 = u32::MAX;

// Every line of the largest host memory a profile may have gets a 32-bit tag.
const _: () = assert!((MAX_HOST_MIB << 20) >> 6 <= 1 << 32);

impl LineCache {
    fn new(name: &str, g: Geometry) -> Result<Self, GeometryError> {
        let (sets, ways) = match g.entries {
            0 => (0, 0),
            _ => (check_geometry(name, g.entries, g.ways)?, g.ways),
        };
        let tags = vec![EMPTY; g.entries + TAGS_PER_LINE - 1];
        // Alignment only speeds lookups up; a clone that lands elsewhere is merely slower.
        let misalign = tags.as_ptr() as usize % 64 / std::mem::size_of::<u32>();
        Ok(LineCache {
            tags,
            base: (TAGS_PER_LINE - misalign) % TAGS_PER_LINE,
            set_mask: (sets as u64).saturating_sub(1),
            set_bits: sets.max(1).trailing_zeros(),
            ways,
        })
    }

    /// Where the ways of `line`'s set start in `tags`, and the line's tag in it; `None` for a
    /// line no level keeps (beyond 32-bit tags, which host memory never reaches, or [`EMPTY`]).
    #[inline]
    fn place(&self, line: u64) -> Option<(usize, u32)> {
        let tag = u32::try_from(line >> self.set_bits).ok().filter(|&t| t != EMPTY)?;
        Some((self.base + crate::addr::u64_to_usize(line & self.set_mask) * self.ways, tag))
    }

    /// [`place`](Self::place) for a line below [`EMPTY`] (every line of a host memory short of
    /// 2^32 lines): its tag is at most the line itself, so it always fits and is never `EMPTY`.
    #[inline(always)]
    fn place_low(&self, line: u32) -> (usize, u32) {
        let set = crate::addr::u64_to_usize(u64::from(line) & self.set_mask);
        (self.base + set * self.ways, line >> self.set_bits)
    }

    /// Looks `line` up, making it the most recently used on a hit. A disabled level (no ways)
    /// always misses.
    #[inline]
    fn lookup(&mut self, line: u64) -> bool {
        self.place(line).is_some_and(|at| self.lookup_at(at))
    }

    /// [`lookup`](Self::lookup) of the tag `tag` in the set that starts at `start`.
    #[inline(always)]
    fn lookup_at(&mut self, (start, tag): (usize, u32)) -> bool {
        match self.ways {
            // The default geometries, with the set as a fixed-size array the compiler keeps in
            // vector registers.
            16 => fixed::<16>(&mut self.tags[start..start + 16]).lookup(tag),
            8 => fixed::<8>(&mut self.tags[start..start + 8]).lookup(tag),
            ways => {
                let set = &mut self.tags[start..start + ways];
                match set.iter().position(|&t| t == tag) {
                    Some(way) => {
                        set[..=way].rotate_right(1);
                        true
                    }
                    None => false,
                }
            }
        }
    }

    /// [`lookup_at`](Self::lookup_at) in a level known to have `W` ways.
    #[inline(always)]
    fn lookup_fixed<const W: usize>(&mut self, (start, tag): (usize, u32)) -> bool {
        fixed::<W>(&mut self.tags[start..start + W]).lookup(tag)
    }

    /// [`fill_at`](Self::fill_at) in a level known to have `W` ways.
    #[inline(always)]
    fn fill_fixed<const W: usize>(&mut self, (start, tag): (usize, u32)) {
        fixed::<W>(&mut self.tags[start..start + W]).push_front(tag);
    }

    /// Fills `line`, known to be absent (its lookup just missed), as the most recently used line
    /// of its set, evicting the least recently used one if the set is full. A disabled level is
    /// left alone.
    #[inline]
    fn fill_absent(&mut self, line: u64) {
        if let Some(at) = self.place(line) {
            self.fill_at(at);
        }
    }

    /// [`fill_absent`](Self::fill_absent) of the tag `tag` in the set that starts at `start`.
    #[inline(always)]
    fn fill_at(&mut self, (start, tag): (usize, u32)) {
        match self.ways {
            16 => fixed::<16>(&mut self.tags[start..start + 16]).push_front(tag),
            8 => fixed::<8>(&mut self.tags[start..start + 8]).push_front(tag),
            0 => {}
            ways => {
                let set = &mut self.tags[start..start + ways];
                set.rotate_right(1);
                set[0] = tag;
            }
        }
    }
}

/// A set of `W` ways as an array.
struct FixedSet<'a, const W: usize>(&'a mut [u32; W]);

/// The set at `tags` (exactly `W` tags long) as a [`FixedSet`].
#[inline]
fn fixed<const W: usize>(tags: &mut [u32]) -> FixedSet<'_, W> {
    // The callers slice exactly `W` tags, so the conversion cannot fail.
    FixedSet(tags.try_into().unwrap_or_else(|_| unreachable!("a set of {W} ways")))
}

impl<const W: usize> FixedSet<'_, W> {
    /// Whether `tag` is in the set; if so it moves to the front, the ways before it one place
    /// down.
    #[inline(always)]
    fn lookup(self, tag: u32) -> bool {
        // Most lookups miss: rule them out with one vector compare of every way.
        if !self.0.iter().fold(false, |any, &t| any | (t == tag)) {
            return false;
        }
        // Inlined into the walk's accounting, the compiler keeps a pass over more than 8 ways a
        // loop (8 instructions a way); out of line it unrolls it (4 a way), which pays for the
        // call where hits sit deep (some 5 to 10 ways in the L2 and LLC).
        if W > 8 {
            move_to_front_out_of_line(self.0, tag);
        } else {
            move_to_front(self.0, tag);
        }
        true
    }

    /// Puts `tag` in front, every way one place down (the last one drops out).
    #[inline(always)]
    fn push_front(self, tag: u32) {
        let old = *self.0;
        self.0[1..].copy_from_slice(&old[..W - 1]);
        self.0[0] = tag;
    }
}

/// Moves `tag`, known to be in `set`, to the front, the ways before it one place down: each
/// way's tag is carried one place down until the way that held `tag` (one scalar pass, no
/// separate search for the way).
#[inline(always)]
fn move_to_front<const W: usize>(set: &mut [u32; W], tag: u32) {
    let mut carry = tag;
    for t in set.iter_mut() {
        let held = std::mem::replace(t, carry);
        if held == tag {
            break;
        }
        carry = held;
    }
}

/// [`move_to_front`] as a call of its own, which the compiler unrolls.
#[inline(never)]
fn move_to_front_out_of_line<const W: usize>(set: &mut [u32; W], tag: u32) {
    move_to_front(set, tag);
}

/// The cache hierarchy for page-table reads.
#[derive(Debug, Clone)]
pub struct PtCache {
    levels: [LineCache; 3],
    /// Whether the levels have 8, 16 and 16 ways (the default geometry's), served by code with
    /// the ways as constants.
    ways_8_16_16: bool,
}

impl PtCache {
    /// A hierarchy with the given geometry.
    pub fn new(cfg: &PtCacheConfig) -> Result<Self, GeometryError> {
        let levels = [
            LineCache::new("ptcache.l1", cfg.l1)?,
            LineCache::new("ptcache.l2", cfg.l2)?,
            LineCache::new("ptcache.llc", cfg.llc)?,
        ];
        let ways_8_16_16 = levels.iter().map(|l| l.ways).eq([8, 16, 16]);
        Ok(PtCache { levels, ways_8_16_16 })
    }

    /// Serves one reference: returns where it hit and fills the levels above (inclusive).
    #[inline(always)]
    pub fn access(&mut self, hpa: Hpa) -> MemLevel {
        let line = hpa.as_u64() >> 6;
        match u32::try_from(line) {
            Ok(low) if low != EMPTY && self.ways_8_16_16 => self.access_8_16_16(low),
            Ok(low) if low != EMPTY => self.access_low(low),
            _ => self.access_high(line),
        }
    }

    /// [`access`](Self::access) of a line below [`EMPTY`], which every level can keep: each
    /// level's set and tag are computed once, for the lookup and for the fill.
    #[inline(always)]
    fn access_low(&mut self, line: u32) -> MemLevel {
        let [l1, l2, llc] = &mut self.levels;
        let at1 = l1.place_low(line);
        if l1.lookup_at(at1) {
            return MemLevel::L1;
        }
        let at2 = l2.place_low(line);
        if l2.lookup_at(at2) {
            l1.fill_at(at1);
            return MemLevel::L2;
        }
        let at3 = llc.place_low(line);
        let served = if llc.lookup_at(at3) {
            MemLevel::Llc
        } else {
            llc.fill_at(at3);
            MemLevel::Memory
        };
        // Every level above the one that served the line missed it: fill without searching.
        l1.fill_at(at1);
        l2.fill_at(at2);
        served
    }

    /// [`access_low`](Self::access_low) with the levels' ways known to be 8, 16 and 16.
    #[inline(always)]
    fn access_8_16_16(&mut self, line: u32) -> MemLevel {
        let [l1, l2, llc] = &mut self.levels;
        let at1 = l1.place_low(line);
        if l1.lookup_fixed::<8>(at1) {
            return MemLevel::L1;
        }
        let at2 = l2.place_low(line);
        if l2.lookup_fixed::<16>(at2) {
            l1.fill_fixed::<8>(at1);
            return MemLevel::L2;
        }
        let at3 = llc.place_low(line);
        let served = if llc.lookup_fixed::<16>(at3) {
            MemLevel::Llc
        } else {
            llc.fill_fixed::<16>(at3);
            MemLevel::Memory
        };
        l1.fill_fixed::<8>(at1);
        l2.fill_fixed::<16>(at2);
        served
    }

    /// [`access`](Self::access) of a line at or beyond [`EMPTY`] (host memory never has one),
    /// which only the levels whose tag for it fits and is not `EMPTY` keep.
    #[cold]
    #[inline(never)]
    fn access_high(&mut self, line: u64) -> MemLevel {
        let mut served = MemLevel::Memory;
        for (i, level) in self.levels.iter_mut().enumerate() {
            if level.lookup(line) {
                served = MemLevel::ALL[i];
                break;
            }
        }
        for level in self.levels.iter_mut().take(served.index()) {
            level.fill_absent(line);
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmu::setassoc::SetAssoc;

    #[test]
    fn second_read_of_a_line_hits_l1_and_neighbouring_entries_share_lines() {
        let mut c = PtCache::new(&PtCacheConfig::default()).unwrap();
        assert_eq!(c.access(Hpa::new(0x1000)), MemLevel::Memory);
        assert_eq!(c.access(Hpa::new(0x1000)), MemLevel::L1);
        assert_eq!(c.access(Hpa::new(0x1038)), MemLevel::L1, "8 entries share a 64-byte line");
        assert_eq!(c.access(Hpa::new(0x1040)), MemLevel::Memory);
    }

    /// The hierarchy as it was first written: one `SetAssoc<u64>` with LRU stamps per level.
    struct Reference {
        levels: Vec<SetAssoc<u64>>,
    }

    impl Reference {
        fn new(cfg: &PtCacheConfig) -> Self {
            let mk = |g: Geometry| SetAssoc::new("ref", g.entries, g.ways).unwrap();
            Reference { levels: vec![mk(cfg.l1), mk(cfg.l2), mk(cfg.llc)] }
        }

        fn access(&mut self, hpa: Hpa) -> MemLevel {
            let line = hpa.as_u64() >> 6;
            let served = (0..3)
                .find(|&i| self.levels[i].lookup(line, |&l| l == line).is_some())
                .unwrap_or(3);
            for level in &mut self.levels[..served] {
                level.insert(line, line, |&l| l == line);
            }
            MemLevel::ALL[served]
        }
    }

    #[test]
    fn recency_ordered_sets_serve_every_reference_as_lru_stamps_do() {
        // Each level as (entries, ways); (0, 0) turns it off.
        let levels = |l1: (usize, usize), l2: (usize, usize), llc: (usize, usize)| {
            let geometry = |(entries, ways)| Geometry { entries, ways };
            PtCacheConfig { l1: geometry(l1), l2: geometry(l2), llc: geometry(llc) }
        };
        let geometries = [
            PtCacheConfig::default(),
            levels((8, 2), (64, 32), (96, 3)),
            levels((0, 0), (16, 16), (64, 8)),
            levels((16, 4), (256, 32), (4096, 1)),
            levels((8, 1), (0, 0), (1024, 16)),
            levels((16, 8), (256, 16), (1024, 16)),
            // One level short of those ways each.
            levels((16, 4), (256, 16), (1024, 16)),
            levels((16, 8), (256, 8), (1024, 16)),
            levels((16, 8), (256, 16), (1024, 8)),
            levels((32, 8), (512, 16), (0, 0)),
        ];
        for cfg in geometries {
            let (mut fast, mut reference) = (PtCache::new(&cfg).unwrap(), Reference::new(&cfg));
            let mut rng = crate::rng::Rng::new(7, 0);
            for i in 0..200_000 {
                // Mostly a working set a few times the LLC, now and then a far line or one of
                // the highest lines below the empty tag.
                let line = match rng.below(32) {
                    0 => u64::from(EMPTY) - 1 - rng.below(64),
                    1 | 2 => rng.next_u64() >> 38,
                    _ => rng.below(40_000),
                };
                let hpa = Hpa::new(line << 6);
                assert_eq!(fast.access(hpa), reference.access(hpa), "reference {i} in {cfg:?}");
            }
        }
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
