//! Compression and format both sniffed (gzip, xz, zstd; compact, lackey, ChampSim), the input
//! converted into a compact trace in memory and read back: an error or the same records, never
//! a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memvirt::trace::fuzz;

fuzz_target!(|data: &[u8]| fuzz::compressed(data));
