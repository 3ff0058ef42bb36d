/* touch-pages N: maps N fresh anonymous 4 KiB pages and stores one byte to each, between markers 1
 * and 2. Under Linux each store takes exactly one page fault (tests/full_system.rs checks it). */
#include <stdlib.h>
#include <sys/mman.h>

static void mark(unsigned long id) { __asm__ volatile("addi x0, %0, 0x6d6" : : "r"(id)); }

int main(int argc, char **argv) {
    unsigned long n = argc > 1 ? strtoul(argv[1], 0, 0) : 64;
    volatile char *p = mmap(0, n * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    mark(1);
    for (unsigned long i = 0; i < n; i++) p[i * 4096] = 1;
    mark(2);
    return 0;
}
