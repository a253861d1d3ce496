"""The exceptions and warnings nomyo raises, and the one place that maps an
HTTP status to its exception; owns no other behaviour.

::

    NomyoError
     ├── APIError(message, status_code, error_details, payload_id, retry_after)
     │    ├── InvalidRequestError        400
     │    ├── AuthenticationError        401
     │    ├── ForbiddenError             403  (model not allowed for the tier)
     │    ├── RateLimitError             429  (.retry_after, seconds or None)
     │    ├── ServerError                500
     │    ├── ServiceUnavailableError    503
     │    └── APIConnectionError         no answer: network, TLS, refused
     │         └── APITimeoutError       no answer in time
     └── SecurityError                  a security guarantee could not be kept

    UserWarning
     └── SecureMemoryWarning            secrets held with less protection than asked

404, 502, 504 and other statuses are a plain APIError.  Messages never
contain key material, plaintext or API keys.  As in the published 0.2.9
client, ``str(error)`` is the message alone and each class above with a
status has it as its default ``status_code``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "ForbiddenError",
    "InvalidRequestError",
    "NomyoError",
    "RateLimitError",
    "SecureMemoryWarning",
    "SecurityError",
    "ServerError",
    "ServiceUnavailableError",
    "error_for_status",
]


class NomyoError(Exception):
    """The root of every error nomyo raises on purpose."""


class SecurityError(NomyoError):
    """A security guarantee could not be kept: an answer that fails
    authentication or is bound to another request, a replayed answer, a
    router key that does not match the pin, plain HTTP without
    ``allow_http``, memory that could not be locked where that was required.
    Nothing secret is in the message, nor which check failed."""


class APIError(NomyoError):
    """The router (or the way to it) did not give a usable answer.

    :ivar message: what went wrong, from the router's ``detail`` when it gave one.
    :ivar status_code: the HTTP status, or None when there was no answer.
    :ivar error_details: the router's JSON error body, when it sent one.
    :ivar payload_id: the X-Payload-ID of the request.
    :ivar retry_after: seconds the router asked to wait (``Retry-After``), or
        None; the retry policy honours it for every retried status.
    """

    #: the status_code when none is given (0.2.9's per-class defaults)
    default_status: int | None = None

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        error_details: Any = None,
        payload_id: str | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = self.default_status if status_code is None else status_code
        self.error_details = error_details
        self.payload_id = payload_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message


class InvalidRequestError(APIError):
    """400: the router refused the request as malformed."""

    default_status = 400


class AuthenticationError(APIError):
    """401: missing or wrong API key."""

    default_status = 401


class ForbiddenError(APIError):
    """403: not allowed, e.g. the model is not available for the requested tier."""

    default_status = 403


class RateLimitError(APIError):
    """429: too many requests (see :attr:`APIError.retry_after`)."""

    default_status = 429

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        error_details: Any = None,
        payload_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status_code, error_details, payload_id, retry_after=retry_after)


class ServerError(APIError):
    """500: the router failed."""

    default_status = 500


class ServiceUnavailableError(APIError):
    """503: the router is cooling down or overloaded (it may last minutes)."""

    default_status = 503


class APIConnectionError(APIError):
    """No answer came back: connection refused or reset, DNS, TLS failure."""


class APITimeoutError(APIConnectionError):
    """No answer came back in time."""


class SecureMemoryWarning(UserWarning):
    """Secrets are held with less protection than asked for: memory could not
    be locked, memfd_secret is unavailable, or the pure-Python fallback is in
    use.  Issued once per process and cause; the message says how to fix it."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: ForbiddenError,
    429: RateLimitError,
    500: ServerError,
    503: ServiceUnavailableError,
}

_GENERIC = {
    400: "bad request",
    401: "authentication failed",
    403: "forbidden",
    404: "secure inference is not available at this endpoint",
    429: "rate limit exceeded",
    500: "the router failed",
    502: "bad gateway",
    503: "the router is unavailable",
    504: "gateway timeout",
}


def error_for_status(
    status: int,
    body: Any,
    *,
    payload_id: str | None = None,
    retry_after: float | None = None,
) -> APIError:
    """The exception for an HTTP error answer (the only status map in nomyo).

    ``body`` is the decoded JSON error body, or None when it was not JSON;
    its ``detail`` becomes the message when it is a string.
    """
    detail = body.get("detail") if isinstance(body, dict) else None
    message = detail if isinstance(detail, str) and detail else _GENERIC.get(status)
    message = message or f"unexpected status {status}"
    cls = _BY_STATUS.get(status, APIError)
    return cls(message, status, body, payload_id, retry_after=retry_after)
