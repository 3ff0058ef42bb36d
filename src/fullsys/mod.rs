//! Full-system replay: a real guest's recorded events ([`crate::trace::system`]) drive a
//! scheme instead of the model kernel.
//!
//! The guest's page tables are the real ones: every recorded store lands in the guest-physical
//! image (host memory behind [`crate::mem::GuestBacking`]) through [`Machine::guest_store`], so
//! the kernel's own page-table writes reach each scheme's `guest_store` hook (write
//! protection, unsync, flush interception see exactly what Linux wrote), and the walkers read
//! the tables entry by entry from that image. `satp` writes become root switches, `sfence.vma`
//! flushes. A recorded page fault is replayed as the access that faulted, which the scheme must
//! report as a guest fault (what it costs the hypervisor is the scheme's business); every
//! access that completed under QEMU must translate, and to the guest-physical address QEMU
//! recorded: [`SystemReport::pa_mismatches`] and [`SystemReport::unexpected_faults`] count the
//! exceptions, and a replay of a sound recording has none.
//!
//! Machine-mode accesses (OpenSBI) and accesses made while `satp` is bare are untranslated:
//! their stores reach the image, and nothing else.

mod table_frames;

use std::path::Path;

use table_frames::TableFrames;

use crate::addr::{Asid, Gpa, Gva};
use crate::machine::{GuestRoot, Machine, Platform, Scheme, SimError, Stop};
use crate::mmu::FlushOp;
use crate::paging::walk::PageTable;
use crate::paging::{Access, AccessKind, AdPolicy, Format, Privilege};
use crate::profile::Profile;
use crate::report::{ComputeReport, GuestReport, Report};
use crate::run::{machine_report, with_scheme, Drive, ReportId, RunError, SchemeError};
use crate::scheme::SchemeKind;
use crate::trace::decode::Reader;
use crate::trace::system::{
    Event, Fence, Mode, SysRecord, SystemStream, FETCH_PAGE_FAULT, LOAD_PAGE_FAULT,
    STORE_PAGE_FAULT,
};
use crate::trace::Compression;
use crate::trace::{Kind, TraceError};

/// Guest-physical memory a full-system replay gives the guest: QEMU `virt` puts RAM at
/// 0x8000_0000, so 4 GiB covers up to 2 GiB of guest RAM (frames are backed only when used).
pub const GUEST_PHYS_BYTES: u64 = 4 << 30;

/// The lowest guest-physical RAM address of QEMU's `virt` machine: stores below it are device
/// (MMIO) writes and do not enter the image.
pub const RAM_BASE: u64 = 0x8000_0000;

/// The `scause` of an environment call from user mode: a system call.
const USER_ECALL: u64 = 8;

/// What to replay.
#[derive(Clone, Debug)]
pub struct SystemSpec {
    /// The scheme.
    pub scheme: SchemeKind,
    /// `scheme.KEY=VALUE` settings without the prefix.
    pub scheme_sets: Vec<(String, String)>,
    /// The machine: costs, TLB and cache geometry, the nested format's regime (the guest's
    /// first-stage format is the one the guest chose, read from `satp`).
    pub profile: Profile,
    /// Check every TLB fill against the guest's table (the translation oracle).
    pub verify: bool,
    /// Where the counted windows begin and end: markers, in the order they occur. Counting
    /// starts at the first (how the scheme gets there is `start`); each later one closes a
    /// window (one report each) and opens the next; the replay stops at the last. Empty: one
    /// window over the whole recording.
    pub boundaries: Vec<u64>,
    /// How the scheme reaches the first boundary.
    pub start: Start,
    /// The windows' workload names, one per window (else the trace's name, with the window's
    /// markers when there are several).
    pub labels: Vec<String>,
}

/// How a replay that counts from a marker gets there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// The scheme runs the whole recording from reset, and every counter restarts at the
    /// marker: TLBs, caches, nested and shadow tables are as the boot left them (a warm-up,
    /// as ChampSim's `--warmup-instructions`).
    #[default]
    Warm,
    /// Before the marker the stores only build the guest's memory image; the scheme starts at
    /// the marker with the current root and empty TLBs and tables, as a VM just restored
    /// would (and faster: the boot is not translated).
    Cold,
}

impl Start {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Start::Warm => "warm",
            Start::Cold => "cold",
        }
    }
}

/// What a full-system replay saw besides the usual counters (docs/json.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SystemReport {
    /// How the scheme reached the first counted event (`warm` or `cold`), when counting
    /// started at a marker.
    pub start: Option<Start>,
    /// Events replayed (from the first counted one).
    pub events: u64,
    /// Guest instructions in the counted part.
    pub instructions: u64,
    /// User-mode accesses.
    pub user_accesses: u64,
    /// Supervisor-mode accesses.
    pub kernel_accesses: u64,
    /// Machine-mode (firmware) accesses, untranslated.
    pub machine_accesses: u64,
    /// Stores applied to the guest image.
    pub stores: u64,
    /// User-mode stores (the program's own).
    pub user_stores: u64,
    /// Stores into the page-table pages of the current root (the kernel's page-table writes;
    /// module `table_frames`), whatever the mode.
    pub table_stores: u64,
    /// Writes of the root register: `satp`, or x86's CR3.
    pub root_writes: u64,
    /// Fences by mnemonic.
    pub fences: std::collections::BTreeMap<String, u64>,
    /// Page faults the kernel took, by kind (`fetch`, `load`, `store`).
    pub page_faults: std::collections::BTreeMap<String, u64>,
    /// Recorded page faults the replayed tables did not fault on (a fault the real hardware
    /// took for a reason the image does not show, e.g. a stale entry in QEMU's TLB); as
    /// `pa_mismatches`, over everything the scheme replayed.
    pub spurious_faults: u64,
    /// System calls: environment calls from user mode (`scause` 8).
    pub syscalls: u64,
    /// Other traps (interrupts, other exceptions).
    pub other_traps: u64,
    /// Accesses that translated to another guest-physical address than QEMU recorded (over
    /// everything the scheme replayed, a warm-up included: a correctness count).
    pub pa_mismatches: u64,
    /// Accesses that completed under QEMU but faulted in the replay (as `pa_mismatches`).
    pub unexpected_faults: u64,
    /// The first mismatch, unexpected or spurious fault, described.
    pub first_discrepancy: Option<String>,
    /// Markers seen, in order.
    pub markers: Vec<u64>,
    /// The guest's first-stage format.
    pub guest_format: String,
}

/// Opens a full-system trace.
pub fn open(path: &Path) -> Result<Reader, TraceError> {
    let reader = Reader::open(path, Compression::Auto)?;
    crate::trace::system::require_system(&reader)?;
    if reader.streams.len() != 1 {
        return Err(TraceError::Other(format!(
            "{}: {} vCPU streams; full-system replay takes one vCPU",
            reader.name,
            reader.streams.len()
        )));
    }
    Ok(reader)
}

/// The guest's instruction set, from its first translating root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    RiscV,
    X86,
}

impl Isa {
    /// Guest-physical addresses below this are not RAM (QEMU `virt` puts RAM at 2 GiB; on a PC
    /// it starts at 0, and the VGA window's stores do no harm to the image).
    fn ram_base(self) -> u64 {
        match self {
            Isa::RiscV => RAM_BASE,
            Isa::X86 => 0,
        }
    }
}

/// The guest format of `satp` mode `mode` (8, 9, 10).
fn format_of(mode: u64) -> Option<(Format, Format)> {
    match mode {
        8 => Some((Format::SV39, Format::SV39X4)),
        9 => Some((Format::SV48, Format::SV48X4)),
        10 => Some((Format::SV57, Format::SV57X4)),
        _ => None,
    }
}

/// The x86 control-register bits the replay follows.
mod x86 {
    /// CR0.PG: paging on.
    pub const CR0_PG: u64 = 1 << 31;
    /// CR4.PGE: global pages; toggling it flushes every TLB entry, globals included.
    pub const CR4_PGE: u64 = 1 << 7;
    /// CR4.LA57: 5-level paging.
    pub const CR4_LA57: u64 = 1 << 12;
    /// CR4.PCIDE: CR3 carries a PCID.
    pub const CR4_PCIDE: u64 = 1 << 17;
    /// EFER.LMA: long mode active.
    pub const EFER_LMA: u64 = 1 << 10;
    /// CR3's root-table address bits.
    pub const CR3_ROOT: u64 = 0x000f_ffff_ffff_f000;
}

/// The x86 guest format with `cr0`, `cr4` and `efer`, if paging is on in long mode.
fn x86_format_of(cr0: u64, cr4: u64, efer: u64) -> Option<(Format, Format)> {
    if cr0 & x86::CR0_PG == 0 || efer & x86::EFER_LMA == 0 {
        return None;
    }
    Some(if cr4 & x86::CR4_LA57 != 0 {
        (Format::X86_64_5LEVEL, Format::EPT_5LEVEL)
    } else {
        (Format::X86_64_4LEVEL, Format::EPT_4LEVEL)
    })
}

/// The instruction set and formats of the trace's first translating root, which fix the
/// guest's format for the whole replay.
fn first_paging(reader: &Reader) -> Result<(Isa, Format, Format), TraceError> {
    let mut stream = SystemStream::open(reader, 0)?;
    let mut batch = Vec::new();
    while stream.next_batch(&mut batch)? {
        for r in &batch {
            match r.event {
                Event::Satp { value } if value >> 60 != 0 => {
                    let (g, n) = format_of(value >> 60).ok_or_else(|| {
                        TraceError::Other(format!(
                            "{}: satp mode {} is not Sv39, Sv48 or Sv57",
                            reader.name,
                            value >> 60
                        ))
                    })?;
                    return Ok((Isa::RiscV, g, n));
                }
                Event::X86Control { cr0, cr4, efer, .. } => {
                    if let Some((g, n)) = x86_format_of(cr0, cr4, efer) {
                        return Ok((Isa::X86, g, n));
                    }
                }
                _ => {}
            }
        }
    }
    Err(TraceError::Other(format!("{}: the guest never turned translation on", reader.name)))
}

/// Whether the recorded guest is x86-64 (else RISC-V), from its first translating root.
pub fn is_x86(reader: &Reader) -> Result<bool, TraceError> {
    Ok(first_paging(reader)?.0 == Isa::X86)
}

/// Replays `reader` (from [`open`]) under `spec`. `progress(events, total)` is called now and
/// then.
pub fn replay(
    spec: &SystemSpec,
    reader: &Reader,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<Report>, RunError> {
    let sim = |error: SimError| RunError::Sim {
        scheme: spec.scheme.name(),
        workload: reader.name.clone(),
        error,
    };
    let windows = spec.boundaries.len().saturating_sub(1).max(1);
    if spec.boundaries.len() == 1 {
        return Err(sim(SimError::Config(format!(
            "marker {}: a window needs a marker where it ends too",
            spec.boundaries[0]
        ))));
    }
    if !spec.labels.is_empty() && spec.labels.len() != windows {
        return Err(sim(SimError::Config(format!(
            "{} labels for {windows} windows",
            spec.labels.len()
        ))));
    }
    let trace = |e: TraceError| sim(SimError::Config(e.to_string()));
    let (isa, guest_format, nested_format) = first_paging(reader).map_err(trace)?;
    let mut cfg = spec.profile.platform_config()?;
    if cfg.vcpus > 1 {
        return Err(sim(SimError::Config(format!(
            "a full-system recording is of one guest CPU: smp.vcpus must be 1, not {}",
            cfg.vcpus
        ))));
    }
    cfg.arch.guest_format = guest_format;
    cfg.arch.nested_format = nested_format;
    // The recorded accesses all passed the real permission checks (with sstatus.SUM or x86's
    // SMAP as the kernel set them), so the replay allows supervisor access to user pages; A/D
    // bits are what the kernel stored, never set by the replay's walker.
    cfg.arch.guest_regime.sum = true;
    cfg.arch.guest_regime.ad = AdPolicy::Ignore;
    cfg.guest_bytes = GUEST_PHYS_BYTES;
    let platform = Platform::new(&cfg, spec.profile.costs).map_err(sim)?;
    let run = Replay { spec, reader, isa, format: guest_format, progress };
    let result = with_scheme(spec.scheme, &spec.scheme_sets, &spec.profile, platform, run)
        .map_err(|e| match e {
            SchemeError::Config(c) => RunError::Config(c),
            SchemeError::Sim(e) => sim(e),
        })?;
    result.map_err(|e| match e {
        ReplayError::Sim(e) => sim(e),
        ReplayError::Trace(e) => trace(e),
    })
}

enum ReplayError {
    Sim(SimError),
    Trace(TraceError),
}

impl From<SimError> for ReplayError {
    fn from(e: SimError) -> Self {
        ReplayError::Sim(e)
    }
}

impl From<TraceError> for ReplayError {
    fn from(e: TraceError) -> Self {
        ReplayError::Trace(e)
    }
}

impl From<crate::mem::MemError> for ReplayError {
    fn from(e: crate::mem::MemError) -> Self {
        ReplayError::Sim(SimError::Memory(e))
    }
}

struct Replay<'a> {
    spec: &'a SystemSpec,
    reader: &'a Reader,
    isa: Isa,
    format: Format,
    progress: &'a mut dyn FnMut(u64, u64),
}

impl Replay<'_> {
    /// The workload name of window `k`.
    fn window_name(&self, k: usize) -> String {
        if let Some(label) = self.spec.labels.get(k) {
            return label.clone();
        }
        match self.spec.boundaries.get(k..k + 2) {
            Some([a, b]) if self.spec.boundaries.len() > 2 => {
                format!("{}[{a}..{b}]", self.reader.name)
            }
            _ => self.reader.name.clone(),
        }
    }
}

impl Drive for Replay<'_> {
    type Output = Result<Vec<Report>, ReplayError>;
    fn drive<S: Scheme>(self, machine: Machine<S>) -> Self::Output {
        let mut state = State {
            machine,
            isa: self.isa,
            format: self.format,
            x86: [0; 4],
            root: None,
            counting: self.spec.boundaries.is_empty(),
            driving: self.spec.boundaries.is_empty() || self.spec.start == Start::Warm,
            tables: TableFrames::new(self.format, GUEST_PHYS_BYTES),
            report: SystemReport {
                guest_format: self.format.name.to_owned(),
                ..SystemReport::default()
            },
            history: History::default(),
        };
        if self.spec.verify {
            state.machine.enable_oracle();
        }
        let total = self.reader.streams[0].records;
        let mut stream = SystemStream::open(self.reader, 0)?;
        let mut batch: Vec<SysRecord> = Vec::new();
        let mut done = 0u64;
        let bounds = &self.spec.boundaries;
        // The next boundary to meet, and the reports of the windows closed so far.
        let mut next = 0;
        let mut reports = Vec::new();
        'replay: while stream.next_batch(&mut batch)? {
            for r in &batch {
                if let Event::Marker { id } = r.event {
                    state.report.markers.push(id);
                    if bounds.get(next) == Some(&id) {
                        if next > 0 {
                            reports
                                .push(state.close_window(self.spec, self.window_name(next - 1))?);
                        }
                        next += 1;
                        if next == bounds.len() {
                            break 'replay;
                        }
                        let start = if next == 1 { self.spec.start } else { Start::Warm };
                        state.start_counting(start)?;
                    }
                    continue;
                }
                state.event(r)?;
            }
            done += batch.len() as u64;
            (self.progress)(done, total);
        }
        if let Some(m) = bounds.get(next) {
            return Err(ReplayError::Trace(TraceError::Other(format!(
                "{}: marker {m} never occurs{} (markers seen: {:?})",
                self.reader.name,
                if next > 0 {
                    format!(" after marker {}", bounds[next - 1])
                } else {
                    String::new()
                },
                state.report.markers
            ))));
        }
        if bounds.is_empty() {
            reports.push(state.close_window(self.spec, self.window_name(0))?);
        }
        Ok(reports)
    }
}

/// A digest of the guest-visible outcome of every counted access (translated or faulted, and
/// whether to the recorded address): equal for every scheme that translates correctly.
#[derive(Default)]
struct History(u64);

impl History {
    fn add(&mut self, v: u64) {
        // FNV-1a over the value's bytes.
        for b in v.to_le_bytes() {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

struct State<S: Scheme> {
    machine: Machine<S>,
    isa: Isa,
    format: Format,
    /// x86: CR0, CR3, CR4 and EFER as last recorded.
    x86: [u64; 4],
    /// The current root while translation is on.
    root: Option<GuestRoot>,
    /// The counters run (from `from_marker` on).
    counting: bool,
    /// The scheme sees the events (always when counting; before, only for a warm start).
    driving: bool,
    /// The current root's table pages.
    tables: TableFrames,
    report: SystemReport,
    history: History,
}

impl<S: Scheme> State<S> {
    /// A window's first marker: counters restart; a cold scheme learns the current root here.
    /// The first window's correctness counts cover everything the scheme replayed before it.
    fn start_counting(&mut self, start: Start) -> Result<(), SimError> {
        let first = !self.counting;
        self.counting = true;
        self.history = History::default();
        self.machine.reset_counts();
        if !self.driving {
            self.driving = true;
            if let Some(root) = self.root {
                self.machine.guest_root_switch(root)?;
                self.machine.platform.stats.root_switches = 0;
            }
        }
        let mut old = std::mem::take(&mut self.report);
        if !first {
            old.pa_mismatches = 0;
            old.unexpected_faults = 0;
            old.spurious_faults = 0;
            old.first_discrepancy = None;
        }
        self.report = SystemReport {
            start: Some(start),
            guest_format: old.guest_format,
            markers: old.markers,
            pa_mismatches: old.pa_mismatches,
            unexpected_faults: old.unexpected_faults,
            spurious_faults: old.spurious_faults,
            first_discrepancy: old.first_discrepancy,
            ..SystemReport::default()
        };
        Ok(())
    }

    fn event(&mut self, r: &SysRecord) -> Result<(), ReplayError> {
        if self.counting {
            self.report.events += 1;
            self.report.instructions += u64::from(r.gap);
        }
        match r.event {
            Event::Access { kind, mode, size, va, pa, value } => {
                if self.counting {
                    match mode {
                        Mode::User => self.report.user_accesses += 1,
                        Mode::Supervisor => self.report.kernel_accesses += 1,
                        Mode::Machine => self.report.machine_accesses += 1,
                    }
                }
                if self.driving && mode != Mode::Machine && self.root.is_some() {
                    self.translate(kind, mode, va, pa)?;
                }
                if kind == Kind::Store {
                    if self.counting && mode == Mode::User {
                        self.report.user_stores += 1;
                    }
                    self.store(pa, size, value)?;
                }
            }
            Event::Satp { value } => self.satp(value)?,
            Event::X86Control { written, cr0, cr3, cr4, efer } => {
                self.x86_control(written, [cr0, cr3, cr4, efer])?;
            }
            Event::Fence { fence, rs1, rs2 } => {
                if self.counting {
                    *self.report.fences.entry(fence.name().to_owned()).or_default() += 1;
                }
                let op = match fence {
                    // rs2 holds an ASID in its low ASIDLEN bits (16 on RV64).
                    Fence::SfenceVma => Some(FlushOp::SfenceVma {
                        va: rs1.map(Gva::new),
                        asid: rs2.map(|a| Asid((a & 0xffff) as u16)),
                    }),
                    Fence::Invlpg => rs1.map(|va| FlushOp::Invlpg { va: Gva::new(va) }),
                    // The guest runs no hypervisor of its own.
                    Fence::HfenceVvma | Fence::HfenceGvma => None,
                };
                if let Some(op) = op.filter(|_| self.driving) {
                    self.machine.guest_flush(op)?;
                }
            }
            Event::Trap { cause, tval, from } => {
                if self.driving {
                    self.trap(cause, tval, from)?;
                }
            }
            Event::Marker { .. } => {}
        }
        Ok(())
    }

    fn translate(&mut self, kind: Kind, mode: Mode, va: u64, pa: u64) -> Result<(), ReplayError> {
        let access = access_of(kind, mode);
        match self.machine.access(Gva::new(va), access) {
            Ok(hpa) => {
                let mut ok = true;
                if kind != Kind::Fetch {
                    // A lookup, not `gpa_to_hpa`: the check must not back frames itself.
                    let gpa = Gpa::new(pa);
                    let expected = self.machine.platform.guest_mem.lookup(gpa.page()).map(|hfn| {
                        hfn.addr().as_u64() | gpa.page_offset(crate::addr::PageSize::Size4K)
                    });
                    if expected != Some(hpa.as_u64()) {
                        ok = false;
                        self.report.pa_mismatches += 1;
                        self.note(format!(
                            "{} at {va:#x} ({}) translated to host {hpa}, but QEMU recorded \
                             guest-physical {pa:#x}",
                            kind.name(),
                            mode.name()
                        ));
                    }
                }
                if self.counting {
                    self.history.add(va ^ u64::from(ok) << 63);
                }
            }
            Err(Stop::GuestFault(f)) => {
                self.report.unexpected_faults += 1;
                self.note(format!(
                    "{} at {va:#x} ({}) completed under QEMU but faulted in the replay: {f:?}",
                    kind.name(),
                    mode.name()
                ));
                if self.counting {
                    self.history.add(!va);
                }
            }
            Err(Stop::Error(e)) => return Err(e.into()),
        }
        Ok(())
    }

    fn note(&mut self, what: String) {
        self.report.first_discrepancy.get_or_insert(what);
    }

    /// A recorded trap: a page fault is replayed as the access that took it.
    fn trap(&mut self, cause: u64, tval: u64, from: Mode) -> Result<(), ReplayError> {
        let counting = self.counting;
        let kind = match cause {
            FETCH_PAGE_FAULT => Kind::Fetch,
            LOAD_PAGE_FAULT => Kind::Load,
            STORE_PAGE_FAULT => Kind::Store,
            USER_ECALL => {
                self.report.syscalls += u64::from(counting);
                return Ok(());
            }
            _ => {
                self.report.other_traps += u64::from(counting);
                return Ok(());
            }
        };
        if counting {
            *self.report.page_faults.entry(kind.name().to_owned()).or_default() += 1;
        }
        if self.root.is_none() {
            return Ok(());
        }
        match self.machine.access(Gva::new(tval), access_of(kind, from)) {
            Ok(_) => {
                self.report.spurious_faults += 1;
                self.note(format!(
                    "the recorded {} page fault at {tval:#x} ({}) did not fault in the replay",
                    kind.name(),
                    from.name()
                ));
            }
            Err(Stop::GuestFault(_)) if counting => self.history.add(tval.rotate_left(1)),
            Err(Stop::GuestFault(_)) => {}
            Err(Stop::Error(e)) => return Err(e.into()),
        }
        Ok(())
    }

    fn satp(&mut self, value: u64) -> Result<(), ReplayError> {
        if self.counting {
            self.report.root_writes += 1;
        }
        let mode = value >> 60;
        if mode == 0 {
            self.root = None;
            return Ok(());
        }
        match format_of(mode) {
            Some((f, _)) if f == self.format => {}
            _ => {
                return Err(ReplayError::Sim(SimError::Config(format!(
                    "satp {value:#x} switches to mode {mode}, but the guest started with {}",
                    self.format.name
                ))))
            }
        }
        let table = PageTable::new(Gpa::new((value & ((1 << 44) - 1)) << 12), self.format);
        let root = GuestRoot { table, asid: Asid((value >> 44 & 0xffff) as u16) };
        self.tables.set_root(&self.machine.platform, value & ((1 << 44) - 1));
        self.root = Some(root);
        if self.driving {
            self.machine.guest_root_switch(root)?;
        }
        Ok(())
    }

    /// An x86 control-register write: paging turned on or off, a root switch (every CR3
    /// write, even of the value it held, flushes the non-global TLB entries without PCIDs), a
    /// global flush (CR4.PGE toggled).
    fn x86_control(&mut self, written: u8, regs: [u64; 4]) -> Result<(), ReplayError> {
        let [cr0, cr3, cr4, efer] = regs;
        let before = std::mem::replace(&mut self.x86, regs);
        let Some((format, _)) = x86_format_of(cr0, cr4, efer) else {
            self.root = None;
            return Ok(());
        };
        if format != self.format {
            return Err(ReplayError::Sim(SimError::Config(format!(
                "CR4 {cr4:#x} switches to {}, but the guest started with {}",
                format.name, self.format.name
            ))));
        }
        let pcid = if cr4 & x86::CR4_PCIDE != 0 { (cr3 & 0xfff) as u16 } else { 0 };
        let switch = written == 3 || self.root.is_none() || before[1] != cr3;
        if switch {
            if self.counting {
                self.report.root_writes += 1;
            }
            let table = PageTable::new(Gpa::new(cr3 & x86::CR3_ROOT), self.format);
            let root = GuestRoot { table, asid: Asid(pcid) };
            self.tables.set_root(&self.machine.platform, (cr3 & x86::CR3_ROOT) >> 12);
            self.root = Some(root);
            if self.driving {
                self.machine.guest_root_switch(root)?;
                self.machine.guest_flush(FlushOp::MovCr3 { pcid: Asid(pcid), noflush: false })?;
            }
        }
        if (before[2] ^ cr4) & x86::CR4_PGE != 0 && self.driving {
            let everything = FlushOp::Invpcid {
                kind: crate::mmu::flush::InvpcidType::AllIncludingGlobal,
                pcid: Asid(0),
                va: Gva::new(0),
            };
            self.machine.guest_flush(everything)?;
        }
        Ok(())
    }

    /// A store of the low `size` bytes of `value` at guest-physical `pa`, merged into the
    /// image's 8-byte words (a 16-byte store's high half was not recorded; it is left as is).
    fn store(&mut self, pa: u64, size: u8, value: u64) -> Result<(), ReplayError> {
        if !(self.isa.ram_base()..GUEST_PHYS_BYTES).contains(&pa) {
            return Ok(());
        }
        if self.counting {
            self.report.stores += 1;
        }
        let len = u64::from(size.min(8));
        let mut done = 0u64;
        let mut into_table = false;
        while done < len {
            let at = pa + done;
            let word = at & !7;
            let shift = (at - word) * 8;
            let n = (8 - (at - word)).min(len - done);
            let mask = if n == 8 { u64::MAX } else { ((1u64 << (n * 8)) - 1) << shift };
            let part = (value >> (done * 8)) << shift & mask;
            let gpa = Gpa::new(word);
            let table = self.tables.contains(word >> 12);
            let p = &mut self.machine.platform;
            // A whole aligned word needs nothing of the old one, unless it is a table entry.
            let old = if mask == u64::MAX && !table { 0 } else { p.read_guest_u64(gpa)? };
            let new = old & !mask | part;
            if self.driving {
                self.machine.guest_store(gpa, new)?;
            } else if let Some(hpa) = p.gpa_to_hpa(gpa)? {
                p.host.write_u64(hpa, new);
            }
            if table {
                into_table = true;
                self.tables.stored(&self.machine.platform, word, old, new);
            }
            done += n;
        }
        if into_table && self.counting {
            self.report.table_stores += 1;
        }
        Ok(())
    }

    /// The report of the window that ends here.
    fn close_window(&mut self, spec: &SystemSpec, name: String) -> Result<Report, SimError> {
        // The recorded instructions cost what every front end charges per instruction.
        let compute = ComputeReport::counted("recorded", self.report.instructions);
        let guest = GuestReport {
            faults: [("recorded".to_owned(), self.report.page_faults.values().sum())].into(),
            syscalls: self.report.syscalls,
            history: format!("{:016x}", self.history.0),
            vcpus: 1,
            ..GuestReport::default()
        };
        let id = ReportId {
            scheme: spec.scheme,
            workload: name,
            profile: spec.profile.name.clone(),
            seed: 0,
        };
        let mut report = machine_report(&self.machine, id, guest, compute)?;
        report.system = Some(self.report.clone());
        Ok(report)
    }
}

/// The MMU access of a recorded one.
fn access_of(kind: Kind, mode: Mode) -> Access {
    let kind = match kind {
        Kind::Store | Kind::Modify => AccessKind::Store,
        Kind::Fetch => AccessKind::Fetch,
        Kind::Load => AccessKind::Load,
    };
    let privilege = if mode == Mode::User { Privilege::User } else { Privilege::Supervisor };
    Access { kind, privilege }
}
