"""The writable map of catalogs without durable commits: reserved on disk, grown by doubling,
followed across processes, and a full disk is an error rather than a crash."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pacs.errors import CatalogError
from pacs.index.catalog import WRITEMAP_START, Catalog
from tests.unit.index._records import check_consistent, hierarchy, make_record


def allocated(path: Path) -> int:
    return (path / "data.mdb").stat().st_blocks * 512


def test_the_map_is_reserved_on_disk_and_doubles_when_full(tmp_path: Path) -> None:
    with Catalog(tmp_path / "db", map_size=1 << 16, durable_commits=False) as catalog:
        start = catalog.map_size
        assert allocated(tmp_path / "db") >= start  # no hole a write could fault on
        catalog.store_batch(hierarchy(2, 5, 5, 20))  # ~1,000 records: far more than 64 KiB
        grown = catalog.map_size
        assert grown > start
        assert allocated(tmp_path / "db") >= grown
        check_consistent(catalog)
    with Catalog(tmp_path / "db", map_size=1 << 16, durable_commits=False) as catalog:
        assert catalog.map_size >= grown  # the reserved file is kept, not shrunk
        assert catalog.statistics()["instances"] == 1000


def test_the_first_map_is_small_whatever_the_setting(tmp_path: Path) -> None:
    with Catalog(tmp_path / "db", map_size=64 << 30, durable_commits=False) as catalog:
        assert catalog.map_size == WRITEMAP_START
        assert (tmp_path / "db" / "data.mdb").stat().st_size == WRITEMAP_START
    with Catalog(tmp_path / "plain", map_size=64 << 30) as catalog:  # durable commits
        assert (tmp_path / "plain" / "data.mdb").stat().st_size < WRITEMAP_START


def test_a_catalog_written_without_the_map_opens_with_it(tmp_path: Path) -> None:
    records = hierarchy(1, 2, 2, 5)
    with Catalog(tmp_path / "db", map_size=1 << 26) as catalog:
        catalog.store_batch(records[:10])
    with Catalog(tmp_path / "db", map_size=1 << 26, durable_commits=False) as catalog:
        catalog.store_batch(records[10:])
        assert catalog.statistics()["instances"] == 20
        check_consistent(catalog)


def test_a_full_disk_fails_the_growth_and_keeps_what_was_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = hierarchy(2, 5, 5, 20)
    with Catalog(tmp_path / "db", map_size=1 << 16, durable_commits=False) as catalog:
        catalog.store_batch(records[:5])

        def disk_full(fd: int, offset: int, length: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "posix_fallocate", disk_full)
        with pytest.raises(CatalogError, match="cannot grow"):
            catalog.store_batch(records[5:])
        assert catalog.statistics()["instances"] == 5  # the failed batch left nothing
        check_consistent(catalog)
        monkeypatch.undo()
        catalog.store_batch(records[5:])  # space again: it grows and stores
        assert catalog.statistics()["instances"] == 1000


def test_a_disk_too_full_for_the_first_map_opens_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Commits then write their pages as without the map: nothing is mapped over a hole."""
    def disk_full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", disk_full)
    with Catalog(tmp_path / "db", map_size=1 << 16, durable_commits=False) as catalog:
        catalog.store_batch(hierarchy(1, 1, 1, 50))
        assert catalog.statistics()["instances"] == 50
    assert "cannot reserve" in caplog.text


def test_a_map_grown_by_another_process_is_followed(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[3]
    records = hierarchy(2, 5, 5, 20)
    with Catalog(tmp_path / "db", map_size=1 << 16, durable_commits=False) as catalog:
        catalog.store_batch(records[:5])
        start = catalog.map_size
        other = textwrap.dedent(f"""
            from pathlib import Path
            from pacs.index.catalog import Catalog
            from tests.unit.index._records import hierarchy
            with Catalog(Path({str(tmp_path / "db")!r}), map_size=1 << 16,
                         durable_commits=False) as catalog:
                catalog.store_batch(hierarchy(2, 5, 5, 20)[5:])
                print(catalog.map_size)
        """)
        done = subprocess.run([sys.executable, "-c", other], cwd=root, capture_output=True,
                              text=True, timeout=60, check=True)
        theirs = int(done.stdout.split()[-1])
        assert theirs > start
        assert catalog.statistics()["instances"] == 1000  # a read follows the new map
        catalog.store_batch([make_record("PX", "9.1", "9.1.1", f"9.1.1.{i}") for i in range(3)])
        assert catalog.map_size >= theirs
        assert allocated(tmp_path / "db") >= catalog.map_size
        check_consistent(catalog)
