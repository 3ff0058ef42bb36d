//! [`EntryMemory`] views through which the walker reads tables, each recording the references it
//! makes into a [`WalkTrace`].

use super::backing::GuestBacking;
use super::host::{HostMemory, MemError};
use crate::addr::{Gpa, GuestPhys, HostPhys, Hpa, Level, PageSize};
use crate::paging::walk::{Dim, EntryMemory, WalkRef, WalkTrace};

/// Tables in host memory (nested, shadow and host tables), read directly.
#[derive(Debug)]
pub struct HostTableMemory<'a> {
    /// The memory.
    pub host: &'a mut HostMemory,
    /// Where references are recorded.
    pub trace: &'a mut WalkTrace,
    /// The dimension the references are counted in.
    pub dim: Dim,
}

impl EntryMemory<HostPhys> for HostTableMemory<'_> {
    type Error = std::convert::Infallible;

    #[inline]
    fn read_entry(&mut self, addr: Hpa, level: Level) -> Result<u64, Self::Error> {
        self.trace.push(WalkRef { hpa: addr, level, dim: self.dim, write: false });
        Ok(self.host.read_u64(addr))
    }

    #[inline]
    fn write_entry(&mut self, addr: Hpa, level: Level, value: u64) -> Result<(), Self::Error> {
        self.trace.push(WalkRef { hpa: addr, level, dim: self.dim, write: true });
        self.host.write_u64(addr, value);
        Ok(())
    }
}

/// A table entry's guest-physical address lies outside guest memory (or host memory ran out
/// while backing it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutsideGuestMemory {
    /// The GPA is beyond the guest's memory: an access fault.
    Unbacked(Gpa),
    /// Backing the frame needed a host frame and none was left.
    Host(MemError),
}

/// Guest tables read through the hypervisor's GPA→HPA map with no nested walk: what native
/// hardware does (guest-physical is the machine's physical memory) and what a hypervisor does in
/// software when it reads guest entries to build a shadow entry.
#[derive(Debug)]
pub struct GuestTableMemory<'a> {
    /// Host memory.
    pub host: &'a mut HostMemory,
    /// The guest's memory map.
    pub backing: &'a mut GuestBacking,
    /// Where references are recorded.
    pub trace: &'a mut WalkTrace,
}

impl GuestTableMemory<'_> {
    fn hpa(&mut self, gpa: Gpa) -> Result<Hpa, OutsideGuestMemory> {
        match self.backing.back(gpa.page(), self.host) {
            Ok(Some(hfn)) => Ok(Hpa::new(hfn.addr().as_u64() | gpa.page_offset(PageSize::Size4K))),
            Ok(None) => Err(OutsideGuestMemory::Unbacked(gpa)),
            Err(e) => Err(OutsideGuestMemory::Host(e)),
        }
    }
}

impl EntryMemory<GuestPhys> for GuestTableMemory<'_> {
    type Error = OutsideGuestMemory;

    #[inline]
    fn read_entry(&mut self, addr: Gpa, level: Level) -> Result<u64, Self::Error> {
        let hpa = self.hpa(addr)?;
        self.trace.push(WalkRef { hpa, level, dim: Dim::Guest, write: false });
        Ok(self.host.read_u64(hpa))
    }

    #[inline]
    fn write_entry(&mut self, addr: Gpa, level: Level, value: u64) -> Result<(), Self::Error> {
        let hpa = self.hpa(addr)?;
        self.trace.push(WalkRef { hpa, level, dim: Dim::Guest, write: true });
        self.host.write_u64(hpa, value);
        Ok(())
    }
}
