"""The only importer of nomyo's compiled modules (see the drawing in csrc/pyglue.h).

- ``nomyo._securemem`` (cffi): the allocator, all of its state;
- ``nomyo._pyglue`` (a CPython extension): the buffer type, wipe, the codec.

This module joins them: a region allocated through cffi is handed to
``_pyglue.Region`` as a buffer whose release frees it, so no address crosses
as an integer.  Raises ImportError when an extension is missing or unusable,
and when ``NOMYO_MEMORY_BACKEND=python`` asks for no compiled code at all;
``nomyo.memory``, ``nomyo._hybrid`` and ``nomyo._envelope`` then use their
pure-Python code.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ._constants import MEMORY_BACKEND_ENV

if sys.implementation.name != "cpython":  # pragma: no cover - CPython is what we build for
    raise ImportError("the native secure-memory backend needs CPython")
if os.environ.get(MEMORY_BACKEND_ENV, "").strip().lower() == "python":
    raise ImportError(f"{MEMORY_BACKEND_ENV}=python: no compiled nomyo code is loaded")

from . import _pyglue
from ._pyglue import (
    b64decode,
    b64decode_str,
    b64encode,
    json_into,
    json_parse,
    json_size,
    pack,
    refcount,
    scrub_stack,
    wipe_object,
)
from ._securemem import ffi, lib

__all__ = [
    "CAPABILITIES",
    "TEST_HOOKS",
    "Region",
    "b64decode",
    "b64decode_str",
    "b64encode",
    "json_into",
    "json_parse",
    "json_size",
    "pack",
    "refcount",
    "scrub_stack",
    "wipe_object",
]


@dataclass(frozen=True)
class Capabilities:
    """What the extension was compiled with (not what the kernel allows)."""

    getrandom: bool
    explicit_bzero: bool
    madv_dontdump: bool
    madv_wipeonfork: bool
    memfd_secret: bool


CAPABILITIES = Capabilities(
    getrandom=bool(lib.NOMYO_HAVE_GETRANDOM),
    explicit_bzero=bool(lib.NOMYO_HAVE_EXPLICIT_BZERO),
    madv_dontdump=bool(lib.NOMYO_HAVE_MADV_DONTDUMP),
    madv_wipeonfork=bool(lib.NOMYO_HAVE_MADV_WIPEONFORK),
    memfd_secret=bool(lib.NOMYO_HAVE_MEMFD_SECRET),
)

if lib.nomyo_init() != 0:
    raise ImportError(f"nomyo secure memory could not initialise (errno {ffi.errno})")

#: whether this is a test build (the debug capture compiled in: NOMYO_TEST_HOOKS)
TEST_HOOKS: bool = hasattr(lib, "nomyo_debug_capture")

PAGE_SIZE: int = lib.nomyo_page_size()
CANARY_BYTES: int = lib.NOMYO_CANARY_BYTES
F_SECRET: int = lib.NOMYO_F_SECRET
F_NOCACHE: int = lib.NOMYO_F_NOCACHE
S_LOCKED: int = lib.NOMYO_S_LOCKED
S_DONTDUMP: int = lib.NOMYO_S_DONTDUMP
S_WIPEONFORK: int = lib.NOMYO_S_WIPEONFORK
S_DONTFORK: int = lib.NOMYO_S_DONTFORK
S_SECRET: int = lib.NOMYO_S_SECRET
S_GUARDED: int = lib.NOMYO_S_GUARDED

_alloc = lib.nomyo_alloc
_free = lib.nomyo_free
_gc = ffi.gc
_buffer = ffi.buffer
_NULL = ffi.NULL
_new = _pyglue.Region.__new__


class Region(_pyglue.Region):
    """One guarded region (csrc/securemem.c) exported as a buffer (csrc/pyglue.c).

    The C type holds two cffi objects: a buffer of the region's data, and the
    region's descriptor under ``ffi.gc``, whose last reference calls
    nomyo_free.  It lets go of both when closed with no view left (or when
    the last view goes), so the descriptor is read here only through
    ``_owner``, which is None from then on.
    """

    __slots__ = ()

    def __new__(cls, size: int, flags: int = 0) -> Region:
        if size < 0:
            raise ValueError("size must be >= 0")
        raw = _alloc(size, flags)
        if raw == _NULL:
            err = ffi.errno
            if err == errno.ENOMEM:
                raise MemoryError
            raise OSError(err, os.strerror(err))
        return _new(cls, _buffer(raw.data, size), _gc(raw, _free))

    @property
    def _status(self) -> int:
        raw = self._owner
        if raw is None:
            return 0
        status = int(raw.status)
        if lib.nomyo_forked(raw):
            status &= ~S_LOCKED  # a child does not inherit mlock
        return status

    @property
    def _lock_errno(self) -> int:
        raw = self._owner
        return 0 if raw is None else int(raw.lock_errno)

    @property
    def _mapping(self) -> tuple[int, int]:
        """(start, end) of the data pages, for finding them in /proc/self/smaps."""
        raw = self._owner
        if self._closed or raw is None:
            raise ValueError("operation on a closed SecureBuffer")
        base = int(ffi.cast("uintptr_t", raw.base))
        return base + PAGE_SIZE, base + int(raw.total) - PAGE_SIZE


def memfd_secret_usable() -> bool:
    """Whether this kernel hands out memfd_secret file descriptors."""
    return bool(lib.nomyo_memfd_secret_usable())


def cache_trim() -> int:
    """Unlock and unmap every cached free region; returns the pages released."""
    return int(lib.nomyo_cache_trim())


def cache_pages() -> int:
    """Data pages held (zeroed, locked) in the free-region cache."""
    return int(lib.nomyo_cache_pages())


@contextmanager
def debug_capture(capacity: int, *, before_zero: bool = False) -> Iterator[Callable[[], bytes]]:
    """Test hook (test builds only, see TEST_HOOKS): while active, every free
    appends its data pages to a scratch area (after zeroing them, or before
    with ``before_zero``), up to ``capacity`` bytes.  Yields a function
    returning what was captured."""
    if not TEST_HOOKS:
        raise RuntimeError("debug_capture needs a test build (NOMYO_TEST_HOOKS=1)")
    scratch = ffi.new("unsigned char[]", capacity)
    lib.nomyo_debug_capture(scratch, capacity, 1 if before_zero else 0)

    def captured() -> bytes:
        return bytes(ffi.buffer(scratch, lib.nomyo_debug_captured()))

    try:
        yield captured
    finally:
        lib.nomyo_debug_capture(ffi.NULL, 0, 0)
        ffi.memmove(scratch, b"\0" * capacity, capacity)
