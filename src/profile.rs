//! Hardware and cost profiles: everything about the simulated machine that is not the scheme or
//! the workload — paging formats, A/D policy, memory sizes, MMU geometry, cycle costs and guest
//! kernel tunables — in one TOML document.
//!
//! Five profiles are built in (`profiles/*.toml`, every number citing its source or saying it is
//! an assumption). A profile file names a built-in `base` and overrides any of its keys; single
//! keys are overridden with `--set key=value` (see [`crate::config`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::addr::Vmid;
use crate::config::{self, ConfigError};
use crate::cost::Costs;
use crate::guest::config::KernelConfig;
use crate::machine::{ArchConfig, PlatformConfig};
use crate::mmu::{Handlers, MmuConfig};
use crate::paging::{AdPolicy, Family, Format, Regime, Stage};

/// The built-in profiles: name and TOML text.
pub const BUILTIN: &[(&str, &str)] = &[
    ("riscv-sv39", include_str!("../profiles/riscv-sv39.toml")),
    ("riscv-sv48", include_str!("../profiles/riscv-sv48.toml")),
    ("x86-64", include_str!("../profiles/x86-64.toml")),
    ("x86-64-la57", include_str!("../profiles/x86-64-la57.toml")),
    ("sunway-like", include_str!("../profiles/sunway-like.toml")),
];

/// The profile used when none is named, and the base of a profile file without `base`.
pub const DEFAULT: &str = "riscv-sv39";

/// Largest guest memory a profile may ask for, in MiB (64 GiB).
pub const MAX_GUEST_MIB: u64 = 65_536;
/// Largest host memory a profile may ask for, in MiB (256 GiB).
pub const MAX_HOST_MIB: u64 = 262_144;
/// Host memory a profile must have beyond the guest's, in MiB: room for the nested, shadow and
/// host page tables and the hypervisor's frames.
pub const HOST_HEADROOM_MIB: u64 = 64;
/// Largest ASID count a profile may give the guest kernel (16-bit RISC-V ASIDs, 0 excluded).
pub const MAX_ASIDS: u32 = 65_535;
/// The VMID the guest runs with in virtualized runs.
pub const GUEST_VMID: Vmid = Vmid(1);

/// A complete description of the simulated machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Short name (the built-in's name, or the one a profile file sets).
    pub name: String,
    /// One line for `memvirt list` and reports.
    pub description: String,
    /// Page-walk caches and the nested TLB on; `false` turns them all off (cold-walk analysis)
    /// whatever `mmu` says, so `--set walk_caches=off` is one switch.
    pub walk_caches: bool,
    /// Paging formats and A/D policy.
    pub arch: ArchProfile,
    /// Memory sizes.
    pub memory: MemoryProfile,
    /// TLB, page-walk-cache, nested-TLB and page-table-read-cache geometry.
    pub mmu: MmuConfig,
    /// Cycle costs.
    pub costs: Costs,
    /// What VM-exit and hardware-mode-trap handlers leave in the TLB and caches.
    #[serde(default)]
    pub handlers: Handlers,
    /// Guest kernel tunables.
    pub kernel: KernelConfig,
    /// vCPUs and how their execution interleaves.
    #[serde(default)]
    pub smp: SmpProfile,
}

/// The guest's vCPUs (`[smp]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmpProfile {
    /// vCPUs, each with its own MMU (`--vcpus N`).
    pub vcpus: u64,
    /// User accesses a vCPU makes before the next vCPU runs: the simulator runs the vCPUs in
    /// turn, round robin, so a run is one deterministic interleaving. Assumption: 1,000, short
    /// against a time slice (1,000,000) so that shootdowns meet other vCPUs mid-work.
    pub quantum: u64,
    /// The hardware broadcasts TLB invalidations to every CPU (AMD's INVLPGB with TLBSYNC, Arm's
    /// `TLBI ...IS`): the kernel flushes a space other CPUs may cache with its ordinary fences,
    /// which reach every vCPU's TLB, instead of IPIs or an SBI call. Default false: neither
    /// x86-64 Linux's default nor RISC-V has it.
    #[serde(default)]
    pub broadcast_flush: bool,
}

impl Default for SmpProfile {
    fn default() -> Self {
        SmpProfile { vcpus: 1, quantum: 1_000, broadcast_flush: false }
    }
}

/// Paging formats and accessed/dirty maintenance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchProfile {
    /// The guest's first-stage format, by name (`Format::by_name`: "Sv39", "x86-64 4-level", ...).
    pub guest_format: String,
    /// The nested format ("Sv39x4", "EPT 4-level", ...).
    pub nested_format: String,
    /// How A/D bits are maintained, in both stages.
    pub ad: AdMode,
    /// Who refills the TLB on a miss: `hardware` (a walker) or `software` (a trap to hardware
    /// mode whose handler walks the tables). Absent means hardware.
    #[serde(default)]
    pub refill: crate::machine::Refill,
}

/// How accessed/dirty bits are maintained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdMode {
    /// The walker sets A (and D on a store) itself: x86, EPT with A/D enabled, RISC-V Svadu.
    Hardware,
    /// A clear A, or D on a store, raises a page fault and software sets it: RISC-V Svade.
    Fault,
}

impl AdMode {
    /// The walker's policy.
    pub const fn policy(self) -> AdPolicy {
        match self {
            AdMode::Hardware => AdPolicy::Hardware,
            AdMode::Fault => AdPolicy::Fault,
        }
    }
}

/// Memory sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryProfile {
    /// Guest physical memory, MiB.
    pub guest_mib: u64,
    /// Host physical memory, MiB.
    pub host_mib: u64,
    /// Frames each hypervisor table pool (nested, shadow, emulator tables) takes from host
    /// memory at a time; 1 allocates table pages one by one, interleaved with every other
    /// allocation. See [`crate::mem::host::DEFAULT_POOL_CHUNK`].
    #[serde(default = "default_pool_chunk")]
    pub table_pool_frames: u64,
}

fn default_pool_chunk() -> u64 {
    crate::mem::host::DEFAULT_POOL_CHUNK
}

/// The names of the built-in profiles.
pub fn builtin_names() -> Vec<String> {
    BUILTIN.iter().map(|(name, _)| (*name).to_owned()).collect()
}

/// The built-in profile `name`, validated.
pub fn builtin(name: &str) -> Result<Profile, ConfigError> {
    let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name) else {
        return Err(ConfigError::UnknownProfile {
            origin: None,
            name: name.to_owned(),
            known: builtin_names(),
        });
    };
    let origin = format!("built-in profile {name}");
    let profile: Profile = toml::from_str(text).map_err(|e| ConfigError::BadToml {
        origin: origin.clone(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    profile.validate().map_err(|e| in_origin(&origin, e))?;
    Ok(profile)
}

/// A built-in profile by name, or a profile file by path (see [`parse`]).
pub fn load(name_or_path: &str) -> Result<Profile, ConfigError> {
    if BUILTIN.iter().any(|(n, _)| *n == name_or_path) {
        return builtin(name_or_path);
    }
    let path = Path::new(name_or_path);
    let looks_like_path = name_or_path.contains(['/', std::path::MAIN_SEPARATOR])
        || path.extension().is_some_and(|e| e == "toml");
    if !looks_like_path && !path.exists() {
        return Err(ConfigError::UnknownProfile {
            origin: None,
            name: name_or_path.to_owned(),
            known: builtin_names(),
        });
    }
    let text = std::fs::read_to_string(path)
        .map_err(|error| ConfigError::Unreadable { path: name_or_path.to_owned(), error })?;
    parse(&text, name_or_path)
}

/// A profile file's text: an optional top-level `base = "<built-in>"` (default [`DEFAULT`]) and
/// any keys of a profile, merged over that base. `origin` (the file name) starts every error.
pub fn parse(text: &str, origin: &str) -> Result<Profile, ConfigError> {
    let mut table: toml::Table =
        text.parse().map_err(|e: toml::de::Error| ConfigError::BadToml {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
    let base_name = match table.remove("base") {
        None => DEFAULT.to_owned(),
        Some(toml::Value::String(name)) => name,
        Some(other) => {
            return Err(ConfigError::WrongType {
                origin: Some(origin.to_owned()),
                key: "base".to_owned(),
                expected: "the name of a built-in profile",
                value: other.to_string(),
            })
        }
    };
    let base = builtin(&base_name).map_err(|e| match e {
        ConfigError::UnknownProfile { name, known, .. } => {
            ConfigError::UnknownProfile { origin: Some(origin.to_owned()), name, known }
        }
        other => other,
    })?;
    let profile = config::merge_table(&base, table, origin)?;
    profile.validate().map_err(|e| in_origin(origin, e))?;
    Ok(profile)
}

/// Prefixes a validation message with where the profile came from.
fn in_origin(origin: &str, e: ConfigError) -> ConfigError {
    match e {
        ConfigError::Invalid(message) => ConfigError::Invalid(format!("{origin}: {message}")),
        other => other,
    }
}

impl Profile {
    /// Same as [`builtin`].
    pub fn builtin(name: &str) -> Result<Profile, ConfigError> {
        builtin(name)
    }

    /// Same as [`load`].
    pub fn load(name_or_path: &str) -> Result<Profile, ConfigError> {
        load(name_or_path)
    }

    /// Every key `set` accepts, in tree order.
    pub fn keys(&self) -> Vec<String> {
        config::keys(self)
    }

    /// Sets one key from text (see [`config::set`]) and validates the result; on error the profile
    /// is left as it was.
    pub fn set(&mut self, key: &str, raw: &str) -> Result<(), ConfigError> {
        let updated: Profile = config::set(self, key, raw)?;
        updated.validate()?;
        *self = updated;
        Ok(())
    }

    /// Sets every key of `sets` (in order; a later one wins), then validates the result once,
    /// so that settings that depend on each other (`memory.guest_mib` and `memory.host_mib`)
    /// may come in any order; on error the profile is left as it was.
    pub fn set_all(&mut self, sets: &[(String, String)]) -> Result<(), ConfigError> {
        let mut updated = self.clone();
        for (key, raw) in sets {
            updated = config::set(&updated, key, raw)?;
        }
        updated.validate()?;
        *self = updated;
        Ok(())
    }

    /// Checks what the types cannot: formats that exist and sit at the right stage, an A/D mode
    /// the formats support, memory sizes and kernel tunables in range. MMU geometry is checked by
    /// the MMU when it is built.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let guest = resolve_format("arch.guest_format", &self.arch.guest_format, Stage::First)?;
        let nested = resolve_format("arch.nested_format", &self.arch.nested_format, Stage::Nested)?;
        if self.arch.ad == AdMode::Fault
            && (guest.family != Family::RiscV || nested.family != Family::RiscV)
        {
            return Err(ConfigError::Invalid(format!(
                "arch.ad = \"fault\" is RISC-V Svade, but the formats are {} over {}: x86 and EPT \
                 walkers set A/D themselves (use \"hardware\")",
                guest.name, nested.name
            )));
        }
        let mem = &self.memory;
        in_range("memory.guest_mib", mem.guest_mib, 1, MAX_GUEST_MIB)?;
        in_range("memory.host_mib", mem.host_mib, 1, MAX_HOST_MIB)?;
        in_range("memory.table_pool_frames", mem.table_pool_frames, 1, 1 << 18)?;
        if mem.host_mib < mem.guest_mib.saturating_add(HOST_HEADROOM_MIB) {
            return Err(ConfigError::Invalid(format!(
                "memory.host_mib ({}) must be at least memory.guest_mib ({}) + {HOST_HEADROOM_MIB}: \
                 the host backs all of guest memory and also holds the nested, shadow and host \
                 page tables and the hypervisor's own frames",
                mem.host_mib, mem.guest_mib
            )));
        }
        in_range("smp.vcpus", self.smp.vcpus, 1, crate::machine::MAX_VCPUS as u64)?;
        in_range("smp.quantum", self.smp.quantum, 1, u64::MAX)?;
        let k = &self.kernel;
        in_range("kernel.asids", u64::from(k.asids), 1, u64::from(MAX_ASIDS))?;
        in_range("kernel.time_slice", k.time_slice, 1, u64::MAX)?;
        in_range("kernel.range_flush_threshold", k.range_flush_threshold, 1, u64::MAX)?;
        self.handlers.validate()?;
        self.costs.validate()
    }

    /// The formats and regimes (SUM and MXR off; the A/D mode applies to both stages).
    pub fn arch(&self) -> Result<ArchConfig, ConfigError> {
        let regime = Regime { sum: false, mxr: false, ad: self.arch.ad.policy() };
        Ok(ArchConfig {
            guest_format: resolve_format(
                "arch.guest_format",
                &self.arch.guest_format,
                Stage::First,
            )?,
            nested_format: resolve_format(
                "arch.nested_format",
                &self.arch.nested_format,
                Stage::Nested,
            )?,
            guest_regime: regime,
            nested_regime: regime,
            refill: self.arch.refill,
        })
    }

    /// The platform this profile describes, the guest running as VMID 1; with `walk_caches` off,
    /// every page-walk cache and the nested TLB are turned off.
    pub fn platform_config(&self) -> Result<PlatformConfig, ConfigError> {
        self.validate()?;
        let mmu = if self.walk_caches { self.mmu } else { self.mmu.without_walk_caches() };
        Ok(PlatformConfig {
            arch: self.arch()?,
            mmu,
            guest_bytes: mib_to_bytes("memory.guest_mib", self.memory.guest_mib)?,
            host_bytes: mib_to_bytes("memory.host_mib", self.memory.host_mib)?,
            table_pool_frames: self.memory.table_pool_frames,
            handlers: self.handlers,
            vmid: GUEST_VMID,
            vcpus: usize::try_from(self.smp.vcpus).unwrap_or(usize::MAX),
        })
    }
}

/// The format named `name` for `key`, which must implement `stage`.
fn resolve_format(key: &str, name: &str, stage: Stage) -> Result<Format, ConfigError> {
    let names = |s: Stage| {
        Format::ALL.iter().filter(|f| f.stage == s).map(|f| f.name).collect::<Vec<_>>().join(", ")
    };
    let what = match stage {
        Stage::First => "first-stage",
        Stage::Nested => "nested",
    };
    match Format::by_name(name) {
        Some(f) if f.stage == stage => Ok(f),
        Some(f) => Err(ConfigError::Invalid(format!(
            "{key} = \"{name}\": {} is not a {what} format; {what} formats: {}",
            f.name,
            names(stage)
        ))),
        None => Err(ConfigError::Invalid(format!(
            "{key} = \"{name}\": unknown format; {what} formats: {}",
            names(stage)
        ))),
    }
}

fn in_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else if max == u64::MAX {
        Err(ConfigError::Invalid(format!("{key} must be at least {min}, not {value}")))
    } else {
        Err(ConfigError::Invalid(format!("{key} must be between {min} and {max}, not {value}")))
    }
}

fn mib_to_bytes(key: &str, mib: u64) -> Result<u64, ConfigError> {
    mib.checked_mul(1 << 20)
        .ok_or_else(|| ConfigError::Invalid(format!("{key} ({mib}) overflows a byte count")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmu::Geometry;

    fn all_builtins() -> Result<Vec<Profile>, ConfigError> {
        BUILTIN.iter().map(|(name, _)| builtin(name)).collect()
    }

    fn invalid(result: Result<(), ConfigError>) -> String {
        match result {
            Err(e) => e.to_string(),
            Ok(()) => panic!("expected an error"),
        }
    }

    #[test]
    fn every_builtin_parses_validates_and_builds_a_platform() -> Result<(), ConfigError> {
        for (name, _) in BUILTIN {
            let p = builtin(name)?;
            assert_eq!(p.name, *name);
            assert!(!p.description.is_empty(), "{name}");
            let cfg = p.platform_config()?;
            assert_eq!(cfg.guest_bytes, p.memory.guest_mib << 20);
            assert_eq!(cfg.vmid, GUEST_VMID);
            crate::mmu::Mmu::new(&cfg.mmu)
                .map_err(|e| ConfigError::Invalid(format!("{name}: {e}")))?;
        }
        assert!(BUILTIN.iter().any(|(n, _)| *n == DEFAULT));
        Ok(())
    }

    #[test]
    fn builtins_pick_their_formats_and_kernel() -> Result<(), ConfigError> {
        let x86 = builtin("x86-64")?.arch()?;
        assert_eq!(
            (x86.guest_format, x86.nested_format),
            (Format::X86_64_4LEVEL, Format::EPT_4LEVEL)
        );
        assert_eq!(builtin("x86-64")?.kernel, KernelConfig::X86_64);
        assert_eq!(builtin("x86-64")?.costs.vm_exit, 1_350);
        let la57 = builtin("x86-64-la57")?.arch()?;
        assert_eq!(la57.nested_format, Format::EPT_5LEVEL);
        let sv39 = builtin("riscv-sv39")?;
        assert_eq!(sv39.arch()?, ArchConfig::RISCV_SV39);
        assert_eq!(sv39.kernel, KernelConfig::RISCV);
        assert_eq!(builtin("sunway-like")?.arch()?.guest_format, Format::SV48);
        Ok(())
    }

    #[test]
    fn walk_caches_off_turns_every_pwc_and_the_nested_tlb_off() -> Result<(), ConfigError> {
        for mut p in all_builtins()? {
            p.set("walk_caches", "off")?;
            let mmu = p.platform_config()?.mmu;
            assert_eq!(mmu.pwc, [Geometry::OFF; 4]);
            assert_eq!(mmu.nested_pwc, [Geometry::OFF; 4]);
            assert_eq!(mmu.ntlb, Geometry::OFF);
            assert_eq!(mmu.tlb, p.mmu.tlb, "the TLB stays");
        }
        Ok(())
    }

    #[test]
    fn set_overrides_one_key() -> Result<(), ConfigError> {
        let mut p = builtin(DEFAULT)?;
        p.set("costs.vm_exit", "2_000")?;
        p.set("mmu.pwc.0.entries", "64")?;
        p.set("arch.ad", "fault")?;
        assert_eq!(p.costs.vm_exit, 2_000);
        assert_eq!(p.mmu.pwc[0].entries, 64);
        assert_eq!(p.arch()?.guest_regime.ad, AdPolicy::Fault);
        Ok(())
    }

    #[test]
    fn unknown_key_lists_valid_keys() -> Result<(), ConfigError> {
        let mut p = builtin(DEFAULT)?;
        let text = invalid(p.set("costs.vm_exits", "1"));
        assert!(text.contains("costs.vm_exits") && text.contains("costs.vm_exit\n"), "{text}");
        assert!(p.keys().iter().any(|k| k == "mmu.nested_pwc.3.ways"));
        Ok(())
    }

    #[test]
    fn wrong_type_is_an_error_and_leaves_the_profile_alone() -> Result<(), ConfigError> {
        let mut p = builtin(DEFAULT)?;
        let before = p.clone();
        let text = invalid(p.set("memory.guest_mib", "lots"));
        assert!(text.contains("memory.guest_mib") && text.contains("integer"), "{text}");
        let text = invalid(p.set("arch.ad", "sometimes"));
        assert!(text.contains("arch.ad") && text.contains("sometimes"), "{text}");
        assert_eq!(p, before);
        Ok(())
    }

    #[test]
    fn impossible_sizes_are_rejected() -> Result<(), ConfigError> {
        let mut p = builtin(DEFAULT)?;
        let text = invalid(p.set("memory.guest_mib", "0"));
        assert!(text.contains("memory.guest_mib must be between 1 and 65536"), "{text}");
        assert!(invalid(p.set("memory.guest_mib", "1_000_000_000")).contains("guest_mib"));
        let text = invalid(p.set("memory.host_mib", "1024"));
        assert!(text.contains("page tables"), "{text}");
        assert!(invalid(p.set("kernel.asids", "0")).contains("kernel.asids"));
        assert!(invalid(p.set("kernel.time_slice", "0")).contains("kernel.time_slice"));
        Ok(())
    }

    #[test]
    fn formats_must_exist_and_match_their_stage() -> Result<(), ConfigError> {
        let mut p = builtin(DEFAULT)?;
        assert!(invalid(p.set("arch.guest_format", "Sv39x4")).contains("not a first-stage"));
        assert!(invalid(p.set("arch.nested_format", "Sv32x4")).contains("unknown format"));
        let mut x86 = builtin("x86-64")?;
        assert!(invalid(x86.set("arch.ad", "fault")).contains("Svade"));
        Ok(())
    }

    #[test]
    fn a_file_overrides_its_base() -> Result<(), ConfigError> {
        let p = parse("base = \"x86-64\"\n[costs]\nvm_exit = 900 # measured\n", "mine.toml")?;
        let mut want = builtin("x86-64")?;
        want.costs.vm_exit = 900;
        assert_eq!(p, want);
        let named = parse("name = \"mine\"\n", "mine.toml")?;
        assert_eq!((named.name.as_str(), named.kernel), ("mine", KernelConfig::RISCV));
        Ok(())
    }

    #[test]
    fn load_reads_a_file_by_path() -> Result<(), ConfigError> {
        let path =
            std::env::temp_dir().join(format!("memvirt-profile-{}.toml", std::process::id()));
        let text = "base = \"riscv-sv48\"\nwalk_caches = false\n";
        std::fs::write(&path, text)
            .map_err(|error| ConfigError::Unreadable { path: path.display().to_string(), error })?;
        let loaded = load(&path.display().to_string());
        let _ = std::fs::remove_file(&path);
        let p = loaded?;
        assert_eq!(p.name, "riscv-sv48");
        assert!(!p.walk_caches);
        assert!(matches!(load("no/such/file.toml"), Err(ConfigError::Unreadable { .. })));
        assert!(invalid(load("riscv-sv64").map(drop)).contains("riscv-sv39"));
        Ok(())
    }

    #[test]
    fn a_file_with_an_unknown_key_names_file_and_key() {
        let text =
            invalid(parse("[mmu.tlb]\nl3 = { entries = 1, ways = 1 }\n", "mine.toml").map(drop));
        assert!(text.starts_with("mine.toml: ") && text.contains("`mmu.tlb.l3`"), "{text}");
        let text = invalid(parse("base = \"vax\"\n", "mine.toml").map(drop));
        assert!(text.contains("mine.toml") && text.contains("vax"), "{text}");
    }

    #[test]
    fn a_bad_toml_file_names_file_and_line() {
        let text = invalid(parse("name = \"x\"\n\n[costs\nvm_exit = 1\n", "bad.toml").map(drop));
        assert!(text.contains("bad.toml") && text.contains("line 3"), "{text}");
    }

    #[test]
    fn a_file_breaking_validation_names_the_file() {
        let text = invalid(parse("[memory]\nguest_mib = 0\n", "tiny.toml").map(drop));
        assert!(text.starts_with("tiny.toml: memory.guest_mib"), "{text}");
    }
}
