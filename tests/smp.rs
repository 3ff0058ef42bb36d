//! Multi-vCPU guests: TLB shootdowns counted by hand for each architecture and scheme, the x86
//! lazy catch-up, placement and migration, determinism and the differential check with several
//! vCPUs.

use memvirt::addr::Gva;
use memvirt::guest::{Os, Pid};
use memvirt::machine::{Machine, Platform, Scheme};
use memvirt::paging::Perms;
use memvirt::profile::Profile;
use memvirt::run::{run, RunSpec};
use memvirt::scheme::{Native, Nested, NestedOptions, SchemeKind, Shadow};
use memvirt::stats::{ExitCause, TrapCause};
use memvirt::workload::WorkloadKind;

const RW: Perms = Perms::R.union(Perms::W);

fn profile(name: &str, vcpus: u64) -> Profile {
    let mut p = Profile::builtin(name).unwrap();
    p.set("smp.vcpus", &vcpus.to_string()).unwrap();
    p
}

fn boot<S: Scheme>(profile: &Profile, scheme: impl FnOnce(&mut Platform) -> S) -> Os<S> {
    let mut platform = Platform::new(&profile.platform_config().unwrap(), profile.costs).unwrap();
    let scheme = scheme(&mut platform);
    let mut machine = Machine::new(platform, scheme);
    machine.enable_oracle();
    let mut os = Os::boot(machine, profile.kernel).unwrap();
    os.set_smp(profile.smp.quantum, profile.smp.broadcast_flush);
    os.reset_counters();
    os
}

/// A process on CPU 0 with a written page, and a thread of it running on CPU 1; the kernel is
/// back on CPU 0 with the process running. Returns (process, thread, page).
fn two_cpus_one_space<S: Scheme>(os: &mut Os<S>) -> (Pid, Pid, Gva) {
    let p = os.spawn().unwrap();
    let va = os.mmap(p, 4, RW).unwrap();
    os.store(va, 1).unwrap();
    let t = os.spawn_thread(p).unwrap();
    assert_eq!(os.cpu(), 0);
    os.next_cpu();
    assert_eq!(os.schedule().unwrap(), Some(t), "the thread was placed on the idle CPU 1");
    os.load(va).unwrap();
    os.next_cpu();
    assert_eq!((os.cpu(), os.current()), (0, Some(p)));
    (p, t, va)
}

fn exits<S: Scheme>(os: &Os<S>, c: ExitCause) -> u64 {
    os.machine.platform.stats.exits_for(c)
}

fn traps<S: Scheme>(os: &Os<S>, c: TrapCause) -> u64 {
    os.machine.platform.stats.traps_for(c)
}

fn flushes<S: Scheme>(os: &Os<S>, name: &str) -> u64 {
    os.machine.platform.stats.flushes.get(name).copied().unwrap_or(0)
}

#[test]
fn riscv_munmap_of_a_shared_space_is_one_sbi_remote_fence_to_both_harts() {
    let rv = profile("riscv-sv39", 2);
    // Native: the SBI call traps to the firmware, which interrupts the other hart.
    let mut os = boot(&rv, |_| Native);
    let (p, _, va) = two_cpus_one_space(&mut os);
    let before = traps(&os, TrapCause::RemoteFence);
    os.munmap(p, va, 1).unwrap();
    assert_eq!(traps(&os, TrapCause::RemoteFence) - before, 2, "the call and the other hart");
    assert_eq!(os.stats.shootdowns, 1);
    // One fence asked for (sfence.vma va, asid), not a local one besides.
    assert_eq!(flushes(&os, "sfence.vma va,asid"), 1);

    // Nested (KVM): a VM exit for the call, one to kick the other vCPU.
    let mut os = boot(&rv, |p| Nested::new(p, NestedOptions::default()).unwrap());
    let (p, _, va) = two_cpus_one_space(&mut os);
    let before = exits(&os, ExitCause::RemoteFence);
    os.munmap(p, va, 1).unwrap();
    assert_eq!(exits(&os, ExitCause::RemoteFence) - before, 2);

    // SSP intercepts the call in hardware mode: two traps, no exit; TSP in the hypervisor.
    for (kind, hardware) in
        [(SchemeKind::Ssp, true), (SchemeKind::Lsp, true), (SchemeKind::Tsp, false)]
    {
        let opts = kind.shadow_options().unwrap();
        let mut os = boot(&rv, |p| Shadow::new(p, kind.name(), opts).unwrap());
        let (p, _, va) = two_cpus_one_space(&mut os);
        let (e, t) = (exits(&os, ExitCause::RemoteFence), traps(&os, TrapCause::RemoteFence));
        os.munmap(p, va, 1).unwrap();
        let got = (exits(&os, ExitCause::RemoteFence) - e, traps(&os, TrapCause::RemoteFence) - t);
        assert_eq!(got, if hardware { (0, 2) } else { (2, 0) }, "{}", kind.name());
    }
}

#[test]
fn shared_shadow_tables_are_filled_once_per_vm_and_per_vcpu_ones_once_per_vcpu() {
    let rv = profile("riscv-sv39", 2);
    for (sharing, fills) in [("vm", 0), ("vcpu", 1)] {
        let mut opts = SchemeKind::Ssp.shadow_options().unwrap();
        opts = opts.with_sets(&[("sharing".into(), sharing.into())]).unwrap();
        let mut os = boot(&rv, |p| Shadow::new(p, "ssp", opts).unwrap());
        let p = os.spawn().unwrap();
        let va = os.mmap(p, 4, RW).unwrap();
        os.store(va, 1).unwrap();
        let t = os.spawn_thread(p).unwrap();
        os.next_cpu();
        assert_eq!(os.schedule().unwrap(), Some(t));
        // The thread's first access to the page on CPU 1: the shared table already has it.
        let before = os.machine.scheme.stats.fills;
        assert_eq!(os.load(va).unwrap(), 1);
        assert_eq!(os.machine.scheme.stats.fills - before, fills, "sharing = {sharing}");
    }
    let tsp = SchemeKind::Tsp.shadow_options().unwrap();
    let e = tsp.with_sets(&[("sharing".into(), "vcpu".into())]).unwrap_err();
    assert!(e.to_string().contains("scheme.notice"), "{e}");
}

#[test]
fn a_space_only_one_cpu_has_run_is_flushed_locally() {
    let mut os =
        boot(&profile("riscv-sv39", 2), |p| Nested::new(p, NestedOptions::default()).unwrap());
    let p = os.spawn().unwrap();
    let va = os.mmap(p, 4, RW).unwrap();
    os.store(va, 1).unwrap();
    os.munmap(p, va, 1).unwrap();
    assert_eq!(os.stats.shootdowns, 0);
    assert_eq!(exits(&os, ExitCause::RemoteFence), 0);
    assert_eq!(flushes(&os, "sfence.vma va,asid"), 1);
}

#[test]
fn x86_munmap_flushes_locally_and_sends_one_ipi_to_the_cpu_running_the_space() {
    let x86 = profile("x86-64", 2);
    let mut os = boot(&x86, |p| Nested::new(p, NestedOptions::default()).unwrap());
    let (p, _, va) = two_cpus_one_space(&mut os);
    let invlpg = flushes(&os, "invlpg");
    os.munmap(p, va, 1).unwrap();
    assert_eq!(exits(&os, ExitCause::Ipi), 1, "the ICR write exits");
    assert_eq!(flushes(&os, "invlpg") - invlpg, 2, "the initiator's and the target's");
    assert_eq!(os.stats.shootdowns, 1);

    // Traditional shadow paging also exits for each INVLPG, on both vCPUs.
    let opts = SchemeKind::Tsp.shadow_options().unwrap();
    let mut os = boot(&x86, |pl| Shadow::new(pl, "tsp", opts).unwrap());
    let (p, _, va) = two_cpus_one_space(&mut os);
    let flush_exits = exits(&os, ExitCause::Flush);
    os.munmap(p, va, 1).unwrap();
    assert_eq!(exits(&os, ExitCause::Flush) - flush_exits, 2);
    assert_eq!(exits(&os, ExitCause::Ipi), 1);

    // Native: no exit, the IPI's cost in guest-kernel cycles.
    let mut os = boot(&x86, |_| Native);
    let (p, _, va) = two_cpus_one_space(&mut os);
    let kernel = os.machine.platform.stats.cycles.guest_kernel;
    os.munmap(p, va, 1).unwrap();
    let costs = os.machine.platform.costs;
    let spent = os.machine.platform.stats.cycles.guest_kernel - kernel;
    // System call entry and its kernel-stack access, the IPI, the target's handler, the wait.
    assert!(spent >= costs.syscall + costs.ipi_send + 2 * costs.ipi_receive, "{spent}");
    assert_eq!(os.machine.platform.stats.total_exits(), 0);
}

#[test]
fn a_broadcast_invalidation_reaches_the_other_vcpu_without_an_ipi() {
    for broadcast in [false, true] {
        let mut x86 = profile("x86-64", 2);
        x86.set("smp.broadcast_flush", &broadcast.to_string()).unwrap();
        let mut os = boot(&x86, |p| Nested::new(p, NestedOptions::default()).unwrap());
        let (p, _, va) = two_cpus_one_space(&mut os);
        let invlpg = flushes(&os, "invlpg");
        os.mprotect(p, va, 1, Perms::R).unwrap();
        let expected = if broadcast { (0, 1) } else { (1, 2) };
        let got = (exits(&os, ExitCause::Ipi), flushes(&os, "invlpg") - invlpg);
        assert_eq!(got, expected, "broadcast {broadcast}: (IPI exits, INVLPGs executed)");
        // Either way CPU 1's cached translation of the page is gone: its next load walks.
        os.next_cpu();
        let walks = os.machine.platform.mmu.stats().walks;
        assert_eq!(os.load(va).unwrap(), 1);
        assert!(os.machine.platform.mmu.stats().walks > walks, "broadcast {broadcast}");
    }
}

#[test]
fn x86_cpus_that_switched_away_get_no_ipi_and_flush_the_pcid_when_they_return() {
    let mut os = boot(&profile("x86-64", 2), |p| Nested::new(p, NestedOptions::default()).unwrap());
    let (p, t, va) = two_cpus_one_space(&mut os);
    // Two more processes: q joins CPU 0's queue (the lowest of the least loaded), r CPU 1's,
    // where the scheduler then runs r and the thread waits.
    os.spawn().unwrap();
    let r = os.spawn().unwrap();
    os.next_cpu();
    assert_eq!(os.schedule().unwrap(), Some(r));
    os.next_cpu();
    let full = flushes(&os, "mov cr3");
    os.munmap(p, va, 1).unwrap();
    assert_eq!(exits(&os, ExitCause::Ipi), 0, "lazy: no CPU but this one runs the space");
    // CPU 1 returns to the thread: its PCID for the space is a generation behind.
    os.next_cpu();
    os.switch_to(t).unwrap();
    assert_eq!(flushes(&os, "mov cr3") - full, 1, "a CR3 load without the no-flush bit");
}

#[test]
fn new_tasks_go_to_the_least_loaded_cpu_and_idle_cpus_pull_waiting_ones() {
    let mut os = boot(&profile("riscv-sv39", 3), |_| Native);
    let a = os.spawn().unwrap();
    let b = os.spawn().unwrap();
    let c = os.spawn().unwrap();
    let d = os.spawn().unwrap();
    // a on CPU 0 (running), b on 1, c on 2, d back on 0 (the lowest of the least loaded).
    assert_eq!(os.current(), Some(a));
    os.next_cpu();
    assert_eq!(os.schedule().unwrap(), Some(b));
    os.next_cpu();
    assert_eq!(os.schedule().unwrap(), Some(c));
    os.exit(c).unwrap();
    // CPU 2 is idle and pulls d, waiting on CPU 0.
    assert_eq!(os.schedule().unwrap(), Some(d));
    assert_eq!(os.stats.migrations, 1);
}

fn spec(scheme: SchemeKind, workload: WorkloadKind, profile: &Profile, verify: bool) -> RunSpec {
    let small: &[(&str, &str)] = match workload {
        WorkloadKind::Threads => {
            &[("threads", "4"), ("pages", "512"), ("accesses", "3000"), ("buffer_every", "100")]
        }
        WorkloadKind::Server => &[("workers", "4"), ("requests", "6"), ("shared_pages", "128")],
        WorkloadKind::Fork => {
            &[("heap_pages", "64"), ("forks", "4"), ("child_writes", "8"), ("child_reads", "8")]
        }
        WorkloadKind::Mmap => &[("iterations", "10"), ("pages", "70")],
        _ => &[],
    };
    RunSpec {
        scheme,
        workload,
        workload_sets: small.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        scheme_sets: Vec::new(),
        profile: profile.clone(),
        seed: 3,
        verify,
        traces: None,
        warmup: 0,
    }
}

#[test]
fn with_several_vcpus_every_scheme_gives_the_same_verified_history() {
    let emulators = [
        SchemeKind::Softmmu,
        SchemeKind::HsptShared,
        SchemeKind::HsptPrefill,
        SchemeKind::HsptPrivate,
    ];
    let workloads =
        [WorkloadKind::Threads, WorkloadKind::Server, WorkloadKind::Fork, WorkloadKind::Mmap];
    for name in ["riscv-sv39", "x86-64"] {
        for vcpus in [2, 4] {
            let profile = profile(name, vcpus);
            for w in workloads {
                let mut seen: Option<(String, String)> = None;
                let mut shootdowns = 0;
                for &s in SchemeKind::ALL.iter().filter(|s| !emulators.contains(s)) {
                    let who = format!("{} on {} ({name}, {vcpus} vCPUs)", s.name(), w.name());
                    let r = run(&spec(s, w, &profile, true), &mut |_, _| {})
                        .unwrap_or_else(|e| panic!("{who}: {e}"));
                    assert_eq!(r.guest.vcpus, vcpus);
                    shootdowns = r.guest.shootdowns;
                    match &seen {
                        None => seen = Some((r.guest.history, who)),
                        Some((h, first)) => assert_eq!(&r.guest.history, h, "{who} vs {first}"),
                    }
                }
                if w == WorkloadKind::Threads {
                    assert!(shootdowns > 0, "threads shoot down on {name} with {vcpus} vCPUs");
                }
                // So do broadcast invalidations.
                let mut broadcast = profile.clone();
                broadcast.set("smp.broadcast_flush", "true").unwrap();
                for s in [SchemeKind::Nested, SchemeKind::Tsp, SchemeKind::Ssp, SchemeKind::Rvirt] {
                    let r = run(&spec(s, w, &broadcast, true), &mut |_, _| {}).unwrap();
                    let (h, first) = seen.as_ref().unwrap();
                    assert_eq!(&r.guest.history, h, "{} broadcast vs {first}", s.name());
                }
                // Per-vCPU shadow tables give the same history too.
                for s in [SchemeKind::Ssp, SchemeKind::Lsp, SchemeKind::Asp] {
                    let mut per_vcpu = spec(s, w, &profile, true);
                    per_vcpu.scheme_sets = vec![("sharing".into(), "vcpu".into())];
                    let r = run(&per_vcpu, &mut |_, _| {}).unwrap();
                    let (h, first) = seen.as_ref().unwrap();
                    assert_eq!(&r.guest.history, h, "{} sharing=vcpu vs {first}", s.name());
                }
            }
        }
    }
}

#[test]
fn runs_with_several_vcpus_are_deterministic() {
    let profile = profile("riscv-sv39", 4);
    for s in [SchemeKind::Nested, SchemeKind::Ssp, SchemeKind::Rvirt] {
        let once = run(&spec(s, WorkloadKind::Threads, &profile, false), &mut |_, _| {}).unwrap();
        let again = run(&spec(s, WorkloadKind::Threads, &profile, false), &mut |_, _| {}).unwrap();
        assert_eq!(
            serde_json::to_string(&once).unwrap(),
            serde_json::to_string(&again).unwrap(),
            "{}",
            s.name()
        );
    }
}

#[test]
fn emulators_refuse_more_than_one_vcpu() {
    let two = profile("riscv-sv39", 2);
    assert!(memvirt::run::unavailable(SchemeKind::Softmmu, &two, &[]).is_some());
    assert!(memvirt::run::unavailable(SchemeKind::Ssp, &two, &[]).is_none());
    let profile = profile("riscv-sv39", 2);
    for s in [SchemeKind::Softmmu, SchemeKind::HsptShared] {
        let e = run(&spec(s, WorkloadKind::Fork, &profile, false), &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("smp.vcpus must be 1"), "{e}");
    }
}
