"""``nomyo demo``: the reference endpoint over TLS with a throwaway CA, a
pinned client, one encrypted request, and what protected it; leaves no files.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from . import _keys
from ._client import SyncSecureChatCompletion
from ._constants import DEFAULT_KEY_BITS
from .memory import lock_budget, protection

DEMO_PROMPT = "Patient 4711, 54 y: chest pain since this morning. Summarise for the handover."


@dataclass(frozen=True)
class Throwaway:
    """A CA and a certificate for some hosts signed by it, all in memory."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """keyUsage: digitalSignature, and keyCertSign and cRLSign for a CA."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def make_throwaway_tls(host: str = "127.0.0.1", *more_hosts: str) -> Throwaway:
    """A fresh P-256 CA and a server certificate for ``host`` (and
    ``more_hosts``), valid for a day.

    Both pass OpenSSL's VERIFY_X509_STRICT (the default of Python 3.13's
    ``ssl.create_default_context``): key identifiers on both, a critical
    basicConstraints and keyUsage on the CA, keyUsage, extendedKeyUsage and
    subjectAltName on the leaf.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nomyo throwaway CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    hosts = (host, *more_hosts)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Throwaway(
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        cert_pem=leaf.public_bytes(serialization.Encoding.PEM),
        key_pem=leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def write_tls_files(tls: Throwaway, folder: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The certificate and its key as files in ``folder`` (the key 0600, never
    over an existing file), for servers that want paths; returns both paths."""
    cert, key = Path(folder, "cert.pem"), Path(folder, "key.pem")
    cert.write_bytes(tls.cert_pem)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(tls.key_pem)
    return cert, key


@contextmanager
def running_endpoint(
    router_key: Any, tls: Throwaway, *, upstream: str | None = None
) -> Iterator[str]:
    """`nomyo serve` in this process (a uvicorn thread) on a free port; yields its URL.

    uvicorn wants the certificate as files: they live in a 0700 temporary
    directory only until the server has loaded them.
    """
    import uvicorn

    from .server import ServerConfig, create_app

    app = create_app(ServerConfig(private_key=router_key, upstream=upstream))
    with tempfile.TemporaryDirectory(prefix="nomyo-demo-") as folder:
        cert, key = write_tls_files(tls, folder)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
            log_level="warning",
        )
        config.load()  # reads the files into an SSLContext now
        server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="nomyo-demo-endpoint", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the demo endpoint did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _mark(ok: bool) -> str:
    return "yes" if ok else "NO"


def run_demo(
    *, upstream: str | None = None, model: str = "echo", say: Callable[[str], None] = print
) -> int:
    """Run the demo, writing what happens through ``say``; returns an exit code."""
    started = time.perf_counter()
    say("nomyo demo: a local NOMYO endpoint over TLS, a pinned client, one encrypted request")
    tls = make_throwaway_tls()
    say(f"  making a {DEFAULT_KEY_BITS}-bit router key and a throwaway TLS CA ...")
    router_key = _keys.generate_private_key()
    pin = _keys.fingerprint(router_key)
    context = ssl.create_default_context(cadata=tls.ca_pem.decode("ascii"))
    context.verify_flags |= ssl.VERIFY_X509_STRICT  # 3.13's default, on every version
    backend = f"upstream {upstream}" if upstream else "the echo model: it answers with the prompt"
    with running_endpoint(router_key, tls, upstream=upstream) as url:
        say(f"  endpoint: {url} ({backend}), router key {pin}")
        # the client starts making its own 4096-bit key pair now, on a thread
        with SyncSecureChatCompletion(url, verify=context, server_key_fingerprint=pin) as client:
            say(f"\n  > {DEMO_PROMPT}")
            sent = time.perf_counter()
            answer = client.create(model, [{"role": "user", "content": DEMO_PROMPT}])
            elapsed = time.perf_counter() - sent
            sent = time.perf_counter()
            client.create(model, [{"role": "user", "content": DEMO_PROMPT}])
            again = time.perf_counter() - sent
    content = answer["choices"][0]["message"].get("content")
    say(f"  < {content}\n")
    report = protection()
    limit = report.memlock_limit
    say("what protected it:")
    say("  payload:      AES-256-GCM, a fresh key and nonce per message")
    say(f"  key wrap:     RSA-OAEP-SHA256, {DEFAULT_KEY_BITS}-bit keys (router and client)")
    say(f"  router key:   pinned, {pin}")
    say("  transport:    TLS, verified against the throwaway CA")
    say(f"  memory ({report.backend} backend):")
    say(f"    locked against swap (mlock):   {_mark(report.mlock)}")
    say(f"    guard pages:                   {_mark(report.guard_pages)}")
    say(f"    excluded from core dumps:      {_mark(report.dontdump)}")
    say(f"    wiped in forked children:      {_mark(report.wipeonfork)}")
    say(f"    memfd_secret available:        {_mark(report.memfd_secret)}")
    # the same reading as `nomyo doctor`
    if lock_budget().cap_ipc_lock:
        shown = "no limit (CAP_IPC_LOCK)"
    else:
        shown = "unlimited" if limit is None else f"{limit // 1024} KiB"
    say(f"    RLIMIT_MEMLOCK:                {shown}")
    say(
        f"  request:      {elapsed * 1e3:.1f} ms the first time (client key pair and "
        f"router key included), {again * 1e3:.1f} ms the second"
    )
    say(f"  demo total:   {time.perf_counter() - started:.1f} s")
    return 0
