/*
 * Stateless byte-level primitives shared by both compiled modules (see the
 * drawing in pyglue.h): zeroing that the compiler cannot drop, the kernel's
 * CSPRNG, and scrubbing of vector registers and stack.  No globals, no
 * allocation, no Python: each module links its own copy of primitives.c,
 * and nothing here keeps state that two copies could disagree on.
 */
#ifndef NOMYO_PRIMITIVES_H
#define NOMYO_PRIMITIVES_H

#include <stddef.h>
#include <string.h> /* defines __GLIBC__ */

#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 25))
#define NOMYO_HAVE_GETRANDOM_FN 1
#define NOMYO_HAVE_EXPLICIT_BZERO_FN 1
#endif

/* how much stack nomyo_scrub_stack() zeroes */
#define NOMYO_SCRUB_BYTES (32 * 1024)

/* zero n bytes at p with a store the compiler cannot drop */
void nomyo_zero(void *p, size_t n);
/* fill n bytes at p from getrandom(2); 0, or -1 with errno.  Callers that
 * run it without the GIL must keep the memory alive meanwhile. */
int nomyo_random(void *p, size_t n);
/* zero the vector registers (what memcpy and friends leave there) */
void nomyo_clear_vector_registers(void);
/* the vector registers, then NOMYO_SCRUB_BYTES of stack below the caller */
void nomyo_scrub_stack(void);

#endif
