//! Cycle costs. Every default says where it comes from or that it is an assumption; profiles
//! (TOML) override them.

use crate::config::ConfigError;
use serde::{Deserialize, Serialize};

/// The largest cost any one event may be set to: 2^32 cycles (over a second at 4 GHz). A cost
/// is multiplied by per-event counts (entries, levels, pages) that stay far below 2^32, so
/// every product fits in 64 bits; totals are added saturating and a run whose totals do not fit
/// fails (see [`crate::stats::Cycles::checked_total`]).
pub const MAX_COST: u64 = 1 << 32;

/// Cycle costs of the modelled events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Costs {
    /// An L1 TLB hit (assumption: 1 cycle, overlapped with the cache access).
    pub tlb_l1_hit: u64,
    /// An L2 TLB lookup (assumption: 7 cycles, Skylake STLB latency class).
    pub tlb_l2_hit: u64,
    /// A page-walk-cache hit (DMT's model: 1 cycle).
    pub pwc_hit: u64,
    /// A page-table read served by the L1 data cache (DMT: 4).
    pub pt_l1: u64,
    /// ... by the L2 (DMT: 14).
    pub pt_l2: u64,
    /// ... by the LLC (DMT: 54).
    pub pt_llc: u64,
    /// ... by memory (DMT: 200).
    pub pt_memory: u64,
    /// A VM exit and re-entry, hardware round trip plus minimal handler (AMD SVM measurement on
    /// LKML, 2020: VMRUN round trip ~1,344–1,376 cycles).
    pub vm_exit: u64,
    /// Hypervisor work per page-table entry it reads or writes while handling an exit
    /// (assumption).
    pub hv_per_entry: u64,
    /// A trap into hardware mode (M-mode/PALcode/HMcode) and back (assumption: RISC-V traps are
    /// tens of cycles plus pipeline flush; reference/arch.md §4.9).
    pub hw_trap: u64,
    /// Software work per entry a hardware-mode TLB-refill handler reads, on top of the read
    /// itself (assumption: a handful of instructions — load, valid check, shift and mask — per
    /// entry, as in an Alpha PALcode TB-miss handler).
    pub refill_per_entry: u64,
    /// Guest-kernel page-fault handler entry, work and return, not counting page zeroing or
    /// copying (assumption: ~0.3 µs at 3 GHz, the order of a Linux anonymous fault).
    pub page_fault: u64,
    /// A system call's entry and return (assumption: ~50 ns).
    pub syscall: u64,
    /// A context switch in the guest kernel, scheduler included (assumption: lmbench `lat_ctx`
    /// with tiny working sets is ~1 µs).
    pub context_switch: u64,
    /// Extra kernel work to create a process (fork/exec bookkeeping beyond the page-table
    /// copying memvirt models entry by entry; assumption).
    pub process_create: u64,
    /// Zeroing one 4 KiB page (assumption: 16 bytes per cycle).
    pub page_zero: u64,
    /// Copying one 4 KiB page (assumption: twice the zeroing cost).
    pub page_copy: u64,
    /// Cycles per instruction of the workload's own compute between guest accesses: the one
    /// compute model (see [`Costs::compute_cycles`]). Assumption: 1, an IPC of one.
    pub cycles_per_instruction: u64,
    /// Instructions a built-in workload runs per user memory reference, where no trace says how
    /// many ran (assumption: 2; loads and stores are a third to a half of the instructions of
    /// memory-bound programs).
    pub instructions_per_access: u64,
    /// `softmmu`: the inline software-TLB lookup translated code does before every guest
    /// access, the host's own L1 TLB hit included (assumption: QEMU's fast path is about ten
    /// host instructions — shift, mask, add, load and compare the tag, branch, load the addend,
    /// add — at two or three per cycle).
    pub soft_tlb_lookup: u64,
    /// `softmmu`: a software-TLB miss beyond the walk: leaving translated code for the
    /// `tlb_fill` helper, saving state and `tlb_set_page` (assumption).
    pub soft_tlb_refill: u64,
    /// Emulator work per guest page-table entry its software walk reads or writes (QEMU's
    /// `get_physical_address`, HSPT's SIGSEGV handler): a load through the memory API and the
    /// checks of one level (assumption).
    pub emu_walk_per_entry: u64,
    /// `hspt-*`: a host page fault delivered to the emulator as SIGSEGV, handler entry and
    /// `sigreturn` (assumption: a Linux signal round trip is of the order of a microsecond).
    pub host_signal: u64,
    /// `hspt-*`: one `mmap(MAP_FIXED)` of a guest page into the host region (assumption: a
    /// system call that installs one host PTE, of the order of a microsecond).
    pub host_mmap: u64,
    /// `hspt-*`: one `mprotect` (or whole-region re-`mmap`) invalidating host mappings,
    /// host TLB invalidation included, not counting the per-entry work (assumption).
    pub host_mprotect: u64,
    /// Sending one inter-processor interrupt without a hypervisor (x86: an x2APIC ICR write).
    /// Assumption: a few hundred cycles. Virtualized, the write is a VM exit instead
    /// (`vm_exit`, cause `ipi`).
    #[serde(default = "default_ipi_send")]
    pub ipi_send: u64,
    /// Taking one TLB-shootdown interrupt on the target CPU: interrupt entry, the handler's
    /// bookkeeping and return, not the flush instructions it runs; the initiator waits about
    /// as long for the acknowledgements. Assumption: 1,200 cycles (~0.4 µs), a fraction of the
    /// few microseconds measured for a whole shootdown of one remote core.
    #[serde(default = "default_ipi_receive")]
    pub ipi_receive: u64,
}

fn default_ipi_send() -> u64 {
    300
}

fn default_ipi_receive() -> u64 {
    1_200
}

impl Default for Costs {
    fn default() -> Self {
        Costs {
            tlb_l1_hit: 1,
            tlb_l2_hit: 7,
            pwc_hit: 1,
            pt_l1: 4,
            pt_l2: 14,
            pt_llc: 54,
            pt_memory: 200,
            vm_exit: 1_350,
            hv_per_entry: 50,
            hw_trap: 100,
            refill_per_entry: 8,
            page_fault: 1_000,
            syscall: 150,
            context_switch: 3_000,
            process_create: 20_000,
            page_zero: 256,
            page_copy: 512,
            cycles_per_instruction: 1,
            instructions_per_access: 2,
            soft_tlb_lookup: 4,
            soft_tlb_refill: 200,
            emu_walk_per_entry: 20,
            host_signal: 3_000,
            host_mmap: 3_000,
            host_mprotect: 2_000,
            ipi_send: default_ipi_send(),
            ipi_receive: default_ipi_receive(),
        }
    }
}

impl Costs {
    /// Refuses a cost above [`MAX_COST`], naming it as `costs.NAME`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fields =
            serde_json::to_value(self).map_err(|e| ConfigError::Invalid(format!("costs: {e}")))?;
        let Some(fields) = fields.as_object() else { return Ok(()) };
        for (name, value) in fields {
            let value = value.as_u64().unwrap_or(u64::MAX);
            if value > MAX_COST {
                return Err(ConfigError::Invalid(format!(
                    "costs.{name} = {value} is more than the largest cost, {MAX_COST} cycles \
                     (2^32): counts multiplied by it would overflow the cycle totals"
                )));
            }
        }
        Ok(())
    }

    /// The compute cycles of `instructions` guest instructions: the one compute model every
    /// front end charges (built-in workloads estimate `instructions`, traces count them).
    pub fn compute_cycles(&self, instructions: u64) -> u64 {
        instructions.saturating_mul(self.cycles_per_instruction)
    }

    /// Page-table read latency by cache level (l1, l2, llc, memory).
    pub const fn pt_latency(&self) -> [u64; 4] {
        [self.pt_l1, self.pt_l2, self.pt_llc, self.pt_memory]
    }
}
