//! Single-process workloads: demand paging, mmap churn, random access, streaming, pointer
//! chasing and the LSP micro-benchmark.

use serde::{Deserialize, Serialize};

use super::{check_range, page, token, touch, Step, Validate, MAX_PAGES, PAGE, RW};
use crate::addr::Gva;
use crate::config::ConfigError;
use crate::guest::{Os, OsError, Pid};
use crate::machine::Scheme;
use crate::rng::Rng;

/// The most operations a parameter may ask for.
const MAX_OPS: u64 = 1 << 40;

// ----- pagefault ---------------------------------------------------------------------------------

/// Parameters of `pagefault`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageFaultParams {
    /// Fresh pages touched (each first touch is one demand fault).
    pub pages: u64,
    /// Touch with stores (demand-zero pages) rather than loads (the shared zero page).
    pub write: bool,
    /// Passes over the pages; passes after the first hit mapped pages.
    pub passes: u64,
}

impl Default for PageFaultParams {
    fn default() -> Self {
        PageFaultParams { pages: 16_384, write: true, passes: 1 }
    }
}

impl Validate for PageFaultParams {
    fn validate(&self) -> Result<(), ConfigError> {
        check_range("pages", self.pages, 1, MAX_PAGES)?;
        check_range("passes", self.passes, 1, 1 << 20)
    }

    fn estimated_accesses(&self) -> u128 {
        u128::from(self.pages) * u128::from(self.passes)
    }
}

/// `pagefault`: one process touches `pages` fresh pages.
#[derive(Debug, Clone)]
pub struct PageFault {
    params: PageFaultParams,
    base: Gva,
    done: u64,
}

impl PageFault {
    /// The workload with `params`.
    pub fn new(params: PageFaultParams) -> Self {
        PageFault { params, base: Gva::ZERO, done: 0 }
    }

    pub(super) fn start<S: Scheme>(&mut self, os: &mut Os<S>) -> Result<(), OsError> {
        let pid = os.spawn()?;
        self.base = os.mmap_data(pid, self.params.pages, RW)?;
        Ok(())
    }

    #[inline(never)]
    pub(super) fn run<S: Scheme>(&mut self, os: &mut Os<S>, _pid: Pid) -> Result<Step, OsError> {
        let total = self.params.pages * self.params.passes;
        while os.slice_left() > 0 {
            if self.done == total {
                return Ok(Step::Exit);
            }
            let va = page(self.base, self.done % self.params.pages);
            if self.params.write {
                os.store(va, token(va, self.done))?;
            } else {
                os.load(va)?;
            }
            self.done += 1;
        }
        Ok(Step::Preempted)
    }

    pub(super) fn killed(&mut self, _pid: Pid) {
        self.done = self.params.pages * self.params.passes;
    }

    pub(super) fn progress(&self) -> (u64, u64) {
        (self.done, self.params.pages * self.params.passes)
    }
}

// ----- mmap --------------------------------------------------------------------------------------

/// Parameters of `mmap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmapParams {
    /// mmap / touch / munmap rounds.
    pub iterations: u64,
    /// Pages per mapping.
    pub pages: u64,
}

impl Default for MmapParams {
    fn default() -> Self {
        MmapParams { iterations: 2_000, pages: 64 }
    }
}

impl Validate for MmapParams {
    fn validate(&self) -> Result<(), ConfigError> {
        check_range("iterations", self.iterations, 1, MAX_OPS)?;
        check_range("pages", self.pages, 1, MAX_PAGES)
    }

    fn estimated_accesses(&self) -> u128 {
        u128::from(self.iterations) * u128::from(self.pages)
    }
}

/// `mmap`: map, store to every page, unmap, repeat.
#[derive(Debug, Clone)]
pub struct MmapChurn {
    params: MmapParams,
    iteration: u64,
    /// The current mapping and the pages touched in it.
    mapping: Option<(Gva, u64)>,
}

impl MmapChurn {
    /// The workload with `params`.
    pub fn new(params: MmapParams) -> Self {
        MmapChurn { params, iteration: 0, mapping: None }
    }

    pub(super) fn start<S: Scheme>(&mut self, os: &mut Os<S>) -> Result<(), OsError> {
        os.spawn().map(|_| ())
    }

    #[inline(never)]
    pub(super) fn run<S: Scheme>(&mut self, os: &mut Os<S>, pid: Pid) -> Result<Step, OsError> {
        while os.slice_left() > 0 {
            match self.mapping {
                None if self.iteration == self.params.iterations => return Ok(Step::Exit),
                None => self.mapping = Some((os.mmap_data(pid, self.params.pages, RW)?, 0)),
                Some((base, touched)) if touched == self.params.pages => {
                    os.munmap(pid, base, self.params.pages)?;
                    self.mapping = None;
                    self.iteration += 1;
                }
                Some((base, touched)) => {
                    let va = page(base, touched);
                    os.store(va, token(va, self.iteration))?;
                    self.mapping = Some((base, touched + 1));
                }
            }
        }
        Ok(Step::Preempted)
    }

    pub(super) fn killed(&mut self, _pid: Pid) {
        self.iteration = self.params.iterations;
        self.mapping = None;
    }

    pub(super) fn progress(&self) -> (u64, u64) {
        (self.iteration, self.params.iterations)
    }
}

// ----- random ------------------------------------------------------------------------------------

/// Parameters of `random`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomParams {
    /// Footprint in 4 KiB pages (all stored to once first).
    pub pages: u64,
    /// Random updates after the first touches.
    pub updates: u64,
    /// Fraction of updates that store after their load (GUPS: 1).
    pub write_ratio: f64,
}

impl Default for RandomParams {
    fn default() -> Self {
        RandomParams { pages: 65_536, updates: 2_000_000, write_ratio: 0.5 }
    }
}

impl Validate for RandomParams {
    fn validate(&self) -> Result<(), ConfigError> {
        check_range("pages", self.pages, 1, MAX_PAGES)?;
        check_range("updates", self.updates, 0, MAX_OPS)?;
        check_ratio("write_ratio", self.write_ratio)
    }

    fn estimated_accesses(&self) -> u128 {
        // A load per update, and a store after a `write_ratio` of them.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let stores = (self.updates as f64 * self.write_ratio) as u128;
        u128::from(self.pages) + u128::from(self.updates) + stores
    }
}

pub(super) fn check_ratio(key: &str, r: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&r) {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!("workload.{key} = {r} must be between 0 and 1")))
    }
}

/// `random`: GUPS-like updates at random pages of a large footprint.
#[derive(Debug, Clone)]
pub struct RandomAccess {
    params: RandomParams,
    rng: Rng,
    base: Gva,
    touched: u64,
    updates: u64,
}

impl RandomAccess {
    /// The workload with `params`, randomised by `seed`.
    pub fn new(params: RandomParams, seed: u64) -> Self {
        RandomAccess { params, rng: Rng::new(seed, 1), base: Gva::ZERO, touched: 0, updates: 0 }
    }

    pub(super) fn start<S: Scheme>(&mut self, os: &mut Os<S>) -> Result<(), OsError> {
        let pid = os.spawn()?;
        self.base = os.mmap_data(pid, self.params.pages, RW)?;
        Ok(())
    }

    #[inline(never)]
    pub(super) fn run<S: Scheme>(&mut self, os: &mut Os<S>, _pid: Pid) -> Result<Step, OsError> {
        if !touch(os, self.base, self.params.pages, &mut self.touched, 0)? {
            return Ok(Step::Preempted);
        }
        while os.slice_left() > 0 {
            if self.updates == self.params.updates {
                return Ok(Step::Exit);
            }
            let r = self.rng.next_u64();
            // The high bits pick the page, the low ones an 8-byte word in it.
            let index =
                u64::try_from((u128::from(r) * u128::from(self.params.pages)) >> 64).unwrap_or(0);
            let va = page(self.base, index).wrapping_add(r & 0xff8);
            os.load(va)?;
            if self.rng.chance(self.params.write_ratio) {
                os.store(va, token(va, self.updates))?;
            }
            self.updates += 1;
        }
        Ok(Step::Preempted)
    }

    pub(super) fn killed(&mut self, _pid: Pid) {
        self.touched = self.params.pages;
        self.updates = self.params.updates;
    }

    pub(super) fn progress(&self) -> (u64, u64) {
        (self.touched + self.updates, self.params.pages + self.params.updates)
    }
}

// ----- stream ------------------------------------------------------------------------------------

/// Parameters of `stream`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamParams {
    /// Pages per array (three arrays).
    pub pages: u64,
    /// Passes of the triad.
    pub passes: u64,
    /// Bytes between consecutive accesses (a cache line).
    pub stride: u64,
}

impl Default for StreamParams {
    fn default() -> Self {
        StreamParams { pages: 4_096, passes: 4, stride: 64 }
    }
}

impl Validate for StreamParams {
    fn validate(&self) -> Result<(), ConfigError> {
        check_range("pages", self.pages, 1, MAX_PAGES / 3)?;
        check_range("passes", self.passes, 1, 1 << 20)?;
        check_range("stride", self.stride, 8, PAGE)
    }

    fn estimated_accesses(&self) -> u128 {
        // Every pass reads two arrays and writes the third, line by line (the first pass
        // demand-pages them).
        3 * u128::from(self.pages) * u128::from(self.passes) * u128::from(PAGE / self.stride.max(1))
    }
}

/// `stream`: `a[i] = b[i] + s * c[i]`, one access per stride.
#[derive(Debug, Clone)]
pub struct Stream {
    params: StreamParams,
    arrays: [Gva; 3],
    /// Element index over all passes.
    done: u64,
}

impl Stream {
    /// The workload with `params`.
    pub fn new(params: StreamParams) -> Self {
        Stream { params, arrays: [Gva::ZERO; 3], done: 0 }
    }

    fn per_pass(&self) -> u64 {
        self.params.pages * (PAGE / self.params.stride)
    }

    pub(super) fn start<S: Scheme>(&mut self, os: &mut Os<S>) -> Result<(), OsError> {
        let pid = os.spawn()?;
        for a in &mut self.arrays {
            *a = os.mmap_data(pid, self.params.pages, RW)?;
        }
        Ok(())
    }

    #[inline(never)]
    pub(super) fn run<S: Scheme>(&mut self, os: &mut Os<S>, _pid: Pid) -> Result<Step, OsError> {
        let per_pass = self.per_pass();
        let total = per_pass * self.params.passes;
        let [a, b, c] = self.arrays;
        let stride = self.params.stride;
        let pass_bytes = per_pass * stride;
        while os.slice_left() > 0 {
            if self.done == total {
                return Ok(Step::Exit);
            }
            // The rest of this pass (or of the run), element by element, with the offset
            // stepped rather than divided out of `done` each time.
            let mut offset = (self.done % per_pass) * stride;
            let end =
                pass_bytes.min(offset.saturating_add((total - self.done).saturating_mul(stride)));
            while offset < end && os.slice_left() > 0 {
                let x = os.load(b.wrapping_add(offset))?;
                let y = os.load(c.wrapping_add(offset))?;
                os.store(a.wrapping_add(offset), x.wrapping_add(y.wrapping_mul(3)) | 1)?;
                self.done += 1;
                offset += stride;
            }
        }
        Ok(Step::Preempted)
    }

    pub(super) fn killed(&mut self, _pid: Pid) {
        self.done = self.per_pass() * self.params.passes;
    }

    pub(super) fn progress(&self) -> (u64, u64) {
        (self.done, self.per_pass() * self.params.passes)
    }
}

// ----- pointer-chase -----------------------------------------------------------------------------

/// Parameters of `pointer-chase`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointerChaseParams {
    /// Pages in the cycle.
    pub pages: u64,
    /// Dependent loads after the pages are first stored to.
    pub loads: u64,
}

impl Default for PointerChaseParams {
    fn default() -> Self {
        PointerChaseParams { pages: 65_536, loads: 2_000_000 }
    }
}

impl Validate for PointerChaseParams {
    fn validate(&self) -> Result<(), ConfigError> {
        // The permutation is held in memory: 4 bytes per page.
        check_range("pages", self.pages, 2, 1 << 24)?;
        check_range("loads", self.loads, 0, MAX_OPS)
    }

    fn estimated_accesses(&self) -> u128 {
        u128::from(self.pages) + u128::from(self.loads)
    }
}

/// `pointer-chase`: loads follow a random cyclic permutation (Sattolo's algorithm), so every
/// load depends on the previous one and no two consecutive ones share a page.
#[derive(Debug, Clone)]
pub struct PointerChase {
    params: PointerChaseParams,
    next: Vec<u32>,
    base: Gva,
    touched: u64,
    loads: u64,
    at: u32,
}

impl PointerChase {
    /// The workload with `params`, its cycle drawn from `seed`.
    pub fn new(params: PointerChaseParams, seed: u64) -> Self {
        let n = u32::try_from(params.pages).unwrap_or(u32::MAX);
        let mut next: Vec<u32> = (0..n).collect();
        let mut rng = Rng::new(seed, 2);
        // Sattolo: swapping with a strictly earlier index yields a single cycle.
        for i in (1..next.len()).rev() {
            let j = usize::try_from(rng.below(i as u64)).unwrap_or(0);
            next.swap(i, j);
        }
        PointerChase { params, next, base: Gva::ZERO, touched: 0, loads: 0, at: 0 }
    }

    pub(super) fn start<S: Scheme>(&mut self, os: &mut Os<S>) -> Result<(), OsError> {
        let pid = os.spawn()?;
        self.base = os.mmap_data(pid, self.params.pages, RW)?;
        Ok(())
    }

    #[inline(never)]
    pub(super) fn run<S: Scheme>(&mut self, os: &mut Os<S>, _pid: Pid) -> Result<Step, OsError> {
        if !touch(os, self.base, self.params.pages, &mut self.touched, 0)? {
            return Ok(Step::Preempted);
        }
        while os.slice_left() > 0 {
            if self.loads == self.params.loads {
                return Ok(Step::Exit);
            }
            os.load(page(self.base, u64::from(self.at)))?;
            self.at = self.next.get(self.at as usize).copied().unwrap_or(0);
            self.loads += 1;
        }
        Ok(Step::Preempted)
    }

    pub(super) fn killed(&mut self, _pid: Pid) {
        self.touched = self.params.pages;
        self.loads = self.params.loads;
    }

    pub(super) fn progress(&self) -> (u64, u64) {
        (self.touched + self.loads, self.params.pages + self.params.loads)
    }
}

// ----- lsp-micro ---------------------------------------------------------------------------------

/// Parameters of `lsp-micro` (defaults: the LSP paper's Fig. 5 set-up).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LspMicroParams {
    /// Pages operated on, in order.
    pub pages: u64,
    /// Operations.
    pub operations: u64,
    /// Fraction of operations that modify the page's PTE (and flush it); exactly
    /// `floor(operations * modify_ratio)` do, spread evenly.
    pub modify_ratio: f64,
}

impl Default for LspMicroParams {
    fn default() -> Self {
        LspMicroParams { pages: 1_024, operations: 100_000, modify_ratio: 0.5 }
    }
}

impl Validate for LspMicroParams {
    fn validate(&self) -> Result<(), ConfigError> {
        check_range("pages", self.pages, 1, MAX_PAGES)?;
        check_range("operations", self.operations, 0, MAX_OPS)?;
        check_ratio("modify_ratio", self.modify_ratio)
    }

    fn estimated_accesses(&self) -> u128 {
        // The first touch of every page, then the operations that access (the others modify).
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let modifying = ((self.operations as f64) * self.modify_ratio + 1e-9).floor() as u128;
        u128::from(self.pages) + u128::from(self.operations) - modifying
    }
}

/// `lsp-micro`: operation `i` targets page `i mod pages`; it either loads from the page or has
/// the kernel move the page to a fresh frame (one PTE store, one single-address flush).
#[derive(Debug, Clone)]
pub struct LspMicro {
    params: LspMicroParams,
    base: Gva,
    touched: u64,
    done: u64,
}

impl LspMicro {
    /// The workload with `params` (the seed is unused: the operation order is fixed).
    pub fn new(params: LspMicroParams, _seed: u64) -> Self {
        LspMicro { params, base: Gva::ZERO, touched: 0, done: 0 }
    }

    /// Whether operation `i` modifies: the evenly spread `floor(n * ratio)` of them.
    pub fn modifies(&self, i: u64) -> bool {
        let r = self.params.modify_ratio;
        // Exact for the ratios users type (0.1, 0.25, ...) at up to 2^40 operations.
        let before = ((i as f64) * r + 1e-9).floor();
        let after = (((i + 1) as f64) * r + 1e-9).floor();
        after > before
    }

    pub(super) fn start<S: Scheme>(&mut self, os: &mut Os<S>) -> Result<(), OsError> {
        let pid = os.spawn()?;
        self.base = os.mmap_data(pid, self.params.pages, RW)?;
        Ok(())
    }

    #[inline(never)]
    pub(super) fn run<S: Scheme>(&mut self, os: &mut Os<S>, pid: Pid) -> Result<Step, OsError> {
        if !touch(os, self.base, self.params.pages, &mut self.touched, 0)? {
            return Ok(Step::Preempted);
        }
        while os.slice_left() > 0 {
            if self.done == self.params.operations {
                return Ok(Step::Exit);
            }
            let va = page(self.base, self.done % self.params.pages);
            if self.modifies(self.done) {
                os.migrate_page(pid, va)?;
            } else {
                os.load(va)?;
            }
            self.done += 1;
        }
        Ok(Step::Preempted)
    }

    pub(super) fn killed(&mut self, _pid: Pid) {
        self.touched = self.params.pages;
        self.done = self.params.operations;
    }

    pub(super) fn progress(&self) -> (u64, u64) {
        (self.touched + self.done, self.params.pages + self.params.operations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsp_micro_modifies_exactly_the_requested_fraction() {
        for (ratio, expect) in
            [(0.0, 0), (0.1, 10_000), (0.25, 25_000), (0.5, 50_000), (1.0, 100_000)]
        {
            let w = LspMicro::new(LspMicroParams { modify_ratio: ratio, ..Default::default() }, 0);
            let n = (0..100_000).filter(|&i| w.modifies(i)).count();
            assert_eq!(n, expect, "ratio {ratio}");
        }
    }

    #[test]
    fn pointer_chase_is_one_cycle_through_every_page() {
        let w = PointerChase::new(PointerChaseParams { pages: 1000, loads: 0 }, 5);
        let mut at = 0u32;
        let mut seen = vec![false; 1000];
        for _ in 0..1000 {
            assert!(!seen[at as usize], "page {at} visited twice before the cycle closed");
            seen[at as usize] = true;
            at = w.next[at as usize];
        }
        assert_eq!(at, 0);
    }

    #[test]
    fn parameters_out_of_range_are_rejected_by_name() {
        let e = RandomParams { write_ratio: 1.5, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("workload.write_ratio"), "{e}");
        let e = PageFaultParams { pages: 0, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("workload.pages"), "{e}");
    }
}
