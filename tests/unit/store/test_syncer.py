"""The fdatasync server twins (compiled ``_csync.serve`` and ``serve_pure``) and Syncer."""

from __future__ import annotations

import errno
import os
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pacs.store import syncer

TWINS: list[tuple[str, Callable[[int, int], None]]] = [("python", syncer.serve_pure)]
try:
    from pacs.store import _csync  # type: ignore[attr-defined]
except ImportError:  # built without extensions: the pure twin alone
    pass
else:
    TWINS.append(("cython", _csync.serve))


@pytest.fixture(params=TWINS, ids=[name for name, _ in TWINS])
def serve(request: pytest.FixtureRequest) -> Callable[[int, int], None]:
    return request.param[1]  # type: ignore[no-any-return]


@pytest.fixture
def target(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "segment", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"x" * 4096)
    yield fd
    os.close(fd)


def run(serve: Callable[[int, int], None], requests: list[bytes], close: bool) -> bytes:
    """Feed ``requests`` (raw writes) to ``serve`` in a thread; the answer bytes it wrote."""
    request_r, request_w = os.pipe()
    answer_r, answer_w = os.pipe()
    thread = threading.Thread(target=serve, args=(request_r, answer_w))
    thread.start()
    for chunk in requests:
        os.write(request_w, chunk)
    if close:
        os.close(request_w)
    thread.join(10)
    assert not thread.is_alive(), "serve did not stop"
    os.close(answer_w)
    out = b""
    while chunk := os.read(answer_r, 4096):
        out += chunk
    for fd in (request_r, answer_r) if close else (request_r, request_w, answer_r):
        os.close(fd)
    return out


def answers(raw: bytes) -> list[tuple[int, int]]:
    return [struct.unpack_from("<qq", raw, i) for i in range(0, len(raw), 16)]


def q(fd: int) -> bytes:
    return struct.pack("<q", fd)


def test_answers_in_order_and_stops_on_negative(serve: Callable[[int, int], None],
                                                target: int) -> None:
    bad = 1_000_000  # not an open descriptor
    raw = run(serve, [q(target) + q(bad) + q(target), q(-1), q(target)], close=False)
    # The request after the stop is never served.
    assert answers(raw) == [(target, 0), (bad, errno.EBADF), (target, 0)]


def test_requests_split_across_writes(serve: Callable[[int, int], None], target: int) -> None:
    stream = q(target) * 3
    raw = run(serve, [stream[:3], stream[3:11], stream[11:20], stream[20:]], close=True)
    assert answers(raw) == [(target, 0)] * 3


def test_stops_when_the_request_pipe_closes(serve: Callable[[int, int], None],
                                            target: int) -> None:
    raw = run(serve, [q(target), q(target)[:5]], close=True)  # a torn request is ignored
    assert answers(raw) == [(target, 0)]


def test_fdatasync_of_a_pipe_reports_einval(serve: Callable[[int, int], None]) -> None:
    r, w = os.pipe()
    try:
        raw = run(serve, [q(r), q(-5)], close=False)
    finally:
        os.close(r)
        os.close(w)
    assert answers(raw) == [(r, errno.EINVAL)]


def wait(s: syncer.Syncer) -> list[tuple[int, int]]:
    """Block until at least one answer is there (as the event loop's reader would)."""
    import select

    while not (got := s.answers()):
        select.select([s.done_fd], [], [], 1.0)
    return got


def test_syncer_round_trip(target: int) -> None:
    s = syncer.Syncer()
    try:
        s.request(target)
        s.request(-2 ** 40)  # a huge negative: the thread stops after answering the first
        assert wait(s) == [(target, 0)]
        assert s.answers() == []
    finally:
        s.close()
    s.close()  # idempotent


def test_syncer_close_answers_what_was_asked(target: int) -> None:
    s = syncer.Syncer()
    for _ in range(5):
        s.request(target)
    s.close()  # waits for the thread, which answers all five first
    assert not s._thread.is_alive()


def test_implementation_is_named() -> None:
    assert syncer.IMPLEMENTATION in {"cython", "python"}
    if len(TWINS) == 2 and os.environ.get("PACS_NO_EXTENSIONS", "") not in ("1", "true", "yes"):
        assert syncer.IMPLEMENTATION == "cython"
