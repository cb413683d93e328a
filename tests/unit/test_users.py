"""The users file (argon2id hashes, atomic rewrites, reloads), `pacs user`, bearer tokens and
the access table of the HTTP side."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from pacs import cli
from pacs.users import ROLES, UserError, UserStore, role_allows
from pacs.web.auth import TokenError, TokenSigner, load_secret, required_role

# Cheap parameters: these tests check behaviour, not the cost of a guess.
FAST = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
PASSWORD = "correct horse battery staple"


@pytest.fixture
def store(tmp_path: Path) -> UserStore:
    return UserStore(tmp_path / "state" / "users.json", FAST)


def test_file_holds_argon2id_hashes_never_the_password(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "users.json")  # the real (default) parameters
    store.add("alice", PASSWORD, "admin")
    raw = store.path.read_text()
    assert PASSWORD not in raw
    data = json.loads(raw)
    assert set(data) == {"alice"}
    assert data["alice"]["role"] == "admin"
    assert data["alice"]["hash"].startswith("$argon2id$v=19$")
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert store.verify("alice", PASSWORD) is not None
    assert store.verify("alice", PASSWORD + "x") is None


def test_add_verify_passwd_role_remove(store: UserStore) -> None:
    store.add("bob", "one", "viewer")
    store.add("carol", "two", "uploader")
    assert [(u.name, u.role) for u in store.users()] == [("bob", "viewer"), ("carol", "uploader")]
    user = store.verify("bob", "one")
    assert user is not None and user.role == "viewer"
    assert store.verify("bob", "two") is None
    assert store.verify("nobody", "one") is None
    assert store.verify("bob", "") is None
    with pytest.raises(UserError, match="exists"):
        store.add("bob", "three", "admin")
    old_hash = store.get("bob").hash  # type: ignore[union-attr]
    store.set_password("bob", "new")
    assert store.get("bob").hash != old_hash  # type: ignore[union-attr]
    assert store.verify("bob", "one") is None
    assert store.verify("bob", "new") is not None
    store.set_role("bob", "admin")
    assert store.get("bob").role == "admin"  # type: ignore[union-attr]
    store.remove("bob")
    assert store.get("bob") is None
    assert store.verify("bob", "new") is None
    with pytest.raises(UserError, match="no user"):
        store.remove("bob")
    with pytest.raises(UserError, match="no user"):
        store.set_password("bob", "x")


@pytest.mark.parametrize("name", ["", "a b", "a:b", "-x", ".hidden", "x" * 65, "é", "a/b",
                                  "a\nb", "a\\b", "'; rm"])
def test_bad_names_are_refused(store: UserStore, name: str) -> None:
    with pytest.raises(UserError, match="user name"):
        store.add(name, PASSWORD, "viewer")
    assert not store.path.exists()


@pytest.mark.parametrize("password", ["", "a\nb", "tab\there", "x" * 1025])
def test_bad_passwords_are_refused(store: UserStore, password: str) -> None:
    with pytest.raises(UserError, match="password"):
        store.add("dave", password, "viewer")
    assert store.get("dave") is None


def test_bad_role_is_refused(store: UserStore) -> None:
    with pytest.raises(UserError, match="role"):
        store.add("erin", PASSWORD, "root")
    with pytest.raises(UserError, match="role"):
        store.set_role("erin", "superuser")


def test_failed_write_leaves_the_old_file_and_no_temporary(store: UserStore,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store.add("frank", PASSWORD, "viewer")
    before = store.path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        store.add("grace", PASSWORD, "viewer")
    monkeypatch.undo()
    assert store.path.read_bytes() == before
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["users.json",
                                                                     "users.json.lock"]
    assert [u.name for u in UserStore(store.path, FAST).users()] == ["frank"]


def test_a_running_reader_sees_changes_of_another_writer(store: UserStore) -> None:
    """The server's store re-reads the file that `pacs user` rewrote (a new inode each time)."""
    server = UserStore(store.path, FAST)
    assert server.get("heidi") is None
    generation = server.generation
    store.add("heidi", PASSWORD, "viewer")
    assert server.get("heidi") is not None
    assert server.generation > generation
    store.remove("heidi")
    assert server.get("heidi") is None


def test_a_corrupt_file_is_an_error_not_an_empty_store(store: UserStore) -> None:
    store.path.parent.mkdir(parents=True)
    store.path.write_text('{"ivan": {"hash": "plain text", "role": "admin"}}')
    with pytest.raises(UserError, match="argon2"):
        store.get("ivan")
    store.path.write_text("{not json")
    with pytest.raises(UserError, match="JSON"):
        store.users()


def test_roles_are_ranked() -> None:
    assert ROLES == ("viewer", "uploader", "admin")
    assert role_allows("admin", "viewer") and role_allows("admin", "admin")
    assert role_allows("uploader", "viewer") and not role_allows("uploader", "admin")
    assert not role_allows("viewer", "uploader")
    assert not role_allows("", "viewer") and not role_allows("root", "viewer")


def test_pacs_user_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert cli.main(["user", "add", "judy", "--role", "uploader", "--password-stdin", *data]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert cli.main(["user", "add", "kim", "--role", "viewer", "--password-stdin", *data]) == 2
    assert "must not be empty" in capsys.readouterr().err
    assert cli.main(["user", "add", "no way", "--role", "viewer", *data]) == 2
    assert cli.main(["user", "list", *data]) == 0
    assert capsys.readouterr().out == "judy\tuploader\n"
    store = UserStore(tmp_path / "state" / "users.json")
    assert store.verify("judy", PASSWORD) is not None
    assert PASSWORD not in store.path.read_text()
    monkeypatch.setattr("sys.stdin", io.StringIO("other\r\n"))
    assert cli.main(["user", "passwd", "judy", "--password-stdin", *data]) == 0
    assert store.verify("judy", "other") is not None
    assert cli.main(["user", "role", "judy", "--role", "admin", *data]) == 0
    assert store.get("judy").role == "admin"  # type: ignore[union-attr]
    assert cli.main(["user", "remove", "judy", *data]) == 0
    assert cli.main(["user", "remove", "judy", *data]) == 2
    assert cli.main(["user", "list", *data]) == 0
    assert capsys.readouterr().out.endswith("removed judy\n")


def test_token_secret_is_created_once_private(tmp_path: Path) -> None:
    first = load_secret(tmp_path / "state")
    assert len(first) == 32
    assert load_secret(tmp_path / "state") == first
    path = tmp_path / "state" / "token-secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["token-secret"]


def test_tokens(store: UserStore) -> None:
    store.add("lena", PASSWORD, "viewer")
    user = store.get("lena")
    assert user is not None
    signer = TokenSigner(b"k" * 32, lifetime=60)
    token = signer.issue(user, now=1000.0)
    assert PASSWORD not in token and user.hash not in token
    assert signer.check(token, store, now=1059.0) == user
    with pytest.raises(TokenError, match="expired"):
        signer.check(token, store, now=1060.0)
    with pytest.raises(TokenError, match="signature"):
        TokenSigner(b"x" * 32, 60).check(token, store, now=1000.0)
    head, payload, signature = token.split(".")
    forged = json.dumps({"sub": "lena", "role": "admin", "exp": 9e9, "key": "0"}).encode()
    forged_text = base64.urlsafe_b64encode(forged).rstrip(b"=").decode()
    flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
    for bad in (f"{head}.{forged_text}.{signature}", f"{head}.{payload}.{flipped}",
                f"v2.{payload}.{signature}", "garbage", f"{head}.{payload}", ""):
        with pytest.raises(TokenError):
            signer.check(bad, store, now=1000.0)
    store.set_password("lena", "changed")
    with pytest.raises(TokenError, match="password changed"):
        signer.check(token, store, now=1000.0)
    token = signer.issue(store.get("lena"), now=1000.0)  # type: ignore[arg-type]
    store.set_role("lena", "admin")  # the role applied is the role now
    assert signer.check(token, store, now=1000.0).role == "admin"
    store.remove("lena")
    with pytest.raises(TokenError, match="removed"):
        signer.check(token, store, now=1000.0)


@pytest.mark.parametrize(("method", "path", "role"), [
    ("GET", "/dicom-web/studies", "viewer"),
    ("HEAD", "/dicom-web/studies/1.2/series/3.4/instances/5.6/rendered", "viewer"),
    ("GET", "/viewer", "viewer"),
    ("GET", "/studies/1.2", "viewer"),
    ("GET", "/metrics", "viewer"),
    ("POST", "/tools/find", "viewer"),
    ("POST", "/dicom-web/studies", "uploader"),
    ("POST", "/dicom-web/studies/1.2.3", "uploader"),
    ("POST", "/instances", "uploader"),
    ("POST", "/dicom-web/studiesX", "admin"),
    ("POST", "/instances/1.2", "admin"),
    ("DELETE", "/studies/1.2", "admin"),
    ("DELETE", "/dicom-web/studies/1.2", "admin"),
    ("PUT", "/modalities/X", "admin"),
    ("POST", "/modalities/X/store", "admin"),
    ("POST", "/modalities/X/echo", "admin"),
    ("POST", "/tools/reset", "admin"),
    ("PATCH", "/system", "admin"),
    ("OPTIONS", "/dicom-web/studies", "admin"),
    ("POST", "/auth/token", "open"),
    ("GET", "/auth/token", "viewer"),
    ("POST", "/auth/token/x", "admin"),
])
def test_access_table(method: str, path: str, role: str) -> None:
    assert required_role(method, path) == role
