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
from ._sdk_transport import AsyncSecureTransport, SecureTransport
from .memory import MemoryProtection, SecureBuffer, protection, wipe

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
