"""Build the two compiled modules (from csrc/, see csrc/build.py) next to the package:
``nomyo._securemem`` (cffi, the allocator) and ``nomyo._pyglue`` (an ordinary
CPython extension: the buffer type, wipe and the codec).

Without a working C compiler the install still succeeds, without the
extensions: ``nomyo.memory`` then uses its pure-Python fallback and says at
import what that loses.  ``NOMYO_REQUIRE_EXTENSION=1`` turns a failed build
into an error instead (``make`` sets it, so our own venvs never fall back
silently).
"""

from __future__ import annotations

import importlib.util
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


def _required() -> bool:
    return os.environ.get("NOMYO_REQUIRE_EXTENSION", "") not in ("", "0")


def _skip(what: str, exc: BaseException) -> None:
    if _required():
        raise exc
    sys.stderr.write(
        f"\nWARNING: nomyo's secure-memory extension was not built ({what}: {exc}).\n"
        "nomyo will use its pure-Python fallback: secrets will not be locked in\n"
        "memory, excluded from core dumps or fenced by guard pages. Install a C\n"
        "compiler and the Python headers, then reinstall nomyo, to get them.\n\n"
    )


class OptionalBuildExt(build_ext):
    """build_ext that lets the package install when the C build fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            _skip("build_ext", exc)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            _skip(ext.name, exc)


def _csrc_build():  # type: ignore[no-untyped-def]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "build.py")
    spec = importlib.util.spec_from_file_location("_nomyo_csrc_build", path)
    if spec is None or spec.loader is None:
        raise ImportError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


setup(
    cmdclass={"build_ext": OptionalBuildExt},
    cffi_modules=["csrc/build.py:ffibuilder"],
    ext_modules=[_csrc_build().pyglue_extension()],
)
