"""The free-space watermark: cached statvfs, rechecked by time and by bytes written."""

from __future__ import annotations

import os
from pathlib import Path

from pacs.config import Settings
from pacs.diskspace import DiskSpace, watermark


class FakeDisk:
    """A filesystem whose free space the test sets; counts the statvfs calls."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.calls = 0
        self.now = 100.0
        self.fail = False

    def statvfs(self, path: Path) -> os.statvfs_result:
        self.calls += 1
        if self.fail:
            raise OSError(5, "Input/output error")
        # (bsize, frsize, blocks, bfree, bavail, files, ffree, favail, flag, namemax)
        return os.statvfs_result((4096, 4096, 1 << 30, self.free // 4096, self.free // 4096,
                                  0, 0, 0, 0, 255))

    def clock(self) -> float:
        return self.now


def checker(disk: FakeDisk, min_free: int = 1 << 20, recheck: int = 1 << 20) -> DiskSpace:
    return DiskSpace(Path("/x"), min_free, interval=0.5, recheck_bytes=recheck,
                     clock=disk.clock, statvfs=disk.statvfs)


def test_no_watermark_never_looks() -> None:
    disk = FakeDisk(0)
    space = checker(disk, min_free=0)
    assert not space.below_watermark()
    assert disk.calls == 0


def test_answer_is_cached_for_the_interval() -> None:
    disk = FakeDisk(10 << 20)
    space = checker(disk)
    assert not space.below_watermark()
    disk.free = 0
    for _ in range(1000):
        assert not space.below_watermark()  # the cached answer
    assert disk.calls == 1
    disk.now += 0.6
    assert space.below_watermark()
    assert disk.calls == 2
    disk.free = 10 << 20  # space came back: seen at the next look, no restart needed
    assert space.below_watermark()
    disk.now += 0.6
    assert not space.below_watermark()


def test_bytes_written_force_an_early_look() -> None:
    disk = FakeDisk(10 << 20)
    space = checker(disk, recheck=1000)
    assert not space.below_watermark()
    disk.free = 0
    space.note_written(999)
    assert not space.below_watermark()
    space.note_written(1)
    assert space.below_watermark()
    assert disk.calls == 2


def test_watermark_is_exclusive_of_the_limit() -> None:
    disk = FakeDisk(1 << 20)
    assert not checker(disk, min_free=1 << 20).below_watermark()
    assert checker(disk, min_free=(1 << 20) + 1).below_watermark()


def test_statvfs_failure_keeps_the_last_answer() -> None:
    disk = FakeDisk(0)
    space = checker(disk)
    assert space.below_watermark()
    disk.fail = True
    disk.now += 1
    assert space.below_watermark()
    fresh = checker(disk)
    assert not fresh.below_watermark()  # never refuse on a failed look


def test_real_filesystem_and_shared_checker(tmp_path: Path) -> None:
    space = DiskSpace(tmp_path, 1)
    st = os.statvfs(tmp_path)
    assert space.free_bytes() > 0
    assert abs(space.free_bytes() - st.f_bavail * st.f_frsize) < 1 << 30
    assert not space.below_watermark()
    assert DiskSpace(tmp_path, 1 << 60).below_watermark()
    s = Settings(data_dir=tmp_path, min_free_space=12345)
    assert watermark(s) is watermark(Settings(data_dir=tmp_path, min_free_space=12345))
    assert watermark(s).min_free == 12345
