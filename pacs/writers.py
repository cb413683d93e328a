"""What ``data_dir/state`` keeps per segment writer (``w0``, ``import3``...): its lock, its
markers and the boot it last started in. Light on purpose (no LMDB, no asyncio): the
``pacs serve`` supervisor reads it before it forks its workers.

- ``<writer>.lock``: flock'ed while a process writes with it (workers, imports);
- ``<writer>.clean``: its last stop was clean (no replay needed at the next start);
- ``<writer>.replay-all``: its next start replays its whole segment log (``pacs.recovery``);
- ``<writer>.boot``: the kernel's boot id when it last started.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Collection, Iterable
from pathlib import Path

from pacs.store.files import fsync_dir
from pacs.store.segment_format import parse_segment_name

log = logging.getLogger("pacs.recovery")

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _write_durably(path: Path, text: str) -> None:
    """``path`` holds ``text`` on disk, name included (written aside, then renamed)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _remove_durably(path: Path) -> bool:
    """False when there was nothing to remove."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def lock_writer(state_dir: Path, writer_id: str) -> int | None:
    """Lock ``<writer>.lock``: the descriptor holding it (close it to unlock), None when another
    process holds it (that writer is running)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / f"{writer_id}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def lock_first_free(state_dir: Path, writer_ids: Iterable[str]) -> tuple[str, int] | None:
    """The first of ``writer_ids`` no process holds, locked: (its id, the descriptor holding
    the lock); None when every one is held."""
    for writer_id in writer_ids:
        fd = lock_writer(state_dir, writer_id)
        if fd is not None:
            return writer_id, fd
    return None


def clean_marker(state_dir: Path, writer_id: str) -> Path:
    return state_dir / f"{writer_id}.clean"


def take_clean_marker(state_dir: Path, writer_id: str) -> bool:
    """True when the last stop of this writer was clean; from now on it is 'running'."""
    return _remove_durably(clean_marker(state_dir, writer_id))


def leave_clean_marker(state_dir: Path, writer_id: str) -> None:
    _write_durably(clean_marker(state_dir, writer_id), "")


def replay_all_marker(state_dir: Path, writer_id: str) -> Path:
    return state_dir / f"{writer_id}.replay-all"


def must_replay_all(state_dir: Path, writer_id: str) -> bool:
    return replay_all_marker(state_dir, writer_id).exists()


def leave_replay_all_marker(state_dir: Path, writer_id: str, why: str) -> None:
    """From now on, starts of this writer replay its whole log (until one succeeds)."""
    if must_replay_all(state_dir, writer_id):
        return
    log.error("writer %s: %s; its next start replays its whole segment log", writer_id, why)
    _write_durably(replay_all_marker(state_dir, writer_id), why + "\n")


def drop_replay_all_marker(state_dir: Path, writer_id: str) -> None:
    _remove_durably(replay_all_marker(state_dir, writer_id))


def swap_boot_id(state_dir: Path, writer_id: str) -> tuple[str, str]:
    """(the boot this writer last started in, this one): after an unclean stop, a different
    boot means the machine itself went down (an OS crash or power cut), not just the process,
    and the catalog's unsynced LMDB pages may not have reached the disk in order. ("", "")
    where the kernel does not say."""
    try:
        current = BOOT_ID.read_text().strip()
    except OSError:
        return "", ""
    path = state_dir / f"{writer_id}.boot"
    try:
        previous = path.read_text().strip()
    except OSError:
        previous = ""
    if previous != current:
        _write_durably(path, current + "\n")
    return previous, current


def stale_writers(blob_dir: Path, state_dir: Path, prefix: str,
                  skip: Collection[str] = ()) -> list[str]:
    """Writers named ``<prefix><digits>`` (not in ``skip``) with segments in ``blob_dir`` whose
    log may need a replay: stopped uncleanly (no clean marker), or due to replay all of it.
    Ordered by number (``w2`` before ``w10``); whether one is running is not looked at."""
    try:
        names = os.listdir(blob_dir)
    except FileNotFoundError:
        return []
    # Only <prefix><digits>: with prefix "w", an owner like "wal" or "compact" is not a worker.
    owners = {owner for name in names
              if (parsed := parse_segment_name(name))
              and (owner := parsed[0]).startswith(prefix) and owner[len(prefix):].isdigit()
              and owner not in skip}
    return [w for w in sorted(owners, key=lambda owner: int(owner[len(prefix):]))
            if not clean_marker(state_dir, w).exists() or must_replay_all(state_dir, w)]
