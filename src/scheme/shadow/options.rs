//! The design space of shadow paging as named parameters (DESIGN.md §3). `tsp`, `tsp-unsync`,
//! `ssp`, `lsp` and `rvirt` are presets; `--set scheme.KEY=VALUE` moves any of them along any
//! axis.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::mem::HostPage;

/// How many address spaces one shadow table serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Granularity {
    /// One shadow table per guest address space, kept across switches (KVM, Xen, SSP, LSP).
    Process,
    /// One shadow table for the vCPU, wiped at every guest root switch (RVirt).
    Vcpu,
}

/// Whether the vCPUs of a VM share its per-process shadow tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sharing {
    /// One set of shadow tables for the VM, shared by its vCPUs (KVM, SSP): each is filled once
    /// for all, and changing one must reach every vCPU's cached walk pointers.
    #[default]
    Vm,
    /// A set per vCPU: each vCPU fills its own, and each maintains its own at the flushes it
    /// receives. Flush interception only (write protection would have to emulate every guest
    /// write into every vCPU's mirrors).
    Vcpu,
}

/// How the hypervisor learns that the guest changed a page-table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Notice {
    /// Every shadowed guest table page is write-protected: each store to one is a VM exit
    /// (traditional shadow paging).
    WriteProtect,
    /// Nothing is protected; the guest's own TLB flushes are the sync points (SSP, LSP, RVirt).
    Flush,
}

/// Where an intercepted guest TLB flush is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HandlerAt {
    /// In the hypervisor: a VM exit.
    Hypervisor,
    /// In hardware mode (RISC-V M-mode, Sunway HMcode): a trap, no VM exit.
    Hardware,
}

/// When a flush-driven scheme re-reads the guest entries a flush covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncAt {
    /// Invalidate at the flush; re-sync at the next miss (a shadow fault).
    Lazy,
    /// Re-sync at the flush, in the hypervisor (one VM exit per flush that covers shadow state).
    Eager,
}

/// What a flush-driven scheme does at a flush without an address (one ASID, or everything).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WideFlush {
    /// Invalidate every shadow entry of the scope where flushes are handled (SSP).
    Invalidate,
    /// Re-sync every shadow entry of the scope from the guest, in the hypervisor (LSP).
    EagerSync,
    /// Throw the scope's shadow tables away, in the hypervisor (RVirt).
    Wipe,
}

/// Every axis along which the shadow schemes differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowOptions {
    /// Shadow table per guest process or per vCPU.
    pub granularity: Granularity,
    /// Write protection or flush interception.
    pub notice: Notice,
    /// Write protection only: a leaf guest table page goes out of sync (unprotected) at its first
    /// write fault and is re-synced at the guest's flushes (KVM unsync, Xen out-of-sync).
    pub unsync: bool,
    /// Most guest pages out of sync at once; the oldest is re-synced beyond it. 0 = unbounded
    /// (KVM); Xen allows 3 per vCPU (SHADOW_OOS_PAGES).
    pub unsync_limit: u64,
    /// Write protection only: a shadowed guest table page is unshadowed (its shadow pages
    /// dropped, the protection lifted) at the `write_flood`-th emulated write with no shadow
    /// fault through it in between, KVM's write-flood detection (`detect_write_flooding`:
    /// 3; the `tsp-unsync` preset's). Leaf pages that go out of sync instead (`unsync`) are
    /// exempt, as in KVM. 0: never, the traditional shadow pager of the LSP paper (`tsp`).
    pub write_flood: u64,
    /// With `unsync`: how many previously used shadow roots a single-address flush also re-syncs
    /// besides the current one (KVM_MMU_NUM_PREV_ROOTS = 3). Other roots are re-synced when the
    /// guest switches back to them.
    pub prev_roots: u64,
    /// Where intercepted flushes are handled.
    pub flush_handler: HandlerAt,
    /// Flush interception only: invalidate now and sync at the next miss, or sync at the flush.
    pub flush_sync: SyncAt,
    /// Flush interception only: what a flush without an address does.
    pub wide_flush: WideFlush,
    /// Entries of the shadow-table base address buffer: a guest root switch to a buffered root
    /// is a hardware-mode trap, not a VM exit (SSP). 0: every root switch exits. Size
    /// unpublished; 8 is an assumption.
    pub root_buffer: u64,
    /// Shadow tables kept, one per guest address space (LRU beyond). Assumption: 64; KVM keeps
    /// the shadow pages of roots it left in its page hash, bounded only by memory.
    pub cached_roots: u64,
    /// Where a shadow fault is filled: by the hypervisor (a VM exit), or in hardware mode by a
    /// software 2D walk of the guest and nested tables (ASP, TC'22) when the shadow leaf's
    /// table already exists — faults that need a new shadow-table page still exit.
    pub leaf_fill: HandlerAt,
    /// The page size with which the hypervisor maps guest memory: shadow entries are no larger
    /// than min(guest page, host page) (splintering), and ASP's nested table maps this size.
    pub host_page: HostPage,
    /// Per-process shadow tables shared by the VM's vCPUs or kept per vCPU (`granularity =
    /// "vcpu"` is always per vCPU).
    #[serde(default)]
    pub sharing: Sharing,
}

/// The largest table counts a parameter may ask for (far beyond any sensible setting).
const MAX_ROOTS: u64 = 1 << 16;

impl ShadowOptions {
    /// Traditional shadow paging: every shadowed guest table page is write-protected, every
    /// flush and root switch exits.
    pub const TSP: ShadowOptions = ShadowOptions {
        granularity: Granularity::Process,
        notice: Notice::WriteProtect,
        unsync: false,
        write_flood: 0,
        unsync_limit: 0,
        prev_roots: 3,
        flush_handler: HandlerAt::Hypervisor,
        flush_sync: SyncAt::Lazy,
        wide_flush: WideFlush::Invalidate,
        root_buffer: 0,
        cached_roots: 64,
        leaf_fill: HandlerAt::Hypervisor,
        host_page: HostPage::Size4K,
        sharing: Sharing::Vm,
    };

    /// KVM's shadow MMU: out-of-sync leaf pages (Xen's out-of-sync pages too; papers.md,
    /// "Real-world strongest TSP baselines") and write-flood unshadowing at KVM's 3.
    pub const TSP_UNSYNC: ShadowOptions =
        ShadowOptions { unsync: true, write_flood: 3, ..Self::TSP };

    /// Swift Shadow Paging: no write protection; flushes invalidate in hardware mode at their own
    /// granularity; root switches to buffered roots stay in hardware mode.
    pub const SSP: ShadowOptions = ShadowOptions {
        notice: Notice::Flush,
        flush_handler: HandlerAt::Hardware,
        root_buffer: 8,
        ..Self::TSP
    };

    /// Accelerated Shadow Paging: SSP, with shadow leaf faults filled in hardware mode.
    pub const ASP: ShadowOptions = ShadowOptions { leaf_fill: HandlerAt::Hardware, ..Self::SSP };

    /// Lazy Shadow Paging: SSP's lazy protocol on RISC-V; a single-address `sfence.vma` is an
    /// M-mode fast path, a flush without an address an eager sync in the hypervisor, and `satp`
    /// writes exit.
    pub const LSP: ShadowOptions =
        ShadowOptions { wide_flush: WideFlush::EagerSync, root_buffer: 0, ..Self::SSP };

    /// RVirt: one shadow table per vCPU, single-address flushes invalidate (trap-and-emulate, so
    /// a VM exit), flushes without an address and root switches wipe it.
    pub const RVIRT: ShadowOptions = ShadowOptions {
        granularity: Granularity::Vcpu,
        notice: Notice::Flush,
        flush_handler: HandlerAt::Hypervisor,
        wide_flush: WideFlush::Wipe,
        root_buffer: 0,
        cached_roots: 1,
        ..Self::TSP
    };

    /// Applies `scheme.KEY=VALUE` settings (without the prefix) and validates the result.
    pub fn with_sets(mut self, sets: &[(String, String)]) -> Result<Self, ConfigError> {
        self = crate::config::set_all(self, sets)?;
        self.validate()?;
        Ok(self)
    }

    /// Refuses combinations that mean nothing.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        if self.unsync && self.notice != Notice::WriteProtect {
            return bad("scheme.unsync = true needs scheme.notice = \"write-protect\"".into());
        }
        if self.write_flood > 0 && self.notice != Notice::WriteProtect {
            return bad("scheme.write_flood needs scheme.notice = \"write-protect\"".into());
        }
        if !(1..=MAX_ROOTS).contains(&self.cached_roots) {
            return bad(format!(
                "scheme.cached_roots = {} must be between 1 and {MAX_ROOTS}",
                self.cached_roots
            ));
        }
        if self.root_buffer > MAX_ROOTS || self.prev_roots > MAX_ROOTS {
            return bad(format!(
                "scheme.root_buffer and scheme.prev_roots are at most {MAX_ROOTS}"
            ));
        }
        if self.unsync_limit > MAX_ROOTS * 512 {
            return bad(format!("scheme.unsync_limit is at most {}", MAX_ROOTS * 512));
        }
        if self.sharing == Sharing::Vcpu && self.notice != Notice::Flush {
            return bad(
                "scheme.sharing = \"vcpu\" needs scheme.notice = \"flush\": write protection keeps \
                 one set of shadow tables for the VM"
                    .into(),
            );
        }
        if self.granularity == Granularity::Vcpu && self.root_buffer != 0 {
            return bad(
                "scheme.root_buffer needs scheme.granularity = \"process\": a per-vCPU shadow \
                 table is wiped at every root switch"
                    .into(),
            );
        }
        Ok(())
    }

    /// Whether guest table pages are write-protected.
    pub fn write_protects(&self) -> bool {
        self.notice == Notice::WriteProtect
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(k: &str, v: &str) -> Vec<(String, String)> {
        vec![(k.to_owned(), v.to_owned())]
    }

    #[test]
    fn presets_are_valid_and_differ_on_their_axes() {
        for p in [
            ShadowOptions::TSP,
            ShadowOptions::TSP_UNSYNC,
            ShadowOptions::SSP,
            ShadowOptions::LSP,
            ShadowOptions::RVIRT,
        ] {
            p.validate().unwrap();
        }
        assert_eq!(ShadowOptions::LSP.flush_handler, HandlerAt::Hardware);
        assert_eq!(ShadowOptions::LSP.root_buffer, 0);
        assert_eq!(ShadowOptions::SSP.wide_flush, WideFlush::Invalidate);
    }

    #[test]
    fn settings_apply_by_name_and_bad_ones_are_refused() {
        let lsp = ShadowOptions::LSP.with_sets(&set("root_buffer", "8")).unwrap();
        assert_eq!(lsp.root_buffer, 8);
        let eager = ShadowOptions::SSP.with_sets(&set("flush_sync", "eager")).unwrap();
        assert_eq!(eager.flush_sync, SyncAt::Eager);
        assert!(ShadowOptions::SSP.with_sets(&set("unsync", "true")).is_err());
        assert!(ShadowOptions::SSP.with_sets(&set("write_flood", "3")).is_err());
        assert_eq!(ShadowOptions::TSP.with_sets(&set("write_flood", "3")).unwrap().write_flood, 3);
        assert!(ShadowOptions::TSP.with_sets(&set("cached_roots", "0")).is_err());
        assert!(ShadowOptions::RVIRT.with_sets(&set("root_buffer", "4")).is_err());
        let unknown = ShadowOptions::TSP.with_sets(&set("colour", "red")).unwrap_err();
        assert!(unknown.to_string().contains("cached_roots"), "{unknown}");
        assert!(ShadowOptions::TSP.with_sets(&set("flush_sync", "sometimes")).is_err());
    }
}
