//! ChampSim binary traces (field.md §1.2): raw little-endian instruction records, no header.
//!
//! `input_instr` is 64 bytes: `ip` at 0, two store addresses (`destination_memory`) at 16, four
//! load addresses (`source_memory`) at 32. `cloudsuite_instr` is 96 bytes: `ip` at 0, four store
//! addresses at 24, four load addresses at 56 and `asid[2]` at 88. An address of 0 is an unused
//! slot. ChampSim records no access sizes, so records have size 0 (unknown).
//!
//! Each instruction's loads come before its stores (it reads its operands first). A cloudsuite
//! trace becomes one stream per ASID (`asid[0]`, the instruction's address space), each with its
//! own instruction gaps.

use std::collections::BTreeMap;
use std::io::Read;

use super::{Fetches, GapCounter, Input, Kind, Record, RecordSink, StreamMeta, TraceError};

/// Which record layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `input_instr`, 64 bytes.
    Input,
    /// `cloudsuite_instr`, 96 bytes.
    Cloudsuite,
}

/// Where the fields are in one record.
#[derive(Clone, Copy, Debug)]
struct Layout {
    size: usize,
    stores: (usize, usize),
    loads: (usize, usize),
    asid: Option<usize>,
}

impl Variant {
    /// Bytes per record.
    pub const fn record_bytes(self) -> usize {
        self.layout().size
    }

    const fn layout(self) -> Layout {
        match self {
            Variant::Input => Layout { size: 64, stores: (16, 2), loads: (32, 4), asid: None },
            Variant::Cloudsuite => {
                Layout { size: 96, stores: (24, 4), loads: (56, 4), asid: Some(88) }
            }
        }
    }
}

#[inline]
fn u64_at(rec: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = rec.get(at..at + 8) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

/// Records [`implausible`] looks at, at most.
const SNIFF_RECORDS: usize = 256;

/// Whether `v` is an address of a 57-bit (or narrower) canonical address space: bits 63 to 56
/// all equal. Every x86-64 (LA57 included) and RISC-V virtual address is; random bytes rarely
/// are (1 in 128).
const fn canonical57(v: u64) -> bool {
    let top = v >> 56;
    top == 0 || top == 0xFF
}

/// Why the records at the start of an input are not plausibly ChampSim `input_instr` records,
/// or `None` if they are: in each of the first whole records (up to `SNIFF_RECORDS`) the two
/// branch flags are 0 or 1, the instruction pointer is not 0 and every address is 0 (an unused
/// slot) or canonical. Input shorter than one record is left to the reader, which reports the
/// truncated record.
pub fn implausible(head: &[u8]) -> Option<String> {
    let size = Variant::Input.record_bytes();
    for (i, rec) in head.chunks_exact(size).take(SNIFF_RECORDS).enumerate() {
        let at = i * size;
        if rec[8] > 1 || rec[9] > 1 {
            return Some(format!(
                "record {i} at byte {at}: branch flags {} and {}, not 0 or 1",
                rec[8], rec[9]
            ));
        }
        let ip = u64_at(rec, 0);
        if ip == 0 || !canonical57(ip) {
            return Some(format!("record {i} at byte {at}: instruction pointer {ip:#x}"));
        }
        let layout = Variant::Input.layout();
        for slot in (0..layout.stores.1)
            .map(|k| layout.stores.0 + 8 * k)
            .chain((0..layout.loads.1).map(|k| layout.loads.0 + 8 * k))
        {
            let addr = u64_at(rec, slot);
            if !canonical57(addr) {
                return Some(format!(
                    "record {i} at byte {at}: memory address {addr:#x} is not canonical"
                ));
            }
        }
    }
    None
}

/// Per-stream state while reading.
#[derive(Debug)]
struct StreamState {
    id: u32,
    gaps: GapCounter,
}

/// Reads a whole ChampSim trace from `input` into `sink`. `label` names the stream(s).
pub fn read(
    input: &mut Input,
    variant: Variant,
    fetches: Fetches,
    label: &str,
    sink: &mut dyn RecordSink,
) -> Result<(), TraceError> {
    let layout = variant.layout();
    let mut streams: BTreeMap<u32, StreamState> = BTreeMap::new();
    let mut buf = vec![0u8; layout.size * 4096];
    let mut offset: u64 = 0;
    loop {
        let n = fill(input, &mut buf, offset)?;
        if n == 0 {
            break;
        }
        let whole = n - n % layout.size;
        for rec in buf[..whole].chunks_exact(layout.size) {
            let asid = layout.asid.map_or(0, |at| u32::from(rec[at]));
            let state = match streams.get_mut(&asid) {
                Some(s) => s,
                None => {
                    let name = match layout.asid {
                        Some(_) => format!("{label} asid {asid}"),
                        None => label.to_owned(),
                    };
                    let id =
                        sink.begin_stream(StreamMeta { asid, name, ..StreamMeta::default() })?;
                    streams
                        .entry(asid)
                        .or_insert(StreamState { id, gaps: GapCounter::new(fetches) })
                }
            };
            let overflow = || TraceError::Format {
                file: input.name.clone(),
                offset,
                detail: "more than 4,294,967,295 instructions without a memory access".into(),
            };
            let ip = u64_at(rec, 0);
            if let Some(f) = state.gaps.instruction(ip, 0) {
                let f = state.gaps.stamp(f).ok_or_else(overflow)?;
                sink.push(state.id, f)?;
            }
            let slots = |(at, count): (usize, usize)| (0..count).map(move |i| at + 8 * i);
            for (range, kind) in [(layout.loads, Kind::Load), (layout.stores, Kind::Store)] {
                for at in slots(range) {
                    let addr = u64_at(rec, at);
                    if addr != 0 {
                        let r = Record { addr, gap: 0, size: 0, kind };
                        let r = state.gaps.stamp(r).ok_or_else(overflow)?;
                        sink.push(state.id, r)?;
                    }
                }
            }
            offset += layout.size as u64;
        }
        if whole != n {
            return Err(TraceError::Format {
                file: input.name.clone(),
                offset,
                detail: format!(
                    "truncated record: the input ends {} bytes into a {}-byte record",
                    n - whole,
                    layout.size
                ),
            });
        }
    }
    for state in streams.values() {
        sink.trailing_instructions(state.id, state.gaps.trailing())?;
    }
    Ok(())
}

/// Fills `buf` as far as the input goes; returns the bytes read (less than `buf.len()` only at
/// the end of the input).
fn fill(input: &mut Input, buf: &mut [u8], offset: u64) -> Result<usize, TraceError> {
    let mut n = 0;
    while n < buf.len() {
        match input.reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(TraceError::Read {
                    file: input.name.clone(),
                    offset: offset + n as u64,
                    source,
                })
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{open, Compression, VecSink};

    fn input_instr(ip: u64, stores: &[u64], loads: &[u64]) -> Vec<u8> {
        let mut r = vec![0u8; 64];
        r[..8].copy_from_slice(&ip.to_le_bytes());
        for (i, a) in stores.iter().enumerate() {
            r[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        for (i, a) in loads.iter().enumerate() {
            r[32 + 8 * i..40 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        r
    }

    fn read_bytes(bytes: &[u8], variant: Variant) -> Result<VecSink, TraceError> {
        let name = format!("memvirt-champsim-{}-{}.champsimtrace", std::process::id(), bytes.len());
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, bytes).map_err(|e| TraceError::Other(e.to_string()))?;
        let mut input = open(&path, Compression::None)?;
        let mut sink = VecSink::default();
        let r = read(&mut input, variant, Fetches::Page, "t", &mut sink);
        let _ = std::fs::remove_file(&path);
        r.map(|()| sink)
    }

    #[test]
    fn loads_come_before_stores_and_zero_slots_are_unused() -> Result<(), TraceError> {
        let mut t = input_instr(0x40_1000, &[0x9000], &[0x7000, 0, 0x8000]);
        t.extend(input_instr(0x40_1004, &[], &[]));
        t.extend(input_instr(0x40_1008, &[], &[0x7008]));
        let sink = read_bytes(&t, Variant::Input)?;
        let recs = &sink.streams[0].1;
        let kinds: Vec<_> = recs.iter().map(|r| (r.kind, r.addr, r.gap)).collect();
        assert_eq!(
            kinds,
            [
                (Kind::Fetch, 0x40_1000, 1),
                (Kind::Load, 0x7000, 0),
                (Kind::Load, 0x8000, 0),
                (Kind::Store, 0x9000, 0),
                (Kind::Load, 0x7008, 2),
            ]
        );
        assert_eq!(sink.streams[0].2, 0);
        Ok(())
    }

    #[test]
    fn plausibility_accepts_champsim_records_and_refuses_noise() {
        let mut t = input_instr(0x40_1000, &[0x7ffc_0000_fff8], &[0x5555_0000_0010]);
        t.extend(input_instr(0xffff_ffff_8100_0000, &[], &[]));
        assert_eq!(implausible(&t), None);
        let mut branch = t.clone();
        branch[64 + 8] = 7;
        assert!(implausible(&branch).is_some_and(|e| e.contains("record 1 at byte 64")));
        let zero_ip = input_instr(0, &[], &[0x1000]);
        assert!(implausible(&zero_ip).is_some_and(|e| e.contains("instruction pointer 0x0")));
        let wild = input_instr(0x1000, &[], &[0, 0x1234_5678_9abc_def0]);
        assert!(implausible(&wild).is_some_and(|e| e.contains("not canonical")));
        // Random bytes fail within a record or two.
        let mut rng = crate::rng::Rng::new(9, 9);
        let noise: Vec<u8> = (0..640).map(|_| rng.below(256).to_le_bytes()[0]).collect();
        assert!(implausible(&noise).is_some());
        // Less than one record is the reader's to report.
        assert_eq!(implausible(&[0xAB; 63]), None);
    }

    #[test]
    fn a_partial_record_is_an_error_naming_its_offset() {
        let mut t = input_instr(0x1000, &[], &[0x2000]);
        t.extend_from_slice(&[1, 2, 3]);
        let e = read_bytes(&t, Variant::Input).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("byte 64") && e.contains("truncated record"), "{e}");
    }

    #[test]
    fn cloudsuite_records_split_by_asid() -> Result<(), TraceError> {
        let rec = |ip: u64, load: u64, asid: u8| {
            let mut r = vec![0u8; 96];
            r[..8].copy_from_slice(&ip.to_le_bytes());
            r[56..64].copy_from_slice(&load.to_le_bytes());
            r[88] = asid;
            r
        };
        let mut t = rec(0x1000, 0x5000, 3);
        t.extend(rec(0x2000, 0x6000, 7));
        t.extend(rec(0x1004, 0x5008, 3));
        let sink = read_bytes(&t, Variant::Cloudsuite)?;
        assert_eq!(sink.streams.len(), 2);
        assert_eq!(sink.streams[0].0.asid, 3);
        assert_eq!(sink.streams[0].1.len(), 3);
        assert_eq!(sink.streams[1].0.asid, 7);
        Ok(())
    }
}
