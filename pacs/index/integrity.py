"""Walk a catalog in a child process: ``python -m pacs.index.integrity INDEX_DIR``.

LMDB meets some damage (a page of the wrong type where a leaf should be) with an assertion
that aborts the process: the walk runs in a child of its own, so a damaged index is a failed
check, not a dead worker. Exit 0 and the entry count on stdout when every database walks in
order; 1 and the reason on stderr otherwise.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pacs.errors import CatalogError

TIMEOUT = 3600.0  # a walk of a very large index reads every page once


def check(index_dir: Path) -> int:
    """The number of entries of the catalog at ``index_dir``; CatalogError when it is damaged
    (the walk failed, or LMDB aborted it)."""
    try:
        done = subprocess.run([sys.executable, "-m", "pacs.index.integrity", str(index_dir)],
                              capture_output=True, text=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CatalogError(f"cannot check the catalog: {exc}") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
        how = (f"the walk died (signal {-done.returncode})" if done.returncode < 0
               else "the walk failed")
        raise CatalogError(f"{how}: {last}")
    return int(done.stdout.strip() or 0)


def main(argv: list[str]) -> int:
    import resource

    from pacs.index.catalog import Catalog

    # An abort on a damaged page is the failure this walk looks for, not a crash to keep.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if len(argv) != 1:
        print("usage: python -m pacs.index.integrity INDEX_DIR", file=sys.stderr)
        return 2
    try:
        catalog = Catalog(Path(argv[0]), readonly=True)
        try:
            print(catalog.check_integrity())
        finally:
            catalog.close()
    except CatalogError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
