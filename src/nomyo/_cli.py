"""The ``nomyo`` command: argument parsing, messages and exit codes only.

Every failure is one line on stderr (a traceback only with ``--debug``) and
an exit code per class of failure:

    0  success                     3  no connection, or timed out
    1  any other failure           4  authentication: API key refused (401/403)
    2  bad usage or input          5  security: pin, TLS-less URL, answer refused
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import itertools
import logging
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import __version__, _keys
from ._constants import (
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_KEY_BITS,
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_PROXY_LISTEN,
    DEFAULT_SERVE_HOST,
    DEFAULT_SERVE_PORT,
    MODEL_ENV,
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    SECURITY_TIERS,
)
from ._exceptions import (
    APIConnectionError,
    AuthenticationError,
    ForbiddenError,
    NomyoError,
    SecurityError,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_AUTHENTICATION = 4
EXIT_SECURITY = 5


class _Failure(Exception):
    """A failure to report in one line, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, _Failure):
        return exc.code
    if isinstance(exc, SecurityError):
        return EXIT_SECURITY
    if isinstance(exc, AuthenticationError | ForbiddenError):
        return EXIT_AUTHENTICATION
    if isinstance(exc, APIConnectionError):
        return EXIT_CONNECTION
    if isinstance(exc, ValueError | TypeError):
        return EXIT_USAGE
    return EXIT_FAILURE


@contextlib.contextmanager
def _spinner(message: str) -> Iterator[None]:
    """A spinner on stderr while a slow step runs, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        yield
        return
    done = threading.Event()

    def spin() -> None:
        for frame in itertools.cycle("|/-\\"):
            sys.stderr.write(f"\r{message} {frame}")
            sys.stderr.flush()
            if done.wait(0.1):
                break
        sys.stderr.write("\r" + " " * (len(message) + 2) + "\r")
        sys.stderr.flush()

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _env_secret(name: str | None, what: str) -> str | None:
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise _Failure(f"{what}: environment variable {name} is not set", EXIT_USAGE)
    return value


def _router_url(url: str | None, allow_http: bool) -> str:
    """The router's URL (the option, $NOMYO_BASE_URL or the default), refused
    when plain HTTP without --allow-http; with it, one line on stderr."""
    url = url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    if url.partition(":")[0].lower() == "http":
        if not allow_http:
            raise _Failure(
                f"refusing plain HTTP to {url}: use https://, or --allow-http "
                "(local development only)",
                EXIT_SECURITY,
            )
        print(
            f"nomyo: warning: plain HTTP to {url}: only the payload is encrypted, "
            "not the connection (--allow-http)",
            file=sys.stderr,
        )
    return url


def _verify(args: argparse.Namespace) -> Any:
    if getattr(args, "ca", None):
        try:
            return ssl.create_default_context(cafile=args.ca)
        except (OSError, ssl.SSLError) as exc:
            raise _Failure(f"--ca {args.ca}: {exc}", EXIT_USAGE) from exc
    return True


# ---------------------------------------------------------------- chat


def _chat(args: argparse.Namespace) -> int:
    from ._client import SyncSecureChatCompletion

    base_url = _router_url(args.base_url, args.allow_http)
    model = args.model or os.environ.get(MODEL_ENV)
    if not model:
        raise _Failure(f"nomyo chat needs --model (or {MODEL_ENV})", EXIT_USAGE)
    # a piped prompt's final line break ends the file, not the prompt
    prompt = args.prompt if args.prompt is not None else sys.stdin.read().rstrip("\r\n")
    if not prompt.strip():
        raise _Failure("nothing to send: give a PROMPT or pipe one on stdin", EXIT_USAGE)
    extra: dict[str, Any] = {}
    if args.tier:
        extra["security_tier"] = args.tier
    with SyncSecureChatCompletion(
        base_url,
        allow_http=args.allow_http,
        api_key=args.api_key,
        server_key_fingerprint=args.pin,
        verify=_verify(args),
        max_retries=args.max_retries,
    ) as client:
        messages = [{"role": "user", "content": prompt}]
        if args.system:
            messages.insert(0, {"role": "system", "content": args.system})
        with _spinner("nomyo: making a client key pair and sending"):
            answer = client.create(model, messages, **extra)
    for choice in answer.get("choices", []):
        message = choice.get("message") or {}
        if message.get("content") is not None:
            print(message["content"])
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            print(f"[tool call] {function.get('name')}({function.get('arguments')})")
    return EXIT_OK


# ---------------------------------------------------------------- keys


def _password(args: argparse.Namespace) -> str | None:
    if args.no_password:
        return None
    if args.password_env:
        return _env_secret(args.password_env, "--password-env")
    if not sys.stdin.isatty():
        raise _Failure(
            "no password: use --password-env VAR, run in a terminal, or pass --no-password",
            EXIT_USAGE,
        )
    first = getpass.getpass("password for the private key: ")
    if not first or getpass.getpass("again: ") != first:
        raise _Failure("the passwords are empty or do not match", EXIT_USAGE)
    return first


def _keys_generate(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    private, public = folder / PRIVATE_KEY_FILE, folder / PUBLIC_KEY_FILE
    for path in (private, public):
        if path.exists():
            raise _Failure(f"{path} exists: refusing to overwrite it")
    password = _password(args)
    with _spinner(f"nomyo: generating a {args.bits}-bit key pair"):
        key = _keys.generate_private_key(args.bits)
    try:
        _keys.save_private_key(key, private, password=password)
        _keys.save_public_key(key, public)
    except FileExistsError as exc:
        raise _Failure(str(exc)) from exc
    state = "encrypted" if password else "NOT encrypted"
    print(f"private key: {private} (0600, {state})")
    print(f"public key:  {public}")
    print(f"fingerprint: {_keys.fingerprint(key)}")
    return EXIT_OK


def _load_private_key(path: str | Path, password: str | None, option: str) -> Any:
    try:
        return _keys.load_private_key(path, password=password)
    except ValueError as exc:
        if password is None and "a password is needed" in str(exc):
            raise _Failure(f"{exc}: give it with {option} VAR", EXIT_USAGE) from exc
        raise


def _keys_fingerprint(args: argparse.Namespace) -> int:
    if args.server:
        from ._client import SyncSecureChatCompletion

        server = _router_url(args.server, args.allow_http)
        with SyncSecureChatCompletion(
            server, allow_http=args.allow_http, verify=_verify(args), max_retries=0
        ) as client:
            pem = client.fetch_server_public_key()
        print(_keys.fingerprint(_keys.load_public_key(pem)))
        return EXIT_OK
    if not args.pemfile:
        raise _Failure("give a PEM file or --server URL", EXIT_USAGE)
    path = Path(args.pemfile)
    try:
        data = _keys.read_key_file(path)
    except OSError as exc:
        raise _Failure(f"{path}: {exc.strerror or exc}") from exc
    if b"PRIVATE KEY" in data:
        password = _env_secret(args.password_env, "--password-env")
        key: Any = _load_private_key(path, password, "--password-env")
    else:
        key = _keys.load_public_key(data)
    print(_keys.fingerprint(key))
    return EXIT_OK


# ---------------------------------------------------------------- doctor


def _doctor(args: argparse.Namespace) -> int:
    from .memory import lock_budget, protection

    report = protection()
    budget = lock_budget()

    def line(ok: bool, what: str, detail: str = "") -> None:
        print(f"  [{'ok' if ok else '!!'}] {what}{': ' + detail if detail else ''}")

    print(f"nomyo {__version__}, {report.backend} secure-memory backend")
    line(report.backend == "native", "compiled extension", report.backend)
    line(report.mlock, "memory locked against swap (mlock)")
    line(report.guard_pages, "guard pages around secrets")
    line(report.dontdump, "secrets excluded from core dumps (MADV_DONTDUMP)")
    line(report.wipeonfork, "secrets wiped in forked children (MADV_WIPEONFORK)")
    line(report.memfd_secret, "memfd_secret (out of the kernel's direct map)")
    if budget.cap_ipc_lock:
        shown = "no limit (CAP_IPC_LOCK)"
    elif budget.limit is None:
        shown = "unlimited"
    else:
        shown = f"{budget.limit // 1024} KiB, {budget.locked // 1024} KiB locked now"
    line(budget.enough, "RLIMIT_MEMLOCK", shown)
    if budget.per_request is not None:
        print(f"       a request can keep about {budget.per_request // 1024} KiB of prompt locked")
    advice = []
    if report.backend != "native":
        advice.append(
            "reinstall nomyo where a C compiler and the Python headers are available "
            "(pip install --force-reinstall --no-binary nomyo nomyo)"
        )
    if not report.mlock or not budget.enough:
        advice += [
            "raise the lock limit: `ulimit -l unlimited` in the shell that starts the program,",
            "  LimitMEMLOCK=infinity in its systemd unit, --ulimit memlock=-1 for docker,",
            "  or grant CAP_IPC_LOCK (setcap cap_ipc_lock=+ep on a dedicated interpreter)",
        ]
    if not report.memfd_secret:
        advice.append(
            "memfd_secret needs Linux >= 5.14 (some kernels also need secretmem.enable=1 "
            "on the command line); nomyo uses ordinary locked memory without it"
        )
    if advice:
        print("to improve:")
        for item in advice:
            print(f"  {item}")
    else:
        print("everything nomyo can use is in force")
    return EXIT_OK


# ---------------------------------------------------------------- demo, proxy, serve


def _demo(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise _Failure(
            f"nomyo demo needs the server extra: pip install 'nomyo[server]' ({exc})"
        ) from exc
    from ._demo import run_demo

    return run_demo(upstream=args.upstream, model=args.model)


def _proxy(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ._client import SecureChatCompletion
        from .proxy import create_proxy_app, is_loopback
    except ImportError as exc:
        raise _Failure(
            f"nomyo proxy needs the server extra: pip install 'nomyo[server]' ({exc})"
        ) from exc
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit():
        raise _Failure(f"--listen must be HOST:PORT, not {args.listen!r}", EXIT_USAGE)
    _check_free(host, int(port))
    if not is_loopback(host):
        print(
            f"nomyo proxy: WARNING: listening on {host}, not loopback: anyone who can reach "
            "it sends requests with your API key, and the hop to this proxy is plain HTTP",
            file=sys.stderr,
        )
    client = SecureChatCompletion(
        _router_url(args.base_url, args.allow_http),
        allow_http=args.allow_http,
        api_key=args.api_key,
        server_key_fingerprint=args.pin,
        verify=_verify(args),
    )
    # the router key is the proxy's own: a tool's placeholder bearer never replaces it
    # the app answers only loopback Host names (DNS rebinding), unless told otherwise
    app = create_proxy_app(
        client,
        models=args.model or (),
        api_key=args.api_key or os.environ.get("NOMYO_API_KEY"),
        allowed_hosts=None if is_loopback(host) else ["*"],
    )
    return _run_uvicorn(
        uvicorn.Config(
            app, host=host, port=int(port), log_level=args.log_level, server_header=False
        ),
        lambda h, p: f"nomyo proxy: http://{h}:{p}/v1 -> {client.base_url}",
    )


def _run_uvicorn(config: Any, banner: Callable[[str, int], str]) -> int:
    """Serve until stopped, printing ``banner(host, port)`` for each bound socket
    once listening (so ``--port 0`` tells which port it got)."""
    import uvicorn

    logging.basicConfig(
        level=str(config.log_level).upper(), format="%(levelname)s %(name)s: %(message)s"
    )

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            for server in self.servers if self.started else ():
                for sock in server.sockets:
                    print(banner(*sock.getsockname()[:2]), flush=True)

    server = Server(config)
    asyncio.run(server.serve())
    return EXIT_OK if server.started else EXIT_FAILURE


def _check_free(host: str, port: int) -> None:
    """One line and exit code 3 when ``host:port`` cannot be listened on (in
    use, or not ours to bind), instead of uvicorn's log lines at start."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise _Failure(f"cannot listen on {host}:{port}: {exc.strerror}", EXIT_CONNECTION) from exc
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                probe.bind(address)
            except OSError as exc:
                why = (exc.strerror or str(exc)).lower()
                raise _Failure(
                    f"cannot listen on {host}:{port}: {why} (choose another port)",
                    EXIT_CONNECTION,
                ) from exc


def _server_key(args: argparse.Namespace) -> Any:
    password = _env_secret(args.server_key_password_env, "--server-key-password-env")
    if args.server_key:
        try:
            return _load_private_key(args.server_key, password, "--server-key-password-env")
        except _Failure:
            raise
        except (OSError, ValueError, NomyoError) as exc:
            raise _Failure(f"cannot use --server-key: {exc}", _exit_code(exc)) from exc
    if password is not None:
        raise _Failure("--server-key-password-env needs --server-key", EXIT_USAGE)
    with _spinner(f"nomyo serve: generating a fresh {DEFAULT_KEY_BITS}-bit router key"):
        return _keys.generate_private_key()


def _serve_api_keys(args: argparse.Namespace) -> tuple[str, ...]:
    """--api-key, --api-key-env and --api-key-file together; never prints a key."""
    from .server import read_api_key_file

    keys = list(args.api_key or ())
    if keys:
        print(
            "nomyo serve: WARNING: --api-key is readable by every local user "
            "(/proc/PID/cmdline); use --api-key-env or --api-key-file",
            file=sys.stderr,
        )
    for name in args.api_key_env or ():
        keys.append(str(_env_secret(name, "--api-key-env")))
    for path in args.api_key_file or ():
        try:
            keys.extend(read_api_key_file(path))
        except (OSError, ValueError, NomyoError) as exc:
            raise _Failure(f"cannot use --api-key-file: {exc}", _exit_code(exc)) from exc
    return tuple(dict.fromkeys(keys))


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .server import ServerConfig, create_app
    except ImportError as exc:
        raise _Failure(
            f"nomyo serve needs the server extra: pip install 'nomyo[server]' ({exc})"
        ) from exc
    if bool(args.certfile) != bool(args.keyfile):
        raise _Failure("--certfile and --keyfile go together", EXIT_USAGE)
    if args.tls_self_signed and args.certfile:
        raise _Failure("--tls-self-signed or --certfile/--keyfile, not both", EXIT_USAGE)
    for path in filter(None, (args.certfile, args.keyfile)):
        if not os.path.isfile(path):
            raise _Failure(f"no such file: {path}", EXIT_USAGE)
    _check_free(args.host, args.port)  # before a router key is made
    config = ServerConfig(
        private_key=_server_key(args),
        api_keys=_serve_api_keys(args),
        upstream=args.upstream,
        upstream_api_key=_env_secret(args.upstream_api_key_env, "--upstream-api-key-env"),
        body_timeout=args.body_timeout,
        max_concurrent=args.max_concurrent,
    )
    print(f"router key fingerprint: {_keys.fingerprint(config.private_key)}", flush=True)
    scheme = "https" if args.certfile or args.tls_self_signed else "http"
    certfile, keyfile, folder = args.certfile, args.keyfile, None
    if args.tls_self_signed:
        certfile, keyfile, folder = _self_signed(args.host)
    try:
        uvicorn_config = uvicorn.Config(
            create_app(config),
            host=args.host,
            port=args.port,
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
            log_level=args.log_level,
            server_header=False,
        )
        if folder is not None:
            uvicorn_config.load()  # the certificate and key are in memory from here on
            os.unlink(certfile)
            os.unlink(keyfile)
            print(f"nomyo serve: throwaway TLS CA, for clients' --ca: {folder}/ca.pem", flush=True)
            # uvicorn ends a SIGTERM'd server by raising SIGTERM again: make that
            # an exit through the finally below, which removes the CA
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        banner = lambda h, p: f"nomyo serve: listening on {scheme}://{h}:{p}"  # noqa: E731
        return _run_uvicorn(uvicorn_config, banner)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _self_signed(host: str) -> tuple[str, str, str]:
    """--tls-self-signed: a throwaway CA (as ``nomyo demo`` makes) and a
    certificate for ``host``, 127.0.0.1 and localhost, in a fresh 0700
    directory; returns the certificate's and key's paths and the directory
    (which holds ca.pem for the clients)."""
    from ._demo import make_throwaway_tls, write_tls_files

    hosts = [h for h in (host, "127.0.0.1", "localhost") if h not in ("0.0.0.0", "::", "")]  # noqa: S104
    tls = make_throwaway_tls(*dict.fromkeys(hosts))
    folder = tempfile.mkdtemp(prefix="nomyo-serve-tls-")
    Path(folder, "ca.pem").write_bytes(tls.ca_pem)
    cert, key = write_tls_files(tls, folder)
    return str(cert), str(key), folder


# ---------------------------------------------------------------- the parser


def _router_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-url",
        default=None,
        metavar="URL",
        help=f"the router (default: ${BASE_URL_ENV}, else {DEFAULT_BASE_URL})",
    )
    parser.add_argument("--api-key", metavar="KEY", help="bearer key (default: $NOMYO_API_KEY)")
    parser.add_argument("--pin", metavar="sha256:HEX", help="refuse any other router key")
    parser.add_argument("--ca", metavar="FILE", help="trust this CA (PEM) for the router's TLS")
    parser.add_argument(
        "--allow-http", action="store_true", help="allow http:// (local development only)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nomyo",
        description="End-to-end encrypted chat completions with NOMYO routers.",
        epilog="exit codes: 0 ok, 1 failure, 2 usage, 3 connection, 4 authentication, 5 security",
    )
    parser.add_argument("--version", action="version", version=f"nomyo {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    chat = commands.add_parser("chat", help="send one encrypted prompt, print the answer")
    _router_options(chat)
    chat.add_argument("--model", help=f"the model (default: ${MODEL_ENV})")
    chat.add_argument("--tier", choices=SECURITY_TIERS, help="security tier")
    chat.add_argument("--system", metavar="TEXT", help="a system message first")
    chat.add_argument("--max-retries", type=int, default=DEFAULT_MAX_RETRIES)
    chat.add_argument("prompt", nargs="?", metavar="PROMPT", help="the prompt (default: stdin)")
    chat.set_defaults(func=_chat)

    keys = commands.add_parser("keys", help="client key pairs and fingerprints")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    generate = key_commands.add_parser("generate", help="make a key pair in a directory")
    generate.add_argument("--dir", required=True, help="where private_key.pem/public_key.pem go")
    generate.add_argument("--password-env", metavar="VAR", help="the password, from $VAR")
    generate.add_argument("--no-password", action="store_true", help="leave the key unencrypted")
    generate.add_argument("--bits", type=int, default=DEFAULT_KEY_BITS)
    generate.set_defaults(func=_keys_generate)
    fingerprint = key_commands.add_parser("fingerprint", help="print sha256:... for pinning")
    fingerprint.add_argument("pemfile", nargs="?", metavar="PEMFILE")
    fingerprint.add_argument("--server", metavar="URL", help="fetch the router's key from URL")
    fingerprint.add_argument("--ca", metavar="FILE", help="trust this CA (PEM)")
    fingerprint.add_argument("--allow-http", action="store_true")
    fingerprint.add_argument("--password-env", metavar="VAR", help="for an encrypted private key")
    fingerprint.set_defaults(func=_keys_fingerprint)

    doctor = commands.add_parser("doctor", help="what memory protection is in force, and fixes")
    doctor.set_defaults(func=_doctor)

    demo = commands.add_parser("demo", help="a local encrypted round trip, and what protected it")
    demo.add_argument("--upstream", metavar="URL", help="an OpenAI-compatible model server")
    demo.add_argument("--model", default="echo", help="the model to ask (default: echo)")
    demo.set_defaults(func=_demo)

    proxy = commands.add_parser(
        "proxy", help="a local OpenAI-compatible endpoint that encrypts to a router"
    )
    _router_options(proxy)
    proxy.add_argument("--listen", default=DEFAULT_PROXY_LISTEN, metavar="HOST:PORT")
    proxy.add_argument("--model", action="append", help="a model for /v1/models (repeatable)")
    proxy.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    proxy.set_defaults(func=_proxy)

    serve = commands.add_parser(
        "serve",
        help="run the reference secure endpoint",
        description="Run a NOMYO protocol 1.0 endpoint: the built-in echo model, "
        "or an OpenAI-compatible upstream behind end-to-end encryption.",
    )
    serve.add_argument("--host", default=DEFAULT_SERVE_HOST)
    serve.add_argument("--port", type=int, default=DEFAULT_SERVE_PORT, help="0 picks a free port")
    serve.add_argument("--certfile", help="TLS certificate (PEM); serve HTTPS")
    serve.add_argument("--keyfile", help="TLS private key (PEM)")
    serve.add_argument(
        "--tls-self-signed",
        action="store_true",
        help="serve HTTPS with a throwaway CA made now; its path is printed for --ca",
    )
    serve.add_argument(
        "--api-key",
        action="append",
        metavar="KEY",
        help="accepted bearer key (repeatable; visible to local users: prefer the next two)",
    )
    serve.add_argument(
        "--api-key-env", action="append", metavar="VAR", help="accepted bearer key from $VAR"
    )
    serve.add_argument(
        "--api-key-file",
        action="append",
        metavar="PATH",
        help="accepted bearer keys, one per line (a 0600 file of your own)",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=DEFAULT_BODY_TIMEOUT,
        metavar="SECONDS",
        help=f"time to send a whole request body (default: {DEFAULT_BODY_TIMEOUT:g})",
    )
    serve.add_argument(
        "--max-concurrent",
        type=int,
        default=DEFAULT_MAX_CONCURRENT,
        metavar="N",
        help=f"requests at once; more get 503 (default: {DEFAULT_MAX_CONCURRENT})",
    )
    serve.add_argument("--server-key", metavar="PEM", help="router private key file (0600)")
    serve.add_argument("--server-key-password-env", metavar="VAR")
    serve.add_argument("--upstream", metavar="URL", help="OpenAI-compatible server to forward to")
    serve.add_argument("--upstream-api-key-env", metavar="VAR")
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.set_defaults(func=_serve)
    return parser


def _one_line_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    text = " ".join(str(message).split()).removeprefix("nomyo: ")
    print(f"nomyo: warning: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # warnings as one line, without a source line; plain HTTP was said once already
    warnings.showwarning = _one_line_warning
    warnings.filterwarnings("ignore", message="nomyo: plain HTTP", category=UserWarning)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("nomyo: interrupted", file=sys.stderr)
        return 130
    except (_Failure, NomyoError, ValueError, TypeError, OSError) as exc:
        if args.debug:
            raise
        print(f"nomyo: error: {exc}", file=sys.stderr)
        return _exit_code(exc)
