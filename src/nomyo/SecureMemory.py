"""The published 0.2.9 client's ``nomyo.SecureMemory``: its five functions,
as a thin shim over :mod:`nomyo.memory`; owns nothing else.

``secure_bytearray(data)`` copies ``data`` into a :class:`nomyo.SecureBuffer`
(locked, guarded, dump-excluded, zeroed on exit) and zeroes a bytearray
``data``, as 0.2.9 did.  The buffer's ``.data`` is a writable memoryview of
that secure memory, not a bytearray: a bytearray would be a copy on the
ordinary heap.  :func:`disable_secure_memory` switches only these functions
to ordinary (still zeroed) memory; a client's own secure memory is its
``secure_memory=`` argument.  docs/migrating.md lists the differences.
"""

from __future__ import annotations

import logging
import mmap
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from ._hybrid import PlainBuffer
from .memory import SecureBuffer as _Secure
from .memory import protection, wipe

__all__ = [
    "SecureBuffer",
    "disable_secure_memory",
    "enable_secure_memory",
    "get_memory_protection_info",
    "secure_bytearray",
    "secure_bytes",
]

log = logging.getLogger("nomyo")
_state = {"enabled": True}
_state_lock = threading.Lock()


class SecureBuffer:
    """0.2.9's buffer: a copy of ``data`` in secure memory (``.data``, a
    memoryview), zeroed by :meth:`zero` and on ``with`` exit.  A bytearray
    ``data`` is zeroed once copied.  ``secure_memory`` is accepted and ignored."""

    def __init__(self, data: bytes | bytearray | memoryview, secure_memory: Any = None) -> None:
        with memoryview(data) as source:
            size = source.nbytes
            self._buffer: _Secure | PlainBuffer = (
                _Secure(size) if _state["enabled"] else PlainBuffer(size)
            )
            self.data = memoryview(self._buffer).cast("B")
            self.data[:] = source.cast("B")
        if isinstance(data, bytearray):
            wipe(data)

    @property
    def size(self) -> int:
        return self.data.nbytes

    @property
    def address(self) -> int:
        return self._buffer.address if isinstance(self._buffer, _Secure) else 0

    def lock(self) -> bool:
        """Whether the memory is locked (nomyo locks it when it is made)."""
        return isinstance(self._buffer, _Secure) and self._buffer.locked

    def unlock(self) -> bool:
        """A no-op: nomyo keeps the memory locked until it is closed."""
        return True

    def zero(self) -> None:
        wipe(self.data)

    def close(self) -> None:
        """Zero and release the memory; ``.data`` then reads zeros."""
        self._buffer.close()

    def __enter__(self) -> SecureBuffer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        """A copy on the ordinary heap, as 0.2.9 gave (use with caution)."""
        return bytes(self.data)

    def __repr__(self) -> str:
        return f"<nomyo.SecureMemory.SecureBuffer {self.size} bytes>"


@contextmanager
def secure_bytearray(
    data: bytes | bytearray | memoryview, lock: bool = True
) -> Iterator[SecureBuffer]:
    """``data`` copied into secure memory for the ``with`` block, zeroed after.

    ``lock`` is accepted for 0.2.9's sake: nomyo's secure memory is always
    locked where the system allows it (a SecureMemoryWarning says when not).
    """
    buffer = SecureBuffer(data)
    try:
        yield buffer
    finally:
        buffer.close()


@contextmanager
def secure_bytes(data: bytes, lock: bool = True) -> Iterator[SecureBuffer]:
    """Deprecated in 0.2.9 already: :func:`secure_bytearray` (the original
    ``bytes`` cannot be zeroed)."""
    warnings.warn(
        "secure_bytes() is deprecated: use secure_bytearray(); the original bytes "
        "object cannot be zeroed",
        DeprecationWarning,
        stacklevel=3,
    )
    with secure_bytearray(data, lock) as buffer:
        yield buffer


def get_memory_protection_info() -> dict[str, Any]:
    """0.2.9's dictionary, from what :func:`nomyo.protection` checked on a live buffer."""
    enabled = _state["enabled"]
    locking = enabled and protection().mlock
    level = "full" if locking else "zeroing_only" if enabled else "none"
    return {
        "enabled": enabled,
        "platform": sys.platform,
        "protection_level": level,
        "has_memory_locking": locking,
        "has_secure_zeroing": enabled,
        "supports_full_protection": level == "full",
        "page_size": mmap.PAGESIZE,
    }


def disable_secure_memory() -> None:
    """Make :func:`secure_bytearray` use ordinary memory (still zeroed).
    Clients are not affected: pass ``secure_memory=False`` to one instead."""
    with _state_lock:
        _state["enabled"] = False
    log.info("secure memory disabled for secure_bytearray()")


def enable_secure_memory() -> None:
    """Undo :func:`disable_secure_memory`."""
    with _state_lock:
        _state["enabled"] = True
    log.info("secure memory enabled for secure_bytearray()")
