//! Traces end to end in the library: every reader on traces the tests write themselves (plain,
//! gzip, xz), the compact round trip (convert then read is exact, a property), bad input of
//! every kind failing with the file and the offset or line, and replay in the guest OS model
//! (demand paging, relocation, --skip/--limit, concurrent processes, every scheme verified).

mod tracegen;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;

use memvirt::profile::Profile;
use memvirt::run::{self, RunSpec};
use memvirt::scheme::SchemeKind;
use memvirt::trace::compact::{self, PageRun, Writer};
use memvirt::trace::decode::{Prefetch, Reader, Window};
use memvirt::trace::{
    self, Compression, Fetches, InputFormat, Kind, ReadOptions, Record, RecordSink, Source,
    StreamMeta, TraceError, PAGE_BYTES,
};
use memvirt::workload::{TraceSet, WorkloadKind};
use proptest::prelude::*;
use tracegen::{Dir, Instr};

const INSTRS: usize = 5_000;

fn opts(format: InputFormat) -> ReadOptions {
    ReadOptions { format, compression: Compression::Auto, fetches: Fetches::Page }
}

/// Converts `input` to a compact file beside it and reads stream 0 back.
fn convert_and_read(dir: &Dir, input: &Path, format: InputFormat) -> Result<Reader, TraceError> {
    let out = dir.path(&format!("{}.mvt", input.file_name().unwrap_or_default().to_string_lossy()));
    trace::convert(input, &out, opts(format), compact::DEFAULT_LEVEL)?;
    Reader::open(&out, Compression::None)
}

fn err_text<T>(r: Result<T, TraceError>) -> String {
    match r {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn champsim_plain_gzip_and_xz_read_back_exactly() -> Result<(), TraceError> {
    let dir = Dir::new("champsim");
    let prog = tracegen::program(1, INSTRS);
    let raw = tracegen::champsim(&prog);
    let want = tracegen::expected(&prog, false);
    for (name, bytes) in [
        ("p.champsimtrace", raw.clone()),
        ("p.champsimtrace.gz", tracegen::gzip(&raw)),
        ("p.champsimtrace.xz", tracegen::xz(&raw)),
    ] {
        let path = dir.file(name, &bytes);
        let r = convert_and_read(&dir, &path, InputFormat::Auto)?;
        assert_eq!(r.header.source, Source::ChampSim, "{name}");
        assert_eq!(r.header.source_bytes, raw.len() as u64, "{name}");
        assert_eq!(r.records(0)?, want, "{name}");
        assert_eq!(r.streams[0].instructions, INSTRS as u64);
        assert_eq!(r.streams[0].trailing, tracegen::trailing(&prog, false));
    }
    Ok(())
}

#[test]
fn cloudsuite_records_become_one_stream_per_asid() -> Result<(), TraceError> {
    let dir = Dir::new("cloudsuite");
    let mut prog = tracegen::program(2, 2_000);
    for (i, ins) in prog.iter_mut().enumerate() {
        ins.asid = if i % 3 == 0 { 9 } else { 4 };
    }
    let path = dir.file("c.trace.xz", &tracegen::xz(&tracegen::cloudsuite(&prog)));
    let r = convert_and_read(&dir, &path, InputFormat::Cloudsuite)?;
    assert_eq!(r.header.source, Source::Cloudsuite);
    let asids: Vec<u32> = r.streams.iter().map(|s| s.meta.asid).collect();
    assert_eq!(asids, [9, 4], "streams in order of first appearance");
    for (s, asid) in [(0, 9), (1, 4)] {
        let mine: Vec<Instr> = prog.iter().filter(|i| i.asid == asid).cloned().collect();
        assert_eq!(r.records(s)?, tracegen::expected(&mine, false), "asid {asid}");
    }
    Ok(())
}

#[test]
fn lackey_with_and_without_pid_lines_reads_back_exactly() -> Result<(), TraceError> {
    let dir = Dir::new("lackey");
    let prog = tracegen::program(3, INSTRS);
    let want = tracegen::expected(&prog, true);
    for (name, pid) in [("a.lackey", None), ("b.lackey.gz", Some(4242))] {
        let text = tracegen::lackey(&prog, pid);
        let bytes =
            if name.ends_with(".gz") { tracegen::gzip(text.as_bytes()) } else { text.into_bytes() };
        let path = dir.file(name, &bytes);
        let r = convert_and_read(&dir, &path, InputFormat::Auto)?;
        assert_eq!(r.header.source, Source::Lackey);
        assert_eq!(r.records(0)?, want, "{name}");
        let meta = &r.streams[0].meta;
        match pid {
            Some(p) => assert_eq!((meta.pid, meta.ppid, meta.name.as_str()), (p, 1, "./prog arg")),
            None => assert_eq!((meta.pid, meta.name.as_str()), (0, name)),
        }
    }
    Ok(())
}

#[test]
fn footprint_and_counts_match_the_records() -> Result<(), TraceError> {
    let dir = Dir::new("footprint");
    let prog = tracegen::program(4, INSTRS);
    let path = dir.file("f.lackey", tracegen::lackey(&prog, None).as_bytes());
    let r = convert_and_read(&dir, &path, InputFormat::Lackey)?;
    let recs = r.records(0)?;
    let info = &r.streams[0];
    let mut pages: BTreeMap<u64, u8> = BTreeMap::new();
    let mut by_kind = [0u64; 4];
    for rec in &recs {
        by_kind[rec.kind as usize] += 1;
        let (first, last) = rec.pages();
        for p in first..=last {
            *pages.entry(p).or_default() |= rec.kind.page_flags();
        }
    }
    assert_eq!(info.by_kind, by_kind);
    let flat: Vec<(u64, u8)> = info
        .footprint
        .iter()
        .flat_map(|r| (r.start..r.start + r.pages).map(move |p| (p, r.flags)))
        .collect();
    assert_eq!(flat, pages.into_iter().collect::<Vec<_>>());
    assert_eq!(info.min_addr, recs.iter().map(|r| r.addr).min().unwrap_or(0));
    Ok(())
}

fn arb_record() -> impl Strategy<Value = Record> {
    let addr = prop_oneof![any::<u64>(), 0u64..1 << 20, (0x7ff0_0000_0000u64..0x7fff_ffff_ffff)];
    let gap = prop_oneof![0u32..8, any::<u32>()];
    let size = prop_oneof![Just(0u16), Just(8), Just(16), Just(64), any::<u16>()];
    (addr, gap, size, 0u8..4).prop_map(|(addr, gap, size, k)| Record {
        addr,
        gap,
        size,
        kind: Kind::from_bits(k),
    })
}

/// Writes `streams` as a compact trace in memory.
fn compact_bytes(streams: &[(Vec<Record>, u64)]) -> Result<Vec<u8>, TraceError> {
    let mut w = Writer::new(Cursor::new(Vec::new()), "mem", Source::Lackey, 1)?;
    for (i, (recs, trailing)) in streams.iter().enumerate() {
        let meta = StreamMeta {
            pid: u32::try_from(i).unwrap_or(0) + 100,
            ppid: 1,
            asid: 0,
            name: format!("s{i}"),
        };
        let id = w.begin_stream(meta)?;
        for &r in recs {
            w.push(id, r)?;
        }
        w.trailing_instructions(id, *trailing)?;
    }
    Ok(w.finish(0)?.2.into_inner())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn compact_round_trip_is_exact(
        streams in prop::collection::vec((prop::collection::vec(arb_record(), 0..300), 0u64..1000), 1..4)
    ) {
        let bytes = compact_bytes(&streams).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let r = Reader::from_bytes("mem".into(), bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(r.streams.len(), streams.len());
        for (i, (recs, trailing)) in streams.iter().enumerate() {
            let back = r.records(i).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&back, recs);
            let gaps: u64 = recs.iter().map(|r| u64::from(r.gap)).sum();
            prop_assert_eq!(r.streams[i].instructions, gaps + trailing);
            prop_assert_eq!(r.streams[i].meta.pid, u32::try_from(i).unwrap_or(0) + 100);
        }
    }

    #[test]
    fn champsim_convert_then_read_is_exact(seed in any::<u64>(), n in 1usize..400) {
        let dir = Dir::new(&format!("prop-champsim-{seed}"));
        let prog = tracegen::program(seed, n);
        let path = dir.file("p.champsimtrace", &tracegen::champsim(&prog));
        let r = convert_and_read(&dir, &path, InputFormat::Champsim).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(r.records(0).map_err(|e| TestCaseError::fail(e.to_string()))?, tracegen::expected(&prog, false));
    }

    #[test]
    fn lackey_convert_then_read_is_exact(seed in any::<u64>(), n in 1usize..400) {
        let dir = Dir::new(&format!("prop-lackey-{seed}"));
        let prog = tracegen::program(seed, n);
        let path = dir.file("p.txt", tracegen::lackey(&prog, Some(7)).as_bytes());
        let r = convert_and_read(&dir, &path, InputFormat::Lackey).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(r.records(0).map_err(|e| TestCaseError::fail(e.to_string()))?, tracegen::expected(&prog, true));
    }
}

#[test]
fn skip_and_limit_cross_block_boundaries() -> Result<(), TraceError> {
    let recs: Vec<Record> = (0..100_000u64)
        .map(|i| Record { addr: 0x1000 + i * 8, gap: 1, size: 8, kind: Kind::Load })
        .collect();
    let r = Reader::from_bytes("mem".into(), compact_bytes(&[(recs.clone(), 5)])?)?;
    assert!(r.streams[0].blocks.len() > 3);
    for (skip, limit) in [(0, u64::MAX), (40_000, 30_000), (32_768, 1), (99_999, 10), (200_000, 5)]
    {
        let mut dec = r.stream(0, skip, limit)?;
        let (mut got, mut batch) = (Vec::new(), Vec::new());
        while dec.next_batch(&mut batch)? {
            got.extend_from_slice(&batch);
        }
        let from = usize::try_from(skip).unwrap_or(usize::MAX).min(recs.len());
        let to = from.saturating_add(usize::try_from(limit).unwrap_or(usize::MAX)).min(recs.len());
        assert_eq!(got, recs[from..to], "skip {skip} limit {limit}");
    }
    // The decoding thread hands over the same records, packed (a plain record's size is not
    // kept).
    let mut feed = Prefetch::spawn(r.stream(0, 0, u64::MAX)?)?;
    let mut got = Vec::new();
    while let Some(b) = feed.next_batch()? {
        got.extend((0..b.len()).filter_map(|i| b.record(i)));
        feed.recycle(b);
    }
    let unsized_ = |r: &Record| Record { size: 1, ..*r };
    assert_eq!(got, recs.iter().map(unsized_).collect::<Vec<_>>());
    Ok(())
}

#[test]
fn truncated_and_corrupt_compressed_inputs_name_the_file() {
    let dir = Dir::new("badcomp");
    let raw = tracegen::champsim(&tracegen::program(5, 3_000));
    let xz = tracegen::xz(&raw);
    let gz = tracegen::gzip(&raw);
    let mut flipped = gz.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x55;
    for (name, bytes) in [
        ("cut.champsimtrace.xz", &xz[..xz.len() - 30]),
        ("cut.champsimtrace.gz", &gz[..gz.len() - 30]),
        ("flip.champsimtrace.gz", &flipped[..]),
        ("notxz.champsimtrace.xz", &raw[..]),
    ] {
        let path = dir.file(name, bytes);
        let e = err_text(trace::convert(&path, &dir.path("o.mvt"), opts(InputFormat::Auto), 1));
        assert!(e.contains(name) && e.contains("byte"), "{name}: {e:?}");
        assert!(!dir.path("o.mvt").exists(), "no partial output");
    }
}

#[test]
fn partial_records_and_garbage_lines_are_errors() {
    let dir = Dir::new("badraw");
    let mut raw = tracegen::champsim(&tracegen::program(6, 10));
    raw.extend_from_slice(&[0xAB; 17]);
    let p = dir.file("partial.champsimtrace", &raw);
    let e = err_text(trace::convert(&p, &dir.path("o.mvt"), opts(InputFormat::Champsim), 1));
    assert!(e.contains("partial.champsimtrace: byte 640") && e.contains("truncated record"), "{e}");
    let p = dir.file("cs.trace", &[0u8; 100]);
    let e = err_text(trace::convert(&p, &dir.path("o.mvt"), opts(InputFormat::Cloudsuite), 1));
    assert!(e.contains("byte 96"), "{e}");
    let text = "I  0401000,3\n L 7ff000,8\nI  0401003,2\nthis is not lackey\n";
    let p = dir.file("g.lackey", text.as_bytes());
    let e = err_text(trace::convert(&p, &dir.path("o.mvt"), opts(InputFormat::Lackey), 1));
    assert!(e.contains("g.lackey: line 4") && e.contains("not a lackey line"), "{e}");
    let p = dir.file("long.lackey", &[b'I'; 10_000]);
    let e = err_text(trace::convert(&p, &dir.path("o.mvt"), opts(InputFormat::Lackey), 1));
    assert!(e.contains("long.lackey: line 1: longer than 4096 bytes"), "{e}");
    let p = dir.file("t.lackey", b"I  0401000,3\n L 7ff0");
    let e = err_text(trace::convert(&p, &dir.path("o.mvt"), opts(InputFormat::Lackey), 1));
    assert!(e.contains("t.lackey: line 2") && e.contains("truncated"), "{e}");
    assert!(!dir.path("o.mvt").exists());
}

#[test]
fn bad_compact_files_never_pass_as_partial_results() -> Result<(), TraceError> {
    let recs: Vec<Record> = tracegen::expected(&tracegen::program(7, 1_500), true);
    let good = compact_bytes(&[(recs.clone(), 3), (recs[..100].to_vec(), 0)])?;
    let check = |bytes: Vec<u8>| -> Result<Vec<Vec<Record>>, TraceError> {
        let r = Reader::from_bytes("t.mvt".into(), bytes)?;
        (0..r.streams.len()).map(|s| r.records(s)).collect()
    };
    let mut wrong = good.clone();
    wrong[0] = b'X';
    assert!(err_text(check(wrong)).contains("t.mvt: byte 0: not a memvirt compact trace"));
    let mut v3 = good.clone();
    v3[8] = 3;
    assert!(err_text(check(v3)).contains("t.mvt: byte 8: compact trace version 3"));
    // Every truncation fails, naming the file.
    for len in (0..good.len()).step_by(7) {
        let e = err_text(check(good[..len].to_vec()));
        assert!(e.starts_with("t.mvt: "), "cut at {len}: {e:?}");
    }
    // Any one corrupted byte fails: header, blocks and directory are all checksummed.
    for at in 0..good.len() {
        let mut bad = good.clone();
        bad[at] ^= 0x24;
        let e = err_text(check(bad));
        assert!(e.starts_with("t.mvt: byte "), "byte {at} was not refused: {e:?}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Damage of any shape (a few bytes anywhere set to anything) is refused, or — where it
    /// happens to leave a file the checks accept — reads back exactly the records and the
    /// directory that were written.
    #[test]
    fn random_damage_is_refused_or_changes_nothing(
        seed in any::<u64>(),
        hits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let recs = tracegen::expected(&tracegen::program(seed, 300), true);
        let good = compact_bytes(&[(recs.clone(), 2)]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut bad = good.clone();
        for (at, byte) in &hits {
            bad[at.index(good.len())] = *byte;
        }
        let verdict = Reader::from_bytes("t.mvt".into(), bad.clone())
            .and_then(|r| r.validate().map(|()| r));
        match verdict {
            Err(e) => prop_assert!(e.to_string().starts_with("t.mvt: byte "), "{}", e),
            Ok(r) => {
                prop_assert_eq!(&bad, &good, "a damaged file was accepted");
                prop_assert_eq!(r.records(0).map_err(|e| TestCaseError::fail(e.to_string()))?, recs);
            }
        }
    }
}

#[test]
fn version_1_traces_still_read_with_a_warning() -> Result<(), TraceError> {
    // tests/data/small-v1.mvt was written by the version-1 writer from small.lackey.
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let v1 = Reader::open(&data.join("small-v1.mvt"), Compression::Auto)?;
    assert_eq!(v1.header.version, 1);
    v1.validate()?;
    let w = v1.warning().unwrap_or_default();
    assert!(w.contains("small-v1.mvt") && w.contains("no checksums"), "{w}");
    let dir = Dir::new("v1");
    let v2 = convert_and_read(&dir, &data.join("small.lackey"), InputFormat::Auto)?;
    assert_eq!(v2.header.version, compact::VERSION);
    assert_eq!(v2.warning(), None);
    assert_eq!(v1.records(0)?, v2.records(0)?);
    let without_blocks = |r: &Reader| {
        r.streams
            .iter()
            .map(|s| compact::StreamInfo { blocks: vec![], ..s.clone() })
            .collect::<Vec<_>>()
    };
    assert_eq!(without_blocks(&v1), without_blocks(&v2), "blocks start after the larger header");
    // Converting the old file writes the current version, and says what it read.
    let out = dir.path("again.mvt");
    let s = trace::convert(&data.join("small-v1.mvt"), &out, opts(InputFormat::Auto), 1)?;
    assert_eq!(s.header.version, compact::VERSION);
    assert!(s.read.warnings.iter().any(|w| w.contains("no checksums")));
    Ok(())
}

// ----- replay --------------------------------------------------------------------------------

fn trace_spec(
    scheme: SchemeKind,
    profile: &str,
    traces: TraceSet,
    sets: &[(&str, &str)],
) -> RunSpec {
    let profile = Profile::builtin(profile).expect("built-in profile");
    RunSpec {
        traces: Some(traces),
        workload_sets: sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..RunSpec::new(scheme, WorkloadKind::Pagefault, profile)
    }
}

fn champsim_set(dir: &Dir, name: &str, prog: &[Instr]) -> Result<TraceSet, TraceError> {
    let path = dir.file(name, &tracegen::champsim(prog));
    TraceSet::prepare(&[path], opts(InputFormat::Champsim))
}

#[test]
fn x86_64_addresses_are_relocated_on_sv39_and_demand_paged(
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = Dir::new("reloc");
    let prog = tracegen::program(8, INSTRS);
    let set = champsim_set(&dir, "x.champsimtrace", &prog)?;
    let r =
        run::run(&trace_spec(SchemeKind::Nested, "riscv-sv39", set.clone(), &[]), &mut |_, _| {})?;
    let t = r.trace.as_ref().ok_or("no trace section")?;
    let s = &t.streams[0];
    assert_eq!(s.relocation.method, "gib-regions");
    // The heap, library and stack regions moved, in order, to the top of Sv39's 256 GiB.
    let moved: Vec<(&str, &str)> =
        s.relocation.moved.iter().map(|m| (m.from.as_str(), m.to.as_str())).collect();
    assert_eq!(
        moved,
        [
            ("0x555540000000", "0x3f40000000"),
            ("0x7f3a00000000", "0x3f80000000"),
            ("0x7ffcc0000000", "0x3fc0000000")
        ]
    );
    assert_eq!(r.workload, "x.champsimtrace");
    assert_eq!(r.guest.killed, 0, "{:?}", r.guest.kill_log);
    assert_eq!(s.replayed, tracegen::expected(&prog, false).len() as u64);
    assert_eq!(t.instructions, INSTRS as u64);
    assert_eq!(r.cycles_by_category.compute, INSTRS as u64);
    let faults: u64 = r.guest.faults.values().sum();
    assert!(faults >= s.footprint_pages, "every page faults at least once");
    // On x86-64 the same addresses fit.
    let r = run::run(&trace_spec(SchemeKind::Nested, "x86-64", set, &[]), &mut |_, _| {})?;
    let s = &r.trace.as_ref().ok_or("no trace section")?.streams[0];
    assert_eq!(s.relocation.method, "none");
    assert_eq!(r.guest.killed, 0);
    Ok(())
}

#[test]
fn skip_limit_and_cycles_per_instruction_apply_per_stream() -> Result<(), Box<dyn std::error::Error>>
{
    let dir = Dir::new("skiplimit");
    let set = champsim_set(&dir, "s.champsimtrace", &tracegen::program(9, INSTRS))?;
    let sets = [("skip", "1000"), ("limit", "700")];
    let mut spec = trace_spec(SchemeKind::Native, "riscv-sv39", set, &sets);
    spec.profile.set("costs.cycles_per_instruction", "3")?;
    let r = run::run(&spec, &mut |_, _| {})?;
    let t = r.trace.ok_or("no trace section")?;
    assert_eq!((t.streams[0].skipped, t.streams[0].replayed), (1000, 700));
    assert_eq!(r.cycles_by_category.compute, 3 * t.instructions);
    assert_eq!((r.compute.model.as_str(), r.compute.instructions), ("trace", t.instructions));
    assert!(t.instructions < INSTRS as u64);
    // The setting's old place says where it went.
    let e = run::run(
        &trace_spec(
            SchemeKind::Native,
            "riscv-sv39",
            spec.traces.clone().ok_or("")?,
            &[("cycles_per_instruction", "3")],
        ),
        &mut |_, _| {},
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(e.contains("costs.cycles_per_instruction"), "{e}");
    Ok(())
}

#[test]
fn a_trace_warms_up_until_every_stream_ran_its_instructions(
) -> Result<(), Box<dyn std::error::Error>> {
    // Stream 0: 10 loads 10 instructions apart (100 instructions); stream 1: 20 loads 5 apart
    // (100), 4 trailing. Both fit one time slice, so stream 0 runs whole first: it reaches 50
    // instructions at its 5th record and then ends, still in the warm-up (stream 1 has not
    // run). Stream 1 reaches 50 at its 10th record: the warm-up ends there with 150
    // instructions and 20 loads run (all of stream 0's, 10 of stream 1's), and only stream 1's last 10 loads (50 instructions, plus
    // its 4 trailing) are counted.
    let load = |addr: u64, gap: u32| Record { addr, gap, size: 8, kind: Kind::Load };
    let a: Vec<Record> = (0..10).map(|i| load(0x10_0000 + i * 64, 10)).collect();
    let b: Vec<Record> = (0..20).map(|i| load(0x20_0000 + i * 64, 5)).collect();
    let dir = Dir::new("warmup");
    let path = dir.file("w.mvt", &compact_bytes(&[(a, 0), (b, 4)])?);
    let set = TraceSet::prepare(&[path], opts(InputFormat::Auto))?;
    let spec = RunSpec { warmup: 50, ..trace_spec(SchemeKind::Nested, "riscv-sv39", set, &[]) };
    let r = run::run(&spec, &mut |_, _| {})?;
    let t = r.trace.as_ref().ok_or("no trace section")?;
    let w = r.warmup.as_ref().ok_or("no warmup section")?;
    assert_eq!((w.unit.as_str(), w.requested), ("instructions-per-stream", 50));
    assert_eq!((w.instructions, w.accesses), (Some(150), 20));
    let per_stream: Vec<(u64, u64, u64)> =
        t.streams.iter().map(|s| (s.replayed, s.instructions, s.warmup_instructions)).collect();
    assert_eq!(per_stream, [(0, 0, 100), (10, 54, 50)]);
    assert_eq!(t.instructions, 54);
    assert_eq!(r.cycles_by_category.compute, 54);
    // Both streams touch one page each, demand-paged during the warm-up: nothing faults later.
    assert_eq!(r.guest_page_faults, 0);
    // A warm-up no stream reaches is an error, not an empty report.
    let spec = RunSpec { warmup: 101, ..spec };
    let e = run::run(&spec, &mut |_, _| {}).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("its longest stream ran 104"), "{e}");
    Ok(())
}

#[test]
fn records_decoded_once_replay_exactly_as_records_decoded_per_run(
) -> Result<(), Box<dyn std::error::Error>> {
    // Two streams of 70,000 and 100,000 loads: several 32 Ki-record blocks each, so the kept
    // window starts and ends inside blocks.
    let load = |addr: u64| Record { addr, gap: 2, size: 8, kind: Kind::Load };
    let a: Vec<Record> = (0..70_000u64).map(|i| load(0x10_0000 + (i * 4160) % 0x40_0000)).collect();
    let b: Vec<Record> =
        (0..100_000u64).map(|i| load(0x80_0000 + (i * 8256) % 0x80_0000)).collect();
    let dir = Dir::new("kept");
    let path = dir.file("k.mvt", &compact_bytes(&[(a, 3), (b, 0)])?);
    let window = |skip: u64, limit: u64| Window { skip, limit };
    for (skip, limit) in [(0, u64::MAX), (40_000, 45_000), (32_768, 1), (69_999, 100_000)] {
        let sets = [
            ("skip", skip.to_string()),
            ("limit", if limit == u64::MAX { "0".into() } else { limit.to_string() }),
        ];
        let sets: Vec<(&str, &str)> = sets.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let kept = TraceSet::prepare_keeping(
            std::slice::from_ref(&path),
            opts(InputFormat::Auto),
            1 << 30,
            window(skip, limit),
        )?;
        let (w, streams) = kept.files()[0].decoded.as_ref().ok_or("the records were not kept")?;
        assert_eq!(*w, window(skip, limit));
        let expected = [70_000u64, 100_000].map(|n| n.saturating_sub(skip).min(limit));
        assert_eq!(
            [streams[0].len() as u64, streams[1].len() as u64],
            expected,
            "skip {skip} limit {limit}"
        );
        let decoding = TraceSet::prepare_keeping(
            std::slice::from_ref(&path),
            opts(InputFormat::Auto),
            0,
            window(skip, limit),
        )?;
        assert!(decoding.files()[0].decoded.is_none());
        for scheme in [SchemeKind::Native, SchemeKind::Nested] {
            let shared =
                run::run(&trace_spec(scheme, "riscv-sv39", kept.clone(), &sets), &mut |_, _| {})?;
            let own = run::run(
                &trace_spec(scheme, "riscv-sv39", decoding.clone(), &sets),
                &mut |_, _| {},
            )?;
            assert_eq!(shared, own, "{} skip {skip} limit {limit}", scheme.name());
        }
    }
    // A run whose window is not the kept one decodes the file itself, with the same result.
    let kept = TraceSet::prepare_keeping(
        std::slice::from_ref(&path),
        opts(InputFormat::Auto),
        1 << 30,
        Window::ALL,
    )?;
    let fresh = TraceSet::prepare_keeping(
        std::slice::from_ref(&path),
        opts(InputFormat::Auto),
        0,
        Window::ALL,
    )?;
    let sets = [("skip", "1000"), ("limit", "5000")];
    let r1 = run::run(&trace_spec(SchemeKind::Nested, "riscv-sv39", kept, &sets), &mut |_, _| {})?;
    let r2 = run::run(&trace_spec(SchemeKind::Nested, "riscv-sv39", fresh, &sets), &mut |_, _| {})?;
    assert_eq!(r1, r2);
    assert_eq!(r1.trace.as_ref().map(|t| t.streams[1].replayed), Some(5000));
    // 170,000 plain records take 1.53 MB packed (9 bytes each): a budget of 1.5 MB keeps none
    // of them.
    let over = TraceSet::prepare_keeping(&[path], opts(InputFormat::Auto), 1_500_000, Window::ALL)?;
    assert!(over.files()[0].decoded.is_none());
    Ok(())
}

#[test]
fn several_traces_run_as_concurrent_processes() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Dir::new("concurrent");
    let a = dir.file("a.champsimtrace", &tracegen::champsim(&tracegen::program(10, INSTRS)));
    let b =
        dir.file("b.lackey", tracegen::lackey(&tracegen::program(11, INSTRS), Some(5)).as_bytes());
    let set = TraceSet::prepare(&[a, b], opts(InputFormat::Auto))?;
    let mut spec = trace_spec(SchemeKind::Nested, "riscv-sv39", set, &[]);
    spec.profile.set("kernel.time_slice", "500")?;
    let r = run::run(&spec, &mut |_, _| {})?;
    assert_eq!(r.workload, "a.champsimtrace+b.lackey");
    assert_eq!(r.guest.processes, 2);
    assert!(r.guest.context_switches > 20, "{}", r.guest.context_switches);
    assert_eq!(r.guest.killed, 0);
    Ok(())
}

#[test]
fn every_scheme_replays_a_trace_verified_with_one_guest_history(
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = Dir::new("schemes");
    let mut prog = tracegen::program(12, 3_000);
    prog.extend(tracegen::program_at(13, 3_000, 0x1f_feff_f000, 0x4a0_0000, 0x480_0000));
    let set = champsim_set(&dir, "v.champsimtrace", &prog)?;
    let mut history = None;
    for scheme in SchemeKind::ALL {
        let spec = RunSpec { verify: true, ..trace_spec(*scheme, "riscv-sv39", set.clone(), &[]) };
        let r = run::run(&spec, &mut |_, _| {}).map_err(|e| format!("{}: {e}", scheme.name()))?;
        assert!(r.oracle.map_or(0, |o| o.checks) > 0, "{}", scheme.name());
        assert_eq!(r.guest.killed, 0, "{}", scheme.name());
        let h = history.get_or_insert_with(|| r.guest.history.clone());
        assert_eq!(*h, r.guest.history, "{} sees another guest history", scheme.name());
    }
    Ok(())
}

#[test]
fn footprint_runs_become_vmas_with_their_permissions() {
    use memvirt::paging::Perms;
    use memvirt::workload::trace::Relocation;
    let runs = [
        PageRun { start: 0x400, pages: 2, flags: 4 },
        PageRun { start: 0x402, pages: 1, flags: 1 },
        PageRun { start: 0x500, pages: 3, flags: 3 },
    ];
    let r = Relocation::plan(&runs, 1 << 38).expect("fits");
    let vmas = r.vmas(&runs);
    let perms: Vec<(u64, u64, Perms)> = vmas
        .iter()
        .map(|v| (v.start.as_u64() / PAGE_BYTES, v.end.as_u64() / PAGE_BYTES, v.perms))
        .collect();
    assert_eq!(
        perms,
        [
            (0x400, 0x402, Perms::R | Perms::X),
            (0x402, 0x403, Perms::R),
            (0x500, 0x503, Perms::R | Perms::W)
        ]
    );
}

#[test]
fn an_access_crossing_into_a_region_moved_elsewhere_follows_it(
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = Dir::new("crossing");
    // 254 GiB fits Sv39 and stays, so the two regions either side of 1 TiB move apart: to
    // 253 GiB and 255 GiB. The store's last 4 bytes are in the second.
    let text = "I  00401000,4\n L 3f80000000,8\n S fffffffffc,8\n";
    let path = dir.file("x.lackey", text.as_bytes());
    let set = TraceSet::prepare(&[path], opts(InputFormat::Lackey))?;
    let r = run::run(&trace_spec(SchemeKind::Nested, "riscv-sv39", set, &[]), &mut |_, _| {})?;
    assert_eq!(r.guest.killed, 0, "{:?}", r.guest.kill_log);
    let s = &r.trace.as_ref().ok_or("no trace section")?.streams[0];
    let moved: Vec<(&str, &str)> =
        s.relocation.moved.iter().map(|m| (m.from.as_str(), m.to.as_str())).collect();
    assert_eq!(moved, [("0xffc0000000", "0x3f40000000"), ("0x10000000000", "0x3fc0000000")]);
    assert_eq!(s.footprint_pages, 4);
    Ok(())
}

/// What a replay leaves behind that the hit memo must not change: the guest's history and
/// counters, the MMU's, the cycles, and the trace's report.
type ReplayState = (u64, memvirt::guest::GuestStats, memvirt::mmu::MmuStats, String, String);

/// Replays `set` under `scheme` and `profile` with the TLB's hit memo on or off: off, no
/// access takes the replay's fast path ([`memvirt::guest::HitRun`]), so every record is
/// replayed the usual way.
fn replay_with_memo(
    set: &TraceSet,
    scheme: SchemeKind,
    profile: &str,
    memo: bool,
) -> Result<ReplayState, Box<dyn std::error::Error>> {
    use memvirt::guest::{Os, OsError};
    use memvirt::machine::{Machine, Platform, Scheme};
    use memvirt::workload::{self, TraceParams, TraceReplay, Workload};
    struct Replay<'a> {
        set: &'a TraceSet,
        profile: &'a Profile,
        memo: bool,
    }
    impl run::Drive for Replay<'_> {
        type Output = Result<ReplayState, OsError>;
        fn drive<S: Scheme>(self, mut machine: Machine<S>) -> Self::Output {
            machine.platform.set_memo(self.memo);
            let mut os = Os::boot(machine, self.profile.kernel)?;
            let replay = TraceReplay::new(self.set.clone(), TraceParams::default());
            let mut w = Workload::Trace(replay);
            workload::drive(&mut os, &mut w, &mut |_, _| {})?;
            let m = &os.machine;
            let trace = format!("{:?}", w.trace_report());
            let cycles = format!("{:?} {}", m.cycles(), m.platform.accesses());
            Ok((os.history(), os.stats.clone(), m.platform.mmu_stats(), cycles, trace))
        }
    }
    let profile = Profile::builtin(profile)?;
    let platform = Platform::new(&profile.platform_config()?, profile.costs)?;
    let drive = Replay { set, profile: &profile, memo };
    let state = run::with_scheme(scheme, &[], &profile, platform, drive)
        .map_err(|e| format!("{} on {}: {e:?}", scheme.name(), profile.name))??;
    Ok(state)
}

#[test]
fn the_replays_fast_path_replays_exactly_what_each_record_would(
) -> Result<(), Box<dyn std::error::Error>> {
    // Rounds over 12 data pages and a stack page that relocation moves on Sv39, with every kind
    // of record the fast path leaves to the usual one: modifies, accesses running into the next
    // page, a gap of 300 instructions (straight-line code in one page); gaps of 200, which the
    // fast path adds up; and a fetch per page of code.
    let mut text = String::new();
    for round in 0..40u64 {
        for page in 0..12u64 {
            let data = 0x10_0000 + page * PAGE_BYTES;
            let code = 0x40_0000 + (page % 3) * PAGE_BYTES;
            text += &format!("I  {:x},4\n L {:x},8\n S {:x},8\n", code, data + 64, data + 72);
            text += &format!(" L {:x},8\n S {:x},4\n", 0x7ffc_dead_b010 + page * 8, data + 128);
            match (round + page) % 7 {
                0 => text += &format!(" M {:x},8\n", data + 256),
                1 => text += &format!(" L {:x},8\n", data + PAGE_BYTES - 4),
                2 => text += &"I  400010,4\n".repeat(300),
                3 | 4 => text += &"I  400010,4\n".repeat(200),
                _ => {}
            }
        }
    }
    let dir = Dir::new("fastpath");
    let path = dir.file("mix.lackey", text.as_bytes());
    let set = TraceSet::prepare(&[path], opts(InputFormat::Lackey))?;
    for scheme in [SchemeKind::Native, SchemeKind::Nested, SchemeKind::Ssp, SchemeKind::Softmmu] {
        for profile in ["riscv-sv39", "x86-64"] {
            let fast = replay_with_memo(&set, scheme, profile, true)?;
            let usual = replay_with_memo(&set, scheme, profile, false)?;
            assert_eq!(fast, usual, "{} {profile}", scheme.name());
            // The run was mostly L1 hits, so the fast path had work to do.
            let mmu = fast.2;
            assert!(mmu.l1_hits * 2 > mmu.lookups(), "{} {profile}: {mmu:?}", scheme.name());
        }
    }
    Ok(())
}
