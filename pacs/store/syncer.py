"""fdatasync requests served by a thread that never holds the GIL (group commit off the loop).

An event loop that writes blobs itself still needs their fdatasync off the loop, and a Python
thread for it competes for the GIL: after every blocking call it must take the GIL back from
the busy loop, and the loop then waits for it in turn (measured: 5 voluntary context switches
per small instance in the old flush thread, and index commits on the loop 4x slower than alone).
:class:`Syncer` sends each request (a file descriptor) through a pipe to a thread that runs the
compiled ``pacs.store._csync.serve`` (from ``ext/sync.pyx``) without the GIL; the answer (the
descriptor and the errno, 0 for success) comes back through another pipe whose read end the
loop watches (``add_reader(syncer.done_fd, ...)``).

Twins: :func:`serve_pure` is the same loop in Python (``PACS_NO_EXTENSIONS=1``, or no compiled
module); :data:`IMPLEMENTATION` says which one runs. Both read 8-byte requests (a signed
descriptor, little endian; a negative one stops the loop) and write 16-byte answers
(descriptor, errno), and both stop when the request pipe is closed.

Large records: ``request_write`` queues the block-aligned middle of a record the loop has laid
out (``SegmentStore.reserve_direct``): the thread copies it through an aligned buffer into an
``O_DIRECT`` write (the page cache and the GIL stay out of it) and answers it like an
fdatasync. One thread serves writes and fdatasyncs in the order asked, so an fdatasync asked
after a write covers it. ``writes_done`` counts the writes answered, and ``writes_failed``
those that failed, for threads that must wait for them without the loop
(``SegmentStore._await_direct``).

The twins also agree on writes: a ``WRITE`` word (-2**62) followed by five words (buffered
descriptor, direct descriptor or -1, source address, length, offset) is answered
(``WRITE`` or ``WRITE_BUFFERED`` when the direct descriptor refused it, errno).
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
import fcntl
import mmap
import os
import struct
import threading
from collections import deque
from collections.abc import Callable

from pacs.extensions import compiled
from pacs.store.segment_format import pwrite_all

_REQUEST = struct.Struct("<q")
_WRITE_ARGS = struct.Struct("<qqqqq")  # buffered fd, direct fd, source address, length, offset
_ANSWER = struct.Struct("<qq")
REQUEST_SIZE = _REQUEST.size
WRITE_REQUEST_SIZE = REQUEST_SIZE + _WRITE_ARGS.size
ANSWER_SIZE = _ANSWER.size
WRITE = -(1 << 62)  # a write request follows (also the tag of its answer)
WRITE_BUFFERED = WRITE + 1  # answer tag: written, but the direct descriptor refused it
WRITE_TAGS = frozenset((WRITE, WRITE_BUFFERED))  # the tags of a write's answer
DIRECT_CHUNK = 2 << 20  # the aligned bounce buffer a direct write copies through
PIPE_SIZE = 1 << 20  # of each pipe (the default maximum for an unprivileged process)
# What a file system answers when it does not take O_DIRECT (or our alignment).
DIRECT_REFUSED = frozenset((errno_codes.EINVAL, errno_codes.EOPNOTSUPP, errno_codes.ENOTSUP))


def _direct_write(fd: int, dfd: int, source: memoryview, offset: int,
                  bounce: list[mmap.mmap]) -> tuple[int, bool]:
    """Write ``source`` at ``offset`` as the compiled twin does; (errno or 0, refused)."""
    refused = False
    pos = 0
    try:
        while pos < len(source):
            chunk = source[pos:pos + DIRECT_CHUNK]
            written = 0
            if dfd >= 0 and not refused:
                if not bounce:
                    bounce.append(mmap.mmap(-1, DIRECT_CHUNK, flags=mmap.MAP_PRIVATE))
                view = memoryview(bounce[0])
                try:
                    view[:len(chunk)] = chunk
                    written = os.pwrite(dfd, view[:len(chunk)], offset + pos)
                except OSError as exc:
                    if exc.errno not in DIRECT_REFUSED:
                        raise
                    refused = True
                finally:
                    view.release()
            if written < len(chunk):
                pwrite_all(fd, [chunk[written:]], offset + pos + written)
            pos += len(chunk)
    except OSError as exc:
        return exc.errno or errno_codes.EIO, refused
    return 0, refused


def serve_pure(request_fd: int, answer_fd: int, counter: bytearray | None = None) -> None:
    """Answer requests until a stop word or the end of the request pipe; ``counter``: two
    int64s, the writes answered and the writes that failed."""
    pending = b""
    bounce: list[mmap.mmap] = []
    if counter is not None and len(counter) < 16:
        raise ValueError("counter must hold two int64s")
    count = memoryview(counter).cast("B")[:16].cast("q") if counter is not None else None
    try:
        while True:
            try:
                chunk = os.read(request_fd, 4096)
            except InterruptedError:  # pragma: no cover - PEP 475 retries already
                continue
            if not chunk:
                return
            pending += chunk
            while len(pending) >= REQUEST_SIZE:
                (word,) = _REQUEST.unpack_from(pending)
                if word == WRITE:
                    if len(pending) < WRITE_REQUEST_SIZE:
                        break  # the rest of the request is still on its way
                    fd, dfd, address, length, offset = _WRITE_ARGS.unpack_from(
                        pending, REQUEST_SIZE)
                    pending = pending[WRITE_REQUEST_SIZE:]
                    source = memoryview((ctypes.c_char * length).from_address(address)).cast("B")
                    code, refused = _direct_write(fd, dfd, source, offset, bounce)
                    answer = _ANSWER.pack(WRITE_BUFFERED if refused else WRITE, code)
                    if count is not None:
                        if code:
                            count[1] += 1  # before the answered count, as the compiled twin
                        count[0] += 1
                else:
                    pending = pending[REQUEST_SIZE:]
                    if word < 0:
                        return
                    try:
                        os.fdatasync(word)
                        code = 0
                    except OSError as exc:
                        code = exc.errno or errno_codes.EIO
                    answer = _ANSWER.pack(word, code)
                os.write(answer_fd, answer)
    finally:
        for buffer in bounce:
            buffer.close()


def _choose() -> tuple[Callable[[int, int, bytearray | None], None], str]:
    module = compiled("pacs.store._csync")
    if module is not None:
        return module.serve, "cython"
    return serve_pure, "python"


_SERVE, IMPLEMENTATION = _choose()


class Syncer:
    """One thread answering fdatasync and write requests in order; ``request``,
    ``request_write`` and ``answers`` are for one thread (the event loop), ``close`` and
    ``writes_done`` for any."""

    def __init__(self, name: str = "syncer",
                 serve: Callable[[int, int, bytearray | None], None] | None = None) -> None:
        self._request_r, self._request_w = os.pipe2(os.O_CLOEXEC)
        self._answer_r, self._answer_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        # The thread stops if its answers ever fill the pipe (the loop is not reading them),
        # and the loop waits when its requests fill the other: room for ~20,000 of either
        # instead of ~1,300 (64 KiB), as many writes as a few thousand associations' records.
        for fd in (self._request_w, self._answer_w):
            try:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:  # above /proc/sys/fs/pipe-max-size: the default then
                pass
        self._buffer = b""
        self._closed = False
        # Requests and close from different threads: no request after the stop word (it would
        # never be answered) nor into a closed, maybe reused, descriptor.
        self._lock = threading.Lock()
        self._counter = bytearray(16)  # the thread's counts: writes answered, writes failed
        self._count = memoryview(self._counter).cast("q")
        self.writes_asked = 0
        # What each write asked reads from, in request order: kept alive (and, for a bytearray
        # through a memoryview, unresizable) until its answer is read.
        self._kept: deque[object] = deque()
        self._thread = threading.Thread(
            target=serve or _SERVE, args=(self._request_r, self._answer_w, self._counter),
            name=name, daemon=True)
        self._thread.start()

    @property
    def done_fd(self) -> int:
        """Readable when answers are waiting (for ``loop.add_reader``)."""
        return self._answer_r

    @property
    def writes_done(self) -> int:
        """How many of the writes asked were answered so far (any thread)."""
        return int(self._count[0])  # one aligned 8-byte load: never torn

    @property
    def writes_failed(self) -> int:
        """How many of the writes answered failed (counted before ``writes_done``)."""
        return int(self._count[1])

    def request(self, fd: int) -> None:
        """Ask for ``fdatasync(fd)``; ``fd`` must stay open until its answer arrives."""
        self._send(_REQUEST.pack(fd))

    def _send(self, request: bytes) -> None:
        with self._lock:
            if self._closed:
                raise OSError(errno_codes.EBADF, "the sync thread is closed")
            os.write(self._request_w, request)

    def request_write(self, fd: int, dfd: int, address: int, length: int, offset: int,
                      keep: object = None) -> None:
        """Ask to write ``length`` bytes at ``address`` to offset ``offset``: through ``dfd``
        (``O_DIRECT``; -1: none) a bounce buffer at a time, else through ``fd``. ``keep`` (the
        object owning that memory) is held until the answer is read; both descriptors must
        stay open until then."""
        self._send(_REQUEST.pack(WRITE)
                   + _WRITE_ARGS.pack(fd, dfd, address, length, offset))  # atomic: < PIPE_BUF
        self.writes_asked += 1
        self._kept.append(keep)

    def answers(self) -> list[tuple[int, int]]:
        """The answers arrived so far, in request order: (descriptor, errno or 0) for an
        fdatasync, (``WRITE`` or ``WRITE_BUFFERED``, errno or 0) for a write."""
        while True:  # everything there: level-triggered, but one read took 256 answers
            try:
                got = os.read(self._answer_r, 65536)
            except BlockingIOError:
                break
            self._buffer += got
            if len(got) < 65536:
                break
        n = len(self._buffer) // ANSWER_SIZE
        out = [_ANSWER.unpack_from(self._buffer, i * ANSWER_SIZE) for i in range(n)]
        self._buffer = self._buffer[n * ANSWER_SIZE:]
        for tag, _ in out:
            if tag in WRITE_TAGS:
                try:
                    self._kept.popleft()  # written: its memory may go
                except IndexError:  # cleared by close meanwhile
                    pass
        return out

    def close(self, close_fds: bool = True) -> list[tuple[int, int]]:
        """Stop the thread once the requests made so far are answered; close the pipes
        (unless ``close_fds`` is false: someone may still watch ``done_fd``). The answers not
        read yet, when it closed the pipes."""
        with self._lock:
            if self._closed:
                return []
            self._closed = True
            os.write(self._request_w, _REQUEST.pack(-1))
        self._thread.join()
        self._kept.clear()  # the thread is gone: nothing reads that memory any more
        left: list[tuple[int, int]] = []
        if close_fds:
            while got := self.answers():
                left += got
            for fd in (self._request_r, self._request_w, self._answer_r, self._answer_w):
                os.close(fd)
        return left
