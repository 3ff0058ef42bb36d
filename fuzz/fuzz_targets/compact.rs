//! The compact reader on arbitrary bytes: header, directory and every block with a few skips
//! and limits; an error or records, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memvirt::trace::decode::Reader;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = Reader::from_bytes("fuzz".into(), data.to_vec()) else { return };
    let _ = r.validate();
    let mut batch = Vec::new();
    for s in 0..r.streams.len() {
        for (skip, limit) in [(0, u64::MAX), (1, 3), (40_000, 2)] {
            let Ok(mut dec) = r.stream(s, skip, limit) else { continue };
            while let Ok(true) = dec.next_batch(&mut batch) {}
        }
    }
});
