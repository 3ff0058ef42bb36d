//! The lackey reader on arbitrary bytes: an error or records, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memvirt::trace::{fuzz, InputFormat};

fuzz_target!(|data: &[u8]| fuzz::reader(InputFormat::Lackey, data));
