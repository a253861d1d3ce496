"""Shared helpers: running code in a fresh interpreter (one per fault), as an
unprivileged user with a small RLIMIT_MEMLOCK, and reading /proc/self/smaps
independently of the code under test."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, settings

from nomyo import _keys
from nomyo.memory import BACKEND
from tests.faults import FaultRouter
from tests.servers import (
    API_KEY,
    UPSTREAM_KEY,
    Endpoint,
    FakeUpstream,
    make_tls,
    start_server,
    stop,
)

ROOT = Path(__file__).resolve().parents[1]

# no per-example deadline and no "too slow" health check anywhere (explicit
# @settings inherit these; a test's own suppress_health_check list replaces
# the profile's, so those lists name too_slow again): how long one example
# takes depends on the machine's load, not on the code under test
settings.register_profile("nomyo", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("nomyo")
UNPRIVILEGED_UID = 65534

# `make sanitize` sets NOMYO_SANITIZE.  ASan's reports go to files the Makefile
# checks; UBSan's go to stderr whatever its log_path says (the preloaded libasan
# interposes the call that would redirect them), so children's stderr is read.
SANITIZER_LANE = bool(os.environ.get("NOMYO_SANITIZE"))
SANITIZER_REPORT = re.compile(r": runtime error: |ERROR: (Address|UndefinedBehavior)Sanitizer")


def _no_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


# Runs first in an unprivileged child.  The interpreter starts as root and drops
# to uid/gid 65534 itself: exec'ing as that user instead would not work with
# interpreters installed where it cannot read (pyenv under a 0700 /root, which
# then silently picks up another libpython).  Dropping from root to a non-zero
# uid clears every capability, CAP_IPC_LOCK included; the child checks it did.
_DROP = """
import os, resource, sys
resource.setrlimit(resource.RLIMIT_MEMLOCK, ({limit}, {limit}))
# what the tests use from the standard library, loaded while it is readable
import ctypes, errno, json, warnings
import nomyo, nomyo.memory
{preload}
os.setgroups([])
os.setresgid({uid}, {uid}, {uid})
os.setresuid({uid}, {uid}, {uid})
# a uid change makes a process non-dumpable; a user's own process is dumpable
ctypes.CDLL(None, use_errno=True).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
_status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
assert os.getuid() == {uid} and int(_status["CapEff"], 16) == 0, "privileges not dropped"
assert int(_status["CapPrm"], 16) == 0
del _status
"""


def run_python(
    code: str,
    *,
    env: Mapping[str, str] | None = None,
    memlock: int | None = None,
    preload: str = "",
    timeout: float = 120,
    sanitizer_report_expected: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (this venv's), core dumps off.

    With ``memlock`` (bytes) the code runs as uid/gid 65534 with no
    capabilities and RLIMIT_MEMLOCK set to that value: what a normal user
    sees.  ``preload`` is code run before privileges are dropped (imports of
    modules the unprivileged user could not read).  In the sanitizer lane a
    sanitizer report on the child's stderr fails the test, unless
    ``sanitizer_report_expected``.
    """
    code = textwrap.dedent(code)
    if memlock is not None:
        code = _DROP.format(limit=memlock, uid=UNPRIVILEGED_UID, preload=preload) + code
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NOMYO_")}
    full_env.update(env or {})
    full_env["PYTHONDONTWRITEBYTECODE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd="/",
        preexec_fn=_no_core_dumps,
        check=False,
    )
    if SANITIZER_LANE and not sanitizer_report_expected:
        assert not SANITIZER_REPORT.search(proc.stderr), proc.stderr
    return proc


def can_drop_privileges() -> bool:
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(
    not can_drop_privileges(), reason="needs root to act as a normal user (uid 65534)"
)


@dataclass
class Mapping_:
    start: int
    end: int
    perms: str
    vmflags: set[str]
    locked_kb: int


def smaps() -> list[Mapping_]:
    """/proc/self/smaps, parsed here rather than by nomyo's own reader."""
    out: list[Mapping_] = []
    current: Mapping_ | None = None
    for line in Path("/proc/self/smaps").read_text(errors="replace").splitlines():
        fields = line.split()
        if not fields:
            continue
        if "-" in fields[0] and not fields[0].endswith(":"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            current = Mapping_(start, end, fields[1], set(), 0)
            out.append(current)
        elif current is not None and fields[0] == "Locked:":
            current.locked_kb = int(fields[1])
        elif current is not None and fields[0] == "VmFlags:":
            current.vmflags = set(fields[1:])
    return out


def mapping_at(address: int) -> Mapping_:
    for m in smaps():
        if m.start <= address < m.end:
            return m
    raise AssertionError(f"no mapping holds {address:#x}")


native_only = pytest.mark.skipif(BACKEND != "native", reason="native backend only")


# ---------------------------------------------------------------- servers (tests/servers.py)


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def router_key_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, rsa.RSAPrivateKey]:
    key = _keys.generate_private_key(4096)
    path = tmp_path_factory.mktemp("router") / "router.pem"
    _keys.save_private_key(key, path, password="router key password")
    return path, key


@pytest.fixture(scope="session")
def server(
    tls: dict[str, Path],
    router_key_file: tuple[Path, rsa.RSAPrivateKey],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Endpoint]:
    endpoint = start_server(
        tls, router_key_file, tmp_path_factory.mktemp("serve"), "--api-key", API_KEY
    )
    yield endpoint
    stop(endpoint)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    """An OpenAI-shaped upstream that records what it receives (tests/servers.py)."""
    fake = FakeUpstream()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def proxied(
    tls: dict[str, Path],
    router_key_file: tuple[Path, rsa.RSAPrivateKey],
    tmp_path_factory: pytest.TempPathFactory,
    upstream: FakeUpstream,
) -> Iterator[Endpoint]:
    """``nomyo serve --upstream`` to :func:`upstream`, with its own API key."""
    endpoint = start_server(
        tls,
        router_key_file,
        tmp_path_factory.mktemp("proxied"),
        "--upstream",
        upstream.url + "/v1",
        "--upstream-api-key-env",
        "UPSTREAM_KEY",
        env={"UPSTREAM_KEY": UPSTREAM_KEY},
    )
    yield endpoint
    stop(endpoint)


@pytest.fixture(scope="session")
def client_key() -> rsa.RSAPrivateKey:
    return _keys.generate_private_key(2048)


@pytest.fixture(scope="session")
def fault_key() -> rsa.RSAPrivateKey:
    return _keys.generate_private_key(2048)


@pytest.fixture
def router(tls: dict[str, Path], fault_key: rsa.RSAPrivateKey) -> Iterator[FaultRouter]:
    """A misbehaving-on-request router over TLS (tests/faults.py), fresh per test."""
    fault_router = FaultRouter(tls, key=fault_key)
    yield fault_router
    fault_router.stop()
