"""The HTTP boundary without a network: the retry policy (parse_retry_after,
retry_delay, should_retry), the one status map (error_for_status), httpx
failures turned into nomyo exceptions, and capped reads through
``httpx.MockTransport`` in the sync and async transports."""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import math
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nomyo import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    ForbiddenError,
    InvalidRequestError,
    NomyoError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    _transport,
)
from nomyo._constants import (
    INFLATE_PIECE,
    INITIAL_RETRY_DELAY,
    MAX_ERROR_BODY_BYTES,
    MAX_PUBLIC_KEY_BYTES,
    MAX_RETRY_DELAY,
    RETRY_AFTER_CAP,
)
from nomyo._exceptions import error_for_status
from nomyo._transport import (
    AsyncTransport,
    SyncTransport,
    _connection_error,
    _status_error,
    parse_retry_after,
    retry_delay,
    should_retry,
)

URL = "https://router.invalid/v1/chat/secure_completion"
PAYLOAD_ID = "3f1c6a52-6d0e-4d2e-9a43-2b7f3f0c9d11"
NOW = 1_700_000_000.0
CHUNK = 4096

# PROTOCOL.md's error table, written out rather than derived from the code under test
TABLE: list[tuple[int, type[APIError], bool]] = [
    (400, InvalidRequestError, False),
    (401, AuthenticationError, False),
    (403, ForbiddenError, False),
    (404, APIError, False),
    (429, RateLimitError, True),
    (500, ServerError, True),
    (502, APIError, True),
    (503, ServiceUnavailableError, True),
    (504, APIError, True),
]


def never() -> float:
    raise AssertionError("rand must not be called when the router gave Retry-After")


# ---------------------------------------------------------------- parse_retry_after


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("0", 0.0),
        ("1", 1.0),
        ("1.5", 1.5),
        (" 7 ", 7.0),
        ("-3", 0.0),
        ("abc", None),
        ("", None),
        ("inf", None),
        ("-inf", None),
        ("nan", None),
        ("1e400", None),  # overflows to inf
    ],
)
def test_parse_retry_after_delta_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_http_date_uses_the_given_now() -> None:
    date = email.utils.formatdate(NOW + 30, usegmt=True)
    assert parse_retry_after(date, now=NOW) == pytest.approx(30, abs=1)
    # the same header read at other moments: `now` is honoured, not the wall clock
    assert parse_retry_after(date, now=NOW - 30) == pytest.approx(60, abs=1)
    assert parse_retry_after(date, now=NOW + 30) == pytest.approx(0, abs=1)


def test_parse_retry_after_http_date_in_the_past_is_zero() -> None:
    date = email.utils.formatdate(NOW - 3600, usegmt=True)
    assert parse_retry_after(date, now=NOW) == 0.0
    # positive control: the same date is a positive wait when read before it
    assert parse_retry_after(date, now=NOW - 7200) == pytest.approx(3600, abs=1)


_http_dates = st.floats(min_value=0, max_value=2e11).map(
    lambda t: email.utils.formatdate(t, usegmt=True)
)
_numbers = st.from_regex(
    r"\s*[-+]?[0-9]{0,400}(\.[0-9]{0,20})?([eE][-+]?[0-9]{1,4})?\s*", fullmatch=True
)


@given(value=st.one_of(st.text(), _http_dates, _numbers), now=st.floats(0, 2e11))
def test_parse_retry_after_never_raises(value: str, now: float) -> None:
    result = parse_retry_after(value, now=now)
    assert result is None or (isinstance(result, float) and math.isfinite(result) and result >= 0)


# ---------------------------------------------------------------- retry_delay


def backoff_schedule() -> list[float]:
    """INITIAL_RETRY_DELAY doubling, up to and including the first capped value."""
    out = [INITIAL_RETRY_DELAY]
    while out[-1] < MAX_RETRY_DELAY:
        out.append(min(out[-1] * 2, MAX_RETRY_DELAY))
    return out


def test_retry_delay_doubles_then_caps_without_jitter() -> None:
    schedule = backoff_schedule()
    assert len(schedule) >= 3  # the constants leave room for doubling to show
    for attempt, expected in enumerate(schedule):
        assert retry_delay(attempt, None, rand=lambda: 0.0) == pytest.approx(expected)
    for attempt in range(len(schedule), len(schedule) + 20):
        assert retry_delay(attempt, None, rand=lambda: 0.0) == MAX_RETRY_DELAY
    assert retry_delay(1, None, rand=lambda: 0.0) == pytest.approx(2 * INITIAL_RETRY_DELAY)


def test_retry_delay_jitter_is_at_most_a_quarter_down() -> None:
    for attempt, base in enumerate(backoff_schedule()):
        assert retry_delay(attempt, None, rand=lambda: 1.0) == pytest.approx(0.75 * base)
        assert retry_delay(attempt, None, rand=lambda: 0.5) == pytest.approx(0.875 * base)


@given(attempt=st.integers(0, 1000), r=st.floats(0.0, 1.0, exclude_max=True))
def test_retry_delay_stays_within_jitter_band(attempt: int, r: float) -> None:
    base = min(INITIAL_RETRY_DELAY * 2.0**attempt, MAX_RETRY_DELAY)
    delay = retry_delay(attempt, None, rand=lambda: r)
    assert 0.75 * base <= delay <= base


def test_retry_delay_default_rand_is_jittered_within_band() -> None:
    delays = {retry_delay(2, None) for _ in range(200)}
    base = min(INITIAL_RETRY_DELAY * 4, MAX_RETRY_DELAY)
    assert all(0.75 * base <= d <= base for d in delays)
    assert len(delays) > 1  # positive control: jitter is really there


def test_retry_delay_large_attempt_is_capped_not_overflowing() -> None:
    assert retry_delay(1023, None, rand=lambda: 0.0) == MAX_RETRY_DELAY


def test_retry_delay_attempt_1024_is_capped() -> None:
    assert retry_delay(1024, None, rand=lambda: 0.0) == MAX_RETRY_DELAY


@pytest.mark.parametrize("attempt", [0, 1, 5, 50])
def test_retry_after_wins_over_backoff(attempt: int) -> None:
    assert retry_delay(attempt, 3.0, rand=never) == 3.0
    assert retry_delay(attempt, 0.0, rand=never) == 0.0
    assert retry_delay(attempt, 0.25, rand=never) == 0.25  # below the backoff: still honoured


def test_retry_after_is_capped() -> None:
    assert retry_delay(0, RETRY_AFTER_CAP * 10, rand=never) == RETRY_AFTER_CAP
    assert retry_delay(0, RETRY_AFTER_CAP, rand=never) == RETRY_AFTER_CAP
    # positive control: just under the cap is passed through, and is above MAX_RETRY_DELAY
    assert RETRY_AFTER_CAP - 1 > MAX_RETRY_DELAY
    assert retry_delay(0, RETRY_AFTER_CAP - 1, rand=never) == RETRY_AFTER_CAP - 1


# ---------------------------------------------------------------- should_retry


@pytest.mark.parametrize(("status", "cls", "retried"), TABLE)
def test_should_retry_by_status(status: int, cls: type[APIError], retried: bool) -> None:
    assert should_retry(error_for_status(status, None)) is retried
    assert should_retry(APIError("x", status_code=status)) is retried


def test_should_retry_without_a_status() -> None:
    assert should_retry(APIError("x")) is False
    # no cause: nothing proves the request was not sent
    assert should_retry(APIConnectionError("no route")) is False


def _connection_error_caused_by(cause: BaseException) -> APIConnectionError:
    try:
        raise APIConnectionError("no answer") from cause
    except APIConnectionError as exc:
        return exc


@pytest.mark.parametrize(
    ("cause", "retried"),
    [
        (httpx.ConnectError("refused"), True),  # nothing sent
        (httpx.RemoteProtocolError("server disconnected"), False),  # sent, maybe in full
        (httpx.ReadError("reset"), False),
        (httpx.WriteError("broken pipe"), False),
        (httpx.ProtocolError("bad answer"), False),
    ],
)
def test_should_retry_connection_failures_only_before_sending(
    cause: BaseException, retried: bool
) -> None:
    assert should_retry(_connection_error_caused_by(cause)) is retried


def _timeout_caused_by(cause: BaseException | None) -> APITimeoutError:
    try:
        if cause is None:
            raise APITimeoutError("timed out")
        raise APITimeoutError("timed out") from cause
    except APITimeoutError as exc:
        return exc


@pytest.mark.parametrize(
    ("cause", "retried"),
    [
        (httpx.ConnectTimeout("connect"), True),
        (httpx.PoolTimeout("pool"), True),
        (httpx.ReadTimeout("read"), False),
        (httpx.WriteTimeout("write"), False),
        (None, False),
    ],
)
def test_should_retry_timeouts_by_phase(cause: BaseException | None, retried: bool) -> None:
    error = _timeout_caused_by(cause)
    assert error.__cause__ is cause
    assert should_retry(error) is retried


# ---------------------------------------------------------------- error_for_status


@pytest.mark.parametrize(("status", "cls", "retried"), [*TABLE, (418, APIError, False)])
def test_error_for_status_maps_the_table(status: int, cls: type[APIError], retried: bool) -> None:
    body = {"detail": "the router says no"}
    exc = error_for_status(status, body, payload_id=PAYLOAD_ID)
    assert type(exc) is cls
    assert isinstance(exc, NomyoError)
    assert exc.message == "the router says no"
    assert exc.status_code == status
    assert exc.error_details is body
    assert exc.payload_id == PAYLOAD_ID
    assert str(exc) == "the router says no"  # the message alone, as 0.2.9 gives it


def test_error_for_status_passes_retry_after_to_rate_limit_error() -> None:
    exc = error_for_status(429, {"detail": "slow"}, retry_after=12.5)
    assert isinstance(exc, RateLimitError)
    assert exc.retry_after == 12.5
    assert error_for_status(429, None).retry_after is None


@pytest.mark.parametrize(
    "body",
    [
        None,
        ["detail", "SECRET-BODY"],
        "SECRET-BODY",
        42,
        {},
        {"detail": ""},
        {"detail": None},
        {"detail": 123},
        {"detail": ["SECRET-BODY"]},
        {"detail": {"msg": "SECRET-BODY"}},
        {"message": "SECRET-BODY"},
    ],
)
@pytest.mark.parametrize(("status", "cls", "retried"), [*TABLE, (418, APIError, False)])
def test_error_for_status_generic_message(
    body: Any, status: int, cls: type[APIError], retried: bool
) -> None:
    exc = error_for_status(status, body, payload_id=PAYLOAD_ID)
    assert type(exc) is cls
    assert exc.status_code == status
    assert exc.error_details is body
    assert exc.payload_id == PAYLOAD_ID
    assert isinstance(exc.message, str) and exc.message
    assert str(exc) == exc.message
    assert "SECRET" not in str(exc) and "SECRET" not in exc.message


def test_error_for_status_unknown_status_names_it() -> None:
    assert str(error_for_status(418, None)) == "unexpected status 418"


def test_only_detail_reaches_the_message() -> None:
    body = {"detail": "visible detail", "trace": "SECRET-TRACE", "key": "sk-SECRET"}
    exc = error_for_status(500, body)
    assert "visible detail" in str(exc)  # positive control: the detail does reach it
    assert "SECRET" not in str(exc) and "SECRET" not in repr(exc)
    assert exc.error_details["trace"] == "SECRET-TRACE"  # kept for the caller, not printed


# ---------------------------------------------------------------- _status_error / _connection_error


def test_status_error_reads_retry_after_from_a_real_response() -> None:
    response = httpx.Response(
        status_code=429, headers={"Retry-After": "2"}, content=b'{"detail":"slow down"}'
    )
    exc = _status_error(response, response.content, PAYLOAD_ID)
    assert type(exc) is RateLimitError
    assert exc.retry_after == 2.0
    assert exc.message == "slow down"
    assert exc.error_details == {"detail": "slow down"}
    assert exc.payload_id == PAYLOAD_ID


def test_status_error_keeps_retry_after_for_503_backoff() -> None:
    response = httpx.Response(503, headers={"Retry-After": "5"})
    exc = _status_error(response, b"", None)
    assert type(exc) is ServiceUnavailableError
    assert exc.retry_after == 5.0
    no_header = _status_error(httpx.Response(503), b"", None)
    assert no_header.retry_after is None


@pytest.mark.parametrize(
    "body",
    [b"", b"<html>Bad Gateway</html>", b"\xff\xfe\x00garbage", b'{"detail": "trunc', b"[1, 2]"],
)
def test_status_error_non_json_bodies(body: bytes) -> None:
    exc = _status_error(httpx.Response(502), body, None)
    assert type(exc) is APIError
    assert exc.status_code == 502
    assert exc.message == "bad gateway"


def test_status_error_nested_json_within_limits() -> None:
    body = b"[" * 100 + b"]" * 100
    exc = _status_error(httpx.Response(500), body, None)
    assert type(exc) is ServerError
    assert exc.message == "the router failed"


def test_connection_error_types_and_messages() -> None:
    refused = _connection_error(httpx.ConnectError("[Errno 111] refused"), URL, PAYLOAD_ID)
    assert type(refused) is APIConnectionError
    assert refused.status_code is None and refused.payload_id == PAYLOAD_ID
    assert URL in str(refused) and "ConnectError" in str(refused)

    connect = _connection_error(httpx.ConnectTimeout("slow"), URL, None)
    assert type(connect) is APITimeoutError and "connecting to" in str(connect)
    read = _connection_error(httpx.ReadTimeout("slow"), URL, None)
    assert type(read) is APITimeoutError and "waiting for" in str(read)
    pool = _connection_error(httpx.PoolTimeout("slow"), URL, None)
    assert type(pool) is APITimeoutError

    tls = _connection_error(
        httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"), URL, None
    )
    assert type(tls) is APIConnectionError
    assert "TLS certificate verification failed" in str(tls)
    assert "TLS" not in str(refused)  # positive control: only said when it is so


# ---------------------------------------------------------------- capped reads (MockTransport)

Handler = Callable[[httpx.Request], httpx.Response]


def stream(kind: str, chunks: Iterable[bytes], pulled: list[int] | None = None) -> Any:
    """A response body httpx cannot know the length of, counting what is read."""
    pulled = pulled if pulled is not None else []

    def sync() -> Iterator[bytes]:
        for chunk in chunks:
            pulled.append(len(chunk))
            yield chunk

    async def asynchronous() -> AsyncIterator[bytes]:
        for chunk in chunks:
            pulled.append(len(chunk))
            yield chunk

    return sync() if kind == "sync" else asynchronous()


def fill(total: int, byte: bytes = b"x") -> Iterator[bytes]:
    while total > 0:
        n = min(CHUNK, total)
        yield byte * n
        total -= n


def call(kind: str, handler: Handler, *, get_text: bool = False, **kwargs: Any) -> Any:
    """One SyncTransport/AsyncTransport request against ``handler``."""
    kwargs.setdefault("payload_id", PAYLOAD_ID)
    if kind == "sync":
        transport = SyncTransport(verify=True, timeout=httpx.Timeout(5))
        transport._http.close()
        transport._http = httpx.Client(transport=httpx.MockTransport(handler))
        try:
            if get_text:
                return transport.get_text(URL)
            return transport.request("POST", URL, content=b"sealed", **kwargs)
        finally:
            transport.close()

    async def main() -> Any:
        transport = AsyncTransport(verify=True, timeout=httpx.Timeout(5))
        await transport._http.aclose()
        transport._http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        try:
            if get_text:
                return await transport.get_text(URL)
            return await transport.request("POST", URL, content=b"sealed", **kwargs)
        finally:
            await transport.aclose()

    return asyncio.run(main())


KINDS = pytest.mark.parametrize("kind", ["sync", "async"])


@KINDS
def test_request_sends_what_it_is_given(kind: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"answer")

    body = call(kind, handler, headers={"X-Payload-ID": PAYLOAD_ID}, limit=100)
    assert body == b"answer"
    (request,) = seen
    assert request.method == "POST" and str(request.url) == URL
    assert request.content == b"sealed"
    assert request.headers["X-Payload-ID"] == PAYLOAD_ID


@KINDS
def test_body_exactly_at_the_limit_is_read(kind: str) -> None:
    limit = 10_000
    declared = call(kind, lambda r: httpx.Response(200, content=b"y" * limit), limit=limit)
    assert declared == b"y" * limit
    streamed = call(
        kind, lambda r: httpx.Response(200, content=stream(kind, fill(limit))), limit=limit
    )
    assert streamed == b"x" * limit


@KINDS
def test_declared_length_over_the_limit_is_refused_unread(kind: str) -> None:
    limit = 10_000
    pulled: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers={"Content-Length": str(limit + 1)},
            content=stream(kind, fill(limit + 1), pulled),
        )

    with pytest.raises(APIError, match="max_response_bytes") as info:
        call(kind, handler, limit=limit)
    assert type(info.value) is APIError
    assert info.value.status_code is None and info.value.payload_id == PAYLOAD_ID  # refused by us
    assert str(limit) in str(info.value)
    assert pulled == []  # refused on the header, before reading any of it


@KINDS
@pytest.mark.parametrize("announced", [0, 1, 4095, 4096, 8999, 9000, 9001, 10_000])
def test_body_is_what_arrived_whatever_content_length_said(kind: str, announced: int) -> None:
    # the buffer is allocated at the announced size; the answer is still
    # exactly the bytes that came, fewer or more (h11 refuses both on a real
    # connection; a mock transport lets them through)
    pieces = [bytes([65 + i % 26]) * min(CHUNK, 9000 - i * CHUNK) for i in range(3)]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"Content-Length": str(announced)}, content=stream(kind, pieces)
        )

    body = call(kind, handler, limit=10_000)
    assert body == b"".join(pieces) and len(body) == 9000
    assert isinstance(body, bytearray)


@KINDS
def test_streamed_body_over_the_limit_stops_reading(kind: str) -> None:
    limit = 10_000
    pulled: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        response = httpx.Response(200, content=stream(kind, fill(10 * 1024 * 1024), pulled))
        assert "content-length" not in response.headers
        return response

    with pytest.raises(APIError, match="max_response_bytes") as info:
        call(kind, handler, limit=limit)
    assert type(info.value) is APIError
    assert limit < sum(pulled) <= limit + CHUNK


@KINDS
def test_limit_applies_to_decoded_bytes(kind: str) -> None:
    limit = 10_000
    compressed = gzip.compress(b"\0" * (limit * 20))
    assert len(compressed) < limit

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=compressed)

    with pytest.raises(APIError, match="max_response_bytes"):
        call(kind, handler, limit=limit)
    # positive control: the same encoding under the limit decodes and is returned
    small = gzip.compress(b"\0" * 100)
    ok = call(
        kind,
        lambda r: httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=small),
        limit=limit,
    )
    assert ok == b"\0" * 100


@KINDS
def test_huge_error_body_is_truncated_and_mapped(kind: str) -> None:
    pulled: list[int] = []
    prefix = b'{"detail": "boom"}'

    def handler(request: httpx.Request) -> httpx.Response:
        chunks = [prefix, *fill(8 * 1024 * 1024, b" ")]
        return httpx.Response(500, content=stream(kind, chunks, pulled))

    with pytest.raises(ServerError) as info:
        call(kind, handler, limit=100)
    # the truncated prefix is still JSON here, so the detail comes through
    assert info.value.message == "boom"
    assert info.value.error_details == {"detail": "boom"}
    assert info.value.payload_id == PAYLOAD_ID
    assert sum(pulled) <= MAX_ERROR_BODY_BYTES + CHUNK


@KINDS
def test_huge_declared_error_body_is_not_too_large(kind: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = b"<html>" + b"z" * (2 * MAX_ERROR_BODY_BYTES)
        return httpx.Response(503, content=body)  # Content-Length declared, over every cap

    with pytest.raises(ServiceUnavailableError) as info:
        call(kind, handler, limit=100)
    assert info.value.message == "the router is unavailable"
    assert "max_response_bytes" not in str(info.value)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_deeply_nested_json_error_body(kind: str) -> None:
    body = b"[" * 60_000
    assert len(body) <= MAX_ERROR_BODY_BYTES
    with pytest.raises(ServerError):
        call(kind, lambda r: httpx.Response(500, content=body), limit=100)


@KINDS
@pytest.mark.parametrize(("status", "cls", "retried"), TABLE)
def test_error_statuses_through_the_transport(
    kind: str, status: int, cls: type[APIError], retried: bool
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers={"Retry-After": "2"}, json={"detail": "nope"})

    with pytest.raises(APIError) as info:
        call(kind, handler, limit=100)
    assert type(info.value) is cls
    assert info.value.status_code == status and info.value.message == "nope"
    assert info.value.retry_after == 2.0
    assert should_retry(info.value) is retried


@KINDS
def test_redirect_is_an_error(kind: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            302, headers={"Location": "https://elsewhere.invalid/"}, content=b"moved"
        )

    with pytest.raises(APIError) as info:
        call(kind, handler, limit=100)
    assert info.value.status_code == 302


@KINDS
@pytest.mark.parametrize(
    ("error", "cls", "retried"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), APIConnectionError, True),
        (httpx.RemoteProtocolError("peer closed"), APIConnectionError, False),
        (httpx.ConnectTimeout("connect"), APITimeoutError, True),
        (httpx.PoolTimeout("pool"), APITimeoutError, True),
        (httpx.ReadTimeout("read"), APITimeoutError, False),
        (httpx.WriteTimeout("write"), APITimeoutError, False),
    ],
)
def test_transport_failures_are_mapped(
    kind: str, error: httpx.HTTPError, cls: type[APIError], retried: bool
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(APIError) as info:
        call(kind, handler, limit=100)
    assert type(info.value) is cls
    assert info.value.__cause__ is error
    assert info.value.status_code is None and info.value.payload_id == PAYLOAD_ID
    assert URL in str(info.value)
    assert should_retry(info.value) is retried


@KINDS
def test_read_timeout_in_the_middle_of_the_body(kind: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"partial"
        raise httpx.ReadTimeout("stalled")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=stream(kind, chunks()))

    with pytest.raises(APITimeoutError) as info:
        call(kind, handler, limit=1000)
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)
    assert should_retry(info.value) is False


@KINDS
def test_deadline_in_the_past(kind: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=stream(kind, fill(3 * CHUNK)))

    with pytest.raises(APITimeoutError) as info:
        call(kind, handler, limit=100_000, deadline=time.monotonic() - 1)
    assert info.value.payload_id == PAYLOAD_ID
    # positive control: the same answer with time left is read in full
    body = call(kind, handler, limit=100_000, deadline=time.monotonic() + 60)
    assert body == b"x" * 3 * CHUNK


@KINDS
def test_get_text_is_capped_at_max_public_key_bytes(kind: str) -> None:
    pem = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    assert call(kind, lambda r: httpx.Response(200, text=pem), get_text=True) == pem
    too_big = b"A" * (MAX_PUBLIC_KEY_BYTES + 1)
    with pytest.raises(APIError, match="max_response_bytes"):
        call(kind, lambda r: httpx.Response(200, content=too_big), get_text=True)


def test_async_pools_open_only_when_every_pool_is_busy() -> None:
    from nomyo._constants import POOL_SHARD_REQUESTS

    transport = AsyncTransport(verify=True, timeout=httpx.Timeout(5))
    assert transport._pick() == 0  # one request at a time: always the first pool
    transport._busy[0] = POOL_SHARD_REQUESTS - 1
    assert transport._pick() == 0 and len(transport._shards) == 1
    transport._busy[0] = POOL_SHARD_REQUESTS
    assert transport._pick() == 1 and len(transport._shards) == 2  # a second pool, now
    transport._busy[1] = POOL_SHARD_REQUESTS
    transport._busy[0] = 0
    assert transport._pick() == 0 and len(transport._shards) == 2  # back to the first
    asyncio.run(transport.aclose())


# ---------------------------------------------------------------- compressed answers


def gzip_bomb(decoded: int) -> bytes:
    """``decoded`` zero bytes, gzip-compressed (about 1000:1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * (1024 * 1024)
    parts = [packer.compress(zeros) for _ in range(decoded // len(zeros))]
    return b"".join(parts) + packer.flush()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return gzip_bomb(64 * 1024 * 1024)


@KINDS
@pytest.mark.parametrize(
    ("what", "status", "cap", "raised"),
    [
        ("answer", 200, 100_000, APIError),
        ("error body", 500, MAX_ERROR_BODY_BYTES, ServerError),
        ("router key", 200, MAX_PUBLIC_KEY_BYTES, APIError),
    ],
)
def test_a_gzip_bomb_is_inflated_a_piece_at_a_time_up_to_the_cap(
    kind: str,
    what: str,
    status: int,
    cap: int,
    raised: type[APIError],
    bomb: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 64 KiB on the wire that inflate to 64 MiB, in one chunk: httpx's
    # iter_bytes would hand all 64 MiB over at once
    assert len(bomb) < 100_000
    fed: list[int] = []
    feed = _transport._Reader.feed

    def counted(self: Any, chunk: bytes) -> bool:
        fed.append(len(chunk))
        return feed(self, chunk)

    monkeypatch.setattr(_transport._Reader, "feed", counted)

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Encoding": "gzip", "Content-Length": str(len(bomb))}
        return httpx.Response(status, headers=headers, content=stream(kind, [bomb]))

    if what == "router key":
        with pytest.raises(raised, match="max_response_bytes"):
            call(kind, handler, get_text=True)
    else:
        with pytest.raises(raised):
            call(kind, handler, limit=cap)
    assert max(fed) <= INFLATE_PIECE
    assert cap < sum(fed) <= cap + INFLATE_PIECE


@KINDS
def test_a_compressed_answer_under_the_cap_is_read_whole(kind: str) -> None:
    # the control: gzip and deflate (zlib framing) are decoded, in pieces
    plain = bytes(range(256)) * 2000
    for encoding, packed in (("gzip", gzip.compress(plain)), ("deflate", zlib.compress(plain))):

        def handler(
            request: httpx.Request, packed: bytes = packed, encoding: str = encoding
        ) -> Any:
            chunks = [packed[i : i + 1000] for i in range(0, len(packed), 1000)]
            headers = {"Content-Encoding": encoding, "Content-Length": str(len(packed))}
            return httpx.Response(200, headers=headers, content=stream(kind, chunks))

        assert call(kind, handler, limit=len(plain)) == plain


@KINDS
@pytest.mark.parametrize(
    ("encoding", "body", "match"),
    [("br", b"\x0b\x02\x80hello\x03", "not asked for"), ("gzip", b"not gzip", "malformed")],
)
def test_an_answer_in_another_or_a_broken_encoding_is_refused(
    kind: str, encoding: str, body: bytes, match: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"Content-Encoding": encoding}, content=stream(kind, [body])
        )

    with pytest.raises(APIError, match=match) as info:
        call(kind, handler, limit=1000)
    assert info.value.status_code is None


def test_only_the_encodings_decoded_in_pieces_are_asked_for() -> None:
    # httpx would offer zstd and br when installed: decoded whole by iter_bytes
    sync = SyncTransport(verify=True, timeout=httpx.Timeout(5))
    assert sync._http.headers["Accept-Encoding"] == "gzip, deflate"
    sync.close()

    async def main() -> None:
        transport = AsyncTransport(verify=True, timeout=httpx.Timeout(5))
        assert transport._http.headers["Accept-Encoding"] == "gzip, deflate"
        await transport.aclose()

    asyncio.run(main())
