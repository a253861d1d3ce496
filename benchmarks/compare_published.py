"""Our client against the published one (nomyo==0.2.9 from PyPI), and against the floor.

Run with our venv::

    .venv/bin/python benchmarks/compare_published.py            # the full run (minutes)
    .venv/bin/python benchmarks/compare_published.py --quick    # a smoke run (< 60 s)
    .venv/bin/python benchmarks/compare_published.py --profile  # + cProfile of our client

One ``nomyo serve`` over TLS (a trustme CA, a 2048-bit router key, so the
endpoint's own RSA work stays small and the clients' costs decide) serves
every request.  Each measurement is a fresh driver process running one
workload through one client: ``_ours_driver.py`` with our venv's interpreter,
``_published_driver.py`` with the interpreter of ``.venv-interop`` (the
published client has our package's name, so it needs its own venv:
tests/interop.py, shared with tests/test_interop.py, reuses or rebuilds it).
A driver reports wall time, CPU time (``time.process_time()``)
and peak RSS (``ru_maxrss``) of its measured part only, so interpreter start,
imports, key generation and warm-up are never counted.  Ours and the
published client alternate, for 5 rounds (1 with --quick); the tables show
the median and the (min-max) of the rounds.  Beside each driver run, the
server's own CPU time is read from /proc/PID/stat (10 ms ticks), so the
tables also say how much of a request's wall time is the endpoint's.

Workloads:

- ``sequential``: N (200; 30 with --quick) requests with a 1 KiB prompt, one at
  a time, after 3 warm-ups: our async and sync clients, the published one;
- ``inflight16``: N requests, 16 in flight at a time (asyncio, both clients);
- ``big``: one request with a 1/2/4/8 MiB prompt (the echo model answers it
  back, so the answer is as big), after one small warm-up.  The summary also
  compares the clients' CPU time here, as the endpoint's own share of the
  wall time (its echo model counts words three times) is the same for both;
- ``first``: a brand-new client's first request, from construction to the
  answer, key generation included (no key directory).  A 4096-bit key takes
  0.1-1.5 s at random (the prime search), the same OpenSSL code for both
  clients, and dominates this number: hence also ``first, keys loaded``, the
  same with the key pair loaded from files: the client's own cold start (TLS
  context, connection, router key fetch, first seal/open, lazy imports) plus
  loading the key, which OpenSSL checks (the same for both: "PEM load ms" in
  the machine table);
- ``secure_memory`` on/off: our sync client, sequential;
- ``offline``: our sync client and the sync floor, sequential, against an
  ``httpx.MockTransport`` with answers made beforehand: no sockets, no TLS,
  no waiting, so what is left is each side's own CPU (the RSA work
  included); printed for information;
- the floor, sync and async (``FloorWireSync`` in _ours_driver.py): a plain
  pooled httpx POST of the same chat request, sealed once beforehand, to the
  same ``nomyo serve`` with the same headers, reading the sealed answer as
  bytes, plus one RSA-4096 OAEP decryption and one RSA-OAEP encryption to
  the router's key per request; compared with our sync and async client
  respectively.  Endpoint, latency and bytes on the wire are then exactly
  our client's, and what the floor leaves out is what nomyo adds.  That
  matters on these virtual cores, where a client's CPU time per request
  grows with how long it waits for the answer: the very same floor code
  measured 2.76 ms against an endpoint answering at once and 3.20 ms
  against one that spun 1.5 ms first (medians of 6 alternating runs,
  2026-11-25).  For information, the floor is also run against a plain JSON
  echo endpoint that answers at once (``_echo_endpoint.py``, bench_client's floor),
  as the first version of this script measured it.

Except for ``first``, both clients load a key pair made once per run
(``key_dir``) instead of generating one per process: the measured parts
are the same, and the run does not spend 0.1-1.5 s per process on 4096-bit
key generation that no measurement includes anyway.

Nothing here asserts on time: PASS/FAIL in the summary are the targets of
issue 6 ("Performance"), reported, not enforced.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _published_driver import WARMUP  # the harness both drivers use (stdlib only)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the tests' helpers are shared
    sys.path.insert(0, str(ROOT))

from tests import interop  # noqa: E402
from tests.servers import make_tls, stop_process, wait_listening  # noqa: E402

HERE = ROOT / "benchmarks"
OUR_SOURCES = str(ROOT / "src" / "nomyo")
OURS = (sys.executable, HERE / "_ours_driver.py")
PUBLISHED = (str(interop.PYTHON), HERE / "_published_driver.py")
API_KEY = "bench-" + uuid.uuid4().hex
MIB = 1024 * 1024
DRIVER_TIMEOUT = 900  # seconds; the published client is slow with big prompts


@dataclass(frozen=True)
class Settings:
    rounds: int
    n: int  # requests in the sequential and inflight16 series
    sizes_mib: tuple[int, ...]  # the big prompts
    firsts: int  # first-request samples per client per round
    concurrency: int = 16
    prompt: int = 1024  # bytes


FULL = Settings(rounds=5, n=200, sizes_mib=(1, 2, 4, 8), firsts=4)
QUICK = Settings(rounds=1, n=30, sizes_mib=(1, 4), firsts=1)


# ---------------------------------------------------------------- servers


def clean_env(ca: Path | None = None) -> dict[str, str]:
    """Our environment without proxies, NOMYO_* settings or extra CA paths;
    with ``ca`` as SSL_CERT_FILE (the published client's only way to trust it)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().endswith("_PROXY")
        and not k.startswith("NOMYO_")
        and k not in ("SSL_CERT_DIR", "PYTHONPATH")
    }
    if ca is not None:
        env["SSL_CERT_FILE"] = str(ca)
    return env


class Server:
    """A server subprocess that prints ``... listening on URL`` when ready
    (tests/servers.py starts and stops it), and the CPU time it has used."""

    def __init__(self, argv: Sequence[str], log: Path) -> None:
        with log.open("w") as stderr:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env=clean_env()
            )
        self.url, _ = wait_listening(self.process, log)

    def cpu_s(self) -> float:
        """CPU time (user + system, every thread) the server has used so far."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # after "pid (comm)"
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        stop_process(self.process)


# ---------------------------------------------------------------- running drivers


@dataclass
class Bench:
    """Everything a driver run needs."""

    folder: Path
    ca: Path
    key_dir: Path
    servers: dict[str, Server]  # "serve": nomyo serve; "echo": the fast floor's endpoint

    def run(
        self,
        driver: tuple[str, Path],
        workload: str,
        *flags: str,
        key_dir: bool = True,
        server: str = "serve",
    ) -> dict[str, Any]:
        """One driver process against ``server``: its JSON line, or
        ``{"error": ...}``, with ``server_cpu_s``: the CPU time the server
        spent while the driver ran (its warm-up requests included)."""
        endpoint = self.servers[server]
        argv = [driver[0], str(driver[1]), workload, "--api-key", API_KEY, "--ca", str(self.ca)]
        argv += ["--url", endpoint.url]
        if key_dir:
            argv += ["--key-dir", str(self.key_dir)]
        server_cpu = endpoint.cpu_s()
        try:
            proc = subprocess.run(
                [*argv, *flags],
                capture_output=True,
                text=True,
                env=clean_env(self.ca),
                cwd=self.folder / "work",
                timeout=DRIVER_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {DRIVER_TIMEOUT} s"}
        lines = proc.stdout.strip().splitlines()
        try:
            result: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, ValueError):
            result = {}
        if proc.returncode != 0 or not result:
            result.setdefault("error", f"exit {proc.returncode}")
            result["stderr"] = proc.stderr[-2000:]
        result["server_cpu_s"] = endpoint.cpu_s() - server_cpu
        return result


@dataclass(frozen=True)
class Job:
    label: str  # the row this sample belongs to
    driver: tuple[str, Path]
    workload: str
    flags: tuple[str, ...] = ()
    key_dir: bool = True
    server: str = "serve"


def schedule(s: Settings) -> list[Job]:
    """One round: ours and the published client alternate within each workload."""
    seq = ("--n", str(s.n), "--size", str(s.prompt))
    jobs = [
        Job("sequential ours-async", OURS, "sequential", ("--client", "ours-async", *seq)),
        Job("sequential published", PUBLISHED, "sequential", seq),
        Job("sequential ours-sync", OURS, "sequential", ("--client", "ours-sync", *seq)),
        Job(
            "sequential ours-sync secure_memory=off",
            OURS,
            "sequential",
            ("--client", "ours-sync", "--secure-memory", "off", *seq),
        ),
        Job(
            "sequential floor-sync",
            OURS,
            "sequential",
            ("--client", "floor-sync", *seq),
            server="echo",
        ),
        Job(
            "sequential floor-async",
            OURS,
            "sequential",
            ("--client", "floor-async", *seq),
            server="echo",
        ),
        Job(
            "sequential floor-wire-sync",
            OURS,
            "sequential",
            ("--client", "floor-wire-sync", *seq),
        ),
        Job(
            "sequential floor-wire-async",
            OURS,
            "sequential",
            ("--client", "floor-wire-async", *seq),
        ),
        Job("offline ours-sync", OURS, "offline", ("--client", "ours-sync", *seq)),
        Job("offline floor-sync", OURS, "offline", ("--client", "floor-sync", *seq)),
        Job(
            "offline ours-sync secure_memory=off",
            OURS,
            "offline",
            ("--client", "ours-sync", "--secure-memory", "off", *seq),
        ),
    ]
    many = (*seq, "--concurrency", str(s.concurrency))
    jobs += [
        Job("inflight ours-async", OURS, "inflight", ("--client", "ours-async", *many)),
        Job("inflight published", PUBLISHED, "inflight", many),
    ]
    for mib in s.sizes_mib:
        size = ("--size", str(mib * MIB))
        jobs += [
            Job(f"big {mib} ours-async", OURS, "big", ("--client", "ours-async", *size)),
            Job(f"big {mib} published", PUBLISHED, "big", size),
        ]
    one = ("--size", str(s.prompt))
    for _ in range(s.firsts):
        jobs += [
            Job("first ours-async", OURS, "first", ("--client", "ours-async", *one), False),
            Job("first published", PUBLISHED, "first", one, False),
        ]
    jobs += [
        Job("first+keys ours-async", OURS, "first", ("--client", "ours-async", *one)),
        Job("first+keys published", PUBLISHED, "first", one),
    ]
    return jobs


def served(result: dict[str, Any]) -> int:
    """How many chat requests the server answered during a driver run: the
    measured ones and the warm-up (see the workloads in _published_driver.py)."""
    if result["workload"] == "sequential":
        return int(result["n"]) + WARMUP
    if result["workload"] == "inflight":
        return int(result["n"]) + WARMUP + int(result["concurrency"])
    if result["workload"] == "offline":
        return 0  # no server involved
    return 1  # big: the small warm-up is not counted; first: its one request


def server_ms(result: dict[str, Any]) -> float:
    """Server CPU ms per request answered during the run (warm-ups included);
    NaN where the run sent the server nothing."""
    answered = served(result)
    return float(result["server_cpu_s"]) * 1e3 / answered if answered else float("nan")


def headline(result: dict[str, Any]) -> str:
    """A short progress note for one driver run."""
    if "error" in result:
        return "ERROR " + str(result["error"])[:120]
    wall, cpu = result["wall_s"], result["cpu_s"]
    if "n" in result:
        n = result["n"]
        return (
            f"{n / wall:7.1f} req/s  {cpu * 1e3 / n:6.2f} ms CPU/req"
            f"  (server {server_ms(result):.2f} ms CPU/req)"
        )
    server = f"server {server_ms(result):.0f} ms CPU"
    growth = (result["maxrss_after_kib"] - result["maxrss_before_kib"]) / 1024
    return f"{wall * 1e3:8.1f} ms  {cpu * 1e3:8.1f} ms CPU  +{growth:.1f} MiB peak RSS  ({server})"


# ---------------------------------------------------------------- statistics and tables


def med(values: Iterable[float]) -> float:
    data = list(values)
    return statistics.median(data) if data else float("nan")


def spread(values: Sequence[float], fmt: str) -> str:
    """``median (min-max)`` of per-round values ("-" where there are none)."""
    values = [v for v in values if v == v]  # NaN: nothing to measure in that run
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(med(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [list(map(str, r)) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


class Results:
    """The samples of every row, and the per-sample metrics."""

    def __init__(self) -> None:
        self.samples: dict[str, list[dict[str, Any]]] = {}

    def add(self, label: str, result: dict[str, Any]) -> None:
        self.samples.setdefault(label, []).append(result)

    def ok(self, label: str) -> list[dict[str, Any]]:
        return [r for r in self.samples.get(label, []) if "error" not in r]

    def errors(self, label: str) -> list[str]:
        return [str(r["error"]) for r in self.samples.get(label, []) if "error" in r]

    def metric(self, label: str, fn: Callable[[dict[str, Any]], float]) -> list[float]:
        return [fn(r) for r in self.ok(label)]

    def rate(self, label: str) -> list[float]:
        return self.metric(label, lambda r: r["n"] / r["wall_s"])

    def cpu_ms(self, label: str) -> list[float]:
        return self.metric(label, lambda r: r["cpu_s"] * 1e3 / r["n"])

    def wall_ms(self, label: str) -> list[float]:
        return self.metric(label, lambda r: r["wall_s"] * 1e3)

    def growth_mib(self, label: str) -> list[float]:
        return self.metric(label, lambda r: (r["maxrss_after_kib"] - r["maxrss_before_kib"]) / 1024)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def verdict(value: float, target: float, at_least: bool) -> str:
    if target != target:  # NaN: a row for information, with no target
        return ""
    if value != value:  # NaN: a side is missing
        return "n/a"
    return "PASS" if (value >= target if at_least else value <= target) else "FAIL"


#: the server's CPU over the whole driver run, per request it answered
SERVER_PER_REQUEST = "server CPU ms/req (warm-up incl.)"


def report(res: Results, s: Settings) -> str:
    out: list[str] = []
    clients = ("ours-async", "published", "ours-sync", "ours-sync secure_memory=off")
    rows = []
    floors = ("floor-wire-sync", "floor-wire-async", "floor-sync", "floor-async")
    offline = ("offline ours-sync", "offline floor-sync", "offline ours-sync secure_memory=off")
    for who in (*clients, *floors, *offline):
        label = who if who.startswith("offline") else f"sequential {who}"
        rows.append(
            [
                who,
                spread(res.rate(label), ".1f"),
                spread(res.cpu_ms(label), ".2f"),
                spread(res.metric(label, server_ms), ".2f"),
                ", ".join(res.errors(label))[:60],
            ]
        )
    out += [
        f"sequential: {s.n} requests, {s.prompt} B prompt, one at a time (median (min-max))",
        table(["client", "req/s", "CPU ms/request", SERVER_PER_REQUEST, "errors"], rows),
        "",
    ]
    rows = []
    for who in ("ours-async", "published"):
        label = f"inflight {who}"
        rows.append(
            [
                who,
                spread(res.rate(label), ".1f"),
                spread(res.cpu_ms(label), ".2f"),
                spread(res.metric(label, server_ms), ".2f"),
                ", ".join(res.errors(label))[:60],
            ]
        )
    out += [
        f"inflight16: {s.n} requests, {s.concurrency} in flight",
        table(["client", "req/s", "CPU ms/request", SERVER_PER_REQUEST, "errors"], rows),
        "",
    ]
    rows = []
    for who in ("ours-async", "published"):
        for mib in s.sizes_mib:
            label = f"big {mib} {who}"
            wall, growth = res.wall_ms(label), res.growth_mib(label)
            cpu = res.metric(label, lambda r: r["cpu_s"] * 1e3)
            per_mib = [w / mib for w in wall]
            rows.append(
                [
                    who,
                    f"{mib} MiB",
                    spread(wall, ".0f"),
                    spread(cpu, ".0f"),
                    spread(per_mib, ".1f"),
                    spread(growth, ".1f"),
                    spread([g / mib for g in growth], ".2f"),
                    spread(res.metric(label, server_ms), ".0f"),
                    ", ".join(res.errors(label))[:60],
                ]
            )
    out += [
        "big: one request, prompt and answer of the given size (peak RSS growth ="
        " ru_maxrss after - before)",
        table(
            [
                "client",
                "payload",
                "wall ms",
                "CPU ms",
                "wall ms/MiB",
                "RSS growth MiB",
                "growth/payload",
                "server CPU ms",
                "errors",
            ],
            rows,
        ),
        "",
    ]
    rows = [
        [
            what,
            who,
            spread(res.wall_ms(f"{label} {who}"), ".0f"),
            spread(res.metric(f"{label} {who}", lambda r: r["cpu_s"] * 1e3), ".0f"),
            spread(res.metric(f"{label} {who}", server_ms), ".1f"),
            ", ".join(res.errors(f"{label} {who}"))[:60],
        ]
        for label, what in (("first", "key generation"), ("first+keys", "keys loaded"))
        for who in ("ours-async", "published")
    ]
    out += [
        "first: a new client's first request, from construction to the answer",
        table(["first", "client", "wall ms", "CPU ms", "server CPU ms", "errors"], rows),
        "",
    ]
    return "\n".join(out)


def summary(res: Results, s: Settings) -> str:
    cpu = {w: med(res.cpu_ms(f"sequential {w}")) for w in ("ours-async", "ours-sync", "published")}
    floor_sync = med(res.cpu_ms("sequential floor-wire-sync"))
    floor_async = med(res.cpu_ms("sequential floor-wire-async"))
    off_ours = med(res.cpu_ms("offline ours-sync"))
    off_floor = med(res.cpu_ms("offline floor-sync"))
    off_plain = med(res.cpu_ms("offline ours-sync secure_memory=off"))
    fast_sync = med(res.cpu_ms("sequential floor-sync"))
    fast_async = med(res.cpu_ms("sequential floor-async"))
    off = med(res.cpu_ms("sequential ours-sync secure_memory=off"))
    rate = {w: med(res.rate(f"sequential {w}")) for w in ("ours-async", "published")}
    flight = {w: med(res.rate(f"inflight {w}")) for w in ("ours-async", "published")}
    mib = 4 if 4 in s.sizes_mib else max(s.sizes_mib)
    big = {w: med(res.wall_ms(f"big {mib} {w}")) for w in ("ours-async", "published")}
    big_cpu = {
        w: med(res.metric(f"big {mib} {w}", lambda r: r["cpu_s"] * 1e3))
        for w in ("ours-async", "published")
    }
    growth = med(res.growth_mib(f"big {mib} ours-async"))
    first = {w: med(res.wall_ms(f"first {w}")) for w in ("ours-async", "published")}
    loaded = {w: med(res.wall_ms(f"first+keys {w}")) for w in ("ours-async", "published")}
    # (what, value, target, at_least, detail)
    checks: list[tuple[str, float, float, bool, str]] = [
        (
            "CPU/request: ours (sync) / floor (sync)",
            ratio(cpu["ours-sync"], floor_sync),
            1.1,
            False,
            f"{cpu['ours-sync']:.2f} / {floor_sync:.2f} ms",
        ),
        (
            "CPU/request: ours (async) / floor (async)",
            ratio(cpu["ours-async"], floor_async),
            1.1,
            False,
            f"{cpu['ours-async']:.2f} / {floor_async:.2f} ms",
        ),
        (
            # the same floor against the endpoint that answers at once: the
            # client's CPU per request grows with the wait (see the docstring)
            "(info) ours (sync) / floor (sync), fast echo endpoint",
            ratio(cpu["ours-sync"], fast_sync),
            float("nan"),
            False,
            f"{cpu['ours-sync']:.2f} / {fast_sync:.2f} ms",
        ),
        (
            # no sockets (see offline() in _ours_driver.py): what nomyo's own code adds
            "(info) ours (sync) / floor (sync), offline: no network",
            ratio(off_ours, off_floor),
            float("nan"),
            False,
            f"{off_ours:.2f} / {off_floor:.2f} ms",
        ),
        (
            "(info) ours (async) / floor (async), fast echo endpoint",
            ratio(cpu["ours-async"], fast_async),
            float("nan"),
            False,
            f"{cpu['ours-async']:.2f} / {fast_async:.2f} ms",
        ),
        (
            "CPU/request: published / ours (async), expected ~3.5x",
            ratio(cpu["published"], cpu["ours-async"]),
            3.5,
            True,
            f"{cpu['published']:.2f} / {cpu['ours-async']:.2f} ms",
        ),
        (
            "sequential req/s: ours (async) / published",
            ratio(rate["ours-async"], rate["published"]),
            3.0,
            True,
            f"{rate['ours-async']:.1f} / {rate['published']:.1f} req/s",
        ),
        (
            f"{s.concurrency} in flight req/s: ours (async) / published",
            ratio(flight["ours-async"], flight["published"]),
            2.5,
            True,
            f"{flight['ours-async']:.1f} / {flight['published']:.1f} req/s",
        ),
        (
            "CPU/request: secure_memory on / off (sync)",
            ratio(cpu["ours-sync"], off),
            1.05,
            False,
            f"{cpu['ours-sync']:.2f} / {off:.2f} ms",
        ),
        (
            "(info) secure_memory on / off (sync), offline: no network",
            ratio(off_ours, off_plain),
            float("nan"),
            False,
            f"{off_ours:.2f} / {off_plain:.2f} ms",
        ),
        (
            f"{mib} MiB request time: published / ours",
            ratio(big["published"], big["ours-async"]),
            4.0,
            True,
            f"{big['published']:.0f} / {big['ours-async']:.0f} ms",
        ),
        (
            # the wall time above includes the endpoint's own work on the big
            # request, the same for both clients: this row leaves it out
            f"{mib} MiB client CPU: published / ours (the endpoint's time left out)",
            ratio(big_cpu["published"], big_cpu["ours-async"]),
            4.0,
            True,
            f"{big_cpu['published']:.0f} / {big_cpu['ours-async']:.0f} ms",
        ),
        (
            f"{mib} MiB: our peak RSS growth / payload",
            growth / mib,
            6.0,
            False,
            f"{growth:.1f} MiB / {mib} MiB",
        ),
        (
            "first request: ours / published (key generation: noisy)",
            ratio(first["ours-async"], first["published"]),
            1.0,
            False,
            f"{first['ours-async']:.0f} / {first['published']:.0f} ms",
        ),
        (
            "first request, keys loaded: ours / published",
            ratio(loaded["ours-async"], loaded["published"]),
            1.0,
            False,
            f"{loaded['ours-async']:.0f} / {loaded['published']:.0f} ms",
        ),
    ]
    rows = [
        [
            what,
            f"{value:.2f}x",
            "" if target != target else ("≥ " if at_least else "≤ ") + f"{target:g}x",
            detail,
            verdict(value, target, at_least),
        ]
        for what, value, target, at_least, detail in checks
    ]
    return table(["ratio (issue 6 targets, medians)", "value", "target", "medians", ""], rows)


# ---------------------------------------------------------------- machine info


def machine(bench: Bench) -> tuple[str, dict[str, Any], dict[str, Any]]:
    cpu_model = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    ours = bench.run(OURS, "info", "--client", "ours-sync")
    published = bench.run(PUBLISHED, "info")
    git = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    lines = [
        f"CPU: {cpu_model}; {os.cpu_count()} logical cores "
        f"({len(os.sched_getaffinity(0))} usable); Linux {platform.release()}",
        f"ours:      nomyo {ours.get('nomyo')} (git {git or '?'}), "
        f"memory backend {ours.get('protection')}",
        f"published: nomyo {published.get('nomyo')} in {interop.VENV.name}",
        "the server, the floor's echo endpoint and every driver share these cores",
    ]
    rows = [
        [
            name,
            str(info.get("python")),
            str(info.get("cryptography")),
            str(info.get("openssl")),
            str(info.get("httpx")),
            f"{info.get('rsa4096_decrypt_us', float('nan')):.0f}",
            f"{info.get('rsa2048_encrypt_us', float('nan')):.0f}",
            f"{info.get('rsa4096_pem_load_ms', float('nan')):.0f}",
        ]
        for name, info in (("ours", ours), ("published", published))
    ]
    text = (
        "\n".join(lines)
        + "\n"
        + table(
            [
                "venv",
                "python",
                "cryptography",
                "openssl",
                "httpx",
                "RSA4096 dec µs",
                "RSA2048 enc µs",
                "4096 PEM load ms",
            ],
            rows,
        )
    )
    return text, ours, published


# ---------------------------------------------------------------- profiling


def profile(bench: Bench, s: Settings) -> str:
    """Our client under cProfile (measured part only): the sequential series
    (async and sync), inflight16 and a 4 MiB prompt; for each the top 15
    cumulative in our code, and the top 10 by own time anywhere (where the
    time really goes).  Coroutines count one call per resumption."""
    out = []
    series = ("--n", str(s.n), "--size", str(s.prompt))
    runs = [
        ("ours-async", f"sequential ({s.n} x {s.prompt} B)", "sequential", series),
        ("ours-sync", f"sequential ({s.n} x {s.prompt} B)", "sequential", series),
        (
            "ours-async",
            f"inflight16 ({s.n} x {s.prompt} B)",
            "inflight",
            (*series, "--concurrency", str(s.concurrency)),
        ),
        ("ours-async", "big (4 MiB)", "big", ("--size", str(4 * MIB))),
    ]
    for client, title, workload, flags in runs:
        path = bench.folder / f"{client}-{workload}.prof"
        result = bench.run(OURS, workload, "--client", client, "--profile", str(path), *flags)
        if "error" in result:
            out.append(f"profile {client} {title}: ERROR {result['error']}")
            continue
        entries = _profile_entries(path)
        total = result["wall_s"]
        out += [
            f"cProfile, {client} {title}: measured part {total * 1e3:.0f} ms "
            f"(under the profiler), top 15 cumulative in src/nomyo",
            table(
                ["cum ms", "own ms", "calls", "function"],
                _top(entries, lambda f: f.startswith(OUR_SOURCES), by=3, limit=15),
            ),
            "",
            "  ... and the top 10 by own time, any code",
            table(
                ["cum ms", "own ms", "calls", "function"],
                _top(entries, lambda f: True, by=2, limit=10),
            ),
            "",
        ]
    return "\n".join(out)


def _profile_entries(path: Path) -> dict[tuple[str, int, str], tuple[Any, ...]]:
    """pstats' raw table: {(file, line, name): (prim calls, calls, own s, cum s, callers)}."""
    return pstats.Stats(str(path)).stats  # type: ignore[attr-defined,no-any-return]


def _top(
    entries: dict[tuple[str, int, str], tuple[Any, ...]],
    keep: Callable[[str], bool],
    *,
    by: int,
    limit: int,
) -> list[list[str]]:
    """The ``limit`` entries whose file passes ``keep``, largest field ``by``
    first (2: own time, 3: cumulative), as table rows."""
    chosen = sorted(((k, v) for k, v in entries.items() if keep(k[0])), key=lambda kv: -kv[1][by])
    return [
        [f"{v[3] * 1e3:.1f}", f"{v[2] * 1e3:.1f}", str(v[1]), _where(k)] for k, v in chosen[:limit]
    ]


def _where(key: tuple[str, int, str]) -> str:
    file, line, name = key
    if file == "~":  # a built-in
        return name
    if file.startswith(OUR_SOURCES):
        file = "nomyo/" + file[len(OUR_SOURCES) + 1 :]
    else:
        parts = Path(file).parts
        file = "/".join(parts[-2:])
    return f"{file}:{line} {name}"


# ---------------------------------------------------------------- main


def setup(folder: Path) -> tuple[Path, Path, Path, Path, Path]:
    """TLS files, the 2048-bit router key and a 4096-bit client key pair."""
    from nomyo import _keys

    tls = make_tls(folder)
    router = folder / "router.pem"
    _keys.save_private_key(_keys.generate_private_key(2048), router)
    key_dir = folder / "client-keys"
    client_key = _keys.generate_private_key(4096)
    _keys.save_private_key(client_key, key_dir / "private_key.pem")
    _keys.save_public_key(client_key, key_dir / "public_key.pem")
    (folder / "work").mkdir()
    return tls["ca"], tls["cert"], tls["key"], router, key_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small N, one round: a smoke run")
    p.add_argument("--rounds", type=int, help="override the number of rounds")
    p.add_argument("--n", type=int, help="override N (sequential and inflight16)")
    p.add_argument("--profile", action="store_true", help="also cProfile our client")
    args = p.parse_args()
    s = QUICK if args.quick else FULL
    if args.rounds or args.n:
        s = Settings(args.rounds or s.rounds, args.n or s.n, s.sizes_mib, s.firsts)

    started = time.perf_counter()
    interop.published_python()
    with tempfile.TemporaryDirectory(prefix="nomyo-compare-") as tmp:
        folder = Path(tmp)
        ca, cert, key, router, key_dir = setup(folder)
        serve = Server(
            [
                sys.executable, "-m", "nomyo", "serve", "--host", "127.0.0.1", "--port", "0",
                "--certfile", str(cert), "--keyfile", str(key), "--server-key", str(router),
                "--api-key", API_KEY, "--log-level", "warning",
            ],
            folder / "serve.log",
        )  # fmt: skip
        tls_files = ["--certfile", str(cert), "--keyfile", str(key)]
        echo = Server(
            [sys.executable, str(HERE / "_echo_endpoint.py"), *tls_files], folder / "echo.log"
        )
        try:
            servers = {"serve": serve, "echo": echo}
            bench = Bench(folder, ca, key_dir, servers)
            info, _, _ = machine(bench)
            print(info, "\n", flush=True)
            res = Results()
            jobs = schedule(s)
            for round_no in range(1, s.rounds + 1):
                for job in jobs:
                    result = bench.run(
                        job.driver, job.workload, *job.flags, key_dir=job.key_dir, server=job.server
                    )
                    res.add(job.label, result)
                    print(f"[{round_no}/{s.rounds}] {job.label:42} {headline(result)}", flush=True)
            print()
            print(report(res, s))
            print(summary(res, s))
            if args.profile:
                print()
                print(profile(bench, s))
        finally:
            echo.stop()
            serve.stop()
    print(f"\ntotal {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
