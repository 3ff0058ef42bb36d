/* stream [pages] [passes]: the STREAM triad a[i] = b[i] + 3 * c[i] over three arrays of
 * `pages` (default 1024) pages each, `passes` (default 4) times between markers 1 and 2;
 * the model's `stream` workload in a real process (which touches every word, not every line). */
#include <stdlib.h>

#include "mark.h"


int main(int argc, char **argv) {
    unsigned long pages = argc > 1 ? strtoul(argv[1], 0, 0) : 1024;
    unsigned long passes = argc > 2 ? strtoul(argv[2], 0, 0) : 4;
    unsigned long n = pages * 4096 / sizeof(double);
    double *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), *c = malloc(n * sizeof *c);
    if (!a || !b || !c) return 1;
    for (unsigned long i = 0; i < n; i++) a[i] = 0, b[i] = 1, c[i] = 2;
    mark(1);
    for (unsigned long k = 0; k < passes; k++)
        for (unsigned long i = 0; i < n; i++) a[i] = b[i] + 3 * c[i];
    mark(2);
    return (int)a[n / 2] & 1;
}
