//! `native`: no hypervisor. The hardware walks the guest's own table; guest-physical memory is
//! the machine's memory (each guest frame is backed by a host frame on first use, at no cost).

use crate::addr::{Gva, Hpa};
use crate::machine::{Platform, Scheme, SimError, Stop};
use crate::mem::OutsideGuestMemory;
use crate::mmu::FlushOp;
use crate::mmu::TranslationFault;
use crate::paging::walk::{WalkError, WalkFault};
use crate::paging::{Access, FaultKind};
use crate::stats::{Charge, TrapCause};

/// The native baseline.
#[derive(Debug, Clone, Copy, Default)]
pub struct Native;

impl Scheme for Native {
    fn name(&self) -> &'static str {
        "native"
    }

    fn tlb_miss(&mut self, p: &mut Platform, gva: Gva, access: Access) -> Result<Hpa, Stop> {
        let root = p.current_root()?;
        let regime = p.arch.guest_regime;
        let result =
            p.mmu.walk_native(&mut p.host, &mut p.guest_mem, &root.table, &regime, gva, access);
        p.account_walk();
        let fault = |kind| {
            let f = WalkFault {
                kind,
                level: root.table.format().root_level(),
                perms: crate::paging::Perms::empty(),
            };
            Stop::GuestFault(TranslationFault::first_stage(gva, access, root.table.format(), f))
        };
        let leaf = match result {
            Ok(leaf) => leaf,
            Err(WalkError::Fault(f)) => {
                p.stats.guest_faults += 1;
                return Err(Stop::GuestFault(TranslationFault::first_stage(
                    gva,
                    access,
                    root.table.format(),
                    f,
                )));
            }
            Err(WalkError::Memory(OutsideGuestMemory::Unbacked(_))) => {
                p.stats.guest_faults += 1;
                return Err(fault(FaultKind::AccessFault));
            }
            Err(WalkError::Memory(OutsideGuestMemory::Host(e))) => {
                return Err(Stop::Error(SimError::Memory(e)))
            }
        };
        let gpa = leaf.output(gva);
        let Some(hpa) = p.gpa_to_hpa(gpa)? else {
            p.stats.guest_faults += 1;
            return Err(fault(FaultKind::AccessFault));
        };
        let allow = root.table.format().allow_mask(leaf.perms, leaf.dirty, &regime);
        // Guest memory is host-contiguous in 2 MiB chunks only, so a 1 GiB guest page is cached
        // as 2 MiB pieces.
        let size = leaf.size.min(crate::mem::backing::CHUNK_SIZE);
        p.fill_tlb(gva, size, hpa, leaf.global, allow)?;
        Ok(hpa)
    }

    /// The SBI call traps to the firmware in M-mode (OpenSBI), which fences this hart itself.
    fn remote_fence_call(&mut self, p: &mut Platform, _ops: &[FlushOp]) -> Result<(), SimError> {
        p.trap_with_work(TrapCause::RemoteFence, 0);
        Ok(())
    }

    /// The firmware's M-mode interrupt runs the fences on another hart.
    fn remote_fence_apply(
        &mut self,
        p: &mut Platform,
        ops: &[FlushOp],
        local: bool,
    ) -> Result<(), SimError> {
        p.fence(ops);
        if !local {
            p.trap_with_work(TrapCause::RemoteFence, 0);
        }
        Ok(())
    }

    /// An interrupt-command write, no hypervisor in the way.
    fn ipi_sent(&mut self, p: &mut Platform) {
        p.stats.cycles.guest_kernel.charge(p.costs.ipi_send);
    }
}
