"""The transport floor for ``bench_client.py``: a plain-JSON chat endpoint over TLS.

The same stack as ``nomyo serve`` (uvicorn + Starlette, one process, the same TLS
certificate) and the same model (nomyo's built-in echo), minus everything nomyo adds:
the request is ``POST /v1/chat/completions`` with the chat JSON in the clear (inside
TLS), and the answer is the chat.completion JSON.  No keys, no sealing, no thread pool.

Run as a script (it is not a test module); like ``nomyo serve`` it prints
``... listening on https://HOST:PORT`` once it accepts connections::

    python benchmarks/_echo_endpoint.py --certfile cert.pem --keyfile key.pem
"""

from __future__ import annotations

import argparse
import asyncio
import socket

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from nomyo.server import echo_completion

PATH = "/v1/chat/completions"


async def completions(request: Request) -> JSONResponse:
    return JSONResponse(echo_completion(await request.json()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--certfile", required=True)
    parser.add_argument("--keyfile", required=True)
    args = parser.parse_args()

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            for server in self.servers if self.started else ():
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    print(f"echo endpoint: listening on https://{host}:{port}", flush=True)

    app = Starlette(routes=[Route(PATH, completions, methods=["POST"])])
    server = Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            ssl_certfile=args.certfile,
            ssl_keyfile=args.keyfile,
            log_level="warning",
            server_header=False,
        )
    )
    asyncio.run(server.serve())


if __name__ == "__main__":
    main()
