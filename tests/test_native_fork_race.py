"""fork() while other threads use the secure allocator (csrc/securemem.c).

The allocator's child-side fork handler empties the region cache.  It used
to run on whatever state another thread had left mid-update: a slot counted
but not yet written, or an entry listed twice, so the child unmapped and
freed a stale pointer and crashed (about 10 children in 5,000 forks here).
Now the forking thread holds the allocator's locks across fork().

A C driver (tests/c/fork_race.c), built here with the machine's compiler
against the allocator's own sources: in Python the GIL leaves too narrow a
window to hit.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
FORKS = 5000


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    compiler = shutil.which(compiler) or shutil.which("cc")
    assert compiler, "no C compiler: the package's own source build needs one too"
    binary = tmp_path_factory.mktemp("fork_race") / "fork_race"
    subprocess.run(
        [
            compiler,
            "-O2",
            "-pthread",
            f"-I{CSRC}",
            str(ROOT / "tests" / "c" / "fork_race.c"),
            str(CSRC / "securemem.c"),
            str(CSRC / "primitives.c"),
            "-o",
            str(binary),
        ],
        check=True,
    )
    return binary


def run(driver: Path, *args: str) -> tuple[int, int, int]:
    """(exit status, forks, bad children)."""
    # the sanitizer lane's preload is for the Python process, not this driver
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    done = subprocess.run(
        [str(driver), *args], capture_output=True, text=True, timeout=300, env=env
    )
    found = re.fullmatch(r"forks (\d+) bad (\d+)\n", done.stdout)
    assert found, (done.returncode, done.stdout, done.stderr)
    return done.returncode, int(found[1]), int(found[2])


def test_children_forked_while_threads_allocate_are_whole(driver: Path) -> None:
    status, forks, bad = run(driver, str(FORKS))
    assert (status, forks, bad) == (0, FORKS, 0)


def test_the_driver_counts_a_child_that_crashes(driver: Path) -> None:
    # the control: every 100th child crashes on purpose, and is counted
    status, forks, bad = run(driver, "1000", "control")
    assert (status, forks, bad) == (1, 1000, 10)
