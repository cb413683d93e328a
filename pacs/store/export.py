"""Write blobs out as ordinary Part-10 files (``pacs export``): nothing is locked in a store."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from pacs.errors import StorageError
from pacs.store.base import BlobStore


def export(store: BlobStore, items: Iterable[tuple[str, str]], directory: Path) -> int:
    """Copy each (location, file name) to ``directory/name``, streaming; the count written.

    Each file is written under a temporary name and renamed, so a file that exists is whole.
    Names must be plain file names (no folders); existing files are replaced.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    count = 0
    for location, name in items:
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise ValueError(f"not a plain file name: {name!r}")
        final = directory / name
        tmp = directory / f".{name}.part"
        try:
            with tmp.open("wb") as out:
                for chunk in store.iter_chunks(location):
                    out.write(chunk)
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot export {location} to {final}: {exc}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        count += 1
    return count
