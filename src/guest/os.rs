//! The guest kernel: boot, the access path with its page-fault handler, and the round-robin
//! scheduler. System calls are in [`super::syscalls`].
//!
//! Every page-table change is an ordinary store into guest memory made through the
//! [`Machine`], so the scheme sees exactly what a hypervisor would; every TLB-maintenance
//! instruction is issued where Linux issues it ([`TlbPolicy`]).

use std::collections::{BTreeMap, VecDeque};

use crate::addr::{Gfn, Gpa, GuestPhys, GuestVirt, Gva, Hfn, Hpa, PageSize};
use crate::machine::{GuestRoot, Machine, Scheme, SimError, Stop};
use crate::mem::{HostMemory, MemError};
use crate::mmu::tlb::MemoRun;
use crate::mmu::{FlushOp, TranslationFault};
use crate::paging::mapper::{self, MapError};
use crate::paging::walk::PageTable;
use crate::paging::{Access, AccessKind, AdPolicy, Decoded, Format, LeafAttrs, Perms};

use super::asid::{AsidAllocator, AsidFlush, Recycling};
use super::config::KernelConfig;
use super::frames::FrameAllocator;
use super::policy::{Flushes, TlbPolicy};
use super::process::{Layout, Mm, Pid, Process, Vma};
use super::thp::ThpStats;
use crate::report::WarmupReport;
use crate::stats::Charge;

/// How the kernel resolved a page fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultResolution {
    /// A fresh zeroed page for a first touch.
    DemandZero,
    /// The shared zero page, mapped read-only for a first read.
    ZeroPage,
    /// A write to a shared page: copied to a private one.
    CowCopy,
    /// A write to a copy-on-write page nobody else maps: made writable in place.
    CowReuse,
    /// Accessed/dirty bits set by software (RISC-V Svade).
    AccessedDirty,
    /// Nothing to do: the entry already allowed the access.
    Spurious,
    /// A protection violation: the process was killed.
    Segv,
    /// A fresh zeroed 2 MiB page for a first touch (transparent huge pages).
    HugeDemandZero,
    /// The huge zero page, mapped read-only for a first read.
    HugeZeroPage,
    /// A store to a shared huge page: split, the store faults again and copies a small page.
    HugeSplit,
}

impl FaultResolution {
    /// Every resolution, in report order.
    pub const ALL: [FaultResolution; 10] = [
        FaultResolution::DemandZero,
        FaultResolution::ZeroPage,
        FaultResolution::CowCopy,
        FaultResolution::CowReuse,
        FaultResolution::AccessedDirty,
        FaultResolution::Spurious,
        FaultResolution::Segv,
        FaultResolution::HugeDemandZero,
        FaultResolution::HugeZeroPage,
        FaultResolution::HugeSplit,
    ];

    /// The name used in reports.
    pub const fn name(self) -> &'static str {
        match self {
            FaultResolution::DemandZero => "demand_zero",
            FaultResolution::ZeroPage => "zero_page",
            FaultResolution::CowCopy => "cow_copy",
            FaultResolution::CowReuse => "cow_reuse",
            FaultResolution::AccessedDirty => "accessed_dirty",
            FaultResolution::Spurious => "spurious",
            FaultResolution::Segv => "segv",
            FaultResolution::HugeDemandZero => "huge_demand_zero",
            FaultResolution::HugeZeroPage => "huge_zero_page",
            FaultResolution::HugeSplit => "huge_split",
        }
    }
}

/// What the guest kernel counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestStats {
    /// Page faults by resolution.
    pub faults: [u64; FaultResolution::ALL.len()],
    /// Leaf entries written (filled, changed or cleared).
    pub leaf_pte_writes: u64,
    /// Every page-table store.
    pub pte_writes: u64,
    /// System calls.
    pub syscalls: u64,
    /// Context switches.
    pub context_switches: u64,
    /// Processes created.
    pub processes: u64,
    /// Processes killed.
    pub killed: u64,
    /// The first kills, described.
    pub kill_log: Vec<String>,
    /// Kernel-mode accesses made through the MMU.
    pub kernel_accesses: u64,
    /// User accesses made through the MMU again after the fault they took was handled.
    pub retried_accesses: u64,
    /// TLB shootdowns: flushes of an address space that other CPUs may cache.
    pub shootdowns: u64,
    /// Tasks an idle CPU pulled from another CPU's run queue.
    pub migrations: u64,
}

/// Kills described in [`GuestStats::kill_log`] at most.
pub const KILL_LOG_LIMIT: usize = 16;

/// Why a guest operation did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OsError {
    /// The process made an access its VMAs do not allow and was killed (SIGSEGV).
    #[error("{pid} killed: {access:?} at {va} violates its mappings")]
    Killed {
        /// The process.
        pid: Pid,
        /// The address.
        va: Gva,
        /// The access.
        access: Access,
    },
    /// The simulation cannot go on.
    #[error(transparent)]
    Sim(#[from] SimError),
}

impl From<MemError> for OsError {
    fn from(e: MemError) -> Self {
        OsError::Sim(SimError::Memory(e))
    }
}

/// A bound on faults taken by one access before the kernel gives up (a bug, reported).
const MAX_FAULTS_PER_ACCESS: usize = 4;

/// FNV-1a's prime: folds history events into the digest.
const HISTORY_PRIME: u64 = 0x0000_0100_0000_01B3;

/// A run of user accesses by the current process, each made only if the TLB's hit memo answers
/// it, an L1-TLB hit in the current context; `None` (or `false`), with nothing done, otherwise,
/// and the caller makes that access the usual way ([`Os::load`]). A hit's whole effect is its
/// count, its LRU touch and the content, which the run keeps in locals (the LRU clock, the
/// history digest, the accesses it counts against the slice) until it ends (dropped): nothing
/// else runs meanwhile (the run borrows the kernel), and nothing reads them but the scheduler
/// and the workloads, between accesses.
#[derive(Debug)]
pub struct HitRun<'a, S: Scheme> {
    memo: MemoRun<'a>,
    host: &'a mut HostMemory,
    history: u64,
    history_out: &'a mut u64,
    slice_left: &'a mut u64,
    scheme: std::marker::PhantomData<S>,
}

impl<S: Scheme> HitRun<'_, S> {
    /// The host frame of a hit; a software TLB (an emulator's) has no memo.
    #[inline(always)]
    fn hit(&mut self, va: Gva, access: Access) -> Option<Hfn> {
        if S::SOFTWARE_TLB {
            return None;
        }
        self.memo.hit(va, access)
    }

    /// A read's content token, folded into the history as [`Os::load`] does.
    #[inline(always)]
    fn read(&mut self, frame: Hfn) -> u64 {
        let token = self.host.token(frame);
        self.history = (self.history ^ token).wrapping_mul(HISTORY_PRIME);
        token
    }

    /// [`Os::load`] if it hits; the token read.
    #[inline(always)]
    pub fn load(&mut self, va: Gva) -> Option<u64> {
        let frame = self.hit(va, Access::USER_LOAD)?;
        Some(self.read(frame))
    }

    /// [`Os::fetch`] if it hits; the token read.
    #[inline(always)]
    pub fn fetch(&mut self, va: Gva) -> Option<u64> {
        let frame = self.hit(va, Access::USER_FETCH)?;
        Some(self.read(frame))
    }

    /// [`Os::store`] if it hits.
    #[inline(always)]
    pub fn store(&mut self, va: Gva, token: u64) -> bool {
        let Some(frame) = self.hit(va, Access::USER_STORE) else { return false };
        self.host.set_token(frame, token);
        true
    }
}

impl<S: Scheme> Drop for HitRun<'_, S> {
    #[inline(always)]
    fn drop(&mut self) {
        *self.history_out = self.history;
        // One access a hit, each a tick of the memo's clock.
        *self.slice_left = self.slice_left.saturating_sub(self.memo.hits());
    }
}

/// The guest kernel and the machine it runs on.
#[derive(Debug)]
pub struct Os<S: Scheme> {
    /// The machine (memory, MMU, scheme).
    pub machine: Machine<S>,
    /// Guest frames.
    pub frames: FrameAllocator,
    /// Tunables.
    pub cfg: KernelConfig,
    /// The guest kernel's counters.
    pub stats: GuestStats,
    pub(super) policy: TlbPolicy,
    pub(super) layout: Layout,
    pub(super) format: Format,
    pub(super) ad: AdPolicy,
    /// The kernel's own root: its upper half is copied into every address space.
    pub(super) template: PageTable<GuestVirt, GuestPhys>,
    /// The shared zero page.
    pub(super) zero_frame: Gfn,
    /// The huge zero page's first frame, once a first read of a huge page allocated it.
    pub(super) huge_zero: Option<Gfn>,
    /// Transparent-huge-page counters.
    pub thp: ThpStats,
    pub(super) procs: BTreeMap<Pid, Process>,
    /// Address spaces by id.
    pub(super) mms: BTreeMap<u64, Mm>,
    pub(super) run_queue: VecDeque<Pid>,
    pub(super) current: Option<Pid>,
    pub(super) next_pid: u32,
    pub(super) next_mm: u64,
    pub(super) asids: AsidAllocator,
    history: u64,
    /// This CPU's turn: user accesses it may still make before the next CPU runs (or, with one
    /// CPU, before the time slice ends).
    pub(super) slice_left: u64,
    /// The time slice left after this turn.
    pub(super) slice_rest: u64,
    /// User accesses per CPU turn (`smp.quantum`).
    pub(super) quantum: u64,
    /// The hardware broadcasts invalidations (`smp.broadcast_flush`).
    pub(super) broadcast: bool,
    /// The CPU the kernel runs on, and every other CPU's state, parked (`None` at `cpu`).
    pub(super) cpu: usize,
    pub(super) parked_cpus: Vec<Option<super::smp::Cpu>>,
    /// x86: the flush generation of each address space this CPU's PCID for it is flushed to.
    pub(super) synced: BTreeMap<u64, u64>,
    /// The address space this CPU's MMU is set to (it stays loaded while the CPU idles).
    pub(super) loaded: Option<u64>,
    /// RISC-V: CPUs (one bit each) that owe a full flush at their next switch after an ASID
    /// rollover on another CPU.
    pub(super) flush_pending: u64,
    /// User accesses to make before counting starts, plus one (0: no warm-up pending); see
    /// [`Os::warm_up_for`].
    warmup_left: u64,
    /// The warm-up asked for, in user accesses (0: none).
    warmup_requested: u64,
    /// What the warm-up ran, once it ended.
    warmed: Option<WarmupReport>,
}

impl<S: Scheme> Os<S> {
    /// Boots the kernel on `machine`: the zero page and the kernel half (a direct map of guest
    /// memory with global 2 MiB pages, or 4 KiB pages for a tail that does not fill one).
    pub fn boot(machine: Machine<S>, cfg: KernelConfig) -> Result<Self, OsError> {
        let p = &machine.platform;
        let format = p.arch.guest_format;
        let frames = FrameAllocator::new(p.guest_mem.frames());
        let recycling = match TlbPolicy::for_format(&format) {
            TlbPolicy::RiscV => Recycling::Rollover,
            TlbPolicy::X86 => Recycling::RoundRobin,
        };
        let mut os = Os {
            policy: TlbPolicy::for_format(&format),
            layout: Layout::for_format(&format),
            format,
            ad: p.arch.guest_regime.ad,
            template: PageTable::new(Gpa::ZERO, format),
            zero_frame: Gfn::new(0),
            huge_zero: None,
            thp: ThpStats::default(),
            procs: BTreeMap::new(),
            mms: BTreeMap::new(),
            run_queue: VecDeque::new(),
            current: None,
            next_pid: 1,
            next_mm: 1,
            asids: AsidAllocator::new(cfg.asids, recycling),
            history: 0xCBF2_9CE4_8422_2325,
            slice_left: cfg.time_slice,
            slice_rest: 0,
            quantum: crate::profile::SmpProfile::default().quantum,
            broadcast: false,
            cpu: 0,
            parked_cpus: (0..p.vcpus())
                .map(|i| {
                    (i > 0).then(|| super::smp::Cpu {
                        asids: (recycling == Recycling::RoundRobin)
                            .then(|| AsidAllocator::new(cfg.asids, recycling)),
                        ..Default::default()
                    })
                })
                .collect(),
            synced: BTreeMap::new(),
            loaded: None,
            flush_pending: 0,
            warmup_left: 0,
            warmup_requested: 0,
            warmed: None,
            machine,
            frames,
            cfg,
            stats: GuestStats::default(),
        };
        os.zero_frame = os.frames.alloc()?;
        let root = os.alloc_zeroed()?;
        os.template = PageTable::new(root.addr(), format);
        os.build_direct_map()?;
        Ok(os)
    }

    fn build_direct_map(&mut self) -> Result<(), OsError> {
        let total = self.frames.total() * PageSize::Size4K.bytes();
        let big = PageSize::Size2M;
        let attrs =
            LeafAttrs { perms: Perms::R | Perms::W, global: true, accessed: true, dirty: true };
        let mut pa = 0;
        while pa < total {
            let size = if pa % big.bytes() == 0 && total - pa >= big.bytes() {
                big
            } else {
                PageSize::Size4K
            };
            let va = self.layout.direct_map.wrapping_add(pa);
            let template = self.template;
            self.map_with(&template, va, Gpa::new(pa), size, attrs)?.ignore();
            pa += size.bytes();
        }
        Ok(())
    }

    /// Zeroes every counter (the machine's, the MMU's and the kernel's) but keeps all state:
    /// reports then cover the workload, not the boot.
    pub fn reset_counters(&mut self) {
        self.machine.platform.reset_counts();
        self.stats = GuestStats::default();
        self.thp = ThpStats::default();
    }

    /// Runs the first `accesses` user accesses without counting them: just before the next one,
    /// every counter (the machine's, the MMU's, the scheme's, the oracle's and the kernel's) is
    /// zeroed and all state (tables, TLBs, caches) kept. 0: no warm-up.
    pub fn warm_up_for(&mut self, accesses: u64) {
        self.warmup_requested = accesses;
        // The count is checked before each access, so it runs out just before access N + 1.
        self.warmup_left = if accesses == 0 { 0 } else { accesses.saturating_add(1) };
        // The warm-up's count is kept past the hit memo ([`Os::user_access_past_memo`]): every
        // access must reach it.
        self.machine.platform.set_memo(self.warmup_left == 0);
    }

    /// Ends the warm-up now (a trace replay's, counted in instructions, or the accesses of
    /// [`Os::warm_up_for`] running out): zeroes every counter, keeps all state, and remembers
    /// what ran as `warmed` with its `accesses` filled in.
    pub fn end_warmup(&mut self, mut warmed: WarmupReport) {
        warmed.accesses = self.user_accesses();
        self.machine.reset_counts();
        self.stats = GuestStats::default();
        self.thp = ThpStats::default();
        self.warmup_left = 0;
        self.machine.platform.set_memo(true);
        self.warmed = Some(warmed);
    }

    /// User accesses the workload made since counting started (each once, however many faults
    /// it took): the MMU's accesses less the kernel's and the retries.
    pub fn user_accesses(&self) -> u64 {
        let s = &self.stats;
        self.machine.platform.accesses().saturating_sub(s.kernel_accesses + s.retried_accesses)
    }

    /// What the warm-up ran, once it has ended; `None` without one or before its end.
    pub fn warmed(&self) -> Option<&WarmupReport> {
        self.warmed.as_ref()
    }

    #[cold]
    #[inline(never)]
    fn warmup_tick(&mut self) {
        self.warmup_left -= 1;
        if self.warmup_left == 0 {
            let requested = self.warmup_requested;
            self.end_warmup(WarmupReport {
                unit: "accesses".to_owned(),
                requested,
                accesses: 0,
                instructions: None,
            });
        }
    }

    /// The digest of the guest-visible history so far.
    pub fn history(&self) -> u64 {
        self.history
    }

    /// The layout of every process.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The running process.
    pub fn current(&self) -> Option<Pid> {
        self.current
    }

    /// Live processes.
    pub fn process_count(&self) -> usize {
        self.procs.len()
    }

    /// A live process.
    pub fn process(&self, pid: Pid) -> Option<&Process> {
        self.procs.get(&pid)
    }

    /// Guest accesses the current process may still make in its time slice.
    #[inline]
    pub fn slice_left(&self) -> u64 {
        self.slice_left
    }

    // ----- the access path -------------------------------------------------------------------

    /// A user load by the current process; returns the content token it read.
    #[inline(always)]
    pub fn load(&mut self, va: Gva) -> Result<u64, OsError> {
        let frame = self.user_access(va, Access::USER_LOAD)?;
        Ok(self.read_token(frame))
    }

    /// A user instruction fetch by the current process; returns the content token it read.
    #[inline(always)]
    pub fn fetch(&mut self, va: Gva) -> Result<u64, OsError> {
        let frame = self.user_access(va, Access::USER_FETCH)?;
        Ok(self.read_token(frame))
    }

    /// A user store by the current process, leaving `token` as the page's content.
    #[inline(always)]
    pub fn store(&mut self, va: Gva, token: u64) -> Result<(), OsError> {
        let frame = self.user_access(va, Access::USER_STORE)?;
        self.machine.platform.host.set_token(frame, token);
        Ok(())
    }

    /// The content token of `frame`, read by the current process (and folded into the
    /// history).
    #[inline(always)]
    fn read_token(&mut self, frame: Hfn) -> u64 {
        let token = self.machine.platform.host.token(frame);
        self.history = (self.history ^ token).wrapping_mul(HISTORY_PRIME);
        token
    }

    /// Whether a user access would be a hit of the TLB's hit memo ([`HitRun`]), a look
    /// that touches nothing: whether a run of hits is worth starting.
    #[inline(always)]
    pub fn would_hit(&self, va: Gva, access: Access) -> bool {
        !S::SOFTWARE_TLB && self.machine.platform.mmu.tlb.memo_holds(va, access)
    }

    /// A run of user accesses by the current process that stops short of anything but an
    /// L1-TLB hit the hit memo answers ([`HitRun`]): a replay's fast path (a trace's).
    #[inline(always)]
    pub fn hit_run(&mut self) -> HitRun<'_, S> {
        let platform = &mut self.machine.platform;
        HitRun {
            memo: platform.mmu.tlb.memo_run(),
            host: &mut platform.host,
            history: self.history,
            history_out: &mut self.history,
            slice_left: &mut self.slice_left,
            scheme: std::marker::PhantomData,
        }
    }

    /// The host frame a user access reaches. Inlined into every user load, fetch and store with
    /// the machine's TLB-hit path, so that a hit is a few dozen instructions (BENCHMARKS.md,
    /// "The hit path"); the rest is out of line.
    #[inline(always)]
    fn user_access(&mut self, va: Gva, access: Access) -> Result<Hfn, OsError> {
        self.slice_left = self.slice_left.saturating_sub(1);
        match self.machine.memo_hit(va, access) {
            Some(frame) => Ok(frame),
            None => self.user_access_past_memo(va, access),
        }
    }

    /// [`Os::user_access`] past the hit memo: the whole access, page faults included, and the
    /// warm-up's count, which the memo is off for ([`Os::warm_up_for`]).
    #[inline(never)]
    fn user_access_past_memo(&mut self, va: Gva, access: Access) -> Result<Hfn, OsError> {
        if self.warmup_left != 0 {
            self.warmup_tick();
        }
        match self.machine.access_past_memo(va, access) {
            Ok(hpa) => Ok(hpa.page()),
            Err(stop) => self.fault_and_retry(va, access, stop).map(Hpa::page),
        }
    }

    #[cold]
    #[inline(never)]
    fn fault_and_retry(&mut self, va: Gva, access: Access, first: Stop) -> Result<Hpa, OsError> {
        let mut stop = first;
        for _ in 0..MAX_FAULTS_PER_ACCESS {
            match stop {
                Stop::Error(e) => return Err(e.into()),
                Stop::GuestFault(f) => self.page_fault(f)?,
            }
            self.stats.retried_accesses += 1;
            match self.machine.access(va, access) {
                Ok(hpa) => return Ok(hpa),
                Err(s) => stop = s,
            }
        }
        Err(internal(format!(
            "{access:?} at {va} still faults after {MAX_FAULTS_PER_ACCESS} faults"
        )))
    }

    /// Charges `cycles` of guest-kernel work.
    pub(super) fn charge_kernel(&mut self, cycles: u64) {
        self.machine.platform.stats.cycles.guest_kernel.charge(cycles);
    }

    /// Kernel entry: its cost and its own accesses (to the current kernel stack).
    pub(super) fn kernel_entry(&mut self, cycles: u64) -> Result<(), OsError> {
        self.charge_kernel(cycles);
        let Some(stack) = self.current.and_then(|p| self.procs.get(&p)).map(|p| p.kernel_stack)
        else {
            return Ok(());
        };
        for _ in 0..self.cfg.kernel_accesses {
            self.stats.kernel_accesses += 1;
            if let Err(stop) = self.machine.access(stack, Access::KERNEL_LOAD) {
                return Err(internal(format!("kernel stack access at {stack} failed: {stop:?}")));
            }
        }
        Ok(())
    }

    fn page_fault(&mut self, f: TranslationFault) -> Result<(), OsError> {
        let pid = self.current.ok_or_else(|| internal("a page fault with no process".into()))?;
        self.kernel_entry(self.machine.platform.costs.page_fault)?;
        let kind_tag = match f.access.kind {
            AccessKind::Load => 1,
            AccessKind::Store => 2,
            AccessKind::Fetch => 3,
        };
        self.history =
            (self.history ^ f.gva.page().as_u64() ^ (kind_tag << 60)).wrapping_mul(HISTORY_PRIME);
        let va = f.gva;
        let mm = self.mm(pid)?;
        let root = mm.root;
        let vma = mm.find_vma(va).copied();
        let Some(vma) = vma.filter(|v| vma_allows(v.perms, f.access)) else {
            return Err(self.kill(pid, va, f.access));
        };
        let page = va.align_down(PageSize::Size4K);
        let is_store = f.access.kind == AccessKind::Store;
        let Some(slot) = self.find_leaf(&root, page) else {
            if self.huge_fill(&root, page, vma, f.access)? {
                return Ok(());
            }
            return self.demand_fill(&root, page, vma, f.access);
        };
        let Ok(Decoded::Leaf { base, attrs }) = self.format.decode(slot.raw, slot.level) else {
            return Err(internal(format!("find_leaf returned a non-leaf at {va}")));
        };
        if is_store && !attrs.perms.contains(Perms::W) {
            let base = Gpa::new(base).page();
            if slot.level != crate::addr::Level::L0 {
                return self.huge_write_fault(pid, &root, page, base, vma);
            }
            return self.write_protect_fault(pid, &root, page, base, vma);
        }
        let needs_ad = !attrs.accessed || (is_store && !attrs.dirty);
        let fmt = self.format;
        let (resolution, flushes) = if needs_ad && self.ad == AdPolicy::Fault {
            self.update_leaf(&root, page, |raw| fmt.with_accessed_dirty(raw, is_store))?;
            (FaultResolution::AccessedDirty, self.policy.after_upgrade(page))
        } else {
            // A stale TLB entry: x86's `flush_tlb_fix_spurious_fault` is a no-op, RISC-V fences.
            (FaultResolution::Spurious, self.policy.after_upgrade(page))
        };
        self.count(resolution);
        self.flush_all(flushes)
    }

    fn demand_fill(
        &mut self,
        root: &PageTable<GuestVirt, GuestPhys>,
        page: Gva,
        vma: Vma,
        access: Access,
    ) -> Result<(), OsError> {
        let user = vma.perms | Perms::U;
        let (gfn, attrs, resolution) = if access.kind != AccessKind::Store
            && self.cfg.zero_page
            && !vma.perms.contains(Perms::X)
        {
            let ro =
                LeafAttrs { perms: user - Perms::W, global: false, accessed: true, dirty: false };
            (self.zero_frame, ro, FaultResolution::ZeroPage)
        } else {
            let gfn = self.alloc_zeroed()?;
            let dirty = access.kind == AccessKind::Store;
            (
                gfn,
                LeafAttrs { perms: user, global: false, accessed: true, dirty },
                FaultResolution::DemandZero,
            )
        };
        self.map_with(root, page, gfn.addr(), PageSize::Size4K, attrs)?.ignore();
        self.stats.leaf_pte_writes += 1;
        self.count(resolution);
        self.flush_all(self.policy.after_fill(page))
    }

    fn write_protect_fault(
        &mut self,
        pid: Pid,
        root: &PageTable<GuestVirt, GuestPhys>,
        page: Gva,
        old: Gfn,
        vma: Vma,
    ) -> Result<(), OsError> {
        let fmt = self.format;
        let attrs =
            LeafAttrs { perms: vma.perms | Perms::U, global: false, accessed: true, dirty: true };
        if old != self.zero_frame && self.frames.refs(old) == 1 {
            // wp_page_reuse: nobody else maps it.
            self.update_leaf(root, page, |_| {
                fmt.encode_leaf(old.addr().as_u64(), crate::addr::Level::L0, attrs)
            })?;
            self.count(FaultResolution::CowReuse);
            return self.flush_all(self.policy.after_upgrade(page));
        }
        // wp_page_copy: a private copy replaces the shared page.
        let new = self.frames.alloc()?;
        let costs = self.machine.platform.costs;
        let p = &mut self.machine.platform;
        let dst = p.back(new)?.ok_or_else(|| internal(format!("{new:?} outside guest memory")))?;
        if old == self.zero_frame {
            p.host.zero_frame(dst);
            p.stats.cycles.guest_kernel.charge(costs.page_zero);
        } else {
            let src =
                p.back(old)?.ok_or_else(|| internal(format!("{old:?} outside guest memory")))?;
            p.host.copy_frame(src, dst);
            p.stats.cycles.guest_kernel.charge(costs.page_copy);
        }
        self.machine.scheme.guest_frame_written(&mut self.machine.platform, new)?;
        self.update_leaf(root, page, |_| {
            fmt.encode_leaf(new.addr().as_u64(), crate::addr::Level::L0, attrs)
        })?;
        if old != self.zero_frame {
            self.frames.release(old);
        }
        self.count(FaultResolution::CowCopy);
        // ptep_clear_flush (every CPU that may cache the page), then update_mmu_cache (local).
        self.flush_mm(pid, super::smp::MmFlush::Pages(vec![page]))?;
        self.flush_all(self.policy.after_fill(page))
    }

    fn kill(&mut self, pid: Pid, va: Gva, access: Access) -> OsError {
        self.count(FaultResolution::Segv);
        self.stats.killed += 1;
        let err = OsError::Killed { pid, va, access };
        if self.stats.kill_log.len() < KILL_LOG_LIMIT {
            self.stats.kill_log.push(err.to_string());
        }
        match self.exit(pid) {
            Ok(()) => err,
            Err(e) => e,
        }
    }

    pub(super) fn count(&mut self, r: FaultResolution) {
        self.stats.faults[r as usize] += 1;
    }

    // ----- page-table plumbing ---------------------------------------------------------------

    /// A zeroed guest frame (the kernel's `clear_page`, which the scheme sees).
    pub(super) fn alloc_zeroed(&mut self) -> Result<Gfn, OsError> {
        let gfn = self.frames.alloc()?;
        let p = &mut self.machine.platform;
        if let Some(hfn) = p.back(gfn)? {
            p.host.zero_frame(hfn);
        }
        p.stats.cycles.guest_kernel.charge(p.costs.page_zero);
        self.machine.scheme.guest_frame_written(&mut self.machine.platform, gfn)?;
        Ok(gfn)
    }

    /// Maps through the machine, allocating tables from the kernel's frames.
    pub(super) fn map_with(
        &mut self,
        table: &PageTable<GuestVirt, GuestPhys>,
        va: Gva,
        pa: Gpa,
        size: PageSize,
        attrs: LeafAttrs,
    ) -> Result<mapper::PendingFlush<GuestVirt>, OsError> {
        let frames = &mut self.frames;
        let mut store = self.machine.guest_tables(|| frames.alloc());
        let result = mapper::map(table, &mut store, va, pa, size, attrs);
        self.stats.pte_writes += store.stores;
        let tables = store.tables;
        if let Some(e) = store.error.take() {
            return Err(e.into());
        }
        self.charge_kernel(tables * self.machine.platform.costs.page_zero);
        result.map_err(|e| match e {
            MapError::Memory(m) => OsError::from(m),
            other => internal(format!("mapping {va}: {other}")),
        })
    }

    /// The leaf entry for `va` in `table`, found by a software walk of guest memory (the
    /// kernel's own lookup: no modelled cost).
    pub(super) fn find_leaf(
        &mut self,
        table: &PageTable<GuestVirt, GuestPhys>,
        va: Gva,
    ) -> Option<mapper::LeafSlot<GuestPhys>> {
        let mut store = self.machine.guest_tables(no_table_allocation);
        mapper::find_leaf(table, &mut store, va)
    }

    /// Rewrites the leaf for `va` through the machine.
    pub(super) fn update_leaf(
        &mut self,
        table: &PageTable<GuestVirt, GuestPhys>,
        va: Gva,
        update: impl FnOnce(u64) -> u64,
    ) -> Result<(), OsError> {
        let mut store = self.machine.guest_tables(no_table_allocation);
        let changed = mapper::update_leaf(table, &mut store, va, update);
        let error = store.error.take();
        self.stats.pte_writes += store.stores;
        if let Some(e) = error {
            return Err(e.into());
        }
        // The caller issues the flush Linux issues for this change.
        changed.ok_or_else(|| internal(format!("no leaf to update at {va}")))?.1.ignore();
        self.stats.leaf_pte_writes += 1;
        Ok(())
    }

    /// A store of a page-table entry.
    pub(super) fn store_entry(&mut self, at: Gpa, value: u64) -> Result<(), OsError> {
        self.stats.pte_writes += 1;
        self.machine.guest_store(at, value)?;
        Ok(())
    }

    /// Reads a page-table entry (kernel software, no modelled cost).
    pub(super) fn read_entry(&mut self, at: Gpa) -> Result<u64, OsError> {
        Ok(self.machine.platform.read_guest_u64(at)?)
    }

    pub(super) fn flush(&mut self, op: FlushOp) -> Result<(), OsError> {
        self.machine.guest_flush(op)?;
        Ok(())
    }

    pub(super) fn flush_all(&mut self, ops: Flushes) -> Result<(), OsError> {
        for op in ops.iter() {
            self.flush(op)?;
        }
        Ok(())
    }

    // ----- scheduling ------------------------------------------------------------------------

    /// Makes `pid` the running process: its ASID, root switch and the flush they owe.
    pub fn switch_to(&mut self, pid: Pid) -> Result<(), OsError> {
        if self.current == Some(pid) {
            self.start_slice();
            return Ok(());
        }
        let mm = self.mm(pid)?;
        let (mm_id, last, root_table, gen) = (mm.id, mm.asid, mm.root, mm.tlb_gen);
        self.stats.context_switches += 1;
        if self.loaded == Some(mm_id) && self.mms.contains_key(&mm_id) {
            // Another thread of the space this CPU has loaded: no root switch (`switch_mm`
            // returns early), but x86 still catches up with flushes made elsewhere.
            self.current = Some(pid);
            self.start_slice();
            if self.policy == TlbPolicy::X86 && self.synced.get(&mm_id).is_some_and(|&g| g < gen) {
                self.synced.insert(mm_id, gen);
                let asid = self.asid_here(mm_id);
                self.flush(FlushOp::MovCr3 { pcid: asid, noflush: false })?;
            }
            return self.kernel_entry(self.machine.platform.costs.context_switch);
        }
        self.loaded = Some(mm_id);
        let (asid, owed) = self.asids.activate(mm_id, last);
        let here = 1u64 << self.cpu;
        let mm = self.mm_mut(pid)?;
        mm.asid = Some(asid);
        mm.cpus |= here;
        self.current = Some(pid);
        self.start_slice();
        let root = GuestRoot { table: root_table, asid };
        self.machine.guest_root_switch(root)?;
        match self.policy {
            TlbPolicy::RiscV => {
                if owed == AsidFlush::Everything {
                    // Every other CPU flushes everything at its next switch.
                    self.flush_pending = !here;
                }
                if owed == AsidFlush::Everything || self.flush_pending & here != 0 {
                    self.flush_pending &= !here;
                    self.flush(self.policy.everything())?;
                }
            }
            TlbPolicy::X86 => {
                // The CR3 load itself: no-flush unless the PCID was recycled or the space was
                // flushed elsewhere since this CPU's PCID for it was (`tlb_gen`).
                let stale = self.synced.get(&mm_id).is_some_and(|&g| g < gen);
                let noflush = owed == AsidFlush::None && !stale;
                self.synced.insert(mm_id, gen);
                self.flush(FlushOp::MovCr3 { pcid: asid, noflush })?;
            }
        }
        self.kernel_entry(self.machine.platform.costs.context_switch)
    }

    /// Round robin on this CPU: the running process goes to the back of the queue and the next
    /// one runs; an idle CPU first pulls a waiting task from the busiest CPU. Returns the
    /// process now running, or `None` when this CPU has nothing to run.
    pub fn schedule(&mut self) -> Result<Option<Pid>, OsError> {
        if let Some(cur) = self.current {
            if let Some(pos) = self.run_queue.iter().position(|&p| p == cur) {
                self.run_queue.remove(pos);
                self.run_queue.push_back(cur);
            }
        }
        if self.run_queue.is_empty() && !self.pull_task() {
            // Idle: lazy TLB mode, the last space stays loaded.
            self.current = None;
            return Ok(None);
        }
        let Some(&next) = self.run_queue.front() else { return Ok(None) };
        self.switch_to(next)?;
        Ok(Some(next))
    }

    /// A new address space with the kernel half shared from the kernel's root.
    pub(super) fn new_mm(&mut self) -> Result<Mm, OsError> {
        let root_gfn = self.alloc_zeroed()?;
        let root = PageTable::new(root_gfn.addr(), self.format);
        let entries = self.format.root_bytes() / crate::paging::format::PTE_BYTES;
        // pgd_alloc copies the kernel's upper-half entries (zero entries need no store).
        for i in entries / 2..entries {
            let from = self.template.root().wrapping_add(i * crate::paging::format::PTE_BYTES);
            let raw = self.read_entry(from)?;
            if raw != 0 {
                self.store_entry(
                    root.root().wrapping_add(i * crate::paging::format::PTE_BYTES),
                    raw,
                )?;
            }
        }
        let id = self.next_mm;
        self.next_mm += 1;
        Ok(Mm {
            id,
            root,
            asid: None,
            vmas: BTreeMap::new(),
            brk: self.layout.heap,
            users: 1,
            cpus: 0,
            tlb_gen: 0,
        })
    }

    /// The address space of task `pid`.
    pub(super) fn mm(&self, pid: Pid) -> Result<&Mm, OsError> {
        let id = self.procs.get(&pid).ok_or_else(|| internal(format!("{pid} is not alive")))?.mm;
        self.mms.get(&id).ok_or_else(|| internal(format!("{pid}'s address space is gone")))
    }

    /// The address space of task `pid`, to change.
    pub(super) fn mm_mut(&mut self, pid: Pid) -> Result<&mut Mm, OsError> {
        let id = self.procs.get(&pid).ok_or_else(|| internal(format!("{pid} is not alive")))?.mm;
        self.mms.get_mut(&id).ok_or_else(|| internal(format!("{pid}'s address space is gone")))
    }
}

/// The table allocator of lookups and in-place edits, which never need a new table.
pub(super) fn no_table_allocation() -> Result<Gfn, MemError> {
    Err(MemError::GuestExhausted { frames: 0, mib: 0 })
}

/// Whether a VMA with `perms` allows `access`.
fn vma_allows(perms: Perms, access: Access) -> bool {
    match access.kind {
        AccessKind::Load => perms.contains(Perms::R),
        AccessKind::Store => perms.contains(Perms::W),
        AccessKind::Fetch => perms.contains(Perms::X),
    }
}

pub(crate) fn internal(detail: String) -> OsError {
    OsError::Sim(SimError::Internal { scheme: "guest kernel", detail })
}
