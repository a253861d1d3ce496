/*
 * Test-only entry points of the sanitizer lane (make sanitize), in
 * sanitize_selftest.c: compiled into both modules of the NOMYO_SANITIZE
 * build only, so tests/test_sanitize.py can show that each module is
 * instrumented and that a report ends the process.  The cffi module declares
 * what lies between the markers; nomyo._pyglue wraps the same two functions.
 */
#ifndef NOMYO_SANITIZE_SELFTEST_H
#define NOMYO_SANITIZE_SELFTEST_H

#include <stddef.h>

#ifdef NOMYO_SANITIZE_BUILD
/* NOMYO_CDEF_SELFTEST_BEGIN */
int nomyo_selftest_heap_read(size_t size, size_t index);
int nomyo_selftest_shift(int value, int by);
/* NOMYO_CDEF_SELFTEST_END */
#endif

#endif
