//! Tunables of the guest kernel model. Each default names the Linux code it follows or says that
//! it is an assumption; profiles override them per architecture.

use serde::{Deserialize, Serialize};

/// Parameters of the guest kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelConfig {
    /// Guest accesses a process may make before the round-robin scheduler preempts it
    /// (assumption: a few milliseconds of a memory-bound program).
    pub time_slice: u64,
    /// Pages above which a range flush becomes an address-space-wide flush. RISC-V Linux:
    /// `tlb_flush_all_threshold` = 64; x86-64 Linux: `tlb_single_page_flush_ceiling` = 33.
    pub range_flush_threshold: u64,
    /// ASIDs/PCIDs the kernel hands out. RISC-V Linux uses every ASID the hardware implements
    /// (16 bits: 65,535 besides 0) and rolls over generations with a full flush; x86-64 Linux keeps
    /// `TLB_NR_DYN_ASIDS` = 6 per CPU and recycles them, flushing the recycled PCID.
    pub asids: u32,
    /// Read faults on anonymous memory map the shared zero page read-only, as Linux does; the
    /// first write then replaces it with a private page.
    pub zero_page: bool,
    /// Kernel-mode loads made through the MMU at every kernel entry (fault, system call, context
    /// switch), to the current process's kernel stack in the direct map (assumption: one).
    pub kernel_accesses: u32,
    /// Transparent huge pages for anonymous memory (`/sys/kernel/mm/transparent_hugepage/
    /// enabled`). Default `never`: the published experiments memvirt reproduces ran 4 KiB
    /// guests (distributions ship `madvise` or `always`).
    #[serde(default)]
    pub thp: Thp,
}

/// When the kernel maps 2 MiB pages for anonymous memory (Linux's THP modes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Thp {
    /// 4 KiB pages only.
    #[default]
    Never,
    /// Every anonymous VMA that holds a whole aligned 2 MiB range.
    Always,
    /// Only in ranges the program marked with `madvise(MADV_HUGEPAGE)`.
    Madvise,
}

impl KernelConfig {
    /// Linux on RISC-V.
    pub const RISCV: KernelConfig = KernelConfig {
        time_slice: 1_000_000,
        range_flush_threshold: 64,
        asids: 65_535,
        zero_page: true,
        kernel_accesses: 1,
        thp: Thp::Never,
    };

    /// Linux on x86-64.
    pub const X86_64: KernelConfig =
        KernelConfig { range_flush_threshold: 33, asids: 6, ..Self::RISCV };
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self::RISCV
    }
}
