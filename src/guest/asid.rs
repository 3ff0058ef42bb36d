//! ASID/PCID assignment as Linux does it, per architecture.
//!
//! RISC-V (`arch/riscv/mm/context.c`): every address space gets its own ASID until they run out;
//! then a new generation starts, every ASID is reassigned lazily and the whole TLB is flushed.
//! x86-64 (`arch/x86/mm/tlb.c`, `choose_new_asid`): each CPU caches `TLB_NR_DYN_ASIDS` address
//! spaces; a space that is not cached takes the next slot round robin and must flush that PCID.

use crate::addr::Asid;

/// What activating an address space requires besides loading its root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsidFlush {
    /// The ASID still belongs to this address space: switch without flushing.
    None,
    /// The ASID was taken over from another address space: flush it (x86: CR3 load without
    /// the no-flush bit).
    ThisAsid,
    /// A new ASID generation began: flush every ASID (RISC-V `local_flush_tlb_all`).
    Everything,
}

/// How ASIDs are recycled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recycling {
    /// Generations with a full flush at rollover (RISC-V).
    Rollover,
    /// Round-robin slots, flushing the reused one (x86-64).
    RoundRobin,
}

/// The kernel's ASID allocator for one CPU.
#[derive(Clone, Debug)]
pub struct AsidAllocator {
    recycling: Recycling,
    /// Owner (address-space id) of ASID `i + 1`.
    owners: Vec<Option<u64>>,
    next: usize,
}

impl AsidAllocator {
    /// `count` ASIDs (numbered from 1; ASID 0 stays the kernel's).
    pub fn new(count: u32, recycling: Recycling) -> Self {
        let count = usize::try_from(count.max(1)).unwrap_or(1);
        AsidAllocator { recycling, owners: vec![None; count], next: 0 }
    }

    /// The ASID for address space `mm` (whose last ASID was `last`), and the flush it owes.
    pub fn activate(&mut self, mm: u64, last: Option<Asid>) -> (Asid, AsidFlush) {
        if let Some(a) = last {
            let slot = usize::from(a.0).wrapping_sub(1);
            if self.owners.get(slot) == Some(&Some(mm)) {
                return (a, AsidFlush::None);
            }
        }
        // x86: this CPU may hold the space in another slot than the one it last ran with
        // elsewhere (`choose_new_asid` searches the CPU's slots).
        if self.recycling == Recycling::RoundRobin {
            if let Some(a) = self.asid_of(mm) {
                return (a, AsidFlush::None);
            }
        }
        let mut flush = match self.recycling {
            Recycling::RoundRobin => AsidFlush::ThisAsid,
            Recycling::Rollover => AsidFlush::None,
        };
        if self.next == self.owners.len() {
            self.next = 0;
            if self.recycling == Recycling::Rollover {
                self.owners.fill(None);
                flush = AsidFlush::Everything;
            }
        }
        let slot = self.next;
        self.next += 1;
        self.owners[slot] = Some(mm);
        // Slots are at most 65,535, so slot + 1 fits an ASID.
        let asid = Asid(u16::try_from(slot + 1).unwrap_or(u16::MAX));
        (asid, flush)
    }

    /// The ASID `mm` holds here, if any.
    pub fn asid_of(&self, mm: u64) -> Option<Asid> {
        let slot = self.owners.iter().position(|&o| o == Some(mm))?;
        Some(Asid(u16::try_from(slot + 1).unwrap_or(u16::MAX)))
    }

    /// Forgets `mm` (its address space was freed), so its ASID is never reported as current.
    pub fn release(&mut self, mm: u64) {
        for owner in &mut self.owners {
            if *owner == Some(mm) {
                *owner = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn riscv_keeps_asids_until_a_rollover_flushes_everything() {
        let mut a = AsidAllocator::new(2, Recycling::Rollover);
        assert_eq!(a.activate(10, None), (Asid(1), AsidFlush::None));
        assert_eq!(a.activate(11, None), (Asid(2), AsidFlush::None));
        assert_eq!(a.activate(10, Some(Asid(1))), (Asid(1), AsidFlush::None));
        assert_eq!(a.activate(12, None), (Asid(1), AsidFlush::Everything));
        // Space 11 lost its ASID in the rollover.
        assert_eq!(a.activate(11, Some(Asid(2))), (Asid(2), AsidFlush::None));
        assert_eq!(a.activate(10, Some(Asid(1))).1, AsidFlush::Everything);
    }

    #[test]
    fn x86_recycles_slots_round_robin_and_flushes_the_reused_pcid() {
        let mut a = AsidAllocator::new(2, Recycling::RoundRobin);
        assert_eq!(a.activate(1, None), (Asid(1), AsidFlush::ThisAsid));
        assert_eq!(a.activate(2, None), (Asid(2), AsidFlush::ThisAsid));
        assert_eq!(a.activate(1, Some(Asid(1))), (Asid(1), AsidFlush::None));
        assert_eq!(a.activate(3, None), (Asid(1), AsidFlush::ThisAsid));
        assert_eq!(a.activate(1, Some(Asid(1))), (Asid(2), AsidFlush::ThisAsid));
    }
}
