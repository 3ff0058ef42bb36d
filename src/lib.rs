//! memvirt: a fast, bit-accurate simulator of memory virtualization.
//!
//! Where things live:
//! - [`addr`]: one type per address space (`Gva`, `Gpa`, `Hpa`, `Hva`), page sizes and levels.
//! - [`paging`]: page-table formats as data, entry families (RISC-V, x86, EPT), the generic
//!   walker and the mapper.
//! - [`mem`]: host frames, guest memory backed by them, and the views walks read through.
//! - [`mmu`]: the per-vCPU hardware: TLBs, page-walk caches, nested TLB, page-table-read cache,
//!   all built on one set-associative table.
//! - [`scheme`]: the memory-virtualization schemes behind one trait.
//! - [`machine`]: a vCPU, its memory and a scheme, driven access by access.
//! - [`oracle`]: the translation oracle (`--verify`): every TLB fill checked against a reference
//!   walk of the guest's table.
//! - [`trace`]: ChampSim and valgrind lackey readers, the compact trace format, `memvirt record`;
//!   replayed by [`workload`]'s trace workload.
//! - [`sweep`], [`plot`]: one setting swept over values for every scheme, and its SVG chart.
//! - [`experiment`]: experiment files (profiles × settings × seeds × workloads × schemes), their
//!   points, result files and Slurm job arrays.
//! - [`reproduce`]: the seed papers' experiments, each claim judged against memvirt's figure.
//! - [`sensitivity`]: which ranking of schemes survives every assumed cost across its range.
//!
//! See `DESIGN.md` at the repository root for the layers and the non-goals.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod addr;
pub mod config;
pub mod cost;
pub mod experiment;
pub mod fixture;
pub mod fullsys;
pub mod guest;
pub mod interrupt;
pub mod machine;
pub mod mem;
pub mod mmu;
pub mod oracle;
pub mod outfile;
pub mod output;
pub mod paging;
pub mod plot;
pub mod profile;
pub mod report;
pub mod reproduce;
pub mod rng;
pub mod run;
pub mod scheme;
pub mod sensitivity;
pub mod stats;
pub mod sweep;
pub mod trace;
pub mod workload;

pub use addr::{Asid, Gfn, Gpa, Gva, Gvpn, Hfn, Hpa, Hva, Level, PageSize, Vmid};
