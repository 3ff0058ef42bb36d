//! Real programs as traces (DESIGN.md "Traces"): readers for ChampSim binary traces and valgrind
//! lackey text, memvirt's own compact format, and `memvirt record`.
//!
//! - [`champsim`]: 64-byte `input_instr` and 96-byte `cloudsuite_instr` records (one stream per
//!   cloudsuite ASID).
//! - [`lackey`]: `valgrind --tool=lackey --trace-mem=yes` output, `==PID==` lines skipped.
//! - [`compact`]: the compact format: a versioned header, delta-encoded zstd blocks of
//!   [`Record`]s per stream, and a directory (counts, footprint, block index).
//! - [`record`]: runs a program under valgrind lackey and streams its output into a compact
//!   file, one stream per process image.
//!
//! Every reader takes plain, gzip, xz or zstd input ([`Compression`], by file suffix unless
//! told) and `-` for standard input, and pushes what it reads into a [`RecordSink`] (in practice
//! a [`compact::Writer`]). Bad input is a [`TraceError`] naming the file and the byte offset or
//! line; no reader panics on any input.

pub mod champsim;
pub mod compact;
pub mod decode;
pub mod lackey;
pub mod record;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// The 4 KiB page the footprint and relocation count in.
pub const PAGE_BYTES: u64 = 4096;

/// What a record does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    /// A data load.
    #[default]
    Load = 0,
    /// A data store.
    Store = 1,
    /// A load and a store to the same address (lackey `M`, e.g. `inc [mem]`).
    Modify = 2,
    /// An instruction fetch.
    Fetch = 3,
}

impl Kind {
    /// Every kind, in encoding order.
    pub const ALL: [Kind; 4] = [Kind::Load, Kind::Store, Kind::Modify, Kind::Fetch];

    /// The kind with encoding `bits & 3`.
    #[inline]
    pub const fn from_bits(bits: u8) -> Kind {
        match bits & 3 {
            0 => Kind::Load,
            1 => Kind::Store,
            2 => Kind::Modify,
            _ => Kind::Fetch,
        }
    }

    /// The name used in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Load => "load",
            Kind::Store => "store",
            Kind::Modify => "modify",
            Kind::Fetch => "fetch",
        }
    }

    /// The footprint flags of a page this kind touches.
    #[inline]
    pub const fn page_flags(self) -> u8 {
        match self {
            Kind::Load => PageFlags::READ,
            Kind::Store => PageFlags::WRITE,
            Kind::Modify => PageFlags::READ | PageFlags::WRITE,
            Kind::Fetch => PageFlags::EXEC,
        }
    }
}

/// Footprint flags: how a page was touched.
#[derive(Debug)]
pub struct PageFlags;

impl PageFlags {
    /// Loaded (or modified).
    pub const READ: u8 = 1;
    /// Stored (or modified).
    pub const WRITE: u8 = 2;
    /// Fetched.
    pub const EXEC: u8 = 4;
}

/// One memory access of a trace.
///
/// `gap` is the number of instructions retired since the previous record of the same stream,
/// counting the instruction this access belongs to when it is the first record of that
/// instruction (the data accesses of an instruction after its first record have gap 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Record {
    /// Virtual address.
    pub addr: u64,
    /// Instructions since the previous record.
    pub gap: u32,
    /// Bytes accessed; 0 when the source does not say (ChampSim).
    pub size: u16,
    /// What the access does.
    pub kind: Kind,
}

impl Record {
    /// The 4 KiB pages `[first, last]` this access touches (a size of 0 counts as 1 byte; an
    /// access running past the top of the address space stops there).
    #[inline]
    pub fn pages(&self) -> (u64, u64) {
        let len = u64::from(self.size.max(1)) - 1;
        (self.addr / PAGE_BYTES, self.addr.saturating_add(len) / PAGE_BYTES)
    }
}

/// Which instruction fetches a reader keeps as [`Kind::Fetch`] records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Fetches {
    /// Only a fetch whose 4 KiB page differs from the previous instruction's (default): code
    /// pages are mapped and translated, and straight-line code within a page costs one record.
    #[default]
    Page,
    /// Every instruction fetch.
    All,
    /// None: instructions only count in the gaps.
    None,
}

/// Where a trace came from (the compact header's `source` byte).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Source {
    /// Not said.
    #[default]
    Unknown = 0,
    /// ChampSim `input_instr`.
    ChampSim = 1,
    /// ChampSim `cloudsuite_instr`.
    Cloudsuite = 2,
    /// Valgrind lackey text.
    Lackey = 3,
    /// `memvirt record` (valgrind lackey, streamed).
    Record = 4,
}

impl Source {
    /// The source with code `b`, if any.
    pub fn from_u8(b: u8) -> Option<Source> {
        [Source::Unknown, Source::ChampSim, Source::Cloudsuite, Source::Lackey, Source::Record]
            .into_iter()
            .find(|s| *s as u8 == b)
    }

    /// The name `trace info` prints.
    pub const fn name(self) -> &'static str {
        match self {
            Source::Unknown => "unknown",
            Source::ChampSim => "champsim",
            Source::Cloudsuite => "cloudsuite",
            Source::Lackey => "lackey",
            Source::Record => "memvirt record (lackey)",
        }
    }
}

/// Who a stream belongs to: one process image (or cloudsuite ASID).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamMeta {
    /// The original process id (0 when unknown).
    pub pid: u32,
    /// Its parent's (0 when unknown).
    pub ppid: u32,
    /// The cloudsuite ASID (0 when none).
    pub asid: u32,
    /// A label: the command line, or the source file name.
    pub name: String,
}

/// Where readers put what they read.
pub trait RecordSink {
    /// Starts a stream and returns its number.
    fn begin_stream(&mut self, meta: StreamMeta) -> Result<u32, TraceError>;
    /// Appends a record to `stream`.
    fn push(&mut self, stream: u32, record: Record) -> Result<(), TraceError>;
    /// Counts `n` instructions after the last record of `stream` (its tail, which has no access).
    fn trailing_instructions(&mut self, stream: u32, n: u64) -> Result<(), TraceError>;
}

/// Collects records in memory: tests, and small traces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VecSink {
    /// Each stream's metadata, records and trailing instructions.
    pub streams: Vec<(StreamMeta, Vec<Record>, u64)>,
}

impl RecordSink for VecSink {
    fn begin_stream(&mut self, meta: StreamMeta) -> Result<u32, TraceError> {
        self.streams.push((meta, Vec::new(), 0));
        u32::try_from(self.streams.len() - 1).map_err(|_| TraceError::Limit("streams".into()))
    }

    fn push(&mut self, stream: u32, record: Record) -> Result<(), TraceError> {
        let s = self.streams.get_mut(stream as usize).ok_or(TraceError::NoStream(stream))?;
        s.1.push(record);
        Ok(())
    }

    fn trailing_instructions(&mut self, stream: u32, n: u64) -> Result<(), TraceError> {
        let s = self.streams.get_mut(stream as usize).ok_or(TraceError::NoStream(stream))?;
        s.2 += n;
        Ok(())
    }
}

/// What went wrong reading or writing a trace. Every message names the file and, for bad
/// content, the byte offset (binary formats, counted in the decompressed data) or the line.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file cannot be opened.
    #[error("{file}: cannot open: {source}")]
    Open {
        /// The file.
        file: String,
        /// Why.
        source: io::Error,
    },
    /// Reading failed, decompression included (a corrupt or truncated xz/gzip/zstd stream).
    #[error("{file}: read error at byte {offset} of the decompressed data: {source}")]
    Read {
        /// The file.
        file: String,
        /// Bytes read successfully before the error.
        offset: u64,
        /// Why.
        source: io::Error,
    },
    /// Bad binary content.
    #[error("{file}: byte {offset}: {detail}")]
    Format {
        /// The file.
        file: String,
        /// Where.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// A bad text line.
    #[error("{file}: line {line}: {detail}")]
    Line {
        /// The file.
        file: String,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        detail: String,
    },
    /// Writing failed.
    #[error("{file}: cannot write: {source}")]
    Write {
        /// The file.
        file: String,
        /// Why.
        source: io::Error,
    },
    /// A limit of the compact format was exceeded.
    #[error("too many {0} for the compact trace format")]
    Limit(String),
    /// A record for a stream never begun (a bug in a reader).
    #[error("internal error: no stream {0}")]
    NoStream(u32),
    /// Anything else the user must fix (a missing program, a bad option).
    #[error("{0}")]
    Other(String),
}

/// How an input file is compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// By suffix: `.xz`, `.gz`, `.zst`, anything else uncompressed; standard input by its
    /// first bytes.
    #[default]
    Auto,
    /// Uncompressed.
    None,
    /// gzip.
    Gzip,
    /// xz (lzma).
    Xz,
    /// zstd.
    Zstd,
}

impl Compression {
    /// What `Auto` means for `path`.
    pub fn for_path(path: &Path) -> Compression {
        match path.extension().and_then(|e| e.to_str()) {
            Some("xz") => Compression::Xz,
            Some("gz") => Compression::Gzip,
            Some("zst") => Compression::Zstd,
            _ => Compression::None,
        }
    }

    /// What the first bytes of a stream say.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if head.starts_with(&[0x1F, 0x8B]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// The trace formats memvirt reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// By content: the compact magic, lackey-like text, else ChampSim `input_instr`.
    #[default]
    Auto,
    /// memvirt's compact format.
    Memvirt,
    /// ChampSim `input_instr`, 64 bytes per instruction.
    Champsim,
    /// ChampSim `cloudsuite_instr`, 96 bytes per instruction, with ASIDs.
    Cloudsuite,
    /// valgrind lackey text.
    Lackey,
}

impl InputFormat {
    /// What `Auto` means for data starting with `head` (decompressed).
    pub fn sniff(head: &[u8]) -> InputFormat {
        if head.starts_with(&compact::MAGIC) {
            return InputFormat::Memvirt;
        }
        let texty = [&b"I  "[..], b" L ", b" S ", b" M ", b"==", b"--", b"**"];
        if texty.iter().any(|t| head.starts_with(t)) {
            InputFormat::Lackey
        } else {
            InputFormat::Champsim
        }
    }
}

/// The display name of `path` (`-` is standard input).
pub fn display_name(path: &Path) -> String {
    if path == Path::new("-") {
        "<stdin>".to_owned()
    } else {
        path.display().to_string()
    }
}

/// A decompressed input with the count of bytes read from it, for error offsets.
pub struct Input {
    /// The display name.
    pub name: String,
    /// The decompressed data.
    pub reader: CountingReader<Box<dyn BufRead + Send>>,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input").field("name", &self.name).field("read", &self.reader.count).finish()
    }
}

/// Counts the bytes read through it.
pub struct CountingReader<R> {
    inner: R,
    /// Bytes read so far.
    pub count: u64,
}

impl<R> std::fmt::Debug for CountingReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingReader").field("count", &self.count).finish()
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for CountingReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.count += amt as u64;
        self.inner.consume(amt);
    }
}

const IO_BUFFER: usize = 1 << 20;

/// Opens `path` (`-`: standard input) and decompresses it as `compression` says (`Auto`: by
/// suffix; standard input by its first bytes).
pub fn open(path: &Path, compression: Compression) -> Result<Input, TraceError> {
    let name = display_name(path);
    let raw: Box<dyn Read + Send> = if path == Path::new("-") {
        Box::new(io::stdin())
    } else {
        let file =
            File::open(path).map_err(|source| TraceError::Open { file: name.clone(), source })?;
        Box::new(file)
    };
    let compression = match compression {
        Compression::Auto if path != Path::new("-") => Compression::for_path(path),
        c => c,
    };
    Input::new(name, raw, compression)
}

impl Input {
    /// `raw`, named `name` in errors, decompressed as `compression` says (`Auto`: by its first
    /// bytes).
    pub fn new(
        name: String,
        raw: Box<dyn Read + Send>,
        compression: Compression,
    ) -> Result<Input, TraceError> {
        let mut raw = BufReader::with_capacity(IO_BUFFER, raw);
        let compression = match compression {
            Compression::Auto => {
                let head = raw.fill_buf().map_err(|source| TraceError::Read {
                    file: name.clone(),
                    offset: 0,
                    source,
                })?;
                Compression::sniff(head)
            }
            c => c,
        };
        let reader: Box<dyn BufRead + Send> = match compression {
            Compression::Auto | Compression::None => Box::new(raw),
            Compression::Gzip => Box::new(BufReader::with_capacity(
                IO_BUFFER,
                flate2::bufread::MultiGzDecoder::new(raw),
            )),
            Compression::Xz => Box::new(BufReader::with_capacity(
                IO_BUFFER,
                xz2::bufread::XzDecoder::new_multi_decoder(raw),
            )),
            Compression::Zstd => {
                let dec = zstd::stream::read::Decoder::with_buffer(raw)
                    .map_err(|source| TraceError::Read { file: name.clone(), offset: 0, source })?;
                Box::new(BufReader::with_capacity(IO_BUFFER, dec))
            }
        };
        Ok(Input { name, reader: CountingReader { inner: reader, count: 0 } })
    }
}

/// How to read one input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// The format (`Auto`: by content).
    pub format: InputFormat,
    /// The compression (`Auto`: by suffix).
    pub compression: Compression,
    /// Which instruction fetches become records.
    pub fetches: Fetches,
}

/// What [`read_into`] read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadSummary {
    /// The format it was.
    pub format: InputFormat,
    /// Where its records came from.
    pub source: Source,
    /// Bytes of decompressed input (for a compact input, the size of its own source).
    pub bytes: u64,
}

/// Reads the trace `path` (any format) into `sink`.
pub fn read_into(
    path: &Path,
    opts: ReadOptions,
    sink: &mut dyn RecordSink,
) -> Result<ReadSummary, TraceError> {
    let input = open(path, opts.compression)?;
    let label = path.file_name().map_or_else(|| input.name.clone(), |n| n.to_string_lossy().into());
    read_input(input, &label, opts, sink)
}

/// Reads the trace `input` (any format; `opts.compression` is already applied) into `sink`,
/// naming its stream(s) `label`.
pub fn read_input(
    mut input: Input,
    label: &str,
    opts: ReadOptions,
    sink: &mut dyn RecordSink,
) -> Result<ReadSummary, TraceError> {
    let format = match opts.format {
        InputFormat::Auto => {
            let head = input.reader.fill_buf().map_err(|source| TraceError::Read {
                file: input.name.clone(),
                offset: 0,
                source,
            })?;
            InputFormat::sniff(head)
        }
        f => f,
    };
    let source = match format {
        InputFormat::Champsim => {
            champsim::read(&mut input, champsim::Variant::Input, opts.fetches, label, sink)?;
            Source::ChampSim
        }
        InputFormat::Cloudsuite => {
            champsim::read(&mut input, champsim::Variant::Cloudsuite, opts.fetches, label, sink)?;
            Source::Cloudsuite
        }
        InputFormat::Lackey => {
            lackey::read(&mut input, opts.fetches, label, sink)?;
            Source::Lackey
        }
        InputFormat::Memvirt | InputFormat::Auto => {
            let mut data = Vec::new();
            input.reader.read_to_end(&mut data).map_err(|source| TraceError::Read {
                file: input.name.clone(),
                offset: input.reader.count,
                source,
            })?;
            let reader = decode::Reader::from_bytes(input.name.clone(), data)?;
            copy_compact(&reader, sink)?;
            let h = reader.header;
            return Ok(ReadSummary {
                format: InputFormat::Memvirt,
                source: h.source,
                bytes: h.source_bytes,
            });
        }
    };
    Ok(ReadSummary { format, source, bytes: input.reader.count })
}

/// Every stream of a compact trace into `sink`.
fn copy_compact(reader: &decode::Reader, sink: &mut dyn RecordSink) -> Result<(), TraceError> {
    let mut batch = Vec::new();
    for (i, info) in reader.streams.iter().enumerate() {
        let id = sink.begin_stream(info.meta.clone())?;
        let mut dec = reader.stream(i, 0, u64::MAX)?;
        while dec.next_batch(&mut batch)? {
            for &r in &batch {
                sink.push(id, r)?;
            }
        }
        sink.trailing_instructions(id, info.trailing)?;
    }
    Ok(())
}

/// Whether `path` is an uncompressed compact file on disk (so replay reads it in place).
pub fn is_plain_compact(path: &Path, opts: ReadOptions) -> Result<bool, TraceError> {
    if path == Path::new("-") {
        return Ok(false);
    }
    let compression = match opts.compression {
        Compression::Auto => Compression::for_path(path),
        c => c,
    };
    if compression != Compression::None {
        return Ok(false);
    }
    match opts.format {
        InputFormat::Memvirt => return Ok(true),
        InputFormat::Auto => {}
        _ => return Ok(false),
    }
    let mut head = [0u8; 8];
    let mut f =
        File::open(path).map_err(|source| TraceError::Open { file: display_name(path), source })?;
    let n = f.read(&mut head).map_err(|source| TraceError::Read {
        file: display_name(path),
        offset: 0,
        source,
    })?;
    Ok(head[..n] == compact::MAGIC)
}

/// What [`convert`] wrote.
#[derive(Clone, Debug)]
pub struct ConvertSummary {
    /// What it read.
    pub read: ReadSummary,
    /// The new file's header.
    pub header: compact::Header,
    /// Its streams.
    pub streams: Vec<compact::StreamInfo>,
}

/// Converts the trace `input` (any format) into the compact file `output`, replaced whole and
/// only on success.
pub fn convert(
    input: &Path,
    output: &Path,
    opts: ReadOptions,
    level: i32,
) -> Result<ConvertSummary, TraceError> {
    let (out, mut writer) = compact::FileOutput::create(output, Source::Unknown, level)?;
    let read = read_into(input, opts, &mut writer)?;
    writer.set_source(read.source);
    let (header, streams) = out.commit(writer, read.bytes)?;
    Ok(ConvertSummary { read, header, streams })
}

/// Keeps instruction fetches as [`Fetches`] says and folds instructions into gaps: the state
/// both readers share.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct GapCounter {
    /// Instructions since the last record.
    pending: u64,
    /// The page of the last instruction, `u64::MAX` before the first.
    last_code_page: Option<u64>,
    fetches: Fetches,
}

impl GapCounter {
    pub(crate) fn new(fetches: Fetches) -> Self {
        GapCounter { pending: 0, last_code_page: None, fetches }
    }

    /// An instruction at `ip` of `size` bytes: `Some(record)` if its fetch is kept.
    #[inline]
    pub(crate) fn instruction(&mut self, ip: u64, size: u16) -> Option<Record> {
        self.pending += 1;
        let page = ip / PAGE_BYTES;
        let keep = match self.fetches {
            Fetches::All => true,
            Fetches::Page => self.last_code_page != Some(page),
            Fetches::None => false,
        };
        self.last_code_page = Some(page);
        keep.then_some(Record { addr: ip, gap: 0, size, kind: Kind::Fetch })
    }

    /// Gives `record` the pending gap; `None` if it is over `u32::MAX`.
    #[inline]
    pub(crate) fn stamp(&mut self, mut record: Record) -> Option<Record> {
        record.gap = u32::try_from(self.pending).ok()?;
        self.pending = 0;
        Some(record)
    }

    /// Instructions after the last record.
    pub(crate) fn trailing(&self) -> u64 {
        self.pending
    }
}

/// `path` with `suffix` appended to its file name.
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}
