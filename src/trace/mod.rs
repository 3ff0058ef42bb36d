//! Real programs as traces (DESIGN.md "Traces"): readers for ChampSim binary traces and valgrind
//! lackey text, memvirt's own compact format, and `memvirt record`.
//!
//! - [`champsim`]: 64-byte `input_instr` and 96-byte `cloudsuite_instr` records (one stream per
//!   cloudsuite ASID).
//! - [`lackey`]: `valgrind --tool=lackey --trace-mem=yes` output, `==PID==` lines skipped.
//! - [`compact`]: the compact format: a versioned header, delta-encoded zstd blocks of
//!   [`Record`]s per stream, and a directory (counts, footprint, block index); [`decode`] reads
//!   it, checks it and decodes it, on a thread of its own for replay; [`packed`] holds the
//!   records as replay reads them, 9 bytes a load, store or fetch within one page.
//! - [`record`]: runs a program under valgrind lackey and streams its output into a compact
//!   file, one stream per process image.
//! - [`input`]: opening files or standard input, plain or compressed, and reading or
//!   converting a whole trace of any format.
//!
//! Every reader takes plain, gzip, xz or zstd input ([`Compression`], by file suffix unless
//! told) and `-` for standard input, and pushes what it reads into a [`RecordSink`] (in practice
//! a [`compact::Writer`]). Bad input is a [`TraceError`] naming the file and the byte offset or
//! line; no reader panics on any input.

pub mod champsim;
pub mod compact;
pub mod decode;
pub mod fuzz;
pub mod input;
pub mod insn;
pub mod lackey;
pub mod packed;
pub mod record;
pub mod system;

pub use input::{
    convert, display_name, is_plain_compact, open, read_input, read_into, Compression,
    ConvertSummary, CountingReader, Input, InputFormat, ReadOptions, ReadSummary,
};

use std::io;
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
    /// memvirt's QEMU plugin: full-system streams ([`system`]), whose blocks hold events,
    /// not [`Record`]s.
    Qemu = 5,
}

impl Source {
    /// The source with code `b`, if any.
    pub fn from_u8(b: u8) -> Option<Source> {
        [
            Source::Unknown,
            Source::ChampSim,
            Source::Cloudsuite,
            Source::Lackey,
            Source::Record,
            Source::Qemu,
        ]
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
            Source::Qemu => "memvirt guest (QEMU, full system)",
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
