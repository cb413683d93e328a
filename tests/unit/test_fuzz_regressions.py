"""Inputs the fuzz/ harnesses found (or showed) failing, replayed through the same checks, and
the seeds each harness starts from (a harness must pass valid input, or it finds nothing)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fuzz import hl7, multipart, pdu
from pacs.web.multipart import MAX_HEADER_BLOCK, MultipartError, MultipartParser, PartData

TARGETS = {"pdu": pdu, "hl7": hl7, "multipart": multipart}


@pytest.fixture(autouse=True, scope="module")
def _close_hl7_store() -> Iterator[None]:
    yield
    hl7.close()  # its worklist store (LMDB) and event loop


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_harness_passes_its_seeds(name: str) -> None:
    target = TARGETS[name]
    seeds = target.seeds()
    assert seeds
    for seed in seeds:
        target.check(seed)


def _parse(boundary: str, chunks: list[bytes]) -> list[bytes] | str:
    parser = MultipartParser(boundary)
    data = b""
    try:
        for chunk in chunks:
            for event in parser.feed(chunk):
                if isinstance(event, PartData):
                    data += event.data
        parser.close()
    except MultipartError as exc:
        return str(exc)
    return [data]


# The multipart parser's limits held only for some chunkings of the body: a boundary line of
# 257 bytes was refused when it arrived in pieces and accepted whole; a header block just
# under MAX_HEADER_BLOCK was refused when its CRLFCRLF was split across chunks. Found by the
# harness's whole-versus-chunked comparison (the inputs as the harness takes them: mode byte,
# boundary length, boundary, body).
MULTIPART_CHUNKING = [
    b"\x00\x01x--x" + b" " * 300 + b"\r\n\r\ndata\r\n--x--",
    b"\x00\x01x--x" + b" " * 256 + b"\r\n\r\ndata\r\n--x--",
    b"\x01\x01x--x\r\nA: " + b"b" * (MAX_HEADER_BLOCK - 5) + b"\r\n\r\ndata\r\n--x--",
    b"\x03\x01x--x\r\nA: " + b"b" * (MAX_HEADER_BLOCK - 3) + b"\r\n\r\ndata\r\n--x--",
    b"\x00\x01x--x\r\nA: " + b"b" * (MAX_HEADER_BLOCK - 2) + b"\r\n\r\ndata\r\n--x--",
]


@pytest.mark.parametrize("data", MULTIPART_CHUNKING)
def test_multipart_outcome_does_not_depend_on_chunking(data: bytes) -> None:
    multipart.check(data)
    body = data[3:]
    whole = _parse("x", [body])
    for step in (1, 2, 3, 5, 7):
        assert _parse("x", [body[i:i + step] for i in range(0, len(body), step)]) == whole


def test_multipart_limits() -> None:
    padded = b"--x" + b" " * 256 + b"\r\n\r\ndata\r\n--x--"
    assert _parse("x", [padded]) == [b"data"]
    assert _parse("x", [padded.replace(b" ", b"  ", 1)]) == "malformed boundary line"
    block = b"A: " + b"b" * (MAX_HEADER_BLOCK - 3)  # exactly MAX_HEADER_BLOCK bytes
    assert _parse("x", [b"--x\r\n" + block + b"\r\n\r\nd\r\n--x--"]) == [b"d"]
    assert _parse("x", [b"--x\r\n" + block + b"b\r\n\r\nd\r\n--x--"]) == "part headers too long"
