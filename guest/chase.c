/* chase [pages] [loads]: dependent loads following a random cyclic permutation of `pages`
 * (default 4096) pages, one node per page (Sattolo's algorithm, fixed seed), `loads` (default
 * 200000) of them between markers 1 and 2; the model's `pointer-chase` workload in a real
 * process. */
#include <stdlib.h>

#include "mark.h"


int main(int argc, char **argv) {
    unsigned long pages = argc > 1 ? strtoul(argv[1], 0, 0) : 4096;
    unsigned long loads = argc > 2 ? strtoul(argv[2], 0, 0) : 200000;
    unsigned long words = 4096 / sizeof(unsigned long);
    unsigned long *t = malloc(pages * 4096);
    unsigned long *order = malloc(pages * sizeof *order);
    if (!t || !order || pages < 2) return 1;
    for (unsigned long i = 0; i < pages; i++) order[i] = i;
    unsigned long x = 88172645463325252ul;
    for (unsigned long i = pages - 1; i > 0; i--) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        unsigned long j = x % i, tmp = order[i];
        order[i] = order[j], order[j] = tmp;
    }
    for (unsigned long i = 0; i < pages; i++) t[i * words] = order[i] * words;
    free(order);
    unsigned long at = 0;
    mark(1);
    for (unsigned long i = 0; i < loads; i++) at = *(volatile unsigned long *)&t[at];
    mark(2);
    return (int)(at & 1);
}
