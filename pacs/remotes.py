"""The remote AE registry: the settings' ``[remote.AET]`` tables plus those managed over REST.

REST ``PUT /modalities/{aet}`` and ``DELETE`` (in worker 0) change
``data_dir/state/modalities.json``, written atomically (temporary file, fsync, rename, fsync of
the folder). Every process re-reads it when the file changes (one ``stat`` per lookup: a new
file after each rename, so its inode and mtime differ), so C-MOVE destinations, storage
commitment reports and forwarding use the change in every worker at once, and after a restart.

- A REST entry adds an AE or overrides the settings' entry of the same AE title; it has the
  defaults of the fields REST does not set (permissions, check_host, max_associations).
- ``DELETE`` removes a REST entry (an overridden settings entry then applies again); an AE
  defined only in the settings file cannot be deleted over REST (``ConfiguredRemoteError``,
  HTTP 409): the file is the place to change it.
- Access control of calling AEs (``pacs.server.access``) stays with the settings' tables only:
  REST cannot grant a calling AE permissions.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from pacs.config import RemoteAE, Settings
from pacs.errors import PacsError

log = logging.getLogger("pacs.remotes")

FILE_NAME = "modalities.json"
_VERSION = 1


class ConfiguredRemoteError(PacsError):
    """The AE is defined in the settings file, not over REST: it cannot be deleted here."""


def _encode(remote: RemoteAE) -> dict[str, Any]:
    entry: dict[str, Any] = {"host": remote.host, "port": remote.port,
                             "move_destination": remote.move_destination}
    if remote.tls:  # only then: files written before the field read the same
        entry["tls"] = True
    return entry


def _decode(aet: str, entry: Any) -> RemoteAE:
    if not isinstance(entry, dict):
        raise ValueError(f"{aet}: not an object")
    host, port = entry.get("host"), entry.get("port")
    if not isinstance(host, str) or not host or not isinstance(port, int) or isinstance(
            port, bool) or not 0 < port <= 65535:
        raise ValueError(f"{aet}: bad host or port")
    return RemoteAE(aet, host, port, bool(entry.get("move_destination", True)),
                    tls=entry.get("tls") is True)


class RemoteRegistry:
    """Remote AEs of the settings and of ``state/modalities.json``; one per user is fine."""

    def __init__(self, settings: Settings) -> None:
        self._configured: dict[str, RemoteAE] = dict(settings.remotes)
        self.path = settings.state_dir / FILE_NAME
        self._identity: tuple[int, int, int] | None = None
        self._added: dict[str, RemoteAE] = {}

    # -- reading -------------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Re-read the file when it changed since the last look (a rename makes a new inode)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._identity, self._added = None, {}
            return
        identity = (st.st_ino, st.st_mtime_ns, st.st_size)
        if identity == self._identity:
            return
        try:
            self._added = self._load()
        except (OSError, ValueError) as exc:
            # Keep what we had: a REST change never replaces the file partially (rename).
            log.error("cannot read %s: %s; keeping the previous remote AEs", self.path, exc)
        self._identity = identity

    def _load(self) -> dict[str, RemoteAE]:
        data = json.loads(self.path.read_bytes())
        if not isinstance(data, dict) or not isinstance(data.get("remotes"), dict):
            raise ValueError("no 'remotes' object")
        return {aet: _decode(aet, entry) for aet, entry in data["remotes"].items()}

    def get(self, aet: str) -> RemoteAE | None:
        """The remote AE ``aet`` (REST entries first), or None."""
        self._refresh()
        return self._added.get(aet) or self._configured.get(aet)

    def all(self) -> dict[str, RemoteAE]:
        """Every remote AE: the settings' ones, then those added over REST (overrides win)."""
        self._refresh()
        return {**self._configured, **self._added}

    def configured(self, aet: str) -> bool:
        """Whether the settings file defines ``aet``."""
        return aet in self._configured

    def added(self, aet: str) -> bool:
        """Whether ``aet`` was added (or overridden) over REST."""
        self._refresh()
        return aet in self._added

    # -- changing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, RemoteAE]]:
        """Read-modify-write under an exclusive lock (any process may change the file)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._identity = None
            self._refresh()
            entries = dict(self._added)
            yield entries
            self._write(entries)
            self._identity = None  # the next lookup reads what was written

    def _write(self, entries: dict[str, RemoteAE]) -> None:
        body = json.dumps({"version": _VERSION,
                           "remotes": {a: _encode(r) for a, r in sorted(entries.items())}},
                          indent=1).encode()
        fd, temp = tempfile.mkstemp(prefix=".modalities-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)

    def put(self, remote: RemoteAE) -> bool:
        """Add or replace a REST entry; True when the AE title was unknown before."""
        with self._locked() as entries:
            created = remote.aet not in entries and remote.aet not in self._configured
            entries[remote.aet] = remote
        return created

    def delete(self, aet: str) -> bool:
        """Remove the REST entry of ``aet``: False when there is none; ConfiguredRemoteError
        when only the settings file defines it."""
        with self._locked() as entries:
            if aet not in entries:
                if aet in self._configured:
                    raise ConfiguredRemoteError(f"{aet} is defined in the settings file")
                return False
            del entries[aet]
        return True
