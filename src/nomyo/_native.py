"""The only importer of the compiled extension ``nomyo._securemem``.

Owns the bridge to C: reads the capability flags once, registers the buffer
type and the in-place wipe, and offers the few test and maintenance hooks.
Raises ImportError when the extension is missing or unusable, which
``nomyo.memory`` turns into the pure-Python fallback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

if sys.implementation.name != "cpython":  # pragma: no cover - CPython is what we build for
    raise ImportError("the native secure-memory backend needs CPython")

from ._securemem import ffi, lib


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

_namespace: dict[str, Any] = {}
if lib.nomyo_py_register(ffi.cast("void *", id(_namespace))) != 0:
    raise ImportError("nomyo secure memory could not register its buffer type")

#: the buffer-exporting type that owns one guarded region (see csrc/pyglue.c)
Region: Any = _namespace["Region"]
#: wipe_object(obj, max_refs) -> number of objects zeroed in place
wipe_object: Callable[[object, int], int] = _namespace["wipe_object"]
#: b64decode_str(text, reserve) -> bytearray (csrc/pyglue.c), strict base64 from a str
b64decode_str: Callable[[str, int], bytearray] = _namespace["b64decode_str"]
#: pack(pieces) -> bytes: bytes pieces copied, (buffer,) pieces base64-encoded, one allocation
pack: Callable[[list[Any]], bytes] = _namespace["pack"]
#: json_size(obj) / json_into(obj, buffer): compact UTF-8 JSON written straight into a
#: buffer of exactly json_size(obj) bytes, as json.dumps(separators=(",", ":"),
#: ensure_ascii=False, allow_nan=False) would give it (csrc/jsonenc.c)
json_size: Callable[[object], int] = _namespace["json_size"]
json_into: Callable[[object, Any], int] = _namespace["json_into"]
#: json_parse(buffer, unique_keys=False) -> what json.loads gives for that UTF-8, each
#: object made once at its final size, without a str of the whole text; with
#: unique_keys a key repeated in one object is a ValueError (csrc/jsondec.c)
json_parse: Callable[..., Any] = _namespace["json_parse"]
#: refcount(obj, max_refs) -> the reference count as wipe_object sees it
refcount: Callable[[object, int], int] = _namespace["refcount"]

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


def memfd_secret_usable() -> bool:
    """Whether this kernel hands out memfd_secret file descriptors."""
    return bool(lib.nomyo_memfd_secret_usable())


def scrub_stack() -> None:
    """Zero 32 KiB of this thread's stack below the caller: what the frames of
    an OpenSSL call that just returned may have left there."""
    lib.nomyo_scrub_stack()


def cache_trim() -> int:
    """Unlock and unmap every cached free region; returns the pages released."""
    return int(lib.nomyo_cache_trim())


def cache_pages() -> int:
    """Data pages held (zeroed, locked) in the free-region cache."""
    return int(lib.nomyo_cache_pages())


def b64encode(data: bytes | bytearray | memoryview) -> bytearray:
    """Standard padded base64 of ``data`` (C; the GIL is released meanwhile)."""
    source = ffi.from_buffer(data)
    out = bytearray(lib.nomyo_b64_encoded_len(len(source)))
    lib.nomyo_b64_encode(source, len(source), ffi.from_buffer(out))
    return out


def b64decode(text: bytes | bytearray | memoryview) -> bytearray:
    """Strict, canonical standard base64 (see csrc/b64.c).

    :raises ValueError: anything else.
    """
    source = ffi.from_buffer(text)
    out = bytearray(lib.nomyo_b64_decoded_max(len(source)))
    written = lib.nomyo_b64_decode(source, len(source), ffi.from_buffer(out))
    if written < 0:
        raise ValueError("not strict standard base64")
    del out[written:]
    return out


@contextmanager
def debug_capture(capacity: int, *, before_zero: bool = False) -> Iterator[Callable[[], bytes]]:
    """Test hook: while active, every free appends its data pages to a scratch
    area (after zeroing them, or before with ``before_zero``), up to ``capacity``
    bytes.  Yields a function returning what was captured.  Tests only."""
    scratch = ffi.new("unsigned char[]", capacity)
    lib.nomyo_debug_capture(scratch, capacity, 1 if before_zero else 0)

    def captured() -> bytes:
        return bytes(ffi.buffer(scratch, lib.nomyo_debug_captured()))

    try:
        yield captured
    finally:
        lib.nomyo_debug_capture(ffi.NULL, 0, 0)
        ffi.memmove(scratch, b"\0" * capacity, capacity)
