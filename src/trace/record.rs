//! `memvirt record -- CMD ARGS...`: runs a program under valgrind lackey and streams its output
//! into a compact trace, one stream per process image.
//!
//! Valgrind runs as `valgrind --tool=lackey --trace-mem=yes --trace-children=yes
//! --log-file=DIR/lackey.%p.%n CMD ARGS...` with `DIR` a private temporary directory: every
//! process (and, after an `exec`, every new image of it; after a `fork`, the child) writes its
//! own log file there. A log socket (`--log-socket`) would need no files, but a forked child
//! shares its parent's connection and their output interleaves mid-line, so the files are
//! followed instead, as they grow: each new line is parsed into the compact writer at once and
//! the bytes consumed are punched out of the file (`fallocate(PUNCH_HOLE)`), so the text never
//! accumulates. The directory is removed at the end, whatever happens.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use super::compact::{FileOutput, Header, StreamInfo};
use super::lackey::Parser;
use super::{Fetches, RecordSink, Source, TraceError};

/// The Debian (and Ubuntu) package that provides valgrind.
pub const VALGRIND_PACKAGE: &str = "valgrind";

/// How to record.
#[derive(Clone, Debug)]
pub struct RecordOptions {
    /// The compact trace to write.
    pub output: PathBuf,
    /// Which instruction fetches to keep.
    pub fetches: Fetches,
    /// zstd level.
    pub level: i32,
    /// The valgrind executable.
    pub valgrind: OsString,
}

/// What was recorded.
#[derive(Clone, Debug)]
pub struct RecordSummary {
    /// The trace's header.
    pub header: Header,
    /// Its streams.
    pub streams: Vec<StreamInfo>,
    /// Lackey text parsed (and never stored whole).
    pub text_bytes: u64,
    /// How the program ended.
    pub status: ExitStatus,
}

/// Removes the log directory at the end.
#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: the directory and its files are ours.
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One log file being followed.
#[derive(Debug)]
struct Tail {
    file: File,
    name: String,
    /// Bytes consumed.
    pos: u64,
    /// The start of an incomplete last line.
    partial: Vec<u8>,
    parser: Parser,
}

const POLL: Duration = Duration::from_millis(20);
const CHUNK: usize = 1 << 20;

impl Tail {
    /// Parses what the file holds beyond `pos`; returns the bytes read.
    fn pump(&mut self, sink: &mut dyn RecordSink, buf: &mut [u8]) -> Result<u64, TraceError> {
        let mut total = 0;
        loop {
            let n = match self.file.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(TraceError::Read {
                        file: self.name.clone(),
                        offset: self.pos,
                        source,
                    })
                }
            };
            total += n as u64;
            let mut chunk = &buf[..n];
            while let Some(nl) = chunk.iter().position(|&b| b == b'\n') {
                let result = if self.partial.is_empty() {
                    self.parser.line(&chunk[..nl], sink)
                } else {
                    self.partial.extend_from_slice(&chunk[..nl]);
                    let line = std::mem::take(&mut self.partial);
                    self.parser.line(&line, sink)
                };
                result.map_err(|e| self.locate(e))?;
                chunk = &chunk[nl + 1..];
            }
            self.partial.extend_from_slice(chunk);
            if self.partial.len() as u64 > super::lackey::MAX_LINE {
                let detail = format!("longer than {} bytes", super::lackey::MAX_LINE);
                let line = self.parser.lines + 1;
                return Err(TraceError::Line { file: self.name.clone(), line, detail });
            }
            self.pos += n as u64;
            // Give the consumed text back to the file system (best effort: a file system
            // without hole punching keeps it until the directory is removed).
            let consumed = self.pos - self.partial.len() as u64;
            let _ = rustix::fs::fallocate(
                &self.file,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                0,
                consumed & !0xFFF,
            );
        }
        Ok(total)
    }

    fn locate(&self, e: TraceError) -> TraceError {
        match e {
            TraceError::Line { line, detail, .. } => {
                TraceError::Line { file: self.name.clone(), line, detail }
            }
            e => e,
        }
    }

    fn finish(&mut self, sink: &mut dyn RecordSink) -> Result<(), TraceError> {
        if !self.partial.is_empty() {
            return Err(TraceError::Line {
                file: self.name.clone(),
                line: self.parser.lines + 1,
                detail: "truncated: the last line has no newline (was the process killed?)".into(),
            });
        }
        self.parser.finish(sink).map(|_| ())
    }
}

/// Whether `valgrind` runs; the error names the package to install when it does not.
pub fn check_valgrind(valgrind: &OsString) -> Result<(), TraceError> {
    match Command::new(valgrind).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(TraceError::Other(format!(
            "`{} --version` failed ({}): is valgrind installed correctly? (Debian package `{VALGRIND_PACKAGE}`)",
            valgrind.to_string_lossy(),
            out.status
        ))),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(TraceError::Other(format!(
            "valgrind is not installed: `memvirt record` runs the program under valgrind's lackey \
             tool; install the Debian package `{VALGRIND_PACKAGE}` (apt-get install {VALGRIND_PACKAGE})"
        ))),
        Err(e) => Err(TraceError::Other(format!(
            "cannot run {}: {e} (Debian package `{VALGRIND_PACKAGE}`)",
            valgrind.to_string_lossy()
        ))),
    }
}

/// Records `cmd` (program and arguments) into `opts.output`.
pub fn record(cmd: &[OsString], opts: &RecordOptions) -> Result<RecordSummary, TraceError> {
    if cmd.is_empty() {
        return Err(TraceError::Other(
            "no program to record (memvirt record -- CMD ARGS...)".into(),
        ));
    }
    check_valgrind(&opts.valgrind)?;
    let dir = make_dir()?;
    let (out, mut writer) = FileOutput::create(&opts.output, Source::Record, opts.level)?;
    let mut child = Command::new(&opts.valgrind)
        .arg("--tool=lackey")
        .arg("--trace-mem=yes")
        .arg("--trace-children=yes")
        .arg({
            let mut a = OsString::from("--log-file=");
            a.push(dir.0.join("lackey.%p.%n"));
            a
        })
        .args(cmd)
        .spawn()
        .map_err(|e| TraceError::Other(format!("cannot start valgrind: {e}")))?;
    let mut tails: BTreeMap<String, Tail> = BTreeMap::new();
    let mut buf = vec![0u8; CHUNK];
    let mut text_bytes = 0;
    let result = (|| -> Result<ExitStatus, TraceError> {
        loop {
            let status = child
                .try_wait()
                .map_err(|e| TraceError::Other(format!("cannot wait for valgrind: {e}")))?;
            discover(&dir.0, opts.fetches, &mut tails)?;
            let mut read = 0;
            for t in tails.values_mut() {
                read += t.pump(&mut writer, &mut buf)?;
            }
            text_bytes += read;
            if let Some(status) = status {
                // A last pass: files created or written just before the exit.
                discover(&dir.0, opts.fetches, &mut tails)?;
                for t in tails.values_mut() {
                    text_bytes += t.pump(&mut writer, &mut buf)?;
                    t.finish(&mut writer)?;
                }
                return Ok(status);
            }
            if read == 0 {
                std::thread::sleep(POLL);
            }
        }
    })();
    let status = match result {
        Ok(s) => s,
        Err(e) => {
            // Our own child: stop it rather than leave it writing into a removed directory.
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    if tails.is_empty() {
        return Err(TraceError::Other(format!(
            "valgrind wrote no lackey output ({status}): see its messages above"
        )));
    }
    let (header, streams) = out.commit(writer, text_bytes)?;
    Ok(RecordSummary { header, streams, text_bytes, status })
}

fn make_dir() -> Result<TempDir, TraceError> {
    let base = std::env::temp_dir();
    for i in 0..100u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!("memvirt-record-{}-{nanos}-{i}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(TempDir(dir)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(TraceError::Other(format!("cannot create {}: {e}", dir.display())))
            }
        }
    }
    Err(TraceError::Other("cannot create a temporary directory for valgrind's logs".into()))
}

/// Starts following log files not yet followed, in name order.
fn discover(
    dir: &Path,
    fetches: Fetches,
    tails: &mut BTreeMap<String, Tail>,
) -> Result<(), TraceError> {
    let entries = fs::read_dir(dir)
        .map_err(|e| TraceError::Other(format!("cannot list {}: {e}", dir.display())))?;
    let mut new: Vec<(u64, u64, String, PathBuf)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if tails.contains_key(&name) {
            continue;
        }
        // lackey.PID.N: in process order, then image order.
        let mut parts = name.split('.').skip(1).map(|p| p.parse::<u64>().unwrap_or(0));
        let (pid, seq) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        new.push((pid, seq, name, entry.path()));
    }
    new.sort();
    for (pid, seq, name, path) in new {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| TraceError::Open { file: path.display().to_string(), source })?;
        let label = format!("lackey log of process {pid} (image {seq})");
        let parser = Parser::new(fetches, &format!("pid {pid}"));
        tails.insert(name, Tail { file, name: label, pos: 0, partial: Vec::new(), parser });
    }
    Ok(())
}
