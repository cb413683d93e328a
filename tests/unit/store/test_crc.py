"""The CRC-32 twins: compiled ``_ccrc.crc32`` gives zlib.crc32's value for every input."""

from __future__ import annotations

import os
import random
import threading
import zlib

import pytest

from pacs.store import crc

try:
    from pacs.store import _ccrc  # type: ignore[attr-defined]
except ImportError:  # built without extensions: zlib's own crc32 is all there is
    _ccrc = None

needs_compiled = pytest.mark.skipif(_ccrc is None, reason="extensions not built")


@needs_compiled
def test_every_length_offset_and_start_value_matches_zlib() -> None:
    rng = random.Random(7)
    data = rng.randbytes(4096 + 64)
    view = memoryview(data)
    # Every length through the byte-wise path (< 64) and the fold's remainders (16, 64 bytes),
    # at every offset modulo 16 (unaligned loads), from several running values.
    for length in range(0, 400):
        for offset in (0, 1, 7, 15):
            for value in (0, 1, 0xFFFFFFFF, rng.getrandbits(32)):
                piece = view[offset:offset + length]
                assert _ccrc.crc32(piece, value) == zlib.crc32(piece, value), (length, offset)


@needs_compiled
@pytest.mark.parametrize("length", [4095, 4096, 4097, 65536 + 13, 525_000, (1 << 20) - 1, 1 << 20,
                                    3 << 20])
def test_large_buffers_match_zlib(length: int) -> None:
    data = os.urandom(length)
    assert _ccrc.crc32(data) == zlib.crc32(data)
    assert _ccrc.crc32(data, 0x12345678) == zlib.crc32(data, 0x12345678)


@needs_compiled
def test_running_value_over_pieces_equals_the_whole() -> None:
    data = os.urandom(200_000)
    value = 0
    for start in range(0, len(data), 7_777):
        value = _ccrc.crc32(data[start:start + 7_777], value)
    assert value == zlib.crc32(data)


@needs_compiled
def test_buffer_kinds_and_start_values_are_read_like_zlib() -> None:
    data = os.urandom(1000)
    for kind in (bytes, bytearray, memoryview):
        assert _ccrc.crc32(kind(data)) == zlib.crc32(data)
    # zlib takes the start value modulo 2**32; so does the twin.
    class Index:
        def __index__(self) -> int:
            return 0x1234_5678_9

    for value in (-1, 1 << 32, (1 << 40) + 5, True, Index()):
        assert _ccrc.crc32(data, value) == zlib.crc32(data, value)  # type: ignore[arg-type]
    for bad_value in (1.5, None, "1"):
        with pytest.raises(TypeError):
            zlib.crc32(data, bad_value)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            _ccrc.crc32(data, bad_value)
    assert _ccrc.crc32(b"") == 0 and _ccrc.crc32(b"", 77) == 77


@needs_compiled
def test_what_zlib_refuses_the_twin_refuses() -> None:
    for bad in ("text", 5, None):
        with pytest.raises(TypeError):
            zlib.crc32(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            _ccrc.crc32(bad)
    strided = memoryview(bytes(100))[::2]
    with pytest.raises(BufferError):
        zlib.crc32(strided)
    with pytest.raises(BufferError):
        _ccrc.crc32(strided)


@needs_compiled
def test_large_buffers_run_without_the_gil() -> None:
    # Two threads checksumming 8 MiB each finish with the right values while the GIL is free
    # (a wrong release would crash or corrupt; the values prove the buffers stayed held).
    data = [os.urandom(8 << 20) for _ in range(2)]
    out: list[int] = [0, 0]

    def work(i: int) -> None:
        out[i] = _ccrc.crc32(bytearray(data[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [zlib.crc32(d) for d in data]


def test_the_chosen_implementation_is_the_compiled_one_when_built() -> None:
    assert crc.IMPLEMENTATION in {"cython", "python"}
    # The compiled twin only where it is fast: with carry-less multiplication.
    if (_ccrc is not None and _ccrc.ACCELERATED
            and os.environ.get("PACS_NO_EXTENSIONS", "") not in ("1", "true", "yes")):
        assert crc.IMPLEMENTATION == "cython" and crc.crc32 is _ccrc.crc32
    else:
        assert crc.crc32 is zlib.crc32
    assert crc.crc32(b"123456789") == 0xCBF43926  # the CRC-32 check value
