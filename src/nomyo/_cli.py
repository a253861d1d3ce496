"""The ``nomyo`` command: argument parsing, messages and exit codes only.

Exit codes: 0 success, 1 a failure (one line on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__, _keys
from ._constants import DEFAULT_SERVE_HOST, DEFAULT_SERVE_PORT
from ._exceptions import NomyoError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _Failure(Exception):
    """A failure to report in one line and exit with EXIT_FAILURE."""


def _env_secret(name: str | None, what: str) -> str | None:
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise _Failure(f"{what}: environment variable {name} is not set")
    return value


def _server_key(args: argparse.Namespace) -> Any:
    password = _env_secret(args.server_key_password_env, "--server-key-password-env")
    if args.server_key:
        try:
            return _keys.load_private_key(args.server_key, password=password)
        except (OSError, ValueError, NomyoError) as exc:
            raise _Failure(f"cannot use --server-key: {exc}") from exc
    if password is not None:
        raise _Failure("--server-key-password-env needs --server-key")
    print(
        f"nomyo serve: generating a fresh {_keys.DEFAULT_KEY_BITS}-bit router key...",
        file=sys.stderr,
        flush=True,
    )
    return _keys.generate_private_key()


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .server import ServerConfig, create_app
    except ImportError as exc:
        raise _Failure(
            f"nomyo serve needs the server extra: pip install 'nomyo[server]' ({exc})"
        ) from exc
    if bool(args.certfile) != bool(args.keyfile):
        raise _Failure("--certfile and --keyfile go together")
    for path in filter(None, (args.certfile, args.keyfile)):
        if not os.path.isfile(path):
            raise _Failure(f"no such file: {path}")
    config = ServerConfig(
        private_key=_server_key(args),
        api_keys=tuple(args.api_key or ()),
        upstream=args.upstream,
        upstream_api_key=_env_secret(args.upstream_api_key_env, "--upstream-api-key-env"),
    )
    print(f"router key fingerprint: {_keys.fingerprint(config.private_key)}", flush=True)
    scheme = "https" if args.certfile else "http"
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            for server in self.servers if self.started else ():
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    print(f"nomyo serve: listening on {scheme}://{host}:{port}", flush=True)

    server = Server(
        uvicorn.Config(
            create_app(config),
            host=args.host,
            port=args.port,
            ssl_certfile=args.certfile,
            ssl_keyfile=args.keyfile,
            log_level=args.log_level,
            server_header=False,
        )
    )
    asyncio.run(server.serve())
    return EXIT_OK if server.started else EXIT_FAILURE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nomyo", description="End-to-end encrypted chat completions with NOMYO routers."
    )
    parser.add_argument("--version", action="version", version=f"nomyo {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
        "--api-key", action="append", metavar="KEY", help="accepted bearer key (repeatable)"
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except _Failure as exc:
        if args.debug:
            raise
        print(f"nomyo: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
