"""Build definitions of nomyo's two compiled modules (build time only, not installed).

- ``nomyo._securemem`` (cffi, ``ffibuilder``): the allocator of csrc/securemem.c.
  Its cdef is read from the headers, between the ``NOMYO_CDEF_*`` markers, so
  it cannot drift from them (cffi checks the struct layout when compiling).
- ``nomyo._pyglue`` (``pyglue_extension()``, an ordinary setuptools Extension):
  what creates or touches Python objects: the buffer type, wipe, the JSON and
  base64 codec.  See the drawing in csrc/pyglue.h.

Both take the same flags.  ``NOMYO_TEST_HOOKS=1`` makes a test build: the
debug capture of securemem.c is compiled in (``make install`` sets it for the
development venv; a plain ``pip install`` never has it).

``NOMYO_SANITIZE=address,undefined`` (or just ``address``) builds for the
sanitizer lane (``make sanitize``): instrumented, ``-O1 -g`` with frame
pointers, ``NOMYO_SANITIZE_BUILD`` defined (mlock through the raw syscall,
which the sanitizer runtimes otherwise turn into a no-op), the test hooks and
the test-only entry points of ``sanitize_selftest.c`` compiled into both
modules.  The lane builds out of tree, never into ``src/nomyo``::

    cd build/sanitize && NOMYO_SANITIZE=address,undefined python ../../csrc/build.py

and keeps the variable set while its tests run: that is how
tests/test_sanitize.py knows it is in the lane.
"""

from __future__ import annotations

import ast
import os
import pathlib
import re
from typing import Any

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent


def _rel(name: str) -> str:
    # setuptools wants source paths relative to the project root
    path = HERE / name
    try:
        return str(path.relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(path)


def header_section(header: str, section: str) -> str:
    """The text of ``header`` between ``/* NOMYO_CDEF_<section>BEGIN */`` and
    its END marker (``section`` is "" or e.g. "TEST_HOOKS_")."""
    text = (HERE / header).read_text()
    match = re.search(
        rf"/\* NOMYO_CDEF_{section}BEGIN \*/\n(.*?)/\* NOMYO_CDEF_{section}END \*/", text, re.S
    )
    if match is None:
        raise ValueError(f"{header}: no NOMYO_CDEF_{section}BEGIN/END markers")
    body = match.group(1)
    if re.search(r"^\s*#\s*(if|ifdef|ifndef|include|else|endif)\b", body, re.M):
        raise ValueError(f"{header}: a cdef section may hold no conditionals or includes")
    return body


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
TEST_HOOKS = bool(SANITIZE) or os.environ.get("NOMYO_TEST_HOOKS", "") not in ("", "0")

compile_args = ["-O2", "-Wall", "-Wextra", "-fno-strict-aliasing"]
link_args: list[str] = []
if TEST_HOOKS:
    compile_args += ["-DNOMYO_TEST_HOOKS=1"]
if SANITIZE:
    flag = "-fsanitize=" + ",".join(SANITIZE)
    # later -O wins over Python's own CFLAGS and the -O2 above
    compile_args += [flag, "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g", "-O1"]
    compile_args += ["-DNOMYO_SANITIZE_BUILD=1"]
    link_args += [flag]

selftest = [_rel("sanitize_selftest.c")] if SANITIZE else []

# ---- nomyo._securemem: cffi, the allocator only
CDEF = header_section("securemem.h", "")
if TEST_HOOKS:
    CDEF += header_section("securemem.h", "TEST_HOOKS_")
PREAMBLE = '#include "securemem.h"\n'
if SANITIZE:
    CDEF += header_section("sanitize_selftest.h", "SELFTEST_")
    PREAMBLE += '#include "sanitize_selftest.h"\n'

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "nomyo._securemem",
    PREAMBLE,
    sources=[_rel("securemem.c"), _rel("primitives.c"), *selftest],
    include_dirs=[_rel(".")],
    extra_compile_args=compile_args,
    extra_link_args=link_args,
    # the limited API would fit (no Python objects here), but an .abi3.so would
    # sit beside, and lose to, an older build's .cpython-3xx-*.so in a tree
    py_limited_api=False,
)

# ---- nomyo._pyglue: a CPython extension module, the full C API
PYGLUE_SOURCES = ["pyglue.c", "jsonenc.c", "jsondec.c", "b64.c", "primitives.c"]


def pyglue_extension() -> Any:
    """The setuptools Extension for ``nomyo._pyglue`` (setup.py builds it)."""
    from setuptools import Extension

    return Extension(
        "nomyo._pyglue",
        sources=[_rel(name) for name in PYGLUE_SOURCES] + selftest,
        depends=[_rel(name) for name in sorted(p.name for p in HERE.glob("*.h"))],
        include_dirs=[_rel(".")],
        define_macros=[("NOMYO_MAX_NESTING", _max_nesting())],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )


def _build_out_of_tree() -> None:
    """Both modules into ./nomyo (the sanitizer lane's build)."""
    from setuptools import Distribution

    ffibuilder.compile(verbose=True)
    dist = Distribution({"ext_modules": [pyglue_extension()], "script_name": "build.py"})
    command: Any = dist.get_command_obj("build_ext")
    command.build_lib = "."
    command.build_temp = "tmp"
    command.force = True
    dist.run_command("build_ext")


if __name__ == "__main__":
    _build_out_of_tree()
