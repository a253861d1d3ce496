"""Shared helpers: running code in a fresh interpreter (one per fault), as an
unprivileged user with a small RLIMIT_MEMLOCK, and reading /proc/self/smaps
independently of the code under test."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from nomyo.memory import BACKEND

ROOT = Path(__file__).resolve().parents[1]
UNPRIVILEGED_UID = 65534


def _no_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_python(
    code: str,
    *,
    env: Mapping[str, str] | None = None,
    memlock: int | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (this venv's), core dumps off.

    With ``memlock`` (bytes) it runs as uid/gid 65534 with every capability
    dropped and RLIMIT_MEMLOCK set to that value: what a normal user sees.
    """
    cmd = [sys.executable, "-c", textwrap.dedent(code)]
    if memlock is not None:
        cmd = [
            "prlimit",
            f"--memlock={memlock}:{memlock}",
            "setpriv",
            f"--reuid={UNPRIVILEGED_UID}",
            f"--regid={UNPRIVILEGED_UID}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            *cmd,
        ]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NOMYO_")}
    full_env.update(env or {})
    full_env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd="/",
        preexec_fn=_no_core_dumps,
        check=False,
    )


def can_drop_privileges() -> bool:
    return os.geteuid() == 0 and bool(shutil.which("prlimit")) and bool(shutil.which("setpriv"))


needs_root = pytest.mark.skipif(
    not can_drop_privileges(), reason="needs root, prlimit and setpriv to act as a normal user"
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
