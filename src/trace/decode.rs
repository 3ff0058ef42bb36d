//! Reading compact traces: the header and directory ([`Reader`]), one stream's blocks in order
//! with `--skip`/`--limit` ([`StreamDecoder`]), and the same on a thread of its own
//! ([`Prefetch`]), so that replay never waits for decoding.
//!
//! Every length and offset is checked against the file before it is used; a bad one is a
//! [`TraceError::Format`] naming the file and the offset of the structure it was found in.

use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::compact::{
    checksum, decode_records, get_varint, BlockRef, Header, Layout, PageRun, StreamInfo,
    BLOCK_HEADER_LEN, BLOCK_RECORDS, BLOCK_TAG, DIR_TAG, HEADER_CHECKSUM_AT, HEADER_LEN,
    LEGACY_VERSION, MAGIC, MAX_DIR_BYTES, MAX_RECORD_BYTES, VERSION,
};
use super::packed::{Packed, PACKED_RECORD_BYTES};
use super::{
    display_name, Compression, PageFlags, Record, Source, StreamMeta, TraceError, PAGE_BYTES,
};

/// A seekable byte source that can move to another thread.
pub trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

/// Where a trace's bytes are.
#[derive(Clone, Debug)]
enum Backing {
    File(PathBuf),
    /// Standard input or a compressed compact file, read whole.
    Memory(Arc<Vec<u8>>),
}

/// An open compact trace: its header and directory, checked.
#[derive(Clone, Debug)]
pub struct Reader {
    /// The display name.
    pub name: String,
    /// The header.
    pub header: Header,
    /// The directory.
    pub streams: Vec<StreamInfo>,
    /// Bytes in the file.
    pub file_bytes: u64,
    backing: Backing,
}

fn format(name: &str, offset: u64, detail: impl Into<String>) -> TraceError {
    TraceError::Format { file: name.to_owned(), offset, detail: detail.into() }
}

fn read_at(r: &mut dyn ReadSeek, name: &str, at: u64, buf: &mut [u8]) -> Result<(), TraceError> {
    r.seek(SeekFrom::Start(at)).and_then(|_| r.read_exact(buf)).map_err(|source| {
        match source.kind() {
            std::io::ErrorKind::UnexpectedEof => format(
                name,
                at,
                format!("truncated: the file ends inside {} bytes here", buf.len()),
            ),
            _ => TraceError::Read { file: name.to_owned(), offset: at, source },
        }
    })
}

impl Reader {
    /// Opens `path` (`-`: standard input). A plain file is read in place; standard input and
    /// compressed files are read into memory first.
    pub fn open(path: &Path, compression: Compression) -> Result<Reader, TraceError> {
        let name = display_name(path);
        let stdin = path == Path::new("-");
        let plain = !stdin
            && match compression {
                Compression::Auto => Compression::for_path(path) == Compression::None,
                c => c == Compression::None,
            };
        if plain {
            let mut f = File::open(path)
                .map_err(|source| TraceError::Open { file: name.clone(), source })?;
            let len = f
                .metadata()
                .map_err(|source| TraceError::Open { file: name.clone(), source })?
                .len();
            let (header, streams) = read_meta(&mut f, &name, len)?;
            let backing = Backing::File(path.to_owned());
            return Ok(Reader { name, header, streams, file_bytes: len, backing });
        }
        let mut input = super::open(path, compression)?;
        let mut data = Vec::new();
        input.reader.read_to_end(&mut data).map_err(|source| TraceError::Read {
            file: name.clone(),
            offset: input.reader.count,
            source,
        })?;
        Self::from_bytes(name, data)
    }

    /// A trace held in memory.
    pub fn from_bytes(name: String, data: Vec<u8>) -> Result<Reader, TraceError> {
        let len = data.len() as u64;
        let (header, streams) = read_meta(&mut Cursor::new(&data[..]), &name, len)?;
        Ok(Reader { name, header, streams, file_bytes: len, backing: Backing::Memory(data.into()) })
    }

    /// The file, when the trace is one on disk (not standard input, not compressed).
    pub fn path(&self) -> Option<&Path> {
        match &self.backing {
            Backing::File(p) => Some(p),
            Backing::Memory(_) => None,
        }
    }

    fn source(&self) -> Result<Box<dyn ReadSeek>, TraceError> {
        Ok(match &self.backing {
            Backing::File(p) => Box::new(std::io::BufReader::new(
                File::open(p)
                    .map_err(|source| TraceError::Open { file: self.name.clone(), source })?,
            )),
            Backing::Memory(m) => Box::new(Cursor::new(ArcBytes(Arc::clone(m)))),
        })
    }

    /// A decoder of stream `stream` that skips its first `skip` records and stops after `limit`.
    pub fn stream(
        &self,
        stream: usize,
        skip: u64,
        limit: u64,
    ) -> Result<StreamDecoder, TraceError> {
        let blocks = self.raw_blocks(stream, MAX_RECORD_BYTES)?;
        Ok(StreamDecoder { blocks, skip, left: limit })
    }

    /// The blocks of `stream` undecoded (full-system streams); `max_record` bounds the decoded
    /// bytes of one record.
    pub fn raw_blocks(&self, stream: usize, max_record: usize) -> Result<RawBlocks, TraceError> {
        let id = u32::try_from(stream).unwrap_or(u32::MAX);
        let blocks = self.streams.get(stream).ok_or(TraceError::NoStream(id))?.blocks.clone();
        Ok(RawBlocks {
            name: self.name.clone(),
            source: self.source()?,
            layout: self.layout(),
            stream: id,
            blocks,
            next: 0,
            end: self.header.dir_offset,
            max_record,
            block: BlockDecoder::new(),
        })
    }

    /// Every record of `stream`, in memory (tests, small traces).
    pub fn records(&self, stream: usize) -> Result<Vec<Record>, TraceError> {
        let mut dec = self.stream(stream, 0, u64::MAX)?;
        let (mut all, mut batch) = (Vec::new(), Vec::new());
        while dec.next_batch(&mut batch)? {
            all.extend_from_slice(&batch);
        }
        Ok(all)
    }

    /// The byte layout of the file's version.
    pub fn layout(&self) -> Layout {
        Layout::of(self.header.version).unwrap_or(Layout {
            header_bytes: HEADER_LEN as u64,
            block_header_bytes: BLOCK_HEADER_LEN as u64,
            checksums: true,
        })
    }

    /// A warning to show the user about this file, if any: a version-1 file has no checksums.
    pub fn warning(&self) -> Option<String> {
        (!self.layout().checksums).then(|| {
            format!(
                "{}: compact trace version {} has no checksums, so damage to it may go \
                 unnoticed; `memvirt trace convert {} NEW.mvt` rewrites it as version {VERSION}",
                self.name, self.header.version, self.name
            )
        })
    }

    /// Decodes every block of every stream and checks what the directory claims against the
    /// records: counts by kind, the address range and the footprint, page by page and flag by
    /// flag. `Ok` means the whole file is sound and its directory exact.
    pub fn validate(&self) -> Result<(), TraceError> {
        self.validate_keeping(0, Window::ALL).map(|_| ())
    }

    /// The records a replay with `window` takes from every stream together, as the directory
    /// claims them.
    pub fn replayed(&self, window: Window) -> u64 {
        self.streams.iter().map(|s| window.replayed(s.records)).sum()
    }

    /// [`Reader::validate`], keeping the records of every stream that a replay with `window`
    /// (records skipped, then at most that many replayed) would replay, packed ([`Packed`]),
    /// when they take at most `keep_bytes` together: the one decoding every run that replays
    /// the trace can share ([`crate::workload::TraceSet`]). `None` when they take more, or for
    /// a full-system trace.
    pub fn validate_keeping(
        &self,
        keep_bytes: u64,
        window: Window,
    ) -> Result<Option<Vec<Arc<Packed>>>, TraceError> {
        if self.header.source == Source::Qemu {
            super::system::validate(self)?;
            return Ok(None);
        }
        // The directory's counts are claims: keeping stops if the records outgrow the budget.
        let mut room = keep_bytes;
        let claimed = self.replayed(window);
        let mut keep = claimed.saturating_mul(PACKED_RECORD_BYTES as u64) <= room;
        let mut kept: Vec<Arc<Packed>> = Vec::new();
        let mut block: Vec<Record> = Vec::new();
        for (s, info) in self.streams.iter().enumerate() {
            let claim = |detail: String| {
                format(
                    &self.name,
                    self.header.dir_offset,
                    format!("directory: stream {s}: {detail}"),
                )
            };
            let mut check = ClaimCheck::new(info).map_err(claim)?;
            let mut dec = self.stream(s, 0, u64::MAX)?;
            let mut packed = Packed::default();
            if keep {
                let wanted = window.replayed(info.records).min(room / PACKED_RECORD_BYTES as u64);
                packed = Packed::with_capacity(usize::try_from(wanted).unwrap_or(0));
            }
            // Records of this stream decoded before the block.
            let mut at = 0u64;
            while dec.next_batch(&mut block)? {
                for r in &block {
                    check.record(r).map_err(claim)?;
                }
                let n = block.len() as u64;
                let (from, to) = window.overlap(at, n);
                at += n;
                if !keep || to == from {
                    continue;
                }
                // Offsets into a block of at most `BLOCK_RECORDS` fit.
                let (from, to) =
                    (usize::try_from(from).unwrap_or(0), usize::try_from(to).unwrap_or(0));
                let before = packed.bytes();
                packed.extend_from(&block[from..to]);
                let grew = packed.bytes() - before;
                if grew > room {
                    // Over the budget: nothing is kept.
                    (keep, kept, packed) = (false, Vec::new(), Packed::default());
                } else {
                    room -= grew;
                }
            }
            check.finish().map_err(claim)?;
            if keep {
                kept.push(Arc::new(packed));
            }
        }
        Ok(keep.then_some(kept))
    }
}

/// The records of a stream a replay takes: `skip` of them skipped, then at most `limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Records skipped first.
    pub skip: u64,
    /// Records replayed at most (`u64::MAX`: all).
    pub limit: u64,
}

impl Window {
    /// Every record.
    pub const ALL: Window = Window { skip: 0, limit: u64::MAX };

    /// How many of a stream of `records` the window replays.
    pub fn replayed(self, records: u64) -> u64 {
        records.saturating_sub(self.skip).min(self.limit)
    }

    /// The part of the `n` records from record `at` that the window replays, as offsets into
    /// them, `from..to` (empty: `from == to`).
    fn overlap(self, at: u64, n: u64) -> (u64, u64) {
        let end = self.skip.saturating_add(self.limit);
        let from = self.skip.clamp(at, at + n);
        let to = end.clamp(at, at + n);
        (from - at, to.max(from) - at)
    }
}

/// Checks one stream's directory entry against its records as they are decoded.
struct ClaimCheck<'a> {
    info: &'a StreamInfo,
    /// Each run's first index into `seen`.
    first: Vec<u64>,
    /// How the records touched each page of the footprint, in footprint order.
    seen: Vec<u8>,
    /// The run the last page was found in.
    run: usize,
    records: u64,
    by_kind: [u64; 4],
    min: u64,
    max: u64,
}

/// Pages one record touches at most: a `u16` size crosses at most 16 page boundaries.
const MAX_PAGES_PER_RECORD: u64 = (u16::MAX as u64).div_ceil(PAGE_BYTES) + 1;

impl<'a> ClaimCheck<'a> {
    fn new(info: &'a StreamInfo) -> Result<Self, String> {
        let pages = info.footprint_pages_checked().ok_or("the footprint's page count overflows")?;
        if pages > info.records.saturating_mul(MAX_PAGES_PER_RECORD) {
            return Err(format!(
                "the footprint claims {pages} pages, more than its {} records can touch",
                info.records
            ));
        }
        let mut first = Vec::with_capacity(info.footprint.len());
        let mut at = 0u64;
        for r in &info.footprint {
            if r.flags == 0
                || r.flags & !(PageFlags::READ | PageFlags::WRITE | PageFlags::EXEC) != 0
            {
                return Err(format!(
                    "footprint run at page {:#x} has flags {:#x}",
                    r.start, r.flags
                ));
            }
            first.push(at);
            at += r.pages;
        }
        Ok(ClaimCheck {
            info,
            first,
            seen: vec![0; usize::try_from(pages).map_err(|_| "footprint too large")?],
            run: 0,
            records: 0,
            by_kind: [0; 4],
            min: u64::MAX,
            max: 0,
        })
    }

    #[inline]
    fn record(&mut self, r: &Record) -> Result<(), String> {
        self.records += 1;
        self.by_kind[r.kind as usize] += 1;
        self.min = self.min.min(r.addr);
        self.max = self.max.max(r.addr.saturating_add(u64::from(r.size.max(1)) - 1));
        let flags = r.kind.page_flags();
        let (first, last) = r.pages();
        for page in first..=last {
            let runs = &self.info.footprint;
            let inside =
                |i: usize| runs.get(i).is_some_and(|x| page >= x.start && page - x.start < x.pages);
            if !inside(self.run) {
                let i = runs.partition_point(|x| x.start <= page).saturating_sub(1);
                if !inside(i) {
                    return Err(format!(
                        "record {} ({} at {:#x}) touches page {page:#x}, which its footprint \
                         does not hold",
                        self.records - 1,
                        r.kind.name(),
                        r.addr
                    ));
                }
                self.run = i;
            }
            let run = runs[self.run];
            if run.flags & flags != flags {
                return Err(format!(
                    "record {} ({} at {:#x}) touches page {page:#x}, which its footprint \
                     marks {}",
                    self.records - 1,
                    r.kind.name(),
                    r.addr,
                    flag_names(run.flags)
                ));
            }
            let at = self.first[self.run] + (page - run.start);
            self.seen[usize::try_from(at).unwrap_or(usize::MAX)] |= flags;
        }
        Ok(())
    }

    fn finish(self) -> Result<(), String> {
        let info = self.info;
        if self.records != info.records || self.by_kind != info.by_kind {
            return Err(format!(
                "the records ({}) disagree with the counts by kind the directory gives",
                self.records
            ));
        }
        let (min, max) = if self.records == 0 { (0, 0) } else { (self.min, self.max) };
        if (min, max) != (info.min_addr, info.max_addr) {
            return Err(format!(
                "the records span {min:#x}..={max:#x}, the directory says {:#x}..={:#x}",
                info.min_addr, info.max_addr
            ));
        }
        for (run, &first) in info.footprint.iter().zip(&self.first) {
            for p in 0..run.pages {
                let got = self.seen[usize::try_from(first + p).unwrap_or(usize::MAX)];
                if got != run.flags {
                    return Err(format!(
                        "the footprint marks page {:#x} {}, but the records {}",
                        run.start + p,
                        flag_names(run.flags),
                        match got {
                            0 => "never touch it".to_owned(),
                            g => format!("touch it {}", flag_names(g)),
                        }
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `read+write`-style names of footprint flags.
fn flag_names(flags: u8) -> String {
    let names: Vec<&str> =
        [(PageFlags::READ, "read"), (PageFlags::WRITE, "written"), (PageFlags::EXEC, "fetched")]
            .iter()
            .filter(|(f, _)| flags & f != 0)
            .map(|&(_, n)| n)
            .collect();
    if names.is_empty() {
        "untouched".to_owned()
    } else {
        names.join("+")
    }
}

/// Shares an in-memory trace between decoders.
#[derive(Clone, Debug)]
struct ArcBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn read_meta(
    r: &mut dyn ReadSeek,
    name: &str,
    len: u64,
) -> Result<(Header, Vec<StreamInfo>), TraceError> {
    let legacy = Layout::of(LEGACY_VERSION).map_or(48, |l| l.header_bytes);
    if len < legacy {
        return Err(format(
            name,
            0,
            format!("not a memvirt trace: {len} bytes, shorter than the header"),
        ));
    }
    let mut h = [0u8; HEADER_LEN];
    read_at(r, name, 0, &mut h[..48])?;
    if h[..8] != MAGIC {
        return Err(format(name, 0, "not a memvirt compact trace (wrong magic)"));
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    let layout = Layout::of(version).ok_or_else(|| {
        format(
            name,
            8,
            format!(
                "compact trace version {version}; this memvirt reads versions \
                 {LEGACY_VERSION} and {VERSION}"
            ),
        )
    })?;
    if len < layout.header_bytes {
        return Err(format(name, 0, format!("truncated: {len} bytes, shorter than the header")));
    }
    if layout.checksums {
        read_at(r, name, 48, &mut h[48..])?;
        let stored = u32_le(&h, HEADER_CHECKSUM_AT);
        if checksum(&[&h[..HEADER_CHECKSUM_AT]]) != stored {
            return Err(format(name, 0, "corrupt header: its checksum does not match"));
        }
        if h[52..HEADER_CHECKSUM_AT].iter().any(|&b| b != 0) {
            return Err(format(name, 52, "corrupt header: reserved bytes are not zero"));
        }
    }
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or([0; 8]));
    let source = Source::from_u8(h[10])
        .ok_or_else(|| format(name, 10, format!("unknown source code {}", h[10])))?;
    if h[11] > 64 {
        return Err(format(name, 11, format!("address width of {} bits (at most 64)", h[11])));
    }
    let header = Header {
        version,
        source,
        addr_bits: h[11],
        streams: u32_le(&h, 12),
        records: u64_at(16),
        instructions: u64_at(24),
        source_bytes: u64_at(32),
        dir_offset: u64_at(40),
        dir_checksum: if layout.checksums { u32_le(&h, 48) } else { 0 },
    };
    if header.dir_offset == 0 {
        return Err(format(name, 40, "incomplete trace: no directory (its writer did not finish)"));
    }
    let dir_end = header.dir_offset.checked_add(12).filter(|&e| e <= len);
    if header.dir_offset < layout.header_bytes || dir_end.is_none() {
        return Err(format(
            name,
            40,
            format!(
                "directory offset {} outside the file's {len} bytes (truncated?)",
                header.dir_offset
            ),
        ));
    }
    let at = header.dir_offset;
    let mut d = [0u8; 12];
    read_at(r, name, at, &mut d)?;
    if d[..4] != DIR_TAG {
        return Err(format(name, at, "no directory here (truncated or corrupt file)"));
    }
    let raw_len = u32_le(&d, 4) as usize;
    let comp_len = u64::from(u32_le(&d, 8));
    if at + 12 + comp_len != len {
        return Err(format(
            name,
            at,
            format!("directory of {comp_len} bytes does not end the file ({len} bytes): truncated or trailing data"),
        ));
    }
    if raw_len > MAX_DIR_BYTES {
        return Err(format(name, at, format!("directory of {raw_len} bytes is too large")));
    }
    let mut comp = vec![0u8; usize::try_from(comp_len).unwrap_or(usize::MAX)];
    read_at(r, name, at + 12, &mut comp)?;
    if layout.checksums && checksum(&[&d, &comp]) != header.dir_checksum {
        return Err(format(name, at, "corrupt directory: its checksum does not match"));
    }
    // Streamed, so a corrupt length allocates no more than the data really holds.
    let mut raw = Vec::new();
    zstd::stream::read::Decoder::new(&comp[..])
        .and_then(|d| d.take(raw_len as u64 + 1).read_to_end(&mut raw))
        .map_err(|e| format(name, at, format!("corrupt directory: {e}")))?;
    if raw.len() != raw_len {
        return Err(format(name, at, "corrupt directory: wrong length"));
    }
    let streams = parse_directory(&raw, &header, layout)
        .map_err(|e| format(name, at, format!("directory: {e}")))?;
    let max = streams.iter().map(|s| s.max_addr).max().unwrap_or(0);
    if u32::from(header.addr_bits) != 64 - max.leading_zeros() {
        return Err(format(
            name,
            11,
            format!(
                "address width of {} bits, but the highest address {max:#x} needs {}",
                header.addr_bits,
                64 - max.leading_zeros()
            ),
        ));
    }
    Ok((header, streams))
}

/// The little-endian `u32` at `at` of `b` (which holds it).
fn u32_le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}

/// A cursor over the decoded directory.
struct Cursor2<'a> {
    raw: &'a [u8],
    i: usize,
    stream: u64,
}

impl Cursor2<'_> {
    fn varint(&mut self, what: &str) -> Result<u64, String> {
        get_varint(self.raw, &mut self.i)
            .ok_or_else(|| format!("stream {}: bad {what}", self.stream))
    }

    fn small(&mut self, what: &str) -> Result<u32, String> {
        let v = self.varint(what)?;
        u32::try_from(v).map_err(|_| format!("stream {}: bad {what} {v}", self.stream))
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<&[u8], String> {
        let end = usize::try_from(n).ok().and_then(|n| self.i.checked_add(n));
        let b = end.and_then(|e| self.raw.get(self.i..e));
        let b = b.ok_or_else(|| format!("stream {}: bad {what}", self.stream))?;
        self.i += b.len();
        Ok(b)
    }
}

fn parse_directory(raw: &[u8], h: &Header, layout: Layout) -> Result<Vec<StreamInfo>, String> {
    let mut c = Cursor2 { raw, i: 0, stream: 0 };
    let count = c.varint("stream count")?;
    if count != u64::from(h.streams) {
        return Err(format!("{count} streams, the header says {}", h.streams));
    }
    let mut streams = Vec::with_capacity(count.min(1024) as usize);
    let (mut records, mut instructions) = (0u64, 0u64);
    for s in 0..count {
        c.stream = s;
        let (pid, ppid, asid) = (c.small("pid")?, c.small("parent pid")?, c.small("asid")?);
        let name_len = c.varint("name length")?;
        let name = String::from_utf8_lossy(c.bytes(name_len, "name")?).into_owned();
        let mut info = StreamInfo {
            meta: StreamMeta { pid, ppid, asid, name },
            records: c.varint("records")?,
            instructions: c.varint("instructions")?,
            trailing: c.varint("trailing instructions")?,
            min_addr: c.varint("lowest address")?,
            max_addr: c.varint("highest address")?,
            ..StreamInfo::default()
        };
        for k in 0..4 {
            info.by_kind[k] = c.varint("count by kind")?;
        }
        let blocks = c.varint("block count")?;
        let (mut in_blocks, mut gaps, mut last_end) = (0u64, 0u64, layout.header_bytes);
        for _ in 0..blocks {
            let b = BlockRef {
                offset: c.varint("block offset")?,
                records: c.small("block records")?,
                instructions: c.varint("block instructions")?,
            };
            if b.offset < last_end
                || b.offset.saturating_add(layout.block_header_bytes) > h.dir_offset
            {
                return Err(format!(
                    "stream {s}: block at {} out of order or out of the file",
                    b.offset
                ));
            }
            if b.records == 0 || b.records as usize > BLOCK_RECORDS {
                return Err(format!(
                    "stream {s}: block at {} holds {} records",
                    b.offset, b.records
                ));
            }
            last_end = b.offset + layout.block_header_bytes;
            in_blocks += u64::from(b.records);
            gaps = gaps.saturating_add(b.instructions);
            info.blocks.push(b);
        }
        let kinds: u64 = info.by_kind.iter().fold(0u64, |a, &k| a.saturating_add(k));
        if in_blocks != info.records || kinds != info.records {
            return Err(format!("stream {s}: record counts disagree"));
        }
        if gaps.checked_add(info.trailing) != Some(info.instructions) {
            return Err(format!("stream {s}: instruction counts disagree"));
        }
        let runs = c.varint("footprint length")?;
        let mut page = 0u64;
        for _ in 0..runs {
            let start = page.checked_add(c.varint("footprint run")?);
            let pages = c.varint("footprint run")?;
            let flags = c.bytes(1, "footprint run")?[0];
            let run =
                start.and_then(|st| st.checked_add(pages).filter(|_| pages > 0).map(|e| (st, e)));
            let (start, end) = run.ok_or_else(|| format!("stream {s}: bad footprint run"))?;
            page = end;
            info.footprint.push(PageRun { start, pages, flags });
        }
        records = records.saturating_add(info.records);
        instructions = instructions.saturating_add(info.instructions);
        streams.push(info);
    }
    if c.i != raw.len() {
        return Err(format!("{} bytes left over", raw.len() - c.i));
    }
    if records != h.records || instructions != h.instructions {
        return Err("totals disagree with the header".into());
    }
    Ok(streams)
}

/// Reads and decodes blocks, reusing its buffers and zstd context.
struct BlockDecoder {
    dec: Option<zstd::bulk::Decompressor<'static>>,
    comp: Vec<u8>,
    raw: Vec<u8>,
}

impl std::fmt::Debug for BlockDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockDecoder")
    }
}

impl BlockDecoder {
    fn new() -> Self {
        BlockDecoder { dec: None, comp: Vec::new(), raw: Vec::new() }
    }

    /// Decodes block `b` of `stream`, appending its records to `out`. `end` bounds the blocks.
    #[allow(clippy::too_many_arguments)]
    fn read(
        &mut self,
        r: &mut dyn ReadSeek,
        name: &str,
        layout: Layout,
        stream: u32,
        b: &BlockRef,
        end: u64,
        out: &mut Vec<Record>,
    ) -> Result<(), TraceError> {
        self.read_raw(r, name, layout, stream, b, end, MAX_RECORD_BYTES)?;
        let bad = |detail: String| format(name, b.offset, detail);
        let gaps = decode_records(&self.raw, b.records as usize, out)
            .map_err(|e| bad(format!("corrupt block: {e}")))?;
        if gaps != b.instructions {
            return Err(bad("corrupt block: instruction count disagrees".into()));
        }
        Ok(())
    }

    /// Reads block `b` of `stream`, checks its header and checksum and decompresses it into
    /// `self.raw`; `max_record` bounds the decoded bytes per record.
    #[allow(clippy::too_many_arguments)]
    fn read_raw(
        &mut self,
        r: &mut dyn ReadSeek,
        name: &str,
        layout: Layout,
        stream: u32,
        b: &BlockRef,
        end: u64,
        max_record: usize,
    ) -> Result<(), TraceError> {
        let mut h = [0u8; BLOCK_HEADER_LEN];
        let h = &mut h[..usize::try_from(layout.block_header_bytes).unwrap_or(BLOCK_HEADER_LEN)];
        read_at(r, name, b.offset, h)?;
        let bad = |detail: String| format(name, b.offset, detail);
        if h[..4] != BLOCK_TAG {
            return Err(bad("no block here (corrupt file)".into()));
        }
        let instructions = u64::from_le_bytes(h[20..28].try_into().unwrap_or([0; 8]));
        if u32_le(h, 4) != stream || u32_le(h, 8) != b.records || instructions != b.instructions {
            return Err(bad("block header disagrees with the directory".into()));
        }
        let (raw_len, comp_len) = (u32_le(h, 12) as usize, u64::from(u32_le(h, 16)));
        let payload = b.offset + layout.block_header_bytes;
        if raw_len > b.records as usize * max_record || payload + comp_len > end {
            return Err(bad(format!("block lengths {raw_len}/{comp_len} out of bounds")));
        }
        self.comp.resize(usize::try_from(comp_len).unwrap_or(usize::MAX), 0);
        read_at(r, name, payload, &mut self.comp)?;
        if layout.checksums && checksum(&[&h[..28], &self.comp]) != u32_le(h, 28) {
            return Err(bad("corrupt block: its checksum does not match".into()));
        }
        self.raw.clear();
        self.raw.reserve(raw_len);
        let dec = match &mut self.dec {
            Some(d) => d,
            None => self.dec.insert(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| bad(format!("cannot start zstd: {e}")))?,
            ),
        };
        let n = dec
            .decompress_to_buffer(&self.comp, &mut self.raw)
            .map_err(|e| bad(format!("corrupt block: {e}")))?;
        if n != raw_len {
            return Err(bad(format!("corrupt block: {n} bytes decoded, {raw_len} expected")));
        }
        Ok(())
    }
}

/// One stream's blocks in order, decompressed and checked but not decoded: the reader of
/// streams whose blocks are not [`Record`]s (full-system streams, [`super::system`]).
#[derive(Debug)]
pub struct RawBlocks {
    name: String,
    source: Box<dyn ReadSeek>,
    layout: Layout,
    stream: u32,
    blocks: Vec<BlockRef>,
    next: usize,
    end: u64,
    max_record: usize,
    block: BlockDecoder,
}

impl RawBlocks {
    /// The next block: its directory entry and decoded bytes; `None` after the last.
    pub fn next_block(&mut self) -> Result<Option<(BlockRef, &[u8])>, TraceError> {
        let Some(b) = self.blocks.get(self.next).copied() else { return Ok(None) };
        self.next += 1;
        let (name, layout) = (&self.name, self.layout);
        self.block.read_raw(
            &mut *self.source,
            name,
            layout,
            self.stream,
            &b,
            self.end,
            self.max_record,
        )?;
        Ok(Some((b, &self.block.raw)))
    }
}

/// One stream's records in order, a block at a time: its [`RawBlocks`], decoded.
#[derive(Debug)]
pub struct StreamDecoder {
    blocks: RawBlocks,
    skip: u64,
    left: u64,
}

impl std::fmt::Debug for dyn ReadSeek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadSeek")
    }
}

impl StreamDecoder {
    /// Replaces `out` with the next records; `false` when there are none left.
    pub fn next_batch(&mut self, out: &mut Vec<Record>) -> Result<bool, TraceError> {
        out.clear();
        while self.left > 0 {
            let r = &mut self.blocks;
            let Some(b) = r.blocks.get(r.next).copied() else { return Ok(false) };
            r.next += 1;
            if self.skip >= u64::from(b.records) {
                self.skip -= u64::from(b.records);
                continue;
            }
            r.block.read(&mut *r.source, &r.name, r.layout, r.stream, &b, r.end, out)?;
            let decoded = out.len();
            let skip = usize::try_from(self.skip).unwrap_or(decoded).min(decoded);
            out.drain(..skip);
            self.skip = 0;
            let wanted = usize::try_from(self.left).unwrap_or(usize::MAX).min(out.len());
            out.truncate(wanted);
            self.left -= wanted as u64;
            if wanted > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// What the decoding thread sends.
enum Msg {
    Batch(Packed),
    End,
    Error(TraceError),
}

/// A [`StreamDecoder`] on its own thread, one batch ahead of its consumer, which it hands the
/// records packed for replay ([`Packed`]).
#[derive(Debug)]
pub struct Prefetch {
    rx: Option<Receiver<Msg>>,
    back: Sender<Packed>,
    handle: Option<JoinHandle<()>>,
    done: bool,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl Prefetch {
    /// Starts decoding `dec` on a new thread.
    pub fn spawn(mut dec: StreamDecoder) -> Result<Prefetch, TraceError> {
        // A rendezvous channel: the thread decodes the next batch, then waits for the consumer
        // to take it, so a stream holds at most two batches (about 1 MiB).
        let (tx, rx): (SyncSender<Msg>, _) = mpsc::sync_channel(0);
        let (back, back_rx) = mpsc::channel::<Packed>();
        let mut records = Vec::new();
        let handle = std::thread::Builder::new()
            .name(format!("memvirt-decode-{}", dec.blocks.stream))
            .spawn(move || loop {
                let msg = match dec.next_batch(&mut records) {
                    Ok(true) => {
                        let mut batch: Packed = back_rx.try_recv().unwrap_or_default();
                        batch.clear();
                        batch.extend_from(&records);
                        Msg::Batch(batch)
                    }
                    Ok(false) => Msg::End,
                    Err(e) => Msg::Error(e),
                };
                let last = !matches!(msg, Msg::Batch(_));
                if tx.send(msg).is_err() || last {
                    return;
                }
            })
            .map_err(|e| TraceError::Other(format!("cannot start a decoding thread: {e}")))?;
        Ok(Prefetch { rx: Some(rx), back, handle: Some(handle), done: false })
    }

    /// The next batch; `None` at the end of the stream.
    pub fn next_batch(&mut self) -> Result<Option<Packed>, TraceError> {
        if self.done {
            return Ok(None);
        }
        let msg = self.rx.as_ref().map(|rx| rx.recv());
        match msg {
            Some(Ok(Msg::Batch(b))) => Ok(Some(b)),
            Some(Ok(Msg::End)) => {
                self.done = true;
                Ok(None)
            }
            Some(Ok(Msg::Error(e))) => {
                self.done = true;
                Err(e)
            }
            Some(Err(_)) | None => {
                self.done = true;
                Err(TraceError::Other("the trace decoding thread stopped unexpectedly".into()))
            }
        }
    }

    /// Hands a consumed batch back for reuse.
    pub fn recycle(&self, batch: Packed) {
        let _ = self.back.send(batch);
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        // Dropping the receiver makes the thread's next send fail, so it returns.
        self.rx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::compact::{with_directory, Writer};
    use crate::trace::{Kind, RecordSink};

    #[test]
    fn a_window_takes_the_records_after_skip_up_to_limit() {
        let w = Window { skip: 10, limit: 5 };
        assert_eq!([w.replayed(0), w.replayed(12), w.replayed(100)], [0, 2, 5]);
        assert_eq!(Window::ALL.replayed(7), 7);
        // Batches of 8 records from 0, 8, 16: only 10..15 are taken.
        assert_eq!(w.overlap(0, 8), (8, 8));
        assert_eq!(w.overlap(8, 8), (2, 7));
        assert_eq!(w.overlap(16, 8), (0, 0));
        assert_eq!(Window::ALL.overlap(u64::MAX - 4, 4), (0, 4));
    }

    fn rec(addr: u64, size: u16, kind: Kind) -> Record {
        Record { addr, gap: 1, size, kind }
    }

    /// A two-stream trace: code, a stack page, a store crossing into a second heap page.
    fn sample() -> Result<(Vec<u8>, Reader), TraceError> {
        let mut w = Writer::new(Cursor::new(Vec::new()), "t.mvt", Source::Lackey, 1)?;
        let a = w.begin_stream(StreamMeta { pid: 7, ..StreamMeta::default() })?;
        for r in [
            rec(0x40_1000, 4, Kind::Fetch),
            rec(0x7ffc_0000_0ff8, 8, Kind::Load),
            rec(0x5555_0000_0ffc, 8, Kind::Store),
            rec(0x5555_0000_0010, 4, Kind::Modify),
        ] {
            w.push(a, r)?;
        }
        let b = w.begin_stream(StreamMeta { pid: 8, ..StreamMeta::default() })?;
        w.push(b, rec(0x1000, 1, Kind::Load))?;
        let bytes = w.finish(0)?.2.into_inner();
        let reader = Reader::from_bytes("t.mvt".into(), bytes.clone())?;
        Ok((bytes, reader))
    }

    fn lie(mutate: impl Fn(&mut Vec<StreamInfo>)) -> Result<String, TraceError> {
        let (bytes, r) = sample()?;
        let mut streams = r.streams.clone();
        mutate(&mut streams);
        let forged = with_directory(&bytes, &r.header, &streams);
        let back = Reader::from_bytes("t.mvt".into(), forged)?;
        Ok(back.validate().err().map(|e| e.to_string()).unwrap_or_default())
    }

    #[test]
    fn a_sound_trace_validates_and_its_footprint_is_exact() -> Result<(), TraceError> {
        let (_, r) = sample()?;
        r.validate()?;
        // Stream 0: the code page, the stack page, and two heap pages (the store crosses).
        assert_eq!(r.streams[0].footprint_pages(), 4);
        assert_eq!(lie(|_| {})?, "", "the unchanged directory re-encoded is sound");
        Ok(())
    }

    #[test]
    fn a_directory_that_lies_about_its_records_is_refused() -> Result<(), TraceError> {
        // A page the records touch is missing.
        let e = lie(|s| {
            s[0].footprint.remove(0);
        })?;
        assert!(e.contains("stream 0") && e.contains("does not hold"), "{e}");
        // A page is claimed that no record touches.
        let e = lie(|s| s[1].footprint[0].pages = 2)?;
        assert!(e.contains("stream 1") && e.contains("never touch"), "{e}");
        // A written page marked read only.
        let e = lie(|s| {
            for r in s[0].footprint.iter_mut().filter(|r| r.flags & PageFlags::WRITE != 0) {
                r.flags = PageFlags::READ;
            }
        })?;
        assert!(e.contains("marks") && e.contains("store"), "{e}");
        // A read page also marked written.
        let e = lie(|s| s[1].footprint[0].flags |= PageFlags::WRITE)?;
        assert!(e.contains("read+written") && e.contains("touch it read"), "{e}");
        // Counts by kind and the address range.
        let e = lie(|s| (s[0].by_kind[0], s[0].by_kind[1]) = (2, 0))?;
        assert!(e.contains("counts by kind"), "{e}");
        let e = lie(|s| s[0].max_addr += 1)?;
        assert!(e.contains("span"), "{e}");
        // A footprint larger than its records could touch is refused before any allocation.
        let e = lie(|s| s[1].footprint[0].pages = 1 << 40)?;
        assert!(e.contains("more than its 1 records can touch"), "{e}");
        let e = lie(|s| s[1].footprint[0].flags = 0)?;
        assert!(e.contains("flags 0x0"), "{e}");
        Ok(())
    }

    #[test]
    fn every_flipped_bit_is_refused() -> Result<(), TraceError> {
        let (bytes, _) = sample()?;
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let verdict = Reader::from_bytes("t.mvt".into(), bad).and_then(|r| r.validate());
            let e = verdict.err().map(|e| e.to_string());
            assert!(e.as_ref().is_some_and(|e| e.starts_with("t.mvt: byte ")), "bit {bit}: {e:?}");
        }
        Ok(())
    }

    #[test]
    fn the_address_width_byte_must_match_the_highest_address() -> Result<(), TraceError> {
        let (bytes, r) = sample()?;
        for bits in [0u8, 46, 48, 64, 65, 165] {
            let h = Header { addr_bits: bits, ..r.header };
            let forged = with_directory(&bytes, &h, &r.streams);
            let e = Reader::from_bytes("t.mvt".into(), forged).err().map(|e| e.to_string());
            assert!(
                e.as_ref().is_some_and(|e| e.contains("byte 11: address width")),
                "{bits}: {e:?}"
            );
        }
        assert_eq!(r.header.addr_bits, 47);
        Ok(())
    }
}
