//! The bodies of the fuzz targets (`fuzz/`, run by `cargo fuzz` on a nightly toolchain), here so
//! that the test suite runs every one of them too, for a bounded number of inputs
//! (`tests/fuzz_bodies.rs`). Each takes arbitrary bytes and panics only on a broken promise:
//! a reader that panics, a damaged compact file accepted, a conversion that does not read back
//! exactly.

use std::io::Cursor;

use super::compact::Writer;
use super::decode::Reader;
use super::{read_input, Compression, Fetches, Input, InputFormat, ReadOptions, Source, VecSink};
use super::{Kind, Record, RecordSink, StreamMeta};

/// One text or binary reader (`Lackey`, `Champsim`, `Cloudsuite`) on `data`: an error or
/// records, never a panic.
pub fn reader(format: InputFormat, data: &[u8]) {
    let raw = Box::new(Cursor::new(data.to_vec()));
    let Ok(input) = Input::new("fuzz".into(), raw, Compression::None) else { return };
    let opts = ReadOptions { format, compression: Compression::None, fetches: Fetches::All };
    let _ = read_input(input, "fuzz", opts, &mut VecSink::default());
}

/// `data` as a whole compact file: checked, then every stream decoded with several skips and
/// limits; errors, never a panic.
pub fn compact(data: &[u8]) {
    let Ok(r) = Reader::from_bytes("fuzz".into(), data.to_vec()) else { return };
    let _ = r.validate();
    let mut batch = Vec::new();
    for s in 0..r.streams.len() {
        for (skip, limit) in [(0, u64::MAX), (1, 3), (40_000, 2)] {
            let Ok(mut dec) = r.stream(s, skip, limit) else { continue };
            while let Ok(true) = dec.next_batch(&mut batch) {}
        }
    }
}

/// Compression and format both sniffed, the input converted to a compact trace in memory and
/// read back: an error, or exactly the records read.
pub fn compressed(data: &[u8]) {
    let raw = Box::new(Cursor::new(data.to_vec()));
    let Ok(input) = Input::new("fuzz".into(), raw, Compression::Auto) else { return };
    let mut sink = VecSink::default();
    if read_input(input, "fuzz", ReadOptions::default(), &mut sink).is_err() {
        return;
    }
    let mut w = Writer::new(Cursor::new(Vec::new()), "fuzz", Source::Unknown, 1)
        .expect("a writer in memory");
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
}

/// A sound checksummed compact trace of 2,000 records, and those records.
pub fn sound_compact() -> (Vec<u8>, Vec<Record>) {
    let records: Vec<Record> = (0..2_000u64)
        .map(|i| Record {
            addr: 0x7ffc_0000_0000 + (i * 0x9E37) % 0x40_0000,
            gap: u32::try_from(i % 5).unwrap_or(0),
            size: 8,
            kind: Kind::from_bits(u8::try_from(i % 4).unwrap_or(0)),
        })
        .collect();
    let mut w = Writer::new(Cursor::new(Vec::new()), "fuzz", Source::Lackey, 1).expect("a writer");
    let s = w.begin_stream(StreamMeta { pid: 1, ..StreamMeta::default() }).expect("a stream");
    for &r in &records {
        w.push(s, r).expect("a record");
    }
    (w.finish(0).expect("a compact trace").2.into_inner(), records)
}

/// [`sound_compact`] with bytes overwritten as `data` says (each 5 bytes: a little-endian
/// position, taken modulo the length, and the byte to put there): refused with an error naming
/// the place, or, if the damage changed nothing, read back exactly.
pub fn compact_damage(good: &[u8], records: &[Record], data: &[u8]) {
    let mut bad = good.to_vec();
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
}
