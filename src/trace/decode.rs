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
    decode_records, get_varint, BlockRef, Header, PageRun, StreamInfo, BLOCK_HEADER_BYTES,
    BLOCK_HEADER_LEN, BLOCK_RECORDS, BLOCK_TAG, DIR_TAG, HEADER_BYTES, HEADER_LEN, MAGIC,
    MAX_DIR_BYTES, MAX_RECORD_BYTES, VERSION,
};
use super::{display_name, Compression, Record, Source, StreamMeta, TraceError};

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
        let id = u32::try_from(stream).unwrap_or(u32::MAX);
        let info = self.streams.get(stream).ok_or(TraceError::NoStream(id))?;
        Ok(StreamDecoder {
            name: self.name.clone(),
            source: self.source()?,
            stream: id,
            blocks: info.blocks.clone(),
            next: 0,
            skip,
            left: limit,
            end: self.header.dir_offset,
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

    /// Decodes every block of every stream: the whole file is sound.
    pub fn validate(&self) -> Result<(), TraceError> {
        let mut batch = Vec::new();
        for s in 0..self.streams.len() {
            let mut dec = self.stream(s, 0, u64::MAX)?;
            while dec.next_batch(&mut batch)? {}
        }
        Ok(())
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
    if len < HEADER_BYTES {
        return Err(format(
            name,
            0,
            format!("not a memvirt trace: {len} bytes, shorter than the header"),
        ));
    }
    let mut h = [0u8; HEADER_LEN];
    read_at(r, name, 0, &mut h)?;
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or([0; 8]));
    if h[..8] != MAGIC {
        return Err(format(name, 0, "not a memvirt compact trace (wrong magic)"));
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if version != VERSION {
        return Err(format(
            name,
            8,
            format!("compact trace version {version}; this memvirt reads version {VERSION}"),
        ));
    }
    let source = Source::from_u8(h[10])
        .ok_or_else(|| format(name, 10, format!("unknown source code {}", h[10])))?;
    let header = Header {
        version,
        source,
        addr_bits: h[11],
        streams: u32::from_le_bytes([h[12], h[13], h[14], h[15]]),
        records: u64_at(16),
        instructions: u64_at(24),
        source_bytes: u64_at(32),
        dir_offset: u64_at(40),
    };
    if header.dir_offset == 0 {
        return Err(format(name, 40, "incomplete trace: no directory (its writer did not finish)"));
    }
    let dir_end = header.dir_offset.checked_add(12).filter(|&e| e <= len);
    if header.dir_offset < HEADER_BYTES || dir_end.is_none() {
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
    let raw_len = u32::from_le_bytes([d[4], d[5], d[6], d[7]]) as usize;
    let comp_len = u64::from(u32::from_le_bytes([d[8], d[9], d[10], d[11]]));
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
    // Streamed, so a corrupt length allocates no more than the data really holds.
    let mut raw = Vec::new();
    zstd::stream::read::Decoder::new(&comp[..])
        .and_then(|d| d.take(raw_len as u64 + 1).read_to_end(&mut raw))
        .map_err(|e| format(name, at, format!("corrupt directory: {e}")))?;
    if raw.len() != raw_len {
        return Err(format(name, at, "corrupt directory: wrong length"));
    }
    let streams =
        parse_directory(&raw, &header).map_err(|e| format(name, at, format!("directory: {e}")))?;
    Ok((header, streams))
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

fn parse_directory(raw: &[u8], h: &Header) -> Result<Vec<StreamInfo>, String> {
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
        let (mut in_blocks, mut gaps, mut last_end) = (0u64, 0u64, HEADER_BYTES);
        for _ in 0..blocks {
            let b = BlockRef {
                offset: c.varint("block offset")?,
                records: c.small("block records")?,
                instructions: c.varint("block instructions")?,
            };
            if b.offset < last_end || b.offset.saturating_add(BLOCK_HEADER_BYTES) > h.dir_offset {
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
            last_end = b.offset + BLOCK_HEADER_BYTES;
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

    /// Decodes block `b` of `stream` onto `out` (cleared first). `end` bounds the blocks.
    fn read(
        &mut self,
        r: &mut dyn ReadSeek,
        name: &str,
        stream: u32,
        b: &BlockRef,
        end: u64,
        out: &mut Vec<Record>,
    ) -> Result<(), TraceError> {
        out.clear();
        let mut h = [0u8; BLOCK_HEADER_LEN];
        read_at(r, name, b.offset, &mut h)?;
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let bad = |detail: String| format(name, b.offset, detail);
        if h[..4] != BLOCK_TAG {
            return Err(bad("no block here (corrupt file)".into()));
        }
        let instructions = u64::from_le_bytes(h[20..28].try_into().unwrap_or([0; 8]));
        if u32_at(4) != stream || u32_at(8) != b.records || instructions != b.instructions {
            return Err(bad("block header disagrees with the directory".into()));
        }
        let (raw_len, comp_len) = (u32_at(12) as usize, u64::from(u32_at(16)));
        if raw_len > b.records as usize * MAX_RECORD_BYTES
            || b.offset + BLOCK_HEADER_BYTES + comp_len > end
        {
            return Err(bad(format!("block lengths {raw_len}/{comp_len} out of bounds")));
        }
        self.comp.resize(usize::try_from(comp_len).unwrap_or(usize::MAX), 0);
        read_at(r, name, b.offset + BLOCK_HEADER_BYTES, &mut self.comp)?;
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
        let gaps = decode_records(&self.raw, b.records as usize, out)
            .map_err(|e| bad(format!("corrupt block: {e}")))?;
        if gaps != b.instructions {
            return Err(bad("corrupt block: instruction count disagrees".into()));
        }
        Ok(())
    }
}

/// One stream's records in order, a block at a time.
#[derive(Debug)]
pub struct StreamDecoder {
    name: String,
    source: Box<dyn ReadSeek>,
    stream: u32,
    blocks: Vec<BlockRef>,
    next: usize,
    skip: u64,
    left: u64,
    end: u64,
    block: BlockDecoder,
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
            let Some(b) = self.blocks.get(self.next).copied() else { return Ok(false) };
            self.next += 1;
            if self.skip >= u64::from(b.records) {
                self.skip -= u64::from(b.records);
                continue;
            }
            self.block.read(&mut *self.source, &self.name, self.stream, &b, self.end, out)?;
            out.drain(..usize::try_from(self.skip).unwrap_or(out.len()).min(out.len()));
            self.skip = 0;
            out.truncate(usize::try_from(self.left).unwrap_or(usize::MAX));
            self.left -= out.len() as u64;
            if !out.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// What the decoding thread sends.
enum Msg {
    Batch(Vec<Record>),
    End,
    Error(TraceError),
}

/// A [`StreamDecoder`] on its own thread, one batch ahead of its consumer.
#[derive(Debug)]
pub struct Prefetch {
    rx: Option<Receiver<Msg>>,
    back: Sender<Vec<Record>>,
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
        let (back, back_rx) = mpsc::channel::<Vec<Record>>();
        let handle = std::thread::Builder::new()
            .name(format!("memvirt-decode-{}", dec.stream))
            .spawn(move || loop {
                let mut buf = back_rx.try_recv().unwrap_or_default();
                let msg = match dec.next_batch(&mut buf) {
                    Ok(true) => Msg::Batch(buf),
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
    pub fn next_batch(&mut self) -> Result<Option<Vec<Record>>, TraceError> {
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
    pub fn recycle(&self, batch: Vec<Record>) {
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
