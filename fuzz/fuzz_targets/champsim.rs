//! The champsim reader on arbitrary bytes: an error or records, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memvirt::trace::{self, Compression, Fetches, Input, InputFormat, ReadOptions, VecSink};

fuzz_target!(|data: &[u8]| {
    let raw = Box::new(std::io::Cursor::new(data.to_vec()));
    let Ok(input) = Input::new("fuzz".into(), raw, Compression::None) else { return };
    let opts = ReadOptions {
        format: InputFormat::Champsim,
        compression: Compression::None,
        fetches: Fetches::All,
    };
    let _ = trace::read_input(input, "fuzz", opts, &mut VecSink::default());
});
