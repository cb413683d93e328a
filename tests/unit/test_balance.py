"""pacs.server.balance: even counts, descriptors handed over through real Unix sockets."""

from __future__ import annotations

import multiprocessing
import socket
from collections.abc import Iterator

import pytest

from pacs.server.balance import Balance


@pytest.fixture
def balance() -> Iterator[Balance]:
    made = Balance.create(multiprocessing.get_context("fork"), 3)
    yield made
    for sock in (*made.inboxes, *made.outboxes):
        sock.close()


def test_connections_arriving_at_one_worker_are_spread_evenly(balance: Balance) -> None:
    w0 = balance.for_worker(0)
    targets = [w0.choose() for _ in range(9)]
    assert targets.count(None) == 3  # kept by worker 0
    assert sorted(t for t in targets if t is not None) == [1, 1, 1, 2, 2, 2]
    assert list(balance.counts) == [3, 3, 3]


def test_a_worker_keeps_connections_while_it_is_not_the_busiest(balance: Balance) -> None:
    balance.counts[1] = 4
    balance.counts[2] = 4
    w0 = balance.for_worker(0)
    assert [w0.choose() for _ in range(5)] == [None] * 5  # up to one more than the others
    assert w0.choose() in (1, 2)  # 5, 4, 4: the next goes elsewhere
    w0.closed()
    assert balance.counts[0] == 4


def test_a_handed_over_socket_reaches_the_other_worker_and_works(balance: Balance) -> None:
    w0, w1 = balance.for_worker(0), balance.for_worker(1)
    ours, peer = socket.socketpair()
    try:
        target = w0.choose()
        assert target is None  # 0, 0, 0: kept
        target = w0.choose()
        assert target in (1, 2)
        receiver = w1 if target == 1 else balance.for_worker(2)
        assert w0.hand_over(target, ours.fileno())
        ours.close()  # our descriptor goes: the connection stays open
        [adopted] = receiver.received()
        with adopted:
            peer.sendall(b"A-ASSOCIATE-RQ")
            assert adopted.recv(64) == b"A-ASSOCIATE-RQ"
            adopted.sendall(b"A-ASSOCIATE-AC")
            assert peer.recv(64) == b"A-ASSOCIATE-AC"
        assert receiver.received() == []
    finally:
        peer.close()


def test_a_full_inbox_keeps_the_connection_here(balance: Balance) -> None:
    w0 = balance.for_worker(0)
    inbox_owner = 1
    sent = 0
    with socket.socket() as sock:
        while True:  # fill worker 1's queue with copies of one descriptor
            try:
                socket.send_fds(w0.outboxes[inbox_owner], [b"c"], [sock.fileno()])
                sent += 1
            except BlockingIOError:
                break
        assert sent > 0
        balance.counts[0], balance.counts[1], balance.counts[2] = 5, 0, 9
        assert w0.choose() == 1
        assert list(balance.counts) == [5, 1, 9]
        assert not w0.hand_over(1, sock.fileno())
        assert list(balance.counts) == [6, 0, 9]  # counted back here
        drained = balance.for_worker(1).received()
        assert len(drained) == sent
        for extra in drained:
            extra.close()
