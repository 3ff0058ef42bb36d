//! The host process of a cross-ISA emulator (`softmmu`, HSPT): its virtual address space (Hva),
//! its page table in the *host's* format, and the host MMU that walks it.
//!
//! The host is a profile of its own (`scheme.host`, default `auto`: `x86-64`, HSPT's host,
//! when the guest's address space fits its 47-bit user half, else `x86-64-la57`). The guest
//! profile still gives the guest's formats, the guest kernel and every cycle cost; the host
//! profile gives the format of the emulator's page table and the geometry of the MMU that
//! translates the emulator's accesses (its TLBs, page-walk caches and page-table-read cache).
//!
//! The process is laid out in regions of 2^`W` bytes, region `r` at `Hva = r << W`. HSPT's
//! regions (a 4 GiB `mmap(PROT_NONE)` reservation per ARM guest) each cover the whole guest
//! virtual space, `W` the guest format's input width, at `r << W | (gva mod 2^W)`: an Sv39
//! guest's regions are 512 GiB, 256 of them filling an x86-64 process's user half. `softmmu`
//! keeps guest RAM in one region (QEMU's RAM block). A region is exactly the span of one host
//! entry at some level (21, 30, 39 and 48 bits are x86 level 1–4 spans), so emptying it frees
//! that entry's subtree, as `munmap`/`mmap(MAP_FIXED)` of the reservation frees its page tables.
//!
//! Mapping follows `mmap(MAP_FIXED)`: whatever the range held is replaced, a superpage over
//! smaller pages or smaller pages under a superpage. Unmapping one page (`mprotect(PROT_NONE)`)
//! clears its leaf; a superpage is cleared whole. Entries are written with A and D set and the
//! host walks them with A/D maintenance off, like every hypervisor-owned table in memvirt.

use crate::addr::{HostPhys, HostVirt, Hpa, Hva, Level, PageSize};
use crate::config::ConfigError;
use crate::machine::SimError;
use crate::mem::{HostMemory, TablePool};
use crate::mmu::flush::{AsidScope, TlbScope};
use crate::mmu::{Mmu, MmuConfig};
use crate::paging::walk::{PageTable, WalkFault};
use crate::paging::{Access, AdPolicy, Decoded, Format, Leaf, LeafAttrs, Perms, Regime};
use crate::profile::Profile;

use super::shadow::tables::Edit;

/// `scheme.host`'s automatic choice.
pub const AUTO_HOST: &str = "auto";

/// The emulator process: its page table and the layout of its regions.
#[derive(Debug)]
pub struct HostProcess {
    /// The host profile's name.
    pub profile: String,
    table: PageTable<HostVirt, HostPhys>,
    /// The guest's input width: each region spans 2^`region_bits` bytes.
    region_bits: u32,
    /// How many regions fit in the host's user half.
    max_regions: u64,
    /// The host level one of whose entries spans a region.
    region_level: Level,
    /// The regime host walks use: the guest's SUM/MXR (translated code runs guest privilege
    /// checks through them), A/D not maintained.
    regime: Regime,
    /// Host table pages in use now, and at most.
    pub pages: u64,
    /// Most host table pages in use at once.
    pub peak_pages: u64,
}

impl HostProcess {
    /// Builds the host named by `host` (a built-in profile, a profile file, or `auto`) with
    /// `regions` regions of 2^`region_bits` bytes, and the host profile's MMU (its walk caches
    /// off if the run's profile turns them off) for the caller to install. Host walks check
    /// permissions with the guest `regime`'s SUM and MXR.
    pub fn new(
        memory: &mut HostMemory,
        regime: Regime,
        host: &str,
        region_bits: u32,
        regions: u64,
        walk_caches: bool,
    ) -> Result<(HostProcess, Mmu), SimError> {
        let profile = resolve(host, region_bits, regions)?;
        let format = profile.arch().map_err(config)?.guest_format;
        let max_regions = 1u64 << (user_bits(&profile)? - region_bits);
        let Some(region_level) = (0..u32::from(format.levels))
            .filter_map(Level::from_index)
            .find(|l| l.shift() == region_bits)
        else {
            return Err(SimError::Config(format!(
                "the host format {format} has no level whose entries span a {region_bits}-bit region"
            )));
        };
        let mmu_config: MmuConfig =
            if walk_caches { profile.mmu } else { profile.mmu.without_walk_caches() };
        let mmu = Mmu::new(&mmu_config)?;
        let root = memory.alloc_table_frame(TablePool::Emulator)?;
        let process = HostProcess {
            profile: profile.name,
            table: PageTable::new(root.addr(), format),
            region_bits,
            max_regions,
            region_level,
            regime: Regime { ad: AdPolicy::Ignore, ..regime },
            pages: 1,
            peak_pages: 1,
        };
        Ok((process, mmu))
    }

    /// The smallest region width (a host level's span, from 2 MiB up) that holds `bytes`.
    pub fn region_bits_for(bytes: u64) -> u32 {
        let mut bits = PageSize::Size2M.level().shift();
        while bits < 63 && (1u64 << bits) < bytes {
            bits += crate::paging::format::INDEX_BITS;
        }
        bits
    }

    /// The host's page-table format.
    pub fn format(&self) -> &Format {
        self.table.format()
    }

    /// The most regions the host's user half holds.
    pub fn max_regions(&self) -> u64 {
        self.max_regions
    }

    /// Where region `region` puts guest virtual address `gva`.
    pub fn hva(&self, region: usize, gva: crate::addr::Gva) -> Hva {
        self.at(region, gva.as_u64())
    }

    /// The address `offset` bytes into region `region` (the offset taken modulo its size).
    pub fn at(&self, region: usize, offset: u64) -> Hva {
        let offset = offset & ((1u64 << self.region_bits) - 1);
        Hva::new((region as u64) << self.region_bits | offset)
    }

    /// The host `mmu`'s walk of the emulator's table for `hva`, through its page-walk caches.
    pub fn walk(
        &self,
        mmu: &mut Mmu,
        memory: &mut HostMemory,
        hva: Hva,
        access: Access,
    ) -> Result<Leaf<HostPhys>, WalkFault> {
        mmu.walk_host_table(memory, &self.table, &self.regime, hva, access)
    }

    /// The permissions the host TLB grants for a host leaf.
    pub fn allow(&self, perms: Perms) -> crate::paging::AllowMask {
        self.format().allow_mask(perms, true, &self.regime)
    }

    /// `mmap(MAP_FIXED)`: maps `hva` to `hpa` with a `size` page (a size the host format has),
    /// replacing whatever the range held.
    pub fn map(
        &mut self,
        host: &mut HostMemory,
        hva: Hva,
        hpa: Hpa,
        size: PageSize,
        perms: Perms,
    ) -> Result<Edit, SimError> {
        let format = *self.format();
        let target = size.level();
        let mut edit = Edit::default();
        let mut table = self.table.root();
        let mut level = format.root_level();
        while level > target {
            let entry = self.table.entry_addr(table, hva, level);
            let raw = host.read_u64(entry);
            edit.reads += 1;
            table = match format.decode(raw, level) {
                Ok(Decoded::Table { next, .. }) => Hpa::new(next),
                found => {
                    // Nothing, or a superpage the new mapping replaces: a fresh table.
                    let next = host.alloc_table_frame(TablePool::Emulator)?.addr();
                    self.grew(1);
                    host.write_u64(entry, format.encode_table(next.as_u64()));
                    edit.writes += 1;
                    edit.structural |= matches!(found, Ok(Decoded::Leaf { .. }));
                    next
                }
            };
            level = level.down().ok_or_else(|| internal("the host walk ran out of levels"))?;
        }
        let entry = self.table.entry_addr(table, hva, level);
        if let Ok(Decoded::Table { next, .. }) = format.decode(host.read_u64(entry), level) {
            // Smaller pages under the new superpage go, with their tables.
            self.free_subtree(host, Hpa::new(next), level);
            edit.structural = true;
        }
        let attrs = LeafAttrs { perms, global: false, accessed: true, dirty: true };
        host.write_u64(entry, format.encode_leaf(hpa.as_u64(), level, attrs));
        edit.writes += 1;
        Ok(edit)
    }

    /// `mprotect(PROT_NONE)` of the page holding `hva`: clears its leaf (a superpage whole);
    /// `None` if nothing mapped it.
    pub fn unmap(&mut self, host: &mut HostMemory, hva: Hva) -> Option<Edit> {
        let (entry, _) = self.find(host, hva)?;
        host.write_u64(entry, 0);
        Some(Edit { writes: 1, reads: 0, structural: false })
    }

    /// The leaf entry mapping `hva` and its page size, found without any walk being modelled.
    pub fn find(&self, host: &HostMemory, hva: Hva) -> Option<(Hpa, PageSize)> {
        let format = self.format();
        let mut table = self.table.root();
        let mut level = format.root_level();
        loop {
            let entry = self.table.entry_addr(table, hva, level);
            match format.decode(host.read_u64(entry), level) {
                Ok(Decoded::Table { next, .. }) => table = Hpa::new(next),
                Ok(Decoded::Leaf { .. }) => return Some((entry, PageSize::at_level(level))),
                _ => return None,
            }
            level = level.down()?;
        }
    }

    /// Empties region `region` (the reservation re-made `PROT_NONE`): its entry is cleared and
    /// the tables below freed.
    pub fn wipe(&mut self, host: &mut HostMemory, region: usize) -> Edit {
        let format = *self.format();
        let hva = Hva::new((region as u64) << self.region_bits);
        let mut edit = Edit::default();
        let mut table = self.table.root();
        let mut level = format.root_level();
        while level > self.region_level {
            let entry = self.table.entry_addr(table, hva, level);
            edit.reads += 1;
            match format.decode(host.read_u64(entry), level) {
                Ok(Decoded::Table { next, .. }) => table = Hpa::new(next),
                _ => return edit,
            }
            let Some(down) = level.down() else { return edit };
            level = down;
        }
        let entry = self.table.entry_addr(table, hva, level);
        match format.decode(host.read_u64(entry), level) {
            Ok(Decoded::Table { next, .. }) => {
                self.free_subtree(host, Hpa::new(next), level);
                edit.structural = true;
            }
            Ok(Decoded::Invalid) => return edit,
            _ => {}
        }
        host.write_u64(entry, 0);
        edit.writes += 1;
        edit
    }

    /// Frees the table at `table` (pointed to by an entry at `level`) and every table below it.
    fn free_subtree(&mut self, host: &mut HostMemory, table: Hpa, level: Level) {
        let format = *self.format();
        if let Some(below) = level.down() {
            for i in 0..512u64 {
                let raw = host.read_u64(table.wrapping_add(i * 8));
                if let Ok(Decoded::Table { next, .. }) = format.decode(raw, below) {
                    self.free_subtree(host, Hpa::new(next), below);
                }
            }
        }
        host.free_frame(table.page());
        self.pages -= 1;
    }

    fn grew(&mut self, pages: u64) {
        self.pages += pages;
        self.peak_pages = self.peak_pages.max(self.pages);
    }
}

/// Whether the host named `host` can hold `regions` regions of 2^`region_bits` bytes; the
/// error says why not.
pub fn check(host: &str, region_bits: u32, regions: u64) -> Result<(), SimError> {
    resolve(host, region_bits, regions).map(drop)
}

/// The host profile for `host`: `auto` takes the first of `x86-64` and `x86-64-la57` whose
/// user half holds `regions` regions of 2^`region_bits` bytes.
fn resolve(host: &str, region_bits: u32, regions: u64) -> Result<Profile, SimError> {
    let names: &[&str] = if host == AUTO_HOST { &["x86-64", "x86-64-la57"] } else { &[host] };
    let mut hosts = Vec::new();
    for name in names {
        let profile = Profile::load(name)
            .map_err(|e| SimError::Config(format!("scheme.host = \"{host}\": {e}")))?;
        let bits = user_bits(&profile)?;
        if bits > region_bits && regions <= 1u64 << (bits - region_bits) {
            return Ok(profile);
        }
        hosts.push(format!("{} ({bits}-bit user space)", profile.name));
    }
    Err(SimError::Config(format!(
        "the emulator cannot place {regions} region(s) of 2^{region_bits} bytes (the guest's \
         {region_bits}-bit address space each) in the host: tried {}; a guest this wide does not \
         fit an x86-64 host process (HSPT embeds 32-bit guests); use a narrower guest profile or \
         fewer scheme.regions",
        hosts.join(", ")
    )))
}

/// The width of a host profile's user half (the lower half of its first-stage input).
fn user_bits(profile: &Profile) -> Result<u32, SimError> {
    Ok(profile.arch().map_err(config)?.guest_format.input_bits() - 1)
}

/// Cached host walk pointers may lead into pages an `edit` freed or changed: drop them from
/// `mmu`'s page-walk caches.
pub fn after_edit(mmu: &mut Mmu, edit: Edit) {
    if edit.structural {
        let all = TlbScope { vmid: None, va: None, asid: AsidScope::All, globals: true };
        mmu.pwc.flush(&all);
    }
}

fn config(e: ConfigError) -> SimError {
    SimError::Config(e.to_string())
}

fn internal(detail: &str) -> SimError {
    SimError::Internal { scheme: "hspt", detail: detail.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Gva;
    use crate::machine::Platform;

    /// A host for HSPT regions of `p`'s guest.
    fn make(
        p: &mut Platform,
        host: &str,
        regions: u64,
        walk_caches: bool,
    ) -> Result<(HostProcess, Mmu), SimError> {
        let bits = p.arch.guest_format.input_bits();
        HostProcess::new(&mut p.host, p.arch.guest_regime, host, bits, regions, walk_caches)
    }

    #[test]
    fn guest_ram_regions_are_the_smallest_level_span_that_holds_it() {
        assert_eq!(HostProcess::region_bits_for(1 << 20), 21);
        assert_eq!(HostProcess::region_bits_for(1 << 30), 30);
        assert_eq!(HostProcess::region_bits_for((1 << 30) + 1), 39);
    }

    fn platform(profile: &str) -> Platform {
        let profile = Profile::builtin(profile).unwrap();
        Platform::new(&profile.platform_config().unwrap(), profile.costs).unwrap()
    }

    #[test]
    fn an_sv39_guest_gets_x86_64_regions_of_512_gib() {
        // The guest profile's own TLB is small; the host's is x86-64's.
        let mut guest = Profile::builtin("riscv-sv39").unwrap();
        guest.set("mmu.tlb.l2.entries", "64").unwrap();
        guest.set("mmu.tlb.l2.ways", "4").unwrap();
        let mut p = Platform::new(&guest.platform_config().unwrap(), guest.costs).unwrap();
        let (host, mmu) = make(&mut p, AUTO_HOST, 256, true).unwrap();
        assert_eq!(host.profile, "x86-64");
        assert_eq!(host.format().name, "x86-64 4-level");
        assert_eq!(host.max_regions(), 256);
        // A kernel address (sign-extended) keeps its low 39 bits inside its region.
        let gva = Gva::new(0xffff_ffc0_0012_3456);
        assert_eq!(host.hva(3, gva).as_u64(), 3 << 39 | 0x40_0012_3456);
        let x86 = Profile::builtin("x86-64").unwrap();
        assert_eq!(mmu.config().tlb.l2, x86.mmu.tlb.l2);
        assert_eq!(mmu.config().tlb.l2.entries, 1536);
    }

    #[test]
    fn wider_guests_move_to_a_five_level_host_or_are_refused() {
        let mut p = platform("x86-64");
        let (host, _) = make(&mut p, AUTO_HOST, 256, true).unwrap();
        assert_eq!(host.profile, "x86-64-la57");
        let mut p = platform("riscv-sv39");
        let (host, _) = make(&mut p, AUTO_HOST, 257, true).unwrap();
        assert_eq!(host.profile, "x86-64-la57", "257 Sv39 regions overflow a 4-level host");
        let mut p = platform("riscv-sv39");
        let err = make(&mut p, "x86-64", 257, true).unwrap_err().to_string();
        assert!(err.contains("257 region(s)") && err.contains("x86-64 (47-bit"), "{err}");
        let mut p = platform("x86-64-la57");
        let err = make(&mut p, AUTO_HOST, 1, true).unwrap_err().to_string();
        assert!(err.contains("57-bit address space"), "{err}");
        let mut p = platform("riscv-sv39");
        let err = make(&mut p, "no-such-host", 1, true).unwrap_err().to_string();
        assert!(err.contains("scheme.host = \"no-such-host\""), "{err}");
    }

    #[test]
    fn maps_walk_four_levels_and_wipes_free_the_region() {
        let mut p = platform("riscv-sv39");
        let (mut host, mut mmu) = make(&mut p, AUTO_HOST, 2, false).unwrap();
        let frame = p.host.alloc_frame().unwrap().addr();
        let hva = host.hva(1, Gva::new(0x1234_5000));
        let edit = host
            .map(&mut p.host, hva, frame, PageSize::Size4K, Perms::R | Perms::W | Perms::U)
            .unwrap();
        // Three new tables below the root (one write each) and the leaf.
        assert_eq!((edit.writes, host.pages), (4, 4));
        let leaf =
            host.walk(&mut mmu, &mut p.host, hva.wrapping_add(0x10), Access::USER_LOAD).unwrap();
        assert_eq!(leaf.output(hva.wrapping_add(0x10)), frame.wrapping_add(0x10));
        assert_eq!(mmu.trace.total(), 4, "an x86-64 walk with no walk caches reads 4 entries");
        assert_eq!(host.find(&p.host, hva).map(|(_, s)| s), Some(PageSize::Size4K));
        // Region 0 is untouched; unmapping the page clears one leaf.
        assert!(host.find(&p.host, host.hva(0, Gva::new(0x1234_5000))).is_none());
        assert_eq!(host.unmap(&mut p.host, hva).map(|e| e.writes), Some(1));
        assert!(host.walk(&mut mmu, &mut p.host, hva, Access::USER_LOAD).is_err());
        // A 2 MiB page over the (now empty) 4 KiB table replaces the table.
        let big = p.host.alloc_contiguous(512, 512).unwrap().addr();
        let hva2m = hva.align_down(PageSize::Size2M);
        let edit =
            host.map(&mut p.host, hva2m, big, PageSize::Size2M, Perms::R | Perms::U).unwrap();
        assert!(edit.structural);
        assert_eq!(host.pages, 3);
        assert_eq!(host.find(&p.host, hva).map(|(_, s)| s), Some(PageSize::Size2M));
        // Emptying region 1 frees its two tables and clears its root entry.
        let edit = host.wipe(&mut p.host, 1);
        assert_eq!((edit.writes, host.pages, host.peak_pages), (1, 1, 4));
        assert!(host.find(&p.host, hva).is_none());
        assert_eq!(host.wipe(&mut p.host, 1).writes, 0, "an empty region costs nothing");
    }
}
