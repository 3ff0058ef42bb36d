/* mark(N): places marker N in a full-system recording. memvirt's QEMU plugin recognises the
 * hint `addi x0, rs1, 0x6d6` (RISC-V, N in rs1) and `nopl 0x6d6(%rax)` (x86-64, N in rax);
 * elsewhere both do nothing. */
#ifndef MEMVIRT_MARK_H
#define MEMVIRT_MARK_H

static inline void mark(unsigned long id) {
#if defined(__riscv)
    __asm__ volatile("addi x0, %0, 0x6d6" : : "r"(id));
#elif defined(__x86_64__)
    __asm__ volatile("nopl 0x6d6(%%rax)" : : "a"(id));
#else
#error "memvirt's guest programs run on riscv64 and x86-64"
#endif
}

#endif
