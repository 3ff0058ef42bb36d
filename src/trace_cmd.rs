//! `memvirt trace convert|info|bench`, `memvirt record`, and `--trace` on `run` and `compare`:
//! part of the binary (declared in `main.rs`), plumbing over [`memvirt::trace`] and the trace
//! workload.

use std::ffi::OsString;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use memvirt::run::{self, RunSpec};
use memvirt::scheme::SchemeKind;
use memvirt::trace::compact::{self, Header, StreamInfo};
use memvirt::trace::decode::{Prefetch, Reader};
use memvirt::trace::record::{self, RecordOptions};
use memvirt::trace::{self, Compression, Fetches, InputFormat, Kind, ReadOptions};
use memvirt::workload::{Length, TraceParams, TraceSet, WorkloadKind};

use super::{
    check_output, emit, write_reports, MachineArgs, OutputArgs, Progress, Setup, SharedBar,
};

/// `--trace FILE` and its options, on `run` and `compare`.
#[derive(Args, Debug)]
pub(super) struct TraceInputArgs {
    /// Replay a trace instead of a built-in workload (repeatable; the traces run as concurrent
    /// guest processes, one per stream): ChampSim (`.champsimtrace[.xz|.gz]`), valgrind lackey
    /// text, or memvirt's compact format (`memvirt trace convert`, `memvirt record`). `-` is
    /// standard input.
    #[arg(long = "trace", value_name = "FILE")]
    pub traces: Vec<PathBuf>,
    /// Records of each stream skipped before replay (not simulated). A stream no longer than
    /// N replays nothing; N past the end of every stream is an error.
    #[arg(long, value_name = "N")]
    pub skip: Option<u64>,
    /// Records of each stream replayed at most, after --skip (at least 1; without it, every
    /// record is replayed).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Memory the traces' decoded records may take, packed for replay (9 bytes a load, store
    /// or fetch within one page, 25 any other): within it a trace is decoded once, while it is
    /// checked, and every run shares the records; beyond it each run decodes the file again on
    /// a thread of its own. 0: always decode in each run.
    #[arg(long, value_name = "MIB", default_value_t = memvirt::workload::DEFAULT_KEEP_DECODED_BYTES >> 20)]
    pub keep_decoded: u64,
    #[command(flatten)]
    pub read: ReadArgs,
}

/// How trace inputs are read.
#[derive(Args, Debug, Clone)]
pub(super) struct ReadArgs {
    /// The input format: `auto` takes a `.mvt` file (`.mvt.zst` ...) or the compact magic for
    /// the compact format, lackey-like text for lackey, and plausible 64-byte records (branch
    /// flags 0 or 1, canonical addresses) for ChampSim `input_instr`, and refuses anything else;
    /// `cloudsuite` reads 96-byte records.
    #[arg(long = "trace-format", value_enum, default_value_t = InputFormat::Auto)]
    pub trace_format: InputFormat,
    /// The input compression: `auto` goes by suffix (`.xz`, `.gz`, `.zst`; standard input by
    /// its first bytes).
    #[arg(long, value_enum, default_value_t = Compression::Auto)]
    pub compression: Compression,
    /// Which instruction fetches of a ChampSim or lackey input become records.
    #[arg(long, value_enum, default_value_t = Fetches::Page)]
    pub fetches: Fetches,
}

impl ReadArgs {
    fn options(&self) -> ReadOptions {
        ReadOptions {
            format: self.trace_format,
            compression: self.compression,
            fetches: self.fetches,
        }
    }
}

#[derive(Args, Debug)]
pub(super) struct TraceArgs {
    #[command(subcommand)]
    command: TraceCommand,
}

#[derive(Subcommand, Debug)]
enum TraceCommand {
    /// Convert a ChampSim, lackey or compact trace into memvirt's compact format.
    Convert(ConvertArgs),
    /// Describe a trace: streams, counts, footprint, address range, compression (the whole
    /// trace is checked first, as `verify` does).
    Info(InfoArgs),
    /// Check a compact trace whole: every checksum, every block decoded, and every count,
    /// address range and footprint page of the directory against the records. Exits non-zero
    /// naming the file and byte offset of the first fault.
    Verify(VerifyArgs),
    /// Measure decoding speed of a compact trace (records per second on one core).
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
struct ConvertArgs {
    /// The input (`-`: standard input).
    input: PathBuf,
    /// The compact trace to write (replaced whole, only on success).
    output: PathBuf,
    #[command(flatten)]
    read: ReadArgs,
    /// zstd compression level (1-19).
    #[arg(long, default_value_t = compact::DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=19))]
    level: i32,
}

#[derive(Args, Debug)]
struct InfoArgs {
    /// The trace (any format; a non-compact one is converted in memory to report its compact
    /// size).
    file: PathBuf,
    #[command(flatten)]
    read: ReadArgs,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// The compact trace (plain, or compressed as `--compression` or its suffix says; `-`:
    /// standard input).
    file: PathBuf,
    /// Its compression: `auto` goes by suffix (standard input by its first bytes).
    #[arg(long, value_enum, default_value_t = Compression::Auto)]
    compression: Compression,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// A compact trace.
    file: PathBuf,
    /// Passes over the file; the fastest is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
}

/// `memvirt record`.
#[derive(Args, Debug)]
pub(super) struct RecordArgs {
    /// The compact trace to write [default: the program's name with `.mvt`].
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Which instruction fetches become records.
    #[arg(long, value_enum, default_value_t = Fetches::Page)]
    fetches: Fetches,
    /// zstd compression level (1-19).
    #[arg(long, default_value_t = compact::DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=19))]
    level: i32,
    /// The valgrind to run.
    #[arg(long, default_value = "valgrind")]
    valgrind: OsString,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD ARGS")]
    command: Vec<OsString>,
}

impl TraceInputArgs {
    /// An error if a replay option is given without `--trace`.
    pub(super) fn check_unused(&self) -> Result<()> {
        if self.traces.is_empty() && (self.skip.is_some() || self.limit.is_some()) {
            bail!("--skip and --limit count trace records: they need --trace");
        }
        Ok(())
    }
}

pub(super) fn trace(args: &TraceArgs) -> Result<()> {
    match &args.command {
        TraceCommand::Convert(a) => convert(a),
        TraceCommand::Info(a) => info(a),
        TraceCommand::Verify(a) => verify(a),
        TraceCommand::Bench(a) => bench(a),
    }
}

/// Prints each warning on standard error.
pub(super) fn warn(warnings: &[String]) {
    for w in warnings {
        eprintln!("memvirt: warning: {w}");
    }
}

fn convert(a: &ConvertArgs) -> Result<()> {
    memvirt::outfile::check(&a.output, &[])?;
    let start = Instant::now();
    let s = trace::convert(&a.input, &a.output, a.read.options(), a.level)?;
    warn(&s.read.warnings);
    let bytes = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
    let mut text = format!(
        "{} -> {}: {} streams, {} records, {} instructions, {} bytes ({:.2} bytes/record",
        trace::display_name(&a.input),
        a.output.display(),
        s.header.streams,
        s.header.records,
        s.header.instructions,
        bytes,
        per(bytes, s.header.records),
    );
    if s.read.bytes > 0 {
        text.push_str(&format!(
            "; compression ratio {:.1} against the {} bytes of input",
            ratio(s.read.bytes, bytes),
            s.read.bytes
        ));
    }
    text.push_str(&format!(") in {:.2} s\n", start.elapsed().as_secs_f64()));
    emit(&text, None)
}

fn per(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

fn ratio(source: u64, file: u64) -> f64 {
    per(source, file)
}

fn info(a: &InfoArgs) -> Result<()> {
    let opts = a.read.options();
    let reader =
        if trace::is_plain_compact(&a.file, opts)? || a.read.trace_format == InputFormat::Memvirt {
            let reader = Reader::open(&a.file, a.read.compression)?;
            warn(&reader.warning().into_iter().collect::<Vec<_>>());
            reader.validate()?;
            reader
        } else {
            // Convert in memory: the compact size is part of what is asked.
            let mut writer = compact::Writer::new(
                Cursor::new(Vec::new()),
                &trace::display_name(&a.file),
                trace::Source::Unknown,
                compact::DEFAULT_LEVEL,
            )?;
            let read = trace::read_into(&a.file, opts, &mut writer)?;
            writer.set_source(read.source);
            let (_, _, out) = writer.finish(read.bytes)?;
            Reader::from_bytes(trace::display_name(&a.file), out.into_inner())?
        };
    emit(&describe(&reader.name, &reader.header, &reader.streams, reader.file_bytes), None)
}

fn verify(a: &VerifyArgs) -> Result<()> {
    let reader = Reader::open(&a.file, a.compression)?;
    warn(&reader.warning().into_iter().collect::<Vec<_>>());
    reader.validate()?;
    let h = &reader.header;
    let blocks: usize = reader.streams.iter().map(|s| s.blocks.len()).sum();
    let checked = if reader.layout().checksums {
        "every checksum, block, count and footprint page checked"
    } else {
        "no checksums in this version; every block, count and footprint page checked"
    };
    let text = format!(
        "{}: ok: compact trace v{}, {} streams, {blocks} blocks, {} records, {} bytes: {checked}\n",
        reader.name, h.version, h.streams, h.records, reader.file_bytes
    );
    emit(&text, None)
}

/// The text of `trace info` (and `record`'s summary).
fn describe(name: &str, h: &Header, streams: &[StreamInfo], file_bytes: u64) -> String {
    let mut by_kind = [0u64; 4];
    for s in streams {
        for (k, n) in s.by_kind.iter().enumerate() {
            by_kind[k] += n;
        }
    }
    // Full-system streams count their non-access events in the slot of `modify`.
    let full_system = h.source == memvirt::trace::Source::Qemu;
    let label = |k: Kind| if full_system && k == Kind::Modify { "other events" } else { k.name() };
    let kinds: Vec<String> =
        Kind::ALL.iter().map(|k| format!("{} {}", label(*k), by_kind[*k as usize])).collect();
    let pages: u64 = streams.iter().map(StreamInfo::footprint_pages).sum();
    let lo = streams.iter().filter(|s| s.records > 0).map(|s| s.min_addr).min().unwrap_or(0);
    let hi = streams.iter().map(|s| s.max_addr).max().unwrap_or(0);
    let mut t = format!(
        "{name}: memvirt compact trace v{}, source {}, {}-bit addresses\n",
        h.version,
        h.source.name(),
        h.addr_bits
    );
    t.push_str(&format!(
        "  {} streams, {} records ({}), {} instructions\n",
        h.streams,
        h.records,
        kinds.join(", "),
        h.instructions
    ));
    t.push_str(&format!(
        "  footprint {pages} pages of 4 KiB ({:.1} MiB), addresses {lo:#x}..={hi:#x}\n",
        pages as f64 / 256.0
    ));
    t.push_str(&format!("  {file_bytes} bytes, {:.2} bytes/record", per(file_bytes, h.records)));
    if h.source_bytes > 0 {
        t.push_str(&format!(
            "; compression ratio {:.1} ({} bytes of source)",
            ratio(h.source_bytes, file_bytes),
            h.source_bytes
        ));
    }
    t.push_str(&format!(
        "; {:.1} against 16-byte records\n",
        ratio(h.records.saturating_mul(16), file_bytes)
    ));
    t.push_str("  stream      pid     ppid  asid       records  instructions     pages  lowest              highest             name\n");
    for (i, s) in streams.iter().enumerate() {
        t.push_str(&format!(
            "  {i:>6} {:>8} {:>8} {:>5} {:>13} {:>13} {:>9}  {:#018x}  {:#018x}  {}\n",
            s.meta.pid,
            s.meta.ppid,
            s.meta.asid,
            s.records,
            s.instructions,
            s.footprint_pages(),
            s.min_addr,
            s.max_addr,
            s.meta.name
        ));
    }
    t
}

/// This thread's CPU time, in seconds: unlike wall time, not inflated by other processes
/// sharing the core.
fn thread_cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn bench(a: &BenchArgs) -> Result<()> {
    let reader = Reader::open(&a.file, Compression::Auto)?;
    let records = reader.header.records;
    let (mut best_wall, mut best_cpu) = (f64::INFINITY, f64::INFINITY);
    let mut batch = Vec::new();
    for _ in 0..a.repeat {
        let (wall, cpu) = (Instant::now(), thread_cpu_seconds());
        let mut n = 0u64;
        let mut sum = 0u64;
        for s in 0..reader.streams.len() {
            let mut dec = reader.stream(s, 0, u64::MAX)?;
            while dec.next_batch(&mut batch)? {
                n += batch.len() as u64;
                sum = batch.iter().fold(sum, |acc, r| acc.wrapping_add(r.addr));
            }
        }
        std::hint::black_box(sum);
        if n != records {
            bail!("decoded {n} records, the header says {records}");
        }
        best_cpu = best_cpu.min(thread_cpu_seconds() - cpu);
        best_wall = best_wall.min(wall.elapsed().as_secs_f64());
    }
    // The same through the decoding thread, as replay consumes it.
    let start = Instant::now();
    let mut n = 0u64;
    for s in 0..reader.streams.len() {
        let mut feed = Prefetch::spawn(reader.stream(s, 0, u64::MAX)?)?;
        while let Some(b) = feed.next_batch()? {
            n += b.len() as u64;
            feed.recycle(b);
        }
    }
    let threaded = start.elapsed().as_secs_f64();
    let rate = |secs: f64| if secs > 0.0 { records as f64 / secs / 1e6 } else { 0.0 };
    let text = format!(
        "{}: {records} records, {} bytes ({:.2} bytes/record)\n  \
         decode on one core: {:.1} M records/s of CPU time ({:.3} s), {:.1} M records/s of wall time ({:.3} s), best of {}\n  \
         through the decoding thread: {:.1} M records/s of wall time ({:.3} s)\n",
        reader.name,
        reader.file_bytes,
        per(reader.file_bytes, records),
        rate(best_cpu),
        best_cpu,
        rate(best_wall),
        best_wall,
        a.repeat,
        rate(threaded) * n as f64 / records.max(1) as f64,
        threaded
    );
    emit(&text, None)
}

pub(super) fn record(a: &RecordArgs) -> Result<()> {
    let output = match &a.output {
        Some(p) => p.clone(),
        None => {
            let prog = a.command.first().map(Path::new).and_then(Path::file_name);
            let mut name =
                prog.map(|p| p.to_os_string()).unwrap_or_else(|| "memvirt-record".into());
            name.push(".mvt");
            PathBuf::from(name)
        }
    };
    let program = a.command.first().map(Path::new);
    memvirt::outfile::check(&output, &program.into_iter().collect::<Vec<_>>())?;
    let opts = RecordOptions {
        output: output.clone(),
        fetches: a.fetches,
        level: a.level,
        valgrind: a.valgrind.clone(),
    };
    let start = Instant::now();
    let s = record::record(&a.command, &opts)?;
    let bytes = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    let mut text = format!(
        "memvirt record: {} process images, {} records, {} instructions in {:.1} s; {} bytes of lackey text streamed into {} ({} bytes); the program {}\n",
        s.header.streams,
        s.header.records,
        s.header.instructions,
        start.elapsed().as_secs_f64(),
        s.text_bytes,
        output.display(),
        bytes,
        match s.status.code() {
            Some(0) => "exited with status 0".to_owned(),
            Some(c) => format!("exited with status {c}"),
            None => format!("ended: {}", s.status),
        }
    );
    text.push_str(&describe(&output.display().to_string(), &s.header, &s.streams, bytes));
    emit(&text, None)
}

/// `run`/`compare` with `--trace` (`command` names which, for the title): every scheme in
/// `schemes` on the traces, converted and checked once for all of them; native runs too, as the
/// overhead baseline, and is reported only if it is among `schemes`.
/// Replays the traces under each of `schemes` (and native). `jobs`: run them in parallel on
/// that many threads (0: one per core), with a bar of runs; `None`: one after another, with a
/// bar following each run's records.
pub(super) fn run_traces(
    machine: &MachineArgs,
    schemes: &[SchemeKind],
    t: &TraceInputArgs,
    out: &OutputArgs,
    command: &str,
    jobs: Option<usize>,
) -> Result<()> {
    let mut inputs = machine.inputs();
    inputs.extend(t.traces.iter().map(PathBuf::as_path));
    check_output(out, &inputs)?;
    let setup = Setup::new(machine, schemes, &[])?;
    if machine.length == Length::Steady {
        bail!(
            "--length steady sets the built-in workloads' lengths; a trace's length is its own: \
             give --warmup N (instructions per stream) and --skip/--limit instead"
        );
    }
    let mut sets = setup.workload_sets.clone();
    for (key, v) in [("skip", t.skip), ("limit", t.limit)] {
        if let Some(v) = v {
            sets.push((key.to_owned(), v.to_string()));
        }
    }
    let params = TraceParams::with_sets(&sets).context("trace replay")?;
    let keep = t.keep_decoded.saturating_mul(1 << 20);
    let traces = TraceSet::prepare_keeping(&t.traces, t.read.options(), keep, params.window())?;
    warn(&traces.warnings());
    traces.check_skip(params.skip)?;
    let Some(&first) = schemes.first() else { bail!("--schemes names no scheme") };
    let spec = RunSpec {
        workload_sets: sets,
        traces: Some(traces.clone()),
        warmup: machine.warmup.unwrap_or(0),
        ..setup.spec(first, WorkloadKind::Pagefault, true)
    };
    let name = traces.name();
    let reports = match jobs {
        Some(jobs) => {
            let bar =
                SharedBar::new(format!("{command}: {} schemes", schemes.len()), SharedBar::RUNS);
            let grouped =
                run::compare_parallel(std::slice::from_ref(&spec), schemes, jobs, &|d, n| {
                    bar.update(d, n)
                });
            bar.finish();
            grouped.map_err(|e| anyhow!(e))?.into_iter().flatten().collect()
        }
        None => {
            let runs = schemes.len() + usize::from(!schemes.contains(&SchemeKind::Native));
            let mut progress = Progress::new(runs);
            let reports = run::compare(&spec, schemes, &mut |s, d, total| {
                progress.update_named(s, &name, d, total)
            })
            .map_err(|e| anyhow!(e))?;
            progress.finish();
            reports
        }
    };
    let title = format!("memvirt {command}: traces {name}, {}", setup.describe());
    write_reports(&reports, out, &title)
}
