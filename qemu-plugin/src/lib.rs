//! memvirt's QEMU TCG plugin: records what a whole RISC-V or x86-64 guest does (kernel,
//! firmware and programs) as a full-system trace that `memvirt guest replay` drives every
//! scheme with.
//!
//! Load it with `-plugin libmemvirt_qemu_plugin.so,out=OUT.mvt[,level=N]`. It records, per
//! vCPU, in memvirt's compact container (`memvirt::trace::system`):
//! - every memory access that completes, with its virtual and physical address, size and the
//!   mode it ran in; stores with their value; one fetch per translation block executed (and one
//!   more when the block runs onto a second page);
//! - RISC-V: the value of `satp` after every instruction that writes it; x86: CR0, CR3, CR4
//!   and EFER after every `MOV` to CR0, CR3 or CR4;
//! - RISC-V: `sfence.vma`, `hfence.vvma` and `hfence.gvma` with their operand registers; x86:
//!   `INVLPG` with the address its operand names;
//! - the kernel's page faults: RISC-V when its trap entry reads `scause` (with `scause`,
//!   `stval`, `sstatus.SPP`); x86 when its page-fault handler reads CR2, with the error code
//!   the handler holds in `rsi` (its second argument), recorded with RISC-V's cause numbers;
//!   x86 `SYSCALL`s as user environment calls;
//! - markers: the hint `addi x0, rs1, 0x6d6` (RISC-V) or `nopl 0x6d6(%rax)` (x86) that
//!   `memvirt-mark N` executes records rs1 or rax.
//!
//! The mode is read (`priv`, or CS's low bits on x86) at the start of every translation
//! block: a mode change always ends a block in QEMU. Instructions are counted a block at a
//! time, so a block cut short by a trap counts whole. The decoders are memvirt's
//! (`memvirt::trace::insn`), tested there.

use std::sync::Mutex;

use memvirt::trace::insn::{self, pf, Watch};
use memvirt::trace::system::{
    Event, Fence, Mode, SysRecord, SystemFile, FETCH_PAGE_FAULT, LOAD_PAGE_FAULT, STORE_PAGE_FAULT,
};
use memvirt::trace::{Kind, StreamMeta};
use qemu_plugin::install::{Args, Info};
use qemu_plugin::plugin::{HasCallbacks, Register};
use qemu_plugin::{
    CallbackFlags, MemRW, PluginId, RegisterDescriptor, TranslationBlock, VCPUIndex,
};

/// RISC-V's `scause` for an environment call from user mode (what x86 `SYSCALL`s record).
const USER_ECALL: u64 = 8;

type Reg = RegisterDescriptor<'static>;

/// The registers the recorder reads, found by name at the first vCPU's start.
enum Regs {
    RiscV {
        privilege: Reg,
        satp: Reg,
        scause: Reg,
        stval: Reg,
        sstatus: Reg,
        /// x0..x31 (x0 unused).
        x: Vec<Option<Reg>>,
    },
    X86 {
        cs: Reg,
        cr: [Reg; 4],
        cr2: Reg,
        /// rax..r15 in ModRM order.
        gpr: Vec<Reg>,
    },
}

/// The ABI names QEMU's gdb description gives x0..x31.
const ABI: [&str; 32] = [
    "zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "fp", "s1", "a0", "a1", "a2", "a3", "a4",
    "a5", "a6", "a7", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "t3", "t4",
    "t5", "t6",
];

/// x86-64's general registers in ModRM order.
const GPR: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

/// ModRM's number for rsi, where Linux's `exc_page_fault` holds the error code.
const RSI: usize = 6;

impl Regs {
    fn find() -> Result<Regs, String> {
        let all = qemu_plugin::qemu_plugin_get_registers()
            .map_err(|e| format!("cannot list the vCPU's registers: {e}"))?;
        let by = |names: &[&str]| all.iter().find(|r| names.contains(&r.name.as_str())).cloned();
        let need = |name: &str| {
            by(&[name]).ok_or_else(|| {
                let names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
                format!("the vCPU has no register {name} (it has {})", names.join(" "))
            })
        };
        if by(&["satp"]).is_some() {
            let x = (0..32)
                .map(|i| {
                    let xn = format!("x{i}");
                    by(&[ABI[i], xn.as_str(), if i == 8 { "s0" } else { ABI[i] }])
                })
                .collect();
            return Ok(Regs::RiscV {
                privilege: need("priv")?,
                satp: need("satp")?,
                scause: need("scause")?,
                stval: need("stval")?,
                sstatus: need("sstatus")?,
                x,
            });
        }
        let gpr = GPR.iter().map(|n| need(n)).collect::<Result<Vec<_>, _>>()?;
        Ok(Regs::X86 {
            cs: need("cs")?,
            cr: [need("cr0")?, need("cr3")?, need("cr4")?, need("efer")?],
            cr2: need("cr2")?,
            gpr,
        })
    }

    fn is_x86(&self) -> bool {
        matches!(self, Regs::X86 { .. })
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
    /// A root-register write executed (RISC-V: `satp`; x86: the control register's number);
    /// read the registers at the next instruction.
    root_pending: Option<u8>,
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

    /// A pending root-register write: RISC-V records `satp`'s new value if it changed; x86
    /// records the control registers after every write (a CR3 write flushes even unchanged).
    fn check_root(&mut self) -> Result<(), String> {
        let Some(written) = self.root_pending.take() else { return Ok(()) };
        match self.regs()? {
            Regs::RiscV { satp, .. } => {
                let value = read(satp)?;
                if value != self.satp {
                    self.satp = value;
                    self.emit(Event::Satp { value })?;
                }
            }
            Regs::X86 { cr, .. } => {
                let [cr0, cr3, cr4, efer] =
                    [read(&cr[0])?, read(&cr[1])?, read(&cr[2])?, read(&cr[3])?];
                self.emit(Event::X86Control { written, cr0, cr3, cr4, efer })?;
            }
        }
        Ok(())
    }

    fn block(&mut self, insns: u64, fetches: &[(u64, u8)]) -> Result<(), String> {
        self.check_root()?;
        self.mode = match self.regs()? {
            Regs::RiscV { privilege, .. } => {
                let bits = read(privilege)?;
                Mode::from_bits(bits).ok_or_else(|| format!("privilege mode {bits}"))?
            }
            // CPL 3 is user mode; 0 (and the unused 1, 2) the kernel.
            Regs::X86 { cs, .. } if read(cs)? & 3 == 3 => Mode::User,
            Regs::X86 { .. } => Mode::Supervisor,
        };
        self.gap += insns;
        for &(va, size) in fetches {
            let mode = self.mode;
            self.emit(Event::Access { kind: Kind::Fetch, mode, size, va, pa: 0, value: 0 })?;
        }
        Ok(())
    }

    /// The value of register `n`: a RISC-V x-register (`None` for x0) or an x86 register in
    /// ModRM order.
    fn reg(&self, n: u32) -> Result<Option<u64>, String> {
        let reg = match self.regs()? {
            Regs::RiscV { .. } if n == 0 => return Ok(None),
            Regs::RiscV { x, .. } => x.get(n as usize).and_then(Option::as_ref),
            Regs::X86 { gpr, .. } => gpr.get(n as usize),
        };
        let reg = reg.ok_or_else(|| format!("the vCPU has no register number {n}"))?;
        read(reg).map(Some)
    }

    /// RISC-V: the kernel's trap entry read `scause`.
    fn riscv_trap(&mut self) -> Result<(), String> {
        let Regs::RiscV { scause, stval, sstatus, .. } = self.regs()? else { return Ok(()) };
        let (cause, tval) = (read(scause)?, read(stval)?);
        let from = if read(sstatus)? >> 8 & 1 == 1 { Mode::Supervisor } else { Mode::User };
        self.emit(Event::Trap { cause, tval, from })
    }

    /// x86: the kernel's page-fault handler read CR2. Its error code is `exc_page_fault`'s
    /// second argument, still in rsi; a code with the reserved bit set is the early boot
    /// handler's vector number instead (a kernel fault on a missing early mapping: a load).
    fn x86_page_fault(&mut self) -> Result<(), String> {
        let Regs::X86 { cr2, .. } = self.regs()? else { return Ok(()) };
        let tval = read(cr2)?;
        let code = self.reg(RSI as u32)?.unwrap_or(0);
        let (cause, from) = if code & pf::RESERVED != 0 {
            (LOAD_PAGE_FAULT, Mode::Supervisor)
        } else {
            let cause = if code & pf::FETCH != 0 {
                FETCH_PAGE_FAULT
            } else if code & pf::WRITE != 0 {
                STORE_PAGE_FAULT
            } else {
                LOAD_PAGE_FAULT
            };
            (cause, if code & pf::USER != 0 { Mode::User } else { Mode::Supervisor })
        };
        self.emit(Event::Trap { cause, tval, from })
    }
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
                root_pending: None,
                events: 0,
                error: None,
            });
        }
        qemu_plugin::qemu_plugin_register_atexit_cb(id, |_| finish())?;
        Ok(())
    }
}

/// Parses the plugin's arguments (`out=PATH`, `level=N`, `image=ELF`; `file` is QEMU's own
/// key for the plugin) and starts the trace file.
fn open(args: &Args) -> Result<(SystemFile, String), String> {
    let (mut path, mut level) = (None, memvirt::trace::compact::DEFAULT_LEVEL);
    let mut image = None;
    for arg in &args.raw {
        match arg.split_once('=') {
            Some(("out", p)) if !p.is_empty() => path = Some(p.to_owned()),
            Some(("image", p)) if !p.is_empty() => image = Some(p.to_owned()),
            Some(("level", l)) => {
                level = l.parse().map_err(|_| format!("level={l}: not a zstd level (1 to 19)"))?;
            }
            _ => {
                return Err(format!(
                    "unknown argument {arg:?}; the plugin takes out=PATH[,level=N][,image=ELF]"
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
    if let Some(image) = image {
        preload(&mut file, &image)?;
    }
    Ok((file, path))
}

/// Records what QEMU's loader puts into guest memory from the ELF kernel `image` (`-kernel`
/// with a PVH entry) before the guest runs: the loader's writes are no guest stores, yet the
/// kernel's first page tables (x86's `init_top_pgt` and friends) are in that data. Every
/// non-zero word of each loadable segment becomes a machine-mode store at its physical
/// address; the rest of guest memory starts zero, as in the replay's image.
fn preload(file: &mut SystemFile, image: &str) -> Result<(), String> {
    let bytes = std::fs::read(image).map_err(|e| format!("image={image}: {e}"))?;
    let bad = |what: &str| format!("image={image}: {what}");
    let u16_at = |o: usize| bytes.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        bytes.get(o..o + 8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes)
    };
    if bytes.get(..5) != Some(b"\x7fELF\x02") || bytes.get(5) != Some(&1) {
        return Err(bad("not a little-endian 64-bit ELF file"));
    }
    let phoff = u64_at(0x20).ok_or_else(|| bad("no program headers"))?;
    let phoff = usize::try_from(phoff).map_err(|_| bad("program headers out of range"))?;
    let (size, count) = (u16_at(0x36).unwrap_or(0) as usize, u16_at(0x38).unwrap_or(0) as usize);
    for k in 0..count {
        let h = phoff.checked_add(k * size).ok_or_else(|| bad("program headers out of range"))?;
        let kind =
            bytes.get(h..h.saturating_add(4)).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if kind != Some(1) {
            continue; // Not PT_LOAD.
        }
        let field =
            |o: usize| u64_at(h.saturating_add(o)).ok_or_else(|| bad("program header cut short"));
        let (offset, paddr, filesz) = (field(8)?, field(24)?, field(32)?);
        let data = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(offset.saturating_add(filesz)).ok())
            .and_then(|(a, b)| bytes.get(a..b))
            .ok_or_else(|| bad("segment cut short"))?;
        for (i, word) in data.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..word.len()].copy_from_slice(word);
            let value = u64::from_le_bytes(w);
            if value != 0 {
                let pa = paddr + 8 * i as u64;
                let event = Event::Access {
                    kind: Kind::Store,
                    mode: Mode::Machine,
                    size: 8,
                    va: pa,
                    pa,
                    value,
                };
                file.writer.push(0, SysRecord { gap: 0, event }).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
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
        let mut x86 = false;
        with(|r| {
            x86 = r.regs()?.is_x86();
            Ok(())
        });
        let mut after_root = false;
        for insn in &insns {
            let data = insn.data();
            let watch = if x86 { insn::x86(&data) } else { insn::riscv(&data) };
            if after_root {
                insn.register_execute_callback_flags(
                    |_| with(Recorder::check_root),
                    CallbackFlags::QEMU_PLUGIN_CB_R_REGS,
                );
            }
            after_root = matches!(watch, Watch::WritesSatp | Watch::WritesCr(0 | 3 | 4));
            let next = insn.vaddr().wrapping_add(insn.size() as u64);
            let regs = CallbackFlags::QEMU_PLUGIN_CB_R_REGS;
            match watch {
                // CR8 (the task priority) does not concern paging.
                Watch::None | Watch::WritesCr(_) if !after_root => {}
                Watch::None => {}
                Watch::WritesSatp | Watch::WritesCr(_) => {
                    let written = if let Watch::WritesCr(n) = watch { n } else { 0 };
                    insn.register_execute_callback(move |_| {
                        with(|r| {
                            r.root_pending = Some(written);
                            Ok(())
                        })
                    });
                }
                Watch::ReadsScause => {
                    insn.register_execute_callback_flags(|_| with(Recorder::riscv_trap), regs);
                }
                Watch::ReadsCr2 => {
                    insn.register_execute_callback_flags(|_| with(Recorder::x86_page_fault), regs);
                }
                Watch::Syscall => insn.register_execute_callback(|_| {
                    with(|r| r.emit(Event::Trap { cause: USER_ECALL, tval: 0, from: Mode::User }))
                }),
                Watch::Fence(fence, rs1, rs2) => insn.register_execute_callback_flags(
                    move |_| {
                        with(|r| {
                            let (rs1, rs2) = (r.reg(rs1)?, r.reg(rs2)?);
                            r.emit(Event::Fence { fence, rs1, rs2 })
                        })
                    },
                    regs,
                ),
                Watch::Invlpg(op) => insn.register_execute_callback_flags(
                    move |_| {
                        with(|r| {
                            // Only the operand's base and index registers are read.
                            let mut values = [0u64; 16];
                            for n in op.base.into_iter().chain(op.index.map(|(i, _)| i)) {
                                values[usize::from(n & 15)] = r.reg(u32::from(n))?.unwrap_or(0);
                            }
                            let va = op.address(|n| values[usize::from(n & 15)], next);
                            r.emit(Event::Fence { fence: Fence::Invlpg, rs1: Some(va), rs2: None })
                        })
                    },
                    regs,
                ),
                Watch::Marker(reg) => insn.register_execute_callback_flags(
                    move |_| {
                        with(|r| {
                            let id = r.reg(reg)?.unwrap_or(0);
                            r.emit(Event::Marker { id })
                        })
                    },
                    regs,
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
