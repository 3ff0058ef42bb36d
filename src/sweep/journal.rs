//! The journal of a sweep: every finished point, one JSON line each, appended as it finishes,
//! so an interrupted sweep keeps its finished work and `--resume` runs only the rest.
//!
//! The first line names the sweep (`{"memvirt_sweep_journal": 1, "identity": {...}}`): the
//! workload, the base profile in full, the seed, `--verify`, the `--set` values and the swept
//! key, everything a report depends on besides the point's own value and scheme. Each further
//! line is one point, `{"value": "0.5", "scheme": "tsp", "report": {...}}`, in the order the
//! points finished. Resuming a journal whose identity differs is refused, naming the field. A
//! last line cut short by the interruption is dropped (and the file truncated before it), so
//! nothing written after it can join it; any other unreadable line is an error naming it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::SweepSpec;
use crate::report::Report;
use crate::scheme::SchemeKind;

/// The journal format's version, in its first line.
const VERSION: u64 = 1;

/// Why a journal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing failed.
    #[error("sweep journal {path}: {source}")]
    Io {
        /// The journal.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A line is not what the journal holds.
    #[error("sweep journal {path}: line {line}: {why}")]
    Malformed {
        /// The journal.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// The journal belongs to another sweep.
    #[error(
        "sweep journal {path} is of another sweep: its {field} is {theirs}, this sweep's is \
         {ours}; remove it (or give another journal) to start afresh"
    )]
    OtherSweep {
        /// The journal.
        path: String,
        /// The first identity field that differs.
        field: String,
        /// The journal's value.
        theirs: String,
        /// This sweep's value.
        ours: String,
    },
    /// A journal exists and `--resume` was not given.
    #[error(
        "sweep journal {path} already holds {points} finished points of an earlier sweep: \
         --resume continues it (its finished points are not run again), or remove it to start \
         afresh"
    )]
    Exists {
        /// The journal.
        path: String,
        /// Points it holds.
        points: usize,
    },
}

#[derive(Serialize, Deserialize)]
struct HeaderLine {
    memvirt_sweep_journal: u64,
    identity: Value,
}

#[derive(Serialize, Deserialize)]
struct PointLine {
    value: String,
    scheme: String,
    report: Report,
}

/// An open journal: the points it held when opened, and the file new points are appended to.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    finished: BTreeMap<(String, String), Report>,
    /// Points appended since it was opened.
    recorded: AtomicUsize,
    file: Mutex<File>,
}

impl Journal {
    /// Opens the journal of `spec` at `path`: creates it if it does not exist; if it does, reads
    /// its finished points when `resume` is set, and refuses otherwise (an earlier sweep's work is
    /// never thrown away unasked).
    pub fn open(path: &Path, spec: &SweepSpec, resume: bool) -> Result<Journal, JournalError> {
        let name = path.display().to_string();
        let io = |source| JournalError::Io { path: name.clone(), source };
        let identity = identity(spec);
        let text = match fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        let Some(bytes) = text.filter(|b| !b.is_empty()) else {
            let mut file = File::create(path).map_err(io)?;
            let header = HeaderLine { memvirt_sweep_journal: VERSION, identity };
            write_line(&mut file, &header).map_err(io)?;
            let file = Mutex::new(file);
            return Ok(Journal {
                path: path.to_owned(),
                finished: BTreeMap::new(),
                recorded: AtomicUsize::new(0),
                file,
            });
        };
        let (finished, complete) = read(&name, &bytes, &identity)?;
        if !resume {
            return Err(JournalError::Exists { path: name, points: finished.len() });
        }
        // Appending; a last line cut short by the interruption is dropped first, so the next
        // point starts a line.
        let file = fs::OpenOptions::new().append(true).open(path).map_err(io)?;
        file.set_len(complete).map_err(io)?;
        Ok(Journal {
            path: path.to_owned(),
            finished,
            recorded: AtomicUsize::new(0),
            file: Mutex::new(file),
        })
    }

    /// The journal's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Points finished before this journal was opened.
    pub fn resumed(&self) -> usize {
        self.finished.len()
    }

    /// Points it holds: those resumed and those recorded since.
    pub fn points(&self) -> usize {
        self.finished.len() + self.recorded.load(Ordering::Relaxed)
    }

    /// The report of `scheme` at `value`, if an earlier run finished it.
    pub fn finished(&self, value: &str, scheme: SchemeKind) -> Option<&Report> {
        self.finished.get(&(value.to_owned(), scheme.name().to_owned()))
    }

    /// Appends a finished point (one line, written whole; callable from any thread).
    pub fn record(
        &self,
        value: &str,
        scheme: SchemeKind,
        report: &Report,
    ) -> Result<(), JournalError> {
        let line = PointLine {
            value: value.to_owned(),
            scheme: scheme.name().to_owned(),
            report: report.clone(),
        };
        // A panicked writer leaves the file usable: lines are written whole or not at all.
        let mut file = self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        write_line(&mut file, &line)
            .map_err(|source| JournalError::Io { path: self.path.display().to_string(), source })?;
        self.recorded.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Removes the journal once the sweep's results are safely written.
    pub fn remove(self) -> Result<(), JournalError> {
        let Journal { path, file, .. } = self;
        drop(file);
        fs::remove_file(&path)
            .map_err(|source| JournalError::Io { path: path.display().to_string(), source })
    }
}

/// A file name for the journal of `spec` in the current directory when no output names one:
/// `memvirt-sweep-DIGEST.partial.jsonl`, the digest (FNV-1a) of the sweep's identity, so that
/// different sweeps never share a journal and the same sweep finds its own again.
pub fn default_name(spec: &SweepSpec) -> String {
    format!("memvirt-sweep-{}.partial.jsonl", crate::run::digest(&identity(spec).to_string()))
}

/// Everything a point's report depends on besides its value and scheme.
fn identity(spec: &SweepSpec) -> Value {
    let b = &spec.base;
    serde_json::json!({
        "memvirt": env!("CARGO_PKG_VERSION"),
        "workload": b.workload.name(),
        "profile": serde_json::to_value(&b.profile).unwrap_or(Value::Null),
        "seed": b.seed,
        "verify": b.verify,
        "warmup": b.warmup,
        "workload_sets": b.workload_sets,
        "scheme_sets": b.scheme_sets,
        "key": spec.key,
    })
}

/// Serializes `value` and writes it with its newline in one write.
fn write_line<T: Serialize>(file: &mut File, value: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    file.write_all(&line)
}

/// The points of a journal's text, and the length of its complete lines.
type Points = BTreeMap<(String, String), Report>;

fn read(name: &str, bytes: &[u8], identity: &Value) -> Result<(Points, u64), JournalError> {
    let malformed =
        |line: usize, why: String| JournalError::Malformed { path: name.to_owned(), line, why };
    // Only complete lines count: an unterminated last line was being written when the sweep
    // stopped.
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut lines = bytes[..complete].split(|&b| b == b'\n').filter(|l| !l.is_empty());
    let header: HeaderLine = match lines.next() {
        None => return Err(malformed(1, "no complete first line (the sweep's identity)".into())),
        Some(line) => serde_json::from_slice(line)
            .map_err(|e| malformed(1, format!("not a sweep journal's first line: {e}")))?,
    };
    if header.memvirt_sweep_journal != VERSION {
        return Err(malformed(
            1,
            format!(
                "journal version {} (this memvirt writes {VERSION})",
                header.memvirt_sweep_journal
            ),
        ));
    }
    if let Some((field, theirs, ours)) = difference(&header.identity, identity) {
        return Err(JournalError::OtherSweep { path: name.to_owned(), field, theirs, ours });
    }
    let mut points = BTreeMap::new();
    for (i, line) in lines.enumerate() {
        let point: PointLine = serde_json::from_slice(line)
            .map_err(|e| malformed(i + 2, format!("not a finished point: {e}")))?;
        if SchemeKind::ALL.iter().all(|s| s.name() != point.scheme) {
            return Err(malformed(i + 2, format!("unknown scheme `{}`", point.scheme)));
        }
        points.insert((point.value, point.scheme), point.report);
    }
    Ok((points, u64::try_from(complete).unwrap_or(u64::MAX)))
}

/// The first field (dotted path) where `theirs` and `ours` differ, with both values.
fn difference(theirs: &Value, ours: &Value) -> Option<(String, String, String)> {
    match (theirs, ours) {
        (Value::Object(t), Value::Object(o)) => {
            let keys: std::collections::BTreeSet<&String> = t.keys().chain(o.keys()).collect();
            keys.into_iter().find_map(|k| {
                let (tv, ov) = (t.get(k).unwrap_or(&Value::Null), o.get(k).unwrap_or(&Value::Null));
                difference(tv, ov).map(|(f, a, b)| {
                    let field = if f.is_empty() { k.clone() } else { format!("{k}.{f}") };
                    (field, a, b)
                })
            })
        }
        _ if theirs == ours => None,
        _ => Some((String::new(), theirs.to_string(), ours.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_differing_field_is_named_by_its_path() {
        let a = json!({"seed": 1, "profile": {"costs": {"vm_exit": 1000}}});
        let b = json!({"seed": 1, "profile": {"costs": {"vm_exit": 2000}}});
        assert_eq!(
            difference(&a, &b),
            Some(("profile.costs.vm_exit".into(), "1000".into(), "2000".into()))
        );
        assert_eq!(difference(&a, &a), None);
    }
}
