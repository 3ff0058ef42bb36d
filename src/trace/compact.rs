//! memvirt's compact trace format, version 2 (docs/trace-format.md has the byte layout).
//!
//! A file is a 64-byte header (magic, version, source, address width, counts, the directory's
//! offset and checksum, the header's own checksum), then blocks of up to [`BLOCK_RECORDS`]
//! records of one stream each, then a directory: per stream its process metadata, counts by
//! kind, address range, block index and footprint (runs of touched 4 KiB pages with how they
//! were touched). Streams' blocks may interleave, so `memvirt record` can write every process as
//! it runs. The header is written last: a writer that did not finish leaves a directory offset
//! of 0, which readers refuse.
//!
//! Every part is covered by a CRC-32: the header by its own, the directory by one in the header,
//! each block by one in its block header (over that header and the compressed records), so a
//! flipped bit anywhere is refused rather than replayed as different numbers. Version 1, the
//! same layout without the checksums (48-byte header, 28-byte block headers), is still read:
//! [`Layout`] says where the two differ.
//!
//! A block is one zstd frame (with its checksum) of records encoded back to back
//! ([`encode_records`]): an op byte (kind, size code, gap code), the escaped gap and size if
//! any, then the address as a zigzag varint delta from the previous address of its class (data
//! or fetch) in the block. Blocks are independent, so a reader can skip whole blocks without
//! decoding them.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{Kind, Record, RecordSink, Source, StreamMeta, TraceError};

/// The first 8 bytes of every compact file.
pub const MAGIC: [u8; 8] = *b"MVTRACE\0";
/// The version this memvirt writes.
pub const VERSION: u16 = 2;
/// The version before checksums, still read (with a warning).
pub const LEGACY_VERSION: u16 = 1;
/// Header bytes.
pub const HEADER_BYTES: u64 = HEADER_LEN as u64;
pub(crate) const HEADER_LEN: usize = 64;
/// Records per block at most.
pub const BLOCK_RECORDS: usize = 32 * 1024;
/// The zstd level of `trace convert` and `record` unless told (zstd's default).
pub const DEFAULT_LEVEL: i32 = 3;

pub(crate) const BLOCK_TAG: [u8; 4] = *b"MVBK";
pub(crate) const DIR_TAG: [u8; 4] = *b"MVDR";
pub(crate) const BLOCK_HEADER_LEN: usize = 32;
/// Where a block header's checksum is (version 2); the bytes before it are version 1's header.
const BLOCK_CHECKSUM_AT: usize = 28;
/// Where the header's own checksum is; it covers every byte before it.
pub(crate) const HEADER_CHECKSUM_AT: usize = 60;

/// Where the versions' layouts differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bytes of the file header.
    pub header_bytes: u64,
    /// Bytes of a block header.
    pub block_header_bytes: u64,
    /// Whether the header, the directory and the blocks carry CRC-32 checksums.
    pub checksums: bool,
}

impl Layout {
    /// The layout of `version`, if this memvirt reads it.
    pub const fn of(version: u16) -> Option<Layout> {
        match version {
            LEGACY_VERSION => {
                Some(Layout { header_bytes: 48, block_header_bytes: 28, checksums: false })
            }
            VERSION => Some(Layout {
                header_bytes: HEADER_BYTES,
                block_header_bytes: BLOCK_HEADER_LEN as u64,
                checksums: true,
            }),
            _ => None,
        }
    }
}

/// The CRC-32 (IEEE, as zlib and gzip compute it) of `parts` one after another.
pub(crate) fn checksum(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}
/// The largest encoded record: op, gap varint (5), size varint (3), address varint (10).
pub(crate) const MAX_RECORD_BYTES: usize = 1 + 5 + 3 + 10;
/// The largest directory a reader accepts (decompressed).
pub(crate) const MAX_DIR_BYTES: usize = 1 << 30;

/// The file header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: u16,
    /// Where the records came from.
    pub source: Source,
    /// Bits needed for the highest address in the file.
    pub addr_bits: u8,
    /// Streams.
    pub streams: u32,
    /// Records, all streams.
    pub records: u64,
    /// Instructions, all streams (gaps and trailing instructions).
    pub instructions: u64,
    /// Bytes of the (decompressed) source it was converted from; 0 when unknown.
    pub source_bytes: u64,
    /// Where the directory starts.
    pub dir_offset: u64,
    /// The CRC-32 of the directory (its 12-byte head and compressed bytes); 0 in version 1.
    pub dir_checksum: u32,
}

/// Where one block is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockRef {
    /// Offset of its header in the file.
    pub offset: u64,
    /// Records in it.
    pub records: u32,
    /// The sum of its records' gaps.
    pub instructions: u64,
}

/// A run of touched pages with the same flags ([`super::PageFlags`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageRun {
    /// First page number (address / 4096).
    pub start: u64,
    /// Pages.
    pub pages: u64,
    /// How they were touched.
    pub flags: u8,
}

/// What the directory says about one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamInfo {
    /// Its process.
    pub meta: StreamMeta,
    /// Records.
    pub records: u64,
    /// Instructions: every gap plus the trailing ones.
    pub instructions: u64,
    /// Instructions after the last record.
    pub trailing: u64,
    /// Records by [`Kind`].
    pub by_kind: [u64; 4],
    /// Lowest and highest byte touched (both 0 without records).
    pub min_addr: u64,
    /// Highest byte touched.
    pub max_addr: u64,
    /// Its blocks, in order.
    pub blocks: Vec<BlockRef>,
    /// Touched pages, in address order.
    pub footprint: Vec<PageRun>,
}

impl StreamInfo {
    /// Pages touched.
    pub fn footprint_pages(&self) -> u64 {
        self.footprint_pages_checked().unwrap_or(u64::MAX)
    }

    /// Pages touched, `None` if a (corrupt) directory's runs add up past `u64::MAX`.
    pub fn footprint_pages_checked(&self) -> Option<u64> {
        self.footprint.iter().try_fold(0u64, |a, r| a.checked_add(r.pages))
    }
}

// ----- varints -----------------------------------------------------------------------------------

#[inline]
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v.to_le_bytes()[0] | 0x80);
        v >>= 7;
    }
    out.push(v.to_le_bytes()[0]);
}

#[inline]
pub(crate) fn get_varint(raw: &[u8], i: &mut usize) -> Option<u64> {
    let b = *raw.get(*i)?;
    *i += 1;
    if b < 0x80 {
        return Some(u64::from(b));
    }
    let mut v = u64::from(b & 0x7F);
    for shift in (7..64).step_by(7) {
        let b = *raw.get(*i)?;
        *i += 1;
        if shift == 63 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7F) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// [`get_varint`] reading a whole word at once, without a branch on the length for values
/// under 2^56: `raw` must hold 8 bytes from `*i`.
#[inline(always)]
fn get_varint_word(raw: &[u8], i: &mut usize) -> Option<u64> {
    let w = u64::from_le_bytes(raw.get(*i..*i + 8)?.try_into().ok()?);
    let stops = !w & 0x8080_8080_8080_8080;
    if stops == 0 {
        // 9 or 10 bytes.
        return get_varint(raw, i);
    }
    let len = stops.trailing_zeros() / 8 + 1;
    let w = w & (u64::MAX >> (64 - 8 * len));
    let v = (w & 0x7F)
        | ((w >> 1) & (0x7F << 7))
        | ((w >> 2) & (0x7F << 14))
        | ((w >> 3) & (0x7F << 21))
        | ((w >> 4) & (0x7F << 28))
        | ((w >> 5) & (0x7F << 35))
        | ((w >> 6) & (0x7F << 42))
        | ((w >> 7) & (0x7F << 49));
    *i += len as usize;
    Some(v)
}

/// The zigzag code of the two's-complement delta `v` (`a.wrapping_sub(b)`): small deltas of
/// either sign become small codes.
#[inline]
pub(crate) const fn zigzag(v: u64) -> u64 {
    (v << 1) ^ (0u64.wrapping_sub(v >> 63))
}

/// The inverse of [`zigzag`].
#[inline]
pub(crate) const fn unzigzag(v: u64) -> u64 {
    (v >> 1) ^ 0u64.wrapping_sub(v & 1)
}

// ----- blocks ------------------------------------------------------------------------------------

/// Sizes of the inline size codes 0-6 (7: a varint follows).
const SIZES: [u16; 7] = [0, 1, 2, 4, 8, 16, 32];

/// Appends `records` encoded (before compression) to `out`.
///
/// Each record is an op byte — kind (bits 0-1), size code (bits 2-4: 0, 1, 2, 4, 8, 16 or 32
/// bytes, or 7: a varint follows), gap code (bits 5-7: 0 to 6, or 7: a varint of gap − 7
/// follows) — then the escaped gap and size, then the zigzag varint of the address minus the
/// previous address of its class (data or fetch) in the block. One predictor per class keeps
/// the deltas of a loop identical from one iteration to the next, which zstd then matches: on
/// recorded programs this compresses better than choosing among several predictors.
pub fn encode_records(records: &[Record], out: &mut Vec<u8>) {
    let mut prev = [0u64; 2];
    for r in records {
        let size_code = SIZES.iter().position(|&s| s == r.size).map_or(7, |c| c.to_le_bytes()[0]);
        let gap_code = r.gap.min(7).to_le_bytes()[0];
        out.push(r.kind as u8 | size_code << 2 | gap_code << 5);
        if gap_code == 7 {
            put_varint(out, u64::from(r.gap - 7));
        }
        if size_code == 7 {
            put_varint(out, u64::from(r.size));
        }
        let class = usize::from(r.kind == Kind::Fetch);
        put_varint(out, zigzag(r.addr.wrapping_sub(prev[class])));
        prev[class] = r.addr;
    }
}

/// The decoder's state between records.
struct DecodeState {
    prev: [u64; 2],
    instructions: u64,
}

/// Decodes one record at `*i` with `varint` (which must be safe to use there).
#[inline(always)]
fn decode_one(
    st: &mut DecodeState,
    raw: &[u8],
    i: &mut usize,
    varint: impl Fn(&[u8], &mut usize) -> Option<u64>,
) -> Result<Record, String> {
    let bad = |i: usize, what: &str| format!("{what} at byte {i} of the decoded block");
    let op = *raw.get(*i).ok_or_else(|| bad(*i, "records end early"))?;
    *i += 1;
    let kind = Kind::from_bits(op);
    let gap = match op >> 5 {
        7 => varint(raw, i)
            .and_then(|g| u32::try_from(g).ok())
            .and_then(|g| g.checked_add(7))
            .ok_or_else(|| bad(*i, "bad gap"))?,
        g => u32::from(g),
    };
    let size = match (op >> 2) & 7 {
        7 => {
            varint(raw, i).and_then(|s| u16::try_from(s).ok()).ok_or_else(|| bad(*i, "bad size"))?
        }
        c => SIZES[usize::from(c)],
    };
    let delta = varint(raw, i).ok_or_else(|| bad(*i, "bad address"))?;
    let prev = &mut st.prev[usize::from(kind == Kind::Fetch)];
    let addr = prev.wrapping_add(unzigzag(delta));
    *prev = addr;
    st.instructions += u64::from(gap);
    Ok(Record { addr, gap, size, kind })
}

/// Decodes exactly `n` records from `raw` (all of it) onto `out`; returns the sum of their gaps.
pub fn decode_records(raw: &[u8], n: usize, out: &mut Vec<Record>) -> Result<u64, String> {
    let mut st = DecodeState { prev: [0; 2], instructions: 0 };
    let mut i = 0;
    out.reserve(n);
    let mut left = n;
    // Far from the end, every varint is read a word at a time.
    while left > 0 && i + MAX_RECORD_BYTES + 8 <= raw.len() {
        out.push(decode_one(&mut st, raw, &mut i, get_varint_word)?);
        left -= 1;
    }
    while left > 0 {
        out.push(decode_one(&mut st, raw, &mut i, get_varint)?);
        left -= 1;
    }
    if i != raw.len() {
        return Err(format!("{} bytes left over after {n} records", raw.len() - i));
    }
    Ok(st.instructions)
}

// ----- writing -----------------------------------------------------------------------------------

/// A stream being written.
#[derive(Debug)]
struct WStream {
    info: StreamInfo,
    pending: Vec<Record>,
    pages: HashMap<u64, u8>,
    /// The last page added to `pages` and its flags: most records repeat it.
    last: (u64, u8),
}

/// Writes a compact trace to `W`: streams' records are buffered per stream and written a block
/// at a time; [`Writer::finish`] writes the directory and then the header.
pub struct Writer<W: Write + Seek> {
    out: W,
    name: String,
    pos: u64,
    source: Source,
    level: i32,
    streams: Vec<WStream>,
    raw: Vec<u8>,
    compressor: zstd::bulk::Compressor<'static>,
}

impl<W: Write + Seek> std::fmt::Debug for Writer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("name", &self.name).field("pos", &self.pos).finish()
    }
}

impl<W: Write + Seek> Writer<W> {
    /// A writer over `out` (named `name` in errors) with zstd `level`; writes a placeholder
    /// header now.
    pub fn new(mut out: W, name: &str, source: Source, level: i32) -> Result<Self, TraceError> {
        let err = |source| TraceError::Write { file: name.to_owned(), source };
        out.write_all(&[0u8; HEADER_LEN]).map_err(err)?;
        let compressor = zstd::bulk::Compressor::new(level)
            .and_then(|mut c| c.include_checksum(true).map(|()| c))
            .map_err(err)?;
        Ok(Writer {
            compressor,
            out,
            name: name.to_owned(),
            pos: HEADER_BYTES,
            source,
            level,
            streams: Vec::new(),
            raw: Vec::with_capacity(BLOCK_RECORDS * MAX_RECORD_BYTES),
        })
    }

    /// Records pushed so far, all streams.
    pub fn records(&self) -> u64 {
        self.streams.iter().map(|s| s.info.records).sum()
    }

    /// Sets the source the header will name.
    pub fn set_source(&mut self, source: Source) {
        self.source = source;
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), TraceError> {
        self.out
            .write_all(bytes)
            .map_err(|source| TraceError::Write { file: self.name.clone(), source })?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn flush_block(&mut self, stream: u32) -> Result<(), TraceError> {
        let s = &mut self.streams[stream as usize];
        if s.pending.is_empty() {
            return Ok(());
        }
        let mut raw = std::mem::take(&mut self.raw);
        raw.clear();
        encode_records(&s.pending, &mut raw);
        let records =
            u32::try_from(s.pending.len()).map_err(|_| TraceError::Limit("records".into()))?;
        let instructions = s.pending.iter().map(|r| u64::from(r.gap)).sum();
        s.pending.clear();
        let written = self.write_block(stream, &raw, records, instructions);
        self.raw = raw;
        written
    }

    /// Writes one block of `records` already encoded in `raw` (whose gaps sum to
    /// `instructions`) for `stream`: the door for streams whose blocks are not [`Record`]s
    /// (full-system streams, [`super::system`]). The caller keeps the stream's directory
    /// counts with [`Writer::stream_info_mut`].
    pub fn write_block(
        &mut self,
        stream: u32,
        raw: &[u8],
        records: u32,
        instructions: u64,
    ) -> Result<(), TraceError> {
        if self.streams.get(stream as usize).is_none() {
            return Err(TraceError::NoStream(stream));
        }
        let comp = self
            .compressor
            .compress(raw)
            .map_err(|source| TraceError::Write { file: self.name.clone(), source })?;
        let comp_len = u32::try_from(comp.len()).map_err(|_| TraceError::Limit("bytes".into()))?;
        let raw_len = u32::try_from(raw.len()).map_err(|_| TraceError::Limit("bytes".into()))?;
        let offset = self.pos;
        let mut head = Vec::with_capacity(BLOCK_HEADER_LEN);
        head.extend_from_slice(&BLOCK_TAG);
        head.extend_from_slice(&stream.to_le_bytes());
        head.extend_from_slice(&records.to_le_bytes());
        head.extend_from_slice(&raw_len.to_le_bytes());
        head.extend_from_slice(&comp_len.to_le_bytes());
        head.extend_from_slice(&u64::to_le_bytes(instructions));
        debug_assert_eq!(head.len(), BLOCK_CHECKSUM_AT);
        head.extend_from_slice(&checksum(&[&head, &comp]).to_le_bytes());
        self.write(&head)?;
        self.write(&comp)?;
        self.streams[stream as usize].info.blocks.push(BlockRef { offset, records, instructions });
        Ok(())
    }

    /// The directory entry of `stream`, for writers of their own blocks ([`Writer::write_block`]).
    pub fn stream_info_mut(&mut self, stream: u32) -> Option<&mut StreamInfo> {
        self.streams.get_mut(stream as usize).map(|s| &mut s.info)
    }

    /// Writes what is pending, the directory and the header; returns the header and the
    /// streams, and the output.
    pub fn finish(mut self, source_bytes: u64) -> Result<(Header, Vec<StreamInfo>, W), TraceError> {
        for s in 0..self.streams.len() {
            self.flush_block(u32::try_from(s).map_err(|_| TraceError::Limit("streams".into()))?)?;
        }
        let mut infos = Vec::with_capacity(self.streams.len());
        for s in std::mem::take(&mut self.streams) {
            let mut info = s.info;
            info.footprint = runs(s.pages);
            infos.push(info);
        }
        let mut dir = Vec::new();
        encode_directory(&infos, &mut dir);
        let comp = zstd::bulk::compress(&dir, self.level)
            .map_err(|source| TraceError::Write { file: self.name.clone(), source })?;
        let dir_offset = self.pos;
        let mut head = Vec::with_capacity(12);
        head.extend_from_slice(&DIR_TAG);
        head.extend_from_slice(&(dir.len() as u64).to_le_bytes()[..4]);
        let comp_len =
            u32::try_from(comp.len()).map_err(|_| TraceError::Limit("streams".into()))?;
        head.extend_from_slice(&comp_len.to_le_bytes());
        if dir.len() > MAX_DIR_BYTES {
            return Err(TraceError::Limit("pages in the footprint".into()));
        }
        self.write(&head)?;
        self.write(&comp)?;
        let max = infos.iter().map(|i| i.max_addr).max().unwrap_or(0);
        let header = Header {
            version: VERSION,
            source: self.source,
            addr_bits: u8::try_from(64 - max.leading_zeros()).unwrap_or(64),
            streams: u32::try_from(infos.len()).map_err(|_| TraceError::Limit("streams".into()))?,
            records: infos.iter().map(|i| i.records).sum(),
            instructions: infos.iter().map(|i| i.instructions).sum(),
            source_bytes,
            dir_offset,
            dir_checksum: checksum(&[&head, &comp]),
        };
        let err = |source| TraceError::Write { file: self.name.clone(), source };
        self.out.seek(SeekFrom::Start(0)).map_err(err)?;
        self.out.write_all(&encode_header(&header)).map_err(err)?;
        self.out.flush().map_err(err)?;
        Ok((header, infos, self.out))
    }
}

impl<W: Write + Seek> RecordSink for Writer<W> {
    fn begin_stream(&mut self, meta: StreamMeta) -> Result<u32, TraceError> {
        let id =
            u32::try_from(self.streams.len()).map_err(|_| TraceError::Limit("streams".into()))?;
        let info = StreamInfo { meta, ..StreamInfo::default() };
        self.streams.push(WStream {
            info,
            pending: Vec::with_capacity(1024),
            pages: HashMap::new(),
            last: (u64::MAX, 0),
        });
        Ok(id)
    }

    #[inline]
    fn push(&mut self, stream: u32, r: Record) -> Result<(), TraceError> {
        let s = self.streams.get_mut(stream as usize).ok_or(TraceError::NoStream(stream))?;
        let info = &mut s.info;
        let end = r.addr.saturating_add(u64::from(r.size.max(1)) - 1);
        if info.records == 0 {
            (info.min_addr, info.max_addr) = (r.addr, end);
        } else {
            info.min_addr = info.min_addr.min(r.addr);
            info.max_addr = info.max_addr.max(end);
        }
        info.records += 1;
        info.instructions += u64::from(r.gap);
        info.by_kind[r.kind as usize] += 1;
        let flags = r.kind.page_flags();
        let (first, last) = r.pages();
        for page in first..=last {
            if s.last.0 == page && s.last.1 & flags == flags {
                continue;
            }
            let f = s.pages.entry(page).or_insert(0);
            *f |= flags;
            s.last = (page, *f);
        }
        s.pending.push(r);
        if s.pending.len() == BLOCK_RECORDS {
            self.flush_block(stream)?;
        }
        Ok(())
    }

    fn trailing_instructions(&mut self, stream: u32, n: u64) -> Result<(), TraceError> {
        let s = self.streams.get_mut(stream as usize).ok_or(TraceError::NoStream(stream))?;
        s.info.trailing += n;
        s.info.instructions += n;
        Ok(())
    }
}

/// Touched pages as runs of consecutive pages with the same flags.
fn runs(pages: HashMap<u64, u8>) -> Vec<PageRun> {
    let mut sorted: Vec<(u64, u8)> = pages.into_iter().collect();
    sorted.sort_unstable();
    let mut out: Vec<PageRun> = Vec::new();
    for (page, flags) in sorted {
        match out.last_mut() {
            Some(r) if r.flags == flags && r.start + r.pages == page => r.pages += 1,
            _ => out.push(PageRun { start: page, pages: 1, flags }),
        }
    }
    out
}

fn encode_header(h: &Header) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[..8].copy_from_slice(&MAGIC);
    b[8..10].copy_from_slice(&h.version.to_le_bytes());
    b[10] = h.source as u8;
    b[11] = h.addr_bits;
    b[12..16].copy_from_slice(&h.streams.to_le_bytes());
    b[16..24].copy_from_slice(&h.records.to_le_bytes());
    b[24..32].copy_from_slice(&h.instructions.to_le_bytes());
    b[32..40].copy_from_slice(&h.source_bytes.to_le_bytes());
    b[40..48].copy_from_slice(&h.dir_offset.to_le_bytes());
    b[48..52].copy_from_slice(&h.dir_checksum.to_le_bytes());
    // 52..60 reserved, zero.
    let own = checksum(&[&b[..HEADER_CHECKSUM_AT]]);
    b[HEADER_CHECKSUM_AT..].copy_from_slice(&own.to_le_bytes());
    b
}

fn encode_directory(infos: &[StreamInfo], out: &mut Vec<u8>) {
    put_varint(out, infos.len() as u64);
    for s in infos {
        for v in [s.meta.pid, s.meta.ppid, s.meta.asid] {
            put_varint(out, u64::from(v));
        }
        put_varint(out, s.meta.name.len() as u64);
        out.extend_from_slice(s.meta.name.as_bytes());
        for v in [s.records, s.instructions, s.trailing, s.min_addr, s.max_addr] {
            put_varint(out, v);
        }
        for v in s.by_kind {
            put_varint(out, v);
        }
        put_varint(out, s.blocks.len() as u64);
        for b in &s.blocks {
            put_varint(out, b.offset);
            put_varint(out, u64::from(b.records));
            put_varint(out, b.instructions);
        }
        put_varint(out, s.footprint.len() as u64);
        let mut next = 0u64;
        for r in &s.footprint {
            put_varint(out, r.start - next);
            put_varint(out, r.pages);
            out.push(r.flags);
            next = r.start + r.pages;
        }
    }
}

// ----- files -------------------------------------------------------------------------------------

/// A compact file being written beside its final name and renamed over it only once complete,
/// so a failed conversion never leaves a partial trace nor destroys an existing file.
#[derive(Debug)]
pub struct FileOutput {
    path: PathBuf,
    tmp: PathBuf,
    committed: bool,
    /// Removes `tmp` if a signal interrupts the command.
    _interrupt: crate::interrupt::TempGuard,
}

impl FileOutput {
    /// Starts writing `path` (through a temporary sibling) as a trace from `source`.
    pub fn create(
        path: &Path,
        source: Source,
        level: i32,
    ) -> Result<(FileOutput, Writer<BufWriter<File>>), TraceError> {
        let name = path.display().to_string();
        let tmp = super::with_suffix(path, &format!(".{}.tmp", std::process::id()));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|source| TraceError::Write { file: name.clone(), source })?;
        let _interrupt = crate::interrupt::TempGuard::new(&tmp);
        let out = FileOutput { path: path.to_owned(), tmp, committed: false, _interrupt };
        let writer = Writer::new(BufWriter::with_capacity(1 << 20, file), &name, source, level)?;
        Ok((out, writer))
    }

    /// Finishes `writer` and moves the file into place.
    pub fn commit(
        mut self,
        writer: Writer<BufWriter<File>>,
        source_bytes: u64,
    ) -> Result<(Header, Vec<StreamInfo>), TraceError> {
        let name = self.path.display().to_string();
        let (header, streams, out) = writer.finish(source_bytes)?;
        let file = out
            .into_inner()
            .map_err(|e| TraceError::Write { file: name.clone(), source: e.into_error() })?;
        file.sync_all()
            .and_then(|()| fs::rename(&self.tmp, &self.path))
            .map_err(|source| TraceError::Write { file: name, source })?;
        self.committed = true;
        Ok((header, streams))
    }
}

impl Drop for FileOutput {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the temporary file is ours and incomplete.
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// `file` (a whole version-2 trace) with its directory replaced by `streams`, checksums and
/// header made to match: a well-formed file whose directory may lie about its records.
#[cfg(test)]
pub(crate) fn with_directory(file: &[u8], header: &Header, streams: &[StreamInfo]) -> Vec<u8> {
    let mut dir = Vec::new();
    encode_directory(streams, &mut dir);
    let comp = zstd::bulk::compress(&dir, 1).unwrap_or_default();
    let at = usize::try_from(header.dir_offset).unwrap_or(usize::MAX);
    let mut out = file[..at].to_vec();
    let mut head = DIR_TAG.to_vec();
    head.extend_from_slice(&u32::try_from(dir.len()).unwrap_or(0).to_le_bytes());
    head.extend_from_slice(&u32::try_from(comp.len()).unwrap_or(0).to_le_bytes());
    let h = Header { dir_checksum: checksum(&[&head, &comp]), ..*header };
    out.extend_from_slice(&head);
    out.extend_from_slice(&comp);
    out[..HEADER_LEN].copy_from_slice(&encode_header(&h));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_their_edges() {
        for v in [0, 1, 0x7F, 0x80, 0x3FFF, 0x4000, u64::from(u32::MAX), u64::MAX - 1, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut i = 0;
            assert_eq!(get_varint(&b, &mut i), Some(v));
            assert_eq!(i, b.len());
        }
        // The word-at-a-time reader agrees, padded as the decoder guarantees.
        for v in (0..64).map(|b| 1u64 << b).chain([0, 0x7F, u64::MAX]) {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let len = b.len();
            b.resize(len + 16, 0xFF);
            let mut i = 0;
            assert_eq!(get_varint_word(&b, &mut i), Some(v));
            assert_eq!(i, len);
        }
        // An eleventh byte, or a tenth above 1, is refused.
        let mut i = 0;
        assert_eq!(get_varint(&[0xFF; 10], &mut i), None);
    }

    #[test]
    fn zigzag_maps_small_deltas_to_small_codes() {
        for v in [0u64, 1, 63, 64, u64::MAX, u64::MAX - 63, 1 << 63, (1 << 63) - 1] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(u64::MAX), 1, "-1");
        assert_eq!(zigzag(1), 2);
    }

    #[test]
    fn records_round_trip_with_escapes() -> Result<(), String> {
        let recs = [
            Record { addr: 0x7fff_0000_1000, gap: 0, size: 8, kind: Kind::Load },
            Record { addr: 0x40_1000, gap: 1, size: 3, kind: Kind::Fetch },
            Record { addr: 0x7fff_0000_0ff8, gap: 9, size: 512, kind: Kind::Modify },
            Record { addr: u64::MAX, gap: u32::MAX, size: u16::MAX, kind: Kind::Store },
            Record { addr: 0, gap: 6, size: 0, kind: Kind::Store },
        ];
        let mut raw = Vec::new();
        encode_records(&recs, &mut raw);
        let mut out = Vec::new();
        let gaps = decode_records(&raw, recs.len(), &mut out)?;
        assert_eq!(out, recs);
        assert_eq!(gaps, 16 + u64::from(u32::MAX));
        // One byte short, or one too many, is an error.
        assert!(decode_records(&raw[..raw.len() - 1], recs.len(), &mut Vec::new()).is_err());
        assert!(decode_records(&raw, recs.len() - 1, &mut Vec::new()).is_err());
        Ok(())
    }
}
