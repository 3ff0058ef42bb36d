//! Shadow page tables as real tables in host memory, in the guest's own format, and the
//! hypervisor's bookkeeping about them: which guest table page each shadow page mirrors, the
//! reverse map from guest table pages to their mirrors (for write protection), and the trees,
//! one per guest address space.
//!
//! Intermediate shadow entries are fully permissive; each leaf carries the guest's permissions
//! combined over every level, minus W while the guest entry is clean (dirty-bit emulation). A
//! guest superpage is shadowed by one shadow leaf up to 2 MiB (guest memory is host-contiguous in
//! 2 MiB chunks); larger guest pages are splintered into 2 MiB leaves in a *splinter* page, which
//! is dropped whole when any address in it is invalidated (RVirt does the same with a tag bit).

use std::collections::HashMap;

use crate::addr::{
    Asid, Gfn, Gpa, GuestPhys, GuestVirt, Gva, HostPhys, Hpa, Level, PageSize, MAX_LEVELS,
};
use crate::mem::{GuestBacking, HostMemory, MemError, TablePool};
use crate::paging::walk::{EntryMemory, PageTable};
use crate::paging::{Decoded, Format, LeafAttrs, Perms};

/// Index of a tree in [`ShadowTables`].
pub type TreeId = usize;

/// What a shadow page stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mirror {
    /// The guest table page at this frame, entry for entry.
    Guest(Gfn),
    /// 2 MiB pieces of one guest page larger than 2 MiB.
    Splinter,
}

/// The hypervisor's record of one shadow page.
#[derive(Clone, Copy, Debug)]
pub struct PageInfo {
    /// The tree it belongs to.
    pub tree: TreeId,
    /// Level of its entries.
    pub level: Level,
    /// What it mirrors.
    pub mirror: Mirror,
    /// First virtual address it covers.
    pub va_base: u64,
    /// The shadow entry pointing at it (`None` for a root).
    pub parent: Option<Hpa>,
    /// Guest permissions combined over the levels above this page.
    pub upper_perms: Perms,
    /// Whether a level above was a RISC-V global pointer.
    pub upper_global: bool,
}

/// One guest address space's shadow table.
#[derive(Clone, Copy, Debug)]
pub struct Tree {
    /// The guest root it shadows.
    pub guest_root: PageTable<GuestVirt, GuestPhys>,
    /// The guest ASID it runs with.
    pub asid: Asid,
    /// The shadow table the hardware walks.
    pub table: PageTable<GuestVirt, HostPhys>,
    /// Last use, for LRU eviction.
    pub last_used: u64,
}

/// A guest translation as the hypervisor's software walk found it, with the guest table page
/// and raw entry read at every level.
#[derive(Clone, Copy, Debug)]
pub struct GuestPath {
    /// Guest table page read at each level (levels from the root down to the leaf).
    pub tables: [Gfn; MAX_LEVELS],
    /// Raw entry read at each level.
    pub raw: [u64; MAX_LEVELS],
    /// Entries read.
    pub reads: u32,
    /// Entries written (accessed/dirty emulation).
    pub writes: u32,
}

impl Default for GuestPath {
    fn default() -> Self {
        GuestPath { tables: [Gfn::new(0); MAX_LEVELS], raw: [0; MAX_LEVELS], reads: 0, writes: 0 }
    }
}

impl GuestPath {
    /// Permissions and global bit accumulated above the table at `level`, decoding the recorded
    /// pointers from the root down.
    pub fn upper(&self, format: &Format, level: Level) -> (Perms, bool) {
        let (mut perms, mut global) = (Perms::all(), false);
        let mut l = format.root_level();
        while l > level {
            if let Ok(Decoded::Table { perms: p, global: g, .. }) =
                format.decode(self.raw[l.index() as usize], l)
            {
                perms &= p;
                global |= g;
            }
            let Some(down) = l.down() else { break };
            l = down;
        }
        (perms, global)
    }
}

/// Guest memory as the hypervisor reads it during a software walk: through its own GPA→HPA map,
/// recording the path, writing accessed/dirty bits only when the regime asks it to.
#[derive(Debug)]
pub struct HvGuestMemory<'a> {
    /// Host memory.
    pub host: &'a mut HostMemory,
    /// The guest's memory map.
    pub backing: &'a mut GuestBacking,
    /// The path recorded so far.
    pub path: GuestPath,
}

/// A guest table entry outside guest memory, or no host memory left to back it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HvMemError {
    /// Outside guest memory: an access fault for the guest.
    Unbacked,
    /// Host memory ran out.
    Host(MemError),
}

impl HvGuestMemory<'_> {
    fn hpa(&mut self, gpa: Gpa) -> Result<Hpa, HvMemError> {
        match self.backing.back(gpa.page(), self.host) {
            Ok(Some(hfn)) => Ok(Hpa::new(hfn.addr().as_u64() | gpa.page_offset(PageSize::Size4K))),
            Ok(None) => Err(HvMemError::Unbacked),
            Err(e) => Err(HvMemError::Host(e)),
        }
    }
}

impl EntryMemory<GuestPhys> for HvGuestMemory<'_> {
    type Error = HvMemError;

    fn read_entry(&mut self, addr: Gpa, level: Level) -> Result<u64, HvMemError> {
        let hpa = self.hpa(addr)?;
        let raw = self.host.read_u64(hpa);
        let i = level.index() as usize;
        if let (Some(t), Some(r)) = (self.path.tables.get_mut(i), self.path.raw.get_mut(i)) {
            *t = addr.page();
            *r = raw;
        }
        self.path.reads += 1;
        Ok(raw)
    }

    fn write_entry(&mut self, addr: Gpa, _level: Level, value: u64) -> Result<(), HvMemError> {
        let hpa = self.hpa(addr)?;
        self.host.write_u64(hpa, value);
        self.path.writes += 1;
        Ok(())
    }
}

/// A shadow leaf to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShadowLeaf {
    /// Host base of the shadow page.
    pub base: Hpa,
    /// Its size.
    pub size: PageSize,
    /// Permissions (W withheld while the guest entry is clean).
    pub perms: Perms,
    /// Global.
    pub global: bool,
}

/// What an edit of a shadow table did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Edit {
    /// Shadow entries written (including cleared ones).
    pub writes: u32,
    /// Shadow entries read.
    pub reads: u32,
    /// Whether an intermediate entry changed or a shadow page was freed: cached walk pointers
    /// into this table must go.
    pub structural: bool,
}

impl Edit {
    /// Adds another edit's counts.
    pub fn add(&mut self, other: Edit) {
        self.writes += other.writes;
        self.reads += other.reads;
        self.structural |= other.structural;
    }
}

/// Counters of the shadow tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Shadow pages in use now.
    pub pages: u64,
    /// Most shadow pages in use at once.
    pub peak_pages: u64,
    /// Trees created.
    pub trees_created: u64,
    /// Trees dropped to stay within the cached-roots bound.
    pub trees_evicted: u64,
}

/// Every shadow table of the VM and what the hypervisor knows about them.
#[derive(Debug)]
pub struct ShadowTables {
    format: Format,
    trees: Vec<Option<Tree>>,
    pages: HashMap<u64, PageInfo>,
    /// Guest table frame → the shadow pages mirroring it (only kept when write-protecting).
    rmap: Option<HashMap<u64, Vec<u64>>>,
    /// Counters.
    pub stats: TableStats,
}

impl ShadowTables {
    /// No tables yet. `reverse_map` keeps the guest-page → mirrors map write protection needs.
    pub fn new(format: Format, reverse_map: bool) -> Self {
        ShadowTables {
            format,
            trees: Vec::new(),
            pages: HashMap::new(),
            rmap: reverse_map.then(HashMap::new),
            stats: TableStats::default(),
        }
    }

    /// The guest format the tables shadow.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The tree `id`, if live.
    pub fn tree(&self, id: TreeId) -> Option<&Tree> {
        self.trees.get(id).and_then(Option::as_ref)
    }

    /// Marks `id` used at time `now`.
    pub fn touch(&mut self, id: TreeId, now: u64) {
        if let Some(Some(t)) = self.trees.get_mut(id) {
            t.last_used = now;
        }
    }

    /// Live trees, in id order.
    pub fn tree_ids(&self) -> impl Iterator<Item = TreeId> + '_ {
        self.trees.iter().enumerate().filter_map(|(i, t)| t.as_ref().map(|_| i))
    }

    /// The live tree shadowing (`root`, `asid`).
    pub fn find(&self, root: Gpa, asid: Asid) -> Option<TreeId> {
        self.tree_ids().find(|&id| {
            self.tree(id).is_some_and(|t| t.guest_root.root() == root && t.asid == asid)
        })
    }

    /// The least recently used live tree other than `keep`.
    pub fn lru(&self, keep: &[TreeId]) -> Option<TreeId> {
        self.tree_ids()
            .filter(|id| !keep.contains(id))
            .min_by_key(|&id| self.tree(id).map_or(0, |t| t.last_used))
    }

    /// Number of live trees.
    pub fn len(&self) -> usize {
        self.trees.iter().flatten().count()
    }

    /// Whether there are no trees.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A new, empty tree for `guest_root` running with `asid`.
    pub fn create(
        &mut self,
        host: &mut HostMemory,
        guest_root: PageTable<GuestVirt, GuestPhys>,
        asid: Asid,
        now: u64,
    ) -> Result<TreeId, MemError> {
        let root = host.alloc_table_frame(TablePool::Shadow)?.addr();
        let table = PageTable::new(root, self.format);
        let tree = Tree { guest_root, asid, table, last_used: now };
        let id = match self.trees.iter().position(Option::is_none) {
            Some(free) => {
                self.trees[free] = Some(tree);
                free
            }
            None => {
                self.trees.push(Some(tree));
                self.trees.len() - 1
            }
        };
        self.register(root, self.root_info(id, guest_root));
        self.stats.trees_created += 1;
        Ok(id)
    }

    /// Empties tree `id` and points it at another guest root (a per-vCPU table at a switch).
    pub fn retarget(
        &mut self,
        host: &mut HostMemory,
        id: TreeId,
        guest_root: PageTable<GuestVirt, GuestPhys>,
        asid: Asid,
    ) -> Edit {
        let edit = self.wipe(host, id);
        let Some(tree) = self.trees.get_mut(id).and_then(Option::as_mut) else { return edit };
        tree.guest_root = guest_root;
        tree.asid = asid;
        let root = tree.table.root();
        self.unregister(root);
        self.register(root, self.root_info(id, guest_root));
        edit
    }

    /// The record of tree `id`'s root page, which mirrors the guest root.
    fn root_info(&self, id: TreeId, guest_root: PageTable<GuestVirt, GuestPhys>) -> PageInfo {
        PageInfo {
            tree: id,
            level: self.format.root_level(),
            mirror: Mirror::Guest(guest_root.root().page()),
            va_base: 0,
            parent: None,
            upper_perms: Perms::all(),
            upper_global: false,
        }
    }

    /// Frees tree `id` and every page in it.
    pub fn drop_tree(&mut self, host: &mut HostMemory, id: TreeId) -> Edit {
        let Some(tree) = self.tree(id).copied() else { return Edit::default() };
        let edit = self.free_subtree(host, tree.table.root());
        if let Some(slot) = self.trees.get_mut(id) {
            *slot = None;
        }
        Edit { structural: true, ..edit }
    }

    /// Clears every entry of tree `id`'s root, freeing everything below it.
    pub fn wipe(&mut self, host: &mut HostMemory, id: TreeId) -> Edit {
        let Some(tree) = self.tree(id).copied() else { return Edit::default() };
        let root = tree.table.root();
        let mut edit = Edit::default();
        for i in 0..self.entries_in(self.format.root_level()) {
            let entry = root.wrapping_add(i * 8);
            if host.read_u64(entry) != 0 {
                edit.add(self.clear_entry(host, entry, self.format.root_level()));
            }
        }
        edit
    }

    fn entries_in(&self, level: Level) -> u64 {
        if level == self.format.root_level() {
            self.format.root_bytes() / 8
        } else {
            512
        }
    }

    /// The shadow page info of the page containing `entry`.
    pub fn page_of(&self, entry: Hpa) -> Option<&PageInfo> {
        self.pages.get(&entry.page().as_u64())
    }

    /// The mirrors of guest table page `gfn` (empty without a reverse map).
    pub fn mirrors(&self, gfn: Gfn) -> Vec<u64> {
        self.rmap.as_ref().and_then(|m| m.get(&gfn.as_u64())).cloned().unwrap_or_default()
    }

    /// Whether guest frame `gfn` is mirrored by any shadow page (so write-protected, unless out
    /// of sync).
    pub fn is_mirrored(&self, gfn: Gfn) -> bool {
        self.rmap.as_ref().is_some_and(|m| m.contains_key(&gfn.as_u64()))
    }

    fn register(&mut self, page: Hpa, info: PageInfo) {
        let hfn = page.page().as_u64();
        if let (Some(rmap), Mirror::Guest(g)) = (self.rmap.as_mut(), info.mirror) {
            rmap.entry(g.as_u64()).or_default().push(hfn);
        }
        if self.pages.insert(hfn, info).is_none() {
            self.stats.pages += 1;
            self.stats.peak_pages = self.stats.peak_pages.max(self.stats.pages);
        }
    }

    fn unregister(&mut self, page: Hpa) {
        let hfn = page.page().as_u64();
        let Some(info) = self.pages.remove(&hfn) else { return };
        self.stats.pages -= 1;
        if let (Some(rmap), Mirror::Guest(g)) = (self.rmap.as_mut(), info.mirror) {
            if let Some(list) = rmap.get_mut(&g.as_u64()) {
                list.retain(|&h| h != hfn);
                if list.is_empty() {
                    rmap.remove(&g.as_u64());
                }
            }
        }
    }

    /// Frees the shadow page at `page` and everything below it.
    fn free_subtree(&mut self, host: &mut HostMemory, page: Hpa) -> Edit {
        let mut edit = Edit { structural: true, ..Edit::default() };
        let Some(info) = self.page_of(page).copied() else { return edit };
        if info.level > Level::L0 {
            for i in 0..self.entries_in(info.level) {
                let entry = page.wrapping_add(i * 8);
                let raw = host.read_u64(entry);
                if let Ok(Decoded::Table { next, .. }) = self.format.decode(raw, info.level) {
                    edit.add(self.free_subtree(host, Hpa::new(next)));
                }
            }
        }
        self.unregister(page);
        host.free_frame(page.page());
        edit
    }

    /// Clears one shadow entry, freeing the subtree a pointer led to.
    pub fn clear_entry(&mut self, host: &mut HostMemory, entry: Hpa, level: Level) -> Edit {
        let raw = host.read_u64(entry);
        let mut edit = Edit { writes: 1, reads: 1, structural: false };
        if let Ok(Decoded::Table { next, .. }) = self.format.decode(raw, level) {
            edit.add(self.free_subtree(host, Hpa::new(next)));
        }
        host.write_u64(entry, 0);
        edit
    }

    /// Drops shadow page `hfn` by clearing the entry pointing at it (a root is wiped instead).
    pub fn drop_page(&mut self, host: &mut HostMemory, hfn: u64) -> Edit {
        let Some(info) = self.pages.get(&hfn).copied() else { return Edit::default() };
        match info.parent {
            Some(parent) => {
                let level = Level::from_index(info.level.index() + 1).unwrap_or(info.level);
                self.clear_entry(host, parent, level)
            }
            None => self.wipe(host, info.tree),
        }
    }

    /// The leaf shadow entry covering `gva` in tree `id`: its address and level.
    pub fn find_leaf(&self, host: &HostMemory, id: TreeId, gva: Gva) -> Option<(Hpa, Level)> {
        let tree = self.tree(id)?;
        let table = tree.table;
        if !self.format.input_is_valid(gva.as_u64()) {
            return None;
        }
        let mut level = self.format.root_level();
        let mut page = table.root();
        loop {
            let entry = table.entry_addr(page, gva, level);
            match self.format.decode(host.read_u64(entry), level) {
                Ok(Decoded::Table { next, .. }) => {
                    page = Hpa::new(next);
                    level = level.down()?;
                }
                Ok(Decoded::Leaf { .. }) => return Some((entry, level)),
                _ => return None,
            }
        }
    }

    /// Invalidates the shadow translation of `gva` in tree `id` (a whole splinter page if the
    /// leaf is one of its pieces). Returns what was done; nothing if no leaf was there.
    pub fn invalidate(&mut self, host: &mut HostMemory, id: TreeId, gva: Gva) -> Edit {
        let depth = u32::from(self.format.levels);
        let Some((entry, level)) = self.find_leaf(host, id, gva) else {
            return Edit { reads: depth, ..Edit::default() };
        };
        let reads = depth - level.index();
        let splinter = self.page_of(entry).is_some_and(|i| i.mirror == Mirror::Splinter);
        let mut edit = if splinter {
            let hfn = entry.page().as_u64();
            self.drop_page(host, hfn)
        } else {
            self.clear_entry(host, entry, level)
        };
        edit.reads += reads;
        edit
    }

    /// Writes the shadow leaf for `gva` in tree `id` from the guest translation found by a walk
    /// (`path`, leaf at `guest_level`), creating or replacing intermediate shadow pages so that
    /// each mirrors the guest table on the current guest path.
    pub fn install(
        &mut self,
        host: &mut HostMemory,
        id: TreeId,
        gva: Gva,
        path: &GuestPath,
        guest_level: Level,
        leaf: ShadowLeaf,
    ) -> Result<Edit, MemError> {
        let Some(tree) = self.tree(id).copied() else { return Ok(Edit::default()) };
        let format = self.format;
        let target = leaf.size.level();
        let mut edit = Edit::default();
        let mut level = format.root_level();
        let mut page = tree.table.root();
        while level > target {
            let Some(child_level) = level.down() else { break };
            let entry = tree.table.entry_addr(page, gva, level);
            let raw = host.read_u64(entry);
            edit.reads += 1;
            let want = if child_level >= guest_level {
                Mirror::Guest(path.tables[child_level.index() as usize])
            } else {
                Mirror::Splinter
            };
            let existing = match format.decode(raw, level) {
                Ok(Decoded::Table { next, .. }) => Some(Hpa::new(next)),
                _ => None,
            };
            if let Some(next) =
                existing.filter(|n| self.page_of(*n).is_some_and(|i| i.mirror == want))
            {
                page = next;
            } else {
                if raw != 0 {
                    edit.add(self.clear_entry(host, entry, level));
                }
                let child = host.alloc_table_frame(TablePool::Shadow)?.addr();
                let (upper_perms, upper_global) = path.upper(&format, child_level);
                let coverage = PageSize::at_level(level).offset_mask();
                self.register(
                    child,
                    PageInfo {
                        tree: id,
                        level: child_level,
                        mirror: want,
                        va_base: gva.as_u64() & !coverage,
                        parent: Some(entry),
                        upper_perms,
                        upper_global,
                    },
                );
                host.write_u64(entry, format.encode_table(child.as_u64()));
                edit.writes += 1;
                edit.structural = true;
                page = child;
            }
            level = child_level;
        }
        let entry = tree.table.entry_addr(page, gva, level);
        let raw = host.read_u64(entry);
        if let Ok(Decoded::Table { .. }) = format.decode(raw, level) {
            edit.add(self.clear_entry(host, entry, level));
        }
        let attrs =
            LeafAttrs { perms: leaf.perms, global: leaf.global, accessed: true, dirty: true };
        host.write_u64(entry, format.encode_leaf(leaf.base.as_u64(), level, attrs));
        edit.writes += 1;
        Ok(edit)
    }

    /// Whether [`install`](Self::install) of this translation would find every shadow table on
    /// the path already in place (no new shadow page): the case ASP fills in hardware mode.
    pub fn fits(
        &self,
        host: &HostMemory,
        id: TreeId,
        gva: Gva,
        path: &GuestPath,
        guest_level: Level,
        target: Level,
    ) -> bool {
        let Some(tree) = self.tree(id) else { return false };
        let mut level = self.format.root_level();
        let mut page = tree.table.root();
        while level > target {
            let Some(child_level) = level.down() else { return false };
            let want = if child_level >= guest_level {
                Mirror::Guest(path.tables[child_level.index() as usize])
            } else {
                Mirror::Splinter
            };
            let entry = tree.table.entry_addr(page, gva, level);
            match self.format.decode(host.read_u64(entry), level) {
                Ok(Decoded::Table { next, .. })
                    if self.page_of(Hpa::new(next)).is_some_and(|i| i.mirror == want) =>
                {
                    page = Hpa::new(next);
                }
                _ => return false,
            }
            level = child_level;
        }
        true
    }

    /// Every present shadow leaf of tree `id`: (virtual address, entry, level), in address order.
    pub fn leaves(&self, host: &HostMemory, id: TreeId) -> Vec<(Gva, Hpa, Level)> {
        let mut out = Vec::new();
        if let Some(tree) = self.tree(id) {
            self.collect_leaves(host, tree.table.root(), self.format.root_level(), 0, &mut out);
        }
        out
    }

    fn collect_leaves(
        &self,
        host: &HostMemory,
        page: Hpa,
        level: Level,
        va_base: u64,
        out: &mut Vec<(Gva, Hpa, Level)>,
    ) {
        let span = PageSize::at_level(level).bytes();
        for i in 0..self.entries_in(level) {
            let entry = page.wrapping_add(i * 8);
            let raw = host.read_u64(entry);
            if raw == 0 {
                continue;
            }
            let va = self.canonical(va_base + i * span);
            match self.format.decode(raw, level) {
                Ok(Decoded::Table { next, .. }) => {
                    if let Some(down) = level.down() {
                        self.collect_leaves(host, Hpa::new(next), down, va, out);
                    }
                }
                Ok(Decoded::Leaf { .. }) => out.push((Gva::new(va), entry, level)),
                _ => {}
            }
        }
    }

    /// Sign-extends an address built from table indices (the upper half of the input space).
    fn canonical(&self, va: u64) -> u64 {
        let bits = self.format.input_bits();
        if bits >= 64 || va & (1 << (bits - 1)) == 0 {
            va
        } else {
            va | !((1u64 << bits) - 1)
        }
    }

    /// The shadow leaf for raw guest entry `raw` at `level`, seen through a shadow page whose
    /// upper levels grant `upper` — or `None` when the entry must not be shadowed ahead of use
    /// (invalid, malformed, not yet accessed, outside guest memory, or larger than the host page
    /// mapping it: a splintered page is shadowed piece by piece at its faults).
    pub fn leaf_from_entry(
        &self,
        backing: &GuestBacking,
        raw: u64,
        level: Level,
        upper: (Perms, bool),
        ad_by_hardware: bool,
    ) -> Option<ShadowLeaf> {
        let Ok(Decoded::Leaf { base, attrs }) = self.format.decode(raw, level) else { return None };
        let size = PageSize::at_level(level);
        let gfn = Gpa::new(base).page();
        if size > backing.host_page_at(gfn) || (ad_by_hardware && !attrs.accessed) {
            return None;
        }
        let hfn = backing.lookup(Gpa::new(base).page())?;
        let mut perms = upper.0 & attrs.perms;
        if ad_by_hardware && !attrs.dirty {
            perms.remove(Perms::W);
        }
        Some(ShadowLeaf { base: hfn.addr(), size, perms, global: upper.1 || attrs.global })
    }

    /// Writes entry `index` of shadow page `hfn` from the guest entry `raw` of the page it
    /// mirrors: a leaf is copied ahead of use when [`leaf_from_entry`](Self::leaf_from_entry)
    /// allows, a pointer is kept only if it still leads to the mirror of the same guest table,
    /// anything else is cleared (and refilled at its next use).
    pub fn apply_guest_entry(
        &mut self,
        host: &mut HostMemory,
        backing: &GuestBacking,
        hfn: u64,
        index: u64,
        raw: u64,
        ad_by_hardware: bool,
    ) -> Edit {
        let Some(info) = self.pages.get(&hfn).copied() else { return Edit::default() };
        let entry = Hpa::new((hfn << 12) + index * 8);
        let current = host.read_u64(entry);
        let level = info.level;
        let mut edit = Edit { reads: 1, ..Edit::default() };
        if let Ok(Decoded::Table { next, .. }) = self.format.decode(current, level) {
            if let Ok(Decoded::Table { next: guest_next, .. }) = self.format.decode(raw, level) {
                let same = self.page_of(Hpa::new(next)).is_some_and(|i| {
                    i.mirror == Mirror::Guest(Gpa::new(guest_next).page())
                        && (i.upper_perms, i.upper_global) == self.upper_below(&info, raw)
                });
                if same {
                    return edit;
                }
            }
        }
        let upper = (info.upper_perms, info.upper_global);
        match self.leaf_from_entry(backing, raw, level, upper, ad_by_hardware) {
            Some(leaf) => {
                if let Ok(Decoded::Table { .. }) = self.format.decode(current, level) {
                    edit.add(self.clear_entry(host, entry, level));
                }
                let attrs = LeafAttrs {
                    perms: leaf.perms,
                    global: leaf.global,
                    accessed: true,
                    dirty: true,
                };
                host.write_u64(entry, self.format.encode_leaf(leaf.base.as_u64(), level, attrs));
                edit.writes += 1;
            }
            None if current != 0 => edit.add(self.clear_entry(host, entry, level)),
            None => {}
        }
        edit
    }

    /// What a child of `info` reached through guest pointer `raw` inherits.
    fn upper_below(&self, info: &PageInfo, raw: u64) -> (Perms, bool) {
        match self.format.decode(raw, info.level) {
            Ok(Decoded::Table { perms, global, .. }) => {
                (info.upper_perms & perms, info.upper_global || global)
            }
            _ => (info.upper_perms, info.upper_global),
        }
    }

    /// Pages and trees, for reports.
    pub fn pages(&self) -> u64 {
        self.stats.pages
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::Format;

    fn tables() -> (ShadowTables, HostMemory, GuestBacking, TreeId) {
        let mut host = HostMemory::new(1 << 16);
        let backing = GuestBacking::new(1 << 12);
        let mut t = ShadowTables::new(Format::SV39, true);
        let guest_root = PageTable::new(Gpa::new(0x1000), Format::SV39);
        let id = t.create(&mut host, guest_root, Asid(1), 0).unwrap();
        (t, host, backing, id)
    }

    fn path(tables: [u64; 3]) -> GuestPath {
        let mut p = GuestPath::default();
        for (i, g) in tables.into_iter().enumerate() {
            p.tables[i] = Gfn::new(g);
        }
        p
    }

    fn leaf(base: u64) -> ShadowLeaf {
        ShadowLeaf {
            base: Hpa::new(base),
            size: PageSize::Size4K,
            perms: Perms::R | Perms::U,
            global: false,
        }
    }

    #[test]
    fn install_builds_mirrors_and_invalidate_clears_only_the_leaf() {
        let (mut t, mut host, _, id) = tables();
        let gva = Gva::new(0x4000_2000);
        let p = path([7, 6, 1]);
        let e = t.install(&mut host, id, gva, &p, Level::L0, leaf(0x9000)).unwrap();
        assert_eq!(e.writes, 3, "two pointers and a leaf");
        assert!(e.structural);
        assert_eq!(t.pages(), 3, "root, level-1 and level-0 shadow pages");
        assert_eq!(t.mirrors(Gfn::new(7)).len(), 1);
        assert_eq!(t.mirrors(Gfn::new(6)).len(), 1);
        let (entry, level) = t.find_leaf(&host, id, gva).unwrap();
        assert_eq!(level, Level::L0);
        assert_eq!(t.leaves(&host, id), vec![(Gva::new(0x4000_2000), entry, Level::L0)]);
        // A second install on the same guest path reuses the pages.
        let e2 = t.install(&mut host, id, Gva::new(0x4000_3000), &p, Level::L0, leaf(0xa000));
        assert_eq!(e2.unwrap().writes, 1);
        let inv = t.invalidate(&mut host, id, gva);
        assert_eq!((inv.writes, inv.structural), (1, false));
        assert!(t.find_leaf(&host, id, gva).is_none());
        assert!(t.find_leaf(&host, id, Gva::new(0x4000_3000)).is_some());
    }

    #[test]
    fn a_changed_guest_path_replaces_the_stale_subtree() {
        let (mut t, mut host, _, id) = tables();
        let gva = Gva::new(0x2000);
        t.install(&mut host, id, gva, &path([7, 6, 1]), Level::L0, leaf(0x9000)).unwrap();
        let e = t.install(&mut host, id, gva, &path([8, 6, 1]), Level::L0, leaf(0x9000)).unwrap();
        assert!(e.structural);
        assert!(t.mirrors(Gfn::new(7)).is_empty(), "the old level-0 mirror is gone");
        assert_eq!(t.mirrors(Gfn::new(8)).len(), 1);
        assert_eq!(t.pages(), 3);
    }

    #[test]
    fn dropping_a_tree_frees_every_page() {
        let (mut t, mut host, _, id) = tables();
        let before = host.frames_in_use();
        t.install(&mut host, id, Gva::new(0x2000), &path([7, 6, 1]), Level::L0, leaf(0x9000))
            .unwrap();
        t.drop_tree(&mut host, id);
        assert_eq!(t.pages(), 0);
        assert_eq!(host.frames_in_use(), before - 1, "the root went too");
        assert!(t.mirrors(Gfn::new(1)).is_empty());
        assert!(t.tree(id).is_none());
    }

    #[test]
    fn upper_half_leaves_are_reported_with_canonical_addresses() {
        let (mut t, mut host, _, id) = tables();
        let gva = Gva::new(0xffff_ffc0_0000_1000);
        t.install(&mut host, id, gva, &path([3, 2, 1]), Level::L0, leaf(0x9000)).unwrap();
        assert_eq!(t.leaves(&host, id)[0].0, gva);
    }

    #[test]
    fn a_clean_guest_entry_is_shadowed_without_write_permission() {
        let (t, mut host, mut backing, _) = tables();
        backing.back(Gfn::new(5), &mut host).unwrap();
        let f = Format::SV39;
        let rw = Perms::R | Perms::W | Perms::U;
        let clean = LeafAttrs { perms: rw, global: false, accessed: true, dirty: false };
        let raw = f.encode_leaf(5 << 12, Level::L0, clean);
        let leaf = t.leaf_from_entry(&backing, raw, Level::L0, (Perms::all(), false), true);
        assert_eq!(leaf.unwrap().perms, Perms::R | Perms::U, "W waits for the dirty bit");
        let dirty = f.encode_leaf(5 << 12, Level::L0, LeafAttrs { dirty: true, ..clean });
        let leaf = t.leaf_from_entry(&backing, dirty, Level::L0, (Perms::all(), false), true);
        assert_eq!(leaf.unwrap().perms, rw);
        let young = f.encode_leaf(5 << 12, Level::L0, LeafAttrs { accessed: false, ..clean });
        assert!(
            t.leaf_from_entry(&backing, young, Level::L0, (Perms::all(), false), true).is_none(),
            "an entry the guest has not used is not shadowed ahead of use"
        );
    }
}
