//! Files memvirt writes (reports, charts, traces): checked before any work starts, written
//! whole or not at all.
//!
//! An output is a regular file or a name that does not exist yet. A symbolic link, FIFO,
//! device or directory is refused rather than followed or replaced: a report renamed over
//! `/dev/stdout` or over a link into someone else's tree is never what was meant. An output that
//! is one of the command's inputs (a trace, a profile) is refused, so a report never replaces
//! the trace it came from. The directory is probed by creating and removing a file in it, so a
//! read-only or missing directory fails before a long run, not after it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why an output cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The path cannot be an output.
    #[error("cannot write {path}: {why}")]
    Refused {
        /// The output.
        path: String,
        /// Why not.
        why: String,
    },
    /// The file system said no.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The output (or its temporary sibling's final name).
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

fn refused(path: &Path, why: impl Into<String>) -> OutputError {
    OutputError::Refused { path: path.display().to_string(), why: why.into() }
}

fn io(path: &Path, source: std::io::Error) -> OutputError {
    OutputError::Io { path: path.display().to_string(), source }
}

/// The directory `path` goes in (`.` for a bare name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `path` with `.NAME.PID.tmp` as its name: where a file is written before it is renamed over
/// `path`.
pub fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    parent_dir(path).join(format!(".{name}.{}.tmp", std::process::id()))
}

/// Checks, before any work, that `path` can be written as an output: its directory exists and
/// is writable, it is absent or a regular file, and it is not one of `inputs` (compared by
/// device and inode, so another name for the same file is caught too). `-` in `inputs` (standard
/// input) is skipped.
pub fn check(path: &Path, inputs: &[&Path]) -> Result<(), OutputError> {
    if path.file_name().is_none() {
        return Err(refused(path, "not a file name"));
    }
    let dir = parent_dir(path);
    if !dir.is_dir() {
        return Err(refused(path, format!("directory {} does not exist", dir.display())));
    }
    match fs::symlink_metadata(path) {
        Ok(meta) => {
            let kind = meta.file_type();
            if kind.is_symlink() {
                return Err(refused(
                    path,
                    "it is a symbolic link, and memvirt writes only regular files (name the \
                     link's target instead)",
                ));
            }
            if kind.is_dir() {
                return Err(refused(path, "it is a directory"));
            }
            if !kind.is_file() {
                return Err(refused(
                    path,
                    "it is not a regular file but a FIFO, socket or device, and memvirt writes \
                     only regular files",
                ));
            }
            for input in inputs.iter().filter(|i| i.as_os_str() != "-") {
                if same_file(&meta, input) {
                    return Err(refused(
                        path,
                        format!(
                            "it is also an input ({}), which it would replace",
                            input.display()
                        ),
                    ));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path, e)),
    }
    probe_directory(path)
}

/// Whether `input` is the file `output` describes.
fn same_file(output: &fs::Metadata, input: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(input).is_ok_and(|m| m.dev() == output.dev() && m.ino() == output.ino())
}

/// Creates and removes the temporary sibling: the directory takes new files.
fn probe_directory(path: &Path) -> Result<(), OutputError> {
    let probe = temporary_sibling(path);
    fs::OpenOptions::new().write(true).create_new(true).open(&probe).map_err(|e| {
        refused(
            path,
            format!("directory {} does not take new files: {e}", parent_dir(path).display()),
        )
    })?;
    fs::remove_file(&probe).map_err(|e| io(&probe, e))
}

/// Checks `path` (as [`check`], without inputs) and writes `bytes` to its temporary sibling,
/// then renames that over `path`, so a failure never leaves a truncated file nor destroys an
/// existing one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    check(path, &[])?;
    let tmp = temporary_sibling(path);
    let _interrupt = crate::interrupt::TempGuard::new(&tmp);
    let mut file =
        fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| io(path, e))?;
    let written =
        file.write_all(bytes).and_then(|()| file.sync_all()).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        // Best effort: the temporary file is ours and incomplete.
        let _ = fs::remove_file(&tmp);
        return Err(io(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("memvirt-outfile-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_new_or_regular_file_is_accepted_and_written_whole() {
        let dir = scratch("regular");
        let out = dir.join("report.json");
        check(&out, &[]).unwrap();
        write_atomically(&out, b"one").unwrap();
        write_atomically(&out, b"two").unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"two");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left");
    }

    #[test]
    fn links_fifos_devices_and_directories_are_refused() {
        let dir = scratch("kinds");
        let target = dir.join("target");
        fs::write(&target, "keep").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = write_atomically(&link, b"x").unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        let e = check(Path::new("/dev/null"), &[]).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = check(&dir, &[]).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
    }

    #[test]
    fn an_output_that_is_an_input_is_refused_under_any_name() {
        let dir = scratch("input");
        let trace = dir.join("t.mvt");
        fs::write(&trace, "trace").unwrap();
        let other_name = dir.join("hard");
        fs::hard_link(&trace, &other_name).unwrap();
        let e = check(&other_name, &[Path::new("-"), &trace]).unwrap_err().to_string();
        assert!(e.contains("also an input") && e.contains("t.mvt"), "{e}");
        check(&dir.join("new.json"), &[&trace]).unwrap();
    }

    #[test]
    fn a_missing_directory_is_refused_before_any_work() {
        let dir = scratch("missing");
        let e = check(&dir.join("no/such/report.json"), &[]).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
