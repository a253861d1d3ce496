"""httpx transports that carry an OpenAI-style SDK's chat completions end to end
encrypted: ``SecureTransport`` (sync) and ``AsyncSecureTransport``.  Any
httpx- or httpx2-based client can take them (the openai SDK, LangChain's
ChatOpenAI, ...); nomyo's clients do the protocol, this module only translates.

::

    POST .../chat/completions   the JSON body -> SyncSecureChatCompletion.create()
                                (stream: true -> the one answer as SSE chunks)
    GET  .../models             answered here: the ``models`` given (routers list none)
    anything else               SecurityError, before anything is sent

The router is the scheme and host of each request (one nomyo client per
router); ``Authorization: Bearer`` is the router's API key, ``X-Security-Tier``
the tier.  Failures become what the SDK maps to its own errors::

    APIError with a status      that status, OpenAI's error body, Retry-After
    APIConnectionError or       nothing was sent (connect failed or timed out, no
    APITimeoutError             pooled connection): httpx.ConnectError or
                                httpx.ConnectTimeout, which the SDK may retry;
                                the request may have reached the router (dropped
                                or timed out after sending): never resent, so
                                openai.APIConnectionError / APITimeoutError once
                                the SDK is loaded (it passes those on as they
                                are), else the nomyo exception itself
    ValueError/TypeError        400, x-should-retry: false (nothing was sent)
    SecurityError               raised; once openai is imported it is also an
                                openai.OpenAIError, which the SDK (2.45+) neither
                                wraps nor retries

Retries are the SDK's (its ``max_retries``, Retry-After honoured): the nomyo
clients here make one attempt each, so a retry seals afresh and policies never
stack.  A successful answer is an httpx.Response whose ``json()`` returns the
dict that nomyo decrypted: the SDK builds its typed objects from it without the
plaintext being serialised again (``content`` serialises only when read).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Sequence
from types import ModuleType
from typing import Any, Generic, TypeVar

import httpx

from ._chunks import chunks_of
from ._client import (
    AttestationVerifier,
    Config,
    SecureChatCompletion,
    SyncSecureChatCompletion,
)
from ._constants import DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_TIMEOUT
from ._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    RateLimitError,
    SecurityError,
)
from ._transport import Verify, should_retry
from .memory import wipe

__all__ = ["AsyncSecureTransport", "SecureTransport"]

#: the one model listed when none are configured (as ``nomyo proxy``)
DEFAULT_MODEL = "nomyo"
#: create()'s own options: never taken from a request body
RESERVED_FIELDS = ("api_key", "base_url", "security_tier", "self")
ALLOWED = "only POST .../chat/completions and GET .../models can be carried end to end encrypted"


# ---------------------------------------------------------------- requests


def _kind(request: Any) -> str:
    """ "chat", "models", or SecurityError: what the protocol cannot carry is refused."""
    method = request.method.upper()
    path = request.url.path.rstrip("/")
    if method == "POST" and path.endswith("/chat/completions"):
        return "chat"
    if method == "GET" and path.endswith("/models"):
        return "models"
    shown = path[:200] if path.isprintable() else ascii(path[:200])
    raise _security_error(
        f"nomyo refused {method} {shown}: {ALLOWED}; nothing was sent (it would have "
        "left in plain text)"
    )


_SDK_SECURITY: dict[type[Any], type[SecurityError]] = {}


def _security_error(message: str) -> SecurityError:
    """A SecurityError that, once the openai SDK is loaded, is also an
    ``openai.OpenAIError``: the SDK (2.45 and later) re-raises those as they
    are, without wrapping them in APIConnectionError or retrying them."""
    openai = sys.modules.get("openai")
    base = getattr(openai, "OpenAIError", None)
    if not isinstance(base, type) or not issubclass(base, Exception):
        return SecurityError(message)
    cls = _SDK_SECURITY.get(base)
    if cls is None:
        cls = type("SecurityError", (SecurityError, base), {"__module__": "nomyo"})
        _SDK_SECURITY[base] = cls
    return cls(message)


def _final(exc: APIConnectionError, request: Any) -> Exception:
    """A failure after the request may have reached the router, as an
    exception the SDK passes on without retrying: the openai SDK's own
    connection or timeout error (an ``openai.OpenAIError``) once it is
    loaded, else nomyo's, which no httpx-based retry loop takes for a
    transport error."""
    openai: Any = sys.modules.get("openai")
    try:
        final: Exception
        if isinstance(exc, APITimeoutError):
            final = openai.APITimeoutError(request=request)
        else:
            final = openai.APIConnectionError(message=str(exc), request=request)
    except (AttributeError, TypeError):  # no openai, or one that builds them otherwise
        return exc
    return final


def _router(request: Any) -> str:
    parts = urllib.parse.urlsplit(str(request.url))
    host = parts.netloc.rpartition("@")[2]  # never credentials in a URL
    return f"{parts.scheme}://{host}"


def _bearer(request: Any) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class _Refused(Exception):
    """A request refused before anything was sent: answered as a 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _parse(request: Any) -> tuple[dict[str, Any], bool, bool]:
    """(create()'s keyword arguments, stream, include_usage): the parsed body
    itself, which the caller wipes when done."""
    try:
        body = json.loads(request.content)
    except (ValueError, RecursionError) as exc:
        raise _Refused("the body is not valid JSON") from exc
    if not isinstance(body, dict):
        wipe(body)
        raise _Refused("the body must be a JSON object (a chat completion request)")
    for name in RESERVED_FIELDS:
        if name in body:
            wipe(body)
            raise _Refused(f"unsupported parameter: {name}", name)
    stream = body.pop("stream", None)
    stream_options = body.pop("stream_options", None)
    if stream is not None and not isinstance(stream, bool):
        wipe(body)
        raise _Refused("stream must be true or false", "stream")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    body.setdefault("model", None)
    body.setdefault("messages", None)
    tier = request.headers.get("x-security-tier")
    if tier is not None:
        body["security_tier"] = tier
    key = _bearer(request)
    if key is not None:
        body["api_key"] = key
    return body, bool(stream), include_usage


# ---------------------------------------------------------------- responses


def _module(request: Any) -> ModuleType:
    """httpx, or httpx2 (the openai SDK's since 3.x): the module of ``request``,
    whose Response and exceptions the client expects."""
    module = sys.modules.get(type(request).__module__.partition(".")[0])
    return module if module is not None and hasattr(module, "Response") else httpx


_DECODED: dict[ModuleType, type[Any]] = {}


def _decoded_class(module: ModuleType) -> type[Any]:
    """A Response subclass of ``module`` carrying an already-decoded JSON answer."""
    cls = _DECODED.get(module)
    if cls is not None:
        return cls

    class DecodedResponse(module.Response):  # type: ignore[misc,name-defined]
        """``json()`` is the dict nomyo decrypted (the same object every time);
        ``content`` (and ``text``) that dict serialised, made only if someone
        asks; the body the client reads is empty."""

        _serialised: bytes | None = None

        def __init__(self, answer: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            self._answer = answer
            super().__init__(*args, **kwargs)

        def json(self, **kwargs: Any) -> Any:
            return self._answer

        @property
        def content(self) -> bytes:
            if self._serialised is None:
                self._serialised = json.dumps(self._answer, ensure_ascii=False).encode()
            return self._serialised

    DecodedResponse.__qualname__ = DecodedResponse.__name__ = "DecodedResponse"
    _DECODED[module] = DecodedResponse
    return DecodedResponse


def _json_response(module: ModuleType, status: int, body: Any, headers: dict[str, str]) -> Any:
    return module.Response(status, json=body, headers=headers)


def _error_type(status: int) -> tuple[str, str | None]:
    if status == 401:
        return "authentication_error", "invalid_api_key"
    if status == 403:
        return "permission_error", None
    if status == 429:
        return "rate_limit_error", "rate_limit_exceeded"
    if status >= 500:
        return "api_error", None
    return "invalid_request_error", None


def _error_response(
    module: ModuleType,
    status: int,
    message: str,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    kind, code = _error_type(status)
    error = {"message": message, "type": kind, "param": param, "code": code}
    return _json_response(module, status, {"error": error}, headers or {})


def _failure(module: ModuleType, request: Any, exc: BaseException) -> Any:
    """The response (or the exception to raise) for a failed create()."""
    if isinstance(exc, _Refused | ValueError | TypeError):  # nothing was sent
        message = exc.message if isinstance(exc, _Refused) else str(exc)
        param = exc.param if isinstance(exc, _Refused) else None
        return _error_response(
            module, 400, message[:1000], param=param, headers={"x-should-retry": "false"}
        )
    if isinstance(exc, APIConnectionError):  # APITimeoutError too
        if not should_retry(exc):  # the router may have it: no SDK may send it again
            raise _final(exc, request) from exc
        if isinstance(exc, APITimeoutError):
            raise module.ConnectTimeout(str(exc), request=request) from exc
        raise module.ConnectError(str(exc), request=request) from exc
    if isinstance(exc, APIError):
        headers = {"x-payload-id": exc.payload_id} if exc.payload_id else {}
        status = exc.status_code
        if status is None or not 400 <= status <= 599:  # e.g. an answer over the size cap
            headers["x-should-retry"] = "false"
            return _error_response(module, 502, exc.message[:1000], headers=headers)
        if isinstance(exc, RateLimitError) and exc.retry_after is not None:
            headers["retry-after"] = str(math.ceil(exc.retry_after))
        return _error_response(module, status, exc.message[:1000], headers=headers)
    raise exc


def _answer_headers(answer: dict[str, Any]) -> dict[str, str]:
    metadata = answer.get("_metadata")
    payload_id = metadata.get("payload_id") if isinstance(metadata, dict) else None
    if not isinstance(payload_id, str):
        return {}
    return {"x-payload-id": payload_id, "x-request-id": payload_id}


def _events(answer: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """The chunks of ``answer``, each carrying its ``_metadata``."""
    metadata = answer.get("_metadata")
    chunks = chunks_of(answer, include_usage=include_usage)
    if isinstance(metadata, dict):
        for chunk in chunks:
            chunk["_metadata"] = metadata
    return chunks


def _event_bytes(chunk: dict[str, Any]) -> bytes:
    """One server-sent event; the intermediate str and bytes are wiped."""
    text = json.dumps(chunk, separators=(",", ":"), ensure_ascii=False)
    encoded = text.encode()
    wipe(text)
    try:
        return b"".join((b"data: ", encoded, b"\n\n"))
    finally:
        wipe(encoded)


class _SyncEvents(httpx.SyncByteStream):
    """Server-sent events made one at a time, each wiped once the reader moves
    on (wipe() leaves alone an event the reader still holds)."""

    def __init__(self, chunks: list[dict[str, Any]]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            event = _event_bytes(chunk)
            yield event
            wipe(event)
        yield b"data: [DONE]\n\n"

    def close(self) -> None:
        self._chunks = []


class _AsyncEvents(httpx.AsyncByteStream):
    def __init__(self, chunks: list[dict[str, Any]]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            event = _event_bytes(chunk)
            yield event
            wipe(event)
        yield b"data: [DONE]\n\n"

    async def aclose(self) -> None:
        self._chunks = []


def _stream_class(module: ModuleType, asynchronous: bool) -> type[Any]:
    """The event stream as ``module``'s byte stream type (httpx2 asserts its own)."""
    key = (module, asynchronous)
    cls = _STREAMS.get(key)
    if cls is None:
        base = _AsyncEvents if asynchronous else _SyncEvents
        native = module.AsyncByteStream if asynchronous else module.SyncByteStream
        cls = base if issubclass(base, native) else type(base.__name__, (base, native), {})
        _STREAMS[key] = cls
    return cls


_STREAMS: dict[tuple[ModuleType, bool], type[Any]] = {}


def _success(
    module: ModuleType, answer: dict[str, Any], stream: bool, include_usage: bool, is_async: bool
) -> Any:
    headers = _answer_headers(answer)
    if stream:
        events = _stream_class(module, is_async)(_events(answer, include_usage))
        headers.update({"content-type": "text/event-stream", "cache-control": "no-cache"})
        return module.Response(200, headers=headers, stream=events)
    return _decoded_class(module)(
        answer, 200, headers={**headers, "content-type": "application/json"}, content=b""
    )


def _models(module: ModuleType, listing: dict[str, Any]) -> Any:
    return _json_response(module, 200, listing, {})


# ---------------------------------------------------------------- the transports


def _check(client_options: dict[str, Any]) -> None:
    """Check the options now rather than at the first request (without
    making a key pair: a key_dir is read when the first client is made)."""
    options = dict(client_options)
    del options["key_dir"], options["key_password"]
    allow_http, secure_memory = options.pop("allow_http"), options.pop("secure_memory")
    Config.of("https://nomyo.invalid", allow_http, None, secure_memory, **options)


_DOC_PARAMS = """
    :param server_key_fingerprint: ``"sha256:<hex>"``: any other router key is
        refused (SecurityError naming the pin), and nothing is sent.
    :param verify: True, a CA file path or an ``ssl.SSLContext``.
    :param secure_memory: keep plaintexts and keys in locked, guarded memory.
    :param allow_http: allow ``http://`` routers (local development only).
    :param key_dir: load the client key pair from here, or create it here once.
    :param key_password: the password of the private key file in ``key_dir``.
    :param timeout: seconds for one attempt (the SDK retries), or an httpx.Timeout.
    :param max_response_bytes: the largest answer read.
    :param models: the names ``GET .../models`` lists (``"nomyo"`` when empty).
    :param attestation_verifier: ``verifier(attestation, payload_id)``, called
        with the router's ``_metadata["tpm_attestation"]`` before an answer is
        returned; it raises (or returns False) to reject: SecurityError.
    :param require_attestation: an answer without one is a SecurityError.
"""


class _Exchange:
    """One request's I/O-free steps, the same for both transports: refuse what
    cannot be carried, parse the body, map create()'s failure, wipe the body,
    build the response.  Only the create() call (and its await) is the
    transport's own, inside ``with exchange:`` (as httpx's two transports
    share one exception-mapping context manager)::

        exchange = _Exchange(request, listing, asynchronous)
        with exchange:
            if exchange.chat:
                body = exchange.parse()
                exchange.answer = <client>.create(**body)
        return exchange.response()
    """

    def __init__(self, request: Any, listing: dict[str, Any], asynchronous: bool) -> None:
        self.module = _module(request)
        self.chat = _kind(request) == "chat"  # SecurityError: nothing is sent
        self._request = request
        self._listing = listing
        self._asynchronous = asynchronous
        self._body: Any = None
        self._stream = self._include_usage = False
        self._failed: Any = None
        self.answer: dict[str, Any] | None = None

    def parse(self) -> dict[str, Any]:
        """create()'s keyword arguments (wiped when the block ends)."""
        body, self._stream, self._include_usage = _parse(self._request)
        self._body = body
        return body

    def __enter__(self) -> _Exchange:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        try:
            if isinstance(exc, _Refused | ValueError | TypeError | APIError):
                self._failed = _failure(self.module, self._request, exc)
                return True
            if isinstance(exc, SecurityError):  # e.g. the pin: never retried by the SDK
                raise _security_error(str(exc)) from exc
            return False
        finally:
            wipe(self._body)

    def response(self) -> Any:
        if self._failed is not None:
            return self._failed
        if self.answer is None:  # GET .../models
            return _models(self.module, self._listing)
        return _success(
            self.module, self.answer, self._stream, self._include_usage, self._asynchronous
        )


_C = TypeVar("_C", SyncSecureChatCompletion, SecureChatCompletion)


class _Transport(Generic[_C]):
    """What both transports share: the settings, checked when made, and one
    nomyo client per router (made by :meth:`_client`)."""

    def __init__(
        self,
        *,
        server_key_fingerprint: str | None = None,
        verify: Verify = True,
        secure_memory: bool = True,
        allow_http: bool = False,
        key_dir: Any = None,
        key_password: str | bytes | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        models: Sequence[str] = (),
        attestation_verifier: AttestationVerifier | None = None,
        require_attestation: bool = False,
    ) -> None:
        if isinstance(models, str) or not all(isinstance(m, str) and m for m in models):
            raise TypeError("models must be a sequence of non-empty strings")
        names = tuple(dict.fromkeys(models)) or (DEFAULT_MODEL,)
        #: what ``GET .../models`` answers
        self._listing = {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "created": 0, "owned_by": "nomyo"} for n in names
            ],
        }
        #: each router's nomyo client's options
        self._client_options: dict[str, Any] = dict(
            allow_http=allow_http,
            secure_memory=secure_memory,
            key_dir=key_dir,
            key_password=key_password,
            server_key_fingerprint=server_key_fingerprint,
            timeout=timeout,
            max_retries=0,  # the SDK's retries are the only ones
            max_response_bytes=max_response_bytes,
            verify=verify,
            attestation_verifier=attestation_verifier,
            require_attestation=require_attestation,
        )
        _check(self._client_options)
        self._clients: dict[str, _C] = {}
        self._lock = threading.Lock()  # the sync transport's (async: no await between)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} routers={sorted(self._clients)}>"

    _asynchronous: bool  # the response's stream type

    def _exchange(self, request: Any) -> _Exchange:
        return _Exchange(request, self._listing, self._asynchronous)


class SecureTransport(_Transport[SyncSecureChatCompletion], httpx.BaseTransport):
    """A sync httpx transport that sends chat completions end to end encrypted
    to the router named by each request's scheme and host.  Works with
    ``httpx.Client`` and ``httpx2.Client``.  Thread-safe.
    """

    __doc__ = (__doc__ or "") + _DOC_PARAMS

    _asynchronous = False

    def _client(self, router: str) -> SyncSecureChatCompletion:
        client = self._clients.get(router)
        if client is None:
            with self._lock:
                client = self._clients.get(router)
                if client is None:
                    client = SyncSecureChatCompletion(router, **self._client_options)
                    self._clients[router] = client
        return client

    def handle_request(self, request: Any) -> Any:
        exchange = self._exchange(request)
        with exchange:
            if exchange.chat:
                body = exchange.parse()
                exchange.answer = self._client(_router(request)).create(**body)
        return exchange.response()

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


class AsyncSecureTransport(_Transport[SecureChatCompletion], httpx.AsyncBaseTransport):
    """:class:`SecureTransport` for ``httpx.AsyncClient`` / ``httpx2.AsyncClient``."""

    __doc__ = (__doc__ or "") + _DOC_PARAMS

    _asynchronous = True

    def _client(self, router: str) -> SecureChatCompletion:
        client = self._clients.get(router)
        if client is None:  # no await in between: one client per router
            client = self._clients[router] = SecureChatCompletion(router, **self._client_options)
        return client

    async def handle_async_request(self, request: Any) -> Any:
        exchange = self._exchange(request)
        with exchange:
            if exchange.chat:
                body = exchange.parse()
                exchange.answer = await self._client(_router(request)).create(**body)
        return exchange.response()

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
