//! The compact reader on arbitrary bytes: header, directory and every block with a few skips
//! and limits; an error or records, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memvirt::trace::fuzz;

fuzz_target!(|data: &[u8]| fuzz::compact(data));
