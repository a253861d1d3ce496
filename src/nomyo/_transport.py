"""The HTTP side: the connection pools (a sync client has one; an async
client has a few per event loop, opened as requests pile up, see
:class:`AsyncTransport`), capped reads, httpx failures and error statuses
turned into nomyo exceptions (here, at the boundary, and nowhere else), and
the retry policy with the call's deadline.  Never sees plaintext: it moves
sealed packages and the router's public key.

The retry policy is three small functions: :func:`should_retry` (is this
failure worth another attempt?), :func:`retry_delay` (how long to wait?) and
:func:`parse_retry_after` (what did the router ask for?), and one call's
use of them, :class:`Attempts`: its deadline, each attempt's timeout and
the backoff between attempts.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import random
import socket
import ssl
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import httpcore
import httpx

from ._constants import (
    ACCEPT_ENCODING,
    INFLATE_PIECE,
    INITIAL_RETRY_DELAY,
    MAX_ERROR_BODY_BYTES,
    MAX_PUBLIC_KEY_BYTES,
    MAX_RETRY_DELAY,
    POOL_KEEPALIVE_EXPIRY,
    POOL_MAX_CONNECTIONS,
    POOL_MAX_KEEPALIVE,
    POOL_SHARD_REQUESTS,
    RETRY_AFTER_CAP,
    RETRY_JITTER,
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
    """Worth another attempt, and safe: never a resend of a request the router
    may have received in full.

    - An answer with status 429, 500, 502, 503 or 504: the router (or the
      gateway before it) says it did not complete the request.
    - A failure before the request was sent: no connection could be made
      (refused, unreachable, DNS, TLS handshake: ``httpx.ConnectError``),
      connecting timed out, or no pooled connection became free
      (``ConnectTimeout``, ``PoolTimeout``).

    Anything after the request started on its way is final, whatever it
    looks like: the connection dropped or reset while writing or waiting
    (``RemoteProtocolError``, ``ReadError``, ``WriteError``), or a read or
    write timeout.  The router may have the whole request and be working on
    it; a second POST could be processed twice.
    """
    if isinstance(error, APIConnectionError):  # APITimeoutError too
        return isinstance(error.__cause__, _NOT_SENT)
    return error.status_code in RETRY_STATUSES


#: httpx's failures that prove nothing was sent (see :func:`should_retry`)
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def retry_delay(
    attempt: int, retry_after: float | None, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to sleep before retry number ``attempt`` (0-based): the router's
    ``Retry-After`` when it gave one (at most RETRY_AFTER_CAP), otherwise
    exponential backoff from INITIAL_RETRY_DELAY, capped at MAX_RETRY_DELAY,
    with up to RETRY_JITTER (a quarter) jitter downwards so clients spread out."""
    if retry_after is not None:
        return min(retry_after, RETRY_AFTER_CAP)
    base: float = min(INITIAL_RETRY_DELAY * 2.0 ** min(attempt, 64), MAX_RETRY_DELAY)
    return base * (1.0 - RETRY_JITTER * rand())


class Attempts:
    """One call's attempts under the policy above: the deadline of the whole
    call (``total`` seconds from now, or none), each attempt's timeout, and
    whether and how long to wait before the next one."""

    def __init__(
        self,
        *,
        max_retries: int,
        http_timeout: httpx.Timeout,
        total: float | None,
        url: str,
        payload_id: str | None = None,
    ) -> None:
        self.max_retries, self.http_timeout = max_retries, http_timeout
        self.url, self.payload_id = url, payload_id
        self.deadline = None if total is None else time.monotonic() + total
        self.made = 0  # retries so far

    def timeout(self) -> httpx.Timeout:
        """The next attempt's httpx timeout: what is left of the call's time.

        :raises APITimeoutError: no time is left.
        """
        if self.deadline is None:
            return self.http_timeout
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise APITimeoutError(f"timed out waiting for {self.url}", payload_id=self.payload_id)
        return httpx.Timeout(remaining)

    def backoff(self, error: APIError) -> float | None:
        """Seconds to wait before retrying after ``error``, or None to give up
        (not retryable, no retries left, or the wait would pass the deadline)."""
        if self.made >= self.max_retries or not should_retry(error):
            return None
        delay = retry_delay(self.made, error.retry_after)
        if self.deadline is not None and time.monotonic() + delay >= self.deadline:
            return None
        log.info("retrying after %s (%.2f s)", type(error).__name__, delay)
        self.made += 1
        return delay


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
    return error_for_status(
        response.status_code, parsed, payload_id=payload_id, retry_after=retry_after
    )


def _too_large(limit: int, payload_id: str | None, status: int) -> APIError:
    # refused by us, not by the router: no HTTP error status to report
    return APIError(
        f"the answer (HTTP {status}) is larger than max_response_bytes ({limit} bytes)",
        status_code=None,
        payload_id=payload_id,
    )


#: only what :class:`_Inflater` decodes a piece at a time
_HEADERS = {"Accept-Encoding": ACCEPT_ENCODING}


def _limits() -> httpx.Limits:
    return httpx.Limits(
        max_connections=POOL_MAX_CONNECTIONS,
        max_keepalive_connections=POOL_MAX_KEEPALIVE,
        keepalive_expiry=POOL_KEEPALIVE_EXPIRY,
    )


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
    blocking call for hours (the async engine bounds the whole call in its
    task instead: ``asyncio.timeout``, or ``asyncio.wait_for`` before 3.11)."""

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
        # pool (private; tests/test_client_stalling_routers.py fails if a new
        # httpx or httpcore stops honouring it)
        inner = getattr(pool, "_pool", None)
        if inner is not None and hasattr(inner, "_network_backend"):
            inner._network_backend = _DeadlineBackend(self._deadline)
        else:  # pragma: no cover - a newer httpx: per-operation timeouts only
            log.warning("httpx changed: a trickling router can outlast the sync timeout")
        self._http = httpx.Client(
            transport=pool, timeout=timeout, follow_redirects=False, headers=_HEADERS
        )

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
                inflate = _Inflater(r, reader)
                for raw in [r.content] if r.is_stream_consumed else r.iter_raw():
                    if not all(reader.feed(chunk) for chunk in inflate(raw)):
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
        # Content-Length counts the bytes on the wire: the answer's own size
        # only when it is not compressed
        if self.ok and declared.isdigit() and _encoding(response) in ("", "identity"):
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


def _encoding(response: httpx.Response) -> str:
    return str(response.headers.get("content-encoding", "")).strip().lower()


class _Inflater:
    """An answer's body decompressed as it arrives, INFLATE_PIECE bytes at a
    time at most, so that the reader's cap stops a gzip bomb after the cap
    plus one piece, not after the whole of a chunk inflated at once (which
    is what httpx's iter_bytes does).  Only the encodings asked for
    (ACCEPT_ENCODING: gzip, deflate) are taken; any other is refused.

    :raises APIError: a 2xx answer in another encoding, or malformed
        compressed data (an error body is then cut where it breaks).
    """

    def __init__(self, response: httpx.Response, reader: _Reader) -> None:
        self.reader = reader
        encoding = "" if response.is_stream_consumed else _encoding(response)
        self.decoder: Any = None
        if encoding in ("gzip", "x-gzip"):
            self.decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self.decoder = zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib (or gzip) framing
        elif encoding not in ("", "identity"):
            self._refuse(f"an answer in an encoding not asked for ({encoding[:40]!r})")

    def _refuse(self, why: str) -> None:
        reader = self.reader
        if reader.ok:
            raise APIError(
                f"{why} from {reader.url}", status_code=None, payload_id=reader.payload_id
            )
        self.decoder = _BROKEN

    def __call__(self, raw: bytes) -> Iterator[bytes]:
        decoder = self.decoder
        if decoder is None:
            yield raw
            return
        if decoder is _BROKEN or decoder.eof:  # after the end of the stream: ignored
            return
        try:
            piece = decoder.decompress(raw, INFLATE_PIECE)
            while True:
                if piece:
                    yield piece
                if not decoder.unconsumed_tail:
                    return
                piece = decoder.decompress(decoder.unconsumed_tail, INFLATE_PIECE)
        except zlib.error:
            self._refuse("a malformed compressed answer")


_BROKEN = object()


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
            verify=self._verify,
            timeout=self._timeout,
            limits=_limits(),
            follow_redirects=False,
            headers=_HEADERS,
        )
        # the TCP connection under a TLS handshake that is cancelled is closed
        # now, not when the garbage collector finds it (private, as in the
        # sync transport; tests/test_client_cancellation.py fails without it)
        pool = getattr(getattr(client, "_transport", None), "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is not None:
            pool._network_backend = _ClosingBackend(backend)  # type: ignore[union-attr]
        else:  # pragma: no cover - a newer httpx
            log.warning("httpx changed: a cancelled TLS handshake leaves its socket to the gc")
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
        client = self._shards[shard]
        self._busy[shard] += 1
        held: Any = None  # the pool's record of this request, once answered
        try:
            async with client.stream(method, url, content=content, headers=headers, **kwargs) as r:
                held = _pool_request(r)
                reader = _Reader(r, limit, deadline, url, payload_id)
                inflate = _Inflater(r, reader)
                async for raw in _raw(r):
                    if not all(reader.feed(chunk) for chunk in inflate(raw)):
                        break
        except httpx.HTTPError as exc:
            raise _connection_error(exc, url, payload_id) from exc
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled: a task.cancel, a timeout
                await _evict_abandoned(client, held)
            raise
        finally:
            self._busy[shard] -= 1
        return reader.result(method)


class _ClosingStream(httpcore.AsyncNetworkStream):
    """A TCP stream whose TLS handshake, if interrupted by anything (a
    cancel included), closes it: httpcore's anyio stream closes it only on an
    Exception, and a cancel is a BaseException, so its socket would wait for
    the garbage collector.  Once TLS is up, the TLS stream is used directly."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            return await self._stream.start_tls(ssl_context, server_hostname, timeout)
        except BaseException:
            await self._stream.aclose()  # closes the socket before its first await
            raise

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _ClosingBackend(httpcore.AsyncNetworkBackend):
    """httpcore's own backend, its TCP streams made :class:`_ClosingStream` s."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return _ClosingStream(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:  # pragma: no cover - nomyo speaks TCP
        return await self._backend.connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:  # pragma: no cover - httpcore retries are off
        await self._backend.sleep(seconds)


async def _raw(response: httpx.Response) -> AsyncIterator[bytes]:
    if response.is_stream_consumed:  # made read (httpx.MockTransport): decoded already
        yield response.content
        return
    async for raw in response.aiter_raw():
        yield raw


def _pool_request(response: httpx.Response) -> Any:
    """httpcore's record of the request behind ``response`` (private: None
    if a newer httpx or httpcore has moved it)."""
    stream = getattr(getattr(response, "stream", None), "_stream", None)
    return getattr(getattr(stream, "_httpcore_stream", None), "_pool_request", None)


async def _evict_abandoned(client: httpx.AsyncClient, held: Any) -> None:
    """After a cancelled request: take out of the pool what the cancel left
    behind, and close it.

    httpcore 1.0.9 cleans up after a cancel inside anyio's shields, which a
    native asyncio cancel (task.cancel(), asyncio.timeout) goes through
    (encode/httpcore#1093): the request can stay in the pool's queue with its
    connection ACTIVE, or a connection made for it stays NEW (#1099).
    Neither is ever used or closed again: the pool's slots fill with them
    (then every request waits for a slot) and their sockets stay open.  So:
    the request is removed if still there, every connection that is neither
    idle nor closed nor serving a live request is removed and closed, and
    the queue is re-assigned (a request waiting for a slot gets one).
    """
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    requests = getattr(pool, "_requests", None)
    connections = getattr(pool, "_connections", None)
    if pool is None or requests is None or connections is None:  # pragma: no cover
        return
    with pool._optional_thread_lock:
        if held is not None and held in requests:
            requests.remove(held)
        serving = {id(request.connection) for request in requests}
        closing = [
            connection
            for connection in connections
            if id(connection) not in serving
            and not connection.is_idle()
            and not connection.is_closed()
        ]
        for connection in closing:
            connections.remove(connection)
        closing += pool._assign_requests_to_connections()
    for connection in closing:
        with contextlib.suppress(Exception):
            await connection.aclose()
