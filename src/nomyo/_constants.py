"""Every tunable of nomyo in one place: sizes (*_BYTES), limits, defaults, names.

Owns values only; imports nothing from the package.
"""

from __future__ import annotations

#: environment variable choosing the memory backend: "native", "python" or unset (auto)
MEMORY_BACKEND_ENV = "NOMYO_MEMORY_BACKEND"
MEMORY_BACKENDS = ("native", "python")

#: byte that fresh secure memory is filled with, so reads of never-written data show
GARBAGE_BYTE = 0xDB

#: how deep wipe() follows nested dict/list/tuple values
WIPE_MAX_DEPTH = 200
