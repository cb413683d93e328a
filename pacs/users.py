"""Users of the HTTP side: names, roles and argon2id password hashes in ``state/users.json``.

The file (``Settings.users_file``) is ``{"name": {"hash": "$argon2id$...", "role": "viewer"}}``,
written whole to a temporary file, fsync'd and renamed over the old one (mode 0600), under an
exclusive lock on ``users.json.lock`` so two ``pacs user`` commands cannot lose each other's
change. A running server re-reads it when it changes (``UserStore.get`` compares the file's
identity on each call), so ``pacs user add`` and ``pacs user remove`` take effect at once.
A password never reaches the file, a log or an exception; only its hash does.

Roles are ranked: ``viewer`` reads (QIDO, WADO, rendered, the viewer, REST GET), ``uploader``
also stores (STOW-RS), ``admin`` may do everything (deletes, configuration, tools).
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from pacs.config import Settings
from pacs.errors import PacsError

__all__ = ["ROLES", "Role", "User", "UserError", "UserStore", "check_name", "check_password",
           "role_allows", "user_command"]

Role = Literal["viewer", "uploader", "admin"]
ROLES: tuple[str, ...] = get_args(Role)
_RANK = {role: rank for rank, role in enumerate(ROLES)}

# Names travel in HTTP Basic credentials (no ':'), audit lines and shell commands: keep them
# to a plain alphabet.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MAX_PASSWORD = 1024  # characters; argon2 hashes anything, this only bounds the work per request


class UserError(PacsError):
    """A refused user operation (bad name, empty password, unknown user, ...)."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    hash: str  # the argon2id hash string (never the password)


def role_allows(role: str, required: str) -> bool:
    """True when ``role`` ranks at least as high as ``required``."""
    return role in _RANK and _RANK[role] >= _RANK[required]


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UserError(f"user name {name!r}: 1-64 characters of letters, digits and ._@- "
                        "(starting with a letter or digit)")
    return name


def check_password(password: str) -> str:
    if not password:
        raise UserError("the password must not be empty")
    if len(password) > MAX_PASSWORD:
        raise UserError(f"the password is longer than {MAX_PASSWORD} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        raise UserError("the password must not contain control characters")
    return password


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise UserError(f"role {role!r}: one of {', '.join(ROLES)}")
    return cast(Role, role)


class UserStore:
    """The users file: read (cached until it changes), verified against, and rewritten."""

    def __init__(self, path: Path, hasher: PasswordHasher | None = None) -> None:
        self.path = path
        self.hasher = hasher or PasswordHasher()  # argon2id, RFC 9106 low-memory profile
        self._identity: tuple[int, int, int] | None = None
        self._users: dict[str, User] = {}
        self.generation = 0  # bumped on every reload: caches of verified credentials key on it
        self._dummy = ""  # unknown names are verified against it: they cost the same time
        self._lock = threading.Lock()  # verify() runs on executor threads

    # -- reading ---------------------------------------------------------------------------

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        # A rename gives a new inode: a rewrite within the mtime resolution is still seen.
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _reload(self) -> None:
        identity = self._stat()
        if identity == self._identity:
            return
        with self._lock:
            self._users = _parse(self.path) if identity is not None else {}
            self._identity = identity
            self.generation += 1

    def get(self, name: str) -> User | None:
        """The user as the file says now (re-read when it changed), or None."""
        self._reload()
        return self._users.get(name)

    def users(self) -> list[User]:
        self._reload()
        return sorted(self._users.values(), key=lambda u: u.name)

    def verify(self, name: str, password: str) -> User | None:
        """The user when ``password`` is theirs; None otherwise (in about the same time)."""
        user = self.get(name)
        if not password or len(password) > MAX_PASSWORD:
            return None
        try:
            if user is None and not self._dummy:
                self._dummy = self.hasher.hash("not the password of anybody")
            self.hasher.verify(user.hash if user else self._dummy, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return user

    # -- writing (pacs user ...) -----------------------------------------------------------

    def add(self, name: str, password: str, role: str) -> User:
        check_name(name)
        check_password(password)
        user = User(name, check_role(role), self.hasher.hash(password))
        with self._locked() as users:
            if name in users:
                raise UserError(f"user {name!r} exists (pacs user passwd / remove)")
            users[name] = user
        return user

    def set_password(self, name: str, password: str) -> None:
        check_password(password)
        digest = self.hasher.hash(password)
        with self._locked() as users:
            old = users.get(name)
            if old is None:
                raise UserError(f"no user {name!r}")
            users[name] = User(name, old.role, digest)

    def set_role(self, name: str, role: str) -> None:
        checked = check_role(role)
        with self._locked() as users:
            old = users.get(name)
            if old is None:
                raise UserError(f"no user {name!r}")
            users[name] = User(name, checked, old.hash)

    def remove(self, name: str) -> None:
        with self._locked() as users:
            if users.pop(name, None) is None:
                raise UserError(f"no user {name!r}")

    @contextmanager
    def _locked(self) -> Iterator[dict[str, User]]:
        """Read-modify-write under an exclusive lock; the change is written on success."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.path.with_name(self.path.name + ".lock"),
                          os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            users = _parse(self.path) if self.path.exists() else {}
            yield users
            _write(self.path, users)
        finally:
            os.close(lock_fd)  # releases the lock
        self._identity = None  # re-read on the next get()


def _parse(path: Path) -> dict[str, User]:
    try:
        with open(path, encoding="utf-8") as fh:
            data: Any = json.load(fh)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected an object of users")
    users: dict[str, User] = {}
    for name, entry in data.items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("hash"), str)
                or not entry["hash"].startswith("$argon2") or entry.get("role") not in ROLES):
            raise UserError(f"{path}: user {name!r} needs an argon2 hash and a role")
        users[name] = User(name, entry["role"], entry["hash"])
    return users


def _write(path: Path, users: dict[str, User]) -> None:
    """Replace the file atomically: a reader sees the old content or the new, never a part."""
    data = {u.name: {"hash": u.hash, "role": u.role}
            for u in sorted(users.values(), key=lambda u: u.name)}
    fd, tmp = tempfile.mkstemp(prefix=".users-", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)



def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    password = getpass.getpass("Password: ")
    if password != getpass.getpass("Password (again): "):
        raise UserError("the passwords differ")
    return password


def user_command(settings: Settings, action: str, name: str = "", role: str = "",
                 password_stdin: bool = False) -> int:
    """``pacs user add|list|remove|passwd|role``; exit 0, or 2 with a one-line error."""
    store = UserStore(settings.users_file)
    try:
        if action == "list":
            for user in store.users():
                print(f"{user.name}\t{user.role}")
            return 0
        check_name(name)
        if action == "add":
            check_role(role)
            if store.get(name) is not None:  # before asking for a password in vain
                raise UserError(f"user {name!r} exists (pacs user passwd / remove)")
            store.add(name, _read_password(password_stdin), role)
            print(f"added {name} ({role})")
        elif action == "passwd":
            if store.get(name) is None:
                raise UserError(f"no user {name!r}")
            store.set_password(name, _read_password(password_stdin))
            print(f"password of {name} changed")
        elif action == "role":
            store.set_role(name, role)
            print(f"{name} is now {role}")
        elif action == "remove":
            store.remove(name)
            print(f"removed {name}")
        else:
            raise UserError(f"unknown action {action!r}")
    except UserError as exc:
        print(f"pacs: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, EOFError):
        print(file=sys.stderr)
        return 2
    return 0
