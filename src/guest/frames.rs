//! The guest kernel's physical-frame allocator: a free list over guest memory with a reference
//! count per frame (copy-on-write sharing), deterministic for a given sequence of calls.

use crate::addr::{u64_to_usize, Gfn};
use crate::mem::MemError;

/// Frames of a 2 MiB block.
pub const BLOCK_FRAMES: u64 = 512;

/// Guest frames: free list, reference counts and the shared zero page.
#[derive(Debug, Clone)]
pub struct FrameAllocator {
    /// Frames never handed out yet start here (frame 0 is never used, as on most platforms).
    next: u64,
    limit: u64,
    /// Freed frames, reused last-freed first (as the buddy allocator's per-CPU lists do).
    free: Vec<u64>,
    /// Freed whole 2 MiB blocks (first frames), reused last-freed first.
    free_blocks: Vec<u64>,
    /// Mappings per frame; 0 = free.
    refs: Vec<u32>,
    in_use: u64,
    peak: u64,
}

impl FrameAllocator {
    /// An allocator over `frames` guest frames.
    pub fn new(frames: u64) -> Self {
        FrameAllocator {
            next: 1,
            limit: frames,
            free: Vec::new(),
            free_blocks: Vec::new(),
            refs: vec![0; u64_to_usize(frames)],
            in_use: 0,
            peak: 0,
        }
    }

    /// A fresh frame with one reference, or `GuestExhausted`.
    pub fn alloc(&mut self) -> Result<Gfn, MemError> {
        let frame = match self.free.pop() {
            Some(f) => f,
            None if self.next < self.limit => {
                self.next += 1;
                self.next - 1
            }
            None => {
                return Err(MemError::GuestExhausted { frames: self.limit, mib: self.limit >> 8 })
            }
        };
        self.refs[u64_to_usize(frame)] = 1;
        self.in_use += 1;
        self.peak = self.peak.max(self.in_use);
        Ok(Gfn::new(frame))
    }

    /// A 2 MiB-aligned block of [`BLOCK_FRAMES`] fresh frames, each with one reference (a
    /// transparent huge page), or `None` when no whole block is left: a freed block, else the
    /// next aligned block never handed out (the frames skipped to align it go on the free
    /// list). Freed single frames are never merged back into blocks (no compaction), so a
    /// fragmented guest falls back to 4 KiB pages, as Linux's `thp_fault_fallback` does.
    pub fn alloc_block(&mut self) -> Option<Gfn> {
        let first = match self.free_blocks.pop() {
            Some(f) => f,
            None => {
                let first = self.next.div_ceil(BLOCK_FRAMES) * BLOCK_FRAMES;
                if first + BLOCK_FRAMES > self.limit {
                    return None;
                }
                self.free.extend(self.next..first);
                self.next = first + BLOCK_FRAMES;
                first
            }
        };
        for r in &mut self.refs[u64_to_usize(first)..u64_to_usize(first + BLOCK_FRAMES)] {
            *r = 1;
        }
        self.in_use += BLOCK_FRAMES;
        self.peak = self.peak.max(self.in_use);
        Some(Gfn::new(first))
    }

    /// Drops one reference to each frame of the block at `first`. A block whose frames are all
    /// freed by it returns whole to the block list; otherwise each freed frame goes to the
    /// single-frame list.
    pub fn release_block(&mut self, first: Gfn) {
        let first = first.as_u64();
        let range = u64_to_usize(first)..u64_to_usize(first + BLOCK_FRAMES);
        let Some(refs) = self.refs.get_mut(range) else { return };
        if refs.iter().all(|&r| r == 1) {
            refs.fill(0);
            self.free_blocks.push(first);
            self.in_use -= BLOCK_FRAMES;
            return;
        }
        for k in 0..BLOCK_FRAMES {
            self.release(Gfn::new(first + k));
        }
    }

    /// One more mapping of `gfn` (a copy-on-write share).
    pub fn share(&mut self, gfn: Gfn) {
        if let Some(r) = self.refs.get_mut(u64_to_usize(gfn.as_u64())) {
            *r = r.saturating_add(1);
        }
    }

    /// Drops one reference; the frame is freed when none remain. Returns whether it was freed.
    pub fn release(&mut self, gfn: Gfn) -> bool {
        let Some(r) = self.refs.get_mut(u64_to_usize(gfn.as_u64())) else { return false };
        if *r == 0 {
            return false;
        }
        *r -= 1;
        if *r == 0 {
            self.free.push(gfn.as_u64());
            self.in_use -= 1;
            return true;
        }
        false
    }

    /// References to `gfn`.
    pub fn refs(&self, gfn: Gfn) -> u32 {
        self.refs.get(u64_to_usize(gfn.as_u64())).copied().unwrap_or(0)
    }

    /// Frames in use.
    pub fn in_use(&self) -> u64 {
        self.in_use
    }

    /// Most frames in use at once.
    pub fn peak(&self) -> u64 {
        self.peak
    }

    /// Frames in guest memory.
    pub fn total(&self) -> u64 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_reused_and_exhaustion_is_an_error() {
        let mut f = FrameAllocator::new(3);
        let a = f.alloc().unwrap();
        let b = f.alloc().unwrap();
        assert_eq!((a.as_u64(), b.as_u64()), (1, 2));
        assert!(matches!(f.alloc(), Err(MemError::GuestExhausted { frames: 3, .. })));
        assert!(f.release(a));
        assert_eq!(f.alloc().unwrap(), a);
        assert_eq!(f.peak(), 2);
    }

    #[test]
    fn blocks_are_aligned_reused_whole_and_fall_back_when_none_is_left() {
        let mut f = FrameAllocator::new(3 * BLOCK_FRAMES);
        let single = f.alloc().unwrap();
        let a = f.alloc_block().unwrap();
        assert_eq!(a.as_u64(), BLOCK_FRAMES, "aligned past frame 1");
        assert_eq!(f.in_use(), 1 + BLOCK_FRAMES);
        // Frames 2..512 skipped for alignment are handed out singly.
        assert_eq!(f.alloc().unwrap().as_u64(), BLOCK_FRAMES - 1);
        let b = f.alloc_block().unwrap();
        assert_eq!(b.as_u64(), 2 * BLOCK_FRAMES);
        assert_eq!(f.alloc_block(), None, "no whole block left");
        f.release_block(a);
        assert_eq!(f.alloc_block(), Some(a), "a block freed whole is reused whole");
        // A block one of whose frames is still shared frees the others singly.
        f.share(Gfn::new(b.as_u64() + 7));
        f.release_block(b);
        assert_eq!(f.refs(Gfn::new(b.as_u64() + 7)), 1);
        assert_eq!(f.alloc_block(), None);
        assert!(f.release(single));
    }

    #[test]
    fn a_shared_frame_is_freed_by_its_last_release() {
        let mut f = FrameAllocator::new(4);
        let a = f.alloc().unwrap();
        f.share(a);
        assert_eq!(f.refs(a), 2);
        assert!(!f.release(a));
        assert!(f.release(a));
        assert!(!f.release(a), "a free frame cannot be released again");
        assert_eq!(f.in_use(), 0);
    }
}
