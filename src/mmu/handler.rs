//! What a VM exit's or a hardware-mode trap's handler leaves behind in the vCPU's translation
//! structures: the handler runs on the same core, so its own data accesses take TLB entries
//! and cache lines the guest was using, and some hypervisors flush the guest's TLB on every
//! exit. Cycles are not charged here (the exit and trap costs include the handler's work);
//! what changes is what the guest finds in the TLB and the caches when it resumes.

use serde::{Deserialize, Serialize};

use super::flush::{AsidScope, TlbScope};
use super::tlb::TlbEntry;
use super::Mmu;
use crate::addr::{Asid, Gva, Hpa, PageSize, Vmid};
use crate::config::ConfigError;
use crate::paging::Access;

/// The footprint of one kind of handler (`[handlers]` in a profile).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerFootprint {
    /// Distinct 4 KiB pages of the handler's data, each a TLB entry under the hypervisor's own
    /// context ([`HANDLER_VMID`]); present entries are hit (and so kept), missing ones filled,
    /// evicting what LRU says. 0 for a handler that runs untranslated (RISC-V M-mode).
    pub tlb_pages: u32,
    /// 64-byte lines of the handler's data that pass through the page-table share of the
    /// caches (the caches model only that share: see `mmu.ptcache`).
    pub cache_lines: u32,
    /// The handler flushes every guest TLB entry (a TLB without VMID/VPID tags, or a
    /// hypervisor that flushes on every exit).
    pub flush_guest_tlb: bool,
}

/// The footprints of a VM exit and of a hardware-mode trap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handlers {
    /// A VM exit's handler: the hypervisor.
    pub exit: HandlerFootprint,
    /// A hardware-mode trap's handler (M-mode, Sunway HMcode).
    pub trap: HandlerFootprint,
}

impl Default for Handlers {
    /// The built-in profiles' values (each sourced or marked as an assumption there), for
    /// profile files written before handlers had a footprint.
    fn default() -> Self {
        Handlers {
            exit: HandlerFootprint { tlb_pages: 8, cache_lines: 16, flush_guest_tlb: false },
            trap: HandlerFootprint { tlb_pages: 0, cache_lines: 1, flush_guest_tlb: false },
        }
    }
}

/// Pages or lines a handler may touch at most.
pub const MAX_FOOTPRINT: u32 = 1 << 16;

impl Handlers {
    /// Checks both footprints' sizes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, f) in [("exit", self.exit), ("trap", self.trap)] {
            for (key, value) in [("tlb_pages", f.tlb_pages), ("cache_lines", f.cache_lines)] {
                if value > MAX_FOOTPRINT {
                    return Err(ConfigError::Invalid(format!(
                        "handlers.{name}.{key} must be at most {MAX_FOOTPRINT}, not {value}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The VMID the handlers' TLB entries carry: a hypervisor's own translations are tagged apart
/// from every guest's (RISC-V: V=0 entries; x86: VPID 0), and no guest runs with this one.
pub const HANDLER_VMID: Vmid = Vmid(u16::MAX);

/// Where the handlers' data pages are mapped in the hypervisor's address space (any address
/// serves: the entries are tagged with [`HANDLER_VMID`]).
const HANDLER_VA: u64 = 0xffff_ffc0_0000_0000;

impl Mmu {
    /// Runs a handler with footprint `f` whose data lies at `data` (contiguous, page-aligned):
    /// its pages through the TLB, its lines through the caches, and the guest's TLB flushed if
    /// it flushes. The guest's counters are untouched.
    pub fn run_handler(&mut self, f: &HandlerFootprint, data: Hpa) {
        let page = PageSize::Size4K.bytes();
        for i in 0..u64::from(f.tlb_pages) {
            let va = Gva::new(HANDLER_VA + i * page);
            let access = Access::KERNEL_LOAD;
            let resident = self.tlb.lookup_l1(va, access, HANDLER_VMID, Asid(0)).is_some()
                || self.tlb.lookup_l2(va, access, HANDLER_VMID, Asid(0)).is_some();
            if !resident {
                let hpa = Hpa::new(data.as_u64() + i * page);
                let tags = (HANDLER_VMID, Asid(0), false);
                self.tlb.insert(TlbEntry::new(va, PageSize::Size4K, hpa, tags, access.class_bit()));
            }
        }
        for i in 0..u64::from(f.cache_lines) {
            self.ptcache.access(Hpa::new(data.as_u64() + i * 64));
        }
        if f.flush_guest_tlb {
            let scope =
                TlbScope { vmid: Some(self.vmid()), va: None, asid: AsidScope::All, globals: true };
            self.tlb.flush(&scope);
            self.pwc.flush(&scope);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmu::{MemLevel, MmuConfig};

    fn mmu() -> Mmu {
        let mut m = Mmu::new(&MmuConfig::default()).unwrap();
        m.set_vmid(Vmid(1));
        m
    }

    /// Fills `n` guest 4 KiB translations at consecutive pages from `first`.
    fn fill(m: &mut Mmu, first: u64, n: u64) {
        for i in 0..n {
            let va = Gva::new((first + i) << 12);
            m.fill(va, PageSize::Size4K, Hpa::new((first + i) << 12), false, 0xff);
        }
    }

    fn guest_resident(m: &Mmu) -> usize {
        m.tlb.entries().filter(|e| e.vmid == Vmid(1)).count()
    }

    #[test]
    fn a_handler_of_e_pages_evicts_e_lru_entries_once_then_hits() {
        let mut m = mmu();
        let cfg = MmuConfig::default().tlb;
        // Fill the whole L2 (and so the L1) with guest entries.
        fill(&mut m, 0, cfg.l2.entries as u64);
        let before = guest_resident(&m);
        let counters = m.stats();
        let f = HandlerFootprint { tlb_pages: 4, cache_lines: 0, flush_guest_tlb: false };
        m.run_handler(&f, Hpa::new(1 << 40));
        // Four handler pages went into the L1 and the L2: four guest entries left each level.
        assert_eq!(guest_resident(&m), before - 8);
        // The second run finds its pages and evicts nothing more.
        m.run_handler(&f, Hpa::new(1 << 40));
        assert_eq!(guest_resident(&m), before - 8);
        assert_eq!(m.stats(), counters, "guest counters untouched");
    }

    #[test]
    fn a_handler_of_l_lines_evicts_what_lru_predicts() {
        let mut m = mmu();
        let l1 = MmuConfig::default().ptcache.l1;
        let sets = (l1.entries / l1.ways) as u64;
        // Page-table lines filling L1 set 0 (every `sets`-th line maps there), oldest first.
        let lines: Vec<Hpa> = (0..l1.ways as u64).map(|i| Hpa::new(i * sets * 64)).collect();
        for &l in &lines {
            m.ptcache.access(l);
        }
        // A handler with one line in set 0 (its data is set-aligned) evicts the oldest only:
        // the others still hit in the L1 (hits evict nothing), the oldest comes from the L2.
        let f = HandlerFootprint { tlb_pages: 0, cache_lines: 1, flush_guest_tlb: false };
        m.run_handler(&f, Hpa::new(1 << 30));
        for &l in &lines[1..] {
            assert_eq!(m.ptcache.access(l), MemLevel::L1);
        }
        assert_eq!(m.ptcache.access(lines[0]), MemLevel::L2);
    }

    #[test]
    fn a_flushing_handler_drops_only_the_guests_entries() {
        let mut m = mmu();
        fill(&mut m, 0, 16);
        let f = HandlerFootprint { tlb_pages: 2, cache_lines: 0, flush_guest_tlb: true };
        m.run_handler(&f, Hpa::new(1 << 40));
        assert_eq!(guest_resident(&m), 0);
        assert!(m.tlb.entries().any(|e| e.vmid == HANDLER_VMID));
    }
}
