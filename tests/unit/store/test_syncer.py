"""The fdatasync server twins (compiled ``_csync.serve`` and ``serve_pure``) and Syncer."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pacs.store import syncer

TWINS: list[tuple[str, Callable[..., None]]] = [("python", syncer.serve_pure)]
try:
    from pacs.store import _csync  # type: ignore[attr-defined]
except ImportError:  # built without extensions: the pure twin alone
    pass
else:
    TWINS.append(("cython", _csync.serve))


@pytest.fixture(params=TWINS, ids=[name for name, _ in TWINS])
def serve(request: pytest.FixtureRequest) -> Callable[..., None]:
    return request.param[1]  # type: ignore[no-any-return]


@pytest.fixture
def target(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "segment", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"x" * 4096)
    yield fd
    os.close(fd)


def run(serve: Callable[..., None], requests: list[bytes], close: bool,
        counter: bytearray | None = None) -> bytes:
    """Feed ``requests`` (raw writes) to ``serve`` in a thread; the answer bytes it wrote."""
    request_r, request_w = os.pipe()
    answer_r, answer_w = os.pipe()
    thread = threading.Thread(target=serve, args=(request_r, answer_w, counter))
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


# -- writes of large records' middles -----------------------------------------------------

BLOCK = 4096


def write_request(fd: int, dfd: int, source: bytearray, length: int, offset: int) -> bytes:
    address = ctypes.addressof(ctypes.c_char.from_buffer(source))
    return q(syncer.WRITE) + struct.pack("<qqqqq", fd, dfd, address, length, offset)


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A segment-like file: a buffered descriptor and an O_DIRECT one (-1 where refused)."""
    path = tmp_path / "segment"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        dfd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    except OSError:
        dfd = -1
    yield fd, dfd
    os.close(fd)
    if dfd >= 0:
        os.close(dfd)


def read_file(fd: int) -> bytes:
    return os.pread(fd, os.fstat(fd).st_size, 0)


@pytest.mark.parametrize("length", [BLOCK, 3 * 1024 * 1024])  # one chunk, and two
def test_a_write_lands_where_asked_and_is_counted(
        serve: Callable[..., None], files: tuple[int, int], length: int) -> None:
    fd, dfd = files
    source = bytearray(os.urandom(length))
    counter = bytearray(16)
    raw = run(serve, [write_request(fd, dfd, source, length, BLOCK), q(fd)], close=True,
              counter=counter)
    assert answers(raw) == [(syncer.WRITE, 0), (fd, 0)]  # in order: the sync after the write
    assert read_file(fd) == bytes(BLOCK) + source
    assert struct.unpack("<qq", counter) == (1, 0)  # answered, failed


def test_a_refused_direct_write_goes_through_the_page_cache(
        serve: Callable[..., None], files: tuple[int, int]) -> None:
    fd, dfd = files
    if dfd < 0:
        pytest.skip("no O_DIRECT on this file system")
    source = bytearray(os.urandom(2 * BLOCK))
    # An offset O_DIRECT cannot take (not block-aligned): EINVAL, written buffered instead.
    raw = run(serve, [write_request(fd, dfd, source, len(source), 100)], close=True)
    assert answers(raw) == [(syncer.WRITE_BUFFERED, 0)]
    assert read_file(fd) == bytes(100) + source


def test_a_buffered_write_lands_where_asked(
        serve: Callable[..., None], files: tuple[int, int]) -> None:
    """No direct descriptor (-1): a record's head or a small record, at any offset and length,
    through the page cache; answered as a plain write, not as a refused direct one."""
    fd, _dfd = files
    source = bytearray(os.urandom(700))
    raw = run(serve, [write_request(fd, -1, source, len(source), 333), q(fd)], close=True)
    assert answers(raw) == [(syncer.WRITE, 0), (fd, 0)]
    assert read_file(fd) == bytes(333) + source


def test_a_failed_write_answers_its_errno_and_is_counted(serve: Callable[..., None]) -> None:
    source = bytearray(BLOCK)
    counter = bytearray(16)
    bad = 1_000_000  # not an open descriptor
    raw = run(serve, [write_request(bad, -1, source, BLOCK, 0), q(-1)], close=False,
              counter=counter)
    assert answers(raw) == [(syncer.WRITE, errno.EBADF)]
    assert struct.unpack("<qq", counter) == (1, 1)


def test_a_write_request_split_across_pipe_writes(serve: Callable[..., None],
                                                  files: tuple[int, int]) -> None:
    fd, dfd = files
    source = bytearray(os.urandom(BLOCK))
    request = write_request(fd, dfd, source, BLOCK, 0)
    torn = write_request(fd, dfd, source, BLOCK, BLOCK)[:30]  # never completed: ignored
    raw = run(serve, [request[:5], request[5:20], request[20:], torn], close=True)
    assert answers(raw) == [(syncer.WRITE, 0)]
    assert read_file(fd) == bytes(source)


def test_syncer_counts_the_writes_it_answered(files: tuple[int, int]) -> None:
    fd, dfd = files
    source = bytearray(os.urandom(2 * BLOCK))
    s = syncer.Syncer()
    try:
        s.request_write(fd, dfd, ctypes.addressof(ctypes.c_char.from_buffer(source)),
                        len(source), 0)
        s.request(fd)
        got: list[tuple[int, int]] = []
        while len(got) < 2:
            got += wait(s)
        assert got == [(syncer.WRITE, 0), (fd, 0)]
        assert (s.writes_asked, s.writes_done, s.writes_failed) == (1, 1, 0)
    finally:
        assert s.close() == []
    assert read_file(fd) == bytes(source)


def test_syncer_close_returns_the_answers_not_read(files: tuple[int, int]) -> None:
    fd, dfd = files
    source = bytearray(BLOCK)
    s = syncer.Syncer()
    s.request_write(fd, dfd, ctypes.addressof(ctypes.c_char.from_buffer(source)), BLOCK, 0)
    s.request(fd)
    assert s.close() == [(syncer.WRITE, 0), (fd, 0)]


def test_syncer_keeps_what_a_write_reads_from_until_its_answer_is_read(
        files: tuple[int, int]) -> None:
    import gc
    import weakref

    class Owner:
        def __init__(self) -> None:
            self.data = bytearray(os.urandom(BLOCK))

    fd, _dfd = files
    owner = Owner()
    gone = weakref.ref(owner)
    s = syncer.Syncer()
    try:
        s.request_write(fd, -1, ctypes.addressof(ctypes.c_char.from_buffer(owner.data)), BLOCK,
                        0, owner)
        data = bytes(owner.data)
        del owner
        gc.collect()
        assert gone() is not None  # written or not, nobody read the answer yet
        got: list[tuple[int, int]] = []
        while not got:
            got += wait(s)
        assert got == [(syncer.WRITE, 0)]
        gc.collect()
        assert gone() is None
    finally:
        s.close()
    assert read_file(fd) == data


def test_a_request_after_close_is_refused(files: tuple[int, int], tmp_path: Path) -> None:
    """Never written after the stop word (nobody would answer it), nor into the closed pipes'
    descriptor numbers, which the next files opened take."""
    fd, _dfd = files
    s = syncer.Syncer()
    assert s.close() == []
    others = [os.open(tmp_path / f"other{i}", os.O_RDWR | os.O_CREAT, 0o644) for i in range(4)]
    try:
        source = bytearray(BLOCK)
        with pytest.raises(OSError):
            s.request(fd)
        with pytest.raises(OSError):
            s.request_write(fd, -1, ctypes.addressof(ctypes.c_char.from_buffer(source)), BLOCK,
                            0)
        assert s.writes_asked == 0 and not s._kept
        assert all(os.fstat(other).st_size == 0 for other in others)
    finally:
        for other in others:
            os.close(other)


def test_thousands_of_answers_wait_for_a_loop_that_does_not_read(
        files: tuple[int, int]) -> None:
    """5,000 writes answered while nobody reads (a busy loop): the thread goes on (a 64 KiB
    answer pipe held 4,096 answers, then the thread stopped), and one read gets them all."""
    fd, _dfd = files
    source = bytearray(b"x")
    address = ctypes.addressof(ctypes.c_char.from_buffer(source))
    s = syncer.Syncer()
    try:
        for i in range(5000):
            s.request_write(fd, -1, address, 1, i)
        deadline = time.monotonic() + 30
        while s.writes_done < 5000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.writes_done == 5000
        assert s.answers() == [(syncer.WRITE, 0)] * 5000
        assert not s._kept
    finally:
        s.close()
    assert read_file(fd) == b"x" * 5000
