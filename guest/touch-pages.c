/* touch-pages N: maps N fresh anonymous 4 KiB pages at 128 GiB (a 1 GiB-aligned range nothing
 * else uses, in every RISC-V paging mode's user half) and stores one byte to each, between
 * markers 1 and 2. Under Linux each store takes exactly one page fault, and the tables below
 * the root gain exactly one middle and one leaf table (N <= 512): tests/full_system.rs checks
 * the faults and the page-table stores this implies. */
#include <stdlib.h>
#include <sys/mman.h>

#include "mark.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif


int main(int argc, char **argv) {
    unsigned long n = argc > 1 ? strtoul(argv[1], 0, 0) : 64;
    void *at = (void *)(128ul << 30);
    volatile char *p = mmap(at, n * 4096, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p != at) return 1;
    mark(1);
    for (unsigned long i = 0; i < n; i++) p[i * 4096] = 1;
    mark(2);
    return 0;
}
