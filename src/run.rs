//! One run: a scheme on a workload under a profile, from an empty machine to a [`Report`].
//! This is the control plane; it picks the scheme type once and hands a monomorphic
//! `Os<S>` to the workload loop, so the per-access path is statically dispatched.

use std::collections::BTreeMap;

use crate::config::ConfigError;
use crate::guest::{FaultResolution, Os, OsError};
use crate::machine::{Machine, Platform, Scheme, SimError};
use crate::profile::Profile;
use crate::report::{
    CauseCounts, ComputeReport, FillsBySize, GuestReport, Report, TablesReport, ThpReport,
    TlbReport, WalkReport,
};
use crate::scheme::snp::{NestedTableKind, SnpOptions};
use crate::scheme::{
    FlatNested, FlatNestedOptions, Hspt, HsptOptions, Native, Nested, NestedOptions,
    NestedSettings, NestedWalk, SchemeKind, Shadow, ShadowOptions, Softmmu, SoftmmuOptions,
    SpecShadow, SpecShadowOptions,
};
use crate::workload::{self, TraceParams, TraceReplay, TraceSet, Workload, WorkloadKind};

/// What to run.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// The scheme.
    pub scheme: SchemeKind,
    /// The workload.
    pub workload: WorkloadKind,
    /// `workload.KEY=VALUE` settings, without the `workload.` prefix.
    pub workload_sets: Vec<(String, String)>,
    /// `scheme.KEY=VALUE` settings, without the prefix: options of the shadow schemes
    /// ([`ShadowOptions`]) and of `spec-shadow` ([`SpecShadowOptions`]); each scheme takes the
    /// keys its options have and ignores the others (a key no scheme has is an error).
    pub scheme_sets: Vec<(String, String)>,
    /// The machine.
    pub profile: Profile,
    /// The seed of every random choice.
    pub seed: u64,
    /// Check every translation the scheme fills the TLB with against the guest's table (the
    /// translation oracle, [`crate::oracle`]); a violation fails the run.
    pub verify: bool,
    /// Traces to replay instead of `workload` (`--trace`): every stream of every trace runs as a
    /// guest process; `workload_sets` then set [`TraceParams`].
    pub traces: Option<TraceSet>,
    /// `--warmup N`: run without counting for N user accesses (a built-in workload) or until
    /// every stream has run N instructions (a trace), then zero every counter (0: none).
    pub warmup: u64,
}

impl RunSpec {
    /// `scheme` on `workload` under `profile`, seed 1, every parameter at its default.
    pub fn new(scheme: SchemeKind, workload: WorkloadKind, profile: Profile) -> Self {
        RunSpec {
            scheme,
            workload,
            workload_sets: Vec::new(),
            scheme_sets: Vec::new(),
            profile,
            seed: 1,
            verify: false,
            traces: None,
            warmup: 0,
        }
    }

    /// The workload's name in reports: the built-in workload's, or the traces' file names.
    pub fn workload_name(&self) -> String {
        match &self.traces {
            Some(t) => t.name(),
            None => self.workload.name().to_owned(),
        }
    }

    fn build_workload(&self) -> Result<Workload, ConfigError> {
        match &self.traces {
            Some(t) => {
                let params = TraceParams::with_sets(&self.workload_sets)?;
                Ok(Workload::Trace(TraceReplay::new(t.clone(), params)))
            }
            None => self.workload.build(self.seed, &self.workload_sets),
        }
    }

    /// Everything the report of this run depends on, as JSON: memvirt's version, the scheme, the
    /// settings, the whole profile, the seed, the warm-up and `--verify`. `workload` stands for
    /// the workload (its name, or what identifies a trace's content), which the spec itself
    /// cannot say for a trace. Two specs with the same identity give the same report.
    pub fn identity(&self, workload: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "memvirt": env!("CARGO_PKG_VERSION"),
            "scheme": self.scheme.name(),
            "workload": workload,
            "workload_sets": self.workload_sets,
            "scheme_sets": self.scheme_sets,
            "profile": serde_json::to_value(&self.profile).unwrap_or(serde_json::Value::Null),
            "seed": self.seed,
            "verify": self.verify,
            "warmup": self.warmup,
        })
    }
}

/// A short name for `text`: its 64-bit FNV-1a hash as 16 hex digits. Not cryptographic; it
/// tells apart the runs of one experiment or the journals of one directory.
pub fn digest(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A bad profile or workload setting.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The simulation failed (memory exhausted, a bug).
    #[error("{scheme} on {workload}: {error}")]
    Sim {
        /// Scheme name.
        scheme: &'static str,
        /// Workload name.
        workload: String,
        /// What went wrong (in the message, so not exposed as a source too).
        error: SimError,
    },
}

/// Why `scheme` cannot run on `profile` with `scheme_sets` (`scheme.` prefix stripped), if it
/// cannot: an emulator given several vCPUs, or an HSPT scheme whose guest address space does not
/// fit its host process.
pub fn unavailable(
    scheme: SchemeKind,
    profile: &Profile,
    scheme_sets: &[(String, String)],
) -> Option<String> {
    if profile.smp.vcpus > 1 && emulates_one_cpu(scheme) {
        return Some(format!("it emulates one guest CPU, not {}", profile.smp.vcpus));
    }
    let org = scheme.hspt_organization()?;
    let opts = HsptOptions::default().with_sets(&scheme.own_sets(scheme_sets).ok()?).ok()?;
    let bits = profile.arch().ok()?.guest_format.input_bits();
    crate::scheme::host::check(&opts.host, bits, opts.regions_for(org)).err().map(|e| e.to_string())
}

/// Whether `scheme` is a cross-ISA emulator of one guest CPU (`softmmu`, HSPT), which cannot
/// run a guest of several vCPUs.
fn emulates_one_cpu(scheme: SchemeKind) -> bool {
    scheme == SchemeKind::Softmmu || scheme.hspt_organization().is_some()
}

/// Runs `spec` to completion. `progress(done, total)` is called now and then, in the
/// workload's own units.
pub fn run(spec: &RunSpec, progress: &mut dyn FnMut(u64, u64)) -> Result<Report, RunError> {
    let sim = |error: SimError| RunError::Sim {
        scheme: spec.scheme.name(),
        workload: spec.workload_name(),
        error,
    };
    // Bad settings are reported before any simulation work.
    let workload = spec.build_workload()?;
    let cfg = spec.profile.platform_config()?;
    let platform = Platform::new(&cfg, spec.profile.costs).map_err(sim)?;
    let result = with_scheme(
        spec.scheme,
        &spec.scheme_sets,
        &spec.profile,
        platform,
        Execute { spec, workload, progress },
    )
    .map_err(|e| match e {
        SchemeError::Config(c) => RunError::Config(c),
        SchemeError::Sim(e) => sim(e),
    })?;
    result.map_err(|e| match e {
        OsError::Sim(s) => sim(s),
        // Killed processes are handled by the workload loop; one escaping it is a bug.
        killed @ OsError::Killed { .. } => {
            sim(SimError::Internal { scheme: spec.scheme.name(), detail: killed.to_string() })
        }
    })
}

/// Why a scheme could not be built.
#[derive(Debug)]
pub enum SchemeError {
    /// A bad `scheme.` setting or profile.
    Config(ConfigError),
    /// The platform could not hold the scheme's tables.
    Sim(SimError),
}

impl From<ConfigError> for SchemeError {
    fn from(e: ConfigError) -> Self {
        SchemeError::Config(e)
    }
}

/// What to do with a machine once its scheme is built: the front ends (the guest model with
/// its workloads, full-system replay) each implement it, so that the per-access loop is
/// monomorphic in the scheme.
pub trait Drive {
    /// What driving returns.
    type Output;
    /// Drives `machine`.
    fn drive<S: Scheme>(self, machine: Machine<S>) -> Self::Output;
}

/// Builds `scheme` (with its `scheme.` settings `scheme_sets`) on `platform` under `profile`
/// and hands the machine to `drive`.
pub fn with_scheme<D: Drive>(
    scheme: SchemeKind,
    scheme_sets: &[(String, String)],
    profile: &Profile,
    mut platform: Platform,
    drive: D,
) -> Result<D::Output, SchemeError> {
    let cfg = profile.platform_config()?;
    if cfg.vcpus > 1 && emulates_one_cpu(scheme) {
        return Err(SchemeError::Config(ConfigError::Invalid(format!(
            "{} emulates one guest CPU: smp.vcpus must be 1, not {}",
            scheme.name(),
            cfg.vcpus
        ))));
    }
    Ok(match scheme {
        SchemeKind::Native => drive.drive(Machine::new(platform, Native)),
        SchemeKind::Nested => {
            let settings = NestedSettings::default().with_sets(&scheme.own_sets(scheme_sets)?)?;
            let opts = NestedOptions { host_page: settings.host_page, ..NestedOptions::default() };
            let scheme = Nested::new(&mut platform, opts).map_err(SchemeError::Sim)?;
            drive.drive(Machine::new(platform, scheme))
        }
        SchemeKind::Snp => {
            let snp = SnpOptions::default().with_sets(&scheme.own_sets(scheme_sets)?)?;
            let flat = snp.nested_table == NestedTableKind::Flat;
            let opts = NestedOptions {
                walk: NestedWalk::Software,
                flat,
                host_page: snp.host_page,
                ..NestedOptions::default()
            };
            let scheme = Nested::new(&mut platform, opts).map_err(SchemeError::Sim)?;
            drive.drive(Machine::new(platform, scheme))
        }
        SchemeKind::Softmmu => {
            let opts = SoftmmuOptions::default().with_sets(&scheme.own_sets(scheme_sets)?)?;
            let scheme = Softmmu::new(&mut platform, &cfg.mmu, opts, profile.walk_caches)
                .map_err(SchemeError::Sim)?;
            drive.drive(Machine::new(platform, scheme))
        }
        SchemeKind::HsptShared | SchemeKind::HsptPrefill | SchemeKind::HsptPrivate => {
            let org = scheme.hspt_organization().unwrap_or(crate::scheme::Organization::Shared);
            let opts = HsptOptions::default().with_sets(&scheme.own_sets(scheme_sets)?)?;
            let scheme = Hspt::new(&mut platform, org, opts, profile.walk_caches)
                .map_err(SchemeError::Sim)?;
            drive.drive(Machine::new(platform, scheme))
        }
        SchemeKind::FlatNested => {
            let scheme = FlatNested::new(&mut platform, FlatNestedOptions::default())
                .map_err(SchemeError::Sim)?;
            drive.drive(Machine::new(platform, scheme))
        }
        SchemeKind::SpecShadow => {
            let sets = scheme.own_sets(scheme_sets)?;
            let opts = SpecShadowOptions::default().with_sets(&sets)?;
            let scheme = SpecShadow::new(&mut platform, opts, false).map_err(SchemeError::Sim)?;
            drive.drive(Machine::new(platform, scheme))
        }
        kind => {
            let opts = kind.shadow_options().unwrap_or(ShadowOptions::TSP);
            let opts = opts.with_sets(&kind.own_sets(scheme_sets)?)?;
            let scheme = Shadow::new(&mut platform, kind.name(), opts).map_err(SchemeError::Sim)?;
            drive.drive(Machine::new(platform, scheme))
        }
    })
}

/// The guest-model front end: boots the model kernel and runs the workload.
struct Execute<'a> {
    spec: &'a RunSpec,
    workload: Workload,
    progress: &'a mut dyn FnMut(u64, u64),
}

impl Drive for Execute<'_> {
    type Output = Result<Report, OsError>;
    fn drive<S: Scheme>(self, machine: Machine<S>) -> Self::Output {
        execute(machine, self.spec, self.workload, self.progress)
    }
}

fn execute<S: Scheme>(
    mut machine: Machine<S>,
    spec: &RunSpec,
    mut workload: workload::Workload,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Report, OsError> {
    if spec.verify {
        machine.enable_oracle();
    }
    let mut os = Os::boot(machine, spec.profile.kernel)?;
    os.set_smp(spec.profile.smp.quantum, spec.profile.smp.broadcast_flush);
    os.reset_counters();
    if let Some(oracle) = os.machine.platform.oracle.as_deref_mut() {
        oracle.reset_counts();
    }
    match &mut workload {
        Workload::Trace(t) => t.warm_up_for(spec.warmup),
        _ => os.warm_up_for(spec.warmup),
    }
    workload::drive(&mut os, &mut workload, progress)?;
    if spec.warmup > 0 && os.warmed().is_none() {
        let ran = match workload.trace_report() {
            Some(t) => {
                let longest = t.streams.iter().map(|s| s.instructions).max().unwrap_or(0);
                format!("instructions per stream, and its longest stream ran {longest}")
            }
            None => format!("user accesses, and the whole run made {}", os.user_accesses()),
        };
        return Err(OsError::Sim(SimError::Config(format!(
            "--warmup {} is not shorter than the workload: the warm-up counts {ran}; lower \
             --warmup or lengthen the workload (--length steady, --set workload.KEY=VALUE)",
            spec.warmup
        ))));
    }
    report(&mut os, spec, &workload)
}

/// The run's report; an error if its cycle totals do not fit in 64 bits (the costs are too large
/// for this run's length), since any number printed would be wrong.
fn report<S: Scheme>(
    os: &mut Os<S>,
    spec: &RunSpec,
    workload: &Workload,
) -> Result<Report, OsError> {
    let user_accesses = os.user_accesses();
    let history = os.history();
    let costs = &os.machine.platform.costs;
    // A trace says how many instructions ran; a built-in workload assumes a number per access.
    let mut trace = workload.trace_report();
    if let Some(t) = &mut trace {
        t.cycles_per_instruction = costs.cycles_per_instruction;
    }
    let compute = match &trace {
        Some(t) => ComputeReport::counted("trace", t.instructions),
        None => ComputeReport::per_access(user_accesses, costs.instructions_per_access),
    };
    let faults = FaultResolution::ALL
        .iter()
        .map(|&r| (r.name().to_owned(), os.stats.faults[r as usize]))
        .collect();
    let guest = &os.stats;
    let guest = GuestReport {
        faults,
        leaf_pte_writes: guest.leaf_pte_writes,
        pte_writes: guest.pte_writes,
        syscalls: guest.syscalls,
        context_switches: guest.context_switches,
        processes: guest.processes,
        killed: guest.killed,
        frames_in_use: os.frames.in_use(),
        peak_frames: os.frames.peak(),
        kill_log: guest.kill_log.clone(),
        history: format!("{history:016x}"),
        thp: ThpReport {
            fault_alloc: os.thp.fault_alloc,
            fault_fallback: os.thp.fault_fallback,
            split_pmd: os.thp.split_pmd,
        },
        vcpus: os.cpus() as u64,
        shootdowns: guest.shootdowns,
        migrations: guest.migrations,
    };
    let id = ReportId {
        scheme: spec.scheme,
        workload: spec.workload_name(),
        profile: spec.profile.name.clone(),
        seed: spec.seed,
    };
    let mut report = machine_report(&os.machine, id, guest, compute).map_err(OsError::Sim)?;
    report.trace = trace;
    report.warmup = os.warmed().cloned();
    Ok(report)
}

/// Who a report is about.
#[derive(Clone, Debug)]
pub struct ReportId {
    /// The scheme.
    pub scheme: SchemeKind,
    /// The workload's name (or the trace's).
    pub workload: String,
    /// The profile's name.
    pub profile: String,
    /// The seed.
    pub seed: u64,
}

/// The report of `machine` after a run, whichever front end drove it, with `guest` as its
/// guest section and `compute` the instructions its compute cycles charge (`trace`, `system`
/// and `warmup` are the caller's); an error if its cycle totals do not fit in 64 bits (the
/// costs are too large for the run's length), since any number printed would be wrong.
pub fn machine_report<S: Scheme>(
    machine: &Machine<S>,
    id: ReportId,
    guest: GuestReport,
    mut compute: ComputeReport,
) -> Result<Report, SimError> {
    let p = &machine.platform;
    compute.cycles_per_instruction = p.costs.cycles_per_instruction;
    let mut cycles = machine.cycles();
    cycles.compute = p.costs.compute_cycles(compute.instructions);
    if cycles.checked_total().is_none() {
        return Err(SimError::Config(format!(
            "the cycle totals overflow 64 bits ({cycles:?}): the costs are too large for a run \
             this long; lower the costs or shorten the run"
        )));
    }
    let stats = &p.stats;
    let mmu = &p.mmu_stats();
    // Every access is one TLB lookup ([`Platform::accesses`]).
    let accesses = mmu.lookups();
    let mut counters = BTreeMap::new();
    machine.scheme.counters(&mut counters);
    Ok(Report {
        scheme: id.scheme.name().to_owned(),
        workload: id.workload,
        profile: id.profile,
        seed: id.seed,
        accesses,
        tlb_misses: mmu.misses,
        walk_refs_per_miss: if mmu.walks == 0 {
            0.0
        } else {
            (mmu.guest_refs + mmu.nested_refs) as f64 / mmu.walks as f64
        },
        vm_exits: CauseCounts::exits(stats),
        hw_traps: CauseCounts::traps(stats),
        guest_page_faults: stats.guest_faults,
        cycles: cycles.total(),
        overhead_vs_native: None,
        cycles_by_category: cycles,
        tlb: TlbReport {
            l1_hits: mmu.l1_hits,
            l2_hits: mmu.l2_hits,
            misses: mmu.misses,
            mpka: if accesses == 0 { 0.0 } else { mmu.misses as f64 * 1000.0 / accesses as f64 },
            fills: FillsBySize::from_counts(mmu.fills_by_size),
            reach_bytes: mmu.mean_reach(p.mmu.tlb.reach_bytes()),
        },
        walk: WalkReport::from_mmu(mmu),
        flushes: stats.flushes.iter().map(|(&k, &v)| (k.to_owned(), v)).collect(),
        root_switches: stats.root_switches,
        guest,
        tables: TablesReport {
            host_table_frames: p.host.table_frames(),
            host_frames: p.host.frames_in_use(),
        },
        scheme_counters: counters.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        oracle: p.oracle.as_ref().map(|o| o.counts()),
        compute,
        warmup: None,
        trace: None,
        system: None,
    })
}

/// Runs every scheme of `schemes` on each workload of `specs` (each spec's scheme is ignored),
/// plus `native` for a workload where it is not among them, as independent runs on `jobs`
/// threads (rayon; 0: one per core), and fills `overhead_vs_native`. Every run is deterministic
/// and the reports come back grouped by spec, in the order of `schemes`, so the result is the
/// same whatever the thread count. `finished(done, total)` is called from the worker threads as
/// runs end. The first error in that order is returned.
pub fn compare_parallel(
    specs: &[RunSpec],
    schemes: &[SchemeKind],
    jobs: usize,
    finished: &(dyn Fn(usize, usize) + Sync),
) -> Result<Vec<Vec<Report>>, RunError> {
    use rayon::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut order: Vec<SchemeKind> = schemes.to_vec();
    let with_native = !order.contains(&SchemeKind::Native);
    if with_native {
        order.push(SchemeKind::Native);
    }
    let runs: Vec<(usize, SchemeKind)> =
        (0..specs.len()).flat_map(|i| order.iter().map(move |&s| (i, s))).collect();
    let (total, done) = (runs.len(), AtomicUsize::new(0));
    let one = |&(i, scheme): &(usize, SchemeKind)| {
        let result = run(&RunSpec { scheme, ..specs[i].clone() }, &mut |_, _| {});
        finished(done.fetch_add(1, Ordering::Relaxed) + 1, total);
        result
    };
    let results: Vec<Result<Report, RunError>> =
        match rayon::ThreadPoolBuilder::new().num_threads(jobs).build() {
            Ok(pool) => pool.install(|| runs.par_iter().map(one).collect()),
            // No thread could be started: run them here, one after another.
            Err(_) => runs.iter().map(one).collect(),
        };
    let mut results = results.into_iter();
    let mut grouped = Vec::with_capacity(specs.len());
    for _ in specs {
        let mut reports = Vec::with_capacity(order.len());
        for _ in &order {
            match results.next() {
                Some(r) => reports.push(r?),
                None => break,
            }
        }
        let native =
            reports.iter().find(|r| r.scheme == SchemeKind::Native.name()).map_or(0, |r| r.cycles);
        if with_native {
            reports.pop();
        }
        for r in &mut reports {
            r.set_native(native);
        }
        grouped.push(reports);
    }
    Ok(grouped)
}

/// Runs every scheme in `schemes` on `spec`'s workload, plus `native` for the overhead column
/// if it is not among them, and fills `overhead_vs_native` in each report. Reports come back
/// in the order of `schemes`.
pub fn compare(
    spec: &RunSpec,
    schemes: &[SchemeKind],
    progress: &mut dyn FnMut(SchemeKind, u64, u64),
) -> Result<Vec<Report>, RunError> {
    let mut reports = Vec::with_capacity(schemes.len());
    let mut native_cycles = None;
    for &scheme in schemes {
        let one = RunSpec { scheme, ..spec.clone() };
        let r = run(&one, &mut |d, t| progress(scheme, d, t))?;
        if scheme == SchemeKind::Native {
            native_cycles = Some(r.cycles);
        }
        reports.push(r);
    }
    let native = match native_cycles {
        Some(c) => c,
        None => {
            let one = RunSpec { scheme: SchemeKind::Native, ..spec.clone() };
            run(&one, &mut |d, t| progress(SchemeKind::Native, d, t))?.cycles
        }
    };
    for r in &mut reports {
        r.set_native(native);
    }
    Ok(reports)
}
