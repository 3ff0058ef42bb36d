//! Built-in workloads (DESIGN.md §8): synthetic programs run as guest processes.
//!
//! Each workload is a state machine over the guest kernel's API ([`Os`]): it makes user loads
//! and stores and system calls for the running process until its time slice ends, it blocks
//! (yields) or it exits, and the [`drive`] loop schedules the next process round robin. Each has
//! a parameter struct whose fields are its documented parameters, set on the command line with
//! `--set workload.KEY=VALUE`.

mod multi;
mod single;
mod threads;
pub mod trace;

use serde::{Deserialize, Serialize};

use crate::addr::{Gva, PageSize};
use crate::config::{self, ConfigError};
use crate::guest::{Os, OsError, Pid};
use crate::machine::Scheme;
use crate::paging::Perms;

pub use multi::{CtxSw, CtxSwParams, Exec, ExecParams, Fork, ForkParams, Server, ServerParams};
pub use single::{
    LspMicro, LspMicroParams, MmapChurn, MmapParams, PageFault, PageFaultParams, PointerChase,
    PointerChaseParams, RandomAccess, RandomParams, Stream, StreamParams,
};
pub use threads::{Threads, ThreadsParams};
pub use trace::{TraceParams, TraceReplay, TraceReport, TraceSet, DEFAULT_KEEP_DECODED_BYTES};

/// What a process did with its turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Its time slice ran out.
    Preempted,
    /// It blocked (waits for a child, for I/O, for its peer).
    Yield,
    /// It is done and exits.
    Exit,
}

/// The built-in workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// Demand paging.
    Pagefault,
    /// Fork with copy-on-write.
    Fork,
    /// Many short-lived processes.
    Exec,
    /// mmap churn.
    Mmap,
    /// Context-switch ping-pong.
    Ctxsw,
    /// GUPS-like random access.
    Random,
    /// Streaming.
    Stream,
    /// Pointer chasing.
    PointerChase,
    /// Multi-process server mix.
    Server,
    /// The LSP micro-benchmark.
    LspMicro,
    /// One process of threads sharing an address space (TLB shootdowns with several vCPUs).
    Threads,
}

impl WorkloadKind {
    /// Every workload, in listing order.
    pub const ALL: [WorkloadKind; 11] = [
        WorkloadKind::Pagefault,
        WorkloadKind::Fork,
        WorkloadKind::Exec,
        WorkloadKind::Mmap,
        WorkloadKind::Ctxsw,
        WorkloadKind::Random,
        WorkloadKind::Stream,
        WorkloadKind::PointerChase,
        WorkloadKind::Server,
        WorkloadKind::LspMicro,
        WorkloadKind::Threads,
    ];

    /// The workloads `memvirt compare` runs when none is named: one of each kind of pressure
    /// (faults, copy-on-write, process churn, switches, TLB reach, PTE updates).
    pub const DEFAULT_MIX: [WorkloadKind; 6] = [
        WorkloadKind::Pagefault,
        WorkloadKind::Fork,
        WorkloadKind::Ctxsw,
        WorkloadKind::Random,
        WorkloadKind::Stream,
        WorkloadKind::LspMicro,
    ];

    /// The name the command line uses.
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Pagefault => "pagefault",
            WorkloadKind::Fork => "fork",
            WorkloadKind::Exec => "exec",
            WorkloadKind::Mmap => "mmap",
            WorkloadKind::Ctxsw => "ctxsw",
            WorkloadKind::Random => "random",
            WorkloadKind::Stream => "stream",
            WorkloadKind::PointerChase => "pointer-chase",
            WorkloadKind::Server => "server",
            WorkloadKind::LspMicro => "lsp-micro",
            WorkloadKind::Threads => "threads",
        }
    }

    /// Looks a workload up by name.
    pub fn by_name(name: &str) -> Option<WorkloadKind> {
        Self::ALL.into_iter().find(|w| w.name() == name)
    }

    /// One line for `memvirt list`.
    pub fn description(self) -> &'static str {
        match self {
            WorkloadKind::Pagefault => "demand paging: one process stores to N fresh pages",
            WorkloadKind::Fork => {
                "lmbench-style fork: a parent with a written heap forks children that write part of it (copy-on-write) and exit"
            }
            WorkloadKind::Exec => {
                "exec-heavy: a shell forks children that exec, touch a few fresh pages and exit"
            }
            WorkloadKind::Mmap => "mmap churn: mmap a region, store to every page, munmap, repeat",
            WorkloadKind::Ctxsw => {
                "context-switch ping-pong: P processes with small working sets take turns"
            }
            WorkloadKind::Random => {
                "GUPS-like random read-modify-write over a large footprint (TLB-miss bound)"
            }
            WorkloadKind::Stream => "STREAM triad over three arrays, cache line by cache line",
            WorkloadKind::PointerChase => {
                "dependent loads following a random cyclic permutation of pages"
            }
            WorkloadKind::Server => {
                "multi-process server: forked workers share a read-mostly region, map per-request buffers and block between requests"
            }
            WorkloadKind::LspMicro => {
                "LSP micro-benchmark: sequential operations over 1,024 pages, a fraction modify the page's PTE and flush it, the rest access it"
            }
            WorkloadKind::Threads => {
                "multi-threaded: threads share one address space, access a shared region at random and map, write and unmap private buffers (each unmap a TLB shootdown with several vCPUs)"
            }
        }
    }

    /// The default parameters, as a TOML-like value (for `memvirt list` and error messages).
    pub fn default_params(self) -> toml::Value {
        fn v<T: Serialize>(t: T) -> toml::Value {
            toml::Value::try_from(t).unwrap_or(toml::Value::Table(toml::map::Map::new()))
        }
        match self {
            WorkloadKind::Pagefault => v(PageFaultParams::default()),
            WorkloadKind::Fork => v(ForkParams::default()),
            WorkloadKind::Exec => v(ExecParams::default()),
            WorkloadKind::Mmap => v(MmapParams::default()),
            WorkloadKind::Ctxsw => v(CtxSwParams::default()),
            WorkloadKind::Random => v(RandomParams::default()),
            WorkloadKind::Stream => v(StreamParams::default()),
            WorkloadKind::PointerChase => v(PointerChaseParams::default()),
            WorkloadKind::Server => v(ServerParams::default()),
            WorkloadKind::LspMicro => v(LspMicroParams::default()),
            WorkloadKind::Threads => v(ThreadsParams::default()),
        }
    }

    /// The steady-state length: `sets` that lengthen the workload's repeated part (applied
    /// before the user's `--set`), and a warm-up of as many user accesses as the short default
    /// run makes, so that the counted part follows a whole short run's first touches (table
    /// building, demand paging, cold TLBs and caches). `pagefault` measures first touches, so
    /// its steady state is more fresh pages after a warm-up over the first ones.
    pub fn steady_state(self) -> SteadyState {
        let sets: &'static [(&'static str, &'static str)] = match self {
            WorkloadKind::Pagefault => &[("pages", "65536")],
            WorkloadKind::Fork => &[("forks", "1000")],
            WorkloadKind::Exec => &[("processes", "3000")],
            WorkloadKind::Mmap => &[("iterations", "20000")],
            WorkloadKind::Ctxsw => &[("turns", "25000")],
            WorkloadKind::Random => &[("updates", "20000000")],
            WorkloadKind::Stream => &[("passes", "40")],
            WorkloadKind::PointerChase => &[("loads", "20000000")],
            WorkloadKind::Server => &[("requests", "5000")],
            WorkloadKind::LspMicro => &[("operations", "1000000")],
            WorkloadKind::Threads => &[("accesses", "1000000")],
        };
        // The defaults always validate, so the estimate cannot fail.
        let warmup = self.estimated_accesses(&[]).map_or(0, |a| u64::try_from(a).unwrap_or(0));
        SteadyState { sets, warmup }
    }

    /// About how many user accesses the workload simulates with `sets` applied (see
    /// [`Validate::estimated_accesses`]).
    pub fn estimated_accesses(self, sets: &[(String, String)]) -> Result<u128, ConfigError> {
        fn e<T: Serialize + for<'de> Deserialize<'de> + Default + Validate>(
            sets: &[(String, String)],
        ) -> Result<u128, ConfigError> {
            Ok(params::<T>(sets)?.estimated_accesses())
        }
        match self {
            WorkloadKind::Pagefault => e::<PageFaultParams>(sets),
            WorkloadKind::Fork => e::<ForkParams>(sets),
            WorkloadKind::Exec => e::<ExecParams>(sets),
            WorkloadKind::Mmap => e::<MmapParams>(sets),
            WorkloadKind::Ctxsw => e::<CtxSwParams>(sets),
            WorkloadKind::Random => e::<RandomParams>(sets),
            WorkloadKind::Stream => e::<StreamParams>(sets),
            WorkloadKind::PointerChase => e::<PointerChaseParams>(sets),
            WorkloadKind::Server => e::<ServerParams>(sets),
            WorkloadKind::LspMicro => e::<LspMicroParams>(sets),
            WorkloadKind::Threads => e::<ThreadsParams>(sets),
        }
    }

    /// Builds the workload with `sets` (`KEY`, `VALUE` pairs, without the `workload.` prefix)
    /// applied over its defaults.
    pub fn build(self, seed: u64, sets: &[(String, String)]) -> Result<Workload, ConfigError> {
        Ok(match self {
            WorkloadKind::Pagefault => Workload::PageFault(PageFault::new(params(sets)?)),
            WorkloadKind::Fork => Workload::Fork(Fork::new(params(sets)?)),
            WorkloadKind::Exec => Workload::Exec(Exec::new(params(sets)?)),
            WorkloadKind::Mmap => Workload::Mmap(MmapChurn::new(params(sets)?)),
            WorkloadKind::Ctxsw => Workload::CtxSw(CtxSw::new(params(sets)?)),
            WorkloadKind::Random => Workload::Random(RandomAccess::new(params(sets)?, seed)),
            WorkloadKind::Stream => Workload::Stream(Stream::new(params(sets)?)),
            WorkloadKind::PointerChase => {
                Workload::PointerChase(PointerChase::new(params(sets)?, seed))
            }
            WorkloadKind::Server => Workload::Server(Server::new(params(sets)?, seed)),
            WorkloadKind::LspMicro => Workload::LspMicro(LspMicro::new(params(sets)?, seed)),
            WorkloadKind::Threads => Workload::Threads(Threads::new(params(sets)?, seed)),
        })
    }
}

/// How long a run is (`--length`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Length {
    /// The workload's defaults, no warm-up: quick, and first touches weigh heavily.
    #[default]
    Short,
    /// [`WorkloadKind::steady_state`]: longer, with a warm-up, counted in steady state.
    Steady,
}

/// A workload's steady-state length ([`WorkloadKind::steady_state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SteadyState {
    /// `workload.KEY=VALUE` settings, prefix stripped.
    pub sets: &'static [(&'static str, &'static str)],
    /// User accesses run before counting starts.
    pub warmup: u64,
}

impl SteadyState {
    /// The settings as owned pairs, for a [`crate::run::RunSpec`].
    pub fn owned_sets(&self) -> Vec<(String, String)> {
        self.sets.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())).collect()
    }
}

/// `T`'s defaults with `sets` applied, validated, and bounded by [`MAX_ESTIMATED_ACCESSES`].
fn params<T: Serialize + for<'de> Deserialize<'de> + Default + Validate>(
    sets: &[(String, String)],
) -> Result<T, ConfigError> {
    let p = config::set_all(T::default(), sets)?;
    p.validate()?;
    let accesses = p.estimated_accesses();
    if accesses > MAX_ESTIMATED_ACCESSES {
        return Err(ConfigError::Invalid(format!(
            "these parameters ask for about {accesses:.1e} simulated accesses, more than the \
             {:.1e} (2^46) allowed: over a month at tens of millions a second; lower the counts",
            MAX_ESTIMATED_ACCESSES as f64
        )));
    }
    Ok(p)
}

const PAGE: u64 = PageSize::Size4K.bytes();
/// The largest footprint a parameter may ask for: 2^26 pages (256 GiB), beyond any guest
/// memory a profile allows.
const MAX_PAGES: u64 = 1 << 26;
const RW: Perms = Perms::R.union(Perms::W);

/// A content token for a store: distinct per address and sequence number.
#[inline]
fn token(va: Gva, seq: u64) -> u64 {
    va.as_u64() ^ seq.rotate_left(40) ^ 0x5555_0000_0000_0001
}

/// Page `i` of the region at `base`.
#[inline]
fn page(base: Gva, i: u64) -> Gva {
    base.wrapping_add(i * PAGE)
}

/// Stores to the first `count` pages from `base`, resuming at `*done`; `false` if the time
/// slice ran out first.
fn touch<S: Scheme>(
    os: &mut Os<S>,
    base: Gva,
    count: u64,
    done: &mut u64,
    seq: u64,
) -> Result<bool, OsError> {
    while *done < count {
        if os.slice_left() == 0 {
            return Ok(false);
        }
        let va = page(base, *done);
        os.store(va, token(va, seq))?;
        *done += 1;
    }
    Ok(true)
}

/// Parameter checks beyond types.
pub trait Validate {
    /// An error naming the bad parameter, if any.
    fn validate(&self) -> Result<(), ConfigError>;

    /// About how many user accesses these parameters simulate (the kernel's come on top): what
    /// [`MAX_ESTIMATED_ACCESSES`] bounds and the binary warns about. 0 when unknown (a trace,
    /// whose length its file states).
    fn estimated_accesses(&self) -> u128 {
        0
    }
}

/// The most accesses a built-in workload's parameters may ask for: 2^46 (7 x 10^13), over a
/// month of simulation at tens of millions of accesses a second. Each parameter has its own
/// range; this bounds their product (`ctxsw.turns` x `accesses_per_turn`, `mmap.iterations` x
/// `pages`, ...).
pub const MAX_ESTIMATED_ACCESSES: u128 = 1 << 46;

/// `Err` unless `lo <= value <= hi`.
pub(crate) fn check_range(key: &str, value: u64, lo: u64, hi: u64) -> Result<(), ConfigError> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!("workload.{key} = {value} must be between {lo} and {hi}")))
    }
}

/// A workload ready to run.
#[derive(Debug, Clone)]
pub enum Workload {
    /// `pagefault`.
    PageFault(PageFault),
    /// `fork`.
    Fork(Fork),
    /// `exec`.
    Exec(Exec),
    /// `mmap`.
    Mmap(MmapChurn),
    /// `ctxsw`.
    CtxSw(CtxSw),
    /// `random`.
    Random(RandomAccess),
    /// `stream`.
    Stream(Stream),
    /// `pointer-chase`.
    PointerChase(PointerChase),
    /// `server`.
    Server(Server),
    /// `lsp-micro`.
    LspMicro(LspMicro),
    /// `threads`.
    Threads(Threads),
    /// Trace replay (`--trace`).
    Trace(TraceReplay),
}

/// Dispatches a call to the workload inside the enum (static dispatch: the hot loops stay
/// monomorphic in the scheme). Each workload's `run` is `#[inline(never)]`: its loop gets the
/// registers of a function of its own rather than sharing one with every other workload's, and
/// a change to one workload does not move another's hit path (BENCHMARKS.md, "The hit path").
macro_rules! dispatch {
    ($self:expr, $w:ident => $body:expr) => {
        match $self {
            Workload::PageFault($w) => $body,
            Workload::Fork($w) => $body,
            Workload::Exec($w) => $body,
            Workload::Mmap($w) => $body,
            Workload::CtxSw($w) => $body,
            Workload::Random($w) => $body,
            Workload::Stream($w) => $body,
            Workload::PointerChase($w) => $body,
            Workload::Server($w) => $body,
            Workload::LspMicro($w) => $body,
            Workload::Threads($w) => $body,
            Workload::Trace($w) => $body,
        }
    };
}

impl Workload {
    /// Creates the first process(es).
    pub fn start<S: Scheme>(&mut self, os: &mut Os<S>) -> Result<(), OsError> {
        dispatch!(self, w => w.start(os))
    }

    /// Runs the current process `pid` for one turn.
    pub fn run<S: Scheme>(&mut self, os: &mut Os<S>, pid: Pid) -> Result<Step, OsError> {
        dispatch!(self, w => w.run(os, pid))
    }

    /// The kernel killed `pid`.
    pub fn killed(&mut self, pid: Pid) {
        dispatch!(self, w => w.killed(pid))
    }

    /// Work done so far and in total, in the workload's own units.
    pub fn progress(&self) -> (u64, u64) {
        dispatch!(self, w => w.progress())
    }

    /// A trace replay's instructions and report section; `None` for the built-in workloads.
    pub fn trace_report(&self) -> Option<TraceReport> {
        match self {
            Workload::Trace(t) => Some(t.report()),
            _ => None,
        }
    }
}

/// Runs `workload` to completion: every process runs its turns under the round-robin scheduler
/// until none is left. With several CPUs they take turns of `smp.quantum` accesses each, round
/// robin, each running its own run queue. `progress` is called between turns with (done,
/// total).
pub fn drive<S: Scheme>(
    os: &mut Os<S>,
    workload: &mut Workload,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), OsError> {
    workload.start(os)?;
    // CPUs in a row that found nothing to run: a whole round of them ends the run.
    let mut idle = 0;
    while os.process_count() > 0 {
        let pid = match os.current() {
            Some(p) => Some(p),
            None => os.schedule()?,
        };
        match pid {
            Some(pid) => {
                idle = 0;
                match workload.run(os, pid) {
                    // The end of this CPU's turn only: its task goes on at its next turn.
                    Ok(Step::Preempted) if !os.slice_expired() => {}
                    Ok(Step::Preempted | Step::Yield) => {
                        os.schedule()?;
                    }
                    Ok(Step::Exit) => {
                        os.exit(pid)?;
                        os.schedule()?;
                    }
                    Err(OsError::Killed { pid, .. }) => {
                        workload.killed(pid);
                        os.schedule()?;
                    }
                    Err(e) => return Err(e),
                }
                let (done, total) = workload.progress();
                progress(done, total);
            }
            None => {
                idle += 1;
                if idle >= os.cpus() {
                    return Err(crate::guest::os::internal(format!(
                        "{} processes left but no CPU has one to run",
                        os.process_count()
                    )));
                }
            }
        }
        os.next_cpu();
    }
    let (_, total) = workload.progress();
    progress(total, total);
    Ok(())
}
