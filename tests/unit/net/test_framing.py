"""PDU framing: same PDUs whatever the split; limits; in-place views."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacs.errors import LocalProtocolError, RemoteProtocolError
from pacs.net.framing import MIN_BUFFER_SIZE, PDUFramer
from pacs.net.pdu import PDV, PDataTF
from tests.vectors import pdu_vectors as V

BIG_PDATA = PDataTF((PDV(1, 0, bytes(range(256)) * 200),)).encode()  # 51206-byte PDU
STREAM = V.STREAM + BIG_PDATA + V.STREAM
EXPECTED = [(data[0], data[6:]) for data in [*V.ALL.values(), BIG_PDATA, *V.ALL.values()]]


def _drain(framer: PDUFramer, out: list) -> None:
    while (pdu := framer.next_pdu()) is not None:
        out.append((pdu[0], bytes(pdu[1])))  # copy before the next feed/get_buffer


def frame_with_feed(chunks) -> list:
    framer, out = PDUFramer(), []
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[framer.feed(view) :]
            _drain(framer, out)
    return out


def frame_with_buffer(chunks) -> list:
    framer, out = PDUFramer(), []
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            buffer = framer.get_buffer()
            count = min(len(buffer), len(view))
            buffer[:count] = view[:count]
            framer.buffer_updated(count)
            view = view[count:]
            _drain(framer, out)
    return out


@pytest.mark.parametrize("frame", [frame_with_feed, frame_with_buffer])
def test_whole_and_byte_by_byte(frame):
    assert frame([STREAM]) == EXPECTED
    assert frame([STREAM[i : i + 1] for i in range(len(V.STREAM) + 100)]) == [
        (d[0], d[6:]) for d in V.ALL.values()
    ]


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=40))
def test_random_splits_give_the_same_pdus(cuts):
    bounds = sorted({0, len(STREAM), *cuts})
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]
    assert frame_with_feed(chunks) == EXPECTED
    assert frame_with_buffer(chunks) == EXPECTED


def test_buffer_size_and_limit():
    assert PDUFramer(1000).limit == MIN_BUFFER_SIZE - 6
    framer = PDUFramer(256 * 1024)
    assert framer.limit == 256 * 1024
    assert len(framer.get_buffer()) == 256 * 1024 + 6
    big = PDataTF((PDV(1, 0, bytes(256 * 1024 - 6)),)).encode()  # exactly at the limit
    assert framer.feed(big) == len(big)
    pdu_type, body = framer.next_pdu()
    assert pdu_type == 4 and len(body) == 256 * 1024


def test_length_beyond_limit_raises_as_soon_as_the_header_is_in():
    framer = PDUFramer(1000)
    framer.feed(struct.pack(">BBI", 4, 0, MIN_BUFFER_SIZE - 5))
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        framer.next_pdu()
    framer = PDUFramer()
    framer.feed(b"\x04\x00\xff\xff\xff\xff")  # 4 GB
    with pytest.raises(RemoteProtocolError):
        framer.next_pdu()


def test_unknown_type_raises_on_first_byte():
    framer = PDUFramer()
    framer.feed(b"\x00")
    with pytest.raises(RemoteProtocolError, match="unknown PDU type"):
        framer.next_pdu()


def test_views_point_into_the_receive_buffer_and_tail_moves_to_front():
    framer = PDUFramer()
    framer.feed(V.A_RELEASE_RQ + V.A_ABORT[:3])
    pdu_type, body = framer.next_pdu()
    assert pdu_type == 5 and body.obj is framer.get_buffer().obj  # same bytearray, no copy
    assert framer.next_pdu() is None and framer.buffered == 3
    framer.feed(V.A_ABORT[3:])  # the 3-byte tail moved to offset 0 first
    pdu_type, body = framer.next_pdu()
    assert pdu_type == 7 and bytes(body) == V.A_ABORT[6:]
    assert framer.buffered == 0


def test_buffer_full_and_bad_update_are_local_errors():
    framer = PDUFramer(1000)
    framer.feed(V.A_RELEASE_RQ * (MIN_BUFFER_SIZE // 10) + b"\x05" * (MIN_BUFFER_SIZE % 10))
    with pytest.raises(LocalProtocolError):
        framer.get_buffer()  # full of unparsed PDUs: the caller must drain
    with pytest.raises(LocalProtocolError):
        PDUFramer().buffer_updated(MIN_BUFFER_SIZE * 8)
