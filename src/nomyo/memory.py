"""Memory for secrets: owns the bytes of keys and plaintexts; knows no crypto or HTTP.

:class:`SecureBuffer` is a fixed-size, writable buffer (use it through
``memoryview(buf)``) whose pages, with the native backend, are

- fenced by guard pages: one byte past the end faults at once, and a canary
  in front of the data aborts the process on free if it was overwritten;
- locked against swap (``mlock``), left out of core dumps
  (``MADV_DONTDUMP``) and zeroed in a forked child (``MADV_WIPEONFORK``);
- filled with a garbage byte when new and zeroed when closed or collected;
- optionally (``secret_memory=True``) taken from ``memfd_secret``: out of
  the kernel's direct map, unreadable even through ``/proc/PID/mem``.

:func:`protection` reports what is actually in force, read back from
``/proc/self/smaps``; :func:`wipe` zeroes in place the strings and bytes
the library created.  ``NOMYO_MEMORY_BACKEND=python`` forces the
pure-Python fallback, ``=native`` makes a missing extension an error.

What this does not protect: copies the caller makes (``bytes(view)``,
slices, decoded strings), copies inside OpenSSL and on the C stack, objects
``wipe`` must skip because something else still refers to them, and swap
when the kernel refuses to lock (a :class:`SecureMemoryWarning` says so).
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import sys
import warnings
from dataclasses import dataclass
from functools import lru_cache
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from ._constants import GARBAGE_BYTE, MAX_NESTING, MEMORY_BACKEND_ENV, MEMORY_BACKENDS
from ._exceptions import SecureMemoryWarning, SecurityError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["MemoryProtection", "SecureBuffer", "protection", "wipe"]

# ---------------------------------------------------------------- backend choice

_requested = os.environ.get(MEMORY_BACKEND_ENV, "").strip().lower()
if _requested not in ("", "auto", *MEMORY_BACKENDS):
    raise ValueError(
        f"{MEMORY_BACKEND_ENV}={_requested!r} is not one of: native, python (or unset for auto)"
    )

_native: Any = None
_native_missing = ""
if _requested != "python":
    try:
        from . import _native
    except ImportError as exc:
        if _requested == "native":
            raise ImportError(
                f"{MEMORY_BACKEND_ENV}=native, but the secure-memory extension "
                f"nomyo._securemem cannot be used: {exc}"
            ) from exc
        _native_missing = str(exc)

BACKEND: Literal["native", "python"] = "native" if _native is not None else "python"

_warned: set[str] = set()


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def caller_stacklevel() -> int:
    """The warnings stacklevel of the first frame outside the nomyo package."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE_DIR)
        or frame.f_code.co_filename.startswith("<frozen importlib")
    ):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def _warn_once(cause: str, message: str) -> None:
    """One SecureMemoryWarning per process and cause, shown at the caller's line."""
    if cause in _warned:
        return
    _warned.add(cause)
    warnings.warn(message, SecureMemoryWarning, stacklevel=caller_stacklevel())


_FALLBACK_LOSES = (
    "secrets are NOT locked against swap, NOT excluded from core dumps, NOT wiped "
    "in forked children and have no guard pages or canaries"
)

if BACKEND == "python":
    if _requested == "python":
        _why = f"{MEMORY_BACKEND_ENV}=python"
        _fix = f"unset {MEMORY_BACKEND_ENV} to use the native backend"
    else:
        _why = f"the compiled extension nomyo._securemem is not available ({_native_missing})"
        _fix = "reinstall nomyo on a machine with a C compiler and the Python headers"
    _warn_once(
        "fallback",
        f"nomyo is using its pure-Python secure-memory fallback because {_why}: "
        f"{_FALLBACK_LOSES}; {_fix}.",
    )


def _memlock_limit() -> int | None:
    """The soft RLIMIT_MEMLOCK in bytes, or None when unlimited or unknown."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _lock_refused_message(err: int) -> str:
    limit = _memlock_limit()
    shown = "unlimited" if limit is None else f"{limit // 1024} KiB"
    return (
        f"nomyo could not lock secure memory ({errno.errorcode.get(err, err)}; "
        f"RLIMIT_MEMLOCK is {shown}): secrets may be written to swap. Raise the "
        "limit (`ulimit -l`, LimitMEMLOCK= in a systemd unit, --ulimit memlock= "
        "for a container) or grant CAP_IPC_LOCK."
    )


# ---------------------------------------------------------------- SecureBuffer


def _check_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, not {type(size).__name__}")
    if size < 0:
        raise ValueError(f"size must be >= 0, not {size}")
    return size


def _refuse(what: str) -> NoReturn:
    raise TypeError(
        f"a SecureBuffer cannot be {what}: that would copy the secret into unprotected "
        "memory; work on memoryview(buf) instead"
    )


class SecureBuffer:
    """A fixed-size buffer for one secret, in protected memory.

    ``SecureBuffer(size)`` returns zero-copy, writable memory: write and read it
    through ``memoryview(buf)``.  It is a context manager; ``close()`` (also on
    ``with`` exit and on garbage collection) zeroes the data at once.

    :param size: length in bytes (``>= 0``).
    :param secret_memory: take the pages from ``memfd_secret`` when the kernel
        offers it (falls back to ordinary locked memory with a warning).
    :param require_locked: raise :class:`nomyo.SecurityError` instead of
        warning when the pages cannot be locked against swap.
    :raises TypeError: ``size`` is not an int.
    :raises ValueError: ``size`` is negative.
    :raises MemoryError: the memory could not be mapped.
    :raises nomyo.SecurityError: ``require_locked`` and locking was refused.

    .. warning::
       A memoryview taken from the buffer reads zeros once the buffer is
       closed (the pages stay mapped until the last view is released, so the
       address is never reused for another secret), but anything copied out of
       it (``bytes(view)``, slices turned into bytes, decoded text) is ordinary
       Python memory that nomyo cannot protect.
    """

    __slots__ = ()

    def __new__(
        cls, size: int, *, secret_memory: bool = False, require_locked: bool = False
    ) -> SecureBuffer:
        size = _check_size(size)
        impl: type[SecureBuffer] = _Impl if cls is SecureBuffer else cls
        return impl._allocate(size, bool(secret_memory), bool(require_locked))

    def __init__(
        self, size: int, *, secret_memory: bool = False, require_locked: bool = False
    ) -> None:
        """Everything happens in ``__new__``."""

    @classmethod
    def _allocate(cls, size: int, secret_memory: bool, require_locked: bool) -> SecureBuffer:
        raise NotImplementedError

    # the backend implements these
    @property
    def address(self) -> int:
        """The address of the first data byte (for C and for tests)."""
        raise NotImplementedError

    @property
    def locked(self) -> bool:
        """Whether the pages are locked against swap in this process."""
        raise NotImplementedError

    @property
    def secret_memory(self) -> bool:
        """Whether the pages come from memfd_secret."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        raise NotImplementedError

    def wipe(self) -> None:
        """Zero the contents in place; the buffer stays usable.

        :raises ValueError: the buffer is closed.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Zero the contents and give the memory back; idempotent.

        Memoryviews still alive keep the (zeroed) pages mapped until released.
        """
        raise NotImplementedError

    def fill_random(self) -> None:
        """Fill the buffer from the operating system's CSPRNG, without any
        intermediate Python object (for fresh keys and nonces).

        :raises ValueError: the buffer is closed.
        """
        raise NotImplementedError

    if TYPE_CHECKING:

        def __len__(self) -> int: ...
        def __buffer__(self, flags: int, /) -> memoryview: ...

    def __enter__(self) -> Self:
        if self.closed:
            raise ValueError("operation on a closed SecureBuffer")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return f"<{type(self).__qualname__} closed>"
        state = "locked" if self.locked else "unlocked"
        return f"<{type(self).__qualname__} {len(self)} bytes [redacted] {state}>"

    __str__ = __repr__

    def __bytes__(self) -> bytes:
        _refuse("converted to bytes")

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        _refuse("pickled")

    def __reduce__(self) -> NoReturn:
        _refuse("pickled")

    def __copy__(self) -> NoReturn:
        _refuse("copied")

    def __deepcopy__(self, memo: Any) -> NoReturn:
        _refuse("copied")

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    __hash__ = object.__hash__


def _note_locking(buf: SecureBuffer, require_locked: bool) -> None:
    if buf.locked:
        return
    err = buf._lock_errno  # type: ignore[attr-defined]
    if require_locked:
        buf.close()
        raise SecurityError(
            "secure memory could not be locked and require_locked=True: "
            + _lock_refused_message(err).removeprefix("nomyo could not lock secure memory ")
        )
    _warn_once("mlock", _lock_refused_message(err))


if _native is not None:
    _Region: Any = _native.Region
    _S_LOCKED: int = _native.S_LOCKED
else:
    _Region = object
    _S_LOCKED = 0


class _NativeBuffer(SecureBuffer, _Region):  # type: ignore[misc]
    """SecureBuffer over a guarded region from the C extension."""

    __slots__ = ()

    @classmethod
    def _allocate(cls, size: int, secret_memory: bool, require_locked: bool) -> SecureBuffer:
        if secret_memory:
            try:
                buf: _NativeBuffer = _Region.__new__(cls, size, _native.F_SECRET)
            except OSError as exc:
                _warn_once(
                    "memfd_secret",
                    "nomyo could not use memfd_secret "
                    f"({errno.errorcode.get(exc.errno or 0, exc.errno)}): secure buffers use "
                    "ordinary locked memory instead (memfd_secret needs Linux >= 5.14, "
                    "and on some kernels the secretmem.enable=1 boot option).",
                )
            else:
                _note_locking(buf, require_locked)
                return buf
        buf = _Region.__new__(cls, size, 0)
        if not buf._status & _S_LOCKED:
            _note_locking(buf, require_locked)
        return buf

    @property
    def address(self) -> int:
        return int(self._address)

    @property
    def locked(self) -> bool:
        return bool(self._status & _S_LOCKED)

    @property
    def secret_memory(self) -> bool:
        return bool(self._status & _native.S_SECRET)

    @property
    def closed(self) -> bool:
        return bool(self._closed)

    # straight to C: these sit on every request's path
    if not TYPE_CHECKING and _native is not None:
        wipe = _Region._wipe
        close = _Region._close
        fill_random = _Region._fill_random
    else:

        def wipe(self) -> None:
            self._wipe()

        def close(self) -> None:
            self._close()

        def fill_random(self) -> None:
            self._fill_random()


def _python_only(name: str) -> Any:
    def refused(self: object, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(f"SecureBuffer does not support {name}: use memoryview(buf)")

    refused.__name__ = name
    return refused


class _PythonBuffer(SecureBuffer, bytearray):  # type: ignore[misc]
    """SecureBuffer over bytearray storage: zeroed on close, nothing more.

    The storage is an ordinary heap allocation: not locked, dumped with the
    process, copied into forked children, without guard pages.  Every
    bytearray operation that could copy or resize the secret is refused.
    """

    __slots__ = ("_is_closed",)
    _is_closed: bool

    @classmethod
    def _allocate(cls, size: int, secret_memory: bool, require_locked: bool) -> SecureBuffer:
        if require_locked:
            raise SecurityError(
                "secure memory cannot be locked: nomyo is using its pure-Python "
                "fallback, which cannot lock memory"
            )
        self = bytearray.__new__(cls)
        bytearray.__init__(self, size)
        self._is_closed = False
        if size:
            memoryview(self)[:] = bytes((GARBAGE_BYTE,)) * size
        return self

    @property
    def address(self) -> int:
        if self._is_closed:
            raise ValueError("operation on a closed SecureBuffer")
        if not bytearray.__len__(self):
            return 0
        import ctypes

        return ctypes.addressof(ctypes.c_char.from_buffer(self))

    @property
    def locked(self) -> bool:
        return False

    @property
    def secret_memory(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._is_closed

    def __len__(self) -> int:
        if self._is_closed:
            raise ValueError("operation on a closed SecureBuffer")
        return bytearray.__len__(self)

    def wipe(self) -> None:
        if self._is_closed:
            raise ValueError("operation on a closed SecureBuffer")
        _zero_bytearray(self)

    def close(self) -> None:
        if self._is_closed:
            return
        _zero_bytearray(self)
        self._is_closed = True
        # give the zeroed storage back, unless a memoryview still holds it
        with contextlib.suppress(BufferError):
            bytearray.clear(self)

    def fill_random(self) -> None:
        if self._is_closed:
            raise ValueError("operation on a closed SecureBuffer")
        view = memoryview(self)
        try:
            with open("/dev/urandom", "rb", buffering=0) as source:
                filled = 0
                while filled < len(view):
                    got = source.readinto(view[filled:])
                    if not got:
                        raise OSError("short read from /dev/urandom")
                    filled += got
        finally:
            view.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            _zero_bytearray(self)


# everything bytearray has that would copy, resize, compare or show the secret
for _name in (
    *(n for n in dir(bytearray) if not n.startswith("_") and n not in ("fromhex", "maketrans")),
    "__getitem__", "__setitem__", "__delitem__", "__iter__", "__reversed__",
    "__contains__", "__add__", "__radd__", "__iadd__", "__mul__", "__rmul__",
    "__imul__", "__mod__", "__rmod__", "__lt__", "__le__", "__gt__", "__ge__",
    "__getstate__",
):  # fmt: skip
    setattr(_PythonBuffer, _name, _python_only(_name))
del _name


def _zero_bytearray(buf: bytearray) -> None:
    n = bytearray.__len__(buf)
    if n:
        memoryview(buf)[:] = bytes(n)


_Impl: type[SecureBuffer] = _NativeBuffer if _native is not None else _PythonBuffer


# ---------------------------------------------------------------- protection()


@dataclass(frozen=True)
class MemoryProtection:
    """What protects a secure buffer in this process, as checked on a live one.

    :ivar backend: ``"native"`` (the C extension) or ``"python"`` (fallback).
    :ivar mlock: the pages are locked (smaps VmFlags ``lo``, ``Locked:`` > 0).
    :ivar guard_pages: inaccessible pages sit right before and after the data.
    :ivar dontdump: left out of core dumps (VmFlags ``dd``).
    :ivar wipeonfork: zeroed in forked children (VmFlags ``wf``).
    :ivar memfd_secret: ``secret_memory=True`` buffers really come from
        memfd_secret and are unreadable through ``/proc/self/mem``.
    :ivar memlock_limit: the soft RLIMIT_MEMLOCK in bytes (None: unlimited).
    """

    backend: Literal["native", "python"]
    mlock: bool
    guard_pages: bool
    dontdump: bool
    wipeonfork: bool
    memfd_secret: bool
    memlock_limit: int | None


@dataclass(frozen=True)
class _Vma:
    start: int
    end: int
    perms: str
    flags: frozenset[str]
    locked_kb: int


def _read_smaps() -> list[_Vma]:
    vmas: list[_Vma] = []
    start = end = locked = 0
    perms = ""
    with open("/proc/self/smaps", encoding="utf-8", errors="replace") as smaps:
        for line in smaps:
            head = line.split(None, 1)[0] if line.strip() else ""
            if "-" in head and ":" not in head:
                lo, hi = head.split("-")
                start, end, perms, locked = int(lo, 16), int(hi, 16), line.split()[1], 0
            elif head == "Locked:":
                locked = int(line.split()[1])
            elif head == "VmFlags:":
                vmas.append(_Vma(start, end, perms, frozenset(line.split()[1:]), locked))
    return vmas


def _unreadable_via_proc_mem(address: int) -> bool:
    try:
        fd = os.open("/proc/self/mem", os.O_RDONLY)
    except OSError:
        return False
    try:
        os.pread(fd, 1, address)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _probe_native() -> MemoryProtection:
    region = _Region(1, _native.F_NOCACHE)
    try:
        data_start, data_end = region._mapping
        vmas = _read_smaps()
    finally:
        region._close()
    data = next((v for v in vmas if v.start <= data_start and data_end <= v.end), None)
    before = next((v for v in vmas if v.end == data_start), None)
    after = next((v for v in vmas if v.start == data_end), None)
    guarded = all(v is not None and v.perms.startswith("---") for v in (before, after))
    secret = False
    if _native.memfd_secret_usable():
        try:
            probe = _Region(1, _native.F_SECRET)
        except OSError:
            pass
        else:
            try:
                secret = bool(probe._status & _native.S_SECRET) and _unreadable_via_proc_mem(
                    probe._address
                )
            finally:
                probe._close()
    return MemoryProtection(
        backend="native",
        mlock=data is not None and "lo" in data.flags and data.locked_kb > 0,
        guard_pages=data is not None and guarded,
        dontdump=data is not None and "dd" in data.flags,
        wipeonfork=data is not None and "wf" in data.flags,
        memfd_secret=secret,
        memlock_limit=_memlock_limit(),
    )


@lru_cache(maxsize=1)
def protection() -> MemoryProtection:
    """Report the memory protection secure buffers get in this process.

    The native backend allocates a probe buffer and reads its mapping back
    from ``/proc/self/smaps``, so each flag states an effect the kernel
    shows, not a return code.  Computed once per process.
    """
    if _native is None:
        return MemoryProtection("python", False, False, False, False, False, _memlock_limit())
    return _probe_native()


# ---------------------------------------------------------------- wipe()


def wipe(obj: object) -> int:
    """Zero in place the contents of ``obj`` and return how many objects were zeroed.

    Handles ``str``, ``bytes``, ``bytearray``, writable ``memoryview`` and
    :class:`SecureBuffer`, and follows the values (not the keys) of ``dict``,
    ``list`` and ``tuple``.  A ``str`` or ``bytes`` (or a container) is only
    zeroed when nothing but its owner refers to it: interned strings, the
    interpreter's cached one-character strings and bytes, and anything still
    referenced elsewhere are skipped, so the interpreter keeps working.  A
    zeroed ``str`` keeps its length and reads as NUL characters.

    Values are followed up to ``MAX_NESTING`` (512) containers deep, the
    JSON codec's own limit, so all of a parsed answer is reached.  Deeper
    values are left as they are: everything else is wiped first, then
    :class:`RecursionError` says so.

    .. warning::
       Only call it on objects you own and will not use again: to the
       interpreter a wiped ``str`` is a different string from then on.
    """
    return int(_wipe_object(obj, _TOP_REFS))


def _fresh_text() -> str:
    return "".join(("nomyo-", "calibration"))


def _probe_refs(obj: object) -> int:
    # must have the same shape as wipe(): one call with obj as first argument
    return int(_refcount(obj, _TOP_REFS))


# pure-Python fallback of the in-place wipe (CPython: ctypes for str/bytes)
_BYTES_DATA_OFFSET = bytes.__basicsize__ - 1
# header sizes of compact strings, from fresh strings that have no cached
# UTF-8 copy (sys.getsizeof of an arbitrary str also counts that copy)
_ASCII_HEADER = sys.getsizeof("".join(("a", "b"))) - 3
_COMPACT_HEADER = sys.getsizeof("".join(("\u0100", "\u0101"))) - 3 * 2


def _str_data(text: str) -> tuple[int, int]:
    """(address, byte length) of a compact str's characters."""
    if text.isascii():
        return id(text) + _ASCII_HEADER, len(text)
    top = ord(max(text))
    kind = 1 if top < 0x100 else 2 if top < 0x10000 else 4
    return id(text) + _COMPACT_HEADER, len(text) * kind


# PyASCIIObject: ob_refcnt, ob_type, length, hash, then the state bit field
# whose two lowest bits say "interned"; checked on known strings at import
_STATE_OFFSET = 4 * struct.calcsize("P")
# PyBytesObject and PyASCIIObject: ob_refcnt, ob_type, size, then the hash
_HASH_OFFSET = 3 * struct.calcsize("P")


def _interned_bits(text: str) -> int:
    import ctypes

    return ctypes.c_uint.from_address(id(text) + _STATE_OFFSET).value & 3


def _interned(text: str) -> bool:
    return _interned_bits(text) != 0


def _state_offset_works() -> bool:
    if sys.implementation.name != "cpython":
        return False
    try:
        known = sys.intern("".join(("nomyo_", "interned_probe")))
        fresh = "".join(("nomyo ", "fresh probe"))
        return _interned_bits(known) != 0 and _interned_bits(fresh) == 0
    except (ValueError, OSError):  # pragma: no cover
        return False


def _utf8_copy_offset() -> int | None:
    """Where a compact non-ASCII str keeps the pointer to its cached UTF-8
    copy (after the ASCII header and utf8_length), verified on a probe."""
    import ctypes

    try:
        as_utf8 = ctypes.pythonapi.PyUnicode_AsUTF8AndSize
    except AttributeError:  # pragma: no cover
        return None
    as_utf8.restype = ctypes.c_void_p
    as_utf8.argtypes = [ctypes.py_object, ctypes.c_void_p]
    probe = "".join(("\u0100", "probe"))
    cached = as_utf8(probe, None)
    offset = _ASCII_HEADER + struct.calcsize("P")
    if cached and ctypes.c_void_p.from_address(id(probe) + offset).value == cached:
        return offset
    return None  # pragma: no cover - an unknown layout: leave the copy alone


def _zero_str(text: str) -> None:
    import ctypes

    address, length = _str_data(text)
    ctypes.memset(address, 0, length)
    if not text.isascii() and _UTF8_COPY_OFFSET is not None:
        copy = ctypes.c_void_p.from_address(id(text) + _UTF8_COPY_OFFSET).value
        size = ctypes.c_ssize_t.from_address(id(text) + _ASCII_HEADER).value
        if copy and copy != address and size > 0:
            ctypes.memset(copy, 0, size)


def _py_refcount(obj: object, _unused: int) -> int:
    return sys.getrefcount(obj)


def _py_wipe(obj: object, max_refs: int, depth: int = 0, too_deep: list[bool] | None = None) -> int:
    # depth: the containers around obj; one frame per object, as the
    # reference counts calibrated below expect (see _py_probe_nested)
    if isinstance(obj, SecureBuffer):
        if obj.closed:
            return 0
        obj.wipe()
        return 1
    if isinstance(obj, bytearray):
        _zero_bytearray(obj)
        return 1
    if isinstance(obj, memoryview):
        if obj.readonly or not obj.c_contiguous:
            return 0
        obj.cast("B")[:] = bytes(obj.nbytes)
        return 1
    if sys.getrefcount(obj) > max_refs:
        return 0
    if isinstance(obj, (str, bytes)) and _CAN_ZERO_IMMUTABLE:
        if len(obj) <= 1 or (isinstance(obj, str) and _interned(obj)):
            return 0
        import ctypes

        if isinstance(obj, bytes):
            ctypes.memset(id(obj) + _BYTES_DATA_OFFSET, 0, len(obj))
        else:
            _zero_str(obj)
        # both cache their hash right after the object header: recompute it
        ctypes.c_ssize_t.from_address(id(obj) + _HASH_OFFSET).value = -1
        return 1
    if not isinstance(obj, (dict, list, tuple)):
        return 0
    deep: list[bool] = [] if too_deep is None else too_deep
    total = 0
    if depth >= MAX_NESTING:  # as csrc/pyglue.c: skipped, noted, the walk goes on
        deep.append(True)
    else:
        for value in obj.values() if isinstance(obj, dict) else obj:
            total += _py_wipe(value, _NESTED_REFS, depth + 1, deep)
    if too_deep is None and deep:
        raise RecursionError(
            f"wipe: values nested deeper than {MAX_NESTING} containers were left as they "
            "are (all others were wiped)"
        )
    return total


def _py_probe_nested(container: list[str]) -> int:
    # the same loop shape as _py_wipe's, measuring instead of wiping
    for value in container:
        return _py_count(value, 0)
    return 0


def _py_count(obj: object, _unused: int) -> int:
    return sys.getrefcount(obj)


_CAN_ZERO_IMMUTABLE = _native is None and _state_offset_works()
_UTF8_COPY_OFFSET = _utf8_copy_offset() if _CAN_ZERO_IMMUTABLE else None

if _native is not None:
    _wipe_object = _native.wipe_object
    _refcount = _native.refcount
else:
    _wipe_object = _py_wipe
    _refcount = _py_refcount


def _calibrate_top() -> int:
    # an object held by exactly one variable of the caller, as in `wipe(secret)`
    text = _fresh_text()
    return _probe_refs(text)


_TOP_REFS = 10**9  # only while calibrating
_NESTED_REFS = 10**9
_TOP_REFS = _calibrate_top()
_NESTED_REFS = 1 if _native is not None else _py_probe_nested([_fresh_text()])


# ---------------------------------------------------------------- the lock budget (nomyo doctor)


@dataclass(frozen=True)
class LockBudget:
    """How much secret memory this process can lock (what ``nomyo doctor`` prints).

    :ivar cap_ipc_lock: the process holds CAP_IPC_LOCK: no limit applies.
    :ivar limit: the soft RLIMIT_MEMLOCK in bytes; None when none applies.
    :ivar locked: bytes locked now (``VmLck``).
    :ivar per_request: about how many bytes of prompt one request can keep
        locked (it locks the serialized prompt and the answer, plus
        LOCK_REQUEST_OVERHEAD_BYTES); None when there is no limit.
    :ivar enough: ``per_request`` is at least LOCK_BUDGET_ENOUGH_BYTES, or unlimited.
    """

    cap_ipc_lock: bool
    limit: int | None
    locked: int
    per_request: int | None
    enough: bool


def _proc_status(field: str) -> str | None:
    """The first value of ``field`` in /proc/self/status, or None."""
    try:
        with open("/proc/self/status", encoding="utf-8", errors="replace") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return line.split()[1]
    except OSError:
        pass
    return None


def lock_budget() -> LockBudget:
    """Measure this process's lock budget from ``/proc/self/status`` (VmLck,
    CapEff) and RLIMIT_MEMLOCK."""
    from ._constants import LOCK_BUDGET_ENOUGH_BYTES, LOCK_REQUEST_OVERHEAD_BYTES

    capabilities = _proc_status("CapEff")
    cap_ipc_lock = capabilities is not None and bool(int(capabilities, 16) & (1 << 14))
    limit = None if cap_ipc_lock else _memlock_limit()
    locked_kib = _proc_status("VmLck")
    locked = int(locked_kib) * 1024 if locked_kib is not None else 0
    per_request = None
    if limit is not None:
        per_request = max(0, (limit - locked - LOCK_REQUEST_OVERHEAD_BYTES) // 2)
    enough = per_request is None or per_request >= LOCK_BUDGET_ENOUGH_BYTES
    return LockBudget(cap_ipc_lock, limit, locked, per_request, enough)
