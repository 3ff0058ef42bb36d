//! The guest kernel's physical-frame allocator: a free list over guest memory with a reference
//! count per frame (copy-on-write sharing), deterministic for a given sequence of calls.

use crate::addr::{u64_to_usize, Gfn};
use crate::mem::MemError;

/// Guest frames: free list, reference counts and the shared zero page.
#[derive(Debug, Clone)]
pub struct FrameAllocator {
    /// Frames never handed out yet start here (frame 0 is never used, as on most platforms).
    next: u64,
    limit: u64,
    /// Freed frames, reused last-freed first (as the buddy allocator's per-CPU lists do).
    free: Vec<u64>,
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
