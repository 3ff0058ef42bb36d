//! Opening trace inputs (files or standard input, plain or compressed), recognising their
//! format, and reading or converting them whole.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use super::{champsim, compact, decode, lackey, Fetches, RecordSink, Source, TraceError};

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
    /// By name and content: a `.mvt` file (compressed or not) or the compact magic is the
    /// compact format, lackey-like text is lackey, a plausible stream of ChampSim `input_instr`
    /// records is ChampSim; anything else is refused.
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
    /// What `Auto` means for decompressed data starting with `head`, or why it is none of the
    /// formats.
    pub fn detect(head: &[u8]) -> Result<InputFormat, String> {
        if head.is_empty() {
            return Err("empty input: no trace data".into());
        }
        if head.starts_with(&compact::MAGIC) {
            return Ok(InputFormat::Memvirt);
        }
        let texty = [&b"I  "[..], b" L ", b" S ", b" M ", b"==", b"--", b"**"];
        if texty.iter().any(|t| head.starts_with(t)) {
            return Ok(InputFormat::Lackey);
        }
        match champsim::implausible(head) {
            None => Ok(InputFormat::Champsim),
            Some(why) => Err(format!(
                "not a trace memvirt recognises: not the compact format (no {:?} magic), not \
                 valgrind lackey text, and not ChampSim input_instr records ({why}); if it is \
                 one of them, say which with --trace-format memvirt|lackey|champsim|cloudsuite",
                String::from_utf8_lossy(&compact::MAGIC[..7])
            )),
        }
    }

    /// What `Auto` means by name alone: `Memvirt` for a `.mvt` file (also `.mvt.zst`, `.mvt.gz`
    /// and `.mvt.xz`), whose content must then be the compact format; `Auto` otherwise.
    pub fn for_path(path: &Path) -> InputFormat {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stem = [".xz", ".gz", ".zst"].iter().find_map(|c| name.strip_suffix(c));
        if stem.unwrap_or(&name).ends_with(".mvt") {
            InputFormat::Memvirt
        } else {
            InputFormat::Auto
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadSummary {
    /// The format it was.
    pub format: InputFormat,
    /// Where its records came from.
    pub source: Source,
    /// Bytes of decompressed input (for a compact input, the size of its own source).
    pub bytes: u64,
    /// What the user should know about the input (a version-1 compact trace has no checksums).
    pub warnings: Vec<String>,
}

/// Reads the trace `path` (any format) into `sink`.
pub fn read_into(
    path: &Path,
    opts: ReadOptions,
    sink: &mut dyn RecordSink,
) -> Result<ReadSummary, TraceError> {
    let input = open(path, opts.compression)?;
    let label = path.file_name().map_or_else(|| input.name.clone(), |n| n.to_string_lossy().into());
    let opts = match opts.format {
        InputFormat::Auto => ReadOptions { format: InputFormat::for_path(path), ..opts },
        _ => opts,
    };
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
    let head = input.reader.fill_buf().map_err(|source| TraceError::Read {
        file: input.name.clone(),
        offset: 0,
        source,
    })?;
    let refuse =
        |detail: String| TraceError::Format { file: input.name.clone(), offset: 0, detail };
    if head.is_empty() {
        return Err(refuse("empty input: no trace data".into()));
    }
    let format = match opts.format {
        InputFormat::Auto => InputFormat::detect(head).map_err(refuse)?,
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
            reader.validate()?;
            copy_compact(&reader, sink)?;
            let h = reader.header;
            return Ok(ReadSummary {
                format: InputFormat::Memvirt,
                source: h.source,
                bytes: h.source_bytes,
                warnings: reader.warning().into_iter().collect(),
            });
        }
    };
    Ok(ReadSummary { format, source, bytes: input.reader.count, warnings: Vec::new() })
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
        InputFormat::Auto if InputFormat::for_path(path) == InputFormat::Memvirt => {
            return Ok(true)
        }
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
    if writer.records() == 0 {
        return Err(TraceError::Format {
            file: display_name(input),
            offset: 0,
            detail: "the trace holds no memory accesses: nothing to convert".into(),
        });
    }
    let (header, streams) = out.commit(writer, read.bytes)?;
    Ok(ConvertSummary { read, header, streams })
}
