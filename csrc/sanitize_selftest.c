/*
 * Test-only entry points for the sanitizer lane (make sanitize): they let
 * tests/test_sanitize.py show that each module of the build is instrumented
 * and that a report ends the process.  csrc/build.py compiles this file
 * only with NOMYO_SANITIZE set; the normal extensions never contain it.
 */
#ifndef NOMYO_SANITIZE_BUILD
#error "sanitize_selftest.c belongs to the NOMYO_SANITIZE build only"
#endif

#include "sanitize_selftest.h"

#include <stdlib.h>
#include <string.h>

/* reads p[index] of a fresh heap block of `size` bytes: index == size is a
 * heap-buffer-overflow that AddressSanitizer must report */
int nomyo_selftest_heap_read(size_t size, size_t index)
{
    unsigned char *p = malloc(size);
    volatile unsigned char *v = p;
    int value;
    if (p == NULL)
        return -1;
    memset(p, 7, size);
    value = v[index];
    free(p);
    return value;
}

/* value << by in int: by >= 32 is undefined, which UBSan must report
 * (Python's CFLAGS carry -fwrapv, so signed overflow is defined here) */
int nomyo_selftest_shift(int value, int by)
{
    return value << by;
}
