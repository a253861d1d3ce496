"""The clients: SecureChatCompletion (async), SyncSecureChatCompletion and the
lower-level SecureCompletionClient, thin shims over two engines that mirror
each other (:class:`_AsyncEngine`, :class:`_SyncEngine`: the same methods and
steps, only the I/O differs) and one shared :class:`_Core` (settings as one
frozen :class:`Config`, the key pair, the router key and its pin, the replay
memory).  Owns request validation and the order of the steps; never does
HTTP (``_transport``) or cryptography (``_hybrid``) itself.

One request, file:function per hop (the sync twin: the same, blocking)::

    _client:SecureChatCompletion.create  model, messages, tier, stream checked
      | _client:_request                 (call_options, build_payload): nothing sent yet
    _client:_AsyncEngine.send            another base_url: a short-lived engine, same keys
      | _client:_Core.call               check_process (once), tier, the deadline
      |                                  (_transport:Attempts)
    _client:_AsyncEngine._send           key pair; router key: cached ROUTER_KEY_TTL, one
      |                                  shared fetch, pin checked (_Core.accept_router_key)
      v
    serialize -> seal   _client:_Call.post -> _hybrid:seal_json  (new AES key, nonce)
    send -> receive     _transport:AsyncTransport.request  (read capped, statuses mapped)
      ^  429/5xx/nothing sent: _Call.retry -> _transport:Attempts.backoff
      |  (Retry-After, or backoff with jitter, while retries and time remain)
      ^  400, once: _Call.rekey after fetching the router key again (it may have rotated)
      v
    open                _client:_Call.open -> _Core.open -> _hybrid:open_answer
                        (decode, replay check (_Replays), authenticate, parse; every
                        failure to authenticate is one opaque SecurityError)
    bind                _client:_bind  a JSON object, not another request's payload_id,
                                       _metadata filled in, the router's attestation
                                       checked (Config.attestation_verifier)
    return              the chat.completion dict
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import inspect
import math
import os
import re
import ssl
import threading
import time
import urllib.parse
import uuid
import warnings
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from . import _hybrid, _keys, memory
from ._constants import (
    API_KEY_ENV,
    BASE_URL_ENV,
    COMPLETION_PATH,
    DEFAULT_BASE_URL,
    DEFAULT_KEY_BITS,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    PACKAGE_ALGORITHM,
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    PUBLIC_KEY_PATH,
    REPLAY_MEMORY,
    ROUTER_KEY_TTL,
    SECURITY_TIERS,
)
from ._exceptions import APIError, APITimeoutError, InvalidRequestError, SecurityError
from ._transport import AsyncTransport, Attempts, SyncTransport, Verify, log
from .memory import caller_stacklevel, wipe

__all__ = ["SecureChatCompletion", "SecureCompletionClient", "SyncSecureChatCompletion"]

#: asyncio.timeout (3.11+): a deadline on the running task.  asyncio.wait_for
#: runs the call as a task of its own, which costs event-loop round trips.
_timeout_scope: Callable[[float], contextlib.AbstractAsyncContextManager[None]] | None = getattr(
    asyncio, "timeout", None
)

_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
_T = TypeVar("_T")


# ---------------------------------------------------------------- validation


def _check_base_url(url: str, allow_http: bool) -> str:
    if not isinstance(url, str) or not url:
        raise ValueError("base_url must be a non-empty string")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"base_url must be an https:// URL, not {url!r}")
    if parts.scheme == "http" and not allow_http:
        raise SecurityError(
            f"refusing plain HTTP to {url}: use https://, or allow_http=True "
            "for local development only"
        )
    return url.rstrip("/")


def _warn_if_plain_http(config: Config) -> Config:
    """Warn at the caller's line (not in a dataclass's generated __init__,
    which would hide it) when ``config`` talks plain HTTP."""
    if config.base_url.startswith("http:"):
        warnings.warn(
            f"nomyo: plain HTTP to {config.base_url} (allow_http=True): the transport is not "
            "encrypted, only the payload is; never do this in production",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )
    return config


def check_tier(tier: object) -> str | None:
    if tier is None:
        return None
    if tier not in SECURITY_TIERS:
        raise ValueError(f"security_tier must be one of {', '.join(SECURITY_TIERS)}, not {tier!r}")
    return str(tier)


def call_options(kwargs: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """Take (security_tier, api_key, base_url) out of create()'s kwargs, checked.

    :raises ValueError: an unknown tier.
    :raises TypeError: an api_key or base_url that is not a string.
    """
    tier = check_tier(kwargs.pop("security_tier", None))
    api_key = kwargs.pop("api_key", None)
    base_url = kwargs.pop("base_url", None)
    for name, value in (("api_key", api_key), ("base_url", base_url)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a string, not {type(value).__name__}")
    return tier, api_key, base_url


def build_payload(model: object, messages: object, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The request plaintext, checked before anything is sent.

    :raises ValueError: naming the problem.
    """
    if not isinstance(model, str) or not model:
        raise ValueError("model must be a non-empty string")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content'")
        if not isinstance(message.get("role"), str) or not message.get("role"):
            raise ValueError(f"messages[{i}] has no 'role' string")
        if "content" not in message:
            raise ValueError(f"messages[{i}] has no 'content'")
    if kwargs.get("stream", False) is not False:
        raise ValueError("stream=True is not supported: the protocol answers in one package")
    return {"model": model, "messages": messages, **kwargs}


def _timeout(timeout: float | httpx.Timeout | None) -> tuple[httpx.Timeout, float | None]:
    """(per-operation httpx timeout, seconds for a whole call or None)."""
    if isinstance(timeout, httpx.Timeout):
        return timeout, None
    if timeout is None:
        return httpx.Timeout(None), None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return httpx.Timeout(float(timeout)), float(timeout)


# ---------------------------------------------------------------- keys


@dataclass(frozen=True)
class KeyPair:
    """The client's key pair and the X-Public-Key value made from it once."""

    private_key: rsa.RSAPrivateKey
    public_pem: str
    header: str

    @classmethod
    def of(cls, private_key: rsa.RSAPrivateKey) -> KeyPair:
        pem = _keys.public_pem(private_key).decode("ascii")
        return cls(private_key, pem, urllib.parse.quote(pem))

    def __repr__(self) -> str:
        return f"KeyPair({_keys.fingerprint(self.private_key)})"


def _load_pair(
    private_path: Path, public_path: Path | None, password: str | bytes | None
) -> KeyPair:
    try:
        private_key = _keys.load_private_key(private_path, password=password)
    except (OSError, ValueError, SecurityError) as exc:
        raise ValueError(f"cannot load the client key {private_path}: {exc}") from exc
    pair = KeyPair.of(private_key)
    if public_path is not None and public_path.exists():
        try:  # a regular file of this user's, size-capped: never /dev/zero or a FIFO
            public = _keys.load_public_key_file(public_path)
        except (OSError, ValueError, SecurityError) as exc:
            raise ValueError(f"cannot load the client key {public_path}: {exc}") from exc
        if _keys.fingerprint(public) != _keys.fingerprint(private_key):
            raise ValueError(f"{public_path} does not belong to {private_path}")
    return pair


class _ClientKeys:
    """The client key pair: loaded now, or generated on a thread started at
    construction so the first request does not wait for all of it."""

    def __init__(
        self,
        key_dir: str | os.PathLike[str] | None,
        password: str | bytes | None,
        *,
        eager: bool = True,
    ) -> None:
        self._future: concurrent.futures.Future[KeyPair] = concurrent.futures.Future()
        self._started = threading.Lock()
        self._pending: Any = None
        if key_dir is None:
            self._pending = lambda: KeyPair.of(_keys.generate_private_key())
            if eager:
                self._start()
            return
        folder = Path(key_dir)
        private_path, public_path = folder / PRIVATE_KEY_FILE, folder / PUBLIC_KEY_FILE
        if private_path.exists() or private_path.is_symlink():
            self._future.set_result(_load_pair(private_path, public_path, password))
            return
        if public_path.exists():
            raise ValueError(
                f"{public_path} exists without {private_path}: refusing to make a new pair over it"
            )

        def make_and_save() -> KeyPair:
            private_key = _keys.generate_private_key()
            _keys.save_private_key(private_key, private_path, password=password)
            _keys.save_public_key(private_key, public_path)
            return KeyPair.of(private_key)

        self._pending = make_and_save
        self._start()

    def _start(self) -> None:
        with self._started:
            make, self._pending = self._pending, None
            if make is None:
                return
            future = self._future
            # RUNNING from here on: a waiter that is cancelled or times out
            # (asyncio.wrap_future passes its cancel on) can no longer cancel
            # the pair every later call needs
            future.set_running_or_notify_cancel()

        def run() -> None:
            try:
                future.set_result(make())
            except BaseException as exc:  # delivered to whoever waits
                future.set_exception(exc)

        threading.Thread(target=run, name="nomyo-keygen", daemon=True).start()

    def set(self, pair: KeyPair) -> None:
        with self._started:
            self._pending = None
        future: concurrent.futures.Future[KeyPair] = concurrent.futures.Future()
        future.set_result(pair)
        self._future = future

    def get(
        self, deadline: float | None = None, url: str = "", payload_id: str | None = None
    ) -> KeyPair:
        """The pair, waiting for it at most until the monotonic ``deadline``.

        :raises APITimeoutError: the deadline passed first (the pair is still
            made, for the next call).
        """
        self._start()
        future = self._future
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return future.result(wait)
        except concurrent.futures.TimeoutError:
            if future.done():  # the pair's own failure
                raise
            raise APITimeoutError(
                f"timed out waiting for the client key pair (calling {url})",
                payload_id=payload_id,
            ) from None

    async def aget(self) -> KeyPair:
        """The pair, awaited; cancelling the wait leaves the pair alone (a
        waiter of its own, not ``asyncio.wrap_future``, whose cancel would
        reach the shared future)."""
        self._start()
        future = self._future
        if not future.done():
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()

            def wake(_: object) -> None:  # on the key thread
                with contextlib.suppress(RuntimeError):  # the waiter's loop is closed
                    loop.call_soon_threadsafe(_wake, waiter)

            future.add_done_callback(wake)
            await waiter
        return future.result()

    def peek(self) -> KeyPair | None:
        """The pair if it is ready, without starting or waiting for it."""
        future = self._future
        if future.done() and future.exception() is None:
            return future.result()
        return None


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # not cancelled meanwhile
        waiter.set_result(None)


# ---------------------------------------------------------------- the shared core


@dataclass(frozen=True)
class _RouterKey:
    key: rsa.RSAPublicKey
    pem: str
    fingerprint: str
    expires: float


class _Replays:
    """The wrapped keys (SHA-256) of the last REPLAY_MEMORY answers opened:
    an answer that carries one of them again is a replay (a
    :class:`_hybrid.ReplayCheck`)."""

    def __init__(self) -> None:
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, wrapped_key: bytes) -> None:
        digest = hashlib.sha256(wrapped_key).digest()
        with self._lock:
            if digest in self._seen:
                raise SecurityError("replayed answer: this package was already received")

    def record(self, wrapped_key: bytes) -> None:
        digest = hashlib.sha256(wrapped_key).digest()
        with self._lock:
            if digest in self._seen:
                raise SecurityError("replayed answer: this package was already received")
            self._seen[digest] = None
            while len(self._seen) > REPLAY_MEMORY:
                self._seen.popitem(last=False)


#: ``verifier(attestation, payload_id)``: returns to accept, raises (or returns
#: False) to reject.  ``attestation`` is ``_metadata["tpm_attestation"]`` exactly
#: as the router sent it (any JSON value): its format is the verifier's business.
AttestationVerifier = Callable[[Any, str], Any]


def _bind(answer: Any, payload_id: str, processed_at: int | None, config: Config) -> dict[str, Any]:
    """An opened answer, checked to be this request's chat.completion, with
    ``_metadata`` filled in and the router's attestation accepted under
    ``config``'s policy; anything else is wiped and refused.

    :raises SecurityError: not a JSON object, a malformed ``_metadata``,
        another request's ``payload_id``, or an attestation missing under
        ``require_attestation`` or rejected by ``attestation_verifier``.
    """
    if not isinstance(answer, dict):
        wipe(answer)
        raise SecurityError("the decrypted answer is not a JSON object")
    metadata = answer.get("_metadata")
    if metadata is None:
        metadata = answer["_metadata"] = {}
    if not isinstance(metadata, dict):
        wipe(answer)
        raise SecurityError("the decrypted answer has a malformed _metadata")
    if "payload_id" in metadata and metadata["payload_id"] != payload_id:
        wipe(answer)
        raise SecurityError("the answer belongs to another request (payload_id differs)")
    metadata.update(
        payload_id=payload_id,
        processed_at=processed_at,
        is_encrypted=True,
        encryption_algorithm=PACKAGE_ALGORITHM,
    )
    if config.attestation_verifier is not None:
        _attest(answer, metadata.get("tpm_attestation"), payload_id, config)
    return answer


def _attest(answer: dict[str, Any], attestation: Any, payload_id: str, config: Config) -> None:
    """Hand the router's ``tpm_attestation`` to the verifier before the answer
    is returned; an answer without one under ``require_attestation``, or one
    the verifier rejects, is wiped and becomes SecurityError."""
    verifier = config.attestation_verifier
    assert verifier is not None, "checked by the caller"
    if attestation is None:
        if config.require_attestation:
            wipe(answer)
            raise SecurityError(
                "the answer carries no tpm_attestation and require_attestation=True"
            )
        return
    try:
        verdict = verifier(attestation, payload_id)
    except Exception as exc:
        wipe(answer)
        raise SecurityError(
            f"attestation_verifier rejected the router's attestation ({type(exc).__name__})"
        ) from exc
    if inspect.isawaitable(verdict) or verdict is False:
        if inspect.iscoroutine(verdict):
            verdict.close()  # never awaited: a verdict that cannot be read is a rejection
        wipe(answer)
        raise SecurityError("attestation_verifier rejected the router's attestation")


@dataclass(frozen=True, eq=False)
class Config:
    """A client's settings, checked once when it is made and never changed
    (a per-call ``base_url`` is :meth:`with_base_url`: a checked copy).

    :ivar pin: ``server_key_fingerprint``, lower-cased.
    :ivar http_timeout: httpx's timeout per operation (from ``timeout``).
    :ivar total_timeout: seconds for a whole call, or None (from ``timeout``).
    :raises nomyo.SecurityError: ``http://`` without ``allow_http``.
    :raises ValueError, TypeError: a malformed option, naming it.
    """

    base_url: str
    allow_http: bool = False
    api_key: str | None = field(default=None, repr=False)
    secure_memory: bool = True
    pin: str | None = None
    timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    verify: Verify = True
    attestation_verifier: AttestationVerifier | None = field(default=None, repr=False)
    require_attestation: bool = False
    http_timeout: httpx.Timeout = field(init=False, repr=False)
    total_timeout: float | None = field(init=False, repr=False)

    @classmethod
    def of(
        cls,
        base_url: str | None = None,
        allow_http: bool = False,
        api_key: str | None = None,
        secure_memory: bool = True,
        *,
        server_key_fingerprint: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        verify: Verify = True,
        attestation_verifier: AttestationVerifier | None = None,
        require_attestation: bool = False,
    ) -> Config:
        """The constructors' options, with the environment's defaults for
        ``base_url`` (NOMYO_BASE_URL) and ``api_key`` (NOMYO_API_KEY)."""
        if base_url is None:
            base_url = os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        if api_key is None:
            api_key = os.environ.get(API_KEY_ENV) or None
        config = cls(
            base_url,
            allow_http,
            api_key,
            secure_memory,
            server_key_fingerprint,
            timeout,
            max_retries,
            max_response_bytes,
            verify,
            attestation_verifier,
            require_attestation,
        )
        return _warn_if_plain_http(config)

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        put("base_url", _check_base_url(self.base_url, self.allow_http))
        if self.api_key is not None and not isinstance(self.api_key, str):
            raise TypeError("api_key must be a string")
        put("secure_memory", bool(self.secure_memory))
        pin = self.pin
        if pin is not None:
            if not isinstance(pin, str) or not _FINGERPRINT.fullmatch(pin.lower()):
                raise ValueError("server_key_fingerprint must look like 'sha256:<64 hex digits>'")
            put("pin", pin.lower())
        retries = self.max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, not {retries!r}")
        limit = self.max_response_bytes
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise ValueError(f"max_response_bytes must be a positive int, not {limit!r}")
        http_timeout, total_timeout = _timeout(self.timeout)
        put("http_timeout", http_timeout)
        put("total_timeout", total_timeout)
        verify = self.verify
        if not isinstance(verify, bool | str | ssl.SSLContext):
            raise TypeError("verify must be True/False, a CA file path or an ssl.SSLContext")
        if isinstance(verify, str):
            try:
                put("verify", ssl.create_default_context(cafile=verify))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"verify: cannot load the CA file {verify}: {exc}") from exc
        verifier = self.attestation_verifier
        if not isinstance(self.require_attestation, bool):
            raise TypeError("require_attestation must be True or False")
        if verifier is None and self.require_attestation:
            raise ValueError(
                "require_attestation=True needs an attestation_verifier: only the "
                "verifier knows what the router's tpm_attestation must prove"
            )
        if verifier is not None and not callable(verifier):
            raise TypeError("attestation_verifier must be a callable(attestation, payload_id)")
        if inspect.iscoroutinefunction(verifier):
            raise TypeError(
                "attestation_verifier must be a plain function, not a coroutine function"
            )

    def with_base_url(self, base_url: str) -> Config:
        """The same settings for another router (checked as the first one was)."""
        return _warn_if_plain_http(dataclasses.replace(self, base_url=base_url))

    def changed(self, **changes: Any) -> Config:
        """These settings with some changed, checked as at construction (what
        the published client's attribute setters use); a new ``http://``
        router warns as a new client would."""
        config = dataclasses.replace(self, **changes)
        if config.base_url != self.base_url:
            _warn_if_plain_http(config)
        return config

    @property
    def key_url(self) -> str:
        return self.base_url + PUBLIC_KEY_PATH

    @property
    def post_url(self) -> str:
        return self.base_url + COMPLETION_PATH


class _Core:
    """Everything but I/O, shared by the async and the sync engine: the
    settings, the key pair, the router key and its pin, the replay memory."""

    def __init__(self, config: Config, keys: _ClientKeys, *, pid: int | None = None) -> None:
        self.config = config
        self.keys = keys
        self.router: _RouterKey | None = None
        self.replays = _Replays()
        self.pid = os.getpid() if pid is None else pid

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.config.base_url}>"

    def with_base_url(self, base_url: str) -> _Core:
        """The same settings and key pair, for another router (a per-call base_url)."""
        # the key pair's process, forked or not
        return _Core(self.config.with_base_url(base_url), self.keys, pid=self.pid)

    # -- router key

    def check_process(self) -> None:
        """Refuse to work in a process forked from the one that made the client.

        A child shares the parent's TLS connections (both would write to the
        same sockets), may lack the thread that was still generating the key
        pair, and its secure memory reads zeros (MADV_WIPEONFORK): nothing it
        sent would be safe, so nothing is sent.

        :raises nomyo.SecurityError: this is a forked child.
        """
        if os.getpid() != self.pid:
            raise SecurityError(
                f"this client was created in process {self.pid} and cannot be used in "
                f"process {os.getpid()}, forked from it: create a new client after fork()"
            )

    def cached_router_key(self) -> _RouterKey | None:
        router = self.router
        if router is not None and time.monotonic() < router.expires:
            return router
        return None

    def accept_router_key(self, pem: str) -> _RouterKey:
        """Check a fetched router key (RSA, >= 2048 bits, the pin) and cache it.

        :raises SecurityError: not the pinned key, or not an acceptable key.
        """
        try:
            key = _keys.load_public_key(pem)
        except (ValueError, SecurityError) as exc:
            raise SecurityError(
                f"the router at {self.config.base_url} sent an unusable public key"
            ) from exc
        fingerprint = _keys.fingerprint(key)
        pin = self.config.pin
        if pin is not None and fingerprint != pin:
            raise SecurityError(
                f"the router's key {fingerprint} does not match server_key_fingerprint "
                f"{pin}: nothing is sent to it"
            )
        router = _RouterKey(key, pem, fingerprint, time.monotonic() + ROUTER_KEY_TTL)
        self.router = router
        log.debug("router key %s", fingerprint)
        return router

    def rotated(self, old: _RouterKey, fresh: _RouterKey) -> bool:
        """After a 400: resend only if the router's key really changed (the
        fresh key has already passed the pin in accept_router_key)."""
        if fresh.fingerprint == old.fingerprint:
            return False
        log.info("router key changed to %s: sending again", fresh.fingerprint)
        return True

    # -- sealing and opening

    def headers(
        self, pair: KeyPair, payload_id: str, api_key: str | None, tier: str | None
    ) -> dict[str, str]:
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Payload-ID": payload_id,
            "X-Public-Key": pair.header,
        }
        key = api_key if api_key is not None else self.config.api_key
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if tier is not None:
            headers["X-Security-Tier"] = tier
        return headers

    def locked(self, tier: str | None) -> bool:
        """Whether this request's secrets must all be in locked memory (the
        ``maximum`` tier); checked before anything is sent.

        :raises nomyo.SecurityError: ``maximum`` without secure memory that
            can be locked (``secure_memory=False`` or the Python fallback).
        """
        if tier != "maximum":
            return False
        if not self.config.secure_memory:
            raise SecurityError("security_tier='maximum' needs secure_memory=True")
        if memory.BACKEND != "native":
            raise SecurityError(
                "security_tier='maximum' needs nomyo's native secure memory, and the "
                "Python fallback is in use: it cannot lock memory"
            )
        return True

    def seal(self, payload: Any, router: _RouterKey, *, locked: bool = False) -> bytes:
        """``payload`` sealed to ``router``; with ``locked``, SecurityError
        rather than a secret in memory that mlock does not hold."""
        return _hybrid.seal_json(
            payload, router.key, secure=self.config.secure_memory, locked=locked
        )

    def open(
        self, body: bytes | bytearray, pair: KeyPair, payload_id: str, *, locked: bool = False
    ) -> dict[str, Any]:
        """The answer to request ``payload_id``, opened and bound to it (a
        bytearray ``body`` is consumed, see :func:`_hybrid.open_answer`).

        :raises SecurityError: fails authentication (no detail which check),
            was already seen (a replay), or answers another request.
        """
        answer, processed_at = _hybrid.open_answer(
            body, pair.private_key, self.replays, secure=self.config.secure_memory, locked=locked
        )
        return _bind(answer, payload_id, processed_at, self.config)

    # -- one call

    def attempts(self, payload_id: str | None = None) -> Attempts:
        """A call's retry state under the policy (``_transport``): its deadline starts now."""
        return Attempts(
            max_retries=self.config.max_retries,
            http_timeout=self.config.http_timeout,
            total=self.config.total_timeout,
            url=self.config.post_url,
            payload_id=payload_id,
        )

    def call(
        self, payload: dict[str, Any], payload_id: str, api_key: str | None, tier: str | None
    ) -> _Call:
        """A request about to be made: the process checked (once per
        request), the tier's memory demands checked, the deadline started.

        :raises nomyo.SecurityError: a forked child, or a tier that cannot be kept.
        """
        self.check_process()
        return _Call(self, payload, payload_id, api_key, tier)


class _Call:
    """One request through its attempts; the engines do the I/O it asks for.

    :meth:`post` is serialize -> seal (afresh each attempt: a new AES key and
    nonce); :meth:`retry` and :meth:`rekey` decide after a failed attempt;
    :meth:`open` is open -> bind.
    """

    def __init__(
        self,
        core: _Core,
        payload: dict[str, Any],
        payload_id: str,
        api_key: str | None,
        tier: str | None,
    ) -> None:
        self.core, self.payload, self.payload_id = core, payload, payload_id
        self.api_key, self.tier = api_key, tier
        self.locked = core.locked(tier)
        self.attempts = core.attempts(payload_id)
        self.deadline = self.attempts.deadline
        self.pair: KeyPair | None = None
        self.router: _RouterKey | None = None
        self.headers: dict[str, str] = {}
        self.refetched = False

    def begin(self, pair: KeyPair, router: _RouterKey) -> None:
        self.pair, self.router = pair, router
        self.headers = self.core.headers(pair, self.payload_id, self.api_key, self.tier)

    def post(self) -> dict[str, Any]:
        """The next attempt's arguments for ``Transport.request``: the payload
        serialized and sealed to the router key."""
        assert self.router is not None, "begin() first"
        config = self.core.config
        return {
            "method": "POST",
            "url": config.post_url,
            "content": self.core.seal(self.payload, self.router, locked=self.locked),
            "headers": self.headers,
            "limit": config.max_response_bytes,
            "timeout": self.attempts.timeout(),
            "deadline": self.deadline,
            "payload_id": self.payload_id,
        }

    def retry(self, error: APIError) -> float | None:
        """After a failed attempt: the seconds to wait before the next, or
        None to fetch the router key again first (a 400, once: the key may
        have rotated).

        :raises APIError: ``error``, when it is final.
        """
        if isinstance(error, InvalidRequestError):
            if self.refetched:
                raise error
            self.refetched = True
            return None
        delay = self.attempts.backoff(error)
        if delay is None:
            raise error
        return delay

    def rekey(self, error: APIError, fresh: _RouterKey) -> None:
        """Send again to ``fresh`` only if the router's key really changed.

        :raises APIError: ``error``, when it did not.
        """
        assert self.router is not None, "begin() first"
        if not self.core.rotated(self.router, fresh):
            raise error
        self.router = fresh

    def open(self, answer: bytearray) -> dict[str, Any]:
        """open -> bind: the answer (consumed) as this request's chat.completion."""
        assert self.pair is not None, "begin() first"
        return self.core.open(answer, self.pair, self.payload_id, locked=self.locked)


# ---------------------------------------------------------------- the engines


class _AsyncEngine:
    """The protocol engine with non-blocking I/O; :class:`_SyncEngine` is its
    twin: the same methods and steps, blocking."""

    def __init__(self, core: _Core) -> None:
        self.core = core
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: AsyncTransport | None = None
        self._fetch_lock: asyncio.Lock | None = None
        self._keeper: Any = None

    async def _http(self) -> AsyncTransport:
        """The pool of the running event loop (its fetch lock made with it).

        An httpx.AsyncClient belongs to one event loop, and code written for
        the published client calls ``asyncio.run`` once per request.  So each
        loop gets its own pool, closed while that loop still runs: a started
        async generator is finalized by ``loop.shutdown_asyncgens()``, which
        ``asyncio.run`` calls before closing the loop.
        """
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._transport is not None:
            return self._transport
        config = self.core.config
        transport = AsyncTransport(verify=config.verify, timeout=config.http_timeout)
        keeper = _close_with_the_loop(transport)
        await keeper.__anext__()
        self._loop, self._transport, self._keeper = loop, transport, keeper
        self._fetch_lock = asyncio.Lock()
        return transport

    async def router_key(self, *, force: bool = False, deadline: float | None = None) -> _RouterKey:
        """The router's key: cached, or fetched once for concurrent callers."""
        core = self.core
        if not force and (cached := core.cached_router_key()) is not None:
            return cached
        transport = await self._http()
        assert self._fetch_lock is not None, "made with the pool"
        async with self._fetch_lock:
            if not force and (cached := core.cached_router_key()) is not None:
                return cached
            pem = await transport.get_text(core.config.key_url, deadline=deadline)
            return core.accept_router_key(pem)

    async def fetch_key(self) -> _RouterKey:
        """The router's key fetched now (and cached), within the call timeout."""
        self.core.check_process()
        return await self._bounded(self.router_key(force=True), self.core.config.key_url)

    async def send(
        self,
        payload: dict[str, Any],
        payload_id: str,
        api_key: str | None,
        tier: str | None,
        base_url: str | None = None,
    ) -> dict[str, Any]:
        """One request, with retries, within the call timeout; another
        ``base_url`` goes through a short-lived engine with the same settings
        and key pair."""
        if base_url is not None and base_url.rstrip("/") != self.core.config.base_url:
            other = _AsyncEngine(self.core.with_base_url(base_url))
            try:
                return await other.send(payload, payload_id, api_key, tier)
            finally:
                await other.close()
        call = self.core.call(payload, payload_id, api_key, tier)
        return await self._bounded(self._send(call), call.attempts.url, payload_id)

    async def _send(self, call: _Call) -> dict[str, Any]:
        call.begin(await self.core.keys.aget(), await self.router_key(deadline=call.deadline))
        while True:
            transport = await self._http()
            try:  # serialize -> seal -> send -> receive
                answer = await transport.request(**call.post())
            except APIError as error:
                delay = call.retry(error)  # or raise it: it is final
                if delay is None:
                    call.rekey(error, await self.router_key(force=True, deadline=call.deadline))
                else:
                    await asyncio.sleep(delay)
                continue
            return call.open(answer)  # open -> bind -> return

    async def _bounded(
        self, work: Coroutine[Any, Any, _T], url: str, payload_id: str | None = None
    ) -> _T:
        """``work`` within the whole-call timeout (the sync twin has it per
        socket operation, in the transport)."""
        total = self.core.config.total_timeout
        try:
            if total is None:
                return await work
            if _timeout_scope is not None:  # 3.11+: in this task, no task of its own
                async with _timeout_scope(total):
                    return await work
            return await asyncio.wait_for(work, total)
        except asyncio.TimeoutError as exc:
            raise APITimeoutError(
                f"no answer from {url} within {total} s", payload_id=payload_id
            ) from exc

    async def close(self) -> None:
        """Close the connection pool."""
        keeper, self._keeper = self._keeper, None
        self._transport = self._loop = self._fetch_lock = None
        if keeper is not None:
            await keeper.aclose()  # its finally closes the pool


async def _close_with_the_loop(transport: AsyncTransport) -> AsyncIterator[None]:
    try:
        yield
    finally:
        with contextlib.suppress(RuntimeError):  # a loop already gone: nothing to close
            await transport.aclose()


class _SyncEngine:
    """:class:`_AsyncEngine` with blocking I/O (threads welcome); a call's
    deadline bounds each socket operation (see ``_transport``)."""

    def __init__(self, core: _Core) -> None:
        self.core = core
        self._transport: SyncTransport | None = None
        self._lock = threading.Lock()
        self._fetch_lock = threading.Lock()

    def _http(self) -> SyncTransport:
        """The pool, made at first use."""
        transport = self._transport
        if transport is None:
            with self._lock:
                if self._transport is None:
                    config = self.core.config
                    self._transport = SyncTransport(
                        verify=config.verify, timeout=config.http_timeout
                    )
                transport = self._transport
        return transport

    def router_key(self, *, force: bool = False, deadline: float | None = None) -> _RouterKey:
        """As :meth:`_AsyncEngine.router_key`."""
        core = self.core
        if not force and (cached := core.cached_router_key()) is not None:
            return cached
        transport = self._http()
        with self._fetch_lock:
            if not force and (cached := core.cached_router_key()) is not None:
                return cached
            pem = transport.get_text(core.config.key_url, deadline=deadline)
            return core.accept_router_key(pem)

    def fetch_key(self) -> _RouterKey:
        """As :meth:`_AsyncEngine.fetch_key`."""
        self.core.check_process()
        return self.router_key(force=True, deadline=self.core.attempts().deadline)

    def send(
        self,
        payload: dict[str, Any],
        payload_id: str,
        api_key: str | None,
        tier: str | None,
        base_url: str | None = None,
    ) -> dict[str, Any]:
        """As :meth:`_AsyncEngine.send`."""
        if base_url is not None and base_url.rstrip("/") != self.core.config.base_url:
            other = _SyncEngine(self.core.with_base_url(base_url))
            try:
                return other.send(payload, payload_id, api_key, tier)
            finally:
                other.close()
        return self._send(self.core.call(payload, payload_id, api_key, tier))

    def _send(self, call: _Call) -> dict[str, Any]:
        pair = self.core.keys.get(call.deadline, call.attempts.url, call.payload_id)
        call.begin(pair, self.router_key(deadline=call.deadline))
        while True:
            transport = self._http()
            try:  # serialize -> seal -> send -> receive
                answer = transport.request(**call.post())
            except APIError as error:
                delay = call.retry(error)  # or raise it: it is final
                if delay is None:
                    call.rekey(error, self.router_key(force=True, deadline=call.deadline))
                else:
                    time.sleep(delay)
                continue
            return call.open(answer)  # open -> bind -> return

    def close(self) -> None:
        """Close the connection pool."""
        with self._lock:
            transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()


# ---------------------------------------------------------------- the published API


def _reconfigure(core: _Core, **changes: Any) -> None:
    """The published attribute setters: the engine's settings replaced by a
    copy checked as at construction (:meth:`Config.changed`); the key pair,
    replay memory and process stay; the router key is kept only for the same
    router.  A refused value changes nothing."""
    config = core.config.changed(**changes)
    if config.base_url != core.config.base_url:
        core.router = None  # another router: its key is fetched afresh
    core.config = config


class _Done:
    """What :meth:`SecureCompletionClient.generate_keys` and ``load_keys``
    return: the work is done when they return, and ``await`` on the result
    (as the published 0.2.9 README writes it) does nothing more."""

    __slots__ = ()

    def __await__(self) -> Iterator[None]:
        return iter(())

    def __repr__(self) -> str:
        return "<done>"


_DONE = _Done()


class SecureCompletionClient:
    """The published lower-level client (async): keys, router key, seal, send, open.

    The positional parameters are the published client's; the keyword-only
    ones are :class:`SecureChatCompletion`'s.  The key pair is made when first
    needed, unless :meth:`generate_keys` or :meth:`load_keys` provides it.

    :param router_url: the router's base URL (``NOMYO_BASE_URL`` when None).
    :param allow_http: allow ``http://`` (local development only).
    :raises nomyo.SecurityError: ``http://`` without ``allow_http``.
    :raises ValueError: a malformed option.
    """

    def __init__(
        self,
        router_url: str | None = None,
        allow_http: bool = False,
        secure_memory: bool = True,
        max_retries: int = DEFAULT_MAX_RETRIES,
        *,
        api_key: str | None = None,
        key_dir: str | os.PathLike[str] | None = None,
        key_password: str | bytes | None = None,
        server_key_fingerprint: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        verify: Verify = True,
        attestation_verifier: AttestationVerifier | None = None,
        require_attestation: bool = False,
        _engine: _AsyncEngine | None = None,
    ) -> None:
        if _engine is None:
            config = Config.of(
                router_url,
                allow_http,
                api_key,
                secure_memory,
                server_key_fingerprint=server_key_fingerprint,
                timeout=timeout,
                max_retries=max_retries,
                max_response_bytes=max_response_bytes,
                verify=verify,
                attestation_verifier=attestation_verifier,
                require_attestation=require_attestation,
            )
            keys = _ClientKeys(key_dir, key_password, eager=False)
            _engine = _AsyncEngine(_Core(config, keys))
        self._engine = _engine
        self._core = _engine.core
        self._key_size = DEFAULT_KEY_BITS

    def __repr__(self) -> str:
        return f"<SecureCompletionClient {self.router_url}>"

    # -- the published client's attributes (docs/migrating.md)

    @property
    def router_url(self) -> str:
        """The router; settable (checked as at construction: ``http://`` needs
        ``allow_http``), the next request goes there and fetches its key."""
        return self._core.config.base_url

    @router_url.setter
    def router_url(self, url: str) -> None:
        _reconfigure(self._core, base_url=url)

    @property
    def allow_http(self) -> bool:
        """Whether ``http://`` routers are allowed; setting False while the
        router is ``http://`` raises SecurityError."""
        return self._core.config.allow_http

    @allow_http.setter
    def allow_http(self, value: bool) -> None:
        _reconfigure(self._core, allow_http=bool(value))

    @property
    def max_retries(self) -> int:
        """Extra attempts after 429/5xx/connection failures; settable."""
        return self._core.config.max_retries

    @max_retries.setter
    def max_retries(self, value: int) -> None:
        _reconfigure(self._core, max_retries=value)

    @property
    def key_size(self) -> int:
        """The modulus size :meth:`generate_keys` uses (>= 2048); settable."""
        return self._key_size

    @key_size.setter
    def key_size(self, bits: int) -> None:
        self._key_size = _keys._check_bits(bits)

    @property
    def public_key_pem(self) -> str | None:
        """The client's public key as PEM, or None while there is no key pair yet."""
        pair = self._core.keys.peek()
        return None if pair is None else pair.public_pem

    # -- the published client's key methods

    def generate_keys(
        self,
        save_to_file: bool = False,
        key_dir: str | os.PathLike[str] = "client_keys",
        password: str | bytes | None = None,
    ) -> _Done:
        """Make a new client key pair of :attr:`key_size` bits (blocking; the
        result may be awaited, as 0.2.9's README does); with ``save_to_file``
        also write ``private_key.pem`` (0600, encrypted with ``password``) and
        ``public_key.pem`` into ``key_dir``, never over existing files.

        :raises FileExistsError: a key file is already there.
        """
        private_key = _keys.generate_private_key(self._key_size)
        if save_to_file:
            folder = Path(key_dir)
            _keys.save_private_key(private_key, folder / PRIVATE_KEY_FILE, password=password)
            _keys.save_public_key(private_key, folder / PUBLIC_KEY_FILE)
        self._core.keys.set(KeyPair.of(private_key))
        return _DONE

    def load_keys(
        self,
        private_key_path: str | os.PathLike[str],
        public_key_path: str | os.PathLike[str] | None = None,
        password: str | bytes | None = None,
    ) -> _Done:
        """Use the key pair in these files (the public one is derived when not
        given); the result may be awaited, as 0.2.9's README does.

        :raises ValueError: a file cannot be loaded (naming it), or the two do not match.
        """
        public = Path(public_key_path) if public_key_path is not None else None
        if public is not None and not public.exists():
            raise ValueError(f"cannot load the client key {public}: no such file")
        self._core.keys.set(_load_pair(Path(private_key_path), public, password))
        return _DONE

    async def fetch_server_public_key(self) -> str:
        """Fetch the router's public key (PEM), check it against the pin and cache it.

        :raises nomyo.SecurityError: it does not match ``server_key_fingerprint``.
        :raises nomyo.APIError: the router did not answer with a key (in time).
        """
        return (await self._engine.fetch_key()).pem

    async def encrypt_payload(self, payload: dict[str, Any]) -> bytes:
        """``payload`` sealed to the router's key: the package bytes to POST."""
        self._core.check_process()
        return self._core.seal(payload, await self._engine.router_key())

    async def decrypt_response(self, encrypted_response: bytes, payload_id: str) -> dict[str, Any]:
        """Open an answer package and bind it to ``payload_id``.

        :raises nomyo.SecurityError: see :meth:`send_secure_request`.
        """
        self._core.check_process()
        pair = await self._core.keys.aget()
        return self._core.open(bytes(encrypted_response), pair, payload_id)

    async def send_secure_request(
        self,
        payload: dict[str, Any],
        payload_id: str,
        api_key: str | None = None,
        security_tier: str | None = None,
    ) -> dict[str, Any]:
        """Seal ``payload``, send it, and return the opened, bound answer.

        Retries 429/5xx and failures before sending (a fresh seal each attempt),
        refetches the router key once after a 400, and raises the APIError
        subclass of the last failure otherwise.

        :raises nomyo.SecurityError: the answer fails authentication, is a
            replay, or answers another request; or the router key fails the pin.
        :raises nomyo.APIError: the router refused, or could not be reached.
        """
        tier = check_tier(security_tier)
        return await self._engine.send(payload, payload_id, api_key, tier)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._engine.close()


class _ChatClient:
    """What the two chat clients share: their parameters (the published
    0.2.9 six positional, the rest keyword-only), one :class:`Config`, one
    core, and the key pair started at once so the first request waits less."""

    def __init__(
        self,
        base_url: str | None = None,
        allow_http: bool = False,
        api_key: str | None = None,
        secure_memory: bool = True,
        key_dir: str | os.PathLike[str] | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        *,
        key_password: str | bytes | None = None,
        server_key_fingerprint: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        verify: Verify = True,
        attestation_verifier: AttestationVerifier | None = None,
        require_attestation: bool = False,
    ) -> None:
        config = Config.of(
            base_url,
            allow_http,
            api_key,
            secure_memory,
            server_key_fingerprint=server_key_fingerprint,
            timeout=timeout,
            max_retries=max_retries,
            max_response_bytes=max_response_bytes,
            verify=verify,
            attestation_verifier=attestation_verifier,
            require_attestation=require_attestation,
        )
        self._core = _Core(config, _ClientKeys(key_dir, key_password, eager=True))
        self._start()

    def _start(self) -> None:
        """Each client's own: its engine over the core, and ``chat.completions``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base_url}>"

    @property
    def base_url(self) -> str:
        return self._core.config.base_url

    @property
    def api_key(self) -> str | None:
        """The bearer key sent with every request; settable (0.2.9)."""
        return self._core.config.api_key

    @api_key.setter
    def api_key(self, value: str | None) -> None:
        _reconfigure(self._core, api_key=value)


def _request(
    model: str, messages: list[dict[str, Any]], kwargs: dict[str, Any]
) -> tuple[dict[str, Any], str, str | None, str | None, str | None]:
    """create()'s arguments checked, nothing sent yet: (payload, payload_id,
    api_key, security_tier, base_url)."""
    tier, api_key, base_url = call_options(kwargs)
    payload = build_payload(model, messages, kwargs)
    return payload, str(uuid.uuid4()), api_key, tier, base_url


class _AsyncCompletions:
    def __init__(self, client: SecureChatCompletion) -> None:
        self._client = client

    async def create(
        self, model: str, messages: list[dict[str, Any]], **kwargs: Any
    ) -> dict[str, Any]:
        """As :meth:`SecureChatCompletion.create`."""
        return await self._client.create(model, messages, **kwargs)


class _AsyncChat:
    def __init__(self, client: SecureChatCompletion) -> None:
        self.completions = _AsyncCompletions(client)


class SecureChatCompletion(_ChatClient):
    """End-to-end encrypted chat completions, OpenAI-shaped (async).

    :param base_url: the router (``NOMYO_BASE_URL``, else https://api.nomyo.ai).
    :param allow_http: allow ``http://`` — local development only.
    :param api_key: bearer key (``NOMYO_API_KEY`` when None).
    :param secure_memory: keep plaintexts and keys in locked, guarded memory.
    :param key_dir: load the client key pair from here, or create it here once.
    :param key_password: the password of the private key file in ``key_dir``.
    :param server_key_fingerprint: ``"sha256:<hex>"``; any other router key is refused.
    :param timeout: seconds for a whole call (retries included), or an ``httpx.Timeout``.
    :param max_retries: extra attempts after 429/5xx and failures before sending.
    :param max_response_bytes: the largest answer read.
    :param verify: True, a CA file path or an ``ssl.SSLContext``.
    :param attestation_verifier: ``verifier(attestation, payload_id)``, called
        with the router's ``_metadata["tpm_attestation"]`` (as sent: its format
        is the verifier's to know) before an answer is returned; it returns to
        accept and raises (or returns False) to reject, which makes the answer
        a SecurityError.  It runs in the calling thread (the event loop, for
        the async client): keep it quick.
    :param require_attestation: an answer without ``tpm_attestation`` is a
        SecurityError; needs ``attestation_verifier``.
    :raises nomyo.SecurityError: ``http://`` without ``allow_http``.
    :raises ValueError: a malformed option, or a key file that cannot be loaded.
    """

    def _start(self) -> None:
        self._engine = _AsyncEngine(self._core)
        self.client = SecureCompletionClient(_engine=self._engine)  # the lower-level API
        self.chat = _AsyncChat(self)

    async def create(
        self, model: str, messages: list[dict[str, Any]], **kwargs: Any
    ) -> dict[str, Any]:
        """Send an encrypted chat completion and return the answer.

        ``kwargs`` go into the encrypted request (temperature, max_tokens,
        tools, ...), except ``security_tier`` (sent as X-Security-Tier),
        ``api_key`` (this call's bearer key) and ``base_url`` (this call's
        router: same settings and key pair).

        :returns: the chat.completion dict, with ``_metadata`` (payload_id,
            processed_at, is_encrypted, encryption_algorithm, and what the
            router put there).
        :raises ValueError: a bad model, messages, tier or ``stream=True``,
            before anything is sent.
        :raises nomyo.SecurityError: see :meth:`SecureCompletionClient.send_secure_request`.
        :raises nomyo.APIError: the router refused, or could not be reached.
        """
        return await self._engine.send(*_request(model, messages, kwargs))

    acreate = create

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._engine.close()

    async def __aenter__(self) -> SecureChatCompletion:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _SyncCompletions:
    def __init__(self, client: SyncSecureChatCompletion) -> None:
        self._client = client

    def create(self, model: str, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        """As :meth:`SyncSecureChatCompletion.create`."""
        return self._client.create(model, messages, **kwargs)


class _SyncChat:
    def __init__(self, client: SyncSecureChatCompletion) -> None:
        self.completions = _SyncCompletions(client)


class SyncSecureChatCompletion(_ChatClient):
    """:class:`SecureChatCompletion` with blocking calls; needs no event loop
    and may be shared between threads.  Same parameters."""

    def _start(self) -> None:
        self._engine = _SyncEngine(self._core)
        self.chat = _SyncChat(self)

    def create(self, model: str, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        """As :meth:`SecureChatCompletion.create`, blocking."""
        return self._engine.send(*_request(model, messages, kwargs))

    def fetch_server_public_key(self) -> str:
        """The router's public key (PEM), fetched, pinned and cached."""
        return self._engine.fetch_key().pem

    def close(self) -> None:
        """Close the connection pool."""
        self._engine.close()

    def __enter__(self) -> SyncSecureChatCompletion:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
