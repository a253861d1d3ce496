"""The cffi builder for ``nomyo._securemem`` (build time only, not installed).

The declarations below are the whole C surface the package sees; the one
module that imports the compiled result is ``nomyo._native``.
"""

from __future__ import annotations

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

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "nomyo._securemem",
    '#include "securemem.h"\nint nomyo_py_register(void *namespace);\n'
    "size_t nomyo_b64_encoded_len(size_t n);\n"
    "void nomyo_b64_encode(const unsigned char *in, size_t n, char *out);\n"
    "size_t nomyo_b64_decoded_max(size_t n);\n"
    "long long nomyo_b64_decode(const char *in, size_t n, unsigned char *out);\n",
    sources=[_rel("securemem.c"), _rel("pyglue.c"), _rel("b64.c"), _rel("jsonenc.c")],
    include_dirs=[_rel(".")],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-fno-strict-aliasing"],
    # pyglue.c defines a type with the buffer protocol and reads str internals:
    # that needs the full C API, not the limited one cffi picks by default
    py_limited_api=False,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
