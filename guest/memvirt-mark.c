/* memvirt-mark N: places marker N in a full-system recording (memvirt's QEMU plugin records
 * the hint `addi x0, rs1, 0x6d6` with rs1's value). Elsewhere the hint does nothing. */
#include <stdlib.h>

int main(int argc, char **argv) {
    unsigned long id = argc > 1 ? strtoul(argv[1], 0, 0) : 0;
    __asm__ volatile("addi x0, %0, 0x6d6" : : "r"(id));
    return 0;
}
