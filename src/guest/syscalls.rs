//! The guest kernel's system calls: process creation (`spawn`, `fork`, `exec`), `exit`, and the
//! memory calls (`mmap`, `munmap`, `mprotect`, `brk`). Each changes page tables with stores
//! through the machine and flushes as Linux does.

use crate::addr::{Gfn, Gpa, Gva, Level, PageSize};
use crate::machine::{GuestRoot, Scheme};
use crate::paging::format::PTE_BYTES;
use crate::paging::{Decoded, Perms};

use super::config::Thp;
use super::os::{internal, Os, OsError};
use super::process::{Mm, Pid, Process, Vma, TEXT_PAGES};
use super::smp::MmFlush;
use crate::stats::Charge;

/// Entries per 4 KiB table.
const ENTRIES: u64 = 512;
const PAGE: u64 = PageSize::Size4K.bytes();

impl<S: Scheme> Os<S> {
    /// Creates a process with a fresh address space (text and stack VMAs) and queues it. The
    /// first process created also becomes the running one.
    pub fn spawn(&mut self) -> Result<Pid, OsError> {
        self.charge_kernel(self.machine.platform.costs.process_create);
        let mm = self.new_mm_with_image()?;
        let pid = self.add_process(mm)?;
        if self.current.is_none() && self.run_queue.contains(&pid) {
            self.switch_to(pid)?;
        }
        Ok(pid)
    }

    /// Creates a process whose address space is exactly `vmas` (anonymous, private, nothing
    /// mapped until first touch: a replayed trace's footprint) and queues it, like [`Os::spawn`].
    /// The VMAs must be page-aligned, non-empty, disjoint and in the user half.
    pub fn spawn_image(&mut self, vmas: &[Vma]) -> Result<Pid, OsError> {
        let top = self.layout.user_top;
        let mut mm = self.new_mm()?;
        for v in vmas {
            let aligned = v.start.as_u64() % PAGE == 0 && v.end.as_u64() % PAGE == 0;
            if !aligned || v.start >= v.end || v.end > top || mm.overlaps(v.start, v.end) {
                return Err(OsError::Sim(crate::machine::SimError::Config(format!(
                    "VMA {}..{} is not a page-aligned, disjoint range of the user half (below {top})",
                    v.start, v.end
                ))));
            }
            mm.insert(*v);
        }
        self.charge_kernel(self.machine.platform.costs.process_create);
        let pid = self.add_process(mm)?;
        if self.current.is_none() && self.run_queue.contains(&pid) {
            self.switch_to(pid)?;
        }
        Ok(pid)
    }

    fn new_mm_with_image(&mut self) -> Result<Mm, OsError> {
        let mut mm = self.new_mm()?;
        let l = self.layout;
        mm.insert(Vma::new(l.text, l.text.wrapping_add(TEXT_PAGES * PAGE), Perms::R | Perms::X));
        mm.insert(Vma::new(l.stack_bottom, l.user_top, Perms::R | Perms::W));
        Ok(mm)
    }

    fn add_process(&mut self, mm: Mm) -> Result<Pid, OsError> {
        let id = mm.id;
        self.mms.insert(id, mm);
        self.add_task(id)
    }

    /// A new task (process or thread) on address space `mm`, with a kernel stack of its own,
    /// queued on the least loaded CPU.
    pub(super) fn add_task(&mut self, mm: u64) -> Result<Pid, OsError> {
        let stack = self.frames.alloc()?;
        let pid = Pid(self.next_pid);
        self.next_pid += 1;
        let kernel_stack = self.layout.direct_map.wrapping_add(stack.addr().as_u64());
        self.procs.insert(pid, Process { pid, mm, kernel_stack });
        self.enqueue_new(pid);
        self.stats.processes += 1;
        Ok(pid)
    }

    pub(super) fn syscall(&mut self) -> Result<(), OsError> {
        self.stats.syscalls += 1;
        self.kernel_entry(self.machine.platform.costs.syscall)
    }

    fn running(&self, pid: Pid) -> Result<&Process, OsError> {
        if self.current != Some(pid) {
            return Err(internal(format!("{pid} made a system call but is not running")));
        }
        self.procs.get(&pid).ok_or_else(|| internal(format!("{pid} is not alive")))
    }

    /// `mmap(NULL, pages * 4096, perms, MAP_PRIVATE | MAP_ANONYMOUS)`: places a VMA top-down and
    /// returns its start. Nothing is mapped until first touch.
    pub fn mmap(&mut self, pid: Pid, pages: u64, perms: Perms) -> Result<Gva, OsError> {
        self.syscall()?;
        let l = self.layout;
        let len = pages.checked_mul(PAGE).filter(|&b| b > 0).ok_or_else(|| {
            OsError::Sim(crate::machine::SimError::Config(format!(
                "mmap of {pages} pages is impossible"
            )))
        })?;
        // With THP on, a mapping of whole 2 MiB pages is placed 2 MiB-aligned, as Linux 6.12's
        // `thp_get_unmapped_area` places anonymous mappings whose length is a multiple of it.
        let huge = super::thp::HUGE.bytes();
        let align = if self.cfg.thp != Thp::Never && len % huge == 0 { huge } else { PAGE };
        self.running(pid)?;
        let mm = self.mm(pid)?;
        let start = mm.find_gap(len, align, mm.brk, l.mmap_top).ok_or_else(|| {
            OsError::Sim(crate::machine::SimError::Config(format!(
                "mmap of {pages} pages does not fit the {} user address space",
                self.format.name
            )))
        })?;
        self.mm_mut(pid)?.insert(Vma::new(start, start.wrapping_add(len), perms));
        Ok(start)
    }

    /// `munmap(va, pages * 4096)`: clears the entries, frees the pages and flushes the range.
    pub fn munmap(&mut self, pid: Pid, va: Gva, pages: u64) -> Result<(), OsError> {
        self.syscall()?;
        self.change_range(pid, va, va.wrapping_add(pages * PAGE), None)
    }

    /// `mprotect(va, pages * 4096, perms)`: new VMA permissions; present entries lose the rights
    /// removed (rights added arrive through faults, as copy-on-write requires).
    pub fn mprotect(&mut self, pid: Pid, va: Gva, pages: u64, perms: Perms) -> Result<(), OsError> {
        self.syscall()?;
        self.change_range(pid, va, va.wrapping_add(pages * PAGE), Some(perms))
    }

    /// Removes `[start, end)` from the VMAs (or, with `perms`, gives it those permissions),
    /// clears or restricts its present entries and flushes them as `flush_tlb_range` does.
    fn change_range(
        &mut self,
        pid: Pid,
        start: Gva,
        end: Gva,
        perms: Option<Perms>,
    ) -> Result<(), OsError> {
        let removed = self.mm_mut(pid)?.carve(start, end);
        let mut changed = Vec::new();
        for vma in removed {
            if let Some(perms) = perms {
                self.mm_mut(pid)?.insert(Vma { perms, ..vma });
            }
            self.edit_range(pid, vma.start, vma.end, perms, &mut changed)?;
        }
        self.flush_range(pid, &changed)
    }

    /// `brk(new)`: moves the heap break, growing or shrinking the heap VMA; returns the break.
    pub fn brk(&mut self, pid: Pid, pages: u64) -> Result<Gva, OsError> {
        self.syscall()?;
        let heap = self.layout.heap;
        let new = heap.wrapping_add(pages * PAGE);
        self.running(pid)?;
        let (old, top) = {
            let mm = self.mm(pid)?;
            (mm.brk, mm.vmas.range(heap.as_u64() + 1..).next().map(|(_, v)| v.start))
        };
        if top.is_some_and(|t| new > t) || new > self.layout.mmap_top {
            return Err(OsError::Sim(crate::machine::SimError::Config(format!(
                "brk to {pages} pages collides with the mmap area"
            ))));
        }
        if new < old {
            self.change_range(pid, new, old, None)?;
        } else if new > old {
            let mm = self.mm_mut(pid)?;
            let huge = mm.carve(heap, new).iter().any(|v| v.huge);
            mm.insert(Vma { huge, ..Vma::new(heap, new, Perms::R | Perms::W) });
        }
        self.mm_mut(pid)?.brk = new;
        Ok(new)
    }

    /// Clears (`perms = None`) or restricts the present entries in `[start, end)`, recording
    /// the pages whose entries changed. A huge page wholly inside the range changes whole; one
    /// only partly inside is split first.
    fn edit_range(
        &mut self,
        pid: Pid,
        start: Gva,
        end: Gva,
        perms: Option<Perms>,
        changed: &mut Vec<(Gva, PageSize)>,
    ) -> Result<(), OsError> {
        let root = self.mm(pid)?.root;
        let fmt = self.format;
        let mut va = start;
        while va < end {
            let Some(slot) = self.find_leaf(&root, va) else {
                va = va.wrapping_add(PAGE);
                continue;
            };
            let size = PageSize::at_level(slot.level);
            let page = va.align_down(size);
            if page < start || page.wrapping_add(size.bytes()) > end {
                self.split_huge(pid, &root, va)?;
                continue;
            }
            if let Ok(Decoded::Leaf { base, attrs }) = fmt.decode(slot.raw, slot.level) {
                let new = match perms {
                    None => Some(0),
                    Some(p) => {
                        let keep = attrs.perms & (p | Perms::U);
                        (keep != attrs.perms).then(|| {
                            fmt.encode_leaf(
                                base,
                                slot.level,
                                crate::paging::LeafAttrs { perms: keep, ..attrs },
                            )
                        })
                    }
                };
                if let Some(value) = new {
                    self.store_entry(slot.entry, value)?;
                    self.stats.leaf_pte_writes += 1;
                    changed.push((page, size));
                    if perms.is_none() {
                        let gfn = Gpa::new(base).page();
                        if size == PageSize::Size4K {
                            self.release_page(gfn);
                        } else {
                            self.release_huge(gfn);
                        }
                    }
                }
            }
            va = page.wrapping_add(size.bytes());
        }
        Ok(())
    }

    fn release_page(&mut self, gfn: Gfn) {
        if gfn != self.zero_frame && !self.in_huge_zero(gfn) {
            self.frames.release(gfn);
        }
    }

    /// `flush_tlb_range` over the changed pages (in address order): one flush per stride —
    /// 2 MiB when only huge pages changed, else 4 KiB (the mmu_gather's `stride_shift`) — up to
    /// the threshold, else the whole address space.
    fn flush_range(&mut self, pid: Pid, changed: &[(Gva, PageSize)]) -> Result<(), OsError> {
        let (Some(&(first, _)), Some(&(last, _))) = (changed.first(), changed.last()) else {
            return Ok(());
        };
        let stride = changed.iter().map(|&(_, size)| size).min().unwrap_or(PageSize::Size4K);
        let span = last.offset_from(first).unwrap_or(0) / stride.bytes() + 1;
        if span > self.cfg.range_flush_threshold {
            return self.flush_mm(pid, MmFlush::All);
        }
        let pages = (0..span).map(|i| first.wrapping_add(i * stride.bytes())).collect();
        self.flush_mm(pid, MmFlush::Pages(pages))
    }

    /// Moves the page at `va` to a fresh frame (a kernel page migration, as the LSP
    /// micro-benchmark's PTE modification): copy, one leaf store, one single-address flush.
    pub fn migrate_page(&mut self, pid: Pid, va: Gva) -> Result<(), OsError> {
        self.migrate_pages(pid, &[va])
    }

    /// Migrates each page of `vas` in turn (a page listed twice moves twice) and flushes once at
    /// the end, as Linux batches the flushes of a migration (`try_to_unmap_flush`): a leaf store
    /// per move, then the flushes of the changed range.
    pub fn migrate_pages(&mut self, pid: Pid, vas: &[Gva]) -> Result<(), OsError> {
        self.syscall()?;
        self.running(pid)?;
        let root = self.mm(pid)?.root;
        let fmt = self.format;
        let mut changed = Vec::with_capacity(vas.len());
        for &va in vas {
            let page = va.align_down(PageSize::Size4K);
            // A huge page is split and one small page of it moves.
            if self.find_leaf(&root, page).is_some_and(|s| s.level != Level::L0) {
                self.split_huge(pid, &root, page)?;
            }
            let slot = self.find_leaf(&root, page);
            let Some(Ok(Decoded::Leaf { base, attrs })) = slot.map(|s| fmt.decode(s.raw, s.level))
            else {
                return Err(internal(format!("migrate_page: {va} is not mapped")));
            };
            let old = Gpa::new(base).page();
            let new = self.frames.alloc()?;
            let p = &mut self.machine.platform;
            let (Some(src), Some(dst)) = (p.back(old)?, p.back(new)?) else {
                return Err(internal(format!("migrate_page: frames outside guest memory at {va}")));
            };
            p.host.copy_frame(src, dst);
            p.stats.cycles.guest_kernel.charge(p.costs.page_copy);
            self.machine.scheme.guest_frame_written(&mut self.machine.platform, new)?;
            self.update_leaf(&root, page, |_| {
                fmt.encode_leaf(new.addr().as_u64(), Level::L0, attrs)
            })?;
            self.release_page(old);
            changed.push((page, PageSize::Size4K));
        }
        changed.sort();
        changed.dedup();
        self.flush_range(pid, &changed)
    }

    /// `fork()`: the child gets a copy of the parent's tables; private writable pages become
    /// copy-on-write in both (write-protected with stores, then `flush_tlb_mm` of the parent).
    pub fn fork(&mut self, parent: Pid) -> Result<Pid, OsError> {
        self.syscall()?;
        self.charge_kernel(self.machine.platform.costs.process_create);
        self.running(parent)?;
        let (vmas, brk, proot) = {
            let mm = self.mm(parent)?;
            (mm.vmas.clone(), mm.brk, mm.root)
        };
        let mut mm = self.new_mm()?;
        mm.vmas = vmas;
        mm.brk = brk;
        let croot = mm.root;
        let mut protected = 0;
        self.copy_tree(
            proot.root(),
            croot.root(),
            proot.format().root_level(),
            true,
            &mut protected,
        )?;
        let child = self.add_process(mm)?;
        // dup_mmap ends with flush_tlb_mm(oldmm).
        self.flush_mm(parent, MmFlush::All)?;
        Ok(child)
    }

    fn copy_tree(
        &mut self,
        from: Gpa,
        to: Gpa,
        level: Level,
        root: bool,
        protected: &mut u64,
    ) -> Result<(), OsError> {
        let fmt = self.format;
        for i in 0..if root { ENTRIES / 2 } else { ENTRIES } {
            let src = from.wrapping_add(i * PTE_BYTES);
            let dst = to.wrapping_add(i * PTE_BYTES);
            let raw = self.read_entry(src)?;
            match fmt.decode(raw, level) {
                Ok(Decoded::Invalid) => {}
                Ok(Decoded::Table { next, .. }) => {
                    let child = self.alloc_zeroed()?;
                    self.store_entry(dst, fmt.encode_table(child.addr().as_u64()))?;
                    let down =
                        level.down().ok_or_else(|| internal("a table below level 0".into()))?;
                    self.copy_tree(Gpa::new(next), child.addr(), down, false, protected)?;
                }
                Ok(Decoded::Leaf { base, attrs }) => {
                    let ro = crate::paging::LeafAttrs { perms: attrs.perms - Perms::W, ..attrs };
                    if attrs.perms.contains(Perms::W) {
                        self.store_entry(src, fmt.encode_leaf(base, level, ro))?;
                        self.stats.leaf_pte_writes += 1;
                        *protected += 1;
                    }
                    // copy_present_pte: the child's entry is old (A clear).
                    let child = crate::paging::LeafAttrs { accessed: false, ..ro };
                    self.store_entry(dst, fmt.encode_leaf(base, level, child))?;
                    self.stats.leaf_pte_writes += 1;
                    let gfn = Gpa::new(base).page();
                    if level != Level::L0 {
                        self.share_huge(gfn);
                    } else if gfn != self.zero_frame {
                        self.frames.share(gfn);
                    }
                }
                Err(_) => return Err(internal(format!("malformed guest entry at {src}"))),
            }
        }
        Ok(())
    }

    /// `execve()`: a fresh address space replaces the old one, which is then torn down.
    pub fn exec(&mut self, pid: Pid) -> Result<(), OsError> {
        self.syscall()?;
        self.charge_kernel(self.machine.platform.costs.process_create);
        self.running(pid)?;
        let mm = self.new_mm_with_image()?;
        let new = mm.id;
        self.mms.insert(new, mm);
        let old = match self.procs.get_mut(&pid) {
            Some(p) => std::mem::replace(&mut p.mm, new),
            None => return Err(internal(format!("{pid} is gone"))),
        };
        // exec_mmap: activate_mm switches to the new space first.
        self.current = None;
        self.switch_to(pid)?;
        self.drop_mm_user(old, false)
    }

    /// One task fewer uses address space `id`; the last one tears it down (`mmput`). `loaded`
    /// says whether the CPU still uses it.
    fn drop_mm_user(&mut self, id: u64, loaded: bool) -> Result<(), OsError> {
        let Some(mm) = self.mms.get_mut(&id) else {
            return Err(internal(format!("address space {id} is gone")));
        };
        mm.users = mm.users.saturating_sub(1);
        if mm.users > 0 {
            return Ok(());
        }
        self.free_mm(id, loaded)
    }

    /// `exit()`: tears the address space down (with the flush of `tlb_finish_mmu`) and removes
    /// the process. The next [`Os::schedule`] picks another one.
    pub fn exit(&mut self, pid: Pid) -> Result<(), OsError> {
        let Some(proc) = self.procs.get(&pid).cloned() else {
            return Err(internal(format!("{pid} exited twice")));
        };
        if self.current == Some(pid) {
            self.syscall()?;
        }
        let current = self.current == Some(pid);
        self.drop_mm_user(proc.mm, current)?;
        self.frames
            .release(Gpa::new(proc.kernel_stack.as_u64() - self.layout.direct_map.as_u64()).page());
        self.procs.remove(&pid);
        self.dequeue(pid);
        if current {
            self.current = None;
        }
        Ok(())
    }

    /// Clears every user entry of `mm` and frees its pages and tables; `loaded` says whether the
    /// space is still the one the CPU uses (then its ASID is flushed, as `tlb_finish_mmu` does).
    fn free_mm(&mut self, id: u64, loaded: bool) -> Result<(), OsError> {
        let Some(mm) = self.mms.get(&id).cloned() else {
            return Err(internal(format!("address space {id} is gone")));
        };
        let level = mm.root.format().root_level();
        self.teardown_tree(mm.root.root(), level, true)?;
        if loaded {
            self.flush_mm_id(id, MmFlush::All)?;
        }
        self.mms.remove(&id);
        self.asids.release(mm.id);
        let root = GuestRoot { table: mm.root, asid: mm.asid.unwrap_or_default() };
        self.machine.scheme.guest_address_space_freed(&mut self.machine.platform, root)?;
        self.frames.release(mm.root.root().page());
        Ok(())
    }

    /// Clears every entry of a user table tree, children first, and frees tables and pages.
    fn teardown_tree(&mut self, table: Gpa, level: Level, root: bool) -> Result<(), OsError> {
        let fmt = self.format;
        for i in 0..if root { ENTRIES / 2 } else { ENTRIES } {
            let at = table.wrapping_add(i * PTE_BYTES);
            let raw = self.read_entry(at)?;
            match fmt.decode(raw, level) {
                Ok(Decoded::Invalid) => {}
                Ok(Decoded::Table { next, .. }) => {
                    let down =
                        level.down().ok_or_else(|| internal("a table below level 0".into()))?;
                    self.teardown_tree(Gpa::new(next), down, false)?;
                    self.store_entry(at, 0)?;
                    self.frames.release(Gpa::new(next).page());
                }
                Ok(Decoded::Leaf { base, .. }) => {
                    self.store_entry(at, 0)?;
                    self.stats.leaf_pte_writes += 1;
                    if level == Level::L0 {
                        self.release_page(Gpa::new(base).page());
                    } else {
                        self.release_huge(Gpa::new(base).page());
                    }
                }
                Err(_) => return Err(internal(format!("malformed guest entry at {at}"))),
            }
        }
        Ok(())
    }
}
