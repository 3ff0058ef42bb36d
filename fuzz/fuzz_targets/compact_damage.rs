//! The checksummed compact format under damage: a sound trace, written here, with the bytes the
//! fuzzer chooses overwritten. Every damaged file must be refused (a checksum, a count or a
//! footprint check fails); one the fuzzer leaves unchanged must read back exactly.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use memvirt::trace::compact::Writer;
use memvirt::trace::decode::Reader;
use memvirt::trace::{Kind, Record, RecordSink, Source, StreamMeta};

fn sound() -> (Vec<u8>, Vec<Record>) {
    let records: Vec<Record> = (0..2_000u64)
        .map(|i| Record {
            addr: 0x7ffc_0000_0000 + (i * 0x9E37) % 0x40_0000,
            gap: u32::try_from(i % 5).unwrap_or(0),
            size: 8,
            kind: Kind::from_bits(u8::try_from(i % 4).unwrap_or(0)),
        })
        .collect();
    let mut w = Writer::new(Cursor::new(Vec::new()), "fuzz", Source::Lackey, 1).expect("writer");
    let s = w.begin_stream(StreamMeta { pid: 1, ..StreamMeta::default() }).expect("stream");
    for &r in &records {
        w.push(s, r).expect("record");
    }
    (w.finish(0).expect("finish").2.into_inner(), records)
}

fuzz_target!(|data: &[u8]| {
    let (good, records) = sound();
    let mut bad = good.clone();
    // Each 5 bytes of input: a 4-byte position and the byte to put there.
    for hit in data.chunks_exact(5) {
        let at = u32::from_le_bytes([hit[0], hit[1], hit[2], hit[3]]) as usize % bad.len();
        bad[at] = hit[4];
    }
    let verdict = Reader::from_bytes("fuzz".into(), bad.clone()).and_then(|r| {
        r.validate()?;
        r.records(0)
    });
    match verdict {
        Ok(back) => {
            assert_eq!(bad, good, "a damaged trace was accepted");
            assert_eq!(back, records);
        }
        Err(e) => assert!(e.to_string().starts_with("fuzz: byte "), "{e}"),
    }
});
