//! Simulated host physical memory.
//!
//! Frames are allocated on demand. A frame used as a page table holds 512 real 8-byte entries; any
//! other frame carries only a 64-bit content token (enough for end-to-end checks that a
//! translation reached the right frame). Memory use therefore grows with the number of table pages
//! and frames touched, never with guest bytes.

use crate::addr::{u64_to_usize, Hfn, Hpa, PAGE_SHIFT};

/// Entries in one 4 KiB table page.
pub const ENTRIES_PER_PAGE: usize = 512;

/// Frames a table pool takes at a time by default: 2 MiB (assumption: a hypervisor's page
/// caches are refilled from a buddy allocator that, on a host that is not fragmented, hands out
/// pages of one free block in order; `memory.table_pool_frames` changes it).
pub const DEFAULT_POOL_CHUNK: u64 = 512;

type TablePage = [u64; ENTRIES_PER_PAGE];

/// Simulator errors of the memory layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    /// The host ran out of frames.
    #[error("host memory exhausted: all {limit} frames ({mib} MiB) are in use")]
    HostExhausted {
        /// The frame limit.
        limit: u64,
        /// The limit in MiB.
        mib: u64,
    },
    /// The guest ran out of guest-physical frames.
    #[error("guest physical memory exhausted: all {frames} frames ({mib} MiB) are in use")]
    GuestExhausted {
        /// Guest frames.
        frames: u64,
        /// The guest's memory in MiB.
        mib: u64,
    },
}

#[derive(Clone, Copy, Debug, Default)]
struct Frame {
    /// 1 + index into `HostMemory::tables` when the frame holds entries, else 0.
    table: u32,
    /// Allocated (not on the free list).
    live: bool,
    /// 1 + the [`TablePool`] it belongs to (freed into that pool), 0 for general frames.
    pool: u8,
}

/// The hypervisor structures whose table pages come from pools of their own
/// ([`HostMemory::alloc_table_frame`]), as a hypervisor keeps per-purpose page caches (KVM's
/// `mmu_shadow_page_cache`, the nested-table pages of its TDP MMU) rather than interleaving
/// them page by page with everything else it allocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TablePool {
    /// Nested (G-stage, EPT) table pages.
    Nested,
    /// Shadow table pages.
    Shadow,
    /// A cross-ISA emulator's host-process table pages.
    Emulator,
}

impl TablePool {
    const ALL: [TablePool; 3] = [TablePool::Nested, TablePool::Shadow, TablePool::Emulator];

    const fn index(self) -> usize {
        self as usize
    }
}

/// One pool: the unused rest of its current chunk, and the frames freed back into it (reused
/// first, most recently freed first).
#[derive(Clone, Debug, Default)]
struct Pool {
    next: u64,
    end: u64,
    free: Vec<u64>,
}

/// The host's physical memory: a frame allocator plus per-frame contents.
///
/// Every TLB miss reads table entries and then the data frame's token at addresses the host
/// cache has rarely seen, so the layout keeps those reads to as few host cache lines as it can:
/// tokens have their own dense array (8 bytes a frame), and table pages live in one contiguous
/// arena indexed from the 8-byte frame record, not behind a pointer each.
#[derive(Debug)]
pub struct HostMemory {
    frames: Vec<Frame>,
    /// Content token of each frame (0 for a zeroed frame), indexed like `frames`.
    tokens: Vec<u64>,
    tables: Vec<TablePage>,
    free_tables: Vec<u32>,
    free_frames: Vec<u64>,
    pools: [Pool; TablePool::ALL.len()],
    /// Frames a pool takes at a time (aligned to their count); 1: no pools, table pages come
    /// from the general allocator interleaved with every other allocation.
    pool_chunk: u64,
    limit: u64,
    live: u64,
}

impl HostMemory {
    /// Host memory of `limit_frames` 4 KiB frames. Frame 0 is reserved so that 0 can mean
    /// "no frame" in compact maps.
    pub fn new(limit_frames: u64) -> Self {
        HostMemory {
            frames: vec![Frame { live: true, ..Frame::default() }],
            tokens: vec![0],
            tables: Vec::new(),
            free_tables: Vec::new(),
            free_frames: Vec::new(),
            pools: Default::default(),
            pool_chunk: DEFAULT_POOL_CHUNK,
            limit: limit_frames.max(2),
            live: 0,
        }
    }

    /// Sets how many frames a table pool takes at a time (`memory.table_pool_frames`; 1 turns
    /// pools off). Call before the first table page is allocated.
    pub fn set_pool_chunk(&mut self, frames: u64) {
        self.pool_chunk = frames.max(1);
    }

    /// Allocates one zeroed table page for `pool`: from the frames freed back into the pool,
    /// else the next frame of its current chunk, else a new chunk of `pool_chunk` contiguous,
    /// aligned frames. So each kind of table lies in regions of its own, and two schemes that
    /// build the same shadow tables place them at the same offsets in those regions (the same
    /// cache sets), whatever else they allocate in between. With a chunk of 1 frame this is
    /// [`HostMemory::alloc_frame`].
    pub fn alloc_table_frame(&mut self, pool: TablePool) -> Result<Hfn, MemError> {
        if self.pool_chunk <= 1 {
            return self.alloc_frame();
        }
        let i = pool.index();
        let raw = match self.pools[i].free.pop() {
            Some(raw) => raw,
            None => {
                if self.pools[i].next == self.pools[i].end {
                    let chunk = self.pool_chunk;
                    let first = self.alloc_contiguous(chunk, chunk)?.as_u64();
                    // Reserved for the pool, not in use until handed out.
                    for f in &mut self.frames[u64_to_usize(first)..u64_to_usize(first + chunk)] {
                        f.live = false;
                    }
                    self.live -= chunk;
                    (self.pools[i].next, self.pools[i].end) = (first, first + chunk);
                }
                self.pools[i].next += 1;
                self.pools[i].next - 1
            }
        };
        let frame = &mut self.frames[u64_to_usize(raw)];
        frame.live = true;
        frame.pool = u8::try_from(i + 1).unwrap_or(0);
        self.live += 1;
        Ok(Hfn::new(raw))
    }

    /// Allocates one zeroed frame.
    pub fn alloc_frame(&mut self) -> Result<Hfn, MemError> {
        if let Some(raw) = self.free_frames.pop() {
            let hfn = Hfn::new(raw);
            self.frames[u64_to_usize(raw)].live = true;
            self.live += 1;
            return Ok(hfn);
        }
        self.alloc_contiguous(1, 1)
    }

    /// Allocates `count` zeroed, contiguous frames whose first frame number is a multiple of
    /// `align` (a 16 KiB x4 root needs 4 frames aligned to 4; a 2 MiB backing page 512 to 512).
    pub fn alloc_contiguous(&mut self, count: u64, align: u64) -> Result<Hfn, MemError> {
        let next = self.frames.len() as u64;
        let first = next.div_ceil(align.max(1)) * align.max(1);
        let end = first + count;
        if end > self.limit {
            return Err(MemError::HostExhausted { limit: self.limit, mib: self.limit >> 8 });
        }
        // Frames skipped for alignment go on the free list.
        for skipped in next..first {
            self.frames.push(Frame::default());
            self.free_frames.push(skipped);
        }
        for _ in first..end {
            self.frames.push(Frame { live: true, ..Frame::default() });
        }
        self.tokens.resize(self.frames.len(), 0);
        self.live += count;
        Ok(Hfn::new(first))
    }

    /// Returns a frame to the allocator, dropping its contents.
    pub fn free_frame(&mut self, hfn: Hfn) {
        let Some(frame) = self.frames.get_mut(u64_to_usize(hfn.as_u64())) else { return };
        if !frame.live || hfn.as_u64() == 0 {
            return;
        }
        if frame.table != 0 {
            self.free_tables.push(frame.table - 1);
        }
        let pool = frame.pool;
        *frame = Frame::default();
        self.tokens[u64_to_usize(hfn.as_u64())] = 0;
        match pool.checked_sub(1) {
            Some(p) => self.pools[usize::from(p)].free.push(hfn.as_u64()),
            None => self.free_frames.push(hfn.as_u64()),
        }
        self.live -= 1;
    }

    /// Clears a frame: token 0, every entry 0.
    pub fn zero_frame(&mut self, hfn: Hfn) {
        let Some(frame) = self.frames.get_mut(u64_to_usize(hfn.as_u64())) else { return };
        self.tokens[u64_to_usize(hfn.as_u64())] = 0;
        if frame.table != 0 {
            self.free_tables.push(frame.table - 1);
            frame.table = 0;
        }
    }

    /// Copies the contents (token and entries) of `src` to `dst`.
    pub fn copy_frame(&mut self, src: Hfn, dst: Hfn) {
        self.zero_frame(dst);
        let Some(&from) = self.frames.get(u64_to_usize(src.as_u64())) else { return };
        let token = self.token(src);
        self.set_token(dst, token);
        if from.table != 0 {
            // A copy, since giving `dst` storage may grow (move) the arena.
            let page = self.tables[(from.table - 1) as usize];
            if let Some(idx) = self.table_slot(dst) {
                self.tables[idx] = page;
            }
        }
    }

    /// The content token of a frame (0 if never written).
    #[inline]
    pub fn token(&self, hfn: Hfn) -> u64 {
        self.tokens.get(u64_to_usize(hfn.as_u64())).copied().unwrap_or(0)
    }

    /// Sets the content token of a frame.
    #[inline]
    pub fn set_token(&mut self, hfn: Hfn, token: u64) {
        if let Some(t) = self.tokens.get_mut(u64_to_usize(hfn.as_u64())) {
            *t = token;
        }
    }

    /// Reads the 8-byte entry at `hpa` (the address is rounded down to 8 bytes). A frame that
    /// never held entries reads as zero.
    #[inline]
    pub fn read_u64(&self, hpa: Hpa) -> u64 {
        let raw = hpa.as_u64();
        let Some(frame) = self.frames.get(u64_to_usize(raw >> PAGE_SHIFT)) else { return 0 };
        if frame.table == 0 {
            return 0;
        }
        self.tables[(frame.table - 1) as usize][entry_index(raw)]
    }

    /// Writes the 8-byte entry at `hpa`, giving the frame entry storage if it had none.
    #[inline]
    pub fn write_u64(&mut self, hpa: Hpa, value: u64) {
        let raw = hpa.as_u64();
        if let Some(idx) = self.table_slot(Hfn::new(raw >> PAGE_SHIFT)) {
            self.tables[idx][entry_index(raw)] = value;
        }
    }

    fn table_slot(&mut self, hfn: Hfn) -> Option<usize> {
        let frame = self.frames.get_mut(u64_to_usize(hfn.as_u64()))?;
        if frame.table == 0 {
            let idx = match self.free_tables.pop() {
                Some(i) => {
                    self.tables[i as usize].fill(0);
                    i
                }
                None => {
                    self.tables.push([0; ENTRIES_PER_PAGE]);
                    u32::try_from(self.tables.len() - 1).ok()?
                }
            };
            frame.table = idx + 1;
        }
        Some((frame.table - 1) as usize)
    }

    /// Frames currently allocated.
    pub fn frames_in_use(&self) -> u64 {
        self.live
    }

    /// Frames currently holding page-table entries.
    pub fn table_frames(&self) -> u64 {
        (self.tables.len() - self.free_tables.len()) as u64
    }

    /// The frame limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

#[inline]
fn entry_index(raw: u64) -> usize {
    u64_to_usize((raw >> 3) & (ENTRIES_PER_PAGE as u64 - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_untouched_frames_read_zero() {
        let mut mem = HostMemory::new(64);
        let f = mem.alloc_frame().unwrap();
        assert_eq!(mem.read_u64(f.addr()), 0);
        let slot = f.addr().checked_add(8 * 7).unwrap();
        mem.write_u64(slot, 0xdead_beef);
        assert_eq!(mem.read_u64(slot), 0xdead_beef);
        assert_eq!(mem.read_u64(f.addr()), 0);
        assert_eq!(mem.table_frames(), 1);
    }

    #[test]
    fn frame_zero_is_never_handed_out() {
        let mut mem = HostMemory::new(8);
        let frames: Vec<u64> = (0..7).map(|_| mem.alloc_frame().unwrap().as_u64()).collect();
        assert!(!frames.contains(&0));
        assert!(matches!(mem.alloc_frame(), Err(MemError::HostExhausted { .. })));
    }

    #[test]
    fn contiguous_allocations_are_aligned_and_skipped_frames_reused() {
        let mut mem = HostMemory::new(64);
        let root = mem.alloc_contiguous(4, 4).unwrap();
        assert_eq!(root.as_u64() % 4, 0);
        // Frames 1..4 were skipped for alignment and go to later single allocations.
        let reused = mem.alloc_frame().unwrap();
        assert!(reused.as_u64() < root.as_u64());
        assert_eq!(mem.frames_in_use(), 5);
    }

    #[test]
    fn each_pool_fills_an_aligned_chunk_of_its_own_in_order() {
        let mut mem = HostMemory::new(1 << 12);
        mem.set_pool_chunk(8);
        // Shadow, nested and general allocations interleaved, as ASP makes them.
        let mut shadow = Vec::new();
        let mut nested = Vec::new();
        for _ in 0..10 {
            shadow.push(mem.alloc_table_frame(TablePool::Shadow).unwrap().as_u64());
            nested.push(mem.alloc_table_frame(TablePool::Nested).unwrap().as_u64());
            mem.alloc_frame().unwrap();
        }
        // Within a chunk a pool's frames are consecutive; every chunk starts 8-aligned.
        for frames in [&shadow, &nested] {
            assert_eq!(frames[0] % 8, 0);
            assert_eq!(frames[1..8], (frames[0] + 1..frames[0] + 8).collect::<Vec<_>>()[..]);
            assert_eq!(frames[8] % 8, 0);
            assert_eq!(frames[9], frames[8] + 1);
        }
        // Only handed-out frames are in use: 10 + 10 + 10.
        assert_eq!(mem.frames_in_use(), 30);
    }

    #[test]
    fn a_freed_table_frame_goes_back_to_its_pool() {
        let mut mem = HostMemory::new(1 << 12);
        mem.set_pool_chunk(8);
        let a = mem.alloc_table_frame(TablePool::Shadow).unwrap();
        let b = mem.alloc_table_frame(TablePool::Shadow).unwrap();
        mem.free_frame(a);
        // A general allocation does not take it (nor the chunk's unused rest)...
        let general = mem.alloc_frame().unwrap();
        assert!(general.as_u64() / 8 != a.as_u64() / 8, "{general:?} in the shadow chunk");
        // ...nor another pool; the shadow pool reuses it first.
        let n = mem.alloc_table_frame(TablePool::Nested).unwrap();
        assert!(n.as_u64() / 8 != a.as_u64() / 8);
        assert_eq!(mem.alloc_table_frame(TablePool::Shadow).unwrap(), a);
        assert_eq!(mem.alloc_table_frame(TablePool::Shadow).unwrap().as_u64(), b.as_u64() + 1);
    }

    #[test]
    fn a_chunk_of_one_frame_is_the_general_allocator() {
        let mut pooled = HostMemory::new(64);
        pooled.set_pool_chunk(1);
        let mut plain = HostMemory::new(64);
        for i in 0..12 {
            let pool = if i % 2 == 0 { TablePool::Shadow } else { TablePool::Nested };
            assert_eq!(pooled.alloc_table_frame(pool).unwrap(), plain.alloc_frame().unwrap());
        }
    }

    #[test]
    fn freeing_releases_table_storage() {
        let mut mem = HostMemory::new(16);
        let f = mem.alloc_frame().unwrap();
        mem.write_u64(f.addr(), 1);
        mem.free_frame(f);
        assert_eq!(mem.table_frames(), 0);
        assert_eq!(mem.frames_in_use(), 0);
        let g = mem.alloc_frame().unwrap();
        assert_eq!(mem.read_u64(g.addr()), 0, "a reallocated frame starts zeroed");
    }

    #[test]
    fn copy_frame_copies_token_and_entries() {
        let mut mem = HostMemory::new(16);
        let (a, b) = (mem.alloc_frame().unwrap(), mem.alloc_frame().unwrap());
        mem.set_token(a, 42);
        mem.write_u64(a.addr().checked_add(16).unwrap(), 7);
        mem.copy_frame(a, b);
        assert_eq!(mem.token(b), 42);
        assert_eq!(mem.read_u64(b.addr().checked_add(16).unwrap()), 7);
    }
}
