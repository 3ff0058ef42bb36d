//! What an interrupted command leaves behind: nothing of its own. Temporary files (a trace being
//! converted, a report being written) and child process groups (valgrind and every process the
//! recorded program forks) register here while they exist; when the binary has called
//! [`install`], SIGINT, SIGTERM or SIGHUP kills every registered group, removes every registered
//! file and exits with 128 + the signal's number, as a shell reports a process the signal
//! killed. Finished work that is meant to survive (a sweep's journal, a committed output) is
//! never registered.
//!
//! A command that stops gracefully itself (`record`, which polls for the signal, reports it and
//! removes its log directory) holds a [`Graceful`] guard: the handler then cleans up as above
//! but leaves the exit to the command.
//!
//! Without [`install`] (the library, the tests) registering only costs a lock: the signals keep
//! their default action.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// Files and process groups to clean up if a signal arrives.
#[derive(Default)]
struct Leftovers {
    files: Vec<PathBuf>,
    groups: Vec<rustix::process::Pid>,
}

static LEFTOVERS: Mutex<Leftovers> =
    Mutex::new(Leftovers { files: Vec::new(), groups: Vec::new() });

fn leftovers() -> std::sync::MutexGuard<'static, Leftovers> {
    // A panicked holder leaves plain lists, still usable.
    LEFTOVERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Handles SIGINT, SIGTERM and SIGHUP from now on (on a thread of their own): kills the
/// registered process groups, removes the registered files, and exits.
pub fn install() -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
            clean_up();
            if GRACEFUL.load(Ordering::SeqCst) == 0 {
                std::process::exit(128 + signal);
            }
        }
    })?;
    Ok(())
}

/// Commands stopping gracefully by themselves ([`Graceful`] guards alive).
static GRACEFUL: AtomicUsize = AtomicUsize::new(0);

/// While it lives, a signal still kills the registered groups and removes the registered files,
/// but the process does not exit: its holder sees the signal itself and stops.
#[derive(Debug)]
pub struct Graceful(());

impl Graceful {
    /// Starts stopping gracefully.
    pub fn start() -> Graceful {
        GRACEFUL.fetch_add(1, Ordering::SeqCst);
        Graceful(())
    }
}

impl Drop for Graceful {
    fn drop(&mut self) {
        GRACEFUL.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Kills every registered group and removes every registered file (best effort).
fn clean_up() {
    let left = leftovers();
    for &group in &left.groups {
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
    for file in &left.files {
        let _ = std::fs::remove_file(file);
    }
}

/// A temporary file removed if a signal interrupts the command; dropping the guard only stops
/// watching it (the owner removes or renames the file itself).
#[derive(Debug)]
pub struct TempGuard(PathBuf);

impl TempGuard {
    /// Watches `path`.
    pub fn new(path: &Path) -> TempGuard {
        leftovers().files.push(path.to_owned());
        TempGuard(path.to_owned())
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        let mut left = leftovers();
        if let Some(i) = left.files.iter().rposition(|f| *f == self.0) {
            left.files.swap_remove(i);
        }
    }
}

/// A child's process group (a child spawned with `process_group(0)`), killed whole if a signal
/// interrupts the command; [`GroupGuard::kill`] kills it on purpose.
#[derive(Debug)]
pub struct GroupGuard(rustix::process::Pid);

impl GroupGuard {
    /// Watches the group `child` leads; `None` for a pid that cannot lead a group of its own.
    pub fn new(child: &std::process::Child) -> Option<GroupGuard> {
        let pid = rustix::process::Pid::from_child(child);
        // Never process 1: kill(-1) would signal every process there is.
        if pid.as_raw_nonzero().get() <= 1 {
            return None;
        }
        leftovers().groups.push(pid);
        Some(GroupGuard(pid))
    }

    /// Kills every process left in the group (SIGKILL; a group already gone is fine).
    pub fn kill(&self) {
        let _ = rustix::process::kill_process_group(self.0, rustix::process::Signal::KILL);
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let mut left = leftovers();
        if let Some(i) = left.groups.iter().rposition(|g| *g == self.0) {
            left.groups.swap_remove(i);
        }
    }
}
