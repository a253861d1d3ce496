"""The cffi builder for ``nomyo._securemem`` (build time only, not installed).

The declarations below are the whole C surface the package sees; the one
module that imports the compiled result is ``nomyo._native``.

``NOMYO_SANITIZE=address,undefined`` (or just ``address``) builds for the
sanitizer lane (``make sanitize``): instrumented, ``-O1 -g`` with frame
pointers, ``NOMYO_SANITIZE_BUILD`` defined (mlock through the raw syscall,
which the sanitizer runtimes otherwise turn into a no-op) and the test-only
entry points of ``sanitize_selftest.c`` compiled in.  The normal build never
has either.  The lane builds out of tree, never into ``src/nomyo``::

    cd build/sanitize && NOMYO_SANITIZE=address,undefined python ../../csrc/build.py

and keeps the variable set while its tests run: that is how
tests/test_sanitize.py knows it is in the lane.
"""

from __future__ import annotations

import ast
import os
import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent


def _rel(name: str) -> str:
    # setuptools wants source paths relative to the project root
    path = HERE / name
    try:
        return str(path.relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(path)


CDEF = """
#define NOMYO_CANARY_BYTES ...
#define NOMYO_GARBAGE_BYTE ...
#define NOMYO_CACHE_SLOTS ...
#define NOMYO_F_SECRET ...
#define NOMYO_F_NOCACHE ...
#define NOMYO_S_LOCKED ...
#define NOMYO_S_DONTDUMP ...
#define NOMYO_S_WIPEONFORK ...
#define NOMYO_S_DONTFORK ...
#define NOMYO_S_SECRET ...
#define NOMYO_S_GUARDED ...

extern const int NOMYO_HAVE_GETRANDOM;
extern const int NOMYO_HAVE_EXPLICIT_BZERO;
extern const int NOMYO_HAVE_MADV_DONTDUMP;
extern const int NOMYO_HAVE_MADV_WIPEONFORK;
extern const int NOMYO_HAVE_MEMFD_SECRET;

int nomyo_init(void);
size_t nomyo_page_size(void);
void nomyo_zero(void *p, size_t n);
void nomyo_scrub_stack(void);
int nomyo_random(void *p, size_t n);
int nomyo_memfd_secret_usable(void);
size_t nomyo_cache_trim(void);
size_t nomyo_cache_pages(void);
void nomyo_debug_capture(unsigned char *dst, size_t cap, int before_zero);
size_t nomyo_debug_captured(void);
int nomyo_py_register(void *namespace);

size_t nomyo_b64_encoded_len(size_t n);
void nomyo_b64_encode(const unsigned char *in, size_t n, char *out);
size_t nomyo_b64_decoded_max(size_t n);
long long nomyo_b64_decode(const char *in, size_t n, unsigned char *out);
"""

PREAMBLE = """#include "securemem.h"
int nomyo_py_register(void *namespace);
size_t nomyo_b64_encoded_len(size_t n);
void nomyo_b64_encode(const unsigned char *in, size_t n, char *out);
size_t nomyo_b64_decoded_max(size_t n);
long long nomyo_b64_decode(const char *in, size_t n, unsigned char *out);
"""

# sanitize_selftest.c: only in NOMYO_SANITIZE builds
SELFTEST_CDEF = """
int nomyo_selftest_heap_read(size_t size, size_t index);
int nomyo_selftest_shift(int value, int by);
"""


def _sanitizers() -> list[str]:
    names = [n.strip() for n in os.environ.get("NOMYO_SANITIZE", "").split(",") if n.strip()]
    unknown = set(names) - {"address", "undefined"}
    if unknown:
        raise ValueError(f"NOMYO_SANITIZE: unknown sanitizer(s) {sorted(unknown)}")
    return names


def _max_nesting() -> str:
    # MAX_NESTING is defined once, in the package's _constants.py (see csrc/nesting.h)
    constants = HERE.parent / "src" / "nomyo" / "_constants.py"
    for node in ast.parse(constants.read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [
            "MAX_NESTING"
        ]:
            return str(int(ast.literal_eval(node.value)))
    raise RuntimeError(f"MAX_NESTING not found in {constants}")


SANITIZE = _sanitizers()
sources = [_rel(name) for name in ("securemem.c", "pyglue.c", "b64.c", "jsonenc.c", "jsondec.c")]
compile_args = ["-O2", "-Wall", "-Wextra", "-fno-strict-aliasing"]
link_args: list[str] = []
if SANITIZE:
    flag = "-fsanitize=" + ",".join(SANITIZE)
    # later -O wins over Python's own CFLAGS and the -O2 above
    compile_args += [flag, "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g", "-O1"]
    compile_args += ["-DNOMYO_SANITIZE_BUILD=1"]
    link_args += [flag]
    sources.append(_rel("sanitize_selftest.c"))
    CDEF += SELFTEST_CDEF
    PREAMBLE += SELFTEST_CDEF

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "nomyo._securemem",
    PREAMBLE,
    sources=sources,
    include_dirs=[_rel(".")],
    define_macros=[("NOMYO_MAX_NESTING", _max_nesting())],
    extra_compile_args=compile_args,
    extra_link_args=link_args,
    # pyglue.c defines a type with the buffer protocol and reads str internals:
    # that needs the full C API, not the limited one cffi picks by default
    py_limited_api=False,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
