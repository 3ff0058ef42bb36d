//! Decoding memvirt's compact trace format: records per second on one core, the rate replay's
//! decoding thread can feed (the target is at least 100 M records/s, DESIGN.md §9). The trace is
//! synthetic, shaped like a recorded program but harder to compress: stack traffic (56 %), a
//! streaming array (25 %), scattered heap accesses (12.5 %, over 4 and 16 MiB), fetch records
//! (6 %), instruction gaps of 0 to 3. Figures are in BENCHMARKS.md with the command that
//! reproduces them.

use std::io::Cursor;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use memvirt::rng::Rng;
use memvirt::trace::compact::{Writer, DEFAULT_LEVEL};
use memvirt::trace::decode::{Prefetch, Reader};
use memvirt::trace::{Kind, Record, RecordSink, Source, StreamMeta};

const RECORDS: u64 = 4_000_000;

fn synthetic() -> Reader {
    let mut rng = Rng::new(1, 0);
    let mut w = Writer::new(Cursor::new(Vec::new()), "bench", Source::Unknown, DEFAULT_LEVEL)
        .expect("in memory");
    let id = w.begin_stream(StreamMeta::default()).expect("a stream");
    let (stack, heap) = (0x1f_feff_f000u64, 0x4a0_0000u64);
    let mut array = heap + (64 << 20);
    for _ in 0..RECORDS {
        let gap = u32::try_from(rng.below(4)).unwrap_or(0);
        let r = match rng.below(32) {
            0..=1 => {
                let ip = 0x10_8000 + rng.below(512) * 0x40;
                Record { addr: ip, gap, size: 4, kind: Kind::Fetch }
            }
            2..=13 => Record { addr: stack - 8 * rng.below(32), gap, size: 8, kind: Kind::Load },
            14..=19 => Record { addr: stack - 8 * rng.below(32), gap, size: 8, kind: Kind::Store },
            20..=27 => {
                array += 8;
                Record { addr: array, gap, size: 8, kind: Kind::Load }
            }
            28 => Record { addr: heap + 4 * rng.below(1 << 22), gap, size: 4, kind: Kind::Modify },
            _ => Record { addr: heap + 8 * rng.below(1 << 20), gap, size: 8, kind: Kind::Load },
        };
        w.push(id, r).expect("a record");
    }
    let (_, _, out) = w.finish(0).expect("finished");
    Reader::from_bytes("bench".into(), out.into_inner()).expect("reads back")
}

fn decode(c: &mut Criterion) {
    let reader = synthetic();
    let mut g = c.benchmark_group("trace_decode");
    g.throughput(Throughput::Elements(RECORDS));
    g.sample_size(10);
    g.bench_function("one_core", |b| {
        let mut batch = Vec::new();
        b.iter(|| {
            let mut dec = reader.stream(0, 0, u64::MAX).expect("a stream");
            let mut sum = 0u64;
            while dec.next_batch(&mut batch).expect("decodes") {
                sum = batch.iter().fold(sum, |a, r| a.wrapping_add(r.addr));
            }
            sum
        });
    });
    g.bench_function("through_decoding_thread", |b| {
        b.iter(|| {
            let mut feed = Prefetch::spawn(reader.stream(0, 0, u64::MAX).expect("a stream"))
                .expect("a thread");
            let mut sum = 0u64;
            while let Some(batch) = feed.next_batch().expect("decodes") {
                sum = batch.words().iter().fold(sum, |a, w| a.wrapping_add(*w));
                feed.recycle(batch);
            }
            sum
        });
    });
    g.finish();
}

/// The two halves of decoding one block: zstd, then the record codes (varints).
fn parts(c: &mut Criterion) {
    let reader = synthetic();
    let recs = reader.records(0).expect("records");
    let block = &recs[..32_768];
    let mut raw = Vec::new();
    memvirt::trace::compact::encode_records(block, &mut raw);
    let comp = zstd::bulk::compress(&raw, DEFAULT_LEVEL).expect("compresses");
    let per = |bytes: usize| bytes as f64 / block.len() as f64;
    eprintln!("bytes/record: {:.2} encoded, {:.2} compressed", per(raw.len()), per(comp.len()));
    let mut g = c.benchmark_group("trace_parts");
    g.throughput(Throughput::Elements(block.len() as u64));
    g.bench_function("record_codes", |b| {
        let mut out = Vec::with_capacity(block.len());
        b.iter(|| {
            out.clear();
            memvirt::trace::compact::decode_records(&raw, block.len(), &mut out).expect("decodes")
        });
    });
    g.bench_function("zstd", |b| {
        let mut d = zstd::bulk::Decompressor::new().expect("zstd");
        let mut buf = Vec::with_capacity(raw.len());
        b.iter(|| {
            buf.clear();
            d.decompress_to_buffer(&comp, &mut buf).expect("decompresses")
        });
    });
    g.finish();
}

criterion_group!(benches, decode, parts);
criterion_main!(benches);
