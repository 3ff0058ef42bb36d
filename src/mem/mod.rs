//! Simulated memory: host frames, the guest's physical memory backed by them, and the views the
//! walker reads page-table entries through.

pub mod backing;
pub mod host;
pub mod views;

pub use backing::{GuestBacking, HostPage};
pub use host::{HostMemory, MemError, TablePool};
pub use views::{GuestTableMemory, HostTableMemory, OutsideGuestMemory};
