//! memvirt's QEMU TCG plugin: records what a whole RISC-V guest does (kernel, firmware and
//! programs) as a full-system trace that `memvirt guest replay` drives every scheme with.
//!
//! Load it with `-plugin libmemvirt_qemu_plugin.so,out=OUT.mvt[,level=N]`. It records, per
//! vCPU, in memvirt's compact container (`memvirt::trace::system`):
//! - every memory access that completes, with its virtual and physical address, size and the
//!   mode it ran in; stores with their value; one fetch per translation block executed (and one
//!   more when the block runs onto a second page);
//! - the value of `satp` after every instruction that writes it;
//! - `sfence.vma`, `hfence.vvma` and `hfence.gvma` with their operand registers;
//! - the kernel's traps, read (`scause`, `stval`, `sstatus.SPP`) when its handler reads
//!   `scause`;
//! - markers: the hint `addi x0, rs1, 0x6d6` that `memvirt-mark N` executes records rs1.
//!
//! The privilege mode is read (`priv`) at the start of every translation block: a mode change
//! always ends a block in QEMU (traps, `ecall`, `sret`, `mret`). Instructions are counted a
//! block at a time, so a block cut short by a trap counts whole.

use std::sync::Mutex;

use memvirt::trace::system::{Event, Fence, Mode, SysRecord, SystemFile};
use memvirt::trace::{Kind, StreamMeta};
use qemu_plugin::install::{Args, Info};
use qemu_plugin::plugin::{HasCallbacks, Register};
use qemu_plugin::{
    CallbackFlags, MemRW, PluginId, RegisterDescriptor, TranslationBlock, VCPUIndex,
};

/// The CSR numbers the plugin watches.
const CSR_SATP: u32 = 0x180;
const CSR_SCAUSE: u32 = 0x142;
/// The immediate of the marker hint `addi x0, rs1, MARK_IMM`.
const MARK_IMM: u32 = 0x6d6;

/// The registers the recorder reads, found by name at the first vCPU's start.
struct Regs {
    privilege: RegisterDescriptor<'static>,
    satp: RegisterDescriptor<'static>,
    scause: RegisterDescriptor<'static>,
    stval: RegisterDescriptor<'static>,
    sstatus: RegisterDescriptor<'static>,
    /// x0..x31 (x0 unused).
    x: Vec<Option<RegisterDescriptor<'static>>>,
}

/// The ABI names QEMU's gdb description gives x0..x31.
const ABI: [&str; 32] = [
    "zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "fp", "s1", "a0", "a1", "a2", "a3", "a4",
    "a5", "a6", "a7", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "t3", "t4",
    "t5", "t6",
];

impl Regs {
    fn find() -> Result<Regs, String> {
        let all = qemu_plugin::qemu_plugin_get_registers()
            .map_err(|e| format!("cannot list the vCPU's registers: {e}"))?;
        let by = |names: &[&str]| all.iter().find(|r| names.contains(&r.name.as_str())).cloned();
        let need =
            |name: &str| by(&[name]).ok_or_else(|| format!("the vCPU has no register {name}"));
        let x = (0..32)
            .map(|i| {
                let xn = format!("x{i}");
                by(&[ABI[i], xn.as_str(), if i == 8 { "s0" } else { ABI[i] }])
            })
            .collect();
        Ok(Regs {
            privilege: need("priv")?,
            satp: need("satp")?,
            scause: need("scause")?,
            stval: need("stval")?,
            sstatus: need("sstatus")?,
            x,
        })
    }
}

/// Reads a little-endian register of up to 8 bytes.
fn read(reg: &RegisterDescriptor<'static>) -> Result<u64, String> {
    let bytes = reg.read().map_err(|e| format!("cannot read {}: {e}", reg.name))?;
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[..n].copy_from_slice(&bytes[..n]);
    Ok(u64::from_le_bytes(b))
}

/// The recording of one run.
struct Recorder {
    file: Option<SystemFile>,
    path: String,
    regs: Option<Regs>,
    /// Instructions counted since the last event.
    gap: u64,
    mode: Mode,
    satp: u64,
    /// A `satp` write executed; read the register at the next instruction.
    satp_pending: bool,
    /// Events written.
    events: u64,
    /// The first error; recording stops there and it is reported at exit.
    error: Option<String>,
}

static RECORDER: Mutex<Option<Recorder>> = Mutex::new(None);

/// Runs `f` on the recorder, unless recording has stopped; an error stops it.
fn with(f: impl FnOnce(&mut Recorder) -> Result<(), String>) {
    let Ok(mut guard) = RECORDER.lock() else { return };
    let Some(r) = guard.as_mut() else { return };
    if r.error.is_some() || r.file.is_none() {
        return;
    }
    if let Err(e) = f(r) {
        let _ = qemu_plugin::qemu_plugin_outs(format!("memvirt plugin: {e}; recording stops\n"));
        r.error = Some(e);
    }
}

impl Recorder {
    fn regs(&self) -> Result<&Regs, String> {
        self.regs.as_ref().ok_or_else(|| "no registers yet".to_owned())
    }

    fn emit(&mut self, event: Event) -> Result<(), String> {
        let gap = u32::try_from(self.gap).unwrap_or(u32::MAX);
        self.gap -= u64::from(gap);
        let file = self.file.as_mut().ok_or("the trace is closed")?;
        file.writer.push(0, SysRecord { gap, event }).map_err(|e| e.to_string())?;
        self.events += 1;
        Ok(())
    }

    /// A pending `satp` write: record the register's new value if it changed.
    fn check_satp(&mut self) -> Result<(), String> {
        if !self.satp_pending {
            return Ok(());
        }
        self.satp_pending = false;
        let value = read(&self.regs()?.satp)?;
        if value != self.satp {
            self.satp = value;
            self.emit(Event::Satp { value })?;
        }
        Ok(())
    }

    fn block(&mut self, insns: u64, fetches: &[(u64, u8)]) -> Result<(), String> {
        self.check_satp()?;
        let bits = read(&self.regs()?.privilege)?;
        self.mode = Mode::from_bits(bits).ok_or_else(|| format!("privilege mode {bits}"))?;
        self.gap += insns;
        for &(va, size) in fetches {
            let mode = self.mode;
            self.emit(Event::Access { kind: Kind::Fetch, mode, size, va, pa: 0, value: 0 })?;
        }
        Ok(())
    }
}

/// What the recorder does at one instruction, decoded at translation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    None,
    /// Writes `satp`.
    WritesSatp,
    /// Reads `scause`: the kernel's trap entry.
    ReadsScause,
    /// A fence with its rs1 and rs2 register numbers.
    Fence(Fence, u32, u32),
    /// The marker hint with its rs1.
    Marker(u32),
}

/// Decodes the RISC-V instruction `w` (a 16-bit one never matters here).
fn decode(w: u32) -> Action {
    let (opcode, rd, funct3) = (w & 0x7f, w >> 7 & 31, w >> 12 & 7);
    let (rs1, rs2, funct7, csr) = (w >> 15 & 31, w >> 20 & 31, w >> 25, w >> 20);
    match opcode {
        0x73 if funct3 == 0 && rd == 0 => match funct7 {
            0x09 => Action::Fence(Fence::SfenceVma, rs1, rs2),
            0x11 => Action::Fence(Fence::HfenceVvma, rs1, rs2),
            0x31 => Action::Fence(Fence::HfenceGvma, rs1, rs2),
            _ => Action::None,
        },
        // CSRRW/CSRRWI always write; CSRRS/CSRRC(I) write unless rs1/uimm is 0.
        0x73 if funct3 != 0 && funct3 != 4 => {
            let writes = matches!(funct3, 1 | 5) || rs1 != 0;
            match csr {
                CSR_SATP if writes => Action::WritesSatp,
                CSR_SCAUSE if rd != 0 => Action::ReadsScause,
                _ => Action::None,
            }
        }
        0x13 if funct3 == 0 && rd == 0 && csr == MARK_IMM => Action::Marker(rs1),
        _ => Action::None,
    }
}

fn x_reg(r: &Recorder, n: u32) -> Result<Option<u64>, String> {
    if n == 0 {
        return Ok(None);
    }
    let reg = r.regs()?.x.get(n as usize).and_then(Option::as_ref);
    let reg = reg.ok_or_else(|| format!("the vCPU has no register x{n}"))?;
    read(reg).map(Some)
}

struct MemvirtPlugin;

impl Register for MemvirtPlugin {
    fn register(&mut self, id: PluginId, args: &Args, _info: &Info) -> qemu_plugin::Result<()> {
        // The binding aborts QEMU with a backtrace on an error here, so a bad argument is
        // reported plainly and QEMU exits with status 1 instead.
        let file = open(args).unwrap_or_else(|e| {
            eprintln!("memvirt plugin: {e}");
            std::process::exit(1)
        });
        let path = file.1;
        let file = file.0;
        if let Ok(mut g) = RECORDER.lock() {
            *g = Some(Recorder {
                file: Some(file),
                path,
                regs: None,
                gap: 0,
                mode: Mode::Machine,
                satp: 0,
                satp_pending: false,
                events: 0,
                error: None,
            });
        }
        qemu_plugin::qemu_plugin_register_atexit_cb(id, |_| finish())?;
        Ok(())
    }
}

/// Parses the plugin's arguments (`out=PATH`, `level=N`; `file` is QEMU's own key for the plugin) and starts the trace file.
fn open(args: &Args) -> Result<(SystemFile, String), String> {
    let (mut path, mut level) = (None, memvirt::trace::compact::DEFAULT_LEVEL);
    for arg in &args.raw {
        match arg.split_once('=') {
            Some(("out", p)) if !p.is_empty() => path = Some(p.to_owned()),
            Some(("level", l)) => {
                level = l.parse().map_err(|_| format!("level={l}: not a zstd level (1 to 19)"))?;
            }
            _ => {
                return Err(format!(
                    "unknown argument {arg:?}; the plugin takes out=PATH[,level=N]"
                ))
            }
        }
    }
    let path = path.ok_or("give out=PATH for the trace")?;
    let mut file =
        SystemFile::create(std::path::Path::new(&path), level).map_err(|e| e.to_string())?;
    file.writer
        .begin_stream(StreamMeta { name: "vcpu0".into(), ..StreamMeta::default() })
        .map_err(|e| e.to_string())?;
    Ok((file, path))
}

/// Closes the trace at QEMU's exit (also after SIGINT/SIGTERM, which QEMU turns into an
/// orderly shutdown).
fn finish() {
    let Ok(mut guard) = RECORDER.lock() else { return };
    let Some(mut r) = guard.take() else { return };
    let Some(file) = r.file.take() else { return };
    let msg = match (&r.error, file.commit()) {
        (None, Ok((h, _))) => {
            format!(
                "memvirt plugin: {} events, {} instructions in {}\n",
                h.records, h.instructions, r.path
            )
        }
        (Some(e), Ok(_)) => format!("memvirt plugin: {} is cut short: {e}\n", r.path),
        (_, Err(e)) => format!("memvirt plugin: {e}\n"),
    };
    // QEMU's own output channels are closed by now.
    eprint!("{msg}");
}

impl HasCallbacks for MemvirtPlugin {
    fn on_vcpu_init(&mut self, _id: PluginId, vcpu: VCPUIndex) -> qemu_plugin::Result<()> {
        if vcpu != 0 {
            with(|_| Err("only one vCPU is recorded; run the guest with -smp 1".into()));
            return Ok(());
        }
        with(|r| {
            r.regs = Some(Regs::find()?);
            Ok(())
        });
        Ok(())
    }

    fn on_translation_block_translate(
        &mut self,
        _id: PluginId,
        tb: TranslationBlock,
    ) -> qemu_plugin::Result<()> {
        let insns: Vec<_> = tb.instructions().collect();
        let Some(first) = insns.first() else { return Ok(()) };
        let mut fetches = vec![(first.vaddr(), u8::try_from(first.size()).unwrap_or(4))];
        if let Some(last) = insns.last() {
            if last.vaddr() >> 12 != first.vaddr() >> 12 {
                fetches.push((last.vaddr(), u8::try_from(last.size()).unwrap_or(4)));
            }
        }
        let n = insns.len() as u64;
        tb.register_execute_callback_flags(
            move |_| with(|r| r.block(n, &fetches)),
            CallbackFlags::QEMU_PLUGIN_CB_R_REGS,
        );
        let mut after_satp = false;
        for insn in &insns {
            let data = insn.data();
            let word = match data.len() {
                4 => u32::from_le_bytes([data[0], data[1], data[2], data[3]]),
                _ => 0,
            };
            let action = decode(word);
            if after_satp {
                insn.register_execute_callback_flags(
                    |_| with(Recorder::check_satp),
                    CallbackFlags::QEMU_PLUGIN_CB_R_REGS,
                );
            }
            after_satp = action == Action::WritesSatp;
            match action {
                Action::None => {}
                Action::WritesSatp => insn.register_execute_callback(|_| {
                    with(|r| {
                        r.satp_pending = true;
                        Ok(())
                    })
                }),
                Action::ReadsScause => insn.register_execute_callback_flags(
                    |_| {
                        with(|r| {
                            let regs = r.regs()?;
                            let (cause, tval) = (read(&regs.scause)?, read(&regs.stval)?);
                            let spp = read(&regs.sstatus)? >> 8 & 1;
                            let from = if spp == 1 { Mode::Supervisor } else { Mode::User };
                            r.emit(Event::Trap { cause, tval, from })
                        })
                    },
                    CallbackFlags::QEMU_PLUGIN_CB_R_REGS,
                ),
                Action::Fence(fence, rs1, rs2) => insn.register_execute_callback_flags(
                    move |_| {
                        with(|r| {
                            let (rs1, rs2) = (x_reg(r, rs1)?, x_reg(r, rs2)?);
                            r.emit(Event::Fence { fence, rs1, rs2 })
                        })
                    },
                    CallbackFlags::QEMU_PLUGIN_CB_R_REGS,
                ),
                Action::Marker(rs1) => insn.register_execute_callback_flags(
                    move |_| {
                        with(|r| {
                            let id = x_reg(r, rs1)?.unwrap_or(0);
                            r.emit(Event::Marker { id })
                        })
                    },
                    CallbackFlags::QEMU_PLUGIN_CB_R_REGS,
                ),
            }
            insn.register_memory_access_callback(
                |_, info, va| {
                    with(|r| {
                        let size = 1u8 << info.size_shift().min(4);
                        let store = info.is_store();
                        let pa = info.hwaddr(va).map_or(va, |h| h.hwaddr());
                        let value = if store {
                            match info.value() {
                                qemu_plugin::MemValue::U8(v) => u64::from(v),
                                qemu_plugin::MemValue::U16(v) => u64::from(v),
                                qemu_plugin::MemValue::U32(v) => u64::from(v),
                                qemu_plugin::MemValue::U64(v) => v,
                                qemu_plugin::MemValue::U128(v) => v as u64,
                            }
                        } else {
                            0
                        };
                        let kind = if store { Kind::Store } else { Kind::Load };
                        let mode = r.mode;
                        r.emit(Event::Access { kind, mode, size, va, pa, value })
                    })
                },
                MemRW::QEMU_PLUGIN_MEM_RW,
            );
        }
        Ok(())
    }
}

qemu_plugin::register!(MemvirtPlugin);
