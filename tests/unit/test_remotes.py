"""The remote AE registry (pacs.remotes): settings plus REST entries in state/modalities.json,
seen by other registries (other processes) when the file changes, atomic writes, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pacs.config import RemoteAE, Settings
from pacs.remotes import FILE_NAME, ConfiguredRemoteError, RemoteRegistry

CONFIGURED = RemoteAE("CONF", "10.0.0.1", 104, permissions=frozenset({"store"}),
                      max_associations=3)


def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, remotes={"CONF": CONFIGURED})


def test_settings_only_without_file(tmp_path: Path) -> None:
    registry = RemoteRegistry(settings(tmp_path))
    assert registry.get("CONF") == CONFIGURED
    assert registry.get("NONE") is None
    assert registry.all() == {"CONF": CONFIGURED}
    assert not (tmp_path / "state" / FILE_NAME).exists()


def test_put_is_seen_by_another_registry_and_persisted(tmp_path: Path) -> None:
    writer, reader = RemoteRegistry(settings(tmp_path)), RemoteRegistry(settings(tmp_path))
    assert reader.get("NEW") is None  # the reader has looked before the change
    assert writer.put(RemoteAE("NEW", "127.0.0.1", 11113, move_destination=False)) is True
    added = reader.get("NEW")
    assert added is not None
    assert (added.host, added.port, added.move_destination) == ("127.0.0.1", 11113, False)
    assert added.permissions == RemoteAE("X", "h", 1).permissions  # REST: the defaults
    assert writer.put(RemoteAE("NEW", "127.0.0.2", 11114)) is False  # a replacement
    assert reader.get("NEW") == RemoteAE("NEW", "127.0.0.2", 11114)
    data = json.loads((tmp_path / "state" / FILE_NAME).read_text())
    assert data["remotes"] == {"NEW": {"host": "127.0.0.2", "port": 11114,
                                       "move_destination": True}}
    assert [p.name for p in (tmp_path / "state").iterdir()
            if p.name.startswith(".modalities-")] == []  # no temporary file left
    assert RemoteRegistry(settings(tmp_path)).all() == {
        "CONF": CONFIGURED, "NEW": RemoteAE("NEW", "127.0.0.2", 11114)}
    assert writer.put(RemoteAE("NEW", "127.0.0.2", 2762, tls=True)) is False
    assert reader.get("NEW") == RemoteAE("NEW", "127.0.0.2", 2762, tls=True)


def test_override_and_delete_of_configured_ae(tmp_path: Path) -> None:
    writer, reader = RemoteRegistry(settings(tmp_path)), RemoteRegistry(settings(tmp_path))
    with pytest.raises(ConfiguredRemoteError, match="defined in the settings file"):
        writer.delete("CONF")
    assert reader.get("CONF") == CONFIGURED
    assert writer.put(RemoteAE("CONF", "10.0.0.9", 105)) is False  # existed (settings)
    assert reader.get("CONF") == RemoteAE("CONF", "10.0.0.9", 105)
    assert writer.delete("CONF") is True  # the override goes, the settings entry is back
    assert reader.get("CONF") == CONFIGURED
    assert writer.delete("NONE") is False


def test_delete_is_seen_at_once(tmp_path: Path) -> None:
    writer, reader = RemoteRegistry(settings(tmp_path)), RemoteRegistry(settings(tmp_path))
    writer.put(RemoteAE("A", "h", 1))
    writer.put(RemoteAE("B", "h", 2))
    assert reader.get("A") is not None
    writer.delete("A")  # same second, maybe same mtime: the rename gives a new inode
    assert reader.get("A") is None
    assert reader.get("B") == RemoteAE("B", "h", 2)


def test_damaged_file_keeps_previous_entries(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    writer, reader = RemoteRegistry(settings(tmp_path)), RemoteRegistry(settings(tmp_path))
    writer.put(RemoteAE("A", "h", 1))
    assert reader.get("A") is not None
    (tmp_path / "state" / FILE_NAME).write_text("{not json")
    assert reader.get("A") == RemoteAE("A", "h", 1)
    assert "keeping the previous remote AEs" in caplog.text
    assert RemoteRegistry(settings(tmp_path)).all() == {"CONF": CONFIGURED}
    (tmp_path / "state" / FILE_NAME).write_text(json.dumps(
        {"version": 1, "remotes": {"B": {"host": "h", "port": 70000}}}))
    assert reader.get("B") is None
