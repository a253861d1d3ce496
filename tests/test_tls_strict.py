"""Every certificate nomyo makes passes OpenSSL's VERIFY_X509_STRICT, which
Python 3.13's ``ssl.create_default_context`` sets: the demo's throwaway CA,
``nomyo serve --tls-self-signed`` and the tests' own (``make_tls``).  The
flag is set explicitly here, so a certificate 3.13 would refuse fails on
every Python.  The control: a certificate lacking one extension strict mode
wants (the authority key identifier) fails, and passes without the flag.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nomyo._demo import make_throwaway_tls
from tests.servers import make_tls, wait_listening


def handshake(ca_pem: bytes, cert_pem: bytes, key_pem: bytes, host: str, *, strict: bool) -> None:
    """A TLS handshake in memory (no sockets) to ``host``; raises
    ssl.SSLCertVerificationError when the client refuses the chain."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as folder:  # load_cert_chain wants a file
        chain = Path(folder, "chain.pem")
        chain.write_bytes(cert_pem + key_pem)
        server.load_cert_chain(chain)
    client = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    if strict:
        client.verify_flags |= ssl.VERIFY_X509_STRICT
    else:
        client.verify_flags &= ~ssl.VERIFY_X509_STRICT
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    tls_client = client.wrap_bio(c_in, c_out, server_hostname=host)
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side in (("client", tls_client), ("server", tls_server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


def pem(path: Path) -> bytes:
    return path.read_bytes()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_demo_certificates_pass_strict_verification(host: str) -> None:
    tls = make_throwaway_tls("127.0.0.1", "localhost")
    handshake(tls.ca_pem, tls.cert_pem, tls.key_pem, host, strict=True)


def test_the_tests_certificates_pass_strict_verification(tmp_path: Path) -> None:
    paths = make_tls(tmp_path)
    handshake(pem(paths["ca"]), pem(paths["cert"]), pem(paths["key"]), "127.0.0.1", strict=True)


def test_a_wrong_host_is_still_refused() -> None:
    tls = make_throwaway_tls("127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(tls.ca_pem, tls.cert_pem, tls.key_pem, "localhost", strict=True)


def _chain_without_leaf_aki() -> tuple[bytes, bytes, bytes]:
    """A CA and a leaf like the demo's, except that the leaf has no authority
    key identifier."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "control CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return (
        ca.public_bytes(serialization.Encoding.PEM),
        leaf.public_bytes(serialization.Encoding.PEM),
        key,
    )


def test_control_a_certificate_without_an_authority_key_id_fails_strict_only() -> None:
    ca, cert, key = _chain_without_leaf_aki()
    handshake(ca, cert, key, "127.0.0.1", strict=False)  # fine without the flag
    with pytest.raises(ssl.SSLCertVerificationError, match="Authority Key Identifier"):
        handshake(ca, cert, key, "127.0.0.1", strict=True)


def test_serve_tls_self_signed_prints_a_ca_that_verifies_strictly(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "nomyo", "serve", "--tls-self-signed", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env=env,
    )
    try:
        url, lines = wait_listening(process, log)
        assert url.startswith("https://127.0.0.1:")
        ca_lines = [line for line in lines if "--ca" in line]
        assert len(ca_lines) == 1, lines
        ca = Path(ca_lines[0].rsplit(" ", 1)[1].strip())
        assert ca.parent.parent == tmp_path
        # only the CA is left on disk while serving; the directory is 0700
        assert sorted(p.name for p in ca.parent.iterdir()) == ["ca.pem"]
        assert ca.parent.stat().st_mode & 0o777 == 0o700
        context = ssl.create_default_context(cafile=str(ca))
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        for base in (url, url.replace("127.0.0.1", "localhost")):
            answer = httpx.get(base + "/pki/public_key", verify=context, timeout=30)
            assert answer.status_code == 200 and "PUBLIC KEY" in answer.text
        # the control: without the printed CA the same server is refused
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(url + "/pki/public_key", timeout=30)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert not ca.parent.exists(), "the throwaway CA was left behind"
