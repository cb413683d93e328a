"""Spread DICOM connections evenly over the worker processes.

Every worker listens on the DICOM port with SO_REUSEPORT, and the kernel picks the worker of a
new connection by a hash of its addresses: with the handful of associations a few modalities
open, that often gives one worker three of four (measured: 3,000 of 4,000 small C-STOREs on one
worker, the other mostly idle). So a worker that accepts a connection while it has more open than
the least busy worker hands the socket over, before reading a byte of it: the descriptor goes
through a Unix datagram socket (SCM_RIGHTS) to that worker, which serves it as if it had accepted
it. The decision and the counts (one per worker, in shared memory, under one lock) are made
together, so a burst of connections cannot all be sent to the same worker.

TLS connections are served where they arrive (their handshake has begun by then).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, replace
from typing import Any

log = logging.getLogger("pacs.balance")


@dataclass(frozen=True)
class Balance:
    """The workers' open DICOM connections and the sockets that carry handed-over ones."""

    counts: Any  # multiprocessing Array("i", workers), with its lock
    inboxes: tuple[socket.socket, ...]  # per worker: where its handed-over connections arrive
    outboxes: tuple[socket.socket, ...]  # per worker: where the others send them
    worker_id: int = 0

    @classmethod
    def create(cls, context: Any, workers: int) -> Balance:
        """In the supervisor, before forking: every worker inherits every socket."""
        inboxes, outboxes = [], []
        for _ in range(workers):
            inbox, outbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            inboxes.append(inbox)
            outboxes.append(outbox)
        return cls(context.Array("i", workers), tuple(inboxes), tuple(outboxes))

    def for_worker(self, worker_id: int) -> Balance:
        """This balance as seen by worker ``worker_id`` (in the forked child)."""
        for sock in (*self.inboxes, *self.outboxes):
            sock.setblocking(False)
        return replace(self, worker_id=worker_id)

    def reset(self, worker_id: int) -> None:
        """A worker is (re)started: it has no connections."""
        with self.counts.get_lock():
            self.counts[worker_id] = 0

    def choose(self) -> int | None:
        """For a new connection here: the worker to hand it to, counted there, or None to keep
        it (counted here). Handing over when this worker has at least one more open than the
        least busy one keeps every worker within one connection of the others."""
        me = self.worker_id
        with self.counts.get_lock():
            mine = self.counts[me]
            other = min((i for i in range(len(self.counts)) if i != me),
                        key=lambda i: self.counts[i], default=None)
            if other is not None and mine >= max(self.counts[other], 0) + 1:
                self.counts[other] += 1
                return other
            self.counts[me] = mine + 1
            return None

    def hand_over(self, worker_id: int, fd: int) -> bool:
        """Send the connection's descriptor to ``worker_id``; False (and counted back here)
        when it cannot take it (its queue is full, say while it restarts)."""
        try:
            socket.send_fds(self.outboxes[worker_id], [b"c"], [fd])
        except OSError as exc:
            log.warning("cannot hand a connection to worker %d (%s): serving it here",
                        worker_id, exc)
            with self.counts.get_lock():
                self.counts[worker_id] -= 1
                self.counts[self.worker_id] += 1
            return False
        return True

    def closed(self) -> None:
        """A connection counted here ended."""
        with self.counts.get_lock():
            self.counts[self.worker_id] -= 1

    def received(self) -> list[socket.socket]:
        """The connections handed to this worker and waiting (non-blocking)."""
        out: list[socket.socket] = []
        inbox = self.inboxes[self.worker_id]
        while True:
            try:
                _, fds, _, _ = socket.recv_fds(inbox, 16, 16)
            except (BlockingIOError, InterruptedError):
                return out
            out += [socket.socket(fileno=fd) for fd in fds]
