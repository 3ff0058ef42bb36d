//! Compression and format both sniffed (gzip, xz, zstd; compact, lackey, ChampSim), the input
//! converted into a compact trace in memory and read back: an error or the same records, never
//! a panic.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use memvirt::trace::compact::Writer;
use memvirt::trace::decode::Reader;
use memvirt::trace::{self, Compression, Input, ReadOptions, Source, VecSink};

fuzz_target!(|data: &[u8]| {
    let raw = Box::new(Cursor::new(data.to_vec()));
    let Ok(input) = Input::new("fuzz".into(), raw, Compression::Auto) else { return };
    let mut sink = VecSink::default();
    if trace::read_input(input, "fuzz", ReadOptions::default(), &mut sink).is_err() {
        return;
    }
    let Ok(mut w) = Writer::new(Cursor::new(Vec::new()), "fuzz", Source::Unknown, 1) else {
        return;
    };
    use memvirt::trace::RecordSink;
    for (meta, records, trailing) in &sink.streams {
        let id = w.begin_stream(meta.clone()).expect("a stream");
        for &r in records {
            w.push(id, r).expect("a record");
        }
        w.trailing_instructions(id, *trailing).expect("trailing instructions");
    }
    let (_, _, out) = w.finish(0).expect("a compact trace");
    let back = Reader::from_bytes("fuzz".into(), out.into_inner()).expect("it reads back");
    for (i, (_, records, _)) in sink.streams.iter().enumerate() {
        assert_eq!(&back.records(i).expect("its records"), records);
    }
});
