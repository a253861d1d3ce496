"""Real servers for the tests: `nomyo serve` subprocesses over TLS and a fake
OpenAI-compatible upstream, plus helpers to talk protocol 1.0 to them."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from nomyo import _hybrid, _keys

API_KEY = "test-api-key-" + uuid.uuid4().hex
UPSTREAM_KEY = "upstream-key-" + uuid.uuid4().hex
MARKER = "marker-" + uuid.uuid4().hex  # a prompt no log line may contain
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "look something up",
            "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
        },
    }
]


@dataclass
class Endpoint:
    url: str
    process: subprocess.Popen[str]
    log: Path
    stdout: list[str]
    ca: Path
    router_key: rsa.RSAPrivateKey

    def client(self) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.ca))
        return httpx.Client(base_url=self.url, verify=context, timeout=30)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") + "".join(self.stdout)

    def logs_with(self, *texts: str, seconds: float = 10.0) -> str:
        """The logs once every one of ``texts`` is in them (the server is
        another process: its lines land when they land), or once ``seconds``
        pass; the caller asserts on what it needs."""
        deadline = time.monotonic() + seconds
        logs = self.logs()
        while not all(text in logs for text in texts) and time.monotonic() < deadline:
            time.sleep(0.05)
            logs = self.logs()
        return logs


def start_server(
    tls: dict[str, Path],
    router_key_file: tuple[Path, rsa.RSAPrivateKey],
    workdir: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> Endpoint:
    path, key = router_key_file
    log = workdir / "server.log"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "nomyo", "serve", "--host", "127.0.0.1", "--port", "0",
            "--certfile", str(tls["cert"]), "--keyfile", str(tls["key"]),
            "--server-key", str(path), "--server-key-password-env", "ROUTER_KEY_PASSWORD",
            "--log-level", "debug", *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env={**os.environ, "ROUTER_KEY_PASSWORD": "router key password", **(env or {})},
    )  # fmt: skip
    url, lines = wait_listening(process, log)
    return Endpoint(url, process, log, lines, tls["ca"], key)


def wait_listening(process: subprocess.Popen[str], log: Path) -> tuple[str, list[str]]:
    """The URL from the ``... listening on URL`` line a server prints once ready,
    and its stdout lines, which a thread keeps collecting (so the server never
    blocks on a full pipe)."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "listening on" in line:
            threading.Thread(target=lines.extend, args=(process.stdout,), daemon=True).start()
            return line.rsplit(" ", 1)[1].strip(), lines
    process.kill()
    raise AssertionError(f"server did not start: {''.join(lines)} {log.read_text()}")


def make_tls(folder: Path) -> dict[str, Path]:
    """A trustme CA and a certificate for 127.0.0.1/localhost, as PEM files in ``folder``."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    return paths


def stop(endpoint: Endpoint) -> None:
    stop_process(endpoint.process)


def stop_process(process: subprocess.Popen[str]) -> None:
    """Terminate a server subprocess and wait for it (killed after 15 s)."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:  # pragma: no cover
        process.kill()
        process.wait()


def request_headers(client_key: rsa.RSAPrivateKey, **overrides: str | None) -> dict[str, str]:
    headers: dict[str, str | None] = {
        "Content-Type": "application/octet-stream",
        "X-Payload-ID": str(uuid.uuid4()),
        "X-Public-Key": urllib.parse.quote(_keys.public_pem(client_key).decode()),
        "Authorization": f"Bearer {API_KEY}",
    }
    headers.update(overrides)
    return {k: v for k, v in headers.items() if v is not None}


def chat(content: str = MARKER, **extra: Any) -> dict[str, Any]:
    return {"model": "echo", "messages": [{"role": "user", "content": content}], **extra}


def post(
    endpoint: Endpoint,
    client_key: rsa.RSAPrivateKey,
    body: bytes | None = None,
    **headers: str | None,
) -> httpx.Response:
    if body is None:
        body = _hybrid.seal_json(chat(), endpoint.router_key.public_key())
    with endpoint.client() as http:
        return http.post(
            "/v1/chat/secure_completion",
            content=body,
            headers=request_headers(client_key, **headers),
        )


class ThreadedApp:
    """An ASGI app served by uvicorn on a thread, plain HTTP on a free loopback port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class FakeUpstream:
    """An OpenAI-compatible /v1/chat/completions that records what it gets."""

    def __init__(self, status: int = 200) -> None:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        self.received: list[tuple[dict[str, Any], str | None]] = []
        self.status = status
        self.error: Any = {"error": "boom"}  # the body of a non-200 answer

        async def completions(request: Request) -> JSONResponse:
            body = await request.json()
            self.received.append((body, request.headers.get("authorization")))
            if self.status != 200:
                return JSONResponse(self.error, status_code=self.status)
            return JSONResponse(
                {
                    "id": "chatcmpl-up",
                    "object": "chat.completion",
                    "created": 1,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "from upstream"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                }
            )

        app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
        self.app = ThreadedApp(app)
        self.url = self.app.url

    def close(self) -> None:
        self.app.close()
