"""The exceptions and warnings nomyo raises; owns no behaviour.

::

    NomyoError
     └── SecurityError          a security guarantee could not be kept

    UserWarning
     └── SecureMemoryWarning    secrets are held with less protection than asked

Messages never contain key material, plaintext or API keys.
"""

from __future__ import annotations


class NomyoError(Exception):
    """The root of every error nomyo raises on purpose."""


class SecurityError(NomyoError):
    """A security guarantee could not be kept (for example, memory could not
    be locked where locking was required).  Nothing secret is in the message."""


class SecureMemoryWarning(UserWarning):
    """Secrets are held with less protection than asked for: memory could not
    be locked, memfd_secret is unavailable, or the pure-Python fallback is in
    use.  Issued once per process and cause; the message says how to fix it."""
