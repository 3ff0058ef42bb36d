//! Processes and their address spaces: a page-table root, VMAs, the heap break and the mmap
//! area, laid out as Linux lays out a 64-bit process.

use std::collections::BTreeMap;

use crate::addr::{Asid, GuestPhys, GuestVirt, Gva, PageSize};
use crate::paging::walk::PageTable;
use crate::paging::{Format, Perms};

/// A process id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(pub u32);

impl std::fmt::Display for Pid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {}", self.0)
    }
}

/// A virtual memory area: anonymous, private memory with fixed permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vma {
    /// First address.
    pub start: Gva,
    /// One past the last address.
    pub end: Gva,
    /// What user accesses may do (`R`, `W`, `X`; `U` is implied).
    pub perms: Perms,
    /// Marked with `madvise(MADV_HUGEPAGE)` (Linux's `VM_HUGEPAGE`).
    pub huge: bool,
}

impl Vma {
    /// An area with `perms`, not marked for huge pages.
    pub const fn new(start: Gva, end: Gva, perms: Perms) -> Self {
        Vma { start, end, perms, huge: false }
    }
}

/// Where a 64-bit Linux process keeps things, scaled to the format's user half.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Program text (`0x40_0000`, the x86-64 non-PIE default).
    pub text: Gva,
    /// Start of the heap (`brk`), past text and data.
    pub heap: Gva,
    /// The mmap area grows down from here.
    pub mmap_top: Gva,
    /// Bottom of the stack VMA.
    pub stack_bottom: Gva,
    /// One past the top of the user half.
    pub user_top: Gva,
    /// The kernel's direct map of guest physical memory (bottom of the kernel half).
    pub direct_map: Gva,
}

/// Text pages every process starts with.
pub const TEXT_PAGES: u64 = 16;
/// Stack size (Linux's default `ulimit -s`: 8 MiB).
pub const STACK_BYTES: u64 = 8 << 20;

impl Layout {
    /// The layout for a first-stage format.
    pub fn for_format(format: &Format) -> Self {
        let half = 1u64 << (format.input_bits() - 1);
        let user_top = Gva::new(half);
        let stack_bottom = Gva::new(half - STACK_BYTES);
        Layout {
            text: Gva::new(0x40_0000),
            heap: Gva::new(0x100_0000),
            // A 1 GiB gap below the stack, as Linux leaves room for stack growth.
            mmap_top: Gva::new(half - (1 << 30)),
            stack_bottom,
            user_top,
            // Sign-extended lowest kernel address.
            direct_map: Gva::new(!(half - 1)),
        }
    }
}

/// An address space (Linux `mm_struct`).
#[derive(Clone, Debug)]
pub struct Mm {
    /// A unique id (for ASID ownership).
    pub id: u64,
    /// The root table in guest memory.
    pub root: PageTable<GuestVirt, GuestPhys>,
    /// The ASID it last ran with.
    pub asid: Option<Asid>,
    /// VMAs by start address.
    pub vmas: BTreeMap<u64, Vma>,
    /// Current heap break.
    pub brk: Gva,
    /// Threads using it (a process and the threads it cloned).
    pub users: u32,
    /// CPUs that have run it since it was created (RISC-V's `mm_cpumask`, never cleared: an
    /// ASID-tagged TLB may hold its entries after the CPU switched away), one bit per CPU.
    pub cpus: u64,
    /// Flushes of it so far (x86's `tlb_gen`): a CPU whose PCID for it was flushed up to an
    /// older generation flushes that PCID when it switches back.
    pub tlb_gen: u64,
}

impl Mm {
    /// The VMA containing `va`.
    pub fn find_vma(&self, va: Gva) -> Option<&Vma> {
        let (_, vma) = self.vmas.range(..=va.as_u64()).next_back()?;
        (va < vma.end).then_some(vma)
    }

    /// Whether `[start, end)` overlaps any VMA.
    pub fn overlaps(&self, start: Gva, end: Gva) -> bool {
        self.vmas.range(..end.as_u64()).next_back().is_some_and(|(_, v)| v.end > start)
    }

    /// Inserts a VMA (the caller checked for overlap).
    pub fn insert(&mut self, vma: Vma) {
        self.vmas.insert(vma.start.as_u64(), vma);
    }

    /// Removes `[start, end)` from the VMAs, splitting those that straddle it; returns the parts
    /// removed.
    pub fn carve(&mut self, start: Gva, end: Gva) -> Vec<Vma> {
        let hit: Vec<Vma> = self
            .vmas
            .range(..end.as_u64())
            .filter(|(_, v)| v.end > start)
            .map(|(_, v)| *v)
            .collect();
        let mut removed = Vec::with_capacity(hit.len());
        for v in hit {
            self.vmas.remove(&v.start.as_u64());
            if v.start < start {
                self.insert(Vma { end: start, ..v });
            }
            if v.end > end {
                self.insert(Vma { start: end, ..v });
            }
            removed.push(Vma { start: v.start.max(start), end: v.end.min(end), ..v });
        }
        removed
    }

    /// The highest `align`-aligned start of a gap of `len` bytes that ends at or below `top`
    /// and starts at or above `bottom` (Linux's top-down `vm_unmapped_area`).
    pub fn find_gap(&self, len: u64, align: u64, bottom: Gva, top: Gva) -> Option<Gva> {
        let align = align.max(1);
        let fit = |floor: u64, end: u64| {
            end.checked_sub(len).map(|s| s / align * align).filter(|&s| s >= floor)
        };
        let mut end = top.as_u64();
        for v in self.vmas.range(..top.as_u64()).rev().map(|(_, v)| v) {
            if v.end.as_u64() <= end {
                if let Some(start) = fit(v.end.as_u64(), end) {
                    return (start >= bottom.as_u64()).then(|| Gva::new(start));
                }
            }
            end = end.min(v.start.as_u64());
        }
        let start = fit(0, end)?;
        (start >= bottom.as_u64()).then(|| Gva::new(start))
    }

    /// Pages covered by VMAs.
    pub fn mapped_pages(&self) -> u64 {
        let page = PageSize::Size4K.bytes();
        self.vmas.values().map(|v| v.end.offset_from(v.start).unwrap_or(0) / page).sum()
    }
}

/// A process, or a thread of one: a task with its own kernel stack.
#[derive(Clone, Debug)]
pub struct Process {
    /// Its id.
    pub pid: Pid,
    /// Its address space's id, shared by the threads of one process.
    pub mm: u64,
    /// Its kernel stack, in the direct map.
    pub kernel_stack: Gva,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Gpa;

    fn mm() -> Mm {
        Mm {
            id: 1,
            root: PageTable::new(Gpa::ZERO, Format::SV39),
            asid: None,
            vmas: BTreeMap::new(),
            brk: Gva::ZERO,
            users: 1,
            cpus: 0,
            tlb_gen: 0,
        }
    }

    fn vma(start: u64, end: u64) -> Vma {
        Vma::new(Gva::new(start), Gva::new(end), Perms::R | Perms::W)
    }

    #[test]
    fn find_vma_respects_both_ends() {
        let mut m = mm();
        m.insert(vma(0x1000, 0x3000));
        assert!(m.find_vma(Gva::new(0xfff)).is_none());
        assert!(m.find_vma(Gva::new(0x1000)).is_some());
        assert!(m.find_vma(Gva::new(0x2fff)).is_some());
        assert!(m.find_vma(Gva::new(0x3000)).is_none());
        assert!(m.overlaps(Gva::new(0x2000), Gva::new(0x5000)));
        assert!(!m.overlaps(Gva::new(0x3000), Gva::new(0x5000)));
    }

    #[test]
    fn carving_the_middle_splits_a_vma_in_two() {
        let mut m = mm();
        m.insert(vma(0x1000, 0x5000));
        let removed = m.carve(Gva::new(0x2000), Gva::new(0x3000));
        assert_eq!(removed, [vma(0x2000, 0x3000)]);
        let left: Vec<_> = m.vmas.values().copied().collect();
        assert_eq!(left, [vma(0x1000, 0x2000), vma(0x3000, 0x5000)]);
        assert_eq!(m.mapped_pages(), 3);
    }

    #[test]
    fn gaps_are_found_top_down_and_reused() {
        let mut m = mm();
        let (bottom, top) = (Gva::new(0x1_0000), Gva::new(0x10_0000));
        let a = m.find_gap(0x4000, 0x1000, bottom, top).unwrap();
        assert_eq!(a, Gva::new(0xf_c000));
        m.insert(vma(0xf_c000, 0x10_0000));
        m.insert(vma(0xe_0000, 0xf_a000));
        // The 0x2000 hole between them is too small for 0x4000 but fits 0x2000.
        assert_eq!(m.find_gap(0x2000, 0x1000, bottom, top), Some(Gva::new(0xf_a000)));
        assert_eq!(m.find_gap(0x4000, 0x1000, bottom, top), Some(Gva::new(0xd_c000)));
        assert_eq!(m.find_gap(0x10_0000, 0x1000, bottom, top), None);
        // Aligned to 64 KiB: the top gap below 0xe_0000 that holds 0x4000 at a 0x1_0000 start.
        assert_eq!(m.find_gap(0x4000, 0x1_0000, bottom, top), Some(Gva::new(0xd_0000)));
    }

    #[test]
    fn layouts_fit_the_user_half() {
        let l = Layout::for_format(&Format::SV39);
        assert_eq!(l.user_top, Gva::new(1 << 38));
        assert_eq!(l.direct_map, Gva::new(0xffff_ffc0_0000_0000));
        assert!(l.heap < l.mmap_top && l.mmap_top < l.stack_bottom);
        let x = Layout::for_format(&Format::X86_64_4LEVEL);
        assert_eq!(x.direct_map, Gva::new(0xffff_8000_0000_0000));
    }
}
