"""Hostile routers: compressed answers (issue 13: caps hold on the wire).

A gzip bomb (about 0.5 MB on the wire, 512 MiB inflated) under a 1 MiB
``max_response_bytes``: the client refuses it with an APIError naming
max_response_bytes, and its peak RSS (a subprocess measuring itself, as in
test_client_large_answers.py) grows by less than the cap plus 8 MiB.  The
same bomb as an error body (500) gives the ServerError, equally bounded.
The control: a 40 MB answer compressed the same way under a 64 MiB cap is
inflated whole, and the measurement sees the peak grow by at least 40 MB.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from starlette.responses import Response

from tests.faults import Behaviour, Ctx, FaultRouter, ok
from tests.test_client_hostile_answers import OPEN_FAILED, key_dir
from tests.test_client_large_answers import MARGIN, MB, MiB, measure

__all__ = ["key_dir"]

CAP = 1 * MiB


def gzip_zeros(decoded: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * MiB
    parts: list[bytes] = []
    for _ in range(decoded // MiB):
        parts.append(packer.compress(zeros))
    return b"".join(parts) + packer.flush()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return gzip_zeros(512 * MiB)


def gzipped(body: bytes, status: int = 200) -> Behaviour:
    def run(ctx: Ctx) -> Response:
        return Response(
            body,
            status_code=status,
            media_type="application/json",
            headers={"content-encoding": "gzip"},
        )

    return run


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_gzip_bomb_is_refused_within_the_cap(
    router: FaultRouter, tls: dict[str, Path], key_dir: Path, kind: str, bomb: bytes
) -> None:
    assert len(bomb) < 600_000
    router.script = [ok(), gzipped(bomb)]

    result = measure(router, tls, key_dir, kind, CAP)

    assert result["error"] is not None, "a 512 MiB answer was accepted"
    name, message = result["error"]
    assert name == "APIError" and "max_response_bytes" in message
    print(
        f"\n{kind}: gzip bomb {len(bomb)} B -> 512 MiB, peak RSS +{result['growth'] / MiB:.1f} MiB"
    )
    assert result["growth"] < CAP + MARGIN, f"peak RSS grew by {result['growth'] / MiB:.1f} MiB"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_gzip_bomb_as_an_error_body_is_bounded(
    router: FaultRouter, tls: dict[str, Path], key_dir: Path, kind: str, bomb: bytes
) -> None:
    router.script = [ok(), gzipped(bomb, status=500)]

    result = measure(router, tls, key_dir, kind, CAP)

    assert result["error"] is not None and result["error"][0] == "ServerError"
    assert result["growth"] < CAP + MARGIN, f"peak RSS grew by {result['growth'] / MiB:.1f} MiB"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_measurement_sees_a_40_mb_inflated_answer_under_a_larger_cap(
    router: FaultRouter, tls: dict[str, Path], key_dir: Path, kind: str
) -> None:
    # the control: a 40 MiB inflation under a 64 MiB cap is read whole (then
    # refused, as it is no package), and the peak shows it
    router.script = [ok(), gzipped(gzip_zeros(40 * MiB))]

    result = measure(router, tls, key_dir, kind, 64 * MiB)

    assert result["error"] == ["SecurityError", OPEN_FAILED]
    print(f"\n{kind}: control, 40 MiB inflated, peak RSS +{result['growth'] / MiB:.1f} MiB")
    assert result["growth"] >= 40 * MB, f"peak RSS grew by only {result['growth'] / MiB:.1f} MiB"
