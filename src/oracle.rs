//! The translation oracle (`--verify`, DESIGN.md "Translation oracle"): every translation a
//! scheme hands the TLB through [`Platform::fill_tlb`] is checked against a reference walk of the
//! guest's current table, allowing exactly the staleness the architecture allows.
//!
//! The reference is deliberately independent of the walker in [`crate::paging::walk`](mod@crate::paging::walk): a small
//! loop of its own reads the guest table entry by entry through the hypervisor's memory map
//! (never backing a frame, never writing an accessed or dirty bit), decodes each entry with
//! [`Format::decode`](crate::paging::Format::decode) and combines permissions over the levels as the architectures do. The
//! guest-physical page it reaches is turned into a host address with the hypervisor's map
//! ([`crate::mem::GuestBacking::lookup`]), which every scheme, nested included, follows.
//!
//! A filled translation of `gva` must agree with the reference: (a) the reference exists; (b)
//! the HPA the TLB entry gives for `gva` is the reference's; (c) the entry is no larger than the
//! guest's page, nor than the hypervisor's page mapping that guest page
//! ([`Platform::host_page_at`], `scheme.host_page`); (d) it allows no access class the guest's entry does not (a scheme may be
//! stricter, e.g. withhold stores from a clean page, never looser; an entry whose accessed bit
//! is clear allows nothing); (e) it is global only if the guest's mapping is.
//!
//! Staleness: a translation that fails these checks is still accepted if it equals one the
//! guest's table gave at an earlier check (same HPA for `gva`, no larger than that page, allowing
//! no more) and no guest flush has covered it since: the TLB may hold a translation the guest
//! changed until the guest flushes it. Passing translations are remembered per (global or ASID,
//! guest page) and forgotten by the flushes whose exact scope ([`FlushOp::effect`]) covers them.

use std::collections::HashMap;
use std::fmt;

use crate::addr::{Asid, Gpa, GuestPhys, GuestVirt, Gva, Hpa, PageSize, Vmid};
use crate::machine::{GuestRoot, Platform};
use crate::mmu::flush::TlbScope;
use crate::mmu::FlushOp;
use crate::paging::walk::PageTable;
use crate::paging::{Access, AccessKind, AdPolicy, AllowMask, Decoded, Perms, Privilege};

/// What the oracle counted, reported under `oracle` in the JSON report when `--verify` is on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OracleCounts {
    /// Translations checked (every TLB fill).
    pub checks: u64,
    /// Of those, translations that differed from the guest's current table but equalled one it
    /// gave earlier and has not flushed since.
    pub stale_allowed: u64,
}

/// One translation of a guest virtual address, as a TLB entry holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The host physical address the guest virtual address translates to.
    pub hpa: Hpa,
    /// The page size the translation covers.
    pub size: PageSize,
    /// The access classes it allows ([`Access::class_bit`]).
    pub allow: AllowMask,
    /// Whether it matches every ASID.
    pub global: bool,
}

impl Translation {
    /// The translation of `gva` a TLB entry filled with these arguments of
    /// [`Platform::fill_tlb`] gives: the base is aligned down to `size` as the TLB does.
    pub fn of_fill(gva: Gva, size: PageSize, base: Hpa, global: bool, allow: AllowMask) -> Self {
        let hpa = (base.as_u64() & !size.offset_mask()) | gva.page_offset(size);
        Translation { hpa: Hpa::new(hpa), size, allow, global }
    }
}

impl fmt::Display for Translation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}, allow {}", self.hpa, self.size.name(), AllowClasses(self.allow))?;
        if self.global {
            f.write_str(", global")?;
        }
        f.write_str("]")
    }
}

/// An allow mask as `U:rwx S:rwx`, a dash for each class withheld.
struct AllowClasses(AllowMask);

impl fmt::Display for AllowClasses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (privilege, name)) in
            [(Privilege::User, "U"), (Privilege::Supervisor, "S")].into_iter().enumerate()
        {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}:")?;
            for (kind, letter) in
                [(AccessKind::Load, 'r'), (AccessKind::Store, 'w'), (AccessKind::Fetch, 'x')]
            {
                let bit = Access { kind, privilege }.class_bit();
                write!(f, "{}", if self.0 & bit != 0 { letter } else { '-' })?;
            }
        }
        Ok(())
    }
}

/// A translation that the guest's table does not allow: the run stops with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The scheme that filled the TLB.
    pub scheme: &'static str,
    /// The guest virtual address the TLB was filled for.
    pub gva: Gva,
    /// The access whose TLB miss was being served, if the fill happened during one.
    pub access: Option<(Gva, Access)>,
    /// What the scheme filled.
    pub filled: Translation,
    /// What the guest's current table gives, if anything.
    pub reference: Option<Translation>,
    /// The guest's current root and ASID, if it has set one.
    pub root: Option<GuestRoot>,
    /// Which checks failed, in words.
    pub wrong: Vec<&'static str>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "translation oracle: scheme {} filled the TLB for {}", self.scheme, self.gva)?;
        if let Some((gva, access)) = self.access {
            let privilege = match access.privilege {
                Privilege::User => "user",
                Privilege::Supervisor => "supervisor",
            };
            let kind = match access.kind {
                AccessKind::Load => "load",
                AccessKind::Store => "store",
                AccessKind::Fetch => "fetch",
            };
            write!(f, " (serving a {privilege} {kind} at {gva})")?;
        }
        write!(f, " with {}", self.filled)?;
        let Some(root) = self.root else {
            return write!(f, ", but the guest has set no page-table root");
        };
        write!(
            f,
            ", but the guest's {} table (root {}, ASID {}) ",
            root.table.format(),
            root.table.root(),
            root.asid.0
        )?;
        match self.reference {
            Some(r) => write!(f, "gives {r}")?,
            None => f.write_str("has no translation for it")?,
        }
        write!(f, "; wrong: {}", self.wrong.join(", "))
    }
}

impl std::error::Error for Violation {}

/// The guest's leaf for one address, read without side effects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GuestLeaf {
    /// Guest-physical base of the page.
    base: Gpa,
    size: PageSize,
    /// What the architecture lets a TLB cache: nothing while A is clear (unless A/D are not
    /// maintained), no store while D is clear.
    allow: AllowMask,
    global: bool,
    accessed: bool,
}

impl GuestLeaf {
    /// The guest-physical address `gva` reaches through this page.
    fn gpa(&self, gva: Gva) -> Gpa {
        Gpa::new(self.base.as_u64() | gva.page_offset(self.size))
    }
}

/// Which TLB entries a remembered translation stands for: the global ones or one ASID's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Tag {
    Global,
    Asid(Asid),
}

impl Tag {
    fn selected_by(self, scope: &TlbScope, vmid: Vmid) -> bool {
        match self {
            Tag::Global => scope.selects(vmid, Asid(0), true),
            Tag::Asid(asid) => scope.selects(vmid, asid, false),
        }
    }
}

/// A translation the guest's table gave at a check: the guest page's base and what it allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    base: Gpa,
    allow: AllowMask,
}

/// Remembered translations of one tag, by (guest page base, page size).
type Pages = HashMap<(Gva, PageSize), Vec<Seen>>;

/// The translation oracle of one platform.
#[derive(Debug)]
pub struct Oracle {
    scheme: &'static str,
    access: Option<(Gva, Access)>,
    /// What the running vCPU's TLB may still hold.
    seen: HashMap<Tag, Pages>,
    /// Which vCPU runs, and what every other vCPU's TLB may still hold (each vCPU's TLB goes
    /// stale on its own and is flushed by its own flushes).
    vcpu: usize,
    parked: Vec<HashMap<Tag, Pages>>,
    counts: OracleCounts,
}

impl Oracle {
    /// An oracle checking the fills of the scheme named `scheme`, remembering nothing yet.
    pub fn new(scheme: &'static str) -> Self {
        Oracle {
            scheme,
            access: None,
            seen: HashMap::new(),
            vcpu: 0,
            parked: Vec::new(),
            counts: OracleCounts::default(),
        }
    }

    /// Follows the platform to vCPU `to`: from now on fills and flushes are that vCPU's.
    pub fn switch_vcpu(&mut self, to: usize) {
        if to == self.vcpu {
            return;
        }
        let needed = self.vcpu.max(to) + 1;
        if self.parked.len() < needed {
            self.parked.resize_with(needed, HashMap::new);
        }
        std::mem::swap(&mut self.seen, &mut self.parked[self.vcpu]);
        std::mem::swap(&mut self.seen, &mut self.parked[to]);
        self.vcpu = to;
    }

    /// What it has counted.
    pub fn counts(&self) -> OracleCounts {
        self.counts
    }

    /// Zeroes the counts (after the guest's boot, as every other counter), keeping what it
    /// remembers.
    pub fn reset_counts(&mut self) {
        self.counts = OracleCounts::default();
    }

    /// Notes the access whose TLB miss is about to be served (`None` once served), to name it
    /// in a violation.
    pub fn serving(&mut self, access: Option<(Gva, Access)>) {
        self.access = access;
    }

    /// Checks `filled`, a translation of `gva` about to enter the TLB of `p`, against the
    /// guest's current table and the translations it may still have cached.
    pub fn check(
        &mut self,
        p: &Platform,
        gva: Gva,
        filled: Translation,
    ) -> Result<(), Box<Violation>> {
        self.counts.checks += 1;
        let leaf = p.root.and_then(|root| guest_leaf(p, &root.table, gva));
        let reference = leaf.and_then(|l| reference(p, &l, gva));
        let wrong = match (reference, leaf) {
            (Some(r), Some(l)) => {
                let host_page = p.host_page_at(l.gpa(gva).page());
                disagreements(&filled, &r, host_page, l.accessed)
            }
            _ => vec!["no translation"],
        };
        let own = Tag::Asid(p.mmu.asid());
        if wrong.is_empty() {
            if let Some(leaf) = leaf {
                // The hardware may cache a global mapping as global, whatever this fill says.
                self.remember(if leaf.global { Tag::Global } else { own }, gva, &leaf);
            }
            return Ok(());
        }
        if self.remembered(p, if filled.global { Tag::Global } else { own }, gva, &filled) {
            self.counts.stale_allowed += 1;
            return Ok(());
        }
        Err(Box::new(Violation {
            scheme: self.scheme,
            gva,
            access: self.access,
            filled,
            reference,
            root: p.root,
            wrong,
        }))
    }

    /// Forgets the remembered translations that `op`, executed by the guest on a vCPU running
    /// `vmid` with ASID `current`, invalidates.
    pub fn flush(&mut self, op: &FlushOp, vmid: Vmid, current: Asid) {
        let Some(scope) = op.effect(vmid, current).tlb else { return };
        match scope.va {
            None => self.seen.retain(|tag, _| !tag.selected_by(&scope, vmid)),
            Some(va) => {
                for (_, pages) in self.seen.iter_mut().filter(|(t, _)| t.selected_by(&scope, vmid))
                {
                    for size in PageSize::ALL {
                        pages.remove(&(va.align_down(size), size));
                    }
                }
            }
        }
    }

    fn remember(&mut self, tag: Tag, gva: Gva, leaf: &GuestLeaf) {
        let seen = Seen { base: leaf.base, allow: leaf.allow };
        let versions =
            self.seen.entry(tag).or_default().entry((gva.align_down(leaf.size), leaf.size));
        let versions = versions.or_default();
        let covers = |a: &Seen, b: &Seen| a.base == b.base && b.allow & !a.allow == 0;
        if versions.iter().any(|v| covers(v, &seen)) {
            return;
        }
        versions.retain(|v| !covers(&seen, v));
        versions.push(seen);
    }

    /// Whether `filled` equals a remembered translation of `gva` that a TLB entry tagged `tag`
    /// could still hold (a non-global entry may also come from a global one: it is stricter).
    fn remembered(&self, p: &Platform, tag: Tag, gva: Gva, filled: &Translation) -> bool {
        let tags: &[Tag] = match tag {
            Tag::Global => &[Tag::Global],
            own @ Tag::Asid(_) => &[own, Tag::Global],
        };
        tags.iter().filter_map(|t| self.seen.get(t)).any(|pages| {
            PageSize::ALL.iter().filter(|&&size| filled.size <= size).any(|&size| {
                let Some(versions) = pages.get(&(gva.align_down(size), size)) else {
                    return false;
                };
                versions.iter().any(|v| {
                    let gpa = Gpa::new(v.base.as_u64() | gva.page_offset(size));
                    host_address(p, gpa) == Some(filled.hpa)
                        && filled.allow & !v.allow == 0
                        && filled.size <= p.host_page_at(gpa.page())
                })
            })
        })
    }
}

/// Which of checks (b) to (e) `filled` fails against `reference`, whose guest page the
/// hypervisor maps with `host_page`-sized pages.
fn disagreements(
    filled: &Translation,
    reference: &Translation,
    host_page: PageSize,
    accessed: bool,
) -> Vec<&'static str> {
    let mut wrong = Vec::new();
    if filled.hpa != reference.hpa {
        wrong.push("hpa");
    }
    if filled.size > reference.size {
        wrong.push("size larger than the guest's page");
    }
    if filled.size > host_page {
        wrong.push("size larger than the host's page");
    }
    if filled.allow & !reference.allow != 0 {
        wrong.push(if accessed {
            "allows an access the guest's entry does not"
        } else {
            "allows an access although the guest's entry is not accessed (A clear)"
        });
    }
    if filled.global && !reference.global {
        wrong.push("global although the guest's mapping is not");
    }
    wrong
}

/// The reference translation of `gva` through `leaf`: the host page behind the guest page.
fn reference(p: &Platform, leaf: &GuestLeaf, gva: Gva) -> Option<Translation> {
    let gpa = leaf.gpa(gva);
    let hpa = host_address(p, gpa)?;
    Some(Translation { hpa, size: leaf.size, allow: leaf.allow, global: leaf.global })
}

/// The host address behind `gpa` in the hypervisor's map, without backing anything.
fn host_address(p: &Platform, gpa: Gpa) -> Option<Hpa> {
    let hfn = p.guest_mem.lookup(gpa.page())?;
    Some(Hpa::new(hfn.addr().as_u64() | gpa.page_offset(PageSize::Size4K)))
}

/// The guest's leaf for `gva` in `table`, walked entry by entry from the root as the
/// architecture does (priv spec §4.3.2, SDM Vol. 3A §4.5), without page-walk caches and without
/// side effects.
fn guest_leaf(
    p: &Platform,
    table: &PageTable<GuestVirt, GuestPhys>,
    gva: Gva,
) -> Option<GuestLeaf> {
    let format = table.format();
    let regime = &p.arch.guest_regime;
    if !format.input_is_valid(gva.as_u64()) {
        return None;
    }
    let (mut level, mut at, mut perms, mut global) =
        (format.root_level(), table.root(), Perms::all(), false);
    loop {
        // An entry in guest memory nothing backs was never written: it reads as invalid.
        let entry = host_address(p, table.entry_addr(at, gva, level))?;
        match format.decode(p.host.read_u64(entry), level).ok()? {
            Decoded::Invalid => return None,
            Decoded::Table { next, perms: table_perms, global: table_global, .. } => {
                // x86/EPT: permissions AND over the levels; RISC-V: a non-leaf G makes every
                // translation below it global.
                perms &= table_perms;
                global |= table_global;
                level = level.down()?;
                at = Gpa::new(next);
            }
            Decoded::Leaf { base, attrs } => {
                let effective = perms & attrs.perms;
                let accessed = attrs.accessed || regime.ad == AdPolicy::Ignore;
                let allow =
                    if accessed { format.allow_mask(effective, attrs.dirty, regime) } else { 0 };
                return Some(GuestLeaf {
                    base: Gpa::new(base),
                    size: PageSize::at_level(level),
                    allow,
                    global: global || attrs.global,
                    accessed,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Gfn;
    use crate::fixture::{self, Guest, USER_RW};
    use crate::machine::{Machine, SimError};
    use crate::mem::MemError;
    use crate::mmu::MmuConfig;
    use crate::paging::mapper;
    use crate::paging::{Format, LeafAttrs};
    use crate::scheme::Native;

    const ASID: Asid = Asid(1);
    const OTHER_ASID: Asid = Asid(2);
    /// A 2 MiB-aligned user region; each test page sits at the offset of its guest frame, so
    /// that it has the same offset in its 2 MiB page as its host frame (host chunks are 2 MiB
    /// aligned) and a 2 MiB fill can be wrong in its size alone.
    const REGION: u64 = 0x4000_0000;

    /// A native Sv39 machine with the oracle on, and a guest with one address space.
    fn machine() -> (Machine<Native>, Guest) {
        let arch = fixture::arch(Format::SV39, Format::SV39X4);
        let platform = fixture::platform(arch, MmuConfig::default()).expect("platform");
        let mut m = Machine::new(platform, Native);
        m.enable_oracle();
        let guest = Guest::new(&mut m, ASID).expect("guest");
        (m, guest)
    }

    /// A fresh guest frame and the host address behind it.
    fn frame(m: &mut Machine<Native>, guest: &mut Guest) -> (Gfn, Hpa) {
        let gfn = guest.alloc().expect("a guest frame");
        let hfn = m.platform.back(gfn).expect("backing").expect("inside guest memory");
        (gfn, hfn.addr())
    }

    /// Maps a fresh frame at the page of `REGION` matching its frame number, with `attrs`;
    /// returns the page and the host address it translates to.
    fn map_page(m: &mut Machine<Native>, guest: &mut Guest, attrs: LeafAttrs) -> (Gva, Hpa) {
        let (gfn, hpa) = frame(m, guest);
        let va = Gva::new(REGION + gfn.addr().as_u64() % PageSize::Size2M.bytes());
        guest.map(m, va, gfn.addr(), PageSize::Size4K, attrs).expect("map");
        (va, hpa)
    }

    /// Points the leaf of `va`, a page of `size`, at `gfn` with a store, without any flush.
    fn remap(m: &mut Machine<Native>, guest: &Guest, va: Gva, size: PageSize, gfn: Gfn) {
        let table = guest.root.table;
        let attrs = LeafAttrs::new(USER_RW);
        let leaf = table.format().encode_leaf(gfn.addr().as_u64(), size.level(), attrs);
        let mut store = m.guest_tables(|| Err(MemError::GuestExhausted { frames: 0, mib: 0 }));
        let changed = mapper::update_leaf(&table, &mut store, va, |_| leaf);
        assert!(store.error.is_none());
        changed.expect("a leaf to change").1.ignore();
    }

    /// What the guest entry `attrs` lets a TLB cache.
    fn allow_of(attrs: LeafAttrs) -> AllowMask {
        Format::SV39.allow_mask(
            attrs.perms,
            attrs.dirty,
            &fixture::arch(Format::SV39, Format::SV39X4).guest_regime,
        )
    }

    fn fill(
        m: &mut Machine<Native>,
        va: Gva,
        size: PageSize,
        base: Hpa,
        global: bool,
        allow: AllowMask,
    ) -> Result<(), SimError> {
        m.platform.fill_tlb(va, size, base, global, allow)
    }

    /// The violation `result` must be, with its message.
    fn violation(result: Result<(), SimError>) -> (Violation, String) {
        match result {
            Err(e @ SimError::Oracle(_)) => {
                let text = e.to_string();
                let SimError::Oracle(v) = e else { unreachable!() };
                (*v, text)
            }
            other => panic!("expected an oracle violation, got {other:?}"),
        }
    }

    fn counts(m: &Machine<Native>) -> OracleCounts {
        m.platform.oracle.as_ref().map(|o| o.counts()).unwrap_or_default()
    }

    const RW: LeafAttrs = LeafAttrs::new(USER_RW);

    #[test]
    fn the_native_walks_translation_passes_and_is_counted() {
        let (mut m, mut guest) = machine();
        let (va, hpa) = map_page(&mut m, &mut guest, RW);
        assert_eq!(m.access(va, Access::USER_STORE).ok(), Some(hpa));
        assert_eq!(counts(&m), OracleCounts { checks: 1, stale_allowed: 0 });
    }

    #[test]
    fn a_wrong_host_address_is_a_violation_naming_both_translations() {
        let (mut m, mut guest) = machine();
        let (va, hpa) = map_page(&mut m, &mut guest, RW);
        let wrong = hpa.wrapping_add(PageSize::Size4K.bytes());
        let (v, text) = violation(fill(&mut m, va, PageSize::Size4K, wrong, false, allow_of(RW)));
        assert_eq!(v.wrong, ["hpa"]);
        assert_eq!(v.filled.hpa, wrong);
        assert_eq!(v.reference.map(|r| r.hpa), Some(hpa));
        assert!(text.contains(&wrong.to_string()) && text.contains(&hpa.to_string()), "{text}");
        assert!(text.contains("scheme native") && text.contains(&va.to_string()), "{text}");
        let root = guest.root.table.root().to_string();
        assert!(text.contains(&root) && text.contains("ASID 1"), "{text}");
        assert_eq!(counts(&m).checks, 1, "a rejected translation is counted too");
    }

    #[test]
    fn a_page_larger_than_the_guests_is_a_violation() {
        let (mut m, mut guest) = machine();
        let (va, hpa) = map_page(&mut m, &mut guest, RW);
        let (v, text) = violation(fill(&mut m, va, PageSize::Size2M, hpa, false, allow_of(RW)));
        assert_eq!(v.wrong, ["size larger than the guest's page"], "{text}");
        assert!(text.contains("[2M,") && text.contains("[4K,"), "{text}");
    }

    #[test]
    fn a_page_larger_than_the_hosts_is_a_violation() {
        let (mut m, mut guest) = machine();
        // A 2 MiB guest page the hypervisor maps with 4 KiB pages: a 2 MiB entry gives the
        // right address for every byte (the backing is contiguous) but is still too large.
        m.platform.set_host_page(crate::mem::HostPage::Size4K);
        let gfn = guest.alloc_aligned(PageSize::Size2M).expect("an aligned 2 MiB");
        let hpa = m.platform.back(gfn).expect("backing").expect("inside").addr();
        let va = Gva::new(REGION);
        guest.map(&mut m, va, gfn.addr(), PageSize::Size2M, RW).expect("map");
        let (v, text) = violation(fill(&mut m, va, PageSize::Size2M, hpa, false, allow_of(RW)));
        assert_eq!(v.wrong, ["size larger than the host's page"], "{text}");
        fill(&mut m, va, PageSize::Size4K, hpa, false, allow_of(RW)).expect("4 KiB fits");
    }

    #[test]
    fn an_allow_mask_looser_than_the_guest_entry_is_a_violation() {
        let (mut m, mut guest) = machine();
        let (va, hpa) = map_page(&mut m, &mut guest, RW);
        // Supervisor access to a user page without SUM is denied by the guest's entry.
        let (v, text) = violation(fill(&mut m, va, PageSize::Size4K, hpa, false, 0x3f));
        assert_eq!(v.wrong, ["allows an access the guest's entry does not"]);
        assert!(text.contains("allow U:rwx S:rwx") && text.contains("allow U:rw- S:---"), "{text}");
    }

    #[test]
    fn a_clean_page_may_not_be_cached_writable_and_an_unaccessed_one_not_at_all() {
        let (mut m, mut guest) = machine();
        let clean = LeafAttrs { dirty: false, ..RW };
        let (va, hpa) = map_page(&mut m, &mut guest, clean);
        let (v, _) = violation(fill(&mut m, va, PageSize::Size4K, hpa, false, allow_of(RW)));
        assert_eq!(v.reference.map(|r| r.allow), Some(allow_of(clean)));
        fill(&mut m, va, PageSize::Size4K, hpa, false, allow_of(clean)).expect("stricter");
        let old = LeafAttrs { accessed: false, dirty: false, ..RW };
        let (va, hpa) = map_page(&mut m, &mut guest, old);
        let load = Access::USER_LOAD.class_bit();
        let (v, text) = violation(fill(&mut m, va, PageSize::Size4K, hpa, false, load));
        assert!(text.contains("A clear"), "{text}");
        assert_eq!(v.reference.map(|r| r.allow), Some(0));
    }

    #[test]
    fn a_global_fill_of_a_non_global_mapping_is_a_violation() {
        let (mut m, mut guest) = machine();
        let (va, hpa) = map_page(&mut m, &mut guest, RW);
        let (v, _) = violation(fill(&mut m, va, PageSize::Size4K, hpa, true, allow_of(RW)));
        assert_eq!(v.wrong, ["global although the guest's mapping is not"]);
    }

    #[test]
    fn a_fill_where_the_guest_maps_nothing_is_a_violation() {
        let (mut m, _guest) = machine();
        let va = Gva::new(REGION);
        let (v, text) = violation(fill(&mut m, va, PageSize::Size4K, Hpa::ZERO, false, 1));
        assert_eq!(v.reference, None);
        assert!(text.contains("has no translation for it"), "{text}");
    }

    #[test]
    fn a_stricter_fill_passes() {
        let (mut m, mut guest) = machine();
        let (va, hpa) = map_page(&mut m, &mut guest, RW);
        let load = Access::USER_LOAD.class_bit();
        fill(&mut m, va, PageSize::Size4K, hpa, false, load).expect("a subset");
    }

    #[test]
    fn a_violation_names_the_access_being_served() {
        /// Fills every miss with host frame 1, whatever the guest maps.
        struct FrameOne;
        impl crate::machine::Scheme for FrameOne {
            fn name(&self) -> &'static str {
                "frame-one"
            }
            fn tlb_miss(
                &mut self,
                p: &mut Platform,
                gva: Gva,
                _: Access,
            ) -> Result<Hpa, crate::machine::Stop> {
                let base = Hpa::new(0x1000);
                p.fill_tlb(gva, PageSize::Size4K, base, false, 1)?;
                Ok(base)
            }
        }
        let (mut m, mut guest) = machine();
        let (va, _) = map_page(&mut m, &mut guest, RW);
        let mut broken = Machine::new(m.platform, FrameOne);
        broken.enable_oracle();
        let err = broken.access(va.wrapping_add(8), Access::USER_STORE).expect_err("caught");
        let crate::machine::Stop::Error(e) = err else { panic!("{err:?}") };
        let text = e.to_string();
        assert!(text.contains("scheme frame-one"), "{text}");
        assert!(text.contains("serving a user store at gva"), "{text}");
    }

    #[test]
    fn a_changed_unflushed_translation_stays_allowed_until_a_flush_covers_it() {
        let (mut m, mut guest) = machine();
        let (va, stale) = map_page(&mut m, &mut guest, RW);
        let (new, fresh) = frame(&mut m, &mut guest);
        m.access(va, Access::USER_LOAD).expect("first translation");
        remap(&mut m, &guest, va, PageSize::Size4K, new);
        let allow = allow_of(RW);
        fill(&mut m, va, PageSize::Size4K, stale, false, allow).expect("not flushed yet");
        assert_eq!(counts(&m).stale_allowed, 1);
        fill(&mut m, va, PageSize::Size4K, fresh, false, allow).expect("the current one");
        // Neither a flush of another page nor one of another ASID covers it.
        let other_page = va.wrapping_add(PageSize::Size4K.bytes());
        m.guest_flush(FlushOp::SfenceVma { va: Some(other_page), asid: None }).expect("flush");
        m.guest_flush(FlushOp::SfenceVma { va: Some(va), asid: Some(OTHER_ASID) }).expect("flush");
        fill(&mut m, va, PageSize::Size4K, stale, false, allow).expect("still not flushed");
        // Stale translations never grow: a looser one is still rejected.
        let (v, _) = violation(fill(&mut m, va, PageSize::Size4K, stale, false, 0x3f));
        assert_eq!(v.reference.map(|r| r.hpa), Some(fresh));
        m.guest_flush(FlushOp::SfenceVma { va: Some(va), asid: Some(ASID) }).expect("flush");
        let (v, text) = violation(fill(&mut m, va, PageSize::Size4K, stale, false, allow));
        assert_eq!(v.wrong, ["hpa"], "{text}");
        assert_eq!(counts(&m).stale_allowed, 2);
    }

    #[test]
    fn a_global_translation_survives_an_asid_flush_but_not_a_flush_of_everything() {
        let (mut m, mut guest) = machine();
        let global = LeafAttrs { global: true, ..RW };
        let (va, stale) = map_page(&mut m, &mut guest, global);
        let (new, _) = frame(&mut m, &mut guest);
        m.access(va, Access::USER_LOAD).expect("first translation");
        remap(&mut m, &guest, va, PageSize::Size4K, new);
        let allow = allow_of(global);
        m.guest_flush(FlushOp::SfenceVma { va: None, asid: Some(ASID) }).expect("flush");
        fill(&mut m, va, PageSize::Size4K, stale, true, allow).expect("globals survive");
        // A non-global copy of a global translation is stricter, so it is allowed too.
        fill(&mut m, va, PageSize::Size4K, stale, false, allow).expect("non-global copy");
        m.guest_flush(FlushOp::SfenceVma { va: None, asid: None }).expect("flush");
        violation(fill(&mut m, va, PageSize::Size4K, stale, true, allow));
    }

    #[test]
    fn a_non_global_translation_is_stale_only_in_its_own_asid() {
        let (mut m, mut guest) = machine();
        let (va, stale) = map_page(&mut m, &mut guest, RW);
        let (new, _) = frame(&mut m, &mut guest);
        m.access(va, Access::USER_LOAD).expect("first translation");
        remap(&mut m, &guest, va, PageSize::Size4K, new);
        // The same table under another ASID: nothing it could have cached.
        let other = crate::machine::GuestRoot { asid: OTHER_ASID, ..guest.root };
        m.guest_root_switch(other).expect("switch");
        violation(fill(&mut m, va, PageSize::Size4K, stale, false, allow_of(RW)));
    }

    #[test]
    fn a_flush_of_any_address_in_a_superpage_forgets_the_whole_page() {
        let (mut m, mut guest) = machine();
        let big = PageSize::Size2M;
        let (old, new) =
            (guest.alloc_aligned(big).expect("2M"), guest.alloc_aligned(big).expect("2M"));
        let stale = m.platform.back(old).expect("backing").expect("inside").addr();
        m.platform.back(new).expect("backing");
        let va = Gva::new(REGION + 4 * big.bytes());
        guest.map(&mut m, va, old.addr(), big, RW).expect("map");
        m.access(va, Access::USER_LOAD).expect("first translation");
        remap(&mut m, &guest, va, big, new);
        let inside = va.wrapping_add(big.bytes() - PageSize::Size4K.bytes());
        let stale_inside = stale.wrapping_add(big.bytes() - PageSize::Size4K.bytes());
        fill(&mut m, inside, PageSize::Size4K, stale_inside, false, allow_of(RW)).expect("stale");
        m.guest_flush(FlushOp::SfenceVma { va: Some(inside), asid: Some(ASID) }).expect("flush");
        violation(fill(&mut m, va, big, stale, false, allow_of(RW)));
    }
}
