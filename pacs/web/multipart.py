"""multipart/related (RFC 2387 over RFC 2046 Section 5.1) for DICOMweb: media-type parameters,
an incremental sans-IO body parser, and the part framing of responses.

:class:`MultipartParser` is fed the body in chunks as they arrive and reports each part's
headers, its data in pieces, and its end; :meth:`MultipartParser.close` checks that the closing
delimiter was seen. Anything that does not follow the grammar raises :class:`MultipartError`.
The parser keeps at most one delimiter's length (plus one header block) of unconsumed input, so
memory does not grow with the size of a part.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

__all__ = [
    "MultipartError",
    "MultipartParser",
    "PartData",
    "PartEnd",
    "PartStart",
    "parse_media_type",
    "part_header",
]

MAX_HEADER_BLOCK = 16 * 1024  # bytes of headers one part may carry
_MAX_BOUNDARY_LINE = 256  # bytes of transport padding after a delimiter, before its CRLF


class MultipartError(ValueError):
    """The body is not a well-formed multipart entity."""


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; a=b; c="d"`` -> ("type/subtype", {"a": "b", "c": "d"}); names lowered.

    Quoted strings may contain ``;`` and ``,``; a backslash escapes the next character.
    """
    parts = _split(value, ";")
    media = parts[0].strip().lower() if parts else ""
    params: dict[str, str] = {}
    for item in parts[1:]:
        name, sep, raw = item.partition("=")
        if not sep:
            continue
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = _unquote(raw[1:-1])
        params[name.strip().lower()] = raw
    return media, params


def split_list(value: str) -> list[str]:
    """A comma-separated header (e.g. Accept) split outside quoted strings."""
    return [item.strip() for item in _split(value, ",") if item.strip()]


def _split(value: str, sep: str) -> list[str]:
    if '"' not in value:  # no quoted string, hence no escape: a plain split (~5x faster)
        return value.split(sep)
    if len(value) <= _CACHED_LENGTH:  # a client sends the same Content-Type request after request
        return list(_split_quoted_cached(value, sep))
    return _split_quoted(value, sep)


_CACHED_LENGTH = 256  # bounds the cache's memory: 128 values of at most this many characters


@lru_cache(maxsize=128)
def _split_quoted_cached(value: str, sep: str) -> tuple[str, ...]:
    return tuple(_split_quoted(value, sep))


def _split_quoted(value: str, sep: str) -> list[str]:
    out: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            out.append("".join(current))
            current = []
            continue
        current.append(ch)
    out.append("".join(current))
    return out


def _unquote(text: str) -> str:
    out: list[str] = []
    chars = iter(text)
    for ch in chars:
        out.append(next(chars, "") if ch == "\\" else ch)
    return "".join(out)


def part_header(boundary: str, headers: dict[str, str], first: bool = False) -> bytes:
    """The delimiter line and header block opening one part of a response."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (b"" if first else b"\r\n") + f"--{boundary}\r\n{lines}\r\n".encode("latin-1")


def closing(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode("latin-1")


@dataclass(frozen=True, slots=True)
class PartStart:
    headers: dict[str, str] = field(default_factory=dict)  # names lowered


@dataclass(frozen=True, slots=True)
class PartData:
    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd

_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _EPILOGUE = range(5)
# RFC 2046 5.1.1 bchars: digits, letters, '()+_,-./:=? and space (not last)
_BOUNDARY_CHARS = frozenset(
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")


class MultipartParser:
    """Incremental parser of one multipart body with a known boundary (no I/O here)."""

    def __init__(self, boundary: str) -> None:
        if not boundary or len(boundary) > 70:
            raise MultipartError("boundary missing or longer than 70 characters")
        if not all(c in _BOUNDARY_CHARS for c in boundary) or boundary.endswith(" "):
            raise MultipartError("boundary has characters RFC 2046 does not allow")
        # Every delimiter is CRLF "--" boundary; a body may start with the first one directly,
        # so the input is read as if it began with a CRLF.
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        self._buffer = bytearray(b"\r\n")
        self._state = _PREAMBLE
        self.parts = 0

    @property
    def finished(self) -> bool:
        return self._state == _EPILOGUE

    def feed(self, data: bytes) -> Iterator[Event]:
        """Events for the input so far (consume them before feeding more)."""
        if self._state == _EPILOGUE:
            return  # the epilogue is ignored (RFC 2046)
        self._buffer += data
        yield from self._run()

    def close(self) -> None:
        """End of input: raises MultipartError unless the closing delimiter was read."""
        if self._state != _EPILOGUE:
            raise MultipartError("body ends before the closing boundary")
        if self.parts == 0:
            raise MultipartError("multipart body without any part")

    def _run(self) -> Iterator[Event]:
        buf, delim = self._buffer, self._delimiter
        while True:
            if self._state == _PREAMBLE:
                at = buf.find(delim)
                if at < 0:
                    # Keep what could be the start of a delimiter; drop the rest (preamble).
                    del buf[: max(0, len(buf) - len(delim) + 1)]
                    return
                del buf[: at + len(delim)]
                self._state = _AFTER_DELIMITER
            elif self._state == _AFTER_DELIMITER:
                if len(buf) < 2:
                    return
                if buf[:2] == b"--":
                    self._state = _EPILOGUE
                    del buf[:]
                    return
                eol = buf.find(b"\r\n")
                # The line may hold at most 256 bytes however the body is chunked: without its
                # CRLF yet, the buffer may end in the CR.
                if eol > _MAX_BOUNDARY_LINE or (eol < 0 and len(buf) > _MAX_BOUNDARY_LINE + 1):
                    raise MultipartError("malformed boundary line")
                if eol < 0:
                    return
                if buf[:eol].strip(b" \t"):
                    raise MultipartError("garbage after a boundary delimiter")
                del buf[: eol + 2]
                self._state = _HEADERS
            elif self._state == _HEADERS:
                if buf[:2] == b"\r\n":  # no headers at all
                    end, skip = 0, 2
                else:
                    end, skip = buf.find(b"\r\n\r\n"), 4
                # Without its CRLFCRLF yet, the buffer may end in 3 bytes of it: the same limit
                # whatever the chunking.
                if (end if end >= 0 else len(buf) - 3) > MAX_HEADER_BLOCK:
                    raise MultipartError("part headers too long")
                if end < 0:
                    return
                headers = _headers(bytes(buf[:end]))
                del buf[: end + skip]
                self._state = _BODY
                self.parts += 1
                yield PartStart(headers)
            elif self._state == _BODY:
                at = buf.find(delim)
                if at < 0:
                    keep = len(delim) - 1
                    if len(buf) > keep:
                        yield PartData(bytes(buf[: len(buf) - keep]))
                        del buf[: len(buf) - keep]
                    return
                if at:
                    yield PartData(bytes(buf[:at]))
                del buf[: at + len(delim)]
                yield PartEnd()
                self._state = _AFTER_DELIMITER
            else:
                return


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    if not block:
        return headers
    for line in block.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or name != name.strip():
            raise MultipartError(f"malformed part header line {line[:60]!r}")
        headers[name.lower()] = value.strip()
    return headers
