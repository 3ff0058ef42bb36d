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
//! accumulates. Each log is moved aside the moment it appears (`Watcher`), because valgrind
//! would reuse its name after an `exec`. The directory is removed at the end, whatever happens,
//! also when the recording is interrupted (SIGINT, SIGTERM, SIGHUP: valgrind is stopped and no
//! trace is written).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::inotify;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

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
    // The binary's handler (crate::interrupt) leaves the exit to this loop, which reports it.
    let _graceful = crate::interrupt::Graceful::start();
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::flag::register(signal, Arc::clone(&interrupted))
            .map_err(|e| TraceError::Other(format!("cannot handle signal {signal}: {e}")))?;
    }
    let dir = make_dir()?;
    let logs = Watcher::start(&dir.0)?;
    let (out, mut writer) = FileOutput::create(&opts.output, Source::Record, opts.level)?;
    let mut child = Command::new(&opts.valgrind)
        .arg("--tool=lackey")
        .arg("--trace-mem=yes")
        .arg("--trace-children=yes")
        .arg({
            let mut a = OsString::from("--log-file=");
            a.push(dir.0.join(format!("{LOG_PREFIX}%p.%n")));
            a
        })
        .args(cmd)
        // A group of its own: valgrind and every process the program forks (each under a
        // valgrind of its own) are stopped together, even when a signal reaches memvirt alone.
        .process_group(0)
        .spawn()
        .map_err(|e| TraceError::Other(format!("cannot start valgrind: {e}")))?;
    let group = crate::interrupt::GroupGuard::new(&child);
    // By image number, that is in creation order: an image before the one its process execs.
    let mut tails: BTreeMap<u64, Tail> = BTreeMap::new();
    let mut buf = vec![0u8; CHUNK];
    let mut text_bytes = 0;
    let result = (|| -> Result<ExitStatus, TraceError> {
        loop {
            if interrupted.load(Ordering::Relaxed) {
                return Err(TraceError::Other(
                    "interrupted: the recording was stopped, nothing written".into(),
                ));
            }
            let status = child
                .try_wait()
                .map_err(|e| TraceError::Other(format!("cannot wait for valgrind: {e}")))?;
            if status.is_some() {
                // Every log exists now; the watcher reports them all before the end marker.
                logs.end(&dir.0)?;
            }
            logs.collect(opts.fetches, &mut tails, status.is_some())?;
            let mut read = 0;
            for t in tails.values_mut() {
                read += t.pump(&mut writer, &mut buf)?;
            }
            text_bytes += read;
            if let Some(status) = status {
                for t in tails.values_mut() {
                    t.finish(&mut writer)?;
                }
                return Ok(status);
            }
            if read == 0 {
                std::thread::sleep(POLL);
            }
        }
    })();
    // Whatever the program left running in its group (a process it forked and did not wait
    // for) stops with the recording rather than writing into a removed directory.
    let stop_group = || {
        if let Some(g) = &group {
            g.kill();
        }
    };
    let status = match result {
        Ok(s) => {
            stop_group();
            s
        }
        Err(e) => {
            stop_group();
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

/// Valgrind's log files are `lackey.PID.N`.
const LOG_PREFIX: &str = "lackey.";
/// The file `record` creates once valgrind has exited: the watcher has reported every log.
const END_MARKER: &str = "end";

/// What the watcher reports, in the order it happened.
#[derive(Debug)]
enum Logged {
    /// A new log, already moved to a name of its own.
    Log {
        path: PathBuf,
        pid: u64,
        image: u64,
    },
    /// The end marker: no log comes after.
    End,
    Failed(TraceError),
}

/// Moves each log valgrind creates out of valgrind's way the moment it appears.
///
/// Valgrind's `%n` counts log files per process, but an `exec`ed image starts counting again, so
/// a process that execs twice (or a first process that execs once) reopens, and truncates, the
/// log of an earlier image of itself: `lackey.PID.1` is used again. The watcher thread renames
/// every new `lackey.*` file to `image.K` (K in creation order) as soon as inotify reports it,
/// long before the image can exec (valgrind's own start-up alone takes milliseconds); an
/// `exec` then creates a fresh file. Should a second open of the same name still come first,
/// the recording stops with an error instead of mixing two images' text.
struct Watcher {
    rx: Receiver<Logged>,
}

impl Watcher {
    fn start(dir: &Path) -> Result<Watcher, TraceError> {
        let fail = |what: &str, e: rustix::io::Errno| {
            TraceError::Other(format!("cannot watch {} ({what}): {e}", dir.display()))
        };
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC).map_err(|e| fail("inotify", e))?;
        let mask = inotify::WatchFlags::CREATE
            | inotify::WatchFlags::OPEN
            | inotify::WatchFlags::MOVED_FROM;
        inotify::add_watch(&fd, dir, mask).map_err(|e| fail("inotify watch", e))?;
        let (tx, rx) = mpsc::channel();
        let dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("lackey-logs".into())
            .spawn(move || {
                if let Err(e) = watch(&dir, &fd, &tx) {
                    let _ = tx.send(Logged::Failed(e));
                }
            })
            .map_err(|e| TraceError::Other(format!("cannot start the log watcher: {e}")))?;
        Ok(Watcher { rx })
    }

    /// Creates the end marker.
    fn end(&self, dir: &Path) -> Result<(), TraceError> {
        let path = dir.join(END_MARKER);
        File::create(&path)
            .map(drop)
            .map_err(|e| TraceError::Other(format!("cannot create {}: {e}", path.display())))
    }

    /// Starts following the logs reported since the last call; with `until_end`, waits for the
    /// end marker (so every log is followed).
    fn collect(
        &self,
        fetches: Fetches,
        tails: &mut BTreeMap<u64, Tail>,
        until_end: bool,
    ) -> Result<(), TraceError> {
        loop {
            let next = if until_end {
                self.rx.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                self.rx.try_recv()
            };
            match next {
                Ok(Logged::Log { path, pid, image }) => {
                    let file = fs::OpenOptions::new().read(true).write(true).open(&path).map_err(
                        |source| TraceError::Open { file: path.display().to_string(), source },
                    )?;
                    let name = format!("lackey log of process {pid} (image {image})");
                    let parser = Parser::new(fetches, &format!("pid {pid}"));
                    let tail = Tail { file, name, pos: 0, partial: Vec::new(), parser };
                    tails.insert(image, tail);
                }
                Ok(Logged::End) => return Ok(()),
                Ok(Logged::Failed(e)) => return Err(e),
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => {
                    return Err(TraceError::Other("the log watcher stopped unexpectedly".into()))
                }
            }
        }
    }
}

/// The watcher thread: see [`Watcher`]. Ends at the end marker, or when the directory goes.
fn watch(dir: &Path, fd: &OwnedFd, tx: &Sender<Logged>) -> Result<(), TraceError> {
    let mut buf = [MaybeUninit::uninit(); 16 * 1024];
    let mut events = inotify::Reader::new(fd, &mut buf);
    // Logs created and not yet seen moved away, with the opens seen of each.
    let mut fresh: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut images = 0u64;
    loop {
        let event = match events.next() {
            Ok(e) => e,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(TraceError::Other(format!("cannot read inotify events: {e}"))),
        };
        let flags = event.events();
        if flags.contains(inotify::ReadFlags::QUEUE_OVERFLOW) {
            return Err(TraceError::Other("too many log files at once (inotify overflow)".into()));
        }
        if flags.intersects(inotify::ReadFlags::IGNORED | inotify::ReadFlags::DELETE_SELF) {
            return Ok(());
        }
        let Some(name) = event.file_name().map(|n| n.to_bytes().to_vec()) else { continue };
        if name == END_MARKER.as_bytes() && flags.contains(inotify::ReadFlags::CREATE) {
            let _ = tx.send(Logged::End);
            return Ok(());
        }
        let Some(rest) = name.strip_prefix(LOG_PREFIX.as_bytes()) else { continue };
        if flags.contains(inotify::ReadFlags::CREATE) {
            let from = dir.join(std::ffi::OsStr::from_bytes(&name));
            let to = dir.join(format!("image.{images}"));
            fs::rename(&from, &to).map_err(|e| {
                TraceError::Other(format!("cannot move {} aside: {e}", from.display()))
            })?;
            fresh.insert(name.clone(), 0);
            let pid = std::str::from_utf8(rest)
                .ok()
                .and_then(|r| r.split('.').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            if tx.send(Logged::Log { path: to, pid, image: images }).is_err() {
                return Ok(());
            }
            images += 1;
        } else if flags.contains(inotify::ReadFlags::OPEN) {
            if let Some(opens) = fresh.get_mut(&name) {
                *opens += 1;
                if *opens > 1 {
                    return Err(TraceError::Other(format!(
                        "valgrind reopened its log {} before memvirt could move the first one \
                         aside (a process exec'd again at once): the earlier image's trace is \
                         lost; please record again",
                        String::from_utf8_lossy(&name)
                    )));
                }
            }
        } else if flags.contains(inotify::ReadFlags::MOVED_FROM) {
            fresh.remove(&name);
        }
    }
}
