//! Memory-virtualization schemes, one file each, behind the [`Scheme`](crate::machine::Scheme)
//! trait. [`SchemeKind`] lists them for the command line; the hot loop is generic over the scheme
//! type, so `dyn` appears only at the control plane.

pub mod native;
pub mod nested;

pub use native::Native;
pub use nested::{Nested, NestedOptions};

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
}

impl SchemeKind {
    /// Every implemented scheme.
    pub const ALL: &'static [SchemeKind] = &[SchemeKind::Native, SchemeKind::Nested];

    /// The name the command line uses.
    pub fn name(self) -> &'static str {
        match self {
            SchemeKind::Native => "native",
            SchemeKind::Nested => "nested",
        }
    }

    /// One line for `memvirt list`.
    pub fn description(self) -> &'static str {
        match self {
            SchemeKind::Native => "no hypervisor: the hardware walks the guest's table (n references per miss)",
            SchemeKind::Nested => {
                "nested paging: 2D walk of guest × nested table with PWC and nested TLB ((n+1)(m+1)-1 references cold)"
            }
        }
    }
}
