"""The STOW-RS multipart/related parser and media-type helpers (pure, no server): the same
events whole and byte by byte, and every malformation refused."""

from __future__ import annotations

import pytest

from pacs.web.multipart import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    parse_media_type,
    split_list,
)
from pacs.web.wado import ANY, DEFAULT, accepted_syntaxes

BODY = (b"preamble\r\n--xyz\r\nContent-Type: application/dicom\r\n\r\nfirst\r\n--xy"
        b"\r\n--xyz  \r\ncontent-type: application/dicom; transfer-syntax=1.2\r\n\r\n"
        b"\r\n--xyz--\r\nepilogue")


def parse(body: bytes, step: int | None = None) -> list[tuple[dict[str, str], bytes]]:
    parser = MultipartParser("xyz")
    parts: list[tuple[dict[str, str], bytearray]] = []
    pieces = [body] if step is None else [body[i:i + step] for i in range(0, len(body), step)]
    for piece in pieces:
        for event in parser.feed(piece):
            if isinstance(event, PartStart):
                parts.append((event.headers, bytearray()))
            elif isinstance(event, PartData):
                parts[-1][1].extend(event.data)
            else:
                assert isinstance(event, PartEnd)
    parser.close()
    return [(h, bytes(d)) for h, d in parts]


@pytest.mark.parametrize("step", [None, 1, 2, 3, 7, 64])
def test_parts_whole_and_in_pieces(step: int | None) -> None:
    assert parse(BODY, step) == [
        ({"content-type": "application/dicom"}, b"first\r\n--xy"),
        ({"content-type": "application/dicom; transfer-syntax=1.2"}, b""),
    ]


def test_body_starting_with_the_delimiter_and_without_part_headers() -> None:
    assert parse(b"--xyz\r\n\r\nabc\r\n--xyz--") == [({}, b"abc")]


@pytest.mark.parametrize("body", [
    b"",
    b"--xyz--\r\n",  # no part
    b"--xyz\r\nContent-Type: a\r\n\r\nabc",  # never closed
    b"--xyz\r\nContent-Type: a\r\n\r\nabc\r\n--xyz",  # delimiter without -- or CRLF
    b"--xyz\r\nno colon here\r\n\r\nabc\r\n--xyz--",
    b"--xyz garbage\r\n\r\nabc\r\n--xyz--",
    b"--xyz\r\n" + b"X-Long: " + b"a" * 20000 + b"\r\n\r\nabc\r\n--xyz--",
    b"--other\r\n\r\nabc\r\n--other--",
])
def test_malformed_bodies_raise(body: bytes) -> None:
    with pytest.raises(MultipartError):
        parse(body)
    with pytest.raises(MultipartError):
        parse(body, 1)


def test_memory_stays_bounded_for_a_large_part() -> None:
    parser = MultipartParser("xyz")
    list(parser.feed(b"--xyz\r\n\r\n"))
    for _ in range(1000):
        list(parser.feed(b"\x00" * 4096))
        assert len(parser._buffer) < 64


def test_media_types() -> None:
    assert parse_media_type('Multipart/Related; type="application/dicom"; boundary="a;b"') == (
        "multipart/related", {"type": "application/dicom", "boundary": "a;b"})
    assert split_list('a/b; x="1,2", */*;q=0.1') == ['a/b; x="1,2"', "*/*;q=0.1"]


def test_accept_negotiation() -> None:
    assert accepted_syntaxes("") == [DEFAULT]
    assert accepted_syntaxes("*/*") == [DEFAULT]
    assert accepted_syntaxes('multipart/related; type="application/dicom"; '
                             "transfer-syntax=*") == [ANY]
    assert accepted_syntaxes('multipart/related; type="application/dicom"; transfer-syntax=1.2'
                             ', multipart/related; type="application/dicom"; q=0') == ["1.2"]
    assert accepted_syntaxes("application/dicom+json") is None
    assert accepted_syntaxes('multipart/related; type="image/jpeg"') is None
