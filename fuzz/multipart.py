"""multipart/related target (pacs/web/multipart.py).

Input: ``mode byte, boundary length byte, boundary, body``. The mode picks the chunk size the
body is fed in. Contract (the module docstring): anything off-grammar raises MultipartError,
nothing else; memory held stays bounded by a delimiter plus one header block. The parser is
incremental, so the outcome must not depend on the chunking: the harness parses the body whole
and in chunks, and the parts (headers, concatenated data) or the failure must be the same.
``parse_media_type`` and ``split_list`` get the body's first line as a header value.
"""

from __future__ import annotations

from pacs.web.multipart import (
    MAX_HEADER_BLOCK,
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    parse_media_type,
    split_list,
)

_STEPS = (1, 2, 3, 5, 13, 64, 257, 4096)
Parts = list[tuple[dict[str, str], bytes]]


def _parse(boundary: str, chunks: list[bytes]) -> Parts | str:
    """(headers, data) of each part, or the MultipartError message's class of failure."""
    try:
        parser = MultipartParser(boundary)
    except MultipartError:
        return "bad boundary"
    limit = len(boundary) + 4 + MAX_HEADER_BLOCK + 4
    parts: Parts = []
    open_part = False
    try:
        for chunk in chunks:
            for event in parser.feed(chunk):
                if isinstance(event, PartStart):
                    if open_part:
                        raise AssertionError("PartStart inside a part")
                    parts.append((event.headers, b""))
                    open_part = True
                elif isinstance(event, PartData):
                    if not open_part or not event.data:
                        raise AssertionError("PartData outside a part, or empty")
                    headers, data = parts[-1]
                    parts[-1] = (headers, data + event.data)
                elif isinstance(event, PartEnd):
                    if not open_part:
                        raise AssertionError("PartEnd outside a part")
                    open_part = False
                else:
                    raise AssertionError(f"unknown event {event!r}")
            held = len(parser._buffer)
            if held > limit + len(chunk):
                raise AssertionError(f"the parser holds {held} bytes")
        parser.close()
    except MultipartError:
        return "error"
    if open_part:
        raise AssertionError("closed inside a part")
    return parts


def check(data: bytes) -> None:
    """Parse ``data`` (see the module docstring); raises on a crash."""
    if len(data) < 2:
        return
    mode, size = data[0], data[1]
    boundary = data[2:2 + size].decode("latin-1")
    body = data[2 + size:]
    step = _STEPS[mode & 0x07]
    whole = _parse(boundary, [body])
    chunked = _parse(boundary, [body[i:i + step] for i in range(0, len(body), step)])
    if whole != chunked:
        raise AssertionError(f"chunks of {step} bytes: {chunked!r} != whole: {whole!r}")
    header = body.split(b"\n", 1)[0].decode("latin-1")
    media, params = parse_media_type(header)
    if media != media.strip().lower() or any(k != k.strip().lower() for k in params):
        raise AssertionError("media type or parameter names not normalised")
    split_list(header)


def _body(boundary: bytes, parts: list[tuple[bytes, bytes]], preamble: bytes = b"") -> bytes:
    out = preamble
    for n, (headers, content) in enumerate(parts):
        out += (b"\r\n" if n or preamble else b"") + b"--" + boundary + b"\r\n" + headers
        out += b"\r\n" + content
    return out + b"\r\n--" + boundary + b"--\r\n"


def seeds() -> list[bytes]:
    """Mode byte + boundary + small valid bodies (DICOM, JSON, no headers, preamble)."""
    out = []
    for mode, boundary in enumerate((b"b0undary", b"DICOMwebBoundary-1234", b"x")):
        bodies = [
            _body(boundary, [(b"Content-Type: application/dicom\r\n", b"DICM" * 40)]),
            _body(boundary, [(b"Content-Type: application/dicom+json\r\n", b"[{}]"),
                             (b"", b"\r\n--not-the-boundary\r\n"),
                             (b"Content-Location: /x\r\nContent-ID: <1>\r\n", b"")],
                  b"preamble text"),
            b'multipart/related; type="application/dicom"; boundary=' + boundary + b"\r\n"
            + _body(boundary, [(b"A: b\r\n", b"data")]),
        ]
        out += [bytes([mode, len(boundary)]) + boundary + body for body in bodies]
    return out
