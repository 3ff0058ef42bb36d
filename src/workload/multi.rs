//! Multi-process workloads: fork with copy-on-write, exec-heavy process churn, context-switch
//! ping-pong and a server mix.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::single::check_ratio;
use super::{check_range, page, token, touch, Step, Validate, MAX_PAGES, RW};
use crate::addr::Gva;
use crate::config::ConfigError;
use crate::guest::{Os, OsError, Pid};
use crate::machine::Scheme;
use crate::rng::Rng;

// ----- fork --------------------------------------------------------------------------------------

/// Parameters of `fork`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkParams {
    /// Heap pages the parent writes before forking (all become copy-on-write).
    pub heap_pages: u64,
    /// Children forked, one after another.
    pub forks: u64,
    /// Heap pages each child writes (each a copy-on-write copy), spread over the heap.
    pub child_writes: u64,
    /// Heap pages each child reads.
    pub child_reads: u64,
}

impl Default for ForkParams {
    fn default() -> Self {
        ForkParams { heap_pages: 1_024, forks: 100, child_writes: 64, child_reads: 256 }
    }
}

impl Validate for ForkParams {
    fn validate(&self) -> Result<(), ConfigError> {
        check_range("heap_pages", self.heap_pages, 1, MAX_PAGES)?;
        check_range("forks", self.forks, 0, 1 << 24)?;
        check_range("child_writes", self.child_writes, 0, self.heap_pages)?;
        check_range("child_reads", self.child_reads, 0, self.heap_pages)
    }

    fn estimated_accesses(&self) -> u128 {
        u128::from(self.heap_pages)
            + u128::from(self.forks)
                * (u128::from(self.child_writes) + u128::from(self.child_reads))
    }
}

/// `fork`: lmbench's fork + exit, with the child writing part of the inherited heap.
#[derive(Debug, Clone)]
pub struct Fork {
    params: ForkParams,
    parent: Option<Pid>,
    heap: Gva,
    written: u64,
    forked: u64,
    /// The live child and its progress (writes then reads).
    child: Option<(Pid, u64)>,
}

impl Fork {
    /// The workload with `params`.
    pub fn new(params: ForkParams) -> Self {
        Fork { params, parent: None, heap: Gva::ZERO, written: 0, forked: 0, child: None }
    }

    pub(super) fn start<S: Scheme>(&mut self, os: &mut Os<S>) -> Result<(), OsError> {
        let pid = os.spawn()?;
        os.brk(pid, self.params.heap_pages)?;
        self.heap = os.layout().heap;
        self.parent = Some(pid);
        Ok(())
    }

    #[inline(never)]
    pub(super) fn run<S: Scheme>(&mut self, os: &mut Os<S>, pid: Pid) -> Result<Step, OsError> {
        if Some(pid) == self.parent {
            if !touch(os, self.heap, self.params.heap_pages, &mut self.written, 0)? {
                return Ok(Step::Preempted);
            }
            if self.child.is_some() {
                return Ok(Step::Yield); // wait()
            }
            if self.forked == self.params.forks {
                return Ok(Step::Exit);
            }
            let child = os.fork(pid)?;
            self.forked += 1;
            self.child = Some((child, 0));
            return Ok(Step::Yield);
        }
        let Some((child, mut done)) = self.child.filter(|(c, _)| *c == pid) else {
            return Ok(Step::Exit);
        };
        let (w, r) = (self.params.child_writes, self.params.child_reads);
        let stride = |n: u64| (self.params.heap_pages / n.max(1)).max(1);
        while done < w + r {
            if os.slice_left() == 0 {
                self.child = Some((child, done));
                return Ok(Step::Preempted);
            }
            if done < w {
                let va = page(self.heap, done * stride(w));
                os.store(va, token(va, self.forked))?;
            } else {
                os.load(page(self.heap, (done - w) * stride(r)))?;
            }
            done += 1;
        }
        self.child = None;
        Ok(Step::Exit)
    }

    pub(super) fn killed(&mut self, pid: Pid) {
        if self.child.is_some_and(|(c, _)| c == pid) {
            self.child = None;
        } else if Some(pid) == self.parent {
            self.forked = self.params.forks;
        }
    }

    pub(super) fn progress(&self) -> (u64, u64) {
        (self.forked, self.params.forks)
    }
}

// ----- exec --------------------------------------------------------------------------------------

/// Parameters of `exec`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecParams {
    /// Short-lived processes run, one after another.
    pub processes: u64,
    /// Fresh pages each one stores to and reads back.
    pub pages: u64,
    /// Heap pages of the shell that forks them.
    pub shell_pages: u64,
}

impl Default for ExecParams {
    fn default() -> Self {
        ExecParams { processes: 300, pages: 32, shell_pages: 64 }
    }
}

impl Validate for ExecParams {
    fn validate(&self) -> Result<(), ConfigError> {
        check_range("processes", self.processes, 0, 1 << 24)?;
        check_range("pages", self.pages, 1, MAX_PAGES)?;
        check_range("shell_pages", self.shell_pages, 1, MAX_PAGES)
    }

    fn estimated_accesses(&self) -> u128 {
        // The shell's heap once, then each child stores to its pages and reads them back.
        u128::from(self.shell_pages) + u128::from(self.processes) * 2 * u128::from(self.pages)
    }
}

/// Where an `exec` child is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExecChild {
    /// Forked, not yet exec'd.
    Forked,
    /// Running its program: its mapping and pages touched (stores, then loads).
    Running(Gva, u64),
}

/// `exec`: a shell forks, the child execs a program that touches a few fresh pages and exits.
#[derive(Debug, Clone)]
pub struct Exec {
    params: ExecParams,
    shell: Option<Pid>,
    written: u64,
    started: u64,
    child: Option<(Pid, ExecChild)>,
}

impl Exec {
    /// The workload with `params`.
    pub fn new(params: ExecParams) -> Self {
        Exec { params, shell: None, written: 0, started: 0, child: None }
    }

    pub(super) fn start<S: Scheme>(&mut self, os: &mut Os<S>) -> Result<(), OsError> {
        let pid = os.spawn()?;
        os.brk(pid, self.params.shell_pages)?;
        self.shell = Some(pid);
        Ok(())
    }

    #[inline(never)]
    pub(super) fn run<S: Scheme>(&mut self, os: &mut Os<S>, pid: Pid) -> Result<Step, OsError> {
        if Some(pid) == self.shell {
            let heap = os.layout().heap;
            if !touch(os, heap, self.params.shell_pages, &mut self.written, 0)? {
                return Ok(Step::Preempted);
            }
            if self.child.is_some() {
                return Ok(Step::Yield);
            }
            if self.started == self.params.processes {
                return Ok(Step::Exit);
            }
            let child = os.fork(pid)?;
            self.started += 1;
            self.child = Some((child, ExecChild::Forked));
            return Ok(Step::Yield);
        }
        let Some((child, mut state)) = self.child.filter(|(c, _)| *c == pid) else {
            return Ok(Step::Exit);
        };
        let n = self.params.pages;
        loop {
            state = match state {
                ExecChild::Forked => {
                    os.exec(pid)?;
                    ExecChild::Running(os.mmap_data(pid, n, RW)?, 0)
                }
                ExecChild::Running(_, done) if done == 2 * n => {
                    self.child = None;
                    return Ok(Step::Exit);
                }
                ExecChild::Running(base, done) => {
                    if os.slice_left() == 0 {
                        self.child = Some((child, state));
                        return Ok(Step::Preempted);
                    }
                    if done < n {
                        let va = page(base, done);
                        os.store(va, token(va, self.started))?;
                    } else {
                        os.load(page(base, done - n))?;
                    }
                    ExecChild::Running(base, done + 1)
                }
            };
        }
    }

    pub(super) fn killed(&mut self, pid: Pid) {
        if self.child.is_some_and(|(c, _)| c == pid) {
            self.child = None;
        } else if Some(pid) == self.shell {
            self.started = self.params.processes;
        }
    }

    pub(super) fn progress(&self) -> (u64, u64) {
        (self.started, self.params.processes)
    }
}

// ----- ctxsw -------------------------------------------------------------------------------------

/// Parameters of `ctxsw`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtxSwParams {
    /// Processes taking turns.
    pub processes: u64,
    /// Working-set pages of each.
    pub pages: u64,
    /// Turns each process takes.
    pub turns: u64,
    /// Accesses per turn, cycling over the working set (alternating loads and stores).
    pub accesses_per_turn: u64,
}

impl Default for CtxSwParams {
    fn default() -> Self {
        CtxSwParams { processes: 8, pages: 16, turns: 2_500, accesses_per_turn: 64 }
    }
}

impl Validate for CtxSwParams {
    fn validate(&self) -> Result<(), ConfigError> {
        check_range("processes", self.processes, 1, 1 << 16)?;
        check_range("pages", self.pages, 1, MAX_PAGES)?;
        check_range("turns", self.turns, 0, 1 << 40)?;
        check_range("accesses_per_turn", self.accesses_per_turn, 1, 1 << 30)
    }

    fn estimated_accesses(&self) -> u128 {
        // Each process fills its pages, then takes every turn.
        u128::from(self.processes)
            * (u128::from(self.pages) + u128::from(self.turns) * u128::from(self.accesses_per_turn))
    }
}

/// One ping-pong process: its working set and turns taken.
#[derive(Clone, Copy, Debug)]
struct Player {
    base: Option<Gva>,
    touched: u64,
    turns: u64,
    /// Accesses made in the current turn.
    in_turn: u64,
}

/// `ctxsw`: processes take turns, each touching its small working set then blocking, so the
/// run is dominated by context switches (lmbench `lat_ctx`).
#[derive(Debug, Clone)]
pub struct CtxSw {
    params: CtxSwParams,
    players: BTreeMap<Pid, Player>,
    turns_done: u64,
}

impl CtxSw {
    /// The workload with `params`.
    pub fn new(params: CtxSwParams) -> Self {
        CtxSw { params, players: BTreeMap::new(), turns_done: 0 }
    }

    pub(super) fn start<S: Scheme>(&mut self, os: &mut Os<S>) -> Result<(), OsError> {
        for _ in 0..self.params.processes {
            let pid = os.spawn()?;
            self.players.insert(pid, Player { base: None, touched: 0, turns: 0, in_turn: 0 });
        }
        Ok(())
    }

    #[inline(never)]
    pub(super) fn run<S: Scheme>(&mut self, os: &mut Os<S>, pid: Pid) -> Result<Step, OsError> {
        let Some(mut me) = self.players.get(&pid).copied() else { return Ok(Step::Exit) };
        let p = self.params;
        let step = 'turn: {
            let base = match me.base {
                Some(b) => b,
                None => {
                    let b = os.mmap_data(pid, p.pages, RW)?;
                    me.base = Some(b);
                    b
                }
            };
            if !touch(os, base, p.pages, &mut me.touched, 0)? {
                break 'turn Step::Preempted;
            }
            if me.turns == p.turns {
                break 'turn Step::Exit;
            }
            while me.in_turn < p.accesses_per_turn {
                if os.slice_left() == 0 {
                    break 'turn Step::Preempted;
                }
                let va = page(base, (me.turns * p.accesses_per_turn + me.in_turn) % p.pages);
                if me.in_turn % 2 == 0 {
                    os.load(va)?;
                } else {
                    os.store(va, token(va, me.turns))?;
                }
                me.in_turn += 1;
            }
            me.in_turn = 0;
            me.turns += 1;
            self.turns_done += 1;
            Step::Yield
        };
        self.players.insert(pid, me);
        Ok(step)
    }

    pub(super) fn killed(&mut self, pid: Pid) {
        if let Some(me) = self.players.remove(&pid) {
            self.turns_done += self.params.turns - me.turns;
        }
    }

    pub(super) fn progress(&self) -> (u64, u64) {
        (self.turns_done, self.params.turns * self.params.processes)
    }
}

// ----- server ------------------------------------------------------------------------------------

/// Parameters of `server`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerParams {
    /// Worker processes forked by the master.
    pub workers: u64,
    /// Pages of the region the master fills before forking (read-mostly, shared copy-on-write).
    pub shared_pages: u64,
    /// Requests each worker serves.
    pub requests: u64,
    /// Pages of the buffer mapped, written and unmapped per request.
    pub request_pages: u64,
    /// Random shared pages read per request.
    pub shared_reads: u64,
    /// Fraction of requests that also write one shared page (a copy-on-write break at first).
    pub shared_write_ratio: f64,
}

impl Default for ServerParams {
    fn default() -> Self {
        ServerParams {
            workers: 8,
            shared_pages: 2_048,
            requests: 500,
            request_pages: 16,
            shared_reads: 64,
            shared_write_ratio: 0.05,
        }
    }
}

impl Validate for ServerParams {
    fn validate(&self) -> Result<(), ConfigError> {
        check_range("workers", self.workers, 1, 1 << 16)?;
        check_range("shared_pages", self.shared_pages, 1, MAX_PAGES)?;
        check_range("requests", self.requests, 0, 1 << 40)?;
        check_range("request_pages", self.request_pages, 1, MAX_PAGES)?;
        check_range("shared_reads", self.shared_reads, 0, 1 << 30)?;
        check_ratio("shared_write_ratio", self.shared_write_ratio)
    }

    fn estimated_accesses(&self) -> u128 {
        // The master fills the region; every worker serves every request (the occasional
        // shared write is left out).
        u128::from(self.shared_pages)
            + u128::from(self.workers)
                * u128::from(self.requests)
                * (u128::from(self.request_pages) + u128::from(self.shared_reads))
    }
}

/// A worker: requests served and progress through the current one.
#[derive(Clone, Debug)]
struct Worker {
    served: u64,
    buffer: Option<Gva>,
    step: u64,
    rng: Rng,
}

/// `server`: a master fills a shared region and forks workers; each request maps a buffer,
/// writes it, reads random shared pages, sometimes writes one, unmaps the buffer and blocks.
#[derive(Debug, Clone)]
pub struct Server {
    params: ServerParams,
    seed: u64,
    master: Option<Pid>,
    shared: Gva,
    filled: u64,
    forked: u64,
    workers: BTreeMap<Pid, Worker>,
    served: u64,
}

impl Server {
    /// The workload with `params`; request contents are drawn from `seed`.
    pub fn new(params: ServerParams, seed: u64) -> Self {
        Server {
            params,
            seed,
            master: None,
            shared: Gva::ZERO,
            filled: 0,
            forked: 0,
            workers: BTreeMap::new(),
            served: 0,
        }
    }

    pub(super) fn start<S: Scheme>(&mut self, os: &mut Os<S>) -> Result<(), OsError> {
        let pid = os.spawn()?;
        self.shared = os.mmap_data(pid, self.params.shared_pages, RW)?;
        self.master = Some(pid);
        Ok(())
    }

    #[inline(never)]
    pub(super) fn run<S: Scheme>(&mut self, os: &mut Os<S>, pid: Pid) -> Result<Step, OsError> {
        let p = self.params;
        if Some(pid) == self.master {
            if !touch(os, self.shared, p.shared_pages, &mut self.filled, 0)? {
                return Ok(Step::Preempted);
            }
            while self.forked < p.workers {
                let w = os.fork(pid)?;
                let rng = Rng::new(self.seed, 100 + self.forked);
                self.workers.insert(w, Worker { served: 0, buffer: None, step: 0, rng });
                self.forked += 1;
            }
            // The master waits for its workers.
            return Ok(if self.workers.is_empty() { Step::Exit } else { Step::Yield });
        }
        let Some(mut w) = self.workers.remove(&pid) else { return Ok(Step::Exit) };
        let result = self.serve(os, pid, &mut w);
        match result {
            Ok(Step::Exit) => {}
            Ok(_) => {
                self.workers.insert(pid, w);
            }
            Err(OsError::Killed { .. }) => {}
            Err(_) => {
                self.workers.insert(pid, w);
            }
        }
        result
    }

    fn serve<S: Scheme>(
        &mut self,
        os: &mut Os<S>,
        pid: Pid,
        w: &mut Worker,
    ) -> Result<Step, OsError> {
        let p = self.params;
        if w.served == p.requests {
            return Ok(Step::Exit);
        }
        let buffer = match w.buffer {
            Some(b) => b,
            None => {
                let b = os.mmap_data(pid, p.request_pages, RW)?;
                w.buffer = Some(b);
                w.step = 0;
                b
            }
        };
        while w.step < p.request_pages + p.shared_reads + 1 {
            if os.slice_left() == 0 {
                return Ok(Step::Preempted);
            }
            if w.step < p.request_pages {
                let va = page(buffer, w.step);
                os.store(va, token(va, w.served))?;
            } else if w.step < p.request_pages + p.shared_reads {
                os.load(page(self.shared, w.rng.below(p.shared_pages)))?;
            } else if w.rng.chance(p.shared_write_ratio) {
                let va = page(self.shared, w.rng.below(p.shared_pages));
                os.store(va, token(va, w.served))?;
            }
            w.step += 1;
        }
        os.munmap(pid, buffer, p.request_pages)?;
        w.buffer = None;
        w.served += 1;
        self.served += 1;
        Ok(Step::Yield)
    }

    pub(super) fn killed(&mut self, pid: Pid) {
        if let Some(w) = self.workers.remove(&pid) {
            self.served += self.params.requests - w.served;
        } else if Some(pid) == self.master {
            self.forked = self.params.workers;
        }
    }

    pub(super) fn progress(&self) -> (u64, u64) {
        (self.served, self.params.requests * self.params.workers)
    }
}
