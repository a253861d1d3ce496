"""The clients: SecureChatCompletion (async), SyncSecureChatCompletion and the
lower-level SecureCompletionClient.  They own request validation, the client
key pair, the router key cache and pin, sealing and opening, answer binding
and replay detection, and the retry loop; HTTP itself is ``_transport``'s.

One request::

    create(model, messages, **kw)
      | validate model, messages, tier, stream            (nothing sent yet)
      | router key: cached ROUTER_KEY_TTL, one shared fetch, pin checked
      v
    attempt: seal afresh (new AES key, nonce) -> POST -> answer, read capped
      ^  429/5xx/no connection: sleep Retry-After, or backoff with jitter,
      |  while retries and time remain
      ^  400, once: fetch the router key again (it may have rotated)
      v
    open: fails authentication -> one opaque SecurityError
          wrapped key seen before (a replay) -> SecurityError
          _metadata.payload_id is another request's -> SecurityError
      v
    the chat.completion dict, _metadata filled in
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
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
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from . import _hybrid, _keys, memory
from ._constants import (
    API_KEY_ENV,
    BASE_URL_ENV,
    COMPLETION_PATH,
    DEFAULT_BASE_URL,
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
        try:
            public = _keys.load_public_key(public_path.read_bytes())
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

    def get(self) -> KeyPair:
        self._start()
        return self._future.result()

    async def aget(self) -> KeyPair:
        self._start()
        if self._future.done():
            return self._future.result()
        return await asyncio.wrap_future(self._future)


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


def _bind(answer: Any, payload_id: str, processed_at: int | None) -> dict[str, Any]:
    """An opened answer, checked to be this request's chat.completion, with
    ``_metadata`` filled in; anything else is wiped and refused.

    :raises SecurityError: not a JSON object, a malformed ``_metadata``, or
        another request's ``payload_id``.
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
    return answer


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
        put("http_timeout", _timeout(self.timeout)[0])
        put("total_timeout", _timeout(self.timeout)[1])
        verify = self.verify
        if not isinstance(verify, bool | str | ssl.SSLContext):
            raise TypeError("verify must be True/False, a CA file path or an ssl.SSLContext")
        if isinstance(verify, str):
            try:
                put("verify", ssl.create_default_context(cafile=verify))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"verify: cannot load the CA file {verify}: {exc}") from exc

    def with_base_url(self, base_url: str) -> Config:
        """The same settings for another router (checked as the first one was)."""
        return _warn_if_plain_http(dataclasses.replace(self, base_url=base_url))

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
        self.check_process()
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
        return _bind(answer, payload_id, processed_at)

    # -- the retry policy's state for one call

    def attempts(self, payload_id: str | None = None) -> Attempts:
        return Attempts(
            max_retries=self.config.max_retries,
            http_timeout=self.config.http_timeout,
            total=self.config.total_timeout,
            url=self.config.post_url,
            payload_id=payload_id,
        )


# ---------------------------------------------------------------- async


class SecureCompletionClient:
    """The protocol engine (async): keys, router key, seal, send, open.

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
        _core: _Core | None = None,
        _eager_keys: bool = False,
    ) -> None:
        if _core is None:
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
            )
            _core = _Core(config, _ClientKeys(key_dir, key_password, eager=_eager_keys))
        self._core = _core
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: AsyncTransport | None = None
        self._fetch_lock: asyncio.Lock | None = None
        self._keeper: Any = None

    def __repr__(self) -> str:
        return f"<SecureCompletionClient {self._core.config.base_url}>"

    @property
    def router_url(self) -> str:
        return self._core.config.base_url

    # -- the published client's key methods

    def generate_keys(
        self,
        save_to_file: bool = False,
        key_dir: str | os.PathLike[str] = "client_keys",
        password: str | bytes | None = None,
    ) -> None:
        """Make a new 4096-bit client key pair (blocking); with ``save_to_file``
        also write ``private_key.pem`` (0600, encrypted with ``password``) and
        ``public_key.pem`` into ``key_dir``, never over existing files.

        :raises FileExistsError: a key file is already there.
        """
        private_key = _keys.generate_private_key()
        if save_to_file:
            folder = Path(key_dir)
            _keys.save_private_key(private_key, folder / PRIVATE_KEY_FILE, password=password)
            _keys.save_public_key(private_key, folder / PUBLIC_KEY_FILE)
        self._core.keys.set(KeyPair.of(private_key))

    def load_keys(
        self,
        private_key_path: str | os.PathLike[str],
        public_key_path: str | os.PathLike[str] | None = None,
        password: str | bytes | None = None,
    ) -> None:
        """Use the key pair in these files (the public one is derived when not given).

        :raises ValueError: a file cannot be loaded (naming it), or the two do not match.
        """
        public = Path(public_key_path) if public_key_path is not None else None
        if public is not None and not public.exists():
            raise ValueError(f"cannot load the client key {public}: no such file")
        self._core.keys.set(_load_pair(Path(private_key_path), public, password))

    # -- I/O

    async def _for_this_loop(self) -> tuple[AsyncTransport, asyncio.Lock]:
        """The pool and fetch lock of the running event loop.

        An httpx.AsyncClient belongs to one event loop, and code written for
        the published client calls ``asyncio.run`` once per request.  So each
        loop gets its own pool, closed while that loop still runs: a started
        async generator is finalized by ``loop.shutdown_asyncgens()``, which
        ``asyncio.run`` calls before closing the loop.
        """
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._transport is not None and self._fetch_lock is not None:
            return self._transport, self._fetch_lock
        transport = AsyncTransport(
            verify=self._core.config.verify, timeout=self._core.config.http_timeout
        )
        keeper = _close_with_the_loop(transport)
        await keeper.__anext__()
        self._loop, self._transport, self._keeper = loop, transport, keeper
        self._fetch_lock = asyncio.Lock()
        return transport, self._fetch_lock

    async def _router_key(
        self, *, force: bool = False, deadline: float | None = None
    ) -> _RouterKey:
        core = self._core
        core.check_process()  # before any connection is used
        if not force and (cached := core.cached_router_key()) is not None:
            return cached
        transport, lock = await self._for_this_loop()
        async with lock:  # concurrent first requests share one fetch
            if not force and (cached := core.cached_router_key()) is not None:
                return cached
            pem = await transport.get_text(core.config.key_url, deadline=deadline)
            return core.accept_router_key(pem)

    async def fetch_server_public_key(self) -> str:
        """Fetch the router's public key (PEM), check it against the pin and cache it.

        :raises nomyo.SecurityError: it does not match ``server_key_fingerprint``.
        :raises nomyo.APIError: the router did not answer with a key (in time).
        """
        total = self._core.config.total_timeout
        if total is None:
            return (await self._router_key(force=True)).pem
        try:  # the timeout holds for the whole fetch, as for create()
            return (await asyncio.wait_for(self._router_key(force=True), total)).pem
        except asyncio.TimeoutError as exc:
            raise APITimeoutError(
                f"no answer from {self._core.config.key_url} within {total} s"
            ) from exc

    async def encrypt_payload(self, payload: dict[str, Any]) -> bytes:
        """``payload`` sealed to the router's key: the package bytes to POST."""
        return self._core.seal(payload, await self._router_key())

    async def decrypt_response(self, encrypted_response: bytes, payload_id: str) -> dict[str, Any]:
        """Open an answer package and bind it to ``payload_id``.

        :raises nomyo.SecurityError: see :meth:`send_secure_request`.
        """
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

        Retries 429/5xx/connection failures (a fresh seal each attempt),
        refetches the router key once after a 400, and raises the APIError
        subclass of the last failure otherwise.

        :raises nomyo.SecurityError: the answer fails authentication, is a
            replay, or answers another request; or the router key fails the pin.
        :raises nomyo.APIError: the router refused, or could not be reached.
        """
        core = self._core
        tier = check_tier(security_tier)
        attempts = core.attempts(payload_id)
        total = core.config.total_timeout
        try:
            if total is None:
                return await self._send(payload, payload_id, api_key, tier, attempts)
            if _timeout_scope is not None:  # 3.11+: in this task, no task of its own
                async with _timeout_scope(total):
                    return await self._send(payload, payload_id, api_key, tier, attempts)
            return await asyncio.wait_for(
                self._send(payload, payload_id, api_key, tier, attempts), total
            )
        except asyncio.TimeoutError as exc:
            raise APITimeoutError(
                f"no answer from {core.config.post_url} within {total} s", payload_id=payload_id
            ) from exc

    async def _send(
        self,
        payload: dict[str, Any],
        payload_id: str,
        api_key: str | None,
        tier: str | None,
        attempts: Attempts,
    ) -> dict[str, Any]:
        core = self._core
        locked = core.locked(tier)
        pair = await core.keys.aget()
        deadline = attempts.deadline
        router = await self._router_key(deadline=deadline)
        headers = core.headers(pair, payload_id, api_key, tier)
        refetched = False
        while True:
            transport, _ = await self._for_this_loop()
            body = core.seal(payload, router, locked=locked)
            try:
                answer = await transport.request(
                    "POST",
                    core.config.post_url,
                    content=body,
                    headers=headers,
                    limit=core.config.max_response_bytes,
                    timeout=attempts.timeout(),
                    deadline=deadline,
                    payload_id=payload_id,
                )
            except InvalidRequestError:
                if refetched:
                    raise
                refetched = True
                fresh = await self._router_key(force=True, deadline=deadline)
                if not core.rotated(router, fresh):
                    raise
                router = fresh
                continue
            except APIError as error:
                delay = attempts.backoff(error)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                continue
            del body  # the sent package, before the answer is opened
            return core.open(answer, pair, payload_id, locked=locked)

    async def aclose(self) -> None:
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


class SecureChatCompletion:
    """End-to-end encrypted chat completions, OpenAI-shaped (async).

    :param base_url: the router (``NOMYO_BASE_URL``, else https://api.nomyo.ai).
    :param allow_http: allow ``http://`` — local development only.
    :param api_key: bearer key (``NOMYO_API_KEY`` when None).
    :param secure_memory: keep plaintexts and keys in locked, guarded memory.
    :param key_dir: load the client key pair from here, or create it here once.
    :param key_password: the password of the private key file in ``key_dir``.
    :param server_key_fingerprint: ``"sha256:<hex>"``; any other router key is refused.
    :param timeout: seconds for a whole call (retries included), or an ``httpx.Timeout``.
    :param max_retries: extra attempts after 429/5xx/connection failures.
    :param max_response_bytes: the largest answer read.
    :param verify: True, a CA file path or an ``ssl.SSLContext``.
    :raises nomyo.SecurityError: ``http://`` without ``allow_http``.
    :raises ValueError: a malformed option, or a key file that cannot be loaded.
    """

    def __init__(
        self,
        base_url: str | None = None,
        allow_http: bool = False,
        api_key: str | None = None,
        secure_memory: bool = True,
        *,
        key_dir: str | os.PathLike[str] | None = None,
        key_password: str | bytes | None = None,
        server_key_fingerprint: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        verify: Verify = True,
    ) -> None:
        self.client = SecureCompletionClient(
            base_url,
            allow_http,
            api_key=api_key,
            secure_memory=secure_memory,
            key_dir=key_dir,
            key_password=key_password,
            server_key_fingerprint=server_key_fingerprint,
            timeout=timeout,
            max_retries=max_retries,
            max_response_bytes=max_response_bytes,
            verify=verify,
            _eager_keys=True,  # start making the key pair now, not at the first request
        )
        self.chat = _AsyncChat(self)

    def __repr__(self) -> str:
        return f"<SecureChatCompletion {self.client.router_url}>"

    @property
    def base_url(self) -> str:
        return self.client.router_url

    async def create(
        self, model: str, messages: list[dict[str, Any]], **kwargs: Any
    ) -> dict[str, Any]:
        """Send an encrypted chat completion and return the answer.

        ``kwargs`` go into the encrypted request (temperature, max_tokens,
        tools, ...), except ``security_tier`` (sent as X-Security-Tier) and
        ``api_key`` (this call's bearer key).

        :returns: the chat.completion dict, with ``_metadata`` (payload_id,
            processed_at, is_encrypted, encryption_algorithm, and what the
            router put there).
        :raises ValueError: a bad model, messages, tier or ``stream=True``,
            before anything is sent.
        :raises nomyo.SecurityError: see :meth:`SecureCompletionClient.send_secure_request`.
        :raises nomyo.APIError: the router refused, or could not be reached.
        """
        tier, api_key, base_url = call_options(kwargs)
        payload = build_payload(model, messages, kwargs)
        payload_id = str(uuid.uuid4())
        if base_url is not None and base_url.rstrip("/") != self.base_url:
            # the published client's per-call base_url: a short-lived client, same key pair
            other = SecureCompletionClient(_core=self.client._core.with_base_url(base_url))
            try:
                return await other.send_secure_request(payload, payload_id, api_key, tier)
            finally:
                await other.aclose()
        return await self.client.send_secure_request(payload, payload_id, api_key, tier)

    acreate = create

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()

    async def __aenter__(self) -> SecureChatCompletion:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# ---------------------------------------------------------------- sync


class _SyncEngine:
    """The same protocol engine with blocking I/O (threads welcome)."""

    def __init__(self, core: _Core) -> None:
        self._core = core
        self._transport: SyncTransport | None = None
        self._lock = threading.Lock()
        self._fetch_lock = threading.Lock()

    def _http(self) -> SyncTransport:
        transport = self._transport
        if transport is None:
            with self._lock:
                if self._transport is None:
                    self._transport = SyncTransport(
                        verify=self._core.config.verify, timeout=self._core.config.http_timeout
                    )
                transport = self._transport
        return transport

    def router_key(self, *, force: bool = False, deadline: float | None = None) -> _RouterKey:
        core = self._core
        core.check_process()  # before any connection is used
        if not force and (cached := core.cached_router_key()) is not None:
            return cached
        with self._fetch_lock:
            if not force and (cached := core.cached_router_key()) is not None:
                return cached
            pem = self._http().get_text(core.config.key_url, deadline=deadline)
            return core.accept_router_key(pem)

    def send(
        self, payload: dict[str, Any], payload_id: str, api_key: str | None, tier: str | None
    ) -> dict[str, Any]:
        core = self._core
        locked = core.locked(tier)
        attempts = core.attempts(payload_id)
        deadline = attempts.deadline
        pair = core.keys.get()
        router = self.router_key(deadline=deadline)
        headers = core.headers(pair, payload_id, api_key, tier)
        refetched = False
        while True:
            body = core.seal(payload, router, locked=locked)
            try:
                answer = self._http().request(
                    "POST",
                    core.config.post_url,
                    content=body,
                    headers=headers,
                    limit=core.config.max_response_bytes,
                    timeout=attempts.timeout(),
                    deadline=deadline,
                    payload_id=payload_id,
                )
            except InvalidRequestError:
                if refetched:
                    raise
                refetched = True
                fresh = self.router_key(force=True, deadline=deadline)
                if not core.rotated(router, fresh):
                    raise
                router = fresh
                continue
            except APIError as error:
                delay = attempts.backoff(error)
                if delay is None:
                    raise
                time.sleep(delay)
                continue
            del body  # the sent package, before the answer is opened
            return core.open(answer, pair, payload_id, locked=locked)

    def close(self) -> None:
        with self._lock:
            transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()


class _SyncCompletions:
    def __init__(self, client: SyncSecureChatCompletion) -> None:
        self._client = client

    def create(self, model: str, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        """As :meth:`SyncSecureChatCompletion.create`."""
        return self._client.create(model, messages, **kwargs)


class _SyncChat:
    def __init__(self, client: SyncSecureChatCompletion) -> None:
        self.completions = _SyncCompletions(client)


class SyncSecureChatCompletion:
    """:class:`SecureChatCompletion` with blocking calls; needs no event loop
    and may be shared between threads.  Same parameters."""

    def __init__(
        self,
        base_url: str | None = None,
        allow_http: bool = False,
        api_key: str | None = None,
        secure_memory: bool = True,
        *,
        key_dir: str | os.PathLike[str] | None = None,
        key_password: str | bytes | None = None,
        server_key_fingerprint: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        verify: Verify = True,
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
        )
        self._core = _Core(config, _ClientKeys(key_dir, key_password))
        self._engine = _SyncEngine(self._core)
        self.chat = _SyncChat(self)

    def __repr__(self) -> str:
        return f"<SyncSecureChatCompletion {self._core.config.base_url}>"

    @property
    def base_url(self) -> str:
        return self._core.config.base_url

    def create(self, model: str, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        """As :meth:`SecureChatCompletion.create`, blocking."""
        tier, api_key, base_url = call_options(kwargs)
        payload = build_payload(model, messages, kwargs)
        payload_id = str(uuid.uuid4())
        if base_url is not None and base_url.rstrip("/") != self.base_url:
            other = _SyncEngine(self._core.with_base_url(base_url))
            try:
                return other.send(payload, payload_id, api_key, tier)
            finally:
                other.close()
        return self._engine.send(payload, payload_id, api_key, tier)

    def fetch_server_public_key(self) -> str:
        """The router's public key (PEM), fetched, pinned and cached."""
        return self._engine.router_key(force=True, deadline=self._core.attempts().deadline).pem

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
