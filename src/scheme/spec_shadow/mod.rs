//! `spec-shadow`: speculative inverted shadow paging (Ahn, Jin and Huh, ISCA 2012).
//!
//! The hypervisor keeps no shadow tables in sync and write-protects nothing. Instead one
//! per-VM inverted (hashed) shadow table in host memory ([`inverted::InvertedTable`]) maps
//! (ASID, guest virtual page) to a host frame, and may be stale (`tag = "root"` tags address
//! spaces by their root table instead, which survives ASID recycling). On a TLB miss the
//! hardware:
//!
//! 1. **probes** the inverted table once (one memory reference with the default geometry) and,
//!    if it holds a translation that permits the access, lets the access proceed with it
//!    *speculatively*;
//! 2. **verifies** with a non-speculative hardware 2D walk over the guest table and the flat
//!    nested table ([`FlatNestedMap`], the one `flat-nested` uses, with the same page-walk caches
//!    and nested TLB): 2n + 1 reads with every cache off;
//! 3. if the walk gives another host frame or faults, **squashes** the speculation (a
//!    mis-speculation: `squash_penalty` cycles on top of the walk, which is then on the critical
//!    path) and delivers the walk's outcome;
//! 4. **refills** the inverted entry with the verified translation whenever it was missing or
//!    differed, and fills the TLB with the verified translation only: a mis-speculated one is
//!    never committed.
//!
//! Cycles: the probe is always paid; the verifying walk only when it is exposed — no usable
//! speculation, a mis-speculation, or `expose_verification = true`. Its references are always
//! counted (they load the memory system whether or not they stall the access), so references per
//! miss include the probe and the verification. The inverted-table refill is a store the walker
//! makes off the critical path (no modelled cost, no recorded reference): an assumption.
//!
//! Guest page-table writes, flushes and root switches need no hypervisor: the TLB obeys the
//! guest's flushes, and the inverted table is corrected by the next verification that meets a
//! stale entry. The flat nested table is filled lazily as `flat-nested`'s is.

pub mod inverted;
pub mod options;

use std::collections::BTreeMap;

use inverted::{InvertedTable, Speculation};
pub use options::{InvertedHash, SpaceTag, SpecShadowOptions};

use super::flat_nested::FlatNestedMap;
use crate::addr::{Gfn, Gpa, Gva, Hpa};
use crate::machine::{Platform, Scheme, SimError, Stop};
use crate::paging::walk::WalkRef;
use crate::paging::{Access, FlatTable};
use crate::stats::Charge;

/// Counters of `spec-shadow`, reported under `scheme_counters`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecShadowStats {
    /// Probes of the inverted table (one per TLB miss).
    pub probes: u64,
    /// Probes that found a translation permitting the access: speculations.
    pub hits: u64,
    /// Speculations the verifying walk proved wrong (another host frame, or a fault): squashed.
    pub mis_speculations: u64,
    /// Entries read by the verifying 2D walks (A/D updates excluded).
    pub verification_reads: u64,
    /// Inverted entries written with a verified translation.
    pub refills: u64,
    /// Cycles of verifying walks hidden behind a correct speculation.
    pub hidden_verification_cycles: u64,
    /// Cycles of squashes.
    pub squash_cycles: u64,
}

/// Speculative inverted shadow paging.
#[derive(Debug)]
pub struct SpecShadow {
    opts: SpecShadowOptions,
    inverted: InvertedTable,
    flat: FlatNestedMap,
    /// References of the probe in progress (one per line of a set; reused).
    probe: Vec<WalkRef>,
    /// Counters.
    pub stats: SpecShadowStats,
}

impl SpecShadow {
    /// The scheme for the platform's guest: an empty inverted table of `opts`' geometry and an
    /// empty flat nested table (a full one with `prepopulate`).
    pub fn new(
        p: &mut Platform,
        opts: SpecShadowOptions,
        prepopulate: bool,
    ) -> Result<Self, SimError> {
        opts.validate().map_err(|e| SimError::Config(e.to_string()))?;
        let inverted = InvertedTable::alloc(&mut p.host, &opts, p.arch.guest_format)?;
        let flat = FlatNestedMap::new(p, prepopulate, "spec-shadow")?;
        Ok(SpecShadow {
            opts,
            inverted,
            flat,
            probe: Vec::new(),
            stats: SpecShadowStats::default(),
        })
    }

    /// The options in force.
    pub fn options(&self) -> &SpecShadowOptions {
        &self.opts
    }

    /// The flat nested table the verifications walk.
    pub fn flat_table(&self) -> &FlatTable {
        self.flat.table()
    }

    /// Whether `spec` may serve `access` (its permissions, and D for a store, as the TLB entry
    /// the verified translation would give).
    fn permits(p: &Platform, spec: &Speculation, access: Access) -> bool {
        let regime = p.arch.guest_regime;
        let allow = p.arch.guest_format.allow_mask(spec.perms, spec.dirty, &regime);
        allow & access.class_bit() != 0
    }
}

impl Scheme for SpecShadow {
    fn name(&self) -> &'static str {
        "spec-shadow"
    }

    fn tlb_miss(&mut self, p: &mut Platform, gva: Gva, access: Access) -> Result<Hpa, Stop> {
        let latency = p.costs.pt_latency();
        let key = self.inverted.key(&p.current_root()?, gva);

        // 1. One probe, always on the critical path.
        self.probe.clear();
        self.probe.extend(self.inverted.probe_refs(self.inverted.set_of(key)));
        p.stats.cycles.walk.charge(p.mmu.account_refs(&self.probe, &latency));
        self.stats.probes += 1;
        let found = self.inverted.lookup(&p.host, key);
        let speculated = found.map(|(_, s)| s).filter(|s| Self::permits(p, s, access));
        self.stats.hits += u64::from(speculated.is_some());

        // 2. The verifying walk (retried after nested faults); its cycles are charged below.
        let (mut walk_cycles, mut reads) = (0u64, 0);
        let verified = self.flat.walk(p, gva, access, |p| {
            walk_cycles.charge(p.mmu.account_walk(&latency));
            reads += p.mmu.trace.reads() as u64;
        });
        self.stats.verification_reads += reads;

        // 3. Squash a wrong speculation.
        let wrong = match (&speculated, &verified) {
            (None, _) => false,
            (Some(s), Ok(c)) => s.hfn != c.hpa.page(),
            (Some(_), Err(_)) => true,
        };
        if wrong {
            self.stats.mis_speculations += 1;
            self.stats.squash_cycles.charge(self.opts.squash_penalty);
            p.stats.cycles.walk.charge(self.opts.squash_penalty);
        }
        if speculated.is_none() || wrong || self.opts.expose_verification {
            p.stats.cycles.walk.charge(walk_cycles);
        } else {
            self.stats.hidden_verification_cycles.charge(walk_cycles);
        }

        // 4. Commit only the verified translation.
        let c = match verified {
            Ok(c) => c,
            Err(stop) => {
                if wrong {
                    self.inverted.invalidate(&mut p.host, key);
                }
                return Err(stop);
            }
        };
        let spec = Speculation {
            hfn: c.hpa.page(),
            perms: c.guest.perms,
            global: c.guest.global,
            dirty: c.guest.dirty,
        };
        if found.map(|(_, s)| s) != Some(spec) {
            self.inverted.store(&mut p.host, key, spec);
            self.stats.refills += 1;
        }
        let regime = p.arch.guest_regime;
        let allow = p.arch.guest_format.allow_mask(c.guest.perms, c.guest.dirty, &regime);
        p.fill_tlb(gva, c.size, c.hpa, c.guest.global, allow)?;
        Ok(c.hpa)
    }

    fn guest_store(
        &mut self,
        p: &mut Platform,
        gpa: Gpa,
        _old: u64,
        _new: u64,
    ) -> Result<(), SimError> {
        self.flat.ensure_mapped(p, gpa)
    }

    fn guest_frame_written(&mut self, p: &mut Platform, gfn: Gfn) -> Result<(), SimError> {
        self.flat.ensure_mapped(p, gfn.addr())
    }

    fn reset_counters(&mut self) {
        self.stats = Default::default();
    }

    fn counters(&self, out: &mut BTreeMap<&'static str, u64>) {
        let s = &self.stats;
        out.insert("probes", s.probes);
        out.insert("hits", s.hits);
        out.insert("mis_speculations", s.mis_speculations);
        out.insert("verification_reads", s.verification_reads);
        out.insert("refills", s.refills);
        out.insert("hidden_verification_cycles", s.hidden_verification_cycles);
        out.insert("squash_cycles", s.squash_cycles);
        out.insert("inverted_table_bytes", self.inverted.bytes());
        out.insert("flat_leaves", self.flat.leaves);
        out.insert("flat_table_bytes", self.flat.table().bytes());
    }
}
