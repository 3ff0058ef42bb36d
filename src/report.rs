//! What one run reports (DESIGN.md §6), as a plain serializable value. The JSON form of
//! [`Report`] is a stable contract: fields may be added, never renamed or removed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::mmu::MmuStats;
use crate::oracle::OracleCounts;
use crate::stats::{Cycles, ExitCause, Stats, TrapCause};

/// Counts by cause, with their total. Serializes as `{"total": n, "<cause>": n, ...}` with every
/// cause present, so consumers never meet a missing key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CauseCounts {
    /// Sum over causes.
    pub total: u64,
    /// Count per cause name, in report order.
    #[serde(flatten)]
    pub by_cause: BTreeMap<String, u64>,
}

impl CauseCounts {
    /// VM exits by cause.
    pub fn exits(stats: &Stats) -> Self {
        let by_cause =
            ExitCause::ALL.iter().map(|&c| (c.name().to_owned(), stats.exits_for(c))).collect();
        CauseCounts { total: stats.total_exits(), by_cause }
    }

    /// Hardware-mode traps by cause.
    pub fn traps(stats: &Stats) -> Self {
        let by_cause =
            TrapCause::ALL.iter().map(|&c| (c.name().to_owned(), stats.traps_for(c))).collect();
        CauseCounts { total: stats.total_traps(), by_cause }
    }
}

/// TLB behaviour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TlbReport {
    /// Hits in an L1 TLB.
    pub l1_hits: u64,
    /// Hits in the L2 TLB.
    pub l2_hits: u64,
    /// Misses of both levels.
    pub misses: u64,
    /// Misses per thousand accesses.
    pub mpka: f64,
    /// Translations filled into the TLB, by page size.
    #[serde(default)]
    pub fills: FillsBySize,
    /// Bytes of address space a vCPU's L2 TLB entries cover (its reach), averaged over the
    /// run's fills: huge pages in both stages raise it.
    #[serde(default)]
    pub reach_bytes: u64,
}

/// TLB fills by page size: an entry is as large as the smaller of the guest's and the host's
/// page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FillsBySize {
    /// 4 KiB entries.
    #[serde(rename = "4k")]
    pub size_4k: u64,
    /// 2 MiB entries.
    #[serde(rename = "2m")]
    pub size_2m: u64,
    /// 1 GiB entries (and larger).
    #[serde(rename = "1g")]
    pub size_1g: u64,
}

impl FillsBySize {
    /// From the MMU's counters.
    pub fn from_counts(counts: [u64; 3]) -> Self {
        let [size_4k, size_2m, size_1g] = counts;
        FillsBySize { size_4k, size_2m, size_1g }
    }
}

/// Page walks and their memory references.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WalkReport {
    /// Walks performed.
    pub walks: u64,
    /// Entry reads in the guest (first) dimension.
    pub guest_refs: u64,
    /// Entry reads in the nested dimension.
    pub nested_refs: u64,
    /// References served by the page-table-read cache levels `[l1, l2, llc, memory]`.
    pub refs_by_level: [u64; 4],
    /// `histogram[i]`: walks that read `i` entries (the last bucket collects the rest).
    pub histogram: Vec<u64>,
    /// First-dimension page-walk-cache hit rate (0 when never consulted).
    pub pwc_hit_rate: f64,
    /// Nested-dimension page-walk-cache hit rate.
    pub nested_pwc_hit_rate: f64,
    /// Nested TLB hit rate.
    pub ntlb_hit_rate: f64,
    /// Accessed/dirty updates written back by the walker.
    pub ad_writes: u64,
}

/// What the guest kernel did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestReport {
    /// Page faults by how the kernel resolved them (`demand_zero`, `zero_page`, `cow_copy`,
    /// `cow_reuse`, `accessed_dirty`, `spurious`, `segv`).
    pub faults: BTreeMap<String, u64>,
    /// Leaf page-table entries the kernel wrote.
    pub leaf_pte_writes: u64,
    /// Every page-table entry store the kernel made (leaves, tables, teardown).
    pub pte_writes: u64,
    /// System calls.
    pub syscalls: u64,
    /// Context switches.
    pub context_switches: u64,
    /// Processes created (the first one included).
    pub processes: u64,
    /// Processes killed by a protection violation.
    pub killed: u64,
    /// Guest frames in use at the end, and at most.
    pub frames_in_use: u64,
    /// Most guest frames in use at once.
    pub peak_frames: u64,
    /// The first kills, described.
    pub kill_log: Vec<String>,
    /// A digest of the guest-visible history: faults delivered and content tokens read. Equal
    /// digests mean equal histories (differential testing, DESIGN.md §7).
    pub history: String,
    /// Transparent huge pages (`kernel.thp`).
    #[serde(default)]
    pub thp: ThpReport,
    /// The guest's vCPUs (`smp.vcpus`).
    #[serde(default = "one")]
    pub vcpus: u64,
    /// TLB shootdowns: flushes of an address space other vCPUs may cache (an SBI remote fence
    /// on RISC-V, IPIs on x86).
    #[serde(default)]
    pub shootdowns: u64,
    /// Tasks an idle vCPU pulled from another's run queue.
    #[serde(default)]
    pub migrations: u64,
}

fn one() -> u64 {
    1
}

/// What the guest kernel did with transparent huge pages (Linux's `/proc/vmstat` names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThpReport {
    /// Huge pages allocated at faults.
    pub fault_alloc: u64,
    /// Faults that could have mapped a huge page but found no free 2 MiB block.
    pub fault_fallback: u64,
    /// Huge mappings split into small ones (partial munmap/mprotect, copy-on-write, migration).
    pub split_pmd: u64,
}

/// Memory the hypervisor and the simulator used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablesReport {
    /// Host frames holding page-table entries (guest, nested and shadow tables).
    pub host_table_frames: u64,
    /// Host frames allocated in total.
    pub host_frames: u64,
}

/// Where a run's instruction count, and so its compute cycles, came from: the one compute
/// model is `instructions x costs.cycles_per_instruction` for every front end.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeReport {
    /// `per-access` (a built-in workload: `costs.instructions_per_access` per user access),
    /// `trace` (the gaps of the replayed records) or `recorded` (the instructions QEMU
    /// executed, full-system replay).
    pub model: String,
    /// Instructions charged.
    pub instructions: u64,
    /// `costs.cycles_per_instruction` (filled in by [`crate::run::machine_report`]).
    pub cycles_per_instruction: u64,
    /// `costs.instructions_per_access` (per-access model only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions_per_access: Option<u64>,
}

impl ComputeReport {
    /// Instructions something counted: `model` is `trace` or `recorded`.
    pub fn counted(model: &str, instructions: u64) -> Self {
        ComputeReport { model: model.to_owned(), instructions, ..ComputeReport::default() }
    }

    /// A built-in workload's `accesses`, `per_access` instructions each.
    pub fn per_access(accesses: u64, per_access: u64) -> Self {
        ComputeReport {
            model: "per-access".to_owned(),
            instructions: accesses.saturating_mul(per_access),
            cycles_per_instruction: 0,
            instructions_per_access: Some(per_access),
        }
    }

    /// The model in a few words, for the line under an overhead table.
    pub fn describe(&self) -> String {
        match self.instructions_per_access {
            Some(ipa) => {
                format!("{ipa} instructions per user access at CPI {}", self.cycles_per_instruction)
            }
            None => format!(
                "the {} instructions at CPI {}",
                if self.model == "trace" { "trace's" } else { "recorded" },
                self.cycles_per_instruction
            ),
        }
    }
}

/// What a warm-up (`--warmup N`) ran before counting started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmupReport {
    /// `accesses` (user accesses, a built-in workload) or `instructions-per-stream` (a trace:
    /// every stream ran at least this many instructions, or ended, before counting started).
    pub unit: String,
    /// The N asked for.
    pub requested: u64,
    /// User accesses made during the warm-up (all streams).
    pub accesses: u64,
    /// Instructions run during the warm-up (all streams; traces only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<u64>,
}

/// The report of one scheme on one workload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Scheme name.
    pub scheme: String,
    /// Workload name (or trace file names).
    pub workload: String,
    /// Profile name.
    pub profile: String,
    /// Seed.
    pub seed: u64,
    /// Guest accesses simulated (user and kernel).
    pub accesses: u64,
    /// TLB misses (both levels).
    pub tlb_misses: u64,
    /// Mean page-table entries read per walk, both dimensions.
    pub walk_refs_per_miss: f64,
    /// VM exits by cause.
    pub vm_exits: CauseCounts,
    /// Hardware-mode traps by cause.
    pub hw_traps: CauseCounts,
    /// Guest page faults delivered to the guest kernel.
    pub guest_page_faults: u64,
    /// Total modelled cycles.
    pub cycles: u64,
    /// `cycles / native cycles - 1` on the same workload, profile and seed; `null` until the
    /// native run is known.
    pub overhead_vs_native: Option<f64>,
    /// Cycles by category.
    pub cycles_by_category: Cycles,
    /// TLB behaviour.
    pub tlb: TlbReport,
    /// Walk behaviour.
    pub walk: WalkReport,
    /// Guest TLB-maintenance operations by kind.
    pub flushes: BTreeMap<String, u64>,
    /// Guest page-table-root switches.
    pub root_switches: u64,
    /// The guest kernel's counters.
    pub guest: GuestReport,
    /// Table memory.
    pub tables: TablesReport,
    /// Scheme-specific counters (nested leaves, shadow pages, ...).
    pub scheme_counters: BTreeMap<String, u64>,
    /// How `cycles_by_category.compute` was computed.
    #[serde(default)]
    pub compute: ComputeReport,
    /// What ran before counting started; absent when nothing was warmed up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<WarmupReport>,
    /// What the translation oracle checked; only in verified runs (`--verify`), so that the
    /// JSON of other runs is unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oracle: Option<OracleCounts>,
    /// A trace replay's instructions, streams and relocations (docs/json.md); absent for the
    /// built-in workloads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::workload::TraceReport>,
    /// A full-system replay's guest facts (docs/json.md); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<crate::fullsys::SystemReport>,
}

fn rate(hits: u64, lookups: u64) -> f64 {
    if lookups == 0 {
        0.0
    } else {
        hits as f64 / lookups as f64
    }
}

impl WalkReport {
    /// Summarises the MMU's walk counters.
    pub fn from_mmu(s: &MmuStats) -> Self {
        let used = s.refs_histogram.0.iter().rposition(|&n| n != 0).map_or(0, |i| i + 1);
        WalkReport {
            walks: s.walks,
            guest_refs: s.guest_refs,
            nested_refs: s.nested_refs,
            refs_by_level: s.refs_by_level,
            histogram: s.refs_histogram.0[..used].to_vec(),
            pwc_hit_rate: rate(s.pwc.hits, s.pwc.lookups),
            nested_pwc_hit_rate: rate(s.nested_pwc.hits, s.nested_pwc.lookups),
            ntlb_hit_rate: rate(s.ntlb.hits, s.ntlb.lookups),
            ad_writes: s.ad_writes,
        }
    }
}

impl Report {
    /// Fills `overhead_vs_native` from the native run's cycles.
    pub fn set_native(&mut self, native_cycles: u64) {
        self.overhead_vs_native =
            (native_cycles > 0).then(|| self.cycles as f64 / native_cycles as f64 - 1.0);
    }
}
