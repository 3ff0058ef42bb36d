//! The guest OS model (DESIGN.md §4): a Linux-like kernel that owns guest physical memory,
//! builds real page tables in it with ordinary stores, runs processes under a round-robin
//! scheduler, handles their page faults and issues TLB maintenance where Linux does.
//!
//! - [`os`]: boot, the access path, the page-fault handler, scheduling.
//! - [`syscalls`]: `spawn`, `fork`, `exec`, `exit`, `mmap`, `munmap`, `mprotect`, `brk`.
//! - [`smp`]: several CPUs: run queues, placement, migration, threads and TLB shootdowns.
//! - [`thp`]: transparent huge pages: huge fills, the huge zero page, splitting, `madvise`.
//! - [`frames`], [`asid`], [`policy`], [`process`]: the allocators, the flush policy and the
//!   process structures they use.
//! - [`config`]: the kernel's tunables.

pub mod asid;
pub mod config;
pub mod frames;
pub mod os;
pub mod policy;
pub mod process;
pub mod smp;
pub mod syscalls;
pub mod thp;

pub use config::KernelConfig;
pub use os::{FaultResolution, GuestStats, HitRun, Os, OsError};
pub use process::{Layout, Pid, Vma};
