"""The published 0.2.9 client's ``nomyo.nomyo`` import path: a shim, nothing of its own."""

from ._client import SecureChatCompletion, SecureCompletionClient

__all__ = ["SecureChatCompletion", "SecureCompletionClient"]
