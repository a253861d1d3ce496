/*
 * nomyo secure memory: guarded, locked, dump-excluded, fork-wiped buffers.
 *
 * One allocation, one private mapping (P = page size, n = requested size,
 * D = data pages = round_up(n + NOMYO_CANARY_BYTES, P)):
 *
 *   base                                                        base + total
 *   |<--- P --->|<------------------ D ------------------->|<--- P --->|
 *   +-----------+--------------------+--------+-----------+-----------+
 *   |   guard   | zero slack         | canary | user data |   guard   |
 *   | PROT_NONE |                    |  16 B  |  n bytes  | PROT_NONE |
 *   +-----------+--------------------+--------+-----------+-----------+
 *                                             ^ data      ^ data + n
 *
 * - the user data ends flush against the trailing guard page: reading or
 *   writing one byte past the end faults (SIGSEGV) at once;
 * - the canary (random, one per process) sits right in front of the data;
 *   nomyo_free() checks it and aborts with a message when it was overwritten
 *   (an underflow, or a stray write): corruption is never a Python exception;
 * - the data pages are mlock()ed, MADV_DONTDUMP (left out of core dumps) and
 *   MADV_WIPEONFORK (a child process sees zeros); what worked is recorded in
 *   nomyo_region.status (NOMYO_S_*), what mlock refused in lock_errno;
 * - new user data is filled with NOMYO_GARBAGE_BYTE so reading memory that
 *   was never written shows up; on free the data pages are zeroed with a
 *   store the compiler cannot drop, then munlock()ed and unmapped;
 * - with NOMYO_F_SECRET the data pages come from memfd_secret(2) (Linux >=
 *   5.14 with secretmem enabled): removed from the kernel's direct map, so
 *   not even /proc/PID/mem can read them; they are MADV_DONTFORK (the kernel
 *   refuses WIPEONFORK there), so a forked child has no mapping at all.
 *
 * Costs: a fresh allocation is mmap + 2 mprotect + mlock + 2 madvise (tens
 * of microseconds, plus 2 pages of address space beyond the data).  Freed
 * ordinary regions (zeroed, still locked) are kept in a small per-process
 * cache of NOMYO_CACHE_SLOTS mappings and reused for the same page count,
 * which makes the common alloc/free pair a few hundred nanoseconds; the
 * cache is dropped whenever mlock runs short and in a forked child.
 *
 * Functions return 0 / -1 with errno, or a pointer / NULL with errno.
 *
 * This file is also the cffi declaration of the nomyo._securemem module:
 * csrc/build.py hands what lies between the NOMYO_CDEF markers to
 * ffi.cdef() as it is (so nothing there may need the preprocessor beyond
 * integer #defines), and the test-hook section only to test builds.
 * Zeroing, random fill and stack scrubbing are in primitives.h.
 */
#ifndef NOMYO_SECUREMEM_H
#define NOMYO_SECUREMEM_H

#include <stddef.h>
#include <stdint.h>

/* NOMYO_CDEF_BEGIN */
#define NOMYO_CANARY_BYTES 16
#define NOMYO_GARBAGE_BYTE 0xdb
#define NOMYO_CACHE_SLOTS 32
#define NOMYO_CACHE_MAX_PAGES 520 /* room for a 2 MiB-ish total, or one 1 MiB buffer */

/* nomyo_alloc() flags */
#define NOMYO_F_SECRET 1   /* data pages from memfd_secret */
#define NOMYO_F_NOCACHE 2  /* never take this region from / give it to the cache */

/* nomyo_region.status bits: what the kernel accepted for the data pages */
#define NOMYO_S_LOCKED 1
#define NOMYO_S_DONTDUMP 2
#define NOMYO_S_WIPEONFORK 4
#define NOMYO_S_DONTFORK 8
#define NOMYO_S_SECRET 16
#define NOMYO_S_GUARDED 32

typedef struct nomyo_region {
    unsigned char *base;   /* start of the mapping (leading guard page) */
    size_t total;          /* whole mapping, guards included */
    unsigned char *data;   /* user data */
    size_t size;           /* user data length */
    int flags;             /* NOMYO_F_* asked for */
    int status;            /* NOMYO_S_* obtained */
    int lock_errno;        /* errno of a refused mlock, else 0 */
    unsigned generation;   /* fork generation at allocation */
} nomyo_region;

/* capability flags: what this build was compiled with (0/1) */
extern const int NOMYO_HAVE_GETRANDOM;
extern const int NOMYO_HAVE_EXPLICIT_BZERO;
extern const int NOMYO_HAVE_MADV_DONTDUMP;
extern const int NOMYO_HAVE_MADV_WIPEONFORK;
extern const int NOMYO_HAVE_MEMFD_SECRET;

int nomyo_init(void);
size_t nomyo_page_size(void);
nomyo_region *nomyo_alloc(size_t size, int flags);
void nomyo_free(nomyo_region *r);
int nomyo_memfd_secret_usable(void);
int nomyo_forked(const nomyo_region *r);
size_t nomyo_cache_trim(void);
size_t nomyo_cache_pages(void);
/* NOMYO_CDEF_END */

#ifdef NOMYO_TEST_HOOKS
/* NOMYO_CDEF_TEST_HOOKS_BEGIN */
/* test hook: on every free, append the data pages (after zeroing, or before
 * when before_zero is set) to dst, up to cap bytes in all; NULL turns it off */
void nomyo_debug_capture(unsigned char *dst, size_t cap, int before_zero);
size_t nomyo_debug_captured(void);
/* NOMYO_CDEF_TEST_HOOKS_END */
#endif

#endif
