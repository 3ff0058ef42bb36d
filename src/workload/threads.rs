//! `threads`: one multi-threaded process. Its threads share one address space: they read and
//! write a shared region at random and now and then map a private buffer, write it and unmap it
//! — the pattern of a threaded server's per-request allocations. Each unmap changes an address
//! space the other threads are using, so with several vCPUs it is a TLB shootdown.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::single::check_ratio;
use super::{check_range, page, token, touch, Step, Validate, MAX_PAGES, RW};
use crate::addr::Gva;
use crate::config::ConfigError;
use crate::guest::{Os, OsError, Pid};
use crate::machine::Scheme;
use crate::rng::Rng;

/// Parameters of `threads`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThreadsParams {
    /// Worker threads the main thread creates (it then waits for them).
    pub threads: u64,
    /// Pages of the shared region, written once by the main thread.
    pub pages: u64,
    /// Accesses each worker makes to the shared region.
    pub accesses: u64,
    /// Fraction of those accesses that are stores.
    pub write_ratio: f64,
    /// Shared-region accesses between two private buffers of a worker (0: no buffers).
    pub buffer_every: u64,
    /// Pages of a private buffer: mapped, written page by page, unmapped.
    pub buffer_pages: u64,
}

impl Default for ThreadsParams {
    fn default() -> Self {
        ThreadsParams {
            threads: 4,
            pages: 4_096,
            accesses: 100_000,
            write_ratio: 0.3,
            buffer_every: 1_000,
            buffer_pages: 8,
        }
    }
}

impl Validate for ThreadsParams {
    fn validate(&self) -> Result<(), ConfigError> {
        check_range("threads", self.threads, 1, 4_096)?;
        check_range("pages", self.pages, 1, MAX_PAGES)?;
        check_range("accesses", self.accesses, 0, 1 << 40)?;
        check_ratio("write_ratio", self.write_ratio)?;
        check_range("buffer_every", self.buffer_every, 0, 1 << 40)?;
        check_range("buffer_pages", self.buffer_pages, 1, MAX_PAGES)
    }

    fn estimated_accesses(&self) -> u128 {
        let buffers = self.accesses.checked_div(self.buffer_every).unwrap_or(0);
        u128::from(self.pages)
            + u128::from(self.threads)
                * (u128::from(self.accesses) + u128::from(buffers) * u128::from(self.buffer_pages))
    }
}

/// A worker's progress.
#[derive(Clone, Debug)]
struct Worker {
    done: u64,
    /// The buffer being written, and the pages written so far.
    buffer: Option<(Gva, u64)>,
    rng: Rng,
}

/// `threads`: see the module documentation.
#[derive(Debug, Clone)]
pub struct Threads {
    params: ThreadsParams,
    seed: u64,
    main: Option<Pid>,
    shared: Gva,
    filled: u64,
    created: u64,
    workers: BTreeMap<Pid, Worker>,
    finished: u64,
}

impl Threads {
    /// The workload with `params`; access patterns are drawn from `seed`.
    pub fn new(params: ThreadsParams, seed: u64) -> Self {
        Threads {
            params,
            seed,
            main: None,
            shared: Gva::ZERO,
            filled: 0,
            created: 0,
            workers: BTreeMap::new(),
            finished: 0,
        }
    }

    pub(super) fn start<S: Scheme>(&mut self, os: &mut Os<S>) -> Result<(), OsError> {
        let pid = os.spawn()?;
        self.shared = os.mmap_data(pid, self.params.pages, RW)?;
        self.main = Some(pid);
        Ok(())
    }

    #[inline(never)]
    pub(super) fn run<S: Scheme>(&mut self, os: &mut Os<S>, pid: Pid) -> Result<Step, OsError> {
        let p = self.params;
        if Some(pid) == self.main {
            if !touch(os, self.shared, p.pages, &mut self.filled, 0)? {
                return Ok(Step::Preempted);
            }
            while self.created < p.threads {
                let t = os.spawn_thread(pid)?;
                let rng = Rng::new(self.seed, 200 + self.created);
                self.workers.insert(t, Worker { done: 0, buffer: None, rng });
                self.created += 1;
            }
            // pthread_join: wait for every worker.
            return Ok(if self.workers.is_empty() { Step::Exit } else { Step::Yield });
        }
        let Some(mut w) = self.workers.remove(&pid) else { return Ok(Step::Exit) };
        let result = self.work(os, pid, &mut w);
        if !matches!(result, Ok(Step::Exit) | Err(OsError::Killed { .. })) {
            self.workers.insert(pid, w);
        } else {
            self.finished += 1;
        }
        result
    }

    fn work<S: Scheme>(
        &mut self,
        os: &mut Os<S>,
        pid: Pid,
        w: &mut Worker,
    ) -> Result<Step, OsError> {
        let p = self.params;
        while w.done < p.accesses || w.buffer.is_some() {
            if os.slice_left() == 0 {
                return Ok(Step::Preempted);
            }
            if let Some((buffer, written)) = w.buffer {
                if written < p.buffer_pages {
                    let va = page(buffer, written);
                    os.store(va, token(va, w.done))?;
                    w.buffer = Some((buffer, written + 1));
                } else {
                    os.munmap(pid, buffer, p.buffer_pages)?;
                    w.buffer = None;
                }
                continue;
            }
            let va = page(self.shared, w.rng.below(p.pages));
            if w.rng.chance(p.write_ratio) {
                os.store(va, token(va, w.done))?;
            } else {
                os.load(va)?;
            }
            w.done += 1;
            if p.buffer_every > 0 && w.done % p.buffer_every == 0 {
                w.buffer = Some((os.mmap_data(pid, p.buffer_pages, RW)?, 0));
            }
        }
        Ok(Step::Exit)
    }

    pub(super) fn killed(&mut self, pid: Pid) {
        if self.workers.remove(&pid).is_some() {
            self.finished += 1;
        } else if Some(pid) == self.main {
            self.created = self.params.threads;
        }
    }

    pub(super) fn progress(&self) -> (u64, u64) {
        let done: u64 = self.workers.values().map(|w| w.done).sum();
        let p = self.params;
        (self.finished * p.accesses + done, p.threads * p.accesses)
    }
}
