//! The guest kernel on several CPUs (`smp.vcpus`): per-CPU run queues, placement of new tasks
//! on the least loaded CPU, an idle CPU pulling a waiting task from the busiest one, threads
//! sharing an address space, and TLB shootdowns as Linux does them:
//!
//! - **RISC-V** (`arch/riscv/mm/tlbflush.c`): a flush of an address space that other harts
//!   have run is one `sbi_remote_sfence_vma_asid` call naming every hart in its `mm_cpumask`,
//!   the caller included, carrying the same fences a local flush would make (the pages of a
//!   range below `tlb_flush_all_threshold`, else the whole ASID). The mask is never cleared:
//!   an ASID-tagged TLB may hold the space's entries after a hart switched away. An ASID
//!   rollover makes every other hart flush everything at its next switch
//!   (`context_tlb_flush_pending`).
//! - **x86-64** (`arch/x86/mm/tlb.c`): the initiator flushes locally and sends one IPI to each
//!   other CPU running the space now, which flushes the same range with its own PCID; the
//!   initiator waits for them. A CPU that ran the space earlier and switched away (or went idle,
//!   lazy TLB mode) gets no IPI: the space's flush generation (`tlb_gen`) has moved past the one
//!   that CPU's PCID was flushed to, so it flushes that PCID when it switches back. PCIDs are per
//!   CPU (`TLB_NR_DYN_ASIDS` each).
//!
//! The simulator runs the CPUs in turn, `smp.quantum` user accesses each, round robin: one
//! deterministic interleaving. With one CPU none of this changes anything.

use std::collections::{BTreeMap, VecDeque};

use crate::addr::{Asid, Gva};
use crate::machine::Scheme;
use crate::mmu::FlushOp;
use crate::stats::Charge;

use super::asid::AsidAllocator;
use super::os::{internal, Os, OsError};
use super::policy::TlbPolicy;
use super::process::Pid;

/// One CPU's share of the kernel, parked while another CPU runs.
#[derive(Debug, Clone, Default)]
pub(super) struct Cpu {
    pub(super) current: Option<Pid>,
    pub(super) run_queue: VecDeque<Pid>,
    pub(super) slice_left: u64,
    pub(super) slice_rest: u64,
    /// x86: this CPU's PCIDs (RISC-V's ASIDs are global).
    pub(super) asids: Option<AsidAllocator>,
    /// x86: the flush generation of each address space this CPU's PCID for it is flushed to.
    pub(super) synced: BTreeMap<u64, u64>,
    /// The address space this CPU's MMU is set to.
    pub(super) loaded: Option<u64>,
}

/// What a flush of one address space covers (`flush_tlb_range` or `flush_tlb_mm`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum MmFlush {
    /// These pages, one fence each (address order).
    Pages(Vec<Gva>),
    /// Every non-global entry of the space.
    All,
}

impl<S: Scheme> Os<S> {
    /// The CPUs.
    pub fn cpus(&self) -> usize {
        self.parked_cpus.len()
    }

    /// The CPU the kernel runs on now.
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// Makes CPU `to` the one the kernel (and the machine) runs on.
    pub(super) fn switch_cpu(&mut self, to: usize) {
        if to == self.cpu || to >= self.cpus() {
            return;
        }
        let Some(mut next) = self.parked_cpus[to].take() else { return };
        // x86 PCIDs are per CPU; RISC-V's ASID allocator is the kernel's, shared.
        let asids = match self.policy {
            TlbPolicy::X86 => next.asids.take().map(|a| std::mem::replace(&mut self.asids, a)),
            TlbPolicy::RiscV => None,
        };
        let old = Cpu {
            current: std::mem::replace(&mut self.current, next.current),
            run_queue: std::mem::replace(&mut self.run_queue, next.run_queue),
            slice_left: std::mem::replace(&mut self.slice_left, next.slice_left),
            slice_rest: std::mem::replace(&mut self.slice_rest, next.slice_rest),
            asids,
            synced: std::mem::replace(&mut self.synced, next.synced),
            loaded: std::mem::replace(&mut self.loaded, next.loaded),
        };
        self.parked_cpus[self.cpu] = Some(old);
        self.cpu = to;
        self.machine.switch_vcpu(to);
    }

    /// Tasks queued on CPU `cpu` (the running one included).
    fn queued(&self, cpu: usize) -> usize {
        if cpu == self.cpu {
            self.run_queue.len()
        } else {
            self.parked_cpus[cpu].as_ref().map_or(usize::MAX, |c| c.run_queue.len())
        }
    }

    /// Queues a new task on the least loaded CPU, the lowest-numbered among equals (Linux's
    /// fork balancing picks the idlest CPU).
    pub(super) fn enqueue_new(&mut self, pid: Pid) {
        let target = (0..self.cpus()).min_by_key(|&c| (self.queued(c), c)).unwrap_or(self.cpu);
        if target == self.cpu {
            self.run_queue.push_back(pid);
        } else if let Some(cpu) = self.parked_cpus[target].as_mut() {
            cpu.run_queue.push_back(pid);
        }
    }

    /// Takes `pid` off whichever run queue holds it.
    pub(super) fn dequeue(&mut self, pid: Pid) {
        self.run_queue.retain(|&p| p != pid);
        for cpu in self.parked_cpus.iter_mut().flatten() {
            cpu.run_queue.retain(|&p| p != pid);
        }
    }

    /// An idle CPU pulls the last waiting task of the busiest CPU (Linux's idle balancing);
    /// `true` if it found one. A running task is never pulled.
    pub(super) fn pull_task(&mut self) -> bool {
        let busiest = self
            .parked_cpus
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
            .filter(|(_, c)| c.run_queue.iter().any(|&p| Some(p) != c.current))
            .max_by_key(|&(i, c)| (c.run_queue.len(), std::cmp::Reverse(i)))
            .map(|(i, _)| i);
        let Some(from) = busiest else { return false };
        let Some(cpu) = self.parked_cpus[from].as_mut() else { return false };
        let current = cpu.current;
        let Some(pos) = cpu.run_queue.iter().rposition(|&p| Some(p) != current) else {
            return false;
        };
        if let Some(pid) = cpu.run_queue.remove(pos) {
            self.run_queue.push_back(pid);
            self.stats.migrations += 1;
            return true;
        }
        false
    }

    /// Whether the running task's time slice is used up (not just this CPU's turn).
    pub fn slice_expired(&self) -> bool {
        self.slice_left == 0 && self.slice_rest == 0
    }

    /// Starts a fresh time slice on this CPU: its first turn is at most one quantum.
    pub(super) fn start_slice(&mut self) {
        let turn = if self.cpus() > 1 { self.quantum } else { u64::MAX };
        self.slice_left = self.cfg.time_slice.min(turn);
        self.slice_rest = self.cfg.time_slice - self.slice_left;
    }

    /// Sets the user accesses of a CPU's turn (`smp.quantum`, at least 1) and whether the
    /// hardware broadcasts invalidations (`smp.broadcast_flush`).
    pub fn set_smp(&mut self, quantum: u64, broadcast: bool) {
        self.quantum = quantum.max(1);
        self.broadcast = broadcast;
    }

    /// Ends this CPU's turn and starts the next CPU's (round robin), continuing the task it
    /// runs for at most one more quantum of its slice.
    pub fn next_cpu(&mut self) {
        let n = self.cpus();
        if n == 1 {
            return;
        }
        let to = (self.cpu + 1) % n;
        self.switch_cpu(to);
        if self.slice_left == 0 && self.slice_rest > 0 {
            self.slice_left = self.slice_rest.min(self.quantum);
            self.slice_rest -= self.slice_left;
        }
    }

    /// The ASID of address space `mm` on this CPU, if it has one here.
    pub(super) fn asid_here(&self, mm: u64) -> Asid {
        let id = self.mms.get(&mm);
        match self.policy {
            TlbPolicy::X86 => self.asids.asid_of(mm),
            TlbPolicy::RiscV => id.and_then(|m| m.asid),
        }
        .unwrap_or_default()
    }

    /// The fences of `what` for address space `mm` on this CPU.
    fn fences(&self, mm: u64, what: &MmFlush) -> Vec<FlushOp> {
        let asid = self.asid_here(mm);
        match what {
            MmFlush::Pages(vas) => vas.iter().map(|&va| self.policy.page(va, asid)).collect(),
            MmFlush::All => vec![self.policy.whole_mm(asid)],
        }
    }

    /// Flushes `what` of task `pid`'s address space everywhere it may be cached: locally when
    /// no other CPU can hold it, else by the architecture's shootdown (module docs).
    pub(super) fn flush_mm(&mut self, pid: Pid, what: MmFlush) -> Result<(), OsError> {
        let mm = self.procs.get(&pid).ok_or_else(|| internal(format!("{pid} is gone")))?.mm;
        self.flush_mm_id(mm, what)
    }

    /// [`flush_mm`](Self::flush_mm) of address space `mm`.
    pub(super) fn flush_mm_id(&mut self, mm: u64, what: MmFlush) -> Result<(), OsError> {
        if let Some(m) = self.mms.get_mut(&mm) {
            m.tlb_gen += 1;
        }
        let gen = self.mms.get(&mm).map_or(0, |m| m.tlb_gen);
        let here = 1u64 << self.cpu;
        let others = match self.policy {
            TlbPolicy::RiscV => self.mms.get(&mm).map_or(0, |m| m.cpus) & !here,
            TlbPolicy::X86 => self.cpus_running(mm) & !here,
        };
        if others == 0 {
            for op in self.fences(mm, &what) {
                self.flush(op)?;
            }
            self.synced.insert(mm, gen);
            return Ok(());
        }
        self.stats.shootdowns += 1;
        if self.broadcast {
            // The ordinary fences, broadcast by the hardware to every other CPU.
            let ops = self.fences(mm, &what);
            for op in &ops {
                self.flush(*op)?;
            }
            self.synced.insert(mm, gen);
            let all = (1u64 << self.cpus()) - 1;
            self.machine.broadcast_fence(&ops, all & !here)?;
            return Ok(());
        }
        match self.policy {
            TlbPolicy::RiscV => {
                let ops = self.fences(mm, &what);
                self.machine.remote_fence(&ops, others | here)?;
            }
            TlbPolicy::X86 => {
                for op in self.fences(mm, &what) {
                    self.flush(op)?;
                }
                self.synced.insert(mm, gen);
                let home = self.cpu;
                for target in (0..self.cpus()).filter(|&c| others & (1 << c) != 0) {
                    self.machine.ipi();
                    self.switch_cpu(target);
                    self.charge_kernel(self.machine.platform.costs.ipi_receive);
                    for op in self.fences(mm, &what) {
                        self.flush(op)?;
                    }
                    self.synced.insert(mm, gen);
                    self.switch_cpu(home);
                }
                // The initiator waits for the acknowledgements.
                let wait = self.machine.platform.costs.ipi_receive;
                self.machine.platform.stats.cycles.guest_kernel.charge(wait);
            }
        }
        Ok(())
    }

    /// The CPUs (one bit each) whose running task uses address space `mm`.
    fn cpus_running(&self, mm: u64) -> u64 {
        let uses =
            |pid: Option<Pid>| pid.and_then(|p| self.procs.get(&p)).is_some_and(|p| p.mm == mm);
        let mut mask = u64::from(uses(self.current)) << self.cpu;
        for (i, cpu) in self.parked_cpus.iter().enumerate() {
            if cpu.as_ref().is_some_and(|c| uses(c.current)) {
                mask |= 1 << i;
            }
        }
        mask
    }

    /// `clone(CLONE_VM)`: a new thread of `parent`'s process, sharing its address space,
    /// queued on the least loaded CPU.
    pub fn spawn_thread(&mut self, parent: Pid) -> Result<Pid, OsError> {
        self.syscall()?;
        let mm = self.procs.get(&parent).ok_or_else(|| internal(format!("{parent} is gone")))?.mm;
        if let Some(m) = self.mms.get_mut(&mm) {
            m.users += 1;
        }
        self.add_task(mm)
    }
}
