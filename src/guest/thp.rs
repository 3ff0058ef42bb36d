//! Transparent huge pages (`kernel.thp`), as Linux's `mm/huge_memory.c` handles anonymous
//! memory:
//!
//! - a first touch of a VMA whose whole aligned 2 MiB around the address is inside it, and whose
//!   level-1 entry is still empty (`pmd_none`), maps a 2 MiB page (`do_huge_pmd_anonymous_page`);
//!   a first read maps the huge zero page read-only instead (`use_zero_page`, Linux's default);
//!   with no whole 2 MiB block of guest frames left it falls back to 4 KiB
//!   (`thp_fault_fallback`);
//! - a store to a write-protected huge page reuses it in place when nothing else maps it, and
//!   otherwise splits it and copies at 4 KiB (`do_huge_pmd_wp_page` since Linux 5.8); a store
//!   to the huge zero page splits it into entries for the small zero page first;
//! - `munmap`, `mprotect` and page migration that cover part of a huge page split it first
//!   (`__split_huge_pmd`): a table of 512 small entries with the same frames and attributes
//!   replaces the 2 MiB entry, which is then flushed at its address (`flush_pmd_tlb_range`).
//!
//! Not modelled: `khugepaged` (collapsing small pages back into huge ones) and compaction (a
//! freed block whose frames were freed one by one never becomes a block again).

use crate::addr::{Gfn, Gpa, GuestPhys, GuestVirt, Gva, Level, PageSize};
use crate::machine::Scheme;
use crate::paging::format::PTE_BYTES;
use crate::paging::mapper;
use crate::paging::walk::PageTable;
use crate::paging::{Access, AccessKind, Decoded, LeafAttrs, Perms};
use crate::stats::Charge;

use super::config::Thp;
use super::frames::BLOCK_FRAMES;
use super::os::{internal, FaultResolution, Os, OsError};
use super::process::{Pid, Vma};
use super::smp::MmFlush;

/// The size of a transparent huge page.
pub const HUGE: PageSize = PageSize::Size2M;

/// What the kernel counted about huge pages (Linux's `/proc/vmstat` names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThpStats {
    /// Huge pages allocated at a fault (`thp_fault_alloc`).
    pub fault_alloc: u64,
    /// Faults that could have mapped a huge page but found no free 2 MiB block
    /// (`thp_fault_fallback`).
    pub fault_fallback: u64,
    /// Huge mappings split into small ones (`thp_split_pmd`).
    pub split_pmd: u64,
}

impl<S: Scheme> Os<S> {
    /// Whether a fault at `page` in `vma` may map a huge page: THP is on for the VMA and the
    /// aligned 2 MiB around `page` lies inside it.
    fn thp_eligible(&self, vma: &Vma, page: Gva) -> bool {
        let enabled = match self.cfg.thp {
            Thp::Never => false,
            Thp::Always => true,
            Thp::Madvise => vma.huge,
        };
        let start = page.align_down(HUGE);
        enabled && start >= vma.start && start.wrapping_add(HUGE.bytes()) <= vma.end
    }

    /// A first touch of `page` served with a huge page where THP allows one; `false` when the
    /// caller must map a small page.
    pub(super) fn huge_fill(
        &mut self,
        root: &PageTable<GuestVirt, GuestPhys>,
        page: Gva,
        vma: Vma,
        access: Access,
    ) -> Result<bool, OsError> {
        let base = page.align_down(HUGE);
        if !self.thp_eligible(&vma, page) || !self.level1_empty(root, base) {
            return Ok(false);
        }
        let user = vma.perms | Perms::U;
        let read = access.kind != AccessKind::Store;
        let zero = if read && self.cfg.zero_page && !vma.perms.contains(Perms::X) {
            self.huge_zero_block()?
        } else {
            None
        };
        let (block, attrs, resolution) = match zero {
            Some(zero) => {
                let ro = LeafAttrs {
                    perms: user - Perms::W,
                    global: false,
                    accessed: true,
                    dirty: false,
                };
                (zero, ro, FaultResolution::HugeZeroPage)
            }
            None => {
                let Some(block) = self.alloc_zeroed_block()? else {
                    self.thp.fault_fallback += 1;
                    return Ok(false);
                };
                self.thp.fault_alloc += 1;
                let attrs = LeafAttrs { perms: user, global: false, accessed: true, dirty: !read };
                (block, attrs, FaultResolution::HugeDemandZero)
            }
        };
        self.map_with(root, base, block.addr(), HUGE, attrs)?.ignore();
        self.stats.leaf_pte_writes += 1;
        self.count(resolution);
        self.flush_all(self.policy.after_fill(base))?;
        Ok(true)
    }

    /// Whether `va`'s level-1 entry is empty (Linux's `pmd_none`): no small page and no huge
    /// page maps anything in its 2 MiB.
    fn level1_empty(&mut self, root: &PageTable<GuestVirt, GuestPhys>, va: Gva) -> bool {
        let mut store = self.machine.guest_tables(super::os::no_table_allocation);
        mapper::entry_is_empty(root, &mut store, va, Level::L1)
    }

    /// A 2 MiB block of zeroed frames (`clear_huge_page`: 512 page clears, which the scheme
    /// sees), or `None` when no whole block is free.
    fn alloc_zeroed_block(&mut self) -> Result<Option<Gfn>, OsError> {
        let Some(block) = self.frames.alloc_block() else { return Ok(None) };
        for k in 0..BLOCK_FRAMES {
            let gfn = Gfn::new(block.as_u64() + k);
            let p = &mut self.machine.platform;
            if let Some(hfn) = p.back(gfn)? {
                p.host.zero_frame(hfn);
            }
            p.stats.cycles.guest_kernel.charge(p.costs.page_zero);
            self.machine.scheme.guest_frame_written(&mut self.machine.platform, gfn)?;
        }
        Ok(Some(block))
    }

    /// The huge zero page, allocated at its first use and kept for good
    /// (`mm_get_huge_zero_page`); `None` when no block is free for it.
    fn huge_zero_block(&mut self) -> Result<Option<Gfn>, OsError> {
        if self.huge_zero.is_none() {
            self.huge_zero = self.alloc_zeroed_block()?;
        }
        Ok(self.huge_zero)
    }

    /// Whether `gfn` is a frame of the huge zero page.
    pub(super) fn in_huge_zero(&self, gfn: Gfn) -> bool {
        self.huge_zero
            .is_some_and(|z| (z.as_u64()..z.as_u64() + BLOCK_FRAMES).contains(&gfn.as_u64()))
    }

    /// A store to the write-protected huge page at `base` (a huge leaf for `page`): reused in
    /// place when nothing else maps its frames, otherwise split so that the store faults again
    /// and copies one small page.
    pub(super) fn huge_write_fault(
        &mut self,
        pid: Pid,
        root: &PageTable<GuestVirt, GuestPhys>,
        page: Gva,
        base: Gfn,
        vma: Vma,
    ) -> Result<(), OsError> {
        let head = page.align_down(HUGE);
        let exclusive = !self.in_huge_zero(base)
            && (0..BLOCK_FRAMES).all(|k| self.frames.refs(Gfn::new(base.as_u64() + k)) == 1);
        if exclusive {
            let fmt = self.format;
            let attrs = LeafAttrs {
                perms: vma.perms | Perms::U,
                global: false,
                accessed: true,
                dirty: true,
            };
            self.update_leaf(root, head, |_| {
                fmt.encode_leaf(base.addr().as_u64(), Level::L1, attrs)
            })?;
            self.count(FaultResolution::CowReuse);
            return self.flush_all(self.policy.after_upgrade(head));
        }
        self.split_huge(pid, root, head)?;
        self.count(FaultResolution::HugeSplit);
        Ok(())
    }

    /// Splits the huge leaf mapping `va` into a new table of 512 small leaves with its frames
    /// (the small zero page for the huge zero page) and attributes, stores the table in its
    /// place and flushes the huge page's address.
    pub(super) fn split_huge(
        &mut self,
        pid: Pid,
        root: &PageTable<GuestVirt, GuestPhys>,
        va: Gva,
    ) -> Result<(), OsError> {
        let head = va.align_down(HUGE);
        let fmt = self.format;
        let slot = self.find_leaf(root, head);
        let Some((slot, Ok(Decoded::Leaf { base, attrs }))) =
            slot.map(|s| (s, fmt.decode(s.raw, s.level)))
        else {
            return Err(internal(format!("split of {va}, which no huge page maps")));
        };
        if slot.level != Level::L1 {
            return Err(internal(format!("split of a {} page at {va}", slot.level.index())));
        }
        let zero = self.in_huge_zero(Gpa::new(base).page());
        let table = self.alloc_zeroed()?;
        for k in 0..BLOCK_FRAMES {
            let frame = if zero {
                self.zero_frame.addr().as_u64()
            } else {
                base + k * PageSize::Size4K.bytes()
            };
            let entry = table.addr().wrapping_add(k * PTE_BYTES);
            self.store_entry(entry, fmt.encode_leaf(frame, Level::L0, attrs))?;
            self.stats.leaf_pte_writes += 1;
        }
        self.store_entry(slot.entry, fmt.encode_table(table.addr().as_u64()))?;
        self.thp.split_pmd += 1;
        self.flush_mm(pid, MmFlush::Pages(vec![head]))
    }

    /// Drops the mapping of the huge page whose first frame is `base`: its frames' references
    /// (none for the huge zero page).
    pub(super) fn release_huge(&mut self, base: Gfn) {
        if !self.in_huge_zero(base) {
            self.frames.release_block(base);
        }
    }

    /// One more mapping of each frame of the huge page at `base` (a fork's copy-on-write share).
    pub(super) fn share_huge(&mut self, base: Gfn) {
        if !self.in_huge_zero(base) {
            for k in 0..BLOCK_FRAMES {
                self.frames.share(Gfn::new(base.as_u64() + k));
            }
        }
    }

    /// `madvise(va, pages * 4096, MADV_HUGEPAGE)`: marks the range for huge pages (what is
    /// mapped already stays as it is: collapsing is `khugepaged`'s, not modelled).
    pub fn madvise_hugepage(&mut self, pid: Pid, va: Gva, pages: u64) -> Result<(), OsError> {
        self.syscall()?;
        let end = va.wrapping_add(pages * PageSize::Size4K.bytes());
        let mm = self.mm_mut(pid)?;
        for vma in mm.carve(va, end) {
            mm.insert(Vma { huge: true, ..vma });
        }
        Ok(())
    }
}

impl<S: Scheme> Os<S> {
    /// `mmap` of a program's data region, followed under `kernel.thp = madvise` by
    /// `madvise(MADV_HUGEPAGE)` on it, as a THP-aware allocator does (jemalloc reads the THP
    /// mode at start-up for its `opt.thp`); under the other modes the `madvise` would change
    /// nothing, so the program skips it.
    pub fn mmap_data(&mut self, pid: Pid, pages: u64, perms: Perms) -> Result<Gva, OsError> {
        let start = self.mmap(pid, pages, perms)?;
        if self.cfg.thp == Thp::Madvise {
            self.madvise_hugepage(pid, start, pages)?;
        }
        Ok(start)
    }
}
