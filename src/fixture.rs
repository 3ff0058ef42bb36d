//! Small, fully specified scenarios for tests, benchmarks and examples: a machine with a given
//! architecture and scheme, a bump allocator of guest frames, and helpers that map guest pages
//! through the machine (so schemes see every store, as they would the guest kernel's).

use crate::addr::{Asid, Gfn, Gpa, Gva, PageSize, Vmid};
use crate::cost::Costs;
use crate::machine::{ArchConfig, GuestRoot, Machine, Platform, PlatformConfig, Scheme, SimError};
use crate::mem::MemError;
use crate::mmu::MmuConfig;
use crate::paging::mapper::{self, MapError};
use crate::paging::walk::PageTable;
use crate::paging::{AdPolicy, Format, LeafAttrs, Perms, Regime};

/// Guest memory of fixture machines: 1 GiB.
pub const GUEST_BYTES: u64 = 1 << 30;
/// Host memory of fixture machines: 4 GiB.
pub const HOST_BYTES: u64 = 4 << 30;

/// An architecture with the given formats and hardware A/D updates in both stages.
pub fn arch(guest: Format, nested: Format) -> ArchConfig {
    let regime = Regime { sum: false, mxr: false, ad: AdPolicy::Hardware };
    ArchConfig {
        guest_format: guest,
        nested_format: nested,
        guest_regime: regime,
        nested_regime: regime,
        refill: crate::machine::Refill::Hardware,
    }
}

/// A platform for `arch` with MMU geometry `mmu`, running as VM 1.
pub fn platform(arch: ArchConfig, mmu: MmuConfig) -> Result<Platform, SimError> {
    let cfg = PlatformConfig {
        arch,
        mmu,
        guest_bytes: GUEST_BYTES,
        host_bytes: HOST_BYTES,
        table_pool_frames: crate::mem::host::DEFAULT_POOL_CHUNK,
        handlers: crate::mmu::Handlers::default(),
        vmid: Vmid(1),
        vcpus: 1,
    };
    Platform::new(&cfg, Costs::default())
}

/// A guest of a machine under test: hands out guest frames from a bump pointer and builds the
/// guest's tables through the machine.
#[derive(Debug)]
pub struct Guest {
    next_gfn: u64,
    limit: u64,
    /// The guest's current address space.
    pub root: GuestRoot,
}

impl Guest {
    /// Creates an address space with ASID `asid` whose root is the next free frame(s), zeroed
    /// through the machine, and installs it.
    pub fn new<S: Scheme>(m: &mut Machine<S>, asid: Asid) -> Result<Self, SimError> {
        let mut guest = Guest {
            next_gfn: 1,
            limit: m.platform.guest_mem.frames(),
            root: GuestRoot {
                table: PageTable::new(Gpa::ZERO, m.platform.arch.guest_format),
                asid,
            },
        };
        guest.root = guest.new_root(m, asid)?;
        m.guest_root_switch(guest.root)?;
        Ok(guest)
    }

    /// Allocates and zeroes a new root table and returns it (not installed).
    pub fn new_root<S: Scheme>(
        &mut self,
        m: &mut Machine<S>,
        asid: Asid,
    ) -> Result<GuestRoot, SimError> {
        // First-stage roots are one 4 KiB page in every format.
        let format = m.platform.arch.guest_format;
        let gfn = self.alloc()?;
        let p = &mut m.platform;
        if let Some(hfn) = p.back(gfn)? {
            p.host.zero_frame(hfn);
        }
        m.scheme.guest_frame_written(&mut m.platform, gfn)?;
        Ok(GuestRoot { table: PageTable::new(gfn.addr(), format), asid })
    }

    /// The next free guest frame.
    pub fn alloc(&mut self) -> Result<Gfn, MemError> {
        if self.next_gfn >= self.limit {
            return Err(MemError::GuestExhausted { frames: self.limit, mib: self.limit >> 8 });
        }
        let gfn = Gfn::new(self.next_gfn);
        self.next_gfn += 1;
        Ok(gfn)
    }

    /// Allocates the frames of one `size` page, aligned to `size`, and returns the first.
    pub fn alloc_aligned(&mut self, size: PageSize) -> Result<Gfn, MemError> {
        let step = size.bytes() / PageSize::Size4K.bytes();
        self.next_gfn = self.next_gfn.div_ceil(step) * step;
        let first = Gfn::new(self.next_gfn);
        if self.next_gfn + step > self.limit {
            return Err(MemError::GuestExhausted { frames: self.limit, mib: self.limit >> 8 });
        }
        self.next_gfn += step;
        Ok(first)
    }

    /// Maps `va` to `gpa` in the current address space with a `size` page, storing every entry
    /// through the machine. The change maps an invalid entry, so no flush is owed.
    pub fn map<S: Scheme>(
        &mut self,
        m: &mut Machine<S>,
        va: Gva,
        gpa: Gpa,
        size: PageSize,
        attrs: LeafAttrs,
    ) -> Result<(), FixtureError> {
        let table = self.root.table;
        let mut store = m.guest_tables(|| self.alloc());
        let result = mapper::map(&table, &mut store, va, gpa, size, attrs);
        if let Some(e) = store.error.take() {
            return Err(e.into());
        }
        result?.ignore();
        Ok(())
    }

    /// Maps `count` fresh 4 KiB user read-write pages starting at `va`, each on a fresh frame.
    pub fn map_fresh<S: Scheme>(
        &mut self,
        m: &mut Machine<S>,
        va: Gva,
        count: u64,
    ) -> Result<(), FixtureError> {
        for i in 0..count {
            let gfn = self.alloc()?;
            let page = va.wrapping_add(i * PageSize::Size4K.bytes());
            self.map(m, page, gfn.addr(), PageSize::Size4K, LeafAttrs::new(USER_RW))?;
        }
        Ok(())
    }
}

/// User read-write permissions.
pub const USER_RW: Perms = Perms::R.union(Perms::W).union(Perms::U);

/// Errors of fixture set-up.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// A table edit was refused.
    #[error(transparent)]
    Map(#[from] MapError),
    /// The simulator failed.
    #[error(transparent)]
    Sim(#[from] SimError),
    /// Memory ran out.
    #[error(transparent)]
    Mem(#[from] MemError),
}
