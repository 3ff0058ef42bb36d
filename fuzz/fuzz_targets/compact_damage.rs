//! The checksummed compact format under damage: a sound trace, written here, with the bytes the
//! fuzzer chooses overwritten. Every damaged file must be refused (a checksum, a count or a
//! footprint check fails); one the fuzzer leaves unchanged must read back exactly.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use memvirt::trace::{fuzz, Record};

static SOUND: OnceLock<(Vec<u8>, Vec<Record>)> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let (good, records) = SOUND.get_or_init(fuzz::sound_compact);
    fuzz::compact_damage(good, records, data);
});
