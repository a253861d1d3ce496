"""nomyo: end-to-end encrypted chat completions with NOMYO routers, keeping
the secrets it handles (AES keys, serialized prompts, decrypted answer text)
in locked, guarded, dump-excluded memory.

The public surface is flat: import everything from ``nomyo``::

    from nomyo import SecureChatCompletion

    async with SecureChatCompletion(base_url="https://api.nomyo.ai", api_key=KEY) as client:
        answer = await client.create(model="...", messages=[{"role": "user", "content": "..."}])
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

from . import _v029_client
from ._client import SecureChatCompletion, SecureCompletionClient, SyncSecureChatCompletion
from ._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    ForbiddenError,
    InvalidRequestError,
    NomyoError,
    RateLimitError,
    SecureMemoryWarning,
    SecurityError,
    ServerError,
    ServiceUnavailableError,
)
from .memory import MemoryProtection, SecureBuffer, protection, wipe
from .SecureMemory import (
    disable_secure_memory,
    enable_secure_memory,
    get_memory_protection_info,
    secure_bytearray,
    secure_bytes,
)

if TYPE_CHECKING:
    from ._sdk_transport import AsyncSecureTransport, SecureTransport

__version__ = "0.3.0.dev0"

# 0.2.9's import path for the module; the attribute stays the class (see _v029_client)
sys.modules[f"{__name__}.SecureCompletionClient"] = _v029_client

# silent unless the application configures logging
logging.getLogger("nomyo").addHandler(logging.NullHandler())

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncSecureTransport",
    "AuthenticationError",
    "ForbiddenError",
    "InvalidRequestError",
    "MemoryProtection",
    "NomyoError",
    "RateLimitError",
    "SecureBuffer",
    "SecureChatCompletion",
    "SecureCompletionClient",
    "SecureMemoryWarning",
    "SecureTransport",
    "SecurityError",
    "ServerError",
    "ServiceUnavailableError",
    "SyncSecureChatCompletion",
    "__version__",
    "disable_secure_memory",
    "enable_secure_memory",
    "get_memory_protection_info",
    "protection",
    "secure_bytearray",
    "secure_bytes",
    "wipe",
]


def __getattr__(name: str) -> Any:
    # the httpx transports for SDKs, loaded when first asked for
    if name in ("AsyncSecureTransport", "SecureTransport"):
        from . import _sdk_transport

        return getattr(_sdk_transport, name)
    raise AttributeError(f"module 'nomyo' has no attribute {name!r}")
