/*
 * nomyo._pyglue: the CPython extension module (pyglue.c), and the one
 * drawing of the native boundary.
 *
 *            Python: src/nomyo/_native.py, the only importer of both
 *   +----------------------------------------------------------------------+
 *   | Region(size, flags):  raw = lib.nomyo_alloc(size, flags)             |
 *   |   _pyglue.Region.__new__(cls, ffi.buffer(raw.data, size),            |
 *   |                               ffi.gc(raw, lib.nomyo_free))           |
 *   | status, lock_errno, mapping: read from region._owner (the gc'd raw)  |
 *   | while the Region holds it; it is None once the Region let go         |
 *   +-------------------|-----------------------------------|--------------+
 *                       | cffi: ffi.cdef is the text        | CPython C API
 *                       | between the markers of            | (this header)
 *                       | securemem.h                       |
 *   +-------------------v--------------+  +-----------------v--------------+
 *   | nomyo._securemem (cffi)          |  | nomyo._pyglue (a setuptools    |
 *   |  securemem.c: mmap, guard pages, |  |  Extension, the full C API)    |
 *   |  mlock, madvise, canary, the     |  |  pyglue.c: Region (holds the   |
 *   |  free-region cache, the fork     |  |   Py_buffer and the owner,     |
 *   |  generation: ALL allocator       |  |   re-exports the memory,       |
 *   |  state, and nothing else         |  |   counts its exports),         |
 *   |  test builds only: the debug     |  |   wipe_object, refcount, pack, |
 *   |  capture (NOMYO_TEST_HOOKS)      |  |   base64 glue, scrub_stack     |
 *   |  no Python objects; cffi calls   |  |  jsonenc.c, jsondec.c, b64.c   |
 *   |  it without the GIL              |  |  never allocates secure memory,|
 *   |                                  |  |  never looks inside the owner  |
 *   +-----------------|----------------+  +-----------------|--------------+
 *                     +----------- primitives.c ------------+
 *                      stateless: nomyo_zero, nomyo_random,
 *                      nomyo_scrub_stack; a copy linked into each
 *
 * What crosses between the two modules is a buffer (the memory of one
 * region, exported by a cffi buffer object) and an opaque owner (the
 * region's descriptor under ffi.gc: its last reference calls nomyo_free).
 * Nothing passes an address as an integer.  The lifetime rule follows: a
 * Region holds both until it is closed (or dies) AND no export of its own
 * is left; close() zeroes at once, and the pages are unmapped or cached
 * (nomyo_free zeroes them again) only when the last memoryview,
 * ffi.from_buffer or fill_random in progress lets go.  Code that releases
 * the GIL while it writes a Region's memory holds an export meanwhile
 * (fill_random does), so a close() from another thread cannot hand the
 * pages to the next buffer of that size while they are being written.
 *
 * Everything in nomyo._pyglue runs with the GIL held except the byte loops
 * of fill_random (getrandom) and base64, each over buffers it holds.
 */
#ifndef NOMYO_PYGLUE_H
#define NOMYO_PYGLUE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* the module's init function: the one symbol nomyo._pyglue needs to export */
PyMODINIT_FUNC PyInit__pyglue(void);

#endif
