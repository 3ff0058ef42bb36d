//! Random programs of system calls and accesses give the same guest-visible history under every
//! scheme, on RISC-V and x86 profiles (DESIGN.md §7, differential runs).

use memvirt::addr::{Gva, PageSize};
use memvirt::guest::{Os, OsError, Pid};
use memvirt::machine::{Machine, Platform, Scheme};
use memvirt::paging::Perms;
use memvirt::profile::Profile;
use memvirt::scheme::{Native, Nested, NestedOptions};
use proptest::prelude::*;

const PAGE: u64 = PageSize::Size4K.bytes();

#[derive(Clone, Debug)]
enum Op {
    Mmap(u64),
    Store(usize, u64),
    Load(usize, u64),
    Munmap(usize),
    Protect(usize, bool),
    Fork,
    Switch(usize),
    Exit,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (1u64..80).prop_map(Op::Mmap),
        4 => (0usize..8, 0u64..80).prop_map(|(r, p)| Op::Store(r, p)),
        4 => (0usize..8, 0u64..80).prop_map(|(r, p)| Op::Load(r, p)),
        1 => (0usize..8).prop_map(Op::Munmap),
        1 => (0usize..8, any::<bool>()).prop_map(|(r, w)| Op::Protect(r, w)),
        1 => Just(Op::Fork),
        1 => (0usize..4).prop_map(Op::Switch),
        1 => Just(Op::Exit),
    ]
}

/// What the guest saw: one line per operation.
fn execute<S: Scheme>(
    profile: &str,
    scheme: impl FnOnce(&mut Platform) -> S,
    ops: &[Op],
) -> Vec<String> {
    let p = Profile::builtin(profile).unwrap();
    let mut platform = Platform::new(&p.platform_config().unwrap(), p.costs).unwrap();
    let s = scheme(&mut platform);
    let mut os = Os::boot(Machine::new(platform, s), p.kernel).unwrap();
    let mut pids: Vec<Pid> = vec![os.spawn().unwrap()];
    // Regions per process: (start, pages); shared by fork as the address space is copied.
    let mut regions: Vec<(Gva, u64)> = Vec::new();
    let mut log = Vec::new();
    for op in ops {
        let Some(cur) = os.current() else { break };
        let region = |r: usize| regions.get(r % regions.len().max(1)).copied();
        let outcome: Result<String, OsError> = match *op {
            Op::Mmap(n) => os.mmap(cur, n, Perms::R | Perms::W).map(|va| {
                regions.push((va, n));
                format!("mmap {va}")
            }),
            Op::Store(r, p) => match region(r) {
                Some((va, n)) => {
                    let at = va.wrapping_add((p % n) * PAGE);
                    os.store(at, at.as_u64() ^ u64::from(cur.0)).map(|()| "store".into())
                }
                None => Ok("-".into()),
            },
            Op::Load(r, p) => match region(r) {
                Some((va, n)) => {
                    os.load(va.wrapping_add((p % (n + 2)) * PAGE)).map(|t| format!("load {t:x}"))
                }
                None => Ok("-".into()),
            },
            Op::Munmap(r) => match region(r) {
                Some((va, n)) => os.munmap(cur, va, n).map(|()| "munmap".into()),
                None => Ok("-".into()),
            },
            Op::Protect(r, w) => match region(r) {
                Some((va, n)) => {
                    let perms = if w { Perms::R | Perms::W } else { Perms::R };
                    os.mprotect(cur, va, n, perms).map(|()| "mprotect".into())
                }
                None => Ok("-".into()),
            },
            Op::Fork if pids.len() < 4 => os.fork(cur).map(|c| {
                pids.push(c);
                format!("fork {c}")
            }),
            Op::Fork => Ok("-".into()),
            Op::Switch(i) => {
                let target = pids[i % pids.len()];
                os.switch_to(target).map(|()| format!("switch {target}"))
            }
            Op::Exit if pids.len() > 1 => {
                pids.retain(|&p| p != cur);
                let next = pids[0];
                os.exit(cur).and_then(|()| os.switch_to(next)).map(|()| "exit".into())
            }
            Op::Exit => Ok("-".into()),
        };
        match outcome {
            Ok(line) => log.push(line),
            Err(OsError::Killed { pid, va, .. }) => {
                log.push(format!("killed {pid} at {va}"));
                pids.retain(|&p| p != pid);
                match pids.first() {
                    Some(&next) => os.switch_to(next).unwrap(),
                    None => break,
                }
            }
            Err(e) => panic!("simulation error: {e}"),
        }
    }
    log.push(format!(
        "history {:x} faults {}",
        os.history(),
        os.machine.platform.stats.guest_faults
    ));
    log
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn native_and_nested_show_the_guest_the_same_history(ops in prop::collection::vec(op(), 1..120)) {
        for profile in ["riscv-sv39", "x86-64"] {
            let a = execute(profile, |_| Native, &ops);
            let b = execute(profile, |p| Nested::new(p, NestedOptions::default()).unwrap(), &ops);
            prop_assert_eq!(a, b, "{}", profile);
        }
    }
}
