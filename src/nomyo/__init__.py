"""nomyo: an end-to-end encrypted client for NOMYO routers, holding its secrets
in locked, guarded, dump-excluded memory.

The public surface is flat: import everything from ``nomyo``.
"""

from __future__ import annotations

from ._exceptions import NomyoError, SecureMemoryWarning, SecurityError
from .memory import MemoryProtection, SecureBuffer, protection, wipe

__version__ = "0.3.0.dev0"

__all__ = [
    "MemoryProtection",
    "NomyoError",
    "SecureBuffer",
    "SecureMemoryWarning",
    "SecurityError",
    "__version__",
    "protection",
    "wipe",
]
