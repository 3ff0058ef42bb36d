//! The instructions a full-system recorder watches, recognised from their bytes at
//! translation time (QEMU's plugin gives each instruction's bytes once, when it translates
//! the block): root-register writes, TLB maintenance, the kernel's trap entry, system calls
//! and memvirt's marker hint. Kept here, apart from the plugin, so the decoders are tested
//! with the rest of memvirt.

use super::system::Fence;

/// What a recorder does at one instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watch {
    /// Nothing.
    None,
    /// RISC-V: writes `satp`; read it after the instruction.
    WritesSatp,
    /// RISC-V: reads `scause` (the kernel's trap entry): read `scause`, `stval`, `sstatus`.
    ReadsScause,
    /// RISC-V: a fence with its rs1 and rs2 register numbers (0: x0).
    Fence(Fence, u32, u32),
    /// The marker hint; the marker's number is in this register (RISC-V x-register number,
    /// x86 register number in ModRM order).
    Marker(u32),
    /// x86: `MOV CRn, r` writing control register n; read CR0/CR3/CR4/EFER after it.
    WritesCr(u8),
    /// x86: `INVLPG m`, with the address `m` computes.
    Invlpg(Operand),
    /// x86: `MOV r, CR2`: the kernel's page-fault handler reading the faulting address.
    ReadsCr2,
    /// x86: `SYSCALL`.
    Syscall,
}

/// RISC-V CSR numbers.
const CSR_SATP: u32 = 0x180;
const CSR_SCAUSE: u32 = 0x142;
/// The immediate of the RISC-V marker hint `addi x0, rs1, MARK_IMM`, and the displacement of
/// the x86 one, `nopl MARK_IMM(%rax)` (bytes 0f 1f 80 d6 06 00 00).
pub const MARK_IMM: u32 = 0x6d6;

/// Decodes the RISC-V instruction whose bytes are `bytes` (compressed ones never matter).
pub fn riscv(bytes: &[u8]) -> Watch {
    let Ok(w) = <[u8; 4]>::try_from(bytes).map(u32::from_le_bytes) else { return Watch::None };
    let (opcode, rd, funct3) = (w & 0x7f, w >> 7 & 31, w >> 12 & 7);
    let (rs1, rs2, funct7, csr) = (w >> 15 & 31, w >> 20 & 31, w >> 25, w >> 20);
    match opcode {
        0x73 if funct3 == 0 && rd == 0 => match funct7 {
            0x09 => Watch::Fence(Fence::SfenceVma, rs1, rs2),
            0x11 => Watch::Fence(Fence::HfenceVvma, rs1, rs2),
            0x31 => Watch::Fence(Fence::HfenceGvma, rs1, rs2),
            _ => Watch::None,
        },
        // CSRRW/CSRRWI always write; CSRRS/CSRRC(I) write unless rs1/uimm is 0.
        0x73 if funct3 != 0 && funct3 != 4 => {
            let writes = matches!(funct3, 1 | 5) || rs1 != 0;
            match csr {
                CSR_SATP if writes => Watch::WritesSatp,
                CSR_SCAUSE if rd != 0 => Watch::ReadsScause,
                _ => Watch::None,
            }
        }
        0x13 if funct3 == 0 && rd == 0 && csr == MARK_IMM => Watch::Marker(rs1),
        _ => Watch::None,
    }
}

/// An x86 memory operand: `base + index * scale + disp` (registers in ModRM order, 0 = rax
/// ... 15 = r15), or `rip + disp` where `rip` is the next instruction's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operand {
    /// The base register, if any.
    pub base: Option<u8>,
    /// The index register and its scale, if any.
    pub index: Option<(u8, u8)>,
    /// The displacement (sign-extended).
    pub disp: i64,
    /// RIP-relative: the address is `next instruction + disp`.
    pub rip_relative: bool,
}

impl Operand {
    /// The linear address, with `reg(n)` reading register n and `next` the address after the
    /// instruction (segment bases are not added: 64-bit kernels use none here).
    pub fn address(&self, reg: impl Fn(u8) -> u64, next: u64) -> u64 {
        let mut a = if self.rip_relative { next } else { 0 };
        if let Some(b) = self.base {
            a = a.wrapping_add(reg(b));
        }
        if let Some((i, scale)) = self.index {
            a = a.wrapping_add(reg(i).wrapping_mul(u64::from(scale)));
        }
        a.wrapping_add_signed(self.disp)
    }
}

/// Decodes the x86-64 instruction whose bytes are `bytes` (64-bit mode; in 32-bit code the
/// bytes 0x40-0x4f are whole instructions, so they never precede an opcode here).
pub fn x86(bytes: &[u8]) -> Watch {
    let mut i = 0;
    while bytes.get(i).is_some_and(|b| {
        matches!(b, 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3)
    }) {
        i += 1;
    }
    let rex = match bytes.get(i) {
        Some(&b @ 0x40..=0x4f) => {
            i += 1;
            b
        }
        _ => 0,
    };
    if bytes.get(i) != Some(&0x0f) {
        return Watch::None;
    }
    let (Some(&op), modrm) = (bytes.get(i + 1), bytes.get(i + 2).copied()) else {
        return Watch::None;
    };
    let rex_r = (rex >> 2 & 1) << 3;
    match (op, modrm) {
        (0x05, _) => Watch::Syscall,
        // MOV CRn, r (0f 22 /r): the ModRM reg field (with REX.R) names the control register.
        (0x22, Some(m)) => Watch::WritesCr((m >> 3 & 7) | rex_r),
        // MOV r, CRn (0f 20 /r) reading CR2.
        (0x20, Some(m)) if (m >> 3 & 7) | rex_r == 2 => Watch::ReadsCr2,
        // INVLPG m (0f 01 /7 with a memory operand; mod 3 is SWAPGS/RDTSCP).
        (0x01, Some(m)) if m >> 3 & 7 == 7 && m >> 6 != 3 => {
            memory_operand(&bytes[i + 2..], rex).map_or(Watch::None, Watch::Invlpg)
        }
        // The marker: nopl MARK_IMM(%rax) (0f 1f 80 d6 06 00 00), the number in rax.
        (0x1f, Some(0x80)) if bytes.get(i + 3..i + 7) == Some(&MARK_IMM.to_le_bytes()[..]) => {
            Watch::Marker(0)
        }
        _ => Watch::None,
    }
}

/// The memory operand of the ModRM byte at `m[0]` (and what follows it), `rex` the REX prefix.
fn memory_operand(m: &[u8], rex: u8) -> Option<Operand> {
    let modrm = *m.first()?;
    let (md, rm) = (modrm >> 6, modrm & 7);
    let (rex_x, rex_b) = ((rex >> 1 & 1) << 3, (rex & 1) << 3);
    let mut at = 1;
    let mut op = Operand { base: Some(rm | rex_b), index: None, disp: 0, rip_relative: false };
    if rm == 4 {
        let sib = *m.get(at)?;
        at += 1;
        let (scale, index, base) = (1u8 << (sib >> 6), (sib >> 3 & 7) | rex_x, sib & 7);
        op.index = (index != 4).then_some((index, scale));
        op.base = Some(base | rex_b);
        if base == 5 && md == 0 {
            op.base = None;
            op.disp = i64::from(i32::from_le_bytes(m.get(at..at + 4)?.try_into().ok()?));
            return Some(op);
        }
    } else if rm == 5 && md == 0 {
        op.base = None;
        op.rip_relative = true;
        op.disp = i64::from(i32::from_le_bytes(m.get(at..at + 4)?.try_into().ok()?));
        return Some(op);
    }
    op.disp = match md {
        1 => i64::from(i8::from_le_bytes([*m.get(at)?])),
        2 => i64::from(i32::from_le_bytes(m.get(at..at + 4)?.try_into().ok()?)),
        _ => 0,
    };
    Some(op)
}

/// The x86 page-fault error code's bits, as the recorder reads them.
pub mod pf {
    /// The access was a write.
    pub const WRITE: u64 = 1 << 1;
    /// It came from user mode.
    pub const USER: u64 = 1 << 2;
    /// A reserved bit was set: never so in a fault Linux handles, so a code with it is not
    /// an error code (the early boot handler passes the vector instead).
    pub const RESERVED: u64 = 1 << 3;
    /// An instruction fetch.
    pub const FETCH: u64 = 1 << 4;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn riscv_instructions_are_recognised() {
        // csrw satp, a0 (csrrw x0, satp, a0).
        assert_eq!(riscv(&0x1805_1073u32.to_le_bytes()), Watch::WritesSatp);
        // csrr a0, scause (csrrs a0, scause, x0).
        assert_eq!(riscv(&0x1420_2573u32.to_le_bytes()), Watch::ReadsScause);
        // sfence.vma a0, a1.
        assert_eq!(riscv(&0x12b5_0073u32.to_le_bytes()), Watch::Fence(Fence::SfenceVma, 10, 11));
        // addi x0, a0, 0x6d6.
        assert_eq!(riscv(&0x6d65_0013u32.to_le_bytes()), Watch::Marker(10));
        // csrr a0, satp writes nothing.
        assert_eq!(riscv(&0x1800_2573u32.to_le_bytes()), Watch::None);
        assert_eq!(riscv(&[0x01, 0x00]), Watch::None);
    }

    #[test]
    fn x86_control_register_writes_name_the_register() {
        assert_eq!(x86(&[0x0f, 0x22, 0xd8]), Watch::WritesCr(3)); // mov %rax,%cr3
        assert_eq!(x86(&[0x0f, 0x22, 0xdf]), Watch::WritesCr(3)); // mov %rdi,%cr3
        assert_eq!(x86(&[0x0f, 0x22, 0xe0]), Watch::WritesCr(4)); // mov %rax,%cr4
        assert_eq!(x86(&[0x0f, 0x22, 0xc0]), Watch::WritesCr(0)); // mov %rax,%cr0
        assert_eq!(x86(&[0x44, 0x0f, 0x22, 0xc0]), Watch::WritesCr(8)); // mov %rax,%cr8
        assert_eq!(x86(&[0x0f, 0x20, 0xd0]), Watch::ReadsCr2); // mov %cr2,%rax
        assert_eq!(x86(&[0x0f, 0x20, 0xd8]), Watch::None); // mov %cr3,%rax
        assert_eq!(x86(&[0x0f, 0x05]), Watch::Syscall);
        assert_eq!(x86(&[0x0f, 0x1f, 0x80, 0xd6, 0x06, 0x00, 0x00]), Watch::Marker(0));
        assert_eq!(x86(&[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00]), Watch::None);
        assert_eq!(x86(&[0x90]), Watch::None);
        assert_eq!(x86(&[0x0f]), Watch::None);
    }

    #[test]
    fn invlpg_operands_compute_their_address() {
        let regs = |n: u8| u64::from(n) * 0x1000;
        let addr = |bytes: &[u8]| match x86(bytes) {
            Watch::Invlpg(op) => op.address(regs, 0x10_0000),
            other => panic!("{bytes:x?}: {other:?}"),
        };
        assert_eq!(addr(&[0x0f, 0x01, 0x3f]), 0x7000); // invlpg (%rdi)
        assert_eq!(addr(&[0x41, 0x0f, 0x01, 0x38]), 0x8000); // invlpg (%r8)
        assert_eq!(addr(&[0x0f, 0x01, 0x7f, 0x10]), 0x7010); // invlpg 0x10(%rdi)
        assert_eq!(addr(&[0x0f, 0x01, 0x7f, 0xf0]), 0x6ff0); // invlpg -0x10(%rdi)
                                                             // invlpg (%rax,%rcx,8): SIB 0xc8 = scale 8, index rcx, base rax.
        assert_eq!(addr(&[0x0f, 0x01, 0x3c, 0xc8]), 0x8000);
        // invlpg 0x100(%rip).
        assert_eq!(addr(&[0x0f, 0x01, 0x3d, 0x00, 0x01, 0x00, 0x00]), 0x10_0100);
        // invlpg (%rsp): SIB with no index.
        assert_eq!(addr(&[0x0f, 0x01, 0x3c, 0x24]), 0x4000);
        // swapgs (0f 01 f8) and a cut-short operand are not invlpg.
        assert_eq!(x86(&[0x0f, 0x01, 0xf8]), Watch::None);
        assert_eq!(x86(&[0x0f, 0x01, 0x3d, 0x00]), Watch::None);
    }
}
