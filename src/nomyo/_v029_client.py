"""The published 0.2.9 client's ``nomyo.SecureCompletionClient`` module: a
shim, nothing of its own.

``nomyo/__init__.py`` registers this module in ``sys.modules`` under that
dotted name, so ``from nomyo.SecureCompletionClient import
SecureCompletionClient, SecurityError`` works while the attribute
``nomyo.SecureCompletionClient`` stays the class (a file of that name would
replace the class with the module when imported).
"""

from ._client import SecureCompletionClient
from ._exceptions import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    ForbiddenError,
    InvalidRequestError,
    RateLimitError,
    SecurityError,
    ServerError,
    ServiceUnavailableError,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "AuthenticationError",
    "ForbiddenError",
    "InvalidRequestError",
    "RateLimitError",
    "SecureCompletionClient",
    "SecurityError",
    "ServerError",
    "ServiceUnavailableError",
]
