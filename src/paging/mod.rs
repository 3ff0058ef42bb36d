//! Bit-accurate page tables: formats described as data, one module per entry family, one generic
//! walker, and a mapper that builds tables entry by entry.

pub mod entry;
pub mod ept;
pub mod flat;
pub mod format;
pub mod mapper;
pub mod riscv;
pub mod walk;
pub mod x86;

pub use entry::{
    Access, AccessKind, AdPolicy, AllowMask, ArchCause, Decoded, EptQual, FaultKind, LeafAttrs,
    Perms, Pfec, Privilege, Regime,
};
pub use flat::{FlatTable, NestedTable};
pub use format::{Family, Format, Stage};
pub use walk::{walk, Dim, Leaf, PageTable, WalkError, WalkFault, WalkRef, WalkTrace};
