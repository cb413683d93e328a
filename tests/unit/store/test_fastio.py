"""The pwrite twins: ``fastio``'s GIL-keeping pwrite (ctypes) behaves like ``os.pwrite``."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pacs.store import fastio

TWINS: list[tuple[str, Callable[[int, Any, int], int]]] = [("python", os.pwrite)]
if fastio.held_pwrite is not None:  # the C library's, through ctypes.PyDLL
    TWINS.append(("ctypes", fastio.held_pwrite))


@pytest.fixture(params=TWINS, ids=[name for name, _ in TWINS])
def pwrite(request: pytest.FixtureRequest) -> Callable[[int, Any, int], int]:
    return request.param[1]  # type: ignore[no-any-return]


def test_writes_at_offsets_like_os_pwrite(tmp_path: Path, pwrite: Callable[..., int]) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert pwrite(fd, b"hello", 0) == 5
        assert pwrite(fd, bytearray(b"XY"), 1) == 2
        assert pwrite(fd, memoryview(b"--tail--")[2:6], 10) == 4
        assert pwrite(fd, b"", 3) == 0
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # the file position never moves
    finally:
        os.close(fd)
    assert path.read_bytes() == b"hXYlo\0\0\0\0\0tail"


def test_errors_are_those_of_os_pwrite(tmp_path: Path, pwrite: Callable[..., int]) -> None:
    fd = os.open(tmp_path / "f", os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(OSError) as info:
            pwrite(fd, b"x", 0)  # not open for writing
        assert info.value.errno == errno.EBADF
        wfd = os.open(tmp_path / "f", os.O_WRONLY)
        try:
            with pytest.raises(OSError) as info:
                pwrite(wfd, b"x", -1)
            assert info.value.errno == errno.EINVAL
        finally:
            os.close(wfd)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        pwrite(10_000, b"x", 0)
    assert info.value.errno == errno.EBADF
    with pytest.raises(TypeError):
        pwrite(1, "text", 0)


def test_the_gil_keeping_twin_is_chosen_when_available() -> None:
    if len(TWINS) == 2:
        assert fastio.IMPLEMENTATION == "ctypes" and fastio.pwrite is TWINS[1][1]
    else:
        assert fastio.IMPLEMENTATION == "python" and fastio.pwrite is os.pwrite
