"""What we ship: the sdist holds exactly what a source build needs, and the
manylinux wheel works where no C compiler can run.

The sdist test builds one (``python -m build --sdist``, a few seconds) and
runs everywhere.  The wheel test needs the wheel ``make wheel`` makes: ``make
wheel-check`` points NOMYO_TEST_DIST at it; without that it is skipped, and
says so.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.servers import wait_listening

#: written by setuptools' sdist itself: metadata, not sources
SDIST_METADATA = {"PKG-INFO", "setup.cfg"}
#: what a source build reads besides the package and csrc/
BUILD_FILES = {"pyproject.toml", "setup.py", "README.md", "MANIFEST.in"}


def _tracked(*patterns: str) -> set[str]:
    out = subprocess.run(
        ["git", "ls-files", "--", *patterns],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return set(out.stdout.split())


def expected_sdist() -> set[str]:
    """The sources a build needs, from the checkout: every tracked C file,
    header and build script in csrc/, the package's tracked files, the build
    files, and a license file when pyproject names one."""
    files = _tracked("csrc/*.c", "csrc/*.h", "csrc/*.py", "src/nomyo/*") | BUILD_FILES
    pyproject = (ROOT / "pyproject.toml").read_text()  # no tomllib on 3.10
    if re.search(r"^license(-files)?\s*=", pyproject, re.M):
        files |= _tracked("LICENSE*", "COPYING*")
    return files


def sdist_members(sdist: Path) -> set[str]:
    with tarfile.open(sdist) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    top = names[0].split("/", 1)[0]
    assert all(n.startswith(top + "/") for n in names)
    return {n.split("/", 1)[1] for n in names}


def without_metadata(members: set[str]) -> set[str]:
    return {m for m in members if m not in SDIST_METADATA and ".egg-info/" not in m}


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    made = os.environ.get("NOMYO_TEST_DIST")
    if made:
        found = sorted(Path(made).glob("nomyo-*.tar.gz"))
        assert len(found) == 1, found
        return found[0]
    out = tmp_path_factory.mktemp("sdist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return next(out.glob("nomyo-*.tar.gz"))


@pytest.mark.slow
def test_the_sdist_holds_exactly_what_a_source_build_needs(sdist: Path) -> None:
    members = sdist_members(sdist)
    assert SDIST_METADATA <= members
    expected = expected_sdist()
    # the sources are there: every C unit and header, the build script
    assert {"csrc/build.py", "csrc/securemem.h", "csrc/securemem.c"} <= expected
    assert without_metadata(members) == expected, (
        f"missing: {sorted(expected - members)}; "
        f"extra: {sorted(without_metadata(members) - expected)}"
    )


def test_the_sdist_check_sees_a_missing_header_and_a_stray_file() -> None:
    # the control: the comparison above fails on what it must catch
    expected = expected_sdist()
    assert without_metadata(expected - {"csrc/securemem.h"}) != expected
    assert without_metadata(expected | {"tests/test_cli.py"}) != expected
    assert without_metadata(expected | {"src/nomyo/_securemem.abi3.so"}) != expected
    assert without_metadata(expected | {"PKG-INFO", "src/nomyo.egg-info/PKG-INFO"}) == expected


def _wheel() -> Path:
    made = os.environ.get("NOMYO_TEST_DIST")
    if not made:
        pytest.skip("needs the wheel `make wheel` builds: run `make wheel-check`")
    found = sorted(Path(made).glob("nomyo-*.whl"))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_the_wheel_is_manylinux_and_carries_the_extension() -> None:
    wheel = _wheel()
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert f"-{tag}-{tag}-manylinux_" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert [n for n in names if n.startswith("nomyo/_securemem") and n.endswith(".so")]
    assert not [n for n in names if n.endswith(".c") or n.startswith(("tests/", "csrc/"))]


@pytest.mark.slow
def test_the_wheel_works_without_a_compiler(tmp_path: Path) -> None:
    wheel = _wheel()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python, nomyo = venv / "bin" / "python", venv / "bin" / "nomyo"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOMYO_", "PYTHON"))}
    env.update(CC="/bin/false", CXX="/bin/false", LDSHARED="/bin/false")
    # binaries only: nothing may be built, for nomyo or its dependencies
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--only-binary", ":all:",
         f"{wheel}[server]"],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    shown = subprocess.run(
        [str(python), "-W", "error::UserWarning", "-c",
         "import nomyo; print(nomyo.__file__); print(nomyo.protection().backend)"],
        capture_output=True, text=True, env=env, cwd="/", timeout=60, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    where, backend = shown.stdout.split()
    assert where.startswith(str(venv)) and backend == "native"

    # a round trip: the wheel's own `nomyo serve` and `nomyo chat`
    log = tmp_path / "serve.log"
    server = subprocess.Popen(
        [str(nomyo), "serve", "--tls-self-signed", "--port", "0"],
        stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=env, cwd="/",
    )  # fmt: skip
    try:
        url, lines = wait_listening(server, log)
        ca = next(line for line in lines if "--ca" in line).rsplit(" ", 1)[1].strip()
        chat = subprocess.run(
            [str(nomyo), "chat", "--base-url", url, "--ca", ca, "--model", "echo", "from a wheel"],
            capture_output=True, text=True, env=env, cwd="/", timeout=120, check=False,
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(30)
    assert chat.returncode == 0, chat.stderr + log.read_text()
    assert chat.stdout == "from a wheel\n"
