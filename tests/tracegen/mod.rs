//! Trace writers for the tests: ChampSim `input_instr` and `cloudsuite_instr` records and
//! valgrind lackey text, written from a list of instructions, and the records memvirt must read
//! back from them (derived here independently of the readers).
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use memvirt::rng::Rng;
use memvirt::trace::{Kind, Record};

/// One instruction: where it is, its size, the data it loads and stores, its ASID (cloudsuite).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instr {
    pub ip: u64,
    pub size: u16,
    pub loads: Vec<(u64, u16)>,
    pub stores: Vec<(u64, u16)>,
    /// Lackey `M` lines (load and store of one address).
    pub modifies: Vec<(u64, u16)>,
    pub asid: u8,
}

/// An x86-64-looking program: code at 4 MiB and in a library near the top of the 47-bit user
/// half, a stack at its top, a heap at the PIE base, and a streaming array.
pub fn program(seed: u64, instructions: usize) -> Vec<Instr> {
    program_at(seed, instructions, 0x7ffc_d000_0000, 0x5555_5555_0000, 0x7f3a_1000_0000)
}

/// The same shape with the three regions where the caller says.
pub fn program_at(seed: u64, n: usize, stack: u64, heap: u64, lib: u64) -> Vec<Instr> {
    let mut rng = Rng::new(seed, 7);
    let mut out = Vec::with_capacity(n);
    let mut ip = 0x40_1000u64;
    let mut array = heap + 0x10_0000;
    for i in 0..n {
        // Mostly straight-line code, sometimes a jump into the library and back.
        if rng.below(50) == 0 {
            ip = if ip >= lib {
                0x40_1000 + rng.below(8) * 0x1000
            } else {
                lib + rng.below(4) * 0x1000
            };
        }
        let size = 1 + u16::try_from(rng.below(7)).unwrap_or(0);
        let mut ins = Instr { ip, size, loads: vec![], stores: vec![], modifies: vec![], asid: 0 };
        match rng.below(6) {
            0 => ins.loads.push((stack - 8 * rng.below(64), 8)),
            1 => ins.stores.push((stack - 8 * rng.below(64), 8)),
            2 => ins.loads.push((heap + 16 * rng.below(20_000), 16)),
            3 => {
                ins.loads.push((array, 8));
                array += 8;
            }
            4 => ins.modifies.push((heap + 4 * rng.below(100), 4)),
            _ => {}
        }
        if i % 97 == 0 {
            // A store crossing a page boundary.
            ins.stores.push((heap + 0x3000 - 4, 8));
        }
        out.push(ins);
        ip += u64::from(size);
    }
    out
}

/// The records a reader keeps with the `page` fetch policy, from lackey text (`lackey` true:
/// sizes as written, `M` lines) or from a ChampSim trace (sizes 0, loads before stores, `M` as a
/// load and a store).
pub fn expected(instrs: &[Instr], lackey: bool) -> Vec<Record> {
    let mut out = Vec::new();
    let mut pending = 0u32;
    let mut last_page = None;
    let push = |out: &mut Vec<Record>, pending: &mut u32, addr, size, kind| {
        out.push(Record { addr, gap: *pending, size, kind });
        *pending = 0;
    };
    for ins in instrs {
        pending += 1;
        if last_page != Some(ins.ip / 4096) {
            let size = if lackey { ins.size } else { 0 };
            push(&mut out, &mut pending, ins.ip, size, Kind::Fetch);
        }
        last_page = Some(ins.ip / 4096);
        if lackey {
            for &(a, s) in &ins.loads {
                push(&mut out, &mut pending, a, s, Kind::Load);
            }
            for &(a, s) in &ins.stores {
                push(&mut out, &mut pending, a, s, Kind::Store);
            }
            for &(a, s) in &ins.modifies {
                push(&mut out, &mut pending, a, s, Kind::Modify);
            }
        } else {
            let loads = ins.loads.iter().chain(&ins.modifies);
            for &(a, _) in loads {
                push(&mut out, &mut pending, a, 0, Kind::Load);
            }
            for &(a, _) in ins.stores.iter().chain(&ins.modifies) {
                push(&mut out, &mut pending, a, 0, Kind::Store);
            }
        }
    }
    out
}

/// Instructions after the last record.
pub fn trailing(instrs: &[Instr], lackey: bool) -> u64 {
    let recs = expected(instrs, lackey);
    let counted: u64 = recs.iter().map(|r| u64::from(r.gap)).sum();
    instrs.len() as u64 - counted
}

/// The `input_instr` bytes of `instrs` (at most 4 loads and 2 stores each; `M` is both).
pub fn champsim(instrs: &[Instr]) -> Vec<u8> {
    let mut out = Vec::with_capacity(instrs.len() * 64);
    for ins in instrs {
        let mut r = [0u8; 64];
        r[..8].copy_from_slice(&ins.ip.to_le_bytes());
        let stores: Vec<u64> = ins.stores.iter().chain(&ins.modifies).map(|s| s.0).collect();
        let loads: Vec<u64> = ins.loads.iter().chain(&ins.modifies).map(|s| s.0).collect();
        assert!(stores.len() <= 2 && loads.len() <= 4);
        for (i, a) in stores.iter().enumerate() {
            r[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        for (i, a) in loads.iter().enumerate() {
            r[32 + 8 * i..40 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        out.extend_from_slice(&r);
    }
    out
}

/// The `cloudsuite_instr` bytes of `instrs`, each with its ASID.
pub fn cloudsuite(instrs: &[Instr]) -> Vec<u8> {
    let mut out = Vec::with_capacity(instrs.len() * 96);
    for ins in instrs {
        let mut r = [0u8; 96];
        r[..8].copy_from_slice(&ins.ip.to_le_bytes());
        let stores: Vec<u64> = ins.stores.iter().chain(&ins.modifies).map(|s| s.0).collect();
        let loads: Vec<u64> = ins.loads.iter().chain(&ins.modifies).map(|s| s.0).collect();
        for (i, a) in stores.iter().enumerate() {
            r[24 + 8 * i..32 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        for (i, a) in loads.iter().enumerate() {
            r[56 + 8 * i..64 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        r[88] = ins.asid;
        r[89] = ins.asid;
        out.extend_from_slice(&r);
    }
    out
}

/// Lackey text of `instrs`, with valgrind's banner when `pid` is given.
pub fn lackey(instrs: &[Instr], pid: Option<u32>) -> String {
    let mut t = String::new();
    if let Some(p) = pid {
        t.push_str(&format!(
            "=={p}== Lackey, an example Valgrind tool\n=={p}== Command: ./prog arg\n"
        ));
        t.push_str(&format!("=={p}== Parent PID: 1\n=={p}== \n"));
    }
    for ins in instrs {
        t.push_str(&format!("I  {:08x},{}\n", ins.ip, ins.size));
        for &(a, s) in &ins.loads {
            t.push_str(&format!(" L {a:08x},{s}\n"));
        }
        for &(a, s) in &ins.stores {
            t.push_str(&format!(" S {a:08x},{s}\n"));
        }
        for &(a, s) in &ins.modifies {
            t.push_str(&format!(" M {a:08x},{s}\n"));
        }
    }
    if let Some(p) = pid {
        t.push_str(&format!("=={p}== \n=={p}== Exit code:       0\n"));
    }
    t
}

/// `bytes` gzip-compressed.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("in memory");
    e.finish().expect("in memory")
}

/// `bytes` xz-compressed.
pub fn xz(bytes: &[u8]) -> Vec<u8> {
    let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
    e.write_all(bytes).expect("in memory");
    e.finish().expect("in memory")
}

/// A fresh directory for one test, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(test: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("memvirt-test-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        Dir(d)
    }

    /// Writes `bytes` to `name` in the directory.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether `p` exists.
pub fn exists(p: &Path) -> bool {
    p.exists()
}
