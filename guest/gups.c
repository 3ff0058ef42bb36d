/* gups [MiB] [updates]: GUPS-like random read-modify-writes over an array (default 16 MiB,
 * 200000 updates), with a fixed-seed xorshift generator, between markers 1 and 2. */
#include <stdlib.h>

#include "mark.h"


int main(int argc, char **argv) {
    unsigned long mib = argc > 1 ? strtoul(argv[1], 0, 0) : 16;
    unsigned long updates = argc > 2 ? strtoul(argv[2], 0, 0) : 200000;
    unsigned long n = mib * 1024 * 1024 / sizeof(unsigned long);
    unsigned long *t = malloc(n * sizeof *t);
    if (!t) return 1;
    for (unsigned long i = 0; i < n; i++) t[i] = i;
    mark(1);
    unsigned long x = 88172645463325252ul;
    for (unsigned long i = 0; i < updates; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        t[x % n] ^= x;
    }
    mark(2);
    return (int)(t[x % n] & 1);
}
