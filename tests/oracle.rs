//! The translation oracle (`--verify`) over whole workloads: every scheme passes it on every
//! built-in workload, verifying changes nothing else in the report, and a scheme that keeps
//! translations past the guest's flushes is caught.

mod common;

use std::collections::HashMap;

use common::{small, spec};
use memvirt::addr::{Gva, Hpa, PageSize};
use memvirt::guest::{Os, OsError};
use memvirt::machine::{Machine, Platform, Scheme, SimError, Stop};
use memvirt::paging::{Access, AllowMask};
use memvirt::profile::Profile;
use memvirt::run::{run, RunSpec};
use memvirt::scheme::{Native, SchemeKind};
use memvirt::workload::{self, WorkloadKind};

const PROFILES: [&str; 2] = ["riscv-sv39", "x86-64"];

#[test]
fn every_scheme_passes_the_oracle_on_every_workload_and_verifying_changes_nothing_else() {
    for profile in PROFILES {
        for w in WorkloadKind::ALL {
            for &scheme in SchemeKind::ALL {
                let plain = spec(scheme, w, &small(w), profile);
                let verified = RunSpec { verify: true, ..plain.clone() };
                let what = format!("{} on {} under {profile}", scheme.name(), w.name());
                let mut report =
                    run(&verified, &mut |_, _| {}).unwrap_or_else(|e| panic!("{what}: {e}"));
                let oracle = report.oracle.take().unwrap_or_else(|| panic!("{what}: no counts"));
                assert!(oracle.checks > 0, "{what}: nothing checked");
                if matches!(
                    scheme,
                    SchemeKind::Native
                        | SchemeKind::Nested
                        | SchemeKind::FlatNested
                        | SchemeKind::SpecShadow
                ) {
                    // A hardware walk reads the current table: it never hands over a stale one
                    // (spec-shadow commits only the verifying walk's translation).
                    assert_eq!(oracle.stale_allowed, 0, "{what}");
                }
                let unverified =
                    run(&plain, &mut |_, _| {}).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(unverified.oracle, None, "{what}");
                assert_eq!(report, unverified, "{what}: verifying changed the report");
            }
        }
    }
}

/// Native, plus a software cache of every translation it handed out that no guest flush ever
/// empties: a shadow table that misses the guest's TLB maintenance.
#[derive(Debug, Default)]
struct Forgetful {
    /// (ASID, virtual page) → (host page, access classes seen allowed).
    kept: HashMap<(u16, u64), (Hpa, AllowMask)>,
}

impl Scheme for Forgetful {
    fn name(&self) -> &'static str {
        "forgetful"
    }

    fn tlb_miss(&mut self, p: &mut Platform, gva: Gva, access: Access) -> Result<Hpa, Stop> {
        let page = PageSize::Size4K;
        let key = (p.mmu.asid().0, gva.as_u64() >> page.shift());
        if let Some(&(base, allow)) = self.kept.get(&key) {
            if allow & access.class_bit() != 0 {
                p.fill_tlb(gva, page, base, false, allow)?;
                return Ok(Hpa::new(base.as_u64() | gva.page_offset(page)));
            }
        }
        let hpa = Native.tlb_miss(p, gva, access)?;
        let kept = self.kept.entry(key).or_insert((hpa.align_down(page), 0));
        *kept = (hpa.align_down(page), kept.1 | access.class_bit());
        Ok(hpa)
    }
}

#[test]
fn a_scheme_that_keeps_translations_past_guest_flushes_is_caught_when_munmapped_pages_return() {
    let profile = Profile::builtin("riscv-sv39").expect("built-in profile");
    let cfg = profile.platform_config().expect("platform config");
    let platform = Platform::new(&cfg, profile.costs).expect("platform");
    let mut machine = Machine::new(platform, Forgetful::default());
    machine.enable_oracle();
    let mut os = Os::boot(machine, profile.kernel).expect("boot");
    // mmap reuses the address range munmap freed: the kept translations name freed frames.
    let sets: Vec<(String, String)> =
        small(WorkloadKind::Mmap).iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut churn = WorkloadKind::Mmap.build(1, &sets).expect("workload");
    let err = workload::drive(&mut os, &mut churn, &mut |_, _| {}).expect_err("caught");
    let OsError::Sim(SimError::Oracle(v)) = err else { panic!("not an oracle violation: {err}") };
    assert_eq!(v.scheme, "forgetful");
    assert!(v.access.is_some(), "{v}");
    // The first victim is a page mapped again but not yet touched: the guest maps nothing there.
    assert_eq!(v.reference, None, "{v}");
    let text = v.to_string();
    assert!(text.contains("scheme forgetful") && text.contains("no translation"), "{text}");
}
