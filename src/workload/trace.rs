//! Trace replay: every stream of every trace becomes a guest process whose accesses go through
//! the guest kernel (demand paging, the zero page, copy-on-write of a first-read page) under
//! the round-robin scheduler.
//!
//! A stream's process starts with one anonymous VMA per run of touched pages (its footprint,
//! from the trace's directory), readable, writable if the trace stores there, executable if it
//! fetches there, so every access demand-pages instead of faulting outside the VMAs. Addresses
//! beyond the profile's user half are relocated by [`Relocation`]. All streams start at once:
//! the forks, execs and exits between a recorded program's processes are not replayed.
//!
//! Compute cycles are the replayed instructions (the gaps say how many ran between accesses)
//! times `costs.cycles_per_instruction`, the one compute model; the built-in workloads estimate
//! their instructions as `costs.instructions_per_access` per user access instead.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{token, Step, Validate};
use crate::addr::Gva;
use crate::config::{self, ConfigError};
use crate::guest::{HitRun, Os, OsError, Pid, Vma};
use crate::machine::{Scheme, SimError};
use crate::paging::Perms;
use crate::report::WarmupReport;
use crate::trace::compact::{PageRun, StreamInfo};
use crate::trace::decode::{Prefetch, Reader, Window};
use crate::trace::packed::{plain_access, Packed, ADDR_MASK, FETCH, PACKED_RECORD_BYTES, STORE};
use crate::trace::{self, Kind, PageFlags, ReadOptions, Record, TraceError, PAGE_BYTES};

/// Relocation moves whole regions of this size (1 GiB: what one entry of the level above the
/// leaf tables' parents maps on every 4 KiB-page format), so everything below it is kept.
pub const REGION_BYTES: u64 = 1 << 30;
const REGION_SHIFT: u32 = 30;
const REGION_PAGES: u64 = REGION_BYTES / PAGE_BYTES;

/// Parameters of a trace replay (`--set workload.KEY=VALUE`; `--skip`, `--limit`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceParams {
    /// Records of each stream skipped before replay starts (not simulated at all).
    pub skip: u64,
    /// Records of each stream replayed at most after the skip (0: all).
    pub limit: u64,
}

impl Validate for TraceParams {
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

impl TraceParams {
    /// The records of each stream these parameters replay.
    pub fn window(&self) -> Window {
        Window { skip: self.skip, limit: if self.limit == 0 { u64::MAX } else { self.limit } }
    }

    /// The defaults with `sets` (`KEY`, `VALUE` pairs) applied.
    pub fn with_sets(sets: &[(String, String)]) -> Result<Self, ConfigError> {
        if sets.iter().any(|(k, _)| k == "cycles_per_instruction") {
            return Err(ConfigError::Invalid(
                "workload.cycles_per_instruction is now the profile's costs.cycles_per_instruction \
                 (one compute model for traces and built-in workloads): use --set \
                 costs.cycles_per_instruction=N"
                    .into(),
            ));
        }
        let p = config::set_all(TraceParams::default(), sets)?;
        p.validate()?;
        Ok(p)
    }
}

/// A temporary compact file, removed when the last run using it is done (or by a signal).
#[derive(Debug)]
struct TempFile {
    path: PathBuf,
    _interrupt: crate::interrupt::TempGuard,
}

impl TempFile {
    fn new(path: PathBuf) -> TempFile {
        let _interrupt = crate::interrupt::TempGuard::new(&path);
        TempFile { path, _interrupt }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Best effort: the file is ours.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One trace ready to replay: a checked compact file.
#[derive(Debug)]
pub struct TraceFile {
    /// The name reports use (the file name given).
    pub label: String,
    /// The compact trace.
    pub reader: Reader,
    /// What the user should know about it (a version-1 compact trace has no checksums).
    pub warnings: Vec<String>,
    /// The records of every stream that a replay with the window replays, decoded (and packed)
    /// once when the trace was prepared and shared by every run that replays the same window;
    /// `None` when they did not fit the budget, and each run decodes the file itself.
    pub decoded: Option<(Window, Vec<Arc<Packed>>)>,
    _temp: Option<TempFile>,
}

/// The traces of a command, shared by all its runs (cloning is cheap).
#[derive(Clone, Debug)]
pub struct TraceSet {
    files: Arc<Vec<TraceFile>>,
}

/// How much memory [`TraceSet::prepare`] may keep the decoded records of its traces in, by
/// default: 4 GiB, 477 M records packed for replay ([`Packed`]: 9 bytes a record that is a
/// load, store or fetch within one page), a sixth of the development machine's memory. Above
/// it every run decodes the file again on a thread of its own.
pub const DEFAULT_KEEP_DECODED_BYTES: u64 = 4 << 30;

impl TraceSet {
    /// [`TraceSet::prepare_keeping`] every record within the default budget,
    /// [`DEFAULT_KEEP_DECODED_BYTES`].
    pub fn prepare(inputs: &[PathBuf], opts: ReadOptions) -> Result<TraceSet, TraceError> {
        TraceSet::prepare_keeping(inputs, opts, DEFAULT_KEEP_DECODED_BYTES, Window::ALL)
    }

    /// Opens each input: a compact file is checked whole (every block decoded once); any other
    /// is converted to a temporary compact file first (removed with the set). The records a
    /// replay with `window` (the `skip` and `limit` of [`TraceParams`]) replays are kept
    /// decoded, for every such run to share, when they take at most `keep_bytes` together (0:
    /// never).
    pub fn prepare_keeping(
        inputs: &[PathBuf],
        opts: ReadOptions,
        keep_bytes: u64,
        window: Window,
    ) -> Result<TraceSet, TraceError> {
        if inputs.iter().filter(|p| p.as_path() == std::path::Path::new("-")).count() > 1 {
            return Err(TraceError::Other(
                "standard input (`--trace -`) can be read only once: give the other traces as files"
                    .into(),
            ));
        }
        let mut files = Vec::with_capacity(inputs.len());
        let mut room = keep_bytes;
        for (i, path) in inputs.iter().enumerate() {
            let label = path
                .file_name()
                .map_or_else(|| trace::display_name(path), |n| n.to_string_lossy().into_owned());
            let (reader, temp, warnings, decoded) = if trace::is_plain_compact(path, opts)? {
                let reader = Reader::open(path, trace::Compression::None)?;
                if reader.header.source == trace::Source::Qemu {
                    return Err(TraceError::Other(format!(
                        "{}: a full-system trace (memvirt guest record); `memvirt guest replay` \
                         replays it",
                        reader.name
                    )));
                }
                let decoded = reader.validate_keeping(room, window)?;
                let warnings = reader.warning().into_iter().collect();
                (reader, None, warnings, decoded)
            } else {
                let tmp = std::env::temp_dir().join(format!(
                    "memvirt-replay-{}-{i}-{}.mvt",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_nanos())
                ));
                let temp = TempFile::new(tmp);
                let summary =
                    trace::convert(path, &temp.path, opts, trace::compact::DEFAULT_LEVEL)?;
                let reader = Reader::open(&temp.path, trace::Compression::None)?;
                // memvirt wrote it: decoding it is only worth it to keep the records.
                let fits =
                    reader.replayed(window).saturating_mul(PACKED_RECORD_BYTES as u64) <= room;
                let decoded = if fits { reader.validate_keeping(room, window)? } else { None };
                (reader, Some(temp), summary.read.warnings, decoded)
            };
            let kept: u64 = decoded.iter().flatten().map(|r| r.bytes()).sum();
            room = room.saturating_sub(kept);
            let decoded = decoded.map(|streams| (window, streams));
            if reader.header.records == 0 {
                return Err(TraceError::Format {
                    file: trace::display_name(path),
                    offset: 0,
                    detail: "the trace holds no memory accesses: nothing to replay".into(),
                });
            }
            files.push(TraceFile { label, reader, warnings, decoded, _temp: temp });
        }
        if files.is_empty() {
            return Err(TraceError::Other("no trace given".into()));
        }
        Ok(TraceSet { files: Arc::new(files) })
    }

    /// What the user should know about the traces, one line each.
    pub fn warnings(&self) -> Vec<String> {
        self.files.iter().flat_map(|f| f.warnings.iter().cloned()).collect()
    }

    /// An error if `--skip skip` leaves no record to replay in any stream (a stream shorter
    /// than the skip replays nothing, which is allowed while another still replays).
    pub fn check_skip(&self, skip: u64) -> Result<(), TraceError> {
        let longest = self.files.iter().flat_map(|f| &f.reader.streams).map(|s| s.records).max();
        match longest {
            Some(n) if skip >= n => Err(TraceError::Other(format!(
                "--skip {skip} is past the end of every stream (the longest holds {n} records): \
                 nothing would be replayed"
            ))),
            _ => Ok(()),
        }
    }

    /// The traces.
    pub fn files(&self) -> &[TraceFile] {
        &self.files
    }

    /// The workload name of reports: the trace labels joined with `+`.
    pub fn name(&self) -> String {
        self.files.iter().map(|f| f.label.as_str()).collect::<Vec<_>>().join("+")
    }
}

/// One moved region.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RegionMove {
    /// Its start in the trace (hexadecimal).
    pub from: String,
    /// Its start in the guest (hexadecimal).
    pub to: String,
    /// Its size: [`REGION_BYTES`].
    pub bytes: u64,
}

/// How a stream's addresses map into the guest's user half.
///
/// Addresses below the profile's user limit stay where they are. Each 1 GiB region of the trace
/// that reaches above it moves whole, in address order, to the highest 1 GiB regions below the
/// limit that the trace leaves free, so page offsets, 2 MiB and 1 GiB alignment and which pages
/// share a page table are all kept; only the regions' places change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Relocation {
    /// `none` (every address fits) or `gib-regions`.
    pub method: String,
    /// One past the highest user address of the profile (hexadecimal).
    pub user_limit: String,
    /// The regions moved.
    pub moved: Vec<RegionMove>,
    /// Region number in the trace -> region number in the guest, for moved regions.
    #[serde(skip)]
    table: Vec<(u64, u64)>,
    /// Address bits of which every address that moves has one at least (0: none moves).
    #[serde(skip)]
    moved_mask: u64,
}

impl Relocation {
    /// The relocation of a stream with `footprint` into a user half ending at `user_top`.
    pub fn plan(footprint: &[PageRun], user_top: u64) -> Result<Relocation, String> {
        let limit = user_top >> REGION_SHIFT;
        let mut regions: Vec<u64> = Vec::new();
        for r in footprint {
            let (first, last) = (r.start / REGION_PAGES, (r.start + r.pages - 1) / REGION_PAGES);
            for g in first..=last {
                if regions.last() != Some(&g) {
                    regions.push(g);
                }
            }
        }
        let (fit, above): (Vec<u64>, Vec<u64>) = regions.iter().partition(|&&g| g < limit);
        let mut reloc = Relocation {
            method: "none".to_owned(),
            user_limit: format!("{user_top:#x}"),
            moved: Vec::new(),
            table: Vec::new(),
            moved_mask: 0,
        };
        if above.is_empty() {
            return Ok(reloc);
        }
        let free: Vec<u64> =
            (0..limit).rev().filter(|g| !fit.contains(g)).take(above.len()).collect();
        if free.len() < above.len() {
            return Err(format!(
                "it touches {} distinct 1 GiB regions, {} of them above the user half's {user_top:#x}, \
                 and only {} regions of the user half are free",
                regions.len(),
                above.len(),
                limit - fit.len() as u64
            ));
        }
        reloc.method = "gib-regions".to_owned();
        // Every moved region is at or above the limit, which is at least one region.
        reloc.moved_mask = u64::MAX << (u64::BITS - 1 - (limit << REGION_SHIFT).leading_zeros());
        for (&from, &to) in above.iter().zip(free.iter().rev()) {
            reloc.table.push((from, to));
            reloc.moved.push(RegionMove {
                from: format!("{:#x}", from << REGION_SHIFT),
                to: format!("{:#x}", to << REGION_SHIFT),
                bytes: REGION_BYTES,
            });
        }
        Ok(reloc)
    }

    /// Where `addr` goes.
    #[inline]
    pub fn apply(&self, addr: u64) -> u64 {
        if self.table.is_empty() {
            return addr;
        }
        let region = addr >> REGION_SHIFT;
        match self.table.binary_search_by_key(&region, |&(f, _)| f) {
            Ok(i) => self.table[i].1 << REGION_SHIFT | (addr & (REGION_BYTES - 1)),
            Err(_) => addr,
        }
    }

    /// Whether any address moves.
    #[inline]
    pub fn moves(&self) -> bool {
        self.moved_mask != 0
    }

    /// Whether `addr` may move: false for most addresses [`Relocation::apply`] keeps where they
    /// are, and cheaper.
    #[inline(always)]
    pub fn may_move(&self, addr: u64) -> bool {
        addr & self.moved_mask != 0
    }

    /// The stream's VMAs: its footprint runs, relocated, with the permissions their flags ask.
    pub fn vmas(&self, footprint: &[PageRun]) -> Vec<Vma> {
        let mut out: Vec<Vma> = Vec::new();
        for r in footprint {
            let mut perms = Perms::R;
            if r.flags & PageFlags::WRITE != 0 {
                perms |= Perms::W;
            }
            if r.flags & PageFlags::EXEC != 0 {
                perms |= Perms::X;
            }
            // Split at region boundaries: regions may move apart.
            let mut page = r.start;
            let end = r.start + r.pages;
            while page < end {
                let stop = end.min((page / REGION_PAGES + 1) * REGION_PAGES);
                let start = Gva::new(self.apply(page * PAGE_BYTES));
                let vma_end = start.wrapping_add((stop - page) * PAGE_BYTES);
                match out.last_mut() {
                    Some(v) if v.end == start && v.perms == perms => v.end = vma_end,
                    _ => out.push(Vma::new(start, vma_end, perms)),
                }
                page = stop;
            }
        }
        out.sort_by_key(|v| v.start);
        out
    }
}

/// What a replay reports about one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StreamReport {
    /// The trace it comes from.
    pub trace: String,
    /// Its number in that trace.
    pub stream: u64,
    /// Its label (the recorded command line, or the trace's name).
    pub name: String,
    /// The recorded process id (0: unknown).
    pub pid: u64,
    /// The cloudsuite ASID (0: none).
    pub asid: u64,
    /// Records skipped (`--skip`).
    pub skipped: u64,
    /// Records replayed.
    pub replayed: u64,
    /// Instructions replayed (the gaps of the replayed records, plus the trailing instructions
    /// when the stream was replayed to its end), after the warm-up.
    pub instructions: u64,
    /// Instructions replayed during the warm-up (`--warmup`), not counted anywhere else.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub warmup_instructions: u64,
    /// Pages of its footprint (its VMAs).
    pub footprint_pages: u64,
    /// How its addresses were placed in the guest.
    pub relocation: Relocation,
}

/// The `trace` section of a report of a trace replay.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TraceReport {
    /// Instructions replayed, all streams.
    pub instructions: u64,
    /// Compute cycles per instruction: the profile's `costs.cycles_per_instruction` (kept here
    /// for readers of the JSON contract; `compute` has the whole compute model).
    pub cycles_per_instruction: u64,
    /// Each stream, in replay order.
    pub streams: Vec<StreamReport>,
}

/// Where a replayed stream's records come from.
#[derive(Debug)]
enum Feed {
    /// Decoded from the file on a thread of its own.
    Decoder(Prefetch),
    /// Decoded once when the trace was prepared ([`TraceFile::decoded`]), replayed in place
    /// as one batch; `None` once handed out.
    Memory(Option<Arc<Packed>>),
}

impl Feed {
    /// The records of `stream` that `window` replays: those kept decoded if they are the same
    /// window's, else decoded from the file.
    fn open(file: &TraceFile, stream: usize, window: Window) -> Result<Feed, TraceError> {
        match &file.decoded {
            Some((kept, streams)) if *kept == window && stream < streams.len() => {
                Ok(Feed::Memory(Some(Arc::clone(&streams[stream]))))
            }
            _ => {
                let decoder = file.reader.stream(stream, window.skip, window.limit)?;
                Ok(Feed::Decoder(Prefetch::spawn(decoder)?))
            }
        }
    }

    /// The next batch of records, a decoded one in `spent`'s buffer when it can (shared
    /// records are never copied); `None` at the end.
    fn next_batch(&mut self, spent: Arc<Packed>) -> Result<Option<Arc<Packed>>, TraceError> {
        match self {
            Feed::Decoder(prefetch) => {
                if let Ok(buffer) = Arc::try_unwrap(spent) {
                    prefetch.recycle(buffer);
                }
                Ok(prefetch.next_batch()?.map(Arc::new))
            }
            Feed::Memory(records) => Ok(records.take()),
        }
    }
}

/// One stream being replayed.
#[derive(Debug)]
struct Replayed {
    report: StreamReport,
    file: usize,
    stream: usize,
    feed: Option<Feed>,
    /// The batch being replayed, from `pos` on.
    batch: Arc<Packed>,
    pos: usize,
    finished: bool,
    /// Records this stream will replay.
    total: u64,
    trailing: u64,
    /// It has run its warm-up instructions (or ended).
    warm: bool,
    /// Records it replayed during the warm-up (no longer in `report.replayed`).
    warm_records: u64,
}

/// The trace-replay workload.
#[derive(Debug)]
pub struct TraceReplay {
    set: TraceSet,
    params: TraceParams,
    procs: Vec<Replayed>,
    by_pid: BTreeMap<Pid, usize>,
    seq: u64,
    /// Instructions every stream runs before counting starts (0: no warm-up).
    warmup: u64,
    /// Streams still warming up.
    warming: usize,
}

impl Clone for TraceReplay {
    /// A clone starts the replay over.
    fn clone(&self) -> Self {
        let mut t = TraceReplay::new(self.set.clone(), self.params);
        t.warm_up_for(self.warmup);
        t
    }
}

fn trace_error(e: TraceError) -> OsError {
    OsError::Sim(SimError::Config(format!("trace replay: {e}")))
}

impl TraceReplay {
    /// Replays `set` with `params`.
    pub fn new(set: TraceSet, params: TraceParams) -> Self {
        TraceReplay {
            set,
            params,
            procs: Vec::new(),
            by_pid: BTreeMap::new(),
            seq: 0,
            warmup: 0,
            warming: 0,
        }
    }

    /// Warms up for `instructions` per stream: counting starts once every stream has replayed
    /// that many instructions (at the end of the record that reaches them) or ended, with
    /// [`Os::end_warmup`]; a stream that ends first runs whole in the warm-up. If every stream
    /// ends first, the warm-up never ends. 0: no warm-up. Call before the replay starts.
    pub fn warm_up_for(&mut self, instructions: u64) {
        self.warmup = instructions;
    }

    /// One more stream is warm; the warm-up ends with the last one, unless `ended` (it ran out
    /// of records) and so no stream is left to count.
    fn stream_warm<S: Scheme>(&mut self, os: &mut Os<S>, i: usize, ended: bool) {
        if self.warming == 0 || self.procs[i].warm {
            return;
        }
        self.procs[i].warm = true;
        self.warming -= 1;
        if self.warming > 0 || (ended && self.procs.iter().all(|p| p.finished)) {
            return;
        }
        let mut instructions = 0;
        for p in &mut self.procs {
            instructions += p.report.instructions;
            p.report.warmup_instructions = p.report.instructions;
            p.warm_records = p.report.replayed;
            p.report.replayed = 0;
            p.report.instructions = 0;
        }
        os.end_warmup(WarmupReport {
            unit: "instructions-per-stream".to_owned(),
            requested: self.warmup,
            accesses: 0,
            instructions: Some(instructions),
        });
    }

    pub(super) fn start<S: Scheme>(&mut self, os: &mut Os<S>) -> Result<(), OsError> {
        let user_top = os.layout().user_top.as_u64();
        let window = self.params.window();
        for (fi, f) in self.set.files().iter().enumerate() {
            for (si, info) in f.reader.streams.iter().enumerate() {
                let relocation = Relocation::plan(&info.footprint, user_top).map_err(|e| {
                    OsError::Sim(SimError::Config(format!(
                        "trace {} stream {si} ({}): {e}",
                        f.label, info.meta.name
                    )))
                })?;
                let vmas = relocation.vmas(&info.footprint);
                let skipped = self.params.skip.min(info.records);
                let total = window.replayed(info.records);
                let pid = os.spawn_image(&vmas)?;
                self.by_pid.insert(pid, self.procs.len());
                self.procs.push(Replayed {
                    report: stream_report(&f.label, si, info, skipped, relocation),
                    file: fi,
                    stream: si,
                    feed: None,
                    batch: Arc::default(),
                    pos: 0,
                    finished: false,
                    total,
                    trailing: if skipped + total == info.records { info.trailing } else { 0 },
                    warm: false,
                    warm_records: 0,
                });
            }
        }
        self.warming = if self.warmup == 0 { 0 } else { self.procs.len() };
        Ok(())
    }

    #[inline(never)]
    pub(super) fn run<S: Scheme>(&mut self, os: &mut Os<S>, pid: Pid) -> Result<Step, OsError> {
        let Some(&i) = self.by_pid.get(&pid) else { return Ok(Step::Exit) };
        let mut p = &mut self.procs[i];
        if p.feed.is_none() && !p.finished {
            let file = &self.set.files()[p.file];
            p.feed = Some(Feed::open(file, p.stream, self.params.window()).map_err(trace_error)?);
        }
        while os.slice_left() > 0 {
            if p.pos == p.batch.len() {
                let Some(feed) = p.feed.as_mut() else { return Ok(Step::Exit) };
                match feed.next_batch(std::mem::take(&mut p.batch)).map_err(trace_error)? {
                    Some(b) => (p.batch, p.pos) = (b, 0),
                    None => {
                        p.finished = true;
                        p.feed = None;
                        p.report.instructions += p.trailing;
                        self.stream_warm(os, i, true);
                        return Ok(Step::Exit);
                    }
                }
            }
            if (self.warming == 0 || p.warm)
                && first_hits(os, &p.batch, p.pos, &p.report.relocation)
            {
                let reloc = &p.report.relocation;
                let done = if reloc.moves() {
                    replay_hits::<S, true>(os, &p.batch, p.pos, reloc, self.seq)
                } else {
                    replay_hits::<S, false>(os, &p.batch, p.pos, reloc, self.seq)
                };
                if done > 0 {
                    p.report.instructions += p.batch.plain_instructions(p.pos, p.pos + done);
                    p.report.replayed += done as u64;
                    p.pos += done;
                    self.seq += done as u64;
                    if os.slice_left() == 0 || p.pos == p.batch.len() {
                        continue;
                    }
                }
                // The record at `p.pos` is not a hit of the memo.
            }
            // One record in full: not a hit of the memo, or replayed while the stream warms up.
            let Some(r) = p.batch.record(p.pos) else { return Ok(Step::Exit) };
            p.pos += 1;
            p.report.replayed += 1;
            p.report.instructions += u64::from(r.gap);
            self.seq += 1;
            replay_one(os, &p.report.relocation, r, self.seq)
                .map_err(|e| outside_footprint(p, e))?;
            if self.warming > 0 && !p.warm && p.report.instructions >= self.warmup {
                self.stream_warm(os, i, false);
                p = &mut self.procs[i];
            }
        }
        Ok(Step::Preempted)
    }

    pub(super) fn killed(&mut self, pid: Pid) {
        if let Some(&i) = self.by_pid.get(&pid) {
            let p = &mut self.procs[i];
            p.finished = true;
            p.feed = None;
            // Not `stream_warm`: a killed stream fails the replay (see `run`).
            if !p.warm && self.warming > 0 {
                p.warm = true;
                self.warming -= 1;
            }
        }
    }

    pub(super) fn progress(&self) -> (u64, u64) {
        let done = self.procs.iter().map(|p| {
            if p.finished {
                p.total
            } else {
                p.warm_records + p.report.replayed
            }
        });
        (done.sum(), self.procs.iter().map(|p| p.total).sum())
    }

    /// Instructions replayed so far.
    pub fn instructions(&self) -> u64 {
        self.procs.iter().map(|p| p.report.instructions).sum()
    }

    /// The report's `trace` section so far; `cycles_per_instruction` is left 0 for the caller,
    /// which knows the profile.
    pub fn report(&self) -> TraceReport {
        TraceReport {
            instructions: self.instructions(),
            cycles_per_instruction: 0,
            streams: self.procs.iter().map(|p| p.report.clone()).collect(),
        }
    }
}

fn stream_report(
    label: &str,
    stream: usize,
    info: &StreamInfo,
    skipped: u64,
    relocation: Relocation,
) -> StreamReport {
    StreamReport {
        trace: label.to_owned(),
        stream: stream as u64,
        name: info.meta.name.clone(),
        pid: u64::from(info.meta.pid),
        asid: u64::from(info.meta.asid),
        skipped,
        replayed: 0,
        instructions: 0,
        warmup_instructions: 0,
        footprint_pages: info.footprint_pages(),
        relocation,
    }
}

/// The error of an access by `p`'s last replayed record: a process killed by an access its
/// VMAs, which are its trace's footprint, do not allow means the directory and the records
/// disagree, and the run would go on with a process missing and wrong numbers.
#[cold]
fn outside_footprint(p: &Replayed, e: OsError) -> OsError {
    let OsError::Killed { .. } = e else { return e };
    let what = p.pos.checked_sub(1).and_then(|i| p.batch.record(i));
    let what = what.map_or_else(String::new, |r| format!(" ({} at {:#x})", r.kind.name(), r.addr));
    trace_error(TraceError::Other(format!(
        "{} stream {}: record {}{what} falls outside the footprint the trace's directory \
         declares ({e}): the trace is inconsistent",
        p.report.trace,
        p.report.stream,
        p.report.skipped + p.warm_records + p.report.replayed - 1,
    )))
}

/// The records of `batch` from `from` on that are L1-TLB hits, as many as the slice has room
/// for: the replay's fast path, a word and a test a record before the hit memo's answer
/// ([`Os::hit_run`]). It stops at the first record the memo does not answer, an odd one
/// ([`Packed`]: its word's address is never a user page) or a miss, which the caller replays
/// in full. `seq` is the sequence number of the record before `from`. Returns the records
/// replayed. `RELOCATES`: whether any address of the stream moves (the loop that tests each
/// address is another one). Out of line: a call a run of hits, and registers of its own.
#[inline(never)]
fn replay_hits<S: Scheme, const RELOCATES: bool>(
    os: &mut Os<S>,
    batch: &Packed,
    from: usize,
    reloc: &Relocation,
    seq: u64,
) -> usize {
    let room = usize::try_from(os.slice_left()).unwrap_or(usize::MAX);
    let all = batch.words();
    let words = all.get(from..all.len().min(from.saturating_add(room))).unwrap_or_default();
    let mut run = os.hit_run();
    let mut done = 0;
    while let Some(&word) = words.get(done) {
        let va = guest_address(word, reloc, RELOCATES);
        if !hit(&mut run, word, va, seq + done as u64 + 1) {
            break;
        }
        done += 1;
    }
    done
}

/// Whether record `i` of `batch` is a hit of the memo, which only a plain record can be: a
/// look before the run of hits, whose start costs more than a miss of the memo
/// ([`replay_hits`]).
#[inline(always)]
fn first_hits<S: Scheme>(os: &Os<S>, batch: &Packed, i: usize, reloc: &Relocation) -> bool {
    let Some(&word) = batch.words().get(i) else { return false };
    os.would_hit(guest_address(word, reloc, true), plain_access(word))
}

/// The guest address of a plain record's `word`, relocated if `relocates` (an odd word's is
/// no user address either way).
#[inline(always)]
fn guest_address(word: u64, reloc: &Relocation, relocates: bool) -> Gva {
    let addr = word & ADDR_MASK;
    Gva::new(if relocates && reloc.may_move(addr) { reloc.apply(addr) } else { addr })
}

/// The access of a plain record's `word` at `va`, if it hits ([`HitRun`]).
#[inline(always)]
fn hit<S: Scheme>(run: &mut HitRun<'_, S>, word: u64, va: Gva, seq: u64) -> bool {
    if word & STORE != 0 {
        run.store(va, token(va, seq))
    } else if word & FETCH != 0 {
        run.fetch(va).is_some()
    } else {
        run.load(va).is_some()
    }
}

/// One record: its access, and again at the start of each further page it runs into (each page
/// relocated on its own: the access may cross into a region that moved elsewhere). Inlined into
/// the replay loop with the access's hit path; the pages after the first are out of line.
#[inline(always)]
fn replay_one<S: Scheme>(
    os: &mut Os<S>,
    reloc: &Relocation,
    r: Record,
    seq: u64,
) -> Result<(), OsError> {
    access(os, Gva::new(reloc.apply(r.addr)), r.kind, seq)?;
    // Most records end in the page they start in.
    if (r.addr & (PAGE_BYTES - 1)) + u64::from(r.size) > PAGE_BYTES {
        replay_further_pages(os, reloc, r, seq)?;
    }
    Ok(())
}

/// The accesses of a record to the pages after its first ([`replay_one`]).
#[inline(never)]
fn replay_further_pages<S: Scheme>(
    os: &mut Os<S>,
    reloc: &Relocation,
    r: Record,
    seq: u64,
) -> Result<(), OsError> {
    let (first, last) = r.pages();
    for page in first + 1..=last {
        access(os, Gva::new(reloc.apply(page * PAGE_BYTES)), r.kind, seq)?;
    }
    Ok(())
}

#[inline(always)]
fn access<S: Scheme>(os: &mut Os<S>, va: Gva, kind: Kind, seq: u64) -> Result<(), OsError> {
    match kind {
        Kind::Load => os.load(va).map(drop),
        Kind::Store => os.store(va, token(va, seq)),
        Kind::Modify => {
            os.load(va)?;
            os.store(va, token(va, seq))
        }
        Kind::Fetch => os.fetch(va).map(drop),
    }
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: u64, pages: u64, flags: u8) -> PageRun {
        PageRun { start, pages, flags }
    }

    const SV39_TOP: u64 = 1 << 38;

    #[test]
    fn addresses_that_fit_are_not_moved() -> Result<(), String> {
        let fp = [run(0x400, 3, PageFlags::EXEC), run(0x1ffeffe, 2, PageFlags::WRITE)];
        let r = Relocation::plan(&fp, SV39_TOP)?;
        assert_eq!(r.method, "none");
        assert_eq!(r.apply(0x1ffefff7a8), 0x1ffefff7a8);
        Ok(())
    }

    #[test]
    fn x86_64_stack_and_libraries_move_whole_gib_regions_below_the_sv39_limit() -> Result<(), String>
    {
        // Text at 4 MiB, libraries and stack near the top of x86-64's 47-bit user half.
        let text = 0x40_0000 / PAGE_BYTES;
        let libs = 0x7f12_3456_7000 / PAGE_BYTES;
        let stack = 0x7ffc_dead_b000 / PAGE_BYTES;
        let fp = [run(text, 1, PageFlags::EXEC), run(libs, 2, PageFlags::READ), run(stack, 1, 3)];
        let r = Relocation::plan(&fp, SV39_TOP)?;
        assert_eq!(r.method, "gib-regions");
        assert_eq!(r.moved.len(), 2);
        // In order, to the two highest regions: 254 and 255 GiB.
        assert_eq!(
            r.apply(0x7f12_3456_7abc),
            (254 << 30) | (0x7f12_3456_7abc & (REGION_BYTES - 1))
        );
        assert_eq!(
            r.apply(0x7ffc_dead_bff8),
            (255 << 30) | (0x7ffc_dead_bff8 & (REGION_BYTES - 1))
        );
        assert_eq!(r.apply(0x40_0123), 0x40_0123);
        // Page offsets, and the offset within the 2 MiB and 1 GiB regions, are kept.
        assert_eq!(r.apply(0x7ffc_dead_bff8) % REGION_BYTES, 0x7ffc_dead_bff8 % REGION_BYTES);
        let vmas = r.vmas(&fp);
        assert_eq!(vmas.len(), 3);
        assert!(vmas.iter().all(|v| v.end.as_u64() <= SV39_TOP));
        assert_eq!(vmas[0].perms, Perms::R | Perms::X);
        assert_eq!(vmas[2].perms, Perms::R | Perms::W);
        Ok(())
    }

    #[test]
    fn a_process_killed_by_a_lying_footprint_fails_the_run(
    ) -> Result<(), Box<dyn std::error::Error>> {
        use crate::trace::compact::{with_directory, Writer};
        use crate::trace::{RecordSink, Source, StreamMeta};
        // Two pages loaded; the directory (checksums intact) forgets the second. Unvalidated,
        // as a reader that trusted the directory would replay it.
        let mut w = Writer::new(std::io::Cursor::new(Vec::new()), "lie.mvt", Source::Lackey, 1)?;
        let s = w.begin_stream(StreamMeta::default())?;
        for addr in [0x10_0000, 0x20_0000, 0x10_0008] {
            w.push(s, Record { addr, gap: 1, size: 8, kind: Kind::Load })?;
        }
        let (header, mut streams, out) = w.finish(0)?;
        streams[0].footprint.truncate(1);
        let forged = with_directory(out.get_ref(), &header, &streams);
        let reader = Reader::from_bytes("lie.mvt".into(), forged)?;
        assert!(reader.validate().is_err(), "validation refuses it");
        let file = TraceFile {
            label: "lie.mvt".into(),
            reader,
            warnings: Vec::new(),
            decoded: None,
            _temp: None,
        };
        let set = TraceSet { files: Arc::new(vec![file]) };
        let profile = crate::profile::Profile::builtin("riscv-sv39")?;
        let spec = crate::run::RunSpec {
            traces: Some(set),
            ..crate::run::RunSpec::new(
                crate::scheme::SchemeKind::Native,
                crate::workload::WorkloadKind::Pagefault,
                profile,
            )
        };
        let e = crate::run::run(&spec, &mut |_, _| {}).err().map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(e.contains("lie.mvt stream 0: record 1 (load at 0x200000)"), "{e}");
        assert!(e.contains("the trace is inconsistent"), "{e}");
        Ok(())
    }

    #[test]
    fn too_many_regions_is_an_error() {
        let fp: Vec<PageRun> = (0..300).map(|g| run(g * REGION_PAGES * 4, 1, 1)).collect();
        assert!(Relocation::plan(&fp, SV39_TOP).is_err());
    }

    #[test]
    fn runs_crossing_a_moved_region_boundary_split() -> Result<(), String> {
        let start = (1u64 << 40) / PAGE_BYTES - 1;
        let fp = [run(start, 2, 1)];
        let r = Relocation::plan(&fp, SV39_TOP)?;
        let vmas = r.vmas(&fp);
        assert_eq!(vmas.iter().map(|v| v.end.as_u64() - v.start.as_u64()).sum::<u64>(), 8192);
        assert!(vmas.iter().all(|v| v.end.as_u64() <= SV39_TOP));
        assert_eq!(r.apply(start * PAGE_BYTES) + PAGE_BYTES, r.apply((start + 1) * PAGE_BYTES));
        Ok(())
    }
}
