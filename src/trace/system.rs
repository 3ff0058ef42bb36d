//! Full-system streams: everything one vCPU of a real guest did under QEMU, as recorded by
//! memvirt's QEMU plugin (`qemu-plugin/`), in the compact container (header source
//! [`Source::Qemu`]). docs/trace-format.md has the byte layout.
//!
//! A stream is a sequence of [`Event`]s: every access with its virtual and guest-physical
//! address, size, privilege and stored value; every write of the root register (`satp`); every
//! TLB-maintenance instruction with its operands; every trap the guest kernel took (its cause
//! and `stval`, read when the kernel's handler reads them); and markers a guest program
//! places. Blocks are the container's blocks; only their records differ.

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::Path;

use super::compact::{self, FileOutput, Header, StreamInfo, Writer, BLOCK_RECORDS};
use super::decode::{RawBlocks, Reader};
use super::{Kind, Source, StreamMeta, TraceError};

/// The privilege mode an event happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Mode {
    /// U-mode (or VU).
    User = 0,
    /// S-mode (or VS/HS).
    Supervisor = 1,
    /// M-mode: firmware (OpenSBI); untranslated.
    Machine = 3,
}

impl Mode {
    /// The mode with the RISC-V encoding `bits` (0, 1, 3); 2 (reserved) is `None`.
    pub const fn from_bits(bits: u64) -> Option<Mode> {
        match bits {
            0 => Some(Mode::User),
            1 => Some(Mode::Supervisor),
            3 => Some(Mode::Machine),
            _ => None,
        }
    }

    /// The name reports use.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::User => "user",
            Mode::Supervisor => "supervisor",
            Mode::Machine => "machine",
        }
    }
}

/// A TLB-maintenance instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Fence {
    /// `sfence.vma rs1, rs2`: rs1 a virtual address, rs2 an ASID.
    SfenceVma = 0,
    /// `hfence.vvma rs1, rs2`: guest virtual address, guest ASID.
    HfenceVvma = 1,
    /// `hfence.gvma rs1, rs2`: guest physical address >> 2, VMID.
    HfenceGvma = 2,
    /// x86 `invlpg m`: rs1 is the linear address `m` names, rs2 none.
    Invlpg = 3,
}

impl Fence {
    const ALL: [Fence; 4] = [Fence::SfenceVma, Fence::HfenceVvma, Fence::HfenceGvma, Fence::Invlpg];

    /// The mnemonic.
    pub const fn name(self) -> &'static str {
        match self {
            Fence::SfenceVma => "sfence.vma",
            Fence::HfenceVvma => "hfence.vvma",
            Fence::HfenceGvma => "hfence.gvma",
            Fence::Invlpg => "invlpg",
        }
    }
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A memory access that completed (one that faulted is not recorded; its [`Event::Trap`]
    /// is).
    Access {
        /// Load, store or fetch ([`Kind::Modify`] is not used: an AMO is a load and a store).
        kind: Kind,
        /// The mode it was made in.
        mode: Mode,
        /// Bytes: 1, 2, 4, 8 or 16 (fetches: the instruction's bytes).
        size: u8,
        /// Virtual address (physical when translation is off).
        va: u64,
        /// Guest-physical address; fetches carry none (QEMU 10's plugin API gives none), 0.
        pa: u64,
        /// Stores: the value stored (the low `size` bytes; 16-byte stores keep the low 8).
        value: u64,
    },
    /// A write of the root register: the value `satp` holds after it.
    Satp {
        /// MODE (bits 60-63), ASID (44-59), PPN (0-43).
        value: u64,
    },
    /// x86: a write of CR0, CR3 or CR4 (or the first look at them): the paging state after
    /// it. Paging is on with 4-level tables when CR0.PG and EFER.LMA are set, 5-level when
    /// CR4.LA57 is too; a CR3 write is a root switch, a change of CR4.PGE flushes globals.
    X86Control {
        /// The control register the instruction wrote (0, 3 or 4): a CR3 write flushes the
        /// TLB even when it writes the value CR3 held.
        written: u8,
        /// CR0 (PG is bit 31, WP bit 16).
        cr0: u64,
        /// CR3: the root table's address (bits 12-51) and, with CR4.PCIDE, the PCID.
        cr3: u64,
        /// CR4 (PGE bit 7, PCIDE bit 17, LA57 bit 12).
        cr4: u64,
        /// EFER (LMA bit 10, NXE bit 11).
        efer: u64,
    },
    /// A TLB-maintenance instruction; `None` operands are the register x0.
    Fence {
        /// Which instruction.
        fence: Fence,
        /// rs1's value.
        rs1: Option<u64>,
        /// rs2's value.
        rs2: Option<u64>,
    },
    /// A trap the kernel took, seen when its handler read `scause`.
    Trap {
        /// `scause`.
        cause: u64,
        /// `stval`.
        tval: u64,
        /// The mode it was taken from (`sstatus.SPP`, or user for U).
        from: Mode,
    },
    /// A guest program's marker (`memvirt-mark N` in the guest).
    Marker {
        /// Its number.
        id: u64,
    },
}

/// The RISC-V `scause` codes of page faults, by the access that faulted.
pub const FETCH_PAGE_FAULT: u64 = 12;
/// Load page fault.
pub const LOAD_PAGE_FAULT: u64 = 13;
/// Store/AMO page fault.
pub const STORE_PAGE_FAULT: u64 = 15;

/// One event and the instructions retired since the previous one of its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SysRecord {
    /// Instructions since the previous record (counted a translation block at a time).
    pub gap: u32,
    /// The event.
    pub event: Event,
}

/// The largest encoded record: op, gap (5), then four varints (x86 control registers; an
/// access has three).
pub const MAX_SYS_RECORD_BYTES: usize = 1 + 5 + 4 * 10;

// Event types (op bits 0-2).
const T_LOAD: u8 = 0;
const T_STORE: u8 = 1;
const T_FETCH: u8 = 2;
const T_X86: u8 = 3;
const T_SATP: u8 = 4;
const T_FENCE: u8 = 5;
const T_TRAP: u8 = 6;
const T_MARKER: u8 = 7;

/// The predictor state an encoder and decoder share within one block.
#[derive(Default)]
struct Predict {
    /// Previous data and fetch virtual addresses.
    va: [u64; 2],
    /// Previous data `pa - va`: constant within a page, so usually a delta of 0.
    offset: u64,
}

/// Appends `records` encoded (before compression) to `out`.
///
/// Op byte: type (bits 0-2: load, store, fetch, x86 control registers, satp, fence, trap,
/// marker). Accesses: mode
/// (bits 3-4) and log2 of the size (bits 5-7); then the gap, the zigzag delta of the virtual
/// address from the previous one of its class (data, fetch), for data the zigzag delta of
/// `pa - va` from the previous data access's, for stores the value. Fences: kind (bits 3-4),
/// rs1 present (bit 5), rs2 present (bit 6); then the gap and the present operands. Traps:
/// the mode taken from (bits 3-4); gap, cause, tval. Satp and markers: gap and value. x86
/// control registers: the register written (bits 3-5); gap, CR0, CR3, CR4, EFER. Every number
/// is a LEB128 varint.
pub fn encode(records: &[SysRecord], out: &mut Vec<u8>) {
    let mut p = Predict::default();
    for r in records {
        match r.event {
            Event::Access { kind, mode, size, va, pa, value } => {
                let t = match kind {
                    Kind::Store => T_STORE,
                    Kind::Fetch => T_FETCH,
                    Kind::Load | Kind::Modify => T_LOAD,
                };
                let log = size.max(1).ilog2().min(7);
                out.push(t | (mode as u8) << 3 | u8::try_from(log).unwrap_or(7) << 5);
                compact::put_varint(out, u64::from(r.gap));
                let class = usize::from(t == T_FETCH);
                compact::put_varint(out, compact::zigzag(va.wrapping_sub(p.va[class])));
                p.va[class] = va;
                if t != T_FETCH {
                    let offset = pa.wrapping_sub(va);
                    compact::put_varint(out, compact::zigzag(offset.wrapping_sub(p.offset)));
                    p.offset = offset;
                }
                if t == T_STORE {
                    compact::put_varint(out, value);
                }
            }
            Event::Satp { value } | Event::Marker { id: value } => {
                let t = if matches!(r.event, Event::Satp { .. }) { T_SATP } else { T_MARKER };
                out.push(t);
                compact::put_varint(out, u64::from(r.gap));
                compact::put_varint(out, value);
            }
            Event::Fence { fence, rs1, rs2 } => {
                out.push(
                    T_FENCE
                        | (fence as u8) << 3
                        | u8::from(rs1.is_some()) << 5
                        | u8::from(rs2.is_some()) << 6,
                );
                compact::put_varint(out, u64::from(r.gap));
                for v in [rs1, rs2].into_iter().flatten() {
                    compact::put_varint(out, v);
                }
            }
            Event::X86Control { written, cr0, cr3, cr4, efer } => {
                out.push(T_X86 | (written & 7) << 3);
                compact::put_varint(out, u64::from(r.gap));
                for v in [cr0, cr3, cr4, efer] {
                    compact::put_varint(out, v);
                }
            }
            Event::Trap { cause, tval, from } => {
                out.push(T_TRAP | (from as u8) << 3);
                compact::put_varint(out, u64::from(r.gap));
                compact::put_varint(out, cause);
                compact::put_varint(out, tval);
            }
        }
    }
}

/// Decodes exactly `n` records from `raw` (all of it) onto `out`; returns the sum of their gaps.
pub fn decode(raw: &[u8], n: usize, out: &mut Vec<SysRecord>) -> Result<u64, String> {
    let mut p = Predict::default();
    let mut i = 0usize;
    let mut gaps = 0u64;
    out.reserve(n);
    for k in 0..n {
        let at = i;
        let bad = |what: &str| format!("record {k}: {what} (record at byte {at} of the block)");
        let op = *raw.get(i).ok_or_else(|| bad("records end early"))?;
        i += 1;
        let mut num = |what: &str| compact::get_varint(raw, &mut i).ok_or_else(|| bad(what));
        let gap = u32::try_from(num("bad gap")?).map_err(|_| bad("gap too large"))?;
        let event = match op & 7 {
            t @ (T_LOAD | T_STORE | T_FETCH) => {
                let mode = Mode::from_bits(u64::from(op >> 3 & 3)).ok_or_else(|| bad("mode 2"))?;
                let log = op >> 5;
                if log > 4 {
                    return Err(bad("access size above 16 bytes"));
                }
                let class = usize::from(t == T_FETCH);
                let va = p.va[class].wrapping_add(compact::unzigzag(num("bad address")?));
                p.va[class] = va;
                let pa = if t == T_FETCH {
                    0
                } else {
                    p.offset =
                        p.offset.wrapping_add(compact::unzigzag(num("bad physical address")?));
                    va.wrapping_add(p.offset)
                };
                let value = if t == T_STORE { num("bad value")? } else { 0 };
                let kind = [Kind::Load, Kind::Store, Kind::Fetch][usize::from(t)];
                Event::Access { kind, mode, size: 1 << log, va, pa, value }
            }
            T_SATP => Event::Satp { value: num("bad satp")? },
            T_X86 => {
                if op >> 6 != 0 {
                    return Err(bad("unknown control-register flag"));
                }
                let written = op >> 3 & 7;
                let cr0 = num("bad cr0")?;
                let cr3 = num("bad cr3")?;
                let cr4 = num("bad cr4")?;
                Event::X86Control { written, cr0, cr3, cr4, efer: num("bad efer")? }
            }
            T_MARKER => Event::Marker { id: num("bad marker")? },
            T_FENCE => {
                let fence = *Fence::ALL
                    .get(usize::from(op >> 3 & 3))
                    .ok_or_else(|| bad("unknown fence"))?;
                let rs1 = if op & 1 << 5 != 0 { Some(num("bad rs1")?) } else { None };
                let rs2 = if op & 1 << 6 != 0 { Some(num("bad rs2")?) } else { None };
                if op & 0x80 != 0 {
                    return Err(bad("unknown fence flag"));
                }
                Event::Fence { fence, rs1, rs2 }
            }
            T_TRAP => {
                let from = Mode::from_bits(u64::from(op >> 3 & 3)).ok_or_else(|| bad("mode 2"))?;
                if op >> 5 != 0 {
                    return Err(bad("unknown trap flag"));
                }
                Event::Trap { cause: num("bad cause")?, tval: num("bad tval")?, from }
            }
            _ => return Err(bad("unknown event type")),
        };
        gaps += u64::from(gap);
        out.push(SysRecord { gap, event });
    }
    if i != raw.len() {
        return Err(format!("{} bytes left over after {n} records", raw.len() - i));
    }
    Ok(gaps)
}

/// The directory slot ([`StreamInfo::by_kind`]) each event counts in: loads, stores, fetches
/// in their own kinds' slots; every other event in the slot of [`Kind::Modify`], which
/// full-system streams do not otherwise use.
fn slot(e: &Event) -> usize {
    match e {
        Event::Access { kind, .. } => *kind as usize,
        _ => Kind::Modify as usize,
    }
}

/// A stream being written.
#[derive(Debug, Default)]
struct Pending {
    records: Vec<SysRecord>,
}

/// Writes a full-system trace: one stream per vCPU, a block at a time.
pub struct SystemWriter<W: Write + Seek> {
    inner: Writer<W>,
    streams: Vec<Pending>,
    raw: Vec<u8>,
}

impl<W: Write + Seek> std::fmt::Debug for SystemWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemWriter").field("streams", &self.streams.len()).finish()
    }
}

impl<W: Write + Seek> SystemWriter<W> {
    /// A writer over the container writer `inner` (whose source must be [`Source::Qemu`]).
    pub fn new(mut inner: Writer<W>) -> Self {
        inner.set_source(Source::Qemu);
        SystemWriter { inner, streams: Vec::new(), raw: Vec::new() }
    }

    /// Starts a stream (one per vCPU) and returns its number.
    pub fn begin_stream(&mut self, meta: StreamMeta) -> Result<u32, TraceError> {
        use super::RecordSink;
        let id = self.inner.begin_stream(meta)?;
        self.streams.push(Pending { records: Vec::with_capacity(BLOCK_RECORDS) });
        Ok(id)
    }

    /// Appends `r` to `stream`.
    #[inline]
    pub fn push(&mut self, stream: u32, r: SysRecord) -> Result<(), TraceError> {
        let s = self.streams.get_mut(stream as usize).ok_or(TraceError::NoStream(stream))?;
        s.records.push(r);
        if s.records.len() == BLOCK_RECORDS {
            self.flush(stream)?;
        }
        Ok(())
    }

    fn flush(&mut self, stream: u32) -> Result<(), TraceError> {
        let s = &mut self.streams[stream as usize];
        if s.records.is_empty() {
            return Ok(());
        }
        self.raw.clear();
        encode(&s.records, &mut self.raw);
        let n = u32::try_from(s.records.len()).map_err(|_| TraceError::Limit("records".into()))?;
        let instructions: u64 = s.records.iter().map(|r| u64::from(r.gap)).sum();
        let info = self.inner.stream_info_mut(stream).ok_or(TraceError::NoStream(stream))?;
        for r in &s.records {
            if let Event::Access { va, size, .. } = r.event {
                let end = va.saturating_add(u64::from(size.max(1)) - 1);
                if info.by_kind[0] + info.by_kind[1] + info.by_kind[3] == 0 {
                    (info.min_addr, info.max_addr) = (va, end);
                } else {
                    info.min_addr = info.min_addr.min(va);
                    info.max_addr = info.max_addr.max(end);
                }
            }
            info.by_kind[slot(&r.event)] += 1;
        }
        info.records += u64::from(n);
        info.instructions += instructions;
        s.records.clear();
        self.inner.write_block(stream, &self.raw, n, instructions)
    }

    /// Writes every pending block; returns the container writer to finish.
    pub fn into_inner(mut self) -> Result<Writer<W>, TraceError> {
        for s in 0..self.streams.len() {
            self.flush(u32::try_from(s).map_err(|_| TraceError::Limit("streams".into()))?)?;
        }
        Ok(self.inner)
    }
}

/// A full-system trace file being written (through a temporary sibling, renamed into place
/// by [`SystemFile::commit`]).
#[derive(Debug)]
pub struct SystemFile {
    out: FileOutput,
    /// The writer.
    pub writer: SystemWriter<BufWriter<File>>,
}

impl SystemFile {
    /// Starts writing `path` with zstd `level`.
    pub fn create(path: &Path, level: i32) -> Result<SystemFile, TraceError> {
        let (out, inner) = FileOutput::create(path, Source::Qemu, level)?;
        Ok(SystemFile { out, writer: SystemWriter::new(inner) })
    }

    /// Finishes the file and moves it into place.
    pub fn commit(self) -> Result<(Header, Vec<StreamInfo>), TraceError> {
        let inner = self.writer.into_inner()?;
        self.out.commit(inner, 0)
    }
}

/// Reads one full-system stream, a block at a time.
#[derive(Debug)]
pub struct SystemStream {
    name: String,
    blocks: RawBlocks,
}

impl SystemStream {
    /// The events of stream `stream` of `reader`, which must be a full-system trace.
    pub fn open(reader: &Reader, stream: usize) -> Result<SystemStream, TraceError> {
        require_system(reader)?;
        let blocks = reader.raw_blocks(stream, MAX_SYS_RECORD_BYTES)?;
        Ok(SystemStream { name: reader.name.clone(), blocks })
    }

    /// Replaces `out` with the next block's records; `false` after the last.
    pub fn next_batch(&mut self, out: &mut Vec<SysRecord>) -> Result<bool, TraceError> {
        out.clear();
        let Some((b, raw)) = self.blocks.next_block()? else { return Ok(false) };
        let name = &self.name;
        let bad =
            |detail: String| TraceError::Format { file: name.clone(), offset: b.offset, detail };
        let gaps =
            decode(raw, b.records as usize, out).map_err(|e| bad(format!("corrupt block: {e}")))?;
        if gaps != b.instructions {
            return Err(bad("corrupt block: instruction count disagrees".into()));
        }
        Ok(true)
    }
}

/// `Ok` when `reader` holds full-system streams; otherwise an error that says what it holds.
pub fn require_system(reader: &Reader) -> Result<(), TraceError> {
    if reader.header.source == Source::Qemu {
        return Ok(());
    }
    Err(TraceError::Other(format!(
        "{}: not a full-system trace (it was written by {}); `memvirt run --trace` replays it",
        reader.name,
        reader.header.source.name()
    )))
}

/// Decodes every block of every stream of a full-system trace and checks the directory's
/// counts and address range against the events.
pub fn validate(reader: &Reader) -> Result<(), TraceError> {
    let mut batch = Vec::new();
    for (s, info) in reader.streams.iter().enumerate() {
        let mut stream = SystemStream::open(reader, s)?;
        let (mut by_kind, mut records, mut instructions) = ([0u64; 4], 0u64, 0u64);
        let (mut min, mut max) = (u64::MAX, 0u64);
        while stream.next_batch(&mut batch)? {
            for r in &batch {
                records += 1;
                instructions += u64::from(r.gap);
                by_kind[slot(&r.event)] += 1;
                if let Event::Access { va, size, .. } = r.event {
                    min = min.min(va);
                    max = max.max(va.saturating_add(u64::from(size.max(1)) - 1));
                }
            }
        }
        let accesses = by_kind[0] + by_kind[1] + by_kind[3];
        let (min, max) = if accesses == 0 { (0, 0) } else { (min, max) };
        let claims = (
            info.records,
            info.instructions - info.trailing,
            info.by_kind,
            info.min_addr,
            info.max_addr,
        );
        if claims != (records, instructions, by_kind, min, max) {
            return Err(TraceError::Format {
                file: reader.name.clone(),
                offset: reader.header.dir_offset,
                detail: format!(
                    "directory: stream {s}: its counts or address range disagree with the events"
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<SysRecord> {
        let access =
            |kind, mode, size, va, pa, value| Event::Access { kind, mode, size, va, pa, value };
        [
            Event::Satp { value: 0x8000_0000_0008_0123 },
            access(Kind::Fetch, Mode::Supervisor, 4, 0xffff_ffff_8000_0000, 0, 0),
            access(Kind::Load, Mode::Supervisor, 8, 0xffff_ffd8_0000_1000, 0x8000_1000, 0),
            access(Kind::Store, Mode::User, 1, 0x1_0000, 0x8765_4000, 0xab),
            access(Kind::Store, Mode::Machine, 16, 0x8000_0000, 0x8000_0000, u64::MAX),
            Event::Fence { fence: Fence::SfenceVma, rs1: Some(0x1_0000), rs2: None },
            Event::Fence { fence: Fence::HfenceGvma, rs1: None, rs2: Some(3) },
            Event::Fence { fence: Fence::Invlpg, rs1: Some(0xffff_8880_0123_4000), rs2: None },
            Event::X86Control {
                written: 3,
                cr0: 0x8005_0033,
                cr3: 0x1234_5000,
                cr4: 0x6f0,
                efer: 0xd01,
            },
            Event::Trap { cause: STORE_PAGE_FAULT, tval: 0x2_0000, from: Mode::User },
            Event::Marker { id: 7 },
        ]
        .into_iter()
        .enumerate()
        .map(|(i, event)| SysRecord { gap: u32::try_from(i * 3).unwrap_or(0), event })
        .collect()
    }

    #[test]
    fn events_round_trip() -> Result<(), String> {
        let recs = sample();
        let mut raw = Vec::new();
        encode(&recs, &mut raw);
        let mut out = Vec::new();
        let gaps = decode(&raw, recs.len(), &mut out)?;
        assert_eq!(out, recs);
        assert_eq!(gaps, (0..recs.len() as u64).map(|i| i * 3).sum::<u64>());
        assert!(decode(&raw[..raw.len() - 1], recs.len(), &mut Vec::new()).is_err());
        assert!(decode(&raw, recs.len() - 1, &mut Vec::new()).is_err());
        // Event type 3 does not exist.
        assert!(decode(&[3, 0, 0], 1, &mut Vec::new()).is_err());
        Ok(())
    }

    #[test]
    fn a_written_file_reads_back_and_validates() -> Result<(), TraceError> {
        let recs = sample();
        let inner = Writer::new(std::io::Cursor::new(Vec::new()), "sys.mvt", Source::Qemu, 1)?;
        let mut w = SystemWriter::new(inner);
        let s = w.begin_stream(StreamMeta { name: "vcpu0".into(), ..StreamMeta::default() })?;
        for _ in 0..3 {
            for r in &recs {
                w.push(s, *r)?;
            }
        }
        let (_, _, cursor) = w.into_inner()?.finish(0)?;
        let reader = Reader::from_bytes("sys.mvt".into(), cursor.into_inner())?;
        validate(&reader)?;
        // `trace verify` and `trace info` reach the same check through the container's reader.
        reader.validate()?;
        let mut stream = SystemStream::open(&reader, 0)?;
        let (mut all, mut batch) = (Vec::new(), Vec::new());
        while stream.next_batch(&mut batch)? {
            all.extend_from_slice(&batch);
        }
        assert_eq!(all.len(), recs.len() * 3);
        assert_eq!(&all[..recs.len()], &recs[..]);
        // Per copy of the sample: 1 load, 2 stores, 1 fetch, 7 other events (satp, three
        // fences, the control registers, the trap, the marker).
        assert_eq!(reader.streams[0].by_kind, [3, 6, 21, 3]);
        Ok(())
    }
}
