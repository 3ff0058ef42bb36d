/* memvirt-mark N: places marker N in a full-system recording (mark.h: a hint instruction that
 * memvirt's QEMU plugin records with N; elsewhere it does nothing). */
#include <stdlib.h>

#include "mark.h"

int main(int argc, char **argv) {
    unsigned long id = argc > 1 ? strtoul(argv[1], 0, 0) : 0;
    mark(id);
    return 0;
}
