//! Memory-virtualization schemes, one file each, behind the [`Scheme`](crate::machine::Scheme)
//! trait. [`SchemeKind`] lists them for the command line; the hot loop is generic over the scheme
//! type, so `dyn` appears only at the control plane.

pub mod flat_nested;
pub mod host;
pub mod hspt;
pub mod native;
pub mod nested;
mod settings;
pub mod shadow;
pub mod snp;
pub mod softmmu;
pub mod spec_shadow;

pub use flat_nested::{FlatNested, FlatNestedOptions};
pub use hspt::{Hspt, HsptOptions, Organization};
pub use native::Native;
pub use nested::{Nested, NestedOptions, NestedSettings, NestedWalk};
pub use settings::check_scheme_sets;
pub use shadow::{Shadow, ShadowOptions};
pub use softmmu::{Softmmu, SoftmmuOptions};
pub use spec_shadow::{SpecShadow, SpecShadowOptions};

/// The schemes memvirt implements.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum SchemeKind {
    /// No hypervisor: the guest's table is the machine's table.
    Native,
    /// Nested (two-dimensional) paging: guest table × nested table in hardware.
    Nested,
    /// Traditional shadow paging: write-protected guest tables, every flush and root switch exits.
    Tsp,
    /// Shadow paging with out-of-sync leaf table pages (KVM unsync, Xen OOS).
    TspUnsync,
    /// Swift Shadow Paging: no write protection, flushes intercepted in hardware mode, root buffer.
    Ssp,
    /// Lazy Shadow Paging (RISC-V): M-mode fast path for single-address flushes, lazy re-sync.
    Lsp,
    /// RVirt: one shadow table per vCPU, wiped at root switches and global flushes.
    Rvirt,
    /// Software Nested Paging: the 2D walk done in software by a hardware-mode handler.
    Snp,
    /// Accelerated Shadow Paging: SSP with shadow leaves filled in hardware mode by a 2D walk.
    Asp,
    /// Cross-ISA emulation, QEMU's softmmu: an inline software-TLB lookup on every access.
    Softmmu,
    /// Hosted shadow page tables (HSPT): one host region, emptied at every context switch.
    HsptShared,
    /// HSPT: one region plus a per-process record of pages mapped eagerly at switch-in.
    HsptPrefill,
    /// HSPT: one region per guest ASID, LRU-recycled.
    HsptPrivate,
    /// Nested paging over a flat (one-level) nested table (Ahn et al., ISCA 2012).
    FlatNested,
    /// Speculative inverted shadow paging, verified by a flat-nested 2D walk (Ahn et al.).
    SpecShadow,
}

impl SchemeKind {
    /// Every implemented scheme.
    pub const ALL: &'static [SchemeKind] = &[
        SchemeKind::Native,
        SchemeKind::Nested,
        SchemeKind::Tsp,
        SchemeKind::TspUnsync,
        SchemeKind::Ssp,
        SchemeKind::Lsp,
        SchemeKind::Rvirt,
        SchemeKind::Snp,
        SchemeKind::Asp,
        SchemeKind::Softmmu,
        SchemeKind::HsptShared,
        SchemeKind::HsptPrefill,
        SchemeKind::HsptPrivate,
        SchemeKind::FlatNested,
        SchemeKind::SpecShadow,
    ];

    /// The name the command line uses.
    pub fn name(self) -> &'static str {
        match self {
            SchemeKind::Native => "native",
            SchemeKind::Nested => "nested",
            SchemeKind::Tsp => "tsp",
            SchemeKind::TspUnsync => "tsp-unsync",
            SchemeKind::Ssp => "ssp",
            SchemeKind::Lsp => "lsp",
            SchemeKind::Rvirt => "rvirt",
            SchemeKind::Snp => "snp",
            SchemeKind::Asp => "asp",
            SchemeKind::Softmmu => "softmmu",
            SchemeKind::HsptShared => "hspt-shared",
            SchemeKind::HsptPrefill => "hspt-prefill",
            SchemeKind::HsptPrivate => "hspt-private",
            SchemeKind::FlatNested => "flat-nested",
            SchemeKind::SpecShadow => "spec-shadow",
        }
    }

    /// One line for `memvirt list`.
    pub fn description(self) -> &'static str {
        match self {
            SchemeKind::Native => "no hypervisor: the hardware walks the guest's table (n references per miss)",
            SchemeKind::Nested => {
                "nested paging: 2D walk of guest × nested table with PWC and nested TLB ((n+1)(m+1)-1 references cold)"
            }
            SchemeKind::Tsp => {
                "traditional shadow paging: guest table pages write-protected, each write, flush and root switch a VM exit"
            }
            SchemeKind::TspUnsync => {
                "KVM-style shadow paging: leaf tables unprotected after one write and re-synced at flushes (out of sync), upper tables unshadowed when writes flood them"
            }
            SchemeKind::Ssp => {
                "Swift Shadow Paging: no write protection; flushes invalidate in hardware mode, re-sync at the next miss; root buffer"
            }
            SchemeKind::Lsp => {
                "Lazy Shadow Paging: M-mode fast path invalidates at sfence.vma va; lazy re-sync; global flushes sync eagerly"
            }
            SchemeKind::Rvirt => {
                "RVirt: one shadow table per vCPU, wiped at root switches and global flushes; single-address flushes invalidate"
            }
            SchemeKind::Snp => {
                "Software Nested Paging: a hardware-mode TLB-refill handler walks guest × nested table in software, no walk caches"
            }
            SchemeKind::Asp => {
                "Accelerated Shadow Paging: SSP, plus shadow leaf faults filled in hardware mode by a 2D walk, without a VM exit"
            }
            SchemeKind::Softmmu => {
                "cross-ISA emulator baseline (QEMU softmmu): inline software-TLB lookup per access, software walk on a miss"
            }
            SchemeKind::HsptShared => {
                "HSPT, shared: guest pages mapped into one host region the host MMU walks; SIGSEGV fills, mprotect at flushes, emptied at every switch"
            }
            SchemeKind::HsptPrefill => {
                "HSPT, shared + prefill: as hspt-shared, and the pages a process used before are mapped eagerly when it returns"
            }
            SchemeKind::HsptPrivate => {
                "HSPT, private: one host region per guest ASID (256 by default, LRU-recycled), switched without invalidation"
            }
            SchemeKind::FlatNested => {
                "flat nested paging: 2D walk of guest × one-level nested table indexed by guest frame, PWC and nested TLB (2n+1 references cold)"
            }
            SchemeKind::SpecShadow => {
                "speculative inverted shadow paging: one probe of a per-VM hashed shadow table, verified off the critical path by a flat-nested 2D walk"
            }
        }
    }

    /// The organization of an HSPT scheme (`None` for the others).
    pub fn hspt_organization(self) -> Option<Organization> {
        match self {
            SchemeKind::HsptShared => Some(Organization::Shared),
            SchemeKind::HsptPrefill => Some(Organization::Prefill),
            SchemeKind::HsptPrivate => Some(Organization::Private),
            _ => None,
        }
    }

    /// The shadow-paging options of a shadow scheme (`None` for the others).
    pub fn shadow_options(self) -> Option<ShadowOptions> {
        match self {
            SchemeKind::Native
            | SchemeKind::Nested
            | SchemeKind::Snp
            | SchemeKind::Softmmu
            | SchemeKind::HsptShared
            | SchemeKind::HsptPrefill
            | SchemeKind::HsptPrivate
            | SchemeKind::FlatNested
            | SchemeKind::SpecShadow => None,
            SchemeKind::Tsp => Some(ShadowOptions::TSP),
            SchemeKind::TspUnsync => Some(ShadowOptions::TSP_UNSYNC),
            SchemeKind::Ssp => Some(ShadowOptions::SSP),
            SchemeKind::Lsp => Some(ShadowOptions::LSP),
            SchemeKind::Rvirt => Some(ShadowOptions::RVIRT),
            SchemeKind::Asp => Some(ShadowOptions::ASP),
        }
    }
}
