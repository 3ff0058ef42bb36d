/* lsp-micro [pages] [operations] [percent]: the LSP paper's micro-benchmark on a real kernel.
 * Maps `pages` (default 1024) pages and touches each; then, between markers 1 and 2, makes
 * `operations` (default 100000) sequential operations over them, page i % pages for operation
 * i: `percent` (default 50) of them, chosen by a fixed-seed generator, modify the page's PTE
 * (mprotect toggles it between read-write and read-only: one PTE store and one sfence.vma of
 * that page in Linux), the others load from the page. */
#include <stdlib.h>
#include <sys/mman.h>

#include "mark.h"


int main(int argc, char **argv) {
    unsigned long pages = argc > 1 ? strtoul(argv[1], 0, 0) : 1024;
    unsigned long ops = argc > 2 ? strtoul(argv[2], 0, 0) : 100000;
    unsigned long percent = argc > 3 ? strtoul(argv[3], 0, 0) : 50;
    char *p = mmap(0, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || percent > 100) return 1;
    unsigned char *writable = calloc(pages, 1);
    if (!writable) return 1;
    for (unsigned long i = 0; i < pages; i++) p[i * 4096] = 1, writable[i] = 1;
    unsigned long x = 88172645463325252ul, sum = 0;
    mark(1);
    for (unsigned long i = 0; i < ops; i++) {
        unsigned long page = i % pages;
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        if (x % 100 < percent) {
            writable[page] ^= 1;
            int prot = writable[page] ? PROT_READ | PROT_WRITE : PROT_READ;
            if (mprotect(p + page * 4096, 4096, prot)) return 1;
        } else {
            sum += *(volatile char *)(p + page * 4096);
        }
    }
    mark(2);
    return (int)(sum & 1);
}
