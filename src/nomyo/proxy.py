"""A local, plain OpenAI-compatible endpoint that encrypts every request end
to end with the nomyo client; knows no crypto itself.

::

    POST /v1/chat/completions   an OpenAI chat request -> client.create() -> chat.completion
                                (stream: true -> the same answer as chat.completion.chunk events)
    GET  /v1/models             the names given as ``models`` (routers list none)
    GET  /v1/models/{id}        one of them
    GET  /health                {"status": "ok"}

Errors have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``::

    a bad request (ValueError, nothing sent)   400 invalid_request_error
    APIError with an error status              that status: 401 authentication_error,
                                               429 rate_limit_error (+ Retry-After),
                                               5xx api_error
    APIConnectionError / APITimeoutError       502 / 504
    SecurityError                              502, always one generic message

Requests must be ``Content-Type: application/json``, so a web page cannot
spend the proxy's API key with a form or a "simple" cross-origin request.
The caller owns the client and closes it.  Logs method, path, status and
payload id: never a prompt, an answer or a key.  Needs the ``server`` extra.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
from collections.abc import Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._chunks import chunks_of
from ._client import SecureChatCompletion
from ._constants import PROXY_DEFAULT_MODEL as DEFAULT_MODEL
from ._constants import PROXY_MAX_BODY_BYTES as MAX_BODY_BYTES
from ._constants import PROXY_MAX_MESSAGE_CHARS as MAX_MESSAGE_CHARS
from ._constants import PROXY_MAX_PATH_CHARS as MAX_PATH_CHARS
from ._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    RateLimitError,
    SecurityError,
)
from .memory import wipe

__all__ = ["create_proxy_app", "is_loopback"]

log = logging.getLogger("nomyo.proxy")

#: create()'s own options (and its ``self``): never taken from a request body,
#: or a caller could send the proxy's API key to a router of its choosing
RESERVED_FIELDS = ("api_key", "base_url", "security_tier", "self")

VERIFICATION_FAILED = "the router's answer failed verification"
PIN_MISMATCH = "the router's key does not match the pinned one (--pin): nothing was sent"
TLS_FAILED = "TLS verification of the router failed (untrusted certificate?): nothing was sent"
_INTERNAL = "internal error in the nomyo proxy"


# ---------------------------------------------------------------- errors


class _Failure(Exception):
    """An answer in OpenAI's error shape (raised, or made from another exception)."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind  # OpenAI's "type"
        self.code = code
        self.param = param
        self.headers = headers or {}

    def response(self, payload_id: str | None = None) -> JSONResponse:
        headers = dict(self.headers)
        if payload_id:
            headers["X-Payload-ID"] = payload_id
        error = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status, headers=headers)


def _type_for(status: int) -> tuple[str, str | None]:
    """OpenAI's (type, code) for an error status."""
    if status == 401:
        return "authentication_error", "invalid_api_key"
    if status == 403:
        return "permission_error", None
    if status == 404:
        return "invalid_request_error", "not_found"
    if status == 429:
        return "rate_limit_error", "rate_limit_exceeded"
    if status >= 500:
        return "api_error", None
    return "invalid_request_error", None


def failure_for(exc: BaseException) -> _Failure:
    """The OpenAI error answer for an exception from ``client.create()``.

    ValueError is not mapped here: only the ones raised by the request's
    validation are the caller's fault, and those are turned into 400 where
    they are raised.
    """
    if isinstance(exc, _Failure):
        return exc
    if isinstance(exc, SecurityError):
        # the client's pin check, before anything is sent; any other
        # SecurityError stays opaque (no oracle on how an answer failed)
        if "does not match server_key_fingerprint" in str(exc):
            return _Failure(502, PIN_MISMATCH, "api_error", "pin_mismatch")
        return _Failure(502, VERIFICATION_FAILED, "api_error", "verification_failed")
    if isinstance(exc, APITimeoutError):
        return _Failure(504, "the router did not answer in time", "api_error", "timeout")
    if isinstance(exc, APIConnectionError):
        if "TLS certificate verification failed" in str(exc):
            return _Failure(502, TLS_FAILED, "api_error", "tls_verification_failed")
        return _Failure(502, "could not reach the router", "api_error", "connection_error")
    if isinstance(exc, APIError):
        status = exc.status_code
        if status is None or not 400 <= status <= 599:  # e.g. a 200 answer over the size cap
            return _Failure(502, "the router's answer could not be used", "api_error")
        kind, code = _type_for(status)
        headers: dict[str, str] = {}
        if isinstance(exc, RateLimitError) and exc.retry_after is not None:
            headers["Retry-After"] = str(math.ceil(exc.retry_after))
        return _Failure(status, exc.message[:MAX_MESSAGE_CHARS], kind, code, headers=headers)
    return _Failure(500, _INTERNAL, "api_error")


# ---------------------------------------------------------------- the request


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def _read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, read up to MAX_BODY_BYTES."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise _Failure(415, "the body must be JSON, sent as Content-Type: application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _Failure(413, f"the request is larger than {MAX_BODY_BYTES} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise _Failure(413, f"the request is larger than {MAX_BODY_BYTES} bytes")
        try:
            parsed = json.loads(body, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise _Failure(400, "the body is not valid JSON") from exc
    finally:
        wipe(body)
    if not isinstance(parsed, dict):
        wipe(parsed)
        raise _Failure(400, "the body must be a JSON object (a chat completion request)")
    return parsed


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _stream_options(body: dict[str, Any]) -> tuple[bool, bool]:
    """Take ``stream`` and ``stream_options`` out of ``body``: (stream, include_usage)."""
    stream = body.pop("stream", None)
    if stream is not None and not isinstance(stream, bool):
        raise _Failure(400, "stream must be true or false", param="stream")
    options = body.pop("stream_options", None)
    if options is not None and not isinstance(options, dict):
        raise _Failure(400, "stream_options must be an object", param="stream_options")
    include_usage = (options or {}).get("include_usage", False)
    if include_usage is not None and not isinstance(include_usage, bool):
        raise _Failure(
            400, "stream_options.include_usage must be true or false", param="stream_options"
        )
    return bool(stream), bool(include_usage)


def _param_of(message: str) -> str | None:
    return next((name for name in ("model", "messages") if message.startswith(name)), None)


# ---------------------------------------------------------------- the answer


def _dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON; the intermediate str is wiped.

    :raises ValueError: not JSON (NaN included).
    """
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    finally:
        wipe(text)


def _event_stream(answer: dict[str, Any], include_usage: bool) -> bytes:
    events = [
        b"data: " + _dumps(chunk) + b"\n\n"
        for chunk in chunks_of(answer, include_usage=include_usage)
    ]
    return b"".join(events) + b"data: [DONE]\n\n"


# ---------------------------------------------------------------- the app


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "nomyo"}


def _shown(path: str) -> str:
    """A request path fit for a log line or an error message."""
    path = path[:MAX_PATH_CHARS]
    return path if path.isprintable() else ascii(path)


def _log(request: Request, status: int, payload_id: str | None, level: int = logging.INFO) -> None:
    if status >= 500:
        level = logging.WARNING
    log.log(
        level,
        "%s %s -> %d payload %s",
        request.method,
        _shown(request.url.path),
        status,
        payload_id or "-",
    )


def create_proxy_app(
    client: SecureChatCompletion,
    *,
    models: Sequence[str] = (),
    api_key: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> Starlette:
    """The Starlette application serving OpenAI's chat completions through ``client``.

    The app checks the ``Host`` header of every request itself, whoever runs
    it: by default only loopback names (``localhost``, ``127.0.0.1``,
    ``[::1]``, any port) are answered, so a web page cannot reach a local
    proxy under a host name of its own (DNS rebinding); any other Host gets
    400 before the request is read.

    :param client: sends every request, sealed, to its router; the caller closes it.
    :param models: the names ``GET /v1/models`` lists (``"nomyo"`` when empty);
        requests may name any model.
    :param api_key: the router's API key for every request; when None, a
        request's own ``Authorization: Bearer`` key is used, else the client's.
    :param allowed_hosts: the host names (without port) answered besides
        the loopback ones; ``"*"`` answers any Host (for a proxy reached
        under names not known in advance: it then has no DNS-rebinding guard).
    :raises TypeError: ``client`` is not a SecureChatCompletion, ``models`` or
        ``allowed_hosts`` is not a sequence of strings, or ``api_key`` is not
        a string.
    :raises ValueError: an empty model name, host name or ``api_key``.
    """
    if not isinstance(client, SecureChatCompletion):
        raise TypeError(f"client must be a SecureChatCompletion, not {type(client).__name__}")
    if isinstance(models, str) or not all(isinstance(m, str) for m in models):
        raise TypeError("models must be a sequence of strings")
    if not all(models):
        raise ValueError("models must not contain an empty name")
    if api_key is not None and not isinstance(api_key, str):
        raise TypeError(f"api_key must be a string, not {type(api_key).__name__}")
    if api_key == "":
        raise ValueError("api_key must not be empty (None: take it from each request)")
    hosts = _host_names(allowed_hosts)
    names = tuple(dict.fromkeys(models)) or (DEFAULT_MODEL,)
    listing = {"object": "list", "data": [_model(name) for name in names]}

    async def complete(request: Request) -> tuple[Response, str | None]:
        body = await _read_json(request)
        messages = None
        try:
            model = body.pop("model", None)
            messages = body.pop("messages", None)
            stream, include_usage = _stream_options(body)
            for name in RESERVED_FIELDS:
                if name in body:
                    raise _Failure(400, f"unsupported parameter: {name}", param=name)
            options: dict[str, Any] = {}
            tier = request.headers.get("x-security-tier")
            if tier is not None:
                options["security_tier"] = tier
            key = api_key if api_key is not None else _bearer(request)
            if key is not None:
                options["api_key"] = key
            try:
                answer = await client.create(model, messages, **body, **options)
            except ValueError as exc:  # the request's own fault; nothing was sent
                message = str(exc)[:MAX_MESSAGE_CHARS]
                raise _Failure(400, message, param=_param_of(message)) from exc
        finally:
            wipe(messages)
            wipe(body)
        try:
            metadata = answer.pop("_metadata", None)
            payload_id = metadata.get("payload_id") if isinstance(metadata, dict) else None
            payload_id = payload_id if isinstance(payload_id, str) else None
            headers = {"X-Payload-ID": payload_id} if payload_id else {}
            try:
                if stream:
                    content = _event_stream(answer, include_usage)
                    headers["Cache-Control"] = "no-cache"
                    media_type = "text/event-stream"
                else:
                    content = _dumps(answer)
                    media_type = "application/json"
            except ValueError as exc:  # NaN or the like from the router
                raise _Failure(502, "the router's answer is not valid JSON", "api_error") from exc
        finally:
            wipe(answer)
        return Response(content, media_type=media_type, headers=headers), payload_id

    async def chat_completions(request: Request) -> Response:
        try:
            response, payload_id = await complete(request)
        except ClientDisconnect:
            response, payload_id = _Failure(400, "the request was cut off").response(), None
        except Exception as exc:  # every failure answers in OpenAI's shape
            payload_id = getattr(exc, "payload_id", None)
            failure = failure_for(exc)
            if failure.status == 500:
                log.error("internal error: %s", type(exc).__name__)  # never the message
            elif isinstance(exc, SecurityError | APIConnectionError):
                # nomyo's own messages hold no secrets: the operator sees why
                log.warning("request to the router failed: %s: %s", type(exc).__name__, exc)
            response = failure.response(payload_id)
        _log(request, response.status_code, payload_id)
        return response

    async def list_models(request: Request) -> Response:
        _log(request, 200, None, logging.DEBUG)
        return JSONResponse(listing)

    async def get_model(request: Request) -> Response:
        name = request.path_params["model"]
        if name not in names:
            _log(request, 404, None)
            return _Failure(
                404, f"the model {_shown(name)!r} is not listed", code="model_not_found"
            ).response()
        _log(request, 200, None, logging.DEBUG)
        return JSONResponse(_model(name))

    async def health(request: Request) -> Response:
        _log(request, 200, None, logging.DEBUG)
        return JSONResponse({"status": "ok"})

    async def http_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            status, headers = exc.status_code, dict(exc.headers or {})
            message = f"no such endpoint: {request.method} {_shown(request.url.path)}"
            if status == 405:
                message = f"method {request.method} is not allowed on {_shown(request.url.path)}"
        else:
            status, headers, message = 500, {}, _INTERNAL
            log.error("internal error: %s", type(exc).__name__)
        _log(request, status, None)
        kind, code = _type_for(status)
        return _Failure(status, message, kind, code, headers=headers).response()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", get_model, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: http_error},
    )
    if "*" not in hosts:
        app.add_middleware(_HostGuard, hosts=hosts)
    return app


# ---------------------------------------------------------------- the Host guard


def _host_names(allowed: Sequence[str] | None) -> frozenset[str]:
    if allowed is None:
        return frozenset()
    if isinstance(allowed, str) or not all(isinstance(h, str) for h in allowed):
        raise TypeError("allowed_hosts must be a sequence of strings")
    if not all(h.strip() for h in allowed):
        raise ValueError("allowed_hosts must not contain an empty name")
    return frozenset(h.strip().strip("[]").rstrip(".").lower() for h in allowed)


def host_of(header: str) -> str:
    """The host name of a ``Host`` header value, without port or IPv6 brackets,
    lowercased; "" when it cannot be a host."""
    header = header.strip()
    if header.startswith("["):
        name, bracket, rest = header[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return ""
    elif header.count(":") > 1:  # a bare IPv6 address
        name = header
    else:
        name, colon, port = header.rpartition(":")
        if not colon:
            name = port
        elif not port.isdigit():
            return ""
    return name.rstrip(".").lower()


class _HostGuard:
    """ASGI middleware: 400 in OpenAI's error shape for an HTTP request whose
    Host is neither a loopback name nor one of ``hosts``."""

    def __init__(self, app: Any, hosts: frozenset[str]) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raw = [value for key, value in scope["headers"] if key == b"host"]
            name = host_of(raw[0].decode("latin-1")) if len(raw) == 1 else ""
            if not name or not (is_loopback(name) or name in self.hosts):
                log.warning("refused a request for another Host (DNS rebinding?)")
                failure = _Failure(400, "this Host is not served by the nomyo proxy")
                await failure.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``"localhost"``) is reachable only from this
    machine: 127.0.0.0/8, ::1 or localhost.  ``0.0.0.0``, ``::`` and names are not."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
