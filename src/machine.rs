//! A vCPU with its memory, driven access by access, and the [`Scheme`] that decides what the
//! hardware walks on a TLB miss and how the hypervisor learns of guest page-table changes.
//!
//! The split is the one DESIGN.md §3 draws: [`Platform`] is everything a scheme may touch (host
//! memory, the guest's memory map, the MMU, the guest's registers, counters and costs); the
//! scheme is a separate value so that `Machine<S>` dispatches statically on the hot path.

use crate::addr::{Asid, Gfn, Gpa, GuestPhys, GuestVirt, Gva, Hfn, Hpa, PageSize, Vmid};
use crate::cost::Costs;
use crate::mem::{GuestBacking, HostMemory, HostPage, MemError, TablePool};
use crate::mmu::setassoc::GeometryError;
use crate::mmu::{FlushOp, Handlers, Mmu, MmuConfig, TranslationFault};
use crate::oracle::{Oracle, Translation, Violation};
use crate::paging::mapper::TableStore;
use crate::paging::walk::PageTable;
use crate::paging::{Access, Format, Regime};
use crate::stats::Charge;
use crate::stats::{Cycles, ExitCause, Stats, TrapCause};

/// Simulator errors (never guest-visible events).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// Memory ran out.
    #[error(transparent)]
    Memory(#[from] MemError),
    /// A hardware structure had an impossible geometry.
    #[error(transparent)]
    Geometry(#[from] GeometryError),
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A scheme reached a state it cannot handle: a bug in memvirt, reported rather than
    /// panicking.
    #[error("internal error in scheme {scheme}: {detail}")]
    Internal {
        /// Scheme name.
        scheme: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// The translation oracle (`--verify`) caught a scheme filling the TLB with a translation
    /// the guest's table does not allow.
    #[error(transparent)]
    Oracle(Box<Violation>),
}

/// Why an access did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// A fault the guest must handle (delivered to the guest kernel).
    GuestFault(TranslationFault),
    /// The simulation cannot go on.
    Error(SimError),
}

impl From<SimError> for Stop {
    fn from(e: SimError) -> Self {
        Stop::Error(e)
    }
}

impl From<MemError> for Stop {
    fn from(e: MemError) -> Self {
        Stop::Error(SimError::Memory(e))
    }
}

/// Who refills the TLB on a miss.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Refill {
    /// A hardware walker (x86, RISC-V implementations with a walker).
    #[default]
    Hardware,
    /// A trap to hardware mode whose handler walks the tables in software (Alpha PALcode,
    /// Sunway HMcode): each walk costs the trap round trip and a per-entry software cost on top
    /// of the entry reads themselves.
    Software,
}

/// The architecture being simulated: formats and A/D regimes of both stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchConfig {
    /// The guest's (or native OS's) first-stage format.
    pub guest_format: Format,
    /// The nested format (ignored by schemes without a nested table).
    pub nested_format: Format,
    /// First-stage regime.
    pub guest_regime: Regime,
    /// Nested regime.
    pub nested_regime: Regime,
    /// Who refills the TLB.
    pub refill: Refill,
}

impl ArchConfig {
    /// RISC-V Sv39 guest over Sv39x4, Svadu.
    pub const RISCV_SV39: ArchConfig = ArchConfig {
        guest_format: Format::SV39,
        nested_format: Format::SV39X4,
        guest_regime: Regime { sum: false, mxr: false, ad: crate::paging::AdPolicy::Hardware },
        nested_regime: Regime { sum: false, mxr: false, ad: crate::paging::AdPolicy::Hardware },
        refill: Refill::Hardware,
    };
}

/// Most vCPUs a guest may have.
pub const MAX_VCPUS: usize = 64;

/// The guest's current address space: its root table and ASID/PCID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRoot {
    /// The guest's table (`satp`/`vsatp`/CR3 root).
    pub table: PageTable<GuestVirt, GuestPhys>,
    /// The ASID/PCID.
    pub asid: Asid,
}

/// Everything but the scheme.
#[derive(Debug)]
pub struct Platform {
    /// Host physical memory.
    pub host: HostMemory,
    /// Guest physical memory and its backing.
    pub guest_mem: GuestBacking,
    /// The running vCPU's translation hardware.
    pub mmu: Mmu,
    /// Formats and regimes.
    pub arch: ArchConfig,
    /// The running vCPU's current guest root, once the guest has set one.
    pub root: Option<GuestRoot>,
    /// Which vCPU runs now: its MMU and root are `mmu` and `root`.
    vcpu: usize,
    /// Every other vCPU's MMU and root, parked while it does not run (`None` at `vcpu`).
    parked: Vec<Option<(Mmu, Option<GuestRoot>)>>,
    /// Counters.
    pub stats: Stats,
    /// Cycle costs.
    pub costs: Costs,
    /// The translation oracle, when runs are verified (`--verify`); see
    /// [`Machine::enable_oracle`].
    pub oracle: Option<Box<Oracle>>,
    /// What exit and trap handlers leave in the TLB and caches.
    pub handlers: Handlers,
    /// Where the handlers' own data lies: the hypervisor's memory, just past the host memory
    /// guests and tables are allocated from (so it shares no frame with them); the trap
    /// handler's starts 1 MiB further.
    handler_data: Hpa,
}

/// Sizes of the simulated machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlatformConfig {
    /// Architecture.
    pub arch: ArchConfig,
    /// MMU geometry.
    pub mmu: MmuConfig,
    /// Guest physical memory in bytes.
    pub guest_bytes: u64,
    /// Host physical memory in bytes.
    pub host_bytes: u64,
    /// Frames a hypervisor table pool takes at a time (`memory.table_pool_frames`).
    pub table_pool_frames: u64,
    /// What exit and trap handlers leave in the TLB and caches.
    pub handlers: Handlers,
    /// The VMID the guest runs with (`Vmid::HOST` for native runs).
    pub vmid: Vmid,
    /// The guest's vCPUs, each with an MMU of geometry `mmu` (at least 1).
    pub vcpus: usize,
}

impl Platform {
    /// A fresh platform: empty memory, empty MMU, no root yet.
    pub fn new(cfg: &PlatformConfig, costs: Costs) -> Result<Self, SimError> {
        let page = PageSize::Size4K.bytes();
        if cfg.guest_bytes < page || cfg.host_bytes < page {
            return Err(SimError::Config(format!(
                "guest ({} bytes) and host ({} bytes) memory must each hold at least one 4 KiB page",
                cfg.guest_bytes, cfg.host_bytes
            )));
        }
        let mut mmu = Mmu::new(&cfg.mmu)?;
        mmu.set_vmid(cfg.vmid);
        if !(1..=MAX_VCPUS).contains(&cfg.vcpus) {
            return Err(SimError::Config(format!(
                "{} vCPUs: a guest has 1 to {MAX_VCPUS}",
                cfg.vcpus
            )));
        }
        let parked = (0..cfg.vcpus).map(|i| (i > 0).then(|| (mmu.clone(), None))).collect();
        let mut host = HostMemory::new(cfg.host_bytes / page);
        host.set_pool_chunk(cfg.table_pool_frames);
        Ok(Platform {
            host,
            guest_mem: GuestBacking::new(cfg.guest_bytes / page),
            mmu,
            arch: cfg.arch,
            root: None,
            vcpu: 0,
            parked,
            stats: Stats::default(),
            costs,
            oracle: None,
            handlers: cfg.handlers,
            handler_data: Hpa::new(cfg.host_bytes / page * page),
        })
    }

    /// The guest's vCPUs.
    pub fn vcpus(&self) -> usize {
        self.parked.len()
    }

    /// The vCPU running now.
    pub fn vcpu(&self) -> usize {
        self.vcpu
    }

    /// Makes vCPU `to` the running one: its MMU and root become `mmu` and `root`, the previous
    /// vCPU's are parked. Only [`Machine::switch_vcpu`] calls it, so that the scheme follows.
    fn switch_vcpu(&mut self, to: usize) {
        if to == self.vcpu {
            return;
        }
        let Some((mmu, root)) = self.parked.get_mut(to).and_then(Option::take) else { return };
        let mmu = std::mem::replace(&mut self.mmu, mmu);
        let root = std::mem::replace(&mut self.root, root);
        self.parked[self.vcpu] = Some((mmu, root));
        self.vcpu = to;
        if let Some(oracle) = self.oracle.as_deref_mut() {
            oracle.switch_vcpu(to);
        }
    }

    /// Applies `ops` to the running vCPU's TLB and walk caches, as the hardware executes them.
    pub fn fence(&mut self, ops: &[FlushOp]) {
        for op in ops {
            self.mmu.flush(op);
        }
    }

    /// Turns every MMU's TLB hit memo on or off ([`Tlb::set_memo`](crate::mmu::tlb::Tlb::set_memo)).
    pub fn set_memo(&mut self, on: bool) {
        for mmu in self.mmus_mut() {
            mmu.tlb.set_memo(on);
        }
    }

    /// Starts the platform's and every MMU's counters again from zero.
    pub fn reset_counts(&mut self) {
        self.stats = Stats::default();
        for mmu in self.mmus_mut() {
            mmu.reset_counts();
        }
    }

    /// Every vCPU's MMU, the running one's first.
    pub fn mmus_mut(&mut self) -> impl Iterator<Item = &mut Mmu> + '_ {
        std::iter::once(&mut self.mmu).chain(self.parked.iter_mut().flatten().map(|(m, _)| m))
    }

    /// Guest accesses simulated (user and kernel) since counting started: each ended in one L1
    /// hit, L2 hit or miss of some vCPU's MMU ([`Machine::access`]).
    pub fn accesses(&self) -> u64 {
        self.mmu_stats().lookups()
    }

    /// Every vCPU's MMU counters added together.
    pub fn mmu_stats(&self) -> crate::mmu::MmuStats {
        let mut total = self.mmu.stats();
        for (mmu, _) in self.parked.iter().flatten() {
            total.add(&mmu.stats());
        }
        total
    }

    /// Maps guest memory with `page`-sized host pages from now on (before anything is backed).
    pub fn set_host_page(&mut self, page: HostPage) {
        self.guest_mem.set_host_page(page);
    }

    /// The largest host page that maps the guest frame `gfn` ([`GuestBacking::host_page_at`]):
    /// no TLB entry may map guest memory with a larger page.
    pub fn host_page_at(&self, gfn: Gfn) -> PageSize {
        self.guest_mem.host_page_at(gfn)
    }

    /// The host frame behind `gfn`, backing it on first use.
    pub fn back(&mut self, gfn: Gfn) -> Result<Option<crate::addr::Hfn>, MemError> {
        self.guest_mem.back(gfn, &mut self.host)
    }

    /// The HPA backing `gpa`, or `None` outside guest memory.
    pub fn gpa_to_hpa(&mut self, gpa: Gpa) -> Result<Option<Hpa>, MemError> {
        Ok(self
            .back(gpa.page())?
            .map(|hfn| Hpa::new(hfn.addr().as_u64() | gpa.page_offset(PageSize::Size4K))))
    }

    /// Reads the guest word at `gpa` (no modelled cost: a software or kernel access).
    pub fn read_guest_u64(&mut self, gpa: Gpa) -> Result<u64, MemError> {
        Ok(self.gpa_to_hpa(gpa)?.map_or(0, |hpa| self.host.read_u64(hpa)))
    }

    /// The current guest root.
    pub fn current_root(&self) -> Result<GuestRoot, SimError> {
        self.root.ok_or_else(|| SimError::Config("the guest has not set a page-table root".into()))
    }

    /// Hands a translation to the TLB: the one door every scheme fills the TLB through, so that
    /// the translation oracle (`--verify`) can check each translation before it is used. With
    /// the oracle on, a translation the guest's table does not allow is [`SimError::Oracle`] and
    /// does not enter the TLB.
    pub fn fill_tlb(
        &mut self,
        gva: Gva,
        size: PageSize,
        base: Hpa,
        global: bool,
        allow: crate::paging::AllowMask,
    ) -> Result<(), SimError> {
        if self.oracle.is_some() {
            self.verify_fill(gva, Translation::of_fill(gva, size, base, global, allow))?;
        }
        self.mmu.fill(gva, size, base, global, allow);
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn verify_fill(&mut self, gva: Gva, filled: Translation) -> Result<(), SimError> {
        // The oracle reads the rest of the platform while it updates itself.
        let Some(mut oracle) = self.oracle.take() else { return Ok(()) };
        let checked = oracle.check(self, gva, filled);
        self.oracle = Some(oracle);
        checked.map_err(SimError::Oracle)
    }

    /// Charges a walk's references and returns its cycles. With a software-refilled TLB the walk
    /// ran in the hardware-mode refill handler: one `tlb_refill` trap and the software cost of
    /// each entry it read come on top.
    pub fn account_walk(&mut self) -> u64 {
        let lat = self.costs.pt_latency();
        let cycles = self.mmu.account_walk(&lat);
        self.stats.cycles.walk.charge(cycles);
        if self.arch.refill == Refill::Software {
            self.charge_refill_trap();
        }
        cycles
    }

    /// Counts a VM exit and runs its handler's footprint through the vCPU's TLB and caches.
    #[inline]
    pub fn vm_exit(&mut self, cause: ExitCause) {
        self.stats.exit(cause);
        self.mmu.run_handler(&self.handlers.exit, self.handler_data);
    }

    /// Counts a hardware-mode trap and runs its handler's footprint through the vCPU's TLB and
    /// caches.
    #[inline]
    pub fn hw_trap(&mut self, cause: TrapCause) {
        self.stats.trap(cause);
        let data = Hpa::new(self.handler_data.as_u64() + (1 << 20));
        self.mmu.run_handler(&self.handlers.trap, data);
    }

    /// A VM exit whose handler touched `entries` table entries: counted, with its footprint, and
    /// charged `vm_exit + hv_per_entry × entries`.
    pub fn exit_with_work(&mut self, cause: ExitCause, entries: u64) {
        self.vm_exit(cause);
        self.stats.cycles.vm_exit.charge(self.costs.vm_exit + self.costs.hv_per_entry * entries);
    }

    /// A hardware-mode trap whose handler touched `entries` table entries, charged at the
    /// hypervisor's per-entry cost (assumption).
    pub fn trap_with_work(&mut self, cause: TrapCause, entries: u64) {
        self.hw_trap(cause);
        self.stats.cycles.hw_trap.charge(self.costs.hw_trap + self.costs.hv_per_entry * entries);
    }

    /// Tells the oracle, if on, that the running vCPU executed `ops`: it forgets what they cover.
    fn oracle_forget(&mut self, ops: &[FlushOp]) {
        if let Some(oracle) = self.oracle.as_deref_mut() {
            for op in ops {
                oracle.flush(op, self.mmu.vmid(), self.mmu.asid());
            }
        }
    }

    /// One software refill: the trap round trip and the handler's per-entry work for the walk
    /// in the trace.
    pub fn charge_refill_trap(&mut self) {
        let entries = self.mmu.trace.total() as u64;
        self.hw_trap(TrapCause::TlbRefill);
        let cost = self.costs.hw_trap + self.costs.refill_per_entry * entries;
        self.stats.cycles.hw_trap.charge(cost);
    }
}

/// A memory-virtualization scheme: what the hardware walks on a TLB miss, how the hypervisor
/// learns of guest page-table changes, and what guest root switches and flushes cost.
///
/// Each hook receives the [`Platform`]; the scheme keeps its own tables (nested, shadow) and
/// counts its exits and traps in `p.stats`.
pub trait Scheme {
    /// Whether the machine's TLB is an emulator's *software* TLB (`softmmu`): then every access
    /// costs `costs.soft_tlb_lookup` (the inline lookup of translated code) instead of
    /// `costs.tlb_l1_hit`. A constant, so the hot path of every other scheme is unchanged.
    const SOFTWARE_TLB: bool = false;

    /// The scheme's name as the command line spells it.
    fn name(&self) -> &'static str;

    /// `SOFTWARE_TLB` schemes only: the access the software TLB translated to `hpa` now goes to
    /// memory through the host's own MMU. Called for every access that did not fault.
    fn host_data_access(&mut self, p: &mut Platform, hpa: Hpa, access: Access) -> Result<(), Stop> {
        let _ = (p, hpa, access);
        Ok(())
    }

    /// The TLB (both levels) missed, or hit without the needed permission: translate `gva` and
    /// fill the TLB, or report a guest fault.
    fn tlb_miss(&mut self, p: &mut Platform, gva: Gva, access: Access) -> Result<Hpa, Stop>;

    /// The guest stored `new` over `old` in the 8-byte word at `gpa` (a page-table write, or any
    /// store the guest kernel makes through its direct map).
    fn guest_store(
        &mut self,
        p: &mut Platform,
        gpa: Gpa,
        old: u64,
        new: u64,
    ) -> Result<(), SimError> {
        let _ = (p, gpa, old, new);
        Ok(())
    }

    /// The guest kernel wrote a whole data frame (zeroing or copying a page).
    fn guest_frame_written(&mut self, p: &mut Platform, gfn: Gfn) -> Result<(), SimError> {
        let _ = (p, gfn);
        Ok(())
    }

    /// The guest executed a TLB-maintenance operation. By default the hardware applies it.
    fn guest_flush(&mut self, p: &mut Platform, op: FlushOp) -> Result<(), SimError> {
        p.mmu.flush(&op);
        Ok(())
    }

    /// The guest switched its page-table root. By default the new root is simply installed.
    fn guest_root_switch(&mut self, p: &mut Platform, root: GuestRoot) -> Result<(), SimError> {
        p.root = Some(root);
        p.mmu.set_asid(root.asid);
        Ok(())
    }

    /// Scheme-specific counters for the report (nested leaves, shadow pages, ...).
    fn counters(&self, out: &mut std::collections::BTreeMap<&'static str, u64>) {
        let _ = out;
    }

    /// Zeroes the scheme's event counters (fills, syncs, ...) at the end of a warm-up; what
    /// describes its state (pages in use, leaves mapped) stays.
    fn reset_counters(&mut self) {}

    /// The guest made an SBI remote-fence call asking for `ops` on several vCPUs: the call's
    /// cost, and (for a scheme with shared translation tables) the maintenance the fences ask
    /// for, done once. By default the hypervisor serves it: one VM exit (KVM's SBI RFENCE).
    fn remote_fence_call(&mut self, p: &mut Platform, ops: &[FlushOp]) -> Result<(), SimError> {
        let _ = ops;
        p.exit_with_work(ExitCause::RemoteFence, 0);
        Ok(())
    }

    /// Applies an SBI remote fence's `ops` on the running vCPU, the caller's own (`local`) or
    /// another. By default the hypervisor flushes the vCPU's guest TLB entries of their scope
    /// (`hfence.vvma`), kicking another vCPU out with a VM exit to do so.
    fn remote_fence_apply(
        &mut self,
        p: &mut Platform,
        ops: &[FlushOp],
        local: bool,
    ) -> Result<(), SimError> {
        p.fence(ops);
        if !local {
            p.exit_with_work(ExitCause::RemoteFence, 0);
        }
        Ok(())
    }

    /// A broadcast invalidation of `ops` reached the running vCPU: nothing more by default (the
    /// fences are already applied to its TLB).
    fn broadcast_received(&mut self, p: &mut Platform, ops: &[FlushOp]) -> Result<(), SimError> {
        let _ = (p, ops);
        Ok(())
    }

    /// The guest sent an inter-processor interrupt: by default the hypervisor emulates the
    /// interrupt-command write, a VM exit (posted interrupts deliver it without another).
    fn ipi_sent(&mut self, p: &mut Platform) {
        p.exit_with_work(ExitCause::Ipi, 0);
    }

    /// vCPU `to` runs from now on instead of vCPU `from`: a scheme with per-vCPU state (the
    /// shadow table the hardware walks, a root buffer) swaps it.
    fn vcpu_switched(&mut self, from: usize, to: usize) {
        let _ = (from, to);
    }

    /// The guest freed an address space whose root was `root`.
    fn guest_address_space_freed(
        &mut self,
        p: &mut Platform,
        root: GuestRoot,
    ) -> Result<(), SimError> {
        let _ = (p, root);
        Ok(())
    }
}

/// A platform driven by a scheme.
#[derive(Debug)]
pub struct Machine<S: Scheme> {
    /// Memory, MMU, counters.
    pub platform: Platform,
    /// The scheme.
    pub scheme: S,
}

impl<S: Scheme> Machine<S> {
    /// Joins a platform and a scheme.
    pub fn new(platform: Platform, scheme: S) -> Self {
        Machine { platform, scheme }
    }

    /// Turns the translation oracle on (`--verify`): from now on every translation the scheme
    /// fills the TLB with is checked against the guest's table, and a violation stops the run.
    pub fn enable_oracle(&mut self) {
        self.platform.oracle = Some(Box::new(Oracle::new(self.scheme.name())));
    }

    /// Runs vCPU `to` from now on: the platform swaps in its MMU and root, and the scheme its
    /// own per-vCPU state ([`Scheme::vcpu_switched`]).
    pub fn switch_vcpu(&mut self, to: usize) {
        let from = self.platform.vcpu;
        if to != from && to < self.platform.vcpus() {
            self.platform.switch_vcpu(to);
            self.scheme.vcpu_switched(from, to);
        }
    }

    /// Ends a warm-up: every event counter (platform, MMU, oracle, scheme) restarts from zero,
    /// while TLBs, caches and tables keep what the warm-up left in them.
    pub fn reset_counts(&mut self) {
        let p = &mut self.platform;
        p.reset_counts();
        if let Some(oracle) = p.oracle.as_deref_mut() {
            oracle.reset_counts();
        }
        self.scheme.reset_counters();
    }

    /// One guest access: the L1 TLB, else the L2, else the scheme's miss path.
    ///
    /// Every access ends in exactly one of the MMU's L1 hits, L2 hits and misses, so that those
    /// count the accesses ([`Platform::accesses`]), and an L1 hit's cycles are charged from the
    /// count ([`Machine::cycles`]): a hit counts once, in one counter.
    #[inline(always)]
    pub fn access(&mut self, gva: Gva, access: Access) -> Result<Hpa, Stop> {
        if let Some(frame) = self.memo_hit(gva, access) {
            return Ok(Hpa::new(frame.addr().as_u64() | gva.page_offset(PageSize::Size4K)));
        }
        self.access_general(gva, access)
    }

    /// [`Machine::access_past_memo`] out of line, for [`Machine::access`].
    #[inline(never)]
    fn access_general(&mut self, gva: Gva, access: Access) -> Result<Hpa, Stop> {
        self.access_past_memo(gva, access)
    }

    /// The host frame of an access the hit memo of a hardware TLB answers (counted as an L1
    /// hit), or `None`: then [`Machine::access_past_memo`] makes the access. The hit path,
    /// inlined into the guest's accesses; everything else is out of line.
    #[inline(always)]
    pub fn memo_hit(&mut self, gva: Gva, access: Access) -> Option<Hfn> {
        if S::SOFTWARE_TLB {
            return None;
        }
        self.platform.mmu.memo_hit(gva, access)
    }

    /// [`Machine::access`] past the hit memo: the L1 TLB's search (a software TLB's whole
    /// lookup, the memo included), then the L2 and the scheme's miss path. Inlined into the out
    /// of line paths that call it (the guest's, [`Machine::access`]'s), so that a miss of the
    /// memo costs one call.
    #[inline]
    pub fn access_past_memo(&mut self, gva: Gva, access: Access) -> Result<Hpa, Stop> {
        let p = &mut self.platform;
        // A hardware TLB's memo was asked already, inline.
        let hit = if S::SOFTWARE_TLB {
            p.mmu.lookup_l1(gva, access)
        } else {
            p.mmu.search_l1(gva, access)
        };
        let hpa = match hit {
            Some(hpa) => hpa,
            None => self.access_slow(gva, access)?,
        };
        if S::SOFTWARE_TLB {
            self.scheme.host_data_access(&mut self.platform, hpa, access)?;
        }
        Ok(hpa)
    }

    /// The cycles charged so far by category, the L1 TLB hits' included: those are charged
    /// here, from the MMU's count, at [`Costs::tlb_l1_hit`] each (a software TLB's inline
    /// lookup, [`Costs::soft_tlb_lookup`]), rather than one by one on the hit path.
    pub fn cycles(&self) -> Cycles {
        let p = &self.platform;
        let per_hit = if S::SOFTWARE_TLB { p.costs.soft_tlb_lookup } else { p.costs.tlb_l1_hit };
        let mut cycles = p.stats.cycles;
        cycles.tlb.charge(p.mmu_stats().l1_hits.saturating_mul(per_hit));
        cycles
    }

    #[cold]
    #[inline(never)]
    fn access_slow(&mut self, gva: Gva, access: Access) -> Result<Hpa, Stop> {
        let p = &mut self.platform;
        if let Some(hpa) = p.mmu.lookup_l2(gva, access) {
            // A software TLB's second level is the victim TLB, probed after the inline miss.
            let inline = if S::SOFTWARE_TLB { p.costs.soft_tlb_lookup } else { 0 };
            p.stats.cycles.tlb.charge(p.costs.tlb_l2_hit + inline);
            return Ok(hpa);
        }
        // A software TLB has no second level: the miss cost the failed inline lookup.
        let cost = if S::SOFTWARE_TLB { p.costs.soft_tlb_lookup } else { p.costs.tlb_l2_hit };
        p.stats.cycles.tlb.charge(cost);
        if p.oracle.is_some() {
            return self.tlb_miss_verified(gva, access);
        }
        self.scheme.tlb_miss(p, gva, access)
    }

    /// The scheme's miss path with the oracle told which access it serves, so that a violation
    /// can name it.
    fn tlb_miss_verified(&mut self, gva: Gva, access: Access) -> Result<Hpa, Stop> {
        let serving = |p: &mut Platform, access| {
            if let Some(oracle) = p.oracle.as_deref_mut() {
                oracle.serving(access);
            }
        };
        serving(&mut self.platform, Some((gva, access)));
        let result = self.scheme.tlb_miss(&mut self.platform, gva, access);
        serving(&mut self.platform, None);
        result
    }

    /// A guest store of `value` to the word at `gpa`, made by the guest kernel (page-table
    /// updates included). The scheme sees it after it lands.
    pub fn guest_store(&mut self, gpa: Gpa, value: u64) -> Result<(), SimError> {
        let p = &mut self.platform;
        let Some(hpa) = p.gpa_to_hpa(gpa)? else {
            return Err(SimError::Config(format!("guest store to {gpa} outside guest memory")));
        };
        let old = p.host.read_u64(hpa);
        p.host.write_u64(hpa, value);
        self.scheme.guest_store(p, gpa, old, value)
    }

    /// A guest TLB-maintenance operation. The oracle, if on, forgets the translations it
    /// covers before the scheme handles it.
    pub fn guest_flush(&mut self, op: FlushOp) -> Result<(), SimError> {
        let p = &mut self.platform;
        p.stats.count_flush(&op);
        p.oracle_forget(std::slice::from_ref(&op));
        self.scheme.guest_flush(p, op)
    }

    /// An SBI remote fence (`sbi_remote_sfence_vma[_asid]`): the guest on the running vCPU asks
    /// for `ops` on every vCPU whose bit is set in `targets`, its own included. The scheme
    /// serves the call ([`Scheme::remote_fence_call`]), then applies the fences on each target
    /// ([`Scheme::remote_fence_apply`]); the oracle forgets what each target's fences cover.
    pub fn remote_fence(&mut self, ops: &[FlushOp], targets: u64) -> Result<(), SimError> {
        let home = self.platform.vcpu;
        for op in ops {
            self.platform.stats.count_flush(op);
        }
        self.scheme.remote_fence_call(&mut self.platform, ops)?;
        for t in (0..self.platform.vcpus()).filter(|&t| targets & (1 << t) != 0) {
            self.switch_vcpu(t);
            self.platform.oracle_forget(ops);
            self.scheme.remote_fence_apply(&mut self.platform, ops, t == home)?;
        }
        self.switch_vcpu(home);
        Ok(())
    }

    /// A broadcast invalidation (INVLPGB, `TLBI ...IS`): `ops`, which the running vCPU has just
    /// executed as ordinary flushes, reach the TLBs of the other vCPUs in `targets` (a bit each)
    /// in hardware, with no interrupt and no exit; a scheme with per-vCPU tables keeps them in
    /// step ([`Scheme::broadcast_received`]).
    pub fn broadcast_fence(&mut self, ops: &[FlushOp], targets: u64) -> Result<(), SimError> {
        let home = self.platform.vcpu;
        for t in (0..self.platform.vcpus()).filter(|&t| t != home && targets & (1 << t) != 0) {
            self.switch_vcpu(t);
            self.platform.oracle_forget(ops);
            self.platform.fence(ops);
            self.scheme.broadcast_received(&mut self.platform, ops)?;
        }
        self.switch_vcpu(home);
        Ok(())
    }

    /// The guest on the running vCPU sends one inter-processor interrupt (x86's TLB shootdown):
    /// its cost, or its VM exit.
    pub fn ipi(&mut self) {
        self.scheme.ipi_sent(&mut self.platform);
    }

    /// A guest page-table-root switch.
    pub fn guest_root_switch(&mut self, root: GuestRoot) -> Result<(), SimError> {
        self.platform.stats.root_switches += 1;
        self.scheme.guest_root_switch(&mut self.platform, root)
    }

    /// A table store for guest tables that goes through this machine (so schemes see every
    /// store), allocating table pages with `alloc`.
    pub fn guest_tables<'a, A: FnMut() -> Result<Gfn, MemError>>(
        &'a mut self,
        alloc: A,
    ) -> GuestTableStore<'a, S, A> {
        GuestTableStore { machine: self, alloc, error: None, stores: 0, tables: 0 }
    }
}

/// [`TableStore`] for guest tables: loads read guest memory, stores go through
/// [`Machine::guest_store`], new tables come from the guest's frame allocator.
#[derive(Debug)]
pub struct GuestTableStore<'a, S: Scheme, A> {
    machine: &'a mut Machine<S>,
    alloc: A,
    /// The first simulator error a store hit (stores cannot fail through the trait).
    pub error: Option<SimError>,
    /// Stores made.
    pub stores: u64,
    /// Tables allocated.
    pub tables: u64,
}

impl<S: Scheme, A: FnMut() -> Result<Gfn, MemError>> TableStore<GuestPhys>
    for GuestTableStore<'_, S, A>
{
    fn load(&mut self, addr: Gpa) -> u64 {
        self.machine.platform.read_guest_u64(addr).unwrap_or(0)
    }

    fn store(&mut self, addr: Gpa, value: u64) {
        self.stores += 1;
        if let Err(e) = self.machine.guest_store(addr, value) {
            self.error.get_or_insert(e);
        }
    }

    fn alloc_table(&mut self, _bytes: u64) -> Result<Gpa, MemError> {
        let gfn = (self.alloc)()?;
        self.tables += 1;
        // Zero it as the kernel does (a frame write the scheme sees).
        let p = &mut self.machine.platform;
        if let Some(hfn) = p.back(gfn)? {
            p.host.zero_frame(hfn);
        }
        if let Err(e) = self.machine.scheme.guest_frame_written(&mut self.machine.platform, gfn) {
            self.error.get_or_insert(e);
        }
        Ok(gfn.addr())
    }
}

/// [`TableStore`] for hypervisor tables in host memory (nested and shadow tables).
#[derive(Debug)]
pub struct HostTableStore<'a> {
    /// Host memory.
    pub host: &'a mut HostMemory,
    /// The pool its single-page tables come from.
    pub pool: TablePool,
}

impl TableStore<crate::addr::HostPhys> for HostTableStore<'_> {
    fn load(&mut self, addr: Hpa) -> u64 {
        self.host.read_u64(addr)
    }

    fn store(&mut self, addr: Hpa, value: u64) {
        self.host.write_u64(addr, value);
    }

    fn alloc_table(&mut self, bytes: u64) -> Result<Hpa, MemError> {
        let frames = bytes.div_ceil(PageSize::Size4K.bytes()).max(1);
        let first = if frames == 1 {
            self.host.alloc_table_frame(self.pool)?
        } else {
            self.host.alloc_contiguous(frames, frames)?
        };
        Ok(first.addr())
    }
}
