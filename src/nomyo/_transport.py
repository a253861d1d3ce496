"""The HTTP side: one pooled httpx client per nomyo client, capped reads,
httpx failures and error statuses turned into nomyo exceptions (here, at the
boundary, and nowhere else), and the retry policy.  Never sees plaintext:
it moves sealed packages and the router's public key.

The retry policy is three small functions: :func:`should_retry` (is this
failure worth another attempt?), :func:`retry_delay` (how long to wait?) and
:func:`parse_retry_after` (what did the router ask for?).
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpcore
import httpx

from ._constants import (
    INITIAL_RETRY_DELAY,
    MAX_ERROR_BODY_BYTES,
    MAX_PUBLIC_KEY_BYTES,
    MAX_RETRY_DELAY,
    POOL_SHARD_REQUESTS,
    RETRY_AFTER_CAP,
    RETRY_STATUSES,
)
from ._exceptions import APIConnectionError, APIError, APITimeoutError, error_for_status

log = logging.getLogger("nomyo")

Verify = bool | str | ssl.SSLContext


# ---------------------------------------------------------------- retry policy


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP
    date), or None when absent or unreadable.  Never negative."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:  # pragma: no cover - older Pythons
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, float(seconds))


def should_retry(error: APIError) -> bool:
    """Worth another attempt: 429, 500, 502, 503, 504, no connection, and a
    timeout while connecting (the request was never sent).  A timeout while
    waiting for the answer is not retried: the router may be working on it."""
    if isinstance(error, APITimeoutError):
        return isinstance(error.__cause__, httpx.ConnectTimeout | httpx.PoolTimeout)
    if isinstance(error, APIConnectionError):
        return True
    return error.status_code in RETRY_STATUSES


def retry_delay(
    attempt: int, retry_after: float | None, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to sleep before retry number ``attempt`` (0-based): the router's
    ``Retry-After`` when it gave one (at most RETRY_AFTER_CAP), otherwise
    exponential backoff from INITIAL_RETRY_DELAY, capped at MAX_RETRY_DELAY,
    with up to 25 % jitter downwards so clients spread out."""
    if retry_after is not None:
        return min(retry_after, RETRY_AFTER_CAP)
    base: float = min(INITIAL_RETRY_DELAY * 2.0 ** min(attempt, 64), MAX_RETRY_DELAY)
    return base * (1.0 - 0.25 * rand())


# ---------------------------------------------------------------- error mapping


def _connection_error(exc: httpx.HTTPError, url: str, payload_id: str | None) -> APIError:
    if isinstance(exc, httpx.TimeoutException):
        phase = "connecting to" if isinstance(exc, httpx.ConnectTimeout) else "waiting for"
        return APITimeoutError(f"timed out {phase} {url}", payload_id=payload_id)
    reason = _unreachable_reason(exc)
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        reason = "TLS certificate verification failed"
    return APIConnectionError(f"could not reach {url}: {reason}", payload_id=payload_id)


def _unreachable_reason(exc: BaseException) -> str:
    """Why a connection failed, from the OSError under httpx's exception."""
    seen: BaseException | None = exc
    for _ in range(8):  # the chain is short; never loop on a cycle
        if seen is None:
            break
        if isinstance(seen, socket.gaierror):
            return "DNS lookup of the host name failed"
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused (nothing listens on that port)"
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror[0].lower() + seen.strerror[1:]
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused (nothing listens on that port)"
    if "Name or service not known" in text or "getaddrinfo" in text:
        return "DNS lookup of the host name failed"
    return type(exc).__name__


def _status_error(response: httpx.Response, body: bytes, payload_id: str | None) -> APIError:
    try:
        parsed: Any = json.loads(body) if body else None
    except (ValueError, RecursionError):  # not JSON, or hostile nesting: no detail
        parsed = None
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    error = error_for_status(
        response.status_code, parsed, payload_id=payload_id, retry_after=retry_after
    )
    error._retry_after = retry_after  # type: ignore[attr-defined]
    return error


def _too_large(limit: int, payload_id: str | None, status: int) -> APIError:
    # refused by us, not by the router: no HTTP error status to report
    return APIError(
        f"the answer (HTTP {status}) is larger than max_response_bytes ({limit} bytes)",
        status_code=None,
        payload_id=payload_id,
    )


def _limits() -> httpx.Limits:
    return httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=30)


def _verify(verify: Verify) -> bool | ssl.SSLContext:
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify


def check_deadline(deadline: float | None, url: str, payload_id: str | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise APITimeoutError(f"timed out waiting for {url}", payload_id=payload_id)


# ---------------------------------------------------------------- sync


class _Deadline(threading.local):
    """The monotonic deadline of the request this thread is making, or None."""

    at: float | None = None

    def bound(self, timeout: float | None, error: type[Exception]) -> float | None:
        """``timeout`` for one socket operation, cut to what is left before the deadline."""
        if self.at is None:
            return timeout
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise error("the call's deadline has passed")
        return remaining if timeout is None else min(timeout, remaining)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the deadline of the
    request using it.  httpx's timeouts are per operation only, so without
    this a router sending a byte of its headers a second would hold a
    blocking call for hours (the async client has ``asyncio.wait_for``)."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._stream, self._deadline = stream, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._deadline.bound(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._deadline.bound(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        timeout = self._deadline.bound(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._stream.start_tls(ssl_context, server_hostname, timeout), self._deadline
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's blocking sockets, made into :class:`_DeadlineStream` s."""

    def __init__(self, deadline: _Deadline) -> None:
        self._backend = httpcore.SyncBackend()
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = self._deadline.bound(timeout, httpcore.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:  # pragma: no cover - nomyo speaks TCP
        timeout = self._deadline.bound(timeout, httpcore.ConnectTimeout)
        stream = self._backend.connect_unix_socket(path, timeout, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:  # pragma: no cover - httpcore retries are off
        self._backend.sleep(seconds)


class SyncTransport:
    """Blocking HTTP over one pooled ``httpx.Client``; a request's ``deadline``
    bounds every socket operation it makes (see :class:`_DeadlineStream`)."""

    def __init__(self, *, verify: Verify, timeout: httpx.Timeout) -> None:
        self._deadline = _Deadline()
        pool = httpx.HTTPTransport(verify=_verify(verify), limits=_limits())
        # httpx takes no network backend of its own: set the one of its httpcore
        # pool (private; tests/test_hostile_router.py's stalling routers fail if
        # a new httpx or httpcore stops honouring it)
        inner = getattr(pool, "_pool", None)
        if inner is not None and hasattr(inner, "_network_backend"):
            inner._network_backend = _DeadlineBackend(self._deadline)
        else:  # pragma: no cover - a newer httpx: per-operation timeouts only
            log.warning("httpx changed: a trickling router can outlast the sync timeout")
        self._http = httpx.Client(transport=pool, timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def get_text(
        self, url: str, *, timeout: httpx.Timeout | None = None, deadline: float | None = None
    ) -> str:
        """GET a small text resource (the router's public key)."""
        body = self.request(
            "GET", url, timeout=timeout, limit=MAX_PUBLIC_KEY_BYTES, deadline=deadline
        )
        return body.decode("utf-8", "replace")

    def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        limit: int,
        timeout: httpx.Timeout | None = None,
        deadline: float | None = None,
        payload_id: str | None = None,
    ) -> bytearray:
        """The body of a 2xx answer, read up to ``limit`` bytes (a new bytearray).

        :raises APIError: an error status, an answer over the limit, or (as
            APIConnectionError / APITimeoutError) no answer at all.
        """
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        self._deadline.at = deadline
        try:
            with self._http.stream(method, url, content=content, headers=headers, **kwargs) as r:
                reader = _Reader(r, limit, deadline, url, payload_id)
                for chunk in r.iter_bytes():
                    if not reader.feed(chunk):
                        break
        except httpx.HTTPError as exc:
            raise _connection_error(exc, url, payload_id) from exc
        finally:
            self._deadline.at = None
        return reader.result(method)


class _Reader:
    """The reading rules both transports share: only 2xx is an answer, read up
    to ``limit`` (refused at once when Content-Length says more); an error
    body is read up to MAX_ERROR_BODY_BYTES; the deadline holds throughout."""

    def __init__(
        self,
        response: httpx.Response,
        limit: int,
        deadline: float | None,
        url: str,
        payload_id: str | None,
    ) -> None:
        self.response, self.limit, self.deadline = response, limit, deadline
        self.url, self.payload_id = url, payload_id
        self.ok = 200 <= response.status_code < 300  # redirects are not followed: an error
        self.cap = limit if self.ok else MAX_ERROR_BODY_BYTES
        self.body = bytearray()
        self.filled = 0
        declared = response.headers.get("content-length", "")
        if self.ok and declared.isdigit():
            if int(declared) > self.cap:
                raise _too_large(self.cap, payload_id, response.status_code)
            # one allocation of the announced size, filled in place: growing a
            # bytearray chunk by chunk leaves copies of megabytes in the heap
            self.body = bytearray(int(declared))

    def feed(self, chunk: bytes) -> bool:
        """Take a chunk; False when the rest is not worth reading."""
        end = self.filled + len(chunk)
        if end <= len(self.body):
            self.body[self.filled : end] = chunk
        else:  # more than announced (h11 refuses that anyway): keep it all
            del self.body[self.filled :]
            self.body += chunk
        self.filled = end
        if self.filled > self.cap:
            if self.ok:
                raise _too_large(self.limit, self.payload_id, self.response.status_code)
            return False
        check_deadline(self.deadline, self.url, self.payload_id)
        return True

    def result(self, method: str) -> bytearray:
        check_deadline(self.deadline, self.url, self.payload_id)
        del self.body[self.filled :]  # less than announced (h11 refuses that too)
        status = self.response.status_code
        log.debug("%s %s -> %d (%d bytes)", method, self.url, status, len(self.body))
        if not self.ok:
            raise _status_error(self.response, bytes(self.body[: self.cap]), self.payload_id)
        return self.body


# ---------------------------------------------------------------- async


class AsyncTransport:
    """Non-blocking HTTP over pooled ``httpx.AsyncClient`` s, bound to the event
    loop they were made on (the client makes a new transport per loop).

    Each request goes to the first pool with fewer than POOL_SHARD_REQUESTS in
    flight; another pool opens only when all are that busy.  One request at a
    time (and the key fetch) therefore always share the first pool's single
    connection, while many in flight avoid httpcore's cost per waiting
    request, which grows with the pool (encode/httpcore#1035).
    """

    def __init__(self, *, verify: Verify, timeout: httpx.Timeout) -> None:
        self._verify = _verify(verify)
        self._timeout = timeout
        self._shards: list[httpx.AsyncClient] = []
        self._busy: list[int] = []
        self._open_shard()

    @property
    def _http(self) -> httpx.AsyncClient:
        """The first pool: the one every request uses while few are in flight."""
        return self._shards[0]

    @_http.setter
    def _http(self, client: httpx.AsyncClient) -> None:
        self._shards[0] = client

    def _open_shard(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            verify=self._verify, timeout=self._timeout, limits=_limits(), follow_redirects=False
        )
        self._shards.append(client)
        self._busy.append(0)
        return client

    def _pick(self) -> int:
        for index, busy in enumerate(self._busy):
            if busy < POOL_SHARD_REQUESTS:
                return index
        self._open_shard()
        return len(self._shards) - 1

    async def aclose(self) -> None:
        for client in self._shards:
            await client.aclose()

    async def get_text(
        self, url: str, *, timeout: httpx.Timeout | None = None, deadline: float | None = None
    ) -> str:
        body = await self.request(
            "GET", url, timeout=timeout, limit=MAX_PUBLIC_KEY_BYTES, deadline=deadline
        )
        return body.decode("utf-8", "replace")

    async def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        limit: int,
        timeout: httpx.Timeout | None = None,
        deadline: float | None = None,
        payload_id: str | None = None,
    ) -> bytearray:
        """As :meth:`SyncTransport.request`."""
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        shard = self._pick()
        self._busy[shard] += 1
        try:
            async with self._shards[shard].stream(
                method, url, content=content, headers=headers, **kwargs
            ) as r:
                reader = _Reader(r, limit, deadline, url, payload_id)
                async for chunk in r.aiter_bytes():
                    if not reader.feed(chunk):
                        break
        except httpx.HTTPError as exc:
            raise _connection_error(exc, url, payload_id) from exc
        finally:
            self._busy[shard] -= 1
        return reader.result(method)
