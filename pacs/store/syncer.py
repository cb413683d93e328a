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
"""

from __future__ import annotations

import errno as errno_codes
import os
import struct
import threading
from collections.abc import Callable

from pacs.extensions import compiled

_REQUEST = struct.Struct("<q")
_ANSWER = struct.Struct("<qq")
REQUEST_SIZE = _REQUEST.size
ANSWER_SIZE = _ANSWER.size


def serve_pure(request_fd: int, answer_fd: int) -> None:
    """Answer fdatasync requests until a negative descriptor or the end of the request pipe."""
    pending = b""
    while True:
        try:
            chunk = os.read(request_fd, 4096)
        except InterruptedError:  # pragma: no cover - PEP 475 retries already
            continue
        if not chunk:
            return
        pending += chunk
        while len(pending) >= REQUEST_SIZE:
            (fd,) = _REQUEST.unpack_from(pending)
            pending = pending[REQUEST_SIZE:]
            if fd < 0:
                return
            try:
                os.fdatasync(fd)
                code = 0
            except OSError as exc:
                code = exc.errno or errno_codes.EIO
            os.write(answer_fd, _ANSWER.pack(fd, code))


def _choose() -> tuple[Callable[[int, int], None], str]:
    module = compiled("pacs.store._csync")
    if module is not None:
        return module.serve, "cython"
    return serve_pure, "python"


_SERVE, IMPLEMENTATION = _choose()


class Syncer:
    """One thread answering fdatasync requests in order; ``request`` and ``answers`` are for
    one thread (the event loop), ``close`` for any."""

    def __init__(self, name: str = "syncer",
                 serve: Callable[[int, int], None] | None = None) -> None:
        self._request_r, self._request_w = os.pipe2(os.O_CLOEXEC)
        self._answer_r, self._answer_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._buffer = b""
        self._closed = False
        self._thread = threading.Thread(
            target=serve or _SERVE, args=(self._request_r, self._answer_w), name=name,
            daemon=True)
        self._thread.start()

    @property
    def done_fd(self) -> int:
        """Readable when answers are waiting (for ``loop.add_reader``)."""
        return self._answer_r

    def request(self, fd: int) -> None:
        """Ask for ``fdatasync(fd)``; ``fd`` must stay open until its answer arrives."""
        os.write(self._request_w, _REQUEST.pack(fd))

    def answers(self) -> list[tuple[int, int]]:
        """The answers arrived so far: (descriptor, errno or 0), in request order."""
        try:
            self._buffer += os.read(self._answer_r, 4096)
        except BlockingIOError:
            pass
        n = len(self._buffer) // ANSWER_SIZE
        out = [_ANSWER.unpack_from(self._buffer, i * ANSWER_SIZE) for i in range(n)]
        self._buffer = self._buffer[n * ANSWER_SIZE:]
        return out

    def close(self, close_fds: bool = True) -> None:
        """Stop the thread once the requests made so far are answered; close the pipes
        (unless ``close_fds`` is false: someone may still watch ``done_fd``)."""
        if self._closed:
            return
        self._closed = True
        os.write(self._request_w, _REQUEST.pack(-1))
        self._thread.join()
        if close_fds:
            for fd in (self._request_r, self._request_w, self._answer_r, self._answer_w):
                os.close(fd)
