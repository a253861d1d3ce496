"""The reference NOMYO endpoint: protocol 1.0 over HTTP(S) with Starlette;
answers with the built-in echo model or forwards to an OpenAI-compatible
upstream, and never logs or returns a secret.

::

    GET  /pki/public_key             the router's public key, PEM
    POST /v1/chat/secure_completion  package -> open -> backend -> seal to X-Public-Key

Every error is JSON ``{"detail": ...}``: 400 for anything malformed (one
generic detail per class of problem, never which check failed), 401 for a
missing or wrong API key when keys are configured, 408 for a body not sent
in full within ``body_timeout`` seconds, 413 for a request over
``MAX_REQUEST_BYTES`` of plaintext, 503 with ``Retry-After`` when
``max_concurrent`` requests are already in hand, 502/503/504 when the
upstream fails.  A stranger can thus hold at most ``max_concurrent`` bodies
of at most ``MAX_BODY_BYTES`` each, for at most ``body_timeout`` seconds.

Needs the ``server`` extra (``pip install nomyo[server]``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import _hybrid, _keys
from ._constants import (
    BUSY_RETRY_AFTER,
    COMPLETION_PATH,
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_CONCURRENT,
    ECHO_MAX_CHOICES,
    MAX_API_KEY_FILE_BYTES,
    MAX_PAYLOAD_ID_CHARS,
    MAX_REQUEST_BYTES,
    PUBLIC_KEY_PATH,
    SECURITY_TIERS,
    UPSTREAM_CONNECT_TIMEOUT,
    UPSTREAM_READ_TIMEOUT,
    UPSTREAM_REASON_CHARS,
)
from ._constants import SERVE_MAX_BODY_BYTES as MAX_BODY_BYTES
from ._exceptions import SecurityError
from .memory import wipe

__all__ = ["ServerConfig", "create_app", "read_api_key_file"]

log = logging.getLogger("nomyo.server")

_INVALID_PACKAGE = "invalid encrypted package"
_INVALID_REQUEST = "invalid chat completion request"


@dataclass(frozen=True)
class ServerConfig:
    """What one endpoint serves with.

    :ivar private_key: the router's RSA key (requests are sealed to it).
    :ivar api_keys: accepted bearer tokens; empty means no authentication.
    :ivar upstream: base URL of an OpenAI-compatible server, or None for echo.
    :ivar upstream_api_key: bearer token for the upstream.
    :ivar body_timeout: seconds a request may take to send its whole body
        (counted from when its headers are in); then 408 and the connection
        is closed.
    :ivar max_concurrent: requests handled at once; one more gets 503 with
        ``Retry-After`` at once.
    """

    private_key: rsa.RSAPrivateKey
    api_keys: tuple[str, ...] = ()
    upstream: str | None = None
    upstream_api_key: str | None = field(default=None, repr=False)
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_concurrent: int = DEFAULT_MAX_CONCURRENT

    def __post_init__(self) -> None:
        timeout = self.body_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"body_timeout must be a positive number of seconds, not {timeout!r}")
        limit = self.max_concurrent
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_concurrent must be a positive int, not {limit!r}")

    def __repr__(self) -> str:
        return (
            f"ServerConfig(key={_keys.fingerprint(self.private_key)}, "
            f"api_keys=<{len(self.api_keys)}>, upstream={self.upstream!r}, "
            f"body_timeout={self.body_timeout}, max_concurrent={self.max_concurrent})"
        )


def read_api_key_file(path: str) -> tuple[str, ...]:
    """The API keys in ``path``: one per line; blank lines and lines starting
    with ``#`` are skipped.

    The file is checked like a private key file: a regular file (a FIFO is
    refused without blocking), owned by this user, no access for the group
    or others, at most ``MAX_API_KEY_FILE_BYTES``.  No error names a key.

    :raises FileNotFoundError: ``path`` does not exist.
    :raises ValueError: not a regular file, too large, not UTF-8 text, no
        key in it, or a key with spaces or control characters.
    :raises nomyo.SecurityError: owned by another user, or others can access it.
    """
    with _keys.secret_file(path, "API key file", MAX_API_KEY_FILE_BYTES) as contents:
        try:
            text = bytes(contents).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"API key file {path} is not UTF-8 text") from None
    keys: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if not key.isprintable() or any(c.isspace() for c in key):
            raise ValueError(f"API key file {path}, line {number}: a key has no spaces")
        keys.append(key)
    if not keys:
        raise ValueError(f"API key file {path} holds no key")
    return tuple(dict.fromkeys(keys))


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _error(status: int, detail: str) -> JSONResponse:
    # the rest of a refused request's body is never read: the connection closes,
    # or uvicorn would keep it open, buffering what still comes
    return JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"})


class _ConcurrencyCap:
    """ASGI middleware: at most ``limit`` HTTP requests at once; one more is
    answered 503 with Retry-After before anything of it is read."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.active = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            log.warning("busy: %d requests in hand, answered 503", self.active)
            busy = _error(503, "server busy, retry later")
            busy.headers["Retry-After"] = str(BUSY_RETRY_AFTER)
            await busy(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


def _check_api_key(request: Request, api_keys: Sequence[str]) -> None:
    if not api_keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _Refused(401, "missing API key")
    # compare with every key, so the time does not say which one nearly matched
    matched = False
    for key in api_keys:
        matched |= hmac.compare_digest(token.encode(), key.encode())
    if not matched:
        raise _Refused(401, "invalid API key")


def _payload_id(request: Request) -> str:
    value = request.headers.get("x-payload-id", "")
    if not value or len(value) > MAX_PAYLOAD_ID_CHARS or not value.isprintable():
        raise _Refused(400, "missing or invalid X-Payload-ID")
    return value


def _client_key(request: Request) -> rsa.RSAPublicKey:
    quoted = request.headers.get("x-public-key", "")
    try:
        return _keys.load_public_key(urllib.parse.unquote(quoted, errors="strict"))
    except (ValueError, SecurityError, UnicodeDecodeError) as exc:
        raise _Refused(400, "missing or invalid X-Public-Key") from exc


def _tier(request: Request) -> str | None:
    tier = request.headers.get("x-security-tier")
    if tier is not None and tier not in SECURITY_TIERS:
        raise _Refused(400, "unknown security tier")
    return tier


async def _read_body(request: Request, timeout: float) -> bytes:
    """The whole body, within ``timeout`` seconds, of at most MAX_BODY_BYTES."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _Refused(400, "invalid Content-Length")
        if int(declared) > MAX_BODY_BYTES:
            raise _Refused(413, "request too large")
    body = bytearray()

    async def collect() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > MAX_BODY_BYTES:
                raise _Refused(413, "request too large")

    try:
        await asyncio.wait_for(collect(), timeout)
    except BaseException as exc:
        del body[:]  # dropped now, not when the traceback that holds this frame goes
        if isinstance(exc, asyncio.TimeoutError):
            raise _Refused(408, "request body not received in time") from None
        if isinstance(exc, ClientDisconnect):  # nobody to answer; not an internal error
            raise _Refused(400, "request cut off") from None
        raise
    return bytes(body)


def _open_request(body: bytes, private_key: rsa.RSAPrivateKey) -> tuple[dict[str, Any], bool]:
    """The chat request in ``body``, and whether its package had the tag
    inside the ciphertext (nomyo-js 0.1.0): the answer goes back in that form."""
    try:
        plain, tag_inside = _hybrid.open_package_either(body, private_key)
        with plain:
            if len(plain) > MAX_REQUEST_BYTES:
                raise _Refused(413, "request too large")
            request = _hybrid.parse(plain)
    except SecurityError as exc:
        raise _Refused(400, _INVALID_PACKAGE) from exc
    if not _is_chat_request(request):
        wipe(request)
        raise _Refused(400, _INVALID_REQUEST)
    return request, tag_inside


def _request_tier(chat: dict[str, Any], header: str | None) -> str | None:
    """The tier of a request: the X-Security-Tier header, else the
    ``security_tier`` nomyo-js 0.1.0 puts in the plaintext.  That field is
    removed from ``chat`` either way (never forwarded upstream); an unknown
    value, or one that contradicts the header, is refused."""
    if "security_tier" not in chat:
        return header
    inside = chat.pop("security_tier")
    if inside not in SECURITY_TIERS or (header is not None and inside != header):
        wipe(chat)
        raise _Refused(400, "unknown security tier")
    return header or inside


def _is_chat_request(obj: Any) -> bool:
    if not isinstance(obj, dict):
        return False
    model, messages = obj.get("model"), obj.get("messages")
    if not isinstance(model, str) or not model or not isinstance(messages, list) or not messages:
        return False
    if obj.get("stream", False) is not False:
        return False
    return all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in messages
    )


# ---------------------------------------------------------------- the echo model


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


#: ASCII characters str.split() splits on -> b" ", every other one -> b"x"
_WORD_MARKS = bytes(ord(" ") if chr(c).isspace() else ord("x") for c in range(128)) + b"x" * 128


def _words(text: str) -> int:
    """``len(text.split())``, without building a list of every word.

    For ASCII text (the usual case, and the one where megabytes arrive) the
    words are counted on a copy that marks each character as space or not:
    the number of runs of non-space marks.  Both copies are wiped.
    """
    if len(text) < 4096 or not text.isascii():
        return len(text.split())
    encoded = text.encode("ascii")
    marks = encoded.translate(_WORD_MARKS)
    wipe(encoded)
    try:
        return marks.count(b" x") + marks.startswith(b"x")
    finally:
        wipe(marks)


def _echo_tool_call(request: dict[str, Any], text: str) -> list[dict[str, Any]] | None:
    tools = request.get("tools")
    choice = request.get("tool_choice", "auto")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    name = None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
    if not isinstance(name, str):
        first = tools[0] if isinstance(tools[0], dict) else {}
        name = (first.get("function") or {}).get("name")
    if not isinstance(name, str):
        return None
    return [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps({"text": text})},
        }
    ]


def echo_completion(request: dict[str, Any]) -> dict[str, Any]:
    """The built-in ``echo`` model: the last user message back, verbatim.

    Honours ``n`` (up to ECHO_MAX_CHOICES), ``max_tokens`` (counted in words,
    finish_reason "length" when it cuts) and ``tools``/``tool_choice`` (a call
    to the first tool, or the named one, with the text as its argument).
    Token counts are whitespace-separated words.
    """
    messages = request["messages"]
    last = next(
        (i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"), -1
    )
    text = _text_of(messages[last].get("content")) if last >= 0 else ""
    # count the (possibly megabytes of) text once, and split it only to cut it
    text_words = _words(text)
    answer_words = text_words
    finish = "stop"
    max_tokens = request.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= 0:
        if text_words > max_tokens:
            text, finish = " ".join(text.split()[:max_tokens]), "length"
            answer_words = max_tokens
    tool_calls = _echo_tool_call(request, text)
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message = {"role": "assistant", "content": None, "tool_calls": tool_calls}
        finish = "tool_calls"
    n = request.get("n", 1)
    n = n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= ECHO_MAX_CHOICES else 1
    prompt_tokens = text_words + sum(
        _words(_text_of(m.get("content"))) for i, m in enumerate(messages) if i != last
    )
    completion_tokens = answer_words * n
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request["model"],
        "choices": [
            {"index": i, "message": dict(message), "finish_reason": finish} for i in range(n)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


# ---------------------------------------------------------------- upstream


def upstream_url(base: str) -> str:
    """``/v1/chat/completions`` under ``base`` (which may already end in /v1)."""
    base = base.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if base.endswith("/v1"):
        return base + "/chat/completions"
    return base + "/v1/chat/completions"


async def _forward(
    client: httpx.AsyncClient, url: str, api_key: str | None, request: dict[str, Any]
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = dict(request, stream=False)
    try:
        response = await client.post(url, json=body, headers=headers)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise _Refused(503, "upstream unavailable") from exc
    except httpx.TimeoutException as exc:
        raise _Refused(504, "upstream timed out") from exc
    except httpx.HTTPError as exc:
        raise _Refused(502, "upstream failed") from exc
    if 400 <= response.status_code < 500 and response.status_code not in (401, 403, 407):
        # the request's own fault (a missing model, too many tokens): the
        # client gets that status, which it does not retry, and the reason
        raise _Refused(response.status_code, _upstream_reason(response, request))
    if response.status_code >= 400:
        # the upstream failing, or refusing this server's credentials: not the
        # client's doing
        raise _Refused(502, f"upstream answered {response.status_code}")
    try:
        answer = response.json()
    except ValueError as exc:
        raise _Refused(502, "upstream answer is not JSON") from exc
    if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
        raise _Refused(502, "upstream answer is not a chat completion")
    return answer


def _upstream_reason(response: httpx.Response, request: dict[str, Any]) -> str:
    """``upstream answered 404: <its message>`` from an OpenAI-style
    (``{"error": {"message": ...}}``), Ollama-style (``{"error": ...}``) or
    ``{"detail": ...}`` body.  Error answers are not encrypted, so a message
    that quotes any of the request's text is left out."""
    reason = f"upstream answered {response.status_code}"
    try:
        body = response.json()
    except ValueError:
        return reason
    error = body.get("error", body.get("detail")) if isinstance(body, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    if not isinstance(error, str) or not error.strip():
        return reason
    message = " ".join(error.split())[:UPSTREAM_REASON_CHARS]
    texts = [_text_of(m.get("content")) for m in request.get("messages", ())]
    windows = {message[i : i + 12] for i in range(0, max(1, len(message) - 11), 4)}
    if any(w in text for text in texts if text for w in windows):
        return reason
    return f"{reason}: {message}"


# ---------------------------------------------------------------- the app


def create_app(config: ServerConfig) -> Starlette:
    """The Starlette application serving ``config``."""
    public_pem = _keys.public_pem(config.private_key)
    target = upstream_url(config.upstream) if config.upstream else None
    state: dict[str, httpx.AsyncClient] = {}

    async def public_key(request: Request) -> Response:
        return Response(public_pem, media_type="text/plain")

    async def secure_completion(request: Request) -> Response:
        started = time.perf_counter()
        payload_id = "-"
        try:
            _check_api_key(request, config.api_keys)
            payload_id = _payload_id(request)
            client_key = _client_key(request)
            tier = _tier(request)
            remaining = config.body_timeout - (time.perf_counter() - started)
            body = await _read_body(request, remaining)
            chat, tag_inside = await run_in_threadpool(_open_request, body, config.private_key)
            tier = _request_tier(chat, tier)
            try:
                if target is not None:
                    answer = await _forward(
                        state["upstream"], target, config.upstream_api_key, chat
                    )
                else:
                    answer = echo_completion(chat)
                metadata = answer.get("_metadata")
                answer["_metadata"] = dict(
                    metadata if isinstance(metadata, dict) else {}, payload_id=payload_id
                )
                sealed = await run_in_threadpool(
                    _hybrid.seal_json,
                    answer,
                    client_key,
                    processed_at=int(time.time()),
                    tag_inside=tag_inside,  # each client answered in the form it used
                )
                wipe(answer)
            finally:
                wipe(chat)
        except _Refused as refused:
            log.info("secure completion refused: %d %s", refused.status, refused.detail)
            return _error(refused.status, refused.detail)
        log.info(
            "secure completion: payload %s tier %s in %.1f ms",
            payload_id,
            tier or "-",
            (time.perf_counter() - started) * 1e3,
        )
        return Response(sealed, media_type="application/json")

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        if status == 500:
            log.error("internal error while serving %s", request.url.path)
        return _error(status, str(detail))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(UPSTREAM_READ_TIMEOUT, connect=UPSTREAM_CONNECT_TIMEOUT),
            trust_env=False,
        ) as client:
            state["upstream"] = client
            yield

    app = Starlette(
        routes=[
            Route(PUBLIC_KEY_PATH, public_key, methods=["GET"]),
            Route(COMPLETION_PATH, secure_completion, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: http_error},
        lifespan=lifespan,
    )
    app.add_middleware(_ConcurrencyCap, limit=config.max_concurrent)
    return app
