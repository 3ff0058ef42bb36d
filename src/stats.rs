//! What a run counts, beyond what the MMU counts itself: VM exits and hardware-mode traps by
//! cause, flushes by kind, guest faults and cycles by category.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::mmu::FlushOp;

macro_rules! cause_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $label:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }
        impl $name {
            /// Every cause, in report order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];
            /// The name used in reports and JSON.
            pub const fn name(self) -> &'static str {
                match self { $($name::$variant => $label,)* }
            }
        }
    };
}

cause_enum!(
    /// Why the guest left to the hypervisor.
    ExitCause {
        /// A nested-table (G-stage/EPT) fault: the hypervisor creates the entry.
        NestedFault => "nested_fault",
        /// A store to a write-protected guest page-table page.
        WriteProtect => "write_protect",
        /// A shadow-table miss that the hypervisor fills.
        ShadowFault => "shadow_fault",
        /// A true guest fault, injected into the guest.
        GuestFaultInjection => "guest_fault_injection",
        /// A store to a clean page: dirty-bit emulation.
        DirtyEmulation => "dirty_emulation",
        /// A guest page-table-root switch.
        RootSwitch => "root_switch",
        /// An intercepted TLB flush.
        Flush => "flush",
        /// A shadow-root-buffer miss.
        BufferMiss => "buffer_miss",
        /// An inter-processor interrupt sent by the guest (x86: the ICR write the hypervisor
        /// emulates).
        Ipi => "ipi",
        /// An SBI remote fence the hypervisor serves (RISC-V `sbi_remote_sfence_vma`), or a
        /// vCPU kicked out to apply one.
        RemoteFence => "remote_fence",
    }
);

cause_enum!(
    /// Why the hardware entered hardware mode (M-mode, PALcode, HMcode) without a VM exit.
    TrapCause {
        /// A TLB flush intercepted in hardware mode.
        Flush => "flush",
        /// A root switch served from the shadow-root buffer.
        RootSwitch => "root_switch",
        /// A software TLB refill.
        TlbRefill => "tlb_refill",
        /// A shadow leaf filled in hardware mode.
        LeafFill => "leaf_fill",
        /// A true guest fault delivered to the guest from hardware mode.
        GuestFault => "guest_fault",
        /// An SBI remote fence served in hardware mode (M-mode), or the M-mode interrupt that
        /// applies it on another hart.
        RemoteFence => "remote_fence",
    }
);

/// Cycles by category.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Cycles {
    /// TLB lookups.
    pub tlb: u64,
    /// Page-table walks (hardware or software).
    pub walk: u64,
    /// VM exits and hypervisor work.
    pub vm_exit: u64,
    /// Hardware-mode traps and handlers.
    pub hw_trap: u64,
    /// Guest-kernel work.
    pub guest_kernel: u64,
    /// Workload compute between accesses.
    pub compute: u64,
    /// Emulator work outside translated code (`softmmu` refill helpers; `hspt-*` signal
    /// handlers and their `mmap`/`mprotect` calls).
    pub emulator: u64,
}

impl Cycles {
    /// The sum of every category (saturating; see [`Cycles::checked_total`]).
    pub fn total(&self) -> u64 {
        self.checked_total().unwrap_or(u64::MAX)
    }

    /// The sum of every category, `None` if a category saturated or the sum does not fit in
    /// 64 bits: the costs are too large for the run, and no number would be right.
    pub fn checked_total(&self) -> Option<u64> {
        let all = [
            self.tlb,
            self.walk,
            self.vm_exit,
            self.hw_trap,
            self.guest_kernel,
            self.compute,
            self.emulator,
        ];
        all.iter().try_fold(0u64, |sum, &c| (c != u64::MAX).then(|| sum.checked_add(c)).flatten())
    }
}

/// Adding cycles to a counter without ever wrapping: a sum that would pass `u64::MAX` stays
/// there, where [`Cycles::checked_total`] sees it and the run fails instead of reporting a
/// wrapped, plausible-looking number.
pub trait Charge {
    /// Adds `cycles`, saturating.
    fn charge(&mut self, cycles: u64);
}

impl Charge for u64 {
    #[inline(always)]
    fn charge(&mut self, cycles: u64) {
        *self = self.saturating_add(cycles);
    }
}

/// Counters of one run. Accesses and L1 TLB hits are not here: the MMU counts them
/// ([`Platform::accesses`](crate::machine::Platform::accesses)), and the L1 hits' TLB cycles are
/// added to `cycles.tlb` when read ([`Machine::cycles`](crate::machine::Machine::cycles)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// VM exits by cause.
    pub exits: [u64; ExitCause::ALL.len()],
    /// Hardware-mode traps by cause.
    pub traps: [u64; TrapCause::ALL.len()],
    /// Guest page faults delivered to the guest.
    pub guest_faults: u64,
    /// Flushes by kind.
    pub flushes: BTreeMap<&'static str, u64>,
    /// Guest root switches.
    pub root_switches: u64,
    /// Cycles by category.
    pub cycles: Cycles,
}

impl Stats {
    /// Counts one VM exit.
    #[inline]
    pub fn exit(&mut self, cause: ExitCause) {
        self.exits[cause as usize] += 1;
    }

    /// Counts one hardware-mode trap.
    #[inline]
    pub fn trap(&mut self, cause: TrapCause) {
        self.traps[cause as usize] += 1;
    }

    /// VM exits for `cause`.
    pub fn exits_for(&self, cause: ExitCause) -> u64 {
        self.exits[cause as usize]
    }

    /// Traps for `cause`.
    pub fn traps_for(&self, cause: TrapCause) -> u64 {
        self.traps[cause as usize]
    }

    /// All VM exits.
    pub fn total_exits(&self) -> u64 {
        self.exits.iter().sum()
    }

    /// All hardware-mode traps.
    pub fn total_traps(&self) -> u64 {
        self.traps.iter().sum()
    }

    /// Counts a flush by its kind.
    pub fn count_flush(&mut self, op: &FlushOp) {
        *self.flushes.entry(op.name()).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_saturates_and_the_checked_total_then_refuses() {
        let mut cycles = Cycles { tlb: u64::MAX - 2, ..Cycles::default() };
        cycles.walk.charge(5);
        assert_eq!(cycles.checked_total(), None, "the sum passes 2^64");
        cycles.walk = 0;
        assert_eq!(cycles.checked_total(), Some(u64::MAX - 2));
        cycles.tlb.charge(7);
        assert_eq!(cycles.tlb, u64::MAX, "a charge stays at the maximum instead of wrapping");
        assert_eq!(cycles.checked_total(), None, "a saturated category is never a total");
        assert_eq!(cycles.total(), u64::MAX);
    }
}
