//! The hypervisor's map from guest physical frames to the host frames that back them (KVM's
//! memslots). Guest memory is backed on first touch in 2 MiB host-contiguous, 2 MiB-aligned
//! chunks, as a hypervisor backing guests with transparent huge pages does, so guest superpages
//! up to 2 MiB are host-contiguous and a nested table may map them with 2 MiB pages.

use super::host::{HostMemory, MemError};
use crate::addr::{u64_to_usize, Gfn, Hfn, PageSize};

/// Frames per backing chunk (2 MiB).
pub const CHUNK_FRAMES: u64 = 512;
/// The page size of a backing chunk.
pub const CHUNK_SIZE: PageSize = PageSize::Size2M;

/// Guest physical memory: `frames` guest frames, backed chunk by chunk on demand.
#[derive(Debug)]
pub struct GuestBacking {
    frames: u64,
    /// First host frame of each chunk, 0 when the chunk is not backed yet.
    chunks: Vec<u64>,
    backed_chunks: u64,
}

impl GuestBacking {
    /// A guest of `frames` 4 KiB frames, none backed yet.
    pub fn new(frames: u64) -> Self {
        let chunks = frames.div_ceil(CHUNK_FRAMES);
        GuestBacking { frames, chunks: vec![0; u64_to_usize(chunks)], backed_chunks: 0 }
    }

    /// Guest frames.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Whether `gfn` is inside guest memory.
    #[inline]
    pub fn contains(&self, gfn: Gfn) -> bool {
        gfn.as_u64() < self.frames
    }

    /// The host frame backing `gfn`, if its chunk has been backed.
    #[inline]
    pub fn lookup(&self, gfn: Gfn) -> Option<Hfn> {
        if !self.contains(gfn) {
            return None;
        }
        let raw = gfn.as_u64();
        match *self.chunks.get(u64_to_usize(raw / CHUNK_FRAMES))? {
            0 => None,
            base => Some(Hfn::new(base + raw % CHUNK_FRAMES)),
        }
    }

    /// The host frame backing `gfn`, backing its chunk first if needed. `None` if `gfn` lies
    /// outside guest memory.
    pub fn back(&mut self, gfn: Gfn, host: &mut HostMemory) -> Result<Option<Hfn>, MemError> {
        if let Some(hfn) = self.lookup(gfn) {
            return Ok(Some(hfn));
        }
        if !self.contains(gfn) {
            return Ok(None);
        }
        let base = host.alloc_contiguous(CHUNK_FRAMES, CHUNK_FRAMES)?;
        self.chunks[u64_to_usize(gfn.as_u64() / CHUNK_FRAMES)] = base.as_u64();
        self.backed_chunks += 1;
        Ok(self.lookup(gfn))
    }

    /// Guest frames backed so far (whole chunks).
    pub fn backed(&self) -> u64 {
        self.backed_chunks * CHUNK_FRAMES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_backed_once_contiguously_and_aligned() {
        let mut host = HostMemory::new(1 << 20);
        let mut guest = GuestBacking::new(4096);
        let gfn = Gfn::new(1000);
        assert_eq!(guest.lookup(gfn), None);
        let hfn = guest.back(gfn, &mut host).unwrap().unwrap();
        assert_eq!(guest.back(gfn, &mut host).unwrap(), Some(hfn));
        // The neighbour in the same 2 MiB chunk is backed by the neighbouring host frame.
        assert_eq!(guest.lookup(Gfn::new(1001)), Hfn::new(hfn.as_u64() + 1).into());
        assert_eq!(
            (hfn.as_u64() - 1000 % CHUNK_FRAMES) % CHUNK_FRAMES,
            0,
            "chunk base is 2 MiB aligned"
        );
        assert_eq!(guest.backed(), CHUNK_FRAMES);
        assert_eq!(guest.lookup(Gfn::new(0)), None, "another chunk stays unbacked");
    }

    #[test]
    fn frames_outside_guest_memory_are_not_backed() {
        let mut host = HostMemory::new(1 << 20);
        let mut guest = GuestBacking::new(16);
        assert_eq!(guest.back(Gfn::new(16), &mut host).unwrap(), None);
        assert_eq!(host.frames_in_use(), 0);
    }
}
