//! The hypervisor's map from guest physical frames to the host frames that back them (KVM's
//! memslots). Guest memory is backed on first touch in 2 MiB host-contiguous, 2 MiB-aligned
//! chunks, as a hypervisor backing guests with transparent huge pages does, so guest superpages
//! up to 2 MiB are host-contiguous and a nested table may map them with 2 MiB pages. With 1 GiB
//! host pages ([`HostPage::Size1G`], hugetlbfs-backed guest memory) each 1 GiB-aligned gigabyte
//! of guest memory that lies wholly inside it is backed at once, host-contiguous and 1 GiB
//! aligned; a tail smaller than 1 GiB keeps 2 MiB chunks.

use serde::{Deserialize, Serialize};

use super::host::{HostMemory, MemError};
use crate::addr::{u64_to_usize, Gfn, Hfn, PageSize};

/// The page size with which the hypervisor maps guest memory in its own tables
/// (`scheme.host_page`): the size of nested (G-stage, EPT) leaves, and the largest shadow
/// entry a shadow scheme may build, however large the guest's page (splintering).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum HostPage {
    /// 4 KiB (the default: the published nested-paging baselines map 4 KiB nested pages).
    #[default]
    #[serde(rename = "4k")]
    Size4K,
    /// 2 MiB (host transparent huge pages).
    #[serde(rename = "2m")]
    Size2M,
    /// 1 GiB (hugetlbfs gigantic pages).
    #[serde(rename = "1g")]
    Size1G,
}

impl HostPage {
    /// The page size.
    pub const fn size(self) -> PageSize {
        match self {
            HostPage::Size4K => PageSize::Size4K,
            HostPage::Size2M => PageSize::Size2M,
            HostPage::Size1G => PageSize::Size1G,
        }
    }

    /// The largest page of at most this size whose `size`-aligned range around `gfn` lies
    /// wholly inside a guest memory of `frames` frames (a 1 GiB host page cannot map the tail of
    /// a 1.5 GiB guest).
    pub fn fitting(self, gfn: Gfn, frames: u64) -> PageSize {
        let mut size = self.size();
        while size > PageSize::Size4K {
            let step = size.bytes() / PageSize::Size4K.bytes();
            if (gfn.as_u64() / step + 1) * step <= frames {
                break;
            }
            size = PageSize::at_level(size.level().down().unwrap_or(size.level()));
        }
        size
    }
}

/// Frames per backing chunk (2 MiB).
pub const CHUNK_FRAMES: u64 = 512;
/// The page size of a backing chunk.
pub const CHUNK_SIZE: PageSize = PageSize::Size2M;

/// Guest physical memory: `frames` guest frames, backed chunk by chunk on demand.
#[derive(Debug)]
pub struct GuestBacking {
    frames: u64,
    /// The page size with which the hypervisor maps guest memory (`scheme.host_page`, set by
    /// the schemes that take it; 2 MiB, the backing chunk, otherwise).
    host_page: HostPage,
    /// First host frame of each chunk, 0 when the chunk is not backed yet.
    chunks: Vec<u64>,
    backed_chunks: u64,
}

impl GuestBacking {
    /// A guest of `frames` 4 KiB frames, none backed yet.
    pub fn new(frames: u64) -> Self {
        let chunks = frames.div_ceil(CHUNK_FRAMES);
        GuestBacking {
            frames,
            host_page: HostPage::Size2M,
            chunks: vec![0; u64_to_usize(chunks)],
            backed_chunks: 0,
        }
    }

    /// Backs each 1 GiB-aligned gigabyte wholly inside guest memory in one host-contiguous,
    /// 1 GiB-aligned piece from now on (`host_page = 1g`); other sizes keep 2 MiB chunks.
    pub fn set_host_page(&mut self, page: HostPage) {
        self.host_page = page;
    }

    /// The largest host page that maps `gfn`: the host page size, or a smaller one where its
    /// aligned range would leave guest memory.
    #[inline]
    pub fn host_page_at(&self, gfn: Gfn) -> PageSize {
        self.host_page.fitting(gfn, self.frames)
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
        let chunk = gfn.as_u64() / CHUNK_FRAMES;
        let span = match self.host_page {
            HostPage::Size1G => PageSize::Size1G.bytes() / CHUNK_SIZE.bytes(),
            HostPage::Size4K | HostPage::Size2M => 1,
        };
        let first = chunk / span * span;
        let whole = (first + span) * CHUNK_FRAMES <= self.frames;
        let (first, count) = if span > 1 && whole { (first, span) } else { (chunk, 1) };
        let frames = count * CHUNK_FRAMES;
        let base = host.alloc_contiguous(frames, frames)?.as_u64();
        for k in 0..count {
            let slot = &mut self.chunks[u64_to_usize(first + k)];
            // A chunk of the span already backed keeps its frames (cannot happen: spans are
            // backed whole), so that no guest frame ever moves.
            if *slot == 0 {
                *slot = base + k * CHUNK_FRAMES;
                self.backed_chunks += 1;
            }
        }
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
    fn gigabyte_host_pages_back_whole_aligned_gigabytes_and_chunks_in_the_tail() {
        let mut host = HostMemory::new(4 << 18);
        // 1.5 GiB of guest: one whole gigabyte and a 512 MiB tail.
        let mut guest = GuestBacking::new(3 << 17);
        guest.set_host_page(HostPage::Size1G);
        let hfn = guest.back(Gfn::new(5), &mut host).unwrap().unwrap();
        assert_eq!((hfn.as_u64() - 5) % (1 << 18), 0, "the gigabyte is 1 GiB aligned");
        assert_eq!(guest.backed(), 1 << 18);
        assert_eq!(
            guest.lookup(Gfn::new((1 << 18) - 1)),
            Some(Hfn::new(hfn.as_u64() - 5 + (1 << 18) - 1))
        );
        guest.back(Gfn::new(1 << 18), &mut host).unwrap().unwrap();
        assert_eq!(guest.backed(), (1 << 18) + CHUNK_FRAMES, "the tail is backed by 2 MiB chunks");
    }

    #[test]
    fn a_host_page_fits_only_where_its_aligned_range_is_guest_memory() {
        let frames = 3 << 17;
        assert_eq!(HostPage::Size1G.fitting(Gfn::new(7), frames), PageSize::Size1G);
        assert_eq!(HostPage::Size1G.fitting(Gfn::new(1 << 18), frames), PageSize::Size2M);
        assert_eq!(HostPage::Size2M.fitting(Gfn::new(frames - 1), frames), PageSize::Size2M);
        assert_eq!(HostPage::Size2M.fitting(Gfn::new(frames - 1), frames - 1), PageSize::Size4K);
        assert_eq!(HostPage::Size4K.fitting(Gfn::new(0), frames), PageSize::Size4K);
    }

    #[test]
    fn frames_outside_guest_memory_are_not_backed() {
        let mut host = HostMemory::new(1 << 20);
        let mut guest = GuestBacking::new(16);
        assert_eq!(guest.back(Gfn::new(16), &mut host).unwrap(), None);
        assert_eq!(host.frames_in_use(), 0);
    }
}
