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
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from ._sdk_transport import AsyncSecureTransport, SecureTransport

__version__ = "0.3.0.dev0"

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
    "protection",
    "wipe",
]


def __getattr__(name: str) -> Any:
    # the httpx transports for SDKs, loaded when first asked for
    if name in ("AsyncSecureTransport", "SecureTransport"):
        from . import _sdk_transport

        return getattr(_sdk_transport, name)
    raise AttributeError(f"module 'nomyo' has no attribute {name!r}")
